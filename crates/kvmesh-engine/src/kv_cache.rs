//! The engine's KV memory: `num_blocks` blocks of keys and values in f16 or f32, addressed by
//! the [`BlockId`]s the block pool hands out.
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
//! [`KvDtype::F16`] (IEEE half, llama.cpp's and vLLM's default) and [`KvDtype::F32`] are
//! stored; other dtypes are refused with [`KvCacheError::UnsupportedDtype`] rather than
//! silently stored as something else. Writes round each f32 to nearest-even half and saturate
//! at +-65,504 (the largest finite half), so an outlier never becomes an infinity that would
//! turn a softmax into NaN; reads widen exactly. Attention always computes in f32.
//!
//! Why f16 is the default: batched decode reads every cached token of every sequence at every
//! step, and once a batch's KV outgrows the last-level cache that read is bound by DRAM
//! bandwidth (see `crate::attention`). Half the bytes is close to half the time; the price is
//! an 11-bit significand (relative rounding error <= 2^-11 per element), which the attention
//! tests bound against a dense reference on the rounded values.
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
//! that in f32). The region is
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
    /// The geometry's dtype is not stored by this cache (f16 and f32 are).
    #[error("KV dtype {dtype} is not supported by the KV cache (use f16 or f32)")]
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
    /// The stored form of `x` (rounded and saturated where the type is narrower).
    fn from_f32(x: f32) -> Self;
    /// The value, exactly.
    fn to_f32(self) -> f32;
    /// Writes the element's little-endian bytes to `out` (`BYTES` long).
    fn put_le(self, out: &mut [u8]);
    /// The element encoded at the start of `bytes` (`BYTES` long).
    fn get_le(bytes: &[u8]) -> Self;
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
}

/// The cache's elements, in the dtype the geometry names.
#[derive(Clone)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<F16>),
}

/// A borrowed view of the cache's elements, for the attention kernels to dispatch on once per
/// call.
pub(crate) enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [F16]),
}

