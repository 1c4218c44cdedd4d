//! What an index answers: per worker, how many leading blocks of a request it holds, by tier.

use kvmesh_core::{SequenceHash, Tier};

use crate::worker_set::Holders;

/// A worker's id inside the index. The router maps engine instance ids (and data-parallel
/// ranks) onto these dense ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

/// The set of tiers one worker holds one block on, as bits (bit `i` = `Tier::ALL[i]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TierMask(u8);

impl TierMask {
    /// No tier.
    pub const EMPTY: TierMask = TierMask(0);

    /// The mask holding only `tier`.
    pub const fn of(tier: Tier) -> Self {
        TierMask(1 << tier as u8)
    }

    /// Whether `tier` is in the mask.
    pub const fn contains(self, tier: Tier) -> bool {
        self.0 & (1 << tier as u8) != 0
    }

    /// The mask with `tier` added.
    pub const fn with(self, tier: Tier) -> Self {
        TierMask(self.0 | 1 << tier as u8)
    }

    /// The mask with `tier` removed.
    pub const fn without(self, tier: Tier) -> Self {
        TierMask(self.0 & !(1 << tier as u8))
    }

    /// Whether no tier is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits.
    pub(crate) const fn bits(self) -> u8 {
        self.0
    }

    /// A mask from raw bits.
    pub(crate) const fn from_bits(bits: u8) -> Self {
        TierMask(bits)
    }

    /// The fastest tier in the mask (`Device` before `Host` before `Disk` before `Remote`).
    pub fn fastest(self) -> Option<Tier> {
        (self.0 != 0).then(|| Tier::ALL[self.0.trailing_zeros() as usize])
    }
}

/// Leading blocks of a request a worker can reuse, split by the fastest tier each one is on.
///
/// The blocks counted form one unbroken prefix: block `i` counts only if the worker holds
/// blocks `0..i` on some tier. `total()` is that prefix's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierCounts(pub [u32; 4]);

impl TierCounts {
    /// Blocks whose fastest copy is on `tier`.
    pub fn on(&self, tier: Tier) -> u32 {
        self.0[tier as usize]
    }

    /// The length of the reusable prefix, in blocks, any tier.
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    /// One block on `mask`'s fastest tier (none for an empty mask).
    ///
    /// Read from a table rather than built by incrementing a zeroed value: the increment is a
    /// 4-byte store that the 16-byte copy into the scores cannot forward from, which stalled
    /// the start of every lookup once per holder of the first block (measured 2026-12-02 at
    /// 256 workers, where the first block has ~200 holders).
    pub(crate) fn unit(mask: TierMask) -> Self {
        const UNITS: [[u32; 4]; 9] = {
            let mut u = [[0; 4]; 9];
            let mut t = 0;
            while t < 4 {
                u[t][t] = 1;
                t += 1;
            }
            u
        };
        // Bit `i` is `Tier::ALL[i]`, whose index in the counts is `i`; an empty mask gives 8.
        TierCounts(UNITS[mask.bits().trailing_zeros() as usize])
    }

    pub(crate) fn add(&mut self, mask: TierMask) {
        self.add_n(mask, 1);
    }

    pub(crate) fn add_n(&mut self, mask: TierMask, n: u32) {
        // As in `unit`: the trailing zeros of the mask index the fastest tier (8: none).
        if let Some(c) = self.0.get_mut(mask.bits().trailing_zeros() as usize) {
            *c += n;
        }
    }
}

/// The answer of [`crate::PrefixIndex::overlaps`]: every worker holding at least the first
/// block, with its [`TierCounts`], sorted by worker id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlapScores {
    pub(crate) scores: Vec<(WorkerId, TierCounts)>,
}

impl OverlapScores {
    /// The counts for one worker (all zero when it holds nothing of the prefix).
    pub fn get(&self, worker: WorkerId) -> TierCounts {
        self.scores
            .binary_search_by_key(&worker, |&(w, _)| w)
            .map(|i| self.scores[i].1)
            .unwrap_or_default()
    }

    /// Workers with a non-empty prefix, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerId, TierCounts)> + '_ {
        self.scores.iter().copied()
    }

    /// Number of workers with a non-empty prefix.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether no worker holds the first block.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// The longest prefix any worker holds, in blocks.
    pub fn best(&self) -> u32 {
        self.scores
            .iter()
            .map(|(_, c)| c.total())
            .max()
            .unwrap_or(0)
    }

    /// Builds scores from unsorted pairs (for reference implementations and tests).
    pub fn from_pairs(mut pairs: Vec<(WorkerId, TierCounts)>) -> Self {
        pairs.retain(|(_, c)| c.total() > 0);
        pairs.sort_by_key(|&(w, _)| w);
        OverlapScores { scores: pairs }
    }
}

