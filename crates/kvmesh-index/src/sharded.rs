//! A thread-safe index: [`ExactIndex`] shards behind read-write locks.
//!
//! Blocks are spread over shards by the high bits of their hash (the shards' maps use the low
//! bits). A lookup takes every shard's read lock once, then walks the prefix without further
//! locking. Per-worker operations (`Cleared`, worker removal) visit every shard.
//!
//! **Batches take every lock once.** [`ShardedIndex::apply_batch_shared`] (and
//! `PrefixIndex::apply_batch`) write-locks all shards in shard order for the whole batch, where
//! [`ShardedIndex::apply_shared`] takes two locks per event (the parent's shard to count
//! orphans, the block's to store it). A run's blocks land on random shards, so a batch touches
//! nearly all of them anyway; holding them all also lets the batch prefetch buckets across
//! shards as `ExactIndex` does.
//!
//! **How many shards.** With batches, shards no longer let writers run in parallel, and each
//! one costs every lookup a lock acquisition. So one shard is the better choice for a router
//! that consumes events in batches: in the bench (2 ingest threads, Zen 4 VM, three
//! alternations, 2026-12-02) `new(1)` against `new(16)` gave churn ingest 8.5-10.2 M vs
//! 7.4-8.7 M events/s at 16 workers and 7.6-8.5 M vs 5.6-6.3 M at 256, lookup p50 0.80-1.09 vs
//! 1.36-1.50 us and 1.95-2.94 vs 3.46-4.46 us. More shards pay off only when many threads apply
//! single events with `apply_shared`.
//!
//! This is the "sync core, thin concurrent shell" shape: the data structure is the
//! single-threaded [`ExactIndex`]; only this file knows about threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use kvmesh_core::{KvEvent, SequenceHash};

use crate::exact::{event_hash, ExactIndex, LOOKUP_PREFETCH_AHEAD, PREFETCH_AHEAD};
use crate::overlap::{walk_prefix, OverlapScores, WorkerId};
use crate::stats::IndexStats;
use crate::traits::PrefixIndex;

/// An [`ExactIndex`] split into lock-protected shards; share it with `Arc`.
#[derive(Debug)]
pub struct ShardedIndex {
    shards: Box<[RwLock<ExactIndex>]>,
    stored_events: AtomicU64,
    orphan_stores: AtomicU64,
    cleared_events: AtomicU64,
    workers_removed: AtomicU64,
}

