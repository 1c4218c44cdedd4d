//! [`ClusterBuilder`]: the settings of a simulated fleet, validated by `build`.

use kvmesh_core::EvictionPolicyKind;
use kvmesh_index::RoutingPolicy;

use super::Cluster;
use crate::cost::CostModel;
use crate::engine::{EngineConfig, MockEngine};
use crate::error::ConfigError;
use crate::workload::{IdealCache, Workload};

/// How many KV blocks each worker's pool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolCapacity {
    /// Large enough never to evict for the given workload (sized from it at `build`): the
    /// distinct prompt blocks of the whole workload, plus, per running sequence, its private
    /// blocks (decode blocks, a partial block, a prefill chunk in flight). This costs host
    /// memory (~70 bytes of pool metadata per block per worker), which at small block sizes and
    /// many workers adds up: 16 workers x 5.5 M blocks (Mooncake at 16-token blocks) is 6 GB.
    #[default]
    Unlimited,
    /// A fixed number of blocks per worker.
    Blocks(usize),
    /// What fits in the cost model's device next to the weights
    /// ([`CostModel::device_blocks`]).
    Device,
}

/// Settings of a simulated fleet. Every setting has a default; `build` checks them against
/// the workload and returns a [`ConfigError`] for impossible ones.
///
/// ```
/// use kvmesh_sim::{ClusterBuilder, PoolCapacity, SharedPrefix};
/// let workload = SharedPrefix::default().with_requests(64).generate(16)?;
/// let report = ClusterBuilder::new()
///     .workers(4)
///     .capacity(PoolCapacity::Blocks(2048))
///     .build(&workload)?
///     .run();
/// assert_eq!(report.completed, 64);
/// assert!(report.hits.block_hit_ratio > 0.5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    workers: usize,
    policy: RoutingPolicy,
    capacity: PoolCapacity,
    max_num_seqs: usize,
    token_budget: u32,
    eviction: EvictionPolicyKind,
    cost: CostModel,
    event_delay_ns: u64,
    seed: u64,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        let engine = EngineConfig::default();
        ClusterBuilder {
            workers: 8,
            policy: RoutingPolicy::default(),
            capacity: PoolCapacity::Unlimited,
            max_num_seqs: engine.max_num_seqs,
            token_budget: engine.token_budget,
            eviction: engine.eviction,
            cost: CostModel::default(),
            event_delay_ns: 0,
            seed: 0,
        }
    }
}

impl ClusterBuilder {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Workers (default 8).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// The routing policy (default KV-aware with default weights).
    pub fn policy(&mut self, policy: RoutingPolicy) -> &mut Self {
        self.policy = policy;
        self
    }

    /// Blocks per worker (default [`PoolCapacity::Unlimited`]).
    pub fn capacity(&mut self, capacity: PoolCapacity) -> &mut Self {
        self.capacity = capacity;
        self
    }

    /// Sequences running at once per worker (default 256).
    pub fn max_num_seqs(&mut self, n: usize) -> &mut Self {
        self.max_num_seqs = n;
        self
    }

    /// Tokens per engine step (default 8,192; at least one block).
    pub fn token_budget(&mut self, tokens: u32) -> &mut Self {
        self.token_budget = tokens;
        self
    }

    /// The pools' eviction policy (default LRU).
    pub fn eviction(&mut self, kind: EvictionPolicyKind) -> &mut Self {
        self.eviction = kind;
        self
    }

    /// The step-time model (default `h100-llama3-8b`).
    pub fn cost_model(&mut self, cost: CostModel) -> &mut Self {
        self.cost = cost;
        self
    }

    /// Delay between a worker's KV event and the router applying it, ns (default 0).
    pub fn event_delay_ns(&mut self, ns: u64) -> &mut Self {
        self.event_delay_ns = ns;
        self
    }

    /// Seed of the random policy (default 0).
    pub fn seed(&mut self, seed: u64) -> &mut Self {
        self.seed = seed;
        self
    }

    /// Blocks per worker this builder gives for `workload`.
    pub fn blocks_per_worker(&self, workload: &Workload) -> usize {
        self.blocks_for(workload, &workload.ideal())
    }

