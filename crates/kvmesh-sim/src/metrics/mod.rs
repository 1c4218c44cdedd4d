//! What a simulation reports, and how each number is defined.
//!
//! The definitions are on [`SimReport`], where users of the crate see them.

use serde::Serialize;

mod histogram;

pub(crate) use histogram::Histogram;

/// Percentiles of a latency, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (seconds); sorts them.
    pub fn of(samples: &mut [f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable_by(f64::total_cmp);
        let n = samples.len();
        let at = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Percentiles {
            count: n as u64,
            mean: samples.iter().sum::<f64>() / n as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: samples[n - 1],
        }
    }

    pub(crate) fn of_histogram_ns(h: &Histogram) -> Percentiles {
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1e9,
            p50: h.quantile(0.5) / 1e9,
            p90: h.quantile(0.9) / 1e9,
            p99: h.quantile(0.99) / 1e9,
            max: h.quantile(1.0) / 1e9,
        }
    }
}

/// Cache hit ratios and their ideal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HitReport {
    /// Prompt blocks of admitted requests.
    pub prompt_blocks: u64,
    /// Of those, blocks found in the worker's cache.
    pub hit_blocks: u64,
    /// `hit_blocks / prompt_blocks`.
    pub block_hit_ratio: f64,
    /// Cached tokens / prompt tokens.
    pub token_hit_ratio: f64,
    /// The ideal block hit ratio of the whole workload (infinite global cache).
    pub ideal_block_hit_ratio: f64,
    /// The ideal token hit ratio.
    pub ideal_token_hit_ratio: f64,
    /// `block_hit_ratio / ideal_block_hit_ratio` (0 when the ideal is 0).
    pub ratio_to_ideal: f64,
}

/// Throughput over the makespan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// First arrival to last token, seconds of simulated time.
    pub makespan_s: f64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Prompt plus output tokens of completed requests per second.
    pub total_tokens_per_s: f64,
}

/// One worker's share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WorkerReport {
    /// Requests routed to it.
    pub requests: u64,
    /// Simulated seconds spent in steps.
    pub busy_s: f64,
    /// Prompt tokens computed (recomputation included).
    pub prefill_tokens: u64,
    /// Output tokens produced after the first.
    pub decode_tokens: u64,
    /// Steps run.
    pub steps: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Blocks evicted from its cache.
    pub evicted_blocks: u64,
    /// Most blocks in use at once (active + cached).
    pub peak_blocks: usize,
}

/// Load balance across workers (max / mean of each quantity; 1 is perfect).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Max / mean busy time: the headline imbalance.
    pub imbalance: f64,
    /// Max / mean requests routed.
    pub request_imbalance: f64,
    /// Max / mean prompt tokens computed.
    pub prefill_imbalance: f64,
    /// Per worker, by id.
    pub workers: Vec<WorkerReport>,
}

/// Memory: the KV the modelled devices held, and the simulator's own bookkeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CacheMemory {
    /// Blocks per worker pool.
    pub blocks_per_worker: usize,
    /// KV bytes per block (cost model's model and dtype).
    pub kv_bytes_per_block: u64,
    /// Peak KV bytes on the fullest worker.
    pub peak_kv_bytes_max: u64,
    /// Sum over workers of each one's peak KV bytes.
    pub peak_kv_bytes_total: u64,
    /// Host bytes of the block pools' metadata at the end.
    pub pool_metadata_bytes: u64,
    /// Host bytes of the router's prefix index at the end.
    pub index_bytes: u64,
}

/// Engine-side counters summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineTotals {
    /// Steps.
    pub steps: u64,
    /// Prompt tokens computed (recomputation included).
    pub prefill_tokens: u64,
    /// Tokens recomputed after preemption.
    pub recomputed_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Blocks evicted.
    pub evicted_blocks: u64,
    /// Pool operations that failed where they cannot (a bug if non-zero).
    pub pool_errors: u64,
}

/// The router's view of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RouterReport {
    /// KV events applied to the index.
    pub events: u64,
    /// `Stored` events whose parent the index did not hold (reordering or loss).
    pub orphan_stores: u64,
    /// `Removed` events for blocks the index did not hold.
    pub unknown_removes: u64,
    /// Events from workers outside the fleet (ignored).
    pub unknown_worker_events: u64,
    /// Blocks the index held at the end.
    pub index_blocks: usize,
}

