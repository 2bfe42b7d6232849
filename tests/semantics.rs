//! End-to-end tests of the static-asset semantics (issue 3), run against
//! every engine in `EngineKind::ALL`: ranges, preconditions and encodings
//! over real sockets, `curl -C -` resuming downloads, a large file streamed
//! from disk with the server's memory staying flat, and hot reload under
//! load with every response entirely old or entirely new, the two stages of
//! a load (identity while the variants are built in the background, the
//! variant after; a reload during the background stage never brings back an
//! older tree or a half-built one), and a memory budget that is not strict.
//!
//! The large-file test uses 256 MiB by default; set
//! `RINGSERVE_TEST_LARGE_MIB=1024` for the 1 GiB run.

mod support;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringserve::engine::{EngineKind, ServerConfig};
use ringserve::files::LoadOptions;
use support::process::ServerProcess;
use support::{RawClient, TempSite, TestServer, for_each_engine, pattern_bytes, request};

/// The `ringserve` binary on `root` with `extra` arguments.
fn start_server(engine: EngineKind, root: &Path, extra: &[&str]) -> ServerProcess {
    start_server_with_stderr(engine, root, extra, Stdio::inherit())
}

/// Like [`start_server`], with the server's stderr going to `stderr`.
fn start_server_with_stderr(engine: EngineKind, root: &Path, extra: &[&str], stderr: Stdio) -> ServerProcess {
    let mut command = ServerProcess::command(engine, root);
    command.args(extra).stderr(stderr);
    ServerProcess::spawn(command, "http")
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
        let server = start_server(engine, site.path(), &["--max-cached-file", "4M"]);
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
        let server = start_server(engine, site.path(), &["--max-cached-file", "100K"]);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let (stop, served, addr) = (Arc::clone(&stop), Arc::clone(&served), server.addr());
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
        let mut probe = RawClient::connect(server.addr());
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
    // Over a strict budget at start: a clear message and a failing exit status.
    let output = Command::new(env!("CARGO_BIN_EXE_ringserve"))
        .args(["--root", site.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--memory-budget", "4K", "--memory-budget-strict"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("memory budget of 4096 bytes"), "{stderr}");

    // Over a budget that is not strict: it starts, serves the file from
    // disk, and says so.
    let budget_log = site
        .path()
        .join("..")
        .join(format!("ringserve-budget-{}.log", std::process::id()));
    for_each_engine(|engine| {
        let log = std::fs::File::create(&budget_log).unwrap();
        let extra = ["--memory-budget", "4K"];
        let server = start_server_with_stderr(engine, site.path(), &extra, Stdio::from(log));
        let mut client = RawClient::connect(server.addr());
        let response = get(&mut client, "/a.bin", "");
        assert_eq!((response.status, response.body.len()), (200, 10_000));
        let stderr = std::fs::read_to_string(&budget_log).unwrap();
        assert!(
            stderr.contains("does not fit the memory budget of 4096 bytes") && stderr.contains("from disk"),
            "{stderr}"
        );
    });
    let _ = std::fs::remove_file(&budget_log);

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
        let server = start_server_with_stderr(engine, site.path(), &extra, Stdio::from(log));
        let mut client = RawClient::connect(server.addr());
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

/// A script that compresses well: its variants are built by the background stage.
fn script_of(version: &str) -> String {
    (0..600)
        .map(|i| format!("export function {version}{i}(a) {{ return a + {i}; }}\n"))
        .collect()
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut decoded)
        .expect("a whole gzip stream");
    decoded
}

/// Waits until the server's log (`log_path`) has `count` lines containing `needle`.
fn wait_for_log(log_path: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(log_path).unwrap().matches(needle).count() < count {
        assert!(Instant::now() < deadline, "no {needle:?} in the log");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn identity_is_served_during_the_background_stage_and_the_variant_after_it_on_every_engine() {
    let site = TempSite::new();
    let script = script_of("f");
    site.write("app.js", script.as_bytes());
    let log_path = site.path().with_extension("stage.log");
    for_each_engine(|engine| {
        let log = std::fs::File::create(&log_path).unwrap();
        // The background stage is held back until the first reload request.
        let extra = ["--test-variants-delay-ms", "600000"];
        let server = start_server_with_stderr(engine, site.path(), &extra, Stdio::from(log));
        let mut client = RawClient::connect(server.addr());
        let during = get(&mut client, "/app.js", "Accept-Encoding: gzip, br\r\n");
        assert_eq!(during.status, 200);
        assert_eq!(
            during.header("Content-Encoding"),
            None,
            "identity until the variants exist"
        );
        assert!(during.body == script.as_bytes(), "the whole file");
        assert_eq!(during.expect_header("Content-Length"), script.len().to_string());
        assert_eq!(
            during.header("Vary"),
            Some("Accept-Encoding"),
            "the Vary the file will have, from the first response"
        );
        let identity_etag = support::assert_strong_etag(&during);
        let revalidated = get(
            &mut client,
            "/app.js",
            &format!("If-None-Match: {identity_etag}\r\n"),
        );
        assert_eq!(revalidated.status, 304);

        server.signal(libc::SIGHUP);
        wait_for_log(&log_path, "variants ready", 1);
        let after = get(&mut client, "/app.js", "Accept-Encoding: gzip\r\n");
        assert_eq!(after.header("Content-Encoding"), Some("gzip"));
        assert_eq!(after.header("Vary"), Some("Accept-Encoding"));
        assert_eq!(gunzip(&after.body), script.as_bytes());
        assert_ne!(
            support::assert_strong_etag(&after),
            identity_etag,
            "a tag of its own"
        );
        let plain = get(&mut client, "/app.js", "");
        assert_eq!(
            (plain.header("Content-Encoding"), plain.expect_header("ETag")),
            (None, identity_etag.as_str()),
            "identity keeps its validator across the swap"
        );
    });
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn a_reload_during_the_background_stage_exposes_no_half_built_snapshot_on_every_engine() {
    let site = TempSite::new();
    let names = ["a.js", "b.js", "c.js"];
    let write_version = |version: &str| {
        for name in names {
            let staging = site.path().join(format!(".{name}.tmp"));
            std::fs::write(&staging, script_of(&format!("{version}{}", &name[..1]))).unwrap();
            std::fs::rename(&staging, site.path().join(name)).unwrap();
        }
    };
    let log_path = site.path().with_extension("race.log");
    for_each_engine(|engine| {
        write_version("old");
        let log = std::fs::File::create(&log_path).unwrap();
        let extra = ["--test-variants-delay-ms", "600000"];
        let server = start_server_with_stderr(engine, site.path(), &extra, Stdio::from(log));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|i| {
                let (stop, addr) = (Arc::clone(&stop), server.addr());
                std::thread::spawn(move || {
                    let mut client = RawClient::connect(addr);
                    let mut seen_new = [false; 3];
                    let mut count = 0usize;
                    while !stop.load(Ordering::Relaxed) && count < 50_000 {
                        let which = (count + i) % 3;
                        let name = ["a.js", "b.js", "c.js"][which];
                        let coding = ["", "Accept-Encoding: gzip\r\n"][count % 2];
                        let response = get(&mut client, &format!("/{name}"), coding);
                        assert_eq!(response.status, 200, "{name}");
                        assert_eq!(response.header("Vary"), Some("Accept-Encoding"), "{name}");
                        let body = match response.header("Content-Encoding") {
                            Some("gzip") => gunzip(&response.body),
                            None => response.body.clone(),
                            Some(other) => panic!("{name}: {other}"),
                        };
                        let letter = &name[..1];
                        let is_new = body == script_of(&format!("new{letter}")).as_bytes();
                        let is_old = body == script_of(&format!("old{letter}")).as_bytes();
                        assert!(is_new || is_old, "{name}: a body of neither version");
                        assert!(!(seen_new[which] && is_old), "{name}: the old tree came back");
                        seen_new[which] |= is_new;
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // The deploy lands while the first background stage has not finished.
        write_version("new");
        server.signal(libc::SIGHUP);
        wait_for_log(&log_path, "reloaded", 1);
        wait_for_log(&log_path, "variants ready", 1);
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap_or_else(|panic| {
                panic!("a client failed: {}", support::panic_message(panic.as_ref()))
            });
        }
        let mut client = RawClient::connect(server.addr());
        for name in names {
            let response = get(&mut client, &format!("/{name}"), "Accept-Encoding: gzip\r\n");
            assert_eq!(response.header("Content-Encoding"), Some("gzip"), "{name}");
            let expected = script_of(&format!("new{}", &name[..1]));
            assert_eq!(gunzip(&response.body), expected.as_bytes(), "{name}");
        }
    });
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn reloads_of_an_unchanged_tree_do_not_grow_memory_on_every_engine() {
    const RELOADS: usize = 10;
    const FILES: usize = 3000;
    let site = TempSite::new();
    for i in 0..FILES {
        // 16 KiB of noise each: about 47 MiB that no variant shrinks.
        let mut body = pattern_bytes(16 * 1024);
        body[..8].copy_from_slice(&(i as u64).to_le_bytes());
        site.write(&format!("d{}/f{i}.bin", i % 30), &body);
    }
    let log_path = site.path().with_extension("rss.log");
    for_each_engine(|engine| {
        let log = std::fs::File::create(&log_path).unwrap();
        let server = start_server_with_stderr(engine, site.path(), &[], Stdio::from(log));
        // Serve once, so that every worker holds the snapshot, then stay idle.
        let mut client = RawClient::connect(server.addr());
        assert_eq!(get(&mut client, "/d0/f0.bin", "").status, 200);
        drop(client);
        std::thread::sleep(Duration::from_millis(1500));
        let first = server.status_kib("VmRSS");
        for reload in 1..=RELOADS {
            server.signal(libc::SIGHUP);
            wait_for_log(&log_path, "reloaded", reload);
        }
        // Idle workers let go of replaced snapshots within a second.
        std::thread::sleep(Duration::from_millis(1500));
        let after = server.status_kib("VmRSS");
        eprintln!("{engine}: RSS {first} KiB after the load, {after} KiB after {RELOADS} reloads");
        // Generous: one more copy of the content would be about 48,000 KiB.
        assert!(
            after <= first + first / 4 + 8 * 1024,
            "RSS grew from {first} KiB to {after} KiB over {RELOADS} reloads"
        );
    });
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
