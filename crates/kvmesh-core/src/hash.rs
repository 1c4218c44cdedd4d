//! Chained block hashing: the identity of a block of KV is its tokens *and everything before it*.
//!
//! A sequence of tokens is cut into blocks of `block_size` tokens. Block `i` is named by
//!
//! ```text
//! h[-1] = H(seed, "root", lora id, cache salt)        (one per tenant / adapter)
//! h[i]  = H(seed, h[i-1] ‖ tokens of block i ‖ multimodal ids overlapping block i)
//! ```
//!
//! so two sequences share block `i` only if they share every token up to the end of that block
//! *and* the same adapter and salt. Only full blocks are hashed: a partial block's KV is still
//! being written and is never shared through the cache.
//!
//! # Design notes (2026-11-27)
//!
//! - **H is xxh3-128** (the `xxhash-rust` crate). 128 bits make an accidental collision across a
//!   fleet's lifetime negligible (2^-64 at 2^32 live blocks by the birthday bound), where a 64-bit
//!   hash (Dynamo, vLLM's default int hashes) reaches 1e-10 per billion-block index. xxh3 is the
//!   fastest 128-bit hash available in pure Rust; the `core` criterion bench measures it.
//!   A cryptographic hash (vLLM's sha256 option) would stop an adversary from forging
//!   collisions, at ~10x the cost; kvmesh blocks that attack with the per-deployment seed and
//!   per-tenant salts instead.
//! - **Extra keys at the root.** LoRA id and cache salt apply to a whole sequence, so they are
//!   folded into `h[-1]` once and reach every block through the chain. Different salts therefore
//!   give different hashes for every block, not just the first. Multimodal ids are per block:
//!   an image's content hash enters the hash of each block its placeholder tokens overlap, with
//!   the offset, so the same tokens next to different images never match.
//! - **Byte encoding** is fixed and little-endian (parent as 16 bytes, tokens as u32, then
//!   tagged extras), so hashes agree across machines and are stable across releases.
//!   Small blocks are hashed in one shot from a stack buffer; large blocks by streaming, which
//!   xxh3 defines to give the same result.

use std::fmt;

use xxhash_rust::xxh3::{xxh3_128_with_seed, Xxh3};

/// The 128-bit chained hash naming one full block and its whole prefix.
///
/// Stored as two `u64` halves rather than a `u128` so that it is 8-byte aligned: a registry
/// entry `(SequenceHash, BlockId)` then takes 24 bytes instead of 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SequenceHash {
    hi: u64,
    lo: u64,
}

impl SequenceHash {
    /// Wraps a raw hash value (for wire formats and tests).
    pub const fn from_u128(v: u128) -> Self {
        SequenceHash {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }

    /// The raw hash value.
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }
}

impl std::hash::Hash for SequenceHash {
    /// Feeds only the low half: the value is already a uniform hash, and 64 bits index any
    /// table (see [`SequenceHashMap`]). Equality still compares all 128 bits.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo);
    }
}

impl fmt::Debug for SequenceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:08x}", (self.hi >> 32) as u32)
    }
}

impl fmt::Display for SequenceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

/// Keys that apply to a whole sequence and separate caches that must not share blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ExtraKeys {
    /// The LoRA adapter the KV was computed with, if any.
    pub lora_id: Option<u64>,
    /// A tenant or per-request cache salt; sequences share blocks only under the same salt.
    pub cache_salt: Option<Vec<u8>>,
}

/// A multimodal input (an image, say) whose placeholder tokens occupy `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MultimodalSpan {
    /// Hash of the input's content, computed by the caller.
    pub content_hash: u128,
    /// Token position of the first placeholder.
    pub start: u64,
    /// Number of placeholder tokens.
    pub len: u64,
}

const ROOT_DOMAIN: &[u8] = b"kvmesh-root-v1";
const TAG_MULTIMODAL: u8 = 0x4d;
/// Blocks up to this many bytes are hashed from a stack buffer in one shot.
const STACK_BYTES: usize = 1024;

/// Hashes full blocks of one sequence family (fixed seed, block size and extra keys).
///
/// ```
/// use kvmesh_core::{BlockHasher, ExtraKeys};
/// let hasher = BlockHasher::new(7, 4, &ExtraKeys::default());
/// let a = hasher.hash_prefix(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
/// let b = hasher.hash_prefix(&[1, 2, 3, 4, 5, 6, 7, 0]);
/// assert_eq!(a.len(), 2); // the partial third block is not hashed
/// assert_eq!(a[0], b[0]); // same first block
/// assert_ne!(a[1], b[1]); // different second block
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHasher {
    seed: u64,
    block_size: usize,
    root: SequenceHash,
}

