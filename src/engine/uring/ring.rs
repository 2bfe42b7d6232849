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
//! The enter is made here, not by the `io-uring` crate's `Submitter`, for
//! the **registered ring descriptor** (`IORING_REGISTER_RING_FDS`): once the
//! ring is in the thread's registered-ring table, `io_uring_enter` names it
//! by its index with `IORING_ENTER_REGISTERED_RING` and the kernel skips the
//! descriptor lookup (`fdget`/`fdput`) on every call. The crate remembers a
//! registration only on the `Submitter` that made it, and a `Submitter`
//! borrows the `IoUring`, so keeping it next to the ring would make [`Ring`]
//! self-referential; two raw syscalls (register, enter) on a stable ABI are
//! simpler to audit. The registration is undone when the ring drops. Unless
//! `--uring-register-ring-fd` (measured: no gain), or if the kernel refuses
//! it, enters name the descriptor.
//!
//! **Batching the wait** ([`Wait::Batch`], `--uring-min-wait`, off by
//! default: it costs more CPU than the syscalls it saves): when the
//! last iteration was busy, the enter asks for as many completions as it
//! handled, with a *minimum wait* (`min_wait_usec`, Linux 6.12): the kernel
//! waits at most that long for the batch, then returns as soon as there is
//! at least one completion. So no completion (a deadline's timeout, the stop
//! signal) is ever held back longer than the minimum wait, and an idle or
//! lightly loaded worker (small batches) never waits for a batch at all.
//!
//! A connection's socket is named by a [`Socket`]: a descriptor, or (with
//! direct descriptors, see the engine's module doc) an index into the ring's
//! fixed-file table, which has no descriptor and so no syscall of its own:
//! closing it, shutting it down and setting its reset-on-close all go through
//! the ring.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, opcode, squeue, types};

use super::op::{Op, OpKind};

// The kernel ABI for the two syscalls made here (include/uapi/linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
const IORING_ENTER_REGISTERED_RING: u32 = 1 << 4;
const IORING_REGISTER_RING_FDS: libc::c_uint = 20;
const IORING_UNREGISTER_RING_FDS: libc::c_uint = 21;

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// `struct io_uring_getevents_arg` (`min_wait_usec` was `pad` before 6.12).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

const _: () = assert!(std::mem::size_of::<RsrcUpdate>() == 16);
const _: () = assert!(std::mem::size_of::<GeteventsArg>() == 24);

/// How long a batched wait may last at most when nothing at all completes
/// (the loop's own timeout wakes it for deadlines well before): only a
/// bound, so that after the minimum wait the kernel waits for one
/// completion rather than returning empty-handed.
const BATCH_WAIT_LIMIT_SECS: u64 = 1;

/// What the loop's enter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Collect what is ready without waiting (starved receives to re-arm).
    Collect,
    /// At least one completion.
    One,
    /// `want` completions, but once `min_wait_usec` has passed, any one.
    Batch { want: u32, min_wait_usec: u32 },
}

/// How `io_uring_enter` names the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingName {
    Fd(RawFd),
    /// The index in this thread's registered-ring table.
    Registered(u32),
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
    name: RingName,
}

impl Ring {
    /// Wraps `ring`, registering its descriptor with the kernel if
    /// `register_fd` (and the kernel agrees). Must be called on the thread
    /// that enters the ring: the registered-ring table is per thread.
    pub fn new(ring: IoUring, register_fd: bool) -> Ring {
        let fd = ring.as_raw_fd();
        let name = match register_fd.then(|| register_ring_fd(fd)) {
            Some(Ok(index)) => RingName::Registered(index),
            Some(Err(_)) | None => RingName::Fd(fd),
        };
        Ring {
            ring,
            in_flight: 0,
            name,
        }
    }

