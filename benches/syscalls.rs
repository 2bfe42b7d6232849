//! Syscalls per request for every engine at a fixed load: the second figure
//! `ci/bench-gate` compares with `ci/bench-baseline.json`, beside the
//! instruction counts of `benches/instructions.rs`.
//!
//! Steps, for each engine in [`EngineKind::ALL`] (one that cannot start here
//! is reported and skipped) and each scenario (1 and 64 keep-alive
//! connections):
//! 1. start the server in-process (one worker on `127.0.0.1:0`, pinned to
//!    the first CPU; the client thread to the last);
//! 2. open the connections and send [`WARM_UP_REQUESTS`], so accepts, buffer
//!    growth and the first `Date` rendering are not counted;
//! 3. count the worker thread's syscalls (the `raw_syscalls:sys_enter`
//!    tracepoint, opened with `perf_event_open` on the worker's thread id)
//!    while a closed-loop client sends [`COUNTED_REQUESTS`] requests for a
//!    1 KiB file, one in flight per connection;
//! 4. print one JSON line: engine, scenario, requests, syscalls.
//!
//! Counting in-process needs no `perf` binary and no attach race: the
//! counter is enabled and disabled around exactly the counted requests. It
//! needs root (or `perf_event_paranoid` ≤ 1) and tracefs; `ci/bench-gate`
//! mounts tracefs when it is missing. A line with `"error"` says why a count
//! could not be taken.
//!
//! Run with `cargo bench --bench syscalls`; `--rounds N` repeats every
//! measurement N times (one line each), to see its spread.

mod support;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use ringserve::engine::{EngineKind, Server, ServerConfig};

use support::{PATH_1KIB, bench_snapshot};

/// Requests sent before counting starts (spread over the connections).
const WARM_UP_REQUESTS: u64 = 1_000;
/// Requests counted, spread evenly over the connections.
const COUNTED_REQUESTS: u64 = 10_000;
/// Keep-alive connections per scenario.
const SCENARIOS: [(&str, usize); 2] = [("keepalive_c1", 1), ("keepalive_c64", 64)];
/// A response that has not arrived after this long fails the run.
const READ_TIMEOUT_MS: u64 = 10_000;
/// The worker threads' name prefix (`engine::Server::start_with_handle`).
const WORKER_THREAD_NAME: &str = "ringserve-0";

const TRACEPOINT_ID_FILES: [&str; 2] = [
    "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
    "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
];

fn main() {
    let rounds = parse_rounds();
    let snapshot = Arc::new(bench_snapshot());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let pinned = cores.len() >= 2;
    let client_core = cores.last().copied().filter(|_| pinned);
    let tracepoint = match tracepoint_id() {
        Ok(id) => id,
        Err(e) => {
            println!("{{\"error\": \"no raw_syscalls:sys_enter tracepoint (is tracefs mounted?): {e}\"}}");
            return;
        }
    };
    for _ in 0..rounds {
        for engine in EngineKind::ALL {
            let config = ServerConfig {
                pin_workers: pinned,
                ..ServerConfig::loopback(engine)
            };
            let server = match Server::start(&config, Arc::clone(&snapshot)) {
                Ok(server) => server,
                Err(e) => {
                    eprintln!("syscalls bench: skipping engine {engine}: {e}");
                    continue;
                }
            };
            for (scenario, connections) in SCENARIOS {
                let line = match measure(&server, tracepoint, connections, client_core) {
                    Ok(syscalls) => format!(
                        "{{\"engine\": \"{engine}\", \"scenario\": \"{scenario}\", \
                         \"requests\": {COUNTED_REQUESTS}, \"syscalls\": {syscalls}}}"
                    ),
                    Err(e) => format!(
                        "{{\"engine\": \"{engine}\", \"scenario\": \"{scenario}\", \"error\": {:?}}}",
                        e.to_string()
                    ),
                };
                println!("{line}");
            }
            server.stop();
        }
    }
}

fn parse_rounds() -> u32 {
    // cargo bench passes `--bench`; only `--rounds N` is ours.
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == "--rounds")
        .and_then(|at| args.get(at + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Opens the connections, warms up, and returns the worker's syscalls over
/// [`COUNTED_REQUESTS`] requests.
fn measure(
    server: &Server,
    tracepoint: u64,
    connections: usize,
    client_core: Option<core_affinity::CoreId>,
) -> io::Result<u64> {
    let worker = worker_tid()?;
    let addr = server.local_addr();
    // The client runs on its own thread so that it can be pinned away from
    // the worker; the counter is opened on the worker's thread id.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                if let Some(core) = client_core {
                    core_affinity::set_for_current(core);
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let mut conns = connect(addr, connections).await?;
                    run_closed_loop(&mut conns, WARM_UP_REQUESTS).await?;
                    let counter = SyscallCounter::open(tracepoint, worker)?;
                    counter.start()?;
                    run_closed_loop(&mut conns, COUNTED_REQUESTS).await?;
                    counter.stop()
                })
            })
            .join()
            .map_err(|_| io::Error::other("client thread panicked"))?
    })
}

