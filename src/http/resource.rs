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
use crate::http::status::{Status, error_page};

/// What a response was: its status and how many body bytes it sends (for
/// the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub status: Status,
    pub body_bytes: u64,
}

impl Sent {
    fn new(status: Status, body_bytes: u64) -> Sent {
        Sent { status, body_bytes }
    }
}

/// Appends the response to a GET or HEAD of `entry`.
pub fn respond_file(
    out: &mut Output,
    head: &RequestHead<'_>,
    entry: &FileEntry,
    date: &DateLine,
    connection: ConnectionHeader,
) -> Sent {
    let fields = &head.selection;
    let chosen = negotiate::select_representation(fields.accept_encoding, &entry.representations);
    let representation = &entry.representations[chosen];
    let with_body = head.method == Method::Get;

    match conditional::evaluate(fields, representation.etag(), entry.modified_secs) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            response::write_head_parts(out, &representation.head.not_modified_parts(), date, connection);
            return Sent::new(Status::NotModified, 0);
        }
        Precondition::Failed => {
            response::write_error(out, Status::PreconditionFailed, with_body, date, connection);
            let body = if with_body {
                error_page(Status::PreconditionFailed).body.len()
            } else {
                0
            };
            return Sent::new(Status::PreconditionFailed, body as u64);
        }
    }

    let honoured_range = fields.single_range().filter(|_| {
        head.method == Method::Get
            && conditional::if_range_allows(fields.if_range, representation.etag(), entry.modified_secs)
    });
    if let Some(value) = honoured_range {
        match range::evaluate(value, representation.body.len()) {
            RangeOutcome::Full => {}
            RangeOutcome::Single(part) => {
                write_single_part(out, entry, representation, part, date, connection);
                return Sent::new(Status::PartialContent, part.len());
            }
            RangeOutcome::Multiple(parts) => {
                let length = write_multipart(out, entry, representation, &parts, date, connection);
                return Sent::new(Status::PartialContent, length);
            }
            RangeOutcome::Unsatisfiable => {
                write_unsatisfiable(out, entry, representation, date, connection);
                return Sent::new(Status::RangeNotSatisfiable, 0);
            }
        }
    }
    let body = with_body.then_some(&representation.body);
    response::write_response(out, representation.ok_head(), body, date, connection);
    Sent::new(Status::Ok, body.map_or(0, |b| b.len()))
}

