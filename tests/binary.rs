//! The `ringserve` binary itself: it starts, prints its real address, serves,
//! stops cleanly on SIGTERM, and refuses bad settings with a clear message
//! and a non-zero exit status.
//!
//! Every child process is killed (by its PID, through `Child::kill`) when its
//! guard drops, so a failing test leaves nothing running.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringserve::engine::EngineKind;
use support::{RawClient, TempSite, get, http_agent};

const BINARY: &str = env!("CARGO_BIN_EXE_ringserve");
/// How long the binary may take to start, or to exit once told to.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `ringserve` process, killed on drop if still running.
struct Running {
    child: Child,
    /// Lines the process prints on stdout, read by a helper thread.
    stdout_lines: mpsc::Receiver<String>,
    /// `child` is a tracer (strace) running the server as its only child:
    /// signals go to that child, and dropping kills it too (a killed strace
    /// 6.1 would leave it running).
    traced: bool,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut command = Command::new(BINARY);
        command.args(args);
        Running::spawn_command(command)
    }

    /// Runs `command` (the binary, or a wrapper that runs it) with stdout
    /// read line by line and stderr kept.
    fn spawn_command(mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, stdout_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdout_lines,
            traced: false,
        }
    }

    /// Reads the start line and returns the address it names.
    fn wait_for_address(&mut self) -> (SocketAddr, String) {
        let line = match self.stdout_lines.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().unwrap();
                panic!(
                    "no start line within {PROCESS_TIMEOUT:?} (exit status {status:?}): {}",
                    self.stderr()
                );
            }
        };
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in the start line {line:?}"));
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("{addr:?} in {line:?}: {e}"));
        (addr, line)
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.server_pid().expect("the server process is running");
        // SAFETY: kill(2) reads no memory; `pid` is our own child (or the
        // tracer's only child), which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The server's PID: the child's, or for a traced server the tracer's child's.
    fn server_pid(&self) -> Option<libc::pid_t> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        if !self.traced {
            return Some(pid);
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            if let Some(first) = children.split_whitespace().next() {
                return first.parse().ok();
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit, at most [`PROCESS_TIMEOUT`].
    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringserve did not exit within {PROCESS_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote on stderr (call once it has exited).
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            if self.child.try_wait().ok().flatten().is_some() {
                let _ = stderr.read_to_string(&mut text);
            } else {
                text.push_str("(still running)");
            }
        }
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.traced
                && let Some(pid) = self.server_pid()
            {
                // SAFETY: kill(2) reads no memory; `pid` is the tracer's
                // child, not reaped while the tracer (our child) lives.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    support::for_each_engine(|engine| {
        let mut server = Running::spawn(&[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--engine",
            engine.name(),
        ]);
        let (addr, start_line) = server.wait_for_address();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{start_line}");
        assert!(start_line.contains(&format!("engine {engine}")), "{start_line}");
        assert!(start_line.contains("2 workers"), "{start_line}");
        assert!(start_line.contains("5 files"), "{start_line}");

        let mut reply = http_agent().get(format!("http://{addr}/book")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        assert_eq!(reply.headers()["content-type"], "application/json");
        let body = reply.body_mut().read_to_vec().unwrap();
        assert_eq!(
            body,
            std::fs::read(support::static_root().join("book.json")).unwrap()
        );

        // An idle keep-alive connection must not hold up the shutdown.
        let mut idle = RawClient::connect(addr);
        assert_eq!(idle.request(&get("/book")).status, 200);

        server.signal(libc::SIGTERM);
        let status = server.wait_for_exit();
        assert!(
            status.success(),
            "exit status {status:?}; stderr: {}",
            server.stderr()
        );
        idle.expect_closed();
    });
}

#[test]
fn binary_refuses_a_missing_root() {
    let mut process = Running::spawn(&["--root", "/nonexistent", "--listen", "127.0.0.1:0"]);
    let status = process.wait_for_exit();
    let stderr = process.stderr();
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        stderr.contains("/nonexistent") && stderr.contains("cannot be opened"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn binary_reports_a_port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for engine in EngineKind::ALL {
        let mut process = Running::spawn(&["--listen", &addr, "--engine", engine.name()]);
        let status = process.wait_for_exit();
        let stderr = process.stderr();
        assert!(!status.success(), "[{engine}] exit status {status:?}");
        assert!(
            stderr.contains(&addr) && stderr.contains("already in use"),
            "[{engine}] stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "[{engine}] stderr: {stderr}");
    }
    drop(taken);
}

#[test]
fn binary_refuses_a_bad_address() {
    let mut process = Running::spawn(&["--listen", "localhost"]);
    let status = process.wait_for_exit();
    let stderr = process.stderr();
    assert!(!status.success(), "exit status {status:?}");
    assert!(stderr.contains("--listen"), "stderr: {stderr}");
}

/// Fails with a clear message when a tool a test drives is not installed
/// (`ci/test.sh` installs them: strace, and systemd for
/// `systemd-socket-activate`).
fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "this test needs `{tool}`: apt-get install {package} (bash ci/test.sh installs it)"
    );
}

/// `ringserve ARGS` with `io_uring_setup` failing with EPERM in every thread,
/// as a container's default seccomp profile makes it fail.
fn without_io_uring(args: &[&str]) -> Running {
    require_tool("strace", "strace");
    let mut command = Command::new("strace");
    command.args([
        "-f",
        "-qq",
        "-e",
        "trace=io_uring_setup",
        "-e",
        "inject=io_uring_setup:error=EPERM",
        "-o",
        "/dev/null",
        BINARY,
    ]);
    command.args(args);
    let mut running = Running::spawn_command(command);
    running.traced = true;
    running
}

/// A loopback port that was free a moment ago, for tests that must name the
/// port before the server binds it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn auto_engine_falls_back_to_epoll_when_io_uring_is_refused() {
    let mut server = without_io_uring(&["--listen", "127.0.0.1:0", "--workers", "2", "--no-pin"]);
    let (addr, start_line) = server.wait_for_address();
    assert!(start_line.contains("engine epoll"), "{start_line}");
    assert!(
        start_line.contains("auto: io_uring refused") && start_line.contains("Operation not permitted"),
        "the start line says why: {start_line}"
    );
    for _ in 0..4 {
        let reply = http_agent().get(format!("http://{addr}/book")).call().unwrap();
        assert_eq!(reply.status().as_u16(), 200);
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait_for_exit().success());

    // Asked for by name, the uring engine still fails, clearly.
    let mut refused = without_io_uring(&["--listen", "127.0.0.1:0", "--engine", "uring"]);
    let status = refused.wait_for_exit();
    let stderr = refused.stderr();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("io_uring is not available") && stderr.contains("--engine epoll"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn auto_engine_names_its_choice() {
    let mut server = Running::spawn(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let (_, start_line) = server.wait_for_address();
    assert!(
        start_line.contains("engine uring [auto: io_uring available]")
            || start_line.contains("engine epoll [auto: io_uring refused"),
        "{start_line}"
    );
}

#[test]
fn a_second_server_on_the_same_port_exits_and_the_first_keeps_serving() {
    let first_site = TempSite::new();
    first_site.write("who.txt", b"first");
    let second_site = TempSite::new();
    second_site.write("who.txt", b"second");
    let port = free_port().to_string();
    for engine in EngineKind::ALL {
        let first_root = first_site.path().to_str().unwrap();
        let mut first = Running::spawn(&[
            first_root,
            "-p",
            &port,
            "--workers",
            "2",
            "--engine",
            engine.name(),
        ]);
        let (addr, start_line) = first.wait_for_address();
        assert_eq!(addr.to_string(), format!("127.0.0.1:{port}"), "{start_line}");
        assert!(
            start_line.ends_with(&format!("serving {first_root}")),
            "{start_line}"
        );

        let second_root = second_site.path().to_str().unwrap();
        let mut second = Running::spawn(&[second_root, "-p", &port, "--engine", engine.name()]);
        let status = second.wait_for_exit();
        let stderr = second.stderr();
        assert_eq!(status.code(), Some(1), "[{engine}] stderr: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!("ringserve: cannot listen on 127.0.0.1:{port}: the address is already in use"),
            "[{engine}]"
        );
        for _ in 0..20 {
            let body = http_agent()
                .get(format!("http://{addr}/who.txt"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            assert_eq!(body, "first", "[{engine}] every request reaches the first server");
        }
        first.signal(libc::SIGTERM);
        assert!(first.wait_for_exit().success(), "[{engine}]");
    }
}

#[test]
fn settings_from_the_environment_and_the_config_file() {
    let site = TempSite::new();
    site.write("index.html", b"env site");
    let config = TempSite::new();
    config.write(
        "ringserve.toml",
        format!(
            "[server]\nroot = {:?}\nworkers = 3\nlisten = \"127.0.0.1:1\"\nno_pin = true\n",
            site.path().display()
        )
        .as_bytes(),
    );
    let config_file = config.path().join("ringserve.toml");
    let config_file = config_file.to_str().unwrap();

    // The file gives root and workers; the environment's address beats the file's.
    let mut command = Command::new(BINARY);
    command
        .args(["--config", config_file, "--engine", "epoll"])
        .env("RINGSERVE_LISTEN", "127.0.0.1:0");
    let mut server = Running::spawn_command(command);
    let (addr, start_line) = server.wait_for_address();
    assert!(start_line.contains("3 workers"), "{start_line}");
    assert!(
        start_line.contains(&format!("serving {}", site.path().display())),
        "{start_line}"
    );
    let body = http_agent()
        .get(format!("http://{addr}/"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert_eq!(body, "env site");
    drop(server);

    // A flag beats the environment, which beats the file.
    let output = Command::new(BINARY)
        .args(["--config", config_file, "--print-config", "--workers", "2"])
        .env("RINGSERVE_WORKERS", "5")
        .env("RINGSERVE_PORT", "9009")
        .env("RINGSERVE_WATCH", "yes")
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in [
        "[server]",
        "workers = 2  # command line",
        "listen = \"127.0.0.1:9009\"  # environment RINGSERVE_PORT",
        "watch = true  # environment RINGSERVE_WATCH",
        "no_pin = true  # config file",
        "engine = \"auto\"  # default",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no line {line:?} in:\n{printed}"
        );
    }
    assert!(
        printed.contains(&format!("root = \"{}\"  # config file", site.path().display())),
        "{printed}"
    );
    let reparsed: toml::Table = printed.parse().expect("--print-config prints TOML");
    assert!(reparsed["server"].get("workers").is_some());
}

#[test]
fn contradictions_and_bad_files_are_one_clear_line() {
    let config = TempSite::new();
    config.write("unknown.toml", b"[server]\nworker = 2\n");
    config.write("bad.toml", b"[server]\nworkers = 0\n");
    let unknown = config.path().join("unknown.toml");
    let bad = config.path().join("bad.toml");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec!["-p", "1", "--listen", "127.0.0.1:2"],
            "--listen and --port are both given",
        ),
        (vec!["a", "--root", "b"], "the directory is given twice"),
        (
            vec!["--config", unknown.to_str().unwrap()],
            "unknown setting `worker`",
        ),
        (
            vec!["--config", bad.to_str().unwrap()],
            "invalid value '0' for '--workers",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(BINARY).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// systemd socket activation: `systemd-socket-activate` binds the port,
/// waits for a connection, then runs the server with the socket as
/// descriptor 3; the server serves it with every worker.
#[test]
fn socket_activation_serves_the_inherited_socket() {
    require_tool("systemd-socket-activate", "systemd");
    support::for_each_engine(|engine| {
        let port = free_port();
        let mut command = Command::new("systemd-socket-activate");
        command.args([
            "-l",
            &format!("127.0.0.1:{port}"),
            BINARY,
            // systemd-socket-activate passes no environment but LISTEN_*:
            // name the directory.
            support::static_root().to_str().unwrap(),
            "--workers",
            "2",
            "--engine",
            engine.name(),
        ]);
        let mut server = Running::spawn_command(command);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "systemd-socket-activate did not listen on {addr}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let mut clients: Vec<RawClient> = (0..4).map(|_| RawClient::connect(addr)).collect();
        for client in &mut clients {
            assert_eq!(client.request(&get("/book")).status, 200);
        }
        let (started_on, start_line) = server.wait_for_address();
        assert_eq!(started_on, addr, "{start_line}");
        assert!(start_line.contains("socket from systemd"), "{start_line}");
        assert!(
            start_line.contains(&format!("engine {engine}, 2 workers")),
            "{start_line}"
        );
        server.signal(libc::SIGTERM);
        let status = server.wait_for_exit();
        assert!(status.success(), "exit status {status:?}: {}", server.stderr());
    });
}

/// sd_notify: READY=1 once serving, RELOADING=1 (with MONOTONIC_USEC) and
/// READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM.
#[test]
fn service_manager_notifications() {
    let dir = TempSite::new();
    let socket_path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--engine", "epoll"])
        .env("NOTIFY_SOCKET", &socket_path);
    let mut server = Running::spawn_command(command);
    let mut buffer = [0u8; 512];
    let mut next = || {
        let n = manager
            .recv(&mut buffer)
            .expect("a notification within the timeout");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1"));
    let (addr, _) = server.wait_for_address();
    server.signal(libc::SIGHUP);
    let reloading = next();
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    assert!(next().starts_with("READY=1"));
    assert_eq!(RawClient::connect(addr).request(&get("/book")).status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert!(server.wait_for_exit().success());
}

/// Outside Cargo, the directory served by default is the working directory:
/// `cd site && ringserve -p PORT`, and `RINGSERVE_PORT=PORT ringserve .`.
#[test]
fn a_site_folder_is_served_from_where_the_server_starts() {
    let site = TempSite::new();
    site.write("index.html", b"my site");
    let real_site = site.path().canonicalize().unwrap();
    for args in [vec!["-p"], vec!["."]] {
        let port = free_port().to_string();
        let mut command = Command::new(BINARY);
        command.current_dir(site.path()).env_remove("CARGO_MANIFEST_DIR");
        if args == ["-p"] {
            command.args(["-p", &port]);
        } else {
            command.arg(".").env("RINGSERVE_PORT", &port);
        }
        let mut server = Running::spawn_command(command);
        let (addr, start_line) = server.wait_for_address();
        assert_eq!(addr.to_string(), format!("127.0.0.1:{port}"), "{start_line}");
        assert!(
            start_line.ends_with(&format!("serving {}", real_site.display())),
            "{start_line}"
        );
        let body = http_agent()
            .get(format!("http://{addr}/"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert_eq!(body, "my site");
    }
}
