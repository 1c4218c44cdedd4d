//! Fuzzes the GGUF decoder and what the engine does with a parsed file's tensors.
//!
//! Contract checked:
//! * `GgufFile::parse` returns a typed error or a file, never panics, and allocates in
//!   proportion to the input (counts are checked against the bytes left).
//! * For a parsed file: `LlamaConfig::from_gguf` returns a config or an error; every tensor's
//!   bytes lie inside the file; a tensor of a known type and at most 2^16 elements dequantises;
//!   a 2-D one packs into `PackedLinear` exactly when its rows are whole 32-element blocks,
//!   and its packed rows equal the dequantised rows (bit for bit but for the sign of zero;
//!   Q4_0: for scales up to 8188 in magnitude, as documented; float tensors, quantised to 8 bits: within half a step, or
//!   refused as `Unquantisable` only for a value that is not finite or too large).
//!
//! Seed: `corpus/gguf/tiny_llama.gguf`, a small llama-architecture file with F32, Q4_1 and
//! Q8_0 tensors, written by `fuzz/seeds/tiny_gguf.py`.

#![no_main]

use kvmesh_engine::{f16_to_f32, GgmlType, GgufFile, LlamaConfig, PackError, PackedLinear};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::parse(data.to_vec()) else {
        return;
    };
    let _ = LlamaConfig::from_gguf(&file);
    for info in file.tensors() {
        let bytes = file.tensor_bytes(info);
        assert_eq!(bytes.len() as u64, info.len);
        let Some(ty) = GgmlType::from_id(info.type_id) else {
            continue;
        };
        if info.elements() > 1 << 16 {
            continue;
        }
        let values = file
            .tensor_f32(&info.name)
            .expect("known type, bounded size");
        assert_eq!(values.len() as u64, info.elements());
        let [cols, rows] = info.dims[..] else {
            continue;
        };
        let (cols, rows) = (cols as usize, rows as usize);
        match PackedLinear::from_ggml(ty, bytes, rows, cols) {
            Ok(_) if rows == 0 => {} // no rows: `cols` is not bounded by the data
            Ok(packed) => {
                assert!(cols > 0 && cols % 32 == 0);
                let mut row = vec![0.0; cols];
                for r in 0..rows {
                    packed.dequantize_row(r, &mut row);
                    let want = &values[r * cols..(r + 1) * cols];
                    let row_bytes = &bytes[r * bytes.len() / rows..(r + 1) * bytes.len() / rows];
                    check_row(ty, row_bytes, &row, want);
                }
            }
            Err(PackError::Unquantisable { row, value }) => {
                // Only float tensors, and only for a value that really is out of range.
                assert!(matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16));
                assert!(!(value.abs() <= 65504.0 * 127.0), "{value} is quantisable");
                assert!(values[row * cols..(row + 1) * cols]
                    .iter()
                    .any(|v| v.to_bits() == value.to_bits()));
            }
            Err(_) => assert!(cols == 0 || cols % 32 != 0),
        }
    }
});

fn check_row(ty: GgmlType, src: &[u8], got: &[f32], want: &[f32]) {
    // Bit for bit, except that Q4_0's `d q + (-8d)` gives +0 where the file's `d (q - 8)`
    // gives -0 (a negative `d` and `q = 8`): equal values.
    let same = |g: f32, w: f32| g == w || (g.is_nan() && w.is_nan());
    for (b, (g, w)) in got.chunks_exact(32).zip(want.chunks_exact(32)).enumerate() {
        match ty {
            GgmlType::Q4_1 | GgmlType::Q8_0 => {
                for (&g, &w) in g.iter().zip(w) {
                    assert!(same(g, w), "{ty:?}: packed {g} vs file {w}");
                }
            }
            GgmlType::Q4_0 => {
                let d = f16_to_f32(u16::from_le_bytes([src[b * 18], src[b * 18 + 1]]));
                if d.is_finite() && d.abs() <= 8188.0 {
                    for (&g, &w) in g.iter().zip(w) {
                        assert!(same(g, w), "Q4_0 (d = {d}): packed {g} vs file {w}");
                    }
                }
            }
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => {
                // Packing refused any value it cannot represent, so all are in range here.
                let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                let bound = amax / 127.0 * 0.51 + 127.0 * 2f32.powi(-25);
                for (&g, &w) in g.iter().zip(w) {
                    assert!((g - w).abs() <= bound, "{ty:?}: {g} vs {w} (amax {amax})");
                }
            }
        }
    }
}
