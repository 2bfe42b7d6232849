//! Prometheus metrics: counted by the workers, summed by a thread of their own.
//!
//! Off by default (`--metrics-listen ADDR` turns them on); off, nothing is
//! counted: engines hand the core `()` as its [`Observer`], as they do when
//! the access log is off, and every other counting site is behind an
//! `Option` that is `None`.
//!
//! On, the pipeline is:
//! 1. each worker owns one [`WorkerMetrics`] block, aligned to its own cache
//!    lines (`#[repr(align(64))]`), and is the only thread that writes it:
//!    an increment is a relaxed load and a relaxed store (no locked
//!    instruction, no cache line shared with another writer). Requests are
//!    counted through the core's [`Observer`] hook ([`ConnectionObserver`],
//!    which also feeds the access log when it is on); connections where the
//!    engine accepts and closes them ([`crate::engine::connections`] for the
//!    tokio engines, the `uring` driver's slots), accept back-offs in
//!    [`crate::engine::AcceptBackoff`], timeouts where an engine acts on an
//!    expired deadline;
//! 2. reloads are counted by the reload thread next to the snapshot handle
//!    ([`crate::files::reload::ReloadStats`]), and the snapshot's size is read
//!    from the current snapshot at scrape time;
//! 3. the metrics thread ([`listener`]) answers `GET /metrics` on its own
//!    listener with the sums ([`Metrics::render`], text format 0.0.4). A
//!    scrape reads each counter once with a relaxed load: it never blocks or
//!    slows a worker, and a sum may be a few events behind, never torn.
//!
//! TLS handshakes: once TLS exists, the handshake outcome belongs in
//! [`WorkerMetrics`] as `tls_handshakes: [AtomicU64; 2]` (ok, failed),
//! counted where the engine completes or abandons a handshake, and rendered
//! in [`Metrics::render`] as `ringserve_tls_handshakes_total{result=...}`
//! (marked `TLS` there). Not rendered before it is counted: no fake zeros.

pub mod listener;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::access_log::ConnectionLog;
use crate::engine::EngineKind;
use crate::files::SnapshotHandle;
use crate::http::{Exchange, Expiry, Observer};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Status classes counted: 1xx to 5xx.
const CLASSES: usize = 5;
/// Methods counted: GET, HEAD, anything else.
const METHODS: usize = 3;
const METHOD_NAMES: [&str; METHODS] = ["GET", "HEAD", "other"];

/// Why an engine ended a connection at a deadline (see
/// [`crate::http::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The request deadline passed with part of a head in: `408` sent.
    Head,
    /// Closed without a word: idle between requests, or a connection that
    /// never sent a byte (or whose body trickled) within its deadline.
    Idle,
    /// A send made no progress: reset.
    Send,
}

impl TimeoutKind {
    const ALL: [TimeoutKind; 3] = [TimeoutKind::Head, TimeoutKind::Idle, TimeoutKind::Send];

    fn name(self) -> &'static str {
        match self {
            TimeoutKind::Head => "head",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Send => "send",
        }
    }
}

impl From<Expiry> for TimeoutKind {
    fn from(expiry: Expiry) -> TimeoutKind {
        match expiry {
            Expiry::RequestTimeout => TimeoutKind::Head,
            Expiry::Close => TimeoutKind::Idle,
            Expiry::Abort => TimeoutKind::Send,
        }
    }
}

/// One worker's counters. Written by that worker's thread only; read by the
/// metrics thread. Its own cache lines, so two workers never write the same
/// line.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// `[status class][method]`.
    requests: [[AtomicU64; METHODS]; CLASSES],
    body_bytes: AtomicU64,
    health_checks: AtomicU64,
    accepted: AtomicU64,
    closed: AtomicU64,
    accept_backoffs: AtomicU64,
    /// By [`TimeoutKind`], in the order of [`TimeoutKind::ALL`].
    timeouts: [AtomicU64; 3],
}

/// Adds `by` to a counter that only the calling thread writes: a plain load
/// and store, no read-modify-write instruction.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl WorkerMetrics {
    /// One response (not a health check).
    #[inline]
    pub fn on_response(&self, exchange: &Exchange<'_>) {
        let class = usize::from(exchange.status / 100).clamp(1, CLASSES) - 1;
        let line = exchange.request_line;
        let method = if line.starts_with(b"GET ") {
            0
        } else if line.starts_with(b"HEAD ") {
            1
        } else {
            2
        };
        bump(&self.requests[class][method], 1);
        bump(&self.body_bytes, exchange.body_bytes);
    }

    #[inline]
    pub fn on_health_check(&self) {
        bump(&self.health_checks, 1);
    }

    /// A connection the worker began serving.
    pub fn on_accepted(&self) {
        bump(&self.accepted, 1);
    }

    /// A connection the worker stopped serving (its descriptor is closing).
    pub fn on_closed(&self) {
        bump(&self.closed, 1);
    }

    /// `accept` failed for want of descriptors or memory; accepting pauses.
    pub fn on_accept_backoff(&self) {
        bump(&self.accept_backoffs, 1);
    }

    pub fn on_timeout(&self, kind: TimeoutKind) {
        let index = TimeoutKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        bump(&self.timeouts[index], 1);
    }
}

