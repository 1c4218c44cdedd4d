//! Paged attention against a dense reference, over every backend this CPU has and both KV
//! element types (f32, f16, int8 with a scale per head vector).
//!
//! The reference is plain `softmax(Q K^T * scale) V` on contiguous arrays, in f64, over the
//! keys and values as the cache stores them (rounded to half for an f16 cache, quantised for
//! int8: the attention kernels must be exact up to f32 arithmetic on what is stored; the
//! rounding itself is the dtype's, bounded separately by `f16_rounding_is_bounded_and_saturates`
//! and `int8_error_is_within_half_a_step`). Paged
//! results (random, shuffled block tables; GQA / MQA / MHA; head dims 32/64/128 plus odd
//! ones; block sizes 1/4/16; partial last blocks) must match it to a relative error of
//! `TOLERANCE` per output head vector (max abs error over the vector's max abs value).
//! Backends must agree with each other to `BACKEND_TOLERANCE` (AVX-512 with AVX2 bitwise),
//! and splitting a call (chunked
//! prefill, per-KV-head calls) must give bitwise the same result as the whole call.
//!
//! Bulk data comes from a seeded generator, not proptest strategies, so shrinking works on
//! the shape and the seed and a case costs only its arithmetic. Sizes are kept small enough
//! for debug-mode CI (the whole file runs in a few seconds).

use kvmesh_core::{BlockCopy, BlockId, BlockPool, KvDtype, KvGeometry, KvPart, ModelDims};
use kvmesh_engine::{
    f16_to_f32, f32_to_f16, AttentionBackend, KvCache, KvCacheError, PagedAttention,
};
use proptest::prelude::*;

/// Paged vs dense reference, relative to each output head vector's magnitude.
const TOLERANCE: f64 = 1e-4;
/// Backend vs backend (polynomial vs libm `exp`, summation order).
const BACKEND_TOLERANCE: f64 = 1e-5;

/// `(query heads, KV heads)`: MHA, GQA (SmolLM2's 9/3 among them), MQA.
const HEADS: [(u32, u32); 6] = [(4, 4), (2, 2), (6, 2), (9, 3), (4, 1), (8, 1)];

// ---- helpers -----------------------------------------------------------------------------

/// splitmix64: deterministic bulk data from a proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-amp, amp)`.
    fn f32(&mut self, amp: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
    }

    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(amp)).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// The dtypes the cache stores.
const DTYPES: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Int8];

fn geometry(layers: u32, (qh, kvh): (u32, u32), d: u32, bs: u32, dtype: KvDtype) -> KvGeometry {
    let dims = ModelDims {
        num_layers: layers,
        num_query_heads: qh,
        num_kv_heads: kvh,
        head_dim: d,
        max_context: None,
    };
    KvGeometry::new(dims, dtype, bs).unwrap()
}

/// `values` (head vectors of `d` floats) as a cache of `dtype` stores them: f16 rounds to
/// nearest and saturates; int8 scales each vector by its largest finite magnitude over 127
/// and rounds `x x (1 / scale)` to an integer (the cache's formula, so the values are equal).
fn stored(dtype: KvDtype, values: Vec<f32>, d: usize) -> Vec<f32> {
    match dtype {
        KvDtype::F16 => values
            .into_iter()
            .map(|x| f16_to_f32(f32_to_f16(x.clamp(-65_504.0, 65_504.0))))
            .collect(),
        KvDtype::Int8 => values
            .chunks(d)
            .flat_map(|v| {
                let scale = v
                    .iter()
                    .filter(|x| x.is_finite())
                    .fold(0f32, |m, x| m.max(x.abs()))
                    / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                v.iter()
                    .map(move |&x| (x * inv).round().clamp(-127.0, 127.0) * scale)
            })
            .collect(),
        _ => values,
    }
}

/// Dense K/V as `cache` stores them.
fn stored_dense(cache: &KvCache, keys: Vec<f32>, values: Vec<f32>) -> Dense {
    let (dtype, d) = (
        cache.geometry().dtype(),
        cache.geometry().dims().head_dim as usize,
    );
    Dense {
        keys: stored(dtype, keys, d),
        values: stored(dtype, values, d),
    }
}

/// Every block id `0..n` (BlockId has no public constructor: ask a pool), shuffled.
fn shuffled_ids(n: usize, rng: &mut Rng) -> Vec<BlockId> {
    let mut pool = BlockPool::builder()
        .num_blocks(n)
        .block_size(1)
        .build()
        .unwrap();
    let seq = pool.match_prefix(&[], 0).sequence;
    pool.append_slots(seq, n).unwrap();
    let mut ids = pool.block_table(seq).unwrap().to_vec();
    rng.shuffle(&mut ids);
    ids
}

