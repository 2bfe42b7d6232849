//! The `uring` engine: a native io_uring event loop per worker, written
//! directly on the `io-uring` crate.
//!
//! Where the `tokio-uring` engine pays for a general runtime (it parks in
//! epoll, enters the ring on every park, reads into a buffer per
//! connection), this loop uses what the kernel offers for servers:
//!
//! 1. **One ring per worker**, created on the worker's thread with
//!    `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN`: completions are
//!    produced only when the loop asks for them, on its own thread, without
//!    interrupts. Each loop iteration makes one `io_uring_enter`
//!    ([`Ring::enter`]: submit everything queued and wait for at least one
//!    completion), then handles every completion that is ready.
//! 2. **Multishot accept** on each of the worker's `SO_REUSEPORT` listeners
//!    (one per configured address; each completion names its listener, and
//!    so whether the connection speaks HTTP or HTTPS) (armed
//!    again whenever the kernel ends it; on EMFILE/ENFILE the loop backs off
//!    for [`ACCEPT_BACKOFF_MS`](crate::engine::ACCEPT_BACKOFF_MS) instead of
//!    spinning). The connection cap bounds the connections *served* exactly:
//!    one multishot burst takes every connection pending in the backlog, so
//!    it may accept more than the room left, and those wait, accepted but
//!    unread, in accept order until room appears (the descriptors held can
//!    exceed the cap by at most one burst: the backlog, plus arrivals while
//!    the kernel drained it). Within 64 connections of the cap accepts are
//!    single-shot. `TCP_NODELAY` is set on
//!    the listener, and accepted sockets inherit it: no per-connection
//!    `setsockopt`.
//! 3. **Multishot receive with a provided-buffer ring** ([`buffers`]): an
//!    idle connection owns no receive buffer; the kernel picks one when data
//!    arrives, the request is parsed straight out of it, and it goes back to
//!    the ring at once. A head that spans buffers is copied into the
//!    connection's small `carry` ([`conn`]). When the ring runs dry the
//!    receive ends with `ENOBUFS`; the data stays in the socket, and the
//!    connection waits in a starved queue from which a bounded number are
//!    re-armed per iteration (re-arming while the ring is empty fails again
//!    at once: a livelock).
//! 4. **Batched sends**: the responses to every request completed in one
//!    iteration go out in one `send` (or one `sendmsg` whose iovecs point at
//!    the staged heads and at the snapshot's refcounted bodies). A short send
//!    continues where it stopped; a connection never has two output
//!    operations in flight, so responses stay in order. A file too large for
//!    memory is streamed: an io_uring `read` at an offset into a chunk buffer
//!    of at most [`FILE_CHUNK_BYTES`](crate::engine::FILE_CHUNK_BYTES), sent
//!    (with what follows it) before the next chunk is read ([`outbox::Outbox`]);
//!    with `--uring-splice`, a plain-HTTP connection splices it instead,
//!    file → pipe → socket (see the switches).
//!    Every iteration answers from one snapshot, refreshed from the worker's
//!    [`SnapshotCache`] so a reload takes effect at the next iteration; an
//!    idle worker wakes once a second ([`SNAPSHOT_REFRESH_MS`]) so that it
//!    does not keep a replaced snapshot alive while nothing happens.
//! 5. **Timeouts without syscalls of their own**: which deadline applies
//!    (request head → 408, keep-alive idle, send without progress → reset,
//!    linger) is the core's rule ([`crate::http::deadline`]); the deadlines
//!    live in a lazy queue ([`deadlines`]) checked once per iteration, and
//!    one io_uring timeout, armed for the earliest, wakes the loop.
//! 6. **Async close, immediate or graceful**, by the shared rule
//!    ([`policy::ending`]). When the client asked to close and nothing it
//!    sent is unread (nothing carried, no receive since the request was
//!    answered, and the receive that brought it did not report more waiting
//!    in the socket, `IORING_CQE_F_SOCK_NONEMPTY`), the close is immediate:
//!    a connection's first receive is single-shot, so no receive is armed
//!    while a `Connection: close` response is sent, and the last send is
//!    submitted **linked to the close** (`IOSQE_IO_LINK`, the send with
//!    `MSG_WAITALL` so that a short send fails and breaks the link; the
//!    close with `IOSQE_CQE_SKIP_SUCCESS`, see [`outbox::OutputOp::entry`]
//!    and `conn::OutputState::LastSend`). A connection-per-request client
//!    then costs one receive, one send and the close, all in the ring: no
//!    syscall of its own and no completion but the send's. If the send is
//!    short or fails (or a deadline cancels it), the close completes with
//!    `ECANCELED` and the connection closes as any other. Where a send
//!    cannot carry the close (a keep-alive connection whose last request
//!    asks to close still has its multishot receive armed; a response
//!    streamed from disk ends with a read; `--uring-no-link-close`), the
//!    close follows the send's completion. Every other end is graceful
//!    (RFC 9112 §9.6): once the last response is sent, `shutdown(SHUT_WR)`
//!    sends FIN, and input is received and discarded (lingering)
//!    until the client closes, [`LINGER_MAX_BYTES`](crate::engine::LINGER_MAX_BYTES)
//!    or the linger deadline, so unread input never makes the kernel reset
//!    the connection under the response's end. An armed multishot receive
//!    holds a reference to the socket, so closing would not send FIN:
//!    closing cancels the receive (and any send), waits for their final
//!    completions, then submits `Close`. A lingering connection costs one
//!    receive, one send, one `shutdown` syscall, the receive that sees its
//!    FIN, and one close, with no cancel. The shutdown is a direct syscall,
//!    not `IORING_OP_SHUTDOWN`: the kernel always runs that one in an io-wq
//!    worker and looks its descriptor up only then, so after a fast close
//!    the number could name the next accepted connection (measured: wrk saw
//!    ~4% of `Connection: close` requests cut by a stray FIN). Closes and
//!    cancels complete silently (`IOSQE_CQE_SKIP_SUCCESS`).
//!
//! Every completion names its operation and connection in `user_data`
//! ([`op`]): slot index and generation ([`slots`]), so a late completion can
//! never touch a connection that reused the slot.
//!
//! **Memory handed to the kernel** is audited in four small files: [`ring`]
//! (every submission, and the count of what is in flight), [`buffers`]
//! (receive buffers), [`outbox`] (send memory) and [`pipes`] (the pipes a
//! splice goes through, whose state the outbox keeps). It is never moved or freed while an
//! operation that uses it is in flight: provided buffers live in one
//! allocation for the worker's lifetime (and are read only while lent to us,
//! see [`buffers`]); a send's bytes, iovecs and `msghdr` live in a boxed
//! [`outbox::Outbox`] that its connection keeps until the send's completion;
//! a connection's slot (and its `carry`, which a single-shot receive may be
//! writing into) is freed only after every operation of the connection has
//! delivered its final completion; and the loop returns only when no
//! operation at all is in flight ([`Ring::in_flight`]). If the loop is left
//! any other way (a panic, a broken ring), the memory is leaked rather than
//! freed under the kernel ([`Driver`]'s `Drop`).
//!
//! **Graceful stop**: a poll on the shutdown eventfd is part of the ring. On
//! it the loop cancels the accept and then closes the listener (new clients
//! are refused), shuts down the read side of every connection (as
//! [`crate::engine::connections`] does for the tokio engines: a waiting
//! connection sees end-of-file and closes, one mid-response finishes it),
//! resets what is left after the grace period (once: then it waits in the
//! kernel for the cancels to complete), and returns once nothing is in
//! flight.
//!
//! **A broken ring** (a failed `io_uring_enter`, a panic) ends the loop with
//! an error: the worker's connections are reset and its memory is leaked
//! rather than freed under the kernel, and the server stops and exits 1 (see
//! [`crate::engine::WorkerFailure`]).
//!
//! **Switches for measurement** ([`UringOptions`], hidden command-line flags
//! `--uring-no-multishot-recv`, `--uring-no-buf-ring`,
//! `--uring-no-defer-taskrun`, `--uring-no-batch`, `--uring-no-link-close`
//! (the immediate close submitted on the last send's completion instead of
//! linked to it), `--uring-buffers N`,
//! `--uring-ring-entries N`, and
//! `--uring-splice` with `--uring-splice-io-workers N`, see **Splice**
//! below): each turns one technique off (splice: on) so its
//! contribution can be measured.
//!
//! The linked close (`--uring-no-link-close` to submit the close on the last
//! send's completion instead), measured 2026-12-03 in two paired runs of 3
//! rounds x 3 s (`Connection: close` c64, 1 KiB, server pinned to CPU 0, wrk
//! on CPU 1): without the link 1.04 (1.02–1.05) and 1.05 (1.00–1.18) of the CPU per
//! request with it, 0.71–0.72 syscalls per request against 0.60–0.80.
//! Against the commit before (graceful close for every `Connection: close`,
//! `ci/bench_ab.py`, 4 × 3 s): 0.80 (0.75–0.95) of the CPU per request, 0.58
//! syscalls per request against 1.93 (`bench-results/2026-12-03-close15`).
//!
//! Without multishot, a single-shot receive still selects a provided buffer and is
//! armed only while the connection waits for a request; without the buffer
//! ring, each connection receives into its own 4 KiB buffer (single-shot,
//! as multishot receive needs provided buffers); without batching, each
//! response goes out in its own send.
//!
//! **Measured and removed** (issue 15): five newer io_uring features were
//! built behind switches, tested, and measured in paired rounds against the
//! defaults (server pinned to CPU 0, wrk on CPU 1, 1 KiB; two sessions,
//! 3 rounds x 3 s and 6 rounds x 5 s / 5 rounds x 4 s; the reports are
//! `bench-results/2026-12-03-switches*`). None helped measurably, so they
//! were removed (the floor server keeps the first two):
//! - the registered ring descriptor (`IORING_REGISTER_RING_FDS`): CPU per
//!   request ×0.93 / ×1.10 / ×1.00 at keep-alive c64 / c256 / pipelined
//!   (it saves one descriptor lookup per enter, and an enter serves 5–12
//!   requests here);
//! - `IORING_SETUP_NO_SQARRAY`: ×0.94 / ×1.10 / ×1.04;
//! - a minimum wait per enter (`min_wait_usec`, 6.12) after a busy
//!   iteration: 5× fewer enters (0.04 syscalls per request at c64 instead
//!   of 0.20) for more CPU in every run (×1.06–1.15) and a higher median
//!   latency;
//! - receive bundles (`IORING_RECVSEND_BUNDLE`, 6.10): ×1.05 / ×1.04 / ×1.01
//!   (×0.89 / ×0.90 / ×0.96 in the first session: noise either way);
//! - incremental buffer consumption (`IOU_PBUF_RING_INC`, 6.12): ×1.03 /
//!   ×1.01 / ×1.05.
//!
//! Direct descriptors (`--uring-direct`, off by default) were removed later
//! in issue 15 for the same reason: accepted sockets in the ring's
//! fixed-file table (accept with `IORING_FILE_INDEX_ALLOC`, the reset of an
//! aborted connection by a `SetSockOpt` uring_cmd, the graceful close's
//! `shutdown` by `IORING_OP_SHUTDOWN`, counted in flight so that a slot was
//! closed only after its shutdown ran, and one io-wq worker for those
//! shutdowns). They save the `shutdown` syscall and the descriptor table's
//! work (1.29 syscalls per `Connection: close` request against 2.36), but
//! every ring shutdown takes an io-wq hop (a thread switch, and one more
//! wake-up of the loop): before the immediate close they cost 5–15% more
//! CPU per request on `Connection: close` c64 (26.2 against 25.7 µs, 27.8
//! against 25.5; 46 against 27 on a busy machine). After it, CPU per request
//! with them ÷ without, in the last full run (3 rounds x 4 s, commit 71ba4aa,
//! `bench-results/2026-12-03-final`): keep-alive c64 1.01 (0.88–1.04), c256
//! 1.04 (1.01–1.12), pipelined 0.96 (0.60–0.98), `Connection: close` 1.00
//! (0.98–1.01), 16 KiB 1.03, 1 MiB 0.98; on `Connection: close` in two
//! earlier paired runs, 0.91 (0.91–1.00) and 0.97 (0.96–1.09) (3 rounds x 3 s,
//! `bench-results/2026-12-03-close15`). No gain beyond the spread, for a
//! second kind of socket in every path of the engine.
//!
//! A smaller submission queue (`--uring-ring-entries 256` or `32`, the
//! completion queue staying sized for the connection cap) measured ×1.00 /
//! ×1.02 at c256 and ×1.01 / ×0.96 pipelined: the default stays.
//!
//! **Splice** (issue 15, `--uring-splice`, off by default, and
//! `--uring-splice-io-workers N`): a file streamed from disk to a plain-HTTP
//! connection goes file → pipe → socket, two `IORING_OP_SPLICE`s per chunk
//! of at most [`FILE_CHUNK_BYTES`](crate::engine::FILE_CHUNK_BYTES) (the
//! pipe is grown to it with `F_SETPIPE_SZ`), one after the other: a short
//! splice breaks an `IOSQE_IO_LINK` chain, and the second's length is the
//! first's result. Heads, multipart boundaries and in-memory bodies still go
//! by send; TLS keeps read + seal + send (its bytes must be encrypted here).
//! A streaming connection holds a pipe from the worker's pool ([`pipes`]);
//! a short splice into the socket continues with what the pipe still holds,
//! and a pipe that may hold bytes (an error, a close mid-splice) is closed,
//! never reused. The kernel runs every splice in an io-wq worker
//! (`io_uring/splice.c` marks it `REQ_F_FORCE_ASYNC`; the sockets are
//! blocking, so a splice into the socket of a client that does not read
//! blocks its io-wq worker until it reads, or until the send deadline resets
//! the connection and the cancel interrupts the worker). So the io-wq is
//! left uncapped by default: with a cap of N, N clients that stop reading stall
//! every other connection's splices until the send deadline (measured: cap
//! 1, two stalled clients, `--send-timeout-ms 5000`: another client's 1 MiB
//! took 4.5 s, against 0.05 s uncapped). The io-wq workers are threads of
//! the process, on the worker's CPUs, and their CPU time is in the
//! process's. Measured 2026-12-03 (bench-compare, 5 runs of 4–6 paired
//! rounds of 3 s, `--max-cached-file 65536`, server on CPU 0, wrk on CPU 1,
//! other helpers' builds beside), CPU per request splice ÷ read+send:
//! keep-alive 1 MiB c16 0.53 (0.46–0.58), 0.57 (0.50–0.62), 0.60
//! (0.54–0.65): 300–360 against 560–640 µs (no copy file → user →
//! socket), req/s ×1.74–1.90; on a busier machine (the last two runs) 0.77
//! (0.43–1.03) and 0.77 (0.60–0.91): the io-wq hops cost more when the CPU
//! is contended. But 6.6–14 syscalls per request against 1.1,
//! all `io_uring_enter` (each splice completes from an io-wq worker and
//! wakes the loop on its own: 7.6 context switches per request against
//! 0.06), and about 11 io-wq workers for 16 connections. 16 MiB c16: CPU ÷
//! 0.55, 0.51, 0.58, 0.54, 0.58, but req/s ×0.74–0.97, a p99 about 1.6× and
//! hundreds of loopback TCP retransmits per run that read+send does not
//! have; capped at two io-wq workers, req/s ×1.60, ×1.51 and ×1.08 at
//! about the same CPU, but for the stall above that is only a switch. The `epoll` twin's
//! `sendfile` stays far cheaper (1 MiB: 124 µs per request; 16 MiB: 2,512
//! against splice's 5,873): splice wins over read + send, not over
//! sendfile.

