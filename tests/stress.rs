//! Stress test of every engine: 1,000 connections doing random mixes of
//! pipelined, byte-split, `Connection: close` and aborted requests (half
//! heads, resets in the middle of large bodies) for a bounded time, every
//! response checked byte for byte; afterwards the process has as many
//! descriptors as before and its memory has not grown with the work done.
//!
//! Runs for a few seconds per engine by default; `RINGSERVE_STRESS_SECS=60`
//! runs longer, `RINGSERVE_STRESS_ENGINES=uring,epoll` stresses only those,
//! and `RINGSERVE_STRESS_ARGS="--uring-no-multishot-recv"` (for example)
//! passes extra flags to the server, to stress an engine variant.
//! The server runs as a child process (the `ringserve` binary), so its
//! descriptors and memory are measured apart from the clients'.

use std::collections::HashMap;
use std::io;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringserve::engine::EngineKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 1000;
const DEFAULT_SECS: u64 = 3;
/// Memory the server may gain between the end of the first phase and the
/// end of the second (twice as long): allocator noise, not a leak. A leak of
/// one outbox (4 KiB) per aborted connection would exceed it several times.
const MAX_RSS_GROWTH_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Default)]
struct Tally {
    responses: AtomicU64,
    aborts: AtomicU64,
    closes: AtomicU64,
    splits: AtomicU64,
}

struct Files {
    bodies: HashMap<&'static str, Vec<u8>>,
}

/// xorshift64*: enough randomness to mix actions, reproducible per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The server process; killed (by its PID) when dropped, also on failure.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(root: &Path, engine: EngineKind) -> ServerProcess {
        let extra = std::env::var("RINGSERVE_STRESS_ARGS").unwrap_or_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringserve"))
            .args([
                "--engine",
                engine.name(),
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--no-pin",
                "--root",
            ])
            .arg(root)
            .args(extra.split_whitespace())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ringserve starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the start line {line:?}"));
        ServerProcess { child, addr }
    }

    fn proc_path(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{what}", self.child.id()))
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(self.proc_path("fd")).unwrap().count()
    }

    fn rss_bytes(&self) -> u64 {
        rss_bytes(&self.proc_path("status"))
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with the PID of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rss_bytes(status_path: &Path) -> u64 {
    let status = std::fs::read_to_string(status_path).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn raise_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    if limit.rlim_cur < wanted {
        limit.rlim_cur = wanted.min(limit.rlim_max);
        // SAFETY: setrlimit reads the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    assert!(
        limit.rlim_cur >= wanted,
        "need {wanted} descriptors, the limit is {}",
        limit.rlim_cur
    );
}

fn site() -> (Files, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ringserve-stress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
            .collect()
    };
    let mut bodies = HashMap::new();
    bodies.insert("small.txt", b"stress test body\n".repeat(60));
    bodies.insert("mid.bin", pattern(40 * 1024, 1));
    bodies.insert("big.bin", pattern(1024 * 1024, 2));
    for (name, body) in &bodies {
        std::fs::write(dir.join(name), body).unwrap();
    }
    (Files { bodies }, dir)
}

/// A request and what its response must be.
struct Expected {
    request: Vec<u8>,
    status: u16,
    body: Option<&'static str>,
    head_only: bool,
}

fn random_request(rng: &mut Rng, close: bool) -> Expected {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let (method, path, status, body) = match rng.below(10) {
        0..=4 => ("GET", "/small.txt", 200, Some("small.txt")),
        5 | 6 => ("GET", "/mid.bin", 200, Some("mid.bin")),
        7 => ("GET", "/big.bin", 200, Some("big.bin")),
        8 => ("HEAD", "/small.txt", 200, None),
        _ => ("GET", "/missing", 404, None),
    };
    Expected {
        request: format!("{method} {path} HTTP/1.1\r\nHost: stress\r\n{connection}\r\n").into_bytes(),
        status,
        body,
        head_only: method == "HEAD",
    }
}

