//! kvmesh-sim: replay request traces through a simulated fleet that runs kvmesh's real block
//! pool and router code, and measure hit ratios, latency and balance.
//!
//! The pieces, in the order a request meets them:
//!
//! - **Traces** ([`MooncakeReader`], [`AzureReader`]): bounded, streaming readers whose errors
//!   name `path:line`.
//! - **Workloads** ([`Workload`], [`Request`]): arrival, lengths, session, and the prompt's
//!   block hashes at the engine's block size ([`BlockMapper`] maps trace ids to chained
//!   [`kvmesh_core::SequenceHash`]es), from a trace or a seeded generator ([`SharedPrefix`],
//!   [`MultiTurn`], [`Rag`]). [`Workload::ideal`] is the hit ratio of an infinite global cache.
//! - **Engines** ([`MockEngine`]): one per worker, a real [`kvmesh_core::BlockPool`] with
//!   continuous batching, chunked prefill under a token budget, prefix matching and preemption,
//!   timed by a [`CostModel`] with named presets.
//! - **Cluster** ([`ClusterBuilder`] -> [`Cluster`]): a discrete-event loop of arrivals, a
//!   [`Router`] (kvmesh-index's routing core: exact index, load tracker and worker selector,
//!   the same type `kvmesh serve` routes with, fed by KV events after a delay) and the
//!   workers' steps.
//! - **Report** ([`SimReport`]): TTFT / inter-token / end-to-end percentiles, throughput, hit
//!   ratio and its ratio to the ideal, load imbalance, cache memory; each defined in
//!   [`SimReport`]'s docs.
//!
//! ```
//! use kvmesh_sim::{ClusterBuilder, MultiTurn, PoolCapacity};
//! use kvmesh_index::RoutingPolicy;
//!
//! let workload = MultiTurn::default().with_requests(100).generate(16)?;
//! let mut fleet = ClusterBuilder::new();
//! fleet.workers(4).capacity(PoolCapacity::Unlimited);
//! let kv = fleet.build(&workload)?.run();
//! let rr = fleet.policy(RoutingPolicy::RoundRobin).build(&workload)?.run();
//! assert!(kv.hits.block_hit_ratio > rr.hits.block_hit_ratio);
//! assert!(kv.hits.block_hit_ratio <= kv.hits.ideal_block_hit_ratio);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Nothing here does IO except the trace readers; time is virtual, runs are deterministic and
//! single-threaded (run policies side by side on threads if you like: a [`Cluster`] borrows
//! its workload immutably).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cluster;
mod cost;
mod engine;
mod error;
mod generate;
mod metrics;
mod rng;
mod trace;
mod workload;

pub use cluster::{Cluster, ClusterBuilder, PoolCapacity};
pub use cost::{CostModel, StepShape, UnknownCostModel, COST_PRESETS};
pub use engine::{Admission, EngineConfig, EngineStats, MockEngine, StepOutput};
pub use error::ConfigError;
pub use generate::{MultiTurn, Rag, SharedPrefix};
pub use kvmesh_index::Router;
pub use metrics::{
    CacheMemory, EngineTotals, HitReport, LoadReport, Percentiles, RouterReport, SimReport,
    Throughput, WorkerReport,
};
pub use rng::Rng;
pub use trace::{
    read_azure, read_azure_file, read_mooncake, read_mooncake_file, AzureReader, AzureRecord,
    MooncakeReader, MooncakeRecord, TraceError, TraceErrorKind, MAX_LINE_BYTES,
    MOONCAKE_BLOCK_TOKENS,
};
pub use workload::{
    BlockMapper, IdealCache, PromptBlocks, Request, Segment, Workload, WorkloadBuilder,
    WorkloadError, CONTENT_SEED,
};

/// The routing policies, re-exported so users of the simulator need not depend on
/// kvmesh-index for them.
pub use kvmesh_index::{KvAwareConfig, RoutingPolicy};
