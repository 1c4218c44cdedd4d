//! The model's linear layers: the file's own quantised weights in memory, f32 activations,
//! and results that do not depend on how tokens are batched.
//!
//! # Weights: the file's precision, repacked
//!
//! Decode is memory-bound: every step streams every weight once. [`PackedLinear`] keeps the
//! integers and scales of the GGUF file as they are — Q4_1 (4-bit `q` with scale `d` and
//! minimum `m`, 0.625 bytes per weight), Q4_0 (the same form with `m = -8d`, exact) and Q8_0
//! (8-bit `q`, scale `d`) — so a token reads as many bytes as llama.cpp reads, and nothing is
//! lost to requantisation. Float tensors (F32, F16, BF16) are quantised to 8 bits per block of
//! 32 with an f16 scale, the one lossy case.
//!
//! The layout serves the kernels: output rows are grouped in *panels* of 16, and a panel is
//! stored block by block (32 inputs). A block holds the 16 rows' scales (f16), their minimums
//! for 4-bit weights, then the 16 x 32 integers interleaved so that one 32-byte load yields one
//! input's weight for 8 rows (8-bit) or 8 consecutive inputs' for 8 rows (4-bit, one 32-bit
//! lane per row). A panel's blocks are consecutive, so a kernel walks memory in order.
//!
//! # Arithmetic, and why batching cannot change a result
//!
//! For a token `x` and an output row, every kernel computes, block by block,
//!
//! ```text
//! p   = sum over the block's 32 inputs k, in order, of x[k] * q[k]   (f32 FMAs from 0)
//! acc = fma(d, p, acc);  acc = fma(m, s, acc)    with s = the block's sum of x, in order
//! ```
//!
//! (the second FMA only for 4-bit weights with a minimum). Each output is one lane of a vector
//! and never mixes with its neighbours, so the result of a (token, row) pair is bitwise the same
//! whichever kernel, tile, batch or thread computes it: a token's logits do not depend on
//! whether it is prefilled alone, in a chunk, batched with other sequences or recomputed after
//! preemption, and greedy decoding gives the same tokens under any scheduling. (A BLAS `gemm`
//! for prefill plus a separate decode kernel breaks this: near-tied argmaxes flip.) Summing
//! `x x q` per block and scaling once (llama.cpp's split of `d x q + m`) halves the FMAs of
//! the inner loop compared with dequantising each weight first.
//!
//! # Two kernels, chosen by the number of tokens
//!
//! - **Few tokens (decode, up to 3)**: the integers are unpacked in registers and multiplied
//!   straight away; four panels (64 rows, 8 independent FMA chains) are in flight to hide the
//!   FMA latency, and each block's bytes serve every token while they sit in L1. A 4-bit
//!   lane's nibbles are *masked in place* (`v & 0xf << 4j` is `q x 16^j`, exact) against
//!   inputs pre-scaled by `16^-j`: the product is exactly `x x q`, one shift cheaper per
//!   weight. Inputs below 1e-30 are flushed to zero for every kernel, so that scaling never
//!   rounds (see `flush_tiny`).
//! - **Many tokens (prefill, large batches)**: a panel's integers are converted to f32 once
//!   (exactly: they are small integers) into an aligned scratch buffer, and a 6-token x 16-row
//!   register tile sweeps it: 12 FMAs per 2 loads and 6 broadcasts, FMA-bound. The tokens'
//!   inputs are repacked once per call as `[tile][input][6]`, one sequential stream per
//!   tile, and the panel is swept in slices of 4 blocks (8 KiB) that stay in L1 while every
//!   token tile passes. The conversion is paid once per panel and call, not per token.
//!   With AVX-512 (`avx512.rs`) a 16-row panel is one register, so a 16-token x 16-row tile
//!   is 16 accumulators and each FMA takes its token's input as an embedded broadcast; the
//!   integers are then converted in registers for every tile (3 operations per 16 FMAs)
//!   instead of through the scratch panel, whose write and re-read cost as much as the FMAs
//!   at 16 tokens; the next blocks' weights are prefetched. Batch-16 decode steps went from
//!   ~50-57 to ~31-38 ms with this and the AVX-512 attention (2026-12-02, `docs/bench/engine.md`).
//!   The AVX-512 few-token kernel is the AVX2 one with a panel per vector, six panels per
//!   unit (six FMA chains; 36- and 96-panel matrices split evenly over two threads), and the
//!   weights prefetched 4 blocks ahead: batch-1 decode ~141-151 -> ~190-226 tok/s in
//!   alternating runs (it streams 94 MiB of weights per token, ~19 GB/s at that rate).
//!
//! Panels are split across threads with rayon; each thread writes only its own panels'
//! columns of the output.
//!
//! A scalar version of both kernels (`scalar.rs`) defines the arithmetic and runs on CPUs
//! without AVX2 and FMA; the tests check every SIMD kernel the CPU has against it bit for bit.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use crate::simd::SimdLevel;

