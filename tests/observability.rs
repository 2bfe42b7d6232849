//! Health checks, metrics and the access log, end to end, on every engine:
//! exact counter increments for known traffic (requests by class and method,
//! body bytes, connections open and accepted, a 408 and an idle close as
//! timeouts, health checks), the health answer and its absence from the
//! access log, and the log's millisecond timestamps.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ringserve::access_log::{AccessLogConfig, LogDestination, LogFormat};
use ringserve::engine::{EngineKind, ServerConfig, Timeouts};
use ringserve::files::LoadOptions;
use support::{RawClient, TempSite, TestServer, for_each_engine, get, request, scrape};

const BOOK: &[u8] = b"{\"title\":\"x\"}";

fn site() -> TempSite {
    let site = TempSite::new();
    site.write("index.html", b"<h1>home</h1>")
        .write("book.json", BOOK);
    site
}

fn with_metrics(engine: EngineKind) -> ServerConfig {
    ServerConfig {
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ServerConfig::loopback(engine)
    }
}

fn health_options(root: &Path) -> LoadOptions {
    LoadOptions {
        health_path: Some("/healthz".to_owned()),
        ..LoadOptions::new(root)
    }
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:?}"))
}

fn requests(samples: &HashMap<String, f64>, class: &str, method: &str) -> f64 {
    value(
        samples,
        &format!("ringserve_requests_total{{class=\"{class}\",method=\"{method}\"}}"),
    )
}

