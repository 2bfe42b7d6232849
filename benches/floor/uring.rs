//! The io_uring floor: the fewest kernel entries an io_uring loop needs per
//! request on Linux 6.18.
//!
//! - Ring: `SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN | SUBMIT_ALL |
//!   NO_SQARRAY`, [`SQ_ENTRIES`] submissions and [`CQ_ENTRIES`] completions,
//!   its fd registered (`IORING_REGISTER_RING_FDS`) on the `Submitter` that
//!   every `submit_and_wait` goes through.
//! - One multishot accept for the listener. A new connection's first
//!   receive is single-shot (the request is usually there already, so it
//!   completes at once without arming a poll); after a keep-alive response
//!   the receive is multishot, armed once for the connection's life.
//!   Receives select from a provided-buffer ring of [`BUFFERS`] ×
//!   [`BUFFER_BYTES`]; each buffer goes back to the ring as soon as its
//!   heads are found (the connection keeps only an incomplete head).
//! - `Connection: close`: no receive is armed while the last response is
//!   sent. With nothing behind the request, the last send is linked
//!   (`IOSQE_IO_LINK`, with `MSG_WAITALL` so a short send fails and breaks
//!   the link) to the close (`CQE_SKIP_SUCCESS`): one submission, and
//!   nothing comes back but the send's completion. (A keep-alive connection
//!   whose last request asks to close has its multishot receive armed: the
//!   receive is cancelled, then the socket closed.) With bytes behind it,
//!   `shutdown(SHUT_WR)` and one single-shot receive that sees the client's
//!   FIN (at once if it had already closed), then close.
//! - All responses found in one completion batch for a connection go out in
//!   one `Send` (one response) or `SendMsg` (one iovec per response); more
//!   responses found while a send is in flight wait for it.
//! - One `submit_and_wait(1)` per loop: submits everything queued and
//!   collects every completion that has arrived.
//! - Sends carry `MSG_WAITALL`: a response larger than the socket buffer
//!   (1 MiB) is finished by the kernel (it waits for room and continues)
//!   with one completion, not one per buffer-full.
//! - Close goes through the ring, with `CQE_SKIP_SUCCESS` (nothing comes
//!   back unless it fails, and the result does not matter). `shutdown` is a
//!   direct syscall: `IORING_OP_SHUTDOWN` is always run by an io-wq worker
//!   thread, which costs more than the syscall.

use std::alloc::{self, Layout};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::squeue::{Entry, Flags};
use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, SubmissionQueue, Submitter, cqueue, opcode};
use slab::Slab;

use super::epoll::advance;
use super::{Close, Responses, on_bytes};

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 16384;
/// Few and small: the ring hands buffers out in turn, so every buffer is
/// touched in each cycle; 512 × 2 KiB (1 MiB) covers 256 busy connections
/// with room and stays cache- and TLB-friendlier than the engine's 4 MiB.
const BUFFERS: u16 = 512;
const BUFFER_BYTES: usize = 2048;
const BUFFER_GROUP: u16 = 0;
const IOV_MAX: usize = 1024;

// user_data: the operation's kind in the high 32 bits, the connection's slab key in the low.
const ACCEPT: u64 = 1 << 32;
const RECV: u64 = 2 << 32;
const SEND: u64 = 3 << 32;
const IGNORE: u64 = 4 << 32;
/// The send that carries the linked close.
const LAST_SEND: u64 = 5 << 32;
const KIND_MASK: u64 = !0xffff_ffff;

/// Where a connection is in its life (the same steps as the epoll floor's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Open,
    /// `Connection: close` was answered and nothing followed it: send the
    /// rest, then close (linked to the last send when no receive is armed).
    CloseAfterSend,
    /// The last send is in flight with the close linked to it.
    Closing,
    /// `Connection: close` was answered with bytes behind it: send the
    /// rest, then shut down.
    ShutDownAfterSend,
    /// Our FIN is sent; close when the client's arrives (the recv ends).
    ShutDown,
    /// The client closed or the connection failed: close once nothing is in flight.
    Ending,
}

/// Whether the connection's multishot recv is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Armed,
    /// Ended (no `MORE` flag) and to be re-armed.
    Rearm,
    /// Ended for good (end of stream or an error).
    Done,
}

