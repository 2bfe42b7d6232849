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
//! The connection loop: load the current snapshot, hand received bytes to
//! [`Session::on_input`], drop what it consumed, write its output
//! ([`write_output`]: in-memory pieces as they are, file ranges streamed from
//! disk in chunks of [`FILE_CHUNK_BYTES`]), and read, write again, close or
//! linger as its [`Next`] says.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::engine::connections::Connections;
use crate::engine::{
    ACCEPT_BACKOFF_MS, FILE_CHUNK_BYTES, LINGER_MAX_BYTES, LINGER_MS, READ_BUFFER_BYTES, Ready, Worker,
    accept_error_is_transient,
};
use crate::files::SnapshotHandle;
use crate::http::response::{FileRange, Piece};
use crate::http::{Limits, Next, Output, Session};

/// What the connection tasks of one worker share (by `Rc`: never across threads).
struct WorkerContext {
    snapshot: SnapshotHandle,
    limits: Limits,
    connections: Connections,
}

/// A listening socket of one engine.
pub(crate) trait Acceptor {
    type Connection: ConnectionIo + 'static;

    async fn accept(&self) -> io::Result<Self::Connection>;
}

/// One accepted socket of one engine, and how that engine reads files.
pub(crate) trait ConnectionIo {
    /// A file opened for this engine's reads (see [`Self::open_file`]).
    type FileReader;

    fn raw_fd(&self) -> RawFd;

    /// Reads into the spare capacity of `input` (which has some), appending.
    /// `Ok(0)` is end-of-file.
    async fn read_more(&mut self, input: &mut Vec<u8>) -> io::Result<usize>;

    /// Writes all of `buffer`, giving it back for reuse.
    async fn write_all_owned(&mut self, buffer: BytesMut) -> (io::Result<()>, BytesMut);

    /// Writes all of `pieces`, in order, in as few vectored writes as it can.
    async fn write_all_pieces(&mut self, pieces: Vec<Bytes>) -> io::Result<()>;

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
        // One load per batch: every request of the batch sees one snapshot.
        let progress = session.on_input(&input, &context.snapshot.load(), &context.limits, &mut output);
        input.drain(..progress.consumed);
        if !output.is_empty() && write_output(&mut connection, &mut output).await.is_err() {
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

/// Writes all of `output` and leaves it empty: the staged bytes in one write
/// when nothing is shared (the common case), otherwise the in-memory pieces
/// in vectored writes and each file range streamed in between.
async fn write_output<C: ConnectionIo>(connection: &mut C, output: &mut Output) -> io::Result<()> {
    if output.as_contiguous().is_some() {
        let staged = output.take_staged();
        let (result, staged) = connection.write_all_owned(staged).await;
        output.restore_staged(staged);
        return result;
    }
    let mut batch: Vec<Bytes> = Vec::new();
    for piece in output.take_pieces() {
        match piece {
            Piece::Bytes(bytes) => batch.push(bytes),
            Piece::File(range) => {
                if !batch.is_empty() {
                    connection.write_all_pieces(std::mem::take(&mut batch)).await?;
                }
                stream_file(connection, &range).await?;
            }
        }
    }
    if !batch.is_empty() {
        connection.write_all_pieces(batch).await?;
    }
    Ok(())
}

/// Sends `range` from disk: read a chunk, send it, read the next, with one
/// buffer of at most [`FILE_CHUNK_BYTES`] for the whole range.
async fn stream_file<C: ConnectionIo>(connection: &mut C, range: &FileRange) -> io::Result<()> {
    let reader = connection.open_file(&range.file)?;
    let capacity = usize::try_from(range.len).map_or(FILE_CHUNK_BYTES, |len| len.min(FILE_CHUNK_BYTES));
    let mut buffer = BytesMut::with_capacity(capacity);
    let end = range.offset + range.len;
    let mut offset = range.offset;
    while offset < end {
        let want = usize::try_from(end - offset).map_or(capacity, |left| left.min(capacity));
        buffer.clear();
        let (read, filled) = connection.read_file_at(&reader, offset, want, buffer).await;
        if read? == 0 {
            // Truncated on disk since the snapshot was built: the response
            // can no longer be completed, so the connection must end.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += filled.len() as u64;
        let (written, returned) = connection.write_all_owned(filled).await;
        written?;
        buffer = returned;
    }
    Ok(())
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
