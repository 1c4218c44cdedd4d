//! Errors of kvmesh-sim's configuration.
//!
//! Build-time only: a [`ConfigError`] means "these settings cannot run", found by
//! [`crate::ClusterBuilder::build`] or [`crate::MockEngine::new`] before any simulated time
//! passes. Trace errors ([`crate::TraceError`]) and workload errors
//! ([`crate::WorkloadError`]) are about input data; the simulation itself does not fail
//! (requests a worker can never hold are counted as rejected, not raised).

use thiserror::Error;

/// Settings that cannot build a cluster or an engine.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A cluster needs at least one worker.
    #[error("the cluster needs at least one worker")]
    ZeroWorkers,
    /// More workers than the index addresses.
    #[error("{0} workers requested; at most {max} are supported", max = u32::MAX)]
    TooManyWorkers(usize),
    /// A worker's pool needs at least one block.
    #[error("blocks per worker must be at least 1")]
    ZeroBlocks,
    /// Blocks need at least one token.
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,
    /// The per-step token budget cannot fill one block, so no prefill would ever complete a
    /// block in one step (and the engine could not make progress on long prompts efficiently).
    #[error("token budget {budget} is below one block ({block_size} tokens)")]
    BudgetBelowBlock {
        /// Tokens per step.
        budget: u32,
        /// Tokens per block.
        block_size: u32,
    },
    /// At least one sequence must be able to run.
    #[error("max sequences per worker must be at least 1")]
    ZeroMaxSeqs,
    /// The workload was hashed at another block size than the engines use.
    #[error(
        "the workload is hashed at {workload} tokens per block but the engines use {engine}; \
         rebuild the workload at the engine's block size"
    )]
    BlockSizeMismatch {
        /// The workload's block size.
        workload: u32,
        /// The engines' block size.
        engine: u32,
    },
    /// A cost-model constant is negative or not finite.
    #[error("cost model constant {0} must be finite and >= 0")]
    InvalidCostModel(&'static str),
    /// The routing policy's settings are invalid.
    #[error("routing policy: {0}")]
    Policy(#[from] kvmesh_index::IndexConfigError),
    /// The block pool refused the settings.
    #[error("block pool: {0}")]
    Pool(#[from] kvmesh_core::ConfigError),
}
