//! Request target → snapshot key.
//!
//! The pipeline, in order:
//! 1. drop the scheme and authority of an absolute-form target
//!    (`GET http://host/a` is `/a`);
//! 2. cut the query and fragment;
//! 3. percent-decode each segment exactly once, refusing a decoded `/`, NUL or
//!    `\` inside a segment and malformed escapes;
//! 4. resolve `.` and `..` (RFC 3986 §5.2.4), refusing a `..` that would climb
//!    above the root, and collapse empty segments.
//!
//! The result is the key the snapshot is indexed by. The snapshot holds only
//! files that were inside the root when it was loaded, so even a key that
//! slipped through here could not name anything else: this step exists to give
//! precise errors and to make equivalent spellings find the same file.

use crate::http::request::RequestError;

/// Normalises `target` into `key` (cleared first).
pub fn normalize_target(target: &[u8], key: &mut Vec<u8>) -> Result<(), RequestError> {
    key.clear();
    let path = strip_absolute_form(target)?;
    if path.first() != Some(&b'/') {
        return Err(RequestError::BadRequest("request target is not a path"));
    }
    let end = memchr::memchr2(b'?', b'#', path).unwrap_or(path.len());
    let path = &path[1..end];

    let mut ends_with_slash = true;
    for raw in path.split(|&b| b == b'/') {
        let segment_start = key.len();
        key.push(b'/');
        decode_segment(raw, key)?;
        let segment = &key[segment_start + 1..];
        match segment {
            b"" | b"." => {
                key.truncate(segment_start);
                ends_with_slash = true;
            }
            b".." => {
                key.truncate(segment_start);
                let parent = memchr::memrchr(b'/', key)
                    .ok_or(RequestError::BadRequest("path climbs above the root"))?;
                key.truncate(parent);
                ends_with_slash = true;
            }
            _ => ends_with_slash = false,
        }
    }
    if ends_with_slash {
        key.push(b'/');
    }
    Ok(())
}

fn strip_absolute_form(target: &[u8]) -> Result<&[u8], RequestError> {
    let rest = if starts_with_ignore_case(target, b"http://") {
        &target[7..]
    } else if starts_with_ignore_case(target, b"https://") {
        &target[8..]
    } else {
        return Ok(target);
    };
    let path_start = memchr::memchr3(b'/', b'?', b'#', rest).unwrap_or(rest.len());
    if path_start == 0 {
        return Err(RequestError::BadRequest("absolute-form target without a host"));
    }
    match rest.get(path_start) {
        Some(b'/') => Ok(&rest[path_start..]),
        // `http://host` and `http://host?q` both mean the root.
        _ => Ok(b"/"),
    }
}

fn starts_with_ignore_case(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn decode_segment(raw: &[u8], out: &mut Vec<u8>) -> Result<(), RequestError> {
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&b| hex_value(b));
                let lo = raw.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 3;
                        hi << 4 | lo
                    }
                    _ => return Err(RequestError::BadRequest("malformed percent-encoding")),
                }
            }
            b => {
                i += 1;
                b
            }
        };
        match byte {
            b'/' => return Err(RequestError::BadRequest("encoded slash in path")),
            0 => return Err(RequestError::BadRequest("NUL in path")),
            b'\\' => return Err(RequestError::BadRequest("backslash in path")),
            _ => out.push(byte),
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(target: &str) -> Result<String, RequestError> {
        let mut out = Vec::new();
        normalize_target(target.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn plain_paths() {
        assert_eq!(key("/").unwrap(), "/");
        assert_eq!(key("/book").unwrap(), "/book");
        assert_eq!(key("/css/site.css?v=3#top").unwrap(), "/css/site.css");
        assert_eq!(key("/dir/").unwrap(), "/dir/");
        assert_eq!(key("//a///b").unwrap(), "/a/b");
    }

    #[test]
    fn percent_decoding_happens_once() {
        assert_eq!(key("/a%20b").unwrap(), "/a b");
        assert_eq!(key("/%2541").unwrap(), "/%41");
        assert!(key("/a%2").is_err());
        assert!(key("/a%zz").is_err());
    }

    #[test]
    fn dot_segments_resolve_inside_the_root() {
        assert_eq!(key("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(key("/a/..").unwrap(), "/");
        assert_eq!(key("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(key("/a/%2e%2E/c").unwrap(), "/c");
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/../x",
            "/%2e%2e/x",
            "/a/../../x",
            "/a%2fb",
            "/a%00",
            "/a\\..\\b",
            "/%5c",
            "x",
            "*",
        ] {
            assert!(key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlong_utf8_is_just_bytes_that_match_nothing() {
        let mut out = Vec::new();
        normalize_target(b"/%c0%ae%c0%ae/x", &mut out).unwrap();
        assert_eq!(out, b"/\xc0\xae\xc0\xae/x");
    }

    #[test]
    fn absolute_form() {
        assert_eq!(key("http://example.com/a/b?q").unwrap(), "/a/b");
        assert_eq!(key("HTTPS://example.com").unwrap(), "/");
        assert!(key("http:///a").is_err());
    }
}
