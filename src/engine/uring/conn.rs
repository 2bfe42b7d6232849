//! One connection's state in the native io_uring engine, without the ring.
//!
//! The driver ([`super`]) turns completions into calls here and turns the
//! returned [`Reaction`]s and the connection's state into submissions. What a
//! connection holds, and why:
//!
//! - `session`: the sans-I/O HTTP state ([`Session`]), a few words.
//! - `carry`: received bytes that could not be answered yet: the start of a
//!   head that spans receive buffers, or input that arrived while a response
//!   was being sent (responses go out in order, one send at a time). Empty,
//!   and without an allocation, between requests: a request that arrives in
//!   one buffer is parsed straight out of the kernel's buffer.
//! - `outbox`: the responses waiting to be sent or being sent, taken from the
//!   worker's [`OutboxPool`] when a request is answered and given back when
//!   the last byte is sent, so an idle connection holds no output buffer
//!   either.
//!
//! Responses to everything found in one receive (and in every receive
//! completed in the same loop iteration) accumulate in the outbox and leave
//! in one send; input that arrives while a send is in flight waits in
//! `carry` until it completes.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::deadlines::{Millis, NEVER, TimerSlot};
use crate::engine::{LINGER_MAX_BYTES, LINGER_MS, READ_BUFFER_BYTES};
use crate::files::Snapshot;
use crate::http::date::date_line;
use crate::http::response::{ConnectionHeader, write_error};
use crate::http::status::Status;
use crate::http::{Limits, Next, Output, Session};

/// Input waiting in `carry` beyond which a connection stops receiving until
/// its responses are sent (a client pipelining faster than it reads).
pub const MAX_CARRY_BYTES: usize = 64 * 1024;
/// Outboxes kept for reuse per worker, and the largest staging buffer kept.
const MAX_POOLED_OUTBOXES: usize = 1024;
const MAX_POOLED_OUTPUT_BYTES: usize = 64 * 1024;
/// Most pieces one sendmsg carries (Linux's `IOV_MAX`); the rest goes in the
/// next send.
const MAX_IOVECS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvState {
    /// No receive in flight.
    Idle,
    Armed,
    /// Cancelled; its final completion has not arrived yet.
    Cancelling,
    /// Ended with `ENOBUFS` (the buffer ring was empty); waits in the
    /// driver's starved queue to be armed again.
    Starved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and answering them.
    Open,
    /// Refused request answered and sending side shut down: input is read
    /// and discarded until the peer closes, [`LINGER_MAX_BYTES`] or the
    /// linger deadline.
    Lingering { discarded: usize, until: Millis },
    /// Waiting for in-flight operations to end before the descriptor is
    /// closed (closing while a receive is armed would not send FIN).
    Closing,
}

/// Which timeout the connection's deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    /// A request head (or body) started and has not completed: 408.
    Head,
    /// Keep-alive, waiting for the next request: close quietly.
    Idle,
    /// A send made no progress: the client stopped reading.
    Send,
    /// End of the linger period.
    Linger,
}

/// Received bytes, either in a kernel buffer or already appended to `carry`
/// (the engine variant where each connection receives into its own buffer).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    Fresh(&'a [u8]),
    InCarry(usize),
}

/// What the driver must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reaction {
    Nothing,
    /// Output is waiting to be sent.
    Flush,
    /// Too much input is waiting: stop receiving until the outbox drains.
    PauseReads,
    /// The last send was short: send the rest.
    Resend,
    /// Shut down the sending side and start lingering.
    StartLinger,
    /// Close the connection.
    Close,
}

/// What every connection of a worker shares when answering.
#[derive(Debug)]
pub struct ServeContext<'a> {
    pub snapshot: &'a Snapshot,
    pub limits: &'a Limits,
    /// One send for all answered requests (`false`: one per request, to
    /// measure what batching is worth).
    pub batch: bool,
    /// The connection receives into `carry` (no provided buffers): keep its
    /// allocation.
    pub own_buffers: bool,
    pub now: Millis,
}

