//! Micro-benchmarks of kvmesh-core: hashing, allocation, prefix matching, eviction and
//! memory per block. Run with `cargo bench -p kvmesh-core --bench core`; recorded numbers
//! live in `docs/bench/core.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvmesh_core::{BlockHasher, BlockPool, EvictionPolicyKind, ExtraKeys, SequenceHash};

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    // A cheap LCG: token ids spread over a 49k vocabulary like real text.
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            x % 49_152
        })
        .collect()
}

/// Chained hashing throughput, in bytes of token ids (4 per token).
fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_prefix");
    let input = tokens(8192, 1);
    for block_size in [16u32, 64, 512] {
        let hasher = BlockHasher::new(0, block_size, &ExtraKeys::default());
        g.throughput(Throughput::Bytes(input.len() as u64 * 4));
        g.bench_with_input(
            BenchmarkId::new("block_size", block_size),
            &input,
            |b, input| b.iter(|| hasher.hash_prefix(black_box(input))),
        );
    }
    g.finish();
}

/// A sequence takes 64 blocks from the free list and gives them back: blocks/s.
fn allocate_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    let mut pool = BlockPool::builder()
        .num_blocks(4096)
        .block_size(16)
        .record_events(false)
        .build()
        .unwrap();
    g.throughput(Throughput::Elements(64));
    g.bench_function("allocate_free_64_blocks", |b| {
        b.iter(|| {
            let seq = pool.match_prefix(&[], 0).sequence;
            pool.append_slots(seq, 64 * 16).unwrap();
            pool.release(black_box(seq)).unwrap();
        })
    });

    // Decode-style growth: one slot at a time over 4 blocks, then release.
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_one_slot_x64", |b| {
        b.iter(|| {
            let seq = pool.match_prefix(&[], 0).sequence;
            for _ in 0..64 {
                pool.append_slots(seq, 1).unwrap();
            }
            pool.release(seq).unwrap();
        })
    });
    g.finish();
}

fn cached_chain(pool: &mut BlockPool, blocks: usize, seed: u32) -> Vec<SequenceHash> {
    let bs = pool.block_size();
    let hasher = BlockHasher::new(0, bs, &ExtraKeys::default());
    let hashes = hasher.hash_prefix(&tokens(blocks * bs as usize, seed));
    let seq = pool
        .match_prefix(&hashes, hashes.len() * bs as usize)
        .sequence;
    pool.append_slots(seq, hashes.len() * bs as usize).unwrap();
    pool.commit_blocks(seq, &hashes).unwrap();
    pool.release(seq).unwrap();
    hashes
}

/// `match_prefix` over a fully cached 128-block chain, plus the release that unpins it.
fn match_prefix(c: &mut Criterion) {
    let mut g = c.benchmark_group("match_prefix");
    for kind in [EvictionPolicyKind::Lru, EvictionPolicyKind::Lfu] {
        let mut pool = BlockPool::builder()
            .num_blocks(16_384)
            .block_size(16)
            .eviction(kind)
            .record_events(false)
            .build()
            .unwrap();
        // Other cached chains around it, so the registry is not trivially small.
        for seed in 0..100 {
            cached_chain(&mut pool, 128, 1000 + seed);
        }
        let hashes = cached_chain(&mut pool, 128, 7);
        g.bench_function(
            BenchmarkId::new("hit_128_blocks_and_release", kind.name()),
            |b| {
                b.iter(|| {
                    let m = pool.match_prefix(black_box(&hashes), 128 * 16);
                    assert_eq!(m.cached_blocks, 128);
                    pool.release(m.sequence).unwrap();
                })
            },
        );
        g.bench_function(
            BenchmarkId::new("cached_prefix_len_128", kind.name()),
            |b| b.iter(|| pool.cached_prefix_len(black_box(&hashes))),
        );
    }
    g.finish();
}

/// Allocation when the free list is empty: every block comes from evicting a cached tail.
fn evicting_allocation(c: &mut Criterion) {
    let mut g = c.benchmark_group("evict");
    for kind in [EvictionPolicyKind::Lru, EvictionPolicyKind::Lfu] {
        let mut pool = BlockPool::builder()
            .num_blocks(8192)
            .block_size(16)
            .eviction(kind)
            .record_events(true)
            .build()
            .unwrap();
        let mut seed = 0;
        g.throughput(Throughput::Elements(16));
        g.bench_function(BenchmarkId::new("refill_16_blocks", kind.name()), |b| {
            b.iter(|| {
                // Each iteration caches a new 16-block chain, evicting old ones once full.
                seed += 1;
                cached_chain(&mut pool, 16, seed);
                pool.drain_events().for_each(drop);
            })
        });
    }
    g.finish();
}

/// Not a timing: bookkeeping bytes per block with every block cached (the worst case).
fn memory_per_block(_: &mut Criterion) {
    for blocks in [16_384usize, 262_144] {
        let mut pool = BlockPool::builder()
            .num_blocks(blocks)
            .block_size(16)
            .record_events(false)
            .build()
            .unwrap();
        for seed in 0..(blocks / 128) as u32 {
            cached_chain(&mut pool, 128, seed);
        }
        let st = pool.stats();
        eprintln!(
            "pool memory: {blocks} blocks, {} cached, {} evictable: {:.1} bytes/block",
            st.cached,
            st.evictable,
            pool.memory_usage() as f64 / blocks as f64
        );
    }
}

criterion_group!(
    benches,
    hashing,
    allocate_free,
    match_prefix,
    evicting_allocation,
    memory_per_block
);
criterion_main!(benches);
