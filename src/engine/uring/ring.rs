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

/// The submission side of the ring, and the count of operations whose final
/// completion has not arrived.
pub struct Ring {
    pub ring: IoUring,
    /// Operations submitted (or queued) whose last completion is still to
    /// come. The loop returns only when this is zero.
    pub in_flight: usize,
}

impl Ring {
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
            match self.ring.submit() {
                Ok(_) => {}
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
        let entry = opcode::Close::new(types::Fd(fd)).build().user_data(op.encode());
        // SAFETY: a close takes a descriptor number and references no memory.
        unsafe { self.push_unacknowledged(&entry) };
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

    /// The loop's one syscall: submits what is queued and, if `wait`, waits
    /// for at least one completion; otherwise only collects what is ready
    /// (deferred task work runs only in an enter that asks for completions).
    pub fn enter(&mut self, wait: bool) -> io::Result<()> {
        let result = if wait {
            self.ring.submit_and_wait(1)
        } else {
            let no_wait = types::Timespec::new();
            let args = types::SubmitArgs::new().timespec(&no_wait);
            self.ring.submitter().submit_with_args(1, &args)
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
