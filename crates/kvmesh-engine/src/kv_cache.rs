//! The engine's KV memory: `num_blocks` blocks of keys and values in f16, int8 or f32,
//! addressed by the [`BlockId`]s the block pool hands out.
//!
//! The pool (`kvmesh_core::BlockPool`) decides *which* block holds a sequence's tokens; this
//! module holds the bytes. One vector holds every block back to back, block `b` at
//! `b * geometry.elements_per_block()`, and inside a block the layout is the core geometry's
//! `[layer][K|V][kv_head][slot][head_dim]` ([`KvGeometry::element_offset`]). So:
//!
//! - a block is one contiguous region holding every layer, which is what a lower tier moves
//!   ([`KvCache::read_block`], [`KvCache::write_block`]);
//! - for one `(layer, kv_head)`, the keys of a block's slots are `block_size x head_dim`
//!   contiguous elements, and so are the values: the attention kernels stream them row by row
//!   (`crate::attention`);
//! - writing one token scatters `2 x kv_heads` rows of `head_dim` floats per layer. Writes
//!   are once per token and layer, reads once per token, layer *and later step*, so the
//!   layout favours reads.
//!
//! # Element types
//!
//! - [`KvDtype::F16`] (IEEE half, llama.cpp's and vLLM's default; the engine's default):
//!   writes round each f32 to nearest-even half and saturate at +-65,504 (the largest finite
//!   half), so an outlier never becomes an infinity that would turn a softmax into NaN;
//!   relative error <= 2^-11 per element.
//! - [`KvDtype::Int8`], symmetric int8 with one f32 scale per head vector (per token, layer,
//!   K/V and KV head: `int8_scale`, the vector's largest finite magnitude / 127), the core
//!   geometry's quantised layout. Every finite element is within half a step (`scale / 2`) of
//!   its value; non-finite elements saturate (NaN stores 0). Half of f16's bytes: twice the
//!   tokens in the same budget. The scales live in their own array, `block_vectors` per block;
//!   [`KvCache::read_block`] appends them after the block's data, as the geometry describes.
//! - [`KvDtype::F32`], exact.
//!
//! Other dtypes are refused with [`KvCacheError::UnsupportedDtype`] rather than silently
//! stored as something else. Attention always computes in f32 (int8 scales multiply the dot
//! products and the softmax weights, see `crate::attention`).
//!
//! Why f16 is the default: batched decode reads every cached token of every sequence at every
//! step, and once a batch's KV outgrows the last-level cache that read is bound by memory
//! (see `crate::attention`). Half of f32's bytes is most of half the time, at an 11-bit
//! significand. Int8 halves the bytes again, but on this engine's AVX2 kernels widening int8
//! costs more instructions than f16, and batch-16 decode measured about the same as f16 (a
//! capacity option, not a speed one, for now); the attention tests bound both against a
//! dense reference on the stored values.
//!
//! # Errors, not panics
//!
//! Block ids, layers and positions come from the pool and the scheduler, so a mismatch is a
//! bug elsewhere in the process; it is still reported as a [`KvCacheError`] (out-of-range
//! block, position beyond the block table, wrong slice length) and nothing is written. The
//! check costs one pass over the block ids a call touches.
//!
//! # Memory
//!
//! `bytes() = num_blocks x geometry.bytes_per_block()`; SmolLM2-135M (30 layers, 3 KV heads,
//! head dim 64) at block size 16 is 360 KiB per block in f16, 23,040 bytes per token (twice
//! that in f32; int8 is 11,520 bytes of data plus 720 of scales). The region is
//! allocated zeroed up front (committed by the OS page by page on first use, on 2 MiB pages
//! where it allows: `crate::huge_pages`) and never grows.

use kvmesh_core::{BlockCopy, BlockId, KvDtype, KvGeometry, KvPart};

use thiserror::Error;

use crate::huge_pages::advise_huge_pages;
use crate::quant::{f16_to_f32, f32_to_f16};

