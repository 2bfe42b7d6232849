//! Send memory of the `uring` engine: everything a send or a file read
//! lends to the kernel, in one small file so each pointer can be audited.
//!
//! A connection's responses wait in an [`Outbox`]: the output's bytes, the
//! chunk buffer a file range is read into, the iovec array and the `msghdr`
//! of a `sendmsg`. [`Outbox::next_op`] describes the next operation as an
//! [`OutputOp`] whose pointers point into the (boxed) outbox; the driver
//! submits it and keeps the box, unchanged, until its completion. The other
//! memory lent to the kernel is in `buffers` (the provided-buffer ring) and
//! `ring` (the timeout's timespec, and the rule that the loop returns only
//! when nothing is in flight).
//!
//! **Splice** (`--uring-splice`, plain HTTP only: TLS must encrypt the bytes
//! in user space): a file range then goes file → pipe → socket, two
//! `IORING_OP_SPLICE`s per chunk, sequential rather than linked (a short
//! splice breaks an `IOSQE_IO_LINK` chain, and the second splice's length is
//! only known from the first's result). The outbox holds the connection's
//! [`Pipe`] while it streams and tracks what it holds ([`PipeState`]): a
//! short splice into the socket continues with what is left in the pipe,
//! before anything else; the pipe goes back to the worker's pool only when
//! empty, and is closed otherwise ([`OutboxPool::give`]).

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::op::OpKind;
use super::pipes::{Pipe, PipePool};
use crate::engine::FILE_CHUNK_BYTES;
use crate::engine::policy::{Pool, Pooled};
use crate::http::Output;
use crate::http::response::{PieceAt, PieceRef};
use crate::protocol::Protocol;
use crate::tls::{FileChunk, Pull};

/// Most pieces one sendmsg carries (Linux's `IOV_MAX`); the rest goes in the
/// next send.
const MAX_IOVECS: usize = 1024;

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
    /// HTTPS: a file chunk to read into `chunk` and seal into `output`
    /// before sending it ([`Pull::ReadFile`]).
    seal: Option<FileChunk>,
    /// Splice: the pipe file ranges go through (taken on the first range
    /// spliced), and what it holds.
    pipe: Option<Pipe>,
    piped: PipeState,
}

/// What the outbox's pipe holds. Output bytes in the pipe are always the
/// next ones to send (from `sent` on): nothing else goes out before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    /// Nothing (or no pipe).
    Empty,
    /// A splice file → pipe is in flight.
    Filling,
    /// `n` bytes wait in the pipe.
    Holding(usize),
    /// A splice pipe → socket of the `n` bytes held is in flight.
    Draining(usize),
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
    /// Splice up to `len` bytes of the file `fd` at `offset` into the pipe
    /// whose write end is `pipe`.
    SpliceIn {
        fd: RawFd,
        offset: u64,
        pipe: RawFd,
        len: u32,
    },
    /// Splice the `len` bytes held in the pipe whose read end is `pipe` into
    /// the socket.
    SpliceOut { pipe: RawFd, len: u32 },
}

impl OutputOp {
    pub fn kind(&self) -> OpKind {
        match self {
            // A splice into the socket completes as a send would, one from
            // the file as a read would: the outbox's state says which it was.
            OutputOp::Send { .. } | OutputOp::SendMsg { .. } | OutputOp::SpliceOut { .. } => OpKind::Send,
            OutputOp::Read { .. } | OutputOp::SpliceIn { .. } => OpKind::Read,
        }
    }

