//! The paged, causal, GQA-grouped online-softmax driver, written once over [`VecOps`].
//!
//! `scalar.rs` and `x86.rs` supply the four inner loops (`qk`, `exp_sum`, `scale`, `pv`);
//! everything about blocks, masks and the running softmax lives here, so both backends walk
//! the cache in the same order and differ only in arithmetic rounding. The driver is generic
//! over the stored element `E` (f32, f16 or int8): only `qk` and `pv` read keys and values, and they
//! widen each element to f32 as they load it.

use std::ops::Range;

use kvmesh_core::{BlockId, KvGeometry, KvPart};

use crate::kv_cache::KvElement;

/// Keys per tile at most (a block larger than this is walked in several tiles). Bounds the
/// score scratch to `QUERY_TILE x KEY_TILE` floats.
pub(super) const KEY_TILE: usize = 32;

/// Query vectors per tile, aimed at (rounded down to whole rows of one KV head's group, at
/// least one row). Each key/value row loaded is used by this many queries.
pub(super) const QUERY_TILE: usize = 32;

/// The keys of one tile: slots `first..first + n` of one block's key run for one
/// `(layer, kv_head)`. Key runs are stored dim-major (`KvCache`'s layout): element `c` of key
/// `j` is `run[c * stride + first + j]`, `stride` being the block size. So eight consecutive
/// keys' element `c` is one vector load, and a dot product of one query with eight keys is
/// eight lanes of FMAs with no horizontal sum.
#[derive(Clone, Copy)]
pub(super) struct Keys<'a, E> {
    pub run: &'a [E],
    pub stride: usize,
    pub first: usize,
    pub n: usize,
}

/// The vector operations a backend provides for keys and values stored as `E`. Slices are
/// row-major; `d` is the head dim.
pub(super) trait VecOps<E: KvElement>: Copy {
    /// `s[i * n + j] = dot(q_i, key_j)` for the `r = q.len() / d` queries and the
    /// `n = keys.n` keys.
    fn qk(self, q: &[f32], keys: Keys<'_, E>, d: usize, s: &mut [f32]);
    /// `s[j] = exp(s[j] - max)`, returning the sum of the new values.
    fn exp_sum(self, s: &mut [f32], max: f32) -> f32;
    /// `x *= c`.
    fn scale(self, x: &mut [f32], c: f32);
    /// `acc_i += sum_j p[i * n + j] * v_j` for the `r = acc.len() / d` accumulators and
    /// `n = v.len() / d` values.
    fn pv(self, p: &[f32], v: &[E], d: usize, acc: &mut [f32]);
    /// Hints that `x` will be read soon (a no-op where there is no such hint).
    fn prefetch(self, x: &[E]) {
        let _ = x;
    }
}

/// One call's fixed inputs: the cache's elements, which sequence, which layer, which KV heads,
/// from which position.
pub(super) struct Job<'a, E> {
    /// Every block's elements back to back (`KvCache::data`).
    pub data: &'a [E],
    pub geometry: &'a KvGeometry,
    /// `geometry.elements_per_block()`.
    pub block_elems: usize,
    /// Every block's head-vector scales (`KvCache::scales`): empty unless `E::SCALED`.
    pub scales: &'a [f32],
    pub layer: u32,
    pub table: &'a [BlockId],
    /// Position of the first query row; row `i` attends to positions `0..=start + i`.
    pub start: usize,
    pub kv_heads: Range<u32>,
    pub scale: f32,
}

/// Where one KV head's key run and value run (each `block_size x head_dim` elements) of a
/// job's layer start in a block, as element indexes into `Job::data`.
#[derive(Clone, Copy)]
struct HeadRuns {
    key: usize,
    value: usize,
}

