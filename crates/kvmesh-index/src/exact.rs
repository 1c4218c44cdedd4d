//! The exact index: a flat hash map from block hash to the workers holding it.
//!
//! # Design (2026-11-27)
//!
//! Peers keep a radix tree of blocks (Dynamo's `RadixTree`, SGLang's radix cache) and walk it
//! from the root. kvmesh's block hashes are *chained* (each names its whole prefix), so a tree
//! adds nothing to a lookup: `overlaps` looks each hash of the request up in one map and
//! intersects the holder sets, stopping when no worker is left. Dropping the tree removes its
//! costs: no parent/child pointers to keep consistent, nothing to re-link when events arrive
//! out of order, and no interior nodes that outlive their blocks (Dynamo's concurrent tree
//! leaves emptied nodes for a sweep every 5 minutes and grew 2.5x over a 10M-event churn run;
//! its single-threaded `RadixTree` stays flat). A removed block's entry is deleted, and the
//! maps shrink when they fall below a quarter full, so memory follows the live content.
//!
//! Measured against Dynamo's `RadixTree` (2026-11-27, `BENCH.md` beside this crate) this design
//! is *slower*: 0.36x its ingest, 2-3x its lookup latency and 1.6x its bytes per block. The
//! tree probes one hash per compressed run where this map probes one per block (a cache miss
//! each), and ingests a run per event. The per-worker sets cost half the ingest time. Known
//! fixes, not yet made: per-worker counts instead of sets, run-level `apply_batch`, skipping
//! the merge when consecutive blocks have the same holders, and positional (binary) search
//! when workers' caches are prefix-closed.
//!
//! Per block: one map entry (16-byte hash + 24-byte [`WorkerSet`](crate::worker_set), no heap
//! for a single holder) and one entry in the holder's own hash set (16 bytes), which makes
//! `Cleared` and worker removal proportional to that worker's blocks, not to the fleet's.
//!
//! Cost of a lookup: one hash-map probe per block of the matched prefix plus a linear merge of
//! the sorted holder sets; a shared system prompt held by all N workers costs O(N) per block.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use kvmesh_core::{KvEvent, PassThroughHasher, SequenceHash, SequenceHashMap, Tier};

use crate::overlap::{walk_prefix, OverlapScores, TierMask, WorkerId};
use crate::stats::IndexStats;
use crate::traits::PrefixIndex;
use crate::worker_set::{Holder, WorkerSet};

type HashSetOfBlocks = HashSet<SequenceHash, BuildHasherDefault<PassThroughHasher>>;

/// The default single-threaded index. Wrap it in [`crate::ShardedIndex`] to share it between
/// threads.
#[derive(Debug, Default)]
pub struct ExactIndex {
    blocks: SequenceHashMap<WorkerSet>,
    by_worker: HashMap<WorkerId, HashSetOfBlocks>,
    stats: IndexStats,
}

