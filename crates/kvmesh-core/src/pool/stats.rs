//! Counters a pool keeps about its blocks and its prefix cache.

/// A snapshot of a [`crate::BlockPool`]'s state and counters since it was built.
///
/// `free + active + cached == capacity` always holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Total blocks.
    pub capacity: usize,
    /// Blocks on the free list.
    pub free: usize,
    /// Blocks referenced by at least one sequence.
    pub active: usize,
    /// Unreferenced blocks kept for reuse.
    pub cached: usize,
    /// Cached blocks that can be evicted right now (chain tails).
    pub evictable: usize,
    /// Token slots per block.
    pub block_size: u32,
    /// Blocks looked up by `match_prefix`.
    pub query_blocks: u64,
    /// Of those, blocks found cached.
    pub hit_blocks: u64,
    /// Prompt tokens looked up.
    pub query_tokens: u64,
    /// Of those, tokens whose KV was cached.
    pub hit_tokens: u64,
    /// Blocks registered (each one a `Stored` event).
    pub stored: u64,
    /// Blocks evicted (each one a `Removed` event).
    pub evicted: u64,
    /// Commits that found the block already cached and reused the twin.
    pub deduplicated: u64,
    /// Shared partial blocks copied on write.
    pub cow_copies: u64,
    /// Sequences forked.
    pub forks: u64,
    /// Token slots written in active blocks.
    pub used_slots: u64,
}

impl PoolStats {
    /// Hit blocks / queried blocks (0 before any query).
    pub fn block_hit_ratio(&self) -> f64 {
        ratio(self.hit_blocks, self.query_blocks)
    }

    /// Hit tokens / queried tokens (0 before any query).
    pub fn token_hit_ratio(&self) -> f64 {
        ratio(self.hit_tokens, self.query_tokens)
    }

    /// Written slots / slots of active blocks: 1 minus internal fragmentation.
    pub fn slot_utilisation(&self) -> f64 {
        ratio(
            self.used_slots,
            self.active as u64 * u64::from(self.block_size),
        )
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
