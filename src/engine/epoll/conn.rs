//! One connection's state in the native epoll engine, without the syscalls.
//!
//! The loop ([`super`]) reads and writes; this module decides what the bytes
//! mean and what comes next. A connection holds, and why:
//!
//! - `protocol`: the sans-I/O HTTP state ([`Protocol`]: a
//!   [`Session`](crate::http::Session), a few words, or for HTTPS a boxed
//!   TLS session around one). For HTTPS, `carry` holds ciphertext and the
//!   outbox's output is ciphertext pulled from the protocol
//!   ([`Outbox::pull`]), file chunks read and sealed there: this module
//!   only moves bytes and calls the protocol.
//! - `carry`: received bytes not answered yet: the start of a head that
//!   spans reads, or input left when the session stopped for back-pressure
//!   ([`Next::Write`]). Empty, without an allocation, between requests: the
//!   worker reads every connection into its one receive buffer and the
//!   request is parsed straight out of it.
//! - `outbox`: the responses being written, taken from the worker's
//!   [`OutboxPool`] when a request is answered and given back when the last
//!   byte is written, so an idle connection holds no output buffer either.
//! - `input` and `output`: what the socket is known to hold and what is
//!   waiting to go out ([`InputState`], [`OutputState`]): the two questions
//!   a readiness loop asks on every event, as explicit states.
//!
//! A connection does not read while its output is pending: the client's
//! next requests wait in the kernel's receive buffer (back-pressure without
//! a buffer of ours), and every response to one read leaves in one write.
//!
//! Which deadline applies is the core's decision ([`DeadlineClock`]): the
//! send deadline while output is pending, counted from the last progress;
//! otherwise the read deadline for the session's state and what is carried.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::outbox::{Outbox, OutboxPool};
use crate::engine::deadlines::{Millis, TimerSlot};
use crate::engine::policy::{self, AfterOutput, Carry, Lingering, Serving, Waiting};
use crate::http::{DeadlineClock, Expiry, Next};
use crate::protocol::Protocol;

/// What the socket is known to hold for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// Everything the socket had was read: wait for the next readiness edge.
    Drained,
    /// The socket may hold input (an edge came, or reading stopped before
    /// it was empty): read as soon as the connection may
    /// ([`Conn::may_read`]). A connection that may not read now (its output
    /// is pending) stays here: that is its read pause, and finishing the
    /// output is what resumes it.
    Readable,
    /// The peer shut down its sending side (the event said `EPOLLRDHUP` or
    /// `EPOLLHUP`): read until end-of-file. A short read does not mean the
    /// socket is empty here: the end-of-file behind the data brings no new
    /// edge.
    ReadableToEnd,
    /// The peer sent end-of-file (or reading failed): never read again.
    Eof,
}

/// What is waiting to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    /// Nothing (no outbox).
    Idle,
    /// An outbox is waiting, and the connection is in this iteration's flush
    /// list: all responses to one read leave in one write.
    Queued,
    /// A write was short: wait for the socket to become writable.
    Blocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and answering them.
    Open,
    /// The last response is written and the sending side shut down: input
    /// is read and discarded until the peer closes, the bound of
    /// [`Lingering`] or the linger deadline (counted from the end of the
    /// last write).
    Lingering(Lingering),
}

/// What the loop must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reaction {
    Nothing,
    /// Output is waiting: queue it for this iteration's flush.
    Flush,
    /// Shut down the sending side; the connection now lingers.
    StartLinger,
    /// Close the connection now (after an error, or at the end the client
    /// asked for: [`policy::ending`]).
    Close,
}

#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
    pub phase: Phase,
    pub input: InputState,
    pub output: OutputState,
    /// What the session said to do once the outbox is written.
    after_send: Next,
    /// What happens if the current deadline passes.
    pub expiry: Expiry,
    protocol: Protocol,
    carry: Carry,
    outbox: Option<Box<Outbox>>,
    pub timer: TimerSlot,
    /// When the current request started arriving (the core's rules).
    clock: DeadlineClock,
    /// When the current output was queued or last made progress (or, when
    /// lingering, when the last write completed).
    send_progress: Millis,
    /// The peer's address, known only when the access log is on (boxed:
    /// every connection pays for the pointer, only logging ones for more).
    peer: Option<Box<IpAddr>>,
}

