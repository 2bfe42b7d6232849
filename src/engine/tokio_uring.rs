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
//! [`super::tokio_loop`]'s, shared with the epoll engine.
//!
//! This is the baseline for comparisons: tokio-uring parks in epoll with the
//! ring's descriptor registered there and enters the ring on every park, and
//! has no multishot operations or provided buffers (see the README).

use std::fs::File;
use std::io;
use std::net::Shutdown as Direction;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::engine::tokio_loop::{self, Acceptor, ConnectionIo};
use crate::engine::{Ready, Worker};

/// Ring size: submissions in flight per worker before the runtime must enter
/// the kernel. tokio-uring sizes the completion queue at twice this.
const RING_ENTRIES: u32 = 4096;

pub fn run_worker(worker: Worker, ready: Ready) {
    let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)) {
        Ok(runtime) => runtime,
        Err(e) => return ready.report(Err(e)),
    };
    runtime.block_on(tokio_loop::run_worker_loop(worker, ready, |listener| {
        Ok(UringAcceptor(TcpListener::from_std(listener)))
    }));
}

struct UringAcceptor(TcpListener);

impl Acceptor for UringAcceptor {
    type Connection = UringConnection;

    async fn accept(&self) -> io::Result<UringConnection> {
        let (stream, _peer) = self.0.accept().await?;
        Ok(UringConnection(stream))
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

    async fn write_all_owned(&mut self, buffer: BytesMut) -> (io::Result<()>, BytesMut) {
        self.0.write_all(buffer).await
    }

    async fn write_all_pieces(&mut self, mut pieces: Vec<Bytes>) -> io::Result<()> {
        while !pieces.is_empty() {
            let (result, returned) = self.0.writev(pieces).await;
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

    async fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown(Direction::Write)
    }
}
