//! One connection's state in the native io_uring engine, without the ring.
//!
//! The driver ([`super`]) turns completions into calls here and turns the
//! returned [`Reaction`]s and the connection's state into submissions. What a
//! connection holds, and why:
//!
//! - `protocol`: the sans-I/O HTTP state ([`Protocol`]: a
//!   [`Session`](crate::http::Session), a few words, or for HTTPS a boxed
//!   TLS session around one). For HTTPS, `carry` holds ciphertext and the
//!   outbox's output is ciphertext pulled from the protocol
//!   ([`Outbox::pull`]), file chunks included.
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
//!
//! Which deadline applies is the core's decision ([`DeadlineClock`]), asked
//! after every event: the send deadline while output is pending, otherwise
//! the read deadline for the session's state and what is in `carry`.

use std::net::IpAddr;
use std::os::fd::RawFd;

use super::op::OpKind;
use super::outbox::{Outbox, OutboxPool};
use crate::engine::READ_BUFFER_BYTES;
use crate::engine::deadlines::{Millis, TimerSlot};
use crate::engine::policy::{self, AfterOutput, Carry, End, Lingering, Serving, Waiting};
use crate::http::{DeadlineClock, Expiry, Next};
use crate::protocol::Protocol;

/// Input waiting in `carry` beyond which a connection stops receiving until
/// its responses are sent (a client pipelining faster than it reads).
pub const MAX_CARRY_BYTES: usize = 64 * 1024;

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
    /// and discarded until the peer closes, the bound of [`Lingering`] or
    /// the linger deadline (counted from the last send's completion).
    Lingering(Lingering),
    /// Nothing more will happen but closing (an error, a reset, a timeout,
    /// a refusal, or the peer is done): in-flight operations are cancelled
    /// (`cancelled` once the cancels are queued) and the descriptor is closed
    /// once their final completions arrived (closing while a receive is
    /// armed would not send FIN).
    Closing { cancelled: bool },
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

/// What every connection of a worker shares when answering: the shared
/// [`Serving`] and the engine's switches. One field of the driver, lent to
/// a connection for one event.
#[derive(Debug)]
pub struct ServeContext {
    pub serving: Serving,
    /// One send for all answered requests (`false`: one per request, to
    /// measure what batching is worth).
    pub batch: bool,
    /// The connection receives into `carry` (no provided buffers): keep its
    /// allocation.
    pub own_buffers: bool,
    /// Files streamed from disk to plain-HTTP connections are spliced
    /// through a pipe (`--uring-splice`).
    pub splice: bool,
}

impl std::ops::Deref for ServeContext {
    type Target = Serving;

    fn deref(&self) -> &Serving {
        &self.serving
    }
}

impl std::ops::DerefMut for ServeContext {
    fn deref_mut(&mut self) -> &mut Serving {
        &mut self.serving
    }
}

/// What the connection may still receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputState {
    /// Nothing received yet: the first receive is single-shot (most
    /// `Connection: close` clients send one request, and a receive still
    /// armed at close must be cancelled first); later ones multishot.
    Fresh,
    Open,
    /// Too much input is carried (a client pipelining faster than it reads):
    /// no receive until the responses are sent and little is carried.
    Paused,
    /// The peer sent end-of-file (or shutdown(SHUT_RD) during stop).
    Eof,
}

/// Where the connection's output stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    /// No operation in flight and none queued (an outbox may be waiting to
    /// be queued by the driver's `settle`).
    Idle,
    /// Listed in the driver's flush list for this loop iteration.
    Queued,
    /// An operation of the outbox (a send, or the read of a file chunk) is
    /// in flight.
    InFlight(OpKind),
    /// The outbox's last send is in flight, linked (`IOSQE_IO_LINK`) to the
    /// close of the socket ([`Conn::may_link_close`]): once it completes in
    /// full, the kernel closes the socket by itself and the connection must
    /// never name it again (the descriptor may already belong to the
    /// next accepted connection). Short or failed, the link breaks, the close
    /// completes with `ECANCELED`, and the connection closes as any other
    /// (with a reset if `reset`: a deadline that passed meanwhile asked for
    /// one, which could not be set while the kernel might be closing).
    LastSend { reset: bool },
}

