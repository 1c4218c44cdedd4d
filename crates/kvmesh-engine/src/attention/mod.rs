//! Paged attention on the CPU: causal GQA/MQA/MHA attention that reads keys and values
//! straight out of [`KvCache`] blocks through a sequence's block table.
//!
//! # The API
//!
//! - [`PagedAttention::prefill`] (or [`paged_attention_prefill`]): a chunk of `q_len` new
//!   tokens of one sequence at positions `start..start + q_len`, each attending causally to
//!   positions `0..=` its own. The chunk's own K/V must already be in the cache
//!   ([`KvCache::write_tokens`]), so chunked prefill over a cached prefix is just a call with
//!   `start > 0`.
//! - [`PagedAttention::decode`] (or [`paged_attention_decode`]): one query token for each
//!   sequence of a batch, at position `context_len - 1`, attending to `0..context_len`.
//! - [`PagedAttention::attend`]: the primitive both are made of: query rows of one sequence
//!   for a range of KV heads.
//!
//! Queries and outputs are `[tokens][num_query_heads][head_dim]` (the layout of a Q
//! projection's output and of the O projection's input). The softmax scale is the caller's
//! (usually `1 / sqrt(head_dim)`). Every call validates the layer, the shapes and the block
//! ids it will read, and returns a [`KvCacheError`] before computing anything; it cannot
//! check that the positions it reads were written.
//!
//! # Splitting work across threads
//!
//! The kernels spawn no threads; they take `&KvCache` (shared) and write only `out`, so a
//! caller splits one call into independent calls over disjoint `out` slices
//! (`split_at_mut` / `chunks_mut` with scoped threads):
//!
//! - **by sequence** (decode): a sub-slice of `seqs` with the matching rows of `q` and `out`;
//! - **by KV head**: [`attend`](PagedAttention::attend) with `kv_heads = a..b`, `q` and `out`
//!   holding only the query heads `a * group..b * group`. For one token (decode, batch 1)
//!   those are contiguous slices of the full rows, so `(sequence, KV head range)` tasks need
//!   no copies;
//! - **by query rows** (prefill): rows `i..j` of a chunk are the call with `start + i`.
//!
//! Every split computes each output element with the same operations in the same order, so
//! results are bitwise identical however the work is cut.
//!
//! # Design
//!
//! **Layout.** The cache layout is the core geometry's `[layer][K|V][kv_head]` runs of
//! `block_size x head_dim` elements (one contiguous region per block, see
//! `kvmesh_core::KvGeometry`), in f16 by default, int8 or f32 (`KvCache`). Inside a run, values
//! are slot-major (`[slot][head_dim]`: one value row per token, which `p.V` accumulates
//! row by row) and keys are **dim-major** (`[head_dim][slot]`): element `c` of eight
//! consecutive keys is one vector load, so `q.k` for a query and eight keys is eight lanes of
//! FMAs with no horizontal sum (the slot-major key layout cost a 7-instruction horizontal sum
//! per query and key; in-cache decode attention got ~1.6x faster without it). Token writes
//! scatter `head_dim` key elements `block_size` apart; they happen once per token and layer,
//! reads once per token, layer *and later step*.
//!
//! **Walk order.** A decode call (every head's queries fit one tile) visits each block once
//! for all its KV heads, so the block's `[K|V][kv_head]` region for the layer (12 KiB for
//! SmolLM2 in f16) is read as one stream; prefill tiles take one KV head at a time with as
//! many query rows as fit. The next block of the sequence is prefetched: blocks sit anywhere
//! in the cache, so the hardware cannot guess it.
//!
//! **Online softmax.** Keys are visited in tiles of at most `KEY_TILE` keys that never
//! cross a block (32 keys; a block of 16 is one tile). Per query the kernel keeps the running
//! maximum `m`, the running sum `l` of `exp(s - m)` and the unnormalised output `acc`; a tile
//! with a larger maximum rescales `l` and `acc` by `exp(m_old - m_new)` once (flash-attention
//! style), and the output is `acc / l` at the end. So no score row of context length is ever
//! materialised: scratch is `T x (2 x head_dim + KEY_TILE + 2)` floats per call, with
//! `T = QUERY_TILE` (32) query vectors rounded down to whole GQA groups, or one group when
//! a group is larger (MQA with many heads): 20 KiB for SmolLM2, whatever the context. Causality is a per-query count
//! of visible keys in the tile (they are always a prefix of it); masked weights are exact
//! zeros.
//!
//! **GQA grouping.** Query head `h` reads KV head `h / group`, `group = query heads / KV
//! heads`, by index: K/V are never repeated (no `repeat_kv`). For each KV head the kernel
//! takes a tile of query vectors, `rows x group` (up to 32: one decode token's group, or ~10
//! prefill tokens of SmolLM2's group of 3), and computes all their dot products against each
//! key row while it is in registers/L1, then all their weighted sums over each value row. So
//! K and V are read once per group (per tile in prefill), not once per query head: MQA reads
//! them once for all heads, MHA is the `group = 1` case.
//!
//! **SIMD where.** The four inner loops (`q.k` dot products, `exp`, rescale, `p.V`
//! accumulation) sit behind a small vector trait, generic over the stored element (f32, f16
//! or int8, widened on load; int8 scales multiply the scores after `q.k` and the softmax
//! weights before `p.V`); the driver (blocks, masks, softmax state) is written once over
//! it. The portable backend (`scalar.rs`) is the reference and the fallback; an
//! AVX2+FMA+F16C backend (`x86.rs`) and an AVX-512 one (`avx512.rs`; these two files hold the
//! `unsafe`) are chosen at run time with `is_x86_feature_detected!` (capped by
//! `KVMESH_MAX_SIMD`, see `crate::simd`), so one binary runs everywhere. The AVX-512 backend
//! puts 16 keys (or 16 value dims) in one vector and gives the AVX2 one's bits; on the
//! project's Zen 5 VM it is 1.1-1.2x faster per call with the KV in cache (the softmax
//! bookkeeping, not the FMAs, is most of what is left), and batch decode past the cache is
//! bound by memory either way. The SIMD backends block three
//! query vectors (a SmolLM2 GQA group) against 16 keys per dim in `q.k`, and three
//! accumulator rows against each value row in `p.V`, each with two interleaved FMA chains
//! (even/odd dims, even/odd keys) to hide the FMA latency; it uses a polynomial `exp`
//! (relative error ~2e-7): with libm `expf` per score the whole kernel measured 1.3-1.8x
//! slower (2026-11-27, noisy shared host). Other architectures use the portable backend,
//! which the compiler vectorises with the baseline ISA.
//!
//! **Numbers.** Paged results match a dense `softmax(QK^T * scale) V` over the stored
//! (f16-rounded, int8-quantised or f32) keys and values to 1e-4 relative
//! (`tests/paged_attention.rs`, every backend, every dtype, GQA/MQA/MHA, head dims 32/64/128 and odd ones, block sizes 1/4/16).
//! Speed: `cargo bench -p kvmesh-engine --bench attention` (one layer, so the KV stays in the
//! last-level cache: it measures the arithmetic); numbers and the 30-layer (DRAM) picture in
//! `docs/bench/engine.md`. In short, on the project's 2-core VM: batch-16 decode at context
//! 512 over 30 layers reads 188 MB of f16 KV per step, as 12 KiB pieces scattered over the
//! cache; random 12 KiB reads stream at only ~6.5 GB/s per core there (11 GB/s sequential),
//! so decode attention past the cache is bound by memory, and the levers are fewer bytes (f16
//! instead of f32: 1.2-1.35x on batch-16 decode), huge pages (`crate::huge_pages`) and
//! contiguous reads. Int8 halves the bytes again, but widening int8 takes three instructions
//! per eight elements against f16's one, and the engine's batch-16 decode measured about the
//! same as with f16. Prefill is compute-bound.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod kernel;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::ops::Range;