    fn blocks_for(&self, workload: &Workload, ideal: &IdealCache) -> usize {
        match self.capacity {
            PoolCapacity::Blocks(n) => n,
            PoolCapacity::Device => self.cost.device_blocks(workload.block_size()),
            PoolCapacity::Unlimited => {
                let bs = u64::from(workload.block_size().max(1));
                let max_output = workload
                    .requests()
                    .iter()
                    .map(|r| u64::from(r.output_tokens))
                    .max()
                    .unwrap_or(0);
                let per_seq = max_output.div_ceil(bs) + 3;
                let chunk = u64::from(self.token_budget).div_ceil(bs);
                let private = self.max_num_seqs as u64 * per_seq + chunk;
                let distinct = ideal.distinct_blocks;
                (distinct + private).max(workload.max_request_blocks() as u64) as usize
            }
        }
    }

    /// A cluster ready to run `workload`.
    pub fn build<'w>(&self, workload: &'w Workload) -> Result<Cluster<'w>, ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::ZeroWorkers);
        }
        let workers =
            u32::try_from(self.workers).map_err(|_| ConfigError::TooManyWorkers(self.workers))?;
        self.cost
            .validate()
            .map_err(ConfigError::InvalidCostModel)?;
        let ideal = workload.ideal();
        let blocks = self.blocks_for(workload, &ideal);
        let cfg = EngineConfig {
            num_blocks: blocks,
            block_size: workload.block_size(),
            max_num_seqs: self.max_num_seqs,
            token_budget: self.token_budget,
            eviction: self.eviction,
        };
        cfg.validate()?;
        let engines = (0..self.workers)
            .map(|_| MockEngine::new(cfg.clone(), self.cost.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let router = super::Router::new(workers, workload.block_size(), self.policy, self.seed)?;
        Ok(Cluster::new(
            workload,
            engines,
            router,
            super::Settings {
                policy: self.policy.name().to_string(),
                cost: self.cost.clone(),
                unlimited: self.capacity == PoolCapacity::Unlimited,
                blocks_per_worker: blocks,
                event_delay_ns: self.event_delay_ns,
                ideal,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::SharedPrefix;

    #[test]
    fn impossible_settings_are_typed_errors() {
        let w = SharedPrefix::default()
            .with_requests(16)
            .generate(16)
            .unwrap();
        let err = |b: &ClusterBuilder| b.build(&w).expect_err("must fail");
        assert_eq!(
            err(ClusterBuilder::new().workers(0)),
            ConfigError::ZeroWorkers
        );
        assert_eq!(
            err(ClusterBuilder::new().capacity(PoolCapacity::Blocks(0))),
            ConfigError::ZeroBlocks
        );
        assert_eq!(
            err(ClusterBuilder::new().token_budget(8)),
            ConfigError::BudgetBelowBlock {
                budget: 8,
                block_size: 16
            }
        );
        assert_eq!(
            err(ClusterBuilder::new().max_num_seqs(0)),
            ConfigError::ZeroMaxSeqs
        );
        let bad_cost = CostModel {
            per_token_s: -1.0,
            ..CostModel::default()
        };
        assert_eq!(
            err(ClusterBuilder::new().cost_model(bad_cost)),
            ConfigError::InvalidCostModel("per_token_s")
        );
        let bad_policy = RoutingPolicy::KvAware(kvmesh_index::KvAwareConfig {
            temperature: f64::NAN,
            ..Default::default()
        });
        assert!(matches!(
            err(ClusterBuilder::new().policy(bad_policy)),
            ConfigError::Policy(_)
        ));
        assert!(
            err(ClusterBuilder::new().capacity(PoolCapacity::Blocks(u32::MAX as usize)))
                .to_string()
                .contains("addressable")
        );
    }

    #[test]
    fn unlimited_capacity_covers_the_workload() {
        let w = SharedPrefix::default().generate(512).unwrap();
        let b = ClusterBuilder::new();
        // 64 system prompts x 4 blocks; 1,024 unique partial tails are private.
        let blocks = b.blocks_per_worker(&w);
        assert!((256..256 + 256 * 4 + 64).contains(&blocks), "{blocks}");
        assert_eq!(
            ClusterBuilder::new()
                .capacity(PoolCapacity::Device)
                .blocks_per_worker(&w),
            CostModel::default().device_blocks(512)
        );
    }
}
