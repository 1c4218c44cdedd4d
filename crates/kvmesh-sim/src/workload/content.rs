//! From a trace's content ids to kvmesh sequence hashes at any engine block size.
//!
//! Traces carry no tokens. Mooncake names each 512-token block of a prompt by an id, equal ids
//! meaning equal prefixes through that block; generators build prompts from *segments* (a
//! system prompt, a document, a user turn) with the same rule. Both are described here as a
//! list of [`Segment`]s: runs of tokens, each named by an id that fixes every token *up to
//! its end*, so that two prompts agree on the first `t` tokens exactly when the segments
//! covering token `t - 1` have the same id and the token sits at the same offset in it.
//!
//! # The mapping
//!
//! An engine block `j` of `block_size` tokens covers tokens `[j * bs, (j + 1) * bs)`. Its last
//! token `t` lies in some segment `(id, start)`; the block is named
//!
//! ```text
//! h[-1] = xxh3_128(seed, "kvmesh-sim-content-v1")
//! h[j]  = xxh3_128(seed, h[j-1] ‖ id ‖ (t - start))          (all little-endian)
//! ```
//!
//! The pair `(id, offset of t)` already fixes every token up to `t`, so equal id prefixes give
//! equal hashes at every block size, and a block is shared exactly when the trace says its
//! content is. Chaining through `h[j-1]` keeps the property kvmesh's own hashes have (a hash
//! names its whole prefix) and gives the pool and index ordinary parent links. Only **full**
//! blocks are named, as in an engine: `input_length` bounds the last segment, and a partial
//! last block gets a separate *tail* identity (same formula with a tag byte), which only the
//! ideal-cache computation uses. At the trace's own granularity (512 for Mooncake) the mapping is
//! one hash per id; at 16 it is 32 hashes per id; block sizes need not divide the segment
//! length.
//!
//! Rejected alternative: synthesise token ids from the trace ids and run the real
//! [`kvmesh_core::BlockHasher`]. It gives the same sharing, costs `block_size` words per block
//! to hash instead of 28 bytes, and would suggest the simulator knows tokens it does not.

use kvmesh_core::SequenceHash;
use xxhash_rust::xxh3::xxh3_128_with_seed;

const ROOT_DOMAIN: &[u8] = b"kvmesh-sim-content-v1";
const TAIL_TAG: u8 = 0x54;

/// A run of prompt tokens whose content (and everything before it) is named by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// The content id: equal ids mean equal tokens from the start of the prompt to the end
    /// of the segment (or to the end of the shorter one).
    pub id: u64,
    /// Tokens in the segment (at least 1).
    pub tokens: u32,
}

/// Maps segment lists to sequence hashes at one block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMapper {
    block_size: u32,
    seed: u64,
    root: SequenceHash,
}

/// The blocks of one prompt: full-block hashes, and the partial last block's identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptBlocks {
    /// One hash per full block, chained from the root.
    pub hashes: Vec<SequenceHash>,
    /// The partial last block's identity, when the prompt is not a whole number of blocks.
    pub tail: Option<SequenceHash>,
}