impl BlockHasher {
    /// A hasher for blocks of `block_size` tokens, under a per-deployment `seed` and the
    /// sequence-wide `extra` keys. `block_size` must be at least 1.
    pub fn new(seed: u64, block_size: u32, extra: &ExtraKeys) -> Self {
        assert!(block_size > 0, "block_size must be at least 1");
        let mut root = Xxh3::with_seed(seed);
        root.update(ROOT_DOMAIN);
        match extra.lora_id {
            Some(id) => {
                root.update(&[1]);
                root.update(&id.to_le_bytes());
            }
            None => root.update(&[0]),
        }
        match &extra.cache_salt {
            Some(salt) => {
                root.update(&[1]);
                root.update(&(salt.len() as u64).to_le_bytes());
                root.update(salt);
            }
            None => root.update(&[0]),
        }
        BlockHasher {
            seed,
            block_size: block_size as usize,
            root: SequenceHash::from_u128(root.digest128()),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// `h[-1]`: the parent of the first block.
    pub fn root(&self) -> SequenceHash {
        self.root
    }

    /// Hashes one full block given its parent's hash (`root()` for the first block).
    ///
    /// # Panics
    /// If `tokens.len()` is not the block size.
    pub fn hash_block(&self, parent: SequenceHash, tokens: &[u32]) -> SequenceHash {
        assert_eq!(tokens.len(), self.block_size, "only full blocks are hashed");
        let len = 16 + 4 * tokens.len();
        if len <= STACK_BYTES {
            let mut buf = [0u8; STACK_BYTES];
            buf[..16].copy_from_slice(&parent.as_u128().to_le_bytes());
            for (dst, t) in buf[16..len].chunks_exact_mut(4).zip(tokens) {
                dst.copy_from_slice(&t.to_le_bytes());
            }
            SequenceHash::from_u128(xxh3_128_with_seed(&buf[..len], self.seed))
        } else {
            self.streaming(parent, tokens, &[], 0)
        }
    }

    /// Hashes one full block that starts at token position `block_start`, folding in the
    /// multimodal spans that overlap it (spans that do not overlap are ignored).
    pub fn hash_block_with_multimodal(
        &self,
        parent: SequenceHash,
        tokens: &[u32],
        block_start: u64,
        spans: &[MultimodalSpan],
    ) -> SequenceHash {
        assert_eq!(tokens.len(), self.block_size, "only full blocks are hashed");
        let end = block_start + tokens.len() as u64;
        if spans
            .iter()
            .any(|s| s.start < end && s.start + s.len > block_start)
        {
            self.streaming(parent, tokens, spans, block_start)
        } else {
            self.hash_block(parent, tokens)
        }
    }

    fn streaming(
        &self,
        parent: SequenceHash,
        tokens: &[u32],
        spans: &[MultimodalSpan],
        block_start: u64,
    ) -> SequenceHash {
        let mut h = Xxh3::with_seed(self.seed);
        h.update(&parent.as_u128().to_le_bytes());
        let mut chunk = [0u8; 256];
        for part in tokens.chunks(64) {
            for (dst, t) in chunk.chunks_exact_mut(4).zip(part) {
                dst.copy_from_slice(&t.to_le_bytes());
            }
            h.update(&chunk[..4 * part.len()]);
        }
        let end = block_start + tokens.len() as u64;
        for s in spans
            .iter()
            .filter(|s| s.start < end && s.start + s.len > block_start)
        {
            h.update(&[TAG_MULTIMODAL]);
            h.update(&s.content_hash.to_le_bytes());
            // Offset of the span relative to the block: may be negative (started earlier).
            h.update(&(s.start as i64 - block_start as i64).to_le_bytes());
            h.update(&s.len.to_le_bytes());
        }
        SequenceHash::from_u128(h.digest128())
    }

    /// Hashes every full block of `tokens`, chaining from the root.
    pub fn hash_prefix(&self, tokens: &[u32]) -> Vec<SequenceHash> {
        let mut parent = self.root;
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                parent = self.hash_block(parent, block);
                parent
            })
            .collect()
    }
}

/// Incremental hashing of a growing sequence: append tokens, get a new hash each time a block
/// fills. Used by engines that hash as they decode.
///
/// ```
/// use kvmesh_core::{BlockHasher, ExtraKeys, SequenceHasher};
/// let hasher = BlockHasher::new(0, 2, &ExtraKeys::default());
/// let mut seq = SequenceHasher::new(hasher.clone());
/// assert_eq!(seq.append(&[1, 2, 3]).len(), 1);
/// assert_eq!(seq.push(4), Some(hasher.hash_prefix(&[1, 2, 3, 4])[1]));
/// assert_eq!(seq.hashes(), &hasher.hash_prefix(&[1, 2, 3, 4])[..]);
/// ```
#[derive(Debug, Clone)]
pub struct SequenceHasher {
    hasher: BlockHasher,
    spans: Vec<MultimodalSpan>,
    pending: Vec<u32>,
    hashes: Vec<SequenceHash>,
}

