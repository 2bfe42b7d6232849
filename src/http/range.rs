//! `Range: bytes=…` (RFC 9110 §14): which part of a representation to send.
//!
//! [`evaluate`] turns a `Range` value and the representation's length into a
//! [`RangeOutcome`], in these steps:
//! 1. a unit other than `bytes`, or a syntax error anywhere, makes the whole
//!    field ignored ([`RangeOutcome::Full`], a plain 200), as §14.2 allows;
//! 2. more than [`MAX_RANGES`] range-specs are ignored the same way, before
//!    any of them is looked at: a request cannot make the server send more
//!    than the representation once plus bounded part headers;
//! 3. each spec (`a-b`, `a-`, `-n`) is resolved against the length, clamped to
//!    it, and unsatisfiable ones (starting at or past the end, `-0`) dropped;
//! 4. none left: [`RangeOutcome::Unsatisfiable`] (416 with `bytes */len`);
//! 5. the rest are sorted and overlapping or adjacent ones coalesced (so
//!    `0-99,50-150,151-200` is one part, `0-200`): one part is a single
//!    206, several are `multipart/byteranges`.
//!
//! A representation of length zero has no byte to send: int-ranges are
//! unsatisfiable (416), and a suffix range (satisfiable by §14.1.1, but with
//! no way to write its `Content-Range`) gets the whole, empty, 200.

/// The most range-specs one `Range` field may list before it is ignored.
pub const MAX_RANGES: usize = 16;

/// Inclusive byte positions, as in `Content-Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Always false: a range holds at least its first byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Ignore the `Range` field: send the whole representation (200).
    Full,
    /// One part (206 with `Content-Range`).
    Single(ByteRange),
    /// Two or more disjoint, non-adjacent parts in ascending order (206
    /// `multipart/byteranges`).
    Multiple(Vec<ByteRange>),
    /// No range-spec overlaps the representation (416).
    Unsatisfiable,
}

/// Resolves a `Range` field value against a representation of `len` bytes.
pub fn evaluate(value: &[u8], len: u64) -> RangeOutcome {
    let Some(set) = strip_bytes_unit(value) else {
        return RangeOutcome::Full;
    };
    let specs = set
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|spec| !spec.is_empty());
    if specs.clone().count() > MAX_RANGES {
        return RangeOutcome::Full;
    }
    let mut ranges: Vec<ByteRange> = Vec::new();
    let mut any_spec = false;
    let mut empty_whole = false;
    for spec in specs {
        any_spec = true;
        match parse_spec(spec) {
            None => return RangeOutcome::Full,
            Some(Spec::From { first, last }) => {
                if first < len {
                    let last = last.map_or(len - 1, |last| last.min(len - 1));
                    ranges.push(ByteRange { first, last });
                }
            }
            Some(Spec::Suffix(0)) => {}
            Some(Spec::Suffix(_)) if len == 0 => empty_whole = true,
            Some(Spec::Suffix(n)) => ranges.push(ByteRange {
                first: len.saturating_sub(n),
                last: len - 1,
            }),
        }
    }
    if !any_spec {
        return RangeOutcome::Full;
    }
    if ranges.is_empty() {
        return if empty_whole {
            RangeOutcome::Full
        } else {
            RangeOutcome::Unsatisfiable
        };
    }
    let ranges = coalesce(ranges);
    if let [only] = ranges[..] {
        RangeOutcome::Single(only)
    } else {
        RangeOutcome::Multiple(ranges)
    }
}

