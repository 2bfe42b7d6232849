//! Shared support for the end-to-end tests.
//!
//! What it gives a test:
//! 1. [`for_each_engine`]: runs a test body once per engine in
//!    [`EngineKind::ALL`] (so an engine added there is tested without any
//!    change here) and, if it fails, says on which engine(s);
//! 2. [`TestServer`]: an in-process server on `127.0.0.1:0`, serving the
//!    bundled `static/` site or a [`TempSite`] the test generates, stopped on
//!    drop;
//! 3. [`RawClient`]: raw bytes over a `std::net::TcpStream` with a timeout on
//!    every read and write (a test never hangs), and a small, strict response
//!    reader (status line, CRLF-terminated fields, `Content-Length` body) that
//!    splits pipelined responses exactly;
//! 4. [`Expected`]: what a response must be, field by field, built from the
//!    files on disk, and [`Response::assert_matches`] to check it;
//! 5. [`process::ServerProcess`]: the real binary as a child process.
//!
//! Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod process;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringserve::engine::{EngineKind, Server, ServerConfig, UringOptions};
use ringserve::files::{LoadOptions, Snapshot};

/// Longest any single read, write or connect may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The bundled site, next to the crate.
pub fn static_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("static")
}

/// Runs `test` once for every engine, all of them even if one fails, then
/// fails naming the engines that failed.
pub fn for_each_engine(test: impl Fn(EngineKind)) {
    let mut failures = Vec::new();
    for engine in EngineKind::ALL {
        eprintln!("--- engine {engine}");
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| test(engine))) {
            failures.push(format!("[{engine}] {}", panic_message(payload.as_ref())));
        }
    }
    assert!(
        failures.is_empty(),
        "failed on {} of {} engines:\n{}",
        failures.len(),
        EngineKind::ALL.len(),
        failures.join("\n")
    );
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// A server running in this process; stopped when dropped.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    engine: EngineKind,
    root: PathBuf,
}

impl TestServer {
    /// One worker serving the bundled site.
    pub fn bundled(engine: EngineKind) -> TestServer {
        TestServer::start(ServerConfig::loopback(engine), &static_root())
    }

    /// One worker serving `root`.
    pub fn serving(engine: EngineKind, root: &Path) -> TestServer {
        TestServer::start(ServerConfig::loopback(engine), root)
    }

    pub fn start(config: ServerConfig, root: &Path) -> TestServer {
        TestServer::with_options(config, &LoadOptions::new(root))
    }

    /// A server for a snapshot loaded with `options` (its `root` is served).
    pub fn with_options(config: ServerConfig, options: &LoadOptions) -> TestServer {
        let root = options.root.as_path();
        assert!(
            config.listen.iter().all(|l| l.addr.ip().is_loopback()),
            "tests listen on loopback only"
        );
        let snapshot =
            Snapshot::load(options).unwrap_or_else(|e| panic!("cannot load {}: {e}", root.display()));
        let engine = config.engine;
        let server = Server::start(&config, Arc::new(snapshot))
            .unwrap_or_else(|e| panic!("the {engine} server did not start: {e}"));
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            engine,
            root: root.to_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    /// The running server (its addresses and kinds).
    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the server serves its metrics (`metrics_listen` in its config).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().unwrap().metrics_addr()
    }

