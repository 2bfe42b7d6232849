//! A worker's table of open connections, for graceful shutdown in the
//! tokio-based engines.
//!
//! Each connection task registers its socket for as long as it lives. On
//! shutdown the worker shuts down the read side of every registered socket:
//! a connection waiting for its next request sees end-of-file and ends at
//! once, and one that is mid-response finishes writing first. The worker then
//! waits for the table to empty, up to the grace period.
//!
//! Worker-local (`Rc<RefCell<…>>`): it is touched twice per connection, never
//! per request, and never from another thread.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

#[derive(Clone, Debug, Default)]
pub struct Connections {
    sockets: Rc<RefCell<Slab<RawFd>>>,
}

/// Keeps a socket in the table; dropping it removes the entry. Declare it
/// after the stream it registers, so it drops (deregisters) before the stream
/// closes its descriptor.
#[derive(Debug)]
pub struct Registration {
    sockets: Rc<RefCell<Slab<RawFd>>>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sockets.borrow_mut().remove(self.key);
    }
}

impl Connections {
    pub fn register(&self, fd: RawFd) -> Registration {
        let key = self.sockets.borrow_mut().insert(fd);
        Registration {
            sockets: Rc::clone(&self.sockets),
            key,
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every connection's reads (pending and future) with end-of-file.
    pub fn shut_down_reads(&self) {
        for (_, &fd) in self.sockets.borrow().iter() {
            // SAFETY: shutdown(2) reads no memory of ours. `fd` belongs to a
            // live stream: entries are removed before their stream closes.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    }

    /// Shuts reads down, then waits for every connection to end or for
    /// `grace` to pass, whichever is first.
    pub async fn drain(&self, grace: Duration) {
        self.shut_down_reads();
        let deadline = Instant::now() + grace;
        while !self.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
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
}
