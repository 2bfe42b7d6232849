//! Preconditions (RFC 9110 §13): whether a request proceeds, gets
//! `304 Not Modified`, or fails with `412 Precondition Failed`.
//!
//! Evaluated against the *selected representation* (its own `ETag`: a gzip
//! variant's tag differs from the identity one), in the order of §13.2.2:
//! 1. `If-Match` present: unless it is `*` or lists the representation's tag
//!    under the **strong** comparison, 412;
//! 2. else `If-Unmodified-Since` with a valid date: modified after it, 412;
//! 3. `If-None-Match` present: `*` or a listed tag matching under the **weak**
//!    comparison gives 304 (GET and HEAD are the only methods served);
//! 4. else `If-Modified-Since` with a valid date: not modified since, 304.
//!    An invalid date is ignored (§13.1.3), and the field is ignored entirely
//!    when `If-None-Match` is present.
//!
//! `If-Range` (§13.1.5) is evaluated later, by [`if_range_allows`], only when a
//! `Range` is about to be honoured.

use crate::http::selection::SelectionHeaders;

/// The outcome of the preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation (or the part a `Range` asks for).
    Proceed,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    Failed,
}

/// Evaluates the preconditions for a GET or HEAD of a representation with
/// entity tag `etag` (quotes included) last modified at `modified_secs`.
pub fn evaluate(fields: &SelectionHeaders<'_>, etag: &[u8], modified_secs: u64) -> Precondition {
    let failed = match fields.if_match {
        Some(list) => !etag_list_matches(list, etag, Comparison::Strong),
        None => fields
            .if_unmodified_since
            .and_then(parse_http_date_secs)
            .is_some_and(|since| modified_secs > since),
    };
    if failed {
        return Precondition::Failed;
    }
    let not_modified = match fields.if_none_match {
        Some(list) => etag_list_matches(list, etag, Comparison::Weak),
        None => fields
            .if_modified_since
            .and_then(parse_http_date_secs)
            .is_some_and(|since| modified_secs <= since),
    };
    if not_modified {
        Precondition::NotModified
    } else {
        Precondition::Proceed
    }
}

/// Whether a `Range` may be honoured given `If-Range` (RFC 9110 §13.1.5):
/// without `If-Range`, yes; with an entity tag, only if it equals the
/// representation's tag under the strong comparison (a weak tag never does);
/// with a date, only if it is exactly `Last-Modified`.
pub fn if_range_allows(if_range: Option<&[u8]>, etag: &[u8], modified_secs: u64) -> bool {
    let Some(value) = if_range else {
        return true;
    };
    if value.first() == Some(&b'"') || value.starts_with(b"W/") {
        return strong_match(value, etag);
    }
    parse_http_date_secs(value) == Some(modified_secs)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Compares `etag` with a comma-separated list of entity tags, or `*`.
fn etag_list_matches(list: &[u8], etag: &[u8], comparison: Comparison) -> bool {
    if list.trim_ascii() == b"*" {
        return true;
    }
    list.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|candidate| match comparison {
            Comparison::Strong => strong_match(candidate, etag),
            Comparison::Weak => strip_weak(candidate) == strip_weak(etag),
        })
}

/// Strong comparison (§8.8.3.2): both tags strong and character for character equal.
fn strong_match(candidate: &[u8], etag: &[u8]) -> bool {
    !candidate.starts_with(b"W/") && !etag.starts_with(b"W/") && candidate == etag
}

