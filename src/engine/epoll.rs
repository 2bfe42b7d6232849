//! The `epoll` engine: a tokio current-thread runtime per worker.
//!
//! The readiness-based twin of [`super::tokio_uring`]: same listeners, same
//! worker count and pinning, same buffer sizes, same core, same timeout rules
//! ([`crate::http::deadline`], waited for by [`super::timer`]). Only the I/O
//! differs: sockets are registered with epoll and read and written with
//! `recv`/`send` (`writev` for large bodies) when ready.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;
use tokio::time::Sleep;

use crate::access_log::{ConnectionLog, FLUSH_INTERVAL};
use crate::engine::connections::Registration;
use crate::engine::timer::{before, connection_timer};
use crate::engine::{
    AcceptBackoff, LINGER_MAX_BYTES, READ_BUFFER_BYTES, Ready, Worker, WorkerContext, set_reset_on_close,
};
use crate::http::{DeadlineClock, Expiry, Next, Observer, Output, Session};

pub fn run_worker(mut worker: Worker, ready: Ready) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return ready.report(Err(e)),
    };
    let local = LocalSet::new();
    let context = Rc::new(WorkerContext::new(&mut worker));
    let listener = match runtime.block_on(async { TcpListener::from_std(worker.listener) }) {
        Ok(listener) => listener,
        Err(e) => return ready.report(Err(e)),
    };
    ready.report(Ok(()));
    local.block_on(&runtime, async move {
        if context.access_log.is_some() {
            tokio::task::spawn_local(flush_log_every_second(Rc::clone(&context)));
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
                    tokio::task::spawn_local(serve_connection(
                        stream,
                        registration,
                        peer,
                        Rc::clone(&context),
                    ));
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
    });
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

/// Serves one connection; `registration` (its entry in the worker's table)
/// is dropped before the stream closes its descriptor.
async fn serve_connection(
    stream: TcpStream,
    registration: Registration,
    peer: SocketAddr,
    context: Rc<WorkerContext>,
) {
    let mut stream = stream;
    match &context.access_log {
        None => run_connection(&mut stream, &context, &mut ()).await,
        Some(log) => {
            let mut observer = ConnectionLog { log, peer: peer.ip() };
            run_connection(&mut stream, &context, &mut observer).await;
        }
    }
    drop(registration);
    drop(stream);
}

async fn run_connection<O: Observer>(stream: &mut TcpStream, context: &WorkerContext, observer: &mut O) {
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
            let written = write_output(stream, &output, timer.as_mut(), context).await;
            output.clear();
            if let Err(ending) = written {
                return ending.apply(stream);
            }
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            Next::Close => return,
            Next::Linger => return linger(stream, input, context).await,
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        let deadline = clock.for_read(&session, input.len(), Instant::now(), timeouts);
        match before(timer.as_mut(), deadline.at, stream.read_buf(&mut input)).await {
            Some(Ok(0) | Err(_)) => return,
            Some(Ok(_)) => {}
            None if deadline.expiry == Expiry::RequestTimeout => {
                session.on_head_timeout(&input, &mut output, observer);
                if write_output(stream, &output, timer.as_mut(), context)
                    .await
                    .is_ok()
                {
                    linger(stream, Vec::new(), context).await;
                }
                return;
            }
            None => return,
        }
    }
}

/// Why a write ended the connection.
enum WriteFailed {
    /// The peer is gone (reset, broken pipe): just close.
    Peer,
    /// The send deadline passed without progress: close with a reset.
    Stalled,
}

impl WriteFailed {
    fn apply(self, stream: &TcpStream) {
        if let WriteFailed::Stalled = self {
            set_reset_on_close(stream.as_raw_fd());
        }
    }
}

/// Writes everything in `output`; each write call must make progress within
/// the send timeout (so a slow reader that keeps reading is never cut off).
async fn write_output(
    stream: &mut TcpStream,
    output: &Output,
    mut timer: Pin<&mut Sleep>,
    context: &WorkerContext,
) -> Result<(), WriteFailed> {
    if let Some(mut bytes) = output.as_contiguous() {
        while !bytes.is_empty() {
            let deadline = DeadlineClock::for_write(Instant::now(), &context.timeouts);
            match before(timer.as_mut(), deadline.at, stream.write(bytes)).await {
                None => return Err(WriteFailed::Stalled),
                Some(Ok(0) | Err(_)) => return Err(WriteFailed::Peer),
                Some(Ok(n)) => bytes = &bytes[n..],
            }
        }
        return Ok(());
    }
    let mut slices: Vec<IoSlice<'_>> = output.chunks().map(IoSlice::new).collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let deadline = DeadlineClock::for_write(Instant::now(), &context.timeouts);
        match before(timer.as_mut(), deadline.at, stream.write_vectored(remaining)).await {
            None => return Err(WriteFailed::Stalled),
            Some(Ok(0) | Err(_)) => return Err(WriteFailed::Peer),
            Some(Ok(n)) => IoSlice::advance_slices(&mut remaining, n),
        }
    }
    Ok(())
}

/// Half-closes, then discards what the client still sends, within bounds.
async fn linger(stream: &mut TcpStream, mut buffer: Vec<u8>, context: &WorkerContext) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            if buffer.capacity() == 0 {
                buffer.reserve(READ_BUFFER_BYTES);
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(context.timeouts.linger, discard).await;
}
