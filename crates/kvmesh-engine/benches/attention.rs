//! Paged attention micro-benchmarks with SmolLM2-135M shapes (9 query heads, 3 KV heads,
//! head dim 64, blocks of 16 tokens, one layer), portable vs AVX2+FMA backend, f16, int8 and
//! f32 KV.
//!
//! - `decode/<backend>/<dtype>_b<batch>_ctx<context>`: one decode step for `batch` sequences
//!   of `context` tokens each (batch 1, 8, 16; context 512, 2048); throughput in KV tokens
//!   read.
//! - `prefill/<backend>/<dtype>_chunk512_start<s>`: a 512-token chunk over a cached prefix of
//!   `s` tokens (0 and 1536); throughput in query tokens.
//!
//! One layer keeps the KV in the last-level cache (at most 48 MiB here), so this measures the
//! kernels' arithmetic; a 30-layer batch reads from DRAM (see `docs/bench/engine.md`).
//!
//! Block tables are shuffled (as a pool hands them out after churn), and every sequence has
//! its own blocks. After criterion's runs a table of portable vs SIMD times (best of
//! interleaved rounds, measured by this file, not criterion) and their ratio is printed.
//!
//! Run: `cargo bench -p kvmesh-engine --bench attention`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use kvmesh_core::{BlockId, BlockPool, KvDtype, KvGeometry, ModelDims};
use kvmesh_engine::{AttentionBackend, KvCache, PagedAttention};

const QUERY_HEADS: u32 = 9;
const KV_HEADS: u32 = 3;
const HEAD_DIM: u32 = 64;
const BLOCK: usize = 16;

/// A cache holding `seqs` sequences of `len` tokens, with random K/V, and their tables.
struct Setup {
    cache: KvCache,
    tables: Vec<Vec<BlockId>>,
}