/// Counts `kind` if metrics are on: for engines that hold an
/// `Option<Arc<WorkerMetrics>>`.
pub fn count_timeout(metrics: Option<&WorkerMetrics>, kind: impl Into<TimeoutKind>) {
    if let Some(metrics) = metrics {
        metrics.on_timeout(kind.into());
    }
}

/// The observer a connection hands the core when the access log or metrics
/// (or both) are on; with both off, engines pass `()` instead.
#[derive(Debug)]
pub struct ConnectionObserver<'a> {
    log: Option<ConnectionLog<'a>>,
    metrics: Option<&'a WorkerMetrics>,
}

impl<'a> ConnectionObserver<'a> {
    /// `None` when there is nothing to observe for.
    pub fn new(log: Option<ConnectionLog<'a>>, metrics: Option<&'a WorkerMetrics>) -> Option<Self> {
        (log.is_some() || metrics.is_some()).then_some(ConnectionObserver { log, metrics })
    }
}

impl Observer for ConnectionObserver<'_> {
    #[inline]
    fn on_response(&mut self, exchange: &Exchange<'_>) {
        if let Some(metrics) = self.metrics {
            metrics.on_response(exchange);
        }
        if let Some(log) = &mut self.log {
            log.on_response(exchange);
        }
    }

    #[inline]
    fn on_health_check(&mut self) {
        if let Some(metrics) = self.metrics {
            metrics.on_health_check();
        }
    }
}

/// Everything a scrape reports: the workers' blocks and what the process
/// knows about itself.
#[derive(Debug)]
pub struct Metrics {
    workers: Vec<Arc<WorkerMetrics>>,
    engine: EngineKind,
    snapshot: SnapshotHandle,
}

/// The sums of every worker's counters at one scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub requests: [[u64; METHODS]; CLASSES],
    pub body_bytes: u64,
    pub health_checks: u64,
    pub accepted: u64,
    pub closed: u64,
    pub accept_backoffs: u64,
    pub timeouts: [u64; 3],
}

impl Metrics {
    /// One fresh block per worker; hand `workers()[i]` to worker `i`.
    pub fn new(worker_count: usize, engine: EngineKind, snapshot: SnapshotHandle) -> Metrics {
        Metrics {
            workers: (0..worker_count).map(|_| Arc::default()).collect(),
            engine,
            snapshot,
        }
    }

    pub fn workers(&self) -> &[Arc<WorkerMetrics>] {
        &self.workers
    }

