//! End-to-end tests of the static-asset semantics (issue 3), run against
//! every engine in `EngineKind::ALL`: ranges, preconditions and encodings
//! over real sockets, `curl -C -` resuming downloads, a large file streamed
//! from disk with the server's memory staying flat, and hot reload under
//! load with every response entirely old or entirely new.
//!
//! The large-file test uses 256 MiB by default; set
//! `RINGSERVE_TEST_LARGE_MIB=1024` for the 1 GiB run.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, ServerConfig};
use ringserve::files::LoadOptions;
use support::{RawClient, TempSite, TestServer, for_each_engine, pattern_bytes, request};

/// The `ringserve` binary, stopped (by PID) on drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(engine: EngineKind, root: &Path, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with_stderr(engine, root, extra, Stdio::inherit())
    }

    /// Like [`ServerProcess::start`], with the server's stderr going to `stderr`.
    fn start_with_stderr(engine: EngineKind, root: &Path, extra: &[&str], stderr: Stdio) -> ServerProcess {
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
            .stderr(stderr)
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

/// A GET of `path` with extra header `fields` on `client`.
fn get(client: &mut RawClient, path: &str, fields: &str) -> support::Response {
    client.request(&request("GET", path, fields))
}

/// One worker serving `root`, files over `max_cached_file_bytes` streamed.
fn serve(engine: EngineKind, root: &Path, max_cached_file_bytes: u64) -> TestServer {
    let options = LoadOptions {
        max_cached_file_bytes,
        ..LoadOptions::new(root)
    };
    TestServer::with_options(ServerConfig::loopback(engine), &options)
}

#[test]
fn ranges_preconditions_and_encodings_on_every_engine() {
    let site = TempSite::new();
    let script: String = (0..400).map(|i| format!("console.log('line {i}');\n")).collect();
    let memory = pattern_bytes(40_000);
    let disk = pattern_bytes(300_000);
    site.write("app.js", script.as_bytes())
        .write("memory.bin", &memory)
        .write("disk.bin", &disk);
    for_each_engine(|engine| {
        let server = serve(engine, site.path(), 100_000);
        let mut client = server.connect();
        for (path, data) in [("/memory.bin", &memory), ("/disk.bin", &disk)] {
            let full = get(&mut client, path, "");
            assert_eq!(full.status, 200, "{path}");
            assert!(full.body == *data, "{path}: whole body");
            let etag = full.expect_header("ETag").to_owned();

            let part = get(&mut client, path, "Range: bytes=1000-34999\r\n");
            assert_eq!(part.status, 206, "{path}");
            assert_eq!(
                part.expect_header("Content-Range"),
                format!("bytes 1000-34999/{}", data.len())
            );
            assert!(part.body == data[1000..35000], "{path}: range");
            let tail = get(&mut client, path, "Range: bytes=-100\r\n");
            assert!(tail.body == data[data.len() - 100..], "{path}: suffix");
            let multi = get(&mut client, path, "Range: bytes=0-9, 20000-20009\r\n");
            assert_eq!(multi.status, 206);
            assert!(
                multi
                    .expect_header("Content-Type")
                    .starts_with("multipart/byteranges")
            );
            let unsatisfiable = get(&mut client, path, &format!("Range: bytes={}-\r\n", data.len()));
            assert_eq!(unsatisfiable.status, 416, "{path}");
            assert_eq!(
                unsatisfiable.expect_header("Content-Range"),
                format!("bytes */{}", data.len())
            );
            let resumed = get(
                &mut client,
                path,
                &format!("Range: bytes=5-\r\nIf-Range: {etag}\r\n"),
            );
            assert_eq!(resumed.status, 206);
            let changed = get(&mut client, path, "Range: bytes=5-\r\nIf-Range: \"changed\"\r\n");
            assert_eq!((changed.status, changed.body.len()), (200, data.len()));

            let not_modified = get(&mut client, path, &format!("If-None-Match: {etag}\r\n"));
            assert_eq!(not_modified.status, 304, "{path}");
            assert_eq!(not_modified.expect_header("ETag"), etag);
            let failed = get(&mut client, path, "If-Match: \"other\"\r\n");
            assert_eq!(failed.status, 412, "{path}");
        }
        let gzip = get(&mut client, "/app.js", "Accept-Encoding: gzip\r\n");
        assert_eq!(gzip.header("Content-Encoding"), Some("gzip"));
        assert_eq!(gzip.header("Vary"), Some("Accept-Encoding"));
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&gzip.body[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert_eq!(decoded, script, "the gzip variant decodes to the file");
        let br = get(
            &mut client,
            "/app.js",
            "Accept-Encoding: gzip, deflate, br, zstd\r\n",
        );
        assert_eq!(br.header("Content-Encoding"), Some("br"));
        assert!(br.body.len() < gzip.body.len() && gzip.body.len() < script.len());
        let plain = get(&mut client, "/app.js", "Accept-Encoding: br;q=0, gzip;q=0\r\n");
        assert_eq!(
            (plain.header("Content-Encoding"), plain.body.len()),
            (None, script.len())
        );
    });
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn curl_resumes_downloads_on_every_engine() {
    assert!(
        curl_available(),
        "curl is required for this test (apt-get install curl)"
    );
    let site = TempSite::new();
    let memory = pattern_bytes(600_000);
    let disk = pattern_bytes(3 * 1024 * 1024 + 17);
    site.write("memory.bin", &memory).write("disk.bin", &disk);
    for_each_engine(|engine| {
        let server = serve(engine, site.path(), 1024 * 1024);
        for (name, data) in [("memory.bin", &memory), ("disk.bin", &disk)] {
            // An interrupted download: the first third is already here.
            let partial = site.path().join(format!("download-{engine}-{name}"));
            std::fs::write(&partial, &data[..data.len() / 3]).unwrap();
            let url = server.url(&format!("/{name}"));
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
                "{name}: curl failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let downloaded = std::fs::read(&partial).unwrap();
            assert_eq!(downloaded.len(), data.len(), "{name}");
            assert!(downloaded == *data, "{name}: the resumed file differs");
            // Resuming a complete file asks for a range past the end: 416,
            // which curl treats as "already complete".
            let output = Command::new("curl")
                .args(["--silent", "--max-time", "60", "-C", "-", "-o"])
                .arg(&partial)
                .args(["--write-out", "%{http_code}"])
                .arg(&url)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&output.stdout), "416", "{name}");
            assert!(std::fs::read(&partial).unwrap() == *data);
            std::fs::remove_file(&partial).unwrap();
        }
    });
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
    assert!(
        curl_available(),
        "curl is required for this test (apt-get install curl)"
    );
    let mib: u64 = std::env::var("RINGSERVE_TEST_LARGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let site = TempSite::new();
    let path = site.path().join("large.bin");
    write_marked_sparse_file(&path, mib << 20);
    for_each_engine(|engine| {
        let server = ServerProcess::start(engine, site.path(), &["--max-cached-file", "4M"]);
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
        assert!(status.success(), "the download differs from the file");
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
        assert_eq!(range.stdout, 134_217_728u64.to_le_bytes(), "range at 128 MiB");
        let peak = server.status_kib("VmHWM");
        let grown_kib = peak.saturating_sub(rss_before);
        eprintln!(
            "{engine}: {mib} MiB in {:.2} s; server RSS {rss_before} KiB before, peak {peak} KiB (+{grown_kib} KiB)",
            elapsed.as_secs_f64()
        );
        assert!(
            grown_kib < 32 * 1024,
            "server memory grew by {grown_kib} KiB while streaming {mib} MiB"
        );
        // And the file was never in memory in the first place.
        assert!(
            peak < 64 * 1024,
            "server peak RSS {peak} KiB with a {mib} MiB file"
        );
    });
}

#[test]
fn reload_under_load_serves_whole_old_or_whole_new_content_on_every_engine() {
    const VERSIONS: [u8; 2] = [b'A', b'B'];
    const RELOADS: usize = 4;
    let site = TempSite::new();
    // One file held in memory, one streamed from disk.
    let files = [("memory.bin", 50_000usize), ("disk.bin", 300_000usize)];
    let write_version = |version: u8| {
        for (name, len) in files {
            // Deploy tools replace files by renaming a complete new one.
            let staging = site.path().join(format!(".{name}.tmp"));
            std::fs::write(&staging, vec![version; len]).unwrap();
            std::fs::rename(&staging, site.path().join(name)).unwrap();
        }
    };
    for_each_engine(|engine| {
        write_version(VERSIONS[0]);
        let server = ServerProcess::start(engine, site.path(), &["--max-cached-file", "100K"]);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), server.addr);
                std::thread::spawn(move || {
                    let mut client = RawClient::connect(addr);
                    let mut count = 0;
                    // Bounded: stops when told, or after 20,000 requests.
                    while !stop.load(Ordering::Relaxed) && count < 20_000 {
                        let (name, len) = files[(count + i) % files.len()];
                        let response = get(&mut client, &format!("/{name}"), "");
                        assert_eq!((response.status, response.body.len()), (200, len), "{name}");
                        let first = response.body[0];
                        let version = VERSIONS
                            .iter()
                            .position(|&v| v == first)
                            .unwrap_or_else(|| panic!("{name}: unknown content {first}"));
                        assert!(
                            response.body.iter().all(|&b| b == first),
                            "{name}: a response mixes two versions"
                        );
                        served[version].fetch_add(1, Ordering::Relaxed);
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        let mut probe = RawClient::connect(server.addr);
        for reload in 1..=RELOADS {
            std::thread::sleep(Duration::from_millis(150));
            let version = VERSIONS[reload % 2];
            write_version(version);
            server.signal(libc::SIGHUP);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !files
                .iter()
                .all(|(name, _)| get(&mut probe, &format!("/{name}"), "").body[0] == version)
            {
                assert!(Instant::now() < deadline, "reload {reload} never became visible");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(Duration::from_millis(150));
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for client in clients {
            total += client.join().unwrap_or_else(|panic| {
                panic!("a client failed: {}", support::panic_message(panic.as_ref()))
            });
        }
        let (old, new) = (
            served[0].load(Ordering::Relaxed),
            served[1].load(Ordering::Relaxed),
        );
        eprintln!("{engine}: {total} responses during {RELOADS} reloads: {old} of A, {new} of B");
        assert!(old > 0 && new > 0, "both versions were served");
    });
}

#[test]
fn memory_budget_and_failed_reloads_are_reported_and_the_old_snapshot_kept() {
    let site = TempSite::new();
    site.write("a.bin", &[b'1'; 10_000]);
    // Over the budget at start: a clear message and a failing exit status.
    let output = Command::new(env!("CARGO_BIN_EXE_ringserve"))
        .args(["--root", site.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--memory-budget", "4K"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("memory budget of 4096 bytes"), "{stderr}");

    let config = site
        .path()
        .join("..")
        .join(format!("ringserve-semantics-{}.toml", std::process::id()));
    std::fs::write(&config, "cache_control = \"max-age=60\"\n").unwrap();
    let log_path = site
        .path()
        .join("..")
        .join(format!("ringserve-semantics-{}.log", std::process::id()));
    for_each_engine(|engine| {
        site.write("a.bin", &[b'1'; 10_000]);
        std::fs::write(&config, "cache_control = \"max-age=60\"\n").unwrap();
        let log = std::fs::File::create(&log_path).unwrap();
        let extra = ["--config", config.to_str().unwrap()];
        let server = ServerProcess::start_with_stderr(engine, site.path(), &extra, Stdio::from(log));
        let mut client = RawClient::connect(server.addr);
        let before = get(&mut client, "/a.bin", "");
        assert_eq!(before.expect_header("Cache-Control"), "max-age=60");

        // A broken config file: the reload fails, the old snapshot stays.
        site.write("a.bin", &[b'2'; 10_000]);
        std::fs::write(&config, "cache_control = \n").unwrap();
        server.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("reload failed")
        {
            assert!(Instant::now() < deadline, "no reload failure was logged");
            std::thread::sleep(Duration::from_millis(10));
        }
        let kept = get(&mut client, "/a.bin", "");
        assert_eq!(
            (kept.body[0], kept.expect_header("Cache-Control")),
            (b'1', "max-age=60")
        );

        // Fixed: the next reload picks up both the file and the config.
        std::fs::write(&config, "cache_control = \"max-age=5\"\n").unwrap();
        server.signal(libc::SIGHUP);
        while get(&mut client, "/a.bin", "").body[0] != b'2' {
            assert!(Instant::now() < deadline, "the fixed reload never became visible");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            get(&mut client, "/a.bin", "").expect_header("Cache-Control"),
            "max-age=5"
        );
    });
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&log_path);
}

/// `--follow-symlinks`: links to files and directories outside the root are
/// served under the link's path; without it they are not; a path that
/// climbs out of the root is still refused either way.
#[test]
fn follow_symlinks_serves_targets_outside_the_root() {
    let site = TempSite::new();
    let outside = TempSite::new();
    site.write("index.html", b"<p>docs</p>");
    outside.write("jquery.js", b"window.jQuery = 1;");
    outside.write("underscore/underscore.js", b"window._ = 1;");
    std::os::unix::fs::symlink(outside.path().join("jquery.js"), site.path().join("jquery.js")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("underscore"), site.path().join("_static")).unwrap();
    let outside_name = outside.path().file_name().unwrap().to_str().unwrap().to_owned();
    for_each_engine(|engine| {
        let config = ServerConfig::loopback(engine);
        let options = LoadOptions {
            follow_symlinks: true,
            ..LoadOptions::new(site.path())
        };
        let server = TestServer::with_options(config.clone(), &options);
        let mut client = server.connect();
        let reply = client.request(&request("GET", "/jquery.js", ""));
        assert_eq!(reply.status, 200, "{}", reply.describe());
        assert_eq!(reply.body, b"window.jQuery = 1;");
        let reply = client.request(&request("GET", "/_static/underscore.js", ""));
        assert_eq!(reply.status, 200, "{}", reply.describe());
        assert_eq!(reply.body, b"window._ = 1;");
        let climb = format!("/../{outside_name}/jquery.js");
        let reply = client.request(&request("GET", &climb, ""));
        assert!(matches!(reply.status, 400 | 404), "{climb}: {}", reply.describe());
        drop(server);

        let server = TestServer::with_options(config, &LoadOptions::new(site.path()));
        let mut client = server.connect();
        assert_eq!(client.request(&request("GET", "/jquery.js", "")).status, 404);
        assert_eq!(
            client
                .request(&request("GET", "/_static/underscore.js", ""))
                .status,
            404
        );
        assert_eq!(client.request(&request("GET", "/", "")).status, 200);
    });
}
