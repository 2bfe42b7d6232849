//! Reporting a load while it runs, so that a long start is never silent.
//!
//! Each stage of a load (walking the root, reading and hashing, building the
//! variants in the background) that took at least [`STAGE_LINE_MIN_MS`]
//! ends with one line on stderr saying what it did and how long it took:
//! what a log collector keeps. Quicker stages say nothing (the start line
//! covers them, and an error at start stays one clear line). When stderr is a
//! terminal, a progress line (files, bytes, elapsed time) is also redrawn in
//! place, at most [`REDRAW_INTERVAL_MS`] apart, while a stage runs. Counting
//! is a relaxed atomic add per file; off (in tests, and for reloads' own
//! reporting) it costs nothing more.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The progress line is redrawn at most this often.
pub const REDRAW_INTERVAL_MS: u64 = 250;
/// A stage that took less than this is not reported.
pub const STAGE_LINE_MIN_MS: u64 = 250;

/// One stage of a load, being reported.
#[derive(Debug)]
pub struct Progress {
    stage: &'static str,
    enabled: bool,
    terminal: bool,
    started: Instant,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds since `started` at the last redraw.
    drawn_at_ms: AtomicU64,
}

impl Progress {
    /// Starts timing `stage`; reports nothing unless `enabled`.
    pub fn start(stage: &'static str, enabled: bool) -> Progress {
        Progress {
            stage,
            enabled,
            terminal: enabled && std::io::stderr().is_terminal(),
            started: Instant::now(),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drawn_at_ms: AtomicU64::new(0),
        }
    }

    /// One more file of `bytes` done.
    pub fn count(&self, bytes: u64) {
        if !self.enabled {
            return;
        }
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if !self.terminal {
            return;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let drawn = self.drawn_at_ms.load(Ordering::Relaxed);
        if now < drawn + REDRAW_INTERVAL_MS
            || self
                .drawn_at_ms
                .compare_exchange(drawn, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Kringserve: {}: {files} files, {:.1} MiB, {:.1} s",
            self.stage,
            bytes as f64 / (1024.0 * 1024.0),
            now as f64 / 1000.0
        );
        let _ = stderr.flush();
    }

    /// The stage is over: one line with `detail` and the time it took (if it
    /// was not quick).
    pub fn stage_done(&self, detail: fmt::Arguments<'_>) {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        if !self.enabled || elapsed_ms < STAGE_LINE_MIN_MS {
            if self.terminal && self.drawn_at_ms.load(Ordering::Relaxed) > 0 {
                eprint!("\r\x1b[K");
            }
            return;
        }
        let clear = if self.terminal { "\r\x1b[K" } else { "" };
        eprintln!(
            "{clear}ringserve: {}: done, {detail}, in {:.1} ms",
            self.stage,
            self.started.elapsed().as_secs_f64() * 1000.0
        );
    }
}
