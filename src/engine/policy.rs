//! Connection policy shared by the native engines (`uring`, `epoll`): what a
//! connection decides, whatever moves its bytes. The engines' loops say only
//! how bytes and completions or readiness move; the rules are here, once.
//!
//! What lives here:
//! - [`Serving`]: what every connection of a worker answers with (snapshot,
//!   limits, timeouts, access log, the worker's clock), one field of each
//!   loop, lent to a connection for one event.
//! - [`Carry`]: the received bytes a connection keeps between reads (the
//!   start of a head that spans reads); nothing, not even an allocation,
//!   while idle, so an idle connection owns no receive buffer.
//! - [`answer`]: running the sans-I/O core over carried and fresh input,
//!   keeping only what it did not consume, with the access-log hook
//!   ([`ConnectionLog`]) when logging is on; [`head_timeout`] for the 408.
//! - [`ending`], [`after_output`], [`ends_after_output`] and [`Lingering`]:
//!   what a session's [`Next`] means once its output is written (answer what
//!   is carried and read on; close at once when the client asked to close
//!   and nothing it sent is unread; otherwise shut down the sending side and
//!   linger: read and discard within bounds, then close). Every engine, the
//!   tokio ones included, ends connections by this one rule.
//! - [`Serving::deadline`]: which deadline governs a connection in each of
//!   its states ([`Waiting`]), by the core's rules
//!   ([`crate::http::deadline`]), on the worker's millisecond clock.
//! - [`Pool`]: the outboxes a worker reuses, so idle connections hold no
//!   output buffer.
//! - [`Stopping`]: drain on stop: after the stop signal, the grace period
//!   during which responses in flight finish, then one reset of the rest.
//! - the metrics hooks ([`Serving::count_connection`],
//!   [`Serving::count_timeout`]) and the access log's flush timing.
//! - the lazy deadline queue ([`crate::engine::deadlines`]), the connection
//!   table ([`crate::engine::slots`]), the cap and the accept back-off
//!   ([`crate::engine::AcceptBackoff`]) are their own modules, used by both.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::{ConnectionLog, WorkerLog};
use crate::engine::deadlines::{Millis, NEVER};
use crate::engine::{LINGER_MAX_BYTES, Ready, Worker};
use crate::files::Snapshot;
use crate::http::{DeadlineClock, Expiry, Limits, Next, Output, Progress, Timeouts};
use crate::metrics::{ConnectionObserver, TimeoutKind, WorkerMetrics, count_timeout};
use crate::protocol::Protocol;

/// What every connection of a worker shares when answering.
#[derive(Debug)]
pub struct Serving {
    /// The snapshot this loop iteration answers from.
    pub snapshot: Arc<Snapshot>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// The worker's access log, if logging is on.
    pub log: Option<RefCell<WorkerLog>>,
    /// The worker's counters, if metrics are on.
    pub metrics: Option<Arc<WorkerMetrics>>,
    /// The worker's clock: `now` is milliseconds since `epoch`, read once
    /// per loop iteration.
    pub epoch: Instant,
    pub now: Millis,
}

/// What the loop does when a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Close without a word.
    Close,
    /// Close with a reset (`SO_LINGER` 0).
    Reset,
    /// Answer 408 (the connection's `on_head_timeout`), then linger.
    RequestTimeout,
}

/// What a connection is waiting for, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing: it is being closed.
    Nothing,
    /// Its output to be taken by the socket, last progress at `since`.
    Output { since: Millis },
    /// Input to discard, since its last output was written at `since`.
    Lingering { since: Millis },
    /// A request (or the rest of one).
    Input,
}

impl Serving {
    pub fn new(
        snapshot: Arc<Snapshot>,
        limits: Limits,
        timeouts: Timeouts,
        log: Option<WorkerLog>,
        metrics: Option<Arc<WorkerMetrics>>,
    ) -> Serving {
        Serving {
            snapshot,
            limits,
            timeouts,
            log: log.map(RefCell::new),
            metrics,
            epoch: Instant::now(),
            now: 0,
        }
    }