pub use pack::PackError;

/// Inputs per quantisation block.
pub const QBLOCK: usize = 32;
/// Output rows per panel.
const PANEL: usize = 16;
/// Panels the few-token kernel keeps in flight: 8 vectors of accumulators, 8 independent FMA
/// chains, enough to hide the FMA latency.
const PANEL_GROUP: usize = 4;
/// Tokens the AVX2 many-token kernel's register tile covers (AVX-512: `avx512::TILE_TOKENS`).
const TILE_TOKENS: usize = 6;
/// Up to this many tokens use the few-token kernel.
const FEW_TOKENS: usize = 3;

/// How a [`PackedLinear`] stores its integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 4-bit `q` in 0..16, weight `d x q + m` (Q4_1, and Q4_0 with `m = -8d`).
    Affine4,
    /// 8-bit signed `q`, weight `d x q` (Q8_0, and quantised float tensors).
    Symmetric8,
}

impl WeightFormat {
    /// Bytes of one block of one panel (a multiple of 64, so blocks stay cache-line aligned).
    const fn block_bytes(self) -> usize {
        match self {
            // 16 f16 scales, 16 f16 minimums, 16 x 32 nibbles.
            WeightFormat::Affine4 => 32 + 32 + PANEL * QBLOCK / 2,
            // 16 f16 scales, 32 bytes of padding, 16 x 32 bytes.
            WeightFormat::Symmetric8 => 64 + PANEL * QBLOCK,
        }
    }

    /// Where the integers start in a block.
    const QUANTS: usize = 64;
    /// Where the minimums start in an `Affine4` block.
    const MINS: usize = 32;
}

/// One cache line; the storage unit, so the packed weights are 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight matrix of `rows` outputs x `cols` inputs in panel layout (see the module docs).
#[derive(Clone)]
pub struct PackedLinear {
    rows: usize,
    cols: usize,
    format: WeightFormat,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("format", &self.format)
            .finish()
    }
}

