//! Robustness suite (issue 4): every hostile or malformed input as raw bytes,
//! against every engine in `EngineKind::ALL` (an engine added there is tested
//! here without any change), checking the exact status and whether the
//! connection closes; then the behaviours that need time or many sockets:
//! pipelining, half-close, slowloris, a client that stops reading, a slow
//! reader, the connection cap.
//!
//! Servers run in this process on `127.0.0.1:0`, with short timeouts so the
//! whole file runs in seconds. Process-level rules (signals, descriptor
//! limits, leaks, the access log) are in `tests/process.rs`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, ServerConfig};
use support::{IO_TIMEOUT, TestServer, for_each_engine, panic_message};

const BIG_BYTES: usize = 16 * 1024 * 1024;
const MEDIUM_BYTES: usize = 8 * 1024 * 1024;
/// Held in memory (under the 4 MiB default of `--max-cached-file`).
const IN_MEMORY_BYTES: usize = 3 * 1000 * 1000;

/// A generated site (made once per test process): small files, a dotfile, a
/// symlink leading outside the root, and two large files for the send-side
/// tests.
fn site() -> PathBuf {
    use std::sync::OnceLock;
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("ringserve-robustness-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("book.json"), "{\"title\":\"x\"}").unwrap();
        std::fs::write(root.join("docs/index.html"), "docs").unwrap();
        std::fs::write(root.join(".secret"), "hidden").unwrap();
        std::fs::write(base.join("outside.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("leak.txt")).unwrap();
        std::fs::write(root.join("big.bin"), vec![b'b'; BIG_BYTES]).unwrap();
        std::fs::write(root.join("medium.bin"), vec![b'm'; MEDIUM_BYTES]).unwrap();
        std::fs::write(root.join("mem3.bin"), vec![b'3'; IN_MEMORY_BYTES]).unwrap();
        root
    })
    .clone()
}

/// One worker serving [`site`], with a short linger and grace, adjusted by
/// `configure`.
fn start(engine: EngineKind, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let mut config = ServerConfig::loopback(engine);
    config.timeouts.linger = Duration::from_millis(300);
    config.shutdown_grace = Duration::from_millis(200);
    configure(&mut config);
    TestServer::start(config, &site())
}

const FOLLOW_UP: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

// ---------------------------------------------------------------------------
// The table: one request, one status, closed or kept alive.

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    closes: bool,
}

fn case(name: &'static str, raw: impl Into<Vec<u8>>, status: u16, closes: bool) -> Case {
    Case {
        name,
        raw: raw.into(),
        status,
        closes,
    }
}

fn get_with(fields: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n").into_bytes()
}

