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
//!
//! Which deadline applies is the core's decision ([`DeadlineClock`]), asked
//! after every event: the send deadline while output is pending, otherwise
//! the read deadline for the session's state and what is in `carry`.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::op::OpKind;
use crate::engine::deadlines::{Millis, TimerSlot};
use crate::engine::policy::{self, Carry, Lingering, Serving, Waiting};
use crate::engine::{FILE_CHUNK_BYTES, READ_BUFFER_BYTES};
use crate::http::response::PieceRef;
use crate::http::{DeadlineClock, Expiry, Next, Output, Session};

/// Input waiting in `carry` beyond which a connection stops receiving until
/// its responses are sent (a client pipelining faster than it reads).
pub const MAX_CARRY_BYTES: usize = 64 * 1024;
/// Outboxes kept for reuse per worker, and the largest staging buffer kept:
/// enough for every connection of a busy worker to have a response in
/// flight without allocating, and at most 16 MiB kept (usually 4 KiB each).
const MAX_POOLED_OUTBOXES: usize = 512;
const MAX_POOLED_OUTPUT_BYTES: usize = 32 * 1024;
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
}

#[derive(Debug)]
pub struct Conn {
    pub fd: RawFd,
    pub phase: Phase,
    pub recv: RecvState,
    pub input: InputState,
    pub output: OutputState,
    /// What the session said to do once the outbox is sent.
    pub after_send: Next,
    session: Session,
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
    pub fn new(fd: RawFd, peer: Option<Box<IpAddr>>, cx: &ServeContext) -> Conn {
        Conn {
            fd,
            phase: Phase::Open,
            recv: RecvState::Idle,
            input: InputState::Fresh,
            output: OutputState::Idle,
            after_send: Next::Read,
            session: Session::new(),
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
        matches!(self.output, OutputState::InFlight(_))
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
        cx.deadline(waiting, &mut self.clock, &self.session, self.carry.len())
    }

    /// Records that an output operation of kind `op` is being submitted (the
    /// first one of an outbox starts the no-progress clock).
    pub fn on_output_submitted(&mut self, op: OpKind, now: Millis) {
        if !self.output_in_flight()
            && self
                .outbox
                .as_ref()
                .is_some_and(|o| o.sent == 0 && o.chunk.is_empty())
        {
            self.send_progress = now;
        }
        self.output = OutputState::InFlight(op);
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
            // never answered.
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
        let mut outbox = self.outbox.take().unwrap_or_else(|| pool.take());
        let peer = self.peer();
        let progress = policy::answer(
            &mut self.session,
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
        if outbox.output.is_empty() {
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
        if let Some(outbox) = self.outbox.take() {
            pool.give(outbox);
        }
        if policy::ends_after_output(self.after_send) {
            self.phase = Phase::Lingering(Lingering::new(self.carry.len()));
            if cx.own_buffers {
                // A single-shot receive into `carry` may be armed (a 408 is
                // sent while the head is still awaited): empty it, never
                // free it under the kernel.
                self.carry.clear();
            } else {
                self.carry.release();
            }
            return Reaction::StartLinger;
        }
        self.after_send = Next::Read;
        if self.carry.is_empty() {
            Reaction::Nothing
        } else {
            self.answer(None, cx, pool)
        }
    }

    /// The read of a file chunk completed with `result` (bytes, or -errno):
    /// send the chunk, or give up on a response that cannot be completed.
    pub fn on_file_read(&mut self, result: i32, now: Millis) -> Reaction {
        self.output = OutputState::Idle;
        self.send_progress = now;
        let read = usize::try_from(result).unwrap_or(0);
        let complete = self.outbox.as_mut().is_some_and(|outbox| outbox.on_read(read));
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
        let peer = self.peer();
        self.after_send = policy::head_timeout(
            &mut self.session,
            &self.carry,
            cx.observer(peer),
            &mut outbox.output,
        );
        self.outbox = Some(outbox);
        self.carry.clear();
        Reaction::Flush
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

/// Responses waiting to be sent, and the arguments of the operation that
/// sends (or reads) the next part of them.
///
/// The output's pieces go out in order ([`Output::pieces`]): bytes in memory
/// (staged heads, the snapshot's refcounted bodies) are sent from where they
/// are; a [`Piece::File`](crate::http::response::Piece::File) range is read
/// from its file into `chunk` (at most [`FILE_CHUNK_BYTES`] at a time) and
/// sent from there, each chunk sent before the next is read. One operation
/// at a time: [`Outbox::next_op`] says which.
///
/// Boxed, and kept by its connection until that operation's completion: the
/// kernel reads the output's bytes, `chunk`, the iovec array and the
/// `msghdr`, and writes `chunk`, through raw pointers while it is in flight,
/// so none of them may move, be freed or (apart from the kernel's write into
/// `chunk`) change until then. The box keeps their addresses fixed when the
/// connection table grows; the output holds the file's descriptor open (its
/// `Arc<File>`); the connection keeps the box until the operation's final
/// completion (see the driver's close path).
#[derive(Debug)]
pub struct Outbox {
    pub output: Output,
    /// Bytes of `output` already sent.
    sent: usize,
    /// Bytes of a file range read from disk: `chunk` holds output bytes from
    /// `chunk_at` on (empty when no chunk is held).
    chunk: Vec<u8>,
    chunk_at: usize,
    iovecs: Vec<libc::iovec>,
    msghdr: libc::msghdr,
}

/// The next operation an outbox needs, described (the driver turns it into
/// a submission with [`OutputOp::entry`]). Its pointers point into the outbox.
#[derive(Debug, Clone, Copy)]
pub enum OutputOp {
    /// Send `len` bytes from `bytes`.
    Send { bytes: *const u8, len: u32 },
    /// Send what the outbox's iovecs describe (`sendmsg`).
    SendMsg { msghdr: *const libc::msghdr },
    /// Read up to `len` bytes of the file `fd` at `offset` into the outbox's
    /// chunk buffer at `buffer`.
    Read {
        fd: RawFd,
        buffer: *mut u8,
        len: u32,
        offset: u64,
    },
}

impl OutputOp {
    pub fn kind(&self) -> OpKind {
        match self {
            OutputOp::Send { .. } | OutputOp::SendMsg { .. } => OpKind::Send,
            OutputOp::Read { .. } => OpKind::Read,
        }
    }

    /// The submission for this operation on `socket`.
    pub fn entry(&self, socket: RawFd, user_data: u64) -> squeue::Entry {
        let entry = match *self {
            OutputOp::Send { bytes, len } => opcode::Send::new(types::Fd(socket), bytes, len)
                .flags(libc::MSG_NOSIGNAL)
                .build(),
            OutputOp::SendMsg { msghdr } => opcode::SendMsg::new(types::Fd(socket), msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build(),
            OutputOp::Read {
                fd,
                buffer,
                len,
                offset,
            } => opcode::Read::new(types::Fd(fd), buffer, len)
                .offset(offset)
                .build(),
        };
        entry.user_data(user_data)
    }
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            // Grown to what its responses need (a 1 KiB file's response is
            // about 1.3 KB) and kept at that size while pooled: the pool holds
            // one outbox per response that was in flight at once.
            output: Output::new(),
            sent: 0,
            chunk: Vec::new(),
            chunk_at: 0,
            iovecs: Vec::new(),
            // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
            msghdr: unsafe { std::mem::zeroed() },
        }
    }

    /// Whether every byte has been sent.
    pub fn is_done(&self) -> bool {
        self.sent >= self.output.len()
    }

    /// The operation that moves the output on: one `send` when it is
    /// contiguous (the common case), otherwise one `send`/`sendmsg` of
    /// everything that can go now (in-memory pieces, and the chunk of a file
    /// range already read), or, when the next bytes are in a file, the `read`
    /// of their chunk. Call only when no operation of this outbox is in
    /// flight and bytes are left.
    ///
    /// The operation points into `self`; see the type's documentation for
    /// what that requires until its completion.
    pub fn next_op(&mut self) -> OutputOp {
        debug_assert!(!self.is_done());
        if let Some(bytes) = self.output.as_contiguous() {
            let rest = &bytes[self.sent..];
            return OutputOp::Send {
                bytes: rest.as_ptr(),
                len: u32::try_from(rest.len()).unwrap_or(u32::MAX),
            };
        }
        self.iovecs.clear();
        let chunk_end = self.chunk_at + self.chunk.len();
        let mut start = 0;
        for piece in self.output.pieces() {
            let piece_len = match piece {
                PieceRef::Bytes(bytes) => bytes.len(),
                PieceRef::File(range) => usize::try_from(range.len).unwrap_or(usize::MAX),
            };
            let end = start + piece_len;
            if end <= self.sent {
                start = end;
                continue;
            }
            let cursor = self.sent.max(start);
            match piece {
                PieceRef::Bytes(bytes) => push_iovec(&mut self.iovecs, &bytes[cursor - start..]),
                PieceRef::File(range) => {
                    if self.chunk_at <= cursor && cursor < chunk_end {
                        push_iovec(&mut self.iovecs, &self.chunk[cursor - self.chunk_at..]);
                        if chunk_end < end {
                            // The rest of this range is still on disk.
                            break;
                        }
                    } else if !self.iovecs.is_empty() {
                        break;
                    } else {
                        let want = (end - cursor).min(FILE_CHUNK_BYTES);
                        self.chunk.clear();
                        self.chunk.reserve_exact(want);
                        self.chunk_at = cursor;
                        return OutputOp::Read {
                            fd: range.file.as_raw_fd(),
                            buffer: self.chunk.as_mut_ptr(),
                            len: want as u32,
                            offset: range.offset + (cursor - start) as u64,
                        };
                    }
                }
            }
            if self.iovecs.len() == MAX_IOVECS {
                break;
            }
            start = end;
        }
        if let [single] = self.iovecs[..] {
            return OutputOp::Send {
                bytes: single.iov_base.cast(),
                len: u32::try_from(single.iov_len).unwrap_or(u32::MAX),
            };
        }
        self.msghdr.msg_iov = self.iovecs.as_mut_ptr();
        self.msghdr.msg_iovlen = self.iovecs.len();
        OutputOp::SendMsg { msghdr: &self.msghdr }
    }

    /// A send took `len` bytes.
    pub fn on_sent(&mut self, len: usize) {
        self.sent += len;
        if self.sent >= self.chunk_at + self.chunk.len() {
            self.chunk.clear();
        }
    }

    /// The read of a file chunk returned `len` bytes; `false` if the response
    /// cannot be completed (0 bytes: the file shrank since the snapshot was
    /// built).
    pub fn on_read(&mut self, len: usize) -> bool {
        if len == 0 || len > self.chunk.capacity() {
            self.chunk.clear();
            return false;
        }
        // SAFETY: the read pointed the kernel at `chunk`'s spare capacity
        // (it was empty, with at least the requested length reserved), and
        // the kernel reports having written `len` bytes there, no more than
        // the capacity (checked above).
        unsafe { self.chunk.set_len(len) };
        true
    }
}

fn push_iovec(iovecs: &mut Vec<libc::iovec>, bytes: &[u8]) {
    if !bytes.is_empty() {
        iovecs.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
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
        // A file chunk buffer is large and rare: not kept.
        outbox.chunk = Vec::new();
        outbox.chunk_at = 0;
        outbox.iovecs.clear();
        self.free.push(outbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write as _;

    use bytes::Bytes;

    use crate::files::{Body, DiskFile, FileIdentity};

    /// Plays the kernel: runs the outbox's operations until it is done,
    /// sending at most `max_send` bytes per send; returns what was sent and
    /// how many file reads it took.
    fn run_outbox(outbox: &mut Outbox, max_send: usize) -> (Vec<u8>, usize) {
        let mut sent = Vec::new();
        let mut reads = 0;
        while !outbox.is_done() {
            match outbox.next_op() {
                OutputOp::Send { bytes, len } => {
                    let len = (len as usize).min(max_send);
                    // SAFETY: the operation points into the outbox, which is
                    // alive and unchanged until `on_sent`.
                    sent.extend_from_slice(unsafe { std::slice::from_raw_parts(bytes, len) });
                    outbox.on_sent(len);
                }
                OutputOp::SendMsg { .. } => {
                    let mut taken = 0;
                    for iovec in &outbox.iovecs {
                        let len = iovec.iov_len.min(max_send - taken);
                        // SAFETY: as above, for each iovec.
                        sent.extend_from_slice(unsafe {
                            std::slice::from_raw_parts(iovec.iov_base as *const u8, len)
                        });
                        taken += len;
                        if taken == max_send {
                            break;
                        }
                    }
                    outbox.on_sent(taken);
                }
                OutputOp::Read {
                    fd,
                    buffer,
                    len,
                    offset,
                } => {
                    reads += 1;
                    assert!(len as usize <= FILE_CHUNK_BYTES);
                    // SAFETY: pread writes at most `len` bytes into the
                    // outbox's chunk buffer, which has that much capacity.
                    let n = unsafe { libc::pread(fd, buffer.cast(), len as usize, offset as libc::off_t) };
                    assert!(outbox.on_read(usize::try_from(n).unwrap()), "read {n}");
                }
            }
        }
        (sent, reads)
    }

    fn disk_file(bytes: &[u8]) -> (Body, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringserve-outbox-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let identity = FileIdentity::of(&file.metadata().unwrap());
        let body = Body::Disk(DiskFile {
            file: std::sync::Arc::new(file),
            len: bytes.len() as u64,
            identity,
        });
        (body, path)
    }

    #[test]
    fn file_ranges_stream_in_bounded_chunks_between_in_memory_pieces() {
        let content: Vec<u8> = (0..300 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let (body, path) = disk_file(&content);
        let shared = Bytes::from(vec![b's'; 20_000]);
        let mut pool = OutboxPool::default();
        for max_send in [usize::MAX, 50_000, 7] {
            let mut outbox = pool.take();
            outbox.output.push(b"HEAD1\r\n\r\n");
            outbox.output.push_whole_body(&body);
            outbox.output.push(b"HEAD2\r\n\r\n");
            outbox.output.push_body(&shared);
            outbox.output.push(b"HEAD3\r\n\r\n");
            outbox.output.push_body_range(&body, 1000, 10);
            let mut expected = b"HEAD1\r\n\r\n".to_vec();
            expected.extend_from_slice(&content);
            expected.extend_from_slice(b"HEAD2\r\n\r\n");
            expected.extend_from_slice(&shared);
            expected.extend_from_slice(b"HEAD3\r\n\r\n");
            expected.extend_from_slice(&content[1000..1010]);
            let (sent, reads) = run_outbox(&mut outbox, max_send);
            assert!(sent == expected, "max_send {max_send}: bytes differ");
            // 300 KiB in 128 KiB chunks, then the 10-byte range.
            assert_eq!(reads, 4, "max_send {max_send}");
            assert!(outbox.chunk.capacity() <= FILE_CHUNK_BYTES);
            pool.give(outbox);
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_cut_short_fails_the_response() {
        let (body, path) = disk_file(&[1u8; 1000]);
        // The snapshot believes the file is longer than it now is.
        let Body::Disk(disk) = &body else { unreachable!() };
        let longer = Body::Disk(DiskFile {
            file: disk.file.clone(),
            len: 5000,
            identity: disk.identity,
        });
        let mut outbox = OutboxPool::default().take();
        outbox.output.push_whole_body(&longer);
        let OutputOp::Read {
            fd,
            buffer,
            len,
            offset,
        } = outbox.next_op()
        else {
            panic!("the first operation reads the file")
        };
        // SAFETY: as in `run_outbox`.
        let n = unsafe { libc::pread(fd, buffer.cast(), len as usize, offset as libc::off_t) };
        assert_eq!(n, 1000);
        assert!(outbox.on_read(1000));
        let OutputOp::Send { len, .. } = outbox.next_op() else {
            panic!("then sends the chunk")
        };
        outbox.on_sent(len as usize);
        assert!(matches!(outbox.next_op(), OutputOp::Read { offset: 1000, .. }));
        assert!(!outbox.on_read(0), "end of file before the range's end");
        let _ = std::fs::remove_file(path);
    }

    /// An idle connection costs its slot in the table plus a few small
    /// allocations (the session's path scratch, a deadline entry); the
    /// engine's budget is 256 bytes in all, so the slot must stay small.
    #[test]
    fn a_connection_slot_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 144, "Conn grew to {size} bytes");
    }
}