#[derive(Debug)]
pub struct Conn {
    /// The accepted socket, a descriptor of the process.
    pub socket: RawFd,
    pub phase: Phase,
    pub recv: RecvState,
    pub input: InputState,
    pub output: OutputState,
    /// What the session said to do once the outbox is sent.
    pub after_send: Next,
    protocol: Protocol,
    pub carry: Carry,
    pub outbox: Option<Box<Outbox>>,
    pub timer: TimerSlot,
    /// What happens if the current deadline passes.
    pub expiry: Expiry,
    /// When the current request started arriving (the core's rules).
    clock: DeadlineClock,
    /// When the current send was submitted or last made progress (or, when
    /// lingering, when the last send completed).
    send_progress: Millis,
    /// The peer's address, known only when the access log is on (boxed:
    /// every connection pays for the pointer, only logging ones for more).
    peer: Option<Box<IpAddr>>,
}

impl Conn {
    pub fn new(socket: RawFd, peer: Option<Box<IpAddr>>, protocol: Protocol, cx: &ServeContext) -> Conn {
        Conn {
            socket,
            phase: Phase::Open,
            recv: RecvState::Idle,
            input: InputState::Fresh,
            output: OutputState::Idle,
            after_send: Next::Read,
            protocol,
            carry: if cx.own_buffers {
                Carry::with_capacity(READ_BUFFER_BYTES)
            } else {
                Carry::default()
            },
            outbox: None,
            timer: TimerSlot::default(),
            expiry: Expiry::Close,
            clock: DeadlineClock::new(cx.instant(cx.now)),
            send_progress: cx.now,
            peer,
        }
    }

    /// Whether the connection should have a receive armed. With `multishot`,
    /// one stays armed while responses are sent (input is kept in `carry`),
    /// except while the last response (`Connection: close`) is: nothing
    /// after it would be read. A single-shot receive is armed only while
    /// waiting for a request.
    pub fn wants_recv(&self, multishot: bool) -> bool {
        if self.recv != RecvState::Idle || matches!(self.input, InputState::Paused | InputState::Eof) {
            return false;
        }
        match self.phase {
            Phase::Closing { .. } => false,
            Phase::Lingering(_) => true,
            Phase::Open => {
                (multishot && self.after_send != Next::Close)
                    || (!self.output_in_flight() && self.outbox.is_none() && self.after_send == Next::Read)
            }
        }
    }

    /// Whether an operation of the outbox is in flight.
    pub fn output_in_flight(&self) -> bool {
        matches!(
            self.output,
            OutputState::InFlight(_) | OutputState::LastSend { .. }
        )
    }

    /// Whether the send about to be submitted, if it sends everything left,
    /// may carry the connection's close linked to it: the shared rule says
    /// the end is an immediate close ([`policy::ending`]: the client asked
    /// to close, nothing it sent is unread, plain HTTP), and no receive is
    /// in the kernel (an armed receive holds the socket, so the close would
    /// not send FIN; the first receive is single-shot and no receive is
    /// re-armed once the last response is decided, see
    /// [`Conn::wants_recv`]). Nothing can change that before the send
    /// completes: without a receive, no input arrives.
    pub fn may_link_close(&self) -> bool {
        self.phase == Phase::Open
            && self.recv == RecvState::Idle
            && policy::ending(self.after_send, &self.protocol, self.carry.len()) == Some(End::Close)
    }

    /// Whether the socket may still be named: not once the last send,
    /// linked to the close, is in flight (the kernel may have closed it
    /// already, and its number be the next connection's).
    pub fn socket_is_ours(&self) -> bool {
        !matches!(self.output, OutputState::LastSend { .. })
    }

    /// Whether nothing more will happen but closing: the peer is done and
    /// nothing is left to send.
    pub fn is_finished(&self) -> bool {
        self.input == InputState::Eof && self.outbox.is_none() && !self.output_in_flight()
    }