fn cases() -> Vec<Case> {
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(8 * 1024));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-Filler: 0123456789abcdef\r\n".repeat(700)
    );
    let many_fields = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..100).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let at_field_limit = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..99).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    vec![
        // Accepted forms.
        case("plain GET", "GET /book HTTP/1.1\r\nHost: a\r\n\r\n", 200, false),
        case(
            "leading empty lines",
            "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            200,
            false,
        ),
        case("bare LF line endings", "GET / HTTP/1.1\nHost: a\n\n", 200, false),
        case(
            "absolute form",
            "GET http://example.com/book HTTP/1.1\r\nHost: a\r\n\r\n",
            200,
            false,
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            200,
            false,
        ),
        case("HTTP/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 200, true),
        case(
            "Connection: close",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
            true,
        ),
        case("99 fields + Host", at_field_limit, 200, false),
        // Request line.
        case("two spaces", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, true),
        case("tab delimiter", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, true),
        case("missing version", "GET /\r\nHost: a\r\n\r\n", 400, true),
        case(
            "lowercase version",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "control byte in target",
            "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "space in target",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "bad percent-encoding",
            "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "truncated percent-encoding",
            "GET /a%2 HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "asterisk form with GET",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, true),
        case("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, true),
        case("unknown method", "BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501, true),
        case("known method", "DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", 405, false),
        case(
            "POST with a body",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            405,
            false,
        ),
        // Line endings and fields.
        case(
            "bare CR before the request",
            "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "bare CR in the request line",
            "GET / HTTP/1.1\rHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "bare CR in a value",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            400,
            true,
        ),
        case(
            "space before colon",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            400,
            true,
        ),
        case(
            "whitespace before the first field",
            "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            400,
            true,
        ),
        case(
            "empty field name",
            "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
            400,
            true,
        ),
        case(
            "non-token field name",
            "GET / HTTP/1.1\r\nHost: a\r\nX(Y): b\r\n\r\n",
            400,
            true,
        ),
        case(
            "NUL in a value",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            400,
            true,
        ),
        case("missing Host", "GET / HTTP/1.1\r\n\r\n", 400, true),
        case(
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case("invalid Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, true),
        case(
            "unclosed IPv6 Host",
            "GET / HTTP/1.1\r\nHost: [abcd::1\r\n\r\n",
            400,
            true,
        ),
        case(
            "Host port too large",
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            400,
            true,
        ),
        case(
            "Host with two ports",
            "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
            400,
            true,
        ),
        case(
            "Host without a host",
            "GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
            400,
            true,
        ),
        case(
            "Host with empty labels",
            "GET / HTTP/1.1\r\nHost: ..x\r\n\r\n",
            400,
            true,
        ),
        case(
            "Host IPv6 with port",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            200,
            false,
        ),
        case(
            "Host name with port",
            "GET / HTTP/1.1\r\nHost: example.com:80\r\n\r\n",
            200,
            false,
        ),
        // Bodies and smuggling.
        case(
            "CL and TE",
            get_with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            400,
            true,
        ),
        case(
            "TE chunked",
            get_with("Transfer-Encoding: chunked\r\n"),
            501,
            true,
        ),
        case(
            "TE not ending in chunked",
            get_with("Transfer-Encoding: chunked, gzip\r\n"),
            400,
            true,
        ),
        case("TE gzip", get_with("Transfer-Encoding: gzip\r\n"), 400, true),
        case(
            "TE on HTTP/1.0",
            "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            true,
        ),
        case(
            "differing CLs",
            get_with("Content-Length: 1\r\nContent-Length: 2\r\n"),
            400,
            true,
        ),
        case("CL +5", get_with("Content-Length: +5\r\n"), 400, true),
        case("CL 0x5", get_with("Content-Length: 0x5\r\n"), 400, true),
        case("CL empty", get_with("Content-Length: \r\n"), 400, true),
        case(
            "CL overflow",
            get_with("Content-Length: 99999999999999999999999\r\n"),
            400,
            true,
        ),
        case(
            "body over the limit",
            get_with("Content-Length: 10000000\r\n"),
            413,
            true,
        ),
        // Limits.
        case("request line over 8 KiB", long_target, 414, true),
        case("head over 16 KiB", big_head, 431, true),
        case("101 fields", many_fields, 431, true),
        // Path safety.
        case(
            "dot-dot",
            "GET /../index.html HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "encoded dot-dot",
            "GET /%2e%2e/index.html HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "climbing dot-dot",
            "GET /docs/../../x HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "dot-dot inside",
            "GET /docs/../book HTTP/1.1\r\nHost: a\r\n\r\n",
            200,
            false,
        ),
        case(
            "encoded slash",
            "GET /docs%2findex.html HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "encoded NUL",
            "GET /index.html%00 HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "backslash",
            "GET /docs\\..\\book HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "encoded backslash",
            "GET /docs%5c..%5cbook HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            true,
        ),
        case(
            "overlong UTF-8 dots",
            "GET /%c0%ae%c0%ae/index.html HTTP/1.1\r\nHost: a\r\n\r\n",
            404,
            false,
        ),
        case(
            "dotfile hidden",
            "GET /.secret HTTP/1.1\r\nHost: a\r\n\r\n",
            404,
            false,
        ),
        case(
            "directory redirect to another host",
            "GET //evil.example/../docs HTTP/1.1\r\nHost: a\r\n\r\n",
            301,
            false,
        ),
        case(
            "encoded directory redirect to another host",
            "GET //evil.example/%2e%2e/docs HTTP/1.1\r\nHost: a\r\n\r\n",
            301,
            false,
        ),
        case(
            "symlink outside the root",
            "GET /leak.txt HTTP/1.1\r\nHost: a\r\n\r\n",
            404,
            false,
        ),
    ]
}

#[test]
fn every_case_gets_its_status_and_connection_fate() {
    let cases = cases();
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        let mut failures = Vec::new();
        for case in &cases {
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut client = server.connect();
                client.send(&case.raw);
                let response = client.read_response(false);
                assert_eq!(response.status, case.status, "status");
                if response.status == 405 {
                    assert_eq!(response.header("Allow"), Some("GET, HEAD"));
                }
                if response.status == 301 {
                    assert_same_site_location(response.expect_header("Location"));
                }
                if case.closes {
                    if case.status >= 400 {
                        assert_eq!(response.header("Connection"), Some("close"));
                    }
                    client.expect_closed();
                } else {
                    // Kept alive: the same connection answers the next request.
                    assert_eq!(client.request(FOLLOW_UP).status, 200, "follow-up");
                }
            }));
            if let Err(payload) = outcome {
                failures.push(format!("{}: {}", case.name, panic_message(payload.as_ref())));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}

#[test]
fn one_hundred_pipelined_requests_in_one_write() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        let mut stream = server.connect();
        let mut burst = Vec::new();
        for i in 0..100 {
            let path = ["/book", "/nope", "/", "/docs/"][i % 4];
            burst.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        }
        stream.send(&burst);
        let statuses: Vec<u16> = (0..100).map(|_| stream.read_response(false).status).collect();
        let expected: Vec<u16> = (0..100).map(|i| [200, 404, 200, 200][i % 4]).collect();
        assert_eq!(statuses, expected);
        stream.send(FOLLOW_UP);
        assert_eq!(stream.read_response(false).status, 200);
    });
}

#[test]
fn valid_garbage_valid_gives_200_400_and_close() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        let mut stream = server.connect();
        stream.send(b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n\x16\x03\x01garbage\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(stream.read_response(false).status, 200);
        assert_eq!(stream.read_response(false).status, 400);
        stream.expect_closed();
    });
}

