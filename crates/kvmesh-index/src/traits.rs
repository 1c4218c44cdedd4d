//! The one interface every prefix index implements.

use kvmesh_core::{KvEvent, SequenceHash};

use crate::overlap::{OverlapScores, WorkerId};
use crate::stats::IndexStats;

/// A fleet-wide map of which worker holds which KV blocks, on which tier, built from the
/// workers' KV events.
///
/// Contract shared by every implementation (and checked by one test suite over all of them):
///
/// - Events are idempotent: a duplicate `Stored` or a `Removed` of an absent block changes
///   nothing (and is counted).
/// - `overlaps` counts, per worker, the blocks of an unbroken prefix of `hashes` the worker
///   holds on some tier, split by each block's fastest tier.
/// - A `Stored` whose parent the worker is not known to hold is kept, counted in
///   [`IndexStats::orphan_stores`], and reachable once the parent arrives: sequence hashes name
///   the whole prefix, so nothing needs re-linking when events arrive out of order.
/// - Removing a block, clearing a tier or removing a worker returns the memory the entries
///   used: nothing is kept for absent blocks.
pub trait PrefixIndex {
    /// Applies one event from `worker`.
    fn apply(&mut self, worker: WorkerId, event: &KvEvent);

    /// Applies a batch of events from `worker`, in order.
    fn apply_batch(&mut self, worker: WorkerId, events: &[KvEvent]) {
        for e in events {
            self.apply(worker, e);
        }
    }

    /// Forgets everything about `worker` (it left the fleet or died).
    fn remove_worker(&mut self, worker: WorkerId);

    /// Per worker, the reusable leading blocks of `hashes`.
    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores;

    /// Counters and sizes.
    fn stats(&self) -> IndexStats;

    /// Approximate heap bytes used.
    fn memory_usage(&self) -> usize;
}
