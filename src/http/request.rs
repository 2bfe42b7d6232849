//! Request heads: finding where a head ends in a byte stream, and parsing it.
//!
//! Two steps, both pure functions over bytes:
//! 1. [`find_head_end`] scans for the blank line that ends a head with `memchr`,
//!    resuming where the previous scan stopped, so a head that trickles in one
//!    byte at a time is scanned once in total, not once per byte.
//! 2. [`parse_request`] hands the complete head to `httparse` and pulls out the
//!    few fields a static server acts on ([`RequestHead`]), rejecting what the
//!    RFCs forbid with a [`RequestError`] that says which status to answer.
//!
//! Line endings: CRLF, and also a bare LF (RFC 9112 §2.2 allows a recipient to
//! accept one, and `httparse` does); a bare CR is rejected by `httparse`.
//!
//! Strictness (RFC 9112, stricter than nginx where the RFCs allow): `httparse`
//! runs with every leniency off (`strict_parser`), so one space between the
//! request-line parts, no whitespace before a colon or before the first
//! field, no obs-fold, token field names, and no control bytes (CR, LF, NUL,
//! DEL, …) in targets or values are all 400. On top of that this module refuses
//! what `httparse` leaves to the caller: framing that could be read two ways
//! (`Transfer-Encoding` with `Content-Length`, on HTTP/1.0, or not ending in
//! `chunked`; any repeated `Content-Length`), a missing, repeated or malformed
//! `Host`.

use std::mem::MaybeUninit;

use crate::http::selection::SelectionHeaders;
use crate::http::status::Status;

/// Fields of a request head that the server acts on. Borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Method,
    /// The request target exactly as sent (origin-form or absolute-form).
    pub target: &'a [u8],
    pub version: Version,
    /// The connection should close after this response.
    pub close: bool,
    /// Bytes of request body that follow the head (from `Content-Length`).
    pub body_len: u64,
    /// Validators, range and accepted codings: see [`SelectionHeaders`].
    pub selection: SelectionHeaders<'a>,
    /// For the access log only (kept as slices: free when logging is off).
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// The `Host` field's value (validated), for building redirects.
    pub host: Option<&'a [u8]>,
    /// Length of the head in bytes, including the blank line that ends it.
    pub head_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// A registered method this server does not serve (POST, PUT, …): 405.
    Unsupported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Why a request was refused; each maps to exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed syntax: 400.
    BadRequest(&'static str),
    /// The request line is longer than the limit: 414.
    UriTooLong,
    /// The head is larger than the limit or has too many fields: 431.
    HeadTooLarge,
    /// A method token nobody registered: 501.
    UnknownMethod,
    /// A well-formed `Transfer-Encoding: …, chunked` on an HTTP/1.1 request
    /// without `Content-Length`: 501 (this server reads no chunked bodies).
    /// Every other use of `Transfer-Encoding` is a [`RequestError::BadRequest`].
    TransferEncoding,
    /// A declared body larger than the limit: 413.
    BodyTooLarge,
    /// `HTTP/x.y` other than 1.0 and 1.1: 505.
    VersionNotSupported,
}

impl RequestError {
    /// The one table from error kind to status code.
    pub fn status(self) -> Status {
        match self {
            RequestError::BadRequest(_) => Status::BadRequest,
            RequestError::UriTooLong => Status::UriTooLong,
            RequestError::HeadTooLarge => Status::HeaderFieldsTooLarge,
            RequestError::UnknownMethod | RequestError::TransferEncoding => Status::NotImplemented,
            RequestError::BodyTooLarge => Status::PayloadTooLarge,
            RequestError::VersionNotSupported => Status::VersionNotSupported,
        }
    }
}

/// Size limits applied while parsing. Defaults follow nginx's and h2o's orders
/// of magnitude: a request line of 8 KiB, a head of 16 KiB, 100 fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_line_bytes: usize,
    pub max_head_bytes: usize,
    pub max_header_count: usize,
    /// The largest request body that is read and discarded rather than refused.
    pub max_body_bytes: u64,
}

