//! The model's linear layer: the batch-invariant 8-bit kernel (`qlinear`) against `gemm` on
//! f32 weights, at SmolLM2-135M shapes (576 -> 1536, the feed-forward up projection), for
//! decode batch sizes and a 512-token prefill. Run with
//! `cargo bench -p kvmesh-engine --bench linear`; numbers in `docs/bench/engine.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvmesh_engine::{linear, qlinear, Matrix, QMatrix};

fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (rows, cols) = (1536, 576);
    let w = pseudo(rows * cols, 1);
    let dense = Matrix::new(w.clone(), rows, cols);
    let quant = QMatrix::quantize(&w, rows, cols);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("linear_576x1536");
    for n in [1usize, 8, 16, 512] {
        let x = pseudo(n * cols, 2);
        let mut out = vec![0.0; n * rows];
        g.throughput(Throughput::Elements((2 * n * rows * cols) as u64)); // flops
        g.bench_with_input(BenchmarkId::new("qlinear_w8a32", n), &n, |b, &n| {
            b.iter(|| qlinear(black_box(&x), n, &quant, &mut out, threads))
        });
        g.bench_with_input(BenchmarkId::new("gemm_f32", n), &n, |b, &n| {
            b.iter(|| linear(black_box(&x), n, &dense, &mut out, threads))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