impl PackedLinear {
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How the weights are stored.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of packed weights, scales and padding.
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64
    }

    fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    fn blocks(&self) -> usize {
        self.cols / QBLOCK
    }

    /// Length of one panel unpacked to f32: `[input][16]` integers, `[block][16]` scales and
    /// `[block][16]` minimums.
    fn unpacked_len(&self) -> usize {
        (self.cols + 2 * self.blocks()) * PANEL
    }

    fn data(&self) -> &[u8] {
        // SAFETY: `Line` is a plain 64-byte array with no padding; any byte pattern is valid.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 64) }
    }

    /// The bytes of block `b` of panel `p`.
    fn block(&self, p: usize, b: usize) -> &[u8] {
        let bb = self.format.block_bytes();
        &self.data()[(p * self.blocks() + b) * bb..][..bb]
    }

    /// Row `r` as f32 weights (`d x q + m` with one rounding, or `d x q`), e.g. for an
    /// embedding look-up.
    ///
    /// # Panics
    /// If `r >= rows` or `out` is not `cols` long.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: output length");
        let (p, lane) = (r / PANEL, r % PANEL);
        for (b, o) in out.chunks_exact_mut(QBLOCK).enumerate() {
            let block = self.block(p, b);
            let d = scalar::scale(block, lane);
            match self.format {
                WeightFormat::Affine4 => {
                    let m = scalar::min(block, lane);
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = f32::from(scalar::nibble(block, k, lane)).mul_add(d, m);
                    }
                }
                WeightFormat::Symmetric8 => {
                    for (k, o) in o.iter_mut().enumerate() {
                        *o = f32::from(scalar::byte(block, k, lane)) * d;
                    }
                }
            }
        }
    }

    /// `out[n x rows] = x[n x cols] * W^T` with the batch-invariant arithmetic of the module
    /// docs, on rayon's pool when `threads > 1`.
    ///
    /// # Panics
    /// If `x` or `out` is not `n` rows of the right width.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], threads: usize) {
        self.forward_on(Kernel::detect(), x, n, out, threads);
    }

    fn forward_on(&self, kernel: Kernel, x: &[f32], n: usize, out: &mut [f32], threads: usize) {
        assert_eq!(x.len(), n * self.cols, "PackedLinear::forward: input shape");
        assert_eq!(
            out.len(),
            n * self.rows,
            "PackedLinear::forward: output shape"
        );
        if n == 0 || self.rows == 0 {
            return;
        }
        let x = flush_tiny(x);
        let affine = self.format == WeightFormat::Affine4;
        let sums = if affine { block_sums(&x) } else { Vec::new() };
        let few = n <= FEW_TOKENS;
        // The inputs as the AVX2 kernels read them. The few-token kernel masks nibbles in
        // place instead of shifting them down, so it multiplies `q x 16^j` by `x x 16^-j`
        // (j = k mod 4): the same exact product. The many-token kernel reads its tile's
        // inputs as one sequential stream, `[tile][input][6 tokens]`.
        let x_simd: Vec<f32> = match (kernel, few, affine) {
            (Kernel::Scalar, _, _) | (_, true, false) => Vec::new(),
            (_, true, true) => x
                .iter()
                .zip(NIBBLE_SCALES.iter().cycle())
                .map(|(v, s)| v * s)
                .collect(),
            (_, false, _) => token_tiles(&x, n, self.cols, kernel.tile_tokens()),
        };
        let job = Job {
            w: self,
            x: &x,
            x_simd: &x_simd,
            sums: &sums,
            n,
            out: OutPtr(out.as_mut_ptr()),
        };
        let unit = if few { kernel.few_panels() } else { 1 };
        let units = self.panels().div_ceil(unit);
        let run = |u: usize| {
            let p0 = u * unit;
            let panels = unit.min(self.panels() - p0);
            // SAFETY: unit `u` writes only the columns of panels p0..p0 + panels, which no
            // other unit touches, and `out` outlives this call.
            SCRATCH.with_borrow_mut(|scratch| unsafe {
                if few {
                    job.few_tokens(kernel, p0, panels, scratch);
                } else {
                    job.many_tokens(kernel, p0, scratch);
                }
            });
        };
        if threads > 1 && units > 1 {
            (0..units).into_par_iter().for_each(run);
        } else {
            (0..units).for_each(run);
        }
    }
}

/// Inputs smaller than this in magnitude count as zero (see [`flush_tiny`]).
const TINY: f32 = 1e-30;

/// `16^-(k mod 4)`, the input scales of the few-token kernel's in-place nibbles.
const NIBBLE_SCALES: [f32; 4] = [1.0, 1.0 / 16.0, 1.0 / 256.0, 1.0 / 4096.0];

