//! The epoll floor: the fewest syscalls a readiness loop needs per request.
//!
//! - Each connection is added once with `EPOLLIN | EPOLLOUT | EPOLLRDHUP |
//!   EPOLLET` and never modified (no `epoll_ctl` per request; closing the fd
//!   removes it).
//! - A read shorter than the buffer means the socket was drained (TCP returns
//!   all it holds up to the length asked), and edge triggering reports any
//!   later data again: no second `recv` returning `EAGAIN`.
//! - All responses found in one read go out in one `send` (one response) or
//!   `sendmsg` (one iovec per response); a short send means the socket
//!   buffer is full, and the `EPOLLOUT` edge resumes it (no extra call to be
//!   told `EAGAIN`).
//! - `Connection: close` with nothing behind it: `close` right after the
//!   last send (no `shutdown`, no wait for the client's FIN).
//! - The listener is level-triggered; each wake-up accepts with `accept4`
//!   (non-blocking, close-on-exec) until `EAGAIN`, at most [`ACCEPTS_PER_WAKE`].

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use slab::Slab;

use super::{Close, Responses, errno, on_bytes};

const LISTENER: u64 = u64::MAX;
const EVENTS: usize = 512;
const READ_BYTES: usize = 64 * 1024;
const ACCEPTS_PER_WAKE: usize = 64;
/// The kernel's limit on iovecs per `sendmsg`.
const IOV_MAX: usize = 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Open,
    /// `Connection: close` was answered and nothing followed it: send the
    /// rest, then close.
    CloseAfterSend,
    /// `Connection: close` was answered with bytes behind it: send the
    /// rest, then shut down.
    ShutDownAfterSend,
    /// Our FIN is sent; close when the client's arrives.
    ShutDown,
    /// The client closed: send the rest, then close.
    PeerClosed,
}

struct Conn {
    fd: RawFd,
    carry: Vec<u8>,
    /// Responses not yet sent; the first may be partly sent (its iovec advanced).
    out: Vec<libc::iovec>,
    life: Life,
}

/// What to do with a connection after an event.
enum Next {
    Keep,
    Close,
}

pub fn serve(listener: TcpListener, table: &'static Responses) -> io::Result<()> {
    // SAFETY: plain syscall with no pointers.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    add(epfd, listener.as_raw_fd(), libc::EPOLLIN as u32, LISTENER)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        // SAFETY: `events` holds EVENTS writable entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS as i32, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        for event in &events[..n as usize] {
            let (flags, key) = (event.events, event.u64);
            if key == LISTENER {
                accept(epfd, &listener, &mut conns)?;
                continue;
            }
            let key = key as usize;
            let Some(conn) = conns.get_mut(key) else { continue };
            if let Next::Close = on_event(conn, flags, &mut buf, table) {
                let conn = conns.remove(key);
                // SAFETY: the fd is ours and closed once; closing removes it from the epoll set.
                unsafe { libc::close(conn.fd) };
            }
        }
    }
}

fn add(epfd: RawFd, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: key };
    // SAFETY: `event` is a valid epoll_event, read during the call only.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn accept(epfd: RawFd, listener: &TcpListener, conns: &mut Slab<Conn>) -> io::Result<()> {
    for _ in 0..ACCEPTS_PER_WAKE {
        // SAFETY: null address pointers: the peer address is not wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return match errno() {
                libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => Ok(()),
                // Out of descriptors or memory: keep serving the others.
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Ok(()),
                _ => Err(io::Error::last_os_error()),
            };
        }
        let entry = conns.vacant_entry();
        let key = entry.key() as u64;
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if add(epfd, fd, events, key).is_err() {
            // SAFETY: the fd was just accepted and is not registered anywhere.
            unsafe { libc::close(fd) };
            continue;
        }
        entry.insert(Conn {
            fd,
            carry: Vec::new(),
            out: Vec::new(),
            life: Life::Open,
        });
    }
    Ok(())
}

fn on_event(conn: &mut Conn, flags: u32, buf: &mut [u8], table: &Responses) -> Next {
    let hangup = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
    if flags & libc::EPOLLIN as u32 != 0 || hangup {
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(conn.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                let n = n as usize;
                if conn.life == Life::Open {
                    let out = &mut conn.out;
                    let close = on_bytes(table, &mut conn.carry, &buf[..n], |response| {
                        out.push(libc::iovec {
                            iov_base: response.as_ptr() as *mut _,
                            iov_len: response.len(),
                        })
                    });
                    match close {
                        Close::No => {}
                        Close::AfterResponse => conn.life = Life::CloseAfterSend,
                        Close::GracefulAfterResponse => conn.life = Life::ShutDownAfterSend,
                        Close::Now => return Next::Close,
                    }
                }
                if n < buf.len() && !hangup {
                    break;
                }
            } else if n == 0 {
                match conn.life {
                    Life::ShutDown => return Next::Close,
                    _ if conn.out.is_empty() => return Next::Close,
                    _ => conn.life = Life::PeerClosed,
                }
                break;
            } else {
                match errno() {
                    libc::EAGAIN => break,
                    libc::EINTR => continue,
                    _ => return Next::Close,
                }
            }
        }
    }
    if !conn.out.is_empty() && flush(conn).is_err() {
        return Next::Close;
    }
    if conn.out.is_empty() {
        match conn.life {
            // The read that found the request drained the socket.
            Life::CloseAfterSend if !hangup => return Next::Close,
            Life::CloseAfterSend | Life::ShutDownAfterSend => {
                // SAFETY: plain syscall on our own socket.
                if unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) } < 0 {
                    return Next::Close;
                }
                conn.life = Life::ShutDown;
            }
            Life::PeerClosed => return Next::Close,
            Life::Open | Life::ShutDown => {}
        }
    }
    Next::Keep
}

/// Sends as much of `conn.out` as the socket takes; `Ok` also when it is
/// full (`EPOLLOUT` resumes).
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.out.is_empty() {
        let n = if conn.out.len() == 1 {
            let iov = conn.out[0];
            // SAFETY: the iovec points into a leaked, immutable response.
            unsafe { libc::send(conn.fd, iov.iov_base, iov.iov_len, libc::MSG_NOSIGNAL) }
        } else {
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = conn.out.as_mut_ptr();
            msg.msg_iovlen = conn.out.len().min(IOV_MAX) as _;
            // SAFETY: the iovecs point into leaked, immutable responses and
            // live in `conn.out`, untouched during the call.
            unsafe { libc::sendmsg(conn.fd, &msg, libc::MSG_NOSIGNAL) }
        };
        if n < 0 {
            return match errno() {
                libc::EAGAIN => Ok(()),
                libc::EINTR => continue,
                _ => Err(io::Error::last_os_error()),
            };
        }
        let n = n as usize;
        let whole: usize = conn.out.iter().take(IOV_MAX).map(|iov| iov.iov_len).sum();
        advance(&mut conn.out, n);
        if n < whole {
            // A short send filled the socket buffer: the writable edge
            // resumes it, so no second call to be told `EAGAIN`.
            return Ok(());
        }
    }
    Ok(())
}

/// Drops `sent` bytes from the front of `out`.
pub fn advance(out: &mut Vec<libc::iovec>, mut sent: usize) {
    let mut done = 0;
    for iov in out.iter_mut() {
        if sent >= iov.iov_len {
            sent -= iov.iov_len;
            done += 1;
        } else {
            // SAFETY: `sent` < the iovec's length, so the new base stays inside the response.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(sent) }.cast();
            iov.iov_len -= sent;
            break;
        }
    }
    out.drain(..done);
}