mod buffers;
mod conn;
mod op;
mod outbox;
mod pipes;
mod probe;
mod ring;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use self::buffers::{BUFFER_GROUP, BufRing};
use self::conn::{Conn, Input, InputState, OutputState, Phase, Reaction, RecvState, ServeContext};
use self::op::{Op, OpKind};
use self::outbox::OutboxPool;
use self::ring::{Ring, Wait};
use crate::engine::deadlines::{Deadlines, Due, Millis, NEVER};
use crate::engine::policy::{self, Expired, Serving, Stopping, millis};
use crate::engine::slots::{SlotKey, Slots};
use crate::engine::{
    AcceptBackoff, FaultCountdown, READ_BUFFER_BYTES, Ready, Shutdown, Worker, set_reset_on_close,
};
use crate::files::SnapshotCache;
use crate::protocol::{ListenKind, Protocol};
use crate::tls::TlsHandle;

pub use self::probe::probe;

/// Submission queue entries per worker. When the queue fills mid-iteration
/// the loop submits early (rare: one iteration queues about one entry per
/// connection that did something).
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// The completion queue is sized for the connection cap: every connection
/// can complete a receive and a send in the same iteration. At least four
/// times the submission queue, at most the kernel's limit; beyond it the
/// kernel keeps overflowing completions and the next enter delivers them.
const COMPLETIONS_PER_CONNECTION: usize = 2;
const MIN_COMPLETIONS_PER_SUBMISSION: u32 = 4;
const MAX_COMPLETION_ENTRIES: u32 = 65536;

