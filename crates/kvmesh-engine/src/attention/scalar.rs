//! The portable backend: plain Rust loops, the reference the SIMD backend is tested against
//! and the fallback on CPUs (and architectures) without one.
//!
//! The dot product keeps eight partial sums so the compiler can vectorise it with the
//! baseline instruction set (SSE2 on x86_64, NEON on aarch64) without reassociating floats
//! itself; `exp` is the standard library's.

use super::kernel::VecOps;

/// Plain-Rust vector operations.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scalar;

/// `sum_i a[i] * b[i]` over eight interleaved partial sums.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

impl VecOps for Scalar {
    #[inline]
    fn qk(self, q: &[f32], k: &[f32], d: usize, s: &mut [f32]) {
        let n = k.len() / d;
        // Key-major: each key row is loaded once and used by every query of the tile.
        for (j, kj) in k.chunks_exact(d).enumerate() {
            for (i, qi) in q.chunks_exact(d).enumerate() {
                s[i * n + j] = dot(qi, kj);
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
    fn pv(self, p: &[f32], v: &[f32], d: usize, acc: &mut [f32]) {
        let n = v.len() / d;
        // Value-major, like `qk`: each value row is loaded once per tile.
        for (j, vj) in v.chunks_exact(d).enumerate() {
            for (i, acc_i) in acc.chunks_exact_mut(d).enumerate() {
                let w = p[i * n + j];
                for (a, &x) in acc_i.iter_mut().zip(vj) {
                    *a += w * x;
                }
            }
        }
    }
}