pub const DEFAULT_MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Upper bound for `max_header_count`: the parser's field array lives on the stack.
pub const HEADER_COUNT_CEILING: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line_bytes: DEFAULT_MAX_REQUEST_LINE_BYTES,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_header_count: DEFAULT_MAX_HEADER_COUNT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Finds the end of a request head: the index just past the blank line.
///
/// `from` is how many bytes of `buf` an earlier call already scanned; the
/// look-back at each newline (at most two bytes) reaches into those bytes, so
/// resuming there finds exactly what a scan from zero would.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    for rel in memchr::memchr_iter(b'\n', &buf[from..]) {
        let i = from + rel;
        let blank_lf = i >= 1 && buf[i - 1] == b'\n';
        let blank_crlf = i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n';
        if blank_lf || blank_crlf {
            return Some(i + 1);
        }
    }
    None
}

/// Decides what an incomplete head already proves: that it is too large, or
/// that it can never become a valid request (nginx answers garbage at once
/// too; waiting for a blank line that may never come would hold a binary
/// client, or a TLS `ClientHello` sent to the plain port, until the head
/// deadline).
///
/// `checked` is how many bytes of `buf` an earlier call already checked: only
/// the bytes after it are classified, so a head that trickles in one byte at
/// a time costs a `memchr` over its current line per call, not a rescan.
pub fn check_partial(buf: &[u8], checked: usize, limits: &Limits) -> Result<(), RequestError> {
    if buf.len() > limits.max_request_line_bytes || buf.len() > limits.max_head_bytes {
        let line_window = &buf[..buf.len().min(limits.max_request_line_bytes + 1)];
        let line_len = memchr::memchr(b'\n', line_window).unwrap_or(line_window.len());
        if line_len > limits.max_request_line_bytes {
            return Err(RequestError::UriTooLong);
        } else if buf.len() > limits.max_head_bytes {
            return Err(RequestError::HeadTooLarge);
        }
    }
    check_prefix(buf, checked)
}

/// Refuses an incomplete head whose lines so far cannot start a valid
/// request line and field lines (the same grammar `strict_parser` enforces on
/// the complete head; what only the complete head can tell, such as the
/// version being one we speak, is left to [`parse_request`]).
fn check_prefix(buf: &[u8], checked: usize) -> Result<(), RequestError> {
    let checked = checked.min(buf.len());
    let mut line_start = memchr::memrchr(b'\n', &buf[..checked]).map_or(0, |i| i + 1);
    while line_start < buf.len() {
        let end = memchr::memchr(b'\n', &buf[line_start..]).map(|i| line_start + i);
        let line = PartialLine::new(&buf[line_start..end.unwrap_or(buf.len())], end.is_some());
        let old = checked.saturating_sub(line_start);
        if line_start == 0 {
            line.check_request_line(old)?;
        } else {
            line.check_field_line(old)?;
        }
        match end {
            Some(end) => line_start = end + 1,
            None => break,
        }
    }
    Ok(())
}

/// One line of an incomplete head, without its line ending.
struct PartialLine<'a> {
    bytes: &'a [u8],
    /// Its line ending has arrived (or, at least, the CR of one).
    ended: bool,
}

