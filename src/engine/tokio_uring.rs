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
//! This is the baseline for comparisons: tokio-uring parks in epoll with the
//! ring's descriptor registered there and enters the ring on every park, and
//! has no multishot operations or provided buffers (see the README).

use std::io;
use std::net::Shutdown as Direction;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::Buf;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::engine::connections::Connections;
use crate::engine::{
    ACCEPT_BACKOFF_MS, LINGER_MAX_BYTES, LINGER_MS, READ_BUFFER_BYTES, Ready, Worker, WorkerContext,
    accept_error_is_transient,
};
use crate::http::{Next, Output, Session};

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

async fn serve(worker: Worker) {
    let listener = TcpListener::from_std(worker.listener);
    let context = Rc::new(WorkerContext {
        snapshot: worker.snapshot,
        limits: worker.limits,
        connections: Connections::default(),
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = worker.shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio_uring::spawn(serve_connection(stream, Rc::clone(&context)));
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
}

async fn serve_connection(stream: TcpStream, context: Rc<WorkerContext>) {
    let _registration = context.connections.register(stream.as_raw_fd());
    let mut session = Session::new();
    let mut input: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut output = Output::with_capacity(READ_BUFFER_BYTES);
    loop {
        let progress = session.on_input(&input, &context.snapshot, &context.limits, &mut output);
        input.drain(..progress.consumed);
        if !output.is_empty() && write_output(&stream, &mut output).await.is_err() {
            return;
        }
        match progress.next {
            Next::Read => {}
            Next::Write => continue,
            Next::Close => return,
            Next::Linger => return linger(&stream, input).await,
        }
        if input.len() == input.capacity() {
            input.reserve(READ_BUFFER_BYTES);
        }
        let filled = input.len();
        let (result, slice) = stream.read(input.slice(filled..)).await;
        input = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn write_output(stream: &TcpStream, output: &mut Output) -> io::Result<()> {
    if output.as_contiguous().is_some() {
        let (result, staged) = stream.write_all(output.take_staged()).await;
        output.restore_staged(staged);
        return result;
    }
    let mut pieces = output.take_pieces();
    while !pieces.is_empty() {
        let (result, returned) = stream.writev(pieces).await;
        pieces = returned;
        let mut written = result?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
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
async fn linger(stream: &TcpStream, mut buffer: Vec<u8>) {
    if stream.shutdown(Direction::Write).is_err() {
        return;
    }
    let discard = async {
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            buffer.clear();
            let (result, returned) = stream.read(buffer).await;
            buffer = returned;
            match result {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), discard).await;
}