    /// The submission for this operation on `socket`. With `link`, a send
    /// is the head of a link (`IOSQE_IO_LINK`) whose next entry (the close)
    /// runs only if the send succeeds, and it is sent with `MSG_WAITALL`:
    /// in io_uring/net.c (`io_send`, `io_sendmsg`), `MSG_WAITALL` sets the
    /// minimum result to the whole length; a partial send on a stream socket
    /// is retried from where it stopped (`io_net_retry`: `MSG_WAITALL` and
    /// `SOCK_STREAM`) until all of it is sent, and a send that ends short
    /// (an error after partial progress, a cancel) is marked failed
    /// (`req_set_fail`), which breaks the link: the close then completes
    /// with `ECANCELED` instead of closing under a partial response. (On a
    /// plain send, without the flag, a short send is a success and the
    /// close would follow it.) `MSG_WAITALL` means nothing to TCP's own
    /// `sendmsg`: only io_uring reads it.
    pub fn entry(&self, socket: RawFd, user_data: u64, link: bool) -> squeue::Entry {
        let (msg_flags, sqe_flags) = if link {
            (libc::MSG_NOSIGNAL | libc::MSG_WAITALL, squeue::Flags::IO_LINK)
        } else {
            (libc::MSG_NOSIGNAL, squeue::Flags::empty())
        };
        let entry = match *self {
            OutputOp::Send { bytes, len } => opcode::Send::new(types::Fd(socket), bytes, len)
                .flags(msg_flags)
                .build()
                .flags(sqe_flags),
            OutputOp::SendMsg { msghdr } => opcode::SendMsg::new(types::Fd(socket), msghdr)
                .flags(msg_flags as u32)
                .build()
                .flags(sqe_flags),
            OutputOp::Read {
                fd,
                buffer,
                len,
                offset,
            } => opcode::Read::new(types::Fd(fd), buffer, len)
                .offset(offset)
                .build(),
            // The pipe is empty before a splice into it (it takes what fits)
            // and holds `len` bytes before one out of it, so neither waits on
            // the pipe; the latter says so (SPLICE_F_NONBLOCK: a mistake
            // would fail, not hang an io-wq worker). The former does not: a
            // page-cache miss must wait for the disk, not fail.
            OutputOp::SpliceIn {
                fd,
                offset,
                pipe,
                len,
            } => opcode::Splice::new(types::Fd(fd), offset as i64, types::Fd(pipe), -1, len).build(),
            OutputOp::SpliceOut { pipe, len } => {
                opcode::Splice::new(types::Fd(pipe), -1, types::Fd(socket), -1, len)
                    .flags(libc::SPLICE_F_NONBLOCK)
                    .build()
            }
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
            seal: None,
            pipe: None,
            piped: PipeState::Empty,
        }
    }

    /// Whether nothing of it has been sent or read yet (its first
    /// operation starts the no-progress clock).
    pub fn is_untouched(&self) -> bool {
        self.sent == 0 && self.chunk.is_empty() && matches!(self.piped, PipeState::Empty | PipeState::Filling)
    }

    /// Whether every byte has been sent.
    pub fn is_done(&self) -> bool {
        self.sent >= self.output.len()
    }

    /// Bytes not sent yet.
    pub fn left(&self) -> usize {
        self.output.len().saturating_sub(self.sent)
    }

    /// Whether `op` (the last [`Outbox::next_op`]) sends everything left: a
    /// send that completes in full leaves nothing to send. (HTTPS output
    /// is never complete until the protocol says so, and is never asked.)
    pub fn sends_rest(&self, op: &OutputOp) -> bool {
        let bytes = match *op {
            OutputOp::Send { len, .. } => len as usize,
            OutputOp::SendMsg { .. } => self.iovecs.iter().map(|iovec| iovec.iov_len).sum(),
            // A splice into the socket is no send: a short one succeeds,
            // and a close linked to it would cut the response.
            OutputOp::Read { .. } | OutputOp::SpliceIn { .. } | OutputOp::SpliceOut { .. } => return false,
        };
        self.seal.is_none() && bytes == self.left()
    }

