//! What an in-flight operation is, packed into its 64-bit `user_data`.
//!
//! Layout, high to low: 8 bits of [`OpKind`], 24 bits of slot generation, 32
//! bits of slot index. Operations that belong to the worker rather than to a
//! connection (accept, timer, the stop signal) carry a zero key.

use crate::engine::slots::{GENERATION_BITS, SlotKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// The listener's multishot accept.
    Accept = 1,
    /// The poll on the shutdown eventfd.
    StopSignal = 2,
    /// The worker's one timeout, armed for the next deadline.
    Timer = 3,
    /// An update of that timeout (its own completion is uninteresting).
    TimerUpdate = 4,
    /// A connection's receive (multishot or single).
    Recv = 5,
    /// A connection's send or sendmsg.
    Send = 6,
    /// An `AsyncCancel`; the cancelled operation reports on its own.
    Cancel = 7,
    /// A connection's close.
    Close = 8,
    /// The read of a chunk of a file that is streamed from disk.
    Read = 9,
}

impl OpKind {
    fn from_bits(bits: u8) -> Option<OpKind> {
        Some(match bits {
            1 => OpKind::Accept,
            2 => OpKind::StopSignal,
            3 => OpKind::Timer,
            4 => OpKind::TimerUpdate,
            5 => OpKind::Recv,
            6 => OpKind::Send,
            7 => OpKind::Cancel,
            8 => OpKind::Close,
            9 => OpKind::Read,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub key: SlotKey,
}

const WORKER_KEY: SlotKey = SlotKey {
    index: 0,
    generation: 0,
};

impl Op {
    pub const fn worker(kind: OpKind) -> Op {
        Op {
            kind,
            key: WORKER_KEY,
        }
    }

    pub const fn conn(kind: OpKind, key: SlotKey) -> Op {
        Op { kind, key }
    }

    pub const fn encode(self) -> u64 {
        ((self.kind as u64) << 56) | ((self.key.generation as u64) << 32) | self.key.index as u64
    }

    /// `None` for a value this worker never submitted.
    pub fn decode(user_data: u64) -> Option<Op> {
        let kind = OpKind::from_bits((user_data >> 56) as u8)?;
        let generation = ((user_data >> 32) as u32) & ((1 << GENERATION_BITS) - 1);
        Some(Op {
            kind,
            key: SlotKey {
                index: user_data as u32,
                generation,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_and_extreme_keys() {
        let kinds = [
            OpKind::Accept,
            OpKind::StopSignal,
            OpKind::Timer,
            OpKind::TimerUpdate,
            OpKind::Recv,
            OpKind::Send,
            OpKind::Cancel,
            OpKind::Close,
            OpKind::Read,
        ];
        let keys = [
            SlotKey {
                index: 0,
                generation: 0,
            },
            SlotKey {
                index: u32::MAX,
                generation: (1 << GENERATION_BITS) - 1,
            },
            SlotKey {
                index: 12345,
                generation: 678,
            },
        ];
        for kind in kinds {
            for key in keys {
                let op = Op::conn(kind, key);
                assert_eq!(Op::decode(op.encode()), Some(op));
            }
        }
    }

    #[test]
    fn fields_do_not_bleed_into_each_other() {
        let a = Op::conn(
            OpKind::Recv,
            SlotKey {
                index: 7,
                generation: 1,
            },
        )
        .encode();
        let b = Op::conn(
            OpKind::Recv,
            SlotKey {
                index: 7,
                generation: 2,
            },
        )
        .encode();
        let c = Op::conn(
            OpKind::Send,
            SlotKey {
                index: 7,
                generation: 1,
            },
        )
        .encode();
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn unknown_values_are_refused() {
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(0xff << 56), None);
    }
}
