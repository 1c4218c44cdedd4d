//! Packing a GGUF tensor's bytes into the panel layout of [`PackedLinear`].
//!
//! Quantised tensors keep their integers and scales: a Q4_1 block's `d`, `m` and nibbles, a
//! Q4_0 block's `d` and nibbles with `m = -8d` (exact: multiplying an f16 by 8 only moves its
//! exponent; a scale above 8188 in magnitude, which no real checkpoint has, would overflow
//! f16 to an infinite minimum), a Q8_0 block's `d` and bytes.
//!
//! Float tensors are quantised here, per block of 32, symmetrically to 8 bits with an f16
//! scale; a tensor holding a value that cannot be represented so (NaN, infinite, or beyond
//! 127 x the largest f16) is refused with [`PackError::Unquantisable`] rather than silently
//! zeroed.

use rayon::prelude::*;

use super::{Line, PackedLinear, WeightFormat, PANEL, QBLOCK};
use crate::huge_pages::huge_vec;
use crate::quant::{dequantize, f32_to_f16, GgmlType};

/// Why a tensor could not be packed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PackError {
    /// Rows must be whole quantisation blocks.
    #[error("rows of {cols} inputs are not a multiple of {QBLOCK}")]
    Columns {
        /// Inputs per row.
        cols: usize,
    },
    /// A float tensor holds a value 8-bit quantisation with an f16 scale cannot represent.
    #[error("row {row} holds {value}, which 8-bit quantisation cannot represent (not finite, or over 8.3e6 in magnitude)")]
    Unquantisable {
        /// The row.
        row: usize,
        /// The first such value.
        value: f32,
    },
    /// The byte length does not match the shape and type.
    #[error("{ty:?} data of {got} bytes does not hold {rows} x {cols} elements")]
    Length {
        /// Element type.
        ty: GgmlType,
        /// Bytes given.
        got: usize,
        /// Output rows.
        rows: usize,
        /// Inputs per row.
        cols: usize,
    },
}

/// One source block, decoded: scale and minimum as f16 bits and 32 integers.
struct SourceBlock {
    d: u16,
    m: u16,
    q: [i8; QBLOCK],
}

impl PackedLinear {
    /// Packs a row-major `rows x cols` tensor of type `ty` from its raw GGUF bytes.
    pub fn from_ggml(
        ty: GgmlType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, PackError> {
        if cols == 0 || !cols.is_multiple_of(QBLOCK) {
            return Err(PackError::Columns { cols });
        }
        let length_error = PackError::Length {
            ty,
            got: bytes.len(),
            rows,
            cols,
        };
        let need = rows
            .checked_mul(cols)
            .and_then(|e| ty.bytes_for(e as u64))
            .ok_or(length_error.clone())?;
        if bytes.len() as u64 != need {
            return Err(length_error);
        }
        let format = match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => WeightFormat::Affine4,
            GgmlType::Q8_0 | GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
                WeightFormat::Symmetric8
            }
        };
        if rows == 0 {
            // No weights (and `cols` unbounded by the data: no sizes computed from it).
            return Ok(PackedLinear {
                rows,
                cols,
                format,
                lines: Vec::new(),
            });
        }
        // From here rows >= 1, so `cols` is bounded by the byte length checked above.
        let blocks = cols / QBLOCK;
        let panels = rows.div_ceil(PANEL);
        let bb = format.block_bytes();
        let mut packed = PackedLinear {
            rows,
            cols,
            format,
            lines: huge_vec(panels * blocks * bb / 64, Line([0; 64])),
        };
        let row_bytes = bytes.len() / rows.max(1);
        let lines_per_panel = blocks * bb / 64;
        // Panels are independent: pack them in parallel (loading a model packs ~135M weights).
        // The first unquantisable float row, in row order, is the error.
        let refused = packed
            .lines
            .par_chunks_mut(lines_per_panel)
            .enumerate()
            .find_map_first(|(p, lines)| {
                // SAFETY: `Line` is a plain byte array; the slice covers exactly its bytes.
                let data = unsafe {
                    std::slice::from_raw_parts_mut(
                        lines.as_mut_ptr().cast::<u8>(),
                        lines.len() * 64,
                    )
                };
                let mut floats = vec![0f32; cols];
                for lane in 0..PANEL.min(rows - p * PANEL) {
                    let r = p * PANEL + lane;
                    let src = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16) {
                        dequantize(ty, src, &mut floats);
                        if let Some(&value) = floats.iter().find(|v| !quantisable(**v)) {
                            return Some(PackError::Unquantisable { row: r, value });
                        }
                    }
                    for (b, block) in data.chunks_exact_mut(bb).enumerate() {
                        let source = match ty {
                            GgmlType::Q4_1 => q4_block(&src[b * 20..][..20], true),
                            GgmlType::Q4_0 => q4_block(&src[b * 18..][..18], false),
                            GgmlType::Q8_0 => q8_block(&src[b * 34..][..34]),
                            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
                                quantize_block(&floats[b * QBLOCK..][..QBLOCK])
                            }
                        };
                        put(format, block, lane, &source);
                    }
                }
                None
            });
        match refused {
            Some(e) => Err(e),
            None => Ok(packed),
        }
    }
}

