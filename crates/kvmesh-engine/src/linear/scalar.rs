//! The reference kernels: the arithmetic of the module docs, one element at a time.
//!
//! `f32::mul_add` is a fused multiply-add with one rounding, like the SIMD kernels' FMAs, so
//! these produce the same bits; they run on CPUs without AVX2, FMA and F16C, and in tests.

use super::{PackedLinear, WeightFormat, PANEL, QBLOCK};
use crate::quant::f16_to_f32;

/// Scale of panel row `lane` in a block.
pub(super) fn scale(block: &[u8], lane: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[2 * lane], block[2 * lane + 1]]))
}

/// Minimum of panel row `lane` in an `Affine4` block.
pub(super) fn min(block: &[u8], lane: usize) -> f32 {
    let at = WeightFormat::MINS + 2 * lane;
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// Input `k`'s 4-bit integer for panel row `lane` in an `Affine4` block.
pub(super) fn nibble(block: &[u8], k: usize, lane: usize) -> u8 {
    let (byte, shift) = super::pack::nibble_position(k, lane);
    (block[byte] >> shift) & 0x0f
}

/// Input `k`'s 8-bit integer for panel row `lane` in a `Symmetric8` block.
pub(super) fn byte(block: &[u8], k: usize, lane: usize) -> i8 {
    block[WeightFormat::QUANTS + k * PANEL + lane] as i8
}

/// The integer of input `k`, panel row `lane`, as f32 (exact).
fn quant(w: &PackedLinear, block: &[u8], k: usize, lane: usize) -> f32 {
    match w.format {
        WeightFormat::Affine4 => f32::from(nibble(block, k, lane)),
        WeightFormat::Symmetric8 => f32::from(byte(block, k, lane)),
    }
}

/// Panel `p` as f32: `[input][16]` integers, then `[block][16]` scales and `[block][16]`
/// minimums (`Affine4` only: for `Symmetric8` that part is neither written nor read).
pub(super) fn unpack_panel(w: &PackedLinear, p: usize, out: &mut [f32]) {
    let (cols, blocks) = (w.cols, w.blocks());
    assert_eq!(out.len(), w.unpacked_len(), "unpack_panel: output length");
    let (quants, rest) = out.split_at_mut(cols * PANEL);
    let (scales, mins) = rest.split_at_mut(blocks * PANEL);
    for b in 0..blocks {
        let block = w.block(p, b);
        for lane in 0..PANEL {
            scales[b * PANEL + lane] = scale(block, lane);
            if w.format == WeightFormat::Affine4 {
                mins[b * PANEL + lane] = min(block, lane);
            }
            for k in 0..QBLOCK {
                quants[(b * QBLOCK + k) * PANEL + lane] = quant(w, block, k, lane);
            }
        }
    }
}

/// Closes one block: `acc = fma(d, p, acc)`, then `acc = fma(m, s, acc)` for `Affine4`.
fn close_block(format: WeightFormat, acc: f32, p: f32, d: f32, m: f32, s: f32) -> f32 {
    let acc = d.mul_add(p, acc);
    match format {
        WeightFormat::Affine4 => m.mul_add(s, acc),
        WeightFormat::Symmetric8 => acc,
    }
}

/// `acc[token][panels x 16]` for panels `p0..p0 + panels`, reading the packed blocks.
pub(super) fn few_tokens(
    w: &PackedLinear,
    p0: usize,
    panels: usize,
    x: &[f32],
    sums: &[f32],
    acc: &mut [f32],
) {
    let (cols, blocks) = (w.cols, w.blocks());
    let width = panels * PANEL;
    for (t, acc) in acc.chunks_exact_mut(width).enumerate() {
        let x = &x[t * cols..(t + 1) * cols];
        for (i, a) in acc.iter_mut().enumerate() {
            let (p, lane) = (p0 + i / PANEL, i % PANEL);
            for b in 0..blocks {
                let block = w.block(p, b);
                let mut part = 0f32;
                for k in 0..QBLOCK {
                    part = x[b * QBLOCK + k].mul_add(quant(w, block, k, lane), part);
                }
                let m = match w.format {
                    WeightFormat::Affine4 => min(block, lane),
                    WeightFormat::Symmetric8 => 0.0,
                };
                let s = sums.get(t * blocks + b).copied().unwrap_or(0.0);
                *a = close_block(w.format, *a, part, scale(block, lane), m, s);
            }
        }
    }
}

/// `acc[token][16]` for one panel unpacked by [`unpack_panel`].
pub(super) fn many_tokens(
    w: &PackedLinear,
    panel: &[f32],
    x: &[f32],
    sums: &[f32],
    acc: &mut [f32],
) {
    let (cols, blocks) = (w.cols, w.blocks());
    let (quants, rest) = panel.split_at(cols * PANEL);
    let (scales, mins) = rest.split_at(blocks * PANEL);
    for (t, acc) in acc.chunks_exact_mut(PANEL).enumerate() {
        let x = &x[t * cols..(t + 1) * cols];
        for (lane, a) in acc.iter_mut().enumerate() {
            for b in 0..blocks {
                let mut part = 0f32;
                for k in 0..QBLOCK {
                    let c = b * QBLOCK + k;
                    part = x[c].mul_add(quants[c * PANEL + lane], part);
                }
                let s = sums.get(t * blocks + b).copied().unwrap_or(0.0);
                let (d, m) = (scales[b * PANEL + lane], mins[b * PANEL + lane]);
                *a = close_block(w.format, *a, part, d, m, s);
            }
        }
    }
}