/// Appends the answer for a path that resolved to nothing.
pub fn respond_not_found(
    out: &mut Output,
    head: &RequestHead<'_>,
    snapshot: &Snapshot,
    date: &DateLine,
    connection: ConnectionHeader,
) -> Sent {
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
            response::write_response(out, representation.ok_head(), body, date, connection);
            Sent::new(Status::NotFound, body.map_or(0, |b| b.len()))
        }
        None => {
            response::write_error(out, Status::NotFound, with_body, date, connection);
            let body = if with_body {
                error_page(Status::NotFound).body.len()
            } else {
                0
            };
            Sent::new(Status::NotFound, body as u64)
        }
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
    for part in representation.head.partial_fields_parts() {
        out.push(part);
    }
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
) -> u64 {
    let etag = representation.etag();
    let tag = etag.strip_prefix(b"\"").unwrap_or(etag);
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
    for part in representation.head.partial_fields_parts() {
        out.push(part);
    }
    out.push_fmt(format_args!(
        "Content-Type: multipart/byteranges; boundary={boundary}\r\nContent-Length: {length}\r\n"
    ));
    response::finish_head(out, date, connection);
    for part in parts {
        out.push(part_head(part).as_bytes());
        out.push_body_range(&representation.body, part.first, part.len());
    }
    out.push(closing.as_bytes());
    length
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{Encoding, LoadOptions, Resolved};
    use crate::http::{Limits, Session};
    use std::path::PathBuf;

    const DIGITS: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

    struct Site {
        snapshot: Snapshot,
        root: PathBuf,
    }

    impl Drop for Site {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn site(name: &str, configure: impl FnOnce(&mut LoadOptions)) -> Site {
        let root = std::env::temp_dir().join(format!("ringserve-resource-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("digits.txt"), DIGITS).unwrap();
        let script: String = (0..100).map(|i| format!("console.log({i});\n")).collect();
        std::fs::write(root.join("app.js"), script).unwrap();
        std::fs::write(root.join("index.html"), "<p>app</p>").unwrap();
        std::fs::write(
            root.join("big.bin"),
            (0..=255u8).cycle().take(200_000).collect::<Vec<u8>>(),
        )
        .unwrap();
        let mut options = LoadOptions::new(&root);
        options.max_cached_file_bytes = 100_000;
        configure(&mut options);
        let snapshot = Snapshot::load(&options).unwrap();
        Site { snapshot, root }
    }

    /// One request in, the whole response out (file ranges read from disk).
    fn answer(snapshot: &Snapshot, request: &str) -> (String, Vec<u8>) {
        let mut session = Session::new();
        let mut out = Output::new();
        session.on_input(request.as_bytes(), snapshot, &Limits::default(), &mut out);
        let all = out.to_vec_blocking().unwrap();
        let split = memchr::memmem::find(&all, b"\r\n\r\n").expect("a complete head") + 4;
        (
            String::from_utf8(all[..split].to_vec()).unwrap(),
            all[split..].to_vec(),
        )
    }

    fn get(snapshot: &Snapshot, path: &str, fields: &str) -> (String, Vec<u8>) {
        answer(
            snapshot,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\n{fields}\r\n"),
        )
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n")
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")))
    }

    fn etag(snapshot: &Snapshot, key: &str, encoding: Encoding) -> String {
        let Resolved::File(entry) = snapshot.resolve(key.as_bytes()) else {
            panic!()
        };
        let representation = entry
            .representations
            .iter()
            .find(|r| r.encoding == encoding)
            .unwrap();
        String::from_utf8(representation.etag().to_vec()).unwrap()
    }

    #[test]
    fn single_ranges_get_206_with_content_range() {
        let site = site("single", |_| {});
        let (head, body) = get(&site.snapshot, "/digits.txt", "Range: bytes=2-5\r\n");
        assert!(head.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{head}");
        assert_eq!(header(&head, "Content-Range"), Some("bytes 2-5/36"));
        assert_eq!(header(&head, "Content-Length"), Some("4"));
        assert_eq!(header(&head, "Content-Type"), Some("text/plain; charset=utf-8"));
        assert!(header(&head, "ETag").is_some() && header(&head, "Cache-Control").is_some());
        assert_eq!(body, b"2345");
        let (_, body) = get(&site.snapshot, "/digits.txt", "Range: bytes=-3\r\n");
        assert_eq!(body, b"xyz");
        let (head, body) = get(&site.snapshot, "/digits.txt", "Range: bytes=30-100\r\n");
        assert_eq!(header(&head, "Content-Range"), Some("bytes 30-35/36"));
        assert_eq!(body, b"uvwxyz");
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        let site = site("unsatisfiable", |_| {});
        let (head, body) = get(&site.snapshot, "/digits.txt", "Range: bytes=36-\r\n");
        assert!(head.starts_with("HTTP/1.1 416 "), "{head}");
        assert_eq!(header(&head, "Content-Range"), Some("bytes */36"));
        assert!(body.is_empty());
        for ignored in [
            "Range: items=0-1\r\n",
            "Range: bytes=5-1\r\n",
            "Range: bytes=0-1\r\nRange: bytes=2-3\r\n",
        ] {
            let (head, body) = get(&site.snapshot, "/digits.txt", ignored);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{ignored:?}: {head}");
            assert_eq!(body, DIGITS.as_bytes());
        }
        // HEAD ignores Range.
        let (head, body) = answer(
            &site.snapshot,
            "HEAD /digits.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && body.is_empty());
    }

    #[test]
    fn if_range_with_strong_tag_or_exact_date() {
        let site = site("if-range", |_| {});
        let tag = etag(&site.snapshot, "/digits.txt", Encoding::Identity);
        let (head, _) = get(
            &site.snapshot,
            "/digits.txt",
            &format!("Range: bytes=0-0\r\nIf-Range: {tag}\r\n"),
        );
        assert!(head.starts_with("HTTP/1.1 206 "), "{head}");
        let (head, body) = get(
            &site.snapshot,
            "/digits.txt",
            "Range: bytes=0-0\r\nIf-Range: \"stale\"\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body.len(), 36);
        let weak = format!("W/{tag}");
        let (head, _) = get(
            &site.snapshot,
            "/digits.txt",
            &format!("Range: bytes=0-0\r\nIf-Range: {weak}\r\n"),
        );
        assert!(
            head.starts_with("HTTP/1.1 200 "),
            "a weak tag never allows a range: {head}"
        );
        let (full, _) = get(&site.snapshot, "/digits.txt", "");
        let modified = header(&full, "Last-Modified").unwrap();
        let (head, _) = get(
            &site.snapshot,
            "/digits.txt",
            &format!("Range: bytes=0-0\r\nIf-Range: {modified}\r\n"),
        );
        assert!(head.starts_with("HTTP/1.1 206 "), "{head}");
    }

    #[test]
    fn multiple_ranges_are_multipart() {
        let site = site("multipart", |_| {});
        let (head, body) = get(
            &site.snapshot,
            "/digits.txt",
            "Range: bytes=0-1, 10-11, 11-12\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 206 "), "{head}");
        let content_type = header(&head, "Content-Type").unwrap();
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        assert_eq!(
            header(&head, "Content-Length").unwrap().parse::<usize>().unwrap(),
            body.len()
        );
        let text = String::from_utf8(body).unwrap();
        let expected = format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-1/36\r\n\r\n01\
             \r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 10-12/36\r\n\r\nabc\
             \r\n--{boundary}--\r\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn ranges_of_files_on_disk_are_file_pieces() {
        let site = site("disk-range", |_| {});
        let mut session = Session::new();
        let mut out = Output::new();
        let request = "GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=1000-1999, 150000-\r\n\r\n";
        session.on_input(request.as_bytes(), &site.snapshot, &Limits::default(), &mut out);
        assert!(out.has_file_ranges());
        let all = out.to_vec_blocking().unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("Content-Range: bytes 1000-1999/200000"));
        assert!(text.contains("Content-Range: bytes 150000-199999/200000"));
        let (_, body) = get(&site.snapshot, "/big.bin", "Range: bytes=256-258\r\n");
        assert_eq!(body, [0, 1, 2]);
        let (head, body) = get(&site.snapshot, "/big.bin", "");
        assert_eq!(header(&head, "Content-Length"), Some("200000"));
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));
    }

    #[test]
    fn preconditions_give_412_and_304_with_the_right_fields() {
        let site = site("preconditions", |_| {});
        let tag = etag(&site.snapshot, "/app.js", Encoding::Identity);
        let (head, _) = get(&site.snapshot, "/app.js", "If-Match: \"nope\"\r\n");
        assert!(head.starts_with("HTTP/1.1 412 "), "{head}");
        let (head, _) = get(&site.snapshot, "/app.js", &format!("If-Match: {tag}\r\n"));
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let (head, _) = get(
            &site.snapshot,
            "/app.js",
            "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 412 "), "{head}");
        let (head, body) = get(&site.snapshot, "/app.js", &format!("If-None-Match: {tag}\r\n"));
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
        for present in ["ETag", "Date", "Cache-Control", "Vary"] {
            assert!(header(&head, present).is_some(), "{present} in {head}");
        }
        assert!(header(&head, "Content-Length").is_none() && body.is_empty());
        // A 304 beats a Range.
        let (head, _) = get(
            &site.snapshot,
            "/app.js",
            &format!("If-None-Match: {tag}\r\nRange: bytes=0-1\r\n"),
        );
        assert!(head.starts_with("HTTP/1.1 304 "), "{head}");
        // The identity tag does not validate the gzip representation.
        let (head, _) = get(
            &site.snapshot,
            "/app.js",
            &format!("Accept-Encoding: gzip\r\nIf-None-Match: {tag}\r\n"),
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    }

    #[test]
    fn negotiation_picks_a_variant_and_ranges_apply_to_it() {
        let site = site("negotiate", |_| {});
        let (head, gzip) = get(&site.snapshot, "/app.js", "Accept-Encoding: gzip\r\n");
        assert_eq!(header(&head, "Content-Encoding"), Some("gzip"));
        assert_eq!(header(&head, "Vary"), Some("Accept-Encoding"));
        assert_eq!(
            header(&head, "ETag").unwrap(),
            etag(&site.snapshot, "/app.js", Encoding::Gzip)
        );
        let (head, _) = get(&site.snapshot, "/app.js", "Accept-Encoding: gzip, br\r\n");
        assert_eq!(header(&head, "Content-Encoding"), Some("br"));
        let (head, _) = get(&site.snapshot, "/app.js", "");
        assert_eq!(header(&head, "Content-Encoding"), None);
        assert_eq!(
            header(&head, "Vary"),
            Some("Accept-Encoding"),
            "identity varies too"
        );
        let (head, part) = get(
            &site.snapshot,
            "/app.js",
            "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n",
        );
        assert_eq!(
            header(&head, "Content-Range"),
            Some(&*format!("bytes 0-9/{}", gzip.len()))
        );
        assert_eq!(header(&head, "Content-Encoding"), Some("gzip"));
        assert_eq!(part, gzip[..10]);
    }

    #[test]
    fn unknown_paths_fallback_and_404_page() {
        let site = site("not-found", |_| {});
        let (head, _) = get(&site.snapshot, "/missing", "Accept: text/html\r\n");
        assert!(
            head.starts_with("HTTP/1.1 404 "),
            "no fallback configured: {head}"
        );
        std::fs::write(site.root.join("404.html"), "<p>custom</p>").unwrap();
        let options = LoadOptions {
            fallback: Some("index.html".to_owned()),
            ..LoadOptions::new(&site.root)
        };
        let snapshot = Snapshot::load(&options).unwrap();
        let (head, body) = get(&snapshot, "/app/route/42", "Accept: text/html,*/*;q=0.8\r\n");
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, b"<p>app</p>");
        let (head, body) = get(&snapshot, "/missing.js", "Accept: */*\r\n");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert_eq!(body, b"<p>custom</p>");
        assert_eq!(header(&head, "Cache-Control"), Some("no-cache"));
        let (head, body) = answer(&snapshot, "HEAD /missing.js HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 ") && body.is_empty());
        assert_eq!(header(&head, "Content-Length"), Some("13"));
    }

    #[test]
    fn extra_headers_and_cache_policy_reach_every_response() {
        let config =
            std::env::temp_dir().join(format!("ringserve-resource-config-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            "[[rules]]\nglob = \"**\"\nheaders = { X-Content-Type-Options = \"nosniff\" }\n",
        )
        .unwrap();
        let config_path = config.clone();
        let site = site("policy", move |options| options.config_file = Some(config_path));
        let tag = etag(&site.snapshot, "/digits.txt", Encoding::Identity);
        for fields in ["", "Range: bytes=0-1\r\n", &format!("If-None-Match: {tag}\r\n")] {
            let (head, _) = get(&site.snapshot, "/digits.txt", fields);
            assert_eq!(header(&head, "X-Content-Type-Options"), Some("nosniff"), "{head}");
            assert_eq!(header(&head, "Cache-Control"), Some("no-cache"), "{head}");
        }
        let (head, _) = get(&site.snapshot, "/", "");
        assert_eq!(header(&head, "Cache-Control"), Some("no-cache"));
        std::fs::remove_file(config).unwrap();
    }
}
