//! Property tests (stable, run by `cargo test` in CI): the same checks the
//! `cargo fuzz` targets in `fuzz/` run (see `ringserve::fuzzing`), driven by
//! `proptest` instead of libFuzzer, plus a replay of the fuzz seed corpus.
//!
//! 1. Splitting any *valid* request stream at any byte boundaries gives
//!    byte-identical responses (apart from `Date`) and the same connection
//!    fate; so does any arbitrary or mutated byte stream.
//! 2. Target normalisation never panics and never yields a key with a `..`
//!    segment (nor `.`, empty segments, NUL or backslash).
//! 3. The graceful-close rule, end to end on every engine: whatever a client
//!    sends after the request that ends a connection (a body, more requests,
//!    junk), every response before the end arrives whole, followed by a clean
//!    end of file, never a reset that cuts it short.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use ringserve::engine::{EngineKind, ServerConfig};
use ringserve::files::Snapshot;
use ringserve::fuzzing::{check_normalize, check_session, fuzz_session, small_site};
use support::TestServer;

fn site() -> &'static Snapshot {
    use std::sync::OnceLock;
    static SITE: OnceLock<Snapshot> = OnceLock::new();
    SITE.get_or_init(small_site)
}

/// One valid request, rendered.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS"]);
    let target = prop::sample::select(vec![
        "/",
        "/book",
        "/book.json",
        "/docs/",
        "/docs",
        "/docs?x=1",
        "/big.bin",
        "/missing",
        "/a/../book",
        "/%62ook",
        "/./docs/./index.html",
        "http://example.com/book",
        "/index.html#frag",
    ]);
    let version = prop::sample::select(vec!["1.1", "1.1", "1.1", "1.0"]);
    let extra = prop::sample::subsequence(
        vec![
            "User-Agent: proptest/1",
            "Accept: */*",
            "If-None-Match: \"0000000000000000\"",
            "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
            "Referer: http://example.com/",
            "X-Empty:",
        ],
        0..4,
    );
    let body = prop::collection::vec(any::<u8>(), 0..40);
    let close = prop::bool::weighted(0.1);
    let lf_only = prop::bool::weighted(0.2);
    let leading_blank = prop::bool::weighted(0.1);
    (
        method,
        target,
        version,
        extra,
        body,
        close,
        lf_only,
        leading_blank,
    )
        .prop_map(
            |(method, target, version, extra, body, close, lf_only, leading_blank)| {
                let eol = if lf_only { "\n" } else { "\r\n" };
                let mut head = String::new();
                if leading_blank {
                    head.push_str(eol);
                }
                head.push_str(&format!(
                    "{method} {target} HTTP/{version}{eol}Host: example.com{eol}"
                ));
                if version == "1.0" && !close {
                    head.push_str(&format!("Connection: keep-alive{eol}"));
                }
                if close {
                    head.push_str(&format!("Connection: close{eol}"));
                }
                for field in extra {
                    head.push_str(field);
                    head.push_str(eol);
                }
                let with_body = !body.is_empty() && method != "HEAD";
                if with_body {
                    head.push_str(&format!("Content-Length: {}{eol}", body.len()));
                }
                head.push_str(eol);
                let mut raw = head.into_bytes();
                if with_body {
                    raw.extend_from_slice(&body);
                }
                raw
            },
        )
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(request(), 1..8).prop_map(|requests| requests.concat())
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..64, 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_valid_stream_split_anywhere_gives_the_same_responses(input in stream(), sizes in pieces()) {
        check_session(site(), &input, &sizes);
    }

    #[test]
    fn a_stream_split_byte_by_byte_gives_the_same_responses(input in stream()) {
        check_session(site(), &input, &[1]);
    }

    #[test]
    fn a_mutated_stream_split_anywhere_gives_the_same_responses(
        input in stream(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        sizes in pieces(),
    ) {
        let mut input = input;
        for (at, byte) in flips {
            let i = at.index(input.len());
            input[i] = byte;
        }
        check_session(site(), &input, &sizes);
    }

    #[test]
    fn arbitrary_bytes_split_anywhere_give_the_same_responses(
        input in prop::collection::vec(any::<u8>(), 0..512),
        sizes in pieces(),
    ) {
        check_session(site(), &input, &sizes);
    }

    #[test]
    fn normalisation_of_arbitrary_bytes(target in prop::collection::vec(any::<u8>(), 0..64)) {
        check_normalize(&target);
    }

    #[test]
    fn normalisation_of_hostile_paths(parts in prop::collection::vec(
        prop::sample::select(vec![
            "/", "/", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%00", "%5c", "\\",
            "%", "%%", "%c0%ae", "a", "b", "?", "#", "http://h", "%25",
        ]),
        0..16,
    )) {
        let target = format!("/{}", parts.concat());
        check_normalize(target.as_bytes());
    }
}

