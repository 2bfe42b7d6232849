//! The access log: one line per response, off by default.
//!
//! Writing must never slow down or stop serving, so the pipeline is:
//! 1. the core reports each response as an [`Exchange`] to the connection's
//!    [`ConnectionLog`] (an [`Observer`]), which formats one line into its
//!    worker's [`WorkerLog`] buffer: no system call, no lock;
//! 2. the worker hands a full buffer ([`FLUSH_BYTES`]) to the writer thread
//!    at once, and a buffer with lines in it at the latest
//!    [`MAX_FLUSH_DELAY`] (100 ms) after the first of them was written
//!    ([`WorkerLog::flush_due_at`]: the tokio engines sleep until then, the
//!    `uring` engine bounds its wait by it), through a bounded channel with
//!    `try_send`: if the writer is behind, the batch is dropped and counted,
//!    never waited for;
//! 3. the writer thread ([`AccessLog`]) writes batches to the file or stdout.
//!    A failed write (full disk, closed stdout) is reported once on stderr,
//!    then counted, and the batch is dropped: no retry loop.
//!
//! **Order.** Each worker's lines are in the order of its responses. Across
//! workers, lines are in the order their batches were handed over, not in
//! global time order: a line of one worker can follow a later line of
//! another by up to [`MAX_FLUSH_DELAY`]. Sort by the timestamp when the order
//! across workers matters.
//!
//! **Formats.** `common` and `combined` follow nginx's (`-` for a missing
//! referer or user agent, the body byte count as a number) with the time in
//! UTC to the millisecond: `[06/Nov/1994:08:49:37.123 +0000]` (nginx's
//! `$time_local` with milliseconds added; tools that parse nginx's format
//! with a fixed pattern need the `.mmm`). `json` writes one object per line,
//! its `time` in RFC 3339 with milliseconds: `1994-11-06T08:49:37.123Z`.
//! Bytes that are not printable ASCII are escaped (`\xHH` in the text
//! formats, `\u00HH` in JSON when not UTF-8), so a request cannot forge log
//! lines.
//!
//! Health checks ([`crate::http::health`]) are never logged.

use std::cell::RefCell;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::{Exchange, Observer};

/// A worker hands its buffer to the writer once it holds this much.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// … or at the latest this long after the first line waiting in it.
pub const MAX_FLUSH_DELAY: Duration = Duration::from_millis(100);
/// Batches waiting for the writer before new ones are dropped.
pub const BATCHES_IN_FLIGHT: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Common,
    Combined,
    Json,
}

impl LogFormat {
    pub const ALL: [LogFormat; 3] = [LogFormat::Common, LogFormat::Combined, LogFormat::Json];

    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Common => "common",
            LogFormat::Combined => "combined",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogFormat::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| format!("unknown log format {s:?} (choose one of: common, combined, json)"))
    }
}

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    Stdout,
    File(PathBuf),
}

impl FromStr for LogDestination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty access log path (use - for stdout)".to_owned()),
            "-" => Ok(LogDestination::Stdout),
            path => Ok(LogDestination::File(PathBuf::from(path))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub destination: LogDestination,
    pub format: LogFormat,
}

/// What went wrong with the log, counted by the writer and the workers.
#[derive(Debug, Default)]
pub struct LogStats {
    pub lines: AtomicU64,
    /// Batches dropped because the writer thread was behind.
    pub dropped_batches: AtomicU64,
    /// Batches lost to write errors.
    pub failed_batches: AtomicU64,
}

/// The process's access log: the writer thread and what workers need to
/// reach it.
#[derive(Debug)]
pub struct AccessLog {
    sender: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    format: LogFormat,
    stats: Arc<LogStats>,
}

