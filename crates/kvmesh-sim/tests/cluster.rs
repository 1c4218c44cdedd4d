//! The cluster simulation end to end on generated workloads: determinism, the ideal as an
//! upper bound, event delay, bounded pools (eviction, preemption, rejection) with the pools'
//! invariants checked afterwards, and the Azure loader's output.

use std::path::PathBuf;

use kvmesh_sim::{
    ClusterBuilder, MultiTurn, PoolCapacity, Rag, RoutingPolicy, SharedPrefix, Workload,
};

#[test]
fn runs_are_deterministic() {
    let w = MultiTurn::default()
        .with_requests(300)
        .generate(16)
        .unwrap();
    let mut b = ClusterBuilder::new();
    b.workers(4).policy(RoutingPolicy::Random).seed(3);
    let a = b.build(&w).unwrap().run();
    let c = b.build(&w).unwrap().run();
    assert_eq!(a, c);
    assert_eq!(a.completed, 300);
}

#[test]
fn no_policy_beats_the_ideal_and_kv_beats_round_robin() {
    for w in [
        SharedPrefix::default()
            .with_requests(256)
            .generate(16)
            .unwrap(),
        MultiTurn::default()
            .with_requests(400)
            .generate(16)
            .unwrap(),
        Rag::default().with_requests(300).generate(64).unwrap(),
    ] {
        let mut b = ClusterBuilder::new();
        b.workers(4);
        let mut hits = Vec::new();
        for p in RoutingPolicy::all() {
            let r = b.policy(p).build(&w).unwrap().run();
            assert_eq!(r.completed, w.len(), "{} {}", w.name(), r.policy);
            assert!(
                r.hits.block_hit_ratio <= r.hits.ideal_block_hit_ratio + 1e-12,
                "{} {}",
                w.name(),
                r.policy
            );
            assert_eq!(r.engine.evicted_blocks, 0, "unlimited cache");
            hits.push(r.hits.block_hit_ratio);
        }
        assert!(
            hits[0] > hits[1],
            "{}: kv {} vs round-robin {}",
            w.name(),
            hits[0],
            hits[1]
        );
    }
}

#[test]
fn a_blind_router_loses_hits() {
    let w = MultiTurn {
        think_time_s: 2.0,
        ..MultiTurn::default()
    }
    .with_requests(400)
    .generate(16)
    .unwrap();
    let mut b = ClusterBuilder::new();
    b.workers(8);
    let prompt = b.build(&w).unwrap().run();
    // Events arrive after 10 minutes: the index knows nothing when it routes.
    let late = b.event_delay_ns(600_000_000_000).build(&w).unwrap().run();
    assert!(
        late.hits.block_hit_ratio < prompt.hits.block_hit_ratio,
        "{} vs {}",
        late.hits.block_hit_ratio,
        prompt.hits.block_hit_ratio
    );
    assert_eq!(late.completed, w.len());
    assert_eq!(late.event_delay_s, 600.0);
}

#[test]
fn small_pools_evict_preempt_and_keep_their_invariants() {
    let mut w = MultiTurn::default()
        .with_requests(300)
        .generate(16)
        .unwrap();
    w.speed_up(20.0);
    let longest = w.max_request_blocks();
    let mut b = ClusterBuilder::new();
    b.workers(2)
        .capacity(PoolCapacity::Blocks(longest + 40))
        .token_budget(256);
    let mut cluster = b.build(&w).unwrap();
    let mut calls = 0;
    cluster.simulate(&mut |done, total| {
        calls += 1;
        assert!(done <= total);
    });
    assert!(calls > 0);
    for e in cluster.engines() {
        e.pool().check_invariants().unwrap();
        assert!(e.is_idle());
        assert_eq!(e.pool_stats().active, 0, "every sequence released");
    }
    let r = cluster.report();
    assert_eq!(r.completed, w.len());
    assert_eq!(r.rejected, 0);
    assert!(r.engine.preemptions > 0, "{:?}", r.engine);
    assert!(r.engine.recomputed_tokens > 0);
    assert!(r.engine.evicted_blocks > 0);
    assert_eq!(r.engine.pool_errors, 0);
    assert!(r.router.events > 0 && r.router.unknown_worker_events == 0);
}

#[test]
fn requests_larger_than_a_pool_are_rejected_not_fatal() {
    let w = SharedPrefix::default()
        .with_requests(32)
        .generate(16)
        .unwrap();
    // 2,176-token prompts need 137+ blocks of 16; give 100.
    let r = ClusterBuilder::new()
        .workers(2)
        .capacity(PoolCapacity::Blocks(100))
        .build(&w)
        .unwrap()
        .run();
    assert_eq!(r.rejected, 32);
    assert_eq!(r.completed, 0);
    assert_eq!(r.ttft.count, 0);
}

#[test]
fn azure_trace_has_no_shared_prefixes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(path) = ["shared/data", "../shared/data"]
        .iter()
        .map(|d| root.join(d).join("azure/AzureLLMInferenceTrace_conv.csv"))
        .find(|p| p.is_file())
    else {
        eprintln!("skipping: azure/AzureLLMInferenceTrace_conv.csv not found under ../shared/data");
        return;
    };
    let w = Workload::load_azure(&path, 16, Some(2000)).unwrap();
    assert_eq!(w.len(), 2000);
    assert_eq!(w.ideal().hit_blocks, 0);
    let r = ClusterBuilder::new().workers(4).build(&w).unwrap().run();
    assert_eq!(r.completed, 2000);
    assert_eq!(r.hits.hit_blocks, 0);
    assert!(r.ttft.p50 > 0.0);
}