    /// Ends the connection as soon as its operations are cancelled (an
    /// error, a reset, a timeout, a refusal).
    pub fn request_close(&mut self) {
        if !matches!(self.phase, Phase::Closing { .. }) {
            self.phase = Phase::Closing { cancelled: false };
        }
    }

    /// The current deadline (`NEVER`: none) and what its passing means, by
    /// the shared rules.
    pub fn deadline(&mut self, cx: &ServeContext) -> (Millis, Expiry) {
        let waiting = match self.phase {
            Phase::Closing { .. } => Waiting::Nothing,
            Phase::Lingering(_) => Waiting::Lingering {
                since: self.send_progress,
            },
            Phase::Open if self.outbox.is_some() || self.output_in_flight() => Waiting::Output {
                since: self.send_progress,
            },
            Phase::Open => Waiting::Input,
        };
        cx.deadline(waiting, &mut self.clock, &self.protocol, self.carry.len())
    }

    /// Records that an output operation is being submitted (`InFlight` or
    /// `LastSend`; the first one of an outbox starts the no-progress clock).
    pub fn on_output_submitted(&mut self, state: OutputState, now: Millis) {
        if !self.output_in_flight() && self.outbox.as_ref().is_some_and(|o| o.is_untouched()) {
            self.send_progress = now;
        }
        self.output = state;
    }

    /// The last send, linked to the close, completed with `result` (bytes,
    /// or -errno): whether it sent everything left, so that the kernel ran
    /// the close (a short or failed send broke the link: see
    /// [`OutputState::LastSend`]).
    pub fn last_send_completed(&self, result: i32) -> bool {
        let left = self.outbox.as_ref().map_or(0, |outbox| outbox.left());
        usize::try_from(result).is_ok_and(|sent| sent > 0 && sent == left)
    }

