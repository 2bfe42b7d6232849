//! Conditional GET (RFC 9110 §13): deciding when a `304 Not Modified` answers.
//!
//! `If-None-Match` is evaluated first and, when present, `If-Modified-Since` is
//! ignored (§13.2.2). `If-None-Match` uses the weak comparison: `W/"x"` matches
//! `"x"`. An `If-Modified-Since` that is not a valid HTTP date is ignored.

use crate::files::FileEntry;

/// True if the request's validators show the client already has `entry`.
pub fn not_modified(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<&[u8]>,
    entry: &FileEntry,
) -> bool {
    if let Some(list) = if_none_match {
        return etag_list_matches(list, &entry.etag);
    }
    if let Some(since) = if_modified_since.and_then(parse_http_date_secs) {
        return entry.modified_secs <= since;
    }
    false
}

/// Weak comparison of `etag` against a comma-separated list (or `*`).
pub fn etag_list_matches(list: &[u8], etag: &[u8]) -> bool {
    let opaque = strip_weak(etag);
    list.split(|&b| b == b',')
        .map(trim)
        .any(|candidate| candidate == b"*" || strip_weak(candidate) == opaque)
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn parse_http_date_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    Some(crate::files::head::unix_secs(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry() -> FileEntry {
        FileEntry {
            url_path: b"/a".to_vec().into_boxed_slice(),
            body: Bytes::from_static(b"a"),
            ok_head: Box::default(),
            not_modified_head: Box::default(),
            etag: b"\"abc\"".to_vec().into_boxed_slice(),
            modified_secs: 784_111_777,
            content_type: "text/plain".into(),
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let e = entry();
        assert!(not_modified(Some(b"\"abc\""), None, &e));
        assert!(not_modified(Some(b"\"x\", W/\"abc\""), None, &e));
        assert!(not_modified(Some(b"*"), None, &e));
        assert!(!not_modified(Some(b"\"abd\""), None, &e));
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let e = entry();
        assert!(!not_modified(
            Some(b"\"other\""),
            Some(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            &e
        ));
    }

    #[test]
    fn if_modified_since() {
        let e = entry();
        assert!(not_modified(None, Some(b"Sun, 06 Nov 1994 08:49:37 GMT"), &e));
        assert!(!not_modified(None, Some(b"Sun, 06 Nov 1994 08:49:36 GMT"), &e));
        assert!(
            !not_modified(None, Some(b"yesterday"), &e),
            "an invalid date is ignored"
        );
    }
}