enum Spec {
    /// `first-last` or `first-` (last = None).
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// `bytes=` (the unit is case-insensitive, §14.1) → the range set after it.
fn strip_bytes_unit(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (unit, rest) = value.split_at(value.iter().position(|&b| b == b'=')?);
    unit.trim_ascii()
        .eq_ignore_ascii_case(b"bytes")
        .then_some(&rest[1..])
}

fn parse_spec(spec: &[u8]) -> Option<Spec> {
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(parse_digits(last)?));
    }
    let first = parse_digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(parse_digits(last)?)
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// 1*DIGIT, no sign, no whitespace, no overflow.
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Sorts and merges overlapping or adjacent ranges.
fn coalesce(mut ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    ranges.sort_unstable_by_key(|r| r.first);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(previous) if range.first <= previous.last.saturating_add(1) => {
                previous.last = previous.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64) -> ByteRange {
        ByteRange { first, last }
    }

    fn eval(value: &str, len: u64) -> RangeOutcome {
        evaluate(value.as_bytes(), len)
    }

    #[test]
    fn the_three_forms_of_a_single_range() {
        assert_eq!(eval("bytes=0-99", 1000), RangeOutcome::Single(r(0, 99)));
        assert_eq!(eval("bytes=900-", 1000), RangeOutcome::Single(r(900, 999)));
        assert_eq!(eval("bytes=-100", 1000), RangeOutcome::Single(r(900, 999)));
        assert_eq!(eval("bytes=5-5", 1000), RangeOutcome::Single(r(5, 5)));
        assert_eq!(r(5, 5).len(), 1);
    }

    #[test]
    fn ranges_are_clamped_to_the_length() {
        assert_eq!(eval("bytes=900-5000", 1000), RangeOutcome::Single(r(900, 999)));
        assert_eq!(eval("bytes=-5000", 1000), RangeOutcome::Single(r(0, 999)));
        assert_eq!(eval("bytes=999-", 1000), RangeOutcome::Single(r(999, 999)));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(eval("bytes=1000-", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=1000-2000", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=-0", 1000), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=2000-3000, 5000-", 1000), RangeOutcome::Unsatisfiable);
        // One satisfiable spec is enough.
        assert_eq!(eval("bytes=2000-3000, 0-0", 1000), RangeOutcome::Single(r(0, 0)));
    }

    #[test]
    fn unknown_units_and_bad_syntax_are_ignored() {
        for value in [
            "items=0-5",
            "bytes 0-5",
            "bytes=",
            "bytes=,",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0-1-2",
            "bytes=--1",
            "bytes=0x10-",
            "bytes=1 -2",
            "bytes=99999999999999999999999-",
            "bytes=0-5,oops",
        ] {
            assert_eq!(eval(value, 1000), RangeOutcome::Full, "{value:?}");
        }
    }

    #[test]
    fn unit_is_case_insensitive_and_whitespace_around_specs_is_allowed() {
        assert_eq!(eval("Bytes=0-1", 10), RangeOutcome::Single(r(0, 1)));
        assert_eq!(
            eval("bytes= 0-1 , 5-6 ,", 10),
            RangeOutcome::Multiple(vec![r(0, 1), r(5, 6)])
        );
    }

    #[test]
    fn several_ranges_are_sorted_and_coalesced() {
        assert_eq!(
            eval("bytes=500-600,0-99", 1000),
            RangeOutcome::Multiple(vec![r(0, 99), r(500, 600)])
        );
        // Overlapping and adjacent ranges merge.
        assert_eq!(
            eval("bytes=0-99,50-150,151-200", 1000),
            RangeOutcome::Single(r(0, 200))
        );
        assert_eq!(eval("bytes=0-0,0-0,0-0,0-0", 1000), RangeOutcome::Single(r(0, 0)));
        // A suffix that overlaps an int-range.
        assert_eq!(eval("bytes=0-10,-995", 1000), RangeOutcome::Single(r(0, 999)));
        assert_eq!(
            eval("bytes=0-1,3-4,-1", 10),
            RangeOutcome::Multiple(vec![r(0, 1), r(3, 4), r(9, 9)])
        );
    }

    #[test]
    fn too_many_ranges_are_ignored_not_amplified() {
        let many: Vec<String> = (0..=MAX_RANGES).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
        assert_eq!(
            eval(&format!("bytes={}", many.join(",")), 1000),
            RangeOutcome::Full
        );
        let at_cap = &many[..MAX_RANGES];
        assert!(matches!(
            eval(&format!("bytes={}", at_cap.join(",")), 1000),
            RangeOutcome::Multiple(parts) if parts.len() == MAX_RANGES
        ));
        let overlapping = vec!["0-"; MAX_RANGES + 1].join(",");
        assert_eq!(eval(&format!("bytes={overlapping}"), 1000), RangeOutcome::Full);
    }

    #[test]
    fn zero_length_representations() {
        assert_eq!(eval("bytes=0-", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=0-0", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(eval("bytes=-5", 0), RangeOutcome::Full);
        assert_eq!(eval("bytes=-0", 0), RangeOutcome::Unsatisfiable);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let max = u64::MAX.to_string();
        assert_eq!(eval(&format!("bytes=0-{max}"), 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(eval(&format!("bytes=-{max}"), 10), RangeOutcome::Single(r(0, 9)));
        assert_eq!(eval(&format!("bytes={max}-"), 10), RangeOutcome::Unsatisfiable);
    }
}
