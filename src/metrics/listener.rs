//! The metrics listener: one small thread, one blocking socket at a time.
//!
//! Scrapes are rare (every few seconds) and tiny, so this is deliberately
//! plain: a `std` listener on its own address, a thread that waits (with
//! `poll`) for a connection or the server's stop signal, and answers each
//! connection before taking the next:
//! 1. read the request head, at most [`MAX_REQUEST_BYTES`], each read
//!    bounded by [`IO_TIMEOUT`] and the whole exchange by
//!    [`EXCHANGE_TIMEOUT`] (a stuck client delays the next scrape, never a
//!    worker);
//! 2. `GET` (or `HEAD`) `/metrics` → `200` with [`super::Metrics::render`];
//!    another path → `404`; another method → `405`; a head that is too
//!    large, malformed or incomplete → `400`;
//! 3. always `Connection: close`.
//!
//! Nothing here touches the workers: it only reads their counters.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CONTENT_TYPE, Metrics};
use crate::engine::Shutdown;

/// The longest request head read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The longest any one read or write on a scrape connection may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one scrape connection may take in all.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The one path served.
pub const METRICS_PATH: &str = "/metrics";

/// Starts the thread; it returns once `shutdown` fires.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>, shutdown: Shutdown) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ringserve-metrics".to_owned())
        .spawn(move || serve(&listener, &metrics, &shutdown))
}

fn serve(listener: &TcpListener, metrics: &Metrics, shutdown: &Shutdown) {
    while wait_for_connection(listener, shutdown) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A failed scrape is the scraper's problem; nothing to report.
                let _ = answer(stream, metrics);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                // EMFILE and the like: the workers report those; do not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Waits until `listener` has a connection (`true`) or `shutdown` fired
/// (`false`).
fn wait_for_connection(listener: &TcpListener, shutdown: &Shutdown) -> bool {
    loop {
        if shutdown.is_triggered() {
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shutdown.eventfd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) reads and writes exactly `fds.len()` pollfd structs
        // from the pointer, a live local array of that length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

/// The answer to one request head, as status line and body.
fn route(head: &[u8], metrics: &Metrics) -> (&'static str, Option<String>, bool) {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", None, true);
    };
    if !version.starts_with(b"HTTP/1.") {
        return ("400 Bad Request", None, true);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let with_body = method != b"HEAD";
    if method != b"GET" && method != b"HEAD" {
        return ("405 Method Not Allowed", None, true);
    }
    if path != METRICS_PATH.as_bytes() {
        return ("404 Not Found", None, with_body);
    }
    ("200 OK", Some(metrics.render()), with_body)
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let started = Instant::now();
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if memchr::memmem::find(&head, b"\r\n\r\n").is_some()
            || memchr::memmem::find(&head, b"\n\n").is_some()
        {
            break true;
        }
        if head.len() >= MAX_REQUEST_BYTES || started.elapsed() > EXCHANGE_TIMEOUT {
            break false;
        }
        let want = chunk.len().min(MAX_REQUEST_BYTES - head.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => break false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (status, body, with_body) = if complete {
        route(&head, metrics)
    } else {
        ("400 Bad Request", None, true)
    };
    let (content_type, body) = match body {
        Some(text) => (CONTENT_TYPE, text),
        None => ("text/plain; charset=utf-8", format!("{status}\n")),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nServer: ringserve\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineKind;
    use crate::files::{Snapshot, SnapshotHandle};

    fn metrics() -> Metrics {
        let snapshot = SnapshotHandle::new(Arc::new(Snapshot::from_memory(&[], 0)));
        Metrics::new(1, EngineKind::Uring, snapshot)
    }

    #[test]
    fn routes() {
        let metrics = metrics();
        let (status, body, with_body) = route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &metrics);
        assert_eq!(status, "200 OK");
        assert!(body.unwrap().contains("# TYPE ringserve_requests_total counter"));
        assert!(with_body);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &metrics).0, "200 OK");
        let (status, body, with_body) = route(b"HEAD /metrics HTTP/1.1\r\n\r\n", &metrics);
        assert_eq!((status, body.is_some(), with_body), ("200 OK", true, false));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n", &metrics).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", &metrics).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n", &metrics).0, "400 Bad Request");
        assert_eq!(
            route(b"GET /metrics SPDY/3\r\n\r\n", &metrics).0,
            "400 Bad Request"
        );
    }

    #[test]
    fn serves_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new().unwrap();
        let thread = spawn(listener, Arc::new(metrics()), shutdown.clone()).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{text}"
        );
        assert!(text.contains("ringserve_workers 1\n"), "{text}");
        // A client that sends too much gets 400, and the thread goes on.
        let mut flood = TcpStream::connect(addr).unwrap();
        flood.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Exactly the limit, so nothing is left unread (which would reset).
        let _ = flood.write_all(&[b'a'; MAX_REQUEST_BYTES]);
        let mut text = String::new();
        let _ = flood.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        shutdown.trigger();
        thread.join().unwrap();
    }
}