use kvmesh_core::BlockId;

#[cfg(not(target_arch = "x86_64"))]
use crate::kv_cache::KvElement;
use crate::kv_cache::{KvCache, KvCacheError, KvData, F16};
use crate::simd::SimdLevel;
use kernel::{Job, Scratch};

/// Which implementation of the attention inner loops runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttentionBackend {
    /// Portable Rust: the reference and the fallback.
    Scalar,
    /// x86_64 AVX2 and FMA, detected at run time.
    Avx2Fma,
    /// x86_64 AVX-512F (with AVX2 and FMA), detected at run time; the same bits as
    /// `Avx2Fma`, faster.
    Avx512,
}

impl AttentionBackend {
    /// Every backend, portable first.
    pub const ALL: [AttentionBackend; 3] = [
        AttentionBackend::Scalar,
        AttentionBackend::Avx2Fma,
        AttentionBackend::Avx512,
    ];

    /// A short name: `scalar`, `avx2-fma`, `avx512`.
    pub const fn name(self) -> &'static str {
        match self {
            AttentionBackend::Scalar => "scalar",
            AttentionBackend::Avx2Fma => "avx2-fma",
            AttentionBackend::Avx512 => "avx512",
        }
    }

    /// Whether this CPU (and build target) can run the backend.
    pub fn is_available(self) -> bool {
        PagedAttention::with_backend(self).is_ok()
    }
}

