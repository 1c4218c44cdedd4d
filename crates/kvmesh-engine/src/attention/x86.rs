//! The AVX2 + FMA backend (x86_64), chosen at run time.
//!
//! This file holds all of the engine's `unsafe` for attention. The argument is the same
//! everywhere: an [`Avx2Fma`] value exists only if [`Avx2Fma::detect`] saw AVX2, FMA and F16C
//! on this CPU, so the intrinsics may run; every load and store is inside a slice whose bounds
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
//!
//! Keys and values stored as f16 are widened eight at a time with F16C's `vcvtph2ps` as they
//! are loaded ([`Load8`]); one conversion feeds up to four FMAs, so a half cache costs little
//! arithmetic and saves half the memory traffic.

use std::arch::x86_64::*;

use super::kernel::{self, Job, Keys, Scratch, VecOps};
use crate::kv_cache::{KvElement, F16};
use crate::simd::SimdLevel;

/// A stored element type the AVX2 kernels can load eight of into one f32 vector.
pub(super) trait Load8: KvElement {
    /// The eight elements at `p`, widened to f32.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and F16C, and `p..p + 8` must be readable.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller guarantees eight readable floats at `p` and AVX.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Load8 for i8 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: eight `i8`s are 8 readable bytes (the caller's guarantee); AVX2 is present
        // (the caller's guarantee).
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
}

impl Load8 for F16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: eight `F16`s (`u16` bits) are 16 readable bytes (the caller's guarantee);
        // F16C is present (the caller's guarantee).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// Proof that this CPU has AVX2 and FMA; the AVX2 vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2Fma {
    _proof: (),
}

impl Avx2Fma {
    /// `Some` when the CPU running this process supports AVX2, FMA and F16C (every x86_64
    /// CPU with AVX2 has F16C).
    pub(super) fn detect() -> Option<Self> {
        (crate::simd::cpu_level() >= SimdLevel::Avx2).then_some(Avx2Fma { _proof: () })
    }

    /// Runs the driver with AVX2 operations.
    pub(super) fn attend<E: Load8>(
        self,
        job: &Job<'_, E>,
        q: &[f32],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        // SAFETY: `self` exists, so `detect` found AVX2, FMA and F16C on this CPU.
        unsafe { attend_avx2(self, job, q, out, scratch) }
    }
}

/// The driver compiled with AVX2, FMA and F16C enabled.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C (holding an [`Avx2Fma`] proves it).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<E: Load8>(
    ops: Avx2Fma,
    job: &Job<'_, E>,
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

