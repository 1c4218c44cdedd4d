//! The AVX-512 backend (x86_64), chosen at run time over the AVX2 one when the CPU has
//! AVX-512F.
//!
//! A block of 16 keys is one 512-bit vector per dim (keys are stored dim-major), and 16
//! value dims are one vector per key, so `qk` and `pv` issue half the loads, conversions and
//! FMAs of the AVX2 kernels. Each lane does exactly what an AVX2 lane does (scores: an FMA
//! chain over the even dims and one over the odd dims, then their sum; outputs: a chain over
//! the even keys and one over the odd keys of a tile, then their sum added to the running
//! output), so the two backends give the same bits, which the tests check. The softmax
//! helpers (`exp_sum`, `scale`) are the AVX2 ones: they are a small share of the work, and an
//! exp-sum over 16 lanes would add in a different order.
//!
//! Register use: `qk` keeps three queries x (even, odd) = 6 accumulators; `pv` up to three
//! rows x four 16-dim columns x (even, odd) = 24, so a 64-dim head's value row is loaded once
//! per key for all three rows of a GQA group.
//!
//! Safety argument as in `x86.rs`: an [`Avx512`] exists only if [`Avx512::detect`] saw
//! AVX-512F besides AVX2, FMA and F16C; loads and stores stay inside slices whose bounds the
//! surrounding code asserts.

use std::arch::x86_64::*;

use super::kernel::{self, Job, Keys, Scratch, VecOps};
use super::x86::{pv_columns, qk_tail, Avx2Fma, Load8};
use crate::kv_cache::F16;
use crate::simd::SimdLevel;

/// A stored element type the AVX-512 kernels can load sixteen of into one f32 vector.
pub(super) trait Load16: Load8 {
    /// The sixteen elements at `p`, widened to f32.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F, and `p..p + 16` must be readable.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        // SAFETY: the caller guarantees sixteen readable floats at `p` and AVX-512F.
        unsafe { _mm512_loadu_ps(p) }
    }
}

impl Load16 for i8 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        // SAFETY: sixteen `i8`s are 16 readable bytes; AVX-512F (the caller's guarantees).
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
}

impl Load16 for F16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        // SAFETY: sixteen `F16`s are 32 readable bytes; AVX-512F (the caller's guarantees).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// Proof that this CPU has AVX-512F (and AVX2, FMA, F16C); the AVX-512 vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512 {
    avx2: Avx2Fma,
}

impl Avx512 {
    /// `Some` when the CPU running this process supports AVX-512F besides AVX2, FMA and F16C.
    pub(super) fn detect() -> Option<Self> {
        let avx2 = Avx2Fma::detect()?;
        (crate::simd::cpu_level() >= SimdLevel::Avx512).then_some(Avx512 { avx2 })
    }

    /// Runs the driver with AVX-512 operations.
    pub(super) fn attend<E: Load16>(
        self,
        job: &Job<'_, E>,
        q: &[f32],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        // SAFETY: `self` exists, so `detect` found every feature the function enables.
        unsafe { attend_avx512(self, job, q, out, scratch) }
    }
}

/// The driver compiled with AVX-512F, AVX2, FMA and F16C enabled.
///
/// # Safety
///
/// The CPU must support those features (holding an [`Avx512`] proves it).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn attend_avx512<E: Load16>(
    ops: Avx512,
    job: &Job<'_, E>,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    kernel::attend(ops, job, q, out, scratch)
}

impl<E: Load16> VecOps<E> for Avx512 {
    #[inline(always)]
    fn qk(self, q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]) {
        let (r, n) = (q.len() / d, keys.n);
        let s = &mut s[..r * n];
        let mut i = 0;
        while i < r {
            let rows = (r - i).min(3);
            let (q, s) = (&q[i * d..(i + rows) * d], &mut s[i * n..(i + rows) * n]);
            match rows {
                3 => qk_rows::<E, 3>(q, keys, d, s),
                2 => qk_rows::<E, 2>(q, keys, d, s),
                _ => qk_rows::<E, 1>(q, keys, d, s),
            }
            i += rows;
        }
    }

    #[inline(always)]
    fn exp_sum(self, s: &mut [f32], max: f32) -> f32 {
        VecOps::<E>::exp_sum(self.avx2, s, max)
    }

    #[inline(always)]
    fn scale(self, x: &mut [f32], c: f32) {
        VecOps::<E>::scale(self.avx2, x, c)
    }

    #[inline(always)]
    fn prefetch(self, x: &[E]) {
        VecOps::<E>::prefetch(self.avx2, x)
    }

    #[inline(always)]
    fn pv(self, p: &[f32], v: &[E], d: usize, acc: &mut [f32]) {
        let (r, n) = (acc.len() / d, v.len() / d);
        let p = &p[..r * n];
        let mut i = 0;
        while i < r {
            let rows = (r - i).min(3);
            let (p, acc) = (&p[i * n..(i + rows) * n], &mut acc[i * d..(i + rows) * d]);
            match rows {
                3 => pv_rows::<E, 3>(p, v, d, acc),
                2 => pv_rows::<E, 2>(p, v, d, acc),
                _ => pv_rows::<E, 1>(p, v, d, acc),
            }
            i += rows;
        }
    }
}