/// `x` with inputs below [`TINY`] in magnitude set to zero, borrowed when there are none.
///
/// Every kernel sees the flushed inputs, so results stay bitwise equal across kernels: the
/// few-token kernel scales inputs by `16^-3`, which would round a value below ~2^-114 (a
/// subnormal result); above `TINY` (~2^-100) the scaling is exact. Such inputs cannot move
/// an f32 sum of model activations anyway.
fn flush_tiny(x: &[f32]) -> std::borrow::Cow<'_, [f32]> {
    // A branch-free fold, so the scan vectorises.
    let tiny = x
        .iter()
        .fold(false, |tiny, v| tiny | ((v.abs() < TINY) & (*v != 0.0)));
    if !tiny {
        return std::borrow::Cow::Borrowed(x);
    }
    std::borrow::Cow::Owned(
        x.iter()
            .map(|&v| if v.abs() < TINY { 0.0 } else { v })
            .collect(),
    )
}

/// `x` (`n x cols`) as token tiles `[tile][input][width]`, zeros past the last token.
fn token_tiles(x: &[f32], n: usize, cols: usize, width: usize) -> Vec<f32> {
    let mut tiles = vec![0.0; n.div_ceil(width) * cols * width];
    for (rows, tile) in x
        .chunks(width * cols)
        .zip(tiles.chunks_exact_mut(width * cols))
    {
        // Sequential writes; the tile's rows are read as up to `width` forward streams.
        for (j, row) in rows.chunks_exact(cols).enumerate() {
            for (dst, &v) in tile[j..].iter_mut().step_by(width).zip(row) {
                *dst = v;
            }
        }
    }
    tiles
}

/// Per-block sums of every token's inputs, `[token][block]`, added in input order (the `s` of
/// the module docs; every kernel reads these, so they are computed once, one way).
fn block_sums(x: &[f32]) -> Vec<f32> {
    // Rows are whole blocks, so the blocks of all rows in order are `[token][block]`.
    x.chunks_exact(QBLOCK)
        .map(|c| c.iter().fold(0.0f32, |s, v| s + v))
        .collect()
}

thread_local! {
    /// Each thread's buffers, kept between calls (a step makes ~120 calls).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// A thread's reusable buffers: a panel's weights as f32 and a tile of accumulators.
#[derive(Default)]
struct Scratch {
    /// `[input][16 rows]` integers as f32, then `[block][16]` scales and `[block][16]` minimums.
    panel: Vec<f32>,
    /// `[token][16 rows]` accumulators of the tile being computed.
    acc: Vec<f32>,
}

/// A 64-byte aligned window of `len` elements in `buf` (so a panel row of 16 f32 is one cache
/// line, and no vector load splits two lines). Earlier contents are not kept.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + PANEL, 0.0);
    let skip = buf.as_ptr().align_offset(64).min(PANEL);
    &mut buf[skip..skip + len]
}

/// The output pointer, shared by the units of one call; each writes disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: units write disjoint elements (see `PackedLinear::forward`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// One call's operands.
struct Job<'a> {
    w: &'a PackedLinear,
    x: &'a [f32],
    /// `x` rearranged for the AVX2 kernels (see `PackedLinear::forward_on`).
    x_simd: &'a [f32],
    sums: &'a [f32],
    n: usize,
    out: OutPtr,
}