impl<E> Job<'_, E> {
    /// The runs of `kv_head` in `block`. The caller validated the block, layer and head.
    #[inline(always)]
    fn head_runs(&self, block: BlockId, kv_head: u32) -> HeadRuns {
        let g = self.geometry;
        let base = block.index() * self.block_elems;
        HeadRuns {
            key: base + g.element_offset(self.layer, KvPart::Key, kv_head, 0),
            value: base + g.element_offset(self.layer, KvPart::Value, kv_head, 0),
        }
    }

    /// The keys and the values of `runs`.
    #[inline(always)]
    fn rows(&self, runs: HeadRuns) -> (&[E], &[E]) {
        let g = self.geometry;
        let len = g.block_size() as usize * g.dims().head_dim as usize;
        (
            &self.data[runs.key..runs.key + len],
            &self.data[runs.value..runs.value + len],
        )
    }

    /// The scales (`block_size` each) of the keys and the values of `runs`, for a scaled
    /// element type: a head vector's scale index is its element index over `head_dim`.
    #[inline(always)]
    fn scales(&self, runs: HeadRuns) -> (&[f32], &[f32]) {
        let g = self.geometry;
        let (d, bs) = (g.dims().head_dim as usize, g.block_size() as usize);
        let (k, v) = (runs.key / d, runs.value / d);
        (&self.scales[k..k + bs], &self.scales[v..v + bs])
    }
}

/// `s[i][j] *= scales[j]` for every row `i` of `s` (rows of `scales.len()`).
#[inline(always)]
fn scale_columns(s: &mut [f32], scales: &[f32]) {
    for row in s.chunks_exact_mut(scales.len()) {
        for (x, &c) in row.iter_mut().zip(scales) {
            *x *= c;
        }
    }
}

/// Working memory of one call: `O(QUERY_TILE x (head_dim + KEY_TILE))` floats, independent
/// of the context length.
pub(super) struct Scratch {
    /// The GQA group and head dim it was sized for.
    group: usize,
    head_dim: usize,
    /// Query vectors a tile holds: `QUERY_TILE`, or one GQA group when a group is larger.
    capacity: usize,
    q: Vec<f32>,
    acc: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

thread_local! {
    /// Each thread's scratch, kept between calls: a batch-16 decode step makes ~500 calls,
    /// each of which used to allocate and zero its own 20 KiB.
    static SCRATCH: std::cell::RefCell<Option<Scratch>> = const { std::cell::RefCell::new(None) };
}

impl Scratch {
    /// Runs `f` with this thread's scratch for `group` and `head_dim` (made on first use,
    /// and again when the shape changes). The kernels initialise what they read, so nothing
    /// is cleared between calls.
    pub(super) fn with<R>(group: usize, head_dim: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
        SCRATCH.with_borrow_mut(|slot| {
            let scratch = match slot {
                Some(s) if s.group == group && s.head_dim == head_dim => s,
                _ => slot.insert(Scratch::new(group, head_dim)),
            };
            f(scratch)
        })
    }

