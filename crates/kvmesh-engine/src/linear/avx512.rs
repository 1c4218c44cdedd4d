//! AVX-512 kernels: the arithmetic of `scalar.rs` with a whole 16-row panel in one vector.
//!
//! A panel is 16 rows, so one 512-bit register holds one token's 16 outputs; each lane still
//! adds its block's products in input order from zero and closes the block with the same two
//! FMAs, so these kernels give the bits of the scalar and AVX2 ones (tested). What the width
//! buys is throughput where the work is bound by FMAs: the many-token kernel (prefill and
//! batched decode) keeps up to 16 tokens x 16 rows in 16 accumulators, and each FMA takes its
//! token's input as an embedded broadcast from memory, so one weight vector feeds 16 FMAs.
//! That also makes converting the integers to f32 cheap enough to do in registers for every
//! token tile, where the AVX2 kernel converts a panel once into a scratch buffer: at 16 tokens
//! (batched decode) writing and re-reading that buffer took as long as the FMAs.
//!
//! The few-token kernel (decode) is `x86.rs`'s with one panel per vector: six panels per
//! unit, weights prefetched ahead as they stream from memory.
//!
//! The public functions check every length the kernels read and are only called after
//! `Kernel::detect` found AVX-512F (and the AVX2 + FMA + F16C set the other kernels need).

use std::arch::x86_64::*;

use super::{PackedLinear, WeightFormat, PANEL, QBLOCK};

/// Tokens per register tile, and so per group of the token-tile layout of the inputs.
pub(super) const TILE_TOKENS: usize = 16;

/// Blocks a token tile sweeps at a time: with several tiles (prefill), each tile passes over
/// the slice's weights while they sit in L1, and its 4 x 32 x 16 inputs (8 KiB) with them.
const SLICE_BLOCKS: usize = 4;

/// How many blocks ahead the kernels prefetch the packed weights.
const PREFETCH_BLOCKS: usize = 4;

/// Prefetches the `block_bytes` block `PREFETCH_BLOCKS` blocks after `block`: the weights
/// stream from memory once per step. Any address will do (a prefetch never faults), so the
/// block ahead may lie past the panel or the matrix.
#[inline(always)]
fn prefetch_ahead(block: *const u8, block_bytes: usize) {
    let ahead = block.wrapping_add(PREFETCH_BLOCKS * block_bytes);
    for line in (0..block_bytes).step_by(64) {
        // SAFETY: a prefetch is a hint; it reads nothing and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast()) };
    }
}

/// Many-token kernel over panel `p`, straight from the packed weights: `acc[token][16]`, with
/// the `n` tokens' inputs in tiles, `x_tiles[tile][input][TILE_TOKENS]`.
pub(super) fn many_tokens(
    w: &PackedLinear,
    p: usize,
    x_tiles: &[f32],
    n: usize,
    sums: &[f32],
    acc: &mut [f32],
) {
    let (cols, blocks) = (w.cols, w.blocks());
    assert!(p < w.panels());
    assert!(x_tiles.len() == n.div_ceil(TILE_TOKENS) * cols * TILE_TOKENS);
    assert!(acc.len() == n * PANEL);
    let affine = w.format == WeightFormat::Affine4;
    assert!(!affine || sums.len() == n * blocks);
    let bb = w.format.block_bytes();
    // Blocks in slices: a lane's operations stay in block order, so the result is the same
    // as one sweep.
    for b0 in (0..blocks).step_by(SLICE_BLOCKS) {
        let b1 = (b0 + SLICE_BLOCKS).min(blocks);
        for t0 in (0..n).step_by(TILE_TOKENS) {
            let tile = Tile {
                panel: w.block(p, 0).as_ptr(),
                block_bytes: bb,
                affine,
                // SAFETY (all three): t0 < n, so the offsets stay inside their slices.
                x: unsafe { x_tiles.as_ptr().add(t0 * cols) },
                sums: if affine {
                    unsafe { sums.as_ptr().add(t0 * blocks) }
                } else {
                    std::ptr::null()
                },
                acc: unsafe { acc.as_mut_ptr().add(t0 * PANEL) },
                blocks,
            };
            // SAFETY: features detected; the tile reads tokens t0..t0 + tn of x, sums and
            // acc, and blocks b0..b1 <= blocks of panel p, all checked above.
            unsafe { tile.run_any(TILE_TOKENS.min(n - t0), b0..b1) }
        }
    }
}

/// Panels the few-token kernel keeps in flight: six accumulator vectors (six FMA chains),
/// and 576- and 1536-row matrices (36 and 96 panels) split into whole units for two threads.
pub(super) const FEW_PANELS: usize = 6;