/// KV storage for `num_blocks` blocks of one model's [`KvGeometry`], in its dtype (f16 or
/// f32).
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
    data: Storage,
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
    /// Allocates `num_blocks` zeroed blocks of `geometry`, which must use [`KvDtype::F16`]
    /// or [`KvDtype::F32`].
    pub fn new(geometry: KvGeometry, num_blocks: usize) -> Result<Self, KvCacheError> {
        let elem_bytes = match geometry.dtype() {
            KvDtype::F32 => size_of::<f32>(),
            KvDtype::F16 => size_of::<F16>(),
            dtype => return Err(KvCacheError::UnsupportedDtype { dtype }),
        };
        let block_elems = geometry.elements_per_block();
        let too_large = KvCacheError::TooLarge {
            num_blocks,
            elements_per_block: block_elems,
        };
        let total = num_blocks
            .checked_mul(block_elems)
            .filter(|&n| n <= isize::MAX as usize / elem_bytes)
            .ok_or(too_large)?;
        let data = match geometry.dtype() {
            KvDtype::F16 => Storage::F16(zeroed(total)),
            _ => Storage::F32(zeroed(total)),
        };
        Ok(KvCache {
            geometry,
            num_blocks,
            block_elems,
            data,
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

    /// Bytes of KV data held: `num_blocks x bytes_per_block`.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Storage::F32(d) => size_of_val(d.as_slice()),
            Storage::F16(d) => size_of_val(d.as_slice()),
        }
    }

    /// Bytes of one block's region (every layer, K and V): `geometry.bytes_per_block()`.
    pub fn block_bytes(&self) -> usize {
        self.block_elems * self.elem_bytes()
    }

    /// Copies one block's whole region (every layer, K and V) into `out` as little-endian
    /// elements of the cache's dtype: the form a lower tier stores. `out` must be
    /// [`block_bytes`](Self::block_bytes) long.
    pub fn read_block(&self, block: BlockId, out: &mut [u8]) -> Result<(), KvCacheError> {
        let at = self.check_block(block)? * self.block_elems;
        self.check_block_len(out.len())?;
        match &self.data {
            Storage::F32(d) => encode(&d[at..at + self.block_elems], out),
            Storage::F16(d) => encode(&d[at..at + self.block_elems], out),
        }
        Ok(())
    }

    /// Overwrites one block's whole region from `bytes` in [`read_block`](Self::read_block)'s
    /// encoding (onboarding a block from a lower tier).
    pub fn write_block(&mut self, block: BlockId, bytes: &[u8]) -> Result<(), KvCacheError> {
        let at = self.check_block(block)? * self.block_elems;
        self.check_block_len(bytes.len())?;
        let n = self.block_elems;
        match &mut self.data {
            Storage::F32(d) => decode(bytes, &mut d[at..at + n]),
            Storage::F16(d) => decode(bytes, &mut d[at..at + n]),
        }
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
    /// converted to the cache's dtype.
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
        match &mut self.data {
            Storage::F32(d) => scatter(d, &self.geometry, layer, block_table, start, k, v),
            Storage::F16(d) => scatter(d, &self.geometry, layer, block_table, start, k, v),
        }
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
        let (src, dst) = (src * self.block_elems, dst * self.block_elems);
        let (geometry, slots) = (&self.geometry, copy.slots as usize);
        match &mut self.data {
            Storage::F32(d) => copy_slots(d, geometry, src, dst, slots),
            Storage::F16(d) => copy_slots(d, geometry, src, dst, slots),
        }
        Ok(())
    }

    // ---- crate-internal helpers for the attention kernels ---------------------------------

    /// Every block's elements, for a kernel to read through [`KvGeometry::element_offset`]
    /// from `block.index() * geometry.elements_per_block()`.
    pub(crate) fn data(&self) -> KvData<'_> {
        match &self.data {
            Storage::F32(d) => KvData::F32(d),
            Storage::F16(d) => KvData::F16(d),
        }
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
        match self.data {
            Storage::F32(_) => f32::BYTES,
            Storage::F16(_) => F16::BYTES,
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

/// Writes tokens `start..` of `k`/`v` (`[token][kv_head][head_dim]` floats) to their slots;
/// the caller has validated the layer, shapes and table.
fn scatter<E: KvElement>(
    data: &mut [E],
    geometry: &KvGeometry,
    layer: u32,
    table: &[BlockId],
    start: usize,
    k: &[f32],
    v: &[f32],
) {
    let d = geometry.dims().head_dim as usize;
    let bs = geometry.block_size() as usize;
    let kv_heads = geometry.dims().num_kv_heads;
    let row = kv_heads as usize * d;
    let block_elems = geometry.elements_per_block();
    for (t, (k, v)) in k.chunks_exact(row).zip(v.chunks_exact(row)).enumerate() {
        let pos = start + t;
        let base = table[pos / bs].index() * block_elems;
        let slot = (pos % bs) as u32;
        for h in 0..kv_heads {
            let src = h as usize * d..(h as usize + 1) * d;
            // Keys dim-major: element c of this slot's key is c * bs further per dim.
            let key_run = base + geometry.element_offset(layer, KvPart::Key, h, 0);
            for (c, &x) in k[src.clone()].iter().enumerate() {
                data[key_run + c * bs + slot as usize] = E::from_f32(x);
            }
            let at = base + geometry.element_offset(layer, KvPart::Value, h, slot);
            for (o, &x) in data[at..at + d].iter_mut().zip(&v[src]) {
                *o = E::from_f32(x);
            }
        }
    }
}

/// Copies slots `0..slots` of every `(layer, part, kv_head)` run from the block at element
/// `src` to the block at element `dst`: for a value run its first `slots x head_dim`
/// elements, for a (dim-major) key run the first `slots` elements of each dim row.
fn copy_slots<E: Copy>(
    data: &mut [E],
    geometry: &KvGeometry,
    src: usize,
    dst: usize,
    slots: usize,
) {
    let dims = geometry.dims();
    let (d, bs) = (dims.head_dim as usize, geometry.block_size() as usize);
    for layer in 0..dims.num_layers {
        for h in 0..dims.num_kv_heads {
            let key = geometry.element_offset(layer, KvPart::Key, h, 0);
            for c in 0..d {
                let from = src + key + c * bs;
                data.copy_within(from..from + slots, dst + key + c * bs);
            }
            let value = geometry.element_offset(layer, KvPart::Value, h, 0);
            data.copy_within(src + value..src + value + slots * d, dst + value);
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
