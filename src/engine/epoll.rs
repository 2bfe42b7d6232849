//! The `epoll` engine: a tokio current-thread runtime per worker.
//!
//! The readiness-based twin of [`super::tokio_uring`]: same listeners, same
//! worker count and pinning, same buffer sizes, same core. Only the I/O
//! differs: sockets are registered with epoll and read and written with
//! `recv`/`send` (`writev` for large bodies) when ready.

use std::io::{self, IoSlice};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

use crate::engine::connections::Connections;
use crate::engine::{
    ACCEPT_BACKOFF_MS, LINGER_MAX_BYTES, LINGER_MS, READ_BUFFER_BYTES, Ready, Worker, WorkerContext,
    accept_error_is_transient,
};
use crate::http::{Next, Output, Session};

pub fn run_worker(worker: Worker, ready: Ready) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return ready.report(Err(e)),
    };
    let local = LocalSet::new();
    let listener = match runtime.block_on(async { TcpListener::from_std(worker.listener) }) {
        Ok(listener) => listener,
        Err(e) => return ready.report(Err(e)),
    };
    ready.report(Ok(()));
    let context = Rc::new(WorkerContext {
        snapshot: worker.snapshot,
        limits: worker.limits,
        connections: Connections::default(),
    });
    local.block_on(&runtime, async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = worker.shutdown.wait() => break,
            };
            match accepted {
                Ok((stream, _peer)) => {
                    tokio::task::spawn_local(serve_connection(stream, Rc::clone(&context)));
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
        drop(listener);
        context.connections.drain(worker.shutdown_grace).await;
    });
}

async fn serve_connection(mut stream: TcpStream, context: Rc<WorkerContext>) {
    use std::os::fd::AsRawFd;
    let _registration = context.connections.register(stream.as_raw_fd());
    let mut session = Session::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Output::with_capacity(READ_BUFFER_BYTES);
    loop {
        let progress = session.on_input(&input, &context.snapshot, &context.limits, &mut output);
        input.drain(..progress.consumed);
        if !output.is_empty() {
            let written = write_output(&mut stream, &output).await;
            output.clear();
            if written.is_err() {
                return;
            }
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            Next::Close => return,
            Next::Linger => return linger(&mut stream, input).await,
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_output(stream: &mut TcpStream, output: &Output) -> io::Result<()> {
    if let Some(bytes) = output.as_contiguous() {
        return stream.write_all(bytes).await;
    }
    let mut slices: Vec<IoSlice<'_>> = output.chunks().map(IoSlice::new).collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let written = stream.write_vectored(remaining).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, written);
    }
    Ok(())
}

/// Half-closes, then discards what the client still sends, within bounds.
async fn linger(stream: &mut TcpStream, mut buffer: Vec<u8>) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            match stream.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), discard).await;
}