impl AccessLog {
    /// Opens the destination (appending to a file) and starts the writer.
    pub fn open(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match &config.destination {
            LogDestination::Stdout => Box::new(io::stdout()),
            LogDestination::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))?,
            ),
        };
        Ok(AccessLog::with_sink(sink, config.format))
    }

    /// A log writing to any sink (tests use a pipe or a failing writer).
    pub fn with_sink(sink: Box<dyn Write + Send>, format: LogFormat) -> AccessLog {
        let (sender, receiver) = sync_channel(BATCHES_IN_FLIGHT);
        let stats = Arc::new(LogStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("ringserve-log".to_owned())
            .spawn(move || write_batches(receiver, sink, &writer_stats))
            .ok();
        AccessLog {
            sender: Some(sender),
            writer,
            format,
            stats,
        }
    }

    /// A handle for one worker thread.
    pub fn worker_log(&self) -> WorkerLog {
        WorkerLog {
            buffer: Vec::with_capacity(FLUSH_BYTES + 1024),
            sender: self.sender.clone(),
            format: self.format,
            stats: Arc::clone(&self.stats),
            pending_since: None,
            time: TimeCache::default(),
            reported_drop: false,
        }
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Waits for every worker's handle to be dropped and the writer to write
    /// what it was given; reports losses on stderr.
    pub fn finish(mut self) {
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let dropped = self.stats.dropped_batches.load(Ordering::Relaxed);
        let failed = self.stats.failed_batches.load(Ordering::Relaxed);
        if dropped + failed > 0 {
            eprintln!(
                "ringserve: access log: {dropped} batches dropped (writer behind), {failed} lost to write errors"
            );
        }
    }
}

fn write_batches(receiver: Receiver<Vec<u8>>, mut sink: Box<dyn Write + Send>, stats: &LogStats) {
    let mut reported = false;
    for batch in receiver {
        let written = sink.write_all(&batch).and_then(|()| sink.flush());
        if let Err(e) = written {
            stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            if !reported {
                reported = true;
                eprintln!(
                    "ringserve: access log write failed: {e}; serving goes on, further losses are counted"
                );
            }
        }
    }
}

/// One worker's log buffer. Worker-local; shared by its connections through
/// `Rc<RefCell<…>>` (see [`ConnectionLog`]).
#[derive(Debug)]
pub struct WorkerLog {
    buffer: Vec<u8>,
    sender: Option<SyncSender<Vec<u8>>>,
    format: LogFormat,
    stats: Arc<LogStats>,
    /// When the first line still in `buffer` was written (`None`: empty).
    pending_since: Option<Instant>,
    time: TimeCache,
    reported_drop: bool,
}

impl WorkerLog {
    /// Appends one line; hands the buffer over if it is full.
    pub fn record(&mut self, peer: IpAddr, exchange: &Exchange<'_>) {
        if self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        let now = SystemTime::now();
        let time = self.time.get(now);
        format_line(&mut self.buffer, self.format, peer, time, exchange);
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        if self.buffer.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// When the buffer must be handed over: [`MAX_FLUSH_DELAY`] after its
    /// first line (`None`: nothing is waiting). Engines wake up for it.
    pub fn flush_due_at(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + MAX_FLUSH_DELAY)
    }

    /// Hands the buffer over if its lines have waited long enough at `now`.
    pub fn flush_if_due(&mut self, now: Instant) {
        if self.flush_due_at().is_some_and(|due| due <= now) {
            self.flush();
        }
    }

    /// Hands the buffer to the writer without waiting.
    pub fn flush(&mut self) {
        self.pending_since = None;
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buffer, Vec::with_capacity(FLUSH_BYTES + 1024));
        let Some(sender) = &self.sender else { return };
        match sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
                if !self.reported_drop {
                    self.reported_drop = true;
                    eprintln!("ringserve: access log writer is behind; dropping batches (counted)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for WorkerLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The [`Observer`] one connection hands to its session.
#[derive(Debug)]
pub struct ConnectionLog<'a> {
    pub log: &'a RefCell<WorkerLog>,
    pub peer: IpAddr,
}

impl Observer for ConnectionLog<'_> {
    fn on_response(&mut self, exchange: &Exchange<'_>) {
        self.log.borrow_mut().record(self.peer, exchange);
    }
}

/// The two renderings of the current second, redone when it changes; the
/// milliseconds are written into them for each line.
#[derive(Debug)]
struct TimeCache {
    second: u64,
    /// `06/Nov/1994:08:49:37.123 +0000`
    common: [u8; 30],
    /// `1994-11-06T08:49:37.123Z`
    iso: [u8; 24],
}

/// Where the three millisecond digits sit in each rendering.
const COMMON_MILLIS: std::ops::Range<usize> = 21..24;
const ISO_MILLIS: std::ops::Range<usize> = 20..23;

impl Default for TimeCache {
    fn default() -> Self {
        TimeCache {
            second: u64::MAX,
            common: [0; 30],
            iso: [0; 24],
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Times<'a> {
    common: &'a [u8],
    iso: &'a [u8],
}

impl TimeCache {
    fn get(&mut self, now: SystemTime) -> Times<'_> {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since_epoch.as_secs();
        if second != self.second {
            self.second = second;
            let (year, month, day) = civil_from_days((second / 86_400) as i64);
            let of_day = second % 86_400;
            let (h, m, s) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let common = format!(
                "{day:02}/{}/{year:04}:{h:02}:{m:02}:{s:02}.000 +0000",
                MONTHS[(month - 1) as usize]
            );
            let iso = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.000Z");
            self.common.copy_from_slice(&common.as_bytes()[..30]);
            self.iso.copy_from_slice(&iso.as_bytes()[..24]);
        }
        let millis = since_epoch.subsec_millis();
        let digits = [
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
        ];
        self.common[COMMON_MILLIS].copy_from_slice(&digits);
        self.iso[ISO_MILLIS].copy_from_slice(&digits);
        Times {
            common: &self.common,
            iso: &self.iso,
        }
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn format_line(out: &mut Vec<u8>, format: LogFormat, peer: IpAddr, time: Times<'_>, exchange: &Exchange<'_>) {
    use std::io::Write as _;
    match format {
        LogFormat::Common | LogFormat::Combined => {
            let _ = write!(out, "{peer} - - [");
            out.extend_from_slice(time.common);
            out.extend_from_slice(b"] \"");
            escape_text(out, exchange.request_line);
            let _ = write!(out, "\" {} {}", exchange.status, exchange.body_bytes);
            if format == LogFormat::Combined {
                for field in [exchange.referer, exchange.user_agent] {
                    out.extend_from_slice(b" \"");
                    match field {
                        Some(value) => escape_text(out, value),
                        None => out.push(b'-'),
                    }
                    out.push(b'"');
                }
            }
        }
        LogFormat::Json => {
            let mut parts = exchange.request_line.splitn(3, |&b| b == b' ');
            let (method, target, protocol) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            out.extend_from_slice(b"{\"time\":\"");
            out.extend_from_slice(time.iso);
            let _ = write!(out, "\",\"remote\":\"{peer}\",\"method\":");
            json_string(out, Some(method));
            out.extend_from_slice(b",\"target\":");
            json_string(out, Some(target));
            out.extend_from_slice(b",\"protocol\":");
            json_string(out, Some(protocol));
            let _ = write!(
                out,
                ",\"status\":{},\"bytes\":{},\"referer\":",
                exchange.status, exchange.body_bytes
            );
            json_string(out, exchange.referer);
            out.extend_from_slice(b",\"user_agent\":");
            json_string(out, exchange.user_agent);
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

/// nginx's escaping for text logs: `"`, `\` and anything outside printable
/// ASCII become `\xHH`.
fn escape_text(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'\\', b'x', hex_digit(b >> 4), hex_digit(b & 0xf)]);
        }
    }
}

/// A JSON string (or `null`). Valid UTF-8 passes through; otherwise each byte
/// at or above 0x80 becomes `\u00HH`, so the line stays valid JSON.
fn json_string(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(bytes) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    let utf8 = std::str::from_utf8(bytes).is_ok();
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            0x80.. if utf8 => out.push(b),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex_digit(b >> 4), hex_digit(b & 0xf)]),
        }
    }
    out.push(b'"');
}