    fn new(group: usize, head_dim: usize) -> Self {
        let capacity = QUERY_TILE.max(group);
        Scratch {
            group,
            head_dim,
            capacity,
            q: vec![0.0; capacity * head_dim],
            acc: vec![0.0; capacity * head_dim],
            s: vec![0.0; capacity * KEY_TILE],
            m: vec![0.0; capacity],
            l: vec![0.0; capacity],
        }
    }
}

/// Attention of `job`'s query rows. `q` and `out` are `[rows][heads][d]` with `heads` the
/// query heads of `job.kv_heads`; the caller has validated shapes, layer, heads and table.
///
/// Two walk orders, bitwise the same per output (each query sees the same key tiles in the
/// same order either way):
/// - **few rows** (decode): when every head's queries fit one tile, each block is visited
///   once for all KV heads. A block's keys and values of one layer are one contiguous region
///   (`[K|V][kv_head]` runs: 12 KiB for SmolLM2 in f16), so memory sees one stream per block
///   instead of one 2 KiB run per head; on the project's VM, random 2 KiB reads stream at
///   ~4 GB/s and 12 KiB ones at ~6.5;
/// - **many rows** (prefill): one KV head at a time, with as many rows per tile as fit, so
///   each key and value row loaded serves up to `QUERY_TILE` queries.
#[inline(always)]
pub(super) fn attend<E: KvElement, O: VecOps<E>>(
    ops: O,
    job: &Job<'_, E>,
    q: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let geometry = job.geometry;
    let dims = geometry.dims();
    let d = dims.head_dim as usize;
    let bs = geometry.block_size() as usize;
    let group = (dims.num_query_heads / dims.num_kv_heads) as usize;
    let heads = job.kv_heads.len();
    let row_len = heads * group * d;
    if row_len == 0 {
        return;
    }
    let rows = q.len() / row_len;
    debug_assert_eq!(q.len(), rows * row_len);
    debug_assert_eq!(out.len(), q.len());
    debug_assert!(job.start + rows <= job.table.len() * bs);

    let cap = scratch.capacity;
    let (heads_per_pass, rows_per_tile) = if rows * group * heads <= cap {
        (heads, rows.max(1))
    } else {
        (1, (cap / group).max(1))
    };
    for pass in (0..heads).step_by(heads_per_pass) {
        let pass_heads = pass..pass + heads_per_pass;
        for r0 in (0..rows).step_by(rows_per_tile) {
            let r1 = rows.min(r0 + rows_per_tile);
            // Queries per head in this tile; head `hh` of the pass owns queries
            // `hh * nr..(hh + 1) * nr` of every scratch array.
            let nr = (r1 - r0) * group;
            let total = nr * heads_per_pass;
            let Scratch {
                q: qbuf,
                acc,
                s,
                m,
                l,
                ..
            } = scratch;
            let (qbuf, acc) = (&mut qbuf[..total * d], &mut acc[..total * d]);
            let (m, l) = (&mut m[..total], &mut l[..total]);

            // Gather the tile's queries (heads x rows x group), pre-scaled.
            for (hh, h) in pass_heads.clone().enumerate() {
                for row in r0..r1 {
                    let src = &q[row * row_len + h * group * d..][..group * d];
                    let dst = &mut qbuf[(hh * nr + (row - r0) * group) * d..][..group * d];
                    for (o, &x) in dst.iter_mut().zip(src) {
                        *o = x * job.scale;
                    }
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
                let block = job.table[pos / bs];
                // Blocks sit anywhere in the cache, so the hardware prefetcher cannot guess the
                // next one; batched decode reads far more KV than fits in cache.
                let next = (slot == 0 && pos + bs < end).then(|| job.table[pos / bs + 1]);
                for (hh, h) in pass_heads.clone().enumerate() {
                    // This head's runs in the next block, one head at a time: spread over the
                    // block's work, the requests reach memory while it computes. One burst of
                    // every head's lines at the block's start left many waiting: 30-layer
                    // batch-16 decode attention read ~18-19 GB/s that way, ~24-26 this way
                    // (`docs/bench/engine.md`).
                    if let Some(next) = next {
                        let (k, v) = job.rows(job.head_runs(next, job.kv_heads.start + h as u32));
                        ops.prefetch(k);
                        ops.prefetch(v);
                    }
                    let runs = job.head_runs(block, job.kv_heads.start + h as u32);
                    let (keys, values) = job.rows(runs);
                    let k = Keys {
                        run: keys,
                        stride: bs,
                        first: slot,
                        n,
                    };
                    let v = &values[slot * d..(slot + n) * d];
                    let own = hh * nr..(hh + 1) * nr;
                    let s = &mut s[..nr * n];
                    let acc = &mut acc[own.start * d..own.end * d];
                    let (m, l) = (&mut m[own.clone()], &mut l[own]);
                    ops.qk(&qbuf[hh * nr * d..(hh + 1) * nr * d], k, d, s);
                    // int8: a key's dot products times its scale; a value's weights times its
                    // scale after the softmax has used them (the scales of masked keys meet
                    // exact zeros).
                    let scales = E::SCALED.then(|| job.scales(runs));
                    if let Some((key_scales, _)) = scales {
                        scale_columns(s, &key_scales[slot..slot + n]);
                    }
                    for (i, si) in s.chunks_exact_mut(n).enumerate() {
                        let qpos = job.start + r0 + i / group;
                        // Keys pos..pos + valid are at or before the query: a prefix of the
                        // tile.
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
                    if let Some((_, value_scales)) = scales {
                        scale_columns(s, &value_scales[slot..slot + n]);
                    }
                    ops.pv(s, v, d, acc);
                }
                pos += n;
            }

            for (hh, h) in pass_heads.clone().enumerate() {
                for i in 0..nr {
                    let row = r0 + i / group;
                    let at = row * row_len + (h * group + i % group) * d;
                    let q_at = hh * nr + i;
                    let inv = 1.0 / l[q_at];
                    let acc = &acc[q_at * d..(q_at + 1) * d];
                    for (o, &a) in out[at..at + d].iter_mut().zip(acc) {
                        *o = a * inv;
                    }
                }
            }
        }
    }
}