/// Few-token kernel (decode) over `panels` (1..=6) panels from `p0`: `acc[token][panels x
/// 16]`, the integers unpacked in registers as the AVX2 kernel does (see `x86::few_tokens`),
/// one panel per vector.
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
    assert!(p0 + panels <= w.panels() && (1..=FEW_PANELS).contains(&panels));
    assert!(x.len() == n * w.cols && acc.len() == n * panels * PANEL);
    assert!(w.format == WeightFormat::Symmetric8 || sums.len() == n * w.blocks());
    // SAFETY: AVX-512F was detected; the lengths the kernel reads are checked above.
    unsafe {
        match panels {
            6 => few::<6>(w, p0, x, sums, n, acc),
            5 => few::<5>(w, p0, x, sums, n, acc),
            4 => few::<4>(w, p0, x, sums, n, acc),
            3 => few::<3>(w, p0, x, sums, n, acc),
            2 => few::<2>(w, p0, x, sums, n, acc),
            _ => few::<1>(w, p0, x, sums, n, acc),
        }
    }
}

/// # Safety
/// AVX-512F available; panels `p0..p0 + P` exist in `w`; `x` is `n x cols`, `sums`
/// `n x blocks` (for `Affine4`), `acc` `n x P x 16`.
// `i` and `oct` index several arrays and pointer offsets in step.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
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
    let q = WeightFormat::QUANTS;
    let masks: [__m512i; 4] = std::array::from_fn(|j| _mm512_set1_epi32(0x0f << (4 * j)));
    for b in 0..blocks {
        // SAFETY (this loop): every pointer below stays inside the block of a panel that
        // exists, a token row of x, or a token row of acc (see the function's contract).
        unsafe {
            let base: [*const u8; P] =
                std::array::from_fn(|i| data.add(((p0 + i) * blocks + b) * bb));
            for &at in &base {
                prefetch_ahead(at, bb);
            }
            let d: [__m512; P] =
                std::array::from_fn(|i| _mm512_cvtph_ps(_mm256_loadu_si256(base[i].cast())));
            let m: [__m512; P] = std::array::from_fn(|i| {
                if affine {
                    _mm512_cvtph_ps(_mm256_loadu_si256(base[i].add(WeightFormat::MINS).cast()))
                } else {
                    _mm512_setzero_ps()
                }
            });
            // Nibbles 4..8 of every lane moved down once per block: `[panel][octet]`.
            let mut high = [[_mm512_setzero_si512(); QBLOCK / 8]; P];
            if affine {
                for i in 0..P {
                    for oct in 0..QBLOCK / 8 {
                        let v = _mm512_loadu_si512(base[i].add(q + oct * 64).cast());
                        high[i][oct] = _mm512_srli_epi32::<16>(v);
                    }
                }
            }
            for t in 0..n {
                let xt = x.as_ptr().add(t * cols + b * QBLOCK);
                let mut part = [_mm512_setzero_ps(); P];
                if affine {
                    // As in `x86::few`: inputs pre-scaled by 16^-(k mod 4), nibbles masked in
                    // place, inputs in order along every lane.
                    for oct in 0..std::hint::black_box(QBLOCK / 8) {
                        let xo = xt.add(oct * 8);
                        for (j, &mask) in masks.iter().enumerate() {
                            let xb = _mm512_set1_ps(*xo.add(j));
                            for i in 0..P {
                                let at = base[i].add(q + oct * 64);
                                let v = _mm512_and_si512(_mm512_loadu_si512(at.cast()), mask);
                                part[i] = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps(v), part[i]);
                            }
                        }
                        for (j, &mask) in masks.iter().enumerate() {
                            let xb = _mm512_set1_ps(*xo.add(4 + j));
                            for i in 0..P {
                                let v = _mm512_and_si512(high[i][oct], mask);
                                part[i] = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps(v), part[i]);
                            }
                        }
                    }
                } else {
                    for k in 0..QBLOCK {
                        let xb = _mm512_set1_ps(*xt.add(k));
                        for i in 0..P {
                            let bytes = _mm_loadu_si128(base[i].add(q + k * PANEL).cast());
                            let wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
                            part[i] = _mm512_fmadd_ps(xb, wv, part[i]);
                        }
                    }
                }
                let sb = if affine {
                    _mm512_set1_ps(sums[t * blocks + b])
                } else {
                    _mm512_setzero_ps()
                };
                let a = acc.as_mut_ptr().add(t * P * PANEL);
                for i in 0..P {
                    let at = a.add(i * PANEL);
                    let mut o = _mm512_fmadd_ps(d[i], part[i], _mm512_loadu_ps(at));
                    if affine {
                        o = _mm512_fmadd_ps(m[i], sb, o);
                    }
                    _mm512_storeu_ps(at, o);
                }
            }
        }
    }
}

