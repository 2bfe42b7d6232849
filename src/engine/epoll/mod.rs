//! The `epoll` engine: a native epoll event loop per worker, the readiness
//! twin of [`super::uring`], written with the same care and no async runtime.
//!
//! The two native engines share everything but how bytes move: the HTTP core,
//! the deadline rules ([`crate::http::deadline`]) and their lazy queue
//! ([`crate::engine::deadlines`]), the connection table
//! ([`crate::engine::slots`]), the session driving and access-log hook
//! ([`crate::engine::policy`]), the cap and the accept back-off. So comparing
//! `uring` with `epoll` compares io_uring with epoll, not two programs.
//!
//! One loop iteration, in order:
//! 1. **Accept** while connections wait in the backlog and the worker has
//!    room under its cap (`--max-connections`): `accept4` until `EAGAIN`, on
//!    each of the worker's own `SO_REUSEPORT` listeners (one per configured
//!    address: plain HTTP, HTTPS or a redirect to HTTPS, [`ListenKind`];
//!    `TCP_NODELAY` and the send timeout are inherited from it). At the cap the rest wait in the
//!    backlog until a connection closes; on EMFILE and the like, accepting
//!    pauses for [`ACCEPT_BACKOFF_MS`](crate::engine::ACCEPT_BACKOFF_MS)
//!    ([`AcceptBackoff`]).
//! 2. **Wait** in `epoll_wait`, with the timeout set from the earliest
//!    deadline (0 when a connection still has input to read from the last
//!    iteration). Every socket is registered once, edge-triggered, for both
//!    directions: no `epoll_ctl` per request.
//! 3. **Read** each connection that became readable into the worker's **one
//!    receive buffer** ([`RECV_BUFFER_BYTES`]), answer what it holds
//!    ([`conn`]) and keep only the start of a head that spans reads. An idle
//!    connection owns no buffer. A read shorter than the buffer emptied the
//!    socket (the next data brings a new edge); a connection with input left
//!    after [`READS_PER_TURN`] reads is served again next iteration, so one
//!    fast client cannot hold the worker.
//! 4. **Write** every connection with output: all responses to one read in
//!    one `send` (or `sendmsg` of the staged heads and shared bodies), files
//!    too large for memory with `sendfile(2)` ([`outbox`]). A short write
//!    waits for the writable edge and continues where it stopped.
//! 5. **Expire deadlines** due by now (head → 408 and linger, idle → close,
//!    send without progress → reset, linger → close), then the grace period
//!    after a stop signal.
//!
//! **HTTPS** goes through [`Protocol`], as in every engine: what is read and
//! written is ciphertext, and a file range is read with `pread` and sealed
//! by the protocol instead of `sendfile` ([`outbox`]); the loop has no TLS
//! logic of its own. A handshake is bounded by the head deadline.
//!
//! Ending a connection follows the shared rule ([`policy::ending`]): when
//! the client asked to close and nothing it sent is unread (nothing carried,
//! and no readiness edge since the last read, which emptied the socket), a
//! plain `close(2)` right after the last write. Otherwise the end is
//! graceful (RFC 9112 §9.6): `shutdown(SHUT_WR)` sends FIN, and input is
//! read and discarded until the client closes,
//! [`LINGER_MAX_BYTES`](crate::engine::LINGER_MAX_BYTES) or the linger
//! deadline, then `close(2)` (no operation is ever in flight in the kernel,
//! unlike io_uring).
//!
//! **Graceful stop**: the worker's [`Shutdown`] eventfd is in the epoll set.
//! On it the loop closes its listeners (new clients are refused), shuts down
//! the read side of every connection (one waiting for a request sees
//! end-of-file and closes, one mid-response finishes it), resets what is
//! left after the grace period, and returns once no connection is open.
//!
//! **A failure** (a failed `epoll_wait`, the test-only injected fault) ends
//! the loop with an error after resetting every connection, and the server
//! stops and exits 1 (see [`crate::engine::WorkerFailure`]).

mod conn;
mod outbox;
mod sys;

use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use self::conn::{Conn, InputState, OutputState, Phase, Reaction};
use self::outbox::OutboxPool;
use self::sys::Epoll;
use crate::engine::deadlines::{Deadlines, Due, Millis, NEVER};
use crate::engine::policy::{self, Expired, Serving, Stopping, millis};
use crate::engine::slots::{SlotKey, Slots};
use crate::engine::{AcceptBackoff, FaultCountdown, Ready, Shutdown, Worker, set_reset_on_close};
use crate::files::SnapshotCache;
use crate::protocol::{ListenKind, Protocol};
use crate::tls::TlsHandle;