    /// Received bytes: answer what can be answered now, keep the rest.
    pub fn on_received(&mut self, input: Input<'_>, cx: &ServeContext, pool: &mut OutboxPool) -> Reaction {
        if self.input == InputState::Fresh {
            self.input = InputState::Open;
        }
        match &mut self.phase {
            Phase::Closing { .. } => return Reaction::Nothing,
            Phase::Lingering(lingering) => {
                let len = match input {
                    Input::Fresh(data) => data.len(),
                    Input::InCarry(len) => len,
                };
                self.carry.clear();
                return if lingering.discard(len) {
                    Reaction::Nothing
                } else {
                    Reaction::Close
                };
            }
            Phase::Open => {}
        }
        if matches!(self.after_send, Next::Close | Next::Linger) {
            // The connection's last response is queued; what follows is
            // never answered, and closing over it could reset the
            // connection: it ends lingering.
            policy::unread_after_end(&mut self.after_send);
            if let Input::InCarry(len) = input {
                self.carry.truncate(self.carry.len() - len);
            }
            return Reaction::Nothing;
        }
        let can_answer_now =
            !self.output_in_flight() && self.after_send == Next::Read && (cx.batch || self.outbox.is_none());
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
    fn answer(&mut self, fresh: Option<&[u8]>, cx: &ServeContext, pool: &mut OutboxPool) -> Reaction {
        if self.outbox.is_none() {
            // A new response: its no-progress clock starts now. (The
            // deadline is set before the first send is submitted, and the
            // last progress may be a response sent long ago: an idle
            // keep-alive connection's next request was reset at once when
            // it came later than the send timeout.)
            self.send_progress = cx.now;
        }
        let mut outbox = self.outbox.take().unwrap_or_else(|| pool.take());
        let peer = self.peer();
        let progress = policy::answer(
            &mut self.protocol,
            &mut self.carry,
            fresh,
            cx,
            peer,
            &mut outbox.output,
            cx.batch,
            cx.own_buffers,
        );
        self.after_send = progress.next;
        // Reads paused for back-pressure resume once little is carried, or
        // once the session wants more input than it has: a head larger than
        // half the carry limit (with `--max-head` above it) can only
        // complete with more bytes, and would otherwise wait for its 408.
        if self.input == InputState::Paused
            && (self.carry.len() <= MAX_CARRY_BYTES / 2
                || (progress.next == Next::Read && outbox.output.is_empty()))
        {
            self.input = InputState::Open;
        }
        if !outbox.pull(&mut self.protocol) {
            pool.give(outbox);
            return if policy::ends_after_output(progress.next) {
                Reaction::Close
            } else {
                Reaction::Nothing
            };
        }
        self.outbox = Some(outbox);
        Reaction::Flush
    }

    /// A send completed with `sent` bytes.
    pub fn on_sent(&mut self, sent: usize, cx: &ServeContext, pool: &mut OutboxPool) -> Reaction {
        self.output = OutputState::Idle;
        self.send_progress = cx.now;
        let outbox = self.outbox.as_mut().expect("a send completed without an outbox");
        outbox.on_sent(sent);
        if !outbox.is_done() {
            return Reaction::Resend;
        }
        if self.protocol.is_tls() {
            // More ciphertext (the rest of a large response, a file chunk
            // to read and seal) may be waiting in the protocol.
            outbox.reset_sent();
            if outbox.pull(&mut self.protocol) {
                return Reaction::Resend;
            }
        }
        if let Some(outbox) = self.outbox.take() {
            pool.give(outbox);
        }
        // With own buffers a single-shot receive into `carry` may be armed
        // (a 408 is sent while the head is still awaited): emptied, never
        // freed under the kernel.
        match policy::after_output(
            &mut self.after_send,
            &mut self.carry,
            &self.protocol,
            cx.own_buffers,
        ) {
            // Cancels a receive still armed (a keep-alive connection whose
            // last request asked to close), then closes.
            AfterOutput::Close => Reaction::Close,
            AfterOutput::Linger(lingering) => {
                self.phase = Phase::Lingering(lingering);
                Reaction::StartLinger
            }
            AfterOutput::Continue if self.carry.is_empty() && !self.protocol.has_unanswered_input() => {
                Reaction::Nothing
            }
            AfterOutput::Continue => self.answer(None, cx, pool),
        }
    }

    /// The read of a file chunk completed with `result` (bytes, or -errno):
    /// send the chunk, or give up on a response that cannot be completed.
    pub fn on_file_read(&mut self, result: i32, now: Millis) -> Reaction {
        self.output = OutputState::Idle;
        self.send_progress = now;
        let read = usize::try_from(result).unwrap_or(0);
        let complete = self
            .outbox
            .as_mut()
            .is_some_and(|outbox| outbox.on_read(read) && outbox.seal_chunk(&mut self.protocol));
        if complete {
            Reaction::Resend
        } else {
            Reaction::Close
        }
    }

    /// The request deadline passed with part of a head in `carry`: the
    /// session answers 408, then the connection lingers and closes.
    pub fn on_head_timeout(&mut self, cx: &ServeContext, pool: &mut OutboxPool) -> Reaction {
        if self.phase != Phase::Open || self.output_in_flight() || self.outbox.is_some() {
            return Reaction::Close;
        }
        let mut outbox = pool.take();
        self.send_progress = cx.now;
        let peer = self.peer();
        self.after_send = policy::head_timeout(
            &mut self.protocol,
            &self.carry,
            cx.observer(peer),
            &mut outbox.output,
        );
        self.carry.clear();
        if !outbox.pull(&mut self.protocol) {
            // A TLS handshake that never completed: close without a word.
            pool.give(outbox);
            return Reaction::Close;
        }
        self.outbox = Some(outbox);
        Reaction::Flush
    }

    /// Whether the connection speaks TLS (its bytes must be encrypted in
    /// user space: no splice).
    pub fn is_tls(&self) -> bool {
        self.protocol.is_tls()
    }

    fn peer(&self) -> Option<IpAddr> {
        self.peer.as_deref().copied()
    }

    /// Hands back what the connection holds (on close).
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
    /// engine's budget is 256 bytes in all, so the slot must stay small.
    #[test]
    fn a_connection_slot_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 144, "Conn grew to {size} bytes");
    }
}
