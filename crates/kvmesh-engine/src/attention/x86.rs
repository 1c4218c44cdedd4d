//! The AVX2 + FMA backend (x86_64), chosen at run time.
//!
//! This file holds all of the engine's `unsafe` for attention. The argument is the same
//! everywhere: an [`Avx2Fma`] value exists only if [`Avx2Fma::detect`] saw AVX2 and FMA on
//! this CPU, so the intrinsics may run; every load and store is inside a slice whose bounds
//! the surrounding code establishes (stated at each block).
//!
//! The vector operations are `#[inline(always)]` and are compiled into one function,
//! [`attend_avx2`], that enables the features; the generic driver (`kernel.rs`) is inlined
//! there too, so the intrinsics become plain instructions rather than calls.
//!
//! Register blocking: `qk` and `pv` take up to four query vectors at a time (a GQA group of
//! SmolLM2 is three), so each 8-float slice of a key or value row is loaded once and feeds
//! four FMAs; each query keeps two accumulators in `qk` and each output two 8-lane columns in
//! `pv`, giving 6 to 8 independent FMA chains to cover the FMA latency.

use std::arch::x86_64::*;

use super::kernel::{self, Job, Scratch, VecOps};

/// Proof that this CPU has AVX2 and FMA; the AVX2 vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2Fma {
    _proof: (),
}

impl Avx2Fma {
    /// `Some` when the CPU running this process supports AVX2 and FMA.
    pub(super) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
            .then_some(Avx2Fma { _proof: () })
    }

    /// Runs the driver with AVX2 operations.
    pub(super) fn attend(self, job: &Job<'_>, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
        // SAFETY: `self` exists, so `detect` found AVX2 and FMA on this CPU.
        unsafe { attend_avx2(self, job, q, out, scratch) }
    }
}

/// The driver compiled with AVX2 and FMA enabled.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA (holding an [`Avx2Fma`] proves it).
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    ops: Avx2Fma,
    job: &Job<'_>,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    kernel::attend(ops, job, q, out, scratch)
}

/// Horizontal sum of eight lanes.
///
/// # Safety
///
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `exp(x)` on eight lanes: Cephes' `expf` (range reduction by `ln 2`, degree-6 polynomial),
/// relative error about 2e-7 for `x` in `[-87.3, 88.4]`; inputs below are clamped (giving
/// about 1e-38, not 0).
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[inline(always)]
unsafe fn exp256(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.336_55)),
        _mm256_set1_ps(88.376_26),
    );
    // n = round(x / ln 2); r = x - n ln 2 with ln 2 split in two for precision.
    let n = _mm256_floor_ps(_mm256_fmadd_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
        _mm256_set1_ps(0.5),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
    let pow2n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvttps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n))
}

impl VecOps for Avx2Fma {
    #[inline(always)]
    fn qk(self, q: &[f32], k: &[f32], d: usize, s: &mut [f32]) {
        let (r, n) = (q.len() / d, k.len() / d);
        let s = &mut s[..r * n];
        let mut i = 0;
        while i + 4 <= r {
            qk_rows::<4>(
                self,
                &q[i * d..(i + 4) * d],
                k,
                d,
                &mut s[i * n..(i + 4) * n],
            );
            i += 4;
        }
        let (q, s) = (&q[i * d..r * d], &mut s[i * n..]);
        match r - i {
            3 => qk_rows::<3>(self, q, k, d, s),
            2 => qk_rows::<2>(self, q, k, d, s),
            1 => qk_rows::<1>(self, q, k, d, s),
            _ => {}
        }
    }

    #[inline(always)]
    fn exp_sum(self, s: &mut [f32], max: f32) -> f32 {
        let mut chunks = s.chunks_exact_mut(8);
        // SAFETY: AVX2/FMA are present (`self`); each load/store touches the 8 floats of one
        // exact chunk, or of the local 8-float buffer.
        unsafe {
            let m = _mm256_set1_ps(max);
            let mut sum = _mm256_setzero_ps();
            for c in &mut chunks {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                sum = _mm256_add_ps(sum, e);
            }
            let rest = chunks.into_remainder();
            let mut tail = 0.0;
            if !rest.is_empty() {
                let mut buf = [max; 8];
                buf[..rest.len()].copy_from_slice(rest);
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                rest.copy_from_slice(&buf[..rest.len()]);
                tail = rest.iter().sum();
            }
            hsum(sum) + tail
        }
    }

