//! Rendering the per-representation response heads, once, when the snapshot
//! is built: `200`, `304`, and the fields a `206` shares with them.
//!
//! Like h2o's file cache, the validators (`ETag`, `Last-Modified`) and the
//! content type are computed here and stored with the file, never per request.
//! The `ETag` is a hash of the content (xxh3-64), so it is the same across
//! restarts and across replicas serving the same build.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The strong entity tag for `body`: `"` + 16 hex digits of xxh3-64 + `"`.
pub fn etag_for(body: &[u8]) -> String {
    etag_from_hash(xxhash_rust::xxh3::xxh3_64(body))
}

/// The entity tag for a content hash computed elsewhere (in chunks, for a
/// file that stays on disk).
pub fn etag_from_hash(hash: u64) -> String {
    format!("\"{hash:016x}\"")
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

/// The fields a representation's heads are made of.
#[derive(Debug)]
pub struct HeadFields<'a> {
    pub content_type: &'a str,
    pub content_length: u64,
    pub etag: &'a str,
    pub modified_secs: u64,
    /// `Content-Encoding`, for an encoded variant.
    pub content_encoding: Option<&'a str>,
    /// `Vary: Accept-Encoding`: on every representation of a file that has
    /// variants, identity included, so caches key on the request's codings.
    pub vary_accept_encoding: bool,
    /// The `Cache-Control` line and extra header lines, each CRLF-terminated
    /// (see [`super::cache_rules`]).
    pub policy_lines: &'a str,
}

/// `200 OK` (or another status line, for the custom 404 page) head, up to but
/// not including `Date`.
pub fn render_ok_head(status_line: &str, fields: &HeadFields<'_>) -> Box<[u8]> {
    let mut head = String::with_capacity(320);
    let _ = write!(
        head,
        "{status_line}\r\nServer: ringserve\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        fields.content_type, fields.content_length,
    );
    push_validators_and_policy(&mut head, fields);
    head.push_str("Accept-Ranges: bytes\r\n");
    head.into_bytes().into_boxed_slice()
}

/// The `304` head: validators, `Cache-Control`, `Vary` and the extra headers;
/// no body fields (RFC 9110 §15.4.5).
pub fn render_not_modified_head(fields: &HeadFields<'_>) -> Box<[u8]> {
    let mut head = String::with_capacity(240);
    head.push_str("HTTP/1.1 304 Not Modified\r\nServer: ringserve\r\n");
    let _ = write!(
        head,
        "Last-Modified: {}\r\nETag: {}\r\n",
        http_date(fields.modified_secs),
        fields.etag
    );
    if fields.vary_accept_encoding {
        head.push_str("Vary: Accept-Encoding\r\n");
    }
    head.push_str(fields.policy_lines);
    head.into_bytes().into_boxed_slice()
}

/// What a `206` shares with the `200` (see
/// [`super::Representation::partial_fields`]).
pub fn render_partial_fields(fields: &HeadFields<'_>) -> Box<[u8]> {
    let mut head = String::with_capacity(240);
    head.push_str("Server: ringserve\r\n");
    push_validators_and_policy(&mut head, fields);
    head.into_bytes().into_boxed_slice()
}

fn push_validators_and_policy(head: &mut String, fields: &HeadFields<'_>) {
    let _ = write!(
        head,
        "Last-Modified: {}\r\nETag: {}\r\n",
        http_date(fields.modified_secs),
        fields.etag,
    );
    if let Some(encoding) = fields.content_encoding {
        let _ = write!(head, "Content-Encoding: {encoding}\r\n");
    }
    if fields.vary_accept_encoding {
        head.push_str("Vary: Accept-Encoding\r\n");
    }
    head.push_str(fields.policy_lines);
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

    fn fields<'a>(encoding: Option<&'a str>, vary: bool) -> HeadFields<'a> {
        HeadFields {
            content_type: "text/plain; charset=utf-8",
            content_length: 5,
            etag: "\"0123456789abcdef\"",
            modified_secs: 784_111_777,
            content_encoding: encoding,
            vary_accept_encoding: vary,
            policy_lines: "Cache-Control: no-cache\r\nX-Frame-Options: DENY\r\n",
        }
    }

    #[test]
    fn ok_head_has_every_field() {
        let head = render_ok_head("HTTP/1.1 200 OK", &fields(None, false));
        let text = std::str::from_utf8(&head).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: ringserve\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             ETag: \"0123456789abcdef\"\r\nCache-Control: no-cache\r\nX-Frame-Options: DENY\r\n\
             Accept-Ranges: bytes\r\n"
        );
    }

    #[test]
    fn variant_heads_carry_encoding_and_vary() {
        let head = render_ok_head("HTTP/1.1 200 OK", &fields(Some("br"), true));
        let text = std::str::from_utf8(&head).unwrap();
        assert!(
            text.contains("Content-Encoding: br\r\nVary: Accept-Encoding\r\n"),
            "{text}"
        );
        let partial = render_partial_fields(&fields(Some("br"), true));
        let text = std::str::from_utf8(&partial).unwrap();
        assert!(text.contains("Content-Encoding: br\r\n") && !text.contains("Content-Length"));
    }

    #[test]
    fn not_modified_head_has_validators_cache_control_and_vary_only() {
        let head = render_not_modified_head(&fields(Some("gzip"), true));
        let text = std::str::from_utf8(&head).unwrap();
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        for present in [
            "ETag: ",
            "Cache-Control: no-cache",
            "Vary: Accept-Encoding",
            "X-Frame-Options",
        ] {
            assert!(text.contains(present), "{present} in {text}");
        }
        for absent in ["Content-Length", "Content-Type", "Content-Encoding"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }
}