#[derive(Debug)]
pub struct Conn {
    pub fd: RawFd,
    pub phase: Phase,
    pub recv: RecvState,
    pub send_in_flight: bool,
    /// Listed in the driver's flush list for this loop iteration.
    pub queued_for_flush: bool,
    /// The peer sent end-of-file (or shutdown(SHUT_RD) during stop).
    pub eof: bool,
    /// Close as soon as possible: an error, a reset, a timeout, a refusal.
    pub close_requested: bool,
    pub reads_paused: bool,
    /// What the session said to do once the outbox is sent.
    pub after_send: Next,
    session: Session,
    pub carry: Vec<u8>,
    pub outbox: Option<Box<Outbox>>,
    pub timer: TimerSlot,
    pub deadline_kind: DeadlineKind,
    /// When the current incomplete request began (`NEVER`: none).
    partial_since: Millis,
    /// When the connection last became idle or its send last progressed.
    last_progress: Millis,
}

impl Conn {
    pub fn new(fd: RawFd, now: Millis, own_buffers: bool) -> Conn {
        Conn {
            fd,
            phase: Phase::Open,
            recv: RecvState::Idle,
            send_in_flight: false,
            queued_for_flush: false,
            eof: false,
            close_requested: false,
            reads_paused: false,
            after_send: Next::Read,
            session: Session::new(),
            carry: if own_buffers {
                Vec::with_capacity(READ_BUFFER_BYTES)
            } else {
                Vec::new()
            },
            outbox: None,
            timer: TimerSlot::default(),
            deadline_kind: DeadlineKind::Idle,
            partial_since: NEVER,
            last_progress: now,
        }
    }

    /// Whether the connection should have a receive armed. With `multishot`,
    /// one stays armed while responses are sent (input is kept in `carry`);
    /// a single-shot receive is armed only while waiting for a request.
    pub fn wants_recv(&self, multishot: bool) -> bool {
        if self.recv != RecvState::Idle || self.eof || self.reads_paused || self.close_requested {
            return false;
        }
        match self.phase {
            Phase::Closing => false,
            Phase::Lingering { .. } => true,
            Phase::Open => {
                multishot || (!self.send_in_flight && self.outbox.is_none() && self.after_send == Next::Read)
            }
        }
    }

    /// Whether nothing more will happen but closing.
    pub fn should_close(&self) -> bool {
        self.close_requested || (self.eof && self.outbox.is_none() && !self.send_in_flight)
    }

    /// The current deadline and what it is.
    pub fn deadline(&self, head_ms: Millis, idle_ms: Millis, send_ms: Millis) -> (Millis, DeadlineKind) {
        match self.phase {
            Phase::Closing => (NEVER, DeadlineKind::Idle),
            Phase::Lingering { until, .. } => (until, DeadlineKind::Linger),
            Phase::Open if self.outbox.is_some() || self.send_in_flight => {
                (self.last_progress.saturating_add(send_ms), DeadlineKind::Send)
            }
            Phase::Open if self.partial_since != NEVER => {
                (self.partial_since.saturating_add(head_ms), DeadlineKind::Head)
            }
            Phase::Open => (self.last_progress.saturating_add(idle_ms), DeadlineKind::Idle),
        }
    }

    /// Records that a send is being submitted (a fresh one starts the
    /// no-progress clock).
    pub fn on_send_submitted(&mut self, now: Millis) {
        if !self.send_in_flight && self.outbox.as_ref().is_some_and(|o| o.sent == 0) {
            self.last_progress = now;
        }
        self.send_in_flight = true;
    }

    /// Received bytes: answer what can be answered now, keep the rest.
    pub fn on_received(
        &mut self,
        input: Input<'_>,
        cx: &ServeContext<'_>,
        pool: &mut OutboxPool,
    ) -> Reaction {
        match &mut self.phase {
            Phase::Closing => return Reaction::Nothing,
            Phase::Lingering { discarded, .. } => {
                *discarded += match input {
                    Input::Fresh(data) => data.len(),
                    Input::InCarry(len) => len,
                };
                self.carry.clear();
                return if *discarded >= LINGER_MAX_BYTES {
                    Reaction::Close
                } else {
                    Reaction::Nothing
                };
            }
            Phase::Open => {}
        }
        if matches!(self.after_send, Next::Close | Next::Linger) {
            // The connection's last response is queued; what follows is
            // never answered.
            if let Input::InCarry(len) = input {
                self.carry.truncate(self.carry.len() - len);
            }
            return Reaction::Nothing;
        }
        let can_answer_now =
            !self.send_in_flight && self.after_send == Next::Read && (cx.batch || self.outbox.is_none());
        if can_answer_now {
            let fresh = match input {
                Input::Fresh(data) => Some(data),
                Input::InCarry(_) => None,
            };
            return self.answer(fresh, cx, pool);
        }
        if let Input::Fresh(data) = input {
            self.carry.extend_from_slice(data);
        }
        if self.carry.len() > MAX_CARRY_BYTES {
            Reaction::PauseReads
        } else {
            Reaction::Nothing
        }
    }