    /// Sums every worker's counters.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for worker in &self.workers {
            for (class, methods) in worker.requests.iter().enumerate() {
                for (method, counter) in methods.iter().enumerate() {
                    totals.requests[class][method] += read(counter);
                }
            }
            totals.body_bytes += read(&worker.body_bytes);
            totals.health_checks += read(&worker.health_checks);
            // Closed before accepted: a connection accepted and closed
            // between the two loads then counts as neither, never as -1 open.
            totals.closed += read(&worker.closed);
            totals.accepted += read(&worker.accepted);
            totals.accept_backoffs += read(&worker.accept_backoffs);
            for (total, counter) in totals.timeouts.iter_mut().zip(&worker.timeouts) {
                *total += read(counter);
            }
        }
        totals
    }

    /// The text exposition format, version 0.0.4: for each family its
    /// `# HELP` and `# TYPE` lines, then its samples.
    pub fn render(&self) -> String {
        let totals = self.totals();
        let mut out = String::with_capacity(4096);
        family(
            &mut out,
            "ringserve_requests_total",
            "counter",
            "Responses sent, by status class and request method (health checks not included).",
        );
        for (class, methods) in totals.requests.iter().enumerate() {
            for (method, count) in methods.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ringserve_requests_total{{class=\"{}xx\",method=\"{}\"}} {count}",
                    class + 1,
                    METHOD_NAMES[method]
                );
            }
        }
        single(
            &mut out,
            "ringserve_response_body_bytes_total",
            "counter",
            "Response body bytes sent (heads not included; 0 for HEAD and 304).",
            totals.body_bytes,
        );
        single(
            &mut out,
            "ringserve_health_checks_total",
            "counter",
            "Health-check requests answered (--health).",
            totals.health_checks,
        );
        single(
            &mut out,
            "ringserve_open_connections",
            "gauge",
            "Connections being served now.",
            totals.accepted.saturating_sub(totals.closed),
        );
        single(
            &mut out,
            "ringserve_connections_accepted_total",
            "counter",
            "Connections accepted and served.",
            totals.accepted,
        );
        single(
            &mut out,
            "ringserve_accept_backoffs_total",
            "counter",
            "Times accepting paused because accept failed for want of descriptors or memory.",
            totals.accept_backoffs,
        );
        family(
            &mut out,
            "ringserve_timeouts_total",
            "counter",
            "Connections ended at a deadline: head (408 sent), idle (closed silently), send (no progress, reset).",
        );
        for (kind, count) in TimeoutKind::ALL.iter().zip(totals.timeouts) {
            let _ = writeln!(
                out,
                "ringserve_timeouts_total{{kind=\"{}\"}} {count}",
                kind.name()
            );
        }
        // TLS: `ringserve_tls_handshakes_total{result="ok"|"failed"}` goes
        // here once handshakes are counted (see the module doc).
        let reloads = self.snapshot.reloads();
        family(
            &mut out,
            "ringserve_reloads_total",
            "counter",
            "Snapshot reloads, by result.",
        );
        let _ = writeln!(
            out,
            "ringserve_reloads_total{{result=\"ok\"}} {}",
            reloads.succeeded()
        );
        let _ = writeln!(
            out,
            "ringserve_reloads_total{{result=\"failed\"}} {}",
            reloads.failed()
        );
        single(
            &mut out,
            "ringserve_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful snapshot load (the load at start counts).",
            reloads.last_success_unix_secs(),
        );
        let stats = self.snapshot.current().stats();
        single(
            &mut out,
            "ringserve_snapshot_files",
            "gauge",
            "Files in the current snapshot.",
            stats.files as u64,
        );
        single(
            &mut out,
            "ringserve_snapshot_disk_files",
            "gauge",
            "Files of the current snapshot streamed from disk (too large for memory).",
            stats.disk_files as u64,
        );
        single(
            &mut out,
            "ringserve_snapshot_memory_bytes",
            "gauge",
            "Bytes the current snapshot holds in memory (bodies, variants, heads).",
            stats.memory_bytes,
        );
        single(
            &mut out,
            "ringserve_workers",
            "gauge",
            "Worker threads (one event loop and listener each).",
            self.workers.len() as u64,
        );
        family(
            &mut out,
            "ringserve_engine_info",
            "gauge",
            "The I/O engine serving, as a label.",
        );
        let _ = writeln!(out, "ringserve_engine_info{{engine=\"{}\"}} 1", self.engine);
        family(
            &mut out,
            "ringserve_build_info",
            "gauge",
            "The version of ringserve, as a label.",
        );
        let _ = writeln!(
            out,
            "ringserve_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// A family of one sample without labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Snapshot;

    fn exchange(line: &[u8], status: u16, body_bytes: u64) -> Exchange<'_> {
        Exchange {
            request_line: line,
            status,
            body_bytes,
            referer: None,
            user_agent: None,
        }
    }

    #[test]
    fn a_worker_block_has_cache_lines_of_its_own() {
        assert_eq!(std::mem::align_of::<WorkerMetrics>(), 64);
        assert_eq!(std::mem::size_of::<WorkerMetrics>() % 64, 0);
    }

    #[test]
    fn responses_are_counted_by_class_and_method_and_summed_over_workers() {
        let snapshot = SnapshotHandle::new(Arc::new(Snapshot::from_memory(&[("/a", b"x")], 0)));
        let metrics = Metrics::new(2, EngineKind::Epoll, snapshot);
        let (first, second) = (&metrics.workers()[0], &metrics.workers()[1]);
        first.on_response(&exchange(b"GET / HTTP/1.1", 200, 10));
        second.on_response(&exchange(b"GET /x HTTP/1.1", 200, 5));
        second.on_response(&exchange(b"HEAD / HTTP/1.1", 404, 0));
        first.on_response(&exchange(b"BREW / HTTP/1.1", 405, 7));
        first.on_response(&exchange(b"", 999, 0));
        first.on_health_check();
        first.on_accepted();
        first.on_accepted();
        first.on_closed();
        second.on_timeout(TimeoutKind::from(Expiry::RequestTimeout));
        second.on_timeout(TimeoutKind::Send);
        let totals = metrics.totals();
        assert_eq!(totals.requests[1], [2, 0, 0]);
        assert_eq!(totals.requests[3], [0, 1, 1]);
        assert_eq!(totals.requests[4], [0, 0, 1], "out-of-range codes count as 5xx");
        assert_eq!(totals.body_bytes, 22);
        assert_eq!(totals.health_checks, 1);
        assert_eq!((totals.accepted, totals.closed), (2, 1));
        assert_eq!(totals.timeouts, [1, 0, 1]);
        let text = metrics.render();
        assert!(
            text.contains("ringserve_requests_total{class=\"2xx\",method=\"GET\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ringserve_open_connections 1\n"), "{text}");
        assert!(
            text.contains("ringserve_engine_info{engine=\"epoll\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("ringserve_workers 2\n"), "{text}");
        assert!(text.contains("ringserve_snapshot_files 1\n"), "{text}");
        assert!(
            text.contains("ringserve_reloads_total{result=\"failed\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn every_sample_follows_its_help_and_type() {
        let snapshot = SnapshotHandle::new(Arc::new(Snapshot::from_memory(&[], 0)));
        let text = Metrics::new(1, EngineKind::Uring, snapshot).render();
        let mut typed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
        let mut unique = typed.clone();
        unique.dedup();
        assert_eq!(unique, typed, "one family per name");
    }
}