    /// Whether enters name the ring by its registered index.
    #[cfg(test)]
    pub fn is_fd_registered(&self) -> bool {
        matches!(self.name, RingName::Registered(_))
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

    /// Queues `send` as the head of a link and the close of `socket` as its
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
    pub unsafe fn push_send_then_close(&mut self, send: &squeue::Entry, socket: Socket, close_op: Op) {
        let close = match socket {
            Socket::Fd(fd) => opcode::Close::new(types::Fd(fd)).build(),
            Socket::Direct(index) => opcode::Close::new(types::Fixed(index)).build(),
        }
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
        self.enter_raw(0, 0, None).map(drop)
    }

    /// The loop's one syscall: submits what is queued and waits as `wait`
    /// says (deferred task work runs, and so completions are produced, only
    /// in an enter that asks for completions, which every one here does).
    pub fn enter(&mut self, wait: Wait) -> io::Result<()> {
        let result = match wait {
            Wait::One => self.enter_raw(1, IORING_ENTER_GETEVENTS, None),
            Wait::Collect => {
                // A zero timeout: collect what is ready, wait for nothing.
                let args = GeteventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: 0,
                    ts: 0,
                };
                let no_wait = types::Timespec::new();
                self.enter_with_timeout(1, &args, &no_wait)
            }
            Wait::Batch { want, min_wait_usec } => {
                let args = GeteventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec,
                    ts: 0,
                };
                let limit = types::Timespec::new().sec(BATCH_WAIT_LIMIT_SECS);
                self.enter_with_timeout(want.max(1), &args, &limit)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if retry_enter(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An enter with an extended argument whose wait ends at `timeout`.
    fn enter_with_timeout(
        &mut self,
        min_complete: u32,
        args: &GeteventsArg,
        timeout: &types::Timespec,
    ) -> io::Result<u32> {
        // `types::Timespec` is `struct __kernel_timespec` (repr(C), two
        // 64-bit fields); the kernel copies it during the call.
        let args = GeteventsArg {
            ts: std::ptr::from_ref(timeout) as u64,
            ..*args
        };
        self.enter_raw(
            min_complete,
            IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
            Some(&args),
        )
    }

    /// `io_uring_enter(ring, queued, min_complete, flags, args)`.
    fn enter_raw(&mut self, min_complete: u32, flags: u32, args: Option<&GeteventsArg>) -> io::Result<u32> {
        // Dropping the queue handle publishes its tail to the kernel.
        let to_submit = self.ring.submission().len() as u32;
        let (fd, flags) = match self.name {
            RingName::Fd(fd) => (fd, flags),
            RingName::Registered(index) => (index as RawFd, flags | IORING_ENTER_REGISTERED_RING),
        };
        let (arg, arg_bytes) = match args {
            Some(args) => (
                std::ptr::from_ref(args).cast::<libc::c_void>(),
                std::mem::size_of::<GeteventsArg>(),
            ),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: the kernel reads the submission queue entries between its
        // head and the tail just published (what `push` queued, under its
        // contract), and, with EXT_ARG, one `io_uring_getevents_arg` and the
        // timespec it points to, both borrowed for the duration of the call.
        // Without EXT_ARG the argument is a null signal mask.
        let result = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                min_complete,
                flags,
                arg,
                arg_bytes,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result as u32)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let RingName::Registered(index) = self.name {
            let mut update = RsrcUpdate {
                offset: index,
                resv: 0,
                data: 0,
            };
            // SAFETY: the kernel reads one `io_uring_rsrc_update` from this
            // stack frame during the call. Without it, the thread's table
            // would keep the ring alive until the thread exits.
            unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    self.ring.as_raw_fd(),
                    IORING_UNREGISTER_RING_FDS,
                    std::ptr::from_mut(&mut update),
                    1,
                )
            };
        }
    }
}

/// Registers `fd` in this thread's registered-ring table; its index there.
fn register_ring_fd(fd: RawFd) -> io::Result<u32> {
    let mut update = RsrcUpdate {
        offset: u32::MAX,
        resv: 0,
        data: fd as u64,
    };
    // SAFETY: the kernel reads and writes back one `io_uring_rsrc_update`
    // (offset `u32::MAX`: pick a free index), which lives on this stack
    // frame for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_RING_FDS,
            std::ptr::from_mut(&mut update),
            1,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(update.offset)
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
    fn enters_work_with_and_without_a_registered_descriptor() {
        for register in [false, true] {
            let mut ring = Ring::new(IoUring::builder().build(8).unwrap(), register);
            assert_eq!(ring.is_fd_registered(), register);
            assert_eq!(round_trip(&mut ring, 3, Wait::One), 3);
            assert_eq!(round_trip(&mut ring, 2, Wait::Collect), 2);
            assert_eq!(
                round_trip(
                    &mut ring,
                    4,
                    Wait::Batch {
                        want: 4,
                        min_wait_usec: 10
                    }
                ),
                4
            );
            // Nothing in flight: a batched wait for more than can come ends
            // after its minimum wait, with what there is.
            assert_eq!(
                round_trip(
                    &mut ring,
                    1,
                    Wait::Batch {
                        want: 8,
                        min_wait_usec: 10
                    }
                ),
                1
            );
            assert_eq!(ring.in_flight, 0);
        }
    }

    #[test]
    fn two_rings_on_one_thread_get_their_own_index() {
        let a = Ring::new(IoUring::builder().build(8).unwrap(), true);
        let b = Ring::new(IoUring::builder().build(8).unwrap(), true);
        assert!(a.is_fd_registered() && b.is_fd_registered());
        assert_ne!(a.name, b.name);
    }
}
