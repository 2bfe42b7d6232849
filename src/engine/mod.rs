//! Engines: the only code that does I/O.
//!
//! Thread-per-core: [`Server::start`] binds one `SO_REUSEPORT` listener per
//! worker and configured address ([`listener`]; an address serves plain
//! HTTP, HTTPS or a redirect to HTTPS, [`ListenKind`]), then starts one
//! thread per worker, pinned to its own CPU, each running the chosen engine's
//! event loop over its own listeners. What a connection speaks is a
//! [`crate::protocol::Protocol`] chosen by its listener: engines move bytes
//! (ciphertext, for HTTPS) and call it at a few fixed points; none has TLS
//! logic of its own.
//! Nothing on the hot path is shared between threads except the immutable
//! [`Snapshot`], reached through a [`SnapshotHandle`] that a reload swaps
//! atomically: a connection loads the current snapshot once per batch of
//! input and answers that batch from it. Every engine drives the same sans-I/O core
//! ([`crate::http::Session`]); they differ only in how bytes move:
//!
//! Two pairs, each differing only in the I/O model:
//!
//! - [`uring`]: a native io_uring loop per worker on the `io-uring` crate:
//!   one `io_uring_enter` per iteration, multishot accept and receive,
//!   provided buffers, batched sends, async close.
//! - [`epoll`]: a native epoll loop per worker on `libc`, `uring`'s readiness
//!   twin: edge-triggered, one receive buffer per worker, batched writes,
//!   `sendfile` for files too large for memory.
//! - [`tokio_uring`]: the stock `tokio-uring` 0.5 runtime, one ring per
//!   worker; accept, read and write are io_uring completions.
//! - [`tokio_epoll`] (`--engine tokio`): a tokio current-thread runtime per
//!   worker (readiness, epoll), the same structure otherwise, so the two
//!   compare fairly.
//!
//! An engine is a module with one entry point, `run_worker(Worker, Ready)`.
//! The two native engines share their connection policy ([`policy`]), the
//! lazy deadline queue ([`deadlines`]) and the connection table
//! ([`slots`]). The two tokio-based engines share their worker and
//! connection loops ([`tokio_loop`]) and implement only its I/O traits; both
//! wait for the core's deadlines ([`crate::http::deadline`]) with one tokio
//! timer per connection ([`timer`]). [`connections`] caps and drains a
//! tokio worker's connections; [`AcceptBackoff`] pauses accepting when
//! descriptors run out, in every engine.
//!
//! With metrics on (`--metrics-listen`), each worker counts into its own
//! [`WorkerMetrics`] block (see [`crate::metrics`]): responses through the
//! core's observer, connections, accept back-offs and timeouts where the
//! engine meets them; [`Server`] runs the metrics listener's thread.
//!
//! What every engine must do with the core's output
//! ([`crate::http::Output`]): send its pieces in order. A
//! [`crate::http::response::Piece::Bytes`] is sent as it is; a
//! [`crate::http::response::Piece::File`] (the body, or part of it, of a file
//! too large for memory) is read from its file at its offset in chunks of at
//! most [`FILE_CHUNK_BYTES`], each chunk sent before the next is read, so a
//! connection holds at most one chunk (the `epoll` engine instead hands the
//! range to `sendfile(2)`, which copies from the page cache in the kernel and
//! holds no chunk at all); a read of 0 bytes before the range's end is an
//! error that closes the connection.

pub mod connections;
pub(crate) mod deadlines;
pub mod epoll;
pub mod listener;
pub(crate) mod policy;
pub mod shutdown;
pub(crate) mod slots;
pub mod timer;
pub mod tokio_epoll;
mod tokio_loop;
pub mod tokio_uring;
pub mod uring;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::access_log::{AccessLog, AccessLogConfig, WorkerLog};
use crate::files::{Snapshot, SnapshotHandle};
use crate::http::Limits;
pub use crate::http::deadline::{
    DEFAULT_HEAD_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_LINGER_MS, DEFAULT_SEND_TIMEOUT_MS, Timeouts,
};
use crate::metrics::{self, Metrics, WorkerMetrics};
pub use crate::protocol::{Listen, ListenKind};
use crate::tls::TlsHandle;

pub use listener::BindError;
pub use shutdown::Shutdown;
pub use uring::UringOptions;

