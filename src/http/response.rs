//! Response bytes: the [`Output`] buffer engines write from, and the few
//! functions that append one response to it.
//!
//! A response is a head precomputed elsewhere (by the snapshot for files, by
//! [`crate::http::status`] for errors) that stops just before `Date`, then the
//! thread's cached `Date:` line, an optional `Connection:` line, the blank
//! line, and the body. Small bodies are copied next to their head so a whole
//! pipelined batch leaves in one write; large bodies are kept by reference
//! (a refcounted [`Bytes`] into the snapshot) and go out with the heads in one
//! vectored write. Bodies of files too large to hold in memory are
//! [`FileRange`] pieces that engines stream from disk in bounded chunks.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::files::Body;
use crate::http::date::DateLine;
use crate::http::status::{Status, error_page};

/// Bodies up to this size are copied into the staging buffer; larger ones are
/// referenced. Copying 16 KiB costs less than an extra iovec and the
/// bookkeeping for it, and keeps the common case a single contiguous write.
pub const INLINE_BODY_MAX_BYTES: usize = 16 * 1024;

/// Which `Connection` line a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// HTTP/1.1 keep-alive: nothing to say.
    Omit,
    Close,
    /// An HTTP/1.0 client asked to keep the connection open.
    KeepAlive,
}

/// `len` bytes of an open file from `offset`: the body (or part of the body)
/// of a file too large to be held in the snapshot's memory.
///
/// The engine must send these bytes in place of the piece, reading them from
/// the file in chunks of at most [`crate::engine::FILE_CHUNK_BYTES`] and
/// sending each chunk before reading the next, so a connection never holds
/// more than one chunk. A read that returns 0 before `len` bytes (the file
/// was truncated in place after the snapshot was built) is an error: the
/// response can no longer be framed, so the engine closes the connection.
#[derive(Debug, Clone)]
pub struct FileRange {
    /// Shared with the snapshot: the descriptor stays open (and the bytes it
    /// names stay the ones the snapshot's heads describe) while any response
    /// still needs it, even after a reload replaced the snapshot.
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
}

/// One piece of output, owned, for engines that give buffers to the kernel.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Bytes in memory: send them as they are.
    Bytes(Bytes),
    /// Bytes on disk: stream them (see [`FileRange`]).
    File(FileRange),
}

/// One piece of output, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum PieceRef<'a> {
    Bytes(&'a [u8]),
    File(&'a FileRange),
}

/// One piece of output and where it lies in the output
/// ([`Output::pieces_after`]).
#[derive(Debug, Clone, Copy)]
pub struct PieceAt<'a> {
    pub piece: PieceRef<'a>,
    /// Offset of its first byte in the output.
    pub start: usize,
    pub len: usize,
}

impl PieceAt<'_> {
    /// Offset just past its last byte.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

#[derive(Debug)]
enum Spliced {
    Bytes(Bytes),
    File(FileRange),
}

/// Response bytes waiting to be written, in order: staged bytes with shared
/// bodies (in memory or on disk) spliced in at recorded offsets.
#[derive(Debug, Default)]
pub struct Output {
    staged: BytesMut,
    /// `(offset into staged, body)`: `body` goes out before `staged[offset..]`.
    shared: Vec<(usize, Spliced)>,
    shared_len: usize,
    file_ranges: usize,
}

impl Output {
    pub fn new() -> Self {
        Output::default()
    }

    pub fn with_capacity(staged: usize) -> Self {
        Output {
            staged: BytesMut::with_capacity(staged),
            ..Output::default()
        }
    }

