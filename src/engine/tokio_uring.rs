//! The `tokio-uring` engine: the stock `tokio-uring` 0.5 runtime, one
//! io_uring per worker.
//!
//! Accept, read and write are submitted to the worker's ring and resumed on
//! completion. Buffers are owned by the operation while it is in flight
//! (tokio-uring's model), so each read hands the connection's receive `Vec`
//! to the kernel and gets it back, and each write hands over the staged
//! response bytes (or refcounted pieces of the snapshot for large bodies, in
//! one `writev`). Files too large for memory are read with io_uring reads at
//! an offset into one chunk buffer per connection. The loops themselves are
//! [`super::tokio_loop`]'s, shared with the tokio engine.
//!
//! This is the baseline for comparisons: tokio-uring parks in epoll with the
//! ring's descriptor registered there and enters the ring on every park, and
//! has no multishot operations or provided buffers (see the README).

use std::fs::File;
use std::io;
use std::net::{Shutdown as Direction, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::time::Sleep;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::engine::timer::before;
use crate::engine::tokio_loop::{self, Acceptor, ConnectionIo, WriteFailed};
use crate::engine::{Ready, Worker};
use crate::http::response::Piece;
use crate::http::{DeadlineClock, Output, Timeouts};

/// Ring size: submissions in flight per worker before the runtime must enter
/// the kernel. tokio-uring sizes the completion queue at twice this.
const RING_ENTRIES: u32 = 4096;

pub fn run_worker(worker: Worker, ready: Ready) -> io::Result<()> {
    let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)) {
        Ok(runtime) => runtime,
        Err(e) => {
            ready.report(Err(e));
            return Ok(());
        }
    };
    runtime.block_on(tokio_loop::run_worker_loop(worker, ready, |listener| {
        Ok(UringAcceptor(TcpListener::from_std(listener)))
    }));
    Ok(())
}

struct UringAcceptor(TcpListener);

impl Acceptor for UringAcceptor {
    type Connection = UringConnection;

    async fn accept(&self) -> io::Result<(UringConnection, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((UringConnection(stream), peer))
    }
}

struct UringConnection(TcpStream);

impl ConnectionIo for UringConnection {
    /// A duplicate of the snapshot's descriptor owned by the ring: the
    /// snapshot's `File` is shared by every worker, and tokio-uring's `File`
    /// closes the descriptor it owns.
    type FileReader = tokio_uring::fs::File;

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    async fn read_more(&mut self, input: &mut Vec<u8>) -> io::Result<usize> {
        let buffer = std::mem::take(input);
        let filled = buffer.len();
        let (result, slice) = self.0.read(buffer.slice(filled..)).await;
        *input = slice.into_inner();
        result
    }

    /// One operation at a time, each raced against its send deadline; a
    /// dropped operation keeps its buffer until the kernel completes it
    /// (the connection loop then shuts the socket down to make it complete).
    async fn write_output(
        &mut self,
        output: &mut Output,
        mut timer: Pin<&mut Sleep>,
        timeouts: &Timeouts,
    ) -> Result<(), WriteFailed> {
        if output.as_contiguous().is_some() {
            let mut staged = output.take_staged();
            let mut written = 0;
            while written < staged.len() {
                let deadline = DeadlineClock::for_write(Instant::now(), timeouts);
                let write = self.0.write(staged.slice(written..)).submit();
                let (result, slice) = before(timer.as_mut(), deadline.at, write)
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
        let mut pieces = Vec::new();
        for piece in output.take_pieces() {
            match piece {
                Piece::Bytes(bytes) => pieces.push(bytes),
                // The shared loop streams file ranges itself
                // (`tokio_loop::write_output`) and never passes one here.
                Piece::File(_) => return Err(WriteFailed::File),
            }
        }
        while !pieces.is_empty() {
            let deadline = DeadlineClock::for_write(Instant::now(), timeouts);
            let (result, returned) = before(timer.as_mut(), deadline.at, self.0.writev(pieces))
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

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown(Direction::Write)
    }

    fn open_file(&self, file: &Arc<File>) -> io::Result<tokio_uring::fs::File> {
        Ok(tokio_uring::fs::File::from_std(file.try_clone()?))
    }

    /// An io_uring read at an offset: the ring reads the page cache (or the
    /// disk, from its own workers) while this thread serves others.
    async fn read_file_at(
        &mut self,
        file: &tokio_uring::fs::File,
        offset: u64,
        len: usize,
        buffer: BytesMut,
    ) -> (io::Result<usize>, BytesMut) {
        let (result, slice) = file.read_at(buffer.slice(..len), offset).await;
        (result, slice.into_inner())
    }
}