    /// The serving context of `worker` (taking its access log).
    pub fn for_worker(worker: &mut Worker) -> Serving {
        Serving::new(
            worker.snapshot.current(),
            worker.limits,
            worker.timeouts,
            worker.access_log.take(),
            worker.metrics.clone(),
        )
    }

    /// Reads the clock (once per loop iteration).
    pub fn tick(&mut self) {
        self.now = millis(self.epoch.elapsed());
    }

    pub fn instant(&self, at: Millis) -> Instant {
        self.epoch + Duration::from_millis(at)
    }

    pub fn millis(&self, at: Instant) -> Millis {
        millis(at.saturating_duration_since(self.epoch))
    }

    /// What observes a connection's responses (its `peer` is known when
    /// the access log is on): the access log and the metrics, if either is
    /// on.
    pub fn observer(&self, peer: Option<IpAddr>) -> Option<ConnectionObserver<'_>> {
        let log = self
            .log
            .as_ref()
            .zip(peer)
            .map(|(log, peer)| ConnectionLog { log, peer });
        ConnectionObserver::new(log, self.metrics.as_deref())
    }

    /// Counts a connection's deadline passing (in the metrics, if on).
    pub fn count_timeout(&self, kind: impl Into<TimeoutKind>) {
        count_timeout(self.metrics.as_deref(), kind);
    }

    /// A connection's deadline passed: counts it (a linger running out is
    /// how a refusal normally ends, not a timeout, and is not counted) and
    /// says what the loop does.
    pub fn on_expired(&self, expiry: Expiry, lingering: bool) -> Expired {
        if !lingering {
            self.count_timeout(expiry);
        }
        match expiry {
            Expiry::Close => Expired::Close,
            // A write made no progress: its unsent data is useless.
            Expiry::Abort => Expired::Reset,
            Expiry::RequestTimeout => Expired::RequestTimeout,
        }
    }

    /// Counts a connection opened or closed (in the metrics, if on).
    pub fn count_connection(&self, opened: bool) {
        if let Some(metrics) = &self.metrics {
            if opened {
                metrics.on_accepted();
            } else {
                metrics.on_closed();
            }
        }
    }

    /// When the access log's waiting lines are due to be handed over, on
    /// the worker's clock (rounded up); `None` if none are waiting.
    pub fn log_flush_due(&self) -> Option<Millis> {
        let due = self.log.as_ref()?.borrow().flush_due_at()?;
        Some(self.millis(due) + 1)
    }

    /// Hands the access log's lines over if they have waited long enough.
    pub fn flush_log_if_due(&self) {
        if self.log_flush_due().is_some_and(|at| at <= self.now) {
            if let Some(log) = &self.log {
                log.borrow_mut().flush();
            }
        }
    }

    /// The deadline of a connection `waiting` (`NEVER`: none) and what its
    /// passing means: the send deadline counted from the last progress, the
    /// linger deadline from the last write, or the core's read deadline for
    /// the session and the `carried` bytes of a partial head (for HTTPS,
    /// what the protocol counts as unanswered: a handshake is bounded like a
    /// connection that has not spoken, [`Protocol::buffered`]).
    pub fn deadline(
        &self,
        waiting: Waiting,
        clock: &mut DeadlineClock,
        protocol: &Protocol,
        carried: usize,
    ) -> (Millis, Expiry) {
        match waiting {
            Waiting::Nothing => (NEVER, Expiry::Close),
            Waiting::Lingering { since } => (
                self.millis(self.instant(since) + self.timeouts.linger),
                Expiry::Close,
            ),
            Waiting::Output { since } => {
                let deadline = DeadlineClock::for_write(self.instant(since), &self.timeouts);
                (self.millis(deadline.at), deadline.expiry)
            }
            Waiting::Input => {
                let deadline = clock.for_read(
                    protocol.session(),
                    protocol.buffered(carried),
                    self.instant(self.now),
                    &self.timeouts,
                );
                (self.millis(deadline.at), deadline.expiry)
            }
        }
    }
}

