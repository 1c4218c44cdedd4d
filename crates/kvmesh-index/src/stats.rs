//! Counters of an index, for metrics and tests.

/// A snapshot of an index's contents and of the events it has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct block hashes held by at least one worker.
    pub blocks: usize,
    /// (worker, block) pairs held.
    pub entries: usize,
    /// Workers holding at least one block.
    pub workers: usize,
    /// `Stored` events applied.
    pub stored_events: u64,
    /// `Stored` events for a block the worker already held on that tier.
    pub duplicate_stores: u64,
    /// `Stored` events whose parent the worker did not hold (out of order, or lost events).
    pub orphan_stores: u64,
    /// `Removed` events applied.
    pub removed_events: u64,
    /// `Removed` events for a block the worker did not hold on that tier.
    pub unknown_removes: u64,
    /// `Cleared` events applied.
    pub cleared_events: u64,
    /// Workers removed.
    pub workers_removed: u64,
}

impl IndexStats {
    /// Adds the event counters of `other` (for sharded indexes); sizes are added too.
    pub fn merge(&mut self, other: &IndexStats) {
        self.blocks += other.blocks;
        self.entries += other.entries;
        self.stored_events += other.stored_events;
        self.duplicate_stores += other.duplicate_stores;
        self.orphan_stores += other.orphan_stores;
        self.removed_events += other.removed_events;
        self.unknown_removes += other.unknown_removes;
        self.cleared_events += other.cleared_events;
    }
}
