//! Rules that only the whole process can show, tested on the `ringserve`
//! binary for every engine in `EngineKind::ALL`: graceful shutdown on
//! SIGTERM (and a second signal exiting at once), accept back-off when
//! descriptors run out (counted in the metrics) and recovery when they free
//! up, no descriptor left behind by aborted downloads, and an access log
//! that never stops serving.
//!
//! Every child runs on `127.0.0.1:0` and is killed by PID when its test ends,
//! also when the test fails.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringserve::engine::EngineKind;

const BIG_BYTES: usize = 16 * 1024 * 1024;

fn site() -> PathBuf {
    use std::sync::OnceLock;
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("ringserve-process-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("book.json"), "{\"title\":\"x\"}").unwrap();
        std::fs::write(root.join("big.bin"), vec![b'b'; BIG_BYTES]).unwrap();
        root
    })
    .clone()
}

/// A running `ringserve` child; killed (by PID) when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    stdout: Option<BufReader<ChildStdout>>,
    stderr: Option<BufReader<ChildStderr>>,
    /// What [`Process::stderr_line`] already read.
    stderr_seen: String,
}

impl Process {
    /// Starts the binary with `args` (after `--root`, `--listen`, `--engine`,
    /// `--workers 1`); `max_files` lowers RLIMIT_NOFILE for it alone.
    fn start(engine: EngineKind, args: &[&str], max_files: Option<u32>) -> Process {
        let binary = env!("CARGO_BIN_EXE_ringserve");
        let mut command = match max_files {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                sh
            }
            None => Command::new(binary),
        };
        command
            .args([
                "--root",
                site().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--no-pin",
            ])
            .args(["--engine", engine.name()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("no address in the start line: {line:?}")
            });
        let stderr = child.stderr.take().map(BufReader::new);
        Process {
            child,
            addr,
            stdout: Some(stdout),
            stderr,
            stderr_seen: String::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes two integers; the PID is our own child, not
        // yet reaped (we hold its `Child`), so it names no other process.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill failed");
    }

    /// Waits up to `limit` for the child to exit.
    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// User + system CPU time of the child so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    fn stderr_text(&mut self) -> String {
        let mut text = std::mem::take(&mut self.stderr_seen);
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }

    /// Reads stderr up to the first line containing `needle` (the start
    /// lines come at once); the lines stay part of [`Self::stderr_text`].
    fn stderr_line(&mut self, needle: &str) -> String {
        let stderr = self.stderr.as_mut().expect("stderr not yet read to the end");
        loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "no {needle:?} on stderr"
            );
            self.stderr_seen.push_str(&line);
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The address of the metrics listener (`--metrics-listen`).
    fn metrics_addr(&mut self) -> SocketAddr {
        let line = self.stderr_line("metrics on http://");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next());
        addr.and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `test` for every engine, in parallel, all of them even if one fails.
fn for_each_engine(test: impl Fn(EngineKind) + Sync) {
    let test = &test;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = EngineKind::ALL
            .into_iter()
            .map(|engine| (engine, scope.spawn(move || test(engine))))
            .collect();
        handles
            .into_iter()
            .filter_map(|(engine, handle)| {
                handle.join().err().map(|e| {
                    let text = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    format!("[{engine}] {text}")
                })
            })
            .collect()
    });
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}

/// Sends a GET and reads the whole response; returns status and body length.
fn get(stream: &mut TcpStream, path: &str) -> (u16, usize) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    read_response(stream)
}