/// Bytes a connection reads into at a time (and its receive buffer's initial
/// capacity); the same in every engine so they compare fairly.
pub const READ_BUFFER_BYTES: usize = 4096;
/// Bytes read from disk and sent at a time when streaming a file that is not
/// held in memory: the most a connection buffers for it. Large enough that
/// the per-chunk read and write calls cost little next to the copy (8 of each
/// per MiB), small enough that many concurrent downloads stay cheap.
pub const FILE_CHUNK_BYTES: usize = 128 * 1024;
/// After a refused request: how long to read and discard what the client
/// still sends before closing, by default (see [`Timeouts::linger`]).
pub const LINGER_MS: u64 = DEFAULT_LINGER_MS;
/// … and how many bytes at most.
pub const LINGER_MAX_BYTES: usize = 256 * 1024;
/// How long a worker waits before accepting again after `accept` failed for a
/// reason other than the peer (EMFILE, ENFILE, ENOBUFS, ENOMEM).
pub const ACCEPT_BACKOFF_MS: u64 = 50;
/// Open connections per worker, by default: beyond it the worker stops
/// accepting (new connections wait in the listen backlog) until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// The native io_uring engine ([`uring`]).
    Uring,
    /// The native epoll engine ([`epoll`]): `uring`'s readiness twin.
    Epoll,
    /// The stock `tokio-uring` runtime ([`tokio_uring`]).
    TokioUring,
    /// A tokio current-thread runtime on epoll ([`tokio_epoll`]):
    /// `tokio-uring`'s readiness twin.
    Tokio,
}

impl EngineKind {
    /// Two pairs that differ only in the I/O model: the hand-built loops
    /// (`uring`, `epoll`) and the runtimes (`tokio-uring`, `tokio`).
    pub const ALL: [EngineKind; 4] = [
        EngineKind::Uring,
        EngineKind::Epoll,
        EngineKind::TokioUring,
        EngineKind::Tokio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Uring => "uring",
            EngineKind::Epoll => "epoll",
            EngineKind::TokioUring => "tokio-uring",
            EngineKind::Tokio => "tokio",
        }
    }

    fn uses_io_uring(self) -> bool {
        matches!(self, EngineKind::TokioUring | EngineKind::Uring)
    }
}

/// What `--engine` asks for: one engine, or `auto` (the default): the
/// `uring` engine where io_uring works, else `epoll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    Auto,
    Only(EngineKind),
}

/// The engine a [`EngineChoice`] settled on, and for `auto` why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenEngine {
    pub kind: EngineKind,
    /// For `auto`: what the io_uring probe found, for the start line.
    pub reason: Option<String>,
}

impl EngineChoice {
    /// Settles `auto` by probing io_uring once ([`uring::probe`]) with the
    /// options the `uring` engine would use; an explicit engine is taken as
    /// it is (and fails at start if the kernel refuses it).
    pub fn resolve(self, uring_options: &UringOptions) -> ChosenEngine {
        match self {
            EngineChoice::Only(kind) => ChosenEngine { kind, reason: None },
            EngineChoice::Auto => match uring::probe(uring_options) {
                Ok(()) => ChosenEngine {
                    kind: EngineKind::Uring,
                    reason: Some("auto: io_uring available".to_owned()),
                },
                Err(why) => ChosenEngine {
                    kind: EngineKind::Epoll,
                    reason: Some(format!("auto: io_uring refused, {why}")),
                },
            },
        }
    }
}

impl fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineChoice::Auto => f.write_str("auto"),
            EngineChoice::Only(kind) => kind.fmt(f),
        }
    }
}

impl FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(EngineChoice::Auto);
        }
        s.parse().map(EngineChoice::Only).map_err(|_| {
            let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown engine {s:?} (choose one of: auto, {})", names.join(", "))
        })
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EngineKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown engine {s:?} (choose one of: {})", names.join(", "))
            })
    }
}

