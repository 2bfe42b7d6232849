//! Content negotiation: `Accept-Encoding` picks a file's representation
//! (RFC 9110 §12.5.3), and `Accept` decides whether a request wants HTML
//! (for the SPA fallback).
//!
//! Encoding selection, in order:
//! 1. no `Accept-Encoding`, or a file with no encoded variant: identity;
//! 2. each coding's weight is its own `q`, else the `*` entry's, else 0 —
//!    except identity, which is acceptable by default (§12.5.3) unless
//!    `identity;q=0`, or `*;q=0` with no `identity` entry, excludes it. An
//!    unlisted identity is acceptable but least preferred (weight 0.001), so
//!    `gzip;q=0.5` still gets gzip; an empty field value accepts identity
//!    only; `x-gzip` means `gzip` (§8.4.1.3);
//! 3. the acceptable representation with the highest weight wins, ties going
//!    to the smaller body (the snapshot keeps variants smallest first, and
//!    identity is the largest);
//! 4. nothing acceptable: identity anyway (we never answer 406: a client that
//!    refuses every coding still gets the bytes, unencoded).
//!
//! A `q` that is not a valid qvalue (`0`, `1`, `0.xyz`, `1.000`) makes its
//! element ignored.

use crate::files::{Encoding, Representation};

/// Weights are thousandths: `q=0.5` is 500.
type Weight = u16;
const FULL_WEIGHT: Weight = 1000;
/// Identity when the field neither lists it nor has `*`: acceptable, last choice.
const IMPLIED_IDENTITY_WEIGHT: Weight = 1;

/// The index in `representations` (identity first, then variants smallest
/// first) of the one to send.
pub fn select_representation(accept_encoding: Option<&[u8]>, representations: &[Representation]) -> usize {
    let Some(field) = accept_encoding else {
        return 0;
    };
    if representations.len() < 2 {
        return 0;
    }
    let weights = EncodingWeights::parse(field);
    let mut best: Option<(usize, Weight)> = None;
    // Variants first (smallest first), identity last: a tie keeps the earlier.
    let order = (1..representations.len()).chain(std::iter::once(0));
    for index in order {
        let weight = weights.weight(representations[index].encoding);
        if weight > 0 && best.is_none_or(|(_, w)| weight > w) {
            best = Some((index, weight));
        }
    }
    best.map_or(0, |(index, _)| index)
}

/// The weights an `Accept-Encoding` value gives each coding we can send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct EncodingWeights {
    gzip: Option<Weight>,
    brotli: Option<Weight>,
    identity: Option<Weight>,
    star: Option<Weight>,
}

impl EncodingWeights {
    fn parse(field: &[u8]) -> Self {
        let mut weights = EncodingWeights::default();
        let mut any = false;
        for element in field.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if element.is_empty() {
                continue;
            }
            any = true;
            let Some((coding, weight)) = parse_element(element) else {
                continue;
            };
            let slot = if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                &mut weights.gzip
            } else if coding.eq_ignore_ascii_case(b"br") {
                &mut weights.brotli
            } else if coding.eq_ignore_ascii_case(b"identity") {
                &mut weights.identity
            } else if coding == b"*" {
                &mut weights.star
            } else {
                continue;
            };
            // A repeated coding keeps its highest weight.
            *slot = Some(slot.map_or(weight, |w| w.max(weight)));
        }
        if !any {
            // `Accept-Encoding:` with an empty value: no coding but identity.
            weights.star = Some(0);
            weights.identity = Some(FULL_WEIGHT);
        }
        weights
    }

    fn weight(&self, encoding: Encoding) -> Weight {
        let explicit = match encoding {
            Encoding::Identity => self.identity,
            Encoding::Gzip => self.gzip,
            Encoding::Brotli => self.brotli,
        };
        match (explicit, self.star, encoding) {
            (Some(weight), _, _) => weight,
            (None, Some(star), _) => star,
            (None, None, Encoding::Identity) => IMPLIED_IDENTITY_WEIGHT,
            (None, None, _) => 0,
        }
    }
}

/// `coding *( OWS ";" OWS param )` → the coding and its weight (1 if no `q`).
fn parse_element(element: &[u8]) -> Option<(&[u8], Weight)> {
    let mut parts = element.split(|&b| b == b';').map(<[u8]>::trim_ascii);
    let coding = parts.next()?;
    let mut weight = FULL_WEIGHT;
    for param in parts {
        let eq = param.iter().position(|&b| b == b'=')?;
        let (name, value) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"q") {
            weight = parse_qvalue(value)?;
        }
    }
    Some((coding, weight))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths.
pub fn parse_qvalue(value: &[u8]) -> Option<Weight> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Weight = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + fraction.get(i).map_or(0, |d| Weight::from(d - b'0'));
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(FULL_WEIGHT),
        _ => None,
    }
}

