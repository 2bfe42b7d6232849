//! The worker and connection loops shared by the tokio-based engines.
//!
//! `tokio-uring` and `tokio` run the same loops; they differ only in the two
//! traits below, which say how a socket is accepted, read, written and
//! half-closed. Keeping the loops here, once, is what makes comparing the two
//! engines compare I/O models and nothing else.
//!
//! The worker loop: for each of the worker's listeners, wait for room under
//! the connection cap ([`Connections::wait_for_room`]), accept (pausing on
//! EMFILE and the like, [`AcceptBackoff`]), spawn one local task per
//! connection with the [`Protocol`] its listener serves; hand the access
//! log's lines over when due ([`WorkerLog::flush_due_at`]); on the stop
//! signal, drain ([`Connections::drain`]).
//!
//! The connection loop: load the current snapshot, hand received bytes to
//! the connection's [`Protocol`] (plain HTTP, or TLS around it), drop what it
//! consumed, write its output
//! ([`write_output`]: in-memory pieces by the engine, file ranges streamed
//! from disk here in chunks of [`FILE_CHUNK_BYTES`]; then, for TLS, the
//! sealed records [`write_sealed`] pulls from the protocol, file chunks read
//! here and sealed there), and read, write again,
//! close or linger as its [`Next`] says, by the rule every engine shares
//! ([`policy::ending`]: an immediate close when the client asked for it and
//! nothing it sent is unread). Every read and every write operation is raced
//! against the deadline the core decides ([`DeadlineClock`]) on one timer per
//! connection ([`timer::before`]).
//!
//! Ending a connection: an operation dropped at its deadline may still be in
//! flight in the kernel (tokio-uring cannot cancel one, and an in-flight
//! io_uring operation holds a reference to the socket, so closing the
//! descriptor would neither send a FIN nor free it). A connection that timed
//! out therefore ends with `shutdown(SHUT_RDWR)`, which completes whatever is
//! pending, and a stalled send also with a reset (`SO_LINGER` 0).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::time::Sleep;

use crate::access_log::{ConnectionLog, MAX_FLUSH_DELAY, WorkerLog};
use crate::engine::connections::{Connections, Registration};
use crate::engine::policy::{self, End};
use crate::engine::timer::{self, connection_timer};
use crate::engine::{
    AcceptBackoff, FILE_CHUNK_BYTES, FaultCountdown, LINGER_MAX_BYTES, READ_BUFFER_BYTES, Ready, Worker,
    set_reset_on_close, shutdown_both,
};
use crate::files::SnapshotHandle;
use crate::http::response::{FileRange, Piece};
use crate::http::{DeadlineClock, Expiry, Limits, Next, Observer, Output, Timeouts};
use crate::metrics::{ConnectionObserver, TimeoutKind, WorkerMetrics, count_timeout};
use crate::protocol::{ListenKind, Protocol};
use crate::tls::{Pull, TlsHandle};

/// Output buffer capacity a connection keeps between responses (more, after
/// sealing large TLS records, is given back).
const MAX_IDLE_OUTPUT_BYTES: usize = 32 * 1024;

/// What the connection tasks of one worker share (by `Rc`: never across threads).
struct WorkerContext {
    snapshot: SnapshotHandle,
    limits: Limits,
    timeouts: Timeouts,
    connections: Connections,
    access_log: Option<RefCell<WorkerLog>>,
    tls: Option<TlsHandle>,
    /// Fault injection for tests (see [`FaultCountdown`]).
    fault: RefCell<FaultCountdown>,
    metrics: Option<Arc<WorkerMetrics>>,
}

/// A listening socket of one engine.
pub(crate) trait Acceptor {
    type Connection: ConnectionIo + 'static;

    async fn accept(&self) -> io::Result<(Self::Connection, SocketAddr)>;
}

/// Why writing an output failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFailed {
    /// The peer is gone (reset, broken pipe): nothing is left in flight.
    Peer,
    /// A write operation made no progress before its deadline; it was dropped
    /// and may still be in flight.
    Stalled,
    /// A file being streamed could not be read to the end (an I/O error, or
    /// truncated in place since the snapshot was built): the response cannot
    /// be completed. Nothing is in flight.
    File,
}

