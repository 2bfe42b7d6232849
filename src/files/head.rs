//! Rendering the per-representation response heads, once, when the snapshot
//! is built: `200`, `304`, and the fields a `206` shares with them.
//!
//! Only the `200` head is stored whole ([`RenderedHead`]): it is what the hot
//! path copies (GET and HEAD, keep-alive or not: `Date` and `Connection` are
//! appended per response). The `304` head, the fields of a `206` and the
//! `ETag` are slices of it, appended in two or three pieces when such a rare
//! response is sent: each representation costs one allocation of about 240
//! bytes instead of four (about 560), `examples/snapshot-overhead.rs`.
//!
//! Like h2o's file cache, the validators (`ETag`, `Last-Modified`) and the
//! content type are computed here and stored with the file, never per request.
//! The `ETag` is a hash of the content (xxh3-64), so it is the same across
//! restarts and across replicas serving the same build.

use std::fmt::Write as _;
use std::sync::Arc;
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

/// `Accept-Ranges`, the last line of every `200` head: a `206` and a `304`
/// leave it out.
const ACCEPT_RANGES: &[u8] = b"Accept-Ranges: bytes\r\n";
/// What a `206` and a `304` put before the parts they share with the `200`.
const SERVER: &[u8] = b"Server: ringserve\r\n";
const NOT_MODIFIED_START: &[u8] = b"HTTP/1.1 304 Not Modified\r\nServer: ringserve\r\n";

/// A representation's `200` head, rendered once, whole (the hot path copies
/// it as it is), with where its parts begin, so that the rarely sent heads
/// (`304`, the fields of a `206`) and the `ETag` are slices of it rather than
/// copies of their own: one allocation per representation instead of four.
///
/// ```text
/// HTTP/1.1 200 OK\r\n Server\r\n Content-Type\r\n Content-Length\r\n
/// Last-Modified\r\n ETag: "…"\r\n [Content-Encoding\r\n] [Vary\r\n] policy lines
/// ^ validators_at         ^ etag  ^ etag_line_end      ^ shared_tail_at
/// Accept-Ranges: bytes\r\n
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedHead {
    /// Shared, not copied, when the background stage renders the same
    /// identity head again (`files::load::build_variants`).
    ok: Arc<[u8]>,
    /// Start of `Last-Modified`: the 206 fields run from here to the
    /// `Accept-Ranges` line.
    validators_at: u32,
    /// The entity tag, quotes included.
    etag_at: u32,
    etag_end: u32,
    /// Just past the `Content-Encoding` line (or the `ETag` line without
    /// one): the 304 takes the validators, skips the encoding, and takes
    /// everything from here to `Accept-Ranges`.
    shared_tail_at: u32,
}

impl RenderedHead {
    /// The whole `200` head (or the custom 404 page's), up to but not
    /// including `Date`.
    pub fn ok(&self) -> &[u8] {
        &self.ok
    }

    /// The strong entity tag, quotes included.
    pub fn etag(&self) -> &[u8] {
        &self.ok[self.etag_at as usize..self.etag_end as usize]
    }

    /// The `304` head, up to but not including `Date`, in pieces to append
    /// in order: status line and `Server`, `Last-Modified` and `ETag`, then
    /// `Vary` and the policy lines — no body fields (RFC 9110 §15.4.5).
    pub fn not_modified_parts(&self) -> [&[u8]; 3] {
        let etag_line_end = self.etag_end as usize + 2;
        [
            NOT_MODIFIED_START,
            &self.ok[self.validators_at as usize..etag_line_end],
            &self.ok[self.shared_tail_at as usize..self.ok.len() - ACCEPT_RANGES.len()],
        ]
    }

    /// The fields a `206` shares with the `200`, CRLF-terminated lines, in
    /// pieces: everything but the status line, `Content-Type`,
    /// `Content-Length` and `Accept-Ranges` (a 206 adds `Content-Range` and
    /// its own length).
    pub fn partial_fields_parts(&self) -> [&[u8]; 2] {
        [
            SERVER,
            &self.ok[self.validators_at as usize..self.ok.len() - ACCEPT_RANGES.len()],
        ]
    }

    /// Bytes this head holds.
    pub fn len(&self) -> usize {
        self.ok.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ok.is_empty()
    }
}