/// Whether an `Accept` field asks for HTML: it lists `text/html` with a
/// weight above zero. `*/*` alone does not count: `fetch()` and image loads
/// send it, and a missing script should get a 404, not the app's HTML.
pub fn accepts_html(accept: Option<&[u8]>) -> bool {
    let Some(field) = accept else {
        return false;
    };
    field
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter_map(parse_element)
        .any(|(media_range, weight)| media_range.eq_ignore_ascii_case(b"text/html") && weight > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Body;
    use bytes::Bytes;

    fn representation(encoding: Encoding) -> Representation {
        Representation {
            encoding,
            body: Body::Memory(Bytes::new()),
            head: crate::files::head::render_head(
                "HTTP/1.1 200 OK",
                &crate::files::head::HeadFields {
                    content_type: "text/plain",
                    content_length: 0,
                    etag: "\"0\"",
                    modified_secs: 0,
                    content_encoding: None,
                    vary_accept_encoding: true,
                    policy_lines: "",
                },
            ),
        }
    }

    /// Identity, then brotli (smallest), then gzip: how the snapshot orders them.
    fn all() -> Vec<Representation> {
        vec![
            representation(Encoding::Identity),
            representation(Encoding::Brotli),
            representation(Encoding::Gzip),
        ]
    }

    fn pick(field: Option<&str>) -> Encoding {
        let reps = all();
        reps[select_representation(field.map(str::as_bytes), &reps)].encoding
    }

    #[test]
    fn no_field_means_identity() {
        assert_eq!(pick(None), Encoding::Identity);
    }

    #[test]
    fn browsers_get_the_smallest() {
        assert_eq!(pick(Some("gzip, deflate, br, zstd")), Encoding::Brotli);
        assert_eq!(pick(Some("gzip, deflate")), Encoding::Gzip);
        assert_eq!(pick(Some("x-gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("GZIP")), Encoding::Gzip);
        assert_eq!(pick(Some("deflate")), Encoding::Identity);
    }

    #[test]
    fn q_values_rank_and_zero_excludes() {
        assert_eq!(pick(Some("br;q=0.5, gzip;q=0.8")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q=0, gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("br ; q=0.001, gzip ;Q=0")), Encoding::Brotli);
        assert_eq!(pick(Some("br;q=0, gzip;q=0")), Encoding::Identity);
        assert_eq!(pick(Some("gzip;q=0.9, identity;q=1")), Encoding::Identity);
        assert_eq!(
            pick(Some("gzip;q=0.1")),
            Encoding::Gzip,
            "unlisted identity is the last choice"
        );
        assert_eq!(pick(Some("gzip;q=1.0, br;q=1.000")), Encoding::Brotli);
    }

    #[test]
    fn star_covers_what_is_not_listed() {
        assert_eq!(pick(Some("*")), Encoding::Brotli);
        assert_eq!(pick(Some("*;q=0.5, br;q=0")), Encoding::Gzip);
        assert_eq!(pick(Some("identity;q=0.5, *;q=0")), Encoding::Identity);
        // Everything excluded: identity all the same, never 406.
        assert_eq!(pick(Some("*;q=0")), Encoding::Identity);
        assert_eq!(pick(Some("identity;q=0")), Encoding::Identity);
        assert_eq!(pick(Some("identity;q=0, gzip")), Encoding::Gzip);
    }

    #[test]
    fn empty_field_means_identity_only() {
        assert_eq!(pick(Some("")), Encoding::Identity);
        assert_eq!(pick(Some(" , ")), Encoding::Identity);
    }

    #[test]
    fn invalid_q_ignores_the_element() {
        assert_eq!(pick(Some("br;q=2, gzip")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q=0.5000, gzip;q=0.1")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q=, gzip;q=0.1")), Encoding::Gzip);
        assert_eq!(pick(Some("br;q")), Encoding::Identity);
    }

    #[test]
    fn qvalue_grammar() {
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.125"), Some(125));
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1."), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"1.001"), None);
        assert_eq!(parse_qvalue(b".5"), None);
        assert_eq!(parse_qvalue(b"0.1234"), None);
        assert_eq!(parse_qvalue(b"-0"), None);
    }

    #[test]
    fn a_file_without_variants_is_always_identity() {
        let reps = vec![representation(Encoding::Identity)];
        assert_eq!(select_representation(Some(b"br, gzip"), &reps), 0);
    }

    #[test]
    fn accept_html() {
        let html = |v: &str| accepts_html(Some(v.as_bytes()));
        assert!(html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(html("TEXT/HTML"));
        assert!(!html("*/*"));
        assert!(!html("text/html;q=0"));
        assert!(!html("application/json"));
        assert!(!accepts_html(None));
    }
}
