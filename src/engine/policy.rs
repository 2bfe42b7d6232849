//! Connection policy shared by the native engines (`uring`, `epoll`):
//! decisions about a connection that do not depend on how bytes move.
//!
//! What lives here, and why once:
//! - [`Carry`]: the received bytes a connection keeps between reads (the
//!   start of a head that spans reads); nothing, not even an allocation,
//!   while idle, so an idle connection owns no receive buffer.
//! - [`run_session`] and [`head_timeout`]: running the sans-I/O core over
//!   input, with the access-log hook ([`ConnectionLog`]) when logging is on.
//! - the deadline queue ([`crate::engine::deadlines`]) and the connection
//!   table ([`crate::engine::slots`]) are their own modules, used by both.

use std::cell::RefCell;
use std::net::IpAddr;

use crate::access_log::{ConnectionLog, WorkerLog};
use crate::files::Snapshot;
use crate::http::{Limits, Next, Output, Progress, Session};

/// Received bytes kept for later, in a buffer that exists only while it holds
/// something (a pointer's worth in every connection, not a `Vec`'s three
/// words): most connections, most of the time, carry nothing.
#[derive(Debug, Default)]
// The box is the point: one word in every connection instead of three, and
// the extra allocation happens only while bytes are carried.
#[allow(clippy::box_collection)]
pub struct Carry(Option<Box<Vec<u8>>>);

impl Carry {
    pub fn with_capacity(capacity: usize) -> Carry {
        Carry(Some(Box::new(Vec::with_capacity(capacity))))
    }

    /// The buffer, created if there is none (receiving into it).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.buffer_mut().extend_from_slice(bytes);
        }
    }

    /// Drops the first `len` bytes.
    pub fn consume(&mut self, len: usize) {
        if let Some(buffer) = &mut self.0 {
            buffer.drain(..len);
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if let Some(buffer) = &mut self.0 {
            buffer.truncate(len);
        }
    }

    /// Empties it, keeping the buffer.
    pub fn clear(&mut self) {
        if let Some(buffer) = &mut self.0 {
            buffer.clear();
        }
    }

    /// Empties it and frees the buffer.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for Carry {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Runs the session over `input`, telling the access log (`log`, with the
/// connection's `peer`) if there is one.
pub fn run_session(
    session: &mut Session,
    input: &[u8],
    snapshot: &Snapshot,
    limits: &Limits,
    log: Option<(&RefCell<WorkerLog>, IpAddr)>,
    output: &mut Output,
) -> Progress {
    match log {
        Some((log, peer)) => {
            let mut observer = ConnectionLog { log, peer };
            session.on_input_observed(input, snapshot, limits, output, &mut observer)
        }
        None => session.on_input(input, snapshot, limits, output),
    }
}

/// The request deadline passed with `partial` (a head not yet complete):
/// the session's `408` goes into `output`, logged; returns what follows it.
pub fn head_timeout(
    session: &mut Session,
    partial: &[u8],
    log: Option<(&RefCell<WorkerLog>, IpAddr)>,
    output: &mut Output,
) -> Next {
    match log {
        Some((log, peer)) => {
            let mut observer = ConnectionLog { log, peer };
            session.on_head_timeout(partial, output, &mut observer)
        }
        None => session.on_head_timeout(partial, output, &mut ()),
    }
}
