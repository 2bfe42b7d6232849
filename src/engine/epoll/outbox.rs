//! Responses waiting to be written on one connection of the `epoll` engine,
//! and how the next part of them is written.
//!
//! The output's pieces go out in order ([`Output::pieces`]): when it is one
//! contiguous buffer (the common case), with one `send`; otherwise in-memory
//! pieces (staged heads, the snapshot's refcounted bodies) with one
//! `sendmsg` of up to [`MAX_IOVECS`] slices, and a file range
//! ([`crate::http::response::Piece::File`], a body too large for memory)
//! with `sendfile(2)`, straight from the page cache to the socket: no chunk
//! buffer, no copy through user space (what nginx does). A write that the
//! socket takes only in part leaves [`Outbox::sent`] where it stopped; the
//! loop writes again when the socket is writable.
//!
//! On an HTTPS connection the output is ciphertext pulled from the
//! [`Protocol`] ([`Outbox::pull`]): a file range there is read with
//! `pread(2)` into the outbox's chunk buffer and sealed by the protocol
//! (`sendfile` moves plaintext only), then written like any bytes.
//!
//! Nothing here is lent to the kernel beyond one call (readiness I/O is
//! synchronous), so an outbox may move freely; it is boxed only to keep the
//! connection small, and pooled so a busy worker does not allocate one per
//! response.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;

use super::sys;
use crate::engine::policy::{Pool, Pooled};
use crate::http::Output;
use crate::http::response::{PieceAt, PieceRef};
use crate::protocol::Protocol;
use crate::tls::Pull;

/// Most slices one `sendmsg` carries (Linux's `IOV_MAX`); the rest goes in
/// the next write.
const MAX_IOVECS: usize = 1024;
/// Most bytes one `sendfile` call is asked for: a large file on a fast
/// client is written in several calls, so other connections of the worker
/// get their turn in between (the socket's buffer bounds a call anyway).
const MAX_SENDFILE_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct Outbox {
    pub output: Output,
    /// Bytes of `output` already written.
    sent: usize,
    /// HTTPS: a file chunk read with `pread` before the protocol seals it
    /// (empty otherwise).
    chunk: Vec<u8>,
}

impl Outbox {
    /// Whether every byte has been written.
    pub fn is_done(&self) -> bool {
        self.sent >= self.output.len()
    }

    /// Asks `protocol` for more to write (HTTPS; nothing for plain HTTP):
    /// whether the outbox now has bytes to write. A file chunk the
    /// protocol asks for is read here (`pread`) and sealed into the output;
    /// an error if that fails (the response cannot be completed).
    pub fn pull(&mut self, protocol: &mut Protocol) -> io::Result<bool> {
        match protocol.pull_output(&mut self.output) {
            Pull::Send => Ok(true),
            Pull::Done => Ok(!self.output.is_empty()),
            Pull::ReadFile(chunk) => {
                self.chunk.clear();
                self.chunk.resize(chunk.len, 0);
                let read = loop {
                    match chunk.file.read_at(&mut self.chunk, chunk.offset) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other?,
                    }
                };
                let sealed = protocol.seal_file_chunk(&self.chunk[..read], &mut self.output);
                self.chunk.clear();
                if sealed {
                    Ok(true)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                }
            }
        }
    }

    /// HTTPS: everything was written; empties the output for the
    /// protocol's next records.
    pub fn reset_sent(&mut self) {
        self.output.clear();
        self.sent = 0;
    }

    /// Makes one write of what is left (one `send`, `sendmsg` or
    /// `sendfile`); returns the bytes written, never 0. `WouldBlock` when the
    /// socket is full; [`io::ErrorKind::UnexpectedEof`] when a file ended
    /// before its range did (it shrank since the snapshot was built: the
    /// response can no longer be completed); other errors are the peer's.
    /// Call only while bytes are left.
    pub fn write_to(&mut self, socket: RawFd) -> io::Result<usize> {
        debug_assert!(!self.is_done());
        let written = if let Some(bytes) = self.output.as_contiguous() {
            sys::send(socket, &bytes[self.sent..])?
        } else {
            self.write_pieces(socket)?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.sent += written;
        Ok(written)
    }

    /// The in-memory pieces from `sent` up to the next file range in one
    /// `sendmsg`, or, when the next bytes are in a file, one `sendfile`.
    fn write_pieces(&self, socket: RawFd) -> io::Result<usize> {
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        for PieceAt { piece, start, len } in self.output.pieces_after(self.sent) {
            let skip = self.sent.max(start) - start;
            match piece {
                PieceRef::Bytes(bytes) => slices.push(IoSlice::new(&bytes[skip..])),
                PieceRef::File(_) if !slices.is_empty() => break,
                PieceRef::File(range) => {
                    let want = (len - skip).min(MAX_SENDFILE_BYTES);
                    let n = sys::sendfile(socket, &range.file, range.offset + skip as u64, want)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    return Ok(n);
                }
            }
            if slices.len() == MAX_IOVECS {
                break;
            }
        }
        match slices[..] {
            [single] => sys::send(socket, &single),
            _ => sys::send_vectored(socket, &slices),
        }
    }
}

/// Outboxes of connections that have nothing to send, for reuse.
pub type OutboxPool = Pool<Outbox>;

impl Pooled for Outbox {
    fn output(&self) -> &Output {
        &self.output
    }

    fn reset(&mut self) {
        self.output.clear();
        self.sent = 0;
        // A file chunk buffer is large and rare: not kept.
        self.chunk = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use bytes::Bytes;

    use crate::files::DiskFile;

    /// Writes the whole outbox into a socket pair, reading the other end as
    /// it goes (a small socket buffer makes every write short).
    fn drain(outbox: &mut Outbox) -> io::Result<Vec<u8>> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut received = Vec::new();
        let mut buffer = vec![0; 64 * 1024];
        while !outbox.is_done() {
            match outbox.write_to(ours.as_raw_fd()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            while let Ok(n) = theirs.read(&mut buffer) {
                received.extend_from_slice(&buffer[..n]);
            }
        }
        drop(ours);
        theirs.set_nonblocking(false).unwrap();
        theirs.read_to_end(&mut received).unwrap();
        Ok(received)
    }

    #[test]
    fn pieces_and_file_ranges_go_out_in_order() {
        let content: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let (body, path) = DiskFile::body_for_tests(&content);
        let shared = Bytes::from(vec![b's'; 20_000]);
        let mut outbox = OutboxPool::default().take();
        let expected =
            crate::engine::policy::mixed_output_for_tests(&mut outbox.output, &body, &content, &shared);
        let sent = drain(&mut outbox).unwrap();
        assert!(
            sent == expected,
            "bytes differ ({} sent, {} expected)",
            sent.len(),
            expected.len()
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_file_cut_short_fails_the_response() {
        let (longer, path) = DiskFile::shrunk_body_for_tests();
        let mut outbox = Outbox::default();
        outbox.output.push_whole_body(&longer);
        let error = drain(&mut outbox).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let _ = std::fs::remove_file(path);
    }
}