fn rng_stream(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn setup(seqs: usize, len: usize, dtype: KvDtype) -> Setup {
    let dims = ModelDims {
        num_layers: 1,
        num_query_heads: QUERY_HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        max_context: None,
    };
    let geometry = KvGeometry::new(dims, dtype, BLOCK as u32).unwrap();
    let per_seq = len.div_ceil(BLOCK);
    let num_blocks = seqs * per_seq;
    let mut pool = BlockPool::builder()
        .num_blocks(num_blocks)
        .block_size(1)
        .build()
        .unwrap();
    let seq = pool.match_prefix(&[], 0).sequence;
    pool.append_slots(seq, num_blocks).unwrap();
    let mut ids = pool.block_table(seq).unwrap().to_vec();
    let mut next = rng_stream(42);
    for i in (1..ids.len()).rev() {
        let j = ((next() + 1.0) * 0.5 * (i + 1) as f32) as usize;
        ids.swap(i, j.min(i));
    }
    let mut cache = KvCache::new(geometry, num_blocks).unwrap();
    let row = (KV_HEADS * HEAD_DIM) as usize;
    let tables: Vec<Vec<BlockId>> = ids.chunks(per_seq).map(<[_]>::to_vec).collect();
    for table in &tables {
        let k: Vec<f32> = (0..len * row).map(|_| next()).collect();
        let v: Vec<f32> = (0..len * row).map(|_| next()).collect();
        cache.write_tokens(0, table, 0, &k, &v).unwrap();
    }
    Setup { cache, tables }
}

fn queries(tokens: usize) -> Vec<f32> {
    let mut next = rng_stream(7);
    (0..tokens * (QUERY_HEADS * HEAD_DIM) as usize)
        .map(|_| next())
        .collect()
}

/// One benchmark case: a name and a closure running it with a given backend.
struct Case {
    group: &'static str,
    name: String,
    throughput: u64,
    run: Box<dyn Fn(&PagedAttention)>,
}

fn cases() -> Vec<Case> {
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut cases = vec![];
    for dtype in [KvDtype::F16, KvDtype::Int8, KvDtype::F32] {
        cases.extend(dtype_cases(dtype, scale));
    }
    cases
}

fn dtype_cases(dtype: KvDtype, scale: f32) -> Vec<Case> {
    let mut cases = vec![];
    for context in [512usize, 2048] {
        for batch in [1usize, 8, 16] {
            let s = setup(batch, context, dtype);
            let q = queries(batch);
            cases.push(Case {
                group: "decode",
                name: format!("{dtype}_b{batch}_ctx{context}"),
                throughput: (batch * context) as u64,
                run: Box::new(move |a: &PagedAttention| {
                    let seqs: Vec<(&[BlockId], usize)> =
                        s.tables.iter().map(|t| (t.as_slice(), context)).collect();
                    let mut out = vec![0.0; q.len()];
                    a.decode(&s.cache, 0, &seqs, black_box(&q), &mut out, scale)
                        .unwrap();
                    black_box(out);
                }),
            });
        }
    }
    for start in [0usize, 1536] {
        let chunk = 512;
        let s = setup(1, start + chunk, dtype);
        let q = queries(chunk);
        cases.push(Case {
            group: "prefill",
            name: format!("{dtype}_chunk{chunk}_start{start}"),
            throughput: chunk as u64,
            run: Box::new(move |a: &PagedAttention| {
                let mut out = vec![0.0; q.len()];
                a.prefill(
                    &s.cache,
                    0,
                    &s.tables[0],
                    start,
                    black_box(&q),
                    &mut out,
                    scale,
                )
                .unwrap();
                black_box(out);
            }),
        });
    }
    cases
}

fn backends() -> Vec<PagedAttention> {
    AttentionBackend::ALL
        .into_iter()
        .filter_map(|b| PagedAttention::with_backend(b).ok())
        .collect()
}

/// Best time per call over interleaved rounds of each backend (robust to a noisy machine).
fn best_times(case: &Case, backends: &[PagedAttention]) -> Vec<Duration> {
    let mut best = vec![Duration::MAX; backends.len()];
    for _round in 0..5 {
        for (b, attention) in backends.iter().enumerate() {
            let start = Instant::now();
            let mut iters = 0u32;
            while start.elapsed() < Duration::from_millis(60) || iters < 2 {
                let t = Instant::now();
                (case.run)(attention);
                best[b] = best[b].min(t.elapsed());
                iters += 1;
            }
        }
    }
    best
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let backends = backends();
    let cases = cases();
    for case in &cases {
        let mut group = criterion.benchmark_group(case.group);
        group.throughput(Throughput::Elements(case.throughput));
        for attention in &backends {
            group.bench_function(
                BenchmarkId::new(attention.backend().name(), &case.name),
                |b| b.iter(|| (case.run)(attention)),
            );
        }
        group.finish();
    }
    criterion.final_summary();

    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if quick || backends.len() < 2 {
        if backends.len() < 2 {
            println!("only the portable backend is available on this CPU: no ratio to print");
        }
        return;
    }
    println!();
    println!("portable vs SIMD backends (best of 5 interleaved rounds, per call, us):");
    let names: Vec<String> = backends
        .iter()
        .map(|a| a.backend().name().to_string())
        .collect();
    let last = names.len() - 1;
    let mut header = format!("{:<8} {:<24}", "kernel", "case");
    for n in &names {
        header += &format!(" {n:>10}");
    }
    header += &format!(" {:>16}", format!("{}/{}", names[0], names[last]));
    if last >= 2 {
        header += &format!(" {:>16}", format!("{}/{}", names[last - 1], names[last]));
    }
    println!("{header}");
    for case in &cases {
        let t = best_times(case, &backends);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mut line = format!("{:<8} {:<24}", case.group, case.name);
        for &d in &t {
            line += &format!(" {:>10.1}", us(d));
        }
        line += &format!(" {:>15.2}x", us(t[0]) / us(t[last]));
        if last >= 2 {
            line += &format!(" {:>15.2}x", us(t[last - 1]) / us(t[last]));
        }
        println!("{line}");
    }
}
