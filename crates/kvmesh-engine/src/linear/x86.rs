//! AVX2 + FMA + F16C kernels: the arithmetic of `scalar.rs`, 8 output rows per vector.
//!
//! The public functions check every length the kernels read and are only called after
//! `Kernel::detect` found the three CPU features.

use std::arch::x86_64::*;

use super::{PackedLinear, WeightFormat, PANEL, QBLOCK, TILE_TOKENS};

/// Blocks of an unpacked panel a token tile sweeps at a time: 4 x 32 inputs x 16 rows x 4
/// bytes = 8 KiB of weights, which stay in L1 next to the tile's inputs while every token
/// tile passes over them.
const SLICE_BLOCKS: usize = 4;

/// Few-token kernel over `panels` (1..=3) panels from `p0`: `acc[token][panels x 16]`.
///
/// For `Affine4`, `x` must be the inputs scaled by `NIBBLE_SCALES` (see `PackedLinear::forward`).
pub(super) fn few_tokens(
    w: &PackedLinear,
    p0: usize,
    panels: usize,
    x: &[f32],
    sums: &[f32],
    acc: &mut [f32],
) {
    let n = x.len() / w.cols;
    assert!(p0 + panels <= w.panels() && panels <= super::PANEL_GROUP);
    assert!(x.len() == n * w.cols && acc.len() == n * panels * PANEL);
    assert!(w.format == WeightFormat::Symmetric8 || sums.len() == n * w.blocks());
    // SAFETY: the CPU features were detected (see the module docs) and the lengths the kernel
    // reads are checked above: blocks of panels p0.. lie in `w`, n tokens of `cols` inputs,
    // n x blocks sums, n x panels x 16 accumulators.
    unsafe {
        match panels {
            4 => few::<4>(w, p0, x, sums, n, acc),
            3 => few::<3>(w, p0, x, sums, n, acc),
            2 => few::<2>(w, p0, x, sums, n, acc),
            _ => few::<1>(w, p0, x, sums, n, acc),
        }
    }
}

/// Many-token kernel over one panel unpacked by [`unpack_panel`]: `acc[token][16]`, with the
/// `n` tokens' inputs in tiles, `x_tiles[tile][input][TILE_TOKENS]`.
pub(super) fn many_tokens(
    w: &PackedLinear,
    panel: &[f32],
    x_tiles: &[f32],
    n: usize,
    sums: &[f32],
    acc: &mut [f32],
) {
    let (cols, blocks) = (w.cols, w.blocks());
    assert!(panel.len() == w.unpacked_len());
    assert!(x_tiles.len() == n.div_ceil(TILE_TOKENS) * cols * TILE_TOKENS);
    assert!(acc.len() == n * PANEL);
    let affine = w.format == WeightFormat::Affine4;
    assert!(!affine || sums.len() == n * blocks);
    // Blocks in slices of `SLICE_BLOCKS`: every token tile sweeps one slice while it sits in
    // L1, then the next. A lane's operations stay in block order, so the result is the same
    // as one sweep.
    for b0 in (0..blocks).step_by(SLICE_BLOCKS) {
        let b1 = (b0 + SLICE_BLOCKS).min(blocks);
        let mut t0 = 0;
        while t0 < n {
            let tn = TILE_TOKENS.min(n - t0);
            let tile = Tile {
                panel: panel.as_ptr(),
                // SAFETY (all three): t0 < n, so the offsets stay inside their slices.
                x: unsafe { x_tiles.as_ptr().add(t0 * cols) },
                sums: if affine {
                    unsafe { sums.as_ptr().add(t0 * blocks) }
                } else {
                    std::ptr::null()
                },
                acc: unsafe { acc.as_mut_ptr().add(t0 * PANEL) },
                cols,
                blocks,
            };
            // SAFETY: features detected; the tile reads tokens t0..t0 + tn of x, sums and
            // acc, and blocks b0..b1 <= blocks of the panel, all checked above.
            unsafe {
                match tn {
                    6 => tile.run::<6>(b0..b1),
                    5 => tile.run::<5>(b0..b1),
                    4 => tile.run::<4>(b0..b1),
                    3 => tile.run::<3>(b0..b1),
                    2 => tile.run::<2>(b0..b1),
                    _ => tile.run::<1>(b0..b1),
                }
            }
            t0 += tn;
        }
    }
}

/// Panel `p` as f32, in the layout of `scalar::unpack_panel`.
pub(super) fn unpack_panel(w: &PackedLinear, p: usize, out: &mut [f32]) {
    assert!(p < w.panels() && out.len() == w.unpacked_len());
    // SAFETY: features detected; `out` has the size written below and panel p exists.
    unsafe { unpack(w, p, out) }
}

/// The 16 f16 values at `at` as two vectors of 8 f32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(at: *const u8) -> [__m256; 2] {
    // SAFETY: the caller passes 32 readable bytes.
    unsafe {
        [
            _mm256_cvtph_ps(_mm_loadu_si128(at.cast())),
            _mm256_cvtph_ps(_mm_loadu_si128(at.add(16).cast())),
        ]
    }
}

