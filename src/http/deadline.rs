//! Which deadline governs a connection right now, and what happens when it
//! passes: the timeout rules, without a clock or a timer of their own.
//!
//! Every engine asks the same question before each read and each write, and
//! only the way it waits differs (tokio timers, io_uring timeouts), so the
//! answer lives here, once:
//! 1. **Request deadline** (total, [`Timeouts::head`]): from the moment the
//!    first byte of a request head is seen (for a new connection: from
//!    accept) until the head *and its body* are in. Not reset by bytes that
//!    arrive, so a client sending one byte at a time (slowloris) is cut off on
//!    time. On expiry: `408` and close if part of a head arrived; a silent
//!    close if nothing did (a fresh connection that never spoke) or if the
//!    response was already sent (a body that trickles).
//! 2. **Idle deadline** ([`Timeouts::idle`]): between requests on a
//!    keep-alive connection; on expiry, a silent close.
//! 3. **Send deadline** ([`Timeouts::send`]): for each write, measured as *no
//!    progress* — an engine asks again after every partial write, so a slow
//!    reader that keeps taking bytes is never cut off, and one that stopped
//!    reading is dropped (with a reset: its unsent data is useless) once
//!    `send` passes without a byte taken.
//!
//! The engine passes `now` in; this module never reads a clock, so every rule
//! is unit-tested with made-up instants.

use std::time::{Duration, Instant};

use crate::http::Session;

/// Per-connection timeouts. Every engine enforces the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head (or from accept) until the head
    /// and any body are received: a total deadline, not reset by each byte.
    pub head: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle: Duration,
    /// How long a write may make no progress (a client that stopped reading).
    pub send: Duration,
    /// After a refused request: how long to read and discard what the client
    /// still sends before closing (see [`crate::http::Next::Linger`]).
    pub linger: Duration,
}

pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 75_000;
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_LINGER_MS: u64 = 1_000;

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head: Duration::from_millis(DEFAULT_HEAD_TIMEOUT_MS),
            idle: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            send: Duration::from_millis(DEFAULT_SEND_TIMEOUT_MS),
            linger: Duration::from_millis(DEFAULT_LINGER_MS),
        }
    }
}

/// What the engine does when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Close without a word: nothing of a request is pending.
    Close,
    /// Part of a head arrived: answer with [`Session::on_head_timeout`]
    /// (`408`, `Connection: close`), then linger and close.
    RequestTimeout,
    /// A write made no progress: close with a reset (`SO_LINGER` 0), so the
    /// kernel drops the unsent bytes instead of trying to deliver them.
    Abort,
}

/// A point in time and what to do if it passes before the operation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub expiry: Expiry,
}

/// One connection's timer state: when its current request started arriving.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineClock {
    /// Start of the request deadline, while a request is being received.
    request_started: Option<Instant>,
    /// [`Session::answered`] when last asked: a change means the request
    /// that `request_started` timed is done.
    answered: u32,
}

impl DeadlineClock {
    /// A new connection: the request deadline runs from accept, so one that
    /// connects and says nothing is closed after [`Timeouts::head`], not idle.
    pub fn new(accepted_at: Instant) -> Self {
        DeadlineClock {
            request_started: Some(accepted_at),
            answered: 0,
        }
    }

    /// The deadline for the read an engine is about to start, given the
    /// session and how many received bytes it left unconsumed (a partial head).
    pub fn for_read(
        &mut self,
        session: &Session,
        buffered: usize,
        now: Instant,
        timeouts: &Timeouts,
    ) -> Deadline {
        if session.answered() != self.answered {
            self.answered = session.answered();
            self.request_started = None;
        }
        if buffered > 0 {
            let started = *self.request_started.get_or_insert(now);
            return Deadline {
                at: started + timeouts.head,
                expiry: Expiry::RequestTimeout,
            };
        }
        if session.is_reading_body() {
            let started = *self.request_started.get_or_insert(now);
            return Deadline {
                at: started + timeouts.head,
                expiry: Expiry::Close,
            };
        }
        if let Some(accepted) = self.request_started {
            // A fresh connection that has sent nothing yet.
            return Deadline {
                at: accepted + timeouts.head,
                expiry: Expiry::Close,
            };
        }
        Deadline {
            at: now + timeouts.idle,
            expiry: Expiry::Close,
        }
    }

