//! Rendering the per-file response heads, once, when the snapshot is built.
//!
//! Like h2o's file cache, the validators (`ETag`, `Last-Modified`) and the
//! content type are computed here and stored with the file, never per request.
//! The `ETag` is a hash of the content (xxh3-64), so it is the same across
//! restarts and across replicas serving the same build.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The strong entity tag for `body`: `"` + 16 hex digits of xxh3-64 + `"`.
pub fn etag_for(body: &[u8]) -> String {
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body))
}

/// `Content-Type` for a file name: the registered type, with `charset=utf-8`
/// for text types (browsers otherwise guess, and guess differently).
pub fn content_type_for(file_name: &str) -> String {
    let mime = mime_guess::from_path(file_name).first_or_octet_stream();
    let essence = mime.essence_str();
    let is_text = mime.type_() == mime_guess::mime::TEXT
        || essence == "application/javascript"
        || essence == "image/svg+xml";
    if is_text && mime.get_param(mime_guess::mime::CHARSET).is_none() {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// The fields a file's heads are made of.
#[derive(Debug)]
pub struct HeadFields<'a> {
    pub content_type: &'a str,
    pub content_length: u64,
    pub etag: &'a str,
    pub modified_secs: u64,
}

/// The `200` head, up to but not including `Date`.
pub fn render_ok_head(fields: &HeadFields<'_>) -> Box<[u8]> {
    let mut head = String::with_capacity(256);
    head.push_str("HTTP/1.1 200 OK\r\nServer: ringserve\r\n");
    let _ = write!(
        head,
        "Content-Type: {}\r\nContent-Length: {}\r\nLast-Modified: {}\r\nETag: {}\r\nAccept-Ranges: bytes\r\n",
        fields.content_type,
        fields.content_length,
        http_date(fields.modified_secs),
        fields.etag,
    );
    head.into_bytes().into_boxed_slice()
}

/// The `304` head: the validators, no body fields (RFC 9110 §15.4.5).
pub fn render_not_modified_head(fields: &HeadFields<'_>) -> Box<[u8]> {
    let mut head = String::with_capacity(160);
    head.push_str("HTTP/1.1 304 Not Modified\r\nServer: ringserve\r\n");
    let _ = write!(
        head,
        "Last-Modified: {}\r\nETag: {}\r\n",
        http_date(fields.modified_secs),
        fields.etag
    );
    head.into_bytes().into_boxed_slice()
}

pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Whole seconds since the epoch; times before it count as the epoch.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type_for("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type_for("site.css"), "text/css; charset=utf-8");
        assert_eq!(content_type_for("book.json"), "application/json");
        assert_eq!(content_type_for("logo.png"), "image/png");
        assert_eq!(content_type_for("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type_for("blob"), "application/octet-stream");
        assert!(content_type_for("app.js").ends_with("javascript; charset=utf-8"));
    }

    #[test]
    fn etag_depends_only_on_content() {
        assert_eq!(etag_for(b"abc"), etag_for(b"abc"));
        assert_ne!(etag_for(b"abc"), etag_for(b"abd"));
        assert_eq!(etag_for(b"abc").len(), 18);
    }

    #[test]
    fn ok_head_has_every_field() {
        let head = render_ok_head(&HeadFields {
            content_type: "text/plain; charset=utf-8",
            content_length: 5,
            etag: "\"0123456789abcdef\"",
            modified_secs: 784_111_777,
        });
        let text = std::str::from_utf8(&head).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: ringserve\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             ETag: \"0123456789abcdef\"\r\nAccept-Ranges: bytes\r\n"
        );
    }
}