/// What went wrong in a KV cache or attention call. Nothing was written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KvCacheError {
    /// The geometry's dtype is not stored by this cache (f16, int8 and f32 are).
    #[error("KV dtype {dtype} is not supported by the KV cache (use f16, int8 or f32)")]
    UnsupportedDtype {
        /// The refused dtype.
        dtype: KvDtype,
    },
    /// `num_blocks x elements_per_block` does not fit in memory addresses.
    #[error("{num_blocks} blocks of {elements_per_block} elements overflow the address space")]
    TooLarge {
        /// Blocks asked for.
        num_blocks: usize,
        /// Elements per block.
        elements_per_block: usize,
    },
    /// A block id at or past the cache's block count.
    #[error("block {} is out of range: the cache has {num_blocks} blocks", block.index())]
    BlockOutOfRange {
        /// The offending block.
        block: BlockId,
        /// Blocks in the cache.
        num_blocks: usize,
    },
    /// A layer index at or past the model's layer count.
    #[error("layer {layer} is out of range: the model has {num_layers} layers")]
    LayerOutOfRange {
        /// The offending layer.
        layer: u32,
        /// Layers in the geometry.
        num_layers: u32,
    },
    /// A token position the block table does not cover.
    #[error("position {position} is beyond the block table ({capacity} slots)")]
    PositionBeyondTable {
        /// The first uncovered position the call needed.
        position: usize,
        /// `table.len() x block_size`.
        capacity: usize,
    },
    /// A slice whose length does not match the geometry.
    #[error("{what}: expected {expected} elements, got {actual}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// Elements the geometry implies.
        expected: usize,
        /// Elements passed.
        actual: usize,
    },
    /// A copy of more slots than a block holds.
    #[error("copy of {slots} slots exceeds the block size {block_size}")]
    CopyTooLong {
        /// Slots asked for.
        slots: u32,
        /// Slots per block.
        block_size: u32,
    },
    /// A KV head range outside `0..num_kv_heads` (or reversed).
    #[error("KV heads {start}..{end} are out of range: the model has {num_kv_heads}")]
    KvHeadRange {
        /// Range start.
        start: u32,
        /// Range end (exclusive).
        end: u32,
        /// KV heads in the geometry.
        num_kv_heads: u32,
    },
    /// A decode sequence with no context (its query has nothing to attend to).
    #[error("decode sequence {index} has context length 0")]
    EmptyContext {
        /// Index of the sequence in the batch.
        index: usize,
    },
    /// An attention backend this CPU or build lacks.
    #[error("attention backend {name} is not available on this CPU")]
    BackendUnavailable {
        /// The backend's name.
        name: &'static str,
    },
}

/// An element type the cache stores: converted from f32 on write, widened to f32 on read.
pub(crate) trait KvElement: Copy + Default + Send + Sync + 'static {
    /// Bytes per element in [`KvCache::read_block`]'s little-endian encoding.
    const BYTES: usize;
    /// Whether every head vector carries an f32 scale beside the data: a value is
    /// `scale x element` ([`KvDtype::Int8`]).
    const SCALED: bool = false;
    /// The stored form of `x` (rounded and saturated where the type is narrower; for a scaled
    /// type `x` is already divided by its vector's scale).
    fn from_f32(x: f32) -> Self;
    /// The stored value (before any scale), exactly.
    fn to_f32(self) -> f32;
    /// Writes the element's little-endian bytes to `out` (`BYTES` long).
    fn put_le(self, out: &mut [u8]);
    /// The element encoded at the start of `bytes` (`BYTES` long).
    fn get_le(bytes: &[u8]) -> Self;
    /// `dst[i] = from_f32(src[i] * inv)` for every `i` (the same lengths): one head vector's
    /// worth of writes, which a type may convert several at a time.
    #[inline(always)]
    fn from_f32_row(src: &[f32], inv: f32, dst: &mut [Self]) {
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = Self::from_f32(x * inv);
        }
    }
}

