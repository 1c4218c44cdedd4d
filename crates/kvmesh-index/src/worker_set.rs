//! The holders of one block (workers and their tiers), as the exact index stores them.
//!
//! Most blocks in a fleet sit on one worker (KV-aware routing keeps prefixes together); a
//! shared system prompt may sit on all of them. So a block's table slot is one `u64`: either
//! one inline holder (worker id in the low 32 bits, tier mask in the next 8) or, with the top
//! bit set, the index of a sorted `Vec<Holder>` in a side arena. [`Holders`] is the read view
//! of either: a slice sorted by worker id, so two holder sets intersect by a linear merge,
//! which is what prefix lookups do block after block.

use crate::overlap::{TierMask, WorkerId};

/// A worker and the tiers it holds the block on.
pub(crate) type Holder = (WorkerId, TierMask);

/// Tag (top two bits) of a slot holding two holders inline.
const TWO: u64 = 1 << 62;
/// Tag of a slot that refers to the arena.
const MANY: u64 = 2 << 62;
/// Worker ids below this fit two to a slot (27 bits each, with 4-bit tier masks).
const PAIR_ID_LIMIT: u32 = 1 << 27;

/// A decoded table slot.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    /// One holder, inline.
    One(Holder),
    /// Two holders, inline, sorted by worker; both ids below 2^27.
    Two(Holder, Holder),
    /// Index into the arena of sorted holder vectors (two or more holders).
    Many(u32),
}

impl Slot {
    /// Packs a slot into a table value. A slot with holders never packs to 0 (its masks are
    /// not empty), so 0 means "no holder left".
    pub(crate) fn pack(self) -> u64 {
        match self {
            Slot::One((w, m)) => u64::from(w.0) | u64::from(m.bits()) << 32,
            Slot::Two((a, ma), (b, mb)) => {
                debug_assert!(a.0 < PAIR_ID_LIMIT && b.0 < PAIR_ID_LIMIT && a < b);
                TWO | u64::from(a.0)
                    | u64::from(ma.bits()) << 27
                    | u64::from(b.0) << 31
                    | u64::from(mb.bits()) << 58
            }
            Slot::Many(i) => MANY | u64::from(i),
        }
    }

    pub(crate) fn unpack(v: u64) -> Slot {
        match v >> 62 {
            0 => Slot::One((WorkerId(v as u32), TierMask::from_bits((v >> 32) as u8))),
            1 => Slot::Two(
                (
                    WorkerId(v as u32 & (PAIR_ID_LIMIT - 1)),
                    TierMask::from_bits((v >> 27) as u8 & 0xf),
                ),
                (
                    WorkerId((v >> 31) as u32 & (PAIR_ID_LIMIT - 1)),
                    TierMask::from_bits((v >> 58) as u8 & 0xf),
                ),
            ),
            _ => Slot::Many(v as u32),
        }
    }

    /// The packed slot for a sorted holder set (0 for an empty one), allocating in the arena
    /// only when it does not fit inline.
    pub(crate) fn encode(holders: &[Holder], arena: &mut Arena) -> u64 {
        match *holders {
            [] => 0,
            [h] => Slot::One(h).pack(),
            [a, b] if a.0 .0 < PAIR_ID_LIMIT && b.0 .0 < PAIR_ID_LIMIT => Slot::Two(a, b).pack(),
            _ => Slot::Many(arena.alloc(holders.to_vec())).pack(),
        }
    }

    /// Whether `holders` would be stored inline.
    pub(crate) fn fits_inline(holders: &[Holder]) -> bool {
        match *holders {
            [] | [_] => true,
            [a, b] => a.0 .0 < PAIR_ID_LIMIT && b.0 .0 < PAIR_ID_LIMIT,
            _ => false,
        }
    }
}

/// The holders of one block, sorted by worker id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Holders<'a> {
    One(Holder),
    Two([Holder; 2]),
    Many(&'a [Holder]),
}

