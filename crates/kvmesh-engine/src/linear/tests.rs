use super::*;
use crate::quant::{dequantize, f32_to_f16, GgmlType};

/// xorshift values in [-1, 1].
fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Random GGUF bytes of type `ty` for `rows x cols` elements.
fn ggml_bytes(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
    let blocks = rows * cols / QBLOCK;
    let r = pseudo(blocks * 34, seed);
    let mut bytes = Vec::new();
    for (b, r) in r.chunks_exact(34).enumerate() {
        let scale = f32_to_f16(0.01 + r[0].abs() * 0.05).to_le_bytes();
        let quant = |i: usize| ((r[2 + i] + 1.0) * 127.9) as u8;
        match ty {
            GgmlType::Q4_1 => {
                bytes.extend(scale);
                bytes.extend(f32_to_f16(r[1] * 0.2).to_le_bytes());
                bytes.extend((0..16).map(quant));
            }
            GgmlType::Q4_0 => {
                bytes.extend(scale);
                bytes.extend((0..16).map(quant));
            }
            GgmlType::Q8_0 => {
                bytes.extend(scale);
                bytes.extend((0..32).map(quant));
            }
            GgmlType::F32 => {
                let v = pseudo(QBLOCK, seed ^ b as u32);
                bytes.extend(v.iter().flat_map(|v| v.to_le_bytes()));
            }
            GgmlType::F16 | GgmlType::Bf16 => unreachable!("not used here"),
        }
    }
    bytes
}

fn packed(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> (PackedLinear, Vec<f32>) {
    let bytes = ggml_bytes(ty, rows, cols, seed);
    let mut dense = vec![0.0; rows * cols];
    dequantize(ty, &bytes, &mut dense);
    (
        PackedLinear::from_ggml(ty, &bytes, rows, cols).unwrap(),
        dense,
    )
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn packing_keeps_the_file_weights_exactly() {
    for ty in [GgmlType::Q4_1, GgmlType::Q4_0, GgmlType::Q8_0] {
        let (rows, cols) = (37, 96);
        let (w, dense) = packed(ty, rows, cols, 3);
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut row);
            assert_eq!(
                bits(&row),
                bits(&dense[r * cols..(r + 1) * cols]),
                "{ty:?} row {r}"
            );
        }
    }
}

#[test]
fn float_tensors_are_quantised_within_half_a_step() {
    let (rows, cols) = (5, 64);
    let (w, dense) = packed(GgmlType::F32, rows, cols, 4);
    assert_eq!(w.format(), WeightFormat::Symmetric8);
    let mut row = vec![0.0; cols];
    for r in 0..rows {
        w.dequantize_row(r, &mut row);
        for (b, (got, want)) in row
            .chunks_exact(QBLOCK)
            .zip(dense[r * cols..].chunks_exact(QBLOCK))
            .enumerate()
        {
            let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, v) in got.iter().zip(want) {
                assert!(
                    (g - v).abs() <= amax / 127.0 * 0.51,
                    "row {r} block {b}: {g} vs {v}"
                );
            }
        }
    }
}

#[test]
fn forward_matches_the_dense_product() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        for (n, rows, cols) in [(1, 8, 32), (3, 131, 576), (9, 100, 1536)] {
            let (w, dense) = packed(ty, rows, cols, 1);
            let x = pseudo(n * cols, 2);
            let mut out = vec![0.0; n * rows];
            w.forward(&x, n, &mut out, 2);
            for t in 0..n {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| f64::from(x[t * cols + c] * dense[r * cols + c]));
                    let exact: f64 = terms.clone().sum();
                    let norm: f64 = terms.map(f64::abs).sum();
                    let got = f64::from(out[t * rows + r]);
                    assert!(
                        (got - exact).abs() <= 1e-5 * norm.max(1.0),
                        "{ty:?} {got} vs {exact}"
                    );
                }
            }
        }
    }
}