async fn read_response(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    expected: &Expected,
    files: &Files,
) -> io::Result<()> {
    let fail = |what: String| io::Error::other(what);
    loop {
        if let Some(end) = memchr::memmem::find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| fail(format!("bad status line: {head}")))?;
            if status != expected.status {
                return Err(fail(format!("expected {}, got: {head}", expected.status)));
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| fail(format!("no Content-Length: {head}")))?;
            let body_len = if expected.head_only { 0 } else { length };
            while pending.len() < end + 4 + body_len {
                fill(stream, pending).await?;
            }
            let body = &pending[end + 4..end + 4 + body_len];
            if let Some(name) = expected.body {
                if body != files.bodies[name].as_slice() {
                    return Err(fail(format!("body of {name} differs")));
                }
            }
            pending.drain(..end + 4 + body_len);
            return Ok(());
        }
        fill(stream, pending).await?;
    }
}

async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    pending.reserve(64 * 1024);
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(pending))
        .await
        .map_err(|_| io::Error::other("no response within 10 s"))??;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// One client connection's life: random actions until `until`.
async fn client(
    addr: SocketAddr,
    seed: u64,
    until: Instant,
    files: Arc<Files>,
    tally: Arc<Tally>,
) -> io::Result<()> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut stream = connect(addr).await;
    let mut pending = Vec::new();
    while Instant::now() < until {
        match rng.below(20) {
            // Pipelined burst in one write.
            0..=9 => {
                let depth = 1 + rng.below(16) as usize;
                let batch: Vec<Expected> = (0..depth).map(|_| random_request(&mut rng, false)).collect();
                let bytes: Vec<u8> = batch.iter().flat_map(|e| e.request.clone()).collect();
                stream.write_all(&bytes).await?;
                for expected in &batch {
                    read_response(&mut stream, &mut pending, expected, &files).await?;
                    tally.responses.fetch_add(1, Ordering::Relaxed);
                }
            }
            // One request in small random pieces.
            10..=13 => {
                let expected = random_request(&mut rng, false);
                let mut rest = &expected.request[..];
                while !rest.is_empty() {
                    let take = (1 + rng.below(8) as usize).min(rest.len());
                    stream.write_all(&rest[..take]).await?;
                    rest = &rest[take..];
                    if rng.below(4) == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                read_response(&mut stream, &mut pending, &expected, &files).await?;
                tally.responses.fetch_add(1, Ordering::Relaxed);
                tally.splits.fetch_add(1, Ordering::Relaxed);
            }
            // Connection: close, then the server's FIN.
            14..=15 => {
                let expected = random_request(&mut rng, true);
                stream.write_all(&expected.request).await?;
                read_response(&mut stream, &mut pending, &expected, &files).await?;
                tally.responses.fetch_add(1, Ordering::Relaxed);
                let mut rest = Vec::new();
                let n = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
                    .await
                    .map_err(|_| io::Error::other("no FIN after Connection: close"))??;
                if n != 0 || !pending.is_empty() {
                    return Err(io::Error::other("bytes after the last response"));
                }
                tally.closes.fetch_add(1, Ordering::Relaxed);
                stream = connect(addr).await;
            }
            // Abort: half a head, or a large body reset mid-way, or a burst
            // never read.
            _ => {
                match rng.below(3) {
                    0 => {
                        let request = random_request(&mut rng, false).request;
                        let cut = 1 + rng.below(request.len() as u64 - 1) as usize;
                        stream.write_all(&request[..cut]).await?;
                    }
                    1 => {
                        stream
                            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: stress\r\n\r\n")
                            .await?;
                        let mut some = vec![0u8; 1 + rng.below(200_000) as usize];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut some)).await;
                    }
                    _ => {
                        let burst: Vec<u8> = (0..8)
                            .flat_map(|_| random_request(&mut rng, false).request)
                            .collect();
                        stream.write_all(&burst).await?;
                    }
                }
                if rng.below(2) == 0 {
                    // Reset rather than FIN.
                    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
                }
                drop(stream);
                tally.aborts.fetch_add(1, Ordering::Relaxed);
                pending.clear();
                stream = connect(addr).await;
            }
        }
    }
    Ok(())
}

