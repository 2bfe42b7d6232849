//! The floor: the least CPU any HTTP/1.1 server could spend per request on
//! this kernel, measured by `ci/bench-compare` in the same run as the real
//! servers, so "distance to the limit" is a same-run, paired ratio.
//!
//! Two servers, not part of the product and not built into `ringserve`:
//!
//! - `floor uring --root DIR`: io_uring with `SINGLE_ISSUER | DEFER_TASKRUN |
//!   COOP_TASKRUN | SUBMIT_ALL | NO_SQARRAY`, the ring fd registered
//!   (`IORING_REGISTER_RING_FDS`, so every `io_uring_enter` skips the fd
//!   lookup), one multishot accept, one multishot recv per connection from a
//!   provided-buffer ring, one send per batch of responses, and one
//!   `submit_and_wait(1)` per loop ([`uring`]).
//! - `floor epoll --root DIR`: one edge-triggered epoll set, each connection
//!   registered once (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`, never
//!   modified), `accept4` straight into non-blocking sockets, `recv` and
//!   `send`/`sendmsg` directly, a short read taken as "drained" (no extra
//!   `recv` returning `EAGAIN`) ([`epoll`]).
//!
//! Both run one thread on one listener (`127.0.0.1`, `TCP_NODELAY` set on the
//! listener and inherited by accepted sockets), print `listening on
//! http://127.0.0.1:PORT` and serve until killed.
//!
//! What each does per request is only what no HTTP server can skip: find the
//! end of each head (`\r\n\r\n`), look at the request path (a few bytes
//! compared against the handful of files in `--root`; this is how it picks
//! the 1 KiB, 16 KiB or 1 MiB response, so one floor serves every scenario of
//! bench-compare) and at whether the head says `Connection: close`, then queue
//! a response precomputed at start-up. Pipelined heads get one response each,
//! and every response found in one read goes out in one send (`sendmsg` with
//! one iovec per response, so nothing is copied in user space).
//!
//! What it deliberately skips, and a real server cannot: parsing and
//! validating the request (method, version, header syntax, limits other than
//! a 64 KiB cap on a head), `Date`, `Server`, `Content-Type`, `ETag`,
//! `Last-Modified` and conditional requests, ranges, compression, timeouts,
//! limits on connections, logging, metrics, graceful stop, TLS and more than
//! one worker. `Connection: close` is recognised only as wrk and curl spell
//! it (`Connection: close` or `connection: close`). The response is a bare
//! `HTTP/1.1 200 OK` with `Content-Length` (and `Connection: close` when
//! asked), which wrk counts as a success.
//!
//! `Connection: close` is answered without cutting the response, by the
//! rule ringserve follows (its `engine::policy::ending`, nginx's
//! `lingering_close on`): when the close request is the last thing the
//! client sent (nothing behind it in the read), the floor closes right after
//! the last byte is sent (the uring floor links the close to that send);
//! when more follows it, the floor shuts down its write side (`SHUT_WR`, the
//! FIN) and closes when the client's FIN arrives, or at once if the client
//! had already closed, so no reset can destroy unread response bytes.
//!
//! `cargo bench` runs this target with `--bench` (and no mode): it prints one
//! line and exits, so it never hangs a bench run.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use memchr::memmem;

#[path = "floor/epoll.rs"]
mod epoll;
#[path = "floor/uring.rs"]
mod uring;

/// A head longer than this without its `\r\n\r\n` closes the connection.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

const USAGE: &str = "usage: floor (uring|epoll) --root DIR [--listen 127.0.0.1:0]\n\
    A fixed-response HTTP/1.1 server for ci/bench-compare: the floor of each I/O model.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("uring") => Mode::Uring,
        Some("epoll") => Mode::Epoll,
        // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
        _ => {
            println!(
                "floor: not a benchmark but a server for ci/bench-compare; nothing to run here.\n{USAGE}"
            );
            return ExitCode::SUCCESS;
        }
    };
    match run(mode, &args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Uring,
    Epoll,
}

fn run(mode: Mode, args: &[String]) -> io::Result<()> {
    let mut root = None;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = rest
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--root" => root = Some(value.clone()),
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("--listen: {e}")))?
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unknown argument {arg}"),
                ));
            }
        }
    }
    let root = root.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "--root is required"))?;
    raise_fd_limit();
    let table: &'static Responses = Box::leak(Box::new(Responses::load(Path::new(&root))?));
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    set_nodelay(&listener)?;
    println!("listening on http://{}", listener.local_addr()?);
    io::stdout().flush()?;
    match mode {
        Mode::Uring => uring::serve(listener, table),
        Mode::Epoll => epoll::serve(listener, table),
    }
}

