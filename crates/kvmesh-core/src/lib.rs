//! kvmesh-core: the IO-free foundation of kvmesh.
//!
//! Four ideas, each in its own module, connect in one line:
//! *tokens* are cut into blocks, each full block is named by a chained **sequence hash**
//! ([`BlockHasher`], [`SequenceHasher`]); a **block pool** ([`BlockPool`]) stores KV in
//! fixed-size blocks whose sizes a **KV geometry** ([`KvGeometry`]) gives, reuses blocks whose
//! hash it has seen (prefix caching), evicts by a policy ([`EvictionPolicyKind`]), and reports
//! what it holds as **KV events** ([`KvEvent`]) that a router's index consumes.
//!
//! ```
//! use kvmesh_core::{BlockHasher, BlockPool, ExtraKeys, KvEvent};
//!
//! let hasher = BlockHasher::new(0, 16, &ExtraKeys::default());
//! let system_prompt: Vec<u32> = (0..64).collect();
//! let hashes = hasher.hash_prefix(&system_prompt);
//!
//! let mut pool = BlockPool::builder().num_blocks(1024).block_size(16).build()?;
//! let first = pool.match_prefix(&hashes, 64);
//! pool.append_slots(first.sequence, 64)?;
//! pool.commit_blocks(first.sequence, &hashes)?;  // after the KV is computed
//! pool.release(first.sequence)?;                 // blocks stay cached
//!
//! let again = pool.match_prefix(&hashes, 64);
//! assert_eq!(again.cached_tokens, 64);           // no prefill needed
//! let stored = pool.drain_events().filter(|e| matches!(e, KvEvent::Stored { .. })).count();
//! assert_eq!(stored, 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The crate does no IO, spawns no threads and has no async: engines, tiers, the simulator
//! and the server wrap it. Time is a logical clock inside the pool.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod capacity;
mod error;
mod events;
mod geometry;
mod hash;
mod pool;

pub use capacity::{
    compare_allocation, AllocationComparison, AllocationResult, CapacityError, KvCapacity,
    LengthStats, MemoryBudget,
};
pub use error::{ConfigError, GeometryError, PoolError};
pub use events::{KvEvent, KvEventSink, Tier};
pub use geometry::{
    find_preset, presets, AttentionKind, KvDtype, KvGeometry, KvPart, ModelDims, ModelPreset,
};
pub use hash::{
    BlockHasher, ExtraKeys, MultimodalSpan, PassThroughHasher, SequenceHash, SequenceHashMap,
    SequenceHasher,
};
pub use pool::{
    BlockCopy, BlockId, BlockPool, BlockPoolBuilder, EvictionCandidate, EvictionPolicy,
    EvictionPolicyKind, InvariantViolation, PoolStats, PrefixMatch, SequenceId,
};