impl<'a> PartialLine<'a> {
    fn new(line: &'a [u8], complete: bool) -> PartialLine<'a> {
        // A line still arriving may end with the CR of its CRLF.
        match line.strip_suffix(b"\r") {
            Some(bytes) => PartialLine { bytes, ended: true },
            None => PartialLine {
                bytes: line,
                ended: complete,
            },
        }
    }

    /// `method SP target SP HTTP/d.d`; only bytes from `old` on are classified.
    fn check_request_line(&self, old: usize) -> Result<(), RequestError> {
        let line = self.bytes;
        let method_end = memchr::memchr(b' ', line).unwrap_or(line.len());
        if !line[old.min(method_end)..method_end].iter().all(|&b| is_tchar(b)) {
            return Err(RequestError::BadRequest("invalid method"));
        }
        if method_end == line.len() {
            return match self.ended {
                true => Err(RequestError::BadRequest("malformed request line")),
                false => Ok(()),
            };
        }
        if method_end == 0 {
            return Err(RequestError::BadRequest("malformed request line"));
        }
        let target_start = method_end + 1;
        let target_end = memchr::memchr(b' ', &line[target_start..]).map_or(line.len(), |i| target_start + i);
        let target_ended = target_end < line.len() || self.ended;
        if target_end == target_start && target_ended {
            return Err(RequestError::BadRequest("malformed request line"));
        }
        if !line[old.max(target_start).min(target_end)..target_end]
            .iter()
            .all(|&b| b > b' ' && b != 0x7f)
        {
            return Err(RequestError::BadRequest("invalid request target"));
        }
        if target_end == line.len() {
            return match self.ended {
                true => Err(RequestError::BadRequest("missing HTTP version")),
                false => Ok(()),
            };
        }
        // `HTTP/` DIGIT `.` DIGIT, compared as far as it has arrived.
        let version = &line[target_end + 1..];
        let fits = version.len() <= 8
            && version.iter().enumerate().all(|(i, &b)| match i {
                0..=4 => b == b"HTTP/"[i],
                6 => b == b'.',
                _ => b.is_ascii_digit(),
            });
        if !fits || (self.ended && version.len() != 8) {
            return Err(RequestError::BadRequest("invalid HTTP version"));
        }
        Ok(())
    }

    /// `name: value`: a token name (no whitespace before the colon, no
    /// obs-fold), a value of visible bytes, spaces and tabs.
    fn check_field_line(&self, old: usize) -> Result<(), RequestError> {
        let line = self.bytes;
        if line.is_empty() {
            // The blank line that ends the head, its LF still to come.
            return Ok(());
        }
        let colon = memchr::memchr(b':', line);
        let name_end = colon.unwrap_or(line.len());
        if !line[old.min(name_end)..name_end].iter().all(|&b| is_tchar(b)) || colon == Some(0) {
            return Err(RequestError::BadRequest("invalid header field name"));
        }
        let Some(colon) = colon else {
            return match self.ended {
                true => Err(RequestError::BadRequest("header line without a colon")),
                false => Ok(()),
            };
        };
        if !line[old.max(colon + 1).min(line.len())..]
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
        {
            return Err(RequestError::BadRequest("invalid header field value"));
        }
        Ok(())
    }
}

/// `httparse` with every leniency off, spelled out so the choice is visible:
/// these are the defaults today, and a test per rule fails if one changes.
fn strict_parser() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .allow_space_before_first_header_name(false)
        .ignore_invalid_headers_in_requests(false);
    config
}