    #[inline(always)]
    fn scale(self, x: &mut [f32], c: f32) {
        let mut chunks = x.chunks_exact_mut(8);
        // SAFETY: AVX2 is present (`self`); each load/store is one exact 8-float chunk.
        unsafe {
            let cv = _mm256_set1_ps(c);
            for ch in &mut chunks {
                _mm256_storeu_ps(
                    ch.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(ch.as_ptr()), cv),
                );
            }
        }
        for v in chunks.into_remainder() {
            *v *= c;
        }
    }

    #[inline(always)]
    fn prefetch(self, x: &[f32]) {
        for line in x.chunks(16) {
            // SAFETY: a prefetch hint of an address inside `x`; it never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    #[inline(always)]
    fn pv(self, p: &[f32], v: &[f32], d: usize, acc: &mut [f32]) {
        let (r, n) = (acc.len() / d, v.len() / d);
        let p = &p[..r * n];
        let mut i = 0;
        while i + 4 <= r {
            pv_rows::<4>(
                self,
                &p[i * n..(i + 4) * n],
                v,
                d,
                &mut acc[i * d..(i + 4) * d],
            );
            i += 4;
        }
        let (p, acc) = (&p[i * n..], &mut acc[i * d..]);
        match r - i {
            3 => pv_rows::<3>(self, p, v, d, acc),
            2 => pv_rows::<2>(self, p, v, d, acc),
            1 => pv_rows::<1>(self, p, v, d, acc),
            _ => {}
        }
    }
}

/// `s[t * n + j] = dot(q_t, k_j)` for `N` queries `q` (`N x d`) and `n` keys `k` (`n x d`).
// `t` indexes several accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn qk_rows<const N: usize>(_: Avx2Fma, q: &[f32], k: &[f32], d: usize, s: &mut [f32]) {
    let n = k.len() / d;
    assert!(q.len() == N * d && s.len() == N * n);
    let (d16, d8) = (d & !15, d & !7);
    let qp = q.as_ptr();
    for (j, kj) in k.chunks_exact(d).enumerate() {
        let kp = kj.as_ptr();
        let mut sums = [0.0f32; N];
        // SAFETY: AVX2/FMA are present (the `Avx2Fma` argument). Loads read 8 floats at
        // column c of `kj` (length d) and of query t (`q[t * d..(t + 1) * d]`, inside `q`,
        // whose length is N x d as asserted) with c + 8 <= d8 <= d.
        unsafe {
            let mut a0 = [_mm256_setzero_ps(); N];
            let mut a1 = [_mm256_setzero_ps(); N];
            let mut c = 0;
            while c < d16 {
                let k0 = _mm256_loadu_ps(kp.add(c));
                let k1 = _mm256_loadu_ps(kp.add(c + 8));
                for t in 0..N {
                    let qt = qp.add(t * d + c);
                    a0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(qt), k0, a0[t]);
                    a1[t] = _mm256_fmadd_ps(_mm256_loadu_ps(qt.add(8)), k1, a1[t]);
                }
                c += 16;
            }
            if c < d8 {
                let k0 = _mm256_loadu_ps(kp.add(c));
                for t in 0..N {
                    a0[t] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(t * d + c)), k0, a0[t]);
                }
            }
            for t in 0..N {
                sums[t] = hsum(_mm256_add_ps(a0[t], a1[t]));
            }
        }
        for (t, sum) in sums.into_iter().enumerate() {
            let qt = &q[t * d..(t + 1) * d];
            let tail: f32 = qt[d8..].iter().zip(&kj[d8..]).map(|(a, b)| a * b).sum();
            s[t * n + j] = sum + tail;
        }
    }
}

/// `acc_t += sum_j p[t * n + j] * v_j` for `N` accumulators `acc` (`N x d`), weights `p`
/// (`N x n`) and `n` values `v` (`n x d`).
// `t` indexes several accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn pv_rows<const N: usize>(_: Avx2Fma, p: &[f32], v: &[f32], d: usize, acc: &mut [f32]) {
    let n = v.len() / d;
    assert!(p.len() == N * n && acc.len() == N * d && v.len() == n * d);
    let (d16, d8) = (d & !15, d & !7);
    let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    // SAFETY: AVX2/FMA are present (the `Avx2Fma` argument). With the lengths asserted above:
    // `pp.add(t * n + j)` is inside `p` (t < N, j < n); `vp.add(j * d + c + 8w)` reads 8
    // floats of row j of `v` with c + 8(w + 1) <= d16 or <= d8, both <= d; `ap.add(t * d + c
    // + 8w)` likewise stays in row t of `acc`, which this function borrows exclusively.
    unsafe {
        let mut c = 0;
        while c < d16 {
            let mut a0 = [_mm256_setzero_ps(); N];
            let mut a1 = [_mm256_setzero_ps(); N];
            for t in 0..N {
                a0[t] = _mm256_loadu_ps(ap.add(t * d + c));
                a1[t] = _mm256_loadu_ps(ap.add(t * d + c + 8));
            }
            for j in 0..n {
                let v0 = _mm256_loadu_ps(vp.add(j * d + c));
                let v1 = _mm256_loadu_ps(vp.add(j * d + c + 8));
                for t in 0..N {
                    let w = _mm256_set1_ps(*pp.add(t * n + j));
                    a0[t] = _mm256_fmadd_ps(w, v0, a0[t]);
                    a1[t] = _mm256_fmadd_ps(w, v1, a1[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(ap.add(t * d + c), a0[t]);
                _mm256_storeu_ps(ap.add(t * d + c + 8), a1[t]);
            }
            c += 16;
        }
        if c < d8 {
            let mut a0 = [_mm256_setzero_ps(); N];
            for t in 0..N {
                a0[t] = _mm256_loadu_ps(ap.add(t * d + c));
            }
            for j in 0..n {
                let v0 = _mm256_loadu_ps(vp.add(j * d + c));
                for t in 0..N {
                    a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(*pp.add(t * n + j)), v0, a0[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(ap.add(t * d + c), a0[t]);
            }
        }
    }
    for t in 0..N {
        for c in d8..d {
            let mut x = acc[t * d + c];
            for j in 0..n {
                x += p[t * n + j] * v[j * d + c];
            }
            acc[t * d + c] = x;
        }
    }
}
