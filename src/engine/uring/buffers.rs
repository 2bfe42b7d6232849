//! The provided-buffer ring: receive buffers the kernel picks from when data
//! arrives, so a connection owns no receive buffer while it waits.
//!
//! One ring per worker (buffer group [`BUFFER_GROUP`]), `count` buffers of
//! `buffer_bytes` each in one allocation, and a ring of `count` descriptors
//! shared with the kernel. Ownership of each buffer moves like this:
//!
//! 1. In the ring: the kernel owns it and may write into it at any time.
//! 2. A receive completion names it (`IORING_CQE_F_BUFFER`, the first buffer
//!    of the completion) and its byte count: [`BufRing::take`] turns that
//!    into [`Segment`]s, the byte ranges the kernel handed us, which the
//!    driver reads ([`BufRing::bytes`]) and then releases
//!    ([`BufRing::release`]).
//! 3. A buffer the kernel is done with (it moved its head past it) is
//!    *lent*: releasing its last segment writes its descriptor back at our
//!    tail, and [`BufRing::publish`] makes the new tail visible to the
//!    kernel (once per loop iteration, before entering the kernel): back to
//!    step 1.
//!
//! Which buffers a completion covers depends on two optional kernel
//! features, both accounted for here:
//!
//! - **Bundles** (`IORING_RECVSEND_BUNDLE`, 6.10): one completion covers
//!   several buffers, the named one and those in the *ring slots* after it
//!   (not the following buffer ids: buffers come back in any order), each
//!   filled before the next. The ring remembers which buffer it put in each
//!   slot (`slot_bid`) and where each buffer sits (`position`) to walk them.
//! - **Incremental consumption** (`IOU_PBUF_RING_INC`, 6.12): the kernel
//!   uses a buffer from where its last receive stopped, so many small
//!   receives share one buffer; a completion with `IORING_CQE_F_BUF_MORE`
//!   leaves the buffer in the ring with the rest still the kernel's. The
//!   ring counts the bytes handed out of each buffer (`handed`): a segment
//!   starts there, and the buffer is lent (and recycled once read) only when
//!   the kernel has moved past it. Bytes below `handed` are never written
//!   again before the buffer is recycled (the kernel advanced its descriptor
//!   past them), so reading them while the kernel fills the rest is sound.
//!
//! The lent set is tracked (one bit per buffer), so reading a buffer the
//! kernel still owns, or recycling one twice (which would let the kernel
//! write into a buffer we still read, or hand it out twice), is a panic
//! rather than corruption. A completion that carries no data never consumes
//! a buffer with bundles or incremental consumption (the kernel commits
//! zero buffers, or zero bytes); without either, the kernel did consume the
//! one it names, which goes back at once.
//!
//! Memory: the descriptor ring and the buffers are allocated once, page
//! aligned, and never moved or freed while the ring is registered; only raw
//! pointers cover the whole region (the kernel writes into buffers we do not
//! hold at any time), and references are made only to handed-out ranges.

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
    /// Registered with `IOU_PBUF_RING_INC`.
    incremental: bool,
    /// The buffer put in each ring slot (slot = position & (count - 1)).
    slot_bid: Vec<u16>,
    /// The position (our tail when it was put back) of each buffer.
    position: Vec<u16>,
    /// With incremental consumption: bytes of each buffer handed to us since
    /// it was last put back.
    handed: Vec<u32>,
}