struct Conn {
    fd: RawFd,
    carry: Vec<u8>,
    /// The iovecs of the send in flight (the kernel reads them until it completes).
    flight: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// Responses found while a send was in flight.
    queued: Vec<&'static [u8]>,
    sending: bool,
    input: Input,
    /// Whether a receive has brought data: the next one is multishot.
    received: bool,
    life: Life,
}

pub fn serve(listener: TcpListener, table: &'static Responses) -> io::Result<()> {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_no_sqarray()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)?;
    let bufs = BufRing::new()?;
    let (mut submitter, mut sq, mut cq) = ring.split();
    submitter.register_ring_fd()?;
    // SAFETY: the descriptor ring is page aligned, holds BUFFERS entries and
    // is never freed (`BufRing` has no `Drop`), so it outlives the registration.
    unsafe {
        submitter.register_buf_ring_with_flags(bufs.entries.as_ptr() as u64, BUFFERS, BUFFER_GROUP, 0)?
    };
    let mut floor = Floor {
        conns: Slab::new(),
        bufs,
        table,
    };
    let listen_fd = listener.as_raw_fd();
    push(
        &submitter,
        &mut sq,
        opcode::AcceptMulti::new(Fd(listen_fd)).build().user_data(ACCEPT),
    )?;
    loop {
        floor.bufs.publish();
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        cq.sync();
        for cqe in &mut cq {
            floor.on_completion(
                &submitter,
                &mut sq,
                listen_fd,
                cqe.user_data(),
                cqe.result(),
                cqe.flags(),
            )?;
        }
    }
}

struct Floor {
    conns: Slab<Box<Conn>>,
    bufs: BufRing,
    table: &'static Responses,
}

impl Floor {
    fn on_completion(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        listen_fd: RawFd,
        user_data: u64,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        let key = (user_data & !KIND_MASK) as usize;
        match user_data & KIND_MASK {
            ACCEPT => {
                if !cqueue::more(flags) {
                    push(
                        submitter,
                        sq,
                        opcode::AcceptMulti::new(Fd(listen_fd)).build().user_data(ACCEPT),
                    )?;
                }
                if result >= 0 {
                    self.on_accept(submitter, sq, result)?;
                }
            }
            RECV => self.on_recv(submitter, sq, key, result, flags)?,
            SEND => self.on_send(submitter, sq, key, result)?,
            LAST_SEND => self.on_last_send(submitter, sq, key, result)?,
            _ => {}
        }
        Ok(())
    }

    fn on_accept(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        fd: RawFd,
    ) -> io::Result<()> {
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u64;
        entry.insert(Box::new(Conn {
            fd,
            carry: Vec::new(),
            flight: Vec::new(),
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            msg: unsafe { std::mem::zeroed() },
            queued: Vec::new(),
            sending: false,
            input: Input::Armed,
            received: false,
            life: Life::Open,
        }));
        push(submitter, sq, recv_once(fd, key))
    }

    fn on_recv(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        key: usize,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        let table = self.table;
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        if !cqueue::more(flags) {
            conn.input = Input::Rearm;
        }
        if result > 0 {
            conn.received = true;
            let bid = cqueue::buffer_select(flags).expect("a recv with data names its buffer");
            if conn.life == Life::Open {
                let data = self.bufs.bytes(bid, result as usize);
                let queued = &mut conn.queued;
                match on_bytes(table, &mut conn.carry, data, |response| queued.push(response)) {
                    Close::No => {}
                    Close::AfterResponse => conn.life = Life::CloseAfterSend,
                    Close::GracefulAfterResponse => conn.life = Life::ShutDownAfterSend,
                    Close::Now => {
                        conn.life = Life::Ending;
                        conn.queued.clear();
                        cancel_recv(submitter, sq, key)?;
                    }
                }
            }
            self.bufs.recycle(bid);
            if !conn.sending && !conn.queued.is_empty() {
                start_send(submitter, sq, conn, key)?;
            }
        } else if result == -libc::ENOBUFS {
            // Every buffer was in use; they are back in the ring before the next submit.
        } else {
            // End of stream (0) or an error: the client is gone or going.
            conn.input = Input::Done;
            if conn.life != Life::ShutDown {
                conn.life = Life::Ending;
            }
        }
        self.settle(submitter, sq, key)
    }

