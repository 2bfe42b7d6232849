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

    /// Queues the close of `fd`, which nothing of ours uses any more.
    pub fn push_close(&mut self, fd: RawFd, op: Op) {
        let entry = opcode::Close::new(types::Fd(fd)).build();
        // SAFETY: a close takes a descriptor number and references no memory.
        unsafe { self.push_unacknowledged(&entry.user_data(op.encode())) };
    }

    /// Queues `send` as the head of a link and the close of `fd` as its
    /// second entry: the close runs only once the send succeeded, and
    /// completes silently then (`IOSQE_CQE_SKIP_SUCCESS`, so it is not
    /// counted in flight); if the send fails, the close completes with
    /// `ECANCELED` under `close_op` (see `OutputState::LastSend` in `conn`).
    /// Both go into the queue together: a link cannot span two submissions
    /// (the kernel ends a chain at the end of a submission, and a close
    /// split from its send would run at once).
    ///
    /// # Safety
    ///
    /// As for [`Ring::push`], for what `send` points to; `send` must carry
    /// `IOSQE_IO_LINK`.
    pub unsafe fn push_send_then_close(&mut self, send: &squeue::Entry, fd: RawFd, close_op: Op) {
        let close = opcode::Close::new(types::Fd(fd))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(close_op.encode());
        let free = {
            let queue = self.ring.submission();
            queue.capacity() - queue.len()
        };
        if free < 2 {
            while let Err(e) = self.submit() {
                if !retry_enter(&e) {
                    panic!("io_uring submission failed: {e}");
                }
                std::thread::yield_now();
            }
        }
        // SAFETY: the queue has room for both (checked, or just emptied by
        // the submit), so they are adjacent in one submission; the send's
        // memory is the caller's contract, the close references none.
        unsafe {
            self.ring
                .submission()
                .push_multiple(&[send.clone(), close])
                .expect("room for a send and its close");
        }
        // The send is counted; the close completes silently unless the link
        // breaks, and its ECANCELED completion is not counted (`counted`).
        self.in_flight += 1;
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
        !matches!(kind, OpKind::Close | OpKind::Cancel)
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
