//! The paged block pool: the KV storage manager of one engine (or one tier).
//!
//! KV memory is cut into `num_blocks` fixed-size blocks of `block_size` token slots. The pool
//! owns their bookkeeping (it never touches KV bytes): which blocks are free, which sequences
//! reference which blocks (block tables), which full blocks are reusable under a
//! [`SequenceHash`] (the prefix cache), and which cached blocks to evict when memory runs out.
//!
//! # Block states
//!
//! ```text
//!            allocate                         commit (full, new hash)
//!   Free ───────────────► Active, private ─────────────────────────► Active, registered
//!    ▲                        │ ref 0                                  │ ref 0      ▲ match
//!    └────────────────────────┘                                        ▼            │ (pin)
//!    ▲                                                          Cached (ref 0) ─────┘
//!    └──────────────── evict (tail first, by policy) ◄──────────────┘
//! ```
//!
//! - **Active** blocks have ref count > 0: one per sequence whose block table holds them.
//! - **Cached** blocks have ref count 0 but stay registered, so a later prompt with the same
//!   prefix reuses them ([`BlockPool::match_prefix`]); they are reclaimed only by eviction.
//! - **Free** blocks are on a LIFO free list; a finished sequence's private blocks are reused
//!   at once by the next allocation.
//!
//! # Guarantees
//!
//! - Allocation is all-or-nothing: [`PoolError::OutOfBlocks`] leaves the pool unchanged.
//! - Only unreferenced blocks are evicted, and never before their cached descendants.
//! - A block written by two sequences is copied first ([`BlockCopy`], copy-on-write after
//!   [`BlockPool::fork`]); full blocks are immutable and shared freely.
//! - The registry, block states, ref counts and eviction candidates agree after every call
//!   ([`BlockPool::check_invariants`], run after each step of the property tests).
//! - Each call's [`KvEvent`]s are buffered in order; the caller publishes them afterwards.
//!
//! # Current behaviour (2026-11-27)
//!
//! - Two sequences that compute the same block concurrently both hold a copy until they
//!   commit it; the second commit *deduplicates*: its table entry is swapped to the registered
//!   twin and its own copy freed (vLLM v1 keeps both until the request ends). The KV is the
//!   same, so readers of the block table see no change.
//! - Access times come from a logical clock ticked once per pool call, so order, not wall
//!   time, drives LRU; the simulator gets identical behaviour on virtual time.
//! - Memory: 48 bytes of metadata per block, 16 bytes of eviction key, and a registry entry
//!   (24 bytes at a load factor of 1/2 to 7/8, so ~40 bytes) per cached block: 112 bytes per
//!   block measured with every block cached (`cargo bench -p kvmesh-core --bench core`,
//!   `docs/bench/core.md`). [`BlockPool::memory_usage`] reports it.

mod eviction;
mod invariants;
mod stats;
#[cfg(test)]
mod tests;

pub use eviction::{EvictionCandidate, EvictionPolicy, EvictionPolicyKind};
pub use invariants::InvariantViolation;
pub use stats::PoolStats;

use crate::error::{ConfigError, PoolError};
use crate::events::{KvEvent, KvEventSink, Tier};
use crate::hash::{SequenceHash, SequenceHashMap};

/// Index of a block in the pool (and of its KV region in the engine's cache memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(u32);

impl BlockId {
    /// The block's index, `0..num_blocks`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A live sequence's handle. Stale handles (released sequences) are detected, not misused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SequenceId {
    slot: u32,
    generation: u32,
}

/// Copy the first `slots` token slots of block `src` into `dst` before writing to `dst`
/// (copy-on-write of a shared partial block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// The shared block to copy from.
    pub src: BlockId,
    /// The sequence's new private block.
    pub dst: BlockId,
    /// Token slots already written in `src`.
    pub slots: u32,
}

/// The outcome of [`BlockPool::match_prefix`]: a new sequence holding the cached prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixMatch {
    /// The new sequence; its first `cached_blocks` blocks are pinned cache hits.
    pub sequence: SequenceId,
    /// Leading blocks found in the cache.
    pub cached_blocks: usize,
    /// `cached_blocks * block_size`: tokens whose KV needs no compute.
    pub cached_tokens: usize,
}