/// A worker's stop: the stop signal starts the grace period (the loop closes
/// its listener and shuts down the read side of every open connection, so
/// one waiting for a request sees end-of-file and closes, and one
/// mid-response finishes it); when it is over, what is left is reset, once;
/// the loop returns once no connection is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopping {
    Running,
    Grace { until: Millis },
    Aborted,
}

impl Stopping {
    /// The stop signal came at `now`: `true` the first time (start draining).
    pub fn begin(&mut self, now: Millis, grace: Duration) -> bool {
        if *self != Stopping::Running {
            return false;
        }
        *self = Stopping::Grace {
            until: now.saturating_add(millis(grace)),
        };
        true
    }

    pub fn is_running(&self) -> bool {
        *self == Stopping::Running
    }

    /// When the loop must wake for the end of the grace period.
    pub fn wake_at(&self) -> Option<Millis> {
        match *self {
            Stopping::Grace { until } => Some(until),
            Stopping::Running | Stopping::Aborted => None,
        }
    }

    /// `true` once, when the grace period is over at `now`: reset what is left.
    pub fn grace_over(&mut self, now: Millis) -> bool {
        if self.wake_at().is_some_and(|until| until <= now) {
            *self = Stopping::Aborted;
            return true;
        }
        false
    }
}

/// How a native engine's worker runs: build its loop with `new` on the
/// worker's thread (a failure, such as a kernel refusing io_uring, is
/// reported through `ready` as a start error), report that it is up, then
/// `run` it until the stop signal (an error is a worker failure).
pub fn start_loop<D>(
    worker: Worker,
    ready: Ready,
    new: impl FnOnce(Worker) -> io::Result<D>,
    run: impl FnOnce(D) -> io::Result<()>,
) -> io::Result<()> {
    match new(worker) {
        Ok(driver) => {
            ready.report(Ok(()));
            run(driver)
        }
        Err(e) => {
            ready.report(Err(e));
            Ok(())
        }
    }
}

/// Milliseconds of `duration`, saturating below [`NEVER`].
pub fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(NEVER - 1)
}

/// Received bytes kept for later, in a buffer that exists only while it holds
/// something (a pointer's worth in every connection, not a `Vec`'s three
/// words): most connections, most of the time, carry nothing.
#[derive(Debug, Default)]
// The box is the point: one word in every connection instead of three, and
// the extra allocation happens only while bytes are carried.
#[allow(clippy::box_collection)]
pub struct Carry(Option<Box<Vec<u8>>>);

impl Carry {
    pub fn with_capacity(capacity: usize) -> Carry {
        Carry(Some(Box::new(Vec::with_capacity(capacity))))
    }

