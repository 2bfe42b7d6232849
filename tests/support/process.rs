//! The `ringserve` binary as a child process, for the end-to-end tests that
//! need the real command line (signals, reloads, RSS, descriptors, TLS flags).
//!
//! [`ServerProcess::command`] builds the base command (one worker, unpinned,
//! `127.0.0.1:0`); a test adds its own arguments and starts it with
//! [`ServerProcess::spawn`], which reads the address from the start line
//! (`listening on http://…` or `https://…`). Dropping the process sends
//! SIGTERM, waits up to 10 s for the graceful stop, then kills it, so a
//! failed test never leaves a server behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringserve::engine::EngineKind;

/// A running `ringserve` binary, stopped by its PID on drop.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    scheme: &'static str,
}

impl ServerProcess {
    /// `ringserve --root ROOT --listen 127.0.0.1:0 --workers 1 --no-pin
    /// --engine ENGINE`, stdout piped (the start line is read from it).
    pub fn command(engine: EngineKind, root: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringserve"));
        command
            .arg("--root")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--workers", "1", "--no-pin"])
            .args(["--engine", engine.name()])
            .stdout(Stdio::piped());
        command
    }

    /// Starts `command` and reads the first `scheme://ADDR` of its start
    /// line (`scheme` is `"http"` or `"https"`).
    pub fn spawn(mut command: Command, scheme: &'static str) -> ServerProcess {
        let mut child = command.spawn().expect("the ringserve binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .unwrap();
        let prefix = format!("{scheme}://");
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .and_then(|addr| addr.trim_end_matches(',').parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {prefix} address in the start line {line:?}");
        };
        ServerProcess { child, addr, scheme }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// How many descriptors the process holds.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) reads no memory of ours; the PID is our own child,
        // not yet reaped (it is reaped only in `stop` or drop).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// SIGTERM, then waits (up to 10 s) for the exit; `None` if it did not
    /// stop in time (it is then killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