const NO_BLOCK: u32 = u32::MAX;

/// Bookkeeping of one block: 48 bytes.
#[derive(Debug, Clone)]
struct BlockMeta {
    /// Valid when `registered`; kept after eviction only for debugging.
    hash: SequenceHash,
    /// Logical time of the last pin or unpin.
    last_access: u64,
    /// Sequences whose block tables hold the block.
    ref_count: u32,
    /// Registered blocks whose parent is this block.
    cached_children: u32,
    /// Token slots written (0..=block_size).
    filled: u32,
    /// The registered parent block, or `NO_BLOCK`.
    parent: u32,
    /// Prefix-cache hits since registration.
    hits: u32,
    /// Reusable under `hash` (in the registry).
    registered: bool,
}

/// One sequence's block table.
#[derive(Debug, Clone, Default)]
struct SequenceState {
    blocks: Vec<BlockId>,
    /// Tokens written (slots used); the last block is partial when not a multiple of the size.
    len: usize,
    /// Leading blocks registered in the cache.
    registered: usize,
}

#[derive(Debug)]
struct SequenceSlot {
    generation: u32,
    state: Option<SequenceState>,
}

/// Builds a [`BlockPool`]. Every setting has a default except the number of blocks.
#[derive(Debug, Clone)]
pub struct BlockPoolBuilder {
    num_blocks: usize,
    block_size: u32,
    tier: Tier,
    eviction: EvictionPolicyKind,
    record_events: bool,
}

impl Default for BlockPoolBuilder {
    fn default() -> Self {
        BlockPoolBuilder {
            num_blocks: 0,
            block_size: 16,
            tier: Tier::Device,
            eviction: EvictionPolicyKind::Lru,
            record_events: true,
        }
    }
}

impl BlockPoolBuilder {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.num_blocks == 0 {
            return Err(ConfigError::ZeroBlocks);
        }
        if self.block_size == 0 {
            return Err(ConfigError::ZeroBlockSize);
        }
        let max = NO_BLOCK as usize - 1;
        if self.num_blocks > max {
            return Err(ConfigError::TooManyBlocks {
                requested: self.num_blocks,
                max,
            });
        }
        Ok(())
    }

    /// Total blocks (required; at least 1, at most `u32::MAX - 1`).
    pub fn num_blocks(&mut self, n: usize) -> &mut Self {
        self.num_blocks = n;
        self
    }

    /// Token slots per block (default 16).
    pub fn block_size(&mut self, tokens: u32) -> &mut Self {
        self.block_size = tokens;
        self
    }

    /// The tier named in this pool's events (default [`Tier::Device`]).
    pub fn tier(&mut self, tier: Tier) -> &mut Self {
        self.tier = tier;
        self
    }

    /// The built-in eviction policy (default LRU).
    pub fn eviction(&mut self, kind: EvictionPolicyKind) -> &mut Self {
        self.eviction = kind;
        self
    }

    /// Whether to buffer [`KvEvent`]s (default true). Turn off when nobody drains them.
    pub fn record_events(&mut self, on: bool) -> &mut Self {
        self.record_events = on;
        self
    }

    /// Builds the pool with the configured built-in policy.
    pub fn build(&self) -> Result<BlockPool, ConfigError> {
        // Validate before the policy allocates its per-block state.
        self.validate()?;
        self.build_with_policy(self.eviction.build(self.num_blocks))
    }

    /// Builds the pool with a custom eviction policy.
    pub fn build_with_policy(
        &self,
        policy: Box<dyn EvictionPolicy>,
    ) -> Result<BlockPool, ConfigError> {
        self.validate()?;
        let meta = BlockMeta {
            hash: SequenceHash::from_u128(0),
            last_access: 0,
            ref_count: 0,
            cached_children: 0,
            filled: 0,
            parent: NO_BLOCK,
            hits: 0,
            registered: false,
        };
        Ok(BlockPool {
            block_size: self.block_size,
            tier: self.tier,
            record_events: self.record_events,
            blocks: vec![meta; self.num_blocks],
            // Reversed so that block 0 is handed out first.
            free: (0..self.num_blocks as u32).rev().map(BlockId).collect(),
            registry: SequenceHashMap::default(),
            policy,
            sequences: Vec::new(),
            free_slots: Vec::new(),
            spare_tables: Vec::new(),
            events: Vec::new(),
            clock: 0,
            num_active: 0,
            num_cached: 0,
            stats: PoolStats::default(),
        })
    }
}