    /// The buffer, created if there is none (receiving into it).
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Box::default)
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.buffer_mut().extend_from_slice(bytes);
        }
    }

    /// Drops the first `len` bytes.
    pub fn consume(&mut self, len: usize) {
        if let Some(buffer) = &mut self.0 {
            buffer.drain(..len);
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if let Some(buffer) = &mut self.0 {
            buffer.truncate(len);
        }
    }

    /// Empties it, keeping the buffer.
    pub fn clear(&mut self) {
        if let Some(buffer) = &mut self.0 {
            buffer.clear();
        }
    }

    /// Empties it and frees the buffer.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for Carry {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Runs the session over `carry` followed by `fresh` (or over `fresh`
/// alone, straight out of the receive buffer, when nothing is carried) and
/// keeps in `carry` only what it did not consume: the start of a head that
/// spans reads, or input left by back-pressure ([`Next::Write`]). With
/// `batch` off, the session sees one request head at a time
/// ([`request_limit`]; ciphertext has no heads to find: all of it). An
/// emptied carry frees its buffer unless `keep_buffer` (an engine that
/// receives into it).
#[allow(clippy::too_many_arguments)]
pub fn answer(
    session: &mut Protocol,
    carry: &mut Carry,
    fresh: Option<&[u8]>,
    serving: &Serving,
    peer: Option<IpAddr>,
    output: &mut Output,
    batch: bool,
    keep_buffer: bool,
) -> Progress {
    let log = serving.observer(peer);
    let batch = batch || session.is_tls();
    let progress = match fresh {
        Some(all) if carry.is_empty() => {
            let data = &all[..request_limit(all, batch)];
            let progress = run_session(session, data, &serving.snapshot, &serving.limits, log, output);
            // Only the start of a head spanning reads (or input left after
            // back-pressure) is copied out of the receive buffer.
            carry.extend_from_slice(&data[progress.consumed..]);
            carry.extend_from_slice(&all[data.len()..]);
            progress
        }
        _ => {
            if let Some(data) = fresh {
                carry.extend_from_slice(data);
            }
            let limit = request_limit(carry, batch);
            let progress = run_session(
                session,
                &carry[..limit],
                &serving.snapshot,
                &serving.limits,
                log,
                output,
            );
            carry.consume(progress.consumed);
            progress
        }
    };
    if carry.is_empty() && !keep_buffer {
        // Idle connections own no buffer.
        carry.release();
    }
    progress
}

/// Whether the connection ends once the output for `next` is written (the
/// session answered its last request, or refused one); how it ends is
/// [`ending`]'s rule. An answer that ends the connection always has output;
/// one without output that asks to end is closed at once.
pub fn ends_after_output(next: Next) -> bool {
    matches!(next, Next::Close | Next::Linger)
}

/// How a connection ends once the output for its last response is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Close now: no `shutdown`, no linger.
    Close,
    /// Shut down the sending side (FIN after the response), then read and
    /// discard what still comes ([`Lingering`]) before closing.
    Linger,
}

/// The rule for ending a connection after its output is written (`None`:
/// it does not end), the same in every engine; `unread` is how many bytes
/// the client sent that nobody read (carried, or left by the session).
///
/// The danger is a reset: closing a socket with input unread makes the
/// kernel send RST, and a client that gets it may lose the end of the
/// response it has not read yet (RFC 9112 §9.6). Lingering avoids it at the
/// price of a `shutdown`, one more receive (the client's FIN) and one more
/// wake-up per connection. As with nginx's `lingering_close on` (its
/// default), the close is immediate ([`End::Close`]) when all of these hold:
/// - the end is the client's choice: [`Next::Close`], a request with
///   `Connection: close` (or HTTP/1.0 without keep-alive) after which the
///   client sent nothing, no body still to come (the session's rule,
///   [`crate::http::Session`]). A client that asked to close MUST NOT send
///   further requests on the connection (RFC 9112 §9.6), so nothing can
///   arrive after the close to be answered with a reset;
/// - nothing it sent is unread: no byte carried, none received by the engine
///   after the last request was answered, none the engine knows to be
///   waiting in the socket ([`unread_after_end`] turns a [`Next::Close`]
///   into [`Next::Linger`] for those);
/// - the connection is plain HTTP. TLS always lingers: its [`Next::Close`]
///   also covers fatal alerts after bad input (the client may still be
///   sending), and the `close_notify` sent after the last response invites
///   the client's own, which would arrive after an immediate close and be
///   answered with a reset.
///
/// Everything else lingers: refusals, errors and timeouts ([`Next::Linger`]:
/// the client may still be sending a body or requests), a close with input
/// behind it, and TLS. (A client that breaks the rule and sends after its
/// `Connection: close` request, with the bytes arriving only after the
/// server read the request, can still get a reset; so can it with nginx.)
pub fn ending(next: Next, protocol: &Protocol, unread: usize) -> Option<End> {
    match next {
        Next::Read | Next::Write => None,
        Next::Close if unread == 0 && !protocol.is_tls() => Some(End::Close),
        Next::Close | Next::Linger => Some(End::Linger),
    }
}

