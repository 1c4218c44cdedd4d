//! The exact index: a flat hash map from block hash to the workers holding it.
//!
//! # Design (2026-11-27, revised 2026-11-28)
//!
//! Peers keep a radix tree of blocks (Dynamo's `RadixTree`, SGLang's radix cache) and walk it
//! from the root. kvmesh's block hashes are *chained* (each names its whole prefix), so a tree
//! adds nothing to a lookup: `overlaps` looks each hash of the request up in one map and
//! intersects the holder sets, stopping when no worker is left. Without a tree there are no
//! parent/child pointers to keep consistent, nothing to re-link when events arrive out of
//! order, and no interior nodes that outlive their blocks. A removed block's slot is deleted and
//! the map shrinks when it falls below a quarter full, so memory follows the live content.
//!
//! **One 16-byte slot per block.** The table maps the *low 64 bits* of the block's
//! [`SequenceHash`] to a packed `u64`: one inline holder (worker id, tier mask), two inline
//! holders (worker ids below 2^27, 4-bit masks), or the index of a sorted holder set in a
//! side arena for blocks held by three or more workers (shared system prompts) or by
//! workers with larger ids. Arena sets are interned: blocks with equal holder sets share one
//! (`worker_set.rs`). Keying by 64 bits is safe here because the index is a routing hint: two
//! live blocks whose hashes share their low 64 bits would be merged into one entry, which can
//! only mis-score a route (and skew `stats().blocks`); a worker's own block pool compares the
//! full 128-bit hashes before it reuses any KV. With N live blocks the chance that any two
//! collide is about N^2 / 2^65: 3e-8 at 1M blocks, 3e-5 at 32M. Dynamo keys its tree by 64-bit
//! hashes too.
//!
//! **No per-worker block sets.** Each worker has only a count of the blocks it holds, so a
//! store or remove touches one table slot. The price: `Cleared` and `remove_worker` scan the
//! whole table, O(blocks in the index) instead of O(blocks of that worker). Both are rare
//! (a worker's cache reset, a worker leaving); at 1M blocks a scan takes a few milliseconds.
//!
//! **Runs.** `apply_batch` skips the orphan check for a `Stored` whose parent is the block the
//! previous event of the batch stored (engines publish a prefill as one chained run), and
//! updates the worker's count once per batch.
//!
//! **Table.** `Table` (`table.rs`) is linear probing over 16-byte `(key, value)` buckets:
//! one cache line per probe, where hashbrown's separate control bytes cost two dependent
//! misses. A store probes once (`search`, then `insert_at` into the vacancy it found).
//!
//! **Overlapping misses.** On a large index every probe is a cache miss, and a miss that a
//! branch depends on stalls everything after it. Both `apply_batch` and lookups therefore
//! prefetch the home buckets of the events 16 ahead (request blocks 8 ahead) of the one they are
//! processing (`prefetch.rs`, the crate's one `unsafe` call: a prefetch instruction retires at
//! once, so the misses of the window fly while the core works on warm lines). Until 2026-12-02
//! the crate forbade `unsafe` and read the buckets of a group of 16 instead; those loads held
//! the core's reorder window until they completed, so the groups' misses overlapped with each
//! other but not with the work. One quick run each (Zen 5 host): churn ingest 1.75x -> 2.24x
//! the tree's at 16 workers and 1.58x -> 1.90x at 256; lookup p50 1.05x -> 0.63x and 0.37x ->
//! 0.31x. Distances of 8, 24 and 32 measured within noise of 16 there; on a Zen 4 host, 8 is
//! better for lookups, whose blocks prefetched past the matched prefix are wasted. Batches are
//! the caller's: the window cannot reach past the end of one `apply_batch`, so each run still
//! waits once for its first bucket. Ingest also prefetches the next line when a home bucket
//! ends its line (stores probe into it, removals shift it); lookups do not, where the extra
//! lines measured slower.
//!
//! Measured against Dynamo 1.6.1's `RadixTree` (2026-12-02, runs O-Q in `BENCH.md` beside
//! this crate, a Zen 4 VM with 2 vCPUs; shared, so ratios move by ~10% between runs): churn
//! ingest 2.8-3.2x / 2.3-2.5x the tree's (16 / 256 workers), lookup p50 0.51-0.56x /
//! 0.17-0.20x, 25 / 21 bytes per (worker, block) entry against the tree's 76 / 77. The
//! 16-worker lookup misses its 0.5x target by a few percent (0.47-0.56x in full runs on a Zen
//! 5 earlier). It runs at 1.00-1.04x the bench's random-line floor, the time to read the same
//! lines with nothing else, so it is bound by misses in flight: only fewer lines per lookup
//! would move it.
//!
//! **Tried and dropped: a run layout (2026-12-02).** Entries in a flat array where a block
//! stored after its parent takes the next entry when it is free (a doubly-linked free list
//! through the vacant entries, compaction when a quarter is vacant), and a table of 8-byte
//! fingerprint buckets pointing into it, so that a lookup reads a chain's entries in order and
//! probes only where a run ends. On the bench's churn, runs fragmented: freed space comes in
//! the sizes of evicted runs, so 29% of a lookup's blocks still needed a probe, and a probe
//! became two dependent misses (bucket, then entry). Lookup p50 went from 1.0 to 1.4-1.7 us
//! and ingest fell 20-40%. A run-length-aware allocator (runs are known per batch) would cut
//! the fragmentation, but the dependent second miss at every run boundary remains.
//!
//! **Tried and dropped: runs (2026-12-02).** Chains of one-holder blocks kept as key vectors,
//! with run id and offset in the slot's spare bits, so a lookup compares the request with a
//! run's keys instead of probing each member; any change to a member cut its run. Exact, and
//! it skipped half of the probed blocks, but lookups did not get faster (the skipped probes
//! were the warm ones; each run cost a dependent miss), ingest lost 30% and memory grew 25%
//! (`BENCH.md`, runs K and L).
//!
//! **Not done: lookups with fewer probes than blocks.** A lookup still probes every block of
//! the matched prefix; the tree probes one node per compressed edge. Skipping blocks (galloping
//! over the request, trusting that a worker holding block i holds 0..i) needs a proof that the
//! worker holds the skipped blocks, and nothing at block i can give it exactly: a flag "this
//! worker held my parent, recursively, when I was stored" is broken by a later removal of an
//! ancestor, and finding the descendants to clear needs child counts per (worker, block),
//! which in turn need each block's parent when a `Removed` event (which names no parent)
//! arrives: 8 more bytes per block, over the 0.5x memory target at 16 workers, plus a second
//! random access per event, which would give back the ingest target. It would also make results
//! depend on `Stored` events naming their true parent, which the reference test does not
//! assume. Storing the chain's hashes with the proof (exact without trust) is a compressed tree.
//!
//! Cost of a lookup: one hash-map probe per block of the matched prefix (a cache miss each on a
//! large index, prefetched 8 blocks ahead) plus a linear merge of the sorted holder sets, skipped
//! when a block's packed slot equals the block before it (one integer comparison: the same
//! inline holders or the same interned set, whose holders are then never read).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use kvmesh_core::{KvEvent, PassThroughHasher, SequenceHash, Tier};

