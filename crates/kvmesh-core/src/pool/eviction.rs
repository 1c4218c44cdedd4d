//! Eviction policies: which cached block to give up when the pool needs room.
//!
//! The pool decides *which* blocks may be evicted and hands only those to the policy: a block
//! is a candidate when nothing references it (ref count 0), it is registered (reusable), and no
//! cached block descends from it. So every policy evicts chain tails first, and a prefix is
//! never dropped while a longer cached continuation of it survives (it would be unreachable:
//! lookups walk from the root). When a tail is evicted its parent may become a candidate, with
//! its own, older, access time. The policy only orders candidates: it sees block ids, hashes,
//! access times and hit counts, never the blocks themselves.
//!
//! # Which one should I use?
//!
//! - [`EvictionPolicyKind::Lru`] (default): evict the candidate touched least recently. Right
//!   for chat and agent traffic, where the recent past predicts the near future.
//! - [`EvictionPolicyKind::Lfu`]: evict the candidate hit least often, oldest first among
//!   equals. Keeps popular system prompts and RAG documents through bursts of one-off prompts;
//!   slower to forget a prefix that was hot yesterday.
//!
//! Both keep candidates in a `BTreeSet` keyed by their order, so insert, remove and pop are
//! O(log n). An intrusive LRU list would be O(1) but cannot place a parent that becomes a
//! candidate late at its true recency; the set can, for any key. Experiments implement
//! [`EvictionPolicy`] and pass it to [`crate::BlockPoolBuilder::build_with_policy`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::hash::SequenceHash;
use crate::pool::BlockId;

/// What a policy learns about a block that became evictable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionCandidate {
    /// The block.
    pub block: BlockId,
    /// Its sequence hash.
    pub hash: SequenceHash,
    /// The pool's logical time of its last use (larger is more recent).
    pub last_access: u64,
    /// Prefix-cache hits on the block since it was registered.
    pub hits: u32,
}

/// Orders evictable blocks. Implementations must return from [`EvictionPolicy::pop_victim`]
/// only blocks they were given and not told to remove.
pub trait EvictionPolicy: fmt::Debug + Send {
    /// A short name for logs and reports.
    fn name(&self) -> &'static str;
    /// A block became evictable. It is not currently held by the policy.
    fn insert(&mut self, candidate: EvictionCandidate);
    /// A held block is no longer evictable (reused, or it gained a cached child).
    fn remove(&mut self, block: BlockId);
    /// Chooses a block to evict and forgets it.
    fn pop_victim(&mut self) -> Option<BlockId>;
    /// Whether the policy holds `block`.
    fn contains(&self, block: BlockId) -> bool;
    /// Number of blocks held.
    fn len(&self) -> usize;
    /// Whether no block is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every block.
    fn clear(&mut self);
    /// Approximate heap bytes used.
    fn memory_usage(&self) -> usize;
}

/// The built-in policies, for configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicyKind {
    /// Least recently used first.
    #[default]
    Lru,
    /// Least frequently hit first, least recently used among equals.
    Lfu,
}

impl EvictionPolicyKind {
    /// Builds the policy for a pool of `num_blocks` blocks.
    pub fn build(self, num_blocks: usize) -> Box<dyn EvictionPolicy> {
        Box::new(OrderedEviction::new(self, num_blocks))
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            EvictionPolicyKind::Lru => "lru",
            EvictionPolicyKind::Lfu => "lfu",
        }
    }
}

impl FromStr for EvictionPolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lru" => Ok(EvictionPolicyKind::Lru),
            "lfu" => Ok(EvictionPolicyKind::Lfu),
            _ => Err(format!("unknown eviction policy '{s}': use lru or lfu")),
        }
    }
}

/// Candidates in a set ordered by a per-policy key; the smallest key is the victim.
#[derive(Debug)]
struct OrderedEviction {
    kind: EvictionPolicyKind,
    /// `(key, block)`: block ids break ties deterministically.
    order: BTreeSet<(u128, u32)>,
    /// The key each held block was inserted with; `ABSENT` when not held.
    keys: Vec<u128>,
}

const ABSENT: u128 = u128::MAX;

impl OrderedEviction {
    fn new(kind: EvictionPolicyKind, num_blocks: usize) -> Self {
        OrderedEviction {
            kind,
            order: BTreeSet::new(),
            keys: vec![ABSENT; num_blocks],
        }
    }

    fn key(&self, c: &EvictionCandidate) -> u128 {
        match self.kind {
            EvictionPolicyKind::Lru => u128::from(c.last_access),
            EvictionPolicyKind::Lfu => (u128::from(c.hits) << 64) | u128::from(c.last_access),
        }
    }
}

impl EvictionPolicy for OrderedEviction {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn insert(&mut self, candidate: EvictionCandidate) {
        let key = self.key(&candidate);
        let i = candidate.block.index();
        debug_assert_eq!(self.keys[i], ABSENT, "{:?} inserted twice", candidate.block);
        self.keys[i] = key;
        self.order.insert((key, candidate.block.0));
    }

    fn remove(&mut self, block: BlockId) {
        let key = std::mem::replace(&mut self.keys[block.index()], ABSENT);
        if key != ABSENT {
            self.order.remove(&(key, block.0));
        }
    }

    fn pop_victim(&mut self) -> Option<BlockId> {
        let (_, block) = self.order.pop_first()?;
        self.keys[block as usize] = ABSENT;
        Some(BlockId(block))
    }

    fn contains(&self, block: BlockId) -> bool {
        self.keys[block.index()] != ABSENT
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.keys.fill(ABSENT);
    }

    fn memory_usage(&self) -> usize {
        // A B-tree node holds up to 11 entries of 32 bytes plus headers; nodes run ~2/3 full.
        self.keys.len() * std::mem::size_of::<u128>() + self.order.len() * 32 * 3 / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(block: u32, last_access: u64, hits: u32) -> EvictionCandidate {
        EvictionCandidate {
            block: BlockId(block),
            hash: SequenceHash::from_u128(u128::from(block)),
            last_access,
            hits,
        }
    }

    #[test]
    fn lru_pops_oldest_access_first() {
        let mut p = EvictionPolicyKind::Lru.build(8);
        p.insert(candidate(0, 30, 9));
        p.insert(candidate(1, 10, 0));
        p.insert(candidate(2, 20, 5));
        p.remove(BlockId(1));
        assert!(!p.contains(BlockId(1)));
        assert_eq!(p.pop_victim(), Some(BlockId(2)));
        assert_eq!(p.pop_victim(), Some(BlockId(0)));
        assert_eq!(p.pop_victim(), None);
    }

    #[test]
    fn lfu_pops_least_hit_then_oldest() {
        let mut p = EvictionPolicyKind::Lfu.build(8);
        p.insert(candidate(0, 10, 3));
        p.insert(candidate(1, 40, 1));
        p.insert(candidate(2, 20, 1));
        assert_eq!(p.len(), 3);
        assert_eq!(p.pop_victim(), Some(BlockId(2)));
        assert_eq!(p.pop_victim(), Some(BlockId(1)));
        assert_eq!(p.pop_victim(), Some(BlockId(0)));
        assert!(p.is_empty());
    }
}
