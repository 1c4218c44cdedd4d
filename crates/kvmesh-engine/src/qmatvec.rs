//! The model's linear layers: 8-bit weights, f32 activations, and results that do not depend
//! on how tokens are batched.
//!
//! # Why 8-bit weights with f32 activations (W8A32)
//!
//! Decode is memory-bound: every step streams every weight. At f32 that is 4 bytes per weight;
//! [`QMatrix`] keeps each row as blocks of 32 signed 8-bit values with one f32 scale (ggml's
//! Q8_0 layout, 1.125 bytes per weight), 3.6x less traffic. Weights are dequantised in
//! registers (`q x d`) and multiplied with f32 activations. Quantising the activations too
//! (W8A8, integer dot products) was tried first (2026-11-27) and is faster per instruction,
//! but SmolLM2's activations have outlier channels: with per-32 activation blocks the model
//! answered "What is the capital of France?" with a list of French words instead of "Paris".
//! Requantising the file's 4-bit weights to 8 bits adds an error about 1/17 of their own step.
//!
//! # Batch invariance
//!
//! Every output element is computed by the same sequence of vector operations whatever the
//! number of tokens in the call, the tile it falls in, or the thread that runs it: 8-lane
//! FMAs over the row in order, then a fixed horizontal sum. So a token's logits are bitwise the
//! same whether it is prefilled alone, in a chunk, batched with other sequences, or recomputed
//! after preemption, and greedy decoding gives the same tokens under any scheduling. (A BLAS
//! `gemm` for prefill and a separate matvec for decode would break this: different summation
//! orders flip near-tied argmaxes.)
//!
//! # Speed
//!
//! The AVX2 micro-kernel computes a tile of 2 weight rows x 4 tokens: per 8 inputs it converts
//! 16 weights (2 x `cvtepi8_epi32` + `cvtepi32_ps` + `mul` by the block scale) and issues 8
//! FMAs, so prefill is compute-bound near the FMA throughput and decode streams weights once
//! per step for all sequences. Tokens left over from whole tiles (a decode of one to three
//! sequences) use 4-row x 1-token tiles, so no multiply is spent on padding; every tile shape
//! applies the same operations to each element. Rows are split across threads with rayon; each thread sweeps
//! token tiles over its rows, whose weights stay in cache.

use rayon::prelude::*;

/// Elements per quantisation block.
pub const QBLOCK: usize = 32;

/// A row-major matrix of 8-bit blocks with one f32 scale per block.
#[derive(Debug, Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

impl QMatrix {
    /// Quantises a row-major f32 matrix (symmetric, per block of 32).
    ///
    /// # Panics
    /// If the shape does not match or `cols` is not a multiple of 32.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        assert_eq!(cols % QBLOCK, 0, "columns must be a multiple of {QBLOCK}");
        let mut qs = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * cols / QBLOCK];
        qs.par_chunks_mut(cols)
            .zip(scales.par_chunks_mut(cols / QBLOCK))
            .zip(data.par_chunks(cols))
            .for_each(|((q, d), x)| quantize_row(x, q, d));
        QMatrix {
            rows,
            cols,
            qs,
            scales,
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weights and scales.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }

    /// Row `r` dequantised (for embedding look-ups and tests).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let q = &self.qs[r * self.cols..(r + 1) * self.cols];
        let d = &self.scales[r * self.cols / QBLOCK..(r + 1) * self.cols / QBLOCK];
        for ((o, qb), &s) in out
            .chunks_exact_mut(QBLOCK)
            .zip(q.chunks_exact(QBLOCK))
            .zip(d)
        {
            for (o, &v) in o.iter_mut().zip(qb) {
                *o = f32::from(v) * s;
            }
        }
    }

    fn row(&self, r: usize) -> (&[i8], &[f32]) {
        (
            &self.qs[r * self.cols..(r + 1) * self.cols],
            &self.scales[r * self.cols / QBLOCK..(r + 1) * self.cols / QBLOCK],
        )
    }
}

