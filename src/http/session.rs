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
//! - [`Next::Close`]: the last response is written: the client asked to
//!   close (`Connection: close`, or HTTP/1.0 without keep-alive) and sent
//!   nothing after that request: no body still to read, no byte behind it.
//!   The engine may close at once once the output is written (see below);
//! - [`Next::Linger`]: the connection must end gracefully: the request was
//!   refused, or the client asked to close but sent more behind its request
//!   (pipelined requests, a body not yet read in full).
//!
//! Ending with unread input is what must never happen: closing a socket
//! whose receive queue holds data makes the kernel answer with a reset that
//! destroys whatever of the response the client has not read yet (RFC 9112
//! §9.6). So after [`Next::Linger`] the engine shuts down its sending side,
//! then reads and discards what the client still sends for a bounded time
//! ([`crate::http::Timeouts::linger`], at most
//! [`crate::engine::LINGER_MAX_BYTES`]) or until the client closes, and only
//! then closes. After [`Next::Close`] nothing is unread that the session
//! saw, and the client, having asked to close, MUST NOT send further
//! requests (RFC 9112 §9.6): so, as nginx's `lingering_close on` does, the
//! engines close at once, without the `shutdown`, the extra receive and the
//! extra wake-up of lingering, unless input the session never saw is waiting
//! in the engine or the socket, or the connection is TLS (the rule and its
//! exceptions: [`crate::engine::policy::ending`]).
//!
//! Per request: parse the head ([`request`]), normalise the target
//! ([`target`]), resolve it in the snapshot, and let [`resource`] choose the
//! representation, evaluate preconditions and ranges, and append the
//! precomputed head and the body.
//!
//! Every response (errors included) is also reported to an [`Observer`] as an
//! [`Exchange`]: what an access log and the metrics need, borrowed from the
//! input; a health check is reported apart ([`Observer::on_health_check`]).
//! Engines that neither log nor count pass `()`, whose calls compile to
//! nothing.
//!
//! One refused request gets exactly one response: after an error the session
//! consumes everything it was given and asks the engine to end the
//! connection, so bytes smuggled behind a bad request are never parsed.
//!
//! [`request`]: crate::http::request
//! [`target`]: crate::http::target
//! [`resource`]: crate::http::resource

use crate::files::{Resolved, Snapshot};
use crate::http::date::{self, DateLine};
use crate::http::health;
use crate::http::request::{self, Limits, Method, RequestHead, Version};
use crate::http::resource;
use crate::http::response::{self, ConnectionHeader, Output};
use crate::http::status::{Status, error_page};
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

/// One response, as an access log sees it. Borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    /// The request line as received, without its line ending (for a refused
    /// request: as much of its first line as arrived, up to the line limit).
    pub request_line: &'a [u8],
    pub status: u16,
    /// Body bytes sent (0 for HEAD, 304, redirects).
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// Told about every response the session writes.
pub trait Observer {
    fn on_response(&mut self, exchange: &Exchange<'_>);

    /// A health check was answered ([`crate::http::health`]); it is not
    /// reported as a response, so it never reaches the access log.
    #[inline(always)]
    fn on_health_check(&mut self) {}

    /// A TLS handshake ended: `completed`, or failed (an alert, or the
    /// head deadline passed before it completed) ([`crate::tls`]).
    #[inline(always)]
    fn on_tls_handshake(&mut self, _completed: bool) {}
}

/// No observer: logging off, nothing to do.
impl Observer for () {
    #[inline(always)]
    fn on_response(&mut self, _exchange: &Exchange<'_>) {}
}

/// Per-connection parsing state. Small on purpose: an idle keep-alive
/// connection holds one of these and nothing else from the core.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of the current partial head already scanned for its end.
    scanned: usize,
    /// Body bytes of the last request still to be read and discarded.
    body_remaining: u64,
    /// Requests answered so far (wrapping): lets the timeout rules see that a
    /// request ended (see [`crate::http::deadline`]).
    answered: u32,
    /// `Some(port)`: a plain listener told to send every client to HTTPS
    /// (`--https-redirect`): each request is answered with a `308` to the
    /// same target on `https://` at this port (see [`https_location`]).
    https_redirect: Option<u16>,
    /// Scratch for the normalised path, reused across requests.
    key: Vec<u8>,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// A session that answers every request with a `308` to `https://` on
    /// `https_port`.
    pub fn redirecting(https_port: u16) -> Self {
        Session {
            https_redirect: Some(https_port),
            ..Session::default()
        }
    }

