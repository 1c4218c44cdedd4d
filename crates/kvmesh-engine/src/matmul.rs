//! Dense f32 matrix products for the forward pass, through the `gemm` crate.
//!
//! `gemm` packs panels and runs AVX2/AVX-512/NEON micro-kernels chosen at run time; on this
//! project's 2-core machine it reaches close to the cores' f32 FMA peak for prefill-sized
//! products. It is an `unsafe fn` over raw pointers and strides, so this module is its only
//! caller: the safe wrapper checks every length first.

use gemm::Parallelism;

/// A row-major weight matrix: `rows` outputs, each a dot product over `cols` inputs.
#[derive(Debug, Clone)]
pub struct DenseMatrix {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl DenseMatrix {
    /// Wraps `data` (`rows * cols` values, row-major).
    ///
    /// # Panics
    /// If the length does not match.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        DenseMatrix { data, rows, cols }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// `out[n x rows] = x[n x cols] * w^T`, using up to `threads` threads.
///
/// # Panics
/// If `x` or `out` is not `n` rows of the right width.
pub fn gemm_linear(x: &[f32], n: usize, w: &DenseMatrix, out: &mut [f32], threads: usize) {
    assert_eq!(x.len(), n * w.cols, "linear: input shape");
    assert_eq!(out.len(), n * w.rows, "linear: output shape");
    if n == 0 || w.rows == 0 {
        return;
    }
    if w.cols == 0 {
        out.fill(0.0);
        return;
    }
    let parallelism = if threads > 1 && n * w.rows * w.cols >= 1 << 20 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: dst is `n x rows` with row stride `rows` (checked: out.len() == n * rows); lhs is
    // `n x cols` with row stride `cols` (x.len() == n * cols); rhs is w^T, `cols x rows`, whose
    // element (i, j) is w.data[j * cols + i] (w.data.len() == rows * cols, checked in
    // DenseMatrix::new). No two of them alias: `out` is a unique borrow. read_dst is false, so the
    // uninitialised-looking content of `out` is never read.
    unsafe {
        gemm::gemm(
            n,
            w.rows,
            w.cols,
            out.as_mut_ptr(),
            1,
            w.rows as isize,
            false,
            x.as_ptr(),
            1,
            w.cols as isize,
            w.data.as_ptr(),
            w.cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_products() {
        for (n, rows, cols) in [(1, 3, 4), (5, 7, 3), (17, 33, 65), (64, 96, 128)] {
            let w = DenseMatrix::new(
                (0..rows * cols)
                    .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                    .collect(),
                rows,
                cols,
            );
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let mut out = vec![f32::NAN; n * rows];
            gemm_linear(&x, n, &w, &mut out, 2);
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| x[t * cols + c] * w.row(r)[c]).sum();
                    let got = out[t * rows + r];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{got} vs {want}"
                    );
                }
            }
        }
    }
}
