//! One connection's HTTP/1.1 state machine, without I/O.
//!
//! An engine owns the socket and the receive buffer. Whenever it has bytes it
//! calls [`Session::on_input`] with everything received and not yet consumed;
//! the session answers every complete request in order into the [`Output`]
//! (so a pipelined burst leaves in one write) and returns [`Progress`]: how
//! many bytes it consumed and what the engine should do next. The engine
//! drops the consumed bytes, writes the output, and then:
//! - [`Next::Read`]: reads more and calls again with the unconsumed rest plus
//!   the new bytes;
//! - [`Next::Write`]: the output reached [`OUTPUT_HIGH_WATER_BYTES`]; calls
//!   again without reading, once the output is written (back-pressure: a
//!   client pipelining requests for a large file cannot make us buffer them
//!   all);
//! - [`Next::Close`]: closes after writing (the client asked for it);
//! - [`Next::Linger`]: the request was refused and the connection must end;
//!   after writing, the engine shuts down its sending side and reads and
//!   discards what the client still sends for a bounded time before closing,
//!   because closing with unread input makes the kernel send a reset that can
//!   destroy the error response before the client reads it.
//!
//! Per request: parse the head ([`request`]), normalise the target
//! ([`target`]), resolve it in the snapshot, and let [`resource`] choose the
//! representation, evaluate preconditions and ranges, and append the
//! precomputed head and the body.
//!
//! [`request`]: crate::http::request
//! [`target`]: crate::http::target
//! [`resource`]: crate::http::resource

use crate::files::{Resolved, Snapshot};
use crate::http::date::{self, DateLine};
use crate::http::request::{self, Limits, Method, RequestHead, Version};
use crate::http::resource;
use crate::http::response::{self, ConnectionHeader, Output};
use crate::http::status::Status;
use crate::http::target::normalize_target;

/// Stop answering pipelined requests once this much output is waiting.
pub const OUTPUT_HIGH_WATER_BYTES: usize = 256 * 1024;

/// What the engine does after writing the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Read,
    Write,
    Close,
    Linger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input the engine may drop.
    pub consumed: usize,
    pub next: Next,
}

/// Per-connection parsing state. Small on purpose: an idle keep-alive
/// connection holds one of these and nothing else from the core.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of the current partial head already scanned for its end.
    scanned: usize,
    /// Body bytes of the last request still to be read and discarded.
    body_remaining: u64,
    /// Scratch for the normalised path, reused across requests.
    key: Vec<u8>,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// True between requests: no partial head or body is pending.
    pub fn is_idle(&self) -> bool {
        self.scanned == 0 && self.body_remaining == 0
    }

    /// Answers every complete request at the start of `input`.
    pub fn on_input(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        out: &mut Output,
    ) -> Progress {
        let date = date::date_line();
        let mut pos = 0;
        loop {
            if self.body_remaining > 0 {
                let available = (input.len() - pos) as u64;
                let skip = self.body_remaining.min(available);
                pos += skip as usize;
                self.body_remaining -= skip;
                if self.body_remaining > 0 {
                    return Progress {
                        consumed: pos,
                        next: Next::Read,
                    };
                }
            }
            if self.scanned == 0 {
                // RFC 9112 §2.2: empty lines before a request line are ignored.
                let blank = input[pos..]
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                let blank = blank - usize::from(input[pos..pos + blank].ends_with(b"\r"));
                pos += blank;
            }
            let rest = &input[pos..];
            if rest.is_empty() {
                return Progress {
                    consumed: pos,
                    next: Next::Read,
                };
            }
            if out.len() >= OUTPUT_HIGH_WATER_BYTES {
                return Progress {
                    consumed: pos,
                    next: Next::Write,
                };
            }
            let Some(head_len) = request::find_head_end(rest, self.scanned) else {
                self.scanned = rest.len();
                if let Err(error) = request::check_partial(rest, limits) {
                    self.scanned = 0;
                    reply_error(out, error.status(), true, &date);
                    return Progress {
                        consumed: input.len(),
                        next: Next::Linger,
                    };
                }
                return Progress {
                    consumed: pos,
                    next: Next::Read,
                };
            };
            self.scanned = 0;
            pos += head_len;
            match request::parse_request(&rest[..head_len], limits) {
                Ok(head) => {
                    let next = self.answer(&head, snapshot, out, &date);
                    if next != Next::Read {
                        return Progress {
                            consumed: input.len(),
                            next,
                        };
                    }
                    self.body_remaining = head.body_len;
                }
                Err(error) => {
                    reply_error(out, error.status(), true, &date);
                    return Progress {
                        consumed: input.len(),
                        next: Next::Linger,
                    };
                }
            }
        }
    }

    /// Appends the response to one parsed request; returns [`Next::Read`] to
    /// go on with the next request, or how the connection ends.
    fn answer(
        &mut self,
        head: &RequestHead<'_>,
        snapshot: &Snapshot,
        out: &mut Output,
        date: &DateLine,
    ) -> Next {
        let with_body = head.method != Method::Head;
        let connection = |close: bool| match (close, head.version) {
            (true, _) => ConnectionHeader::Close,
            (false, Version::Http10) => ConnectionHeader::KeepAlive,
            (false, Version::Http11) => ConnectionHeader::Omit,
        };
        let keep_going = if head.close { Next::Close } else { Next::Read };
        if head.method == Method::Unsupported {
            response::write_error(out, Status::MethodNotAllowed, true, date, connection(head.close));
            return keep_going;
        }
        if let Err(error) = normalize_target(head.target, &mut self.key) {
            let status = error.status();
            response::write_error(out, status, with_body, date, ConnectionHeader::Close);
            return Next::Linger;
        }
        match snapshot.resolve(&self.key) {
            Resolved::File(entry) => {
                resource::respond_file(out, head, entry, date, connection(head.close));
            }
            Resolved::DirectoryRedirect => {
                let location = directory_location(head.target);
                response::write_redirect(out, &location, date, connection(head.close));
            }
            Resolved::NotFound => {
                resource::respond_not_found(out, head, snapshot, date, connection(head.close));
            }
        }
        keep_going
    }
}