impl ShardedIndex {
    /// An empty index with `shards` shards (rounded up to a power of two, at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        ShardedIndex {
            shards: (0..n).map(|_| RwLock::new(ExactIndex::new())).collect(),
            stored_events: AtomicU64::new(0),
            orphan_stores: AtomicU64::new(0),
            cleared_events: AtomicU64::new(0),
            workers_removed: AtomicU64::new(0),
        }
    }

    /// The number of shards (a power of two).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard_of(&self, hash: &SequenceHash) -> usize {
        ((hash.as_u128() >> 96) as usize) & (self.shards.len() - 1)
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, ExactIndex> {
        // A panic while holding the lock cannot leave an ExactIndex half-updated in a way that
        // breaks memory safety; keep serving.
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, ExactIndex> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one event from `worker`.
    pub fn apply_shared(&self, worker: WorkerId, event: &KvEvent) {
        match *event {
            KvEvent::Stored { hash, parent, tier } => {
                self.stored_events.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = parent {
                    if self.read(self.shard_of(&p)).holds(worker, p).is_empty() {
                        self.orphan_stores.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.write(self.shard_of(&hash)).store(worker, hash, tier);
            }
            KvEvent::Removed { hash, .. } => {
                // Counted by the shard.
                self.write(self.shard_of(&hash)).apply(worker, event);
            }
            KvEvent::Cleared { tier } => {
                self.cleared_events.fetch_add(1, Ordering::Relaxed);
                for i in 0..self.shards.len() {
                    self.write(i).clear(worker, Some(tier));
                }
            }
        }
    }

    /// Applies a batch of events from `worker`, in order, as one atomic step: it takes every
    /// shard's write lock once (in shard order, so batches and lookups cannot deadlock) instead
    /// of two locks per event, and prefetches table buckets across shards as
    /// [`ExactIndex`]'s own batches do. Lookups wait for the whole batch.
    pub fn apply_batch_shared(&self, worker: WorkerId, events: &[KvEvent]) {
        if let [event] = events {
            return self.apply_shared(worker, event);
        }
        let mut shards: Vec<_> = (0..self.shards.len()).map(|i| self.write(i)).collect();
        let shard = |h: &SequenceHash| self.shard_of(h);
        let prefetch = |shards: &[RwLockWriteGuard<'_, ExactIndex>], n: usize| {
            let (e, previous) = (&events[n], n.checked_sub(1).map(|p| &events[p]));
            if let Some(h) = event_hash(e) {
                shards[shard(&h)].prefetch_event(e, previous);
            }
        };
        let (mut stored, mut orphans, mut cleared) = (0, 0, 0);
        // A block the worker is known to hold: the one the previous event stored.
        let mut last_stored: Option<SequenceHash> = None;
        for n in 0..events.len().min(PREFETCH_AHEAD) {
            prefetch(&shards, n);
        }
        for (n, event) in events.iter().enumerate() {
            if n + PREFETCH_AHEAD < events.len() {
                prefetch(&shards, n + PREFETCH_AHEAD);
            }
            match *event {
                KvEvent::Stored { hash, parent, tier } => {
                    stored += 1;
                    if let Some(p) = parent {
                        if last_stored != Some(p) && shards[shard(&p)].holds(worker, p).is_empty() {
                            orphans += 1;
                        }
                    }
                    shards[shard(&hash)].store(worker, hash, tier);
                    last_stored = Some(hash);
                }
                KvEvent::Removed { hash, .. } => {
                    // Counted by the shard.
                    shards[shard(&hash)].apply(worker, event);
                    last_stored = None;
                }
                KvEvent::Cleared { tier } => {
                    cleared += 1;
                    for s in shards.iter_mut() {
                        s.clear(worker, Some(tier));
                    }
                    last_stored = None;
                }
            }
        }
        drop(shards);
        self.stored_events.fetch_add(stored, Ordering::Relaxed);
        self.orphan_stores.fetch_add(orphans, Ordering::Relaxed);
        self.cleared_events.fetch_add(cleared, Ordering::Relaxed);
    }

    /// Forgets `worker`.
    pub fn remove_worker_shared(&self, worker: WorkerId) {
        self.workers_removed.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.shards.len() {
            self.write(i).clear(worker, None);
        }
    }

    /// Per worker, the reusable leading blocks of `hashes`.
    pub fn overlaps_shared(&self, hashes: &[SequenceHash]) -> OverlapScores {
        let guards: Vec<_> = (0..self.shards.len()).map(|i| self.read(i)).collect();
        walk_prefix(
            hashes,
            LOOKUP_PREFETCH_AHEAD,
            |h| guards[self.shard_of(h)].prefetch(h),
            |h| {
                let s = self.shard_of(h);
                guards[s].slot(h).map(|v| (v, s as u32))
            },
            |v, s| guards[s as usize].resolve(v),
        )
    }

    /// Counters and sizes, summed over shards.
    pub fn stats_shared(&self) -> IndexStats {
        let mut total = IndexStats::default();
        let mut workers = std::collections::HashSet::new();
        for i in 0..self.shards.len() {
            let shard = self.read(i);
            total.merge(&shard.stats());
            workers.extend(shard.workers());
        }
        total.workers = workers.len();
        total.stored_events = self.stored_events.load(Ordering::Relaxed);
        total.orphan_stores = self.orphan_stores.load(Ordering::Relaxed);
        total.cleared_events = self.cleared_events.load(Ordering::Relaxed);
        total.workers_removed = self.workers_removed.load(Ordering::Relaxed);
        total
    }
}

impl PrefixIndex for ShardedIndex {
    fn apply(&mut self, worker: WorkerId, event: &KvEvent) {
        self.apply_shared(worker, event);
    }

    fn apply_batch(&mut self, worker: WorkerId, events: &[KvEvent]) {
        self.apply_batch_shared(worker, events);
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        self.remove_worker_shared(worker);
    }

    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores {
        self.overlaps_shared(hashes)
    }

    fn stats(&self) -> IndexStats {
        self.stats_shared()
    }

    fn memory_usage(&self) -> usize {
        (0..self.shards.len())
            .map(|i| self.read(i).memory_usage())
            .sum()
    }
}