/// `s[t * n + j] = dot(q_t, key_j)` for `N` queries: 16 keys per vector while their rows stay
/// inside the run, the rest through the AVX2 backend's tail (same operations per key).
// `t` indexes accumulators, query offsets and score rows in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn qk_rows<E: Load16, const N: usize>(q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]) {
    let Keys {
        run,
        stride,
        first,
        n,
    } = keys;
    assert!(q.len() == N * d && s.len() == N * n);
    assert!(d == 0 || (d - 1) * stride + first + n <= run.len());
    let mut j = 0;
    while j < n && first + j + 16 <= stride && d > 0 {
        let at = first + j;
        assert!((d - 1) * stride + at + 16 <= run.len());
        let (qp, kp) = (q.as_ptr(), run.as_ptr());
        let mut out = [[0.0f32; 16]; N];
        // SAFETY: AVX-512F is present (this runs inside `attend_avx512`). Key loads read 16
        // elements at `c * stride + at` with c < d, inside `run` as asserted; query reads are
        // `qp.add(t * d + c)` with t < N and c < d, inside `q`.
        unsafe {
            let mut even = [_mm512_setzero_ps(); N];
            let mut odd = [_mm512_setzero_ps(); N];
            let mut c = 0;
            while c + 2 <= d {
                let k0 = E::load16(kp.add(c * stride + at));
                let k1 = E::load16(kp.add((c + 1) * stride + at));
                for t in 0..N {
                    even[t] = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(t * d + c)), k0, even[t]);
                    odd[t] = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(t * d + c + 1)), k1, odd[t]);
                }
                c += 2;
            }
            if c < d {
                let k0 = E::load16(kp.add(c * stride + at));
                for t in 0..N {
                    even[t] = _mm512_fmadd_ps(_mm512_set1_ps(*qp.add(t * d + c)), k0, even[t]);
                }
            }
            for t in 0..N {
                _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_add_ps(even[t], odd[t]));
            }
        }
        let take = (n - j).min(16);
        for (t, lanes) in out.iter().enumerate() {
            s[t * n + j..t * n + j + take].copy_from_slice(&lanes[..take]);
        }
        j += 16;
    }
    qk_tail::<E, N>(q, keys, d, s, j);
}

/// `acc_t += sum_j p[t * n + j] * v_j` for `N` rows: 16-dim columns, four at a time when they
/// fit, then the AVX2 backend's columns for the rest (`d` not a multiple of 16).
#[inline(always)]
fn pv_rows<E: Load16, const N: usize>(p: &[f32], v: &[E], d: usize, acc: &mut [f32]) {
    let n = v.len() / d;
    assert!(p.len() == N * n && acc.len() == N * d && v.len() == n * d);
    let mut c = 0;
    while c + 64 <= d {
        pv_block::<E, N, 4>(p, v, d, acc, c);
        c += 64;
    }
    while c + 16 <= d {
        pv_block::<E, N, 1>(p, v, d, acc, c);
        c += 16;
    }
    pv_columns::<E, N>(p, v, d, acc, c);
}

/// Output columns `c..c + 16 W` of [`pv_rows`]: even and odd keys in separate registers,
/// their sum added to `acc` once.
// `t` and `w` index accumulator arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn pv_block<E: Load16, const N: usize, const W: usize>(
    p: &[f32],
    v: &[E],
    d: usize,
    acc: &mut [f32],
    c: usize,
) {
    let n = v.len() / d;
    assert!(p.len() == N * n && acc.len() == N * d && v.len() == n * d && c + 16 * W <= d);
    let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    // SAFETY: AVX-512F is present (this runs inside `attend_avx512`). With the lengths
    // asserted: `pp.add(t * n + key)` is inside `p` (t < N, key < n); `vp.add(key * d + c +
    // 16 w)` reads 16 elements of row `key` of `v` (c + 16 W <= d); `ap.add(t * d + c + 16 w)`
    // likewise stays in row t of `acc`, which this function borrows exclusively.
    unsafe {
        let mut even = [[_mm512_setzero_ps(); W]; N];
        let mut odd = [[_mm512_setzero_ps(); W]; N];
        let mut j = 0;
        while j < n {
            for (sums, key) in [(&mut even, j), (&mut odd, j + 1)] {
                if key >= n {
                    break;
                }
                let mut vals = [_mm512_setzero_ps(); W];
                for w in 0..W {
                    vals[w] = E::load16(vp.add(key * d + c + 16 * w));
                }
                for t in 0..N {
                    let weight = _mm512_set1_ps(*pp.add(t * n + key));
                    for w in 0..W {
                        sums[t][w] = _mm512_fmadd_ps(weight, vals[w], sums[t][w]);
                    }
                }
            }
            j += 2;
        }
        for t in 0..N {
            for w in 0..W {
                let at = ap.add(t * d + c + 16 * w);
                let tile = _mm512_add_ps(even[t][w], odd[t][w]);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), tile));
            }
        }
    }
}