/// Every backend's output within `BACKEND_TOLERANCE` of the first's, and the AVX-512 one
/// bitwise equal to the AVX2 one (its lanes do the same operations in the same order).
fn agree(outs: &[(AttentionBackend, Vec<f32>)], d: usize) -> Result<(), TestCaseError> {
    let (_, first) = &outs[0];
    for (b, out) in &outs[1..] {
        let err = rel_error(out, first, d);
        prop_assert!(
            err <= BACKEND_TOLERANCE,
            "{b} differs from scalar by {err:e}"
        );
    }
    let of = |want| outs.iter().find(|(b, _)| *b == want).map(|(_, o)| o);
    if let (Some(avx2), Some(avx512)) =
        (of(AttentionBackend::Avx2Fma), of(AttentionBackend::Avx512))
    {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert!(bits(avx2) == bits(avx512), "avx512 differs from avx2");
    }
    Ok(())
}

fn backends() -> Vec<PagedAttention> {
    let found: Vec<_> = AttentionBackend::ALL
        .into_iter()
        .filter_map(|b| PagedAttention::with_backend(b).ok())
        .collect();
    if found.len() == 1 {
        eprintln!("note: only the scalar attention backend is available on this CPU");
    }
    found
}

/// One sequence's dense K/V for one layer: `[tokens][kv_heads][d]`.
struct Dense {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// Writes random K/V for `len` tokens into every layer through `table`, in random chunk
/// sizes (single-token and batched writes), and returns layer `layer`'s dense copy as stored.
fn fill(cache: &mut KvCache, table: &[BlockId], len: usize, layer: u32, rng: &mut Rng) -> Dense {
    let dims = *cache.geometry().dims();
    let row = (dims.num_kv_heads * dims.head_dim) as usize;
    let amp = [0.5, 1.0, 2.0, 4.0][rng.below(4)];
    let mut dense = Dense {
        keys: vec![],
        values: vec![],
    };
    for l in 0..dims.num_layers {
        let keys = rng.vec(len * row, amp);
        let values = rng.vec(len * row, 1.0);
        write_chunks(cache, l, table, 0, &keys, &values, rng);
        if l == layer {
            dense = stored_dense(cache, keys, values);
        }
    }
    dense
}

#[allow(clippy::too_many_arguments)]
fn write_chunks(
    cache: &mut KvCache,
    layer: u32,
    table: &[BlockId],
    start: usize,
    keys: &[f32],
    values: &[f32],
    rng: &mut Rng,
) {
    let dims = *cache.geometry().dims();
    let row = (dims.num_kv_heads * dims.head_dim) as usize;
    let len = keys.len() / row;
    let mut t = 0;
    while t < len {
        let n = (1 + rng.below(24)).min(len - t);
        let (k, v) = (
            &keys[t * row..(t + n) * row],
            &values[t * row..(t + n) * row],
        );
        if n == 1 {
            cache.write_token(layer, table, start + t, k, v).unwrap();
        } else {
            cache.write_tokens(layer, table, start + t, k, v).unwrap();
        }
        t += n;
    }
}

/// softmax(Q K^T * scale) V, causal, on contiguous arrays, in f64. Query row `i` sits at
/// position `start + i` and sees keys `0..=start + i`.
fn dense_attention(dims: &ModelDims, q: &[f32], kv: &Dense, start: usize, scale: f32) -> Vec<f32> {
    let (qh, kvh, d) = (
        dims.num_query_heads as usize,
        dims.num_kv_heads as usize,
        dims.head_dim as usize,
    );
    let group = qh / kvh;
    let rows = q.len() / (qh * d);
    let mut out = vec![0.0f32; q.len()];
    for i in 0..rows {
        for h in 0..qh {
            let kh = h / group;
            let qv = &q[(i * qh + h) * d..][..d];
            let visible = start + i + 1;
            let scores: Vec<f64> = (0..visible)
                .map(|p| {
                    let kv_row = &kv.keys[(p * kvh + kh) * d..][..d];
                    let dot: f64 = qv
                        .iter()
                        .zip(kv_row)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    dot * f64::from(scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                let acc: f64 = (0..visible)
                    .map(|p| weights[p] * f64::from(kv.values[(p * kvh + kh) * d + c]))
                    .sum();
                out[(i * qh + h) * d + c] = (acc / total) as f32;
            }
        }
    }
    out
}

/// Max over head vectors of `max |got - want| / max |want|`.
fn rel_error(got: &[f32], want: &[f32], d: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    got.chunks(d)
        .zip(want.chunks(d))
        .map(|(g, w)| {
            let err = g
                .iter()
                .zip(w)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .fold(0.0, f64::max);
            let norm = w.iter().map(|&b| f64::from(b).abs()).fold(0.0, f64::max);
            if err == 0.0 {
                0.0
            } else {
                err / norm.max(1e-30)
            }
        })
        .fold(0.0, f64::max)
}

fn scale_of(d: u32) -> f32 {
    1.0 / (d as f32).sqrt()
}

// ---- strategies --------------------------------------------------------------------------

fn heads() -> impl Strategy<Value = (u32, u32)> {
    prop::sample::select(HEADS.to_vec())
}

fn head_dim() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![32u32, 64, 128])
}

fn block_size() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![1u32, 4, 16])
}