/// The walk's inner loop: from `from` on, prefetching `ahead` blocks ahead, counts the blocks
/// whose slot is `last`; returns that count and the slot of the block after them (`None` if
/// it is absent or `hashes` ended).
///
/// Not inlined, so each index gets it as a function of its own: this loop is the walk's
/// common case (98% of blocks repeat their predecessor's slot in the bench's 16-worker
/// lookups) and then holds only a few values in registers. Inside the walk's big loop the
/// compiler kept the loop counter and table pointers on the stack, and lookups ran slower
/// (2026-12-02, Zen 4, four alternating runs: 16-worker lookup p50 0.50-0.59x -> 0.46-0.52x
/// the tree's, better in every pair, as in three runs of a first version; 256 workers equal).
/// The walk passes its closures by value (they are `Copy`): passed by reference, the lookup
/// was compiled as a call per block.
#[inline(never)]
fn scan_repeats(
    hashes: &[SequenceHash],
    from: usize,
    last: (u64, u32),
    ahead: usize,
    prefetch: impl Fn(&SequenceHash),
    lookup: impl Fn(&SequenceHash) -> Option<(u64, u32)>,
) -> (usize, Option<(u64, u32)>) {
    let mut i = from;
    while let Some(h) = hashes.get(i) {
        if let Some(a) = hashes.get(i + ahead) {
            prefetch(a);
        }
        match lookup(h) {
            Some(slot) if slot == last => i += 1,
            other => return (i - from, other),
        }
    }
    (i - from, None)
}

/// Workers a lookup tracks without allocating.
const ACTIVE_INLINE: usize = 32;

/// Walks `hashes` from the first block, intersecting the holder sets that `lookup` returns
/// (each sorted by worker), and counts each worker's unbroken prefix by fastest tier.
///
/// A block whose holders (workers and tiers) equal those of the last merged block cannot
/// change the active set, so it is only counted, in bulk at the next merge: the blocks of a
/// shared prefix held by many workers cost one comparison each instead of a merge.
///
/// `lookup` returns a block's packed slot (`worker_set.rs`) and the id of the arena its
/// holder set lives in (the shard, for `ShardedIndex`); `resolve` turns those into the
/// holders. A block whose slot and arena equal the last block's has the same holders (one
/// inline value, or one interned set), so it is counted without touching the arena at all;
/// otherwise the holders are compared ([`Holders::same_as`]) before they are merged.
///
/// `prefetch` starts loading a block's table bucket; the walk calls it `ahead` blocks before
/// it looks the block up, so that the misses of the blocks ahead overlap with this one's work.
/// Runs of blocks with the last block's slot are counted by [`scan_repeats`].
pub(crate) fn walk_prefix<'a>(
    hashes: &[SequenceHash],
    ahead: usize,
    prefetch: impl Fn(&SequenceHash) + Copy,
    lookup: impl Fn(&SequenceHash) -> Option<(u64, u32)> + Copy,
    resolve: impl Fn(u64, u32) -> Holders<'a>,
) -> OverlapScores {
    hashes.iter().take(ahead).for_each(prefetch);
    let Some(mut last_slot) = hashes.first().and_then(lookup) else {
        return OverlapScores::default();
    };
    let mut last = resolve(last_slot.0, last_slot.1);
    // `scores`: every holder of the first block, sorted by id, with its counts; it is the
    // answer, already sorted. `active`: the indexes in `scores` of the workers holding every
    // block so far (so also sorted by id), with their tiers in `last`.
    let mut scores: Vec<(WorkerId, TierCounts)> = last
        .as_slice()
        .iter()
        .map(|h| (h.worker(), TierCounts::unit(h.mask())))
        .collect();
    // On the stack for the usual handful of holders (no allocation per lookup).
    let first = scores.len();
    let mut inline = [(0u32, TierMask::EMPTY); ACTIVE_INLINE];
    let mut spilled = Vec::new();
    let active_buf: &mut [(u32, TierMask)] = if first <= ACTIVE_INLINE {
        &mut inline[..first]
    } else {
        spilled.resize(first, (0u32, TierMask::EMPTY));
        &mut spilled
    };
    for (i, (a, h)) in active_buf.iter_mut().zip(last.as_slice()).enumerate() {
        *a = (i as u32, h.mask());
    }
    // Workers still active: the first `live` of `active_buf`.
    let mut live = first;
    // Blocks after `last` with the same holders, not yet counted.
    let mut repeats = 0u32;
    // The next block to look up.
    let mut next = 1;
    loop {
        let (same, ended_by) = scan_repeats(hashes, next, last_slot, ahead, prefetch, lookup);
        repeats += same as u32;
        next += same + 1;
        let Some(slot) = ended_by else {
            break;
        };
        last_slot = slot;
        let holders = resolve(slot.0, slot.1);
        if holders.same_as(&last) {
            repeats += 1;
            continue;
        }
        let hs = holders.as_slice();
        let mut j = 0;
        let mut kept = 0;
        for a in 0..live {
            let (i, mask) = active_buf[a];
            let (w, counts) = &mut scores[i as usize];
            counts.add_n(mask, repeats);
            while j < hs.len() && hs[j].worker() < *w {
                j += 1;
            }
            if j < hs.len() && hs[j].worker() == *w {
                let mask = hs[j].mask();
                counts.add(mask);
                active_buf[kept] = (i, mask);
                kept += 1;
            }
        }
        live = kept;
        repeats = 0;
        last = holders;
        if live == 0 {
            break;
        }
    }
    for &(i, mask) in &active_buf[..live] {
        scores[i as usize].1.add_n(mask, repeats);
    }
    OverlapScores { scores }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_mask_fastest() {
        let m = TierMask::of(Tier::Disk).with(Tier::Host);
        assert_eq!(m.fastest(), Some(Tier::Host));
        assert_eq!(m.without(Tier::Host).fastest(), Some(Tier::Disk));
        assert_eq!(TierMask::EMPTY.fastest(), None);
        assert!(m.contains(Tier::Disk) && !m.contains(Tier::Device));
    }
}
