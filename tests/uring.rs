//! End-to-end tests aimed at the `uring` engine's own machinery: close and
//! FIN with a multishot receive armed, pipelining and splits across provided
//! buffers, large bodies through `sendmsg`, the `ENOBUFS` path with a tiny
//! buffer ring, aborted connections, timeouts and graceful stop. The engine
//! variants with a technique switched off (see `engine::uring`) run the core
//! cases too, since they take different code paths, and so does the native
//! `epoll` engine, `uring`'s readiness twin, which must behave the same.
//!
//! The shared suite (`tests/e2e.rs`) covers HTTP behaviour on every engine.
//!
//! Connection churn: close per request, keep-alive, and the graceful close
//! of many connections in a row whose clients left input unread (the case
//! where a shutdown resolved late once cut the next connection's response).

mod support;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, Server, ServerConfig, UringOptions};
use ringserve::files::{LoadOptions, Snapshot};

const BIG_BYTES: usize = 4 * 1024 * 1024;
const MID_BYTES: usize = 64 * 1024;

struct Site {
    files: HashMap<&'static str, Vec<u8>>,
    snapshot: Arc<Snapshot>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn site() -> Site {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringserve-uring-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let mut files = HashMap::new();
    files.insert("k1.txt", b"0123456789abcdef".repeat(64));
    files.insert("mid.bin", pattern(MID_BYTES, 7));
    files.insert("big.bin", pattern(BIG_BYTES, 3));
    for (name, body) in &files {
        std::fs::write(dir.join(name), body).unwrap();
    }
    let snapshot = Arc::new(Snapshot::load(&LoadOptions::new(&dir)).unwrap());
    Site {
        files,
        snapshot,
        _dir: TempDir(dir),
    }
}

fn config(options: UringOptions) -> ServerConfig {
    ServerConfig {
        uring: options,
        ..ServerConfig::loopback(EngineKind::Uring)
    }
}

fn start(config: &ServerConfig) -> (Server, Site) {
    let site = site();
    let server = Server::start(config, Arc::clone(&site.snapshot)).expect("server starts");
    (server, site)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn get(path: &str) -> Vec<u8> {
    format!("GET /{path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response (heads always carry Content-Length here).
fn read_response(stream: &mut TcpStream, pending: &mut Vec<u8>, head_request: bool) -> io::Result<Response> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let length = if head_request || status == 304 { 0 } else { length };
            while pending.len() < end + 4 + length {
                fill(stream, pending)?;
            }
            let body = pending[end + 4..end + 4 + length].to_vec();
            pending.drain(..end + 4 + length);
            return Ok(Response { status, head, body });
        }
        fill(stream, pending)?;
    }
}

fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    pending.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads until the server closes; returns what was read and how long it took.
fn read_to_close(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut all = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (all, started.elapsed()),
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (all, started.elapsed()),
            Err(e) => panic!("reading until close: {e} after {} bytes", all.len()),
        }
    }
}

fn expect_file(response: &Response, site: &Site, name: &str) {
    assert_eq!(response.status, 200, "{}", response.head);
    assert!(response.body == site.files[name], "body of {name} differs");
}

/// The variants of the engine, each with one technique switched from its
/// default (off, or for splice on), and its
/// readiness twin (the native `epoll` engine), which must behave the same.
fn variants() -> Vec<(&'static str, ServerConfig)> {
    let all = UringOptions::default();
    let mut variants: Vec<(&'static str, ServerConfig)> = support::uring_variants(all)
        .into_iter()
        .map(|(name, options)| (name, config(options)))
        .collect();
    variants.push(("epoll", ServerConfig::loopback(EngineKind::Epoll)));
    variants
}

/// A request for `path` whose head is padded to about `head_bytes`.
fn padded_get(path: &str, head_bytes: usize) -> Vec<u8> {
    let mut request = format!("GET /{path} HTTP/1.1\r\nHost: test\r\nX-Pad: ").into_bytes();
    let pad = head_bytes.saturating_sub(request.len() + 4);
    request.extend((0..pad).map(|i| b'a' + (i % 26) as u8));
    request.extend_from_slice(b"\r\n\r\n");
    request
}

/// Sixteen pipelined requests with 1.5 KiB heads in one write (24 KiB: heads
/// straddle buffer ends), then one head larger than a provided buffer, then
/// plain keep-alive: every answer in order, on every variant.
#[test]
fn pipelined_large_heads_spanning_buffers_are_answered_in_order() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let mut stream = connect(server.local_addr());
        let mut pending = Vec::new();
        for round in 0..3 {
            let mut burst = Vec::new();
            for i in 0..16 {
                burst.extend(padded_get(
                    if i % 4 == 3 { "nope" } else { "k1.txt" },
                    1536 + i * 7,
                ));
            }
            stream.write_all(&burst).unwrap();
            for i in 0..16 {
                let response = read_response(&mut stream, &mut pending, false).unwrap();
                if i % 4 == 3 {
                    assert_eq!(response.status, 404, "{name}: round {round}, request {i}");
                } else {
                    expect_file(&response, &site, "k1.txt");
                }
            }
            stream.write_all(&padded_get("mid.bin", 10 * 1024)).unwrap();
            let response = read_response(&mut stream, &mut pending, false).unwrap();
            assert_eq!(response.status, 200, "{name}: the 10 KiB head, round {round}");
            expect_file(&response, &site, "mid.bin");
            stream.write_all(&get("k1.txt")).unwrap();
            expect_file(
                &read_response(&mut stream, &mut pending, false).unwrap(),
                &site,
                "k1.txt",
            );
        }
        server.stop();
    }
}