/// A register tile of up to 16 tokens x 16 rows over one packed panel.
struct Tile {
    /// Block 0 of the panel; block `b` starts `b x block_bytes` later.
    panel: *const u8,
    block_bytes: usize,
    affine: bool,
    x: *const f32,
    /// Null for `Symmetric8` (no minimums).
    sums: *const f32,
    acc: *mut f32,
    blocks: usize,
}

impl Tile {
    /// [`Tile::run`] for `tokens` (1..=16) tokens.
    ///
    /// # Safety
    /// As for [`Tile::run`] with `T = tokens`.
    unsafe fn run_any(&self, tokens: usize, blocks: std::ops::Range<usize>) {
        // SAFETY: forwarded.
        unsafe {
            match tokens {
                16 => self.run::<16>(blocks),
                15 => self.run::<15>(blocks),
                14 => self.run::<14>(blocks),
                13 => self.run::<13>(blocks),
                12 => self.run::<12>(blocks),
                11 => self.run::<11>(blocks),
                10 => self.run::<10>(blocks),
                9 => self.run::<9>(blocks),
                8 => self.run::<8>(blocks),
                7 => self.run::<7>(blocks),
                6 => self.run::<6>(blocks),
                5 => self.run::<5>(blocks),
                4 => self.run::<4>(blocks),
                3 => self.run::<3>(blocks),
                2 => self.run::<2>(blocks),
                _ => self.run::<1>(blocks),
            }
        }
    }

    /// Each input's 16 integers are converted to f32 in a register and feed the tile's `T`
    /// FMAs straight away (3 vector operations per 16 FMAs, on other ports), so the panel is
    /// never written out as f32 first.
    ///
    /// # Safety
    /// AVX-512F available; `x` points at a token tile (`blocks x 32 x TILE_TOKENS`), `sums`
    /// and `acc` at `T` token rows (of `blocks` and 16 elements), `panel` at a packed panel of
    /// `blocks` blocks, and `blocks` lies in `0..self.blocks`.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const T: usize>(&self, blocks: std::ops::Range<usize>) {
        let low = _mm512_set1_epi32(0x0f);
        // SAFETY (this function): offsets stay inside the regions of the contract.
        unsafe {
            for b in blocks {
                let block = self.panel.add(b * self.block_bytes);
                // Past the panel's end the block ahead is the next panel's, which this thread
                // usually computes next.
                prefetch_ahead(block, self.block_bytes);
                let quants = block.add(WeightFormat::QUANTS);
                let x = self.x.add(b * QBLOCK * TILE_TOKENS);
                let mut part = [_mm512_setzero_ps(); T];
                let mut fmas = |k: usize, wv: __m512| {
                    let xk = x.add(k * TILE_TOKENS);
                    for (j, part) in part.iter_mut().enumerate() {
                        *part = _mm512_fmadd_ps(_mm512_set1_ps(*xk.add(j)), wv, *part);
                    }
                };
                if self.affine {
                    // 64 bytes per octet of inputs: rows 0..8, then rows 8..16, one 32-bit
                    // lane per row holding the octet's eight nibbles.
                    for oct in 0..QBLOCK / 8 {
                        let v = _mm512_loadu_si512(quants.add(oct * 64).cast());
                        for s in 0..8 {
                            let q = _mm512_and_si512(
                                _mm512_srl_epi32(v, _mm_cvtsi32_si128(4 * s as i32)),
                                low,
                            );
                            fmas(oct * 8 + s, _mm512_cvtepi32_ps(q));
                        }
                    }
                } else {
                    for k in 0..QBLOCK {
                        let q = _mm_loadu_si128(quants.add(k * PANEL).cast());
                        fmas(k, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
                    }
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(block.cast()));
                let m = if self.affine {
                    _mm512_cvtph_ps(_mm256_loadu_si256(block.add(WeightFormat::MINS).cast()))
                } else {
                    _mm512_setzero_ps()
                };
                for (j, part) in part.iter().enumerate() {
                    let at = self.acc.add(j * PANEL);
                    let mut o = _mm512_fmadd_ps(d, *part, _mm512_loadu_ps(at));
                    if self.affine {
                        let sb = _mm512_set1_ps(*self.sums.add(j * self.blocks + b));
                        o = _mm512_fmadd_ps(m, sb, o);
                    }
                    _mm512_storeu_ps(at, o);
                }
            }
        }
    }
}