/// Parses a complete head (`head` ends with the blank line found by
/// [`find_head_end`]).
pub fn parse_request<'a>(head: &'a [u8], limits: &Limits) -> Result<RequestHead<'a>, RequestError> {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    if line_end > limits.max_request_line_bytes {
        return Err(RequestError::UriTooLong);
    }
    if head.len() > limits.max_head_bytes {
        return Err(RequestError::HeadTooLarge);
    }
    let mut storage = [MaybeUninit::<httparse::Header<'a>>::uninit(); HEADER_COUNT_CEILING];
    let field_slots = &mut storage[..limits.max_header_count.min(HEADER_COUNT_CEILING)];
    let mut req = httparse::Request::new(&mut []);
    match strict_parser().parse_request_with_uninit_headers(&mut req, head, field_slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(RequestError::BadRequest("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(&head[..line_end])),
        Err(httparse::Error::Token) if method_is_bad(head) => {
            return Err(RequestError::BadRequest("invalid method"));
        }
        Err(e) => return Err(RequestError::BadRequest(httparse_reason(e))),
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let method = classify_method(req.method.unwrap_or_default())?;
    let target = req.path.unwrap_or_default().as_bytes();

    let mut parsed = RequestHead {
        method,
        target,
        version,
        close: version == Version::Http10,
        body_len: 0,
        selection: SelectionHeaders::default(),
        referer: None,
        user_agent: None,
        host: None,
        head_len: head.len(),
    };
    let mut host_count = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_coding = TransferCoding::Absent;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let value = trim_ows(field.value);
        // Dispatch on length first: most fields are rejected by one compare.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                host_count += 1;
                if !valid_host(value) {
                    return Err(RequestError::BadRequest("invalid Host"));
                }
                parsed.host = Some(value);
            }
            7 if name.eq_ignore_ascii_case(b"referer") => parsed.referer = Some(value),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                apply_connection_tokens(value, version, &mut parsed.close);
            }
            10 if name.eq_ignore_ascii_case(b"user-agent") => parsed.user_agent = Some(value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // Even identical repeats are refused (RFC 9110 §8.6 allows
                // either): two framing fields are how smuggling starts.
                if content_length.is_some() {
                    return Err(RequestError::BadRequest("repeated Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_coding = transfer_coding.then(value);
            }
            _ => parsed.selection.observe(name, value),
        }
    }
    match transfer_coding {
        TransferCoding::Absent => {}
        TransferCoding::Malformed => return Err(RequestError::BadRequest("invalid Transfer-Encoding")),
        TransferCoding::NotChunkedLast => {
            return Err(RequestError::BadRequest(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        // RFC 9112 §6.1: a sender MUST NOT send both; §6.3: a server MAY reject
        // such a message and then MUST close, which `Linger` does.
        TransferCoding::ChunkedLast if content_length.is_some() => {
            return Err(RequestError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        // RFC 9112 §6.1: an HTTP/1.0 message with a transfer coding has
        // faulty framing.
        TransferCoding::ChunkedLast if version == Version::Http10 => {
            return Err(RequestError::BadRequest("Transfer-Encoding on HTTP/1.0"));
        }
        TransferCoding::ChunkedLast => return Err(RequestError::TransferEncoding),
    }
    if version == Version::Http11 && host_count == 0 {
        return Err(RequestError::BadRequest("missing Host"));
    }
    if host_count > 1 {
        return Err(RequestError::BadRequest("several Host fields"));
    }
    parsed.body_len = content_length.unwrap_or(0);
    if parsed.body_len > limits.max_body_bytes {
        return Err(RequestError::BodyTooLarge);
    }
    Ok(parsed)
}

/// What the `Transfer-Encoding` fields of a request say, all fields taken
/// together as one list (RFC 9110 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    Absent,
    /// An empty list, a member that is not a token, or `chunked` applied twice.
    Malformed,
    /// The last coding is `chunked`, applied once.
    ChunkedLast,
    /// Codings that do not end with `chunked`: the body length is unknowable.
    NotChunkedLast,
}

impl TransferCoding {
    /// Folds one more `Transfer-Encoding` field value into the list so far.
    fn then(self, value: &[u8]) -> TransferCoding {
        let mut state = self;
        let mut members = 0;
        for member in value.split(|&b| b == b',').map(trim_ows) {
            if member.is_empty() {
                continue;
            }
            members += 1;
            // `name;param=value` is the syntax; only the name matters here.
            let name = trim_ows(member.split(|&b| b == b';').next().unwrap_or_default());
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return TransferCoding::Malformed;
            }
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            state = match state {
                TransferCoding::Malformed => return state,
                // Anything after `chunked`, including `chunked` again, is an
                // error: chunked must be applied once, and last.
                TransferCoding::ChunkedLast => return TransferCoding::Malformed,
                _ if chunked => TransferCoding::ChunkedLast,
                _ => TransferCoding::NotChunkedLast,
            };
        }
        if members == 0 {
            return TransferCoding::Malformed;
        }
        state
    }
}

fn classify_method(method: &str) -> Result<Method, RequestError> {
    Ok(match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "CONNECT" | "TRACE" => Method::Unsupported,
        _ => return Err(RequestError::UnknownMethod),
    })
}

/// True if the request line does not even start with a token and a space.
fn method_is_bad(head: &[u8]) -> bool {
    let end = memchr::memchr(b' ', head).unwrap_or(head.len());
    end == 0 || !head[..end].iter().all(|&b| is_tchar(b))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `HTTP/2.0` is a version we do not speak (505); `http/1.1` or `HTTP/1` is not
/// a version at all (400).
fn version_error(request_line: &[u8]) -> RequestError {
    let line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(token), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return RequestError::BadRequest("malformed request line");
    };
    match token {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            RequestError::VersionNotSupported
        }
        _ => RequestError::BadRequest("invalid HTTP version"),
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Token => "invalid request line",
        _ => "malformed request",
    }
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `Connection` is a comma-separated token list; only `close` and
/// `keep-alive` change anything.
fn apply_connection_tokens(value: &[u8], version: Version, close: &mut bool) {
    for token in value.split(|&b| b == b',').map(trim_ows) {
        if token.eq_ignore_ascii_case(b"close") {
            *close = true;
            return;
        }
        if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::Http10 {
            *close = false;
        }
    }
}

/// Digits only: `+5`, `0x5`, `-1`, empty and overflowing values are errors
/// (RFC 9110 §8.6), because a lenient parse is how request smuggling starts.
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    const BAD: RequestError = RequestError::BadRequest("invalid Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(BAD)
    })
}

/// A Host value is `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2):
/// an IP literal in brackets (an IPv6 address or `vX.…`), or a registered
/// name or IPv4 address (unreserved, sub-delims and `%XX` bytes, in
/// non-empty dot-separated labels, one trailing dot allowed), then
/// optionally `:` and a port of 1 to 5 digits no larger than 65535. An empty
/// value is valid (a client with no authority to name must send one).
fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', value) else {
            return false;
        };
        if !valid_ip_literal(&value[1..close]) {
            return false;
        }
        match &value[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (None, port),
            _ => return false,
        }
    } else {
        match memchr::memchr(b':', value) {
            Some(colon) => (Some(&value[..colon]), &value[colon + 1..]),
            None => (Some(value), &b""[..]),
        }
    };
    let no_port = host.is_some_and(|h| h.len() == value.len());
    host.is_none_or(valid_reg_name) && (no_port || valid_port(port))
}

