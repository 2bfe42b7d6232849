//! The `tokio-uring` engine: the stock `tokio-uring` 0.5 runtime, one
//! io_uring per worker.
//!
//! Accept, read and write are submitted to the worker's ring and resumed on
//! completion. Buffers are owned by the operation while it is in flight
//! (tokio-uring's model), so each read hands the connection's receive `Vec`
//! to the kernel and gets it back, and each write hands over the staged
//! response bytes (or refcounted pieces of the snapshot for large bodies, in
//! one `writev`).
//!
//! Timeouts follow the core's rules ([`crate::http::deadline`]), waited for
//! with a tokio timer per connection ([`super::timer`]). tokio-uring cannot
//! cancel an operation: a read or write dropped at its deadline stays in the
//! ring, holding a reference to the socket, so closing the descriptor would
//! neither send a FIN nor free the socket. Every connection that abandoned
//! an operation therefore ends with `shutdown(SHUT_RDWR)`, which completes
//! whatever is pending, before its descriptor is closed ([`Ending`]).
//!
//! This is the baseline for comparisons: tokio-uring parks in epoll with the
//! ring's descriptor registered there and enters the ring on every park, and
//! has no multishot operations or provided buffers (see the README).

use std::net::{Shutdown as Direction, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use bytes::Buf;
use tokio::time::Sleep;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::access_log::{ConnectionLog, FLUSH_INTERVAL};
use crate::engine::connections::Registration;
use crate::engine::timer::{before, connection_timer};
use crate::engine::{
    AcceptBackoff, LINGER_MAX_BYTES, READ_BUFFER_BYTES, Ready, Worker, WorkerContext, set_reset_on_close,
};
use crate::http::{DeadlineClock, Expiry, Next, Observer, Output, Session};

/// Ring size: submissions in flight per worker before the runtime must enter
/// the kernel. tokio-uring sizes the completion queue at twice this.
const RING_ENTRIES: u32 = 4096;

pub fn run_worker(worker: Worker, ready: Ready) {
    let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)) {
        Ok(runtime) => runtime,
        Err(e) => return ready.report(Err(e)),
    };
    ready.report(Ok(()));
    runtime.block_on(serve(worker));
}

async fn serve(mut worker: Worker) {
    let context = Rc::new(WorkerContext::new(&mut worker));
    let listener = TcpListener::from_std(worker.listener);
    if context.access_log.is_some() {
        tokio_uring::spawn(flush_log_every_second(Rc::clone(&context)));
    }
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = async {
                context.connections.wait_for_room().await;
                listener.accept().await
            } => accepted,
            () = worker.shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.on_success(worker.index);
                // Registered here, not in the task: the cap must count it
                // before the next accept.
                let registration = context.connections.register(stream.as_raw_fd());
                tokio_uring::spawn(serve_connection(stream, registration, peer, Rc::clone(&context)));
            }
            Err(e) => {
                if let Some(pause) = backoff.on_error(worker.index, &e) {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    drop(listener);
    context.connections.drain(worker.shutdown_grace).await;
    if let Some(log) = &context.access_log {
        log.borrow_mut().flush();
    }
}

async fn flush_log_every_second(context: Rc<WorkerContext>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(log) = &context.access_log {
            log.borrow_mut().flush_if_due();
        }
    }
}

/// How a connection ended, which decides how its socket is closed (in order
/// of how much cleaning up it needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// No operation is in flight: closing the descriptor is enough.
    Clean,
    /// An operation was dropped at a deadline and is still in the ring.
    Abandoned,
    /// A write made no progress: reset, and complete the abandoned write.
    Stalled,
}

/// Serves one connection; `registration` (its entry in the worker's table)
/// is dropped before the stream closes its descriptor.
async fn serve_connection(
    stream: TcpStream,
    registration: Registration,
    peer: SocketAddr,
    context: Rc<WorkerContext>,
) {
    let ending = match &context.access_log {
        None => run_connection(&stream, &context, &mut ()).await,
        Some(log) => {
            let mut observer = ConnectionLog { log, peer: peer.ip() };
            run_connection(&stream, &context, &mut observer).await
        }
    };
    if ending == Ending::Stalled {
        set_reset_on_close(stream.as_raw_fd());
    }
    if ending != Ending::Clean {
        let _ = stream.shutdown(Direction::Both);
    }
    drop(registration);
    drop(stream);
}