    /// Total bytes waiting: staged, shared and on disk.
    pub fn len(&self) -> usize {
        self.staged.len() + self.shared_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some of the output must be read from disk ([`Piece::File`]).
    pub fn has_file_ranges(&self) -> bool {
        self.file_ranges > 0
    }

    pub fn clear(&mut self) {
        self.staged.clear();
        self.shared.clear();
        self.shared_len = 0;
        self.file_ranges = 0;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.staged.extend_from_slice(bytes);
    }

    /// Appends formatted text (rare paths: `Content-Range`, multipart parts).
    pub fn push_fmt(&mut self, args: fmt::Arguments<'_>) {
        // Writing into a growable buffer cannot fail.
        let _ = fmt::Write::write_fmt(&mut self.staged, args);
    }

    /// Appends a body: copied when small, referenced when large.
    pub fn push_body(&mut self, body: &Bytes) {
        if body.len() <= INLINE_BODY_MAX_BYTES {
            self.staged.extend_from_slice(body);
        } else {
            self.shared
                .push((self.staged.len(), Spliced::Bytes(body.clone())));
            self.shared_len += body.len();
        }
    }

    /// Appends `len` bytes of `body` from `offset` (the caller checked the
    /// bounds): a slice of the same memory, or a range of the same file.
    pub fn push_body_range(&mut self, body: &Body, offset: u64, len: u64) {
        match body {
            Body::Memory(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let end = start
                    .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                    .min(bytes.len());
                self.push_body(&bytes.slice(start..end));
            }
            Body::Disk(disk) => {
                let len = len.min(disk.len.saturating_sub(offset));
                if len == 0 {
                    return;
                }
                self.shared.push((
                    self.staged.len(),
                    Spliced::File(FileRange {
                        file: Arc::clone(&disk.file),
                        offset,
                        len,
                    }),
                ));
                self.shared_len += usize::try_from(len).unwrap_or(usize::MAX);
                self.file_ranges += 1;
            }
        }
    }

    /// Appends a whole body.
    pub fn push_whole_body(&mut self, body: &Body) {
        match body {
            Body::Memory(bytes) => self.push_body(bytes),
            Body::Disk(disk) => self.push_body_range(body, 0, disk.len),
        }
    }

    /// Bytes the staging buffer can hold without growing (engines that pool
    /// outputs drop the ones that grew large).
    pub fn staged_capacity(&self) -> usize {
        self.staged.capacity()
    }

    /// The pieces to write, in order, without empty ones.
    pub fn pieces(&self) -> impl Iterator<Item = PieceRef<'_>> {
        let mut start = 0;
        let mut pieces = Vec::with_capacity(self.shared.len() * 2 + 1);
        for (offset, body) in &self.shared {
            pieces.push(PieceRef::Bytes(&self.staged[start..*offset]));
            pieces.push(match body {
                Spliced::Bytes(bytes) => PieceRef::Bytes(&bytes[..]),
                Spliced::File(range) => PieceRef::File(range),
            });
            start = *offset;
        }
        pieces.push(PieceRef::Bytes(&self.staged[start..]));
        pieces
            .into_iter()
            .filter(|piece| !matches!(piece, PieceRef::Bytes(bytes) if bytes.is_empty()))
    }