fn completion_entries(submission_entries: u32, max_connections: usize) -> u32 {
    let wanted = max_connections.saturating_mul(COMPLETIONS_PER_CONNECTION);
    let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).next_power_of_two();
    wanted
        .max(submission_entries * MIN_COMPLETIONS_PER_SUBMISSION)
        .min(MAX_COMPLETION_ENTRIES)
}

/// Provided buffers per worker (of [`READ_BUFFER_BYTES`] each: 4 MiB). They
/// are only held between a completion and the end of its handling, so this
/// bounds how many connections can receive in one iteration, not how many
/// can be open.
pub const DEFAULT_BUFFERS: u16 = 1024;

/// Which io_uring techniques the engine uses; each switch exists to measure
/// what the technique contributes. On by default are those that measurably
/// help (splice is off: see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// Multishot receive (needs `buffer_ring`).
    pub multishot_recv: bool,
    /// Receive into provided buffers (otherwise one buffer per connection).
    pub buffer_ring: bool,
    /// `IORING_SETUP_DEFER_TASKRUN`.
    pub defer_taskrun: bool,
    /// All responses to one iteration's input in one send.
    pub batch_sends: bool,
    /// An immediate close ([`policy::ending`]) is linked to the last send
    /// (`IOSQE_IO_LINK`) where it can be, instead of submitted when that
    /// send completes.
    pub link_close: bool,
    /// Provided buffers per worker (a power of two).
    pub buffers: u16,
    /// Submission queue entries (a power of two).
    pub ring_entries: u32,
    /// Files streamed from disk to plain-HTTP connections go file → pipe →
    /// socket with `IORING_OP_SPLICE` instead of a read and a send.
    pub splice: bool,
    /// With `splice`: the most io-wq workers (unbounded work) the kernel may
    /// run for the worker's splices; 0 leaves it to the kernel.
    pub splice_io_workers: u32,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            multishot_recv: true,
            buffer_ring: true,
            defer_taskrun: true,
            batch_sends: true,
            link_close: true,
            buffers: DEFAULT_BUFFERS,
            ring_entries: DEFAULT_RING_ENTRIES,
            splice: false,
            splice_io_workers: 0,
        }
    }
}

/// Receives that found the buffer ring empty, all workers together. A rare
/// path, counted so tests can tell they reached it.
static STARVED_RECEIVES: AtomicU64 = AtomicU64::new(0);

#[doc(hidden)]
pub fn starved_receives() -> u64 {
    STARVED_RECEIVES.load(Ordering::Relaxed)
}

/// Connections the kernel closed through a close linked to their last send
/// (the send completed in full), all workers together: counted so tests can
/// tell the link is used.
static LINKED_CLOSES: AtomicU64 = AtomicU64::new(0);

#[doc(hidden)]
pub fn linked_closes() -> u64 {
    LINKED_CLOSES.load(Ordering::Relaxed)
}

/// Times a connection stopped receiving because too much unanswered input
/// piled up (a client pipelining faster than it reads); rare, counted for
/// the same reason.
static PAUSED_READS: AtomicU64 = AtomicU64::new(0);