#[test]
fn a_get_body_is_consumed_and_the_pipelined_request_after_it_answered() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        let mut stream = server.connect();
        // The body looks like a request: it must not be answered as one.
        let body = "GET /nope HTTP/1.1\r\n\r\n";
        let raw = format!(
            "GET /book HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            body.len()
        );
        stream.send(raw.as_bytes());
        assert_eq!(stream.read_response(false).status, 200);
        let second = stream.read_response(false);
        assert_eq!((second.status, second.body.len()), (200, "<h1>home</h1>".len()));
    });
}

#[test]
fn a_smuggled_request_behind_a_refused_one_is_never_answered() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut stream = server.connect();
            stream.send(raw);
            let first = stream.read_response(false);
            assert!(first.status == 400 || first.status == 501, "{}", first.status);
            stream.expect_closed();
        }
    });
}

#[test]
fn a_half_closed_client_still_receives_the_full_response() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        let mut stream = server.connect();
        stream.send(b"GET /medium.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\n\r\n");
        stream.shutdown_write();
        let big = stream.read_response(false);
        assert_eq!((big.status, big.body.len()), (200, MEDIUM_BYTES));
        assert_eq!(stream.read_response(false).status, 200);
        stream.expect_closed();
    });
}

/// A `Location` a browser resolves on the same site: a path starting with
/// exactly one `/` (not `//host` or `/\\host`), with no dot segments.
fn assert_same_site_location(location: &str) {
    assert!(
        location.starts_with('/') && !location.starts_with("//") && !location.starts_with("/\\"),
        "Location {location:?} can lead to another host"
    );
    let path = location.split(['?', '#']).next().unwrap_or_default();
    assert!(
        !path.split('/').any(|segment| {
            let lower = segment.to_ascii_lowercase();
            lower == ".." || lower == "." || lower.contains("%2e")
        }),
        "Location {location:?} keeps dot segments"
    );
}

