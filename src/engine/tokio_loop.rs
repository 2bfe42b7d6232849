//! The worker and connection loops shared by the tokio-based engines.
//!
//! `tokio-uring` and `epoll` run the same loops; they differ only in the two
//! traits below, which say how a socket is accepted, read, written and
//! half-closed. Keeping the loops here, once, is what makes comparing the two
//! engines compare I/O models and nothing else.
//!
//! The worker loop: accept until the stop signal, spawn one local task per
//! connection, then drain ([`Connections::drain`]).
//!
//! The connection loop: hand received bytes to [`Session::on_input`], drop
//! what it consumed, write its output, and read, write again, close or linger
//! as its [`Next`] says.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::connections::Connections;
use crate::engine::{
    ACCEPT_BACKOFF_MS, LINGER_MAX_BYTES, LINGER_MS, READ_BUFFER_BYTES, Ready, Worker,
    accept_error_is_transient,
};
use crate::files::Snapshot;
use crate::http::{Limits, Next, Output, Session};

/// What the connection tasks of one worker share (by `Rc`: never across threads).
struct WorkerContext {
    snapshot: Arc<Snapshot>,
    limits: Limits,
    connections: Connections,
}

/// A listening socket of one engine.
pub(crate) trait Acceptor {
    type Connection: ConnectionIo + 'static;

    async fn accept(&self) -> io::Result<Self::Connection>;
}

/// One accepted socket of one engine.
pub(crate) trait ConnectionIo {
    fn raw_fd(&self) -> RawFd;

    /// Reads into the spare capacity of `input` (which has some), appending.
    /// `Ok(0)` is end-of-file.
    async fn read_more(&mut self, input: &mut Vec<u8>) -> io::Result<usize>;

    /// Writes all of `output` and leaves it empty.
    async fn write_output(&mut self, output: &mut Output) -> io::Result<()>;

    /// Shuts down the sending side (the peer sees end-of-file).
    async fn shutdown_write(&mut self) -> io::Result<()>;
}

/// Takes over the worker's listener with `adopt` (inside the runtime, which
/// some engines need to register it), reports readiness, accepts and serves
/// until the stop signal, then drains.
pub(crate) async fn run_worker_loop<A: Acceptor>(
    worker: Worker,
    ready: Ready,
    adopt: impl FnOnce(std::net::TcpListener) -> io::Result<A>,
) {
    let acceptor = match adopt(worker.listener) {
        Ok(acceptor) => acceptor,
        Err(e) => return ready.report(Err(e)),
    };
    ready.report(Ok(()));
    let context = Rc::new(WorkerContext {
        snapshot: worker.snapshot,
        limits: worker.limits,
        connections: Connections::default(),
    });
    loop {
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = worker.shutdown.wait() => break,
        };
        match accepted {
            Ok(connection) => {
                tokio::task::spawn_local(serve_connection(connection, Rc::clone(&context)));
            }
            Err(e) if accept_error_is_transient(&e) => {}
            Err(e) => {
                eprintln!(
                    "ringserve: worker {}: accept failed: {e}; backing off",
                    worker.index
                );
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
            }
        }
    }
    drop(acceptor);
    context.connections.drain(worker.shutdown_grace).await;
}

async fn serve_connection<C: ConnectionIo>(mut connection: C, context: Rc<WorkerContext>) {
    // Declared after `connection`, so it deregisters before the socket closes.
    let _registration = context.connections.register(connection.raw_fd());
    let mut session = Session::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Output::with_capacity(READ_BUFFER_BYTES);
    loop {
        let progress = session.on_input(&input, &context.snapshot, &context.limits, &mut output);
        input.drain(..progress.consumed);
        if !output.is_empty() && connection.write_output(&mut output).await.is_err() {
            return;
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            Next::Close => return,
            Next::Linger => return linger(&mut connection, input).await,
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        match connection.read_more(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Half-closes, then discards what the client still sends, within bounds.
async fn linger<C: ConnectionIo>(connection: &mut C, mut buffer: Vec<u8>) {
    if connection.shutdown_write().await.is_err() {
        return;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            match connection.read_more(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), discard).await;
}