fn read_response(stream: &mut TcpStream) -> (u16, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("response head");
        assert_eq!(n, 1, "stream ended inside a head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; 256 * 1024];
    let mut remaining = length;
    while remaining > 0 {
        let n = stream.read(&mut body[..remaining.min(256 * 1024)]).expect("body");
        assert!(n > 0, "stream ended inside a body ({remaining} bytes short)");
        remaining -= n;
    }
    (status, length)
}

/// A client socket with a small receive buffer, so a large response stays
/// in flight on the server until the client reads.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[test]
fn sigterm_stops_accepting_finishes_in_flight_responses_and_exits_0() {
    for_each_engine(|engine| {
        let mut server = Process::start(engine, &["--shutdown-grace-ms", "10000"], None);
        let mut downloading = small_window_client(server.addr);
        downloading
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        server.signal(libc::SIGTERM);
        let started = Instant::now();
        while !refused(server.addr) {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "still accepting after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The response in flight completes in full.
        assert_eq!(read_response(&mut downloading), (200, BIG_BYTES));
        let status = server
            .wait_for_exit(Duration::from_secs(5))
            .expect("exits after the drain");
        assert_eq!(status.code(), Some(0));
        let mut rest = String::new();
        server.stdout.take().unwrap().read_to_string(&mut rest).unwrap();
        assert_eq!(
            rest, "",
            "nothing but the start line on stdout: the access log is off by default"
        );
    });
}

#[test]
fn the_grace_period_ends_stuck_responses_and_exits_0() {
    for_each_engine(|engine| {
        let mut server = Process::start(engine, &["--shutdown-grace-ms", "300"], None);
        let mut stuck = small_window_client(server.addr);
        stuck
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        server.signal(libc::SIGTERM);
        let status = server
            .wait_for_exit(Duration::from_secs(5))
            .expect("exits once the grace period is over");
        assert_eq!(status.code(), Some(0));
    });
}

#[test]
fn a_second_signal_exits_at_once() {
    for_each_engine(|engine| {
        let mut server = Process::start(engine, &["--shutdown-grace-ms", "60000"], None);
        let mut stuck = small_window_client(server.addr);
        stuck
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        server.signal(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "waits for the stuck response"
        );
        server.signal(libc::SIGINT);
        let status = server
            .wait_for_exit(Duration::from_secs(2))
            .expect("exits at once");
        assert_eq!(status.code(), Some(130));
    });
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_service_resumes() {
    const MAX_FILES: u32 = 64;
    for_each_engine(|engine| {
        let mut server = Process::start(engine, &["--metrics-listen", "127.0.0.1:0"], Some(MAX_FILES));
        let metrics = server.metrics_addr();
        // Fill the descriptor table with served keep-alive connections; the
        // ones beyond it stay in the listen backlog.
        let mut held = Vec::new();
        let mut waiting = Vec::new();
        for _ in 0..MAX_FILES + 16 {
            let mut stream = server.connect();
            stream
                .write_all(b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(1) => held.push(stream),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    waiting.push(stream)
                }
                other => panic!("unexpected: {other:?}"),
            }
            if waiting.len() >= 3 {
                break;
            }
        }
        assert!(!waiting.is_empty(), "the limit was never reached");
        assert!(held.len() > 10, "only {} connections served", held.len());
        // Out of descriptors, the worker must not spin: it pauses and retries.
        let ticks_before = server.cpu_ticks();
        std::thread::sleep(Duration::from_millis(1000));
        let ticks = server.cpu_ticks() - ticks_before;
        // SAFETY: sysconf(3) takes an integer and reads no memory of ours.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(
            ticks < ticks_per_second / 2,
            "busy while out of descriptors: {ticks} ticks in 1 s"
        );
        assert!(server.child.try_wait().unwrap().is_none(), "the server died");
        // Free descriptors: the waiting clients are served, and new ones too.
        held.clear();
        for mut stream in waiting {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(read_response(&mut stream).0, 200);
        }
        let mut fresh = server.connect();
        assert_eq!(get(&mut fresh, "/book").0, 200);
        let backoffs = scrape_value(metrics, "ringserve_accept_backoffs_total");
        assert!(backoffs >= 1.0, "the pauses are counted: {backoffs}");
        let stderr = {
            server.signal(libc::SIGTERM);
            server.wait_for_exit(Duration::from_secs(5)).expect("exits");
            server.stderr_text()
        };
        assert!(stderr.contains("accept failed"), "{stderr}");
        assert!(
            stderr.matches("accept failed").count() <= 2,
            "reported once per episode:\n{stderr}"
        );
        assert!(stderr.contains("accepting again"), "{stderr}");
    });
}

#[test]
fn aborted_downloads_leave_no_descriptor_behind() {
    for_each_engine(|engine| {
        let server = Process::start(engine, &[], None);
        let mut warm = server.connect();
        assert_eq!(get(&mut warm, "/book").0, 200);
        drop(warm);
        std::thread::sleep(Duration::from_millis(100));
        let baseline = server.open_descriptors();
        for _ in 0..500 {
            let mut stream = small_window_client(server.addr);
            stream
                .write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            let mut some = [0u8; 16 * 1024];
            stream.read_exact(&mut some).unwrap();
            // Reset, not FIN: the client vanishes mid-response.
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(stream);
        }
        let started = Instant::now();
        let mut open = server.open_descriptors();
        while open > baseline && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
            open = server.open_descriptors();
        }
        assert_eq!(
            open, baseline,
            "descriptors left open after 500 aborted downloads"
        );
        let mut after = server.connect();
        assert_eq!(get(&mut after, "/book").0, 200);
    });
}

