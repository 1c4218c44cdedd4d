//! ggml tensor types and their dequantisation to f32.
//!
//! Quantised types store blocks of 32 elements with per-block scales:
//!
//! | type | bytes / 32 elements | element |
//! |---|---|---|
//! | Q4_0 | 18 | `d x (q - 8)`, q a 4-bit nibble, d an f16 scale |
//! | Q4_1 | 20 | `d x q + m`, q a 4-bit nibble, d and m f16 |
//! | Q8_0 | 34 | `d x q`, q an i8, d an f16 scale |
//!
//! In a block, byte `j` of the nibbles holds element `j` (low nibble) and `j + 16` (high).
//! These are the scalar reference routines; the engine converts weights once at load time.

/// The element types kvmesh can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, scale only.
    Q4_0,
    /// 4-bit, scale and minimum.
    Q4_1,
    /// 8-bit, scale only.
    Q8_0,
}

impl GgmlType {
    /// The type for a ggml type id, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// Elements per block (1 for plain floats).
    pub fn block_elements(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
        }
    }

    /// Bytes for `elements` elements; `None` if not a whole number of blocks or overflowing.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let be = self.block_elements();
        elements
            .is_multiple_of(be)
            .then(|| (elements / be).checked_mul(self.block_bytes()))
            .flatten()
    }
}

/// IEEE 754 half to single precision, exactly (subnormals, infinities and NaN included).
///
/// Branch-free, so loops over halves vectorise (the portable attention backend widens every
/// f16 KV element with it): the half's exponent and mantissa, moved into an f32's fields,
/// read as a number `2^112` too small (the bias difference, 127 - 15), and one exact multiply
/// by `2^112` fixes that for normal and subnormal halves alike. Only infinities and NaN
/// (exponent all ones) take the other arm of a select.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = (h & 0x7fff) << 13;
    let finite = f32::from_bits(magnitude) * f32::from_bits(0x7780_0000); // 2^112
    let bits = if magnitude >= 0x7c00 << 13 {
        magnitude | 0x7f80_0000
    } else {
        finite.to_bits()
    };
    f32::from_bits(sign | bits)
}

/// Single to IEEE half precision, rounding to nearest even (overflow gives infinity, NaN stays
/// NaN). Used where kvmesh quantises weights itself, so scales are exactly representable.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    // The value is 1.mant x 2^(exp - 127); half's exponent bias is 15.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // 24-bit significand (implicit bit included, absent for f32 subnormals, which round to 0).
    let sig = if exp == 0 { 0 } else { mant | 0x80_0000 };
    // Bits to drop: 13 for a normal half, more when the result is subnormal.
    let shift = if e > 0 { 13 } else { (14 - e) as u32 };
    if shift > 24 {
        return sign;
    }
    let kept = sig >> shift;
    let rest = sig & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let rounded = kept + u32::from(rest > half || (rest == half && kept & 1 == 1));
    // A normal result stores the exponent above the 10 mantissa bits; carries from rounding
    // move into the exponent field, which is what IEEE wants.
    let magnitude = if e > 0 {
        ((e as u32) << 10) + (rounded - 0x400)
    } else {
        rounded
    };
    sign | magnitude as u16
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Dequantises `bytes` of type `ty` into `out` (whose length gives the element count).
///
/// # Panics
/// If `bytes` is shorter than `ty.bytes_for(out.len())` or `out.len()` is not a whole number
/// of blocks: callers size both from a parsed, bounds-checked tensor.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let need = ty.bytes_for(out.len() as u64).expect("whole blocks") as usize;
    let bytes = &bytes[..need];
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlType::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = d * (f32::from(q & 0x0f) - 8.0);
                    o[j + 16] = d * (f32::from(q >> 4) - 8.0);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = d * f32::from(q & 0x0f) + m;
                    o[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    o[j] = d * f32::from(b[2 + j] as i8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    /// Every half against its value computed from the IEEE definition in f64.
    #[test]
    fn f16_conversion_is_exact_for_every_half() {
        for h in 0u16..=0xffff {
            let (sign, exp, mant) = (h >> 15, (h >> 10) & 0x1f, f64::from(h & 0x3ff));
            let magnitude = match exp {
                0 => mant * 2f64.powi(-24),
                0x1f if mant == 0.0 => f64::INFINITY,
                0x1f => f64::NAN,
                e => (1.0 + mant / 1024.0) * 2f64.powi(i32::from(e) - 15),
            };
            let want = if sign == 1 { -magnitude } else { magnitude };
            let got = f16_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), (want as f32).to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn f16_from_f32_rounds_to_nearest_even_and_round_trips() {
        for h in (0u16..=0xffff).filter(|h| h & 0x7c00 != 0x7c00) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00); // tie to even
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02); // tie to even, up
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds past the largest half
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie to even at the bottom
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn quantised_blocks_decode_by_the_ggml_rules() {
        // d = 0.5 (0x3800), m = 1.0 (0x3c00)
        let mut q41 = vec![0x00, 0x38, 0x00, 0x3c];
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize(GgmlType::Q4_1, &q41, &mut out);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[5], 0.5 * 5.0 + 1.0);
        assert_eq!(out[16], 0.5 * 15.0 + 1.0);

        let mut q40 = vec![0x00, 0x38];
        q40.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        dequantize(GgmlType::Q4_0, &q40, &mut out);
        assert_eq!(out[0], -4.0);
        assert_eq!(out[31], 0.5 * (0.0 - 8.0));

        let mut q80 = vec![0x00, 0x38];
        q80.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        dequantize(GgmlType::Q8_0, &q80, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_1.bytes_for(33), None);
        assert_eq!(GgmlType::from_id(12), None);
    }
}