#[doc(hidden)]
pub fn paused_reads() -> u64 {
    PAUSED_READS.load(Ordering::Relaxed)
}

/// How connections receive, from the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvMode {
    /// One multishot receive per connection, from the buffer ring.
    Multishot,
    /// Single-shot receives that select a buffer from the ring.
    SingleProvided,
    /// Single-shot receives into the connection's own buffer (`carry`).
    SingleOwned,
}

/// Runs one worker until the stop signal. An error means the ring broke
/// (see [`crate::engine::WorkerFailure`] for what happens then).
pub fn run_worker(worker: Worker, ready: Ready) -> io::Result<()> {
    policy::start_loop(worker, ready, Driver::new, |mut driver| driver.run())
}

/// The listener's accept: multishot while there is room under the connection
/// cap, single-shot when close to it, so the cap stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptState {
    Idle,
    Armed {
        multishot: bool,
    },
    /// Cancelled (cap near, back-off, stop); its final completion is due.
    Cancelling,
}

/// A listening socket of the worker and its accept.
struct Listening {
    /// Closed once the stop signal came and the accept has ended.
    listener: Option<TcpListener>,
    kind: ListenKind,
    accept: AcceptState,
}

/// Below this much room under the cap, accepts are single-shot: a multishot
/// accept could take several connections in one iteration.
const SINGLE_SHOT_ACCEPT_ROOM: usize = 64;
/// An idle worker wakes at least this often to drop the snapshot it holds if
/// a reload replaced it (one timeout per second: no cost on the hot path).
const SNAPSHOT_REFRESH_MS: Millis = 1000;

/// One worker's loop and everything it owns.
///
/// Field order matters on drop: `ring` goes first, so the kernel is done
/// with the provided buffers (and any outbox) before they are freed.
struct Driver {
    ring: Ring,
    buffers: Option<BufRing>,
    conns: Slots<Conn>,
    pool: OutboxPool,
    deadlines: Deadlines,
    /// Connections with output to send once this iteration's completions are
    /// handled.
    flush: Vec<SlotKey>,
    /// Connections whose receive ended with `ENOBUFS`, oldest first.
    starved: VecDeque<SlotKey>,
    /// Accepted over the cap (a multishot accept raced the cap): served, in
    /// order, as soon as there is room.
    waiting: VecDeque<(RawFd, ListenKind)>,
    completions: Vec<(u64, i32, u32)>,
    mode: RecvMode,
    /// Link an immediate close to the last send ([`UringOptions::link_close`]).
    link_close: bool,
    /// What answering needs (snapshot, limits, timeouts, access log, the
    /// worker's clock), lent to one connection at a time.
    cx: ServeContext,
    /// This thread's view of the current snapshot (changed by a reload).
    snapshots: SnapshotCache,
    grace: Duration,
    max_connections: usize,
    /// When to wake, at the latest, to pick up a reload: a worker that
    /// sleeps in the kernel would otherwise keep the snapshot it last
    /// served (and all its memory) alive after any number of reloads.
    next_snapshot_refresh: Millis,
    worker_index: usize,
    /// One per listening address, each with its own accept.
    listeners: Vec<Listening>,
    /// The current certificate, for HTTPS listeners.
    tls: Option<TlsHandle>,
    /// Holds the eventfd the stop poll watches.
    shutdown: Shutdown,
    backoff: AcceptBackoff,
    /// After a failed accept: when to accept again (`NEVER`: not paused).
    accept_resume_at: Millis,
    /// Running, or after the stop signal: until when in-flight responses may
    /// finish.
    stopping: Stopping,
    /// When the armed timeout fires (`NEVER`: none armed).
    timer_at: Millis,
    timer_cancelled: bool,
    /// The timeout's duration; read by the kernel when the entry is submitted.
    timer_spec: types::Timespec,
    /// Test-only fault injection ([`crate::engine::FaultCountdown`]) ...
    fault: FaultCountdown,
    /// ... and whether it is due: the next enter fails as a broken ring would.
    fault_due: bool,
}