/// Writes row `lane`'s part of one panel block.
fn put(format: WeightFormat, block: &mut [u8], lane: usize, src: &SourceBlock) {
    block[2 * lane..2 * lane + 2].copy_from_slice(&src.d.to_le_bytes());
    match format {
        WeightFormat::Affine4 => {
            let mins = WeightFormat::MINS + 2 * lane;
            block[mins..mins + 2].copy_from_slice(&src.m.to_le_bytes());
            for (k, &q) in src.q.iter().enumerate() {
                let (byte, shift) = nibble_position(k, lane);
                block[byte] |= (q as u8 & 0x0f) << shift;
            }
        }
        WeightFormat::Symmetric8 => {
            for (k, &q) in src.q.iter().enumerate() {
                block[WeightFormat::QUANTS + k * PANEL + lane] = q as u8;
            }
        }
    }
}

/// Byte and bit shift of input `k`'s nibble for panel row `lane` in an `Affine4` block: the
/// 32-byte vector `2 (k / 8) + lane / 8`, 32-bit lane `lane % 8`, bits `4 (k % 8)..`.
pub(super) fn nibble_position(k: usize, lane: usize) -> (usize, u32) {
    let vector = 2 * (k / 8) + lane / 8;
    let s = k % 8;
    (
        WeightFormat::QUANTS + 32 * vector + 4 * (lane % 8) + s / 2,
        4 * (s as u32 % 2),
    )
}

fn f16_bits(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// A Q4_1 block (`d`, `m`, 16 bytes) or a Q4_0 block (`d`, 16 bytes; `m = -8d`).
fn q4_block(b: &[u8], has_min: bool) -> SourceBlock {
    let d = f16_bits(b, 0);
    let (m, qs) = if has_min {
        (f16_bits(b, 2), &b[4..20])
    } else {
        // -8d: the sign flips and the exponent rises by 3, exactly, unless d is huge.
        (f32_to_f16(-8.0 * crate::quant::f16_to_f32(d)), &b[2..18])
    };
    let mut q = [0i8; QBLOCK];
    for (j, &byte) in qs.iter().enumerate() {
        q[j] = (byte & 0x0f) as i8;
        q[j + 16] = (byte >> 4) as i8;
    }
    SourceBlock { d, m, q }
}

/// A Q8_0 block: `d`, 32 signed bytes.
fn q8_block(b: &[u8]) -> SourceBlock {
    let mut q = [0i8; QBLOCK];
    for (o, &byte) in q.iter_mut().zip(&b[2..34]) {
        *o = byte as i8;
    }
    SourceBlock {
        d: f16_bits(b, 0),
        m: 0,
        q,
    }
}

/// Largest magnitude whose 8-bit step (`amax / 127`) is a finite f16.
const MAX_QUANTISABLE: f32 = 65504.0 * 127.0;

/// Whether [`quantize_block`] can represent `v`: finite and at most [`MAX_QUANTISABLE`].
fn quantisable(v: f32) -> bool {
    v.is_finite() && v.abs() <= MAX_QUANTISABLE
}

/// Symmetric 8-bit quantisation of 32 floats with an f16 scale (values checked by
/// [`quantisable`]).
fn quantize_block(x: &[f32]) -> SourceBlock {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f32_to_f16(amax / 127.0);
    let step = crate::quant::f16_to_f32(d);
    let mut q = [0i8; QBLOCK];
    if step > 0.0 && step.is_finite() {
        for (o, v) in q.iter_mut().zip(x) {
            *o = (v / step).round().clamp(-127.0, 127.0) as i8;
        }
    }
    SourceBlock { d, m: 0, q }
}