use crate::overlap::{walk_prefix, OverlapScores, TierMask, WorkerId};
use crate::stats::IndexStats;
use crate::table::Table;
use crate::traits::PrefixIndex;
use crate::worker_set::{position, table_bytes, Arena, Edit, Holder, Holders, Slot};

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<PassThroughHasher>>;

/// The table key of a block: the low 64 bits of its hash (see the module doc).
fn key(hash: SequenceHash) -> u64 {
    hash.as_u128() as u64
}

/// How many events ahead of the one being processed `apply_batch` prefetches table buckets.
pub(crate) const PREFETCH_AHEAD: usize = 16;

/// How many request blocks ahead of the one being looked up `overlaps` prefetches table
/// buckets. Shorter than for events: the blocks prefetched past the end of the matched prefix
/// are wasted misses, and a lookup's prefix is short (tens of blocks). On the Zen 4 host of
/// 2026-12-02, 8 beat 16 in six of six alternating runs at 16 workers (0.48-0.60x against
/// 0.50-0.63x the tree's p50) and tied at 256; 6 and 12 measured between the two.
pub(crate) const LOOKUP_PREFETCH_AHEAD: usize = 8;

/// The default single-threaded index. Wrap it in [`crate::ShardedIndex`] to share it between
/// threads.
#[derive(Debug, Default)]
pub struct ExactIndex {
    /// Block key to packed [`Slot`].
    blocks: Table,
    /// Holder sets of blocks with two or more holders.
    arena: Arena,
    /// Blocks held per worker; workers holding nothing are absent.
    counts: FastMap<WorkerId, usize>,
    stats: IndexStats,
}