    /// The pieces not yet wholly written once `sent` bytes of the output
    /// are, each with where it starts in the output: what an engine resuming
    /// a short write goes on from (the first one's bytes before `sent` are
    /// already written).
    pub fn pieces_after(&self, sent: usize) -> impl Iterator<Item = PieceAt<'_>> {
        let mut start = 0;
        self.pieces().filter_map(move |piece| {
            let len = match piece {
                PieceRef::Bytes(bytes) => bytes.len(),
                PieceRef::File(range) => usize::try_from(range.len).unwrap_or(usize::MAX),
            };
            let at = PieceAt { piece, start, len };
            start += len;
            (start > sent).then_some(at)
        })
    }

    /// The whole output as one slice, when nothing is shared (the common case).
    pub fn as_contiguous(&self) -> Option<&[u8]> {
        self.shared.is_empty().then_some(&self.staged[..])
    }

    /// Hands the staged buffer to an engine that needs to own what it writes
    /// (io_uring). Only valid while nothing is shared; give it back with
    /// [`Output::restore_staged`] so its capacity is reused.
    pub fn take_staged(&mut self) -> BytesMut {
        debug_assert!(self.shared.is_empty());
        std::mem::take(&mut self.staged)
    }

    pub fn restore_staged(&mut self, mut staged: BytesMut) {
        staged.clear();
        self.staged = staged;
    }

    /// Moves everything out as owned pieces (no byte is copied), leaving the
    /// output empty. [`Piece::File`] pieces must be streamed from disk.
    pub fn take_pieces(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(self.shared.len() * 2 + 1);
        let mut start = 0;
        for (offset, body) in self.shared.drain(..) {
            if offset > start {
                pieces.push(Piece::Bytes(self.staged.split_to(offset - start).freeze()));
            }
            pieces.push(match body {
                Spliced::Bytes(bytes) => Piece::Bytes(bytes),
                Spliced::File(range) => Piece::File(range),
            });
            start = offset;
        }
        if !self.staged.is_empty() {
            pieces.push(Piece::Bytes(self.staged.split().freeze()));
        }
        self.shared_len = 0;
        self.file_ranges = 0;
        pieces
    }

    /// Every byte of the output, file ranges read from disk with blocking
    /// reads. For tests and tools, never for an engine's hot path.
    pub fn to_vec_blocking(&self) -> io::Result<Vec<u8>> {
        let mut all = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            match piece {
                PieceRef::Bytes(bytes) => all.extend_from_slice(bytes),
                PieceRef::File(range) => {
                    let start = all.len();
                    all.resize(start + usize::try_from(range.len).map_err(io::Error::other)?, 0);
                    range.file.read_exact_at(&mut all[start..], range.offset)?;
                }
            }
        }
        Ok(all)
    }
}

/// Finishes a head whose fields are already in `out`: `Date`, `Connection`,
/// and the blank line.
pub fn finish_head(out: &mut Output, date: &DateLine, connection: ConnectionHeader) {
    out.push(date);
    match connection {
        ConnectionHeader::Omit => out.push(b"\r\n"),
        ConnectionHeader::Close => out.push(b"Connection: close\r\n\r\n"),
        ConnectionHeader::KeepAlive => out.push(b"Connection: keep-alive\r\n\r\n"),
    }
}

/// Appends a complete response: a precomputed head, then `body` unless this
/// answers a HEAD request.
pub fn write_response(
    out: &mut Output,
    head: &[u8],
    body: Option<&Body>,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    out.push(head);
    finish_head(out, date, connection);
    if let Some(body) = body {
        out.push_whole_body(body);
    }
}

/// Appends a body-less response whose head comes in pieces (a `304`: see
/// [`crate::files::head::RenderedHead::not_modified_parts`]).
pub fn write_head_parts(out: &mut Output, parts: &[&[u8]], date: &DateLine, connection: ConnectionHeader) {
    for part in parts {
        out.push(part);
    }
    finish_head(out, date, connection);
}

/// Appends an error response from the pre-rendered pages.
pub fn write_error(
    out: &mut Output,
    status: Status,
    with_body: bool,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    let page = error_page(status);
    out.push(&page.head);
    finish_head(out, date, connection);
    if with_body {
        out.push(&page.body);
    }
}

/// Appends a `301` to `location`, which must already be a valid URI reference
/// (the caller builds it from a target the parser accepted).
pub fn write_redirect(out: &mut Output, location: &[u8], date: &DateLine, connection: ConnectionHeader) {
    out.push(b"HTTP/1.1 301 Moved Permanently\r\nServer: ringserve\r\nContent-Length: 0\r\nLocation: ");
    out.push(location);
    out.push(b"\r\n");
    finish_head(out, date, connection);
}

