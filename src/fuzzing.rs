//! Checks shared by the fuzz targets (`fuzz/`, nightly, `cargo fuzz`) and the
//! property tests (`tests/properties.rs`, stable, run by CI), so both harnesses
//! assert exactly the same properties. Not part of the public API.
//!
//! 1. [`check_session`]: any bytes, delivered whole or split at any
//!    boundaries, give byte-identical output (apart from `Date` lines) and
//!    the same connection fate; the session never panics, never consumes more
//!    than it was given, and every output starts with a status line; and
//!    (the graceful-close rule, as far as the core decides it) a session that
//!    ends the connection has consumed all it was given, so that nothing it
//!    left is ever answered later, and its last response says
//!    `Connection: close`, so the client expects the end and reads the whole
//!    response before it (engines then close gracefully: see
//!    [`crate::http::session`]; `tests/properties.rs` checks that end to end
//!    on every engine).
//! 2. [`check_normalize`]: target normalisation never panics, and a key it
//!    accepts is rooted, has no `.` or `..` segment, no empty segment, no NUL
//!    or backslash, and normalises to itself.

use crate::files::Snapshot;
use crate::http::target::normalize_target;
use crate::http::{Limits, Next, Output, Session};

/// The small site the fuzzers and property tests serve: a page, a JSON
/// document (clean URL `/book`), a directory index, and a body large enough
/// to be sent by reference rather than copied.
pub fn small_site() -> Snapshot {
    static BIG: [u8; 20 * 1024] = [b'z'; 20 * 1024];
    Snapshot::from_memory(
        &[
            ("/index.html", b"<h1>home</h1>"),
            ("/book.json", b"{\"title\":\"x\"}"),
            ("/docs/index.html", b"docs"),
            ("/big.bin", &BIG),
        ],
        784_111_777,
    )
}

/// What a connection produced: the bytes written, with `Date` lines blanked,
/// and whether the session ended the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub written: Vec<u8>,
    pub ended: bool,
}

/// Feeds `input` to a new session the way an engine does, in pieces whose
/// sizes come from `pieces` (cycled; a size of 0 counts as 1).
pub fn drive(snapshot: &Snapshot, limits: &Limits, input: &[u8], pieces: &[usize]) -> Transcript {
    let mut session = Session::new();
    let mut out = Output::new();
    let mut written = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut sizes = pieces.iter().copied().cycle();
    loop {
        let progress = session.on_input(&buffer, snapshot, limits, &mut out);
        assert!(progress.consumed <= buffer.len(), "consumed more than given");
        buffer.drain(..progress.consumed);
        written.extend(
            out.to_vec_blocking()
                .expect("an in-memory site has no file to read"),
        );
        out.clear();
        match progress.next {
            Next::Close | Next::Linger => {
                assert!(buffer.is_empty(), "the session ended with input left unconsumed");
                assert!(
                    last_response_announces_close(&written),
                    "the session ended the connection without saying so: {:?}",
                    String::from_utf8_lossy(&written)
                );
                return Transcript {
                    written: blank_dates(written),
                    ended: true,
                };
            }
            Next::Write => continue,
            Next::Read if fed == input.len() => {
                return Transcript {
                    written: blank_dates(written),
                    ended: false,
                };
            }
            Next::Read => {
                let size = sizes.next().unwrap_or(input.len()).max(1);
                let end = (fed + size).min(input.len());
                buffer.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// Whether the last response in `written` has a `Connection: close` field.
/// (No body of the small site contains a status line, so the last one found
/// starts the last response.)
fn last_response_announces_close(written: &[u8]) -> bool {
    let start = memchr::memmem::rfind(written, b"HTTP/1.1 ").unwrap_or(0);
    let response = &written[start..];
    let head_end = memchr::memmem::find(response, b"\r\n\r\n").map_or(response.len(), |end| end + 2);
    memchr::memmem::find(&response[..head_end], b"\r\nConnection: close\r\n").is_some()
}

/// Replaces the 29 characters of every `Date:` value with `#`.
fn blank_dates(mut bytes: Vec<u8>) -> Vec<u8> {
    const FIELD: &[u8] = b"\r\nDate: ";
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&bytes[from..], FIELD) {
        let start = from + i + FIELD.len();
        let end = (start + 29).min(bytes.len());
        bytes[start..end].fill(b'#');
        from = end;
    }
    bytes
}

/// Property 1 (see the module doc), for `input` split by `pieces`.
pub fn check_session(snapshot: &Snapshot, input: &[u8], pieces: &[usize]) {
    let limits = Limits::default();
    let whole = drive(snapshot, &limits, input, &[input.len()]);
    let split = drive(snapshot, &limits, input, pieces);
    assert!(
        whole == split,
        "split delivery differs:\nwhole: {:?}\nsplit: {:?}",
        String::from_utf8_lossy(&whole.written),
        String::from_utf8_lossy(&split.written)
    );
    if !whole.written.is_empty() {
        assert!(
            whole.written.starts_with(b"HTTP/1.1 "),
            "output does not start with a status line"
        );
    }
}

/// Fuzzer entry: the first byte picks the piece sizes, the rest is the input.
pub fn fuzz_session(data: &[u8]) {
    use std::sync::OnceLock;
    static SITE: OnceLock<Snapshot> = OnceLock::new();
    let site = SITE.get_or_init(small_site);
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let pieces = [usize::from(seed % 17) + 1, usize::from(seed / 17) + 1, 3];
    check_session(site, input, &pieces);
}

/// Property 2 (see the module doc).
pub fn check_normalize(target: &[u8]) {
    let mut key = Vec::new();
    if normalize_target(target, &mut key).is_err() {
        return;
    }
    assert_eq!(key.first(), Some(&b'/'), "key not rooted: {key:?}");
    let segments: Vec<&[u8]> = key[1..].split(|&b| b == b'/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(*segment != b".." && *segment != b".", "dot segment in {key:?}");
        assert!(!segment.is_empty() || last, "empty segment in {key:?}");
    }
    assert!(
        !key.contains(&0) && !key.contains(&b'\\'),
        "NUL or backslash in {key:?}"
    );
    // A key with nothing left to decode or cut is a fixed point.
    if !key.iter().any(|b| matches!(b, b'%' | b'?' | b'#')) {
        let mut again = Vec::new();
        normalize_target(&key, &mut again).expect("a key normalises");
        assert_eq!(again, key, "normalising a key changed it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_site_routes() {
        let site = small_site();
        let t = drive(
            &site,
            &Limits::default(),
            b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n",
            &[5],
        );
        assert!(t.written.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(t.written.windows(29).any(|w| w == [b'#'; 29]), "Date blanked");
        assert!(!t.ended);
    }

    #[test]
    fn known_inputs_hold_both_properties() {
        fuzz_session(
            b"\x07GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /docs HTTP/1.1\r\nHost: a\r\n\r\n\x00",
        );
        for target in [
            &b"/a/../b"[..],
            b"/%2e/x/",
            b"//",
            b"/a%2fb",
            b"http://h",
            b"/a/b/..",
        ] {
            check_normalize(target);
        }
    }
}
