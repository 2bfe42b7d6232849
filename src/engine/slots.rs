//! The worker's connection table: slots reused after a connection closes,
//! each with a generation that changes on every reuse.
//!
//! Shared by the native engines. A completion (`uring`: packed into the
//! operation's `user_data` by `uring::op`) or a readiness event (`epoll`:
//! the event's `u64`) names its connection by [`SlotKey`] (slot index and
//! generation). Looking a key up fails once the slot has been freed or
//! reused, so a late completion or a stale event for a closed connection can
//! never touch the connection that now lives in its slot. (The driver also never frees a slot while an operation
//! of its connection is in flight; the generation is the second line of
//! defence, and what makes that rule checkable.)

/// Generations are kept to this many bits so a key fits in `user_data` next
/// to the operation kind (see `uring::op::Op::encode`).
pub const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// Names one occupant of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub index: u32,
    pub generation: u32,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A slab whose keys carry generations.
#[derive(Debug)]
pub struct Slots<T> {
    slots: Vec<Slot<T>>,
    /// Indexes of empty slots, reused last-in first-out (warm in cache).
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, value: T) -> SlotKey {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            debug_assert!(slot.value.is_none());
            slot.value = Some(value);
            return SlotKey {
                index,
                generation: slot.generation,
            };
        }
        let index = u32::try_from(self.slots.len()).expect("more than 2^32 connections in one worker");
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        SlotKey { index, generation: 0 }
    }

    pub fn get(&self, key: SlotKey) -> Option<&T> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation == key.generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    pub fn get_mut(&mut self, key: SlotKey) -> Option<&mut T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation == key.generation {
            slot.value.as_mut()
        } else {
            None
        }
    }

    /// Frees the slot; its next occupant gets a new generation, so `key` and
    /// every copy of it stop matching.
    pub fn remove(&mut self, key: SlotKey) -> Option<T> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = (slot.generation + 1) & GENERATION_MASK;
        self.free.push(key.index);
        self.len -= 1;
        Some(value)
    }

    /// Keys of every occupied slot (collected: callers usually mutate the
    /// table while walking it).
    pub fn keys(&self) -> Vec<SlotKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.value.is_some())
            .map(|(index, slot)| SlotKey {
                index: index as u32,
                generation: slot.generation,
            })
            .collect()
    }

    /// Empties the table, handing back every value.
    pub fn drain_values(&mut self) -> Vec<T> {
        self.free.clear();
        self.len = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|slot| slot.value)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_key() {
        let mut slots = Slots::default();
        let first = slots.insert("first");
        assert_eq!(slots.get(first), Some(&"first"));
        assert_eq!(slots.remove(first), Some("first"));
        assert!(slots.get(first).is_none());

        let second = slots.insert("second");
        assert_eq!(second.index, first.index, "the free slot is reused");
        assert_ne!(second.generation, first.generation);
        assert!(slots.get(first).is_none());
        assert!(slots.get_mut(first).is_none());
        assert_eq!(slots.remove(first), None, "a stale key frees nothing");
        assert_eq!(slots.get(second), Some(&"second"));
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn generations_wrap_within_their_bits() {
        let mut slots = Slots::default();
        let mut key = slots.insert(0u8);
        for _ in 0..(1u32 << GENERATION_BITS) + 3 {
            slots.remove(key).unwrap();
            key = slots.insert(0);
            assert!(key.generation <= GENERATION_MASK);
        }
        assert_eq!(key.index, 0);
        assert_eq!(key.generation, 3);
    }

    #[test]
    fn keys_and_drain_see_only_occupants() {
        let mut slots = Slots::default();
        let a = slots.insert('a');
        let b = slots.insert('b');
        let c = slots.insert('c');
        slots.remove(b);
        assert_eq!(slots.keys(), vec![a, c]);
        let mut values = slots.drain_values();
        values.sort();
        assert_eq!(values, vec!['a', 'c']);
        assert!(slots.is_empty());
        assert!(slots.get(a).is_none());
    }
}