/// Scrapes until `series` has `wanted` (a connection's close is counted when
/// the engine gets to it, just after the client sees it), at most 5 s.
fn wait_for(addr: SocketAddr, series: &str, wanted: f64) -> HashMap<String, f64> {
    let started = Instant::now();
    loop {
        let samples = scrape(addr);
        if value(&samples, series) == wanted || started.elapsed() > Duration::from_secs(5) {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_count_requests_bytes_and_connections_exactly() {
    for_each_engine(|engine| {
        let site = site();
        let server = TestServer::with_options(with_metrics(engine), &health_options(site.path()));
        let metrics = server.metrics_addr().expect("metrics are on");
        let before = scrape(metrics);
        assert_eq!(value(&before, "ringserve_connections_accepted_total"), 0.0);
        assert_eq!(value(&before, "ringserve_open_connections"), 0.0);
        assert_eq!(
            value(&before, &format!("ringserve_engine_info{{engine=\"{engine}\"}}")),
            1.0
        );
        assert_eq!(value(&before, "ringserve_workers"), 1.0);
        assert_eq!(value(&before, "ringserve_snapshot_files"), 2.0);
        assert_eq!(value(&before, "ringserve_reloads_total{result=\"ok\"}"), 0.0);
        assert!(value(&before, "ringserve_last_reload_success_timestamp_seconds") > 1.7e9);

        let mut client = server.connect();
        for _ in 0..3 {
            assert_eq!(client.request(&get("/book.json")).status, 200);
        }
        let not_found = client.request(&get("/missing"));
        assert_eq!(not_found.status, 404);
        assert_eq!(client.request(&request("HEAD", "/book.json", "")).status, 200);
        let mut head_only = client.request(&request("HEAD", "/healthz", ""));
        assert_eq!(head_only.status, 200);
        head_only = client.request(&get("/healthz"));
        assert_eq!(head_only.body, b"ok\n");

        let during = scrape(metrics);
        assert_eq!(requests(&during, "2xx", "GET"), 3.0);
        assert_eq!(requests(&during, "4xx", "GET"), 1.0);
        assert_eq!(requests(&during, "2xx", "HEAD"), 1.0);
        assert_eq!(requests(&during, "2xx", "other"), 0.0);
        assert_eq!(requests(&during, "5xx", "GET"), 0.0);
        assert_eq!(
            value(&during, "ringserve_response_body_bytes_total"),
            (3 * BOOK.len() + not_found.body.len()) as f64
        );
        assert_eq!(value(&during, "ringserve_health_checks_total"), 2.0);
        assert_eq!(value(&during, "ringserve_connections_accepted_total"), 1.0);
        assert_eq!(value(&during, "ringserve_open_connections"), 1.0);

        let mut second = server.connect();
        second.send(b"POST /pot HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(second.read_response(false).status, 405);
        drop(client);
        drop(second);
        let after = wait_for(metrics, "ringserve_open_connections", 0.0);
        assert_eq!(value(&after, "ringserve_open_connections"), 0.0, "{after:?}");
        assert_eq!(value(&after, "ringserve_connections_accepted_total"), 2.0);
        assert_eq!(requests(&after, "4xx", "other"), 1.0);
        assert_eq!(
            value(&after, "ringserve_timeouts_total{kind=\"idle\"}"),
            0.0,
            "clients that close are not timeouts"
        );
        assert_eq!(value(&after, "ringserve_accept_backoffs_total"), 0.0);
    });
}

#[test]
fn a_408_and_an_idle_close_are_counted_as_timeouts() {
    for_each_engine(|engine| {
        let site = site();
        let config = ServerConfig {
            timeouts: Timeouts {
                head: Duration::from_millis(300),
                idle: Duration::from_millis(300),
                ..Timeouts::default()
            },
            ..with_metrics(engine)
        };
        let server = TestServer::start(config, site.path());
        let metrics = server.metrics_addr().unwrap();

        let mut slow = server.connect();
        slow.send(b"GET /book.json HTTP/1.1\r\nHost");
        assert_eq!(slow.read_response(false).status, 408);
        let samples = scrape(metrics);
        assert_eq!(value(&samples, "ringserve_timeouts_total{kind=\"head\"}"), 1.0);
        assert_eq!(requests(&samples, "4xx", "GET"), 1.0, "the 408 is a response too");

        let mut idle = server.connect();
        assert_eq!(idle.request(&get("/book.json")).status, 200);
        idle.expect_closed();
        let samples = wait_for(metrics, "ringserve_open_connections", 0.0);
        assert_eq!(value(&samples, "ringserve_timeouts_total{kind=\"idle\"}"), 1.0);
        assert_eq!(value(&samples, "ringserve_timeouts_total{kind=\"head\"}"), 1.0);
        assert_eq!(value(&samples, "ringserve_timeouts_total{kind=\"send\"}"), 0.0);
        assert_eq!(value(&samples, "ringserve_connections_accepted_total"), 2.0);
    });
}

#[test]
fn a_client_that_stops_reading_is_counted_as_a_send_timeout() {
    for_each_engine(|engine| {
        let site = site();
        site.write("big.bin", &vec![b'b'; 16 << 20]);
        let config = ServerConfig {
            timeouts: Timeouts {
                send: Duration::from_millis(500),
                ..Timeouts::default()
            },
            ..with_metrics(engine)
        };
        let server = TestServer::start(config, site.path());
        let metrics = server.metrics_addr().unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.connect(&server.addr().into()).unwrap();
        let mut stalled: std::net::TcpStream = socket.into();
        stalled.write_all(&get("/big.bin")).unwrap();
        // Never read: the send makes no progress and the server gives up.
        let samples = wait_for(metrics, "ringserve_timeouts_total{kind=\"send\"}", 1.0);
        assert_eq!(value(&samples, "ringserve_timeouts_total{kind=\"send\"}"), 1.0);
        assert_eq!(requests(&samples, "2xx", "GET"), 1.0);
        let samples = wait_for(metrics, "ringserve_open_connections", 0.0);
        assert_eq!(value(&samples, "ringserve_open_connections"), 0.0);
        drop(stalled);
    });
}

#[test]
fn the_metrics_listener_answers_only_its_path() {
    for_each_engine(|engine| {
        let site = site();
        let server = TestServer::start(with_metrics(engine), site.path());
        let metrics = server.metrics_addr().unwrap();
        let mut client = RawClient::connect(metrics);
        assert_eq!(client.request(&get("/")).status, 404);
        let mut client = RawClient::connect(metrics);
        assert_eq!(client.request(&request("POST", "/metrics", "")).status, 405);
        // The server itself does not answer the metrics path.
        assert_eq!(server.connect().request(&get("/metrics")).status, 404);
    });
}

#[test]
fn without_metrics_there_is_no_listener_and_no_health_path() {
    let site = site();
    let server = TestServer::serving(EngineKind::Uring, site.path());
    assert_eq!(server.metrics_addr(), None);
    assert_eq!(server.connect().request(&get("/healthz")).status, 404);
}

#[test]
fn health_checks_are_not_logged_and_lines_carry_milliseconds() {
    for_each_engine(|engine| {
        let site = site();
        let log = site.path().with_extension(format!("{engine}.log"));
        let _ = std::fs::remove_file(&log);
        let config = ServerConfig {
            access_log: Some(AccessLogConfig {
                destination: LogDestination::File(log.clone()),
                format: LogFormat::Json,
            }),
            ..ServerConfig::loopback(engine)
        };
        let server = TestServer::with_options(config, &health_options(site.path()));
        let mut client = server.connect();
        assert_eq!(client.request(&get("/healthz")).status, 200);
        assert_eq!(client.request(&get("/book.json")).status, 200);
        assert_eq!(client.request(&request("HEAD", "/healthz", "")).status, 200);
        assert_eq!(client.request(&get("/missing")).status, 404);
        drop(client);
        server.stop();
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("\"target\":\"/book.json\""), "{text}");
        assert!(lines[1].contains("\"target\":\"/missing\""), "{text}");
        assert!(!text.contains("healthz"), "{text}");
        for line in lines {
            // {"time":"2026-12-03T12:34:56.789Z",...
            let time = &line[9..33];
            let bytes = time.as_bytes();
            assert_eq!((bytes[10], bytes[19], bytes[23]), (b'T', b'.', b'Z'), "{line}");
            assert!(bytes[20..23].iter().all(u8::is_ascii_digit), "{line}");
        }
    });
}