impl std::fmt::Display for AttentionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy)]
enum Imp {
    Scalar(scalar::Scalar),
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(x86::Avx2Fma),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Avx512),
}

/// The paged attention kernels with a chosen backend. Cheap to copy; holds no memory.
///
/// ```
/// use kvmesh_core::{BlockPool, KvDtype, KvGeometry, ModelDims};
/// use kvmesh_engine::{KvCache, PagedAttention};
///
/// // 4 query heads sharing 2 KV heads (GQA), head dim 8, blocks of 4 tokens.
/// let dims = ModelDims { num_layers: 1, num_query_heads: 4, num_kv_heads: 2, head_dim: 8, max_context: None };
/// let geometry = KvGeometry::new(dims, KvDtype::F32, 4).unwrap();
/// let mut pool = BlockPool::builder().num_blocks(8).block_size(4).build().unwrap();
/// let mut cache = KvCache::new(geometry, 8).unwrap();
///
/// // A 6-token prompt: allocate, write K/V, prefill.
/// let seq = pool.match_prefix(&[], 6).sequence;
/// pool.append_slots(seq, 6).unwrap();
/// let table = pool.block_table(seq).unwrap();
/// let kv = vec![0.1; 6 * 2 * 8];
/// cache.write_tokens(0, table, 0, &kv, &kv).unwrap();
/// let q = vec![0.2; 6 * 4 * 8];
/// let mut out = vec![0.0; q.len()];
/// let attention = PagedAttention::new();
/// attention.prefill(&cache, 0, table, 0, &q, &mut out, 1.0 / 8f32.sqrt()).unwrap();
/// assert!((out[0] - 0.1).abs() < 1e-6); // every value row is 0.1
///
/// // One decode step for the same sequence (its 7th token, already written).
/// pool.append_slots(seq, 1).unwrap();
/// let table = pool.block_table(seq).unwrap();
/// cache.write_token(0, table, 6, &kv[..16], &kv[..16]).unwrap();
/// let mut out = vec![0.0; 4 * 8];
/// attention.decode(&cache, 0, &[(table, 7)], &q[..32], &mut out, 0.35).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PagedAttention {
    imp: Imp,
}

impl Default for PagedAttention {
    fn default() -> Self {
        Self::new()
    }
}

impl PagedAttention {
    /// The fastest backend this CPU supports (within `KVMESH_MAX_SIMD`, if set: `scalar`,
    /// `avx2` or `avx512`).
    pub fn new() -> Self {
        let best = match crate::simd::max_level() {
            SimdLevel::Avx512 => AttentionBackend::Avx512,
            SimdLevel::Avx2 => AttentionBackend::Avx2Fma,
            SimdLevel::Scalar => AttentionBackend::Scalar,
        };
        Self::with_backend(best).unwrap_or_else(|_| Self::scalar())
    }

    /// The portable backend.
    pub fn scalar() -> Self {
        PagedAttention {
            imp: Imp::Scalar(scalar::Scalar),
        }
    }

