//! The portable backend: plain Rust loops, the reference the SIMD backend is tested against
//! and the fallback on CPUs (and architectures) without one.
//!
//! The loops run over keys (dim-major key runs) or value dims innermost, so the compiler can
//! vectorise them with the baseline instruction set (SSE2 on x86_64, NEON on aarch64) without
//! reassociating floats; `exp` is the standard library's. Stored elements are widened one at
//! a time ([`KvElement::to_f32`]).

use super::kernel::{Keys, VecOps};
use crate::kv_cache::KvElement;

/// Plain-Rust vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scalar;

impl<E: KvElement> VecOps<E> for Scalar {
    #[inline]
    fn qk(self, q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]) {
        let n = keys.n;
        // Dim-major keys: each dim's `n` key elements are contiguous, so the inner loop runs
        // over keys and vectorises without reassociating any sum.
        for (qi, si) in q.chunks_exact(d).zip(s.chunks_exact_mut(n)) {
            si.fill(0.0);
            for (c, &qc) in qi.iter().enumerate() {
                let row = &keys.run[c * keys.stride + keys.first..][..n];
                for (o, k) in si.iter_mut().zip(row) {
                    *o += qc * k.to_f32();
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
        let n = v.len() / d;
        // Value-major, like `qk`: each value row is loaded once per tile.
        for (j, vj) in v.chunks_exact(d).enumerate() {
            for (i, acc_i) in acc.chunks_exact_mut(d).enumerate() {
                let w = p[i * n + j];
                for (a, &x) in acc_i.iter_mut().zip(vj) {
                    *a += w * x.to_f32();
                }
            }
        }
    }
}