/// A fixed set of KV blocks with block tables, prefix caching and eviction.
///
/// ```
/// use kvmesh_core::{BlockHasher, BlockPool, ExtraKeys, KvEvent};
///
/// let mut pool = BlockPool::builder().num_blocks(8).block_size(4).build().unwrap();
/// let hasher = BlockHasher::new(0, 4, &ExtraKeys::default());
/// let prompt: Vec<u32> = (0..10).collect();
/// let hashes = hasher.hash_prefix(&prompt); // 2 full blocks; 2 tokens in a partial third
///
/// // First request: nothing cached. Allocate slots, compute KV, then commit full blocks.
/// let first = pool.match_prefix(&hashes, prompt.len());
/// assert_eq!(first.cached_blocks, 0);
/// pool.append_slots(first.sequence, prompt.len()).unwrap();
/// pool.commit_blocks(first.sequence, &hashes).unwrap();
/// pool.release(first.sequence).unwrap(); // full blocks stay cached, the partial one is freed
///
/// // Second request with the same prefix reuses both full blocks.
/// let second = pool.match_prefix(&hashes, prompt.len());
/// assert_eq!(second.cached_tokens, 8);
/// pool.release(second.sequence).unwrap();
///
/// // Filling the pool evicts cached blocks, tails first.
/// let big = pool.match_prefix(&[], 32).sequence;
/// pool.append_slots(big, 32).unwrap();
/// let events: Vec<KvEvent> = pool.drain_events().collect();
/// assert!(matches!(events.last(), Some(KvEvent::Removed { hash, .. }) if *hash == hashes[0]));
/// pool.check_invariants().unwrap();
/// ```
#[derive(Debug)]
pub struct BlockPool {
    block_size: u32,
    tier: Tier,
    record_events: bool,
    blocks: Vec<BlockMeta>,
    free: Vec<BlockId>,
    registry: SequenceHashMap<BlockId>,
    policy: Box<dyn EvictionPolicy>,
    sequences: Vec<SequenceSlot>,
    free_slots: Vec<u32>,
    /// Emptied block tables of released sequences, reused to avoid an allocation per request.
    /// At most one per sequence slot.
    spare_tables: Vec<Vec<BlockId>>,
    events: Vec<KvEvent>,
    clock: u64,
    num_active: usize,
    num_cached: usize,
    stats: PoolStats,
}

impl BlockPool {
    /// A builder with default settings.
    pub fn builder() -> BlockPoolBuilder {
        BlockPoolBuilder::default()
    }

    /// Token slots per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Total blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks on the free list.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks an allocation can obtain now: free plus cached (cached ones by eviction).
    pub fn num_available(&self) -> usize {
        self.free.len() + self.num_cached
    }

    /// The eviction policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Leading blocks of `hashes` that are cached now, without pinning them or counting a
    /// query. For schedulers that decide admission before committing.
    pub fn cached_prefix_len(&self, hashes: &[SequenceHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.registry.contains_key(h))
            .count()
    }

