//! The provided-buffer ring: receive buffers the kernel picks from when data
//! arrives, so a connection owns no receive buffer while it waits.
//!
//! One ring per worker (buffer group [`BUFFER_GROUP`]), `count` buffers of
//! `buffer_bytes` each in one allocation, and a ring of `count` descriptors
//! shared with the kernel. Ownership of each buffer moves like this:
//!
//! 1. In the ring: the kernel owns it and may write into it at any time.
//! 2. A receive completion names it (`IORING_CQE_F_BUFFER`): the kernel has
//!    taken it out of the ring and filled it. The driver marks it lent
//!    ([`BufRing::lend`]) and reads it ([`BufRing::lent_bytes`]).
//! 3. [`BufRing::recycle`] writes its descriptor back at our tail, and
//!    [`BufRing::publish`] makes the new tail visible to the kernel (once per
//!    loop iteration, before entering the kernel): back to step 1.
//!
//! The lent set is tracked (one bit per buffer), so reading a buffer the
//! kernel still owns, or recycling one twice (which would let the kernel
//! write into a buffer we still read), is a panic rather than corruption.
//!
//! Memory: the descriptor ring and the buffers are allocated once, page
//! aligned, and never moved or freed while the ring is registered; only raw
//! pointers cover the whole region (the kernel writes into buffers we do not
//! hold at any time), and references are made only to lent buffers.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

/// The buffer group id receives select from.
pub const BUFFER_GROUP: u16 = 0;
/// The kernel accepts at most this many entries in a provided-buffer ring.
pub const MAX_BUFFERS: u16 = 32768;
const PAGE_BYTES: usize = 4096;

/// One descriptor as the kernel lays it out (`struct io_uring_buf`). The
/// `resv` field of descriptor 0 is the ring's tail.
#[repr(C)]
struct Descriptor {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<Descriptor>() == 16);
const _: () =
    assert!(std::mem::size_of::<Descriptor>() == std::mem::size_of::<io_uring::types::BufRingEntry>());

#[derive(Debug)]
pub struct BufRing {
    descriptors: NonNull<Descriptor>,
    descriptors_layout: Layout,
    memory: NonNull<u8>,
    memory_layout: Layout,
    count: u16,
    buffer_bytes: u32,
    /// Our tail: where the next recycled buffer's descriptor goes. Published
    /// to the kernel by [`BufRing::publish`].
    tail: u16,
    published_tail: u16,
    /// One bit per buffer: set while lent to us.
    lent: Vec<u64>,
    lent_count: usize,
}

