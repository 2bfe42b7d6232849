//! Ring bookkeeping of the `uring` engine: the submission queue, the count
//! of operations in flight, and the one `io_uring_enter` per loop iteration.
//!
//! Every submission goes through [`Ring::push`], whose contract is the
//! engine's one rule about kernel-lent memory: what an entry points to stays
//! valid, unmoved and unchanged until the operation's final completion. The
//! entries that reference no memory (cancel, close) are built here
//! and pushed without acknowledgement; the loop returns only when
//! [`Ring::in_flight`] is zero. The memory itself lives in `buffers`
//! (receive) and `outbox` (send).
//!
//! A connection's socket is named by a [`Socket`]: a descriptor, or (with
//! direct descriptors, see the engine's module doc) an index into the ring's
//! fixed-file table, which has no descriptor and so no syscall of its own:
//! closing it, shutting it down and setting its reset-on-close all go through
//! the ring.

use std::io;
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, squeue, types};

use super::op::{Op, OpKind};

/// What the loop's enter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Collect what is ready without waiting (starved receives to re-arm).
    Collect,
    /// At least one completion.
    One,
}

/// A connection's socket, as submissions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// A normal descriptor of the process.
    Fd(RawFd),
    /// A slot of the ring's fixed-file table (a direct descriptor).
    Direct(u32),
}

impl Socket {
    /// The number for an entry's `fd` field; [`Socket::sqe_flags`] says
    /// whether it is a table index.
    pub fn raw(self) -> types::Fd {
        match self {
            Socket::Fd(fd) => types::Fd(fd),
            Socket::Direct(index) => types::Fd(index as RawFd),
        }
    }

    /// `IOSQE_FIXED_FILE` for a direct descriptor: the entry's `fd` is then
    /// an index into the fixed-file table. (Every operation that takes its
    /// socket in the `fd` field; `Close` names a slot differently, see
    /// [`Ring::push_close`].)
    pub fn sqe_flags(self) -> squeue::Flags {
        match self {
            Socket::Fd(_) => squeue::Flags::empty(),
            Socket::Direct(_) => squeue::Flags::FIXED_FILE,
        }
    }

    /// The descriptor, if the socket has one.
    pub fn fd(self) -> Option<RawFd> {
        match self {
            Socket::Fd(fd) => Some(fd),
            Socket::Direct(_) => None,
        }
    }
}

/// `SO_LINGER` on with a zero timeout: closing then resets. A static, so the
/// kernel may read it whenever it runs the `setsockopt`.
static RESET_ON_CLOSE: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// A `SetSockOpt` (uring_cmd, Linux 6.7) of [`RESET_ON_CLOSE`] on the
/// direct descriptor `index`. It points only at that static.
fn reset_on_close_entry(index: u32) -> squeue::Entry {
    opcode::SetSockOpt::new(
        types::Fixed(index),
        libc::SOL_SOCKET as u32,
        libc::SO_LINGER as u32,
        (&raw const RESET_ON_CLOSE).cast(),
        std::mem::size_of::<libc::linger>() as u32,
    )
    .build()
    .user_data(Op::worker(OpKind::SockOpt).encode())
}

/// The submission side of the ring, and the count of operations whose final
/// completion has not arrived.
pub struct Ring {
    pub ring: IoUring,
    /// Operations submitted (or queued) whose last completion is still to
    /// come. The loop returns only when this is zero.
    pub in_flight: usize,
}

impl Ring {
    /// Wraps `ring`, with nothing in flight.
    pub fn new(ring: IoUring) -> Ring {
        Ring { ring, in_flight: 0 }
    }