impl KvElement for f32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn put_le(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_le_bytes());
    }
    fn get_le(bytes: &[u8]) -> Self {
        f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// An IEEE 754 half-precision value, stored as its bits. A plain `u16`, so a cache of them
/// is allocated zeroed by the OS (committed page by page on first use, see [`KvCache::new`])
/// and F16C instructions load them directly; nothing else in the KV cache is a `u16`.
pub(crate) type F16 = u16;

/// The largest finite half.
const F16_MAX: f32 = 65_504.0;

impl KvElement for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        // `clamp` keeps NaN as NaN; everything finite stays finite.
        f32_to_f16(x.clamp(-F16_MAX, F16_MAX))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_to_f32(self)
    }
    fn put_le(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_le_bytes());
    }
    fn get_le(bytes: &[u8]) -> Self {
        u16::from_le_bytes([bytes[0], bytes[1]])
    }
    fn from_f32_row(src: &[f32], inv: f32, dst: &mut [Self]) {
        assert_eq!(src.len(), dst.len(), "from_f32_row: lengths");
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if crate::simd::max_level() >= crate::simd::SimdLevel::Avx2 {
            // SAFETY: the AVX2 level includes AVX and F16C (`simd::cpu_level`); the lengths
            // are equal.
            done = unsafe { f16_row_f16c(src, inv, dst) };
        }
        for (o, &x) in dst[done..].iter_mut().zip(&src[done..]) {
            *o = Self::from_f32(x * inv);
        }
    }
}

/// [`KvElement::from_f32_row`] for halves, eight at a time with F16C's `vcvtps2ph` (round to
/// nearest even, like `f32_to_f16`) after the same clamp to +-65,504; a group with a NaN goes
/// through the scalar conversion, which keeps NaN a quiet NaN of its sign. Returns how many
/// leading elements it wrote (a multiple of 8). The K/V writes of batched decode convert ~180 k
/// values per step; one at a time that was ~3% of the step, on one thread while the other
/// waited.
///
/// # Safety
/// The CPU must support AVX and F16C; `src` and `dst` must have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_row_f16c(src: &[f32], inv: f32, dst: &mut [F16]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    let (lo, hi, scale) = (
        _mm256_set1_ps(-F16_MAX),
        _mm256_set1_ps(F16_MAX),
        _mm256_set1_ps(inv),
    );
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= both lengths (the caller's guarantee).
        unsafe {
            let x = _mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(i)), scale);
            if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)) != 0 {
                for j in i..i + 8 {
                    dst[j] = F16::from_f32(src[j] * inv);
                }
                continue;
            }
            let clamped = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
            let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(clamped);
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), halves);
        }
    }
    n
}

/// The largest stored int8 magnitude: symmetric quantisation uses -127..=127.
const INT8_MAX: f32 = 127.0;

impl KvElement for i8 {
    const BYTES: usize = 1;
    const SCALED: bool = true;
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        // `as` saturates, and maps NaN to 0.
        x.round().clamp(-INT8_MAX, INT8_MAX) as i8
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn put_le(self, out: &mut [u8]) {
        out[0] = self as u8;
    }
    fn get_le(bytes: &[u8]) -> Self {
        bytes[0] as i8
    }
}

/// The scale of an int8 head vector: its largest finite magnitude over 127, so the vector's
/// extreme maps to +-127 and every finite element is within half a step (`scale / 2`) of
/// its stored value. 0 for an all-zero (or all non-finite) vector.
pub(crate) fn int8_scale(x: &[f32]) -> f32 {
    let max = x
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    max / INT8_MAX
}

/// The cache's elements, in the dtype the geometry names.
#[derive(Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<F16>),
    Int8(Vec<i8>),
}

/// A borrowed view of the cache's elements, for the attention kernels to dispatch on once per
/// call.
pub(crate) enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [F16]),
    Int8(&'a [i8]),
}

/// KV storage for `num_blocks` blocks of one model's [`KvGeometry`], in its dtype (f16, f32,
/// or int8 with a scale per head vector).
///
/// ```
/// use kvmesh_core::{find_preset, BlockPool, KvDtype, KvGeometry};
/// use kvmesh_engine::KvCache;
///
/// let dims = find_preset("smollm2-135m").unwrap().dims;
/// let geometry = KvGeometry::new(dims, KvDtype::F16, 16).unwrap();
/// let mut pool = BlockPool::builder().num_blocks(4).block_size(16).build().unwrap();
/// let mut cache = KvCache::new(geometry, 4).unwrap();
///
/// let seq = pool.match_prefix(&[], 0).sequence;
/// pool.append_slots(seq, 1).unwrap();
/// let row = vec![0.5; 3 * 64]; // kv_heads x head_dim
/// cache.write_token(0, pool.block_table(seq).unwrap(), 0, &row, &row).unwrap();
/// assert_eq!(cache.bytes(), 4 * geometry.bytes_per_block() as usize);
/// ```
#[derive(Clone)]
pub struct KvCache {
    geometry: KvGeometry,
    num_blocks: usize,
    block_elems: usize,
    /// Head vectors per block: `block_elems / head_dim`.
    block_vectors: usize,
    data: Storage,
    /// For int8, one scale per head vector, `block_vectors` per block in the order of
    /// [`KvGeometry::element_offset`]` / head_dim`; empty otherwise.
    scales: Vec<f32>,
}