impl ExactIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tiers `worker` holds `hash` on.
    pub fn holds(&self, worker: WorkerId, hash: SequenceHash) -> TierMask {
        self.blocks
            .get(&hash)
            .map_or(TierMask::EMPTY, |s| s.get(worker))
    }

    /// The holders of one block, sorted by worker.
    pub(crate) fn holders(&self, hash: &SequenceHash) -> Option<&[Holder]> {
        self.blocks.get(hash).map(WorkerSet::as_slice)
    }

    /// Workers known to hold anything.
    pub fn workers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.by_worker.keys().copied()
    }

    /// Records that `worker` holds `hash` on `tier` (no orphan check, no event counter).
    pub(crate) fn store(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) {
        let old = match self.blocks.entry(hash) {
            Entry::Occupied(mut e) => {
                let old = e.get().get(worker);
                if old.contains(tier) {
                    self.stats.duplicate_stores += 1;
                    return;
                }
                e.get_mut().set(worker, old.with(tier));
                old
            }
            Entry::Vacant(v) => {
                v.insert(WorkerSet::One((worker, TierMask::of(tier))));
                TierMask::EMPTY
            }
        };
        if old.is_empty() {
            self.by_worker.entry(worker).or_default().insert(hash);
        }
    }

    /// Clears `tier` (or every tier, for `None`) of `worker`'s copy of `hash`. Returns whether
    /// the worker held it on that tier. Does not touch `by_worker`.
    fn unset(&mut self, worker: WorkerId, hash: SequenceHash, tier: Option<Tier>) -> Unset {
        let Some(set) = self.blocks.get_mut(&hash) else {
            return Unset::Absent;
        };
        let old = set.get(worker);
        let new = match tier {
            Some(t) if !old.contains(t) => return Unset::Absent,
            Some(t) => old.without(t),
            None => TierMask::EMPTY,
        };
        set.set(worker, new);
        if set.is_empty() {
            self.blocks.remove(&hash);
        }
        if new.is_empty() {
            Unset::Gone
        } else {
            Unset::Kept
        }
    }

    /// Drops `worker`'s copy of `hash` on `tier`, counting it if absent.
    pub(crate) fn remove(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) {
        match self.unset(worker, hash, Some(tier)) {
            Unset::Absent => self.stats.unknown_removes += 1,
            Unset::Kept => {}
            Unset::Gone => {
                if let Some(held) = self.by_worker.get_mut(&worker) {
                    held.remove(&hash);
                    if held.is_empty() {
                        self.by_worker.remove(&worker);
                    } else {
                        shrink_if_sparse(held);
                    }
                }
                shrink_if_sparse_map(&mut self.blocks);
            }
        }
    }

    /// Drops `tier` (or all tiers) of every block `worker` holds.
    pub(crate) fn clear(&mut self, worker: WorkerId, tier: Option<Tier>) {
        let Some(held) = self.by_worker.remove(&worker) else {
            return;
        };
        let mut kept = HashSetOfBlocks::default();
        for &hash in &held {
            // Blocks not on the cleared tier (Absent) or still on another (Kept) stay.
            if !matches!(self.unset(worker, hash, tier), Unset::Gone) {
                kept.insert(hash);
            }
        }
        if !kept.is_empty() {
            self.by_worker.insert(worker, kept);
        }
        shrink_if_sparse_map(&mut self.blocks);
    }
}

enum Unset {
    /// The worker did not hold the block on that tier.
    Absent,
    /// The worker still holds the block on another tier.
    Kept,
    /// The worker no longer holds the block at all.
    Gone,
}

/// Hash tables never shrink on their own; without this an index that once held a burst of
/// blocks would keep that memory forever.
fn shrink_if_sparse(set: &mut HashSetOfBlocks) {
    if set.capacity() > 64 && set.len() < set.capacity() / 4 {
        set.shrink_to(set.len() * 2);
    }
}

fn shrink_if_sparse_map<V>(map: &mut SequenceHashMap<V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

impl PrefixIndex for ExactIndex {
    fn apply(&mut self, worker: WorkerId, event: &KvEvent) {
        match *event {
            KvEvent::Stored { hash, parent, tier } => {
                self.stats.stored_events += 1;
                if let Some(p) = parent {
                    if self.holds(worker, p).is_empty() {
                        self.stats.orphan_stores += 1;
                    }
                }
                self.store(worker, hash, tier);
            }
            KvEvent::Removed { hash, tier } => {
                self.stats.removed_events += 1;
                self.remove(worker, hash, tier);
            }
            KvEvent::Cleared { tier } => {
                self.stats.cleared_events += 1;
                self.clear(worker, Some(tier));
            }
        }
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        self.stats.workers_removed += 1;
        self.clear(worker, None);
    }

    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores {
        walk_prefix(hashes, |h| self.blocks.get(h).map(WorkerSet::as_slice))
    }

    fn stats(&self) -> IndexStats {
        IndexStats {
            blocks: self.blocks.len(),
            entries: self.by_worker.values().map(|s| s.len()).sum(),
            workers: self.by_worker.len(),
            ..self.stats
        }
    }

    fn memory_usage(&self) -> usize {
        use std::mem::size_of;
        let map = self.blocks.capacity() * (size_of::<(SequenceHash, WorkerSet)>() + 1)
            + self
                .blocks
                .values()
                .map(WorkerSet::heap_bytes)
                .sum::<usize>();
        let per_worker: usize = self
            .by_worker
            .values()
            .map(|s| s.capacity() * (size_of::<SequenceHash>() + 1))
            .sum();
        map + per_worker
            + self.by_worker.capacity() * (size_of::<(WorkerId, HashSetOfBlocks)>() + 1)
    }
}