    /// The operation that moves the output on: one `send` when it is
    /// contiguous (the common case), otherwise one `send`/`sendmsg` of
    /// everything that can go now (in-memory pieces, and the chunk of a file
    /// range already read), or, when the next bytes are in a file, the `read`
    /// of their chunk. Call only when no operation of this outbox is in
    /// flight and bytes are left.
    ///
    /// With `pipes` (splice on, plain HTTP), file ranges are spliced through
    /// a pipe instead: bytes held in the pipe go first, and a range's next
    /// chunk is spliced into the pipe when they are gone.
    ///
    /// The operation points into `self`; see the type's documentation for
    /// what that requires until its completion.
    pub fn next_op(&mut self, mut pipes: Option<&mut PipePool>) -> OutputOp {
        if let (PipeState::Holding(held), Some(pipe)) = (self.piped, &self.pipe) {
            self.piped = PipeState::Draining(held);
            return OutputOp::SpliceOut {
                pipe: pipe.read_fd(),
                len: held as u32,
            };
        }
        if let Some(seal) = &self.seal {
            // HTTPS: read the chunk first; it is sealed after what `output`
            // holds, and both go out in the next send.
            self.chunk.clear();
            self.chunk.reserve_exact(seal.len);
            return OutputOp::Read {
                fd: seal.file.as_raw_fd(),
                buffer: self.chunk.as_mut_ptr(),
                len: u32::try_from(seal.len).unwrap_or(u32::MAX),
                offset: seal.offset,
            };
        }
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
        for PieceAt { piece, start, len } in self.output.pieces_after(self.sent) {
            let end = start + len;
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
                        if self.pipe.is_none() {
                            self.pipe = pipes.as_mut().and_then(|pipes| pipes.take());
                        }
                        if let Some(pipe) = &self.pipe {
                            self.piped = PipeState::Filling;
                            return OutputOp::SpliceIn {
                                fd: range.file.as_raw_fd(),
                                offset: range.offset + (cursor - start) as u64,
                                pipe: pipe.write_fd(),
                                len: want.min(pipe.capacity()) as u32,
                            };
                        }
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

    /// Asks `protocol` for more to send (HTTPS; nothing for plain HTTP):
    /// whether the outbox now has work (bytes to send or a chunk to read).
    pub fn pull(&mut self, protocol: &mut Protocol) -> bool {
        match protocol.pull_output(&mut self.output) {
            Pull::Send => true,
            Pull::ReadFile(chunk) => {
                self.seal = Some(chunk);
                true
            }
            Pull::Done => !self.output.is_empty(),
        }
    }

    /// After the read for `seal` completed into `chunk`: seals it into the
    /// output; `false` if the response cannot be completed. (Plain HTTP: the
    /// chunk is sent from where it is, nothing to do.)
    pub fn seal_chunk(&mut self, protocol: &mut Protocol) -> bool {
        if self.seal.take().is_none() {
            return true;
        }
        let sealed = protocol.seal_file_chunk(&self.chunk, &mut self.output);
        self.chunk.clear();
        sealed
    }

    /// HTTPS: everything sent; empties the output for the protocol's next
    /// records.
    pub fn reset_sent(&mut self) {
        self.output.clear();
        self.sent = 0;
    }

    /// A send (or a splice out of the pipe) took `len` bytes.
    pub fn on_sent(&mut self, len: usize) {
        if let PipeState::Draining(held) = self.piped {
            let left = held.saturating_sub(len);
            self.piped = if left == 0 {
                PipeState::Empty
            } else {
                PipeState::Holding(left)
            };
        }
        self.sent += len;
        if self.sent >= self.chunk_at + self.chunk.len() {
            self.chunk.clear();
        }
    }

    /// The read of a file chunk returned `len` bytes; `false` if the response
    /// cannot be completed (0 bytes: the file shrank since the snapshot was
    /// built).
    pub fn on_read(&mut self, len: usize) -> bool {
        if self.piped == PipeState::Filling {
            // A splice into the pipe; on failure the pipe is not reused
            // (`piped` stays `Filling`).
            if len == 0 || self.pipe.as_ref().is_none_or(|pipe| len > pipe.capacity()) {
                return false;
            }
            self.piped = PipeState::Holding(len);
            return true;
        }
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

/// Outboxes of connections that have nothing to send, for reuse (boxed:
/// a send's `msghdr` must not move, and pooling the boxes saves an
/// allocation), and the worker's empty pipes (splice).
#[derive(Debug, Default)]
pub struct OutboxPool {
    outboxes: Pool<Outbox>,
    pub pipes: PipePool,
}

impl OutboxPool {
    pub fn take(&mut self) -> Box<Outbox> {
        self.outboxes.take()
    }

    /// Takes back an outbox with no operation in flight. Its pipe goes back
    /// to the pool if it is known to be empty; otherwise (an error, a close
    /// while a splice was in flight: its completion was not counted) it is
    /// closed, with whatever it held.
    pub fn give(&mut self, mut outbox: Box<Outbox>) {
        if let Some(pipe) = outbox.pipe.take() {
            if outbox.piped == PipeState::Empty {
                self.pipes.give_empty(pipe);
            }
        }
        outbox.piped = PipeState::Empty;
        self.outboxes.give(outbox);
    }
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new()
    }
}

impl Pooled for Outbox {
    fn output(&self) -> &Output {
        &self.output
    }

    fn reset(&mut self) {
        self.output.clear();
        self.sent = 0;
        // A file chunk buffer is large and rare: not kept.
        self.chunk = Vec::new();
        self.chunk_at = 0;
        self.iovecs.clear();
        self.seal = None;
        // `OutboxPool::give` took the pipe.
        self.pipe = None;
        self.piped = PipeState::Empty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    use crate::files::DiskFile;

    /// Plays the kernel: runs the outbox's operations until it is done,
    /// sending at most `max_send` bytes per send (or splice into the socket),
    /// splicing through a pipe from `pipes` if given; returns what was sent
    /// and how many file reads (or splices from the file) it took.
    fn run_outbox(
        outbox: &mut Outbox,
        max_send: usize,
        mut pipes: Option<&mut PipePool>,
    ) -> (Vec<u8>, usize) {
        let mut sent = Vec::new();
        let mut reads = 0;
        while !outbox.is_done() {
            match outbox.next_op(pipes.as_deref_mut()) {
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
                OutputOp::SpliceIn {
                    fd,
                    offset,
                    pipe,
                    len,
                } => {
                    reads += 1;
                    assert!(len as usize <= FILE_CHUNK_BYTES);
                    let n = splice_in(fd, offset, pipe, len);
                    assert!(outbox.on_read(usize::try_from(n).unwrap()), "splice {n}");
                }
                OutputOp::SpliceOut { pipe, len } => {
                    let mut bytes = vec![0u8; (len as usize).min(max_send)];
                    // SAFETY: read(2) writes at most `bytes.len()` bytes into it.
                    let n = unsafe { libc::read(pipe, bytes.as_mut_ptr().cast(), bytes.len()) };
                    assert_eq!(n, bytes.len() as isize, "the pipe holds what the outbox says");
                    sent.extend_from_slice(&bytes);
                    outbox.on_sent(bytes.len());
                }
            }
        }
        (sent, reads)
    }

    /// `splice(2)` of up to `len` bytes of `fd` at `offset` into `pipe`.
    fn splice_in(fd: RawFd, offset: u64, pipe: RawFd, len: u32) -> isize {
        let mut offset = offset as libc::loff_t;
        // SAFETY: splice reads and updates the one offset we pass; it moves
        // bytes between two descriptors we own.
        unsafe { libc::splice(fd, &mut offset, pipe, std::ptr::null_mut(), len as usize, 0) }
    }

    #[test]
    fn file_ranges_stream_in_bounded_chunks_between_in_memory_pieces() {
        let content: Vec<u8> = (0..300 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let (body, path) = DiskFile::body_for_tests(&content);
        let shared = Bytes::from(vec![b's'; 20_000]);
        let mut pool = OutboxPool::default();
        for splice in [false, true] {
            for max_send in [usize::MAX, 50_000, 7] {
                let mut outbox = pool.take();
                let expected = crate::engine::policy::mixed_output_for_tests(
                    &mut outbox.output,
                    &body,
                    &content,
                    &shared,
                );
                let (sent, reads) = run_outbox(&mut outbox, max_send, splice.then_some(&mut pool.pipes));
                assert!(
                    sent == expected,
                    "splice {splice}, max_send {max_send}: bytes differ"
                );
                assert!(outbox.chunk.capacity() <= FILE_CHUNK_BYTES);
                if splice {
                    assert!(outbox.chunk.capacity() == 0, "spliced, never read");
                    let capacity = outbox.pipe.as_ref().unwrap().capacity();
                    // 300 KiB in chunks of the pipe's size, then the 10-byte range.
                    assert_eq!(reads, (300usize * 1024 + 17).div_ceil(capacity) + 1);
                } else {
                    // 300 KiB in 128 KiB chunks, then the 10-byte range.
                    assert_eq!(reads, 4, "max_send {max_send}");
                }
                pool.give(outbox);
                assert_eq!(
                    pool.pipes.pooled(),
                    usize::from(splice),
                    "an emptied pipe is pooled"
                );
            }
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_cut_short_fails_the_response() {
        let (longer, path) = DiskFile::shrunk_body_for_tests();
        let mut outbox = OutboxPool::default().take();
        outbox.output.push_whole_body(&longer);
        let OutputOp::Read {
            fd,
            buffer,
            len,
            offset,
        } = outbox.next_op(None)
        else {
            panic!("the first operation reads the file")
        };
        // SAFETY: as in `run_outbox`.
        let n = unsafe { libc::pread(fd, buffer.cast(), len as usize, offset as libc::off_t) };
        assert_eq!(n, 1000);
        assert!(outbox.on_read(1000));
        let OutputOp::Send { len, .. } = outbox.next_op(None) else {
            panic!("then sends the chunk")
        };
        outbox.on_sent(len as usize);
        assert!(matches!(
            outbox.next_op(None),
            OutputOp::Read { offset: 1000, .. }
        ));
        assert!(!outbox.on_read(0), "end of file before the range's end");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_cut_short_fails_the_spliced_response_and_its_pipe_is_not_reused() {
        let (longer, path) = DiskFile::shrunk_body_for_tests();
        let mut pool = OutboxPool::default();
        let mut outbox = pool.take();
        outbox.output.push_whole_body(&longer);
        let OutputOp::SpliceIn {
            fd,
            offset,
            pipe,
            len,
        } = outbox.next_op(Some(&mut pool.pipes))
        else {
            panic!("the first operation splices the file into the pipe")
        };
        assert_eq!(splice_in(fd, offset, pipe, len), 1000);
        assert!(outbox.on_read(1000));
        // The socket takes 400 bytes, then the rest of what the pipe holds.
        let OutputOp::SpliceOut { len: 1000, .. } = outbox.next_op(Some(&mut pool.pipes)) else {
            panic!("then splices the pipe into the socket")
        };
        outbox.on_sent(400);
        let OutputOp::SpliceOut { pipe, len: 600 } = outbox.next_op(Some(&mut pool.pipes)) else {
            panic!("a short splice continues with what the pipe still holds")
        };
        let mut drained = [0u8; 1000];
        // SAFETY: read(2) writes at most 1000 bytes into the array.
        let drained_len = unsafe { libc::read(pipe, drained.as_mut_ptr().cast(), 1000) };
        assert_eq!(drained_len, 1000);
        outbox.on_sent(600);
        let OutputOp::SpliceIn {
            fd,
            offset: 1000,
            pipe,
            len,
        } = outbox.next_op(Some(&mut pool.pipes))
        else {
            panic!("then splices the next chunk")
        };
        assert_eq!(splice_in(fd, 1000, pipe, len), 0);
        assert!(!outbox.on_read(0), "end of file before the range's end");
        pool.give(outbox);
        assert_eq!(pool.pipes.pooled(), 0, "a pipe in an unknown state is closed");
        let _ = std::fs::remove_file(path);
    }
}