    /// Starts a sequence on the longest cached prefix of `hashes` and pins those blocks.
    ///
    /// `query_tokens` is the prompt's full length, for the hit-ratio statistics. The new
    /// sequence holds `cached_tokens` tokens; append the rest with
    /// [`append_slots`](Self::append_slots). An engine that needs logits for the last prompt
    /// token should leave its block out of `hashes` when the prompt fills whole blocks.
    /// Passing no hashes starts an empty sequence.
    pub fn match_prefix(&mut self, hashes: &[SequenceHash], query_tokens: usize) -> PrefixMatch {
        let now = self.tick();
        let mut state = SequenceState {
            blocks: self.spare_tables.pop().unwrap_or_default(),
            ..SequenceState::default()
        };
        for h in hashes {
            let Some(&block) = self.registry.get(h) else {
                break;
            };
            self.pin(block, now);
            self.blocks[block.index()].hits += 1;
            state.blocks.push(block);
        }
        let cached_blocks = state.blocks.len();
        state.registered = cached_blocks;
        state.len = cached_blocks * self.block_size as usize;
        if !hashes.is_empty() || query_tokens > 0 {
            self.stats.query_blocks += hashes.len() as u64;
            self.stats.hit_blocks += cached_blocks as u64;
            self.stats.query_tokens += query_tokens.max(state.len) as u64;
            self.stats.hit_tokens += state.len as u64;
        }
        let cached_tokens = state.len;
        PrefixMatch {
            sequence: self.insert_sequence(state),
            cached_blocks,
            cached_tokens,
        }
    }

    /// Extends a sequence by `tokens` slots, allocating blocks as needed (evicting cached
    /// blocks when the free list is empty).
    ///
    /// Returns a copy the caller must perform before writing when the sequence's partial last
    /// block was shared with a fork. All or nothing: on error nothing changed.
    pub fn append_slots(
        &mut self,
        seq: SequenceId,
        tokens: usize,
    ) -> Result<Option<BlockCopy>, PoolError> {
        let now = self.tick();
        let bs = self.block_size as usize;
        let (len, num_blocks, last) = {
            let s = self.sequence(seq)?;
            (s.len, s.blocks.len(), s.blocks.last().copied())
        };
        let new_len = len
            .checked_add(tokens)
            .filter(|&l| l <= u32::MAX as usize * bs)
            .ok_or(PoolError::TooLong {
                requested: len.saturating_add(tokens),
            })?;
        let partial = len % bs;
        let cow_src = match last {
            Some(b) if tokens > 0 && partial != 0 && self.blocks[b.index()].ref_count > 1 => {
                Some(b)
            }
            _ => None,
        };
        let new_blocks = new_len.div_ceil(bs) - num_blocks;
        let needed = new_blocks + usize::from(cow_src.is_some());
        if needed > self.num_available() {
            return Err(PoolError::OutOfBlocks {
                requested: needed,
                free: self.free.len(),
                evictable: self.num_cached,
            });
        }

        let mut copy = None;
        if let Some(src) = cow_src {
            let dst = self.allocate(now);
            self.set_filled(dst, partial as u32);
            self.unpin(src, now);
            self.stats.cow_copies += 1;
            copy = Some(BlockCopy {
                src,
                dst,
                slots: partial as u32,
            });
            *self
                .state_mut(seq)
                .blocks
                .last_mut()
                .expect("partial block") = dst;
        }
        for _ in 0..new_blocks {
            let b = self.allocate(now);
            self.state_mut(seq).blocks.push(b);
        }
        // Fill from the old partial block (if any) to the new end.
        let first_touched = len / bs;
        for i in first_touched..new_len.div_ceil(bs) {
            let filled = (new_len - i * bs).min(bs) as u32;
            let b = self.state_mut(seq).blocks[i];
            self.set_filled(b, filled);
        }
        self.state_mut(seq).len = new_len;
        Ok(copy)
    }

