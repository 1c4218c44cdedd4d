//! The engine's KV memory: `num_blocks` blocks of f32 keys and values, addressed by the
//! [`BlockId`]s the block pool hands out.
//!
//! The pool (`kvmesh_core::BlockPool`) decides *which* block holds a sequence's tokens; this
//! module holds the bytes. One `Vec<f32>` holds every block back to back, block `b` at
//! `b * geometry.elements_per_block()`, and inside a block the layout is the core geometry's
//! `[layer][K|V][kv_head][slot][head_dim]` ([`KvGeometry::element_offset`]). So:
//!
//! - a block is one contiguous region holding every layer, which is what a lower tier moves
//!   ([`KvCache::block_slice`], [`KvCache::block_slice_mut`]);
//! - for one `(layer, kv_head)`, the keys of a block's slots are `block_size x head_dim`
//!   contiguous floats, and so are the values: the attention kernels stream them row by row
//!   (`crate::attention`);
//! - writing one token scatters `2 x kv_heads` rows of `head_dim` floats per layer. Writes
//!   are once per token and layer, reads once per token, layer *and later step*, so the
//!   layout favours reads.
//!
//! Only [`KvDtype::F32`] is stored for now; other dtypes are refused with
//! [`KvCacheError::UnsupportedDtype`] rather than silently stored as f32.
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
//! head dim 64) at block size 16 is 720 KiB per block, 46,080 bytes per token. The region is
//! allocated zeroed up front (lazily committed by the OS) and never grows.

use kvmesh_core::{BlockCopy, BlockId, KvDtype, KvGeometry, KvPart};
use thiserror::Error;

/// What went wrong in a KV cache or attention call. Nothing was written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KvCacheError {
    /// The geometry's dtype is not stored by this cache (only f32 is, for now).
    #[error("KV dtype {dtype} is not supported by the f32 KV cache")]
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

/// f32 KV storage for `num_blocks` blocks of one model's [`KvGeometry`].
///
/// ```
/// use kvmesh_core::{find_preset, BlockPool, KvDtype, KvGeometry};
/// use kvmesh_engine::KvCache;
///
/// let dims = find_preset("smollm2-135m").unwrap().dims;
/// let geometry = KvGeometry::new(dims, KvDtype::F32, 16).unwrap();
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
    data: Vec<f32>,
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
    /// Allocates `num_blocks` zeroed blocks of `geometry`, which must use [`KvDtype::F32`].
    pub fn new(geometry: KvGeometry, num_blocks: usize) -> Result<Self, KvCacheError> {
        if geometry.dtype() != KvDtype::F32 {
            return Err(KvCacheError::UnsupportedDtype {
                dtype: geometry.dtype(),
            });
        }
        let block_elems = geometry.elements_per_block();
        let too_large = KvCacheError::TooLarge {
            num_blocks,
            elements_per_block: block_elems,
        };
        let total = num_blocks
            .checked_mul(block_elems)
            .filter(|&n| n <= isize::MAX as usize / size_of::<f32>())
            .ok_or(too_large)?;
        Ok(KvCache {
            geometry,
            num_blocks,
            block_elems,
            data: vec![0.0; total],
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
        self.data.len() * size_of::<f32>()
    }

    /// One block's whole region (every layer, K and V), `elements_per_block` floats.
    pub fn block_slice(&self, block: BlockId) -> Result<&[f32], KvCacheError> {
        let at = self.check_block(block)? * self.block_elems;
        Ok(&self.data[at..at + self.block_elems])
    }

    /// One block's whole region, writable (onboarding a block from a lower tier).
    pub fn block_slice_mut(&mut self, block: BlockId) -> Result<&mut [f32], KvCacheError> {
        let at = self.check_block(block)? * self.block_elems;
        Ok(&mut self.data[at..at + self.block_elems])
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

    /// Stores a chunk of consecutive tokens at positions `start..start + n` in `layer`.
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

        let d = self.head_dim();
        let bs = self.block_size();
        for t in 0..tokens {
            let pos = start + t;
            let block = block_table[pos / bs];
            let slot = (pos % bs) as u32;
            let base = block.index() * self.block_elems;
            for h in 0..self.geometry.dims().num_kv_heads {
                let src = t * row + h as usize * d;
                let ko = base + self.geometry.element_offset(layer, KvPart::Key, h, slot);
                let vo = base + self.geometry.element_offset(layer, KvPart::Value, h, slot);
                self.data[ko..ko + d].copy_from_slice(&k[src..src + d]);
                self.data[vo..vo + d].copy_from_slice(&v[src..src + d]);
            }
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
        // Per (layer, part, head) the first `slots` rows are one contiguous run.
        let run = copy.slots as usize * self.head_dim();
        let stride = self.block_size() * self.head_dim();
        let runs = self.block_elems / stride;
        let (src_base, dst_base) = (src * self.block_elems, dst * self.block_elems);
        for r in 0..runs {
            let from = src_base + r * stride;
            self.data
                .copy_within(from..from + run, dst_base + r * stride);
        }
        Ok(())
    }

    // ---- crate-internal helpers for the attention kernels ---------------------------------

    /// The keys and the values (each `block_size x head_dim` floats) of one KV head of one
    /// layer in one block. Callers have validated `block`, `layer` and `kv_head`.
    #[inline]
    pub(crate) fn head_rows(&self, block: BlockId, layer: u32, kv_head: u32) -> (&[f32], &[f32]) {
        debug_assert!(block.index() < self.num_blocks);
        let base = block.index() * self.block_elems;
        let len = self.block_size() * self.head_dim();
        let ko = base + self.geometry.element_offset(layer, KvPart::Key, kv_head, 0);
        let vo = base
            + self
                .geometry
                .element_offset(layer, KvPart::Value, kv_head, 0);
        (&self.data[ko..ko + len], &self.data[vo..vo + len])
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

    pub(crate) fn head_dim(&self) -> usize {
        self.geometry.dims().head_dim as usize
    }

    pub(crate) fn block_size(&self) -> usize {
        self.geometry.block_size() as usize
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
}