fn dtype() -> impl Strategy<Value = KvDtype> {
    prop::sample::select(DTYPES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A prefill chunk over a cached prefix equals dense causal attention, on every backend,
    /// and the backends agree.
    #[test]
    fn prefill_matches_dense(
        heads in heads(),
        d in head_dim(),
        bs in block_size(),
        dt in dtype(),
        layers in 1u32..=3,
        prefix in 0usize..=240,
        q_len in 1usize..=16,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let g = geometry(layers, heads, d, bs, dt);
        let layer = rng.below(layers as usize) as u32;
        let len = prefix + q_len;
        // Spare blocks so the table is a shuffled subset, and an unused tail in the table.
        let blocks = len.div_ceil(bs as usize) + 1 + rng.below(3);
        let mut cache = KvCache::new(g, blocks + 3).unwrap();
        let table = &shuffled_ids(blocks + 3, &mut rng)[..blocks];
        let kv = fill(&mut cache, table, len, layer, &mut rng);
        let q_row = (heads.0 * d) as usize;
        let amp = [0.5, 1.0, 2.0, 4.0][rng.below(4)];
        let q = rng.vec(q_len * q_row, amp);
        let want = dense_attention(g.dims(), &q, &kv, prefix, scale_of(d));

        let mut outs = vec![];
        for attention in backends() {
            let mut out = vec![f32::NAN; q.len()];
            attention.prefill(&cache, layer, table, prefix, &q, &mut out, scale_of(d)).unwrap();
            let err = rel_error(&out, &want, d as usize);
            prop_assert!(err <= TOLERANCE, "{}: rel error {err:e}", attention.backend());
            outs.push((attention.backend(), out));
        }
        agree(&outs, d as usize)?;
    }

    /// A batch of sequences of different lengths, each on its own shuffled blocks, decodes
    /// like dense attention of its last token.
    #[test]
    fn decode_matches_dense(
        heads in heads(),
        d in head_dim(),
        bs in block_size(),
        dt in dtype(),
        lens in prop::collection::vec(1usize..=300, 1..=4),
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let g = geometry(2, heads, d, bs, dt);
        let layer = rng.below(2) as u32;
        let per_seq: Vec<usize> = lens.iter().map(|&l| l.div_ceil(bs as usize)).collect();
        let total: usize = per_seq.iter().sum();
        let mut cache = KvCache::new(g, total + 2).unwrap();
        let ids = shuffled_ids(total + 2, &mut rng);
        let mut tables = vec![];
        let mut at = 0;
        for &n in &per_seq {
            tables.push(ids[at..at + n].to_vec());
            at += n;
        }
        let dense: Vec<Dense> = tables
            .iter()
            .zip(&lens)
            .map(|(t, &l)| fill(&mut cache, t, l, layer, &mut rng))
            .collect();
        let q_row = (heads.0 * d) as usize;
        let q = rng.vec(lens.len() * q_row, 2.0);
        let mut want = vec![];
        for (i, (kv, &l)) in dense.iter().zip(&lens).enumerate() {
            let qi = &q[i * q_row..(i + 1) * q_row];
            want.extend(dense_attention(g.dims(), qi, kv, l - 1, scale_of(d)));
        }
        let seqs: Vec<(&[BlockId], usize)> =
            tables.iter().zip(&lens).map(|(t, &l)| (t.as_slice(), l)).collect();

        let mut outs = vec![];
        for attention in backends() {
            let mut out = vec![f32::NAN; q.len()];
            attention.decode(&cache, layer, &seqs, &q, &mut out, scale_of(d)).unwrap();
            let err = rel_error(&out, &want, d as usize);
            prop_assert!(err <= TOLERANCE, "{}: rel error {err:e}", attention.backend());
            outs.push((attention.backend(), out));
        }
        agree(&outs, d as usize)?;
    }

    /// Several prefill chunks in a row (each written, then attended) equal one-shot prefill
    /// bitwise, and dense attention to the tolerance.
    #[test]
    fn chunked_prefill_equals_one_shot(
        heads in heads(),
        d in head_dim(),
        bs in block_size(),
        dt in dtype(),
        cuts in prop::collection::vec(1usize..=24, 1..=4),
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let g = geometry(1, heads, d, bs, dt);
        let len: usize = cuts.iter().sum();
        let blocks = len.div_ceil(bs as usize);
        let table = shuffled_ids(blocks, &mut rng);
        let kv_row = (heads.1 * d) as usize;
        let q_row = (heads.0 * d) as usize;
        let kv = Dense { keys: rng.vec(len * kv_row, 2.0), values: rng.vec(len * kv_row, 1.0) };
        let q = rng.vec(len * q_row, 2.0);
        let want = dense_attention(
            g.dims(),
            &q,
            &Dense {
                keys: stored(dt, kv.keys.clone(), d as usize),
                values: stored(dt, kv.values.clone(), d as usize),
            },
            0,
            scale_of(d),
        );

        for attention in backends() {
            let mut cache = KvCache::new(g, blocks).unwrap();
            let mut chunked = vec![f32::NAN; q.len()];
            let mut start = 0;
            for &n in &cuts {
                let (k, v) = (&kv.keys[start * kv_row..(start + n) * kv_row],
                              &kv.values[start * kv_row..(start + n) * kv_row]);
                cache.write_tokens(0, &table, start, k, v).unwrap();
                let rows = start * q_row..(start + n) * q_row;
                attention
                    .prefill(&cache, 0, &table, start, &q[rows.clone()], &mut chunked[rows], scale_of(d))
                    .unwrap();
                start += n;
            }
            let mut one_shot = vec![f32::NAN; q.len()];
            attention.prefill(&cache, 0, &table, 0, &q, &mut one_shot, scale_of(d)).unwrap();
            prop_assert!(chunked == one_shot, "{}: chunked differs from one-shot", attention.backend());
            let err = rel_error(&one_shot, &want, d as usize);
            prop_assert!(err <= TOLERANCE, "{}: rel error {err:e}", attention.backend());
        }
    }

    /// Per-KV-head calls (the thread-splitting recipe) equal the whole call bitwise, for one
    /// decode token (contiguous sub-slices) and for prefill rows (compacted heads).
    #[test]
    fn kv_head_split_equals_full(
        heads in heads(),
        d in head_dim(),
        bs in block_size(),
        dt in dtype(),
        len in 1usize..=120,
        rows in 1usize..=8,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let g = geometry(1, heads, d, bs, dt);
        let rows = rows.min(len);
        let blocks = len.div_ceil(bs as usize);
        let table = shuffled_ids(blocks, &mut rng);
        let mut cache = KvCache::new(g, blocks).unwrap();
        fill(&mut cache, &table, len, 0, &mut rng);
        let (d_us, group) = (d as usize, (heads.0 / heads.1) as usize);
        let q_row = heads.0 as usize * d_us;
        let q = rng.vec(rows * q_row, 2.0);
        let start = len - rows;
        let head_run = group * d_us;

        for attention in backends() {
            let mut full = vec![0.0; q.len()];
            attention.prefill(&cache, 0, &table, start, &q, &mut full, 0.3).unwrap();
            // One KV head at a time, each head's query heads compacted to [rows][group][d].
            let mut split = vec![0.0; q.len()];
            for h in 0..heads.1 {
                let pick = |v: &[f32]| -> Vec<f32> {
                    (0..rows)
                        .flat_map(|r| v[r * q_row + h as usize * head_run..][..head_run].to_vec())
                        .collect()
                };
                let qh = pick(&q);
                let mut oh = vec![0.0; qh.len()];
                attention.attend(&cache, 0, &table, start, h..h + 1, &qh, &mut oh, 0.3).unwrap();
                for r in 0..rows {
                    split[r * q_row + h as usize * head_run..][..head_run]
                        .copy_from_slice(&oh[r * head_run..(r + 1) * head_run]);
                }
            }
            prop_assert!(split == full, "{}: per-head split differs", attention.backend());

            // Decode of the last token, split into two KV-head ranges on one output row.
            let last = &q[(rows - 1) * q_row..];
            let mut row_out = vec![0.0; q_row];
            let cut = heads.1 / 2;
            let (lo, hi) = row_out.split_at_mut(cut as usize * head_run);
            let (q_lo, q_hi) = last.split_at(cut as usize * head_run);
            attention.attend(&cache, 0, &table, len - 1, 0..cut, q_lo, lo, 0.3).unwrap();
            attention.attend(&cache, 0, &table, len - 1, cut..heads.1, q_hi, hi, 0.3).unwrap();
            let mut dec = vec![0.0; q_row];
            attention.decode(&cache, 0, &[(&table, len)], last, &mut dec, 0.3).unwrap();
            prop_assert!(row_out == dec, "{}: decode split differs", attention.backend());
            prop_assert!(dec == full[(rows - 1) * q_row..], "{}: decode vs prefill row", attention.backend());
        }
    }

    /// copy_prefix copies exactly the first `slots` slots of every layer, part and head from
    /// src to dst, and touches nothing else.
    #[test]
    fn copy_prefix_copies_the_prefix_only(
        heads in heads(),
        bs in block_size(),
        dt in dtype(),
        layers in 1u32..=3,
        slots_frac in 0.0f64..=1.0,
        seed: u64,
    ) {
        let mut rng = Rng(seed);
        let g = geometry(layers, heads, 8, bs, dt);
        let ids = shuffled_ids(4, &mut rng);
        let (src, dst) = (ids[0], ids[1]);
        let mut cache = KvCache::new(g, 4).unwrap();
        let block_bytes = cache.block_bytes();
        prop_assert_eq!(block_bytes as u64, g.bytes_per_block());
        for &b in &ids {
            let data: Vec<u8> = (0..block_bytes).map(|_| rng.next() as u8).collect();
            cache.write_block(b, &data).unwrap();
        }
        let read = |cache: &KvCache, b: BlockId| {
            let mut bytes = vec![0u8; block_bytes];
            cache.read_block(b, &mut bytes).unwrap();
            bytes
        };
        let before: Vec<Vec<u8>> = ids.iter().map(|&b| read(&cache, b)).collect();
        let slots = (slots_frac * f64::from(bs)).round() as u32;
        cache.copy_prefix(BlockCopy { src, dst, slots }).unwrap();

        prop_assert_eq!(read(&cache, src), before[0].clone());
        prop_assert_eq!(read(&cache, ids[2]), before[2].clone());
        prop_assert_eq!(read(&cache, ids[3]), before[3].clone());
        let after = read(&cache, dst);
        let elem = (dt.bits() / 8) as usize;
        for layer in 0..layers {
            for part in [KvPart::Key, KvPart::Value] {
                for h in 0..heads.1 {
                    let run = g.element_offset(layer, part, h, 0);
                    for slot in 0..bs as usize {
                        let expect = if slot < slots as usize { &before[0] } else { &before[1] };
                        for c in 0..8 {
                            // Keys are stored dim-major inside their run, values slot-major.
                            let at = match part {
                                KvPart::Key => run + c * bs as usize + slot,
                                KvPart::Value => run + slot * 8 + c,
                            } * elem;
                            prop_assert_eq!(&after[at..at + elem], &expect[at..at + elem]);
                        }
                        if dt.is_quantized() {
                            // The slot's scale, after the data.
                            let at = g.elements_per_block() * elem + 4 * (run / 8 + slot);
                            prop_assert_eq!(&after[at..at + 4], &expect[at..at + 4]);
                        }
                    }
                }
            }
        }
    }
}

// ---- fixed cases ---------------------------------------------------------------------------

/// Head dims that are not multiples of 16 or 8 (the SIMD tails), and a tiny one.
#[test]
fn odd_head_dims_match_dense() {
    let cases = [4u32, 12, 20, 24, 36, 72].into_iter().enumerate();
    for ((case, d), dtype) in cases.flat_map(|c| DTYPES.map(|dt| (c, dt))) {
        let mut rng = Rng(case as u64 + 7);
        let g = geometry(1, (6, 2), d, 4, dtype);
        let (prefix, q_len) = (37usize, 9usize);
        let len = prefix + q_len;
        let blocks = len.div_ceil(4);
        let table = shuffled_ids(blocks, &mut rng);
        let mut cache = KvCache::new(g, blocks).unwrap();
        let kv = fill(&mut cache, &table, len, 0, &mut rng);
        let q = rng.vec(q_len * 6 * d as usize, 2.0);
        let want = dense_attention(g.dims(), &q, &kv, prefix, scale_of(d));
        for attention in backends() {
            let mut out = vec![0.0; q.len()];
            attention
                .prefill(&cache, 0, &table, prefix, &q, &mut out, scale_of(d))
                .unwrap();
            let err = rel_error(&out, &want, d as usize);
            let backend = attention.backend();
            assert!(err <= TOLERANCE, "d={d} {dtype} {backend}: {err:e}");
        }
    }
}

/// Very peaked and very flat softmaxes (scores spanning hundreds): no overflow, no NaN.
#[test]
fn extreme_scores_stay_finite_and_accurate() {
    let cases = [0.01f32, 30.0].into_iter().enumerate();
    for ((case, amp), dtype) in cases.flat_map(|c| DTYPES.map(|dt| (c, dt))) {
        let mut rng = Rng(case as u64);
        let g = geometry(1, (4, 1), 64, 16, dtype);
        let len = 200usize;
        let table = shuffled_ids(13, &mut rng);
        let mut cache = KvCache::new(g, 13).unwrap();
        let (keys, values) = (rng.vec(len * 64, amp), rng.vec(len * 64, 1.0));
        cache.write_tokens(0, &table, 0, &keys, &values).unwrap();
        let kv = stored_dense(&cache, keys, values);
        let q = rng.vec(4 * 64, amp);
        let want = dense_attention(g.dims(), &q, &kv, len - 1, 0.125);
        for attention in backends() {
            let mut out = vec![0.0; q.len()];
            attention
                .decode(&cache, 0, &[(&table, len)], &q, &mut out, 0.125)
                .unwrap();
            assert!(out.iter().all(|x| x.is_finite()));
            let err = rel_error(&out, &want, 64);
            assert!(
                err <= TOLERANCE,
                "amp={amp} {dtype} {}: {err:e}",
                attention.backend()
            );
        }
    }
}

#[test]
fn smollm2_shapes_decode_long_context() {
    // 9 query heads over 3 KV heads, head dim 64, blocks of 16, 1,000 tokens.
    for dtype in DTYPES {
        let mut rng = Rng(135);
        let g = geometry(1, (9, 3), 64, 16, dtype);
        let len = 1000;
        let table = shuffled_ids(63, &mut rng);
        let mut cache = KvCache::new(g, 63).unwrap();
        let kv = fill(&mut cache, &table, len, 0, &mut rng);
        let q = rng.vec(9 * 64, 1.0);
        let want = dense_attention(g.dims(), &q, &kv, len - 1, 0.125);
        for attention in backends() {
            let mut out = vec![0.0; q.len()];
            attention
                .decode(&cache, 0, &[(&table, len)], &q, &mut out, 0.125)
                .unwrap();
            let err = rel_error(&out, &want, 64);
            assert!(err <= TOLERANCE, "{dtype} {}: {err:e}", attention.backend());
        }
    }
}

/// An f16 cache stores each value within half an f16 ulp (relative 2^-11 for normal values),
/// saturates beyond +-65,504 instead of overflowing to infinity, and keeps NaN a NaN.
#[test]
fn f16_rounding_is_bounded_and_saturates() {
    let mut rng = Rng(16);
    let g = geometry(1, (2, 1), 8, 1, KvDtype::F16);
    let table = shuffled_ids(4, &mut rng);
    let mut cache = KvCache::new(g, 4).unwrap();
    let mut keys = rng.vec(4 * 8, 1000.0);
    keys[..8].copy_from_slice(&[1e6, -1e6, 65_504.0, 65_520.0, 1e-3, -0.0, f32::NAN, 3.0e-5]);
    cache.write_tokens(0, &table, 0, &keys, &keys).unwrap();
    for (pos, block) in table.iter().enumerate() {
        let mut bytes = vec![0u8; cache.block_bytes()];
        cache.read_block(*block, &mut bytes).unwrap();
        for c in 0..8 {
            let at = g.element_offset(0, KvPart::Key, 0, 0) + c;
            let got = f16_to_f32(u16::from_le_bytes([bytes[2 * at], bytes[2 * at + 1]]));
            let x = keys[pos * 8 + c];
            if x.is_nan() {
                assert!(got.is_nan());
            } else if x.abs() >= 65_504.0 {
                assert_eq!(got, 65_504f32.copysign(x), "{x} saturates");
            } else if x.abs() >= 6.1e-5 {
                assert!((got - x).abs() <= x.abs() * 2f32.powi(-11), "{x} -> {got}");
            } else {
                // Subnormal halves: absolute error within half of their spacing 2^-24.
                assert!((got - x).abs() <= 2f32.powi(-25), "{x} -> {got}");
            }
        }
    }
}

/// An int8 cache stores every finite element of a head vector within half a quantisation
/// step (`scale / 2`, scale = the vector's largest finite magnitude / 127) of its value, for
/// keys (stored dim-major) and values alike; the block bytes carry the data, then the scales.
#[test]
fn int8_error_is_within_half_a_step() {
    let mut rng = Rng(8);
    let (bs, d) = (4usize, 16usize);
    let g = geometry(2, (4, 2), d as u32, bs as u32, KvDtype::Int8);
    let table = shuffled_ids(3, &mut rng);
    let mut cache = KvCache::new(g, 3).unwrap();
    let row = 2 * d;
    let len = 3 * bs;
    let mut keys = rng.vec(len * row, 5.0);
    let values = rng.vec(len * row, 0.01);
    keys[..d].fill(0.0); // an all-zero vector: scale 0, stored exactly
    keys[d] = f32::NAN; // non-finite elements do not set the scale
    keys[d + 1] = f32::INFINITY;
    cache.write_tokens(1, &table, 0, &keys, &values).unwrap();
    let data_bytes = g.elements_per_block();
    for pos in 0..len {
        let mut bytes = vec![0u8; cache.block_bytes()];
        cache.read_block(table[pos / bs], &mut bytes).unwrap();
        let slot = pos % bs;
        for (part, x) in [(KvPart::Key, &keys), (KvPart::Value, &values)] {
            for h in 0..2u32 {
                let run = g.element_offset(1, part, h, 0);
                let at_scale = data_bytes + 4 * (run / d + slot);
                let scale = f32::from_le_bytes(bytes[at_scale..at_scale + 4].try_into().unwrap());
                let vector = &x[(pos * 2 + h as usize) * d..][..d];
                let max = vector
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    (scale - max / 127.0).abs() <= f32::EPSILON * scale,
                    "scale {scale} vs {max}"
                );
                for (c, &want) in vector.iter().enumerate() {
                    let at = match part {
                        KvPart::Key => run + c * bs + slot,
                        KvPart::Value => run + slot * d + c,
                    };
                    let got = f32::from(bytes[at] as i8) * scale;
                    if want.is_finite() {
                        assert!((got - want).abs() <= scale * 0.500_01, "{want} -> {got}");
                    }
                }
            }
        }
    }
}