/// The soft descriptor limit raised to the hard one, for bench-compare's
/// thousands of idle connections.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill, then to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `TCP_NODELAY` on the listener: Linux copies it to every accepted socket,
/// which saves one `setsockopt` per connection.
fn set_nodelay(listener: &TcpListener) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `listener`; the option value
    // points at a c_int of the stated size, read only during the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The precomputed responses: for each regular file directly in `--root`,
/// head and body in one allocation, once for keep-alive and once with
/// `Connection: close`; a 404 for any other path. Leaked, so every response
/// is `&'static` and its address stays valid for the kernel while a send is
/// in flight.
#[derive(Debug)]
pub struct Responses {
    by_path: HashMap<Vec<u8>, Response>,
    not_found: Response,
}

/// One file's two responses.
#[derive(Clone, Copy, Debug)]
pub struct Response {
    keep_alive: &'static [u8],
    close: &'static [u8],
}

impl Response {
    fn new(status: &str, body: &[u8]) -> Response {
        let make = |extra: &str| -> &'static [u8] {
            let mut bytes = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
                body.len()
            )
            .into_bytes();
            bytes.extend_from_slice(body);
            Box::leak(bytes.into_boxed_slice())
        };
        Response {
            keep_alive: make(""),
            close: make("Connection: close\r\n"),
        }
    }
}

impl Responses {
    fn load(root: &Path) -> io::Result<Responses> {
        let mut by_path = HashMap::new();
        for entry in fs::read_dir(root)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let name = entry.file_name().into_string().map_err(|name| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("file name {name:?} is not UTF-8"),
                    )
                })?;
                by_path.insert(
                    format!("/{name}").into_bytes(),
                    Response::new("200 OK", &fs::read(entry.path())?),
                );
            }
        }
        Ok(Responses {
            by_path,
            not_found: Response::new("404 Not Found", b""),
        })
    }

    /// The response to one complete head.
    fn answer(&self, head: &[u8]) -> (&'static [u8], Close) {
        let path = head
            .iter()
            .position(|&b| b == b' ')
            .and_then(|start| {
                let rest = &head[start + 1..];
                rest.iter().position(|&b| b == b' ').map(|end| &rest[..end])
            })
            .unwrap_or(b"");
        let response = self.by_path.get(path).copied().unwrap_or(self.not_found);
        if memmem::find(head, b"onnection: close\r\n").is_some() {
            (response.close, Close::AfterResponse)
        } else {
            (response.keep_alive, Close::No)
        }
    }
}

/// Whether a connection ends after the responses queued so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    No,
    /// The last head asked for `Connection: close` and nothing follows it:
    /// answer it, then close at once.
    AfterResponse,
    /// The last head asked for `Connection: close` with bytes behind it:
    /// answer it, then shut down and wait for the client's FIN.
    GracefulAfterResponse,
    /// A head grew past [`MAX_HEAD_BYTES`]: close without answering it.
    Now,
}

/// Finds every complete head in `carry` + `data`, calls `respond` once per
/// head, and keeps an incomplete tail in `carry` (copied only when a head is
/// split across reads). Stops at the first head that asks to close.
pub fn on_bytes(
    table: &Responses,
    carry: &mut Vec<u8>,
    data: &[u8],
    mut respond: impl FnMut(&'static [u8]),
) -> Close {
    if carry.is_empty() {
        let (close, consumed) = scan(table, data, &mut respond);
        if close == Close::No {
            carry.extend_from_slice(&data[consumed..]);
        }
        return limit(close, carry);
    }
    carry.extend_from_slice(data);
    let (close, consumed) = scan(table, carry, &mut respond);
    if close == Close::No {
        carry.drain(..consumed);
    } else {
        carry.clear();
    }
    limit(close, carry)
}

fn limit(close: Close, carry: &[u8]) -> Close {
    if close == Close::No && carry.len() > MAX_HEAD_BYTES {
        Close::Now
    } else {
        close
    }
}

/// Answers the complete heads at the start of `bytes`; returns how many
/// bytes they took.
fn scan(table: &Responses, bytes: &[u8], respond: &mut impl FnMut(&'static [u8])) -> (Close, usize) {
    let mut start = 0;
    while let Some(end) = memmem::find(&bytes[start..], b"\r\n\r\n") {
        let head = &bytes[start..start + end + 4];
        start += end + 4;
        let (response, close) = table.answer(head);
        respond(response);
        if close == Close::AfterResponse && start < bytes.len() {
            return (Close::GracefulAfterResponse, start);
        }
        if close != Close::No {
            return (close, start);
        }
    }
    (Close::No, start)
}

/// `errno` of the last failed libc call.
fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