fn reply_error(out: &mut Output, status: Status, with_body: bool, date: &DateLine) {
    response::write_error(out, status, with_body, date, ConnectionHeader::Close);
}

/// The target with `/` added to its path, query kept: `/docs?x` → `/docs/?x`.
/// An absolute-form target redirects to its path (the client knows the host).
fn directory_location(target: &[u8]) -> Vec<u8> {
    let path_start = if target.first() == Some(&b'/') {
        0
    } else {
        // Absolute form: skip `scheme://authority`.
        let after_scheme = memchr::memmem::find(target, b"://").map_or(0, |i| i + 3);
        memchr::memchr(b'/', &target[after_scheme..]).map_or(target.len(), |i| after_scheme + i)
    };
    let target = &target[path_start..];
    let path_end = memchr::memchr2(b'?', b'#', target).unwrap_or(target.len());
    let mut location = Vec::with_capacity(target.len() + 1);
    location.extend_from_slice(&target[..path_end]);
    location.push(b'/');
    location.extend_from_slice(&target[path_end..]);
    location
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::LoadOptions;
    use std::path::PathBuf;

    fn site() -> (Snapshot, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ringserve-session-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::write(dir.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(dir.join("book.json"), "{\"title\":\"x\"}").unwrap();
        std::fs::write(dir.join("docs/index.html"), "docs").unwrap();
        std::fs::write(dir.join("big.bin"), vec![7u8; 300 * 1024]).unwrap();
        (Snapshot::load(&LoadOptions::new(&dir)).unwrap(), dir)
    }

    /// Feeds `input` in pieces of `step` bytes, as an engine would, and
    /// returns everything written and whether the session asked to close.
    fn drive(snapshot: &Snapshot, input: &[u8], step: usize) -> (String, bool) {
        let mut session = Session::new();
        let limits = Limits::default();
        let mut out = Output::new();
        let mut written = Vec::new();
        let mut buffer = Vec::new();
        let mut fed = 0;
        loop {
            let progress = session.on_input(&buffer, snapshot, &limits, &mut out);
            buffer.drain(..progress.consumed);
            written.extend(out.to_vec_blocking().unwrap());
            out.clear();
            match progress.next {
                Next::Close | Next::Linger => return (String::from_utf8_lossy(&written).into_owned(), true),
                Next::Write => continue,
                Next::Read if fed == input.len() => {
                    return (String::from_utf8_lossy(&written).into_owned(), false);
                }
                Next::Read => {
                    let end = (fed + step).min(input.len());
                    buffer.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    fn statuses(text: &str) -> Vec<u16> {
        // No body in this site contains "HTTP/1.1 ", so every match is a status line.
        text.match_indices("HTTP/1.1 ")
            .map(|(i, _)| text[i + 9..i + 12].parse().unwrap())
            .collect()
    }

    #[test]
    fn serves_index_and_clean_url() {
        let (snapshot, _dir) = site();
        let (text, close) = drive(
            &snapshot,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            4096,
        );
        assert!(!close);
        assert_eq!(statuses(&text), [200, 200]);
        assert!(text.contains("<h1>home</h1>"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.ends_with("{\"title\":\"x\"}"));
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let (snapshot, _dir) = site();
        let input = b"\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n";
        let whole = drive(&snapshot, input, input.len());
        let split = drive(&snapshot, input, 1);
        assert_eq!(whole, split);
        assert_eq!(statuses(&whole.0), [200, 200, 404]);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let (snapshot, _dir) = site();
        let mut input = Vec::new();
        for i in 0..50 {
            let path = if i % 2 == 0 { "/book" } else { "/missing" };
            input.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        }
        let (text, _) = drive(&snapshot, &input, input.len());
        let expected: Vec<u16> = (0..50).map(|i| if i % 2 == 0 { 200 } else { 404 }).collect();
        assert_eq!(statuses(&text), expected);
    }

    #[test]
    fn head_has_no_body_and_same_length() {
        let (snapshot, _dir) = site();
        let (text, _) = drive(&snapshot, b"HEAD /book HTTP/1.1\r\nHost: a\r\n\r\n", 4096);
        assert!(text.contains("Content-Length: 13\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn errors_405_400_and_close() {
        let (snapshot, _dir) = site();
        let (text, close) = drive(
            &snapshot,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            4096,
        );
        assert!(!close);
        assert_eq!(statuses(&text), [405, 200]);
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        let (text, close) = drive(
            &snapshot,
            b"garbage\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            4096,
        );
        assert!(close);
        assert_eq!(statuses(&text), [400]);
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn http10_and_connection_close() {
        let (snapshot, _dir) = site();
        let (text, close) = drive(&snapshot, b"GET / HTTP/1.0\r\n\r\n", 4096);
        assert!(close && text.contains("Connection: close\r\n"));
        let (text, close) = drive(
            &snapshot,
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            4096,
        );
        assert!(!close && text.contains("Connection: keep-alive\r\n"));
        let (_, close) = drive(
            &snapshot,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            4096,
        );
        assert!(close);
    }

    #[test]
    fn directory_without_slash_redirects() {
        let (snapshot, _dir) = site();
        let (text, _) = drive(&snapshot, b"GET /docs?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 4096);
        assert!(text.starts_with("HTTP/1.1 301 "));
        assert!(text.contains("Location: /docs/?x=1\r\n"));
    }

    #[test]
    fn conditional_get_gives_304() {
        let (snapshot, _dir) = site();
        let Resolved::File(entry) = snapshot.resolve(b"/book.json") else {
            panic!()
        };
        let etag = String::from_utf8(entry.identity().etag.to_vec()).unwrap();
        let raw = format!("GET /book HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\n\r\n");
        let (text, _) = drive(&snapshot, raw.as_bytes(), 4096);
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(!text.contains("Content-Length"));
    }

    #[test]
    fn oversized_head_gets_431_and_close() {
        let (snapshot, _dir) = site();
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        while raw.len() <= request::DEFAULT_MAX_HEAD_BYTES {
            raw.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (text, close) = drive(&snapshot, &raw, 1000);
        assert!(close);
        assert!(text.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn pipelined_large_files_apply_back_pressure() {
        let (snapshot, _dir) = site();
        let one = b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n";
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4).collect();
        let mut session = Session::new();
        let mut out = Output::new();
        let progress = session.on_input(&input, &snapshot, &Limits::default(), &mut out);
        assert_eq!(
            progress,
            Progress {
                consumed: one.len(),
                next: Next::Write
            }
        );
        let first = match out.pieces().next().unwrap() {
            crate::http::response::PieceRef::Bytes(bytes) => bytes.len(),
            crate::http::response::PieceRef::File(_) => unreachable!("the file is in memory"),
        };
        assert_eq!(out.len() - 300 * 1024, first);
    }
}