/// Appends a `308` to `location`, which must already be a valid URI (the
/// caller built it: [`crate::http::session::https_location`]).
pub fn write_permanent_redirect(
    out: &mut Output,
    location: &[u8],
    date: &DateLine,
    connection: ConnectionHeader,
) {
    out.push(b"HTTP/1.1 308 Permanent Redirect\r\nServer: ringserve\r\nContent-Length: 0\r\nLocation: ");
    out.push(location);
    out.push(b"\r\n");
    finish_head(out, date, connection);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &DateLine = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";

    fn concat(out: &Output) -> Vec<u8> {
        out.to_vec_blocking().unwrap()
    }

    #[test]
    fn small_bodies_are_staged_contiguously() {
        let mut out = Output::new();
        let body = Body::Memory(Bytes::from_static(b"hello"));
        write_response(
            &mut out,
            b"HTTP/1.1 200 OK\r\n",
            Some(&body),
            DATE,
            ConnectionHeader::Omit,
        );
        let expected = b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nhello";
        assert_eq!(out.as_contiguous().unwrap(), expected);
        assert_eq!(concat(&out), expected);
    }

    #[test]
    fn large_bodies_are_shared_and_kept_in_order() {
        let big = Body::Memory(Bytes::from(vec![b'x'; INLINE_BODY_MAX_BYTES + 1]));
        let mut out = Output::new();
        write_response(&mut out, b"H1\r\n", Some(&big), DATE, ConnectionHeader::Close);
        write_response(&mut out, b"H2\r\n", None, DATE, ConnectionHeader::Omit);
        assert!(out.as_contiguous().is_none());
        assert_eq!(out.pieces().count(), 3);
        let all = concat(&out);
        assert_eq!(out.len(), all.len());
        let pieces: Vec<u8> = out
            .take_pieces()
            .iter()
            .flat_map(|p| match p {
                Piece::Bytes(b) => b.to_vec(),
                Piece::File(_) => unreachable!("no file in this output"),
            })
            .collect();
        assert_eq!(pieces, all);
        assert!(out.is_empty());
    }

    #[test]
    fn connection_lines() {
        let mut out = Output::new();
        finish_head(&mut out, DATE, ConnectionHeader::KeepAlive);
        assert!(
            out.as_contiguous()
                .unwrap()
                .ends_with(b"Connection: keep-alive\r\n\r\n")
        );
    }

    #[test]
    fn error_page_without_body_for_head() {
        let mut out = Output::new();
        write_error(&mut out, Status::NotFound, false, DATE, ConnectionHeader::Omit);
        let text = String::from_utf8(concat(&out)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn file_ranges_are_pieces_in_order_and_count_in_the_length() {
        let path = std::env::temp_dir().join(format!("ringserve-output-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        let body = Body::Disk(Box::new(crate::files::DiskFile {
            identity: crate::files::FileIdentity::of(&file.metadata().unwrap()),
            file,
            len: 10,
        }));
        let mut out = Output::new();
        out.push(b"head1 ");
        out.push_body_range(&body, 2, 3);
        out.push(b" head2 ");
        out.push_whole_body(&body);
        out.push_body_range(&body, 8, 100);
        assert!(out.has_file_ranges());
        assert!(out.as_contiguous().is_none());
        assert_eq!(out.len(), 6 + 3 + 7 + 10 + 2);
        assert_eq!(out.to_vec_blocking().unwrap(), b"head1 234 head2 012345678989");
        let kinds: Vec<&str> = out
            .pieces()
            .map(|p| match p {
                PieceRef::Bytes(_) => "bytes",
                PieceRef::File(_) => "file",
            })
            .collect();
        assert_eq!(kinds, ["bytes", "file", "bytes", "file", "file"]);
        let ranges: Vec<(u64, u64)> = out
            .take_pieces()
            .into_iter()
            .filter_map(|p| match p {
                Piece::File(range) => Some((range.offset, range.len)),
                Piece::Bytes(_) => None,
            })
            .collect();
        assert_eq!(ranges, [(2, 3), (0, 10), (8, 2)], "clamped to the file");
        assert!(out.is_empty() && !out.has_file_ranges());
        std::fs::remove_file(path).unwrap();
    }
}