/// The thread id of the server's only worker.
fn worker_tid() -> io::Result<i32> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == WORKER_THREAD_NAME {
            if let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) {
                return Ok(tid);
            }
        }
    }
    Err(io::Error::other(format!("no thread named {WORKER_THREAD_NAME}")))
}

fn tracepoint_id() -> io::Result<u64> {
    let mut last = io::Error::other("no tracefs path");
    for path in TRACEPOINT_ID_FILES {
        match std::fs::read_to_string(path) {
            Ok(text) => return text.trim().parse().map_err(io::Error::other),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A `perf_event_open` counter of one tracepoint on one thread.
struct SyscallCounter {
    fd: OwnedFd,
}

/// The first 64 bytes of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`),
/// all a counting tracepoint event needs.
#[repr(C)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// Bit 0: `disabled` (start stopped; enabled by ioctl).
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;
const PERF_EVENT_IOC_RESET: libc::c_ulong = 0x2403;

impl SyscallCounter {
    fn open(tracepoint: u64, tid: i32) -> io::Result<Self> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: tracepoint,
            sample_period: 0,
            sample_type: 0,
            read_format: 0,
            flags: 1,
            wakeup_events: 0,
            bp_type: 0,
            config1: 0,
        };
        // SAFETY: `attr` is a valid, initialised `perf_event_attr` prefix whose
        // `size` field says how many bytes the kernel may read; it outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid,
                -1,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(SyscallCounter { fd })
    }

    fn ioctl(&self, request: libc::c_ulong) -> io::Result<()> {
        // SAFETY: a perf event ioctl without an argument on a descriptor we own.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), request, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn start(&self) -> io::Result<()> {
        self.ioctl(PERF_EVENT_IOC_RESET)?;
        self.ioctl(PERF_EVENT_IOC_ENABLE)
    }

    fn stop(&self) -> io::Result<u64> {
        self.ioctl(PERF_EVENT_IOC_DISABLE)?;
        let mut count = 0u64;
        // SAFETY: reads at most 8 bytes into `count`, which is 8 bytes and lives
        // across the call.
        let read = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if read != 8 {
            return Err(io::Error::other("short read of the syscall counter"));
        }
        Ok(count)
    }
}

/// One keep-alive client connection.
struct Conn {
    stream: TcpStream,
    received: Vec<u8>,
}

async fn connect(addr: SocketAddr, count: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        conns.push(Conn {
            stream,
            received: Vec::with_capacity(16 * 1024),
        });
    }
    Ok(conns)
}

/// Sends `requests` requests spread evenly over the connections, one in
/// flight per connection, and waits for every response. One task per
/// connection on the client's single thread, as a load generator would.
async fn run_closed_loop(conns: &mut Vec<Conn>, requests: u64) -> io::Result<()> {
    let count = conns.len() as u64;
    let request: Arc<[u8]> =
        format!("GET {PATH_1KIB} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ringserve-bench\r\n\r\n")
            .into_bytes()
            .into();
    let mut tasks = JoinSet::new();
    for (index, mut conn) in conns.drain(..).enumerate() {
        let share = requests / count + u64::from((index as u64) < requests % count);
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let mut result = Ok(());
            for _ in 0..share {
                result = conn.exchange(&request).await;
                if result.is_err() {
                    break;
                }
            }
            (conn, result)
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (conn, result) = joined.map_err(io::Error::other)?;
        conns.push(conn);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

impl Conn {
    async fn exchange(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    /// Reads one complete `200` response with a `Content-Length`.
    async fn read_response(&mut self) -> io::Result<()> {
        loop {
            if let Some(len) = complete_response_len(&self.received)? {
                self.received.drain(..len);
                return Ok(());
            }
            self.received.reserve(16 * 1024);
            let read = tokio::time::timeout(
                Duration::from_millis(READ_TIMEOUT_MS),
                self.stream.read_buf(&mut self.received),
            )
            .await
            .map_err(|_| io::Error::other(format!("no response within {READ_TIMEOUT_MS} ms")))??;
            if read == 0 {
                return Err(io::Error::other("server closed the connection"));
            }
        }
    }
}

fn complete_response_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut fields);
    let head_len = match response.parse(buf).map_err(io::Error::other)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    if response.code != Some(200) {
        return Err(io::Error::other(format!(
            "expected status 200, got {:?}",
            response.code
        )));
    }
    let body_len = response
        .headers
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case("content-length"))
        .and_then(|field| {
            std::str::from_utf8(field.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or_else(|| io::Error::other("response without a valid Content-Length"))?;
    let total = head_len + body_len;
    Ok((buf.len() >= total).then_some(total))
}
