//! The request header fields that choose *what* to send for a file: the
//! validators (`If-Match`, `If-None-Match`, `If-Modified-Since`,
//! `If-Unmodified-Since`), the part (`Range`, `If-Range`), and the acceptable
//! codings and media types (`Accept-Encoding`, `Accept`).
//!
//! The parser ([`crate::http::request`]) hands every field it does not act on
//! itself to [`SelectionHeaders::observe`]; the values stay borrowed from the
//! receive buffer. They are interpreted only once the target resolves to a
//! file ([`crate::http::resource`]), so a request for a missing file never
//! pays for parsing a `Range`.
//!
//! Repeated fields: these are rare in practice, and joining list-valued
//! fields would need a copy. The first occurrence is kept, except for
//! `Range`, a singleton field: two of them make the request's `Range`
//! ignored (RFC 9110 §14.2 lets a server ignore a `Range` it cannot use).

/// Borrowed values of the selecting fields, trimmed of surrounding whitespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectionHeaders<'a> {
    pub if_match: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub if_unmodified_since: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub range: Option<&'a [u8]>,
    /// `Range` appeared more than once: it is ignored.
    pub range_repeated: bool,
    pub accept_encoding: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
}

impl<'a> SelectionHeaders<'a> {
    /// Records `name: value` if it is one of the selecting fields. Dispatches
    /// on the name's length first, so an unrelated field costs one compare.
    pub fn observe(&mut self, name: &[u8], value: &'a [u8]) {
        let slot = match name.len() {
            5 if name.eq_ignore_ascii_case(b"range") => {
                if self.range.is_some() {
                    self.range_repeated = true;
                }
                &mut self.range
            }
            6 if name.eq_ignore_ascii_case(b"accept") => &mut self.accept,
            8 if name.eq_ignore_ascii_case(b"if-match") => &mut self.if_match,
            8 if name.eq_ignore_ascii_case(b"if-range") => &mut self.if_range,
            13 if name.eq_ignore_ascii_case(b"if-none-match") => &mut self.if_none_match,
            15 if name.eq_ignore_ascii_case(b"accept-encoding") => &mut self.accept_encoding,
            17 if name.eq_ignore_ascii_case(b"if-modified-since") => &mut self.if_modified_since,
            19 if name.eq_ignore_ascii_case(b"if-unmodified-since") => &mut self.if_unmodified_since,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    /// The `Range` value to act on, if there is exactly one.
    pub fn single_range(&self) -> Option<&'a [u8]> {
        if self.range_repeated { None } else { self.range }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_known_fields_case_insensitively_and_keeps_the_first() {
        let mut fields = SelectionHeaders::default();
        fields.observe(b"If-None-Match", b"\"a\"");
        fields.observe(b"if-none-match", b"\"b\"");
        fields.observe(b"ACCEPT-ENCODING", b"gzip");
        fields.observe(b"X-Other", b"ignored");
        fields.observe(b"If-Unmodified-Since", b"date");
        assert_eq!(fields.if_none_match, Some(&b"\"a\""[..]));
        assert_eq!(fields.accept_encoding, Some(&b"gzip"[..]));
        assert_eq!(fields.if_unmodified_since, Some(&b"date"[..]));
        assert_eq!(fields.if_match, None);
    }

    #[test]
    fn a_repeated_range_is_ignored() {
        let mut fields = SelectionHeaders::default();
        fields.observe(b"Range", b"bytes=0-1");
        assert_eq!(fields.single_range(), Some(&b"bytes=0-1"[..]));
        fields.observe(b"Range", b"bytes=2-3");
        assert_eq!(fields.single_range(), None);
    }
}