/// The value of one sample (`name{labels}` as written) in a scrape of `addr`.
fn scrape_value(addr: SocketAddr, series: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

fn wait_for_file(path: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || started.elapsed() > Duration::from_secs(5) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_access_log_writes_json_lines_to_a_file() {
    for_each_engine(|engine| {
        let path = std::env::temp_dir().join(format!("ringserve-access-{}-{engine}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut server = Process::start(
            engine,
            &[
                "--access-log",
                path.to_str().unwrap(),
                "--access-log-format",
                "json",
            ],
            None,
        );
        let mut stream = server.connect();
        stream
            .write_all(b"GET /book HTTP/1.1\r\nHost: a\r\nUser-Agent: probe/1\r\nReferer: http://r/\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut stream).0, 200);
        assert_eq!(get(&mut stream, "/missing").0, 404);
        // Handed over 100 ms after the first waiting line, while the server
        // keeps running and gets no further traffic (an idle worker still
        // wakes up for it).
        let text = wait_for_file(&path, "/missing");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("{\"time\":\""), "{}", lines[0]);
        // RFC 3339 with milliseconds: "2026-12-03T12:34:56.789Z".
        let time = &lines[0][9..33];
        assert!(
            time.as_bytes()[19] == b'.'
                && time.ends_with('Z')
                && time[20..23].bytes().all(|b| b.is_ascii_digit()),
            "{time}"
        );
        assert!(
            lines[0].contains(
                "\"remote\":\"127.0.0.1\",\"method\":\"GET\",\"target\":\"/book\",\"protocol\":\"HTTP/1.1\",\
                 \"status\":200,\"bytes\":13,\"referer\":\"http://r/\",\"user_agent\":\"probe/1\"}"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("\"target\":\"/missing\""), "{}", lines[1]);
        assert!(lines[1].contains("\"status\":404"), "{}", lines[1]);
        // A refused request is logged at shutdown's final flush.
        let mut bad = server.connect();
        bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut bad).0, 400);
        server.signal(libc::SIGTERM);
        assert_eq!(
            server
                .wait_for_exit(Duration::from_secs(5))
                .and_then(|s| s.code()),
            Some(0)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().nth(2).unwrap().contains("\"status\":400"));
        let _ = std::fs::remove_file(&path);
    });
}

#[test]
fn a_full_disk_or_a_closed_stdout_never_stops_serving() {
    for_each_engine(|engine| {
        for destination in ["/dev/full", "-"] {
            let mut server = Process::start(engine, &["--access-log", destination], None);
            if destination == "-" {
                // The reader of stdout goes away: writes now fail with EPIPE.
                drop(server.stdout.take());
            }
            let mut stream = server.connect();
            let started = Instant::now();
            let mut served = 0;
            // Long enough for at least two flushes to fail.
            while started.elapsed() < Duration::from_millis(2500) {
                assert_eq!(get(&mut stream, "/book").0, 200, "{destination}");
                served += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(served > 20);
            server.signal(libc::SIGTERM);
            let status = server.wait_for_exit(Duration::from_secs(5)).expect("exits");
            assert_eq!(status.code(), Some(0), "{destination}");
            let stderr = server.stderr_text();
            assert_eq!(
                stderr.matches("access log write failed").count(),
                1,
                "{destination}: reported once:\n{stderr}"
            );
            assert!(
                stderr.contains("lost to write errors"),
                "{destination}: counted:\n{stderr}"
            );
        }
    });
}

/// A worker whose event loop breaks (a failed `io_uring_enter`, a panic) is
/// never silent: the process says which worker failed and why, cuts that
/// worker's connections (their clients see the end at once, they do not
/// hang), and exits 1 so that a supervisor restarts it.
#[test]
fn a_failed_worker_stops_the_server_with_exit_status_1() {
    for_each_engine(|engine| {
        // The fault strikes once the worker has accepted its second client.
        let mut server = Process::start(engine, &["--fault-after-accepts", "2"], None);
        let mut held = server.connect();
        assert_eq!(get(&mut held, "/book").0, 200, "{engine}");
        let mut second = server.connect();
        let _ = second.write_all(b"GET /book HTTP/1.1\r\nHost: a\r\n\r\n");
        let status = server
            .wait_for_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{engine}: the server kept running with a dead worker"));
        assert_eq!(status.code(), Some(1), "{engine}: {status:?}");
        let stderr = server.stderr_text();
        assert!(stderr.contains("worker 0 failed"), "{engine}: {stderr}");
        // The held connection ends (end of file or reset), it does not hang
        // until the read timeout.
        let mut rest = Vec::new();
        match held.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{engine}: the held connection was left open: {e}"),
        }
    });
}