impl BlockMapper {
    /// A mapper for `block_size`-token blocks (at least 1) under `seed`.
    ///
    /// # Panics
    /// If `block_size` is 0.
    pub fn new(block_size: u32, seed: u64) -> Self {
        assert!(block_size > 0, "block size must be at least 1");
        BlockMapper {
            block_size,
            seed,
            root: SequenceHash::from_u128(xxh3_128_with_seed(ROOT_DOMAIN, seed)),
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn hash(&self, parent: SequenceHash, id: u64, offset: u32, tail: bool) -> SequenceHash {
        let mut buf = [0u8; 29];
        buf[..16].copy_from_slice(&parent.as_u128().to_le_bytes());
        buf[16..24].copy_from_slice(&id.to_le_bytes());
        buf[24..28].copy_from_slice(&offset.to_le_bytes());
        let len = if tail {
            buf[28] = TAIL_TAG;
            29
        } else {
            28
        };
        SequenceHash::from_u128(xxh3_128_with_seed(&buf[..len], self.seed))
    }

    /// The blocks of a prompt made of `segments` (empty segments are skipped).
    pub fn map(&self, segments: &[Segment]) -> PromptBlocks {
        let total: u64 = segments.iter().map(|s| u64::from(s.tokens)).sum();
        let bs = u64::from(self.block_size);
        let full = total / bs;
        let mut out = PromptBlocks {
            hashes: Vec::with_capacity(full as usize),
            tail: None,
        };
        let mut parent = self.root;
        // Cursor over segments: `seg` covers tokens [start, start + tokens).
        let mut seg = 0;
        let mut start = 0u64;
        let mut locate = |t: u64| -> (u64, u32) {
            while start + u64::from(segments[seg].tokens) <= t {
                start += u64::from(segments[seg].tokens);
                seg += 1;
            }
            (segments[seg].id, (t - start) as u32)
        };
        for j in 0..full {
            let (id, offset) = locate((j + 1) * bs - 1);
            parent = self.hash(parent, id, offset, false);
            out.hashes.push(parent);
        }
        if !total.is_multiple_of(bs) {
            let (id, offset) = locate(total - 1);
            out.tail = Some(self.hash(parent, id, offset, true));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64], tokens_per_id: u32, total: u32) -> Vec<Segment> {
        let mut left = total;
        ids.iter()
            .map(|&id| {
                let tokens = left.min(tokens_per_id);
                left -= tokens;
                Segment { id, tokens }
            })
            .collect()
    }

    #[test]
    fn one_hash_per_id_at_the_trace_granularity() {
        let m = BlockMapper::new(512, 0);
        let a = m.map(&ids(&[1, 2, 3], 512, 1300));
        assert_eq!(a.hashes.len(), 2);
        assert!(a.tail.is_some());
        let b = m.map(&ids(&[1, 2, 4], 512, 1536));
        assert_eq!(&b.hashes[..2], &a.hashes[..]);
        assert_eq!(b.hashes.len(), 3);
        assert!(b.tail.is_none());
        let c = m.map(&ids(&[1, 5], 512, 1024));
        assert_eq!(c.hashes[0], a.hashes[0]);
        assert_ne!(c.hashes[1], a.hashes[1]);
        assert!(m.map(&[]).hashes.is_empty());
    }

    #[test]
    fn equal_id_prefixes_give_equal_hashes_at_any_block_size() {
        for bs in [1, 16, 100, 512, 700, 2048] {
            let m = BlockMapper::new(bs, 7);
            let a = m.map(&ids(&[10, 11, 12, 13], 512, 2048));
            let b = m.map(&ids(&[10, 11, 99, 98], 512, 2048));
            // Blocks ending before token 1024 agree; every later one differs.
            let shared = (1024 / bs) as usize;
            assert_eq!(a.hashes[..shared], b.hashes[..shared], "bs {bs}");
            assert!(
                a.hashes[shared..]
                    .iter()
                    .zip(&b.hashes[shared..])
                    .all(|(x, y)| x != y),
                "bs {bs}"
            );
            assert_eq!(a.hashes.len(), (2048 / bs) as usize);
        }
        // 16-token blocks: 32 per 512-token id.
        let m = BlockMapper::new(16, 0);
        assert_eq!(m.map(&ids(&[1], 512, 512)).hashes.len(), 32);
    }

    #[test]
    fn tails_are_named_by_content_and_length() {
        let m = BlockMapper::new(16, 0);
        let a = m.map(&ids(&[1, 2], 512, 520));
        let b = m.map(&ids(&[1, 2], 512, 520));
        let c = m.map(&ids(&[1, 2], 512, 521));
        assert_eq!(a, b);
        assert_eq!(a.hashes, c.hashes);
        assert_ne!(a.tail, c.tail);
        // A tail never equals a full block hash.
        let d = m.map(&ids(&[1, 2], 512, 528));
        assert_ne!(a.tail, d.hashes.last().copied());
        // Seeds separate everything.
        assert_ne!(
            BlockMapper::new(16, 1).map(&ids(&[1], 512, 16)).hashes,
            m.map(&ids(&[1], 512, 16)).hashes
        );
    }
}