/// Everything the engines need to know, whatever the front end (CLI, tests).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on, each plain HTTP, HTTPS or a redirect to
    /// HTTPS; every worker owns one `SO_REUSEPORT` listener per address.
    pub listen: Vec<Listen>,
    /// The certificate for HTTPS listeners (required if there are any).
    pub tls: Option<TlsHandle>,
    pub workers: usize,
    pub engine: EngineKind,
    pub backlog: u32,
    /// Pin worker `i` to the `i`-th CPU the process may run on.
    pub pin_workers: bool,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// How long in-flight responses may take to finish after a stop signal.
    pub shutdown_grace: Duration,
    /// Techniques of the `uring` engine (all on by default; switches for
    /// measurement). Other engines ignore it.
    pub uring: UringOptions,
    /// Open connections per worker before it stops accepting.
    pub max_connections: usize,
    /// `None`: no access log (the default, and what benchmarks use).
    pub access_log: Option<AccessLogConfig>,
    /// A listening socket inherited from systemd (socket activation): every
    /// worker accepts on a duplicate of it, and `listen` is not bound.
    pub inherited_listener: Option<Arc<TcpListener>>,
    /// Serve Prometheus metrics on this address (`None`: nothing is counted;
    /// the default, and what benchmarks use).
    pub metrics_listen: Option<SocketAddr>,
    /// For tests only: worker 0 fails, as if its event loop had broken,
    /// once it has accepted this many connections (see [`WorkerFailure`]).
    #[doc(hidden)]
    pub fault_after_accepts: Option<u64>,
}

pub const DEFAULT_BACKLOG: u32 = 1024;
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;

impl ServerConfig {
    /// One worker on a free loopback port: what tests and benches use.
    pub fn loopback(engine: EngineKind) -> Self {
        ServerConfig {
            listen: vec![Listen::http(SocketAddr::from(([127, 0, 0, 1], 0)))],
            tls: None,
            workers: 1,
            engine,
            backlog: DEFAULT_BACKLOG,
            pin_workers: false,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
            uring: UringOptions::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            access_log: None,
            inherited_listener: None,
            metrics_listen: None,
            fault_after_accepts: None,
        }
    }

    /// [`ServerConfig::loopback`], serving HTTPS with `tls` instead.
    pub fn loopback_tls(engine: EngineKind, tls: TlsHandle) -> Self {
        ServerConfig {
            listen: vec![Listen::https(SocketAddr::from(([127, 0, 0, 1], 0)))],
            tls: Some(tls),
            ..ServerConfig::loopback(engine)
        }
    }
}

/// What one worker thread is given.
#[derive(Debug)]
pub struct Worker {
    pub index: usize,
    /// One listener per configured address, with what it serves.
    pub listeners: Vec<(TcpListener, ListenKind)>,
    /// The current certificate, for HTTPS listeners.
    pub tls: Option<TlsHandle>,
    /// The current snapshot: load it once per batch of input
    /// ([`SnapshotHandle::load`]), never hold it across I/O.
    pub snapshot: SnapshotHandle,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub shutdown: Shutdown,
    pub shutdown_grace: Duration,
    pub uring: UringOptions,
    /// Open connections this worker may hold before it stops accepting.
    pub max_connections: usize,
    /// This worker's access log buffer, if logging is on.
    pub access_log: Option<WorkerLog>,
    /// This worker's counters, if metrics are on; only this worker writes them.
    pub metrics: Option<Arc<WorkerMetrics>>,
    /// Test-only fault injection ([`ServerConfig::fault_after_accepts`]):
    /// fail once this many connections were accepted.
    #[doc(hidden)]
    pub fault_after_accepts: Option<u64>,
}

/// Why a worker's event loop ended before the stop signal. A worker that
/// fails takes the whole server down with it, on purpose: its connections
/// are cut (their clients see a reset, not a hang), the other workers stop
/// gracefully, and the process exits non-zero ([`Server::wait`]) so that a
/// supervisor (systemd, Kubernetes) starts a fresh one. Restarting the worker
/// in place was rejected: after a broken ring or a panic, what the kernel
/// still holds of its memory cannot be known, so that memory is leaked rather
/// than reused, and a process that keeps leaking and limping is worse than
/// one that is restarted whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    pub worker: usize,
    pub reason: String,
}

impl fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} failed: {}", self.worker, self.reason)
    }
}

impl std::error::Error for WorkerFailure {}

/// A worker reports once whether its runtime started.
#[derive(Debug)]
pub struct Ready(mpsc::SyncSender<io::Result<()>>);

impl Ready {
    pub fn report(self, result: io::Result<()>) {
        let _ = self.0.send(result);
    }
}