/// `$body` with `$d` bound to the storage's vector, whatever its element type.
macro_rules! with_storage {
    ($storage:expr, $d:ident => $body:expr) => {
        match $storage {
            Storage::F32($d) => $body,
            Storage::F16($d) => $body,
            Storage::Int8($d) => $body,
        }
    };
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("geometry", &self.geometry)
            .field("num_blocks", &self.num_blocks)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl KvCache {
    /// Allocates `num_blocks` zeroed blocks of `geometry`, which must use [`KvDtype::F16`],
    /// [`KvDtype::F32`] or [`KvDtype::Int8`].
    pub fn new(geometry: KvGeometry, num_blocks: usize) -> Result<Self, KvCacheError> {
        let elem_bytes = match geometry.dtype() {
            KvDtype::F32 => size_of::<f32>(),
            KvDtype::F16 => size_of::<F16>(),
            KvDtype::Int8 => size_of::<i8>(),
            dtype => return Err(KvCacheError::UnsupportedDtype { dtype }),
        };
        let block_elems = geometry.elements_per_block();
        let block_vectors = block_elems / geometry.dims().head_dim.max(1) as usize;
        let too_large = KvCacheError::TooLarge {
            num_blocks,
            elements_per_block: block_elems,
        };
        let total = num_blocks
            .checked_mul(block_elems)
            .filter(|&n| n <= isize::MAX as usize / elem_bytes)
            .ok_or(too_large.clone())?;
        let (data, scales) = match geometry.dtype() {
            KvDtype::F16 => (Storage::F16(zeroed(total)), Vec::new()),
            KvDtype::Int8 => {
                let vectors = num_blocks
                    .checked_mul(block_vectors)
                    .filter(|&n| n <= isize::MAX as usize / size_of::<f32>())
                    .ok_or(too_large)?;
                (Storage::Int8(zeroed(total)), zeroed(vectors))
            }
            _ => (Storage::F32(zeroed(total)), Vec::new()),
        };
        Ok(KvCache {
            geometry,
            num_blocks,
            block_elems,
            block_vectors,
            data,
            scales,
        })
    }

    /// The geometry the cache was built for.
    pub fn geometry(&self) -> &KvGeometry {
        &self.geometry
    }

    /// Blocks in the cache (valid ids are `0..num_blocks`).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Bytes of KV data held, scales included: `num_blocks x bytes_per_block`.
    pub fn bytes(&self) -> usize {
        with_storage!(&self.data, d => size_of_val(d.as_slice()))
            + size_of_val(self.scales.as_slice())
    }

    /// Bytes of one block's region (every layer, K and V, then the scales of a quantised
    /// dtype): `geometry.bytes_per_block()`.
    pub fn block_bytes(&self) -> usize {
        self.block_elems * self.elem_bytes() + self.block_scales() * size_of::<f32>()
    }

    /// Copies one block's whole region (every layer, K and V) into `out`: the elements as
    /// little-endian values of the cache's dtype, then, for int8, the block's f32 scales
    /// (the core geometry's block format; the form a lower tier stores). `out` must be
    /// [`block_bytes`](Self::block_bytes) long.
    pub fn read_block(&self, block: BlockId, out: &mut [u8]) -> Result<(), KvCacheError> {
        let b = self.check_block(block)?;
        self.check_block_len(out.len())?;
        let (elems, scales) = (b * self.block_elems, b * self.block_scales());
        let (data_out, scales_out) = out.split_at_mut(self.block_elems * self.elem_bytes());
        with_storage!(&self.data, d => encode(&d[elems..elems + self.block_elems], data_out));
        encode(
            &self.scales[scales..scales + self.block_scales()],
            scales_out,
        );
        Ok(())
    }

    /// Overwrites one block's whole region from `bytes` in [`read_block`](Self::read_block)'s
    /// encoding (onboarding a block from a lower tier).
    pub fn write_block(&mut self, block: BlockId, bytes: &[u8]) -> Result<(), KvCacheError> {
        let b = self.check_block(block)?;
        self.check_block_len(bytes.len())?;
        let (n, m) = (self.block_elems, self.block_scales());
        let (elems, scales) = (b * n, b * m);
        let (data_in, scales_in) = bytes.split_at(n * self.elem_bytes());
        with_storage!(&mut self.data, d => decode(data_in, &mut d[elems..elems + n]));
        decode(scales_in, &mut self.scales[scales..scales + m]);
        Ok(())
    }

    /// Stores the keys and values of the token at `position` of a sequence in `layer`.
    ///
    /// `k` and `v` hold `kv_heads x head_dim` floats, head-major (the layout of a K or V
    /// projection's output row). The token goes to slot `position % block_size` of block
    /// `block_table[position / block_size]`.
    pub fn write_token(
        &mut self,
        layer: u32,
        block_table: &[BlockId],
        position: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvCacheError> {
        self.write_tokens(layer, block_table, position, k, v)
    }

    /// Stores a chunk of consecutive tokens at positions `start..start + n` in `layer`,
    /// converted to the cache's dtype (for int8, each head vector with its own scale: its
    /// largest finite magnitude / 127).
    ///
    /// `k` and `v` hold `n x kv_heads x head_dim` floats, token-major; `n` is implied by
    /// their length. Validates everything before writing anything.
    pub fn write_tokens(
        &mut self,
        layer: u32,
        block_table: &[BlockId],
        start: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvCacheError> {
        self.check_layer(layer)?;
        let row = self.token_row_len();
        if !k.len().is_multiple_of(row) {
            return Err(KvCacheError::ShapeMismatch {
                what: "k (a whole number of kv_heads x head_dim rows)",
                expected: k.len() / row * row,
                actual: k.len(),
            });
        }
        if v.len() != k.len() {
            return Err(KvCacheError::ShapeMismatch {
                what: "v (same shape as k)",
                expected: k.len(),
                actual: v.len(),
            });
        }
        let tokens = k.len() / row;
        if tokens == 0 {
            return Ok(());
        }
        let end = start
            .checked_add(tokens)
            .ok_or(KvCacheError::PositionBeyondTable {
                position: usize::MAX,
                capacity: self.table_capacity(block_table),
            })?;
        self.check_table(block_table, start, end)?;
        let to = Slots {
            geometry: &self.geometry,
            layer,
            table: block_table,
            start,
        };
        with_storage!(&mut self.data, d => scatter(d, &mut self.scales, &to, k, v));
        Ok(())
    }

    /// Copy-on-write: copies the first `copy.slots` token slots of every layer, part and KV
    /// head from block `copy.src` into block `copy.dst` (the [`BlockCopy`] the pool returns
    /// from `append_slots`). Slots at and past `copy.slots` of `dst` are left as they are.
    pub fn copy_prefix(&mut self, copy: BlockCopy) -> Result<(), KvCacheError> {
        let src = self.check_block(copy.src)?;
        let dst = self.check_block(copy.dst)?;
        let block_size = self.geometry.block_size();
        if copy.slots > block_size {
            return Err(KvCacheError::CopyTooLong {
                slots: copy.slots,
                block_size,
            });
        }
        if src == dst || copy.slots == 0 {
            return Ok(());
        }
        let (geometry, slots) = (&self.geometry, copy.slots as usize);
        with_storage!(&mut self.data, d => copy_slots(d, &mut self.scales, geometry, src, dst, slots));
        Ok(())
    }

    // ---- crate-internal helpers for the attention kernels ---------------------------------

    /// Every block's elements, for a kernel to read through [`KvGeometry::element_offset`]
    /// from `block.index() * geometry.elements_per_block()`.
    pub(crate) fn data(&self) -> KvData<'_> {
        match &self.data {
            Storage::F32(d) => KvData::F32(d),
            Storage::F16(d) => KvData::F16(d),
            Storage::Int8(d) => KvData::Int8(d),
        }
    }

    /// Every block's head-vector scales (int8; empty otherwise): vector `element_offset / d`
    /// of block `b` at `b * elements_per_block / head_dim`.
    pub(crate) fn scales(&self) -> &[f32] {
        &self.scales
    }

    pub(crate) fn check_layer(&self, layer: u32) -> Result<(), KvCacheError> {
        let num_layers = self.geometry.dims().num_layers;
        if layer >= num_layers {
            return Err(KvCacheError::LayerOutOfRange { layer, num_layers });
        }
        Ok(())
    }

    /// Checks that `block_table` covers positions `start..end` and that the blocks holding
    /// them exist.
    pub(crate) fn check_table(
        &self,
        block_table: &[BlockId],
        start: usize,
        end: usize,
    ) -> Result<(), KvCacheError> {
        if start >= end {
            return Ok(());
        }
        let capacity = self.table_capacity(block_table);
        if end > capacity {
            return Err(KvCacheError::PositionBeyondTable {
                position: capacity.max(start),
                capacity,
            });
        }
        let bs = self.block_size();
        for &b in &block_table[start / bs..end.div_ceil(bs)] {
            self.check_block(b)?;
        }
        Ok(())
    }

    pub(crate) fn block_size(&self) -> usize {
        self.geometry.block_size() as usize
    }

    fn head_dim(&self) -> usize {
        self.geometry.dims().head_dim as usize
    }

    fn elem_bytes(&self) -> usize {
        (self.geometry.dtype().bits() / 8) as usize
    }

    /// Scales per block: one per head vector for a quantised dtype (int8), none otherwise.
    fn block_scales(&self) -> usize {
        if self.geometry.dtype().is_quantized() {
            self.block_vectors
        } else {
            0
        }
    }

    fn token_row_len(&self) -> usize {
        self.geometry.dims().num_kv_heads as usize * self.head_dim()
    }

    fn table_capacity(&self, block_table: &[BlockId]) -> usize {
        block_table.len().saturating_mul(self.block_size())
    }

    fn check_block(&self, block: BlockId) -> Result<usize, KvCacheError> {
        if block.index() >= self.num_blocks {
            return Err(KvCacheError::BlockOutOfRange {
                block,
                num_blocks: self.num_blocks,
            });
        }
        Ok(block.index())
    }

    fn check_block_len(&self, len: usize) -> Result<(), KvCacheError> {
        if len != self.block_bytes() {
            return Err(KvCacheError::ShapeMismatch {
                what: "block bytes",
                expected: self.block_bytes(),
                actual: len,
            });
        }
        Ok(())
    }
}

/// Where [`scatter`] writes: positions `start..` of a sequence's `table` in `layer`.
struct Slots<'a> {
    geometry: &'a KvGeometry,
    layer: u32,
    table: &'a [BlockId],
    start: usize,
}

/// Writes tokens `start..` of `k`/`v` (`[token][kv_head][head_dim]` floats) to their slots
/// (and, for a scaled type, each head vector's scale to `scales`); the caller has validated
/// the layer, shapes and table.
fn scatter<E: KvElement>(data: &mut [E], scales: &mut [f32], to: &Slots<'_>, k: &[f32], v: &[f32]) {
    let g = to.geometry;
    let d = g.dims().head_dim as usize;
    let bs = g.block_size() as usize;
    let kv_heads = g.dims().num_kv_heads;
    let row = kv_heads as usize * d;
    let block_elems = g.elements_per_block();
    for (t, (k, v)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
        let pos = to.start + t;
        let base = to.table[pos / bs].index() * block_elems;
        let slot = (pos % bs) as u32;
        for h in 0..kv_heads {
            let src = h as usize * d..(h as usize + 1) * d;
            for (part, x) in [(KvPart::Key, &k[src.clone()]), (KvPart::Value, &v[src])] {
                let at = base + g.element_offset(to.layer, part, h, slot);
                let inv = if E::SCALED {
                    let scale = int8_scale(x);
                    scales[at / d] = scale;
                    if scale > 0.0 {
                        1.0 / scale
                    } else {
                        0.0
                    }
                } else {
                    1.0
                };
                match part {
                    // Keys dim-major: element c of this slot's key is c x bs further per dim.
                    KvPart::Key => {
                        let run = at - slot as usize * d;
                        let mut converted = [E::default(); 64];
                        for (c0, part) in x.chunks(64).enumerate() {
                            let converted = &mut converted[..part.len()];
                            E::from_f32_row(part, inv, converted);
                            for (c, &e) in converted.iter().enumerate() {
                                data[run + (c0 * 64 + c) * bs + slot as usize] = e;
                            }
                        }
                    }
                    KvPart::Value => E::from_f32_row(x, inv, &mut data[at..at + d]),
                }
            }
        }
    }
}

/// Copies slots `0..slots` of every `(layer, part, kv_head)` run from block `src` to block
/// `dst`: for a value run its first `slots x head_dim` elements, for a (dim-major) key run
/// the first `slots` elements of each dim row, and the slots' scales if there are any.
fn copy_slots<E: Copy>(
    data: &mut [E],
    scales: &mut [f32],
    geometry: &KvGeometry,
    src: usize,
    dst: usize,
    slots: usize,
) {
    let dims = geometry.dims();
    let (d, bs) = (dims.head_dim as usize, geometry.block_size() as usize);
    let block_elems = geometry.elements_per_block();
    let (src, dst) = (src * block_elems, dst * block_elems);
    for layer in 0..dims.num_layers {
        for h in 0..dims.num_kv_heads {
            for part in [KvPart::Key, KvPart::Value] {
                let run = geometry.element_offset(layer, part, h, 0);
                match part {
                    KvPart::Key => {
                        for c in 0..d {
                            let from = src + run + c * bs;
                            data.copy_within(from..from + slots, dst + run + c * bs);
                        }
                    }
                    KvPart::Value => {
                        data.copy_within(src + run..src + run + slots * d, dst + run);
                    }
                }
                if !scales.is_empty() {
                    let (from, to) = ((src + run) / d, (dst + run) / d);
                    scales.copy_within(from..from + slots, to);
                }
            }
        }
    }
}

/// `len` zeros, allocated zeroed (for a large region, fresh pages the OS commits on first
/// touch) and advised onto huge pages before anything touches them (`crate::huge_pages`).
fn zeroed<E: KvElement>(len: usize) -> Vec<E> {
    let mut data = vec![E::default(); len];
    advise_huge_pages(&mut data);
    data
}

fn encode<E: KvElement>(elems: &[E], out: &mut [u8]) {
    for (&e, o) in elems.iter().zip(out.chunks_exact_mut(E::BYTES)) {
        e.put_le(o);
    }
}

fn decode<E: KvElement>(bytes: &[u8], elems: &mut [E]) {
    for (e, b) in elems.iter_mut().zip(bytes.chunks_exact(E::BYTES)) {
        *e = E::get_le(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row conversion (F16C where the CPU has it) gives the scalar conversion's bits for
    /// every kind of input: a sweep over the f32 bit patterns plus the edges (zeros, the
    /// subnormal and rounding boundaries of half, +-65,504 and just past it, infinities, NaNs).
    #[test]
    fn half_rows_equal_the_scalar_conversion() {
        let mut values: Vec<f32> = (0..=u32::MAX).step_by(65_521).map(f32::from_bits).collect();
        for v in [
            0.0,
            -0.0,
            5.960_464_5e-8,
            2.980_232_2e-8,
            4.470_348_4e-8,
            6.103_515_6e-5,
            65_504.0,
            65_519.996,
            65_520.0,
            1e9,
            f32::INFINITY,
            f32::MIN_POSITIVE,
            1e-40,
            1.000_488_3,
            2049.0,
        ] {
            values.extend([v, -v]);
        }
        values.extend([f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)]);
        // Rows of odd lengths, so groups of eight and scalar tails both run, NaNs among them.
        for inv in [1.0, 0.25, 3.0] {
            for row in values.chunks(13) {
                let mut got = vec![0u16; row.len()];
                F16::from_f32_row(row, inv, &mut got);
                for (&x, &g) in row.iter().zip(&got) {
                    let want = F16::from_f32(x * inv);
                    assert_eq!(g, want, "{x:e} x {inv}: {g:#06x} vs {want:#06x}");
                    assert!(g & 0x7fff != 0x7c00, "{x:e} saturates, never infinity");
                }
            }
        }
    }
}
