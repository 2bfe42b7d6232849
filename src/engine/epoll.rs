//! The `epoll` engine: a tokio current-thread runtime per worker.
//!
//! The readiness-based twin of [`super::tokio_uring`]: same listeners, same
//! worker count and pinning, same buffer sizes, same core, and the same
//! loops ([`super::tokio_loop`]). Only the I/O differs: sockets are
//! registered with epoll and read and written with `recv`/`send` (`writev`
//! for large bodies) when ready.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;
use tokio::time::Sleep;

use crate::engine::timer::before;
use crate::engine::tokio_loop::{self, Acceptor, ConnectionIo, WriteFailed};
use crate::engine::{Ready, Worker};
use crate::http::{DeadlineClock, Output, Timeouts};

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

    async fn accept(&self) -> io::Result<(EpollConnection, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((EpollConnection(stream), peer))
    }
}

struct EpollConnection(TcpStream);

impl ConnectionIo for EpollConnection {
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
    let mut slices: Vec<IoSlice<'_>> = output.chunks().map(IoSlice::new).collect();
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