    /// Registers the sequence's full blocks as reusable, given the sequence hash of each of
    /// its blocks from the first (`hashes[i]` names block `i`).
    ///
    /// Blocks already registered are skipped; `hashes` may not extend past the last full
    /// block. Call it once the blocks' KV has been computed. A block whose hash is already
    /// cached elsewhere is deduplicated onto that twin. Returns the number of blocks newly
    /// registered or deduplicated.
    pub fn commit_blocks(
        &mut self,
        seq: SequenceId,
        hashes: &[SequenceHash],
    ) -> Result<usize, PoolError> {
        let now = self.tick();
        let bs = self.block_size as usize;
        let (full, registered) = {
            let s = self.sequence(seq)?;
            (s.len / bs, s.registered)
        };
        if hashes.len() > full {
            return Err(PoolError::NotFull {
                sequence: seq,
                full_blocks: full,
                registered,
                requested: hashes.len().saturating_sub(registered),
            });
        }
        // Validate before changing anything: a block registered under another hash (by a
        // fork given different hashes) cannot take this one.
        let table = &self.sequence(seq)?.blocks;
        for (i, &hash) in hashes.iter().enumerate().skip(registered) {
            let m = &self.blocks[table[i].index()];
            if m.registered && m.hash != hash {
                return Err(PoolError::HashConflict {
                    sequence: seq,
                    block_index: i,
                });
            }
        }
        for (i, &hash) in hashes.iter().enumerate().skip(registered) {
            let parent = if i == 0 {
                None
            } else {
                Some(self.state_mut(seq).blocks[i - 1])
            };
            let own = self.state_mut(seq).blocks[i];
            match self.registry.get(&hash).copied() {
                Some(twin) if twin == own => {}
                Some(twin) => self.deduplicate(seq, i, own, twin, now),
                None => self.register(own, hash, parent),
            }
        }
        let s = self.state_mut(seq);
        let newly = hashes.len().saturating_sub(s.registered);
        s.registered = s.registered.max(hashes.len());
        Ok(newly)
    }

    /// Forks a sequence (beam search, parallel sampling): the fork shares every block; the
    /// first write into a shared partial block copies it ([`BlockCopy`]).
    pub fn fork(&mut self, seq: SequenceId) -> Result<SequenceId, PoolError> {
        let now = self.tick();
        let state = self.sequence(seq)?.clone();
        for &b in &state.blocks {
            self.pin(b, now);
        }
        self.stats.forks += 1;
        Ok(self.insert_sequence(state))
    }

    /// Ends a sequence: its registered blocks stay cached, the rest return to the free list at
    /// once. The id becomes stale.
    pub fn release(&mut self, seq: SequenceId) -> Result<(), PoolError> {
        let now = self.tick();
        self.sequence(seq)?;
        let slot = &mut self.sequences[seq.slot as usize];
        let mut state = slot.state.take().expect("checked live");
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(seq.slot);
        // Tail first, so a chain's blocks reach the free list in allocation order.
        for &b in state.blocks.iter().rev() {
            self.unpin(b, now);
        }
        state.blocks.clear();
        self.spare_tables.push(state.blocks);
        Ok(())
    }

    /// Drops every cached block and unregisters every block (`Cleared` event). Blocks still
    /// in use stay with their sequences and can be registered again by `commit_blocks`.
    pub fn clear_cache(&mut self) {
        self.tick();
        self.policy.clear();
        self.registry.clear();
        for i in 0..self.blocks.len() {
            let m = &mut self.blocks[i];
            let was_cached = m.registered && m.ref_count == 0;
            m.registered = false;
            m.cached_children = 0;
            m.parent = NO_BLOCK;
            if was_cached {
                m.filled = 0;
                self.free.push(BlockId(i as u32));
            }
        }
        self.num_cached = 0;
        for slot in &mut self.sequences {
            if let Some(s) = &mut slot.state {
                s.registered = 0;
            }
        }
        self.emit(KvEvent::Cleared { tier: self.tier });
    }

    /// The sequence's block table: block `i` holds its tokens `i*block_size..`.
    pub fn block_table(&self, seq: SequenceId) -> Result<&[BlockId], PoolError> {
        Ok(&self.sequence(seq)?.blocks)
    }

    /// Tokens (slots) the sequence has written.
    pub fn sequence_len(&self, seq: SequenceId) -> Result<usize, PoolError> {
        Ok(self.sequence(seq)?.len)
    }

    /// Leading blocks of the sequence registered in the cache.
    pub fn registered_blocks(&self, seq: SequenceId) -> Result<usize, PoolError> {
        Ok(self.sequence(seq)?.registered)
    }