/// A byte range of one buffer that a completion handed us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    bid: u16,
    offset: u32,
    len: u32,
    /// The kernel is done with the buffer: releasing the segment recycles it.
    last_of_buffer: bool,
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
            incremental: false,
            slot_bid: vec![0; usize::from(count)],
            position: vec![0; usize::from(count)],
            handed: vec![0; usize::from(count)],
        };
        for bid in 0..count {
            ring.put_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with the kernel as [`BUFFER_GROUP`], with
    /// incremental consumption if `incremental` and the kernel has it (6.12;
    /// an older one refuses the flag, and the ring is registered without).
    /// Must be called before any buffer is taken.
    ///
    /// # Safety
    ///
    /// `self` must outlive the registration: it may be dropped only after the
    /// group is unregistered or the io_uring is closed, and only when no
    /// operation that selects from the group is in flight.
    pub unsafe fn register(&mut self, submitter: &Submitter<'_>, incremental: bool) -> io::Result<()> {
        let register = |flags: u16| {
            // SAFETY: the descriptor ring is page aligned, holds `count`
            // entries and stays allocated as long as `self` (the caller's
            // contract).
            unsafe {
                submitter.register_buf_ring_with_flags(
                    self.descriptors.as_ptr() as u64,
                    self.count,
                    BUFFER_GROUP,
                    flags,
                )
            }
        };
        if incremental {
            match register(io_uring::types::IOU_PBUF_RING_INC as u16) {
                Ok(()) => {
                    self.incremental = true;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        self.incremental = false;
        register(0)
    }

    /// Whether the kernel consumes buffers incrementally.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// The byte ranges a receive completion handed us: `len` (> 0) bytes
    /// starting in buffer `first`, `more` if the completion carried
    /// `IORING_CQE_F_BUF_MORE` (the kernel keeps using the last buffer).
    /// Appends them to `segments`, in order; each must be released.
    ///
    /// Panics if the completion names a buffer that is not in the ring, or
    /// covers more than the ring holds: corrupted bookkeeping.
    pub fn take(&mut self, first: u16, len: usize, more: bool, segments: &mut Vec<Segment>) {
        assert!(first < self.count, "buffer id {first} out of range");
        assert!(len > 0, "a completion without data hands out no buffer");
        let mask = self.count - 1;
        let mut position = self.position[usize::from(first)];
        assert_eq!(
            self.slot_bid[usize::from(position & mask)],
            first,
            "buffer {first} is not where it was put back"
        );
        let mut left = len;
        let mut bid = first;
        for _ in 0..self.count {
            assert!(!self.is_lent(bid), "buffer {bid} handed out twice");
            let index = usize::from(bid);
            let offset = if self.incremental { self.handed[index] } else { 0 };
            let room = (self.buffer_bytes - offset) as usize;
            assert!(room > 0, "buffer {bid} handed out beyond its end");
            let taken = left.min(room);
            left -= taken;
            // Every buffer but the last is filled to its end. The last one
            // stays in the ring only with incremental consumption, when the
            // kernel says it keeps using it.
            let last_of_buffer = left > 0 || !(self.incremental && more);
            debug_assert!(
                !self.incremental || last_of_buffer == (taken == room),
                "the kernel's BUF_MORE disagrees with the bytes handed out of buffer {bid}"
            );
            if last_of_buffer {
                self.lend(bid);
            } else {
                self.handed[index] += taken as u32;
            }
            segments.push(Segment {
                bid,
                offset,
                len: taken as u32,
                last_of_buffer,
            });
            if left == 0 {
                return;
            }
            position = position.wrapping_add(1);
            bid = self.slot_bid[usize::from(position & mask)];
        }
        panic!("a completion of {len} bytes covers more than the whole ring");
    }

    /// The bytes of a segment [`take`](Self::take) handed us.
    pub fn bytes(&self, segment: &Segment) -> &[u8] {
        let bid = segment.bid;
        let end = segment.offset as usize + segment.len as usize;
        let handed = if self.is_lent(bid) {
            self.buffer_bytes as usize
        } else {
            self.handed[usize::from(bid)] as usize
        };
        assert!(end <= handed, "buffer {bid} read while the kernel owns it");
        let start = usize::from(bid) * self.buffer_bytes as usize + segment.offset as usize;
        // SAFETY: the range lies inside the allocation (bid < count, end ≤
        // buffer_bytes), which lives as long as `self`. The kernel is done
        // with it: the buffer is lent (out of the ring until `recycle`, which
        // needs `&mut self` and so cannot run while this borrow lives), or,
        // with incremental consumption, the range lies below what the kernel
        // handed out, and it writes only beyond that until the buffer is
        // recycled. Its bytes are initialised (zeroed at allocation, then
        // written by the kernel).
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(start), segment.len as usize) }
    }

    /// Done reading `segment`: a buffer the kernel has finished with goes
    /// back to the ring (visible after `publish`).
    pub fn release(&mut self, segment: Segment) {
        if segment.last_of_buffer {
            self.recycle(segment.bid);
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

    /// Records that the kernel is done with buffer `bid` (for a completion
    /// without data that consumed it: `take` lends the others).
    ///
    /// Panics if `bid` is out of range or already lent: the kernel never
    /// hands out a buffer twice, so either means corrupted bookkeeping.
    pub fn lend(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer id {bid} out of range");
        assert!(!self.is_lent(bid), "buffer {bid} lent twice");
        self.lent[usize::from(bid) / 64] |= 1 << (bid % 64);
        self.lent_count += 1;
    }

    /// Gives lent buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        assert!(self.is_lent(bid), "buffer {bid} recycled but not lent");
        self.lent[usize::from(bid) / 64] &= !(1 << (bid % 64));
        self.lent_count -= 1;
        self.handed[usize::from(bid)] = 0;
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
        self.slot_bid[index] = bid;
        self.position[usize::from(bid)] = self.tail;
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
        let hello = Segment {
            bid: 2,
            offset: 0,
            len: 5,
            last_of_buffer: true,
        };
        assert_eq!(ring.bytes(&hello), b"hello");
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
        let _ = ring.bytes(&Segment {
            bid: 0,
            offset: 0,
            len: 1,
            last_of_buffer: true,
        });
    }

    /// What `take` handed out, as (bid, offset, len, last_of_buffer).
    fn take(ring: &mut BufRing, first: u16, len: usize, more: bool) -> Vec<(u16, u32, u32, bool)> {
        let mut segments = Vec::new();
        ring.take(first, len, more, &mut segments);
        segments
            .iter()
            .map(|s| (s.bid, s.offset, s.len, s.last_of_buffer))
            .collect()
    }

    fn release_all(ring: &mut BufRing, first: u16, len: usize, more: bool) {
        let mut segments = Vec::new();
        ring.take(first, len, more, &mut segments);
        for segment in segments {
            ring.release(segment);
        }
    }

    #[test]
    fn a_bundle_covers_the_following_ring_slots_not_the_following_ids() {
        let mut ring = BufRing::new(4, 16).unwrap();
        // Without bundles: one buffer per completion, handed out whole.
        assert_eq!(take(&mut ring, 0, 10, false), [(0, 0, 10, true)]);
        assert_eq!(ring.lent_count(), 1);
        // A bundle of 40 bytes from buffer 1: buffers 1 and 2 full, 3 partly.
        let mut segments = Vec::new();
        ring.take(1, 40, false, &mut segments);
        let seen: Vec<_> = segments.iter().map(|s| (s.bid, s.offset, s.len)).collect();
        assert_eq!(seen, [(1, 0, 16), (2, 0, 16), (3, 0, 8)]);
        assert_eq!(ring.lent_count(), 4);
        ring.buffer_mut(2)[..3].copy_from_slice(b"abc");
        assert_eq!(&ring.bytes(&segments[1])[..3], b"abc");
        // Back in another order: slots 4, 5, 6, 7 now hold 3, 1, 2, 0.
        for segment in [segments[2], segments[0], segments[1]] {
            ring.release(segment);
        }
        ring.recycle(0);
        ring.publish();
        assert_eq!(ring.lent_count(), 0);
        assert_eq!(ring.shared_tail(), 8);
        // The kernel's head is at slot 4 (buffer 3): a bundle from there
        // walks the slots, 3 then 1 then 2.
        assert_eq!(
            take(&mut ring, 3, 33, false),
            [(3, 0, 16, true), (1, 0, 16, true), (2, 0, 1, true)]
        );
    }

    #[test]
    fn incremental_consumption_hands_out_ranges_and_recycles_when_done() {
        let mut ring = BufRing::new(4, 16).unwrap();
        ring.incremental = true;
        // Three small receives share buffer 0; the kernel keeps it (MORE)
        // until the last one fills it.
        assert_eq!(take(&mut ring, 0, 5, true), [(0, 0, 5, false)]);
        assert_eq!(take(&mut ring, 0, 7, true), [(0, 5, 7, false)]);
        assert_eq!(ring.lent_count(), 0, "the kernel still owns the rest");
        ring.buffer_mut(0)[5..12].copy_from_slice(b"request");
        let middle = Segment {
            bid: 0,
            offset: 5,
            len: 7,
            last_of_buffer: false,
        };
        assert_eq!(ring.bytes(&middle), b"request");
        ring.release(middle);
        assert_eq!(ring.shared_tail(), 4, "a buffer in use stays in the ring");
        let mut segments = Vec::new();
        ring.take(0, 4, false, &mut segments);
        assert_eq!(segments[0].offset, 12);
        assert_eq!(ring.lent_count(), 1);
        ring.release(segments[0]);
        ring.publish();
        assert_eq!(ring.shared_tail(), 5);
        // Put back whole, from its start.
        assert_eq!(ring.descriptor(4), (ring.memory.as_ptr() as u64, 16, 0));
        // A bundle with incremental consumption: buffer 1 filled, buffer 2
        // started and kept by the kernel.
        assert_eq!(take(&mut ring, 1, 20, true), [(1, 0, 16, true), (2, 0, 4, false)]);
        assert_eq!(take(&mut ring, 2, 12, false), [(2, 4, 12, true)]);
    }

    #[test]
    #[should_panic(expected = "while the kernel owns it")]
    fn reading_beyond_what_was_handed_out_is_caught() {
        let mut ring = BufRing::new(4, 16).unwrap();
        ring.incremental = true;
        release_all(&mut ring, 0, 4, true);
        let _ = ring.bytes(&Segment {
            bid: 0,
            offset: 4,
            len: 1,
            last_of_buffer: false,
        });
    }

    #[test]
    #[should_panic(expected = "handed out twice")]
    fn a_completion_naming_a_lent_buffer_is_caught() {
        let mut ring = BufRing::new(4, 16).unwrap();
        let _ = take(&mut ring, 2, 16, false);
        let _ = take(&mut ring, 2, 16, false);
    }

    #[test]
    #[should_panic(expected = "covers more than the whole ring")]
    fn a_bundle_larger_than_the_ring_is_caught() {
        let mut ring = BufRing::new(2, 16).unwrap();
        let _ = take(&mut ring, 0, 40, false);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(BufRing::new(3, 16).is_err());
        assert!(BufRing::new(0, 16).is_err());
        assert!(BufRing::new(4, 0).is_err());
    }
}
