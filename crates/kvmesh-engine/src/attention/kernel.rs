//! The paged, causal, GQA-grouped online-softmax driver, written once over [`VecOps`].
//!
//! `scalar.rs` and `x86.rs` supply the four inner loops (`qk`, `exp_sum`, `scale`, `pv`);
//! everything about blocks, masks and the running softmax lives here, so both backends walk
//! the cache in the same order and differ only in arithmetic rounding.

use std::ops::Range;

use kvmesh_core::BlockId;

use crate::kv_cache::KvCache;

/// Keys per tile at most (a block larger than this is walked in several tiles). Bounds the
/// score scratch to `QUERY_TILE x KEY_TILE` floats.
pub(super) const KEY_TILE: usize = 32;

/// Query vectors per tile, aimed at (rounded down to whole rows of one KV head's group, at
/// least one row). Each key/value row loaded is used by this many queries.
pub(super) const QUERY_TILE: usize = 32;

/// The vector operations a backend provides. Slices are row-major; `d` is the head dim.
pub(super) trait VecOps: Copy {
    /// `s[i * n + j] = dot(q_i, k_j)` for the `r = q.len() / d` queries and
    /// `n = k.len() / d` keys.
    fn qk(self, q: &[f32], k: &[f32], d: usize, s: &mut [f32]);
    /// `s[j] = exp(s[j] - max)`, returning the sum of the new values.
    fn exp_sum(self, s: &mut [f32], max: f32) -> f32;
    /// `x *= c`.
    fn scale(self, x: &mut [f32], c: f32);
    /// `acc_i += sum_j p[i * n + j] * v_j` for the `r = acc.len() / d` accumulators and
    /// `n = v.len() / d` values.
    fn pv(self, p: &[f32], v: &[f32], d: usize, acc: &mut [f32]);
    /// Hints that `x` will be read soon (a no-op where there is no such hint).
    fn prefetch(self, x: &[f32]) {
        let _ = x;
    }
}

/// One call's fixed inputs: which sequence, which layer, which KV heads, from which position.
pub(super) struct Job<'a> {
    pub cache: &'a KvCache,
    pub layer: u32,
    pub table: &'a [BlockId],
    /// Position of the first query row; row `i` attends to positions `0..=start + i`.
    pub start: usize,
    pub kv_heads: Range<u32>,
    pub scale: f32,
}

/// Working memory of one call: `O(QUERY_TILE x (head_dim + KEY_TILE))` floats, independent
/// of the context length.
pub(super) struct Scratch {
    rows_per_tile: usize,
    q: Vec<f32>,
    acc: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(group: usize, head_dim: usize) -> Self {
        let rows_per_tile = (QUERY_TILE / group).max(1);
        let r = rows_per_tile * group;
        Scratch {
            rows_per_tile,
            q: vec![0.0; r * head_dim],
            acc: vec![0.0; r * head_dim],
            s: vec![0.0; r * KEY_TILE],
            m: vec![0.0; r],
            l: vec![0.0; r],
        }
    }
}

/// Attention of `job`'s query rows. `q` and `out` are `[rows][heads][d]` with `heads` the
/// query heads of `job.kv_heads`; the caller has validated shapes, layer, heads and table.
#[inline(always)]
pub(super) fn attend<O: VecOps>(
    ops: O,
    job: &Job<'_>,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let geometry = job.cache.geometry();
    let dims = geometry.dims();
    let d = dims.head_dim as usize;
    let bs = geometry.block_size() as usize;
    let group = (dims.num_query_heads / dims.num_kv_heads) as usize;
    let row_len = job.kv_heads.len() * group * d;
    if row_len == 0 {
        return;
    }
    let rows = q.len() / row_len;
    debug_assert_eq!(q.len(), rows * row_len);
    debug_assert_eq!(out.len(), q.len());
    debug_assert!(job.start + rows <= job.table.len() * bs);

    for (h_local, kv_head) in job.kv_heads.clone().enumerate() {
        let head_off = h_local * group * d;
        for r0 in (0..rows).step_by(scratch.rows_per_tile) {
            let r1 = rows.min(r0 + scratch.rows_per_tile);
            let nr = (r1 - r0) * group;
            let Scratch {
                q: qbuf,
                acc,
                s,
                m,
                l,
                ..
            } = scratch;
            let (qbuf, acc) = (&mut qbuf[..nr * d], &mut acc[..nr * d]);
            let (m, l) = (&mut m[..nr], &mut l[..nr]);

            // Gather the tile's queries (rows x this head's group), pre-scaled.
            for row in r0..r1 {
                let src = &q[row * row_len + head_off..][..group * d];
                let dst = &mut qbuf[(row - r0) * group * d..][..group * d];
                for (o, &x) in dst.iter_mut().zip(src) {
                    *o = x * job.scale;
                }
            }
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            acc.fill(0.0);

            // Keys 0..end: the last row's causal horizon. Tiles never cross a block.
            let end = job.start + r1;
            let mut pos = 0;
            while pos < end {
                let slot = pos % bs;
                let n = KEY_TILE.min(bs - slot).min(end - pos);
                let (keys, values) = job.cache.head_rows(job.table[pos / bs], job.layer, kv_head);
                if slot == 0 && pos + bs < end {
                    // Blocks sit anywhere in the cache, so the hardware prefetcher cannot
                    // guess the next one; batched decode reads far more KV than fits in cache.
                    let next = job
                        .cache
                        .head_rows(job.table[pos / bs + 1], job.layer, kv_head);
                    ops.prefetch(next.0);
                    ops.prefetch(next.1);
                }
                let k = &keys[slot * d..(slot + n) * d];
                let v = &values[slot * d..(slot + n) * d];
                let s = &mut s[..nr * n];
                ops.qk(qbuf, k, d, s);
                for (i, si) in s.chunks_exact_mut(n).enumerate() {
                    let qpos = job.start + r0 + i / group;
                    // Keys pos..pos + valid are at or before the query: a prefix of the tile.
                    let valid = (qpos + 1).saturating_sub(pos).min(n);
                    let (live, masked) = si.split_at_mut(valid);
                    masked.fill(0.0);
                    if live.is_empty() {
                        continue;
                    }
                    let tile_max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let m_old = m[i];
                    let m_new = m_old.max(tile_max);
                    if m_new > m_old && m_old != f32::NEG_INFINITY {
                        let correction = (m_old - m_new).exp();
                        l[i] *= correction;
                        ops.scale(&mut acc[i * d..(i + 1) * d], correction);
                    }
                    l[i] += ops.exp_sum(live, m_new);
                    m[i] = m_new;
                }
                ops.pv(s, v, d, acc);
                pos += n;
            }

            for i in 0..nr {
                let row = r0 + i / group;
                let at = row * row_len + head_off + (i % group) * d;
                let inv = 1.0 / l[i];
                for (o, &a) in out[at..at + d].iter_mut().zip(&acc[i * d..(i + 1) * d]) {
                    *o = a * inv;
                }
            }
        }
    }
}