/// Eight 4-bit integers, bits `shift..shift + 4` of each 32-bit lane of `v`, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(v: __m256i, shift: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_and_si256(
        _mm256_srl_epi32(v, shift),
        _mm256_set1_epi32(0x0f),
    ))
}

/// Eight signed bytes at `at` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes(at: *const u8) -> __m256 {
    // SAFETY: the caller passes 8 readable bytes.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(at.cast()))) }
}

/// # Safety
/// AVX2, FMA and F16C available; panels `p0..p0 + P` exist in `w`; `x` is `n x cols`, `sums`
/// `n x blocks` (for `Affine4`), `acc` `n x P x 16`.
// `oct` indexes the middle dimension of `high` and the packed data: a range reads plainest.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn few<const P: usize>(
    w: &PackedLinear,
    p0: usize,
    x: &[f32],
    sums: &[f32],
    n: usize,
    acc: &mut [f32],
) {
    let (cols, blocks, bb) = (w.cols, w.blocks(), w.format.block_bytes());
    let affine = w.format == WeightFormat::Affine4;
    let data = w.data().as_ptr();
    for b in 0..blocks {
        // SAFETY (this loop): every pointer below stays inside the block of a panel that
        // exists, a token row of x, or a token row of acc (see the function's contract).
        unsafe {
            let base: [*const u8; P] =
                std::array::from_fn(|i| data.add(((p0 + i) * blocks + b) * bb));
            let d: [[__m256; 2]; P] = std::array::from_fn(|i| halves(base[i]));
            let m: [[__m256; 2]; P] = std::array::from_fn(|i| {
                if affine {
                    halves(base[i].add(WeightFormat::MINS))
                } else {
                    [_mm256_setzero_ps(); 2]
                }
            });
            let q = WeightFormat::QUANTS;
            // Nibbles 4..8 of every lane, moved down to bits 0..16 once per block (the low
            // four are masked in place): `[panel][octet][half]`.
            let mut high = [[[_mm256_setzero_si256(); 2]; QBLOCK / 8]; P];
            if affine {
                for (i, high) in high.iter_mut().enumerate() {
                    for (oct, high) in high.iter_mut().enumerate() {
                        for (g, high) in high.iter_mut().enumerate() {
                            let at = base[i].add(q + (2 * oct + g) * 32);
                            *high = _mm256_srli_epi32::<16>(_mm256_loadu_si256(at.cast()));
                        }
                    }
                }
            }
            let masks: [__m256i; 4] = std::array::from_fn(|j| _mm256_set1_epi32(0x0f << (4 * j)));
            for t in 0..n {
                let xt = x.as_ptr().add(t * cols + b * QBLOCK);
                let mut part = [[_mm256_setzero_ps(); 2]; P];
                if affine {
                    // Inputs arrive pre-scaled by 16^-(k mod 4) (see `PackedLinear::forward`):
                    // `(v & 0xf << 4j)` is `q x 16^j`, and the product is exactly `x x q`.
                    // Per octet of inputs: the low four nibbles of each lane are masked in
                    // place, then the high four from `high`; one input (one broadcast) at a
                    // time across all the panels' vectors, so each FMA chain advances once
                    // per input. An opaque trip count keeps LLVM from unrolling the octets
                    // into spills.
                    for oct in 0..std::hint::black_box(QBLOCK / 8) {
                        let xo = xt.add(oct * 8);
                        for (j, &mask) in masks.iter().enumerate() {
                            let xb = _mm256_broadcast_ss(&*xo.add(j));
                            for i in 0..P {
                                for (g, part) in part[i].iter_mut().enumerate() {
                                    let at = base[i].add(q + (2 * oct + g) * 32);
                                    let v = _mm256_and_si256(_mm256_loadu_si256(at.cast()), mask);
                                    *part = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(v), *part);
                                }
                            }
                        }
                        for (j, &mask) in masks.iter().enumerate() {
                            let xb = _mm256_broadcast_ss(&*xo.add(4 + j));
                            for i in 0..P {
                                for (g, part) in part[i].iter_mut().enumerate() {
                                    let v = _mm256_and_si256(high[i][oct][g], mask);
                                    *part = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(v), *part);
                                }
                            }
                        }
                    }
                } else {
                    for k in 0..QBLOCK {
                        let xb = _mm256_broadcast_ss(&*xt.add(k));
                        for i in 0..P {
                            for (g, part) in part[i].iter_mut().enumerate() {
                                let wv = bytes(base[i].add(q + k * PANEL + 8 * g));
                                *part = _mm256_fmadd_ps(xb, wv, *part);
                            }
                        }
                    }
                }
                let sb = if affine {
                    _mm256_set1_ps(sums[t * blocks + b])
                } else {
                    _mm256_setzero_ps()
                };
                let a = acc.as_mut_ptr().add(t * P * PANEL);
                for i in 0..P {
                    for g in 0..2 {
                        let at = a.add(i * PANEL + 8 * g);
                        let mut o = _mm256_fmadd_ps(d[i][g], part[i][g], _mm256_loadu_ps(at));
                        if affine {
                            o = _mm256_fmadd_ps(m[i][g], sb, o);
                        }
                        _mm256_storeu_ps(at, o);
                    }
                }
            }
        }
    }
}