/// Input reached the connection after its last response was decided (the
/// session said [`Next::Close`]), or may be waiting in its socket: the
/// close can no longer be immediate, the connection lingers ([`ending`]).
pub fn unread_after_end(next: &mut Next) {
    if *next == Next::Close {
        *next = Next::Linger;
    }
}

/// What follows once all of a connection's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterOutput {
    /// The client asked to close and nothing it sent is unread
    /// ([`End::Close`]): close now, without `shutdown` or linger.
    Close,
    /// The session ended the connection ([`End::Linger`]): shut down the
    /// sending side and linger, counting what was carried as discarded.
    Linger(Lingering),
    /// Keep-alive: answer what is carried (input left by back-pressure), if
    /// anything, then read on.
    Continue,
}

/// The rule for the end of an output, the same in both native engines
/// ([`ending`]): `after_send` is what the session said when it was
/// produced (turned into [`Next::Linger`] by [`unread_after_end`] if input
/// arrived since), `carry` what is unread (dropped when the connection
/// ends: never answered; its buffer kept if `keep_buffer`, for an engine
/// that may be receiving into it).
pub fn after_output(
    after_send: &mut Next,
    carry: &mut Carry,
    protocol: &Protocol,
    keep_buffer: bool,
) -> AfterOutput {
    let Some(end) = ending(*after_send, protocol, carry.len()) else {
        *after_send = Next::Read;
        return AfterOutput::Continue;
    };
    let lingering = Lingering::new(carry.len());
    if keep_buffer {
        carry.clear();
    } else {
        carry.release();
    }
    match end {
        End::Close => AfterOutput::Close,
        End::Linger => AfterOutput::Linger(lingering),
    }
}

/// Input discarded while lingering, bounded by [`LINGER_MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lingering {
    discarded: u32,
}

impl Lingering {
    /// Starts lingering with `already` bytes received and never to be read.
    pub fn new(already: usize) -> Lingering {
        Lingering {
            discarded: u32::try_from(already).unwrap_or(u32::MAX),
        }
    }

    /// `len` more bytes discarded; `false` once the bound is reached (close).
    pub fn discard(&mut self, len: usize) -> bool {
        self.discarded = self
            .discarded
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        (self.discarded as usize) < LINGER_MAX_BYTES
    }
}

/// How much of `input` the session may see at once: everything, or (batching
/// off) up to the end of the first request head, so each response leaves in
/// its own write.
pub fn request_limit(input: &[u8], batch: bool) -> usize {
    if batch {
        return input.len();
    }
    // Blank lines before a request are skipped by the session; skip them here
    // too, or they would be taken for the end of a head.
    let start = input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    memchr::memmem::find(&input[start..], b"\r\n\r\n").map_or(input.len(), |end| start + end + 4)
}

/// Outboxes kept for reuse per worker, and the largest staging buffer kept:
/// enough for every connection of a busy worker to have a response in
/// flight without allocating, and at most 16 MiB kept (usually 4 KiB each).
pub const MAX_POOLED_OUTBOXES: usize = 512;
pub const MAX_POOLED_OUTPUT_BYTES: usize = 32 * 1024;

/// An engine's outbox: the output a connection is sending, and the engine's
/// own bookkeeping about it.
pub trait Pooled: Default {
    fn output(&self) -> &Output;
    /// Empties it for its next connection.
    fn reset(&mut self);
}

/// Outboxes of connections that have nothing to send, for reuse: taken when
/// a request is answered, given back when the last byte is sent, so an idle
/// connection holds no output buffer. One that grew large is dropped.
#[derive(Debug)]
pub struct Pool<T> {
    /// Boxed on purpose: connections hold outboxes by `Box` (one word each;
    /// for io_uring, memory lent to the kernel must not move).
    #[allow(clippy::vec_box)]
    free: Vec<Box<T>>,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool { free: Vec::new() }
    }
}

impl<T: Pooled> Pool<T> {
    pub fn take(&mut self) -> Box<T> {
        self.free.pop().unwrap_or_default()
    }