fn quantize_row(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), d) in x
        .chunks_exact(QBLOCK)
        .zip(qs.chunks_exact_mut(QBLOCK))
        .zip(scales.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Rows per parallel task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// Tokens per tile.
const TOKEN_TILE: usize = 4;

/// `out[n x rows] = x[n x cols] * dequant(w)^T`, on rayon's pool when `threads > 1`.
///
/// # Panics
/// If `x` or `out` is not `n` rows of the right width.
pub fn qlinear(x: &[f32], n: usize, w: &QMatrix, out: &mut [f32], threads: usize) {
    assert_eq!(x.len(), n * w.cols, "qlinear: input shape");
    assert_eq!(out.len(), n * w.rows, "qlinear: output shape");
    if n == 0 || w.rows == 0 {
        return;
    }
    let kernel = Kernel::detect();
    // Each task owns rows r0..r1 and writes out_t[r][t] (transposed) so tasks never share a
    // cache line of output; the transpose back is O(n x rows).
    let mut out_t = vec![0f32; w.rows * n];
    let task = |(ti, chunk): (usize, &mut [f32])| {
        let r0 = ti * ROWS_PER_TASK;
        let rows = chunk.len() / n;
        kernel.rows_times_tokens(w, r0, rows, x, n, chunk);
    };
    if threads > 1 && w.rows > ROWS_PER_TASK {
        out_t
            .par_chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(task);
    } else {
        out_t
            .chunks_mut(ROWS_PER_TASK * n)
            .enumerate()
            .for_each(task);
    }
    for (r, row) in out_t.chunks_exact(n).enumerate() {
        for (t, v) in row.iter().enumerate() {
            out[t * w.rows + r] = *v;
        }
    }
}

#[derive(Clone, Copy)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// `out_t[(r - r0) * n + t]` for rows `r0..r0 + rows` and all `n` tokens.
    fn rows_times_tokens(
        self,
        w: &QMatrix,
        r0: usize,
        rows: usize,
        x: &[f32],
        n: usize,
        out_t: &mut [f32],
    ) {
        for t0 in (0..n).step_by(TOKEN_TILE) {
            let tn = TOKEN_TILE.min(n - t0);
            if tn == TOKEN_TILE {
                self.tiles::<2, TOKEN_TILE>(w, r0, rows, x, t0, n, out_t);
            } else {
                // Fewer tokens than a tile (decode): one token at a time, more rows per tile,
                // so no multiply is spent on padding. Same per-element operations.
                for t in t0..t0 + tn {
                    self.tiles::<4, 1>(w, r0, rows, x, t, n, out_t);
                }
            }
        }
    }

    /// Tiles of `R` rows x `T` tokens starting at token `t0`, over rows `r0..r0 + rows`.
    #[allow(clippy::too_many_arguments)]
    fn tiles<const R: usize, const T: usize>(
        self,
        w: &QMatrix,
        r0: usize,
        rows: usize,
        x: &[f32],
        t0: usize,
        n: usize,
        out_t: &mut [f32],
    ) {
        let cols = w.cols;
        let xs: [&[f32]; T] = std::array::from_fn(|j| &x[(t0 + j) * cols..][..cols]);
        let mut r = 0;
        while r < rows {
            let rn = R.min(rows - r);
            // A short last tile repeats its last row; the copies are computed and dropped.
            let wr: [(&[i8], &[f32]); R] = std::array::from_fn(|i| w.row(r0 + r + i.min(rn - 1)));
            let mut acc = [[0f32; T]; R];
            match self {
                Kernel::Scalar => scalar_tile(&wr, &xs, &mut acc),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => x86::tile_checked(&wr, &xs, &mut acc),
            }
            for (i, acc_row) in acc.iter().enumerate().take(rn) {
                for (j, v) in acc_row.iter().enumerate() {
                    out_t[(r + i) * n + t0 + j] = *v;
                }
            }
            r += rn;
        }
    }
}

/// Reference tile: the same per-element order as the SIMD kernel (8 lanes, lane-wise FMA in
/// column order, then the fixed pairwise horizontal sum), so both are batch-invariant.
fn scalar_tile<const R: usize, const T: usize>(
    w: &[(&[i8], &[f32]); R],
    xs: &[&[f32]; T],
    acc: &mut [[f32; T]; R],
) {
    for (i, (q, d)) in w.iter().enumerate() {
        for (j, x) in xs.iter().enumerate() {
            let mut lanes = [0f32; 8];
            for (c, (xv, qv)) in x.chunks_exact(8).zip(q.chunks_exact(8)).enumerate() {
                let s = d[c * 8 / QBLOCK];
                for l in 0..8 {
                    lanes[l] = (f32::from(qv[l]) * s).mul_add(xv[l], lanes[l]);
                }
            }
            acc[i][j] = hsum8(&lanes);
        }
    }
}

/// ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)): the order the AVX2 reduction uses.
fn hsum8(l: &[f32; 8]) -> f32 {
    let a = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::QBLOCK;

    /// Only called after `Kernel::detect` found AVX2 and FMA.
    pub(super) fn tile_checked<const R: usize, const T: usize>(
        w: &[(&[i8], &[f32]); R],
        xs: &[&[f32]; T],
        acc: &mut [[f32; T]; R],
    ) {
        let cols = xs[0].len();
        assert!(cols.is_multiple_of(QBLOCK));
        for (q, d) in w {
            assert!(q.len() == cols && d.len() == cols / QBLOCK);
        }
        for x in xs {
            assert_eq!(x.len(), cols);
        }
        // SAFETY: `Kernel::Avx2` is only constructed when the CPU supports AVX2 and FMA; the
        // lengths the kernel reads were checked above.
        unsafe { tile(w, xs, acc) }
    }

    /// # Safety
    /// AVX2 and FMA must be available; every row has `cols` weights and `cols / 32` scales and
    /// every token `cols` inputs, with `cols` a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const T: usize>(
        w: &[(&[i8], &[f32]); R],
        xs: &[&[f32]; T],
        acc: &mut [[f32; T]; R],
    ) {
        let cols = xs[0].len();
        let mut a = [[_mm256_setzero_ps(); T]; R];
        let mut c = 0;
        while c < cols {
            let b = c / QBLOCK;
            // SAFETY: c + 8 <= cols for every row and token (lengths checked by the caller).
            unsafe {
                let wv: [__m256; R] = std::array::from_fn(|i| {
                    let (q, d) = w[i];
                    _mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            q.as_ptr().add(c) as *const __m128i,
                        ))),
                        _mm256_set1_ps(d[b]),
                    )
                });
                for j in 0..T {
                    let xv = _mm256_loadu_ps(xs[j].as_ptr().add(c));
                    for i in 0..R {
                        a[i][j] = _mm256_fmadd_ps(wv[i], xv, a[i][j]);
                    }
                }
            }
            c += 8;
        }
        for i in 0..R {
            for j in 0..T {
                acc[i][j] = hsum(a[i][j]);
            }
        }
    }

    /// ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), matching `super::hsum8`.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let a = _mm_add_ps(lo, hi); // [l0+l4, l1+l5, l2+l6, l3+l7]
        let b = _mm_add_ps(a, _mm_movehl_ps(a, a)); // [a0+a2, a1+a3, ..]
        let c = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1)); // b0 + b1
        _mm_cvtss_f32(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn qlinear_matches_the_dequantised_product() {
        for (n, rows, cols) in [(1, 8, 32), (3, 131, 576), (9, 100, 1536)] {
            let w = pseudo(rows * cols, 1);
            let x = pseudo(n * cols, 2);
            let q = QMatrix::quantize(&w, rows, cols);
            let mut out = vec![0.0; n * rows];
            qlinear(&x, n, &q, &mut out, 2);
            let mut row = vec![0.0; cols];
            for r in 0..rows {
                q.dequantize_row(r, &mut row);
                for t in 0..n {
                    let exact: f64 = (0..cols)
                        .map(|c| f64::from(x[t * cols + c]) * f64::from(row[c]))
                        .sum();
                    let got = f64::from(out[t * rows + r]);
                    assert!(
                        (got - exact).abs() < 1e-4 * exact.abs().max(1.0),
                        "{got} vs {exact}"
                    );
                    // And close to the unquantised weights.
                    let raw: f64 = (0..cols)
                        .map(|c| f64::from(x[t * cols + c]) * f64::from(w[r * cols + c]))
                        .sum();
                    let norm: f64 = (0..cols)
                        .map(|c| f64::from((x[t * cols + c] * w[r * cols + c]).abs()))
                        .sum();
                    assert!((got - raw).abs() / norm < 5e-3);
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_batching_or_threads() {
        let (rows, cols) = (150, 576);
        let q = QMatrix::quantize(&pseudo(rows * cols, 5), rows, cols);
        let x = pseudo(13 * cols, 6);
        let mut all = vec![0.0; 13 * rows];
        qlinear(&x, 13, &q, &mut all, 2);
        for t in 0..13 {
            let mut one = vec![0.0; rows];
            qlinear(&x[t * cols..(t + 1) * cols], 1, &q, &mut one, 1);
            assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                all[t * rows..(t + 1) * rows]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "token {t}"
            );
        }
    }

    #[test]
    fn simd_and_scalar_agree_bitwise() {
        let (rows, cols) = (2, 96);
        let q = QMatrix::quantize(&pseudo(rows * cols, 7), rows, cols);
        let x = pseudo(TOKEN_TILE * cols, 8);
        let wr = [q.row(0), q.row(1)];
        let xs: [&[f32]; TOKEN_TILE] = std::array::from_fn(|j| &x[j * cols..(j + 1) * cols]);
        let mut a = [[0f32; TOKEN_TILE]; 2];
        scalar_tile(&wr, &xs, &mut a);
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx2 = Kernel::detect() {
            let mut b = [[0f32; TOKEN_TILE]; 2];
            x86::tile_checked(&wr, &xs, &mut b);
            assert_eq!(a, b);
        }
    }
}