impl BufRing {
    /// Allocates `count` buffers (a power of two, at most [`MAX_BUFFERS`]) of
    /// `buffer_bytes` each, all in the ring.
    pub fn new(count: u16, buffer_bytes: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > MAX_BUFFERS || buffer_bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer ring needs a power of two of buffers up to {MAX_BUFFERS} and a non-zero size \
                     (got {count} × {buffer_bytes} bytes)"
                ),
            ));
        }
        let descriptors_layout = Layout::from_size_align(usize::from(count) * 16, PAGE_BYTES)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let memory_layout = Layout::from_size_align(usize::from(count) * buffer_bytes as usize, PAGE_BYTES)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, buffer_bytes ≥ 1).
        let descriptors = unsafe { alloc::alloc_zeroed(descriptors_layout) }.cast::<Descriptor>();
        let Some(descriptors) = NonNull::new(descriptors) else {
            alloc::handle_alloc_error(descriptors_layout)
        };
        // SAFETY: as above. Zeroed so every buffer starts initialised.
        let memory = unsafe { alloc::alloc_zeroed(memory_layout) };
        let Some(memory) = NonNull::new(memory) else {
            alloc::handle_alloc_error(memory_layout)
        };
        let mut ring = BufRing {
            descriptors,
            descriptors_layout,
            memory,
            memory_layout,
            count,
            buffer_bytes,
            tail: 0,
            published_tail: 0,
            lent: vec![0; usize::from(count).div_ceil(64)],
            lent_count: 0,
        };
        for bid in 0..count {
            ring.put_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with the kernel as [`BUFFER_GROUP`].
    ///
    /// # Safety
    ///
    /// `self` must outlive the registration: it may be dropped only after the
    /// group is unregistered or the io_uring is closed, and only when no
    /// operation that selects from the group is in flight.
    pub unsafe fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the descriptor ring is page aligned, holds `count` entries
        // and stays allocated as long as `self` (the caller's contract).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.descriptors.as_ptr() as u64,
                self.count,
                BUFFER_GROUP,
                0,
            )
        }
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn buffer_bytes(&self) -> u32 {
        self.buffer_bytes
    }

    /// Buffers lent to us and not yet recycled.
    pub fn lent_count(&self) -> usize {
        self.lent_count
    }

    fn is_lent(&self, bid: u16) -> bool {
        self.lent[usize::from(bid) / 64] & (1 << (bid % 64)) != 0
    }

    /// Records that a completion handed us buffer `bid`.
    ///
    /// Panics if `bid` is out of range or already lent: the kernel never
    /// hands out a buffer twice, so either means corrupted bookkeeping.
    pub fn lend(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer id {bid} out of range");
        assert!(!self.is_lent(bid), "buffer {bid} lent twice");
        self.lent[usize::from(bid) / 64] |= 1 << (bid % 64);
        self.lent_count += 1;
    }

    /// The first `len` bytes of lent buffer `bid`.
    pub fn lent_bytes(&self, bid: u16, len: usize) -> &[u8] {
        assert!(self.is_lent(bid), "buffer {bid} read while the kernel owns it");
        assert!(len <= self.buffer_bytes as usize);
        let offset = usize::from(bid) * self.buffer_bytes as usize;
        // SAFETY: the range lies inside the allocation (bid < count, len ≤
        // buffer_bytes), which lives as long as `self`. The buffer is lent:
        // it is not in the ring, so the kernel does not write it until
        // `recycle`, which needs `&mut self` and so cannot run while this
        // borrow lives. Its bytes are initialised (zeroed at allocation,
        // then written by the kernel).
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(offset), len) }
    }

    /// Gives lent buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        assert!(self.is_lent(bid), "buffer {bid} recycled but not lent");
        self.lent[usize::from(bid) / 64] &= !(1 << (bid % 64));
        self.lent_count -= 1;
        self.put_back(bid);
    }

    fn put_back(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: index < count, so the pointer is inside the descriptor
        // ring. The slot at our tail is not one the kernel reads: the kernel
        // reads only between its head and the published tail, and we put
        // back at most as many buffers as it took out, so our tail never
        // laps its head. Fields are written one by one through raw pointers
        // (no reference to the whole descriptor), so descriptor 0's `resv`,
        // which is the shared tail, is never touched here.
        unsafe {
            let descriptor = self.descriptors.as_ptr().add(index);
            ptr::addr_of_mut!((*descriptor).addr).write(
                self.memory
                    .as_ptr()
                    .add(usize::from(bid) * self.buffer_bytes as usize) as u64,
            );
            ptr::addr_of_mut!((*descriptor).len).write(self.buffer_bytes);
            ptr::addr_of_mut!((*descriptor).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every recycled buffer visible to the kernel.
    pub fn publish(&mut self) {
        if self.tail == self.published_tail {
            return;
        }
        // SAFETY: descriptor 0's `resv` field is the ring's tail, a u16 the
        // kernel reads concurrently; it is only ever accessed atomically on
        // our side. The release store orders the descriptor writes above
        // before the kernel can see the new tail.
        let shared_tail =
            unsafe { AtomicU16::from_ptr(ptr::addr_of_mut!((*self.descriptors.as_ptr()).resv)) };
        shared_tail.store(self.tail, Ordering::Release);
        self.published_tail = self.tail;
    }

    #[cfg(test)]
    fn descriptor(&self, index: u16) -> (u64, u32, u16) {
        // SAFETY: test only, no kernel involved; index is masked into range.
        unsafe {
            let d = self
                .descriptors
                .as_ptr()
                .add(usize::from(index & (self.count - 1)));
            ((*d).addr, (*d).len, (*d).bid)
        }
    }

    #[cfg(test)]
    fn shared_tail(&self) -> u16 {
        // SAFETY: test only; the field is initialised and inside the ring.
        unsafe { AtomicU16::from_ptr(ptr::addr_of_mut!((*self.descriptors.as_ptr()).resv)) }
            .load(Ordering::Acquire)
    }

    #[cfg(test)]
    fn buffer_mut(&mut self, bid: u16) -> &mut [u8] {
        let offset = usize::from(bid) * self.buffer_bytes as usize;
        // SAFETY: test only (no kernel): stands in for the kernel filling a buffer.
        unsafe {
            std::slice::from_raw_parts_mut(self.memory.as_ptr().add(offset), self.buffer_bytes as usize)
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts. The owner
        // guarantees (see `register`) that the kernel no longer uses them.
        unsafe {
            alloc::dealloc(self.descriptors.as_ptr().cast(), self.descriptors_layout);
            alloc::dealloc(self.memory.as_ptr(), self.memory_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_published() {
        let ring = BufRing::new(8, 64).unwrap();
        assert_eq!(ring.shared_tail(), 8);
        for i in 0..8 {
            let (addr, len, bid) = ring.descriptor(i);
            assert_eq!(bid, i);
            assert_eq!(len, 64);
            assert_eq!(addr, ring.memory.as_ptr() as u64 + u64::from(i) * 64);
        }
        assert_eq!(ring.descriptors.as_ptr() as usize % PAGE_BYTES, 0);
        assert_eq!(ring.lent_count(), 0);
    }

    #[test]
    fn recycled_buffers_go_in_at_the_tail_and_publish_once() {
        let mut ring = BufRing::new(4, 16).unwrap();
        // The kernel took buffers 2 and 0 (its head moved by two).
        ring.lend(2);
        ring.lend(0);
        ring.buffer_mut(2)[..5].copy_from_slice(b"hello");
        assert_eq!(ring.lent_bytes(2, 5), b"hello");
        assert_eq!(ring.lent_count(), 2);
        ring.recycle(2);
        assert_eq!(ring.shared_tail(), 4, "not visible before publish");
        ring.recycle(0);
        ring.publish();
        assert_eq!(ring.shared_tail(), 6);
        // Tail slots 4 and 5 wrap onto descriptors 0 and 1.
        assert_eq!(ring.descriptor(4).2, 2);
        assert_eq!(ring.descriptor(5).2, 0);
        assert_eq!(ring.descriptor(4).0, ring.memory.as_ptr() as u64 + 2 * 16);
        assert_eq!(ring.lent_count(), 0);
    }

    #[test]
    fn the_tail_wraps_around_u16() {
        let mut ring = BufRing::new(2, 8).unwrap();
        for round in 0..70_000u32 {
            let bid = (round % 2) as u16;
            ring.lend(bid);
            ring.recycle(bid);
            ring.publish();
        }
        assert_eq!(ring.shared_tail(), (2u32 + 70_000) as u16);
    }

    #[test]
    #[should_panic(expected = "lent twice")]
    fn lending_twice_is_caught() {
        let mut ring = BufRing::new(4, 16).unwrap();
        ring.lend(1);
        ring.lend(1);
    }

    #[test]
    #[should_panic(expected = "recycled but not lent")]
    fn recycling_twice_is_caught() {
        let mut ring = BufRing::new(4, 16).unwrap();
        ring.lend(3);
        ring.recycle(3);
        ring.recycle(3);
    }

    #[test]
    #[should_panic(expected = "while the kernel owns it")]
    fn reading_a_buffer_in_the_ring_is_caught() {
        let ring = BufRing::new(4, 16).unwrap();
        let _ = ring.lent_bytes(0, 1);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(BufRing::new(3, 16).is_err());
        assert!(BufRing::new(0, 16).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