#[derive(Debug)]
pub enum StartError {
    Bind(BindError),
    /// The kernel refused io_uring (ENOSYS, EPERM, or disabled by sysctl).
    IoUringUnavailable(EngineKind, io::Error),
    Worker(io::Error),
    AccessLog(io::Error),
    /// An HTTPS listener without a certificate.
    NoCertificate,
    /// The metrics listener could not be bound or its thread started.
    Metrics(SocketAddr, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind(e) => e.fmt(f),
            StartError::IoUringUnavailable(engine, e) => write!(
                f,
                "io_uring is not available here ({e}), so the {engine} engine cannot run; \
                 start with --engine epoll instead"
            ),
            StartError::Worker(e) => write!(f, "a worker failed to start: {e}"),
            StartError::AccessLog(e) => write!(f, "cannot open the {e}"),
            StartError::NoCertificate => f.write_str("an HTTPS listener needs --tls-cert and --tls-key"),
            StartError::Metrics(addr, e) => write!(f, "cannot serve metrics on {addr}: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running server: its workers and the signal that stops them.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    /// Every bound address (port 0 resolved), in the configured order.
    local_addrs: Vec<Listen>,
    engine: EngineKind,
    shutdown: Shutdown,
    workers: Vec<JoinHandle<()>>,
    access_log: Option<AccessLog>,
    /// Keeps other ringserve processes off this address while we serve it.
    _port_claims: Vec<listener::PortClaim>,
    metrics: Option<Arc<Metrics>>,
    metrics_addr: Option<SocketAddr>,
    metrics_thread: Option<JoinHandle<()>>,
    /// The first worker failure, if any ([`WorkerFailure`]).
    failure: Arc<Mutex<Option<WorkerFailure>>>,
}

impl Server {
    /// Binds the listeners and starts the workers serving `snapshot`, which
    /// never changes; returns once every worker's runtime is up, or with the
    /// first error.
    pub fn start(config: &ServerConfig, snapshot: Arc<Snapshot>) -> Result<Server, StartError> {
        Server::start_with_handle(config, SnapshotHandle::new(snapshot))
    }

    /// Like [`Server::start`], serving whatever `snapshot` holds at the time
    /// of each request: replacing it (a reload) takes effect at once.
    pub fn start_with_handle(config: &ServerConfig, snapshot: SnapshotHandle) -> Result<Server, StartError> {
        let worker_count = config.workers.max(1);
        let access_log = match &config.access_log {
            Some(log_config) => Some(AccessLog::open(log_config).map_err(StartError::AccessLog)?),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).map_err(|e| StartError::Metrics(addr, e))?),
            None => None,
        };
        let metrics = metrics_listener
            .as_ref()
            .map(|_| Arc::new(Metrics::new(worker_count, config.engine, snapshot.clone())));
        if config.tls.is_none() && config.listen.iter().any(|l| l.kind == ListenKind::Https) {
            return Err(StartError::NoCertificate);
        }
        // `per_address[a][w]`: worker w's listener on address a.
        let mut per_address = Vec::with_capacity(config.listen.len());
        let mut local_addrs = Vec::with_capacity(config.listen.len());
        let mut port_claims = Vec::new();
        for (index, listen) in config.listen.iter().enumerate() {
            // A socket handed over by systemd stands for the first address.
            let bound = match (&config.inherited_listener, index) {
                (Some(inherited), 0) => {
                    listener::share_inherited(inherited, worker_count).map_err(StartError::Worker)?
                }
                _ => {
                    let bound = listener::bind_listeners(listen.addr, worker_count, config.backlog)
                        .map_err(StartError::Bind)?;
                    port_claims.extend(bound.claim);
                    bound.sockets
                }
            };
            listener::set_send_timeout(&bound, config.timeouts.send).map_err(StartError::Worker)?;
            let addr = bound[0].local_addr().map_err(StartError::Worker)?;
            local_addrs.push(Listen {
                addr,
                kind: listen.kind,
            });
            per_address.push(bound.into_iter());
        }
        // A redirect to an HTTPS port picked at bind time (port 0) goes to
        // the port the first HTTPS listener got.
        let bound_https_port = local_addrs
            .iter()
            .find(|l| l.kind == ListenKind::Https)
            .map(|l| l.addr.port());
        for listen in &mut local_addrs {
            if let (ListenKind::HttpRedirect { https_port: 0 }, Some(port)) = (listen.kind, bound_https_port)
            {
                listen.kind = ListenKind::HttpRedirect { https_port: port };
            }
        }
        let Some(first) = local_addrs.first() else {
            return Err(StartError::Worker(io::Error::other("no address to listen on")));
        };
        let local_addr = first.addr;
        let mut listeners: Vec<Vec<(TcpListener, ListenKind)>> =
            (0..worker_count).map(|_| Vec::new()).collect();
        for (bound, listen) in per_address.iter_mut().zip(&local_addrs) {
            for worker_listeners in &mut listeners {
                if let Some(listener) = bound.next() {
                    worker_listeners.push((listener, listen.kind));
                }
            }
        }
        let shutdown = Shutdown::new().map_err(StartError::Worker)?;
        let cores = if config.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        let (ready_tx, ready_rx) = mpsc::sync_channel(worker_count);
        let mut server = Server {
            local_addr,
            local_addrs,
            engine: config.engine,
            shutdown: shutdown.clone(),
            workers: Vec::with_capacity(worker_count),
            access_log: None,
            _port_claims: port_claims,
            metrics: metrics.clone(),
            metrics_addr: None,
            metrics_thread: None,
            failure: Arc::default(),
        };
        for (index, listeners) in listeners.into_iter().enumerate() {
            let worker = Worker {
                index,
                listeners,
                tls: config.tls.clone(),
                snapshot: snapshot.clone(),
                limits: config.limits,
                timeouts: config.timeouts,
                shutdown: shutdown.clone(),
                shutdown_grace: config.shutdown_grace,
                uring: config.uring,
                max_connections: config.max_connections.max(1),
                access_log: access_log.as_ref().map(AccessLog::worker_log),
                metrics: metrics.as_ref().map(|m| Arc::clone(&m.workers()[index])),
                fault_after_accepts: config.fault_after_accepts.filter(|_| index == 0),
            };
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let ready = Ready(ready_tx.clone());
            let engine = config.engine;
            let failure = Arc::clone(&server.failure);
            let stop = shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ringserve-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let outcome =
                        std::panic::catch_unwind(AssertUnwindSafe(|| run_worker(engine, worker, ready)));
                    let reason = match outcome {
                        Ok(Ok(())) => return,
                        Ok(Err(error)) => error.to_string(),
                        Err(panic) => panic_message(panic.as_ref()),
                    };
                    let failed = WorkerFailure {
                        worker: index,
                        reason,
                    };
                    eprintln!(
                        "ringserve: {failed}; stopping the server (exit status 1) so that it can be restarted"
                    );
                    if let Ok(mut first) = failure.lock() {
                        first.get_or_insert(failed);
                    }
                    stop.trigger();
                });
            match spawned {
                Ok(handle) => server.workers.push(handle),
                Err(e) => {
                    server.stop();
                    return Err(StartError::Worker(e));
                }
            }
        }
        drop(ready_tx);
        server.access_log = access_log;
        for _ in 0..worker_count {
            let result = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker exited before starting")));
            if let Err(e) = result {
                server.stop();
                return Err(classify_start_error(config.engine, e));
            }
        }
        if let (Some(listener), Some(metrics)) = (metrics_listener, metrics) {
            let addr = listener.local_addr();
            let started = addr.and_then(|addr| {
                let thread = metrics::listener::spawn(listener, metrics, shutdown.clone())?;
                Ok((addr, thread))
            });
            match started {
                Ok((addr, thread)) => {
                    server.metrics_addr = Some(addr);
                    server.metrics_thread = Some(thread);
                }
                Err(e) => {
                    server.stop();
                    return Err(StartError::Metrics(
                        config.metrics_listen.unwrap_or(local_addr),
                        e,
                    ));
                }
            }
        }
        Ok(server)
    }

    /// Where the metrics are served, if they are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics, if they are on (what a scrape would report).
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// The first listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every listening address, with what it serves.
    pub fn local_addrs(&self) -> &[Listen] {
        &self.local_addrs
    }

    /// The first address of `kind`.
    pub fn addr_of(&self, kind: ListenKind) -> Option<SocketAddr> {
        self.local_addrs.iter().find(|l| l.kind == kind).map(|l| l.addr)
    }

    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// A handle that stops the server from anywhere (a signal handler).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits for every worker to finish (after a stop signal, or after a
    /// worker failed and stopped the others), then for the access log to be
    /// written; says whether a worker failed ([`WorkerFailure`]).
    pub fn wait(mut self) -> Result<(), WorkerFailure> {
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        if let Some(thread) = self.metrics_thread.take() {
            let _ = thread.join();
        }
        if let Some(log) = self.access_log.take() {
            log.finish();
        }
        match self.failure.lock() {
            Ok(mut failure) => failure.take().map_or(Ok(()), Err),
            Err(_) => Err(WorkerFailure {
                worker: 0,
                reason: "a worker panicked while reporting its failure".to_owned(),
            }),
        }
    }

    /// [`Server::wait`], for callers that have reported failures already.
    pub fn join(self) {
        let _ = self.wait();
    }

    /// Signals the workers to stop and waits for them.
    pub fn stop(self) {
        self.shutdown.trigger();
        self.join();
    }
}