#[test]
fn a_directory_redirect_is_built_from_the_normalised_path() {
    for_each_engine(|engine| {
        let server = start(engine, |_| {});
        for (target, location) in [
            ("//evil.example/../docs", "/docs/"),
            ("//evil.example/%2e%2e/docs", "/docs/"),
            ("//evil.example/%2E%2E/docs?next=1", "/docs/?next=1"),
            ("/./docs", "/docs/"),
            ("//docs", "/docs/"),
            ("/docs/x/..", ""),
            ("http://evil.example/docs", "/docs/"),
            ("http://evil.example//docs", "/docs/"),
        ] {
            let mut client = server.connect();
            let response = client.request(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            match location {
                "" => assert_ne!(response.status, 301, "{target}"),
                _ => {
                    assert_eq!(response.status, 301, "{target}");
                    assert_eq!(response.header("Location"), Some(location), "{target}");
                    assert_same_site_location(location);
                }
            }
        }
    });
}

/// Reads everything until the server closes: the responses to `paths` in
/// order, each complete, then a clean end of file (not a reset).
fn read_all_then_end(client: &mut support::RawClient, expected: &[(u16, usize)]) {
    for &(status, body_len) in expected {
        let response = client.read_response(false);
        assert_eq!((response.status, response.body.len()), (status, body_len));
    }
    client.expect_closed();
}

#[test]
fn a_close_after_a_response_never_cuts_it_short() {
    let junk = vec![b'x'; 8 * 1024];
    let mut unread_body = format!(
        "GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        60_000
    )
    .into_bytes();
    unread_body.extend(std::iter::repeat_n(b'b', 60_000));
    let with_junk = |head: &str| {
        let mut raw = head.as_bytes().to_vec();
        raw.extend_from_slice(&junk);
        raw
    };
    // (what, bytes sent, the (status, body length) of each response)
    type CloseCase = (&'static str, Vec<u8>, Vec<(u16, usize)>);
    let cases: Vec<CloseCase> = vec![
        (
            "Connection: close with an unread body, file on disk",
            unread_body,
            vec![(200, BIG_BYTES)],
        ),
        (
            "HTTP/1.0 with input after the request, file on disk",
            with_junk("GET /big.bin HTTP/1.0\r\n\r\n"),
            vec![(200, BIG_BYTES)],
        ),
        (
            "HTTP/1.0 with input after the request, file in memory",
            with_junk("GET /mem3.bin HTTP/1.0\r\n\r\n"),
            vec![(200, IN_MEMORY_BYTES)],
        ),
        (
            "keep-alive pipeline ending in HTTP/1.0, then more input",
            with_junk("GET /book HTTP/1.1\r\nHost: a\r\n\r\nGET /mem3.bin HTTP/1.0\r\n\r\n"),
            vec![(200, "{\"title\":\"x\"}".len()), (200, IN_MEMORY_BYTES)],
        ),
        (
            "a refused request with input after it",
            with_junk("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n"),
            vec![(400, 130)],
        ),
    ];
    for_each_engine(|engine| {
        let server = start(engine, |config| config.timeouts.linger = Duration::from_secs(2));
        for (name, raw, expected) in &cases {
            for round in 0..3 {
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    let mut client = server.connect();
                    client.send(raw);
                    // Let the server finish sending (into the kernel's
                    // buffers) and decide to close while most of the
                    // response is still unread.
                    std::thread::sleep(Duration::from_millis(200));
                    read_all_then_end(&mut client, expected);
                }));
                if let Err(payload) = outcome {
                    panic!(
                        "{engine}: {name} (round {round}): {}",
                        panic_message(payload.as_ref())
                    );
                }
            }
        }
    });
}

#[test]
fn garbage_is_refused_at_once_not_at_the_head_deadline() {
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let client_hello = [
        0x16u8, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03, 0x7a, 0x21, 0x5c,
    ];
    for_each_engine(|engine| {
        // A long head deadline: answering within it proves the early refusal.
        let server = start(engine, |config| config.timeouts.head = Duration::from_secs(30));
        for (name, raw) in [
            ("every byte value", &all_bytes[..]),
            ("control bytes", &b"\x00\x01\x02\r\n"[..]),
            ("a TLS ClientHello", &client_hello[..]),
            ("a space before the method", &b" GET / HTTP/1.1\r\n"[..]),
            ("a bad field name", &b"GET / HTTP/1.1\r\nHo st: a\r\n"[..]),
        ] {
            let mut client = server.connect();
            client
                .stream()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let started = Instant::now();
            client.send(raw);
            let response = client.read_response(false);
            assert_eq!(response.status, 400, "{engine}: {name}");
            assert!(started.elapsed() < Duration::from_secs(5), "{engine}: {name}");
            client.expect_closed();
        }
    });
}