/// Renders the `200 OK` head (or another status line, for the custom 404
/// page), up to but not including `Date`, and where its parts begin.
pub fn render_head(status_line: &str, fields: &HeadFields<'_>) -> RenderedHead {
    let mut head = String::with_capacity(
        160 + fields.content_type.len() + fields.etag.len() + fields.policy_lines.len(),
    );
    let _ = write!(
        head,
        "{status_line}\r\nServer: ringserve\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        fields.content_type, fields.content_length,
    );
    let validators_at = head.len();
    let _ = write!(
        head,
        "Last-Modified: {}\r\nETag: ",
        http_date(fields.modified_secs)
    );
    let etag_at = head.len();
    head.push_str(fields.etag);
    let etag_end = head.len();
    head.push_str("\r\n");
    if let Some(encoding) = fields.content_encoding {
        let _ = write!(head, "Content-Encoding: {encoding}\r\n");
    }
    let shared_tail_at = head.len();
    if fields.vary_accept_encoding {
        head.push_str("Vary: Accept-Encoding\r\n");
    }
    head.push_str(fields.policy_lines);
    head.push_str("Accept-Ranges: bytes\r\n");
    let offset = |at: usize| u32::try_from(at).expect("a head shorter than 4 GiB");
    RenderedHead {
        validators_at: offset(validators_at),
        etag_at: offset(etag_at),
        etag_end: offset(etag_end),
        shared_tail_at: offset(shared_tail_at),
        ok: head.into_bytes().into(),
    }
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

    // The renderers the snapshot used before the 304 and 206 heads became
    // slices of the 200 (each head stored whole): the reference the slices
    // must match byte for byte.
    fn old_ok_head(status_line: &str, fields: &HeadFields<'_>) -> Vec<u8> {
        let mut head = String::new();
        let _ = write!(
            head,
            "{status_line}\r\nServer: ringserve\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            fields.content_type, fields.content_length,
        );
        old_validators_and_policy(&mut head, fields);
        head.push_str("Accept-Ranges: bytes\r\n");
        head.into_bytes()
    }

    fn old_not_modified_head(fields: &HeadFields<'_>) -> Vec<u8> {
        let mut head = String::new();
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
        head.into_bytes()
    }

    fn old_partial_fields(fields: &HeadFields<'_>) -> Vec<u8> {
        let mut head = String::new();
        head.push_str("Server: ringserve\r\n");
        old_validators_and_policy(&mut head, fields);
        head.into_bytes()
    }

    fn old_validators_and_policy(head: &mut String, fields: &HeadFields<'_>) {
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

    #[test]
    fn ok_head_has_every_field() {
        let head = render_head("HTTP/1.1 200 OK", &fields(None, false));
        let text = std::str::from_utf8(head.ok()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: ringserve\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             ETag: \"0123456789abcdef\"\r\nCache-Control: no-cache\r\nX-Frame-Options: DENY\r\n\
             Accept-Ranges: bytes\r\n"
        );
        assert_eq!(head.etag(), b"\"0123456789abcdef\"");
    }

    #[test]
    fn variant_heads_carry_encoding_and_vary() {
        let head = render_head("HTTP/1.1 200 OK", &fields(Some("br"), true));
        let text = std::str::from_utf8(head.ok()).unwrap();
        assert!(
            text.contains("Content-Encoding: br\r\nVary: Accept-Encoding\r\n"),
            "{text}"
        );
        let partial = head.partial_fields_parts().concat();
        let text = std::str::from_utf8(&partial).unwrap();
        assert!(text.contains("Content-Encoding: br\r\n") && !text.contains("Content-Length"));
    }

    #[test]
    fn not_modified_head_has_validators_cache_control_and_vary_only() {
        let head = render_head("HTTP/1.1 200 OK", &fields(Some("gzip"), true))
            .not_modified_parts()
            .concat();
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
        for absent in [
            "Content-Length",
            "Content-Type",
            "Content-Encoding",
            "Accept-Ranges",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    /// Every status line, coding, `Vary`, policy (none, one line, several,
    /// long), type, length and tag: the 200 head, the 304 and 206 pieces and
    /// the tag are byte for byte what the old renderers stored whole.
    #[test]
    fn heads_from_parts_are_byte_identical_to_the_heads_rendered_whole() {
        let long_policy = format!("Cache-Control: max-age=60\r\nX-Long: {}\r\n", "v".repeat(5000));
        let policies = [
            "",
            "Cache-Control: no-cache\r\n",
            "Cache-Control: public, max-age=31536000, immutable\r\nX-Frame-Options: DENY\r\nX-A: b\r\n",
            long_policy.as_str(),
        ];
        let mut checked = 0;
        for status_line in ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"] {
            for encoding in [None, Some("gzip"), Some("br")] {
                for vary in [false, true] {
                    for policy_lines in policies {
                        for (content_type, content_length) in
                            [("text/html; charset=utf-8", 0), ("image/png", 2_147_483_648)]
                        {
                            for etag in ["\"0123456789abcdef\"", "\"x\"", "\"\""] {
                                for modified_secs in [0, 784_111_777, 4_102_444_800] {
                                    let fields = HeadFields {
                                        content_type,
                                        content_length,
                                        etag,
                                        modified_secs,
                                        content_encoding: encoding,
                                        vary_accept_encoding: vary,
                                        policy_lines,
                                    };
                                    let head = render_head(status_line, &fields);
                                    assert_eq!(head.ok(), old_ok_head(status_line, &fields));
                                    assert_eq!(head.etag(), etag.as_bytes());
                                    assert_eq!(
                                        head.not_modified_parts().concat(),
                                        old_not_modified_head(&fields)
                                    );
                                    assert_eq!(
                                        head.partial_fields_parts().concat(),
                                        old_partial_fields(&fields)
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 3 * 2 * 4 * 2 * 3 * 3);
    }
}