impl ExactIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tiers `worker` holds `hash` on.
    pub fn holds(&self, worker: WorkerId, hash: SequenceHash) -> TierMask {
        self.holders(&hash).map_or(TierMask::EMPTY, |hs| {
            let s = hs.as_slice();
            position(s, worker).map_or(TierMask::EMPTY, |j| s[j].mask())
        })
    }

    /// The holders of one block, sorted by worker.
    #[inline]
    pub(crate) fn holders(&self, hash: &SequenceHash) -> Option<Holders<'_>> {
        self.slot(hash).map(|v| self.resolve(v))
    }

    /// The packed [`Slot`] of one block.
    #[inline]
    pub(crate) fn slot(&self, hash: &SequenceHash) -> Option<u64> {
        self.blocks.get(key(*hash))
    }

    /// The holders a packed [`Slot`] of this index stands for.
    #[inline]
    pub(crate) fn resolve(&self, slot: u64) -> Holders<'_> {
        match Slot::unpack(slot) {
            Slot::One(h) => Holders::One(h),
            Slot::Two(a, b) => Holders::Two([a, b]),
            Slot::Many(i) => Holders::Many(self.arena.get(i)),
        }
    }

    /// Starts loading the table bucket of `hash` into cache.
    #[inline]
    pub(crate) fn prefetch(&self, hash: &SequenceHash) {
        self.blocks.prefetch(key(*hash));
    }

    /// Starts loading the table buckets an event will probe: its block's, and its parent's
    /// unless the event before it stored the parent (a run).
    #[inline]
    pub(crate) fn prefetch_event(&self, event: &KvEvent, previous: Option<&KvEvent>) {
        match event {
            KvEvent::Stored { hash, parent, .. } => {
                if let Some(p) = parent {
                    if previous.and_then(event_hash) != Some(*p) {
                        self.blocks.prefetch_for_update(key(*p));
                    }
                }
                self.blocks.prefetch_for_update(key(*hash));
            }
            KvEvent::Removed { hash, .. } => self.blocks.prefetch_for_update(key(*hash)),
            KvEvent::Cleared { .. } => {}
        }
    }

    /// Workers known to hold anything.
    pub fn workers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.counts.keys().copied()
    }

    /// Records that `worker` holds `hash` on `tier` (no orphan check, no event counter).
    pub(crate) fn store(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) {
        if self.insert(worker, hash, tier) {
            self.add_count(worker, 1);
        }
    }

    /// Adds `tier` to `worker`'s copy of `hash`; returns whether the worker did not hold the
    /// block before (a new entry). Counts duplicates; leaves `counts` alone.
    fn insert(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) -> bool {
        let add = TierMask::of(tier);
        let k = key(hash);
        match self.blocks.search(k) {
            Err(vacancy) => {
                self.blocks
                    .insert_at(vacancy, k, Slot::One(Holder::new(worker, add)).pack());
                true
            }
            Ok(slot) => {
                let mut buf = [Holder::new(WorkerId(0), TierMask::EMPTY); 3];
                let n = match Slot::unpack(*self.blocks.value_mut(slot)) {
                    Slot::One(h) => {
                        buf[0] = h;
                        1
                    }
                    Slot::Two(h0, h1) => {
                        buf[0] = h0;
                        buf[1] = h1;
                        2
                    }
                    Slot::Many(i) => {
                        // Interned sets are shared: change a copy.
                        let set = self.arena.get(i);
                        let (edit, new) = match position(set, worker) {
                            Ok(j) if set[j].mask().contains(tier) => {
                                self.stats.duplicate_stores += 1;
                                return false;
                            }
                            Ok(j) => (
                                Edit::Replace(j, set[j].with_mask(set[j].mask().with(tier))),
                                false,
                            ),
                            Err(j) => (Edit::Insert(j, Holder::new(worker, add)), true),
                        };
                        *self.blocks.value_mut(slot) = Slot::Many(self.arena.apply(i, edit)).pack();
                        return new;
                    }
                };
                let (n, new) = match position(&buf[..n], worker) {
                    Ok(j) => {
                        if buf[j].mask().contains(tier) {
                            self.stats.duplicate_stores += 1;
                            return false;
                        }
                        buf[j] = buf[j].with_mask(buf[j].mask().with(tier));
                        (n, false)
                    }
                    Err(j) => {
                        buf.copy_within(j..n, j + 1);
                        buf[j] = Holder::new(worker, add);
                        (n + 1, true)
                    }
                };
                *self.blocks.value_mut(slot) = Slot::encode(&buf[..n], &mut self.arena);
                new
            }
        }
    }

    /// Drops `worker`'s copy of `hash` on `tier`; returns whether the worker no longer holds
    /// the block (an entry gone). Counts unknown removes; leaves `counts` alone.
    fn take(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) -> bool {
        let Some(slot) = self.blocks.find(key(hash)) else {
            self.stats.unknown_removes += 1;
            return false;
        };
        let v = self.blocks.value_mut(slot);
        match unset(v, &mut self.arena, worker, Some(tier)) {
            Unset::Absent => {
                self.stats.unknown_removes += 1;
                false
            }
            Unset::Kept => false,
            Unset::Gone => {
                if *v == 0 {
                    self.blocks.remove_at(slot);
                }
                true
            }
        }
    }

    /// Drops `worker`'s copy of `hash` on `tier`, counting it if absent.
    pub(crate) fn remove(&mut self, worker: WorkerId, hash: SequenceHash, tier: Tier) {
        if self.take(worker, hash, tier) {
            self.add_count(worker, -1);
        }
    }

    fn add_count(&mut self, worker: WorkerId, delta: isize) {
        if delta == 0 {
            return;
        }
        let c = self.counts.entry(worker).or_insert(0);
        *c = c.wrapping_add_signed(delta);
        if *c == 0 {
            self.counts.remove(&worker);
        }
    }

    /// Drops `tier` (or all tiers) of every block `worker` holds: a scan of the whole table.
    pub(crate) fn clear(&mut self, worker: WorkerId, tier: Option<Tier>) {
        if !self.counts.contains_key(&worker) {
            return;
        }
        let mut gone = 0usize;
        let arena = &mut self.arena;
        self.blocks.retain_mut(|v| {
            if let Unset::Gone = unset(v, arena, worker, tier) {
                gone += 1;
            }
        });
        self.add_count(worker, -(gone as isize));
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

/// Clears `tier` (or every tier, for `None`) of `worker`'s copy in one packed slot. Sets the
/// slot to 0 when no holder is left.
fn unset(v: &mut u64, arena: &mut Arena, worker: WorkerId, tier: Option<Tier>) -> Unset {
    let cleared = |m: TierMask| match tier {
        Some(t) if !m.contains(t) => None,
        Some(t) => Some(m.without(t)),
        None => Some(TierMask::EMPTY),
    };
    let mut buf = [Holder::new(WorkerId(0), TierMask::EMPTY); 2];
    let n = match Slot::unpack(*v) {
        Slot::One(h) => {
            buf[0] = h;
            1
        }
        Slot::Two(h0, h1) => {
            buf[0] = h0;
            buf[1] = h1;
            2
        }
        Slot::Many(i) => {
            // Interned sets are shared: change a copy.
            let set = arena.get(i);
            let Ok(j) = position(set, worker) else {
                return Unset::Absent;
            };
            let Some(new) = cleared(set[j].mask()) else {
                return Unset::Absent;
            };
            let (edit, result) = if new.is_empty() {
                (Edit::Remove(j), Unset::Gone)
            } else {
                (Edit::Replace(j, set[j].with_mask(new)), Unset::Kept)
            };
            // A set shrinking to one or two holders may fit inline again (one always does).
            let changed = (set.len() <= 3 && matches!(edit, Edit::Remove(_)))
                .then(|| arena.edited(i, edit))
                .filter(|c| Slot::fits_inline(c));
            *v = match changed {
                Some(changed) => {
                    arena.release(i);
                    Slot::encode(&changed, arena)
                }
                None => Slot::Many(arena.apply(i, edit)).pack(),
            };
            return result;
        }
    };
    let Ok(j) = position(&buf[..n], worker) else {
        return Unset::Absent;
    };
    let Some(new) = cleared(buf[j].mask()) else {
        return Unset::Absent;
    };
    let (n, result) = if new.is_empty() {
        buf.copy_within(j + 1..n, j);
        (n - 1, Unset::Gone)
    } else {
        buf[j] = buf[j].with_mask(new);
        (n, Unset::Kept)
    };
    *v = Slot::encode(&buf[..n], arena);
    result
}

/// The block a `Stored` or `Removed` event names.
pub(crate) fn event_hash(e: &KvEvent) -> Option<SequenceHash> {
    match *e {
        KvEvent::Stored { hash, .. } | KvEvent::Removed { hash, .. } => Some(hash),
        KvEvent::Cleared { .. } => None,
    }
}

impl PrefixIndex for ExactIndex {
    fn apply(&mut self, worker: WorkerId, event: &KvEvent) {
        self.apply_batch(worker, std::slice::from_ref(event));
    }

    fn apply_batch(&mut self, worker: WorkerId, events: &[KvEvent]) {
        // Net change of the worker's block count, applied once at the end (or before a clear).
        let mut delta = 0isize;
        // A block the worker is known to hold: the one the previous event stored.
        let mut last_stored: Option<SequenceHash> = None;
        // Each event's probe is a cache miss on a large table: start those misses early.
        for (n, e) in events.iter().enumerate().take(PREFETCH_AHEAD) {
            self.prefetch_event(e, n.checked_sub(1).map(|p| &events[p]));
        }
        for (n, event) in events.iter().enumerate() {
            if let Some(e) = events.get(n + PREFETCH_AHEAD) {
                self.prefetch_event(e, Some(&events[n + PREFETCH_AHEAD - 1]));
            }
            match *event {
                KvEvent::Stored { hash, parent, tier } => {
                    self.stats.stored_events += 1;
                    if let Some(p) = parent {
                        if last_stored != Some(p) && self.holds(worker, p).is_empty() {
                            self.stats.orphan_stores += 1;
                        }
                    }
                    if self.insert(worker, hash, tier) {
                        delta += 1;
                    }
                    last_stored = Some(hash);
                }
                KvEvent::Removed { hash, tier } => {
                    self.stats.removed_events += 1;
                    if self.take(worker, hash, tier) {
                        delta -= 1;
                    }
                    last_stored = None;
                }
                KvEvent::Cleared { tier } => {
                    self.stats.cleared_events += 1;
                    self.add_count(worker, delta);
                    delta = 0;
                    self.clear(worker, Some(tier));
                    last_stored = None;
                }
            }
        }
        self.add_count(worker, delta);
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        self.stats.workers_removed += 1;
        self.clear(worker, None);
    }

    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores {
        walk_prefix(
            hashes,
            LOOKUP_PREFETCH_AHEAD,
            |h| self.prefetch(h),
            |h| self.slot(h).map(|v| (v, 0)),
            |v, _| self.resolve(v),
        )
    }

    fn stats(&self) -> IndexStats {
        IndexStats {
            blocks: self.blocks.len(),
            entries: self.counts.values().sum(),
            workers: self.counts.len(),
            ..self.stats
        }
    }

    fn memory_usage(&self) -> usize {
        use std::mem::size_of;
        self.blocks.heap_bytes()
            + self.arena.heap_bytes()
            + table_bytes(self.counts.capacity(), size_of::<(WorkerId, usize)>())
    }
}