/// Files of the graceful-close property: `(path, length)`; the large one is
/// streamed from disk, the others are held in memory.
const CLOSE_FILES: [(&str, usize); 3] = [
    ("/small.txt", 1_000),
    ("/mem.bin", 2_000_000),
    ("/disk.bin", 12 * 1024 * 1024),
];

fn close_site() -> PathBuf {
    use std::sync::OnceLock;
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ringserve-close-property-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        for (path, len) in CLOSE_FILES {
            std::fs::write(root.join(&path[1..]), support::pattern_bytes(len)).unwrap();
        }
        root
    })
    .clone()
}

/// How the last request ends its connection.
#[derive(Debug, Clone, Copy)]
enum Ending {
    ConnectionClose,
    Http10,
    Refused,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn no_response_is_ever_cut_short_by_the_servers_own_close(
        keep_alive_before in 0usize..3,
        file in 0usize..CLOSE_FILES.len(),
        ending in prop::sample::select(vec![Ending::ConnectionClose, Ending::Http10, Ending::Refused]),
        body in 0usize..40_000,
        after in 0usize..40_000,
        pause_ms in 0u64..150,
    ) {
        let (path, len) = CLOSE_FILES[file];
        let mut raw = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..keep_alive_before {
            raw.extend_from_slice(b"GET /small.txt HTTP/1.1\r\nHost: a\r\n\r\n");
            expected.push((200, CLOSE_FILES[0].1));
        }
        match ending {
            Ending::ConnectionClose => {
                raw.extend_from_slice(
                    format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {body}\r\n\r\n")
                        .as_bytes(),
                );
                raw.extend(std::iter::repeat_n(b'b', body));
                expected.push((200, len));
            }
            Ending::Http10 => {
                raw.extend_from_slice(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
                expected.push((200, len));
            }
            Ending::Refused => {
                raw.extend_from_slice(b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n");
                expected.push((400, 130));
            }
        }
        raw.extend(std::iter::repeat_n(b'j', after));
        for engine in EngineKind::ALL {
            let mut config = ServerConfig::loopback(engine);
            config.timeouts.linger = Duration::from_secs(2);
            let server = TestServer::start(config, &close_site());
            let mut client = server.connect();
            client.send(&raw);
            std::thread::sleep(Duration::from_millis(pause_ms));
            for &(status, body_len) in &expected {
                let response = client.read_response(false);
                prop_assert_eq!((response.status, response.body.len()), (status, body_len), "{}", engine);
            }
            client.expect_closed();
        }
    }
}

/// Every seed in `fuzz/corpus/` (the starting corpus of the `cargo fuzz`
/// targets) passes the same checks on stable.
#[test]
fn the_fuzz_seed_corpus_passes() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seen = 0;
    for (target, check) in [
        ("session", fuzz_session as fn(&[u8])),
        ("normalize", check_normalize as fn(&[u8])),
    ] {
        for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            check(&bytes);
            seen += 1;
        }
    }
    assert!(seen >= 10, "only {seen} seeds found");
}