/// Runs all clients for `secs`; panics on the first wrong response.
fn run_phase(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    secs: f64,
    files: &Arc<Files>,
    tally: &Arc<Tally>,
    seed: u64,
) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                tokio::spawn(client(
                    addr,
                    seed + i as u64,
                    until,
                    Arc::clone(files),
                    Arc::clone(tally),
                ))
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            if let Err(e) = task.await.expect("client task panicked") {
                panic!("client {i}: {e}");
            }
        }
    });
}

/// Waits (bounded) for the server to close its side of every connection.
fn settle_descriptors(server: &ServerProcess, baseline: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = server.open_descriptors();
        if now <= baseline || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_thousand_connections_of_random_traffic() {
    let chosen = std::env::var("RINGSERVE_STRESS_ENGINES").unwrap_or_default();
    let engines: Vec<EngineKind> = if chosen.is_empty() {
        EngineKind::ALL.to_vec()
    } else {
        chosen
            .split(',')
            .map(|name| name.trim().parse().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    };
    raise_descriptor_limit(2 * CONNECTIONS as u64);
    let (files, dir) = site();
    let files = Arc::new(files);
    for engine in engines {
        eprintln!("--- engine {engine}");
        stress(engine, &dir, &files);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn stress(engine: EngineKind, dir: &Path, files: &Arc<Files>) {
    let secs: f64 = std::env::var("RINGSERVE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS as f64);
    let server = ServerProcess::start(dir, engine);
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let baseline = server.open_descriptors();
    let rss_start = server.rss_bytes();
    let tally = Arc::new(Tally::default());

    run_phase(&runtime, addr, secs / 3.0, files, &tally, 1);
    let after_first = settle_descriptors(&server, baseline);
    let rss_first = server.rss_bytes();
    run_phase(&runtime, addr, secs * 2.0 / 3.0, files, &tally, 1_000_000);
    let after_second = settle_descriptors(&server, baseline);
    let rss_second = server.rss_bytes();

    eprintln!(
        "{engine}: {secs} s, {CONNECTIONS} connections, server flags {:?}: {} responses checked ({} split), {} closes, {} aborts; \
         server descriptors {baseline} → {after_first} → {after_second}; server RSS {} → {} → {} KiB",
        std::env::var("RINGSERVE_STRESS_ARGS").unwrap_or_default(),
        tally.responses.load(Ordering::Relaxed),
        tally.splits.load(Ordering::Relaxed),
        tally.closes.load(Ordering::Relaxed),
        tally.aborts.load(Ordering::Relaxed),
        rss_start / 1024,
        rss_first / 1024,
        rss_second / 1024,
    );
    assert!(
        after_first <= baseline,
        "{engine}: descriptors leaked: {baseline} → {after_first}"
    );
    assert!(
        after_second <= baseline,
        "{engine}: descriptors leaked: {baseline} → {after_second}"
    );
    assert!(
        rss_second <= rss_first + MAX_RSS_GROWTH_BYTES,
        "{engine}: memory grew by {} KiB in the second phase",
        (rss_second - rss_first) / 1024
    );
    assert!(tally.aborts.load(Ordering::Relaxed) > 0 && tally.closes.load(Ordering::Relaxed) > 0);

    // Still serving after all that.
    runtime.block_on(async {
        let mut stream = connect(addr).await;
        let expected = Expected {
            request: b"GET /small.txt HTTP/1.1\r\nHost: stress\r\n\r\n".to_vec(),
            status: 200,
            body: Some("small.txt"),
            head_only: false,
        };
        stream.write_all(&expected.request).await.unwrap();
        read_response(&mut stream, &mut Vec::new(), &expected, files)
            .await
            .unwrap();
    });
    let status = server.stop();
    assert!(status.success(), "{engine}: the server exited with {status}");
}
