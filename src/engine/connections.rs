//! A worker's table of open connections, for the connection cap and graceful
//! shutdown in the tokio-based engines.
//!
//! Each connection task registers its socket for as long as it lives. The
//! accept loop waits for [`Connections::wait_for_room`] before each accept,
//! so a worker never holds more than its cap (`--max-connections`): further
//! clients wait in the listen backlog, and the loop does not spin.
//!
//! On shutdown the worker shuts down the read side of every registered
//! socket: a connection waiting for its next request sees end-of-file and
//! ends at once, and one that is mid-response finishes writing first. The
//! worker then waits for the table to empty, up to the grace period, and
//! aborts what is left (reset, so no write stays pending in the kernel).
//!
//! Worker-local (`Rc<RefCell<…>>`): it is touched twice per connection, never
//! per request, and never from another thread. Those two touches are also
//! where the worker's metrics, if on, count a connection accepted and closed.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;

use crate::metrics::WorkerMetrics;

#[derive(Clone, Debug)]
pub struct Connections {
    shared: Rc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sockets: RefCell<Slab<RawFd>>,
    max: usize,
    /// Woken when a connection leaves a full table.
    room: Notify,
    metrics: Option<Arc<WorkerMetrics>>,
}

/// Keeps a socket in the table; dropping it removes the entry. Declare it
/// after the stream it registers, so it drops (deregisters) before the stream
/// closes its descriptor.
#[derive(Debug)]
pub struct Registration {
    shared: Rc<Shared>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sockets = self.shared.sockets.borrow_mut();
        let was_full = sockets.len() >= self.shared.max;
        sockets.remove(self.key);
        if let Some(metrics) = &self.shared.metrics {
            metrics.on_closed();
        }
        if was_full {
            self.shared.room.notify_one();
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(usize::MAX)
    }
}

impl Connections {
    /// A table that holds at most `max` connections.
    pub fn new(max: usize) -> Self {
        Connections::counted(max, None)
    }

    /// A table that also counts connections in `metrics`.
    pub fn counted(max: usize, metrics: Option<Arc<WorkerMetrics>>) -> Self {
        Connections {
            shared: Rc::new(Shared {
                sockets: RefCell::new(Slab::new()),
                max: max.max(1),
                room: Notify::new(),
                metrics,
            }),
        }
    }

    pub fn register(&self, fd: RawFd) -> Registration {
        if let Some(metrics) = &self.shared.metrics {
            metrics.on_accepted();
        }
        let key = self.shared.sockets.borrow_mut().insert(fd);
        Registration {
            shared: Rc::clone(&self.shared),
            key,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.shared.max
    }

    /// Completes once the table has room for one more connection.
    pub async fn wait_for_room(&self) {
        while self.is_full() {
            self.shared.room.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.shared.sockets.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every connection's reads (pending and future) with end-of-file.
    pub fn shut_down_reads(&self) {
        for (_, &fd) in self.shared.sockets.borrow().iter() {
            // SAFETY: shutdown(2) reads no memory of ours. `fd` belongs to a
            // live stream: entries are removed before their stream closes.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }

    /// Resets every connection: pending reads and writes end at once with an
    /// error, and the peer gets a reset rather than a truncated body that
    /// looks complete.
    pub fn abort_all(&self) {
        for (_, &fd) in self.shared.sockets.borrow().iter() {
            super::set_reset_on_close(fd);
            // SAFETY: as in `shut_down_reads`.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    /// Shuts reads down, then waits for every connection to end or for
    /// `grace` to pass, whichever is first; then aborts the rest and gives
    /// their tasks a moment to see it.
    pub async fn drain(&self, grace: Duration) {
        self.shut_down_reads();
        let deadline = Instant::now() + grace;
        while !self.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.is_empty() {
            self.abort_all();
            let deadline = Instant::now() + Duration::from_millis(500);
            while !self.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_lives_as_long_as_its_guard() {
        let connections = Connections::default();
        let first = connections.register(100);
        let second = connections.register(101);
        assert_eq!(connections.len(), 2);
        drop(first);
        assert_eq!(connections.len(), 1);
        drop(second);
        assert!(connections.is_empty());
    }

    #[test]
    fn a_full_table_makes_room_when_a_connection_leaves() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let connections = Connections::new(2);
        let first = connections.register(100);
        let _second = connections.register(101);
        assert!(connections.is_full());
        runtime.block_on(async {
            let waiting = connections.wait_for_room();
            tokio::pin!(waiting);
            assert!(
                futures_poll_once(waiting.as_mut()).await.is_none(),
                "full: must wait"
            );
            drop(first);
            waiting.await;
        });
        assert!(!connections.is_full());
    }

    /// Polls `future` once; `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