    /// True between requests: no partial head or body is pending.
    pub fn is_idle(&self) -> bool {
        self.scanned == 0 && self.body_remaining == 0
    }

    /// True while the body of an answered request is still being discarded.
    pub fn is_reading_body(&self) -> bool {
        self.body_remaining > 0
    }

    /// How many requests this session has answered (wrapping).
    pub fn answered(&self) -> u32 {
        self.answered
    }

    /// Answers every complete request at the start of `input`.
    pub fn on_input(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        out: &mut Output,
    ) -> Progress {
        self.on_input_observed(input, snapshot, limits, out, &mut ())
    }

    /// The request deadline passed with `partial` (the unconsumed input) not
    /// yet a complete head: answers `408` and asks for [`Next::Linger`].
    pub fn on_head_timeout<O: Observer>(
        &mut self,
        partial: &[u8],
        out: &mut Output,
        observer: &mut O,
    ) -> Next {
        self.scanned = 0;
        let date = date::date_line();
        reply_error(
            out,
            Status::RequestTimeout,
            &date,
            first_line(partial, usize::MAX),
            observer,
        );
        Next::Linger
    }

    /// [`Session::on_input`], reporting each response to `observer`.
    pub fn on_input_observed<O: Observer>(
        &mut self,
        input: &[u8],
        snapshot: &Snapshot,
        limits: &Limits,
        out: &mut Output,
        observer: &mut O,
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
                // RFC 9112 §2.2: empty lines (CRLF or LF) before a request
                // line are ignored. A CR not followed by LF is left for the
                // parser to refuse, or to complete with the next read.
                loop {
                    match &input[pos..] {
                        [b'\r', b'\n', ..] => pos += 2,
                        [b'\n', ..] => pos += 1,
                        _ => break,
                    }
                }
            }
            let rest = &input[pos..];
            // A lone CR where a request would start may still become an empty
            // line: wait for the next byte without starting a head scan (which
            // would stop the empty-line skipping above). Found by fuzzing.
            if rest.is_empty() || (self.scanned == 0 && rest == b"\r") {
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
                let checked = self.scanned;
                self.scanned = rest.len();
                if let Err(error) = request::check_partial(rest, checked, limits) {
                    self.scanned = 0;
                    let line = first_line(rest, limits.max_request_line_bytes);
                    reply_error(out, error.status(), &date, line, observer);
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
                    self.answered = self.answered.wrapping_add(1);
                    let line = first_line(&rest[..head_len], usize::MAX);
                    let next = self.answer(&head, line, snapshot, out, &date, observer);
                    if next != Next::Read {
                        let next = match next {
                            Next::Close if !ends_input(head.body_len, &input[pos..]) => Next::Linger,
                            next => next,
                        };
                        return Progress {
                            consumed: input.len(),
                            next,
                        };
                    }
                    self.body_remaining = head.body_len;
                }
                Err(error) => {
                    let line = first_line(rest, limits.max_request_line_bytes);
                    reply_error(out, error.status(), &date, line, observer);
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
    fn answer<O: Observer>(
        &mut self,
        head: &RequestHead<'_>,
        request_line: &[u8],
        snapshot: &Snapshot,
        out: &mut Output,
        date: &DateLine,
        observer: &mut O,
    ) -> Next {
        let with_body = head.method != Method::Head;
        let connection = |close: bool| match (close, head.version) {
            (true, _) => ConnectionHeader::Close,
            (false, Version::Http10) => ConnectionHeader::KeepAlive,
            (false, Version::Http11) => ConnectionHeader::Omit,
        };
        let mut report = |status: Status, body_bytes: usize| {
            observer.on_response(&Exchange {
                request_line,
                status: status.code(),
                body_bytes: body_bytes as u64,
                referer: head.referer,
                user_agent: head.user_agent,
            });
        };
        let error_body = |status: Status| {
            if with_body {
                error_page(status).body.len()
            } else {
                0
            }
        };
        let keep_going = if head.close { Next::Close } else { Next::Read };
        if let Some(port) = self.https_redirect {
            let location = normalize_target(head.target, &mut self.key)
                .ok()
                .and_then(|()| https_location(head.host?, &self.key, head.target, port));
            let Some(location) = location else {
                response::write_error(out, Status::BadRequest, with_body, date, ConnectionHeader::Close);
                report(Status::BadRequest, error_body(Status::BadRequest));
                return Next::Linger;
            };
            response::write_permanent_redirect(out, &location, date, connection(head.close));
            report(Status::PermanentRedirect, 0);
            return keep_going;
        }
        if head.method == Method::Unsupported {
            response::write_error(out, Status::MethodNotAllowed, true, date, connection(head.close));
            report(
                Status::MethodNotAllowed,
                error_page(Status::MethodNotAllowed).body.len(),
            );
            return keep_going;
        }
        if snapshot
            .health_path()
            .is_some_and(|path| health::is_health_target(head.target, path))
        {
            health::write_health(out, with_body, date, connection(head.close));
            observer.on_health_check();
            return keep_going;
        }
        if let Err(error) = normalize_target(head.target, &mut self.key) {
            let status = error.status();
            response::write_error(out, status, with_body, date, ConnectionHeader::Close);
            report(status, error_body(status));
            return Next::Linger;
        }
        match snapshot.resolve(&self.key) {
            Resolved::File(entry) => {
                let sent = resource::respond_file(out, head, entry, date, connection(head.close));
                report(sent.status, sent.body_bytes as usize);
            }
            Resolved::DirectoryRedirect => {
                let location = directory_location(&self.key, head.target);
                response::write_redirect(out, &location, date, connection(head.close));
                report(Status::MovedPermanently, 0);
            }
            Resolved::NotFound => {
                let sent = resource::respond_not_found(out, head, snapshot, date, connection(head.close));
                report(sent.status, sent.body_bytes as usize);
            }
        }
        keep_going
    }
}

/// Whether a request that ends the connection is the last thing the client
/// sent: its body (`body_len` bytes) is all in `after_head` (what was
/// received behind its head), and nothing follows it. Otherwise the client
/// is still sending, or sent more than it should, and the connection must
/// linger rather than close with that input unread ([`Next::Close`]).
fn ends_input(body_len: u64, after_head: &[u8]) -> bool {
    after_head.len() as u64 == body_len
}

/// `https://HOST[:PORT]/path?query` for a request to `target` with `Host:
/// host`, or `None` if the host is not a plain name or IP literal. The host
/// loses any port of its own and is lowercased; the path is the normalised
/// one (`key`, as for directory redirects: never the raw target),
/// percent-encoded; the query is the raw target's, with every byte outside
/// the URI characters percent-encoded, so nothing raw from the request
/// reaches the header.
pub fn https_location(host: &[u8], key: &[u8], target: &[u8], port: u16) -> Option<Vec<u8>> {
    let name = match host.first() {
        Some(b'[') => {
            let end = memchr::memchr(b']', host)?;
            let literal = &host[1..end];
            if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || b":.".contains(b)) {
                return None;
            }
            let rest = &host[end + 1..];
            if !(rest.is_empty() || (rest[0] == b':' && rest[1..].iter().all(u8::is_ascii_digit))) {
                return None;
            }
            &host[..=end]
        }
        _ => {
            let name_end = memchr::memchr(b':', host).unwrap_or(host.len());
            let (name, port_part) = host.split_at(name_end);
            if name.is_empty()
                || name.len() > 253
                || !name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(b))
                || !(port_part.is_empty() || port_part[1..].iter().all(u8::is_ascii_digit))
            {
                return None;
            }
            name
        }
    };
    let query = memchr::memchr(b'?', target).map_or(&b""[..], |at| {
        let rest = &target[at..];
        &rest[..memchr::memchr(b'#', rest).unwrap_or(rest.len())]
    });
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut location = Vec::with_capacity(16 + name.len() + key.len() + query.len());
    location.extend_from_slice(b"https://");
    location.extend_from_slice(&name.to_ascii_lowercase());
    if port != 443 {
        location.extend_from_slice(format!(":{port}").as_bytes());
    }
    if !key.starts_with(b"/") {
        location.push(b'/');
    }
    for &byte in key {
        if is_path_byte(byte) {
            location.push(byte);
        } else {
            location.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
        }
    }
    for &byte in query {
        if is_path_byte(byte) || byte == b'?' || byte == b'%' {
            location.push(byte);
        } else {
            location.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
        }
    }
    Some(location)
}

/// A refused request: the error page, `Connection: close`, reported.
fn reply_error<O: Observer>(
    out: &mut Output,
    status: Status,
    date: &DateLine,
    request_line: &[u8],
    observer: &mut O,
) {
    response::write_error(out, status, true, date, ConnectionHeader::Close);
    observer.on_response(&Exchange {
        request_line,
        status: status.code(),
        body_bytes: error_page(status).body.len() as u64,
        referer: None,
        user_agent: None,
    });
}

/// The first line of `bytes` without its line ending, at most `max` bytes.
fn first_line(bytes: &[u8], max: usize) -> &[u8] {
    let end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len()).min(max);
    let line = &bytes[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where a directory requested without its trailing slash redirects: the
/// *normalised* path (`key`, never the raw target: `//evil.example/../dir`
/// must not become a network-path reference that a browser resolves to
/// another host) percent-encoded, then `/`, then the query of the raw target:
/// `/docs?x` → `/docs/?x`. `key` starts with exactly one `/` followed by a
/// non-empty segment (normalisation collapses empty segments), so the result
/// can never start with `//` or `/\`; an absolute-form target redirects to
/// its path (the client knows the host).
fn directory_location(key: &[u8], target: &[u8]) -> Vec<u8> {
    debug_assert!(key.starts_with(b"/") && !key.starts_with(b"//"));
    let query = memchr::memchr2(b'?', b'#', target).map_or(&b""[..], |at| {
        let rest = &target[at..];
        // The fragment is the client's; only the query goes back.
        let end = memchr::memchr(b'#', rest).unwrap_or(rest.len());
        &rest[..end]
    });
    let mut location = Vec::with_capacity(key.len() + 1 + query.len());
    for &byte in key {
        if is_path_byte(byte) {
            location.push(byte);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            location.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
        }
    }
    location.push(b'/');
    location.extend_from_slice(query);
    location
}

/// Bytes a path may carry unescaped (RFC 3986 `pchar` and `/`), minus `%`
/// (the key is decoded: a literal `%` must be re-encoded) and `\`.
fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte)
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
    fn a_close_is_clean_only_when_nothing_follows_the_request() {
        let (snapshot, _dir) = site();
        let next = |input: &[u8]| {
            let mut out = Output::new();
            Session::new()
                .on_input(input, &snapshot, &Limits::default(), &mut out)
                .next
        };
        let close = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        assert_eq!(next(close), Next::Close);
        assert_eq!(next(b"GET / HTTP/1.0\r\n\r\n"), Next::Close);
        assert_eq!(
            next(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            Next::Close,
            "the last of a pipelined batch"
        );
        let mut pipelined = close.to_vec();
        pipelined.extend_from_slice(b"GET /book HTTP/1.1\r\n");
        assert_eq!(next(&pipelined), Next::Linger, "bytes behind it");
        assert_eq!(next(&[&close[..], b"\r\n"].concat()), Next::Linger);
        let with_body = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(next(with_body), Next::Linger, "its body is still coming");
        assert_eq!(next(&[&with_body[..], b"abc"].concat()), Next::Linger);
        assert_eq!(
            next(&[&with_body[..], b"abcde"].concat()),
            Next::Close,
            "all of it read"
        );
        assert_eq!(next(&[&with_body[..], b"abcdef"].concat()), Next::Linger);
        assert_eq!(
            next(b"GET /%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            Next::Linger,
            "a refusal"
        );
    }

    #[test]
    fn directory_without_slash_redirects() {
        let (snapshot, _dir) = site();
        let (text, _) = drive(&snapshot, b"GET /docs?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 4096);
        assert!(text.starts_with("HTTP/1.1 301 "));
        assert!(text.contains("Location: /docs/?x=1\r\n"));
    }

    #[test]
    fn a_directory_redirect_never_leaves_the_site() {
        let (snapshot, dir) = site();
        std::fs::create_dir_all(dir.join("a b%")).unwrap();
        std::fs::write(dir.join("a b%/index.html"), "x").unwrap();
        let snapshot_with_odd = Snapshot::load(&LoadOptions::new(&dir)).unwrap();
        drop(snapshot);
        for (target, location) in [
            ("//evil.example/../docs", "/docs/"),
            ("//evil.example/%2e%2e/docs", "/docs/"),
            ("/%2fevil.example/../docs", ""),
            ("///evil.example/../../docs", ""),
            ("/./docs", "/docs/"),
            ("//docs", "/docs/"),
            ("/docs//", ""),
            ("http://evil.example//docs?q=1#f", "/docs/?q=1"),
            ("/docs?next=//evil.example", "/docs/?next=//evil.example"),
            ("/a%20b%25", "/a%20b%25/"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            let (text, _) = drive(&snapshot_with_odd, raw.as_bytes(), 4096);
            let found = text
                .lines()
                .find_map(|line| line.strip_prefix("Location: "))
                .unwrap_or("");
            assert_eq!(found, location, "{target}: {text}");
            assert!(!found.starts_with("//") && !found.starts_with("/\\"), "{target}");
        }
    }

    #[test]
    fn conditional_get_gives_304() {
        let (snapshot, _dir) = site();
        let Resolved::File(entry) = snapshot.resolve(b"/book.json") else {
            panic!()
        };
        let etag = String::from_utf8(entry.identity().etag().to_vec()).unwrap();
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

    #[test]
    fn leading_empty_lines_are_skipped_but_a_bare_cr_is_not() {
        let (snapshot, _dir) = site();
        let (text, close) = drive(
            &snapshot,
            b"\r\n\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            4096,
        );
        assert_eq!((statuses(&text), close), (vec![200], false));
        for bare_cr in [
            &b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            for step in [1, 4096] {
                let (text, close) = drive(&snapshot, bare_cr, step);
                assert_eq!(
                    (statuses(&text), close),
                    (vec![400], true),
                    "{bare_cr:?} step {step}"
                );
            }
        }
    }

    #[test]
    fn a_smuggling_attempt_gets_exactly_one_response() {
        let (snapshot, _dir) = site();
        let attempts: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 37\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in attempts {
            for step in [1, 7, 4096] {
                let (text, close) = drive(&snapshot, raw, step);
                assert_eq!(statuses(&text).len(), 1, "{}", String::from_utf8_lossy(raw));
                assert!(close);
                assert!(text.contains("Connection: close\r\n"));
            }
        }
    }

    #[test]
    fn a_get_body_is_consumed_and_the_next_request_answered() {
        let (snapshot, _dir) = site();
        let raw = b"GET /book HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\nGET /nope HTTP/1.1\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 5, 4096] {
            let (text, close) = drive(&snapshot, raw, step);
            assert_eq!((statuses(&text), close), (vec![200, 200], false), "step {step}");
        }
    }

    #[test]
    fn an_oversized_body_gets_413_and_close() {
        let (snapshot, _dir) = site();
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            request::DEFAULT_MAX_BODY_BYTES + 1
        );
        let (text, close) = drive(&snapshot, raw.as_bytes(), 4096);
        assert_eq!((statuses(&text), close), (vec![413], true));
    }

    /// Request line, status, body bytes, referer, user agent.
    type Logged = (String, u16, u64, Option<String>, Option<String>);

    #[derive(Default)]
    struct Recorder(Vec<Logged>, usize);

    impl Observer for Recorder {
        fn on_health_check(&mut self) {
            self.1 += 1;
        }

        fn on_response(&mut self, e: &Exchange<'_>) {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            self.0.push((
                text(e.request_line),
                e.status,
                e.body_bytes,
                e.referer.map(text),
                e.user_agent.map(text),
            ));
        }
    }

    #[test]
    fn every_response_is_reported_to_the_observer() {
        let (snapshot, _dir) = site();
        let mut session = Session::new();
        let mut out = Output::new();
        let mut seen = Recorder::default();
        let raw = b"GET /book HTTP/1.1\r\nHost: a\r\nReferer: http://x/\r\nUser-Agent: t\r\n\r\n\
HEAD /book HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /docs HTTP/1.1\r\nHost: a\r\n\r\n\
GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n";
        session.on_input_observed(raw, &snapshot, &Limits::default(), &mut out, &mut seen);
        let not_found = error_page(Status::NotFound).body.len() as u64;
        let bad = error_page(Status::BadRequest).body.len() as u64;
        let t = |s: &str| Some(s.to_owned());
        assert_eq!(
            seen.0,
            vec![
                ("GET /book HTTP/1.1".into(), 200, 13, t("http://x/"), t("t")),
                ("HEAD /book HTTP/1.1".into(), 200, 0, None, None),
                ("GET /nope HTTP/1.1".into(), 404, not_found, None, None),
                ("GET /docs HTTP/1.1".into(), 301, 0, None, None),
                ("GET /%zz HTTP/1.1".into(), 400, bad, None, None),
            ]
        );
        let mut refused = Recorder::default();
        session = Session::new();
        session.on_input_observed(
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            &snapshot,
            &Limits::default(),
            &mut out,
            &mut refused,
        );
        assert_eq!(refused.0[0].0, "GET / HTTP/1.1");
        assert_eq!(refused.0[0].1, 400);
    }

    #[test]
    fn health_checks_are_answered_first_and_reported_apart() {
        let snapshot = Snapshot::from_memory(&[("/healthz", b"shadowed"), ("/a", b"x")], 0)
            .with_health_path(Some("/healthz"));
        let mut session = Session::new();
        let mut out = Output::new();
        let mut seen = Recorder::default();
        let raw = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nHEAD /healthz?x HTTP/1.1\r\nHost: a\r\n\r\n\
GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /healthz HTTP/1.1\r\nHost: a\r\n\r\n\
GET /healthz HTTP/1.0\r\n\r\n";
        let progress = session.on_input_observed(raw, &snapshot, &Limits::default(), &mut out, &mut seen);
        assert_eq!(progress.next, Next::Close, "HTTP/1.0 without keep-alive closes");
        let text = String::from_utf8(out.to_vec_blocking().unwrap()).unwrap();
        assert_eq!(statuses(&text), [200, 200, 200, 405, 200]);
        assert_eq!(text.matches("Cache-Control: no-store\r\n").count(), 3);
        assert_eq!(
            text.matches("\r\n\r\nok\n").count(),
            2,
            "no body for HEAD: {text}"
        );
        assert!(!text.contains("shadowed"));
        assert_eq!(seen.1, 3, "three health checks");
        let reported: Vec<u16> = seen.0.iter().map(|logged| logged.1).collect();
        assert_eq!(reported, [200, 405], "only the others are reported as responses");
        let off = Snapshot::from_memory(&[("/healthz", b"a file")], 0);
        let (text, _) = drive(&off, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 4096);
        assert!(text.ends_with("a file"), "off: the file is served: {text}");
    }

    #[test]
    fn a_head_timeout_answers_408_and_lingers() {
        let mut session = Session::new();
        let mut out = Output::new();
        let mut seen = Recorder::default();
        let snapshot = Snapshot::default();
        let partial = b"GET /slow HTTP/1.1\r\nHost: a\r\n";
        let progress = session.on_input(partial, &snapshot, &Limits::default(), &mut out);
        assert_eq!(
            progress,
            Progress {
                consumed: 0,
                next: Next::Read
            }
        );
        assert_eq!(
            session.on_head_timeout(partial, &mut out, &mut seen),
            Next::Linger
        );
        let text: Vec<u8> = out.to_vec_blocking().unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        assert_eq!(seen.0[0].0, "GET /slow HTTP/1.1");
        assert_eq!(seen.0[0].1, 408);
    }

    #[test]
    fn a_cr_split_from_its_lf_after_a_body_is_still_an_empty_line() {
        let (snapshot, _dir) = site();
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n0\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n";
        let whole = drive(&snapshot, raw, raw.len());
        assert_eq!((statuses(&whole.0), whole.1), (vec![200, 200], false));
        for step in 1..raw.len() {
            assert_eq!(drive(&snapshot, raw, step), whole, "step {step}");
        }
    }

    #[test]
    fn https_locations_are_built_from_validated_parts_only() {
        let loc = |host: &[u8], target: &[u8], port| {
            let mut key = Vec::new();
            normalize_target(target, &mut key).unwrap();
            https_location(host, &key, target, port).map(|l| String::from_utf8(l).unwrap())
        };
        assert_eq!(
            loc(b"Example.com:80", b"/a?b=1", 443).as_deref(),
            Some("https://example.com/a?b=1")
        );
        assert_eq!(
            loc(b"example.com", b"/", 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            loc(b"[::1]:8080", b"/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(
            loc(b"a", b"http://other/p?q#frag", 443).as_deref(),
            Some("https://a/p?q")
        );
        assert_eq!(
            loc(b"a", b"/%e9%22?q=<\">", 443).as_deref(),
            Some("https://a/%E9%22?q=%3C%22%3E")
        );
        // The normalised path, never the raw one.
        assert_eq!(
            loc(b"a", b"//evil.example/../d/./e", 443).as_deref(),
            Some("https://a/d/e")
        );
        for bad in [&b""[..], b"a b", b"a'b", b"[zz]", b"a:x", b"[::1]x", b"a@b"] {
            assert_eq!(loc(bad, b"/", 443), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_redirecting_session_answers_every_request_with_308() {
        let snapshot = Snapshot::from_memory(&[("/a.txt", b"hello")], 0);
        let mut session = Session::redirecting(8443);
        let mut out = Output::new();
        let input = b"GET /a.txt HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.0\r\n\r\n";
        let progress = session.on_input(input, &snapshot, &Limits::default(), &mut out);
        let text = String::from_utf8(out.to_vec_blocking().unwrap()).unwrap();
        assert_eq!(
            text.matches("HTTP/1.1 308 Permanent Redirect\r\n").count(),
            2,
            "{text}"
        );
        assert!(text.contains("Location: https://h:8443/a.txt\r\n"), "{text}");
        assert!(text.contains("Location: https://h:8443/b\r\n"), "{text}");
        // HTTP/1.0 without Host: nothing to redirect to.
        assert!(text.contains("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert_eq!(progress.next, Next::Linger);
    }
}