#[test]
fn connection_close_gets_the_response_then_fin() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let mut stream = connect(server.local_addr());
        stream
            .write_all(b"GET /k1.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (bytes, took) = read_to_close(&mut stream);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{name}: {text}");
        assert!(text.contains("Connection: close\r\n"), "{name}");
        assert!(bytes.ends_with(&site.files["k1.txt"]), "{name}");
        assert!(took < Duration::from_secs(2), "{name}: FIN took {took:?}");
        server.stop();
    }
}

#[test]
fn fifty_pipelined_requests_in_one_write_are_answered_in_order() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let mut stream = connect(server.local_addr());
        let mut burst = Vec::new();
        for i in 0..50 {
            burst.extend(get(if i % 3 == 0 { "nope" } else { "k1.txt" }));
        }
        stream.write_all(&burst).unwrap();
        let mut pending = Vec::new();
        for i in 0..50 {
            let response = read_response(&mut stream, &mut pending, false).unwrap();
            if i % 3 == 0 {
                assert_eq!(response.status, 404, "{name}: request {i}");
            } else {
                expect_file(&response, &site, "k1.txt");
            }
        }
        server.stop();
    }
}

#[test]
fn requests_split_into_single_bytes() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let mut stream = connect(server.local_addr());
        let mut pending = Vec::new();
        for _ in 0..3 {
            for byte in get("k1.txt") {
                stream.write_all(&[byte]).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            let response = read_response(&mut stream, &mut pending, false).unwrap();
            expect_file(&response, &site, "k1.txt");
        }
        // A head longer than one provided buffer, spanning several.
        let mut long = b"GET /k1.txt HTTP/1.1\r\nHost: t\r\n".to_vec();
        for i in 0..60 {
            long.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(140)).as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        assert!(long.len() > 8192 && long.len() < 16 * 1024);
        for piece in long.chunks(1000) {
            stream.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let response = read_response(&mut stream, &mut pending, false).unwrap();
        assert_eq!(response.status, 200, "{name}");
        server.stop();
    }
}

#[test]
fn large_bodies_arrive_intact_and_keep_alive_continues() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let mut stream = connect(server.local_addr());
        let mut burst = get("big.bin");
        burst.extend(get("mid.bin"));
        burst.extend(get("k1.txt"));
        burst.extend(get("big.bin"));
        stream.write_all(&burst).unwrap();
        let mut pending = Vec::new();
        for file in ["big.bin", "mid.bin", "k1.txt", "big.bin"] {
            let response = read_response(&mut stream, &mut pending, false).unwrap();
            expect_file(&response, &site, file);
        }
        eprintln!("{name}: ok");
        server.stop();
    }
}