/// The worker's one receive buffer: every connection reads into it, and a
/// pipelined burst of up to this much is answered from one read.
pub const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Reads of one connection per iteration before the others get their turn.
pub const READS_PER_TURN: usize = 8;
/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// Event tokens: a connection's is its [`SlotKey`] (generation above index;
/// generations have 24 bits, so the stop signal's and the listeners', at the
/// top of the range, can never be one).
const STOP_SIGNAL: u64 = u64::MAX;
/// Listener `i`'s token is `LISTENER_BASE - i`.
const LISTENER_BASE: u64 = u64::MAX - 1;
/// An idle worker wakes at least this often to drop the snapshot it holds if
/// a reload replaced it (one timeout per second: no cost on the hot path).
const SNAPSHOT_REFRESH_MS: Millis = 1000;

fn listener_token(index: usize) -> u64 {
    LISTENER_BASE - index as u64
}

/// The listener index of `token`, if it is a listener's.
fn listener_of(token: u64) -> Option<usize> {
    let index = LISTENER_BASE.checked_sub(token)?;
    (index < 1 << 16).then_some(index as usize)
}

/// Every connection is registered once for both directions, edge-triggered.
const CONNECTION_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
const INPUT_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const HANGUP_EVENTS: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const OUTPUT_EVENTS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

fn token(key: SlotKey) -> u64 {
    (u64::from(key.generation) << 32) | u64::from(key.index)
}

fn key_of(token: u64) -> SlotKey {
    SlotKey {
        index: token as u32,
        generation: (token >> 32) as u32,
    }
}

/// Runs one worker until the stop signal. An error means the loop broke
/// (see [`crate::engine::WorkerFailure`] for what happens then).
pub fn run_worker(worker: Worker, ready: Ready) -> io::Result<()> {
    policy::start_loop(worker, ready, Driver::new, |mut driver| driver.run())
}

/// Whether connections may be waiting in the listener's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptState {
    /// The last accept said `EAGAIN`: wait for the next edge.
    Drained,
    /// Connections may be waiting: accept while there is room.
    Pending,
    /// An accept failed for lack of descriptors or memory: try again then.
    Paused { until: Millis },
}

/// A listening socket of the worker and what it serves.
struct Listening {
    /// Closed once the stop signal came.
    listener: Option<TcpListener>,
    kind: ListenKind,
    accept: AcceptState,
}

/// One worker's loop and everything it owns.
struct Driver {
    epoll: Epoll,
    /// One per listening address, each with its own accept state.
    listeners: Vec<Listening>,
    /// The current certificate, for HTTPS listeners.
    tls: Option<TlsHandle>,
    /// When to wake, at the latest, to pick up a reload (an idle worker
    /// would otherwise keep a replaced snapshot alive).
    next_snapshot_refresh: Millis,
    /// Holds the eventfd in the epoll set.
    shutdown: Shutdown,
    conns: Slots<Conn>,
    deadlines: Deadlines,
    /// What answering needs, lent to one connection at a time.
    serving: Serving,
    pool: OutboxPool,
    /// This thread's view of the current snapshot (changed by a reload).
    snapshots: SnapshotCache,
    /// The worker's one receive buffer.
    recv_buffer: Box<[u8]>,
    events: Vec<libc::epoll_event>,
    /// Connections with output to write once this iteration's events are
    /// handled.
    flush: Vec<SlotKey>,
    /// Connections with input left to read (served next iteration).
    ready: Vec<SlotKey>,
    backoff: AcceptBackoff,
    max_connections: usize,
    worker_index: usize,
    grace: Duration,
    stopping: Stopping,
    /// Test-only fault injection ([`crate::engine::FaultCountdown`]) ...
    fault: FaultCountdown,
    /// ... and whether it is due: the loop fails as a broken one would.
    fault_due: bool,
}