impl Conn {
    pub fn new(fd: OwnedFd, peer: Option<Box<IpAddr>>, protocol: Protocol, serving: &Serving) -> Conn {
        Conn {
            fd,
            phase: Phase::Open,
            input: InputState::Drained,
            output: OutputState::Idle,
            after_send: Next::Read,
            expiry: Expiry::Close,
            protocol,
            carry: Carry::default(),
            outbox: None,
            timer: TimerSlot::default(),
            clock: DeadlineClock::new(serving.instant(serving.now)),
            send_progress: serving.now,
            peer,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the loop should read now: input may be there, and the
    /// connection is lingering, or waiting for a request with nothing to
    /// write.
    pub fn may_read(&self) -> bool {
        matches!(self.input, InputState::Readable | InputState::ReadableToEnd)
            && match self.phase {
                Phase::Lingering(_) => true,
                Phase::Open => self.outbox.is_none() && self.after_send == Next::Read,
            }
    }

    /// Whether nothing more will happen but closing: the peer is done and
    /// nothing is left to write.
    pub fn is_finished(&self) -> bool {
        self.input == InputState::Eof && self.outbox.is_none()
    }

    /// Whether output waits that is not yet queued or blocked.
    pub fn wants_flush(&self) -> bool {
        self.outbox.is_some() && self.output == OutputState::Idle
    }

    /// The current deadline and what its passing means (the shared rules).
    pub fn deadline(&mut self, serving: &Serving) -> (Millis, Expiry) {
        let waiting = match self.phase {
            Phase::Lingering(_) => Waiting::Lingering {
                since: self.send_progress,
            },
            Phase::Open if self.outbox.is_some() => Waiting::Output {
                since: self.send_progress,
            },
            Phase::Open => Waiting::Input,
        };
        serving.deadline(waiting, &mut self.clock, &self.protocol, self.carry.len())
    }

    /// Bytes read from the socket (in the worker's buffer): answer them, or
    /// discard them when lingering. Call only when [`Conn::may_read`] held.
    pub fn on_received(&mut self, data: &[u8], serving: &Serving, pool: &mut OutboxPool) -> Reaction {
        match &mut self.phase {
            Phase::Lingering(lingering) => {
                if lingering.discard(data.len()) {
                    Reaction::Nothing
                } else {
                    Reaction::Close
                }
            }
            Phase::Open => self.answer(Some(data), serving, pool),
        }
    }

    /// Answers what is carried followed by `fresh`.
    fn answer(&mut self, fresh: Option<&[u8]>, serving: &Serving, pool: &mut OutboxPool) -> Reaction {
        let mut outbox = self.outbox.take().unwrap_or_else(|| pool.take());
        let peer = self.peer.as_deref().copied();
        let progress = policy::answer(
            &mut self.protocol,
            &mut self.carry,
            fresh,
            serving,
            peer,
            &mut outbox.output,
            true,
            false,
        );
        self.after_send = progress.next;
        let has_output = match outbox.pull(&mut self.protocol) {
            Ok(has_output) => has_output,
            Err(_) => {
                pool.give(outbox);
                return Reaction::Close;
            }
        };
        if !has_output {
            pool.give(outbox);
            return if policy::ends_after_output(progress.next) {
                Reaction::Close
            } else {
                Reaction::Nothing
            };
        }
        self.outbox = Some(outbox);
        self.send_progress = serving.now;
        Reaction::Flush
    }

    /// Writes the outbox until it is done or the socket is full; then moves
    /// on as the session said (answer what is carried, close, or linger).
    pub fn write(&mut self, serving: &Serving, pool: &mut OutboxPool) -> Reaction {
        self.output = OutputState::Idle;
        loop {
            let Some(outbox) = self.outbox.as_mut() else {
                return Reaction::Nothing;
            };
            while !outbox.is_done() {
                match outbox.write_to(self.fd.as_raw_fd()) {
                    Ok(_) => self.send_progress = serving.now,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        self.output = OutputState::Blocked;
                        return Reaction::Nothing;
                    }
                    // The peer is gone (EPIPE, ECONNRESET), or a file ended
                    // early and the response cannot be completed.
                    Err(_) => return Reaction::Close,
                }
            }
            if self.protocol.is_tls() {
                // More ciphertext (the rest of a large response, a file
                // chunk to read and seal, close_notify) may be waiting.
                outbox.reset_sent();
                match outbox.pull(&mut self.protocol) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(_) => return Reaction::Close,
                }
            }
            if let Some(outbox) = self.outbox.take() {
                pool.give(outbox);
            }
            if matches!(self.input, InputState::Readable | InputState::ReadableToEnd) {
                // An edge came since the last read (or reading stopped
                // before the socket was empty): input may be waiting, and
                // closing over it would reset the connection.
                policy::unread_after_end(&mut self.after_send);
            }
            match policy::after_output(&mut self.after_send, &mut self.carry, &self.protocol, false) {
                AfterOutput::Close => return Reaction::Close,
                AfterOutput::Linger(lingering) => {
                    self.phase = Phase::Lingering(lingering);
                    return Reaction::StartLinger;
                }
                AfterOutput::Continue if self.carry.is_empty() && !self.protocol.has_unanswered_input() => {
                    return Reaction::Nothing;
                }
                AfterOutput::Continue => {}
            }
            // Input left by back-pressure: answer it, write again.
            if self.answer(None, serving, pool) == Reaction::Close {
                return Reaction::Close;
            }
        }
    }

    /// The request deadline passed with part of a head in `carry`: the
    /// session answers 408, then the connection lingers and closes.
    pub fn on_head_timeout(&mut self, serving: &Serving, pool: &mut OutboxPool) -> Reaction {
        if self.phase != Phase::Open || self.outbox.is_some() {
            return Reaction::Close;
        }
        let mut outbox = pool.take();
        let log = serving.observer(self.peer.as_deref().copied());
        self.after_send = policy::head_timeout(&mut self.protocol, &self.carry, log, &mut outbox.output);
        self.carry.release();
        if !matches!(outbox.pull(&mut self.protocol), Ok(true)) {
            // A TLS handshake that never completed: close without a word.
            pool.give(outbox);
            return Reaction::Close;
        }
        self.outbox = Some(outbox);
        self.send_progress = serving.now;
        Reaction::Flush
    }

    /// Hands back what the connection holds (on close); the descriptor closes.
    pub fn release(self, pool: &mut OutboxPool) {
        if let Some(outbox) = self.outbox {
            pool.give(outbox);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs its slot in the table plus a few small
    /// allocations (the session's path scratch, a deadline entry); the
    /// engine's budget is 300 bytes of RSS in all, so the slot must stay
    /// small.
    #[test]
    fn a_connection_slot_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 144, "Conn grew to {size} bytes");
    }
}
