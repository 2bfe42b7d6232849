//! The `epoll` engine: a tokio current-thread runtime per worker.
//!
//! The readiness-based twin of [`super::tokio_uring`]: same listeners, same
//! worker count and pinning, same buffer sizes, same core, and the same
//! loops ([`super::tokio_loop`]). Only the I/O differs: sockets are
//! registered with epoll and read and written with `recv`/`send` (`writev`
//! for large bodies) when ready; files too large for memory are read with
//! positioned reads on the runtime's blocking pool, one chunk at a time.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

use crate::engine::tokio_loop::{self, Acceptor, ConnectionIo};
use crate::engine::{Ready, Worker};

pub fn run_worker(worker: Worker, ready: Ready) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return ready.report(Err(e)),
    };
    // Connection tasks share worker-local `Rc` state, so they run on a LocalSet.
    let local = LocalSet::new();
    local.block_on(
        &runtime,
        tokio_loop::run_worker_loop(worker, ready, |listener| {
            TcpListener::from_std(listener).map(EpollAcceptor)
        }),
    );
}

struct EpollAcceptor(TcpListener);

impl Acceptor for EpollAcceptor {
    type Connection = EpollConnection;

    async fn accept(&self) -> io::Result<EpollConnection> {
        let (stream, _peer) = self.0.accept().await?;
        Ok(EpollConnection(stream))
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

    async fn write_all_owned(&mut self, buffer: BytesMut) -> (io::Result<()>, BytesMut) {
        let result = self.0.write_all(&buffer).await;
        (result, buffer)
    }

    async fn write_all_pieces(&mut self, pieces: Vec<Bytes>) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            let written = self.0.write_vectored(remaining).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut remaining, written);
        }
        Ok(())
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

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}
