//! The `ringserve` binary itself: it starts, prints its real address, serves,
//! stops cleanly on SIGTERM, and refuses bad settings with a clear message
//! and a non-zero exit status.
//!
//! Every child process is killed (by its PID, through `Child::kill`) when its
//! guard drops, so a failing test leaves nothing running.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringserve::engine::EngineKind;
use support::{RawClient, get, http_agent};

const BINARY: &str = env!("CARGO_BIN_EXE_ringserve");
/// How long the binary may take to start, or to exit once told to.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `ringserve` process, killed on drop if still running.
struct Running {
    child: Child,
    /// Lines the process prints on stdout, read by a helper thread.
    stdout_lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(BINARY)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the ringserve binary");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, stdout_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, stdout_lines }
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
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) reads no memory; `pid` is our own child, which has
        // not been reaped yet (we hold its `Child` and have not waited on it).
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
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