fn valid_port(port: &[u8]) -> bool {
    (1..=5).contains(&port.len())
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0')) <= 65535
}

/// `reg-name` (which also covers IPv4 addresses), in labels.
fn valid_reg_name(name: &[u8]) -> bool {
    let name = name.strip_suffix(b".").unwrap_or(name);
    !name.is_empty()
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty() && {
                let mut i = 0;
                while i < label.len() {
                    match label[i] {
                        b'%' if label.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                            && label.get(i + 2).is_some_and(u8::is_ascii_hexdigit) =>
                        {
                            i += 3;
                            continue;
                        }
                        b if b.is_ascii_alphanumeric() || b"-_~!$&'()*+,;=".contains(&b) => {}
                        _ => return false,
                    }
                    i += 1;
                }
                true
            }
        })
}

/// `IPv6address / IPvFuture`, between the brackets.
fn valid_ip_literal(inside: &[u8]) -> bool {
    match inside {
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = memchr::memchr(b'.', rest) else {
                return false;
            };
            dot > 0
                && rest[..dot].iter().all(u8::is_ascii_hexdigit)
                && dot + 1 < rest.len()
                && rest[dot + 1..]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b))
        }
        _ => std::str::from_utf8(inside).is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<RequestHead<'_>, RequestError> {
        let end = find_head_end(raw, 0).expect("complete head");
        parse_request(&raw[..end], &Limits::default())
    }

    #[test]
    fn finds_head_end_with_crlf_and_bare_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[test]
    fn resumed_scan_matches_a_full_scan_at_every_split() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        for split in 0..raw.len() {
            let first = find_head_end(&raw[..split], 0);
            let resumed = first.or_else(|| find_head_end(raw, split));
            assert_eq!(resumed, Some(raw.len()), "split at {split}");
        }
    }

    #[test]
    fn parses_a_typical_get() {
        let head =
            parse(b"GET /book?x=1 HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: \"abc\"\r\n\r\n").unwrap();
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.target, b"/book?x=1");
        assert_eq!(head.version, Version::Http11);
        assert!(!head.close);
        assert_eq!(head.selection.if_none_match, Some(&b"\"abc\""[..]));
    }

    #[test]
    fn connection_rules_for_each_version() {
        let close = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(close.close);
        let old = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(old.close);
        let old_keep = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!old_keep.close);
        let listed = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\n\r\n").unwrap();
        assert!(listed.close);
    }

    #[test]
    fn methods_map_to_405_or_501() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().method,
            Method::Unsupported
        );
        assert_eq!(
            parse(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err(),
            RequestError::UnknownMethod
        );
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n").unwrap_err(),
            RequestError::VersionNotSupported
        );
        assert!(matches!(
            parse(b"GET / http/1.1\r\nHost: a\r\n\r\n").unwrap_err(),
            RequestError::BadRequest(_)
        ));
    }

    #[test]
    fn host_is_required_once_on_http11() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Err(RequestError::BadRequest(_))
        ));
    }

    #[test]
    fn host_must_be_uri_host_and_port() {
        let host = |value: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            parse(raw.as_bytes()).map(|_| ())
        };
        for good in [
            "",
            "a",
            "example.com",
            "example.com.",
            "example.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:65535",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "a:1",
        ] {
            assert!(host(good).is_ok(), "{good:?} is a valid Host");
        }
        for bad in [
            "[abcd::1",
            "[abcd::1]x",
            "[abcd::1]:",
            "[::g]",
            "[]",
            "[v1.]",
            "a:99999",
            "a:65536",
            "a:123456",
            "a:1:2",
            "a:",
            ":80",
            "..x",
            "a..b",
            ".",
            "a/b",
            "a@b",
            "a%2",
            "a%zz",
            "a b",
            "::1",
        ] {
            assert_eq!(
                host(bad).unwrap_err(),
                RequestError::BadRequest("invalid Host"),
                "{bad:?} is not a valid Host"
            );
        }
    }

    #[test]
    fn an_incomplete_head_that_cannot_become_a_request_is_refused_at_once() {
        let limits = Limits::default();
        let check = |raw: &[u8]| check_partial(raw, 0, &limits);
        // Could still become valid requests.
        for fine in [
            &b""[..],
            b"G",
            b"GET",
            b"GET ",
            b"GET /a",
            b"GET /a ",
            b"GET /a HT",
            b"GET /a HTTP/1.1",
            b"GET /a HTTP/1.1\r",
            b"GET /a HTTP/1.1\r\n",
            b"GET /a HTTP/1.1\r\nHo",
            b"GET /a HTTP/1.1\r\nHost: a\r",
            b"GET /a HTTP/1.1\nHost: a\nX: \t\xff",
            b"BREW /pot HTTP/2.0\r\n",
        ] {
            assert_eq!(check(fine), Ok(()), "{:?}", String::from_utf8_lossy(fine));
        }
        let tls_client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
        for bad in [
            &tls_client_hello[..],
            &all_bytes[..],
            b"\x00\x01\x02\r\n",
            b" GET / HTTP/1.1",
            b"GET\r\n",
            b"GET  /",
            b"GET /a\x01",
            b"GET /a\r\n",
            b"GET /a HTTP/1.1x",
            b"GET /a http/1.1",
            b"GET /a HTTP/1.1 \r\n",
            b"GET /a HTTP/1.1\r\n Host: a",
            b"GET /a HTTP/1.1\r\nHost : a",
            b"GET /a HTTP/1.1\r\n: a",
            b"GET /a HTTP/1.1\r\nno colon\r\n",
            b"GET /a HTTP/1.1\r\nHost: a\x00",
            b"GET /a HTTP/1.1\r\nHost: a\rb",
        ] {
            assert!(
                matches!(check(bad), Err(RequestError::BadRequest(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(bad),
                check(bad)
            );
        }
    }

    #[test]
    fn partial_checks_resume_where_they_stopped() {
        // Fed one byte at a time, a check that resumes at `checked` agrees
        // with one that starts over, for every prefix.
        let limits = Limits::default();
        for raw in [
            &b"GET /a%20b HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n"[..],
            b"GET /a HTTP/1.1\r\nHost: a\r\nX\x01: y\r\n",
            b"GET /a\x7f HTTP/1.1\r\n",
            b"GET /a HTTP/1.1\r\nX: a\x00b\r\n",
        ] {
            let mut checked = 0;
            for end in 1..=raw.len() {
                let resumed = check_partial(&raw[..end], checked, &limits);
                assert_eq!(resumed, check_partial(&raw[..end], 0, &limits), "prefix {end}");
                if resumed.is_err() {
                    break;
                }
                checked = end;
            }
        }
    }

    #[test]
    fn content_length_is_strict() {
        for bad in ["+5", "0x5", "", "-1", "99999999999999999999999", "5, 6"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: {bad}\r\n\r\n");
            assert!(
                matches!(parse(raw.as_bytes()), Err(RequestError::BadRequest(_))),
                "{bad:?}"
            );
        }
        let two = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(parse(two), Err(RequestError::BadRequest(_))));
        let ok = parse(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(ok.body_len, 5);
        let big = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(parse(big).unwrap_err(), RequestError::BodyTooLarge);
    }

    /// The status a complete head gets, or `None` if it is accepted.
    fn status_of(raw: &[u8]) -> Option<u16> {
        parse(raw).err().map(|e| e.status().code())
    }

    #[test]
    fn transfer_encoding_rules() {
        let with = |fields: &str, version: &str| format!("GET / HTTP/{version}\r\nHost: a\r\n{fields}\r\n");
        let cases = [
            ("Transfer-Encoding: chunked\r\n", "1.1", 501),
            ("Transfer-Encoding: gzip, chunked\r\n", "1.1", 501),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                "1.1",
                501,
            ),
            ("Transfer-Encoding: CHUNKED\r\n", "1.1", 501),
            ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "1.1", 400),
            ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "1.1", 400),
            ("Transfer-Encoding: chunked\r\n", "1.0", 400),
            ("Transfer-Encoding: gzip\r\n", "1.1", 400),
            ("Transfer-Encoding: chunked, gzip\r\n", "1.1", 400),
            ("Transfer-Encoding: chunked, chunked\r\n", "1.1", 400),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "1.1",
                400,
            ),
            ("Transfer-Encoding: \r\n", "1.1", 400),
            ("Transfer-Encoding: ,\r\n", "1.1", 400),
            ("Transfer-Encoding: chu nked\r\n", "1.1", 400),
            ("Transfer-Encoding: \"chunked\"\r\n", "1.1", 400),
            ("Transfer-Encoding: identity\r\n", "1.1", 400),
        ];
        for (fields, version, expected) in cases {
            let raw = with(fields, version);
            assert_eq!(status_of(raw.as_bytes()), Some(expected), "{raw:?}");
        }
    }

    /// Each rule of RFC 9112's syntax that `httparse` enforces for us, with
    /// the leniency that would break it named: if a leniency is ever turned
    /// on in [`strict_parser`], its case here fails.
    #[test]
    fn strict_syntax() {
        let cases: &[(&[u8], u16, &str)] = &[
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "two spaces in the request line",
            ),
            (
                b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "two spaces before the version",
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                400,
                "space after the version",
            ),
            (
                b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "space before the method",
            ),
            (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "tab as a delimiter"),
            (b"GET /\r\nHost: a\r\n\r\n", 400, "missing version"),
            (b"GET / \r\nHost: a\r\n\r\n", 400, "empty version"),
            (b"GET HTTP/1.1\r\nHost: a\r\n\r\n", 400, "missing target"),
            (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "lowercase version"),
            (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "three-digit version"),
            (b"GET / HTTP/11\r\nHost: a\r\n\r\n", 400, "version without a dot"),
            (
                b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "control byte in the target",
            ),
            (
                b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "DEL in the target",
            ),
            (
                b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "NUL in the target",
            ),
            (
                b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "space in the target",
            ),
            (
                b"GET / HTTP/1.1\rHost: a\r\n\r\n",
                400,
                "bare CR after the request line",
            ),
            (
                b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                "bare CR in the target",
            ),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "bare CR in a value"),
            (b"GET / HTTP/1.1\r\nHo\rst: a\r\n\r\n", 400, "bare CR in a name"),
            (b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, "CR CR LF"),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                400,
                "space before the colon",
            ),
            (
                b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
                400,
                "tab before the colon",
            ),
            (
                b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                400,
                "space before the first field",
            ),
            (
                b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n",
                400,
                "tab before the first field",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
                400,
                "obs-fold",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n",
                400,
                "obs-fold with a tab",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
                400,
                "empty field name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n",
                400,
                "non-token field name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX\"Y: b\r\n\r\n",
                400,
                "quote in a field name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n",
                400,
                "field without a colon",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n",
                400,
                "NUL in a value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x01c\r\n\r\n",
                400,
                "control byte in a value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7fc\r\n\r\n",
                400,
                "DEL in a value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: b\nc\r\n\r\n",
                400,
                "bare LF inside a value starts a bad line",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                400,
                "two Host fields",
            ),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "slash in Host"),
            (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400, "userinfo in Host"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\nHost: a\r\n\r\n",
                400,
                "repeated Content-Length",
            ),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "HTTP/1.2"),
            (
                b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
                505,
                "HTTP/0.9 spelled as a version",
            ),
            (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501, "unknown method"),
            (
                b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
                501,
                "methods are case-sensitive",
            ),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "non-token method"),
        ];
        for (raw, expected, why) in cases {
            assert_eq!(
                status_of(raw),
                Some(*expected),
                "{why}: {:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn what_strict_parsing_still_accepts() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF line endings"),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", "mixed line endings"),
            (b"GET / HTTP/1.1\r\nHost:a\r\n\r\n", "no space after the colon"),
            (
                b"GET / HTTP/1.1\r\nHost: a \t\r\n\r\n",
                "trailing whitespace in a value",
            ),
            (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", "empty Host (RFC 9112 §3.2)"),
            (
                b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
                "IPv6 Host with port",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
                "obs-text in a value",
            ),
            (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 without Host"),
            (b"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n", "absolute form"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                "zero Content-Length",
            ),
        ];
        for (raw, why) in cases {
            assert_eq!(status_of(raw), None, "{why}: {:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn referer_and_user_agent_are_kept_for_the_log() {
        let head =
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\nUser-Agent: t/1\r\n\r\n").unwrap();
        assert_eq!(head.referer, Some(&b"http://r/"[..]));
        assert_eq!(head.user_agent, Some(&b"t/1"[..]));
    }

    #[test]
    fn limits_give_414_and_431() {
        let limits = Limits::default();
        let long_line = vec![b'a'; limits.max_request_line_bytes + 1];
        assert_eq!(
            check_partial(&long_line, 0, &limits),
            Err(RequestError::UriTooLong)
        );
        let mut long_head = b"GET / HTTP/1.1\r\n".to_vec();
        long_head.resize(limits.max_head_bytes + 1, b'a');
        assert_eq!(
            check_partial(&long_head, 0, &limits),
            Err(RequestError::HeadTooLarge)
        );
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..limits.max_header_count {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), RequestError::HeadTooLarge);
    }

    #[test]
    fn a_long_request_line_is_414_even_when_the_head_is_also_too_large() {
        let limits = Limits::default();
        let mut raw = b"GET /".to_vec();
        raw.resize(limits.max_head_bytes + 100, b'a');
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(check_partial(&raw, 0, &limits), Err(RequestError::UriTooLong));
        let mut line_then_fields = b"GET / HTTP/1.1\r\n".to_vec();
        line_then_fields.resize(limits.max_head_bytes + 1, b'a');
        assert_eq!(
            check_partial(&line_then_fields, 0, &limits),
            Err(RequestError::HeadTooLarge)
        );
        let mut exactly = b"GET /".to_vec();
        exactly.resize(limits.max_request_line_bytes, b'a');
        assert_eq!(check_partial(&exactly, 0, &limits), Ok(()));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert!(matches!(
            parse(b"\x01\x02garbage\r\n\r\n"),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(RequestError::BadRequest(_))
        ));
    }
}