/// One accepted socket of one engine, and how that engine reads files.
pub(crate) trait ConnectionIo {
    /// A file opened for this engine's reads (see [`Self::open_file`]).
    type FileReader;

    fn raw_fd(&self) -> RawFd;

    /// Reads into the spare capacity of `input` (which has some), appending.
    /// `Ok(0)` is end-of-file.
    async fn read_more(&mut self, input: &mut Vec<u8>) -> io::Result<usize>;

    /// Writes all of `output`, which holds no file range ([`write_output`]
    /// streams those itself), and leaves it empty, one operation at a time;
    /// each operation must make progress within `timeouts.send`
    /// ([`DeadlineClock::for_write`], raced on `timer` with
    /// [`timer::before`]), so a slow reader that keeps reading is never cut
    /// off and one that stopped is.
    async fn write_output(
        &mut self,
        output: &mut Output,
        timer: Pin<&mut Sleep>,
        timeouts: &Timeouts,
    ) -> Result<(), WriteFailed>;

    /// Shuts down the sending side (the peer sees end-of-file).
    async fn shutdown_write(&mut self) -> io::Result<()>;

    /// Prepares `file` for [`Self::read_file_at`]; called once per streamed range.
    fn open_file(&self, file: &Arc<File>) -> io::Result<Self::FileReader>;

    /// Reads up to `len` bytes at `offset` into `buffer` (empty, with at
    /// least `len` bytes of capacity), giving it back holding what was read.
    async fn read_file_at(
        &mut self,
        file: &Self::FileReader,
        offset: u64,
        len: usize,
        buffer: BytesMut,
    ) -> (io::Result<usize>, BytesMut);
}

/// How a connection ended, which decides how its socket is closed (in order
/// of how much cleaning up it needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// No operation is in flight: closing the descriptor is enough.
    Clean,
    /// An operation was dropped at a deadline and may still be in flight.
    Abandoned,
    /// A write made no progress: reset, and complete the abandoned write.
    Stalled,
}

impl From<WriteFailed> for Ending {
    fn from(failed: WriteFailed) -> Ending {
        match failed {
            WriteFailed::Peer | WriteFailed::File => Ending::Clean,
            WriteFailed::Stalled => Ending::Stalled,
        }
    }
}