#[test]
fn cache_refuses_other_dtypes_and_reports_size() {
    let g = geometry(2, (4, 2), 8, 4, KvDtype::F32);
    for dtype in KvDtype::ALL {
        let result = KvCache::new(g.with_dtype(dtype), 3);
        if DTYPES.contains(&dtype) {
            let cache = result.unwrap();
            let block = g.with_dtype(dtype).bytes_per_block() as usize;
            assert_eq!(cache.bytes(), 3 * block);
            assert_eq!(cache.block_bytes(), block);
            assert_eq!(cache.num_blocks(), 3);
        } else {
            assert_eq!(
                result.unwrap_err(),
                KvCacheError::UnsupportedDtype { dtype }
            );
        }
    }
    assert!(matches!(
        KvCache::new(g, usize::MAX / 2),
        Err(KvCacheError::TooLarge { .. })
    ));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut rng = Rng(1);
    let g = geometry(2, (4, 2), 8, 4, KvDtype::F16);
    // 6 ids from the pool but a 4-block cache: ids[4], ids[5] may be out of range.
    let ids = {
        let mut pool = BlockPool::builder()
            .num_blocks(6)
            .block_size(1)
            .build()
            .unwrap();
        let seq = pool.match_prefix(&[], 0).sequence;
        pool.append_slots(seq, 6).unwrap();
        pool.block_table(seq).unwrap().to_vec()
    };
    let (good, bad): (Vec<BlockId>, Vec<BlockId>) = ids.iter().partition(|b| b.index() < 4);
    let mut cache = KvCache::new(g, 4).unwrap();
    let row = vec![1.0; 2 * 8];
    let table = &good[..2]; // 8 slots

    // Writes.
    assert!(cache.write_token(0, table, 7, &row, &row).is_ok());
    assert_eq!(
        cache.write_token(0, table, 8, &row, &row),
        Err(KvCacheError::PositionBeyondTable {
            position: 8,
            capacity: 8
        })
    );
    assert!(matches!(
        cache.write_tokens(
            0,
            table,
            6,
            &[row.clone(), row.clone(), row.clone()].concat(),
            &[row.clone(), row.clone(), row.clone()].concat()
        ),
        Err(KvCacheError::PositionBeyondTable { .. })
    ));
    assert!(matches!(
        cache.write_token(2, table, 0, &row, &row),
        Err(KvCacheError::LayerOutOfRange {
            layer: 2,
            num_layers: 2
        })
    ));
    assert!(matches!(
        cache.write_token(0, table, 0, &row[..15], &row[..15]),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        cache.write_token(0, table, 0, &row, &row[..8]),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        cache.write_token(0, &[bad[0]], 0, &row, &row),
        Err(KvCacheError::BlockOutOfRange { num_blocks: 4, .. })
    ));
    let mut bytes = vec![0u8; cache.block_bytes()];
    assert!(matches!(
        cache.read_block(bad[1], &mut bytes),
        Err(KvCacheError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        cache.write_block(bad[1], &bytes),
        Err(KvCacheError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        cache.read_block(good[0], &mut bytes[1..]),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        cache.write_block(good[0], &bytes[1..]),
        Err(KvCacheError::ShapeMismatch { .. })
    ));

    // copy_prefix.
    assert!(matches!(
        cache.copy_prefix(BlockCopy {
            src: bad[0],
            dst: good[0],
            slots: 1
        }),
        Err(KvCacheError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        cache.copy_prefix(BlockCopy {
            src: good[0],
            dst: bad[0],
            slots: 1
        }),
        Err(KvCacheError::BlockOutOfRange { .. })
    ));
    assert_eq!(
        cache.copy_prefix(BlockCopy {
            src: good[0],
            dst: good[1],
            slots: 5
        }),
        Err(KvCacheError::CopyTooLong {
            slots: 5,
            block_size: 4
        })
    );
    assert!(cache
        .copy_prefix(BlockCopy {
            src: good[0],
            dst: good[0],
            slots: 4
        })
        .is_ok());

    // Attention.
    let attention = PagedAttention::new();
    let q = rng.vec(4 * 8, 1.0);
    let mut out = vec![0.0; q.len()];
    assert!(attention
        .prefill(&cache, 0, table, 7, &q, &mut out, 0.3)
        .is_ok());
    assert!(matches!(
        attention.prefill(&cache, 0, table, 8, &q, &mut out, 0.3),
        Err(KvCacheError::PositionBeyondTable { .. })
    ));
    assert!(matches!(
        attention.prefill(&cache, 0, &[good[0], bad[0]], 4, &q, &mut out, 0.3),
        Err(KvCacheError::BlockOutOfRange { .. })
    ));
    assert!(matches!(
        attention.prefill(&cache, 5, table, 0, &q, &mut out, 0.3),
        Err(KvCacheError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        attention.prefill(&cache, 0, table, 0, &q[..31], &mut out[..31], 0.3),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        attention.prefill(&cache, 0, table, 0, &q, &mut out[..8], 0.3),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        attention.attend(&cache, 0, table, 0, 1..3, &q, &mut out, 0.3),
        Err(KvCacheError::KvHeadRange {
            start: 1,
            end: 3,
            num_kv_heads: 2
        })
    ));
    assert!(matches!(
        attention.decode(
            &cache,
            0,
            &[(table, 8), (table, 0)],
            &[q.clone(), q.clone()].concat(),
            &mut [out.clone(), out.clone()].concat(),
            0.3
        ),
        Err(KvCacheError::EmptyContext { index: 1 })
    ));
    assert!(matches!(
        attention.decode(&cache, 0, &[(table, 9)], &q, &mut out, 0.3),
        Err(KvCacheError::PositionBeyondTable { .. })
    ));
    assert!(matches!(
        attention.decode(&cache, 0, &[(table, 8)], &q[..8], &mut out[..8], 0.3),
        Err(KvCacheError::ShapeMismatch { .. })
    ));
    // A failed decode leaves `out` untouched.
    let mut sentinel = vec![7.0; q.len()];
    assert!(attention
        .decode(&cache, 0, &[(&[bad[0]], 1)], &q, &mut sentinel, 0.3)
        .is_err());
    assert!(sentinel.iter().all(|&x| x == 7.0));
    // Empty inputs are no-ops.
    assert!(attention
        .prefill(&cache, 0, &[], 0, &[], &mut [], 0.3)
        .is_ok());
    assert!(attention.decode(&cache, 0, &[], &[], &mut [], 0.3).is_ok());
}

#[test]
fn backend_selection() {
    assert_eq!(PagedAttention::scalar().backend(), AttentionBackend::Scalar);
    assert!(AttentionBackend::Scalar.is_available());
    let best = PagedAttention::new().backend();
    assert!(best.is_available());
    for backend in [AttentionBackend::Avx2Fma, AttentionBackend::Avx512] {
        match PagedAttention::with_backend(backend) {
            Ok(a) => assert_eq!(a.backend(), backend),
            Err(e) => assert_eq!(
                e,
                KvCacheError::BackendUnavailable {
                    name: backend.name()
                }
            ),
        }
    }
    // The best backend is the last one available.
    let last = AttentionBackend::ALL
        .into_iter()
        .rfind(|b| b.is_available());
    assert_eq!(Some(best), last);
}
