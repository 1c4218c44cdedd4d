//! The holders of one block (workers and their tiers), as the exact index stores them.
//!
//! Most blocks in a fleet sit on one worker (KV-aware routing keeps prefixes together); a
//! shared system prompt may sit on all of them. So a block's table slot is one `u64`: one or
//! two inline holders, or the index of a sorted holder set in a side [`Arena`]. [`Holders`] is
//! the read view of either: a slice sorted by worker id, so two holder sets intersect by a
//! linear merge, which is what prefix lookups do block after block.
//!
//! **Interned sets (2026-11-28).** The blocks of one system prompt are usually held by the
//! same workers, so the arena keeps one copy of each distinct set, reference counted, and
//! slots with equal sets share it. A lookup then tells "same holders as the block before" by
//! comparing two packed slots instead of two lists of hundreds of holders (at 256 workers that
//! comparison, element by element, was half of a lookup's time), and the fleet's copies of a
//! prompt's holder list cost memory once. The price is copy on write: adding or dropping one
//! holder of a shared set must not change the other blocks that share it.
//!
//! **Cheap copy on write (2026-12-02).** A set's content hash is the wrapping sum of its
//! holders' hashes, so the hash of a set one holder away follows in O(1). [`Arena::apply`]
//! first looks for an equal interned set by that hash and compares it in place (the next block
//! of a prompt that the same worker just stored finds the set its predecessor created, with no
//! allocation); a set whose only reference is the edited slot is changed in place; only
//! otherwise is a new vector built. At 256 workers about 9% of events edit a shared set.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use kvmesh_core::PassThroughHasher;

use crate::overlap::{TierMask, WorkerId};

/// A worker and the tiers it holds the block on, packed as `worker << 8 | tier bits`: holders
/// sort by worker, and compare and hash as one integer (a set compares as a run of `u64`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Holder(u64);

impl Holder {
    pub(crate) fn new(worker: WorkerId, mask: TierMask) -> Self {
        Holder(u64::from(worker.0) << 8 | u64::from(mask.bits()))
    }

    pub(crate) fn worker(self) -> WorkerId {
        WorkerId((self.0 >> 8) as u32)
    }

    pub(crate) fn mask(self) -> TierMask {
        TierMask::from_bits(self.0 as u8)
    }

    /// The same worker with tiers `mask`.
    pub(crate) fn with_mask(self, mask: TierMask) -> Self {
        Holder::new(self.worker(), mask)
    }
}

/// The index of `worker` in a holder set sorted by worker, or where it would go.
pub(crate) fn position(set: &[Holder], worker: WorkerId) -> Result<usize, usize> {
    set.binary_search_by_key(&worker, |h| h.worker())
}

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
            Slot::One(h) => u64::from(h.worker().0) | u64::from(h.mask().bits()) << 32,
            Slot::Two(ha, hb) => {
                let (a, ma, b, mb) = (ha.worker(), ha.mask(), hb.worker(), hb.mask());
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
            0 => Slot::One(Holder::new(
                WorkerId(v as u32),
                TierMask::from_bits((v >> 32) as u8),
            )),
            1 => Slot::Two(
                Holder::new(
                    WorkerId(v as u32 & (PAIR_ID_LIMIT - 1)),
                    TierMask::from_bits((v >> 27) as u8 & 0xf),
                ),
                Holder::new(
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
            [a, b] if a.worker().0 < PAIR_ID_LIMIT && b.worker().0 < PAIR_ID_LIMIT => {
                Slot::Two(a, b).pack()
            }
            _ => Slot::Many(arena.intern(holders.to_vec())).pack(),
        }
    }

    /// Whether `holders` would be stored inline.
    pub(crate) fn fits_inline(holders: &[Holder]) -> bool {
        match *holders {
            [] | [_] => true,
            [a, b] => a.worker().0 < PAIR_ID_LIMIT && b.worker().0 < PAIR_ID_LIMIT,
            _ => false,
        }
    }
}

