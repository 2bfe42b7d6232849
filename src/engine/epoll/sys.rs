//! The system calls of the `epoll` engine, each behind a small safe function.
//!
//! Every `unsafe` block of the engine is here, and none of them lends memory
//! to the kernel beyond the call: epoll is synchronous, so a buffer passed to
//! `recv`, `sendmsg` or `epoll_wait` is only used while the call runs (unlike
//! io_uring, where the kernel keeps pointers until a completion). Errors come
//! back as [`io::Error`]; `EAGAIN` as [`io::ErrorKind::WouldBlock`].

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Converts a `-1` return into the thread's `errno`.
fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn check_size(result: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// One epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1(2) takes a flag and returns a new descriptor or -1.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just created and belongs to nothing else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for `events`; each event carries `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl(2) reads one `epoll_event` from `&mut event`, a
        // live local, during the call only; bad descriptors yield an error.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })?;
        Ok(())
    }

    /// Stops watching `fd` (closing the last descriptor of a file does this
    /// too; the listener is removed explicitly because it is closed while
    /// the loop still runs).
    pub fn delete(&self, fd: RawFd) {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed
        // since Linux 2.6.9); a descriptor not in the set yields an error.
        unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Waits up to `timeout_ms` (-1: for ever) for events, replacing the
    /// contents of `events` (whose capacity bounds how many are taken).
    pub fn wait(&self, events: &mut Vec<libc::epoll_event>, timeout_ms: i32) -> io::Result<()> {
        events.clear();
        let max = i32::try_from(events.capacity()).unwrap_or(i32::MAX).max(1);
        events.reserve(max as usize);
        // SAFETY: the kernel writes at most `max` events into the vector's
        // spare capacity, which holds at least `max` (reserved above).
        let n = check(unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) })?;
        // SAFETY: the kernel initialised the first `n` (≤ `max`) events.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

/// Accepts one connection from the non-blocking `listener`: non-blocking and
/// close-on-exec, with the listener's options (`TCP_NODELAY`,
/// `TCP_USER_TIMEOUT`) inherited.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4(2) with null address pointers writes no memory of
    // ours; it returns a new descriptor or -1.
    let fd = check(unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: the descriptor was just created and belongs to nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads into `buffer`; `Ok(0)` is end-of-file.
pub fn recv(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv(2) writes at most `buffer.len()` bytes into `buffer`,
    // which is exclusively borrowed for the call.
    check_size(unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) })
}

/// Sends `bytes` (no `SIGPIPE` if the peer is gone: `EPIPE` instead).
pub fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: send(2) reads at most `bytes.len()` bytes from `bytes`,
    // borrowed for the call.
    check_size(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) })
}

/// Sends `slices` in order with one `sendmsg` (a `writev` that cannot raise
/// `SIGPIPE`).
pub fn send_vectored(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed to be ABI-compatible with `iovec` on Unix.
    header.msg_iov = slices.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = slices.len();
    // SAFETY: sendmsg(2) reads the header and, through it, the slices and
    // the bytes they borrow, all alive for the call; it writes nothing.
    check_size(unsafe { libc::sendmsg(fd, &header, libc::MSG_NOSIGNAL) })
}

/// Sends up to `len` bytes of `file` from `offset` with `sendfile(2)`,
/// copying page cache to socket in the kernel; `Ok(0)` means the file ended.
pub fn sendfile(socket: RawFd, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut at = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: sendfile(2) reads and updates the `off_t` at `&mut at`, a live
    // local, and otherwise moves bytes between two descriptors.
    check_size(unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut at, len) })
}

/// `shutdown(2)`: `libc::SHUT_WR` (the peer sees end-of-file once what was
/// sent is delivered) or `libc::SHUT_RD`. Errors (the peer is gone) show up
/// on the next read or write.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) takes two integers and reads no memory of ours; a
    // stale descriptor only yields EBADF.
    unsafe { libc::shutdown(fd, how) };
}