fn strip_weak(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Seconds since the epoch for a valid HTTP-date (any of the three formats
/// RFC 9110 §5.6.7 requires recipients to accept), or `None`.
pub fn parse_http_date_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    Some(crate::files::head::unix_secs(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &[u8] = b"\"abc\"";
    const MODIFIED: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    const AT: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";
    const BEFORE: &[u8] = b"Sun, 06 Nov 1994 08:49:36 GMT";

    fn check(fields: SelectionHeaders<'_>) -> Precondition {
        evaluate(&fields, ETAG, MODIFIED)
    }

    #[test]
    fn no_preconditions_proceed() {
        assert_eq!(check(SelectionHeaders::default()), Precondition::Proceed);
    }

    #[test]
    fn if_match_is_strong_and_accepts_star_and_lists() {
        let with = |v: &'static [u8]| SelectionHeaders {
            if_match: Some(v),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(with(b"\"abc\"")), Precondition::Proceed);
        assert_eq!(check(with(b"*")), Precondition::Proceed);
        assert_eq!(check(with(b"\"x\", \"abc\"")), Precondition::Proceed);
        assert_eq!(
            check(with(b"W/\"abc\"")),
            Precondition::Failed,
            "weak never matches strongly"
        );
        assert_eq!(check(with(b"\"abd\"")), Precondition::Failed);
    }

    #[test]
    fn if_unmodified_since() {
        let with = |v: &'static [u8]| SelectionHeaders {
            if_unmodified_since: Some(v),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(with(AT)), Precondition::Proceed);
        assert_eq!(check(with(BEFORE)), Precondition::Failed);
        assert_eq!(
            check(with(b"garbage")),
            Precondition::Proceed,
            "invalid date ignored"
        );
    }

    #[test]
    fn if_match_takes_precedence_over_if_unmodified_since() {
        let fields = SelectionHeaders {
            if_match: Some(b"\"abc\""),
            if_unmodified_since: Some(BEFORE),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(fields), Precondition::Proceed);
    }

    #[test]
    fn failed_if_match_wins_over_a_matching_if_none_match() {
        let fields = SelectionHeaders {
            if_match: Some(b"\"other\""),
            if_none_match: Some(b"\"abc\""),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(fields), Precondition::Failed);
        let fields = SelectionHeaders {
            if_unmodified_since: Some(BEFORE),
            if_none_match: Some(b"*"),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(fields), Precondition::Failed);
    }

    #[test]
    fn if_none_match_is_weak_with_lists_and_star() {
        let with = |v: &'static [u8]| SelectionHeaders {
            if_none_match: Some(v),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(with(b"\"abc\"")), Precondition::NotModified);
        assert_eq!(check(with(b"W/\"abc\"")), Precondition::NotModified);
        assert_eq!(check(with(b"\"x\" ,W/\"abc\"")), Precondition::NotModified);
        assert_eq!(check(with(b" * ")), Precondition::NotModified);
        assert_eq!(check(with(b"\"abd\"")), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_makes_if_modified_since_ignored() {
        let fields = SelectionHeaders {
            if_none_match: Some(b"\"other\""),
            if_modified_since: Some(AT),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(fields), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since() {
        let with = |v: &'static [u8]| SelectionHeaders {
            if_modified_since: Some(v),
            ..SelectionHeaders::default()
        };
        assert_eq!(check(with(AT)), Precondition::NotModified);
        assert_eq!(
            check(with(b"Sun, 06 Nov 1994 08:49:38 GMT")),
            Precondition::NotModified
        );
        assert_eq!(check(with(BEFORE)), Precondition::Proceed);
        assert_eq!(
            check(with(b"yesterday")),
            Precondition::Proceed,
            "invalid date ignored"
        );
        // The obsolete formats are valid HTTP-dates too.
        assert_eq!(
            check(with(b"Sunday, 06-Nov-94 08:49:37 GMT")),
            Precondition::NotModified
        );
        assert_eq!(
            check(with(b"Sun Nov  6 08:49:37 1994")),
            Precondition::NotModified
        );
    }

    #[test]
    fn if_range_needs_a_strong_tag_or_the_exact_date() {
        assert!(if_range_allows(None, ETAG, MODIFIED));
        assert!(if_range_allows(Some(b"\"abc\""), ETAG, MODIFIED));
        assert!(!if_range_allows(Some(b"W/\"abc\""), ETAG, MODIFIED));
        assert!(!if_range_allows(Some(b"\"abd\""), ETAG, MODIFIED));
        assert!(if_range_allows(Some(AT), ETAG, MODIFIED));
        assert!(!if_range_allows(Some(BEFORE), ETAG, MODIFIED));
        assert!(!if_range_allows(
            Some(b"Sun, 06 Nov 1994 08:49:38 GMT"),
            ETAG,
            MODIFIED
        ));
        assert!(!if_range_allows(Some(b"not a date"), ETAG, MODIFIED));
    }
}
