//! Pipes of the `uring` engine's splice path (`--uring-splice`): the
//! descriptors a splice lends to the kernel, in one small file.
//!
//! With the switch on, a plain-HTTP connection streaming a file from disk
//! moves its bytes with two `IORING_OP_SPLICE`s per chunk, file → pipe and
//! pipe → socket, instead of a `read` into a chunk buffer and a `send`
//! ([`super::outbox`] says which, and keeps the pipe's state). The pipe is
//! taken from the worker's [`PipePool`] when the outbox first needs one and
//! comes back with the outbox ([`super::outbox::OutboxPool::give`]) only if
//! it is known to be empty; a pipe that may still hold bytes (an error, a
//! close with a splice in flight) is closed instead, so bytes of one response
//! never reach another connection.
//!
//! Each pipe is sized with `F_SETPIPE_SZ` to
//! [`FILE_CHUNK_BYTES`](crate::engine::FILE_CHUNK_BYTES) where the kernel
//! allows it (an unprivileged process may be held to less by
//! `pipe-user-pages-soft`): a splice into it moves at most its capacity.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::engine::FILE_CHUNK_BYTES;

/// Most empty pipes a worker keeps for reuse (two descriptors each); beyond
/// them a returned pipe is closed.
const MAX_POOLED_PIPES: usize = 16;

/// One pipe: its two ends and how many bytes it holds at most.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A new pipe (close-on-exec), grown to [`FILE_CHUNK_BYTES`] if allowed.
    fn new() -> std::io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and belong to nothing
        // else; the `OwnedFd`s close them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ and
        // F_GETPIPE_SZ take an integer and read no memory.
        let capacity = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                FILE_CHUNK_BYTES as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).unwrap_or(0).min(FILE_CHUNK_BYTES);
        if capacity == 0 {
            return Err(std::io::Error::other("pipe without capacity"));
        }
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The end a splice from a file writes into.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// The end a splice into the socket reads from.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The most one splice into it moves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A worker's empty pipes.
#[derive(Debug, Default)]
pub struct PipePool {
    free: Vec<Pipe>,
}

impl PipePool {
    /// An empty pipe, reused or new; `None` if none can be made (out of
    /// descriptors: the caller reads and sends instead).
    pub fn take(&mut self) -> Option<Pipe> {
        self.free.pop().or_else(|| Pipe::new().ok())
    }

    /// Returns a pipe the caller knows to be empty (no splice of it in
    /// flight, every byte spliced into it spliced out).
    pub fn give_empty(&mut self, pipe: Pipe) {
        if self.free.len() < MAX_POOLED_PIPES {
            self.free.push(pipe);
        }
    }

    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_hold_a_chunk_and_are_pooled_up_to_the_bound() {
        let mut pool = PipePool::default();
        let pipes: Vec<Pipe> = (0..MAX_POOLED_PIPES + 2).map(|_| pool.take().unwrap()).collect();
        for pipe in &pipes {
            assert!(pipe.capacity() > 0 && pipe.capacity() <= FILE_CHUNK_BYTES);
            assert_ne!(pipe.read_fd(), pipe.write_fd());
        }
        for pipe in pipes {
            pool.give_empty(pipe);
        }
        assert_eq!(pool.pooled(), MAX_POOLED_PIPES);
    }
}