    pub fn give(&mut self, mut outbox: Box<T>) {
        if self.free.len() >= MAX_POOLED_OUTBOXES
            || outbox.output().staged_capacity() > MAX_POOLED_OUTPUT_BYTES
        {
            return;
        }
        outbox.reset();
        self.free.push(outbox);
    }
}

/// For the engines' outbox tests: appends to `output` a mix of every kind
/// of piece (staged heads, a shared in-memory body of `shared` bytes, all
/// of the file `body`, then 10 bytes of it from offset 1000) and returns
/// the bytes it must send; `content` is the file's content.
#[cfg(test)]
pub(crate) fn mixed_output_for_tests(
    output: &mut Output,
    body: &crate::files::Body,
    content: &[u8],
    shared: &bytes::Bytes,
) -> Vec<u8> {
    output.push(b"HEAD1\r\n\r\n");
    output.push_whole_body(body);
    output.push(b"HEAD2\r\n\r\n");
    output.push_body(shared);
    output.push(b"HEAD3\r\n\r\n");
    output.push_body_range(body, 1000, 10);
    let mut expected = b"HEAD1\r\n\r\n".to_vec();
    expected.extend_from_slice(content);
    expected.extend_from_slice(b"HEAD2\r\n\r\n");
    expected.extend_from_slice(shared);
    expected.extend_from_slice(b"HEAD3\r\n\r\n");
    expected.extend_from_slice(&content[1000..1010]);
    expected
}

/// Runs the session over `input`, telling the `observer` (access log,
/// metrics) if there is one.
pub fn run_session(
    session: &mut Protocol,
    input: &[u8],
    snapshot: &Snapshot,
    limits: &Limits,
    observer: Option<ConnectionObserver<'_>>,
    output: &mut Output,
) -> Progress {
    match observer {
        Some(mut observer) => session.on_input_observed(input, snapshot, limits, output, &mut observer),
        None => session.on_input(input, snapshot, limits, output),
    }
}