impl<E: Load8> VecOps<E> for Avx2Fma {
    #[inline(always)]
    fn qk(self, q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]) {
        let (r, n) = (q.len() / d, keys.n);
        let s = &mut s[..r * n];
        // Three queries at a time (a GQA group of SmolLM2): 3 queries x 2 key vectors x 2
        // (even/odd dims) = 12 accumulators, plus two key vectors and one broadcast.
        let mut i = 0;
        while i < r {
            let rows = (r - i).min(3);
            let (q, s) = (&q[i * d..(i + rows) * d], &mut s[i * n..(i + rows) * n]);
            match rows {
                3 => qk_rows::<E, 3>(self, q, keys, d, s),
                2 => qk_rows::<E, 2>(self, q, keys, d, s),
                _ => qk_rows::<E, 1>(self, q, keys, d, s),
            }
            i += rows;
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
    fn prefetch(self, x: &[E]) {
        for line in x.chunks(64 / size_of::<E>()) {
            // SAFETY: a prefetch hint of an address inside `x`; it never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    #[inline(always)]
    fn pv(self, p: &[f32], v: &[E], d: usize, acc: &mut [f32]) {
        let (r, n) = (acc.len() / d, v.len() / d);
        let p = &p[..r * n];
        // Three accumulator rows at a time: 3 rows x 2 columns x 2 (even/odd keys) = 12
        // registers.
        let mut i = 0;
        while i < r {
            let rows = (r - i).min(3);
            let (p, acc) = (&p[i * n..(i + rows) * n], &mut acc[i * d..(i + rows) * d]);
            match rows {
                3 => pv_rows::<E, 3>(self, p, v, d, acc),
                2 => pv_rows::<E, 2>(self, p, v, d, acc),
                _ => pv_rows::<E, 1>(self, p, v, d, acc),
            }
            i += rows;
        }
    }
}

/// `s[t * n + j] = dot(q_t, key_j)` for `N` queries `q` (`N x d`) and the `n` keys of
/// `keys`.
///
/// Every score is computed the same way whichever path computes it: an FMA chain over the
/// even dims, one over the odd dims (two chains hide the FMA latency), then their sum. Eight
/// keys whose dim rows lie inside the run (`first + j + 8 <= stride`) are one vector lane
/// each; the rest go through [`dot_split`], the same operations one lane at a time. So the
/// scores do not depend on how keys and queries are grouped (chunked prefill, decode and
/// per-head splits stay bitwise equal).
// `t` and `v` index accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn qk_rows<E: Load8, const N: usize>(
    _: Avx2Fma,
    q: &[f32],
    keys: Keys<'_, E>,
    d: usize,
    s: &mut [f32],
) {
    let (run, stride, first, n) = (keys.run, keys.stride, keys.first, keys.n);
    assert!(d == 0 || (d - 1) * stride + first + n <= run.len());
    let mut j = 0;
    // Keys j..j + 16 as two vectors while their rows stay inside the run (lanes past `n` are
    // computed from the next slots of the same block and dropped).
    while j < n && first + j + 16 <= stride && d > 0 {
        let out = qk_lanes::<E, N, 2>(q, run, stride, first + j, d);
        store_lanes(&out, s, n, j);
        j += 16;
    }
    qk_tail::<E, N>(q, keys, d, s, j);
}

/// Keys `j..n` of [`qk_rows`]: eight at a time while their rows stay inside the run, then one
/// at a time (the same operations per key as the vector lanes). The AVX-512 backend ends its
/// 16-key vectors here too.
// `t` indexes query rows and score rows in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub(super) fn qk_tail<E: Load8, const N: usize>(
    q: &[f32],
    keys: Keys<'_, E>,
    d: usize,
    s: &mut [f32],
    mut j: usize,
) {
    let Keys {
        run,
        stride,
        first,
        n,
    } = keys;
    assert!(q.len() == N * d && s.len() == N * n);
    while j < n && first + j + 8 <= stride && d > 0 {
        let out = qk_lanes::<E, N, 1>(q, run, stride, first + j, d);
        store_lanes(&out, s, n, j);
        j += 8;
    }
    for j in j..n {
        for t in 0..N {
            let key = |c: usize| run[c * stride + first + j].to_f32();
            s[t * n + j] = dot_split(&q[t * d..(t + 1) * d], key);
        }
    }
}

/// The scores of `N` queries against the `8 x V` keys starting at slot `at` of a dim-major
/// key run, one lane per key.
// `t` and `v` index accumulator arrays in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn qk_lanes<E: Load8, const N: usize, const V: usize>(
    q: &[f32],
    run: &[E],
    stride: usize,
    at: usize,
    d: usize,
) -> [[[f32; 8]; V]; N] {
    assert!(d > 0 && q.len() == N * d && (d - 1) * stride + at + 8 * V <= run.len());
    let (qp, kp) = (q.as_ptr(), run.as_ptr());
    let mut out = [[[0.0f32; 8]; V]; N];
    // SAFETY: AVX2/FMA/F16C are present (this runs inside `attend_avx2`). Key loads read 8
    // elements at `c * stride + at + 8 v` with c < d and v < V, inside `run` as asserted;
    // query reads are `qp.add(t * d + c)` with t < N, c < d, inside `q` as asserted.
    unsafe {
        let mut even = [[_mm256_setzero_ps(); V]; N];
        let mut odd = [[_mm256_setzero_ps(); V]; N];
        let mut c = 0;
        while c + 2 <= d {
            fma_dim::<E, N, V>(&mut even, qp.add(c), d, kp.add(c * stride + at));
            fma_dim::<E, N, V>(&mut odd, qp.add(c + 1), d, kp.add((c + 1) * stride + at));
            c += 2;
        }
        if c < d {
            fma_dim::<E, N, V>(&mut even, qp.add(c), d, kp.add(c * stride + at));
        }
        for t in 0..N {
            for v in 0..V {
                _mm256_storeu_ps(out[t][v].as_mut_ptr(), _mm256_add_ps(even[t][v], odd[t][v]));
            }
        }
    }
    out
}

/// `acc[t][v] += q_t[c] * keys[8 v..8 v + 8]` for one dim `c`: `q` points at query 0's
/// element `c` (query `t`'s is `d` further per query), `k` at the dim's first key.
///
/// # Safety
///
/// AVX2/FMA/F16C must be present; `q.add(t * d)` for t < N and `k..k + 8 V` must be readable.
// `t` and `v` index accumulator arrays in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fma_dim<E: Load8, const N: usize, const V: usize>(
    acc: &mut [[__m256; V]; N],
    q: *const f32,
    d: usize,
    k: *const E,
) {
    // SAFETY: the caller's guarantees.
    unsafe {
        let mut keys = [_mm256_setzero_ps(); V];
        for v in 0..V {
            keys[v] = E::load8(k.add(8 * v));
        }
        for t in 0..N {
            let qv = _mm256_set1_ps(*q.add(t * d));
            for v in 0..V {
                acc[t][v] = _mm256_fmadd_ps(qv, keys[v], acc[t][v]);
            }
        }
    }
}