/// Runs one worker's event loop until the stop signal; an error (or a
/// panic, caught by the caller) is a [`WorkerFailure`].
fn run_worker(engine: EngineKind, worker: Worker, ready: Ready) -> io::Result<()> {
    match engine {
        EngineKind::Uring => uring::run_worker(worker, ready),
        EngineKind::Epoll => epoll::run_worker(worker, ready),
        EngineKind::TokioUring => tokio_uring::run_worker(worker, ready),
        EngineKind::Tokio => tokio_epoll::run_worker(worker, ready),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("panicked: {text}")
}

/// Counts a worker's accepted connections for the test-only fault
/// injection ([`ServerConfig::fault_after_accepts`]): `true` once the worker
/// must fail.
#[derive(Debug)]
pub(crate) struct FaultCountdown(Option<u64>);

impl FaultCountdown {
    pub(crate) fn new(after_accepts: Option<u64>) -> Self {
        FaultCountdown(after_accepts)
    }

    /// After an accept: whether the injected fault is due now.
    pub(crate) fn on_accept(&mut self) -> bool {
        match &mut self.0 {
            Some(0) | None => false,
            Some(left) => {
                *left -= 1;
                *left == 0
            }
        }
    }
}

fn classify_start_error(engine: EngineKind, error: io::Error) -> StartError {
    let refused = matches!(
        error.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES)
    );
    if engine.uses_io_uring() && refused {
        StartError::IoUringUnavailable(engine, error)
    } else {
        StartError::Worker(error)
    }
}