/// The request deadline passed with `partial` (a head not yet complete):
/// the session's `408` goes into `output`, observed; returns what follows it
/// (for a TLS handshake that never completed: [`Next::Close`] and no
/// output, close without a word).
pub fn head_timeout(
    session: &mut Protocol,
    partial: &[u8],
    observer: Option<ConnectionObserver<'_>>,
    output: &mut Output,
) -> Next {
    match observer {
        Some(mut observer) => session.on_head_timeout(partial, output, &mut observer),
        None => session.on_head_timeout(partial, output, &mut ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Session;

    fn serving() -> Serving {
        Serving::new(
            Arc::new(Snapshot::default()),
            Limits::default(),
            Timeouts::default(),
            None,
            None,
        )
    }

    #[test]
    fn only_the_start_of_a_head_spanning_reads_is_carried() {
        let serving = serving();
        let mut session = Protocol::Plain(Session::new());
        let mut carry = Carry::default();
        let mut output = Output::new();
        let first = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT";
        let progress = answer(
            &mut session,
            &mut carry,
            Some(first),
            &serving,
            None,
            &mut output,
            true,
            false,
        );
        assert_eq!(progress.next, Next::Read);
        assert_eq!(&carry[..], b"GET /b HT", "the answered request is not copied");
        assert!(!output.is_empty());
        output.clear();
        let rest = b"TP/1.1\r\nHost: a\r\n\r\n";
        answer(
            &mut session,
            &mut carry,
            Some(rest),
            &serving,
            None,
            &mut output,
            true,
            false,
        );
        assert!(carry.is_empty());
        assert!(carry.0.is_none(), "an emptied carry frees its buffer");
        assert!(!output.is_empty(), "the head completed across reads is answered");
    }

    #[test]
    fn without_batching_one_head_is_answered_at_a_time() {
        let input = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        assert_eq!(request_limit(input, false), 2 + 27);
        assert_eq!(request_limit(input, true), input.len());
    }

    #[test]
    fn after_an_ending_output_the_connection_lingers_and_drops_what_it_carried() {
        let mut carry = Carry::default();
        carry.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n");
        let plain = Protocol::Plain(Session::new());
        let mut next = Next::Linger;
        let AfterOutput::Linger(mut lingering) = after_output(&mut next, &mut carry, &plain, false) else {
            panic!("a refusal ends in lingering")
        };
        assert!(carry.is_empty());
        assert!(lingering.discard(LINGER_MAX_BYTES - 25));
        assert!(!lingering.discard(1), "the linger bound counts what was carried");
        let mut next = Next::Write;
        assert_eq!(
            after_output(&mut next, &mut carry, &plain, false),
            AfterOutput::Continue
        );
        assert_eq!(next, Next::Read);
    }

    #[test]
    fn a_close_the_client_asked_for_is_immediate_only_with_nothing_unread_on_plain_http() {
        let plain = Protocol::Plain(Session::new());
        assert_eq!(ending(Next::Close, &plain, 0), Some(End::Close));
        assert_eq!(ending(Next::Close, &plain, 1), Some(End::Linger), "input unread");
        assert_eq!(ending(Next::Linger, &plain, 0), Some(End::Linger), "a refusal");
        assert_eq!(ending(Next::Read, &plain, 0), None);
        assert_eq!(ending(Next::Write, &plain, 5), None);
        let mut next = Next::Close;
        unread_after_end(&mut next);
        assert_eq!(next, Next::Linger, "input arrived after the last request");
        let mut next = Next::Read;
        unread_after_end(&mut next);
        assert_eq!(next, Next::Read, "keep-alive input is simply answered");

        let mut carry = Carry::default();
        let mut next = Next::Close;
        assert_eq!(
            after_output(&mut next, &mut carry, &plain, false),
            AfterOutput::Close
        );
        carry.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut next = Next::Close;
        assert!(matches!(
            after_output(&mut next, &mut carry, &plain, false),
            AfterOutput::Linger(_)
        ));
        assert!(carry.is_empty(), "what was carried is dropped");
    }

    #[test]
    fn the_grace_period_ends_once() {
        let mut stopping = Stopping::Running;
        assert!(stopping.is_running() && stopping.wake_at().is_none());
        assert!(stopping.begin(100, Duration::from_millis(50)));
        assert!(
            !stopping.begin(120, Duration::from_millis(50)),
            "a second signal changes nothing"
        );
        assert_eq!(stopping.wake_at(), Some(150));
        assert!(!stopping.grace_over(149));
        assert!(stopping.grace_over(150));
        assert!(!stopping.grace_over(10_000), "what is left is reset once");
        assert!(!stopping.is_running() && stopping.wake_at().is_none());
    }

    #[test]
    fn deadlines_follow_what_the_connection_waits_for() {
        let mut serving = serving();
        serving.now = 1_000;
        let timeouts = serving.timeouts;
        let session = Protocol::Plain(Session::new());
        let mut clock = DeadlineClock::new(serving.instant(0));
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(
            serving.deadline(Waiting::Input, &mut clock, &session, 0),
            (ms(timeouts.head), Expiry::Close),
            "a fresh connection: the head deadline from accept"
        );
        assert_eq!(
            serving.deadline(Waiting::Output { since: 500 }, &mut clock, &session, 0),
            (500 + ms(timeouts.send), Expiry::Abort)
        );
        assert_eq!(
            serving.deadline(Waiting::Lingering { since: 700 }, &mut clock, &session, 0),
            (700 + ms(timeouts.linger), Expiry::Close)
        );
        assert_eq!(
            serving.deadline(Waiting::Nothing, &mut clock, &session, 0).0,
            NEVER
        );
        assert_eq!(serving.on_expired(Expiry::Abort, false), Expired::Reset);
        assert_eq!(
            serving.on_expired(Expiry::RequestTimeout, false),
            Expired::RequestTimeout
        );
    }
}