impl<'a> Holders<'a> {
    pub(crate) fn as_slice(&self) -> &[Holder] {
        match self {
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Two(p) => p,
            Holders::Many(s) => s,
        }
    }

    /// Same workers with the same tiers.
    pub(crate) fn same_as(&self, other: &Holders<'_>) -> bool {
        match (self, other) {
            (Holders::One(a), Holders::One(b)) => a == b,
            (Holders::Two(a), Holders::Two(b)) => a == b,
            _ => self.as_slice() == other.as_slice(),
        }
    }
}

/// Vectors of two or more holders, for blocks with several holders, with a free list.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    sets: Vec<Vec<Holder>>,
    free: Vec<u32>,
}

impl Arena {
    pub(crate) fn get(&self, i: u32) -> &[Holder] {
        &self.sets[i as usize]
    }

    pub(crate) fn get_mut(&mut self, i: u32) -> &mut Vec<Holder> {
        &mut self.sets[i as usize]
    }

    /// Stores a sorted set of two or more holders; returns its index.
    pub(crate) fn alloc(&mut self, set: Vec<Holder>) -> u32 {
        debug_assert!(set.len() >= 2);
        if let Some(i) = self.free.pop() {
            self.sets[i as usize] = set;
            i
        } else {
            let i = u32::try_from(self.sets.len()).expect("fewer than 2^32 multi-holder blocks");
            self.sets.push(set);
            i
        }
    }

    /// Frees the set at `i` (its heap is returned at once).
    pub(crate) fn release(&mut self, i: u32) {
        self.sets[i as usize] = Vec::new();
        self.free.push(i);
        if self.free.len() == self.sets.len() {
            self.sets.clear();
            self.free.clear();
            if self.sets.capacity() > 1024 {
                self.sets.shrink_to_fit();
                self.free.shrink_to_fit();
            }
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.sets.capacity() * size_of::<Vec<Holder>>()
            + self.free.capacity() * size_of::<u32>()
            + self
                .sets
                .iter()
                .map(|s| s.capacity() * size_of::<Holder>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_core::Tier;

    #[test]
    fn slots_round_trip() {
        let m = TierMask::of(Tier::Host).with(Tier::Remote);
        for w in [0, 1, 7, u32::MAX] {
            let s = Slot::One((WorkerId(w), m)).pack();
            assert_ne!(s, 0);
            assert!(matches!(Slot::unpack(s), Slot::One((WorkerId(x), mm)) if x == w && mm == m));
        }
        let (a, b) = (
            (WorkerId(3), m),
            (WorkerId((1 << 27) - 1), TierMask::of(Tier::Device)),
        );
        assert!(
            matches!(Slot::unpack(Slot::Two(a, b).pack()), Slot::Two(x, y) if x == a && y == b)
        );
        let mut arena = Arena::default();
        assert!(matches!(
            Slot::unpack(Slot::encode(&[a, b], &mut arena)),
            Slot::Two(..)
        ));
        let big = (WorkerId(1 << 27), m);
        assert!(matches!(
            Slot::unpack(Slot::encode(&[a, big], &mut arena)),
            Slot::Many(0)
        ));
        assert_eq!(Slot::encode(&[], &mut arena), 0);
        for i in [0, 5, u32::MAX] {
            assert!(matches!(Slot::unpack(Slot::Many(i).pack()), Slot::Many(j) if j == i));
        }
    }

    #[test]
    fn arena_reuses_and_returns_memory() {
        let d = TierMask::of(Tier::Device);
        let mut a = Arena::default();
        let i = a.alloc(vec![(WorkerId(1), d), (WorkerId(2), d)]);
        let j = a.alloc(vec![(WorkerId(1), d), (WorkerId(3), d)]);
        a.release(i);
        assert_eq!(a.alloc(vec![(WorkerId(4), d), (WorkerId(5), d)]), i);
        a.release(i);
        a.release(j);
        assert_eq!(a.sets.len(), 0);
    }
}