/// The holders of one block, sorted by worker id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Holders<'a> {
    One(Holder),
    Two([Holder; 2]),
    /// A set in the arena (interned or private).
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

    /// Whether both are the same workers with the same tiers. Interned sets compare by
    /// address first (one set in memory has one content, and sets do not change while a
    /// reader borrows them), so consecutive blocks sharing a set cost one comparison; other
    /// sets (private copies, sets from the arenas of two shards) compare by content, without an
    /// early exit so that the loop vectorises.
    pub(crate) fn same_as(&self, other: &Holders<'_>) -> bool {
        match (self, other) {
            (Holders::One(a), Holders::One(b)) => a == b,
            (Holders::Two(a), Holders::Two(b)) => a == b,
            (Holders::Many(a), Holders::Many(b)) => {
                std::ptr::eq(*a, *b)
                    || (a.len() == b.len()
                        && a.iter().zip(*b).fold(0, |d, (x, y)| d | (x.0 ^ y.0)) == 0)
            }
            _ => false,
        }
    }
}

/// One interned holder set and the number of slots that refer to it.
#[derive(Debug, Default)]
struct Set {
    holders: Vec<Holder>,
    refs: u32,
    hash: u64,
}

/// Holder sets of two or more holders, for blocks with several holders, interned: slots whose
/// blocks have equal holder sets share one set (the blocks of a system prompt held by the same
/// workers), so that [`Holders::same_as`] compares two shared sets by address, and the fleet's
/// copies of one prompt's holder list take memory once. Sets are immutable and reference
/// counted; a changed holder set is interned anew and the old one released (copy on write).
///
/// Interning is best effort: the map holds one set per content hash, so a set whose hash is
/// taken by a different set stays private. Two slots with equal sets may then hold different
/// indexes, which only costs a lookup a content comparison.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    sets: Vec<Set>,
    free: Vec<u32>,
    interned: HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>,
}

/// One holder's share of a set's content hash (a 64-bit finalizer: the map only needs spread).
fn holder_hash(h: Holder) -> u64 {
    let mut x = h.0 ^ (h.0 >> 33);
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A hash of a holder set's content: the wrapping sum of its holders' hashes, so that a set
/// one holder away from a known set hashes in O(1) ([`Arena::apply`]); shared sets of a
/// system prompt have hundreds of holders and change one holder at a time.
fn content_hash(holders: &[Holder]) -> u64 {
    holders
        .iter()
        .fold(0u64, |acc, &h| acc.wrapping_add(holder_hash(h)))
}

/// Whether `candidate` equals `old` with `edit` applied (compared in place).
fn equals_edited(candidate: &[Holder], old: &[Holder], edit: Edit) -> bool {
    match edit {
        Edit::Replace(j, h) => {
            candidate.len() == old.len()
                && candidate[j] == h
                && candidate[..j] == old[..j]
                && candidate[j + 1..] == old[j + 1..]
        }
        Edit::Insert(j, h) => {
            candidate.len() == old.len() + 1
                && candidate[j] == h
                && candidate[..j] == old[..j]
                && candidate[j + 1..] == old[j..]
        }
        Edit::Remove(j) => {
            candidate.len() + 1 == old.len()
                && candidate[..j] == old[..j]
                && candidate[j..] == old[j + 1..]
        }
    }
}

/// A one-holder change to an arena set, at a position found with [`position`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Edit {
    /// Put this holder at this position (same worker, other tiers).
    Replace(usize, Holder),
    /// Insert this holder at this position.
    Insert(usize, Holder),
    /// Drop the holder at this position.
    Remove(usize),
}

impl Edit {
    /// Applies the edit to a holder list in place.
    fn apply_to(self, holders: &mut Vec<Holder>) {
        match self {
            Edit::Replace(j, h) => holders[j] = h,
            Edit::Insert(j, h) => holders.insert(j, h),
            Edit::Remove(j) => {
                holders.remove(j);
            }
        }
    }
}

impl Arena {
    pub(crate) fn get(&self, i: u32) -> &[Holder] {
        &self.sets[i as usize].holders
    }

    /// Set `i` with `edit` applied, as a new vector (for a result that fits inline).
    pub(crate) fn edited(&self, i: u32, edit: Edit) -> Vec<Holder> {
        let old = &self.sets[i as usize].holders;
        let mut changed = Vec::with_capacity(old.len() + 1);
        changed.extend_from_slice(old);
        edit.apply_to(&mut changed);
        changed
    }