/// Makes closing `fd` send a reset (`SO_LINGER` on with a zero timeout), so
/// the kernel discards unsent data at once instead of trying to deliver it to
/// a peer that stopped reading.
pub fn set_reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) reads `size_of::<linger>()` bytes from `&linger`,
    // a live local of exactly that type; a stale `fd` only yields EBADF.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Shuts down both directions of `fd`: pending reads and writes on it end at
/// once (also operations in flight in an io_uring), and the peer sees the end.
pub fn shutdown_both(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown(2) takes two integers and reads no memory of ours; a
    // stale `fd` only yields EBADF.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// What an accept loop does about `accept` failures, the same in every
/// engine: errors about one peer are ignored; errors about this process
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting for
/// [`ACCEPT_BACKOFF_MS`] instead of spinning, and are reported once per
/// episode rather than every retry.
/// Each pause is counted in the worker's metrics, if they are on.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u64,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl AcceptBackoff {
    /// A back-off that counts its pauses in `metrics`.
    pub fn counted(metrics: Option<Arc<WorkerMetrics>>) -> AcceptBackoff {
        AcceptBackoff { failures: 0, metrics }
    }

    /// After a failed accept: how long to pause (`None`: retry at once).
    pub fn on_error(&mut self, worker: usize, error: &io::Error) -> Option<Duration> {
        if accept_error_is_transient(error) {
            return None;
        }
        if let Some(metrics) = &self.metrics {
            metrics.on_accept_backoff();
        }
        if self.failures == 0 {
            eprintln!("ringserve: worker {worker}: accept failed: {error}; pausing accepts until it clears");
        }
        self.failures += 1;
        Some(Duration::from_millis(ACCEPT_BACKOFF_MS))
    }

    /// After a successful accept.
    pub fn on_success(&mut self, worker: usize) {
        if self.failures > 0 {
            eprintln!(
                "ringserve: worker {worker}: accepting again after {} failed attempts",
                self.failures
            );
            self.failures = 0;
        }
    }
}

/// Whether an `accept` error is about one peer (retry at once) rather than
/// about this process (back off: descriptors or memory ran out).
pub fn accept_error_is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for kind in EngineKind::ALL {
            assert_eq!(kind.name().parse::<EngineKind>().unwrap(), kind);
        }
        let err = "iocp".parse::<EngineKind>().unwrap_err();
        assert!(
            err.ends_with("(choose one of: uring, epoll, tokio-uring, tokio)"),
            "{err}"
        );
    }
}