impl Driver {
    fn new(mut worker: Worker) -> io::Result<Driver> {
        let options = worker.uring;
        let mode = match (options.buffer_ring, options.multishot_recv) {
            (false, _) => RecvMode::SingleOwned,
            (true, false) => RecvMode::SingleProvided,
            (true, true) => RecvMode::Multishot,
        };
        let entries = options.ring_entries.clamp(8, 32768).next_power_of_two();
        let ring = {
            let mut builder = IoUring::builder();
            builder
                .setup_single_issuer()
                .setup_coop_taskrun()
                .setup_submit_all()
                .setup_cqsize(completion_entries(entries, worker.max_connections));
            if options.defer_taskrun {
                builder.setup_defer_taskrun();
            } else {
                builder.setup_taskrun_flag();
            }
            builder.build(entries)
        }
        // ENOSYS and EPERM pass through unchanged: the server reports them as
        // "io_uring is not available"; EINVAL means a kernel too old for the
        // base flags.
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring setup with SINGLE_ISSUER and DEFER_TASKRUN failed ({e}); the uring engine needs Linux 6.1 or later"),
            ),
            _ => e,
        })?;
        // With splice the io-wq runs every splice, and a splice into a socket
        // whose client does not read blocks its io-wq worker: a cap lets that
        // many slow clients stall every other connection's splices, so it is
        // left to the kernel unless asked for.
        if options.splice && options.splice_io_workers > 0 {
            let mut max = [0, options.splice_io_workers];
            if ring.submitter().register_iowq_max_workers(&mut max).is_err() && worker.index == 0 {
                eprintln!("ringserve: uring: could not cap the io-wq workers for splices");
            }
        }
        let buffers = match mode {
            RecvMode::SingleOwned => None,
            RecvMode::Multishot | RecvMode::SingleProvided => {
                let buffers = BufRing::new(options.buffers, READ_BUFFER_BYTES as u32)?;
                // SAFETY: the buffer ring is stored in the driver next to the
                // io_uring, which is dropped first (field order), and the
                // driver returns only when no operation is in flight.
                unsafe { buffers.register(&ring.submitter()) }.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "registering the provided-buffer ring failed ({e}); it needs Linux 5.19 or later"
                        ),
                    )
                })?;
                Some(buffers)
            }
        };
        let mut driver = Driver {
            ring: Ring::new(ring),
            buffers,
            conns: Slots::default(),
            pool: OutboxPool::default(),
            deadlines: Deadlines::default(),
            flush: Vec::new(),
            starved: VecDeque::new(),
            waiting: VecDeque::new(),
            completions: Vec::with_capacity(1024),
            mode,
            link_close: options.link_close,
            cx: ServeContext {
                serving: Serving::for_worker(&mut worker),
                batch: options.batch_sends,
                own_buffers: mode == RecvMode::SingleOwned,
                splice: options.splice,
            },
            snapshots: worker.snapshot.cache(),
            grace: worker.shutdown_grace,
            max_connections: worker.max_connections.max(1),
            next_snapshot_refresh: SNAPSHOT_REFRESH_MS,
            worker_index: worker.index,
            listeners: std::mem::take(&mut worker.listeners)
                .into_iter()
                .map(|(listener, kind)| Listening {
                    listener: Some(listener),
                    kind,
                    accept: AcceptState::Idle,
                })
                .collect(),
            tls: worker.tls.take(),
            shutdown: worker.shutdown,
            backoff: AcceptBackoff::counted(worker.metrics.take()),
            accept_resume_at: NEVER,
            stopping: Stopping::Running,
            timer_at: NEVER,
            timer_cancelled: false,
            timer_spec: types::Timespec::new(),
            fault: FaultCountdown::new(worker.fault_after_accepts),
            fault_due: false,
        };
        driver.maintain_accept();
        let poll = opcode::PollAdd::new(
            types::Fd(driver.shutdown.eventfd().as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(Op::worker(OpKind::StopSignal).encode());
        // SAFETY: a poll references no memory of ours; the eventfd belongs
        // to the driver's `Shutdown`, which lives as long as the ring.
        unsafe { driver.ring.push(&poll) };
        // Submit now, so a kernel that refuses these operations is reported
        // through `Ready` rather than failing later.
        driver.ring.submit()?;
        Ok(driver)
    }

    /// The loop, until the stop signal has been served; an error if the
    /// ring broke (the caller reports it; `Drop` cleans up).
    fn run(&mut self) -> io::Result<()> {
        loop {
            self.prepare();
            if self.finished() {
                break;
            }
            if self.fault_due {
                return Err(io::Error::other("io_uring_enter failed: injected fault"));
            }
            self.ring
                .enter(self.wait())
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring_enter failed: {e}")))?;
            self.cx.tick();
            self.handle_completions();
            self.expire_deadlines();
        }
        // Closes queued by the last iteration (the listener's, the last
        // connections') are not counted in flight: submit them, and let the
        // kernel run what is due (a close linked to a send that completed
        // runs as deferred task work, inside an enter that collects).
        let _ = self.ring.enter(Wait::Collect);
        if let Some(log) = &self.cx.log {
            log.borrow_mut().flush();
        }
        Ok(())
    }

    /// Work done once per iteration, just before entering the kernel.
    fn prepare(&mut self) {
        self.serve_waiting();
        self.maintain_accept();
        self.flush_sends();
        self.rearm_starved();
        if let Some(buffers) = &mut self.buffers {
            // Every buffer a completion lent us has been handled and recycled.
            debug_assert_eq!(buffers.lent_count(), 0);
            buffers.publish();
        }
        if !self.stopping.is_running() && self.conns.is_empty() && self.accepts_idle() {
            self.cancel_timer();
        } else {
            self.arm_timer();
        }
    }

    /// What this iteration's enter waits for: nothing if starved receives
    /// wait to be re-armed, else one completion.
    fn wait(&self) -> Wait {
        if self.starved.is_empty() {
            Wait::One
        } else {
            Wait::Collect
        }
    }

    fn finished(&self) -> bool {
        !self.stopping.is_running() && self.conns.is_empty() && self.ring.in_flight == 0
    }

    fn handle_completions(&mut self) {
        // One snapshot for the whole batch of completions; a reload takes
        // effect at the next iteration.
        let current = self.snapshots.current();
        if !Arc::ptr_eq(current, &self.cx.snapshot) {
            self.cx.snapshot = Arc::clone(current);
        }
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(
            self.ring
                .ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(user_data, result, flags) in &completions {
            // A value this worker never submitted is no operation of ours:
            // it must not be counted (the count could underflow).
            let Some(op) = Op::decode(user_data) else {
                debug_assert!(false, "completion with unknown user_data {user_data:#x}");
                continue;
            };
            if !cqueue::more(flags) && Ring::counted(op.kind) {
                self.ring.in_flight -= 1;
            }
            match op.kind {
                OpKind::Accept => self.on_accept(op.key.index as usize, result, flags),
                OpKind::StopSignal => self.on_stop_signal(),
                OpKind::Timer => self.timer_at = NEVER,
                OpKind::Recv => self.on_recv(op.key, result, flags),
                OpKind::Send => self.on_send(op.key, result),
                OpKind::Read => self.on_file_read(op.key, result),
                OpKind::TimerUpdate | OpKind::Cancel | OpKind::Close => {}
            }
        }
        completions.clear();
        self.completions = completions;
    }

    // ---- accept ----

    /// Connections open or accepted and waiting for room.
    fn open_connections(&self) -> usize {
        self.conns.len() + self.waiting.len()
    }

    /// Whether no listener has an accept in flight.
    fn accepts_idle(&self) -> bool {
        self.listeners.iter().all(|l| l.accept == AcceptState::Idle)
    }

    /// Arms, switches or cancels each listener's accept for the room under
    /// the cap; after the stop signal, closes a listener once its accept has
    /// ended (new clients are refused while responses in flight finish).
    fn maintain_accept(&mut self) {
        for index in 0..self.listeners.len() {
            self.maintain_accept_of(index);
        }
    }

    fn maintain_accept_of(&mut self, index: usize) {
        let op = Op::conn(
            OpKind::Accept,
            SlotKey {
                index: index as u32,
                generation: 0,
            },
        );
        let stopping = !self.stopping.is_running();
        let paused = stopping || self.accept_resume_at != NEVER;
        let room = self.max_connections.saturating_sub(self.open_connections());
        let multishot = room > SINGLE_SHOT_ACCEPT_ROOM;
        let listening = &mut self.listeners[index];
        if stopping && listening.accept == AcceptState::Idle {
            if let Some(listener) = listening.listener.take() {
                self.ring
                    .push_close(listener.into_raw_fd(), Op::worker(OpKind::Close));
            }
        }
        let Some(listener_fd) = listening.listener.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        match listening.accept {
            AcceptState::Idle if !paused && room > 0 => {
                let accept = if multishot {
                    opcode::AcceptMulti::new(types::Fd(listener_fd))
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                } else {
                    opcode::Accept::new(types::Fd(listener_fd), std::ptr::null_mut(), std::ptr::null_mut())
                        .flags(libc::SOCK_CLOEXEC)
                        .build()
                };
                listening.accept = AcceptState::Armed { multishot };
                // SAFETY: an accept without an address references no memory
                // of ours; the listener is closed only after the accept's
                // final completion.
                unsafe { self.ring.push(&accept.user_data(op.encode())) };
            }
            AcceptState::Armed {
                multishot: armed_multishot,
            } if paused || (armed_multishot && !multishot) => {
                listening.accept = AcceptState::Cancelling;
                self.ring.push_cancel(op);
            }
            _ => {}
        }
    }

    fn on_accept(&mut self, index: usize, result: i32, flags: u32) {
        let Some(kind) = self.listeners.get(index).map(|l| l.kind) else {
            return;
        };
        if !cqueue::more(flags) {
            self.listeners[index].accept = AcceptState::Idle;
        }
        if result >= 0 {
            let socket = result;
            self.backoff.on_success(self.worker_index);
            self.fault_due |= self.fault.on_accept();
            if !self.stopping.is_running() {
                self.ring.push_close(socket, Op::worker(OpKind::Close));
            } else if self.conns.len() >= self.max_connections {
                self.waiting.push_back((socket, kind));
            } else {
                self.start_connection(socket, kind);
            }
        } else if result != -libc::ECANCELED {
            let error = io::Error::from_raw_os_error(-result);
            if let Some(pause) = self.backoff.on_error(self.worker_index, &error) {
                self.accept_resume_at = self.cx.now + millis(pause);
            }
        }
        self.maintain_accept();
    }

    fn start_connection(&mut self, socket: RawFd, kind: ListenKind) {
        let Some(protocol) = Protocol::new(kind, self.tls.as_ref()) else {
            self.ring.push_close(socket, Op::worker(OpKind::Close));
            return;
        };
        // The peer's address is only needed for the access log (a multishot
        // accept does not report it: one getpeername per connection then).
        let peer = self.cx.log.as_ref().and_then(|_| peer_ip(socket)).map(Box::new);
        let conn = Conn::new(socket, peer, protocol, &self.cx);
        let key = self.conns.insert(conn);
        self.cx.count_connection(true);
        self.settle(key);
    }

    /// Serves connections accepted over the cap, as room appears.
    fn serve_waiting(&mut self) {
        while self.conns.len() < self.max_connections {
            let Some((socket, kind)) = self.waiting.pop_front() else {
                return;
            };
            self.start_connection(socket, kind);
        }
    }

    // ---- receive ----

    fn on_recv(&mut self, key: SlotKey, result: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let cx = &self.cx;
        let conn = match self.conns.get_mut(key) {
            // A buffer named by a completion that carries no data (the kernel
            // should not do that, but a buffer must never leak out of the
            // ring) goes back at once.
            Some(conn) if result > 0 => conn,
            found => {
                if let (Some(bid), Some(buffers)) = (bid, &mut self.buffers) {
                    buffers.lend(bid);
                    buffers.recycle(bid);
                }
                // Cannot happen: a slot is freed only after its receive's
                // final completion.
                let Some(conn) = found else { return };
                conn
            }
        };
        if !cqueue::more(flags) {
            conn.recv = RecvState::Idle;
        }
        let reaction = if result > 0 {
            let len = result as usize;
            match (bid, &mut self.buffers) {
                (Some(bid), Some(buffers)) => {
                    buffers.lend(bid);
                    let input = Input::Fresh(buffers.lent_bytes(bid, len));
                    let reaction = conn.on_received(input, cx, &mut self.pool);
                    buffers.recycle(bid);
                    reaction
                }
                (None, None) => {
                    let buffer = conn.carry.buffer_mut();
                    debug_assert!(len <= buffer.capacity() - buffer.len());
                    // SAFETY: the receive pointed the kernel at `carry`'s
                    // spare capacity with that capacity as its length, and
                    // the kernel wrote `len` bytes there.
                    unsafe { buffer.set_len(buffer.len() + len) };
                    conn.on_received(Input::InCarry(len), cx, &mut self.pool)
                }
                _ => {
                    debug_assert!(false, "receive completion without the buffer it should name");
                    conn.request_close();
                    Reaction::Nothing
                }
            }
        } else if result == 0 {
            conn.input = InputState::Eof;
            Reaction::Nothing
        } else if result == -libc::ENOBUFS {
            // The data stays in the socket; receive again once buffers are back.
            STARVED_RECEIVES.fetch_add(1, Ordering::Relaxed);
            if !matches!(conn.phase, Phase::Closing { .. }) {
                conn.recv = RecvState::Starved;
                self.starved.push_back(key);
            }
            Reaction::Nothing
        } else if result == -libc::ECANCELED {
            Reaction::Nothing
        } else {
            // ECONNRESET and the like.
            conn.request_close();
            Reaction::Nothing
        };
        if result > 0 && !cqueue::more(flags) && cqueue::sock_nonempty(flags) {
            // The receive ended with more input waiting in the socket (it
            // filled its buffer): if the last response is decided, closing
            // at once would close over that input.
            if let Some(conn) = self.conns.get_mut(key) {
                policy::unread_after_end(&mut conn.after_send);
            }
        }
        self.react(key, reaction);
        self.settle(key);
    }

    fn arm_recv(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let user_data = Op::conn(OpKind::Recv, key).encode();
        let fd = types::Fd(conn.socket);
        let entry = match self.mode {
            RecvMode::Multishot if conn.input != InputState::Fresh => {
                opcode::RecvMulti::new(fd, BUFFER_GROUP).build()
            }
            RecvMode::Multishot | RecvMode::SingleProvided => {
                let len = self.buffers.as_ref().map_or(0, BufRing::buffer_bytes);
                opcode::Recv::new(fd, std::ptr::null_mut(), len)
                    .buf_group(BUFFER_GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            RecvMode::SingleOwned => {
                let buffer = conn.carry.buffer_mut();
                if buffer.capacity() - buffer.len() < READ_BUFFER_BYTES / 2 {
                    buffer.reserve(READ_BUFFER_BYTES);
                }
                let spare = buffer.spare_capacity_mut();
                opcode::Recv::new(fd, spare.as_mut_ptr().cast(), spare.len() as u32).build()
            }
        };
        conn.recv = RecvState::Armed;
        // SAFETY: provided-buffer receives reference the buffer ring, which
        // lives as long as the driver. The own-buffer receive points into the
        // spare capacity of `carry`'s buffer, which is neither freed nor
        // grown (reallocated) while the receive is armed: it grows only when
        // received input is handled, which happens after the receive
        // completed (a single-shot receive is armed only while the connection
        // waits for input, see `Conn::wants_recv`); with own buffers it is
        // only ever emptied, never freed, until the connection's slot is
        // freed, after the receive's final completion. (Emptying it while the
        // receive is armed, as a 408 does, makes the completion count bytes
        // from the start of the buffer: all initialised, and discarded.)
        unsafe { self.ring.push(&entry.user_data(user_data)) };
    }

    /// Re-arms a bounded number of starved connections: all of them at once
    /// would empty the ring again and fail again.
    fn rearm_starved(&mut self) {
        let budget = self
            .buffers
            .as_ref()
            .map_or(0, |b| usize::from(b.count() / 4).max(1));
        for _ in 0..budget {
            let Some(key) = self.starved.pop_front() else {
                return;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.recv != RecvState::Starved {
                continue;
            }
            conn.recv = RecvState::Idle;
            self.settle(key);
        }
    }

    // ---- send ----

    fn flush_sends(&mut self) {
        let mut flush = std::mem::take(&mut self.flush);
        for &key in &flush {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.output == OutputState::Queued {
                conn.output = OutputState::Idle;
            }
            if matches!(conn.phase, Phase::Closing { .. }) || conn.output_in_flight() || conn.outbox.is_none()
            {
                continue;
            }
            self.submit_output(key);
            // The deadline is now the send's.
            self.settle(key);
        }
        flush.clear();
        self.flush = flush;
    }

    /// Submits the outbox's next operation: a send, or the read of the next
    /// chunk of a file range.
    fn submit_output(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let socket = conn.socket;
        let splice = self.cx.splice && !conn.is_tls();
        let Some(outbox) = conn.outbox.as_mut() else {
            return;
        };
        let op = outbox.next_op(splice.then_some(&mut self.pool.pipes));
        let link = self.link_close && outbox.sends_rest(&op) && conn.may_link_close();
        let entry = op.entry(socket, Op::conn(op.kind(), key).encode(), link);
        let state = if link {
            OutputState::LastSend { reset: false }
        } else {
            OutputState::InFlight(op.kind())
        };
        conn.on_output_submitted(state, self.cx.now);
        // SAFETY: the entry points into the boxed outbox (output bytes, the
        // file chunk buffer, iovecs, msghdr) and at a file the output holds
        // open (and a splice at the outbox's pipe, which it keeps, open,
        // until the outbox is given back). The connection keeps the box, unchanged, until this
        // operation's completion: `on_send` and `on_file_read` are the only
        // places an outbox with an operation in flight is released or
        // changed, and a closing connection's slot is freed only once no
        // output operation is in flight. (The linked close references no
        // memory.)
        unsafe {
            if link {
                self.ring
                    .push_send_then_close(&entry, socket, Op::conn(OpKind::Close, key));
            } else {
                self.ring.push(&entry);
            }
        }
    }

    fn on_file_read(&mut self, key: SlotKey, result: i32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing { .. }) {
            conn.output = OutputState::Idle;
        } else {
            // An error, or a file cut short: the response cannot be
            // completed, and the connection closes.
            let reaction = conn.on_file_read(result, self.cx.now);
            self.react(key, reaction);
        }
        self.settle(key);
    }

    fn on_send(&mut self, key: SlotKey, result: i32) {
        let cx = &self.cx;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let OutputState::LastSend { reset } = conn.output {
            conn.output = OutputState::Idle;
            if conn.last_send_completed(result) {
                // The kernel runs the linked close (whatever the phase: a
                // cancel that came too late changes nothing): the
                // connection is over, and its socket is not ours any more.
                LINKED_CLOSES.fetch_add(1, Ordering::Relaxed);
                self.forget(key);
                return;
            }
            // The link broke and the close was cancelled: close as any
            // other connection.
            if reset {
                set_reset_on_close(conn.socket);
            }
            conn.request_close();
        } else if matches!(conn.phase, Phase::Closing { .. }) {
            conn.output = OutputState::Idle;
        } else if result <= 0 {
            // EPIPE, ECONNRESET, or no progress.
            conn.output = OutputState::Idle;
            conn.request_close();
        } else {
            let reaction = conn.on_sent(result as usize, cx, &mut self.pool);
            self.react(key, reaction);
        }
        self.settle(key);
    }

    // ---- the connection state machine's effects ----

    fn react(&mut self, key: SlotKey, reaction: Reaction) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match reaction {
            Reaction::Nothing | Reaction::Flush => {}
            Reaction::PauseReads => {
                PAUSED_READS.fetch_add(1, Ordering::Relaxed);
                if conn.input == InputState::Open {
                    conn.input = InputState::Paused;
                }
                if conn.recv == RecvState::Armed {
                    conn.recv = RecvState::Cancelling;
                    self.ring.push_cancel(Op::conn(OpKind::Recv, key));
                }
            }
            Reaction::Resend => self.submit_output(key),
            // After the send completed, so the FIN follows the response.
            Reaction::StartLinger => {
                // A direct syscall, not through the ring (see the module
                // doc: the ring's shutdown resolves its descriptor late).
                // SAFETY: shutdown(2) reads no memory of ours; the
                // descriptor is open (closed only by this connection's
                // Close).
                if unsafe { libc::shutdown(conn.socket, libc::SHUT_WR) } != 0 {
                    conn.request_close();
                }
            }
            Reaction::Close => conn.request_close(),
        }
    }

    /// Brings a connection's submissions in line with its state after an
    /// event: arms its receive, queues its output, starts or finishes its
    /// close, and sets its deadline.
    fn settle(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(conn.phase, Phase::Closing { .. }) && conn.is_finished() {
            conn.phase = Phase::Closing { cancelled: false };
        }
        if conn.phase == (Phase::Closing { cancelled: false }) {
            conn.phase = Phase::Closing { cancelled: true };
            let cancel_recv = conn.recv == RecvState::Armed;
            let cancel_output = match conn.output {
                OutputState::InFlight(kind) => Some(kind),
                OutputState::LastSend { .. } => Some(OpKind::Send),
                OutputState::Idle | OutputState::Queued => None,
            };
            if cancel_recv {
                conn.recv = RecvState::Cancelling;
            } else if conn.recv == RecvState::Starved {
                // Its entry in the starved queue goes stale.
                conn.recv = RecvState::Idle;
            }
            if cancel_recv {
                self.ring.push_cancel(Op::conn(OpKind::Recv, key));
            }
            if let Some(kind) = cancel_output {
                self.ring.push_cancel(Op::conn(kind, key));
            }
        }
        let cx = &self.cx;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing { .. }) {
            let receiving = matches!(conn.recv, RecvState::Armed | RecvState::Cancelling);
            if !receiving && !conn.output_in_flight() {
                // Nothing of this connection is in the kernel any more: free
                // its slot and close its descriptor.
                let socket = conn.socket;
                self.forget(key);
                self.ring.push_close(socket, Op::conn(OpKind::Close, key));
            }
            return;
        }
        let (at, expiry) = conn.deadline(cx);
        conn.expiry = expiry;
        self.deadlines.set(&mut conn.timer, key, at);
        if conn.outbox.is_some() && conn.output == OutputState::Idle {
            conn.output = OutputState::Queued;
            self.flush.push(key);
        }
        if conn.wants_recv(self.mode == RecvMode::Multishot) {
            self.arm_recv(key);
        }
    }

    /// Frees the slot of a connection that nothing of ours is in flight for
    /// (its socket closed, or about to be by the caller or the kernel).
    fn forget(&mut self, key: SlotKey) {
        if let Some(conn) = self.conns.remove(key) {
            conn.release(&mut self.pool);
            self.cx.count_connection(false);
        }
        if self.deadlines.is_sparse(self.conns.len()) {
            let conns = &self.conns;
            self.deadlines
                .compact(|key| conns.get(key).map(|conn| &conn.timer));
        }
    }

    /// Ends a connection now: with a reset if `reset` (a peer that stopped
    /// reading: its unsent data is useless), after cancelling what is in
    /// flight.
    fn abort(&mut self, key: SlotKey, reset: bool) {
        if let Some(conn) = self.conns.get_mut(key) {
            match conn.output {
                // The kernel may be closing the socket: the reset waits for
                // the send's completion (if the link broke, see `on_send`).
                OutputState::LastSend { .. } if reset => conn.output = OutputState::LastSend { reset },
                _ if reset => set_reset_on_close(conn.socket),
                _ => {}
            }
            conn.request_close();
        }
        self.settle(key);
    }

    // ---- time ----

    fn expire_deadlines(&mut self) {
        while let Some((key, at)) = self.deadlines.pop_due(self.cx.now) {
            let cx = &self.cx;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if self.deadlines.on_popped(&mut conn.timer, key, at, self.cx.now) != Due::Expired {
                continue;
            }
            let lingering = matches!(conn.phase, Phase::Lingering { .. });
            match cx.on_expired(conn.expiry, lingering) {
                Expired::Close => self.abort(key, false),
                Expired::Reset => self.abort(key, true),
                Expired::RequestTimeout => {
                    let reaction = conn.on_head_timeout(cx, &mut self.pool);
                    self.react(key, reaction);
                    self.settle(key);
                }
            }
        }
        if self.accept_resume_at <= self.cx.now {
            self.accept_resume_at = NEVER;
        }
        if self.stopping.grace_over(self.cx.now) {
            // Grace is over: reset whatever is left, once.
            for key in self.conns.keys() {
                self.abort(key, true);
            }
        }
        if self.cx.now >= self.next_snapshot_refresh {
            // Waking was the point: `handle_completions` took the current one.
            self.next_snapshot_refresh = self.cx.now + SNAPSHOT_REFRESH_MS;
        }
        self.cx.flush_log_if_due();
    }

    /// Arms (or moves earlier) the one timeout that wakes the loop for the
    /// next deadline.
    fn arm_timer(&mut self) {
        let mut next = self
            .deadlines
            .next_due()
            .unwrap_or(NEVER)
            .min(self.accept_resume_at);
        if let Some(until) = self.stopping.wake_at() {
            next = next.min(until);
        }
        if let Some(at) = self.cx.log_flush_due() {
            // An idle worker still hands waiting lines over in time.
            next = next.min(at);
        }
        if self.stopping.is_running() {
            next = next.min(self.next_snapshot_refresh);
        }
        if next == NEVER || next >= self.timer_at {
            return;
        }
        let after = next.saturating_sub(self.cx.now).max(1);
        self.timer_spec = types::Timespec::new()
            .sec(after / 1000)
            .nsec(((after % 1000) * 1_000_000) as u32);
        let entry = if self.timer_at == NEVER {
            opcode::Timeout::new(&self.timer_spec)
                .build()
                .user_data(Op::worker(OpKind::Timer).encode())
        } else {
            // If the armed timeout has fired meanwhile, the update fails and
            // the timeout's own completion re-arms it.
            opcode::TimeoutUpdate::new(Op::worker(OpKind::Timer).encode(), &self.timer_spec)
                .build()
                .user_data(Op::worker(OpKind::TimerUpdate).encode())
        };
        // SAFETY: the kernel reads the timespec when the entry is submitted,
        // which happens in this iteration's enter (or earlier); it lives in
        // the driver, which outlives that.
        unsafe { self.ring.push(&entry) };
        self.timer_at = next;
    }

    fn cancel_timer(&mut self) {
        if self.timer_at != NEVER && !self.timer_cancelled {
            self.timer_cancelled = true;
            self.ring.push_cancel(Op::worker(OpKind::Timer));
        }
    }

    // ---- stop ----

    fn on_stop_signal(&mut self) {
        if !self.stopping.begin(self.cx.now, self.grace) {
            return;
        }
        self.maintain_accept();
        while let Some((socket, _)) = self.waiting.pop_front() {
            self.ring.push_close(socket, Op::worker(OpKind::Close));
        }
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // A connection whose last send carries its close finishes by
            // itself, and its socket may already be closed.
            if matches!(conn.phase, Phase::Closing { .. }) || !conn.socket_is_ours() {
                continue;
            }
            // A connection waiting for a request sees end-of-file and
            // closes; one mid-response finishes it first.
            // SAFETY: shutdown(2) reads no memory of ours; the descriptor is
            // open (its Close has not been submitted).
            unsafe { libc::shutdown(conn.socket, libc::SHUT_RD) };
        }
    }
}