    /// The interned set equal to set `i` with `edit` applied (two or more holders), created if
    /// needed; releases the slot's reference to `i` and returns the new set's index.
    ///
    /// Copy on write without the copy where it can: the edited set's content hash follows from
    /// `i`'s in O(1); if an equal set is interned (the next block of a system prompt that the
    /// same worker just stored), it is compared in place and shared, with no allocation; if
    /// this slot was `i`'s only reference, `i` is edited in place.
    pub(crate) fn apply(&mut self, i: u32, edit: Edit) -> u32 {
        let set = &self.sets[i as usize];
        let hash = match edit {
            Edit::Replace(j, h) => set
                .hash
                .wrapping_sub(holder_hash(set.holders[j]))
                .wrapping_add(holder_hash(h)),
            Edit::Insert(_, h) => set.hash.wrapping_add(holder_hash(h)),
            Edit::Remove(j) => set.hash.wrapping_sub(holder_hash(set.holders[j])),
        };
        let shared = self.interned.get(&hash).copied();
        if let Some(k) = shared.filter(|&k| k != i) {
            if equals_edited(&self.sets[k as usize].holders, &set.holders, edit) {
                self.sets[k as usize].refs += 1;
                self.release(i);
                return k;
            }
        }
        if set.refs == 1 {
            if self.interned.get(&set.hash) == Some(&i) {
                self.interned.remove(&set.hash);
            }
            let set = &mut self.sets[i as usize];
            edit.apply_to(&mut set.holders);
            set.hash = hash;
            debug_assert!(set.holders.len() >= 2);
            debug_assert_eq!(hash, content_hash(&set.holders));
            if shared.is_none() {
                self.interned.insert(hash, i);
            }
            return i;
        }
        let changed = self.edited(i, edit);
        let k = self.add(changed, hash, shared.is_none());
        self.release(i);
        k
    }

    /// A reference to the interned set equal to `holders` (sorted, two or more), created if
    /// needed; returns its index. Pair it with a [`Arena::release`] when the slot lets go.
    pub(crate) fn intern(&mut self, holders: Vec<Holder>) -> u32 {
        debug_assert!(holders.len() >= 2);
        let hash = content_hash(&holders);
        let shared = self.interned.get(&hash).copied();
        if let Some(i) = shared {
            let set = &mut self.sets[i as usize];
            if set.holders == holders {
                set.refs += 1;
                return i;
            }
        }
        self.add(holders, hash, shared.is_none())
    }

    /// Stores a new set with one reference, registered for interning if `register` (its hash
    /// is not taken).
    fn add(&mut self, holders: Vec<Holder>, hash: u64, register: bool) -> u32 {
        debug_assert_eq!(hash, content_hash(&holders));
        let set = Set {
            holders,
            refs: 1,
            hash,
        };
        let i = if let Some(i) = self.free.pop() {
            self.sets[i as usize] = set;
            i
        } else {
            let i = u32::try_from(self.sets.len()).expect("fewer than 2^32 multi-holder sets");
            self.sets.push(set);
            i
        };
        if register {
            self.interned.insert(hash, i);
        }
        i
    }