/// Copies the lanes of `out` for keys `j..min(j + 8 V, n)` into `s` (`N` rows of `n`).
#[inline(always)]
fn store_lanes<const N: usize, const V: usize>(
    out: &[[[f32; 8]; V]; N],
    s: &mut [f32],
    n: usize,
    j: usize,
) {
    let take = (n - j).min(8 * V);
    for (t, lanes) in out.iter().enumerate() {
        let flat = lanes.as_flattened();
        s[t * n + j..t * n + j + take].copy_from_slice(&flat[..take]);
    }
}

/// `dot(q, key)` with the operations of one lane of [`qk_lanes`]: FMA chains over the even
/// and the odd dims, then their sum.
#[inline(always)]
fn dot_split(q: &[f32], key: impl Fn(usize) -> f32) -> f32 {
    let (mut even, mut odd) = (0.0f32, 0.0f32);
    let mut c = 0;
    while c + 2 <= q.len() {
        even = q[c].mul_add(key(c), even);
        odd = q[c + 1].mul_add(key(c + 1), odd);
        c += 2;
    }
    if c < q.len() {
        even = q[c].mul_add(key(c), even);
    }
    even + odd
}

/// `acc_t += sum_j p[t * n + j] * v_j` for `N` accumulators `acc` (`N x d`), weights `p`
/// (`N x n`) and `n` values `v` (`n x d`).
///
/// Even and odd keys accumulate into separate registers (two independent FMA chains per
/// output vector hide the FMA latency), added to the running output once per tile; every
/// path (vector columns, 8-wide tail, scalar tail) uses this order, so results do not depend
/// on `N`.
// `t` indexes several accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn pv_rows<E: Load8, const N: usize>(_: Avx2Fma, p: &[f32], v: &[E], d: usize, acc: &mut [f32]) {
    pv_columns::<E, N>(p, v, d, acc, 0);
}

/// Output columns `from..d` of [`pv_rows`] (`from` a multiple of 8): the AVX-512 backend
/// hands the columns left after its 16-wide ones to this.
// `t` indexes several accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub(super) fn pv_columns<E: Load8, const N: usize>(
    p: &[f32],
    v: &[E],
    d: usize,
    acc: &mut [f32],
    from: usize,
) {
    let n = v.len() / d;
    assert!(p.len() == N * n && acc.len() == N * d && v.len() == n * d && from.is_multiple_of(8));
    let (d16, d8) = (d & !15, d & !7);
    let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    // SAFETY: AVX2/FMA/F16C are present (the `Avx2Fma` argument). With the lengths asserted
    // above: `pp.add(t * n + j)` is inside `p` (t < N, j < n); `vp.add(j * d + c + 8w)` reads
    // 8 elements of row j of `v` with c + 8(w + 1) <= d16 or <= d8, both <= d; `ap.add(t * d + c
    // + 8w)` likewise stays in row t of `acc`, which this function borrows exclusively.
    unsafe {
        let mut c = from;
        while c < d8 {
            // Two 8-wide columns when they fit, else one.
            let w = if c < d16 { 2 } else { 1 };
            let mut even = [[_mm256_setzero_ps(); 2]; N];
            let mut odd = [[_mm256_setzero_ps(); 2]; N];
            let mut j = 0;
            while j < n {
                for (sums, key) in [(&mut even, j), (&mut odd, j + 1)] {
                    if key >= n {
                        break;
                    }
                    let v0 = E::load8(vp.add(key * d + c));
                    let v1 = if w == 2 {
                        E::load8(vp.add(key * d + c + 8))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for t in 0..N {
                        let weight = _mm256_set1_ps(*pp.add(t * n + key));
                        sums[t][0] = _mm256_fmadd_ps(weight, v0, sums[t][0]);
                        sums[t][1] = _mm256_fmadd_ps(weight, v1, sums[t][1]);
                    }
                }
                j += 2;
            }
            for t in 0..N {
                for x in 0..w {
                    let at = ap.add(t * d + c + 8 * x);
                    let tile = _mm256_add_ps(even[t][x], odd[t][x]);
                    _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), tile));
                }
            }
            c += 8 * w;
        }
    }
    for t in 0..N {
        for c in d8..d {
            let (mut even, mut odd) = (0.0f32, 0.0f32);
            for j in 0..n {
                let x = p[t * n + j]
                    .mul_add(v[j * d + c].to_f32(), if j % 2 == 0 { even } else { odd });
                if j % 2 == 0 {
                    even = x;
                } else {
                    odd = x;
                }
            }
            acc[t * d + c] += even + odd;
        }
    }
}