#[test]
fn the_send_timeout_applies_to_a_pipelined_backlog_the_client_never_reads() {
    const REQUESTS: usize = 2000;
    for_each_engine(|engine| {
        let server = start(engine, |config| {
            config.timeouts.send = Duration::from_millis(1000);
            config.timeouts.idle = Duration::from_secs(20);
        });
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.connect(&server.addr().into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let burst: Vec<u8> = std::iter::repeat_n(&b"GET /docs/ HTTP/1.1\r\nHost: a\r\n\r\n"[..], REQUESTS)
            .flatten()
            .copied()
            .collect();
        stream.write_all(&burst).unwrap();
        let one_response = {
            let mut probe = server.connect();
            let response = probe.request(b"GET /docs/ HTTP/1.1\r\nHost: a\r\n\r\n");
            let head = response
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
            response.status_line.len() + 2 + head + 2 + response.body.len()
        };
        // Well past the send timeout, far before the idle timeout.
        std::thread::sleep(Duration::from_millis(4000));
        let started = Instant::now();
        let mut received = 0usize;
        let mut chunk = vec![0u8; 64 * 1024];
        let ended = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break "end of stream",
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!("{engine}: the server kept the connection: {e} after {received} bytes"),
            }
        };
        assert!(
            received < REQUESTS * one_response,
            "{engine}: all {received} bytes arrived ({ended}): the backlog outlived the send timeout"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{engine}: {ended} only after {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_head_larger_than_half_the_carry_limit_completes_after_back_pressure() {
    for_each_engine(|engine| {
        let server = start(engine, |config| {
            config.limits.max_head_bytes = 128 * 1024;
            config.timeouts.head = Duration::from_secs(30);
        });
        let mut client = server.connect();
        // A large response keeps output pending while a 70 KB head arrives
        // behind it: reads pause (back-pressure) and must resume.
        let mut raw =
            b"GET /medium.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /book HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        raw.extend(std::iter::repeat_n(b'p', 70_000));
        raw.extend_from_slice(b"\r\n");
        client.send(&raw);
        std::thread::sleep(Duration::from_millis(300));
        let first = client.read_response(false);
        assert_eq!((first.status, first.body.len()), (200, MEDIUM_BYTES), "{engine}");
        std::thread::sleep(Duration::from_millis(300));
        client.send(b"\r\n");
        client
            .stream()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let second = client.read_response(false);
        assert_eq!(second.status, 200, "{engine}: the head was never completed");
    });
}

// ---------------------------------------------------------------------------
// Timeouts

#[test]
fn head_and_idle_timeouts() {
    for_each_engine(|engine| {
        let server = start(engine, |config| {
            config.timeouts.head = Duration::from_millis(400);
            config.timeouts.idle = Duration::from_millis(700);
        });
        // A fresh connection that says nothing: closed silently.
        let mut silent = server.connect();
        let started = Instant::now();
        silent.expect_closed();
        assert!(started.elapsed() >= Duration::from_millis(350));

        // Slowloris: one header line every 100 ms keeps bytes coming, but the
        // head deadline is total: 408 at about 400 ms.
        let mut slow = server.connect();
        slow.send(b"GET / HTTP/1.1\r\n");
        let started = Instant::now();
        let reader = {
            let mut slow = slow.stream().try_clone().unwrap();
            std::thread::spawn(move || {
                for i in 0..30 {
                    std::thread::sleep(Duration::from_millis(100));
                    if slow.write_all(format!("X-{i}: v\r\n").as_bytes()).is_err() {
                        break;
                    }
                }
            })
        };
        let response = slow.read_response(false);
        assert_eq!(response.status, 408);
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "{:?}",
            started.elapsed()
        );
        slow.expect_closed();
        reader.join().unwrap();

        // Keep-alive idle: closed silently after the idle timeout, not the
        // head timeout.
        let mut idle = server.connect();
        idle.send(FOLLOW_UP);
        assert_eq!(idle.read_response(false).status, 200);
        let started = Instant::now();
        idle.expect_closed();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(600),
            "closed after {waited:?}, before the idle timeout"
        );
    });
}

#[test]
fn five_hundred_slow_clients_do_not_starve_normal_requests() {
    const SLOW_CLIENTS: usize = 500;
    for_each_engine(|engine| {
        let server = start(engine, |config| {
            config.timeouts.head = Duration::from_millis(2000);
        });
        let addr = server.addr();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let slow = std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..SLOW_CLIENTS {
                    tasks.push(tokio::spawn(slow_client(addr)));
                }
                let mut got_408 = 0;
                for task in tasks {
                    if task.await.unwrap() == Some(408) {
                        got_408 += 1;
                    }
                }
                got_408
            })
        });
        // While they trickle, normal requests keep completing.
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let mut served = 0;
        while started.elapsed() < Duration::from_millis(1500) {
            let mut stream = server.connect();
            stream.send(b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(stream.read_response(false).status, 200);
            served += 1;
        }
        assert!(served >= 10, "only {served} normal requests completed");
        let got_408 = slow.join().unwrap();
        assert_eq!(got_408, SLOW_CLIENTS, "every slow client is cut off with 408");
    });
}