impl SequenceHasher {
    /// An empty sequence.
    pub fn new(hasher: BlockHasher) -> Self {
        SequenceHasher {
            pending: Vec::with_capacity(hasher.block_size),
            hasher,
            spans: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// An empty sequence whose tokens will include these multimodal spans.
    pub fn with_multimodal(hasher: BlockHasher, spans: Vec<MultimodalSpan>) -> Self {
        SequenceHasher {
            spans,
            ..SequenceHasher::new(hasher)
        }
    }

    /// Appends tokens; returns the hashes of the blocks they completed.
    pub fn append(&mut self, tokens: &[u32]) -> &[SequenceHash] {
        let before = self.hashes.len();
        for &t in tokens {
            self.push(t);
        }
        &self.hashes[before..]
    }

    /// Appends one token; returns the new block's hash if it completed one.
    pub fn push(&mut self, token: u32) -> Option<SequenceHash> {
        self.pending.push(token);
        if self.pending.len() < self.hasher.block_size {
            return None;
        }
        let parent = self.hashes.last().copied().unwrap_or(self.hasher.root);
        let start = (self.hashes.len() * self.hasher.block_size) as u64;
        let h = self
            .hasher
            .hash_block_with_multimodal(parent, &self.pending, start, &self.spans);
        self.pending.clear();
        self.hashes.push(h);
        Some(h)
    }

    /// Hashes of every full block so far.
    pub fn hashes(&self) -> &[SequenceHash] {
        &self.hashes
    }

    /// Tokens appended so far.
    pub fn num_tokens(&self) -> usize {
        self.hashes.len() * self.hasher.block_size + self.pending.len()
    }
}

/// A `HashMap` keyed by [`SequenceHash`] that uses the key's own bits as the table hash.
///
/// Sequence hashes are already uniform 128-bit values, so hashing them again (SipHash, the std
/// default) only costs time: ~20 ns of a ~30 ns lookup.
pub type SequenceHashMap<V> =
    std::collections::HashMap<SequenceHash, V, std::hash::BuildHasherDefault<PassThroughHasher>>;

/// A `Hasher` for keys that are already hashes: it keeps the last `u64` (or low half of the
/// last `u128`) written, and folds any other input with a multiply, so it stays correct for
/// other keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_one_shot_agree() {
        let h = BlockHasher::new(42, 16, &ExtraKeys::default());
        let tokens: Vec<u32> = (0..16).map(|i| i * 7919).collect();
        let parent = SequenceHash::from_u128(0x1234_5678_9abc_def0_0fed_cba9_8765_4321);
        assert_eq!(
            h.hash_block(parent, &tokens),
            h.streaming(parent, &tokens, &[], 0)
        );
        // A block larger than the stack buffer goes through the streaming path.
        let big = BlockHasher::new(42, 512, &ExtraKeys::default());
        let tokens: Vec<u32> = (0..512).collect();
        let mut bytes = parent.as_u128().to_le_bytes().to_vec();
        bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        assert_eq!(
            big.hash_block(parent, &tokens).as_u128(),
            xxh3_128_with_seed(&bytes, 42)
        );
    }

    #[test]
    fn seed_salt_and_lora_separate_everything() {
        let tokens: Vec<u32> = (0..64).collect();
        let plain = BlockHasher::new(1, 16, &ExtraKeys::default()).hash_prefix(&tokens);
        let variants = [
            BlockHasher::new(2, 16, &ExtraKeys::default()),
            BlockHasher::new(
                1,
                16,
                &ExtraKeys {
                    cache_salt: Some(b"tenant-a".to_vec()),
                    ..Default::default()
                },
            ),
            BlockHasher::new(
                1,
                16,
                &ExtraKeys {
                    cache_salt: Some(b"tenant-b".to_vec()),
                    ..Default::default()
                },
            ),
            BlockHasher::new(
                1,
                16,
                &ExtraKeys {
                    lora_id: Some(3),
                    ..Default::default()
                },
            ),
        ];
        let mut all = plain.clone();
        for v in &variants {
            all.extend(v.hash_prefix(&tokens));
        }
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "some block was shared across keys");
    }

    #[test]
    fn empty_salt_differs_from_no_salt() {
        let with_empty = ExtraKeys {
            cache_salt: Some(Vec::new()),
            ..Default::default()
        };
        assert_ne!(
            BlockHasher::new(0, 4, &with_empty).root(),
            BlockHasher::new(0, 4, &ExtraKeys::default()).root()
        );
    }

    #[test]
    fn multimodal_ids_change_only_overlapping_blocks() {
        let hasher = BlockHasher::new(0, 4, &ExtraKeys::default());
        let tokens = [9u32; 12];
        let image = |content| MultimodalSpan {
            content_hash: content,
            start: 5,
            len: 2,
        };
        let mut a = SequenceHasher::with_multimodal(hasher.clone(), vec![image(1)]);
        let mut b = SequenceHasher::with_multimodal(hasher.clone(), vec![image(2)]);
        let (a, b) = (a.append(&tokens).to_vec(), b.append(&tokens).to_vec());
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[2], b[2], "chaining carries the difference on");
        assert_eq!(a[0], hasher.hash_prefix(&tokens)[0]);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let hasher = BlockHasher::new(5, 3, &ExtraKeys::default());
        let tokens: Vec<u32> = (0..20).collect();
        let mut seq = SequenceHasher::new(hasher.clone());
        for chunk in tokens.chunks(4) {
            seq.append(chunk);
        }
        assert_eq!(seq.hashes(), hasher.hash_prefix(&tokens).as_slice());
        assert_eq!(seq.num_tokens(), 20);
    }
}