impl Driver {
    fn new(mut worker: Worker) -> io::Result<Driver> {
        let epoll = Epoll::new()?;
        let listeners: Vec<Listening> = std::mem::take(&mut worker.listeners)
            .into_iter()
            .map(|(listener, kind)| Listening {
                listener: Some(listener),
                kind,
                // Clients may have connected before the listener joined
                // the set.
                accept: AcceptState::Pending,
            })
            .collect();
        for (index, listening) in listeners.iter().enumerate() {
            if let Some(listener) = &listening.listener {
                epoll.add(
                    listener.as_raw_fd(),
                    (libc::EPOLLIN | libc::EPOLLET) as u32,
                    listener_token(index),
                )?;
            }
        }
        epoll.add(
            worker.shutdown.eventfd().as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            STOP_SIGNAL,
        )?;
        let serving = Serving::for_worker(&mut worker);
        Ok(Driver {
            epoll,
            listeners,
            tls: worker.tls.take(),
            next_snapshot_refresh: SNAPSHOT_REFRESH_MS,
            shutdown: worker.shutdown,
            conns: Slots::default(),
            deadlines: Deadlines::default(),
            serving,
            pool: OutboxPool::default(),
            snapshots: worker.snapshot.cache(),
            recv_buffer: vec![0; RECV_BUFFER_BYTES].into_boxed_slice(),
            events: Vec::with_capacity(EVENTS_PER_WAIT),
            flush: Vec::new(),
            ready: Vec::new(),
            backoff: AcceptBackoff::counted(worker.metrics.take()),
            max_connections: worker.max_connections.max(1),
            worker_index: worker.index,
            grace: worker.shutdown_grace,
            stopping: Stopping::Running,
            fault: FaultCountdown::new(worker.fault_after_accepts),
            fault_due: false,
        })
    }

