//! kvmesh-index: which worker holds which KV blocks, and which worker should serve a request.
//!
//! Workers' block pools publish [`KvEvent`](kvmesh_core::KvEvent)s; a [`PrefixIndex`] turns
//! them into a fleet-wide map from block hash to holders (worker and tier). For a request's
//! block hashes, [`PrefixIndex::overlaps`] says how many leading blocks each worker could
//! reuse, by tier; a [`WorkerSelector`] combines that with each worker's load
//! ([`LoadTracker`]) into a choice.
//!
//! ```
//! use kvmesh_core::{KvEvent, SequenceHash, Tier};
//! use kvmesh_index::*;
//!
//! let h = |i| SequenceHash::from_u128(i);
//! let mut index = ExactIndex::new();
//! index.apply(WorkerId(1), &KvEvent::Stored { hash: h(10), parent: None, tier: Tier::Device });
//! index.apply(WorkerId(1), &KvEvent::Stored { hash: h(11), parent: Some(h(10)), tier: Tier::Host });
//!
//! let mut loads = LoadTracker::new();
//! loads.add_worker(WorkerId(0));
//! loads.add_worker(WorkerId(1));
//! let mut selector = WorkerSelector::new(RoutingPolicy::default(), 0)?;
//! let prompt = [h(10), h(11), h(12)];
//! let request = RoutingRequest { hashes: &prompt, prompt_tokens: 48, block_size: 16, affinity: None };
//! let choice = selector.select(&request, &index.overlaps(&prompt), &loads).unwrap();
//! assert_eq!(choice.worker, WorkerId(1));
//! assert_eq!((choice.cached.on(Tier::Device), choice.cached.on(Tier::Host)), (1, 1));
//! # Ok::<(), IndexConfigError>(())
//! ```
//!
//! # Which index should I use?
//!
//! - [`ExactIndex`]: single-threaded, exact, the default inside one event loop (the simulator,
//!   a router task that owns its index).
//! - [`ShardedIndex`]: the same data behind per-shard read-write locks, for a router whose
//!   event consumers and request handlers run on different threads. Feed it batches, and use
//!   one shard unless many threads apply single events (`sharded.rs` has the numbers).
//! - [`ApproxIndex`]: for engines that publish no events: learns from routing decisions, with a
//!   TTL and a capacity bound.
//!
//! All three implement [`PrefixIndex`] and pass one test suite (`tests/index_suite.rs`).
//!
//! [`Router`] puts an [`ExactIndex`], a [`LoadTracker`] and a [`WorkerSelector`] behind one
//! type: the routing core that `kvmesh sim` and `kvmesh serve` share.
//! The crate does no IO; time is passed in.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod approx;
mod error;
mod exact;
mod load;
mod overlap;
mod prefetch;
mod router;
mod selection;
mod sharded;
mod stats;
mod table;
mod traits;
mod worker_set;

pub use approx::ApproxIndex;
pub use error::IndexConfigError;
pub use exact::ExactIndex;
pub use load::{LoadTracker, RequestId, WorkerLoad};
pub use overlap::{OverlapScores, TierCounts, TierMask, WorkerId};
pub use router::{Route, RouteReason, Router, RouterStats};
pub use selection::{
    kv_cost, KvAwareConfig, RoutingPolicy, RoutingRequest, Selection, WorkerSelector,
};
pub use sharded::ShardedIndex;
pub use stats::IndexStats;
pub use traits::PrefixIndex;