/// A register tile of up to 6 tokens x 16 rows over an unpacked panel.
struct Tile {
    panel: *const f32,
    x: *const f32,
    /// Null for `Symmetric8` (no minimums).
    sums: *const f32,
    acc: *mut f32,
    cols: usize,
    blocks: usize,
}

impl Tile {
    /// # Safety
    /// AVX2, FMA and F16C available; `x` points at a token tile (`cols x TILE_TOKENS`), `sums`
    /// and `acc` at `T` token rows (of `blocks` and 16 elements), `panel` at an unpacked panel
    /// of `cols` inputs, and
    /// `blocks` lies in `0..cols / 32`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const T: usize>(&self, blocks: std::ops::Range<usize>) {
        let quants = self.panel;
        // SAFETY (this function): offsets stay inside the regions of the contract.
        unsafe {
            let scales = quants.add(self.cols * PANEL);
            let mins = scales.add(self.blocks * PANEL);
            for b in blocks {
                let mut part = [[_mm256_setzero_ps(); 2]; T];
                for k in 0..QBLOCK {
                    let c = b * QBLOCK + k;
                    let w0 = _mm256_loadu_ps(quants.add(c * PANEL));
                    let w1 = _mm256_loadu_ps(quants.add(c * PANEL + 8));
                    for (j, part) in part.iter_mut().enumerate() {
                        let xb = _mm256_broadcast_ss(&*self.x.add(c * TILE_TOKENS + j));
                        part[0] = _mm256_fmadd_ps(xb, w0, part[0]);
                        part[1] = _mm256_fmadd_ps(xb, w1, part[1]);
                    }
                }
                let d = [
                    _mm256_loadu_ps(scales.add(b * PANEL)),
                    _mm256_loadu_ps(scales.add(b * PANEL + 8)),
                ];
                let m = [
                    _mm256_loadu_ps(mins.add(b * PANEL)),
                    _mm256_loadu_ps(mins.add(b * PANEL + 8)),
                ];
                for (j, part) in part.iter().enumerate() {
                    for g in 0..2 {
                        let at = self.acc.add(j * PANEL + 8 * g);
                        let mut o = _mm256_fmadd_ps(d[g], part[g], _mm256_loadu_ps(at));
                        if !self.sums.is_null() {
                            let sb = _mm256_broadcast_ss(&*self.sums.add(j * self.blocks + b));
                            o = _mm256_fmadd_ps(m[g], sb, o);
                        }
                        _mm256_storeu_ps(at, o);
                    }
                }
            }
        }
    }
}

/// # Safety
/// AVX2, FMA and F16C available; panel `p` exists; `out` is `(cols + 2 blocks) x 16` long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(w: &PackedLinear, p: usize, out: &mut [f32]) {
    let (cols, blocks) = (w.cols, w.blocks());
    let (quants, rest) = out.split_at_mut(cols * PANEL);
    let (scales, mins) = rest.split_at_mut(blocks * PANEL);
    for b in 0..blocks {
        let block = w.block(p, b).as_ptr();
        // SAFETY: reads stay inside the block (its layout is fixed by the format); writes
        // inside `out`, whose size the caller guarantees.
        unsafe {
            let d = halves(block);
            _mm256_storeu_ps(scales.as_mut_ptr().add(b * PANEL), d[0]);
            _mm256_storeu_ps(scales.as_mut_ptr().add(b * PANEL + 8), d[1]);
            let dst = quants.as_mut_ptr().add(b * QBLOCK * PANEL);
            match w.format {
                WeightFormat::Affine4 => {
                    let m = halves(block.add(WeightFormat::MINS));
                    _mm256_storeu_ps(mins.as_mut_ptr().add(b * PANEL), m[0]);
                    _mm256_storeu_ps(mins.as_mut_ptr().add(b * PANEL + 8), m[1]);
                    for oct in 0..QBLOCK / 8 {
                        for g in 0..2 {
                            let at = block.add(WeightFormat::QUANTS + (2 * oct + g) * 32);
                            let v = _mm256_loadu_si256(at.cast());
                            for s in 0..8 {
                                let q = nibbles(v, _mm_cvtsi32_si128(4 * s as i32));
                                _mm256_storeu_ps(dst.add((oct * 8 + s) * PANEL + 8 * g), q);
                            }
                        }
                    }
                }
                WeightFormat::Symmetric8 => {
                    for k in 0..QBLOCK {
                        for g in 0..2 {
                            let q = bytes(block.add(WeightFormat::QUANTS + k * PANEL + 8 * g));
                            _mm256_storeu_ps(dst.add(k * PANEL + 8 * g), q);
                        }
                    }
                }
            }
        }
    }
}