    /// The deadline for one write (ask again after each partial write).
    pub fn for_write(now: Instant, timeouts: &Timeouts) -> Deadline {
        Deadline {
            at: now + timeouts.send,
            expiry: Expiry::Abort,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::Snapshot;
    use crate::http::{Limits, Output};

    const MS: Duration = Duration::from_millis(1);

    fn timeouts() -> Timeouts {
        Timeouts {
            head: 100 * MS,
            idle: 1000 * MS,
            send: 50 * MS,
            linger: 10 * MS,
        }
    }

    fn feed(session: &mut Session, input: &[u8]) -> usize {
        let progress = session.on_input(
            input,
            &Snapshot::default(),
            &Limits::default(),
            &mut Output::new(),
        );
        input.len() - progress.consumed
    }

    #[test]
    fn a_fresh_connection_gets_the_head_timeout_from_accept_and_closes_silently() {
        let t0 = Instant::now();
        let mut clock = DeadlineClock::new(t0);
        let session = Session::new();
        let deadline = clock.for_read(&session, 0, t0 + 30 * MS, &timeouts());
        assert_eq!(
            deadline,
            Deadline {
                at: t0 + 100 * MS,
                expiry: Expiry::Close
            }
        );
    }

    #[test]
    fn the_head_deadline_is_total_not_reset_by_each_byte() {
        let t0 = Instant::now();
        let mut clock = DeadlineClock::new(t0);
        let mut session = Session::new();
        let mut input = Vec::new();
        for (i, byte) in b"GET / HTTP/1.1\r\nHost: a\r\n".iter().enumerate() {
            input.push(*byte);
            let buffered = feed(&mut session, &input);
            assert_eq!(buffered, input.len(), "nothing is consumed from a partial head");
            let now = t0 + (i as u32) * 3 * MS;
            let deadline = clock.for_read(&session, buffered, now, &timeouts());
            assert_eq!(
                deadline,
                Deadline {
                    at: t0 + 100 * MS,
                    expiry: Expiry::RequestTimeout
                }
            );
        }
    }

    #[test]
    fn after_a_response_the_idle_timeout_applies_and_the_next_head_starts_its_own_deadline() {
        let t0 = Instant::now();
        let mut clock = DeadlineClock::new(t0);
        let mut session = Session::new();
        assert_eq!(feed(&mut session, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0);
        let idle = clock.for_read(&session, 0, t0 + 5 * MS, &timeouts());
        assert_eq!(
            idle,
            Deadline {
                at: t0 + 1005 * MS,
                expiry: Expiry::Close
            }
        );
        // Each idle read moves the idle deadline (it is about silence).
        let later = clock.for_read(&session, 0, t0 + 500 * MS, &timeouts());
        assert_eq!(later.at, t0 + 1500 * MS);
        // The next request starts arriving at 600 ms.
        let head = clock.for_read(&session, 3, t0 + 600 * MS, &timeouts());
        assert_eq!(
            head,
            Deadline {
                at: t0 + 700 * MS,
                expiry: Expiry::RequestTimeout
            }
        );
        let still = clock.for_read(&session, 10, t0 + 650 * MS, &timeouts());
        assert_eq!(still.at, t0 + 700 * MS);
    }

    #[test]
    fn a_pipelined_partial_head_starts_its_deadline_when_seen() {
        let t0 = Instant::now();
        let mut clock = DeadlineClock::new(t0);
        let mut session = Session::new();
        // The first request took 90 ms to arrive; the second begins with it.
        let buffered = feed(&mut session, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HT");
        assert_eq!(buffered, 9);
        let deadline = clock.for_read(&session, buffered, t0 + 90 * MS, &timeouts());
        assert_eq!(
            deadline,
            Deadline {
                at: t0 + 190 * MS,
                expiry: Expiry::RequestTimeout
            }
        );
    }

    #[test]
    fn a_trickling_body_is_bounded_by_the_request_deadline_and_closed_silently() {
        let t0 = Instant::now();
        let mut clock = DeadlineClock::new(t0);
        let mut session = Session::new();
        let buffered = feed(
            &mut session,
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
        );
        assert_eq!(buffered, 0);
        assert!(session.is_reading_body());
        let first = clock.for_read(&session, 0, t0 + 10 * MS, &timeouts());
        let second = clock.for_read(&session, 0, t0 + 60 * MS, &timeouts());
        // The body's deadline runs from when the engine first waits for it.
        assert_eq!(
            first,
            Deadline {
                at: t0 + 110 * MS,
                expiry: Expiry::Close
            }
        );
        assert_eq!(second, first, "body bytes do not extend the deadline");
    }

    #[test]
    fn writes_are_measured_from_the_last_progress() {
        let t0 = Instant::now();
        let first = DeadlineClock::for_write(t0, &timeouts());
        let after_progress = DeadlineClock::for_write(t0 + 40 * MS, &timeouts());
        assert_eq!(
            first,
            Deadline {
                at: t0 + 50 * MS,
                expiry: Expiry::Abort
            }
        );
        assert_eq!(after_progress.at, t0 + 90 * MS);
    }
}