/// Takes over the worker's listeners with `adopt` (inside the runtime,
/// which some engines need to register them), reports readiness, accepts
/// on each (one task per listener) and serves until the stop signal, then
/// drains.
pub(crate) async fn run_worker_loop<A: Acceptor + 'static>(
    mut worker: Worker,
    ready: Ready,
    adopt: impl Fn(std::net::TcpListener) -> io::Result<A>,
) {
    let mut acceptors = Vec::with_capacity(worker.listeners.len());
    for (listener, kind) in std::mem::take(&mut worker.listeners) {
        match adopt(listener) {
            Ok(acceptor) => acceptors.push((acceptor, kind)),
            Err(e) => return ready.report(Err(e)),
        }
    }
    ready.report(Ok(()));
    let context = Rc::new(WorkerContext {
        snapshot: worker.snapshot,
        limits: worker.limits,
        timeouts: worker.timeouts,
        connections: Connections::counted(worker.max_connections, worker.metrics.clone()),
        access_log: worker.access_log.take().map(RefCell::new),
        tls: worker.tls.take(),
        fault: RefCell::new(FaultCountdown::new(worker.fault_after_accepts)),
        metrics: worker.metrics.clone(),
    });
    if context.access_log.is_some() {
        tokio::task::spawn_local(flush_log_when_due(Rc::clone(&context)));
    }
    // The accept loops run inside the worker's own future (not as tasks),
    // so a panic in one breaks the worker as any fault of its loop does.
    let mut accepting: Vec<Pin<Box<dyn Future<Output = ()>>>> = acceptors
        .into_iter()
        .map(|(acceptor, kind)| {
            Box::pin(accept_loop(acceptor, kind, worker.index, Rc::clone(&context)))
                as Pin<Box<dyn Future<Output = ()>>>
        })
        .collect();
    let accept_all = std::future::poll_fn(|cx| {
        for accept in &mut accepting {
            if accept.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    });
    tokio::select! {
        () = accept_all => {}
        () = worker.shutdown.wait() => {}
    }
    // Dropping the accept loops closes the listeners: new clients are
    // refused while the connections drain.
    drop(accepting);
    context.connections.drain(worker.shutdown_grace).await;
    if let Some(log) = &context.access_log {
        log.borrow_mut().flush();
    }
}

/// Accepts on one listener, under the worker's connection cap, and spawns a
/// task per connection speaking what the listener serves.
async fn accept_loop<A: Acceptor>(acceptor: A, kind: ListenKind, worker: usize, context: Rc<WorkerContext>) {
    let mut backoff = AcceptBackoff::counted(context.metrics.clone());
    loop {
        context.connections.wait_for_room().await;
        match acceptor.accept().await {
            Ok((connection, peer)) => {
                backoff.on_success(worker);
                if context.fault.borrow_mut().on_accept() {
                    panic!("injected fault: the worker's event loop broke");
                }
                // Registered here, not in the task: the cap must count it
                // before the next accept.
                let registration = context.connections.register(connection.raw_fd());
                let Some(protocol) = Protocol::new(kind, context.tls.as_ref()) else {
                    continue;
                };
                tokio::task::spawn_local(serve_connection(
                    connection,
                    protocol,
                    registration,
                    peer,
                    Rc::clone(&context),
                ));
            }
            Err(e) => {
                if let Some(pause) = backoff.on_error(worker, &e) {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Hands the access log's lines over [`MAX_FLUSH_DELAY`] after the first of
/// them. With nothing waiting it looks again after that delay, so a line
/// written meanwhile is found in time: it waits at most the delay.
async fn flush_log_when_due(context: Rc<WorkerContext>) {
    let Some(log) = &context.access_log else {
        return;
    };
    loop {
        let due = log.borrow().flush_due_at();
        match due {
            Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
            None => tokio::time::sleep(MAX_FLUSH_DELAY).await,
        }
        log.borrow_mut().flush_if_due(Instant::now());
    }
}

/// Serves one connection; `registration` (its entry in the worker's table)
/// is dropped before the socket closes.
async fn serve_connection<C: ConnectionIo>(
    mut connection: C,
    mut protocol: Protocol,
    registration: Registration,
    peer: SocketAddr,
    context: Rc<WorkerContext>,
) {
    let log = context
        .access_log
        .as_ref()
        .map(|log| ConnectionLog { log, peer: peer.ip() });
    let ending = match ConnectionObserver::new(log, context.metrics.as_deref()) {
        None => run_connection(&mut connection, &mut protocol, &context, &mut ()).await,
        Some(mut observer) => run_connection(&mut connection, &mut protocol, &context, &mut observer).await,
    };
    if ending == Ending::Stalled {
        count_timeout(context.metrics.as_deref(), TimeoutKind::Send);
        set_reset_on_close(connection.raw_fd());
    }
    if ending != Ending::Clean {
        shutdown_both(connection.raw_fd());
    }
    drop(registration);
    drop(connection);
}

async fn run_connection<C: ConnectionIo, O: Observer>(
    connection: &mut C,
    protocol: &mut Protocol,
    context: &WorkerContext,
    observer: &mut O,
) -> Ending {
    let timeouts = &context.timeouts;
    let mut clock = DeadlineClock::new(Instant::now());
    let timer = connection_timer(Instant::now() + timeouts.head);
    tokio::pin!(timer);
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Output::with_capacity(READ_BUFFER_BYTES);
    loop {
        // One load per batch: every request of the batch sees one snapshot.
        let progress = protocol.on_input_observed(
            &input,
            &context.snapshot.load(),
            &context.limits,
            &mut output,
            observer,
        );
        input.drain(..progress.consumed);
        if !output.is_empty() {
            if let Err(failed) = write_output(connection, &mut output, timer.as_mut(), timeouts).await {
                return failed.into();
            }
        }
        if let Err(failed) = write_sealed(connection, protocol, &mut output, timer.as_mut(), timeouts).await {
            return failed.into();
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            // The shared rule (RFC 9112 §9.6): close at once only when the
            // client asked to and nothing it sent is unread (no read runs
            // while output is written, so `input` is all there is);
            // otherwise linger, or the kernel would answer the unread input
            // with a reset that can destroy the response's end.
            next @ (Next::Close | Next::Linger) => {
                return match policy::ending(next, protocol, input.len()) {
                    Some(End::Close) => Ending::Clean,
                    Some(End::Linger) | None => linger(connection, input, timeouts).await,
                };
            }
        }
        let buffered = protocol.buffered(input.len());
        let deadline = clock.for_read(protocol.session(), buffered, Instant::now(), timeouts);
        if deadline.expiry == Expiry::RequestTimeout {
            // A head is partly here (rare: most heads arrive in one read).
            // Read into a second buffer, so the partial head stays ours for
            // the 408 and its log line even if the read is abandoned.
            let mut spare = Vec::with_capacity(READ_BUFFER_BYTES);
            match timer::before(timer.as_mut(), deadline.at, connection.read_more(&mut spare)).await {
                Some(Ok(0) | Err(_)) => return Ending::Clean,
                Some(Ok(_)) => input.extend_from_slice(&spare),
                None => {
                    count_timeout(context.metrics.as_deref(), TimeoutKind::Head);
                    let next = protocol.on_head_timeout(&input, &mut output, observer);
                    let written = match write_output(connection, &mut output, timer.as_mut(), timeouts).await
                    {
                        Ok(()) => {
                            write_sealed(connection, protocol, &mut output, timer.as_mut(), timeouts).await
                        }
                        Err(failed) => Err(failed),
                    };
                    return match (written, next) {
                        (Ok(()), Next::Linger) => linger(connection, Vec::new(), timeouts)
                            .await
                            .max(Ending::Abandoned),
                        (Ok(()), _) => Ending::Abandoned,
                        (Err(failed), _) => Ending::from(failed).max(Ending::Abandoned),
                    };
                }
            }
            continue;
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        match timer::before(timer.as_mut(), deadline.at, connection.read_more(&mut input)).await {
            Some(Ok(0) | Err(_)) => return Ending::Clean,
            Some(Ok(_)) => {}
            None => {
                count_timeout(context.metrics.as_deref(), deadline.expiry);
                return Ending::Abandoned;
            }
        }
    }
}

/// Writes all of `output` and leaves it empty. Without file ranges (the
/// common case) the engine writes it in one go; otherwise the in-memory
/// pieces between file ranges go to the engine as they come, and each file
/// range is streamed ([`stream_file`]).
async fn write_output<C: ConnectionIo>(
    connection: &mut C,
    output: &mut Output,
    mut timer: Pin<&mut Sleep>,
    timeouts: &Timeouts,
) -> Result<(), WriteFailed> {
    if !output.has_file_ranges() {
        return connection.write_output(output, timer, timeouts).await;
    }
    let mut segment = Output::new();
    for piece in output.take_pieces() {
        match piece {
            Piece::Bytes(bytes) => segment.push_body(&bytes),
            Piece::File(range) => {
                if !segment.is_empty() {
                    connection
                        .write_output(&mut segment, timer.as_mut(), timeouts)
                        .await?;
                    segment.clear();
                }
                stream_file(connection, &range, timer.as_mut(), timeouts).await?;
            }
        }
    }
    if !segment.is_empty() {
        connection.write_output(&mut segment, timer, timeouts).await?;
    }
    Ok(())
}

/// Sends what the protocol has still to send after its plain output (for
/// TLS: sealed records, and file chunks read here, sealed, then sent), until
/// it is done. Nothing for plain HTTP.
async fn write_sealed<C: ConnectionIo>(
    connection: &mut C,
    protocol: &mut Protocol,
    output: &mut Output,
    mut timer: Pin<&mut Sleep>,
    timeouts: &Timeouts,
) -> Result<(), WriteFailed> {
    let mut buffer = BytesMut::new();
    // The file being streamed, opened once for all its chunks (holding the
    // `Arc` keeps the comparison by address meaningful).
    let mut open: Option<(Arc<File>, C::FileReader)> = None;
    loop {
        match protocol.pull_output(output) {
            Pull::Done => {
                // Sealed file chunks grow the buffer to a chunk's size; an
                // idle connection must not keep that.
                if output.staged_capacity() > MAX_IDLE_OUTPUT_BYTES {
                    *output = Output::with_capacity(READ_BUFFER_BYTES);
                }
                return Ok(());
            }
            Pull::Send => {}
            Pull::ReadFile(chunk) => {
                if !open
                    .as_ref()
                    .is_some_and(|(file, _)| Arc::ptr_eq(file, &chunk.file))
                {
                    let reader = connection.open_file(&chunk.file).map_err(|_| WriteFailed::File)?;
                    open = Some((Arc::clone(&chunk.file), reader));
                }
                let Some((_, reader)) = &open else {
                    return Err(WriteFailed::File);
                };
                buffer.clear();
                buffer.reserve(chunk.len);
                let (read, filled) = connection
                    .read_file_at(reader, chunk.offset, chunk.len, buffer)
                    .await;
                let read = read.unwrap_or(0);
                if !protocol.seal_file_chunk(&filled[..read.min(filled.len())], output) {
                    return Err(WriteFailed::File);
                }
                buffer = filled;
            }
        }
        connection.write_output(output, timer.as_mut(), timeouts).await?;
        output.clear();
    }
}

/// Sends `range` from disk: read a chunk, send it (each write with its send
/// deadline, as for any output), read the next; one buffer of at most
/// [`FILE_CHUNK_BYTES`] for the whole range, reused from chunk to chunk.
async fn stream_file<C: ConnectionIo>(
    connection: &mut C,
    range: &FileRange,
    mut timer: Pin<&mut Sleep>,
    timeouts: &Timeouts,
) -> Result<(), WriteFailed> {
    let reader = connection.open_file(&range.file).map_err(|_| WriteFailed::File)?;
    let capacity = usize::try_from(range.len).map_or(FILE_CHUNK_BYTES, |len| len.min(FILE_CHUNK_BYTES));
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut chunk_output = Output::new();
    let end = range.offset + range.len;
    let mut offset = range.offset;
    while offset < end {
        let want = usize::try_from(end - offset).map_or(capacity, |left| left.min(capacity));
        buffer.clear();
        let (read, filled) = connection.read_file_at(&reader, offset, want, buffer).await;
        match read {
            Ok(n) if n > 0 => offset += n as u64,
            _ => return Err(WriteFailed::File),
        }
        let chunk = filled.freeze();
        chunk_output.push_body(&chunk);
        connection
            .write_output(&mut chunk_output, timer.as_mut(), timeouts)
            .await?;
        chunk_output.clear();
        // The engine has let go of its reference: reuse the allocation.
        buffer = chunk
            .try_into_mut()
            .unwrap_or_else(|_| BytesMut::with_capacity(capacity));
    }
    Ok(())
}

/// Half-closes, then discards what the client still sends, within bounds.
async fn linger<C: ConnectionIo>(connection: &mut C, mut buffer: Vec<u8>, timeouts: &Timeouts) -> Ending {
    if connection.shutdown_write().await.is_err() {
        return Ending::Clean;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            if buffer.capacity() == 0 {
                buffer.reserve(READ_BUFFER_BYTES);
            }
            match connection.read_more(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    match tokio::time::timeout(timeouts.linger, discard).await {
        Ok(()) => Ending::Clean,
        Err(_) => Ending::Abandoned,
    }
}