    /// Removes and returns the buffered events, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, KvEvent> {
        self.events.drain(..)
    }

    /// Publishes the buffered events to `sink` as one batch and clears the buffer.
    pub fn flush_events<S: KvEventSink + ?Sized>(&mut self, sink: &mut S) {
        if !self.events.is_empty() {
            sink.publish(&self.events);
            self.events.clear();
        }
    }

    /// A snapshot of the pool's counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            capacity: self.blocks.len(),
            free: self.free.len(),
            active: self.num_active,
            cached: self.num_cached,
            evictable: self.policy.len(),
            block_size: self.block_size,
            ..self.stats
        }
    }

    /// Approximate heap bytes of the pool's bookkeeping (not the KV memory it manages).
    pub fn memory_usage(&self) -> usize {
        use std::mem::size_of;
        let registry = self.registry.capacity() * (size_of::<(SequenceHash, BlockId)>() + 1);
        let sequences: usize = self
            .sequences
            .iter()
            .map(|s| {
                size_of::<SequenceSlot>()
                    + s.state
                        .as_ref()
                        .map_or(0, |st| st.blocks.capacity() * size_of::<BlockId>())
            })
            .sum();
        self.blocks.capacity() * size_of::<BlockMeta>()
            + self.free.capacity() * size_of::<BlockId>()
            + registry
            + self.policy.memory_usage()
            + sequences
            + self
                .spare_tables
                .iter()
                .map(|t| size_of::<Vec<BlockId>>() + t.capacity() * size_of::<BlockId>())
                .sum::<usize>()
            + self.events.capacity() * size_of::<KvEvent>()
    }

    // ---- internals ------------------------------------------------------------------------

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn emit(&mut self, event: KvEvent) {
        if self.record_events {
            self.events.push(event);
        }
    }

    fn sequence(&self, seq: SequenceId) -> Result<&SequenceState, PoolError> {
        self.sequences
            .get(seq.slot as usize)
            .filter(|s| s.generation == seq.generation)
            .and_then(|s| s.state.as_ref())
            .ok_or(PoolError::UnknownSequence(seq))
    }

    /// For ids already checked by `sequence`.
    fn state_mut(&mut self, seq: SequenceId) -> &mut SequenceState {
        self.sequences[seq.slot as usize]
            .state
            .as_mut()
            .expect("sequence checked live")
    }

    fn insert_sequence(&mut self, state: SequenceState) -> SequenceId {
        match self.free_slots.pop() {
            Some(slot) => {
                let s = &mut self.sequences[slot as usize];
                s.state = Some(state);
                SequenceId {
                    slot,
                    generation: s.generation,
                }
            }
            None => {
                let slot = self.sequences.len() as u32;
                self.sequences.push(SequenceSlot {
                    generation: 0,
                    state: Some(state),
                });
                SequenceId {
                    slot,
                    generation: 0,
                }
            }
        }
    }

    /// Takes a block for writing: from the free list, else by evicting the policy's victim.
    /// Callers check `num_available` first.
    fn allocate(&mut self, now: u64) -> BlockId {
        let block = match self.free.pop() {
            Some(b) => b,
            None => self.evict_one().expect("caller checked availability"),
        };
        let m = &mut self.blocks[block.index()];
        debug_assert!(m.ref_count == 0 && !m.registered);
        m.ref_count = 1;
        m.filled = 0;
        m.hits = 0;
        m.last_access = now;
        self.num_active += 1;
        block
    }

    /// Evicts one cached block chosen by the policy and returns it, unregistered and unused.
    fn evict_one(&mut self) -> Option<BlockId> {
        while let Some(victim) = self.policy.pop_victim() {
            let m = &self.blocks[victim.index()];
            // A policy may only return candidates; skip anything else defensively.
            let candidate = m.ref_count == 0 && m.registered && m.cached_children == 0;
            debug_assert!(candidate, "policy returned a non-candidate {victim:?}");
            if !candidate {
                continue;
            }
            let (hash, parent) = (m.hash, m.parent);
            self.registry.remove(&hash);
            let m = &mut self.blocks[victim.index()];
            m.registered = false;
            m.parent = NO_BLOCK;
            m.filled = 0;
            self.num_cached -= 1;
            self.stats.evicted += 1;
            self.emit(KvEvent::Removed {
                hash,
                tier: self.tier,
            });
            if parent != NO_BLOCK {
                let p = &mut self.blocks[parent as usize];
                p.cached_children -= 1;
                if p.cached_children == 0 && p.ref_count == 0 {
                    self.offer_candidate(BlockId(parent));
                }
            }
            return Some(victim);
        }
        None
    }

    /// Same KV computed twice: block `i` of `seq` (`own`, unregistered) switches to the
    /// registered `twin`. Forks that share `own` switch too, so that every holder of a block
    /// has the same predecessor and a child registered later has one well-defined parent.
    /// (Only forks can hold an unregistered block, always at the same position.)
    fn deduplicate(&mut self, seq: SequenceId, i: usize, own: BlockId, twin: BlockId, now: u64) {
        self.swap_block(seq.slot as usize, i, own, twin, now);
        if self.blocks[own.index()].ref_count == 0 {
            return;
        }
        for slot in 0..self.sequences.len() {
            let shares = self.sequences[slot]
                .state
                .as_ref()
                .is_some_and(|s| s.blocks.get(i) == Some(&own));
            if shares {
                self.swap_block(slot, i, own, twin, now);
            }
        }
    }

    fn swap_block(&mut self, slot: usize, i: usize, own: BlockId, twin: BlockId, now: u64) {
        self.pin(twin, now);
        self.blocks[twin.index()].hits += 1;
        self.sequences[slot].state.as_mut().expect("live").blocks[i] = twin;
        self.unpin(own, now);
        self.stats.deduplicated += 1;
    }

    fn register(&mut self, block: BlockId, hash: SequenceHash, parent: Option<BlockId>) {
        let m = &mut self.blocks[block.index()];
        m.registered = true;
        m.hash = hash;
        m.hits = 0;
        m.parent = parent.map_or(NO_BLOCK, |p| p.0);
        let parent_hash = parent.map(|p| {
            let pm = &mut self.blocks[p.index()];
            pm.cached_children += 1;
            if pm.cached_children == 1 && pm.ref_count == 0 {
                self.policy.remove(p);
            }
            pm.hash
        });
        self.registry.insert(hash, block);
        self.stats.stored += 1;
        self.emit(KvEvent::Stored {
            hash,
            parent: parent_hash,
            tier: self.tier,
        });
    }

    /// Adds one reference.
    fn pin(&mut self, block: BlockId, now: u64) {
        let m = &mut self.blocks[block.index()];
        if m.ref_count == 0 {
            // Only registered (cached) blocks are pinned from zero.
            self.num_cached -= 1;
            self.num_active += 1;
            self.stats.used_slots += u64::from(m.filled);
            if m.cached_children == 0 {
                self.policy.remove(block);
            }
        }
        let m = &mut self.blocks[block.index()];
        m.ref_count += 1;
        m.last_access = now;
    }

    /// Drops one reference; at zero the block becomes cached (registered) or free.
    fn unpin(&mut self, block: BlockId, now: u64) {
        let m = &mut self.blocks[block.index()];
        m.ref_count -= 1;
        m.last_access = now;
        if m.ref_count > 0 {
            return;
        }
        self.num_active -= 1;
        self.stats.used_slots -= u64::from(m.filled);
        if m.registered {
            self.num_cached += 1;
            if m.cached_children == 0 {
                self.offer_candidate(block);
            }
        } else {
            m.filled = 0;
            self.free.push(block);
        }
    }

    fn offer_candidate(&mut self, block: BlockId) {
        let m = &self.blocks[block.index()];
        self.policy.insert(EvictionCandidate {
            block,
            hash: m.hash,
            last_access: m.last_access,
            hits: m.hits,
        });
    }

    /// Sets the written slots of an active block, keeping the slot counter in step.
    fn set_filled(&mut self, block: BlockId, filled: u32) {
        let m = &mut self.blocks[block.index()];
        self.stats.used_slots = self.stats.used_slots - u64::from(m.filled) + u64::from(filled);
        m.filled = filled;
    }
}