    /// Stops the server and waits for it (and its access log) to finish.
    pub fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// Tells the workers to stop (without waiting): they stop accepting, let
    /// responses in flight finish, and close idle connections.
    pub fn trigger_shutdown(&self) {
        self.server.as_ref().unwrap().shutdown_handle().trigger();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn connect(&self) -> RawClient {
        RawClient::connect(self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

/// A directory of generated files under the system temp directory, removed
/// on drop.
pub struct TempSite {
    path: PathBuf,
}

impl TempSite {
    pub fn new() -> TempSite {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "ringserve-e2e-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempSite { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` at `relative`, creating parent directories.
    pub fn write(&self, relative: &str, contents: &[u8]) -> &Self {
        let file = self.path.join(relative);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, contents).unwrap();
        self
    }
}

impl Drop for TempSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `len` bytes in which no short sequence repeats at a regular stride
/// (xorshift64*), so a misplaced, dropped or duplicated chunk is detected.
pub fn pattern_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1 200 OK`, without the CRLF.
    pub status_line: String,
    pub status: u16,
    /// Fields in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the one field called `name`; panics if it appears twice.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "{name} appears more than once: {self:?}");
        first
    }

    pub fn expect_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} field in {}", self.describe()))
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is UTF-8")
    }

    /// The head and the start of the body, for failure messages.
    pub fn describe(&self) -> String {
        let fields: Vec<String> = self.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let preview = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        format!(
            "{}\n{}\n[{} body bytes] {preview:?}",
            self.status_line,
            fields.join("\n"),
            self.body.len()
        )
    }

    /// Checks the `Date` field: present once, an IMF-fixdate, close to now.
    pub fn assert_date_is_now(&self) {
        let value = self.expect_header("Date");
        assert_eq!(value.len(), 29, "Date {value:?} is not an IMF-fixdate");
        assert!(value.ends_with(" GMT"), "Date {value:?} is not an IMF-fixdate");
        let date = httpdate::parse_http_date(value).unwrap_or_else(|e| panic!("Date {value:?}: {e}"));
        let skew = match SystemTime::now().duration_since(date) {
            Ok(behind) => behind,
            Err(ahead) => ahead.duration(),
        };
        assert!(
            skew < Duration::from_secs(60),
            "Date {value:?} is {skew:?} from now"
        );
    }

    /// Checks this response against `expected`: the status line, every field
    /// (order aside; `Date` only for being a current date) and every body byte.
    pub fn assert_matches(&self, expected: &Expected, context: &str) {
        assert_eq!(self.status_line, expected.status_line, "{context}: status line");
        self.assert_date_is_now();
        let mut actual: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .collect();
        actual.sort();
        let mut wanted: Vec<(String, String)> = expected
            .headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .collect();
        wanted.sort();
        assert_eq!(actual, wanted, "{context}: header fields");
        if self.body != expected.body {
            let first_difference = self
                .body
                .iter()
                .zip(&expected.body)
                .position(|(a, b)| a != b)
                .unwrap_or(self.body.len().min(expected.body.len()));
            panic!(
                "{context}: body differs ({} bytes received, {} expected, first difference at byte {first_difference})",
                self.body.len(),
                expected.body.len()
            );
        }
    }
}

/// What a response must be, except for its `Date` value.
#[derive(Debug, Clone)]
pub struct Expected {
    pub status_line: String,
    /// Every field but `Date`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Expected {
    /// `200` for the file at `relative` under `root`, built from the file on
    /// disk (body, length, modification time), the given type and the `ETag`
    /// the server gave it.
    ///
    /// Requests without `Accept-Encoding` get the identity representation;
    /// it carries `Vary: Accept-Encoding` when the server also holds an
    /// encoded variant ([`has_encoded_variant`]). `Cache-Control` is the
    /// default policy: `no-cache` (the tests use no content-hashed names and
    /// no `--cache-control`).
    pub fn file(root: &Path, relative: &str, content_type: &str, etag: &str) -> Expected {
        let path = root.join(relative);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut headers = vec![
            field("Server", "ringserve"),
            field("Content-Type", content_type),
            field("Content-Length", &body.len().to_string()),
            field("Last-Modified", &last_modified(&path)),
            field("ETag", etag),
            field("Accept-Ranges", "bytes"),
            field("Cache-Control", "no-cache"),
        ];
        if has_encoded_variant(content_type, &body) {
            headers.push(field("Vary", "Accept-Encoding"));
        }
        Expected {
            status_line: "HTTP/1.1 200 OK".to_owned(),
            headers,
            body,
        }
    }

    /// The same response to a HEAD request: every field, no body.
    pub fn without_body(&self) -> Expected {
        Expected {
            body: Vec::new(),
            ..self.clone()
        }
    }

    /// `304` for the file at `relative`: validators only (RFC 9110 §15.4.5).
    /// `304` for the file at `relative`: validators only (RFC 9110 §15.4.5),
    /// plus `Cache-Control` and `Vary` as the `200` has them (§15.4.5 requires
    /// both), for a file of type `content_type`.
    pub fn not_modified(root: &Path, relative: &str, content_type: &str, etag: &str) -> Expected {
        let path = root.join(relative);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut headers = vec![
            field("Server", "ringserve"),
            field("Last-Modified", &last_modified(&path)),
            field("ETag", etag),
            field("Cache-Control", "no-cache"),
        ];
        if has_encoded_variant(content_type, &body) {
            headers.push(field("Vary", "Accept-Encoding"));
        }
        Expected {
            status_line: "HTTP/1.1 304 Not Modified".to_owned(),
            headers,
            body: Vec::new(),
        }
    }

    /// What an earlier response was (for pages whose exact body the test does
    /// not spell out), to check that later ones are the same.
    pub fn same_as(response: &Response) -> Expected {
        Expected {
            status_line: response.status_line.clone(),
            headers: response
                .headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
                .cloned()
                .collect(),
            body: response.body.clone(),
        }
    }

    pub fn with_field(mut self, name: &str, value: &str) -> Expected {
        self.headers.push(field(name, value));
        self
    }
}

/// Whether the server keeps a precompressed variant of a file (the README's
/// rule, restated here rather than taken from the server): a compressible
/// type, at least 256 bytes, and gzip at level 6 saves at least 10%. (A file
/// that gzip barely shrinks is not expected to do better with brotli.)
pub fn has_encoded_variant(content_type: &str, body: &[u8]) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let compressible = essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript" | "application/json" | "image/svg+xml" | "application/wasm"
        );
    if !compressible || body.len() < 256 {
        return false;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut encoder, body).unwrap();
    let compressed = encoder.finish().unwrap();
    compressed.len() * 10 <= body.len() * 9
}

fn field(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// `Last-Modified` for a file on disk: its modification time in whole seconds.
pub fn last_modified(path: &Path) -> String {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    let secs = modified.duration_since(UNIX_EPOCH).unwrap().as_secs();
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Checks that an `ETag` is a strong tag (`"` opaque `"`) and returns it.
pub fn assert_strong_etag(response: &Response) -> String {
    let etag = response.expect_header("ETag");
    assert!(
        etag.len() >= 3
            && etag.starts_with('"')
            && etag.ends_with('"')
            && !etag[1..etag.len() - 1].contains('"'),
        "ETag {etag:?} is not a strong entity tag"
    );
    etag.to_owned()
}

/// A client speaking raw bytes over one connection.
pub struct RawClient {
    stream: TcpStream,
    /// Received bytes not yet returned as part of a response.
    pending: Vec<u8>,
    /// Largest read, and the pause after each: a slow reader.
    read_chunk_bytes: usize,
    read_pause: Duration,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        // Each write leaves at once: tests that split requests rely on it.
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            pending: Vec::new(),
            read_chunk_bytes: 64 * 1024,
            read_pause: Duration::ZERO,
        }
    }

    /// Makes this a slow reader: at most `chunk_bytes` per read, then a pause.
    pub fn read_slowly(&mut self, chunk_bytes: usize, pause: Duration) {
        self.read_chunk_bytes = chunk_bytes.clamp(1, 64 * 1024);
        self.read_pause = pause;
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Sends `bytes` one byte per write, pausing between writes so each
    /// really arrives on its own.
    pub fn send_bytewise(&mut self, bytes: &[u8], pause: Duration) {
        for byte in bytes {
            self.stream
                .write_all(std::slice::from_ref(byte))
                .expect("write to the server");
            self.stream.flush().unwrap();
            std::thread::sleep(pause);
        }
    }

    /// Sends one request and reads its response (a HEAD request's response
    /// has no body).
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_response(raw.starts_with(b"HEAD "))
    }

    /// Reads the next response. `to_head` says it answers a HEAD request, so
    /// it has no body whatever its `Content-Length` says.
    pub fn read_response(&mut self, to_head: bool) -> Response {
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(&self.pending, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(
                self.pending.len() < 64 * 1024,
                "a response head larger than 64 KiB"
            );
            if self.fill() == 0 {
                panic!(
                    "connection closed in the middle of a response head after {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        };
        let head = std::str::from_utf8(&self.pending[..head_len - 4])
            .unwrap_or_else(|_| {
                panic!(
                    "a response head that is not UTF-8: {:?}",
                    &self.pending[..head_len]
                )
            })
            .to_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap().to_owned();
        let status = parse_status_line(&status_line);
        let mut headers = Vec::new();
        for line in lines {
            assert!(
                !line.contains('\r') && !line.contains('\n'),
                "a field line with a bare CR or LF: {line:?}"
            );
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("a field line without a colon: {line:?}"));
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                "an invalid field name: {line:?}"
            );
            headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
        }
        self.pending.drain(..head_len);
        let mut response = Response {
            status_line,
            status,
            headers,
            body: Vec::new(),
        };
        let has_body = !to_head && !matches!(status, 100..=199 | 204 | 304);
        if !has_body {
            return response;
        }
        let length: usize = response
            .expect_header("Content-Length")
            .parse()
            .unwrap_or_else(|e| panic!("a bad Content-Length: {e}: {}", response.describe()));
        while self.pending.len() < length {
            if self.fill() == 0 {
                panic!(
                    "connection closed after {} of {length} body bytes: {}",
                    self.pending.len(),
                    response.describe()
                );
            }
        }
        response.body = self.pending.drain(..length).collect();
        response
    }

    /// Reads more bytes into `pending`; returns how many (0 at end of file).
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk[..self.read_chunk_bytes]) {
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    if n > 0 && !self.read_pause.is_zero() {
                        std::thread::sleep(self.read_pause);
                    }
                    return n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "no response within {IO_TIMEOUT:?} ({} bytes pending)",
                        self.pending.len()
                    )
                }
                Err(e) => panic!("read failed: {e} ({} bytes pending)", self.pending.len()),
            }
        }
    }

    /// Checks that the server closed the connection cleanly (end of file,
    /// not a reset) with nothing after the responses already read.
    pub fn expect_closed(&mut self) {
        let n = self.fill();
        assert!(
            n == 0 && self.pending.is_empty(),
            "expected the server to close, got {:?}",
            String::from_utf8_lossy(&self.pending)
        );
    }

    /// Checks that for `wait` the server neither sends anything nor closes.
    pub fn expect_silent_and_open(&mut self, wait: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let outcome = self.stream.peek(&mut byte);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match outcome {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => panic!("the server sent something unasked: {:?}", byte[0] as char),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the connection failed: {e}"),
        }
    }

    /// Closes our sending side (the server sees end of file).
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }
}

fn parse_status_line(line: &str) -> u16 {
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code), Some(reason)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("a malformed status line: {line:?}");
    };
    assert_eq!(version, "HTTP/1.1", "status line {line:?}");
    assert!(!reason.is_empty(), "status line {line:?} has no reason phrase");
    assert!(code.len() == 3, "status line {line:?}");
    code.parse().unwrap_or_else(|_| panic!("status line {line:?}"))
}

/// A request head for `path` (HTTP/1.1, `Host` set), with `extra` fields.
pub fn get(path: &str) -> Vec<u8> {
    request("GET", path, "")
}

pub fn request(method: &str, path: &str, extra_fields: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra_fields}\r\n").into_bytes()
}

/// A ureq agent that returns 4xx/5xx as responses (not errors), never waits
/// longer than [`IO_TIMEOUT`], and does not follow redirects.
pub fn http_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(IO_TIMEOUT))
        .build();
    ureq::Agent::new_with_config(config)
}

/// One scrape of the metrics endpoint at `addr`: every sample, keyed by
/// its name and labels as written (`name{label="value"}`).
pub fn scrape(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    let mut client = RawClient::connect(addr);
    let response = client.request(&get("/metrics"));
    assert_eq!(response.status, 200, "{}", response.describe());
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response
        .body_text()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Connections in state ESTABLISHED whose local port is `port`: the server's
/// side of each open connection (IPv4 loopback, from `/proc/net/tcp`).
pub fn established_server_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

/// Raises the soft limit on open descriptors to at least `wanted` (up to the
/// hard limit); returns the limit in force.
pub fn ensure_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the valid struct we pass.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if limit.rlim_cur >= wanted {
        return limit.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one `rlimit` from the valid struct we pass.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
    raised.rlim_cur
}

/// The `uring` engine's switches, each moved from its default in turn (off,
/// or for splice on), named for the failure message.
pub fn uring_variants(all: UringOptions) -> Vec<(&'static str, UringOptions)> {
    vec![
        ("default", all),
        (
            "no-multishot-recv",
            UringOptions {
                multishot_recv: false,
                ..all
            },
        ),
        (
            "no-buf-ring",
            UringOptions {
                buffer_ring: false,
                multishot_recv: false,
                ..all
            },
        ),
        (
            "no-defer-taskrun",
            UringOptions {
                defer_taskrun: false,
                ..all
            },
        ),
        (
            "no-batch",
            UringOptions {
                batch_sends: false,
                ..all
            },
        ),
        ("splice", UringOptions { splice: true, ..all }),
        (
            "no-link-close",
            UringOptions {
                link_close: false,
                ..all
            },
        ),
    ]
}