    /// Runs the session over `carry` followed by `fresh`, parsing straight
    /// out of `fresh` when nothing is carried.
    fn answer(&mut self, fresh: Option<&[u8]>, cx: &ServeContext<'_>, pool: &mut OutboxPool) -> Reaction {
        let mut outbox = self.outbox.take().unwrap_or_else(|| pool.take());
        let before = outbox.output.len();
        let progress = match fresh {
            Some(data) if self.carry.is_empty() => {
                let data = &data[..request_limit(data, cx.batch)];
                let progress = self
                    .session
                    .on_input(data, cx.snapshot, cx.limits, &mut outbox.output);
                // Only the start of a head spanning buffers (or input left
                // after back-pressure) is copied out of the kernel buffer.
                self.carry.extend_from_slice(&data[progress.consumed..]);
                if let Some(rest) = fresh.map(|all| &all[data.len()..]) {
                    self.carry.extend_from_slice(rest);
                }
                progress
            }
            _ => {
                if let Some(data) = fresh {
                    self.carry.extend_from_slice(data);
                }
                let limit = request_limit(&self.carry, cx.batch);
                let progress =
                    self.session
                        .on_input(&self.carry[..limit], cx.snapshot, cx.limits, &mut outbox.output);
                self.carry.drain(..progress.consumed);
                progress
            }
        };
        if self.carry.is_empty() && !cx.own_buffers && self.carry.capacity() > 0 {
            self.carry = Vec::new();
        }
        self.after_send = progress.next;
        let answered = outbox.output.len() > before;
        let incomplete = !self.carry.is_empty() || !self.session.is_idle();
        if !incomplete {
            self.partial_since = NEVER;
        } else if answered || self.partial_since == NEVER {
            self.partial_since = cx.now;
        }
        if self.carry.len() <= MAX_CARRY_BYTES / 2 {
            self.reads_paused = false;
        }
        if outbox.output.is_empty() {
            pool.give(outbox);
            return match progress.next {
                Next::Read | Next::Write => Reaction::Nothing,
                // The session always answers before closing; if not, close.
                Next::Close | Next::Linger => Reaction::Close,
            };
        }
        self.outbox = Some(outbox);
        Reaction::Flush
    }

    /// A send completed with `sent` bytes.
    pub fn on_sent(&mut self, sent: usize, cx: &ServeContext<'_>, pool: &mut OutboxPool) -> Reaction {
        self.send_in_flight = false;
        self.last_progress = cx.now;
        let outbox = self.outbox.as_mut().expect("a send completed without an outbox");
        outbox.sent += sent;
        if outbox.sent < outbox.output.len() {
            return Reaction::Resend;
        }
        if let Some(outbox) = self.outbox.take() {
            pool.give(outbox);
        }
        match self.after_send {
            Next::Close => Reaction::Close,
            Next::Linger => {
                self.phase = Phase::Lingering {
                    discarded: self.carry.len(),
                    until: cx.now.saturating_add(LINGER_MS),
                };
                self.carry = Vec::new();
                self.partial_since = NEVER;
                Reaction::StartLinger
            }
            Next::Read | Next::Write => {
                self.after_send = Next::Read;
                if self.carry.is_empty() {
                    Reaction::Nothing
                } else {
                    self.answer(None, cx, pool)
                }
            }
        }
    }