    /// A given backend, or [`KvCacheError::BackendUnavailable`] when this CPU or target
    /// lacks it.
    pub fn with_backend(backend: AttentionBackend) -> Result<Self, KvCacheError> {
        let unavailable = KvCacheError::BackendUnavailable {
            name: backend.name(),
        };
        match backend {
            AttentionBackend::Scalar => Ok(Self::scalar()),
            #[cfg(target_arch = "x86_64")]
            AttentionBackend::Avx2Fma => x86::Avx2Fma::detect()
                .map(|ops| PagedAttention {
                    imp: Imp::Avx2Fma(ops),
                })
                .ok_or(unavailable),
            #[cfg(target_arch = "x86_64")]
            AttentionBackend::Avx512 => avx512::Avx512::detect()
                .map(|ops| PagedAttention {
                    imp: Imp::Avx512(ops),
                })
                .ok_or(unavailable),
            #[cfg(not(target_arch = "x86_64"))]
            AttentionBackend::Avx2Fma | AttentionBackend::Avx512 => Err(unavailable),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> AttentionBackend {
        match self.imp {
            Imp::Scalar(_) => AttentionBackend::Scalar,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Fma(_) => AttentionBackend::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(_) => AttentionBackend::Avx512,
        }
    }

    /// Causal attention of a chunk of one sequence's tokens at positions
    /// `start..start + q_len`, over the sequence's cached keys and values in `layer`.
    ///
    /// `q` and `out` are `[q_len][num_query_heads][head_dim]`; `q_len` is implied by `q`'s
    /// length. Positions `0..start + q_len` must be written in the cache and covered by
    /// `block_table`.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        &self,
        cache: &KvCache,
        layer: u32,
        block_table: &[BlockId],
        start: usize,
        q: &[f32],
        out: &mut [f32],
        scale: f32,
    ) -> Result<(), KvCacheError> {
        let kv_heads = 0..cache.geometry().dims().num_kv_heads;
        self.attend(cache, layer, block_table, start, kv_heads, q, out, scale)
    }

    /// One decode step of a batch: sequence `i` (`seqs[i] = (block_table, context_len)`)
    /// has one query token at position `context_len - 1` attending to positions
    /// `0..context_len`.
    ///
    /// `q` and `out` are `[seqs.len()][num_query_heads][head_dim]`. Every sequence is
    /// validated before any is computed.
    pub fn decode(
        &self,
        cache: &KvCache,
        layer: u32,
        seqs: &[(&[BlockId], usize)],
        q: &[f32],
        out: &mut [f32],
        scale: f32,
    ) -> Result<(), KvCacheError> {
        let dims = cache.geometry().dims();
        let row_len = dims.num_query_heads as usize * dims.head_dim as usize;
        cache.check_layer(layer)?;
        check_shape("q", seqs.len().saturating_mul(row_len), q.len())?;
        check_shape("out", q.len(), out.len())?;
        for (index, &(table, context_len)) in seqs.iter().enumerate() {
            if context_len == 0 {
                return Err(KvCacheError::EmptyContext { index });
            }
            cache.check_table(table, 0, context_len)?;
        }
        let (g, d) = (group(cache), dims.head_dim as usize);
        Scratch::with(g, d, |scratch| {
            for ((&(table, context_len), q), out) in seqs
                .iter()
                .zip(q.chunks_exact(row_len))
                .zip(out.chunks_exact_mut(row_len))
            {
                let call = Call {
                    cache,
                    layer,
                    table,
                    start: context_len - 1,
                    kv_heads: 0..dims.num_kv_heads,
                    scale,
                };
                self.run(&call, q, out, scratch);
            }
        });
        Ok(())
    }

    /// Causal attention of one sequence's query rows at positions `start..start + rows`,
    /// for the KV heads `kv_heads` only: the building block of [`prefill`](Self::prefill)
    /// and [`decode`](Self::decode), for callers that split work by KV head.
    ///
    /// `q` and `out` are `[rows][kv_heads.len() x group][head_dim]`: for each row, the query
    /// heads `kv_heads.start x group..kv_heads.end x group` (for a single row, a contiguous
    /// slice of the full `[num_query_heads][head_dim]` row).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        cache: &KvCache,
        layer: u32,
        block_table: &[BlockId],
        start: usize,
        kv_heads: Range<u32>,
        q: &[f32],
        out: &mut [f32],
        scale: f32,
    ) -> Result<(), KvCacheError> {
        let dims = cache.geometry().dims();
        cache.check_layer(layer)?;
        if kv_heads.start > kv_heads.end || kv_heads.end > dims.num_kv_heads {
            return Err(KvCacheError::KvHeadRange {
                start: kv_heads.start,
                end: kv_heads.end,
                num_kv_heads: dims.num_kv_heads,
            });
        }
        let g = group(cache);
        let row_len = kv_heads.len() * g * dims.head_dim as usize;
        check_shape("out", q.len(), out.len())?;
        if row_len == 0 {
            return check_shape("q (no heads in range)", 0, q.len());
        }
        if q.is_empty() {
            return Ok(());
        }
        check_shape("q (whole rows)", q.len() / row_len * row_len, q.len())?;
        let end =
            start
                .checked_add(q.len() / row_len)
                .ok_or(KvCacheError::PositionBeyondTable {
                    position: usize::MAX,
                    capacity: block_table.len().saturating_mul(cache.block_size()),
                })?;
        cache.check_table(block_table, 0, end)?;
        let call = Call {
            cache,
            layer,
            table: block_table,
            start,
            kv_heads,
            scale,
        };
        Scratch::with(g, dims.head_dim as usize, |scratch| {
            self.run(&call, q, out, scratch)
        });
        Ok(())
    }

