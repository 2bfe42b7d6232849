//! Per-connection deadlines on one worker-wide clock, checked once per loop
//! iteration, for the native engines: the `uring` loop arms a single io_uring
//! timeout for the earliest, the `epoll` loop passes it to `epoll_wait` as its
//! timeout. No timer per connection, and no syscall per deadline change.
//!
//! Each connection has one current deadline (head, idle, send or linger; the
//! rules are the core's, [`crate::http::deadline`]), and it changes on almost
//! every event. Keeping a
//! priority queue exact would cost a heap operation per request, so the
//! queue is lazy: a connection's entry may be *earlier* than its deadline.
//! Moving a deadline later costs nothing; moving it earlier than its queued
//! entry pushes a new entry. When an entry comes due, the connection's real
//! deadline decides: past → it expires; still ahead → it is queued again.
//! Stale duplicates (entries superseded by an earlier one) are skipped. In
//! steady keep-alive traffic a connection touches the queue about twice per
//! send-timeout period, not per request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::engine::slots::SlotKey;

/// Milliseconds on the worker's monotonic clock.
pub type Millis = u64;

/// No deadline.
pub const NEVER: Millis = Millis::MAX;

/// See [`Deadlines::is_sparse`].
pub const MIN_ENTRIES_BEFORE_COMPACTION: usize = 1024;

/// A connection's part of the bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerSlot {
    /// The deadline that counts.
    pub deadline: Millis,
    /// The earliest entry this connection has in the queue (`NEVER`: none).
    queued_at: Millis,
}

impl Default for TimerSlot {
    fn default() -> Self {
        TimerSlot {
            deadline: NEVER,
            queued_at: NEVER,
        }
    }
}

/// What a due entry means for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The deadline has passed.
    Expired,
    /// The deadline moved later (queued again) or away, or the entry was a
    /// stale duplicate: nothing to do.
    NotYet,
}

#[derive(Debug, Default)]
pub struct Deadlines {
    queue: BinaryHeap<Reverse<(Millis, u32, u32)>>,
}

impl Deadlines {
    /// Sets `slot`'s deadline to `at` (or `NEVER`).
    pub fn set(&mut self, slot: &mut TimerSlot, key: SlotKey, at: Millis) {
        slot.deadline = at;
        if at < slot.queued_at {
            self.queue.push(Reverse((at, key.index, key.generation)));
            slot.queued_at = at;
        }
    }

    /// When the earliest entry comes due (it may turn out to be stale).
    pub fn next_due(&self) -> Option<Millis> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the earliest entry if it is due by `now`.
    pub fn pop_due(&mut self, now: Millis) -> Option<(SlotKey, Millis)> {
        let Reverse((at, index, generation)) = *self.queue.peek()?;
        if at > now {
            return None;
        }
        self.queue.pop();
        Some((SlotKey { index, generation }, at))
    }

    /// Decides what a popped entry (`at`) means for its connection's `slot`.
    pub fn on_popped(&mut self, slot: &mut TimerSlot, key: SlotKey, at: Millis, now: Millis) -> Due {
        if at != slot.queued_at {
            return Due::NotYet;
        }
        slot.queued_at = NEVER;
        if slot.deadline <= now {
            return Due::Expired;
        }
        if slot.deadline != NEVER {
            let deadline = slot.deadline;
            self.set(slot, key, deadline);
        }
        Due::NotYet
    }

    /// Entries queued, stale ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue holds so many stale entries next to `live`
    /// connections that it is worth [`Deadlines::compact`]ing: more than
    /// twice as many entries as connections, plus
    /// [`MIN_ENTRIES_BEFORE_COMPACTION`] (so a small worker does not compact
    /// on every close). Amortised, a close then costs O(log n).
    pub fn is_sparse(&self, live: usize) -> bool {
        self.queue.len() > 2 * live + MIN_ENTRIES_BEFORE_COMPACTION
    }

    /// Drops every entry that `slot_of` does not recognise as its
    /// connection's current one: entries of closed connections (which would
    /// otherwise stay until due, so the queue would grow with the connection
    /// rate times the longest timeout) and superseded duplicates. `slot_of`
    /// gives the timer of a live connection, `None` for a closed one.
    pub fn compact<'a>(&mut self, slot_of: impl Fn(SlotKey) -> Option<&'a TimerSlot>) {
        self.queue.retain(|Reverse((at, index, generation))| {
            let key = SlotKey {
                index: *index,
                generation: *generation,
            };
            slot_of(key).is_some_and(|slot| slot.queued_at == *at)
        });
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SlotKey = SlotKey {
        index: 1,
        generation: 0,
    };

    /// Pops everything due at `now` and returns whether `slot` expired.
    fn run(deadlines: &mut Deadlines, slot: &mut TimerSlot, now: Millis) -> bool {
        let mut expired = false;
        while let Some((key, at)) = deadlines.pop_due(now) {
            assert_eq!(key, A);
            expired |= deadlines.on_popped(slot, key, at, now) == Due::Expired;
        }
        expired
    }

    #[test]
    fn a_later_deadline_costs_no_entry_and_is_honoured() {
        let mut deadlines = Deadlines::default();
        let mut slot = TimerSlot::default();
        deadlines.set(&mut slot, A, 100);
        deadlines.set(&mut slot, A, 150);
        deadlines.set(&mut slot, A, 300);
        assert_eq!(deadlines.len(), 1);
        assert!(!run(&mut deadlines, &mut slot, 100), "moved later: not yet");
        assert_eq!(
            deadlines.next_due(),
            Some(300),
            "queued again at the real deadline"
        );
        assert!(!run(&mut deadlines, &mut slot, 299));
        assert!(run(&mut deadlines, &mut slot, 300));
        assert!(deadlines.is_empty());
    }

    #[test]
    fn an_earlier_deadline_is_queued_and_the_old_entry_goes_stale() {
        let mut deadlines = Deadlines::default();
        let mut slot = TimerSlot::default();
        deadlines.set(&mut slot, A, 1000);
        deadlines.set(&mut slot, A, 10);
        assert_eq!(deadlines.next_due(), Some(10));
        assert!(run(&mut deadlines, &mut slot, 10));
        // The expired connection is given a new, later deadline; the stale
        // 1000 entry must not expire it early.
        deadlines.set(&mut slot, A, 2000);
        assert!(!run(&mut deadlines, &mut slot, 1000));
        assert!(run(&mut deadlines, &mut slot, 2000));
    }

    #[test]
    fn compaction_drops_closed_connections_and_stale_duplicates() {
        let mut deadlines = Deadlines::default();
        let mut live = TimerSlot::default();
        let mut closed = TimerSlot::default();
        let b = SlotKey {
            index: 2,
            generation: 0,
        };
        deadlines.set(&mut live, A, 1000);
        deadlines.set(&mut live, A, 10); // the 1000 entry is now a stale duplicate
        deadlines.set(&mut closed, b, 500);
        assert_eq!(deadlines.len(), 3);
        deadlines.compact(|key| (key == A).then_some(&live));
        assert_eq!(
            deadlines.len(),
            1,
            "only the live connection's current entry is left"
        );
        assert!(run(&mut deadlines, &mut live, 10));
    }

    #[test]
    fn a_cleared_deadline_never_expires() {
        let mut deadlines = Deadlines::default();
        let mut slot = TimerSlot::default();
        deadlines.set(&mut slot, A, 5);
        deadlines.set(&mut slot, A, NEVER);
        assert!(!run(&mut deadlines, &mut slot, 1_000_000));
        assert!(deadlines.is_empty());
    }
}
