//! The model's linear layer: the batch-invariant kernels of [`PackedLinear`] on 4-bit (Q4_1)
//! and 8-bit (Q8_0-style) weights against `gemm` on f32 weights, at SmolLM2-135M shapes
//! (576 -> 1536, the feed-forward up projection), for decode batch sizes and a 512-token
//! prefill. Run with `cargo bench -p kvmesh-engine --bench linear --features gemm`; numbers in
//! `docs/bench/engine.md`. Throughput is in multiply-adds x 2 (flops).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvmesh_engine::{dequantize, f32_to_f16, gemm_linear, DenseMatrix, GgmlType, PackedLinear};

/// xorshift bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect()
}

/// Random Q4_1 blocks with small scales, like a real checkpoint's.
fn q4_1(rows: usize, cols: usize) -> Vec<u8> {
    let raw = bytes(rows * cols / 32 * 16, 1);
    raw.chunks_exact(16)
        .enumerate()
        .flat_map(|(i, q)| {
            let d = f32_to_f16(0.001 + (i % 7) as f32 * 0.002).to_le_bytes();
            let m = f32_to_f16(-0.01 * (i % 5) as f32).to_le_bytes();
            d.into_iter().chain(m).chain(q.iter().copied())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (rows, cols) = (1536, 576);
    let q4 = q4_1(rows, cols);
    let mut dense = vec![0.0; rows * cols];
    dequantize(GgmlType::Q4_1, &q4, &mut dense);
    let packed4 = PackedLinear::from_ggml(GgmlType::Q4_1, &q4, rows, cols).expect("shape");
    let f32_bytes: Vec<u8> = dense.iter().flat_map(|v| v.to_le_bytes()).collect();
    let packed8 = PackedLinear::from_ggml(GgmlType::F32, &f32_bytes, rows, cols).expect("shape");
    let gemm = DenseMatrix::new(dense, rows, cols);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("linear_576x1536");
    for n in [1usize, 8, 16, 512] {
        let x: Vec<f32> = bytes(n * cols, 2)
            .iter()
            .map(|&b| f32::from(b) / 128.0 - 1.0)
            .collect();
        let mut out = vec![0.0; n * rows];
        g.throughput(Throughput::Elements((2 * n * rows * cols) as u64));
        g.bench_with_input(BenchmarkId::new("packed_q4_1", n), &n, |b, &n| {
            b.iter(|| packed4.forward(black_box(&x), n, &mut out, threads))
        });
        g.bench_with_input(BenchmarkId::new("packed_q8", n), &n, |b, &n| {
            b.iter(|| packed8.forward(black_box(&x), n, &mut out, threads))
        });
        g.bench_with_input(BenchmarkId::new("gemm_f32", n), &n, |b, &n| {
            b.iter(|| gemm_linear(black_box(&x), n, &gemm, &mut out, threads))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