/// The peer's address of an accepted socket.
fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: `fd` is an open socket this worker just accepted; the borrow
    // ends before this function returns.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let address = socket2::SockRef::from(&socket).peer_addr().ok()?;
    address.as_socket().map(|a| a.ip())
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.ring.in_flight > 0 {
            // Left with operations in flight (a panic, a failed enter): the
            // kernel may still write into provided buffers or read outboxes
            // after the ring closes, so leak them rather than free them. The
            // descriptors, though, are closed with a reset: their clients
            // must see the end now, not hang until the process exits (what
            // an operation still holds of a socket is released when the
            // ring, dropped next, cancels it).
            std::mem::forget(self.buffers.take());
            let conns = self.conns.drain_values();
            // Not the socket of a last send linked to its close: the kernel
            // may have closed it already, and its number be another's.
            for fd in conns
                .iter()
                .filter(|conn| conn.socket_is_ours())
                .map(|conn| conn.socket)
                .chain(self.waiting.drain(..).map(|(fd, _)| fd))
            {
                set_reset_on_close(fd);
                crate::engine::shutdown_both(fd);
                // SAFETY: the descriptor belongs to this worker alone, and no
                // submission naming it will be made again.
                unsafe { libc::close(fd) };
            }
            std::mem::forget(conns);
            return;
        }
        if self.buffers.is_some() {
            let _ = self.ring.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
        }
        // Only reachable if the loop was left early; close what is open.
        for conn in self.conns.drain_values() {
            if conn.socket_is_ours() {
                // SAFETY: the descriptor belongs to this connection alone.
                unsafe { libc::close(conn.socket) };
            }
        }
        for (fd, _) in self.waiting.drain(..) {
            // SAFETY: as above: accepted, never handed to anything else.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_queue_is_sized_for_the_connection_cap() {
        assert_eq!(completion_entries(4096, 16_384), 32_768);
        assert_eq!(
            completion_entries(4096, 10),
            16_384,
            "at least four per submission entry"
        );
        assert_eq!(
            completion_entries(4096, 1_000_000),
            65_536,
            "at most the kernel's limit"
        );
        assert_eq!(completion_entries(8, 3_000), 8_192);
    }
}