/// Sends one header line a second, forever; returns the status it gets.
async fn slow_client(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        let _ = writer.write_all(b"GET / HTTP/1.1\r\n").await;
        for i in 0.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer
                .write_all(format!("X-{i}: v\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let answer = async {
        let mut buf = vec![0u8; 1024];
        let n = reader.read(&mut buf).await.ok()?;
        std::str::from_utf8(buf.get(9..12.min(n))?).ok()?.parse().ok()
    };
    tokio::select! {
        status = answer => status,
        () = trickle => None,
        () = tokio::time::sleep(Duration::from_secs(8)) => None,
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_a_slow_reader_is_not() {
    for_each_engine(|engine| {
        let server = start(engine, |config| {
            // Progress is seen when the kernel reports the socket writable
            // again (half its send buffer free, up to 2 MiB here), so the
            // timeout must exceed what the reader below takes to drain that;
            // it is also the sockets' TCP_USER_TIMEOUT, so it must exceed the
            // reader's pauses on a loaded machine too.
            config.timeouts.send = Duration::from_millis(3000);
        });
        let small_receive_buffer = |addr: SocketAddr| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(64 * 1024).unwrap();
            socket.connect(&addr.into()).unwrap();
            let stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream
        };

        // Stops reading: after the send timeout the server gives up, so far
        // fewer than all bytes can ever arrive.
        let mut stalled = small_receive_buffer(server.addr());
        stalled
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(7000));
        let mut received = 0usize;
        let mut chunk = vec![0u8; 256 * 1024];
        let ended = loop {
            match stalled.read(&mut chunk) {
                Ok(0) => break "end of stream",
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!("the server kept the stalled connection: {e}"),
            }
        };
        assert!(received < BIG_BYTES / 2, "{received} bytes arrived ({ended})");

        // Reads 256 KiB every 100 ms (2.5 MiB/s): the whole body takes twice
        // the send timeout, but progress never stops for that long.
        let mut slow = small_receive_buffer(server.addr());
        slow.write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut received = 0usize;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut budget = 256 * 1024;
            while budget > 0 {
                let n = slow
                    .read(&mut chunk[..budget])
                    .expect("slow reader is not cut off");
                if n == 0 {
                    break;
                }
                received += n;
                budget -= n;
            }
            if budget > 0 {
                break;
            }
        }
        let head_bytes = received - BIG_BYTES;
        assert!(head_bytes < 1024, "received {received}");
        assert!(
            started.elapsed() > Duration::from_millis(3000),
            "the test must outlast the send timeout"
        );
    });
}

// ---------------------------------------------------------------------------
// Connection cap

#[test]
fn the_connection_cap_holds_new_clients_until_one_leaves() {
    for_each_engine(|engine| {
        let server = start(engine, |config| config.max_connections = 2);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = server.connect();
            stream.send(FOLLOW_UP);
            assert_eq!(stream.read_response(false).status, 200);
            held.push(stream);
        }
        // The third connects (the kernel's backlog) but is not served yet.
        let mut third = server.connect();
        third.send(FOLLOW_UP);
        third.expect_silent_and_open(Duration::from_millis(400));
        drop(held.pop());
        assert_eq!(third.read_response(false).status, 200);
    });
}