impl From<kvmesh_index::RouterStats> for RouterReport {
    fn from(s: kvmesh_index::RouterStats) -> Self {
        RouterReport {
            events: s.events,
            orphan_stores: s.orphan_stores,
            unknown_removes: s.unknown_removes,
            unknown_worker_events: s.unknown_worker_events,
            index_blocks: s.index_blocks,
        }
    }
}

/// Everything one simulation run reports. Serialises to the CLI's `--json` output.
///
/// | metric | definition |
/// |---|---|
/// | TTFT | first token time - arrival, per completed request |
/// | inter-token latency (ITL) | gap between consecutive tokens of one request (log-linear histogram, within 1.6%) |
/// | end-to-end (E2E) | last token time - arrival |
/// | p50 / p90 / p99 | nearest-rank percentiles of those |
/// | throughput | completed requests, output tokens, and prompt + output tokens, per second of makespan (first arrival to last token) |
/// | block hit ratio | leading prompt blocks found in the chosen worker's cache at the request's first admission / prompt blocks (`ceil(prompt / block size)`, partial last block included; a preempted request's re-admissions are not counted again) |
/// | token hit ratio | the same in tokens: cached tokens / prompt tokens |
/// | ideal | the same ratios for one infinite cache shared by the fleet ([`crate::Workload::ideal`]); `ratio_to_ideal` = block hit ratio / ideal block hit ratio |
/// | **load imbalance** | max / mean over workers of **busy time** (simulated seconds spent in engine steps): how much longer the busiest worker computed than the average one; 1.0 is perfect balance, `N` means one worker did everything. Request-count and prefill-token imbalances (max / mean) are reported beside it |
/// | cache memory | per worker, the most KV blocks in use at once (active + cached) x bytes per block of the cost model's model; plus the simulator's own bookkeeping (pool metadata, router index) in host bytes |
///
/// Busy time is the headline balance metric because it is what saturates: a worker serving
/// few but long prompts is as loaded as one serving many short ones, which request counts
/// miss, and prefill tokens alone miss decode work. Under light load imbalance is noisy (a
/// handful of huge prompts dominate one worker's time); compare policies on the same input.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimReport {
    /// The routing policy's name.
    pub policy: String,
    /// Workers.
    pub workers: usize,
    /// Tokens per block.
    pub block_size: u32,
    /// Whether pools were sized never to evict.
    pub unlimited_cache: bool,
    /// The cost model's name.
    pub cost_model: String,
    /// Delay between a pool event and the router seeing it, seconds.
    pub event_delay_s: f64,
    /// Requests in the workload.
    pub requests: usize,
    /// Requests that finished.
    pub completed: usize,
    /// Requests no worker could hold (larger than a pool).
    pub rejected: usize,
    /// Time to first token.
    pub ttft: Percentiles,
    /// Inter-token latency.
    pub itl: Percentiles,
    /// End-to-end latency.
    pub e2e: Percentiles,
    /// Throughput.
    pub throughput: Throughput,
    /// Cache hits.
    pub hits: HitReport,
    /// Load balance.
    pub load: LoadReport,
    /// Memory.
    pub memory: CacheMemory,
    /// Engine counters.
    pub engine: EngineTotals,
    /// Router counters.
    pub router: RouterReport,
}

/// `max / mean` of `values` (1 for all zeros or none).
pub(crate) fn max_over_mean(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let n = values.clone().count();
    let sum: f64 = values.clone().sum();
    if n == 0 || sum <= 0.0 {
        return 1.0;
    }
    let max = values.fold(f64::NEG_INFINITY, f64::max);
    max / (sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn imbalance() {
        assert_eq!(max_over_mean([1.0, 1.0, 1.0].into_iter()), 1.0);
        assert_eq!(max_over_mean([0.0, 0.0, 4.0, 0.0].into_iter()), 4.0);
        assert_eq!(max_over_mean([0.0; 3].into_iter()), 1.0);
    }
}