    /// The loop, until the stop signal has been served.
    fn run(&mut self) -> io::Result<()> {
        loop {
            self.accept_connections();
            if !self.stopping.is_running() && self.conns.is_empty() {
                break;
            }
            if self.fault_due {
                self.reset_all();
                return Err(io::Error::other("epoll loop failed: injected fault"));
            }
            let timeout = self.wait_timeout();
            match self.epoll.wait(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reset_all();
                    return Err(io::Error::new(e.kind(), format!("epoll_wait failed: {e}")));
                }
            }
            self.serving.tick();
            if self.serving.now >= self.next_snapshot_refresh {
                // Waking was the point: the current snapshot is taken below.
                self.next_snapshot_refresh = self.serving.now + SNAPSHOT_REFRESH_MS;
            }
            // One snapshot per iteration; a reload takes effect at the next.
            let current = self.snapshots.current();
            if !Arc::ptr_eq(current, &self.serving.snapshot) {
                self.serving.snapshot = Arc::clone(current);
            }
            self.serve_ready();
            let events = std::mem::take(&mut self.events);
            for event in &events {
                self.on_event(event.u64, event.events);
            }
            self.events = events;
            self.expire_deadlines();
            self.flush_all();
        }
        if let Some(log) = &self.serving.log {
            log.borrow_mut().flush();
        }
        Ok(())
    }

    /// How long `epoll_wait` may sleep: until the earliest deadline (-1:
    /// none), or not at all when input is left to read.
    fn wait_timeout(&self) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        let mut next = self.deadlines.next_due().unwrap_or(NEVER);
        for listening in &self.listeners {
            if let AcceptState::Paused { until } = listening.accept {
                next = next.min(until);
            }
        }
        if self.stopping.is_running() {
            next = next.min(self.next_snapshot_refresh);
        }
        if let Some(until) = self.stopping.wake_at() {
            next = next.min(until);
        }
        if let Some(at) = self.serving.log_flush_due() {
            // An idle worker still hands waiting lines over in time.
            next = next.min(at);
        }
        if next == NEVER {
            return -1;
        }
        i32::try_from(next.saturating_sub(self.serving.now)).unwrap_or(i32::MAX)
    }

    fn on_event(&mut self, token: u64, events: u32) {
        if let Some(index) = listener_of(token) {
            if let Some(listening) = self.listeners.get_mut(index) {
                if listening.accept == AcceptState::Drained {
                    listening.accept = AcceptState::Pending;
                }
            }
            return;
        }
        match token {
            STOP_SIGNAL => self.on_stop_signal(),
            token => {
                let key = key_of(token);
                // A stale event (the connection closed earlier in this
                // batch, its slot maybe reused) names an old generation.
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                if events & HANGUP_EVENTS != 0 && conn.input != InputState::Eof {
                    conn.input = InputState::ReadableToEnd;
                } else if events & INPUT_EVENTS != 0 && conn.input == InputState::Drained {
                    conn.input = InputState::Readable;
                }
                if events & OUTPUT_EVENTS != 0 && conn.output == OutputState::Blocked {
                    conn.output = OutputState::Queued;
                    self.flush.push(key);
                }
                self.serve_input(key);
            }
        }
    }

    // ---- accept ----

    /// Accepts, on every listener, while connections wait and there is room
    /// under the cap.
    fn accept_connections(&mut self) {
        for index in 0..self.listeners.len() {
            self.accept_on(index);
        }
    }

    fn accept_on(&mut self, index: usize) {
        let listening = &mut self.listeners[index];
        if let AcceptState::Paused { until } = listening.accept {
            if until > self.serving.now {
                return;
            }
            listening.accept = AcceptState::Pending;
        }
        let kind = listening.kind;
        while self.listeners[index].accept == AcceptState::Pending && self.conns.len() < self.max_connections
        {
            let Some(listener) = &self.listeners[index].listener else {
                return;
            };
            match sys::accept(listener.as_raw_fd()) {
                Ok(socket) => {
                    self.backoff.on_success(self.worker_index);
                    self.fault_due |= self.fault.on_accept();
                    self.start_connection(socket, kind);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[index].accept = AcceptState::Drained;
                }
                Err(e) => {
                    if let Some(pause) = self.backoff.on_error(self.worker_index, &e) {
                        self.listeners[index].accept = AcceptState::Paused {
                            until: self.serving.now + millis(pause),
                        };
                    }
                }
            }
        }
    }

    fn start_connection(&mut self, socket: OwnedFd, kind: ListenKind) {
        // HTTPS without a usable configuration: closed at once.
        let Some(protocol) = Protocol::new(kind, self.tls.as_ref()) else {
            return;
        };
        // The peer's address is only needed for the access log.
        let peer = self
            .serving
            .log
            .as_ref()
            .and_then(|_| peer_ip(&socket))
            .map(Box::new);
        let fd = socket.as_raw_fd();
        let key = self
            .conns
            .insert(Conn::new(socket, peer, protocol, &self.serving));
        self.serving.count_connection(true);
        // Registering reports what is already there (a request that came
        // with the handshake) as the first event.
        if self.epoll.add(fd, CONNECTION_EVENTS, token(key)).is_err() {
            self.close(key, false);
            return;
        }
        self.settle(key);
    }

    // ---- read ----

    /// Reads and answers while the connection may read, up to
    /// [`READS_PER_TURN`] reads.
    fn serve_input(&mut self, key: SlotKey) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.may_read() {
                break;
            }
            let reaction = match sys::recv(conn.fd(), &mut self.recv_buffer) {
                Ok(0) => {
                    conn.input = InputState::Eof;
                    Reaction::Nothing
                }
                Ok(n) => {
                    if n < self.recv_buffer.len() && conn.input == InputState::Readable {
                        // The socket is empty: new data brings a new edge.
                        conn.input = InputState::Drained;
                    }
                    conn.on_received(&self.recv_buffer[..n], &self.serving, &mut self.pool)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Also after a hang-up (whose end-of-file would have
                    // come instead): never spin on a socket that is empty.
                    conn.input = InputState::Drained;
                    Reaction::Nothing
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Reaction::Nothing,
                // ECONNRESET and the like.
                Err(_) => Reaction::Close,
            };
            if !self.react(key, reaction) {
                return;
            }
        }
        self.settle(key);
    }

    /// Connections left readable by the last iteration.
    fn serve_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        for &key in &ready {
            self.serve_input(key);
        }
        ready.clear();
        if self.ready.is_empty() {
            self.ready = ready;
        }
    }

    // ---- write ----

    /// Writes every queued connection (new ones may be queued meanwhile: a
    /// 408, or output answered from what was carried).
    fn flush_all(&mut self) {
        while !self.flush.is_empty() {
            let flush = std::mem::take(&mut self.flush);
            for &key in &flush {
                let Some(conn) = self.conns.get_mut(key) else {
                    continue;
                };
                if conn.output != OutputState::Queued {
                    continue;
                }
                let reaction = conn.write(&self.serving, &mut self.pool);
                if self.react(key, reaction) {
                    self.settle(key);
                }
            }
        }
    }

    // ---- the connection state machine's effects ----

    /// Carries out `reaction`; `false` if the connection is closed.
    fn react(&mut self, key: SlotKey, reaction: Reaction) -> bool {
        match reaction {
            Reaction::Nothing | Reaction::Flush => true,
            Reaction::StartLinger => {
                if let Some(conn) = self.conns.get(key) {
                    sys::shutdown(conn.fd(), libc::SHUT_WR);
                }
                true
            }
            Reaction::Close => {
                self.close(key, false);
                false
            }
        }
    }

    /// Brings a connection in line with its state after an event: closes
    /// it if it is finished, sets its deadline, queues its output, and
    /// lists it for reading next iteration if input is left.
    fn settle(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.is_finished() {
            self.close(key, false);
            return;
        }
        let (at, expiry) = conn.deadline(&self.serving);
        conn.expiry = expiry;
        self.deadlines.set(&mut conn.timer, key, at);
        if conn.wants_flush() {
            conn.output = OutputState::Queued;
            self.flush.push(key);
        }
        if conn.may_read() {
            self.ready.push(key);
        }
    }

    /// Closes a connection now, with a reset if `reset` (a peer that stopped
    /// reading: its unsent data is useless). Closing the descriptor also
    /// removes it from the epoll set.
    fn close(&mut self, key: SlotKey, reset: bool) {
        let Some(conn) = self.conns.remove(key) else {
            return;
        };
        if reset {
            set_reset_on_close(conn.fd());
        }
        conn.release(&mut self.pool);
        self.serving.count_connection(false);
        if self.deadlines.is_sparse(self.conns.len()) {
            let conns = &self.conns;
            self.deadlines
                .compact(|key| conns.get(key).map(|conn| &conn.timer));
        }
    }

    /// Resets every connection (the loop is failing).
    fn reset_all(&mut self) {
        for key in self.conns.keys() {
            self.close(key, true);
        }
    }

    // ---- time ----

    fn expire_deadlines(&mut self) {
        let now = self.serving.now;
        while let Some((key, at)) = self.deadlines.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if self.deadlines.on_popped(&mut conn.timer, key, at, now) != Due::Expired {
                continue;
            }
            let lingering = matches!(conn.phase, Phase::Lingering(_));
            match self.serving.on_expired(conn.expiry, lingering) {
                Expired::Close => self.close(key, false),
                Expired::Reset => self.close(key, true),
                Expired::RequestTimeout => {
                    let reaction = conn.on_head_timeout(&self.serving, &mut self.pool);
                    if self.react(key, reaction) {
                        self.settle(key);
                    }
                }
            }
        }
        if self.stopping.grace_over(now) {
            // Grace is over: reset whatever is left, once.
            self.reset_all();
        }
        self.serving.flush_log_if_due();
    }

    // ---- stop ----

    fn on_stop_signal(&mut self) {
        if !self.stopping.begin(self.serving.now, self.grace) {
            return;
        }
        for listening in &mut self.listeners {
            if let Some(listener) = listening.listener.take() {
                self.epoll.delete(listener.as_raw_fd());
            }
        }
        self.epoll.delete(self.shutdown.eventfd().as_fd().as_raw_fd());
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.phase == Phase::Open {
                // A connection waiting for a request sees end-of-file and
                // closes; one mid-response finishes it first.
                sys::shutdown(conn.fd(), libc::SHUT_RD);
                if conn.input != InputState::Eof {
                    conn.input = InputState::ReadableToEnd;
                }
            }
            self.settle(key);
        }
    }
}

/// The peer's address of an accepted socket.
fn peer_ip(socket: &OwnedFd) -> Option<IpAddr> {
    let address = socket2::SockRef::from(socket).peer_addr().ok()?;
    address.as_socket().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_tokens_round_trip() {
        for index in [0, 1, 7] {
            assert_eq!(listener_of(listener_token(index)), Some(index));
        }
        assert_eq!(listener_of(STOP_SIGNAL), None);
    }

    #[test]
    fn tokens_round_trip_and_never_meet_the_worker_tokens() {
        for key in [
            SlotKey {
                index: 0,
                generation: 0,
            },
            SlotKey {
                index: u32::MAX,
                generation: (1 << crate::engine::slots::GENERATION_BITS) - 1,
            },
        ] {
            assert_eq!(key_of(token(key)), key);
            assert!(token(key) != STOP_SIGNAL && listener_of(token(key)).is_none());
        }
    }
}