fn hex_digit(nibble: u8) -> u8 {
    b"0123456789abcdef"[usize::from(nibble & 0xf)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn exchange<'a>(line: &'a [u8], referer: Option<&'a [u8]>) -> Exchange<'a> {
        Exchange {
            request_line: line,
            status: 200,
            body_bytes: 13,
            referer,
            user_agent: Some(b"curl/8"),
        }
    }

    fn line(format: LogFormat, ex: &Exchange<'_>) -> String {
        let mut cache = TimeCache::default();
        let times = cache.get(UNIX_EPOCH + Duration::from_millis(784_111_777_089));
        let mut out = Vec::new();
        format_line(&mut out, format, "127.0.0.1".parse().unwrap(), times, ex);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn common_and_combined_look_like_nginx() {
        let ex = exchange(b"GET /book HTTP/1.1", None);
        assert_eq!(
            line(LogFormat::Common, &ex),
            "127.0.0.1 - - [06/Nov/1994:08:49:37.089 +0000] \"GET /book HTTP/1.1\" 200 13\n"
        );
        assert_eq!(
            line(LogFormat::Combined, &ex),
            "127.0.0.1 - - [06/Nov/1994:08:49:37.089 +0000] \"GET /book HTTP/1.1\" 200 13 \"-\" \"curl/8\"\n"
        );
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let ex = exchange(b"GET /a\"\\\xff HTTP/1.1", Some(b"x\ny"));
        let text = line(LogFormat::Json, &ex);
        assert_eq!(
            text,
            "{\"time\":\"1994-11-06T08:49:37.089Z\",\"remote\":\"127.0.0.1\",\"method\":\"GET\",\
             \"target\":\"/a\\\"\\\\\\u00ff\",\"protocol\":\"HTTP/1.1\",\"status\":200,\"bytes\":13,\
             \"referer\":\"x\\u000ay\",\"user_agent\":\"curl/8\"}\n"
        );
    }

    #[test]
    fn text_formats_cannot_be_forged() {
        let ex = exchange(b"GET /\" 200 1\n127.0.0.2 HTTP/1.1", None);
        let text = line(LogFormat::Common, &ex);
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("GET /\\x22 200 1\\x0a127.0.0.2 HTTP/1.1"), "{text}");
    }

    #[test]
    fn milliseconds_change_within_a_cached_second() {
        let mut cache = TimeCache::default();
        let second = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let first = cache.get(second + Duration::from_millis(7));
        assert_eq!(first.iso, b"1994-11-06T08:49:37.007Z");
        assert_eq!(first.common, b"06/Nov/1994:08:49:37.007 +0000");
        let later = cache.get(second + Duration::from_millis(999));
        assert_eq!(later.iso, b"1994-11-06T08:49:37.999Z");
        let next = cache.get(second + Duration::from_millis(1000));
        assert_eq!(next.common, b"06/Nov/1994:08:49:38.000 +0000");
    }

    #[test]
    fn lines_are_due_a_fixed_delay_after_the_first_waiting_one() {
        let log = AccessLog::with_sink(Box::new(io::sink()), LogFormat::Common);
        let mut worker = log.worker_log();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(worker.flush_due_at(), None, "nothing waiting: no wake-up");
        let before = Instant::now();
        worker.record(peer, &exchange(b"GET / HTTP/1.1", None));
        let due = worker.flush_due_at().unwrap();
        assert!(due >= before + MAX_FLUSH_DELAY && due <= Instant::now() + MAX_FLUSH_DELAY);
        worker.record(peer, &exchange(b"GET /2 HTTP/1.1", None));
        assert_eq!(worker.flush_due_at(), Some(due), "later lines do not postpone it");
        worker.flush_if_due(due - Duration::from_millis(1));
        assert_eq!(worker.flush_due_at(), Some(due), "not yet");
        worker.flush_if_due(due);
        assert_eq!(worker.flush_due_at(), None, "handed over");
        drop(worker);
        let stats = Arc::clone(&log.stats);
        log.finish();
        assert_eq!(stats.lines.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped_batches.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    /// A sink that fails every write, counting attempts.
    struct Broken(Arc<Mutex<usize>>);

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            *self.0.lock().unwrap() += 1;
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_is_counted_not_retried() {
        let attempts = Arc::new(Mutex::new(0));
        let log = AccessLog::with_sink(Box::new(Broken(Arc::clone(&attempts))), LogFormat::Common);
        let mut worker = log.worker_log();
        let peer: IpAddr = "::1".parse().unwrap();
        for _ in 0..3 {
            worker.record(peer, &exchange(b"GET / HTTP/1.1", None));
            worker.flush();
        }
        drop(worker);
        let stats = Arc::clone(&log.stats);
        log.finish();
        assert_eq!(stats.lines.load(Ordering::Relaxed), 3);
        assert_eq!(stats.failed_batches.load(Ordering::Relaxed), 3);
        assert_eq!(*attempts.lock().unwrap(), 3, "one attempt per batch, no retry");
    }

    /// A sink that blocks until released: the writer is stuck.
    struct Stuck(Arc<Mutex<()>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            drop(self.0.lock().unwrap());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_worker() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let log = AccessLog::with_sink(Box::new(Stuck(Arc::clone(&gate))), LogFormat::Json);
        let mut worker = log.worker_log();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..(BATCHES_IN_FLIGHT + 10) {
            worker.record(peer, &exchange(b"GET / HTTP/1.1", None));
            worker.flush();
        }
        // Reaching here at all shows the worker did not wait; some batches
        // were dropped because the channel was full.
        assert!(log.stats().dropped_batches.load(Ordering::Relaxed) >= 9);
        drop(held);
        drop(worker);
        log.finish();
    }
}