async fn run_connection<O: Observer>(
    stream: &TcpStream,
    context: &WorkerContext,
    observer: &mut O,
) -> Ending {
    let timeouts = &context.timeouts;
    let mut clock = DeadlineClock::new(Instant::now());
    let timer = connection_timer(Instant::now() + timeouts.head);
    tokio::pin!(timer);
    let mut session = Session::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Output::with_capacity(READ_BUFFER_BYTES);
    loop {
        let progress =
            session.on_input_observed(&input, &context.snapshot, &context.limits, &mut output, observer);
        input.drain(..progress.consumed);
        if !output.is_empty() {
            match write_output(stream, &mut output, timer.as_mut(), context).await {
                Ok(()) => {}
                Err(WriteFailed::Peer) => return Ending::Clean,
                Err(WriteFailed::Stalled) => return Ending::Stalled,
            }
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            Next::Close => return Ending::Clean,
            Next::Linger => return linger(stream, input, context).await,
        }
        let deadline = clock.for_read(&session, input.len(), Instant::now(), timeouts);
        if deadline.expiry == Expiry::RequestTimeout {
            // A head is partly here (rare: most heads arrive in one read).
            // Read into a second buffer so the partial head stays ours even if
            // the read is abandoned, for the 408 and its log line.
            let spare = Vec::with_capacity(READ_BUFFER_BYTES);
            match before(timer.as_mut(), deadline.at, stream.read(spare)).await {
                Some((Ok(0) | Err(_), _)) => return Ending::Clean,
                Some((Ok(_), spare)) => input.extend_from_slice(&spare),
                None => {
                    session.on_head_timeout(&input, &mut output, observer);
                    return match write_output(stream, &mut output, timer.as_mut(), context).await {
                        Ok(()) => linger(stream, Vec::new(), context).await.max(Ending::Abandoned),
                        Err(WriteFailed::Peer) => Ending::Abandoned,
                        Err(WriteFailed::Stalled) => Ending::Stalled,
                    };
                }
            }
            continue;
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        let filled = input.len();
        match before(timer.as_mut(), deadline.at, stream.read(input.slice(filled..))).await {
            Some((result, slice)) => {
                input = slice.into_inner();
                match result {
                    Ok(0) | Err(_) => return Ending::Clean,
                    Ok(_) => {}
                }
            }
            None => return Ending::Abandoned,
        }
    }
}

/// Why a write ended the connection.
enum WriteFailed {
    /// The peer is gone (reset, broken pipe); nothing is left in flight.
    Peer,
    /// The send deadline passed without progress; the write is abandoned.
    Stalled,
}

/// Writes everything in `output`, one operation at a time; each must make
/// progress within the send timeout, so a slow reader that keeps reading is
/// never cut off.
async fn write_output(
    stream: &TcpStream,
    output: &mut Output,
    mut timer: Pin<&mut Sleep>,
    context: &WorkerContext,
) -> Result<(), WriteFailed> {
    if output.as_contiguous().is_some() {
        let mut staged = output.take_staged();
        let mut written = 0;
        while written < staged.len() {
            let deadline = DeadlineClock::for_write(Instant::now(), &context.timeouts);
            let (result, slice) = before(
                timer.as_mut(),
                deadline.at,
                stream.write(staged.slice(written..)).submit(),
            )
            .await
            .ok_or(WriteFailed::Stalled)?;
            staged = slice.into_inner();
            match result {
                Ok(0) | Err(_) => return Err(WriteFailed::Peer),
                Ok(n) => written += n,
            }
        }
        output.restore_staged(staged);
        return Ok(());
    }
    let mut pieces = output.take_pieces();
    while !pieces.is_empty() {
        let deadline = DeadlineClock::for_write(Instant::now(), &context.timeouts);
        let (result, returned) = before(timer.as_mut(), deadline.at, stream.writev(pieces))
            .await
            .ok_or(WriteFailed::Stalled)?;
        pieces = returned;
        let mut written = match result {
            Ok(0) | Err(_) => return Err(WriteFailed::Peer),
            Ok(n) => n,
        };
        while written > 0 {
            let first = pieces[0].len();
            if written >= first {
                pieces.remove(0);
                written -= first;
            } else {
                pieces[0].advance(written);
                written = 0;
            }
        }
    }
    Ok(())
}

/// Half-closes, then discards what the client still sends, within bounds.
async fn linger(stream: &TcpStream, mut buffer: Vec<u8>, context: &WorkerContext) -> Ending {
    if stream.shutdown(Direction::Write).is_err() {
        return Ending::Clean;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            if buffer.capacity() == 0 {
                buffer.reserve(READ_BUFFER_BYTES);
            }
            let (result, returned) = stream.read(buffer).await;
            buffer = returned;
            match result {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    match tokio::time::timeout(context.timeouts.linger, discard).await {
        Ok(()) => Ending::Clean,
        Err(_) => Ending::Abandoned,
    }
}