    fn on_send(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        key: usize,
        result: i32,
    ) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        conn.sending = false;
        // 0 bytes for a non-empty send: the connection is broken, never retried.
        if result <= 0 {
            conn.flight.clear();
            conn.queued.clear();
            conn.life = Life::Ending;
            if conn.input == Input::Armed {
                cancel_recv(submitter, sq, key)?;
            }
        } else {
            advance(&mut conn.flight, result as usize);
            if !conn.flight.is_empty() || !conn.queued.is_empty() {
                start_send(submitter, sq, conn, key)?;
            }
        }
        self.settle(submitter, sq, key)
    }

    /// The send linked to the close completed: in full, the kernel closed
    /// the socket; otherwise the link broke (the close was cancelled), and
    /// the connection closes as a failed one.
    fn on_last_send(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        key: usize,
        result: i32,
    ) -> io::Result<()> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let whole: usize = conn.flight.iter().map(|iov| iov.iov_len).sum();
        if usize::try_from(result).is_ok_and(|sent| sent == whole) {
            self.conns.remove(key);
            return Ok(());
        }
        conn.sending = false;
        conn.flight.clear();
        conn.life = Life::Ending;
        self.settle(submitter, sq, key)
    }

    /// The step after a completion: shut down after the last response, close
    /// once nothing is in flight, or re-arm the receive.
    fn settle(
        &mut self,
        submitter: &Submitter<'_>,
        sq: &mut SubmissionQueue<'_>,
        key: usize,
    ) -> io::Result<()> {
        let conn = &mut self.conns[key];
        if !conn.sending {
            match conn.life {
                // Not linked (a receive was armed): cancel it, then close.
                Life::CloseAfterSend => {
                    conn.life = Life::Ending;
                    if conn.input == Input::Armed {
                        cancel_recv(submitter, sq, key)?;
                    }
                }
                Life::ShutDownAfterSend => {
                    // A direct syscall: `IORING_OP_SHUTDOWN` always runs in an io-wq worker.
                    // SAFETY: plain syscall on our own socket.
                    unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
                    conn.life = Life::ShutDown;
                }
                Life::ShutDown if conn.input == Input::Done => conn.life = Life::Ending,
                _ => {}
            }
            if conn.life == Life::Ending && conn.input != Input::Armed {
                let close = opcode::Close::new(Fd(conn.fd)).build();
                push(submitter, sq, close.flags(Flags::SKIP_SUCCESS).user_data(IGNORE))?;
                self.conns.remove(key);
                return Ok(());
            }
        }
        if conn.input == Input::Rearm {
            let entry = match conn.life {
                Life::Open if conn.received => recv_multi(conn.fd, key as u64),
                // Only the client's FIN is wanted after a shutdown.
                Life::Open | Life::ShutDown => recv_once(conn.fd, key as u64),
                // Nothing armed while the last response goes out.
                Life::CloseAfterSend | Life::Closing | Life::ShutDownAfterSend | Life::Ending => {
                    return Ok(());
                }
            };
            conn.input = Input::Armed;
            push(submitter, sq, entry)?;
        }
        Ok(())
    }
}

fn recv_multi(fd: RawFd, key: u64) -> Entry {
    opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
        .build()
        .user_data(RECV | key)
}

fn recv_once(fd: RawFd, key: u64) -> Entry {
    opcode::Recv::new(Fd(fd), std::ptr::null_mut(), BUFFER_BYTES as u32)
        .buf_group(BUFFER_GROUP)
        .build()
        .flags(Flags::BUFFER_SELECT)
        .user_data(RECV | key)
}

/// Cancels the armed multishot recv; its last completion (without `MORE`)
/// lets the connection close.
fn cancel_recv(submitter: &Submitter<'_>, sq: &mut SubmissionQueue<'_>, key: usize) -> io::Result<()> {
    let cancel = opcode::AsyncCancel::new(RECV | key as u64).build();
    push(submitter, sq, cancel.flags(Flags::SKIP_SUCCESS).user_data(IGNORE))
}