#[test]
fn a_slow_reader_of_a_large_body_is_served_completely() {
    let (server, site) = start(&config(UringOptions::default()));
    let mut stream = connect(server.local_addr());
    stream.write_all(&get("big.bin")).unwrap();
    let mut pending = Vec::new();
    // Read slowly at first, so sends come back short and must resume.
    let mut chunk = [0u8; 16 * 1024];
    for _ in 0..20 {
        let n = stream.read(&mut chunk).unwrap();
        pending.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
    let response = read_response(&mut stream, &mut pending, false).unwrap();
    expect_file(&response, &site, "big.bin");
    server.stop();
}

#[test]
fn many_concurrent_connections_each_get_every_byte() {
    for (name, config) in variants() {
        let (server, site) = start(&config);
        let addr = server.local_addr();
        let site = Arc::new(site);
        let clients: Vec<_> = (0..100)
            .map(|c| {
                let site = Arc::clone(&site);
                std::thread::spawn(move || {
                    let mut stream = connect(addr);
                    let mut pending = Vec::new();
                    for i in 0..50 {
                        let file = if (c + i) % 10 == 0 { "mid.bin" } else { "k1.txt" };
                        stream.write_all(&get(file)).unwrap();
                        let response = read_response(&mut stream, &mut pending, false).unwrap();
                        expect_file(&response, &site, file);
                    }
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .unwrap_or_else(|_| panic!("{name}: a client failed"));
        }
        server.stop();
    }
}

/// A ring of two buffers and hundreds of connections sending at the same
/// moment: most receives find the ring empty and end with `ENOBUFS`. No
/// request may be lost and the worker must not spin.
#[test]
fn an_empty_buffer_ring_loses_no_request() {
    let all = UringOptions {
        buffers: 2,
        ..UringOptions::default()
    };
    let single = UringOptions {
        multishot_recv: false,
        ..all
    };
    for options in [all, single] {
        let (server, site) = start(&config(options));
        let addr = server.local_addr();
        let site = Arc::new(site);
        let starved_before = ringserve::engine::uring::starved_receives();
        let connections = 300;
        let rounds = 5;
        let barrier = Arc::new(Barrier::new(connections));
        let clients: Vec<_> = (0..connections)
            .map(|_| {
                let site = Arc::clone(&site);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut stream = connect(addr);
                    let mut pending = Vec::new();
                    for _ in 0..rounds {
                        let mut burst = get("k1.txt");
                        burst.extend(get("nope"));
                        barrier.wait();
                        stream.write_all(&burst).unwrap();
                        expect_file(
                            &read_response(&mut stream, &mut pending, false).unwrap(),
                            &site,
                            "k1.txt",
                        );
                        assert_eq!(
                            read_response(&mut stream, &mut pending, false).unwrap().status,
                            404
                        );
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("a client failed");
        }
        let starved = ringserve::engine::uring::starved_receives() - starved_before;
        eprintln!("{options:?}: {starved} receives found the ring empty");
        assert!(starved > 0, "the test did not reach the ENOBUFS path");
        server.stop();
    }
}

/// A client that pipelines far more than it reads: the server answers up to
/// its output high-water mark, keeps at most a bounded amount of input, stops
/// receiving, and resumes as the client reads. Every response arrives, in order.
#[test]
fn pipelining_faster_than_reading_pauses_and_resumes_receiving() {
    let (server, site) = start(&config(UringOptions::default()));
    let paused_before = ringserve::engine::uring::paused_reads();
    let mut stream = connect(server.local_addr());
    let padding = "p".repeat(200);
    let requests = 400;
    let mut burst = Vec::new();
    for i in 0..requests {
        let file = if i % 2 == 0 { "mid.bin" } else { "k1.txt" };
        burst.extend(format!("GET /{file} HTTP/1.1\r\nHost: t\r\nX-Pad: {padding}\r\n\r\n").into_bytes());
    }
    assert!(burst.len() > 64 * 1024);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&burst).unwrap())
    };
    // Let the input pile up before reading anything.
    std::thread::sleep(Duration::from_millis(300));
    let mut pending = Vec::new();
    for i in 0..requests {
        let file = if i % 2 == 0 { "mid.bin" } else { "k1.txt" };
        expect_file(
            &read_response(&mut stream, &mut pending, false).unwrap(),
            &site,
            file,
        );
    }
    writer.join().unwrap();
    assert!(
        ringserve::engine::uring::paused_reads() > paused_before,
        "the test did not reach the paused-reads path"
    );
    server.stop();
}

#[test]
fn aborted_connections_free_everything() {
    let (server, site) = start(&config(UringOptions::default()));
    let addr = server.local_addr();
    for i in 0..200 {
        let mut stream = connect(addr);
        match i % 4 {
            // Ask for a large body and reset without reading it.
            0 => {
                stream.write_all(&get("big.bin")).unwrap();
                let mut some = [0u8; 1000];
                let _ = stream.read(&mut some);
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // Half a head, then gone.
            1 => stream.write_all(b"GET /k1.txt HTTP/1.1\r\nHo").unwrap(),
            // Pipelined requests, then a half-close before reading.
            2 => {
                let mut burst = get("mid.bin");
                burst.extend(get("k1.txt"));
                stream.write_all(&burst).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
                let mut pending = Vec::new();
                expect_file(
                    &read_response(&mut stream, &mut pending, false).unwrap(),
                    &site,
                    "mid.bin",
                );
                expect_file(
                    &read_response(&mut stream, &mut pending, false).unwrap(),
                    &site,
                    "k1.txt",
                );
                let (rest, _) = read_to_close(&mut stream);
                assert!(rest.is_empty());
            }
            // Connect and leave.
            _ => {}
        }
    }
    // The server still serves.
    let mut stream = connect(addr);
    stream.write_all(&get("k1.txt")).unwrap();
    expect_file(
        &read_response(&mut stream, &mut Vec::new(), false).unwrap(),
        &site,
        "k1.txt",
    );
    server.stop();
}

#[test]
fn head_timeout_answers_408_and_idle_timeout_closes() {
    for (name, mut config) in variants() {
        config.timeouts.head = Duration::from_millis(300);
        config.timeouts.idle = Duration::from_millis(600);
        let (server, site) = start(&config);
        let addr = server.local_addr();

        let mut slow = connect(addr);
        slow.write_all(b"GET /k1.txt HTTP/1.1\r\nHost: t\r\n").unwrap();
        let started = Instant::now();
        // Bytes that keep coming do not extend a head deadline.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(50));
            slow.write_all(b"X-Slow: 1\r\n").unwrap();
        }
        let mut head = [0u8; 13];
        slow.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 408 ", "{name}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{name}: {waited:?}"
        );
        // More input while the server lingers (with its own buffers, the
        // receive that was waiting for the head is still armed): discarded.
        for _ in 0..5 {
            let _ = slow.write_all(&[b'x'; 3000]);
            std::thread::sleep(Duration::from_millis(20));
        }
        let (rest, _) = read_to_close(&mut slow);
        assert!(
            String::from_utf8_lossy(&rest).contains("Connection: close"),
            "{name}"
        );

        let mut idle = connect(addr);
        idle.write_all(&get("k1.txt")).unwrap();
        let mut pending = Vec::new();
        expect_file(
            &read_response(&mut idle, &mut pending, false).unwrap(),
            &site,
            "k1.txt",
        );
        let started = Instant::now();
        let (bytes, _) = read_to_close(&mut idle);
        assert!(bytes.is_empty(), "{name}: an idle close sends nothing");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
            "{name}: {waited:?}"
        );
        server.stop();
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let mut config = config(UringOptions::default());
    config.timeouts.send = Duration::from_millis(400);
    let (server, _site) = start(&config);
    let mut stream = connect(server.local_addr());
    // 16 MiB asked for and nothing read: more than the socket buffers hold.
    let mut burst = Vec::new();
    for _ in 0..4 {
        burst.extend(get("big.bin"));
    }
    stream.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // By now the server gave up: reading drains what was buffered, then ends.
    let (bytes, _) = read_to_close(&mut stream);
    assert!(
        bytes.len() < 4 * BIG_BYTES,
        "the whole response arrived: no timeout happened"
    );
    server.stop();
}

#[test]
fn stop_lets_a_response_in_flight_finish_and_closes_idle_connections() {
    let mut config = config(UringOptions::default());
    config.shutdown_grace = Duration::from_secs(5);
    let (server, site) = start(&config);
    let addr = server.local_addr();
    let mut idle = connect(addr);
    idle.write_all(&get("k1.txt")).unwrap();
    let mut pending = Vec::new();
    expect_file(
        &read_response(&mut idle, &mut pending, false).unwrap(),
        &site,
        "k1.txt",
    );

    // Two large responses: more than the socket buffers hold, so the server
    // is still sending when the stop signal comes.
    let mut busy = connect(addr);
    let mut burst = get("big.bin");
    burst.extend(get("big.bin"));
    busy.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    let stopper = std::thread::spawn(move || server.stop());
    let (rest, _) = read_to_close(&mut idle);
    assert!(rest.is_empty());
    let mut pending = Vec::new();
    for _ in 0..2 {
        expect_file(
            &read_response(&mut busy, &mut pending, false).unwrap(),
            &site,
            "big.bin",
        );
    }
    let (rest, _) = read_to_close(&mut busy);
    assert!(rest.is_empty() && pending.is_empty());
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        TcpStream::connect(addr).is_err(),
        "the listener is closed after stop"
    );
}

#[test]
fn stop_closes_what_is_left_after_the_grace_period() {
    let mut config = config(UringOptions::default());
    config.shutdown_grace = Duration::from_millis(300);
    let (server, _site) = start(&config);
    let mut stuck = connect(server.local_addr());
    let mut burst = Vec::new();
    for _ in 0..4 {
        burst.extend(get("big.bin"));
    }
    stuck.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn bad_requests_get_an_error_and_the_connection_ends() {
    let (server, _site) = start(&config(UringOptions::default()));
    let mut stream = connect(server.local_addr());
    stream
        .write_all(b"BLAH\r\n\r\nGET /k1.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (bytes, took) = read_to_close(&mut stream);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(took < Duration::from_secs(2));
    server.stop();
}

/// Issue 9, defect 5: reads paused for back-pressure resume when the session
/// needs more input, even while more than half the carry limit is held (a
/// head larger than that, allowed by `--max-head`): the head completes and
/// is answered, instead of waiting for its 408.
#[test]
fn a_large_partial_head_resumes_paused_reads() {
    let mut config = config(UringOptions::default());
    config.limits.max_head_bytes = 128 * 1024;
    config.timeouts.head = Duration::from_secs(30);
    let (server, site) = start(&config);
    let paused_before = ringserve::engine::uring::paused_reads();
    let mut stream = connect(server.local_addr());
    let mut burst = get("big.bin");
    burst.extend_from_slice(b"GET /k1.txt HTTP/1.1\r\nHost: t\r\nX-Pad: ");
    burst.extend(std::iter::repeat_n(b'p', 70_000));
    burst.extend_from_slice(b"\r\n");
    stream.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut pending = Vec::new();
    expect_file(
        &read_response(&mut stream, &mut pending, false).unwrap(),
        &site,
        "big.bin",
    );
    assert!(
        ringserve::engine::uring::paused_reads() > paused_before,
        "the test did not reach the paused-reads path"
    );
    stream.write_all(b"\r\n").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    expect_file(
        &read_response(&mut stream, &mut pending, false).unwrap(),
        &site,
        "k1.txt",
    );
    server.stop();
}

/// Reads a whole `Connection: close` response and the end after it; a reset
/// is only acceptable once the response is complete.
fn read_close_response(stream: &mut TcpStream) -> Result<Response, String> {
    let mut pending = Vec::new();
    let response = read_response(stream, &mut pending, false)
        .map_err(|e| format!("{e} after {} bytes", pending.len()))?;
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => Ok(response),
        Ok(n) => Err(format!("{n} bytes after the response")),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(response),
        Err(e) => Err(format!("no end after the response: {e}")),
    }
}

#[test]
fn connection_per_request_then_keep_alive() {
    let (server, site) = start(&config(UringOptions::default()));
    let addr = server.local_addr();
    for _ in 0..300 {
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /k1.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let response = read_close_response(&mut stream).unwrap_or_else(|e| panic!("{e}"));
        expect_file(&response, &site, "k1.txt");
    }
    let mut stream = connect(addr);
    let mut pending = Vec::new();
    for path in ["k1.txt", "mid.bin", "big.bin", "k1.txt"] {
        stream.write_all(&get(path)).unwrap();
        expect_file(
            &read_response(&mut stream, &mut pending, false).unwrap(),
            &site,
            path,
        );
    }
    server.stop();
}

/// Many `Connection: close` responses of a large body in a row, from several
/// clients at once, each leaving input the server never reads: every
/// response arrives whole (then the end, for clients that wait for it). A
/// shutdown that named the wrong connection (a descriptor reused by the next
/// accept before the shutdown ran) cuts another client's response short.
#[test]
fn graceful_closes_in_a_row_never_cut_a_response() {
    const CLIENTS: usize = 4;
    const CONNECTIONS_EACH: usize = 250;
    let (server, site) = start(&config(UringOptions::default()));
    let addr = server.local_addr();
    let site = Arc::new(site);
    let start_line = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let site = Arc::clone(&site);
            let start_line = Arc::clone(&start_line);
            std::thread::spawn(move || {
                start_line.wait();
                for i in 0..CONNECTIONS_EACH {
                    let mut stream = connect(addr);
                    let mut request =
                        b"GET /mid.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
                    // Unread input: a request the server must not answer,
                    // and a padding of junk.
                    request.extend(get("k1.txt"));
                    request.extend(std::iter::repeat_n(b'j', 16 * 1024));
                    stream.write_all(&request).unwrap();
                    // Half the clients wait for the end; the others close
                    // as soon as the body is complete, as wrk does: the
                    // server then sees their end at once, and closes
                    // perhaps before its own shutdown has run.
                    let response = if i % 2 == 0 {
                        read_close_response(&mut stream)
                    } else {
                        let mut pending = Vec::new();
                        read_response(&mut stream, &mut pending, false)
                            .map_err(|e| format!("{e} after {} bytes", pending.len()))
                    }
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    expect_file(&response, &site, "mid.bin");
                    assert!(response.head.contains("Connection: close\r\n"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    server.stop();
}

// ---- files streamed from disk: read + send, and splice (`--uring-splice`) ----

/// Above this, files are streamed from disk in the tests below.
const DISK_MAX_CACHED: u64 = 16 * 1024;
/// Sizes around the chunk (`FILE_CHUNK_BYTES`, 128 KiB): just over the
/// memory cap, exactly one chunk, several chunks and a remainder, many.
const DISK_FILES: [(&str, usize); 5] = [
    ("d-over-cap.bin", 16 * 1024 + 1),
    ("d-one-chunk.bin", 128 * 1024),
    ("d-chunks-and-rest.bin", 3 * 128 * 1024 + 12_345),
    ("d-1m-plus.bin", 1024 * 1024 + 7),
    ("d-4m.bin", 4 * 1024 * 1024),
];

/// A site whose `DISK_FILES` are streamed from disk (and `k1.txt` is held in
/// memory).
fn disk_site() -> Site {
    let base = site();
    let dir = base._dir.0.clone();
    let mut files = base.files;
    for (seed, (name, len)) in DISK_FILES.into_iter().enumerate() {
        let body: Vec<u8> = (0..len)
            .map(|i| ((i * 131 + i / 7919) as u8).wrapping_add(seed as u8))
            .collect();
        std::fs::write(dir.join(name), &body).unwrap();
        files.insert(name, body);
    }
    let mut options = LoadOptions::new(&dir);
    options.max_cached_file_bytes = DISK_MAX_CACHED;
    let snapshot = Arc::new(Snapshot::load(&options).unwrap());
    Site {
        files,
        snapshot,
        _dir: base._dir,
    }
}

/// A new connection to `addr` gets `file` whole (the worker still serves
/// after what the test did to other connections).
fn expect_whole_on_a_new_connection(addr: SocketAddr, site: &Site, file: &str, context: &str) {
    let mut next = connect(addr);
    next.write_all(&get(file)).unwrap();
    let response = read_response(&mut next, &mut Vec::new(), false).unwrap();
    assert!(response.body == site.files[file], "{context}");
}

/// Read + send, splice, splice with single-shot receives, and the `epoll`
/// twin.
fn disk_variants() -> Vec<(&'static str, ServerConfig)> {
    let splice = UringOptions {
        splice: true,
        ..UringOptions::default()
    };
    vec![
        ("read-send", config(UringOptions::default())),
        ("splice", config(splice)),
        (
            "splice-no-multishot",
            config(UringOptions {
                multishot_recv: false,
                ..splice
            }),
        ),
        ("epoll", ServerConfig::loopback(EngineKind::Epoll)),
    ]
}

fn start_disk(config: &ServerConfig) -> (Server, Site) {
    let site = disk_site();
    let server = Server::start(config, Arc::clone(&site.snapshot)).expect("server starts");
    (server, site)
}

fn request_with(method: &str, path: &str, header: &str) -> Vec<u8> {
    format!("{method} /{path} HTTP/1.1\r\nHost: test\r\n{header}\r\n").into_bytes()
}

/// The parts of a `multipart/byteranges` body, checked against `content`:
/// each of `ranges` (inclusive) must be there, in order, byte-exact.
fn expect_multipart(response: &Response, content: &[u8], ranges: &[(usize, usize)], what: &str) {
    assert_eq!(response.status, 206, "{what}: {}", response.head);
    let boundary = response
        .head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Type: multipart/byteranges; boundary="))
        .unwrap_or_else(|| panic!("{what}: not multipart: {}", response.head))
        .trim()
        .to_string();
    let body = &response.body;
    let mut at = 0;
    for &(first, last) in ranges {
        let marker = format!("Content-Range: bytes {first}-{last}/{}\r\n\r\n", content.len());
        let found = body[at..]
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .unwrap_or_else(|| panic!("{what}: part {first}-{last} missing"));
        let start = at + found + marker.len();
        let end = start + (last - first + 1);
        assert!(
            body[start..end] == content[first..=last],
            "{what}: part {first}-{last} differs"
        );
        at = end;
    }
    let closing = format!("\r\n--{boundary}--\r\n");
    assert!(
        body[at..] == *closing.as_bytes(),
        "{what}: the multipart body does not end right"
    );
}

#[test]
fn files_streamed_from_disk_arrive_byte_exact_whole_head_and_ranges() {
    for (name, config) in disk_variants() {
        let (server, site) = start_disk(&config);
        let mut stream = connect(server.local_addr());
        let mut pending = Vec::new();
        for (file, len) in DISK_FILES {
            let content = &site.files[file];
            // Whole, twice pipelined with a file held in memory between them.
            let mut burst = get(file);
            burst.extend(get("k1.txt"));
            burst.extend(get(file));
            stream.write_all(&burst).unwrap();
            for expected in [file, "k1.txt", file] {
                let response = read_response(&mut stream, &mut pending, false).unwrap();
                assert_eq!(response.status, 200, "{name}: {expected}");
                assert!(
                    response.body == site.files[expected],
                    "{name}: {expected} differs"
                );
            }
            // HEAD: the length, no body (the next response follows at once).
            stream.write_all(&request_with("HEAD", file, "")).unwrap();
            let head = read_response(&mut stream, &mut pending, true).unwrap();
            assert_eq!(head.status, 200, "{name}: HEAD {file}");
            assert!(
                head.head.contains(&format!("Content-Length: {len}\r\n")),
                "{name}: {}",
                head.head
            );
            // One range across a chunk boundary, and an open-ended one.
            let (first, last) = (len / 3, (len / 3 + 200_000).min(len - 1));
            stream
                .write_all(&request_with(
                    "GET",
                    file,
                    &format!("Range: bytes={first}-{last}\r\n"),
                ))
                .unwrap();
            let partial = read_response(&mut stream, &mut pending, false).unwrap();
            assert_eq!(partial.status, 206, "{name}: {file} {first}-{last}");
            assert!(
                partial.body == content[first..=last],
                "{name}: {file} {first}-{last} differs"
            );
            stream
                .write_all(&request_with("GET", file, "Range: bytes=-1000\r\n"))
                .unwrap();
            let tail = read_response(&mut stream, &mut pending, false).unwrap();
            assert!(
                tail.body == content[len - 1000..],
                "{name}: {file} the last 1000 bytes"
            );
            // Multipart: a few bytes, a large part, the last byte.
            let ranges = [(0, 9), (1000, len / 2), (len - 1, len - 1)];
            let spec: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            stream
                .write_all(&request_with(
                    "GET",
                    file,
                    &format!("Range: bytes={}\r\n", spec.join(",")),
                ))
                .unwrap();
            let multi = read_response(&mut stream, &mut pending, false).unwrap();
            expect_multipart(&multi, content, &ranges, &format!("{name}: {file}"));
        }
        server.stop();
    }
}

#[test]
fn files_streamed_from_disk_to_many_connections_in_a_row_and_at_once() {
    for (name, config) in disk_variants() {
        let (server, site) = start_disk(&config);
        let addr = server.local_addr();
        for i in 0..40 {
            let (file, _) = DISK_FILES[i % DISK_FILES.len()];
            let mut stream = connect(addr);
            stream.write_all(&get(file)).unwrap();
            let response = read_response(&mut stream, &mut Vec::new(), false).unwrap();
            assert!(
                response.body == site.files[file],
                "{name}: connection {i}: {file} differs"
            );
        }
        let site = Arc::new(site);
        let clients: Vec<_> = (0..24)
            .map(|c| {
                let site = Arc::clone(&site);
                std::thread::spawn(move || {
                    let mut stream = connect(addr);
                    let mut pending = Vec::new();
                    for i in 0..6 {
                        let (file, _) = DISK_FILES[(c + i) % DISK_FILES.len()];
                        stream.write_all(&get(file)).unwrap();
                        let response = read_response(&mut stream, &mut pending, false).unwrap();
                        assert!(response.body == site.files[file], "client {c}: {file} differs");
                    }
                })
            })
            .collect();
        for client in clients {
            client
                .join()
                .unwrap_or_else(|_| panic!("{name}: a client failed"));
        }
        server.stop();
    }
}

/// Clients that leave in the middle of a streamed body (closing, or with a
/// reset), some with more requests pipelined behind it: the worker goes on,
/// and the next connections are served whole.
#[test]
fn clients_that_leave_mid_body_of_a_streamed_file_do_not_hurt_the_next() {
    for (name, config) in disk_variants() {
        let (server, site) = start_disk(&config);
        let addr = server.local_addr();
        for i in 0..30 {
            let mut stream = connect(addr);
            let mut burst = get("d-4m.bin");
            if i % 3 == 0 {
                burst.extend(get("d-1m-plus.bin"));
            }
            stream.write_all(&burst).unwrap();
            let mut some = vec![0u8; 1000 + i * 9000];
            let _ = stream.read_exact(&mut some);
            if i % 2 == 0 {
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(stream);
            if i % 10 == 9 {
                expect_whole_on_a_new_connection(
                    addr,
                    &site,
                    "d-chunks-and-rest.bin",
                    &format!("{name}: after {i} clients left mid-body"),
                );
            }
        }
        server.stop();
    }
}

/// A client that stops reading a streamed file (with splice, the splice into
/// its socket blocks in an io-wq worker) is dropped after the send timeout;
/// meanwhile and afterwards, other connections are served.
#[test]
fn a_client_that_stops_reading_a_streamed_file_is_dropped_and_others_are_served() {
    for (name, mut config) in disk_variants() {
        eprintln!("{name}");
        config.timeouts.send = Duration::from_millis(400);
        let (server, site) = start_disk(&config);
        let addr = server.local_addr();
        let mut stalled = connect(addr);
        let mut burst = Vec::new();
        for _ in 0..4 {
            burst.extend(get("d-4m.bin"));
        }
        stalled.write_all(&burst).unwrap();
        let mut other = connect(addr);
        other.write_all(&get("d-1m-plus.bin")).unwrap();
        let response = read_response(&mut other, &mut Vec::new(), false).unwrap();
        assert!(
            response.body == site.files["d-1m-plus.bin"],
            "{name}: beside a stalled client"
        );
        std::thread::sleep(Duration::from_millis(1500));
        let (bytes, _) = read_to_close(&mut stalled);
        assert!(bytes.len() < 4 * (4 << 20), "{name}: no timeout happened");
        expect_whole_on_a_new_connection(
            addr,
            &site,
            "d-chunks-and-rest.bin",
            &format!("{name}: afterwards"),
        );
        server.stop();
    }
}

/// A file truncated on disk while it is streamed: the response cannot be
/// completed, so the connection closes short of its Content-Length (both
/// ways of streaming behave the same), and the worker serves the next. The
/// file (16 MiB) is larger than the socket buffers can take ahead of a
/// client with a small receive buffer, so the server is still streaming it
/// when it shrinks.
#[test]
fn a_file_truncated_on_disk_mid_transfer_closes_the_connection() {
    const LEN: usize = 16 << 20;
    for (name, config) in disk_variants() {
        let site = disk_site();
        let path = site._dir.0.join("t-16m.bin");
        std::fs::write(&path, vec![b't'; LEN]).unwrap();
        let mut options = LoadOptions::new(&site._dir.0);
        options.max_cached_file_bytes = DISK_MAX_CACHED;
        let snapshot = Arc::new(Snapshot::load(&options).unwrap());
        let server = Server::start(&config, snapshot).expect("server starts");
        let addr = server.local_addr();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(32 * 1024).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(&get("t-16m.bin")).unwrap();
        let mut some = vec![0u8; 64 * 1024];
        stream.read_exact(&mut some).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(256 * 1024)
            .unwrap();
        let mut rest = Vec::new();
        if let Err(e) = stream.read_to_end(&mut rest) {
            assert!(
                e.kind() == io::ErrorKind::ConnectionReset,
                "{name}: reading until close: {e} after {} bytes",
                some.len() + rest.len()
            );
        }
        assert!(
            some.len() + rest.len() < LEN,
            "{name}: a body longer than the file arrived"
        );
        expect_whole_on_a_new_connection(
            addr,
            &site,
            "d-1m-plus.bin",
            &format!("{name}: the next connection"),
        );
        server.stop();
    }
}

/// Connection-per-request clients whose request is the last thing they send
/// get an immediate close (the last send linked to the close, or the close
/// submitted after it): on every variant (no link, one buffer per
/// connection, ...) and on the epoll twin, from several clients
/// at once, every response (1 KiB, 64 KiB, 4 MiB in several sends) arrives
/// whole and is followed by a clean end of file, never a reset, some read
/// only after the server has closed; a descriptor closed by the
/// kernel and reused by the next accept would cut or mix responses.
#[test]
fn immediate_closes_in_a_row_deliver_every_byte_then_a_clean_end() {
    const CLIENTS: usize = 3;
    const CONNECTIONS_EACH: usize = 40;
    for (name, config) in variants() {
        let linked_before = ringserve::engine::uring::linked_closes();
        let (server, site) = start(&config);
        let addr = server.local_addr();
        let site = Arc::new(site);
        let start_line = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let site = Arc::clone(&site);
                let start_line = Arc::clone(&start_line);
                std::thread::spawn(move || {
                    start_line.wait();
                    for i in 0..CONNECTIONS_EACH {
                        let path = match i % 10 {
                            9 => "big.bin",
                            4 => "mid.bin",
                            _ => "k1.txt",
                        };
                        let mut stream = connect(addr);
                        let request = format!("GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                        stream.write_all(request.as_bytes()).unwrap();
                        if i % 7 == 6 {
                            // The server sends and closes before anything is read.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        let mut pending = Vec::new();
                        let response = read_response(&mut stream, &mut pending, false).unwrap_or_else(|e| {
                            panic!("{name}: #{i} {path}: {e} after {} bytes", pending.len())
                        });
                        expect_file(&response, &site, path);
                        assert!(pending.is_empty(), "{name}: #{i}: bytes after the response");
                        let mut byte = [0u8; 1];
                        match stream.read(&mut byte) {
                            Ok(0) => {}
                            other => panic!("{name}: #{i} {path}: expected a clean end, got {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        server.stop();
        if config.engine == EngineKind::Uring && config.uring.link_close {
            assert!(
                ringserve::engine::uring::linked_closes() > linked_before,
                "{name}: no close was linked to its send"
            );
        }
    }
}

/// A keep-alive connection that waits longer than the send timeout (short
/// here) between requests is idle, not sending: its next request is
/// answered, whether the last response was streamed from disk or held in
/// memory. (The uring engine reset it: the deadline of the new response was
/// taken from the last send progress, long past.)
#[test]
fn a_keep_alive_request_after_a_pause_longer_than_the_send_timeout_is_answered() {
    for (name, mut config) in disk_variants() {
        config.timeouts.send = Duration::from_millis(300);
        let (server, site) = start_disk(&config);
        let mut stream = connect(server.local_addr());
        let mut pending = Vec::new();
        for (round, file) in ["d-1m-plus.bin", "k1.txt", "d-1m-plus.bin", "k1.txt"]
            .into_iter()
            .enumerate()
        {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(700));
            }
            stream.write_all(&get(file)).unwrap();
            let response = read_response(&mut stream, &mut pending, false)
                .unwrap_or_else(|e| panic!("{name}: request {round} ({file}) after a pause: {e}"));
            assert!(
                response.body == site.files[file],
                "{name}: request {round} ({file})"
            );
        }
        server.stop();
    }
}
