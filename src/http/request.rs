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
    /// `Transfer-Encoding` on a request: 501 (this server takes no request bodies
    /// it would have to de-chunk).
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

/// Decides what an incomplete head already proves: that it is too large.
pub fn check_partial(buf: &[u8], limits: &Limits) -> Result<(), RequestError> {
    match memchr::memchr(b'\n', buf) {
        None if buf.len() > limits.max_request_line_bytes => Err(RequestError::UriTooLong),
        _ if buf.len() > limits.max_head_bytes => Err(RequestError::HeadTooLarge),
        _ => Ok(()),
    }
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
    match req.parse_with_uninit_headers(head, field_slots) {
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
        head_len: head.len(),
    };
    let mut host_count = 0usize;
    let mut content_length: Option<u64> = None;
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
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                apply_connection_tokens(value, version, &mut parsed.close);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let len = parse_content_length(value)?;
                if content_length.is_some_and(|seen| seen != len) {
                    return Err(RequestError::BadRequest("conflicting Content-Length"));
                }
                content_length = Some(len);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                return Err(RequestError::TransferEncoding);
            }
            _ => parsed.selection.observe(name, value),
        }
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

/// A Host value is `uri-host [ ":" port ]`: no spaces, slashes or other bytes
/// that cannot appear in a host name, an IP literal or a port.
fn valid_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]!$&'()*+,;=%".contains(&b))
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

    #[test]
    fn transfer_encoding_is_refused() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(raw).unwrap_err(), RequestError::TransferEncoding);
    }

    #[test]
    fn limits_give_414_and_431() {
        let limits = Limits::default();
        let long_line = vec![b'a'; limits.max_request_line_bytes + 1];
        assert_eq!(check_partial(&long_line, &limits), Err(RequestError::UriTooLong));
        let mut long_head = b"GET / HTTP/1.1\r\n".to_vec();
        long_head.resize(limits.max_head_bytes + 1, b'a');
        assert_eq!(
            check_partial(&long_head, &limits),
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