    /// The head deadline passed: answer 408 and linger, if the connection
    /// is between sends; otherwise just close.
    pub fn on_head_timeout(&mut self, pool: &mut OutboxPool) -> Reaction {
        if self.phase != Phase::Open || self.send_in_flight || self.outbox.is_some() {
            return Reaction::Close;
        }
        let mut outbox = pool.take();
        write_error(
            &mut outbox.output,
            Status::RequestTimeout,
            true,
            &date_line(),
            ConnectionHeader::Close,
        );
        self.outbox = Some(outbox);
        self.after_send = Next::Linger;
        self.partial_since = NEVER;
        self.carry.clear();
        Reaction::Flush
    }

    /// Hands back what the connection holds (on close).
    pub fn release(self, pool: &mut OutboxPool) {
        if let Some(outbox) = self.outbox {
            pool.give(outbox);
        }
    }
}

/// How much of `input` the session may see at once: everything, or (batching
/// off) up to the end of the first request head, so each response leaves in
/// its own send.
fn request_limit(input: &[u8], batch: bool) -> usize {
    if batch {
        return input.len();
    }
    // Blank lines before a request are skipped by the session; skip them here
    // too, or they would be taken for the end of a head.
    let start = input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    memchr::memmem::find(&input[start..], b"\r\n\r\n").map_or(input.len(), |end| start + end + 4)
}

/// Responses waiting to be sent, and the send's own arguments.
///
/// Boxed, and kept by its connection until the send's completion: the kernel
/// reads the output's bytes (the staged buffer, and the snapshot's `Bytes`
/// the output holds references to), the iovec array and the `msghdr` through
/// raw pointers while the send is in flight, so none of them may move or be
/// freed or changed until then. The box keeps their addresses fixed when the
/// connection table grows; the connection keeps the box until the send's
/// final completion (see the driver's close path).
#[derive(Debug)]
pub struct Outbox {
    pub output: Output,
    /// Bytes of `output` already sent.
    sent: usize,
    iovecs: Vec<libc::iovec>,
    msghdr: libc::msghdr,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            output: Output::with_capacity(READ_BUFFER_BYTES),
            sent: 0,
            iovecs: Vec::new(),
            // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
            msghdr: unsafe { std::mem::zeroed() },
        }
    }

    /// The submission that sends what is left: one `send` when the output
    /// is contiguous (the common case), otherwise one `sendmsg` whose
    /// iovecs point at the staged bytes and the shared bodies.
    ///
    /// The entry points into `self`; see the type's documentation for what
    /// that requires until its completion.
    pub fn next_send(&mut self, fd: RawFd, user_data: u64) -> squeue::Entry {
        if let Some(bytes) = self.output.as_contiguous() {
            let rest = &bytes[self.sent..];
            let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            return opcode::Send::new(types::Fd(fd), rest.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data);
        }
        self.iovecs.clear();
        let mut skip = self.sent;
        for chunk in self.output.chunks() {
            if skip >= chunk.len() {
                skip -= chunk.len();
                continue;
            }
            let piece = &chunk[skip..];
            skip = 0;
            self.iovecs.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            });
            if self.iovecs.len() == MAX_IOVECS {
                break;
            }
        }
        self.msghdr.msg_iov = self.iovecs.as_mut_ptr();
        self.msghdr.msg_iovlen = self.iovecs.len();
        opcode::SendMsg::new(types::Fd(fd), &self.msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(user_data)
    }
}

/// Outboxes of connections that have nothing to send, for reuse.
#[derive(Debug, Default)]
pub struct OutboxPool {
    /// Boxed on purpose: connections hold outboxes by `Box` (a send's
    /// `msghdr` must not move), and pooling the boxes saves an allocation.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Outbox>>,
}

impl OutboxPool {
    pub fn take(&mut self) -> Box<Outbox> {
        self.free.pop().unwrap_or_else(|| Box::new(Outbox::new()))
    }

    pub fn give(&mut self, mut outbox: Box<Outbox>) {
        if self.free.len() >= MAX_POOLED_OUTBOXES || outbox.output.staged_capacity() > MAX_POOLED_OUTPUT_BYTES
        {
            return;
        }
        outbox.output.clear();
        outbox.sent = 0;
        outbox.iovecs.clear();
        self.free.push(outbox);
    }
}
