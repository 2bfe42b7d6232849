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
            // timeout must exceed what the reader below takes to drain that.
            config.timeouts.send = Duration::from_millis(1000);
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
        std::thread::sleep(Duration::from_millis(2500));
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

        // Reads 256 KiB every 50 ms (5 MiB/s): the whole body takes three
        // times the send timeout, but progress never stops for that long.
        let mut slow = small_receive_buffer(server.addr());
        slow.write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut received = 0usize;
        loop {
            std::thread::sleep(Duration::from_millis(50));
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
            started.elapsed() > Duration::from_millis(2000),
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