impl Job<'_> {
    /// Rows `16 p0 ..` of `panels` panels for every token, few-token kernel.
    ///
    /// # Safety
    /// No other thread may write these panels' columns of `out` during the call.
    unsafe fn few_tokens(&self, kernel: Kernel, p0: usize, panels: usize, s: &mut Scratch) {
        let width = panels * PANEL;
        s.acc.clear();
        s.acc.resize(self.n * width, 0.0);
        match kernel {
            Kernel::Scalar => scalar::few_tokens(self.w, p0, panels, self.x, self.sums, &mut s.acc),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 | Kernel::Avx512 => {
                let x = match self.w.format {
                    WeightFormat::Affine4 => self.x_simd,
                    WeightFormat::Symmetric8 => self.x,
                };
                if kernel == Kernel::Avx512 {
                    avx512::few_tokens(self.w, p0, panels, x, self.sums, &mut s.acc)
                } else {
                    x86::few_tokens(self.w, p0, panels, x, self.sums, &mut s.acc)
                }
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.store(p0 * PANEL, width, &s.acc) };
    }

    /// Rows of panel `p` for every token, many-token kernel.
    ///
    /// # Safety
    /// No other thread may write this panel's columns of `out` during the call.
    unsafe fn many_tokens(&self, kernel: Kernel, p: usize, s: &mut Scratch) {
        s.acc.clear();
        s.acc.resize(self.n * PANEL, 0.0);
        match kernel {
            Kernel::Scalar => {
                let panel = aligned(&mut s.panel, self.w.unpacked_len());
                scalar::unpack_panel(self.w, p, panel);
                scalar::many_tokens(self.w, panel, self.x, self.sums, &mut s.acc);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                let panel = aligned(&mut s.panel, self.w.unpacked_len());
                x86::unpack_panel(self.w, p, panel);
                x86::many_tokens(self.w, panel, self.x_simd, self.n, self.sums, &mut s.acc);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                avx512::many_tokens(self.w, p, self.x_simd, self.n, self.sums, &mut s.acc);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.store(p * PANEL, PANEL, &s.acc) };
    }

    /// Copies `acc[token][width]` into columns `c0..c0 + width` of `out` (clipped to `rows`).
    ///
    /// # Safety
    /// No other thread may write these columns during the call.
    unsafe fn store(&self, c0: usize, width: usize, acc: &[f32]) {
        let rows = self.w.rows;
        let valid = width.min(rows - c0);
        let (whole, rest) = (valid / PANEL, valid % PANEL);
        for (t, a) in acc.chunks_exact(width).enumerate() {
            // SAFETY: t < n and c0 + valid <= rows, so the ranges lie inside `out`
            // (n x rows) and inside `a` (width >= valid); the caller guarantees no concurrent
            // writer.
            unsafe {
                let (src, dst) = (a.as_ptr(), self.out.0.add(t * rows + c0));
                // Whole panels as fixed-size copies (two vector moves each, not a `memcpy`
                // call per panel and token), then any partial last panel.
                for c in 0..whole {
                    std::ptr::copy_nonoverlapping(src.add(c * PANEL), dst.add(c * PANEL), PANEL);
                }
                let at = whole * PANEL;
                std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), rest);
            }
        }
    }
}

/// The kernel family a call runs, picked once per call from the CPU's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Scalar,
    /// AVX2 + FMA + F16C (`x86.rs`).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The AVX2 set plus AVX-512F (`avx512.rs`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs, within `KVMESH_MAX_SIMD` (`simd.rs`).
    fn detect() -> Self {
        Kernel::at(crate::simd::max_level())
    }

    fn at(level: SimdLevel) -> Self {
        match level {
            SimdLevel::Scalar => Kernel::Scalar,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => Kernel::Avx512,
            #[cfg(not(target_arch = "x86_64"))]
            _ => Kernel::Scalar,
        }
    }

    /// Every kernel this CPU runs, slowest first (the tests compare them all).
    #[cfg(test)]
    fn available() -> Vec<Kernel> {
        let all = [
            Kernel::Scalar,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512,
        ];
        let best = Kernel::at(crate::simd::cpu_level());
        let n = all.iter().position(|&k| k == best).map_or(1, |i| i + 1);
        all[..n].to_vec()
    }

    /// Panels per work unit of the few-token kernel.
    fn few_panels(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::FEW_PANELS,
            _ => PANEL_GROUP,
        }
    }

    /// Tokens per group of the many-token kernel's input layout.
    fn tile_tokens(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::TILE_TOKENS,
            _ => TILE_TOKENS,
        }
    }
}
