//! Answering a request for a file, once the target has resolved.
//!
//! The pipeline, in order (nginx keeps the same split between its static
//! handler and its range filter):
//! 1. negotiate: `Accept-Encoding` picks the representation
//!    ([`negotiate::select_representation`]); everything after works on it,
//!    its own `ETag` included;
//! 2. preconditions ([`conditional::evaluate`]): 412, or 304 with the
//!    representation's precomputed 304 head;
//! 3. range (GET only, RFC 9110 §14.2): with a single valid `Range` that
//!    `If-Range` allows, 206 with one part, 206 `multipart/byteranges`, or
//!    416; anything else falls through;
//! 4. the whole representation: its precomputed 200 head, and the body
//!    unless the method is HEAD.
//!
//! Unknown paths ([`respond_not_found`]): the SPA fallback for GET/HEAD
//! requests that accept HTML, else the root's `404.html` with status 404,
//! else the built-in 404 page.
//!
//! The body of a 206 is a slice of the representation's body: the same
//! memory (a refcounted [`bytes::Bytes`] slice) or a range of the same file.

use crate::files::{FileEntry, Representation, Snapshot};
use crate::http::conditional::{self, Precondition};
use crate::http::date::DateLine;
use crate::http::negotiate;
use crate::http::range::{self, ByteRange, RangeOutcome};
use crate::http::request::{Method, RequestHead};
use crate::http::response::{self, ConnectionHeader, Output};
use crate::http::status::Status;

/// Appends the response to a GET or HEAD of `entry`.
pub fn respond_file(
    out: &mut Output,
    head: &RequestHead<'_>,
    entry: &FileEntry,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    let fields = &head.selection;
    let chosen = negotiate::select_representation(fields.accept_encoding, &entry.representations);
    let representation = &entry.representations[chosen];
    let with_body = head.method == Method::Get;

    match conditional::evaluate(fields, &representation.etag, entry.modified_secs) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            response::write_response(out, &representation.not_modified_head, None, date, connection);
            return;
        }
        Precondition::Failed => {
            response::write_error(out, Status::PreconditionFailed, with_body, date, connection);
            return;
        }
    }

    let honoured_range = fields.single_range().filter(|_| {
        head.method == Method::Get
            && conditional::if_range_allows(fields.if_range, &representation.etag, entry.modified_secs)
    });
    if let Some(value) = honoured_range {
        match range::evaluate(value, representation.body.len()) {
            RangeOutcome::Full => {}
            RangeOutcome::Single(part) => {
                return write_single_part(out, entry, representation, part, date, connection);
            }
            RangeOutcome::Multiple(parts) => {
                return write_multipart(out, entry, representation, &parts, date, connection);
            }
            RangeOutcome::Unsatisfiable => {
                return write_unsatisfiable(out, entry, representation, date, connection);
            }
        }
    }
    let body = with_body.then_some(&representation.body);
    response::write_response(out, &representation.ok_head, body, date, connection);
}

/// Appends the answer for a path that resolved to nothing.
pub fn respond_not_found(
    out: &mut Output,
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    if let Some(fallback) = snapshot.fallback() {
        if negotiate::accepts_html(head.selection.accept) {
            return respond_file(out, head, fallback, date, connection);
        }
    }
    let with_body = head.method == Method::Get;
    match snapshot.not_found_page() {
        Some(page) => {
            let chosen =
                negotiate::select_representation(head.selection.accept_encoding, &page.representations);
            let representation = &page.representations[chosen];
            let body = with_body.then_some(&representation.body);
            response::write_response(out, &representation.ok_head, body, date, connection);
        }
        None => response::write_error(out, Status::NotFound, with_body, date, connection),
    }
}

fn write_single_part(
    out: &mut Output,
    entry: &FileEntry,
    representation: &Representation,
    part: ByteRange,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    out.push(b"HTTP/1.1 206 Partial Content\r\n");
    out.push(&representation.partial_fields);
    out.push_fmt(format_args!(
        "Content-Type: {}\r\nContent-Range: bytes {}-{}/{}\r\nContent-Length: {}\r\n",
        entry.content_type,
        part.first,
        part.last,
        representation.body.len(),
        part.len()
    ));
    response::finish_head(out, date, connection);
    out.push_body_range(&representation.body, part.first, part.len());
}

/// `multipart/byteranges` (RFC 9110 §14.6). The boundary is derived from the
/// representation's content hash: deterministic, and a body that contains
/// its own hash is not a practical worry.
fn write_multipart(
    out: &mut Output,
    entry: &FileEntry,
    representation: &Representation,
    parts: &[ByteRange],
    date: &DateLine,
    connection: ConnectionHeader,
) {
    let tag = representation
        .etag
        .strip_prefix(b"\"")
        .unwrap_or(&representation.etag);
    let tag = tag.strip_suffix(b"\"").unwrap_or(tag);
    let boundary = format!("ringserve-{}", String::from_utf8_lossy(tag));
    let total = representation.body.len();
    let part_head = |part: &ByteRange| {
        format!(
            "\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{total}\r\n\r\n",
            entry.content_type, part.first, part.last
        )
    };
    let closing = format!("\r\n--{boundary}--\r\n");
    let length: u64 = parts
        .iter()
        .map(|part| part_head(part).len() as u64 + part.len())
        .sum::<u64>()
        + closing.len() as u64;

    out.push(b"HTTP/1.1 206 Partial Content\r\n");
    out.push(&representation.partial_fields);
    out.push_fmt(format_args!(
        "Content-Type: multipart/byteranges; boundary={boundary}\r\nContent-Length: {length}\r\n"
    ));
    response::finish_head(out, date, connection);
    for part in parts {
        out.push(part_head(part).as_bytes());
        out.push_body_range(&representation.body, part.first, part.len());
    }
    out.push(closing.as_bytes());
}

fn write_unsatisfiable(
    out: &mut Output,
    entry: &FileEntry,
    representation: &Representation,
    date: &DateLine,
    connection: ConnectionHeader,
) {
    out.push_fmt(format_args!(
        "HTTP/1.1 416 Range Not Satisfiable\r\nServer: ringserve\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n",
        representation.body.len()
    ));
    if entry.is_negotiable() {
        out.push(b"Vary: Accept-Encoding\r\n");
    }
    response::finish_head(out, date, connection);
}
