//! The must-show numbers of the simulator on the real Mooncake conversation trace (12,031
//! requests, 512-token hash ids), from `../shared/data`. Skipped with a message when the data
//! is absent (a fresh clone has no `../shared`).
//!
//! These run the whole trace, seven simulations in all: ~25 s in a debug build on a 2-core
//! machine (~1.5 s each in release).

use std::path::PathBuf;

use kvmesh_sim::{ClusterBuilder, PoolCapacity, RoutingPolicy, SimReport, Workload};

fn trace() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let found = ["shared/data", "../shared/data"]
        .iter()
        .map(|dir| root.join(dir).join("mooncake/conversation_trace.jsonl"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipping: mooncake/conversation_trace.jsonl not found under ../shared/data");
    }
    found
}

fn run(w: &Workload, workers: usize, capacity: PoolCapacity, policy: RoutingPolicy) -> SimReport {
    let r = ClusterBuilder::new()
        .workers(workers)
        .capacity(capacity)
        .policy(policy)
        .build(w)
        .unwrap()
        .run();
    eprintln!(
        "{:>12} {workers} workers {capacity:?}: hit {:.4} ({:.1}% of ideal), busy imbalance {:.3}, \
         TTFT p50 {:.3} p90 {:.3} p99 {:.3} s, evicted {}",
        r.policy,
        r.hits.block_hit_ratio,
        100.0 * r.hits.ratio_to_ideal,
        r.load.imbalance,
        r.ttft.p50,
        r.ttft.p90,
        r.ttft.p99,
        r.engine.evicted_blocks
    );
    assert_eq!(r.completed, w.len(), "every request finishes");
    assert_eq!(r.engine.pool_errors, 0);
    assert_eq!(r.router.unknown_worker_events, 0);
    assert!(r.hits.block_hit_ratio <= r.hits.ideal_block_hit_ratio + 1e-12);
    r
}

/// Ideal 0.3664; round-robin ~0.136; KV-aware routing far above it with balanced load; a
/// cache-only router reaches the ideal (so the simulated pools and index lose no hit).
#[test]
fn eight_workers_unlimited_cache() {
    let Some(path) = trace() else { return };
    let w = Workload::load_mooncake(&path, 512, 512, None).unwrap();
    assert_eq!(w.len(), 12_031);
    let ideal = w.ideal().block_hit_ratio();
    assert!((ideal - 0.3664).abs() < 5e-5, "ideal {ideal}");

    let rr = run(&w, 8, PoolCapacity::Unlimited, RoutingPolicy::RoundRobin);
    assert!(
        (rr.hits.block_hit_ratio - 0.136).abs() < 0.003,
        "{}",
        rr.hits.block_hit_ratio
    );
    assert_eq!(
        rr.engine.evicted_blocks, 0,
        "unlimited means nothing is evicted"
    );
    assert!(
        rr.load.request_imbalance < 1.001,
        "12,031 requests over 8 workers"
    );

    let cache = run(&w, 8, PoolCapacity::Unlimited, RoutingPolicy::CacheOnly);
    assert!(
        cache.hits.ratio_to_ideal > 0.99,
        "{}",
        cache.hits.ratio_to_ideal
    );

    let kv = run(&w, 8, PoolCapacity::Unlimited, RoutingPolicy::default());
    assert!(kv.hits.block_hit_ratio > 1.9 * rr.hits.block_hit_ratio);
    assert!(kv.load.imbalance <= 1.3, "imbalance {}", kv.load.imbalance);
    assert!(kv.ttft.p90 < rr.ttft.p90);
}

/// The must-show: KV-aware routing at >= 95% of the ideal with imbalance <= 1.3
/// (8 workers, unlimited cache). With queued prefill and decode load at full weight the
/// router reached only 0.737 of the ideal; the defaults (0.25, 0.02) reach ~0.964.
#[test]
fn kv_aware_reaches_95_percent_of_ideal() {
    let Some(path) = trace() else { return };
    let w = Workload::load_mooncake(&path, 512, 512, None).unwrap();
    let kv = run(&w, 8, PoolCapacity::Unlimited, RoutingPolicy::default());
    assert!(kv.hits.ratio_to_ideal >= 0.95, "{}", kv.hits.ratio_to_ideal);
    assert!(kv.load.imbalance <= 1.3);
}

/// A bounded cache (what fits an H100 next to Llama-3-8B: 832 blocks of 512 tokens) evicts,
/// and the KV-aware router still beats round-robin.
#[test]
fn eight_workers_device_sized_cache() {
    let Some(path) = trace() else { return };
    let w = Workload::load_mooncake(&path, 512, 512, None).unwrap();
    let kv = run(&w, 8, PoolCapacity::Device, RoutingPolicy::default());
    let rr = run(&w, 8, PoolCapacity::Device, RoutingPolicy::RoundRobin);
    assert_eq!(kv.memory.blocks_per_worker, 832);
    assert!(
        kv.engine.evicted_blocks > 100_000,
        "{}",
        kv.engine.evicted_blocks
    );
    assert!(kv.hits.block_hit_ratio < 0.5 * kv.hits.ideal_block_hit_ratio);
    assert!(kv.hits.block_hit_ratio > 1.5 * rr.hits.block_hit_ratio);
}
