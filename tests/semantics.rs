//! End-to-end tests of the static-asset semantics (issue 3), run against
//! every engine in `EngineKind::ALL`: ranges, preconditions and encodings
//! over real sockets, `curl -C -` resuming downloads, a large file streamed
//! from disk with the server's memory staying flat, and hot reload under
//! load with every response entirely old or entirely new.
//!
//! The large-file test uses 256 MiB by default; set
//! `RINGSERVE_TEST_LARGE_MIB=1024` for the 1 GiB run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, Server, ServerConfig};
use ringserve::files::{LoadOptions, Snapshot};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, removed on drop.
struct TempRoot(PathBuf);

impl TempRoot {
    fn new(name: &str) -> TempRoot {
        let dir = std::env::temp_dir().join(format!("ringserve-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempRoot(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `ringserve` binary, stopped (by PID) on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(engine: EngineKind, root: &Path, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringserve"))
            .args([
                "--root",
                root.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
            ])
            .args(["--engine", engine.name(), "--no-pin"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the ringserve binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected start line: {line:?}");
        };
        ServerProcess { child, addr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) reads no memory of ours; the PID is our own child,
        // not yet reaped (we reap it only in drop).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: as in `signal`: our own, unreaped child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response read off a keep-alive connection.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A minimal HTTP/1.1 client: keep-alive, `Content-Length` framing (all this
/// server sends), so the exact bytes can be checked.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn request(&mut self, method: &str, path: &str, fields: &str) -> std::io::Result<Response> {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{fields}\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut head = String::new();
        loop {
            let before = head.len();
            if self.reader.read_line(&mut head)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if head[before..] == *"\r\n" {
                break;
            }
        }
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut response = Response {
            status,
            head,
            body: Vec::new(),
        };
        let length: usize = response
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        if method != "HEAD" && status != 304 {
            response.body.resize(length, 0);
            self.reader.read_exact(&mut response.body)?;
        }
        Ok(response)
    }

    fn get(&mut self, path: &str, fields: &str) -> Response {
        self.request("GET", path, fields).unwrap()
    }
}

fn start_in_process(engine: EngineKind, options: &LoadOptions) -> Server {
    let snapshot = Snapshot::load(options).unwrap();
    Server::start(&ServerConfig::loopback(engine), Arc::new(snapshot))
        .unwrap_or_else(|e| panic!("{engine}: {e}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn ranges_preconditions_and_encodings_on_every_engine() {
    let root = TempRoot::new("semantics");
    let script: String = (0..400).map(|i| format!("console.log('line {i}');\n")).collect();
    std::fs::write(root.path().join("app.js"), &script).unwrap();
    let memory = pattern(40_000, 0);
    let disk = pattern(300_000, 7);
    std::fs::write(root.path().join("memory.bin"), &memory).unwrap();
    std::fs::write(root.path().join("disk.bin"), &disk).unwrap();
    let options = LoadOptions {
        max_cached_file_bytes: 100_000,
        ..LoadOptions::new(root.path())
    };
    for engine in EngineKind::ALL {
        let server = start_in_process(engine, &options);
        let mut client = Client::connect(server.local_addr());
        for (path, data) in [("/memory.bin", &memory), ("/disk.bin", &disk)] {
            let full = client.get(path, "");
            assert_eq!(full.status, 200, "{engine} {path}");
            assert!(full.body == *data, "{engine} {path}: whole body");
            let etag = full.header("etag").unwrap().to_owned();

            let part = client.get(path, "Range: bytes=1000-34999\r\n");
            assert_eq!(part.status, 206, "{engine} {path}");
            assert_eq!(part.body, data[1000..35000], "{engine} {path}: range");
            let tail = client.get(path, "Range: bytes=-100\r\n");
            assert_eq!(tail.body, data[data.len() - 100..], "{engine} {path}: suffix");
            let multi = client.get(path, "Range: bytes=0-9, 20000-20009\r\n");
            assert_eq!(multi.status, 206);
            assert!(
                multi
                    .header("content-type")
                    .unwrap()
                    .starts_with("multipart/byteranges")
            );
            let unsatisfiable = client.get(path, &format!("Range: bytes={}-\r\n", data.len()));
            assert_eq!(unsatisfiable.status, 416, "{engine} {path}");
            assert_eq!(
                unsatisfiable.header("content-range"),
                Some(&*format!("bytes */{}", data.len()))
            );
            let resumed = client.get(path, &format!("Range: bytes=5-\r\nIf-Range: {etag}\r\n"));
            assert_eq!(resumed.status, 206);
            let changed = client.get(path, "Range: bytes=5-\r\nIf-Range: \"changed\"\r\n");
            assert_eq!((changed.status, changed.body.len()), (200, data.len()));

            let not_modified = client.get(path, &format!("If-None-Match: {etag}\r\n"));
            assert_eq!(not_modified.status, 304, "{engine} {path}");
            assert_eq!(not_modified.header("etag"), Some(&*etag));
            let failed = client.get(path, "If-Match: \"other\"\r\n");
            assert_eq!(failed.status, 412, "{engine} {path}");
        }
        let gzip = client.get("/app.js", "Accept-Encoding: gzip\r\n");
        assert_eq!(gzip.header("content-encoding"), Some("gzip"), "{engine}");
        assert_eq!(gzip.header("vary"), Some("Accept-Encoding"));
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&gzip.body[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, script, "{engine}: gzip variant decodes to the file");
        let br = client.get("/app.js", "Accept-Encoding: gzip, deflate, br, zstd\r\n");
        assert_eq!(br.header("content-encoding"), Some("br"));
        assert!(br.body.len() < gzip.body.len() && gzip.body.len() < script.len());
        let plain = client.get("/app.js", "Accept-Encoding: br;q=0, gzip;q=0\r\n");
        assert_eq!(
            (plain.header("content-encoding"), plain.body.len()),
            (None, script.len())
        );
        drop(client);
        server.stop();
    }
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn curl_resumes_downloads_on_every_engine() {
    if !curl_available() {
        panic!("curl is required for this test (apt-get install curl)");
    }
    let root = TempRoot::new("curl-resume");
    let memory = pattern(600_000, 1);
    let disk = pattern(3 * 1024 * 1024 + 17, 2);
    std::fs::write(root.path().join("memory.bin"), &memory).unwrap();
    std::fs::write(root.path().join("disk.bin"), &disk).unwrap();
    let options = LoadOptions {
        max_cached_file_bytes: 1024 * 1024,
        ..LoadOptions::new(root.path())
    };
    for engine in EngineKind::ALL {
        let server = start_in_process(engine, &options);
        for (name, data) in [("memory.bin", &memory), ("disk.bin", &disk)] {
            // An interrupted download: the first third is already here.
            let partial = root.path().join(format!("download-{engine}-{name}"));
            std::fs::write(&partial, &data[..data.len() / 3]).unwrap();
            let url = format!("http://{}/{name}", server.local_addr());
            let output = Command::new("curl")
                .args([
                    "--silent",
                    "--show-error",
                    "--fail",
                    "--max-time",
                    "60",
                    "-C",
                    "-",
                    "-o",
                ])
                .arg(&partial)
                .arg(&url)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{engine} {name}: curl failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let downloaded = std::fs::read(&partial).unwrap();
            assert_eq!(downloaded.len(), data.len(), "{engine} {name}");
            assert!(downloaded == *data, "{engine} {name}: resumed file differs");
            // Resuming a complete file asks for a range past the end: 416,
            // which curl treats as "already complete".
            let output = Command::new("curl")
                .args(["--silent", "--max-time", "60", "-C", "-", "-o"])
                .arg(&partial)
                .args(["--write-out", "%{http_code}"])
                .arg(&url)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&output.stdout), "416", "{engine} {name}");
            assert!(std::fs::read(&partial).unwrap() == *data);
            std::fs::remove_file(&partial).unwrap();
        }
        server.stop();
    }
}

/// A sparse file of `len` bytes with its offset written every 64 KiB, so a
/// chunk sent twice, skipped or out of order cannot go unnoticed; cheap to
/// create whatever its size.
fn write_marked_sparse_file(path: &Path, len: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(len).unwrap();
    let mut offset = 0;
    while offset + 8 <= len {
        file.write_all_at(&offset.to_le_bytes(), offset).unwrap();
        offset += 64 * 1024;
    }
}

#[test]
fn a_large_file_streams_intact_with_flat_memory_on_every_engine() {
    if !curl_available() {
        panic!("curl is required for this test (apt-get install curl)");
    }
    let mib: u64 = std::env::var("RINGSERVE_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let root = TempRoot::new("large");
    let path = root.path().join("large.bin");
    write_marked_sparse_file(&path, mib << 20);
    for engine in EngineKind::ALL {
        let server = ServerProcess::start(engine, root.path(), &["--max-cached-file", "4M"]);
        let rss_before = server.status_kib("VmRSS");
        let started = Instant::now();
        // Compare on the fly: nothing of the size of the file is held anywhere.
        let compare = format!(
            "curl --silent --show-error --fail --max-time 300 '{}' | cmp - '{}'",
            server.url("/large.bin"),
            path.display()
        );
        let status = Command::new("sh").args(["-c", &compare]).status().unwrap();
        let elapsed = started.elapsed();
        assert!(status.success(), "{engine}: the download differs from the file");
        // A range deep inside the file.
        let range = Command::new("curl")
            .args([
                "--silent",
                "--fail",
                "--max-time",
                "60",
                "-r",
                "134217728-134217735",
            ])
            .arg(server.url("/large.bin"))
            .output()
            .unwrap();
        assert_eq!(
            range.stdout,
            134_217_728u64.to_le_bytes(),
            "{engine}: range at 128 MiB"
        );
        let peak = server.status_kib("VmHWM");
        let grown_kib = peak.saturating_sub(rss_before);
        eprintln!(
            "{engine}: {mib} MiB in {:.2} s; server RSS {rss_before} KiB before, peak {peak} KiB (+{grown_kib} KiB)",
            elapsed.as_secs_f64()
        );
        assert!(
            grown_kib < 32 * 1024,
            "{engine}: server memory grew by {grown_kib} KiB while streaming {mib} MiB"
        );
        // And the file was never in memory in the first place.
        assert!(
            peak < 64 * 1024,
            "{engine}: server peak RSS {peak} KiB with a {mib} MiB file"
        );
    }
}

#[test]
fn reload_under_load_serves_whole_old_or_whole_new_content_on_every_engine() {
    const VERSIONS: [u8; 2] = [b'A', b'B'];
    const RELOADS: usize = 4;
    let root = TempRoot::new("reload");
    // One file held in memory, one streamed from disk.
    let files = [("memory.bin", 50_000usize), ("disk.bin", 300_000usize)];
    let write_version = |version: u8| {
        for (name, len) in files {
            // Deploy tools replace files by renaming a complete new one.
            let staging = root.path().join(format!(".{name}.tmp"));
            std::fs::write(&staging, vec![version; len]).unwrap();
            std::fs::rename(&staging, root.path().join(name)).unwrap();
        }
    };
    for engine in EngineKind::ALL {
        write_version(VERSIONS[0]);
        let server = ServerProcess::start(engine, root.path(), &["--max-cached-file", "100K"]);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), server.addr);
                std::thread::spawn(move || -> Result<usize, String> {
                    let mut client = Client::connect(addr);
                    let mut count = 0;
                    // Bounded: stops when told, or after 20,000 requests.
                    while !stop.load(Ordering::Relaxed) && count < 20_000 {
                        let (name, len) = files[(count + i) % files.len()];
                        let response = client
                            .request("GET", &format!("/{name}"), "")
                            .map_err(|e| format!("request {count} for {name}: {e}"))?;
                        if response.status != 200 || response.body.len() != len {
                            return Err(format!(
                                "{name}: status {} length {}",
                                response.status,
                                response.body.len()
                            ));
                        }
                        let first = response.body[0];
                        let Some(version) = VERSIONS.iter().position(|&v| v == first) else {
                            return Err(format!("{name}: unknown content {first}"));
                        };
                        if response.body.iter().any(|&b| b != first) {
                            return Err(format!("{name}: a response mixes two versions"));
                        }
                        served[version].fetch_add(1, Ordering::Relaxed);
                        count += 1;
                    }
                    Ok(count)
                })
            })
            .collect();
        let mut probe = Client::connect(server.addr);
        for reload in 1..=RELOADS {
            std::thread::sleep(Duration::from_millis(150));
            let version = VERSIONS[reload % 2];
            write_version(version);
            server.signal(libc::SIGHUP);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let both = files
                    .iter()
                    .all(|(name, _)| probe.get(&format!("/{name}"), "").body[0] == version);
                if both {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{engine}: reload {reload} never became visible"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for client in clients {
            total += client.join().unwrap().unwrap_or_else(|e| panic!("{engine}: {e}"));
        }
        let (old, new) = (
            served[0].load(Ordering::Relaxed),
            served[1].load(Ordering::Relaxed),
        );
        eprintln!("{engine}: {total} responses during {RELOADS} reloads: {old} of A, {new} of B");
        assert!(old > 0 && new > 0, "{engine}: both versions were served");
    }
}