/// Sends what is left in flight, or else everything queued, in one operation.
fn start_send(
    submitter: &Submitter<'_>,
    sq: &mut SubmissionQueue<'_>,
    conn: &mut Conn,
    key: usize,
) -> io::Result<()> {
    if conn.flight.is_empty() {
        conn.flight.extend(conn.queued.drain(..).map(|r| libc::iovec {
            iov_base: r.as_ptr() as *mut _,
            iov_len: r.len(),
        }));
    }
    let entry = if conn.flight.len() == 1 {
        let iov = conn.flight[0];
        opcode::Send::new(Fd(conn.fd), iov.iov_base.cast(), iov.iov_len as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
    } else {
        conn.msg.msg_iov = conn.flight.as_mut_ptr();
        conn.msg.msg_iovlen = conn.flight.len().min(IOV_MAX) as _;
        opcode::SendMsg::new(Fd(conn.fd), &conn.msg)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32)
            .build()
    };
    conn.sending = true;
    let last = conn.queued.is_empty() && conn.flight.len() <= IOV_MAX;
    if conn.life == Life::CloseAfterSend && conn.input != Input::Armed && last {
        // The close runs only if the send completes in full (MSG_WAITALL
        // makes a short send a failure, which breaks the link).
        conn.life = Life::Closing;
        let close = opcode::Close::new(Fd(conn.fd))
            .build()
            .flags(Flags::SKIP_SUCCESS)
            .user_data(IGNORE);
        let send = entry.flags(Flags::IO_LINK).user_data(LAST_SEND | key as u64);
        if sq.capacity() - sq.len() < 2 {
            // A link cannot span two submissions.
            sq.sync();
            submitter.submit()?;
            sq.sync();
        }
        // SAFETY: as in `push`; the close references no memory.
        return unsafe { sq.push_multiple(&[send, close]) }
            .map_err(|_| io::Error::other("submission queue full"));
    }
    push(submitter, sq, entry.user_data(SEND | key as u64))
}

/// Queues one entry, submitting first if the submission queue is full.
fn push(submitter: &Submitter<'_>, sq: &mut SubmissionQueue<'_>, entry: Entry) -> io::Result<()> {
    loop {
        // SAFETY: every pointer an entry carries (a response, a connection's
        // iovecs and msghdr, boxed and not touched while its send is in
        // flight) stays valid until the operation completes.
        if unsafe { sq.push(&entry) }.is_ok() {
            return Ok(());
        }
        sq.sync();
        submitter.submit()?;
        sq.sync();
    }
}

/// The provided-buffer ring: [`BUFFERS`] descriptors and buffers, allocated
/// once and never freed (the process ends with the ring registered).
struct BufRing {
    entries: NonNull<BufRingEntry>,
    memory: NonNull<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let entries_layout = Layout::from_size_align(usize::from(BUFFERS) * size_of::<BufRingEntry>(), 4096)
            .map_err(io::Error::other)?;
        let memory_layout =
            Layout::from_size_align(usize::from(BUFFERS) * BUFFER_BYTES, 4096).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout),
                alloc::alloc_zeroed(memory_layout),
            )
        };
        let (Some(entries), Some(memory)) =
            (NonNull::new(entries.cast::<BufRingEntry>()), NonNull::new(memory))
        else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut ring = BufRing {
            entries,
            memory,
            tail: 0,
        };
        for bid in 0..BUFFERS {
            ring.recycle(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed us.
    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUFFERS && len <= BUFFER_BYTES);
        // SAFETY: the kernel wrote `len` bytes into buffer `bid` and took it
        // out of the ring; it is ours until `recycle`.
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(usize::from(bid) * BUFFER_BYTES), len) }
    }

    /// Puts buffer `bid` back at our tail (visible to the kernel at [`BufRing::publish`]).
    fn recycle(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `index` < BUFFERS; the kernel reads descriptors only
        // between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `bid` < BUFFERS, so the address is inside the allocation.
        entry.set_addr(unsafe { self.memory.as_ptr().add(usize::from(bid) * BUFFER_BYTES) } as u64);
        entry.set_len(BUFFER_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the recycled buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lives inside descriptor 0, which is
        // allocated, aligned for u16 and shared with the kernel only through
        // atomic access.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}
