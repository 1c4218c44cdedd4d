//! The portable backend: plain Rust loops, the reference the SIMD backend is tested against
//! and the fallback on CPUs (and architectures) without one.
//!
//! The loops run over keys (dim-major key runs) or value dims innermost, so the compiler can
//! vectorise them with the baseline instruction set (SSE2 on x86_64, NEON on aarch64) without
//! reassociating floats; `exp` is the standard library's. Stored elements are widened
//! ([`KvElement::to_f32`]) once per tile into a small stack buffer, [`WIDE`] floats at a time,
//! and the query rows then read the buffer: widening inside the product loops repeated it for
//! every query row of a GQA group, and a half's widening does not vectorise as well as an
//! f32 FMA (this backend's f16 decode was ~20-30x slower than the SIMD ones). Widening is
//! exact, so the results are the same bits either way.

use super::kernel::{Keys, VecOps};
use crate::kv_cache::KvElement;

/// Floats of the stack buffer keys and values are widened into. A tile's `n` keys must fit
/// (`qk` widens whole dims of `n` keys).
const WIDE: usize = 1024;
const _: () = assert!(super::kernel::KEY_TILE <= WIDE);

/// Plain-Rust vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scalar;

impl<E: KvElement> VecOps<E> for Scalar {
    #[inline]
    fn qk(self, q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]) {
        let n = keys.n;
        if n == 0 {
            return;
        }
        for si in s.chunks_exact_mut(n) {
            si.fill(0.0);
        }
        // Dim-major keys: each dim's `n` key elements are contiguous, so the inner loop runs
        // over keys and vectorises without reassociating any sum. Dims in groups whose widened
        // rows fit the buffer; each key's sum still runs over the dims in order.
        let mut wide = [0f32; WIDE];
        let dims_per_group = (WIDE / n).max(1);
        for c0 in (0..d).step_by(dims_per_group) {
            let c1 = d.min(c0 + dims_per_group);
            for (c, w) in (c0..c1).zip(wide.chunks_exact_mut(n)) {
                let row = &keys.run[c * keys.stride + keys.first..][..n];
                for (w, k) in w.iter_mut().zip(row) {
                    *w = k.to_f32();
                }
            }
            for (qi, si) in q.chunks_exact(d).zip(s.chunks_exact_mut(n)) {
                for (&qc, w) in qi[c0..c1].iter().zip(wide.chunks_exact(n)) {
                    for (o, &k) in si.iter_mut().zip(w) {
                        *o += qc * k;
                    }
                }
            }
        }
    }

    #[inline]
    fn exp_sum(self, s: &mut [f32], max: f32) -> f32 {
        let mut sum = 0.0;
        for x in s {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }

    #[inline]
    fn scale(self, x: &mut [f32], c: f32) {
        for v in x {
            *v *= c;
        }
    }

    #[inline]
    fn pv(self, p: &[f32], v: &[E], d: usize, acc: &mut [f32]) {
        if d == 0 {
            return;
        }
        let n = v.len() / d;
        // Value-major, like `qk`: each value row is widened once per tile and then serves every
        // accumulator row, keys in order.
        let mut wide = [0f32; WIDE];
        for (c0, c1) in (0..d).step_by(WIDE).map(|c0| (c0, d.min(c0 + WIDE))) {
            let w = &mut wide[..c1 - c0];
            for (j, vj) in v.chunks_exact(d).enumerate() {
                for (w, x) in w.iter_mut().zip(&vj[c0..c1]) {
                    *w = x.to_f32();
                }
                for (i, acc_i) in acc.chunks_exact_mut(d).enumerate() {
                    let weight = p[i * n + j];
                    for (a, &x) in acc_i[c0..c1].iter_mut().zip(w.iter()) {
                        *a += weight * x;
                    }
                }
            }
        }
    }
}