    /// Queues `entry`, submitting early if the queue is full.
    ///
    /// # Safety
    ///
    /// Everything `entry` points to must stay valid, unmoved and (for what
    /// the kernel reads) unchanged until the operation's final completion.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller keeps what the entry points to alive until
            // its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.in_flight += 1;
                return;
            }
            match self.submit() {
                Ok(()) => {}
                Err(e) if retry_enter(&e) => std::thread::yield_now(),
                Err(e) => panic!("io_uring submission failed: {e}"),
            }
        }
    }

    /// Queues a cancel of the operation `target` (the cancelled operation
    /// reports on its own).
    pub fn push_cancel(&mut self, target: Op) {
        let entry = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(Op::worker(OpKind::Cancel).encode());
        // SAFETY: a cancel names its target by `user_data`, a number: it
        // references no memory.
        unsafe { self.push_unacknowledged(&entry) };
    }

    /// Queues the close of `socket`, which nothing of ours uses any more. A
    /// direct descriptor's slot is free for the next accept once this runs.
    pub fn push_close(&mut self, socket: Socket, op: Op) {
        let entry = match socket {
            Socket::Fd(fd) => opcode::Close::new(types::Fd(fd)).build(),
            Socket::Direct(index) => opcode::Close::new(types::Fixed(index)).build(),
        };
        // SAFETY: a close takes a descriptor number and references no memory.
        unsafe { self.push_unacknowledged(&entry.user_data(op.encode())) };
    }

    /// Makes closing `socket` send a reset (`SO_LINGER` zero). A descriptor
    /// gets a direct `setsockopt`; a direct descriptor a `SetSockOpt`
    /// uring_cmd (Linux 6.7), which the kernel runs inline at submission,
    /// so it takes effect before any later entry of the queue (the close
    /// comes later).
    pub fn push_reset_on_close(&mut self, socket: Socket) {
        match socket {
            Socket::Fd(fd) => crate::engine::set_reset_on_close(fd),
            Socket::Direct(index) => {
                let entry = reset_on_close_entry(index);
                // SAFETY: the entry points at a static.
                unsafe { self.push_unacknowledged(&entry) };
            }
        }
    }

    /// Queues `shutdown(how)` of a direct descriptor, counted in flight
    /// under `op`: the connection's slot must not be closed before its
    /// completion (see the engine's module doc: the kernel resolves the
    /// table index only when an io-wq worker runs it).
    pub fn push_shutdown(&mut self, index: u32, how: i32, op: Op) {
        let entry = opcode::Shutdown::new(types::Fixed(index), how)
            .build()
            .user_data(op.encode());
        // SAFETY: a shutdown references no memory.
        unsafe { self.push(&entry) };
    }

    /// For a ring being abandoned (a broken loop's `Drop`): makes closing the
    /// direct descriptor `index` reset, closes it, and submits at once, as
    /// far as the ring still takes submissions. Never panics; nothing of
    /// this is counted or waited for.
    pub fn try_reset_now(&mut self, index: u32) {
        let reset = reset_on_close_entry(index);
        let close = opcode::Close::new(types::Fixed(index))
            .build()
            .user_data(Op::worker(OpKind::Close).encode());
        for entry in [reset, close] {
            let entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
            // SAFETY: the entries reference no memory but a static.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                let _ = self.ring.submit();
                // SAFETY: as above.
                let _ = unsafe { self.ring.submission().push(&entry) };
            }
        }
        let _ = self.ring.submit();
    }

    /// Queues `entry` with `IOSQE_CQE_SKIP_SUCCESS`: it completes silently
    /// unless it fails, so it is not counted in flight (closes and cancels,
    /// whose success tells nothing; what is queued is submitted before the
    /// loop returns).
    ///
    /// # Safety
    ///
    /// `entry` must reference no memory of ours: nothing would keep it alive.
    unsafe fn push_unacknowledged(&mut self, entry: &squeue::Entry) {
        let entry = entry.clone().flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: the entry references no memory (this function's contract).
        unsafe { self.push(&entry) };
        self.in_flight -= 1;
    }

    /// Whether a completion of `kind` is counted in `in_flight`.
    pub fn counted(kind: OpKind) -> bool {
        !matches!(kind, OpKind::Close | OpKind::Cancel | OpKind::SockOpt)
    }

    /// Submits what is queued, without waiting or collecting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    /// The loop's one syscall: submits what is queued and waits as `wait`
    /// says (deferred task work runs, and so completions are produced, only
    /// in an enter that asks for completions, which every one here does).
    pub fn enter(&mut self, wait: Wait) -> io::Result<()> {
        let result = match wait {
            Wait::One => self.ring.submit_and_wait(1),
            Wait::Collect => {
                // A zero timeout: collect what is ready, wait for nothing.
                let no_wait = types::Timespec::new();
                let args = types::SubmitArgs::new().timespec(&no_wait);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if retry_enter(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Errors after which entering the ring again is right: a signal, a
/// completion queue overflow the next drain clears, a transient shortage.
pub fn retry_enter(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop() -> squeue::Entry {
        opcode::Nop::new()
            .build()
            .user_data(Op::worker(OpKind::Timer).encode())
    }

    /// Submits `n` no-ops and collects their completions with `wait`.
    fn round_trip(ring: &mut Ring, n: usize, wait: Wait) -> usize {
        for _ in 0..n {
            // SAFETY: a no-op references no memory.
            unsafe { ring.push(&nop()) };
        }
        ring.enter(wait).unwrap();
        let done = ring.ring.completion().count();
        ring.in_flight -= done;
        done
    }

    #[test]
    fn enters_wait_for_one_or_collect_what_is_ready() {
        let mut ring = Ring::new(IoUring::builder().build(8).unwrap());
        assert_eq!(round_trip(&mut ring, 3, Wait::One), 3);
        assert_eq!(round_trip(&mut ring, 2, Wait::Collect), 2);
        // Nothing queued: collecting returns at once, with nothing.
        assert_eq!(round_trip(&mut ring, 0, Wait::Collect), 0);
        assert_eq!(ring.in_flight, 0);
    }
}
