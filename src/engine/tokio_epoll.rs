//! The `tokio` engine: a tokio current-thread runtime per worker, on epoll.
//!
//! The readiness-based twin of [`super::tokio_uring`]: same listeners, same
//! worker count and pinning, same buffer sizes, same core, and the same
//! loops ([`super::tokio_loop`]). Only the I/O differs: sockets are
//! registered with epoll and read and written with `recv`/`send` (`writev`
//! for large bodies) when ready; files too large for memory are read with
//! positioned reads on the runtime's blocking pool, one chunk at a time.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;
use tokio::time::Sleep;

use crate::engine::timer::before;
use crate::engine::tokio_loop::{self, Acceptor, ConnectionIo, WriteFailed};
use crate::engine::{Ready, Worker};
use crate::http::response::PieceRef;
use crate::http::{DeadlineClock, Output, Timeouts};

pub fn run_worker(worker: Worker, ready: Ready) -> io::Result<()> {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            ready.report(Err(e));
            return Ok(());
        }
    };
    // Connection tasks share worker-local `Rc` state, so they run on a LocalSet.
    let local = LocalSet::new();
    local.block_on(
        &runtime,
        tokio_loop::run_worker_loop(worker, ready, |listener| {
            TcpListener::from_std(listener).map(EpollAcceptor)
        }),
    );
    Ok(())
}

struct EpollAcceptor(TcpListener);

impl Acceptor for EpollAcceptor {
    type Connection = EpollConnection;

    async fn accept(&self) -> io::Result<(EpollConnection, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((EpollConnection(stream), peer))
    }
}

struct EpollConnection(TcpStream);

impl ConnectionIo for EpollConnection {
    type FileReader = Arc<File>;

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    async fn read_more(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
        self.0.read_buf(input).await
    }

    async fn write_output(
        &mut self,
        output: &mut Output,
        timer: Pin<&mut Sleep>,
        timeouts: &Timeouts,
    ) -> Result<(), WriteFailed> {
        let result = write_all_chunks(&mut self.0, output, timer, timeouts).await;
        output.clear();
        result
    }

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }

    fn open_file(&self, file: &Arc<File>) -> io::Result<Arc<File>> {
        Ok(Arc::clone(file))
    }

    /// A positioned read (`pread`) on the runtime's blocking pool. Readiness
    /// does not apply to regular files (epoll reports them always ready, and
    /// a read that misses the page cache blocks), so reading on the worker
    /// thread would stall every connection of the worker behind the disk;
    /// this is what `tokio::fs` does too. The hop costs a few microseconds
    /// per chunk, small next to copying 128 KiB.
    async fn read_file_at(
        &mut self,
        file: &Arc<File>,
        offset: u64,
        len: usize,
        mut buffer: BytesMut,
    ) -> (io::Result<usize>, BytesMut) {
        let file = Arc::clone(file);
        let read = tokio::task::spawn_blocking(move || {
            buffer.resize(len, 0);
            let result = file.read_at(&mut buffer, offset);
            buffer.truncate(*result.as_ref().unwrap_or(&0));
            (result, buffer)
        })
        .await;
        read.unwrap_or_else(|e| (Err(io::Error::other(e)), BytesMut::new()))
    }
}

/// Writes `output` with as few calls as the socket allows; each call must
/// make progress before its send deadline.
async fn write_all_chunks(
    stream: &mut TcpStream,
    output: &Output,
    mut timer: Pin<&mut Sleep>,
    timeouts: &Timeouts,
) -> Result<(), WriteFailed> {
    if let Some(mut bytes) = output.as_contiguous() {
        while !bytes.is_empty() {
            let deadline = DeadlineClock::for_write(Instant::now(), timeouts);
            match before(timer.as_mut(), deadline.at, stream.write(bytes)).await {
                None => return Err(WriteFailed::Stalled),
                Some(Ok(0) | Err(_)) => return Err(WriteFailed::Peer),
                Some(Ok(n)) => bytes = &bytes[n..],
            }
        }
        return Ok(());
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::new();
    for piece in output.pieces() {
        match piece {
            PieceRef::Bytes(bytes) => slices.push(IoSlice::new(bytes)),
            // The shared loop streams file ranges itself
            // (`tokio_loop::write_output`) and never passes one here.
            PieceRef::File(_) => return Err(WriteFailed::File),
        }
    }
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let deadline = DeadlineClock::for_write(Instant::now(), timeouts);
        match before(timer.as_mut(), deadline.at, stream.write_vectored(remaining)).await {
            None => return Err(WriteFailed::Stalled),
            Some(Ok(0) | Err(_)) => return Err(WriteFailed::Peer),
            Some(Ok(n)) => IoSlice::advance_slices(&mut remaining, n),
        }
    }
    Ok(())
}