    /// Drops one reference to the set at `i`; the last one frees it (its heap is returned at
    /// once).
    pub(crate) fn release(&mut self, i: u32) {
        let set = &mut self.sets[i as usize];
        set.refs -= 1;
        if set.refs > 0 {
            return;
        }
        let hash = set.hash;
        *set = Set::default();
        if self.interned.get(&hash) == Some(&i) {
            self.interned.remove(&hash);
        }
        self.free.push(i);
        if self.free.len() == self.sets.len() {
            self.sets.clear();
            self.free.clear();
            if self.sets.capacity() > 1024 {
                self.sets.shrink_to_fit();
                self.free.shrink_to_fit();
                self.interned.shrink_to_fit();
            }
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.sets.capacity() * size_of::<Set>()
            + self.free.capacity() * size_of::<u32>()
            + table_bytes(self.interned.capacity(), size_of::<(u64, u32)>())
            + self
                .sets
                .iter()
                .map(|s| s.holders.capacity() * size_of::<Holder>())
                .sum::<usize>()
    }
}

/// Heap bytes of a hashbrown table with `capacity` (7/8 of its power-of-two buckets) and
/// `slot`-byte buckets: the buckets plus one control byte each and a 16-byte group tail.
pub(crate) fn table_bytes(capacity: usize, slot: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (slot + 1) + 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_core::Tier;

    #[test]
    fn slots_round_trip() {
        let m = TierMask::of(Tier::Host).with(Tier::Remote);
        for w in [0, 1, 7, u32::MAX] {
            let h = Holder::new(WorkerId(w), m);
            assert_eq!((h.worker(), h.mask()), (WorkerId(w), m));
            let s = Slot::One(h).pack();
            assert_ne!(s, 0);
            assert!(matches!(Slot::unpack(s), Slot::One(x) if x == h));
        }
        let (a, b) = (
            Holder::new(WorkerId(3), m),
            Holder::new(WorkerId((1 << 27) - 1), TierMask::of(Tier::Device)),
        );
        assert!(
            matches!(Slot::unpack(Slot::Two(a, b).pack()), Slot::Two(x, y) if x == a && y == b)
        );
        let mut arena = Arena::default();
        assert!(matches!(
            Slot::unpack(Slot::encode(&[a, b], &mut arena)),
            Slot::Two(..)
        ));
        let big = Holder::new(WorkerId(1 << 27), m);
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
    fn arena_interns_reuses_and_returns_memory() {
        let d = |w| Holder::new(WorkerId(w), TierMask::of(Tier::Device));
        let mut a = Arena::default();
        let i = a.intern(vec![d(1), d(2)]);
        let j = a.intern(vec![d(1), d(3)]);
        assert_ne!(i, j);
        assert_eq!(a.intern(vec![d(1), d(2)]), i, "equal sets share one index");
        a.release(i);
        assert_eq!(a.get(i), &[d(1), d(2)], "still referenced once");
        a.release(i);
        assert_eq!(a.intern(vec![d(4), d(5)]), i, "a freed index is reused");
        a.release(i);
        a.release(j);
        assert_eq!((a.sets.len(), a.interned.len()), (0, 0));
    }

    #[test]
    fn apply_shares_edits_in_place_or_copies() {
        let d = |w| Holder::new(WorkerId(w), TierMask::of(Tier::Device));
        let mut a = Arena::default();
        let base = vec![d(1), d(2), d(4)];
        // Two slots share `s`; editing one copies, the other keeps the old content.
        let s = a.intern(base.clone());
        assert_eq!(a.intern(base.clone()), s);
        let t = a.apply(s, Edit::Insert(2, d(3)));
        assert_ne!(t, s);
        assert_eq!(a.get(s), &base[..]);
        assert_eq!(a.get(t), &[d(1), d(2), d(3), d(4)]);
        // The same edit of the other slot finds `t` without a copy, and frees `s`.
        assert_eq!(a.apply(s, Edit::Insert(2, d(3))), t);
        assert_eq!(a.sets[t as usize].refs, 2);
        assert_eq!(a.interned.len(), 1, "s is gone");
        // A set with one reference is edited in place, and stays findable by content.
        let u = a.intern(vec![d(5), d(6), d(7)]);
        let host = Holder::new(WorkerId(6), TierMask::of(Tier::Host));
        assert_eq!(a.apply(u, Edit::Replace(1, host)), u);
        assert_eq!(a.get(u), &[d(5), host, d(7)]);
        assert_eq!(a.intern(vec![d(5), host, d(7)]), u);
        let v = a.apply(u, Edit::Remove(0));
        assert_ne!(v, u, "two references now: copy");
        assert_eq!((a.sets[u as usize].refs, a.get(v)), (1, &[host, d(7)][..]));
        for i in 0..a.sets.len() as u32 {
            let set = &a.sets[i as usize];
            if set.refs > 0 {
                assert_eq!(set.hash, content_hash(&set.holders), "set {i}");
            }
        }
    }

    #[test]
    fn a_content_hash_collision_leaves_the_set_private() {
        let d = |w| Holder::new(WorkerId(w), TierMask::of(Tier::Device));
        let mut a = Arena::default();
        let i = a.intern(vec![d(1), d(2)]);
        // Pretend another set took this content's hash first.
        let hash = content_hash(&[d(7), d(8)]);
        a.interned.insert(hash, i);
        let p = a.intern(vec![d(7), d(8)]);
        let q = a.intern(vec![d(7), d(8)]);
        assert!(p != i && q != i && p != q, "private copies");
        assert_eq!((a.get(p), a.get(q)), (&[d(7), d(8)][..], &[d(7), d(8)][..]));
        a.release(p);
        assert_eq!(
            a.interned.get(&hash),
            Some(&i),
            "a private set leaves the map alone"
        );
    }
}