/// Every token's result is bitwise the same alone, in any batch, on any thread count.
#[test]
fn results_do_not_depend_on_batching_or_threads() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let (rows, cols) = (150, 576);
        let (w, _) = packed(ty, rows, cols, 5);
        let x = pseudo(13 * cols, 6);
        let mut all = vec![0.0; 13 * rows];
        w.forward(&x, 13, &mut all, 2);
        for size in [1, 2, 3, 4, 7] {
            for t0 in (0..13 - size).step_by(size) {
                let mut some = vec![0.0; size * rows];
                let threads = 1 + size % 2;
                w.forward(&x[t0 * cols..(t0 + size) * cols], size, &mut some, threads);
                assert_eq!(
                    bits(&some),
                    bits(&all[t0 * rows..(t0 + size) * rows]),
                    "{ty:?}: tokens {t0}..{} in a batch of {size}",
                    t0 + size
                );
            }
        }
    }
}

#[test]
fn simd_and_scalar_kernels_agree_bitwise() {
    let kernels = Kernel::available();
    if kernels.len() == 1 {
        eprintln!("skipped: this CPU has no AVX2 + FMA + F16C");
        return;
    }
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let (rows, cols) = (70, 192);
        let (w, _) = packed(ty, rows, cols, 7);
        // Token counts around the few-token limit and both many-token tile widths.
        for n in [1, 3, 4, 8, 13, 16, 17, 35] {
            let x = pseudo(n * cols, 8 + n as u32);
            let mut scalar = vec![0.0; n * rows];
            w.forward_on(Kernel::Scalar, &x, n, &mut scalar, 1);
            for &k in &kernels[1..] {
                let mut simd = vec![0.0; n * rows];
                w.forward_on(k, &x, n, &mut simd, 1);
                assert_eq!(bits(&simd), bits(&scalar), "{ty:?}, {n} tokens, {k:?}");
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert_eq!(
        PackedLinear::from_ggml(GgmlType::Q8_0, &[0; 34], 1, 31).unwrap_err(),
        PackError::Columns { cols: 31 }
    );
    assert!(matches!(
        PackedLinear::from_ggml(GgmlType::Q4_1, &[0; 39], 1, 64),
        Err(PackError::Length { got: 39, .. })
    ));
    assert!(matches!(
        PackedLinear::from_ggml(GgmlType::Q4_1, &[0; 40], usize::MAX, 64),
        Err(PackError::Length { .. })
    ));
    // An empty matrix with an absurd width (the data cannot bound it) packs to nothing.
    let empty = PackedLinear::from_ggml(GgmlType::Q8_0, &[], 0, 1 << 60).unwrap();
    assert_eq!((empty.rows(), empty.bytes()), (0, 0));
    for bad in [f32::NAN, f32::INFINITY, 1e7] {
        let mut floats = vec![0.5f32; 64];
        floats[40] = bad;
        let bytes: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(matches!(
            PackedLinear::from_ggml(GgmlType::F32, &bytes, 2, 32),
            Err(PackError::Unquantisable { row: 1, .. })
        ));
    }
}

/// Inputs so small that scaling them by 16^-3 would round (the few-token kernel's trick) are
/// flushed to zero for every kernel, so batching still cannot change a bit.
#[test]
fn tiny_inputs_keep_batch_invariance() {
    let (rows, cols) = (40, 64);
    let (w, _) = packed(GgmlType::Q4_1, rows, cols, 9);
    let x: Vec<f32> = pseudo(8 * cols, 10)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if (i / cols) % 2 == 0 {
                v * 1e-36
            } else {
                v * 1e-20
            }
        })
        .collect();
    let mut all = vec![0.0; 8 * rows];
    w.forward(&x, 8, &mut all, 1);
    for t in 0..8 {
        let mut one = vec![0.0; rows];
        w.forward(&x[t * cols..(t + 1) * cols], 1, &mut one, 1);
        assert_eq!(
            bits(&one),
            bits(&all[t * rows..(t + 1) * rows]),
            "token {t}"
        );
    }
    assert!(
        all.iter().any(|v| *v != 0.0),
        "the 1e-20 inputs still count"
    );
}