    /// Runs a validated call on the cache's element type with this backend.
    fn run(&self, call: &Call<'_>, q: &[f32], out: &mut [f32], scratch: &mut Scratch) {
        match call.cache.data() {
            KvData::F32(data) => self.run_on(&call.job(data), q, out, scratch),
            KvData::F16(data) => self.run_on(&call.job(data), q, out, scratch),
            KvData::Int8(data) => self.run_on(&call.job(data), q, out, scratch),
        }
    }

    fn run_on<E: Element>(&self, job: &Job<'_, E>, q: &[f32], out: &mut [f32], s: &mut Scratch) {
        match self.imp {
            Imp::Scalar(ops) => kernel::attend(ops, job, q, out, s),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Fma(ops) => ops.attend(job, q, out, s),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(ops) => ops.attend(job, q, out, s),
        }
    }
}

/// A validated call, before the dispatch on the cache's element type.
struct Call<'a> {
    cache: &'a KvCache,
    layer: u32,
    table: &'a [BlockId],
    start: usize,
    kv_heads: Range<u32>,
    scale: f32,
}

impl<'a> Call<'a> {
    fn job<E>(&self, data: &'a [E]) -> Job<'a, E> {
        Job {
            data,
            geometry: self.cache.geometry(),
            block_elems: self.cache.geometry().elements_per_block(),
            scales: self.cache.scales(),
            layer: self.layer,
            table: self.table,
            start: self.start,
            kv_heads: self.kv_heads.clone(),
            scale: self.scale,
        }
    }
}

/// A stored element type every backend of this build can read.
#[cfg(target_arch = "x86_64")]
trait Element: avx512::Load16 {}
/// A stored element type every backend of this build can read.
#[cfg(not(target_arch = "x86_64"))]
trait Element: KvElement {}
impl Element for f32 {}
impl Element for F16 {}
impl Element for i8 {}

/// [`PagedAttention::prefill`] with the fastest backend this CPU supports.
pub fn paged_attention_prefill(
    cache: &KvCache,
    layer: u32,
    block_table: &[BlockId],
    start: usize,
    q: &[f32],
    out: &mut [f32],
    scale: f32,
) -> Result<(), KvCacheError> {
    PagedAttention::new().prefill(cache, layer, block_table, start, q, out, scale)
}

/// [`PagedAttention::decode`] with the fastest backend this CPU supports.
pub fn paged_attention_decode(
    cache: &KvCache,
    layer: u32,
    seqs: &[(&[BlockId], usize)],
    q: &[f32],
    out: &mut [f32],
    scale: f32,
) -> Result<(), KvCacheError> {
    PagedAttention::new().decode(cache, layer, seqs, q, out, scale)
}

fn group(cache: &KvCache) -> usize {
    let dims = cache.geometry().dims();
    (dims.num_query_heads / dims.num_kv_heads) as usize
}

fn check_shape(what: &'static str, expected: usize, actual: usize) -> Result<(), KvCacheError> {
    if expected != actual {
        return Err(KvCacheError::ShapeMismatch {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}
