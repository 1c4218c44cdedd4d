//! The block record: what a lower tier stores for one KV block, and the checks that every
//! onboard makes before the bytes may enter the pool.
//!
//! Every peer has shipped bugs where a partial or foreign record was served as a hit. Here a
//! record carries everything needed to prove it is the block asked for, computed by the
//! same model:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "kvmeshKV"
//!      8     2  format version (1), little-endian like every field
//!     10     2  flags (0; a reader refuses unknown flags)
//!     12     4  token count T (at most MAX_TOKENS)
//!     16    16  namespace fingerprint (model file, tokenizer, KV dtype, block size, layout, hash seed)
//!     32    16  the block's sequence hash
//!     48    16  its parent's sequence hash (0 with flag bit 0 clear: no parent)
//!     64     8  payload length P (at most MAX_PAYLOAD)
//!     72    16  xxh3-128 of the payload
//!     88  4 T  the block's token ids
//! 88+4T     8  xxh3-64 of bytes 0 .. 88+4T (the header, tokens included)
//! 96+4T     P  the payload (the block's KV bytes, scales included)
//! ```
//!
//! [`decode`] checks, in order: the length is at least the fixed header, magic, version,
//! flags, bounds, the total length is exactly `96 + 4T + P`, the header checksum, the
//! namespace, the hash, the token ids against the request's, the payload length against the
//! expected block size, and the payload checksum. Any failure is a [`RecordError`] and the
//! block is recomputed: a miss is slower, a wrong hit is a correctness bug. The header has
//! its own checksum so a flipped token id or parent is caught without hashing the payload.

use kvmesh_core::SequenceHash;
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

/// The first eight bytes of every record.
pub const MAGIC: [u8; 8] = *b"kvmeshKV";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Most token ids in one record (a block).
pub const MAX_TOKENS: u32 = 4096;
/// Largest payload accepted (64 MiB: far above any one block).
pub const MAX_PAYLOAD: u64 = 64 << 20;
/// Bytes before the token ids.
const FIXED: usize = 88;
/// Flag bit: the block has a parent.
const HAS_PARENT: u16 = 1;

/// What makes KV computed by one deployment usable by another: a record from a different
/// model file, tokenizer, KV dtype, block size, layout or hash seed is never loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Namespace(u128);

/// The parts of a [`Namespace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceParts<'a> {
    /// SHA-256 (hex) of the model file.
    pub model_sha256: &'a str,
    /// An identifier of the tokenizer (its vocabulary hash, say).
    pub tokenizer: &'a str,
    /// The KV element type's name (`f16`, `int8`, ...).
    pub kv_dtype: &'a str,
    /// Tokens per block.
    pub block_size: u32,
    /// The engine's KV layout version inside a block.
    pub layout_version: u32,
    /// The block-hash seed.
    pub hash_seed: u64,
}

impl Namespace {
    /// The fingerprint of `parts` (xxh3-128 over a length-prefixed encoding of each).
    pub fn new(parts: &NamespaceParts<'_>) -> Self {
        let mut h = Xxh3::new();
        for s in [parts.model_sha256, parts.tokenizer, parts.kv_dtype] {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(&parts.block_size.to_le_bytes());
        h.update(&parts.layout_version.to_le_bytes());
        h.update(&parts.hash_seed.to_le_bytes());
        Namespace(h.digest128())
    }

    /// A namespace from its raw fingerprint.
    pub const fn from_u128(v: u128) -> Self {
        Namespace(v)
    }

    /// The raw fingerprint.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

/// Why a record was refused. Every variant means: recompute the block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than its own header says, or than any header.
    #[error("truncated record: {len} bytes, {needed} needed")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// Longer than its header says.
    #[error("record has {extra} bytes past its end")]
    TrailingBytes {
        /// Extra bytes.
        extra: usize,
    },
    /// Not a kvmesh block record.
    #[error("not a kvmesh block record (bad magic)")]
    BadMagic,
    /// Written by another format version.
    #[error("record format version {0}, this build reads {VERSION}")]
    Version(u16),
    /// Unknown flag bits.
    #[error("unknown record flags {0:#06x}")]
    Flags(u16),
    /// A count or length beyond the format's bounds.
    #[error("record field out of bounds: {0}")]
    Bounds(&'static str),
    /// The header (tokens included) does not match its checksum.
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    /// Computed by another model, tokenizer, dtype, block size, layout or seed.
    #[error(
        "record belongs to another namespace (model, tokenizer, KV dtype, block size or layout)"
    )]
    Namespace,
    /// Another block's record.
    #[error("record is for block {found}, not {expected}")]
    Hash {
        /// The hash asked for.
        expected: SequenceHash,
        /// The record's.
        found: SequenceHash,
    },
    /// Same hash, other tokens: a hash collision or a forged record.
    #[error("record's token ids differ from the request's")]
    Tokens,
    /// The payload is not a block of the expected size.
    #[error("record payload of {found} bytes, a block is {expected}")]
    PayloadLength {
        /// Bytes of a block.
        expected: u64,
        /// Bytes in the record.
        found: u64,
    },
    /// The payload does not match its checksum.
    #[error("record payload checksum mismatch")]
    PayloadChecksum,
}

/// What the caller asks for: a record is accepted only if it is exactly this block.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The deployment's namespace.
    pub namespace: Namespace,
    /// The block's sequence hash.
    pub hash: SequenceHash,
    /// The request's token ids for this block.
    pub tokens: &'a [u32],
    /// Bytes of one block's KV.
    pub payload_len: u64,
}

/// A verified record, borrowing the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    /// The parent block's hash, if any.
    pub parent: Option<SequenceHash>,
    /// The block's KV bytes.
    pub payload: &'a [u8],
}

/// Encodes one block's record.
pub fn encode(
    namespace: Namespace,
    hash: SequenceHash,
    parent: Option<SequenceHash>,
    tokens: &[u32],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        tokens.len() as u64 <= u64::from(MAX_TOKENS),
        "more tokens than a record holds"
    );
    assert!(
        payload.len() as u64 <= MAX_PAYLOAD,
        "payload larger than a record holds"
    );
    let mut out = Vec::with_capacity(FIXED + 4 * tokens.len() + 8 + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let flags = if parent.is_some() { HAS_PARENT } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    out.extend_from_slice(&namespace.0.to_le_bytes());
    out.extend_from_slice(&hash.as_u128().to_le_bytes());
    out.extend_from_slice(&parent.map_or(0, SequenceHash::as_u128).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_128(payload).to_le_bytes());
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    let header_sum = xxh3_64(&out);
    out.extend_from_slice(&header_sum.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn u128_at(b: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Decodes and verifies `bytes` against what the caller expects; see the module docs for
/// the checks. Never panics, whatever the bytes.
pub fn decode<'a>(bytes: &'a [u8], expected: &Expected<'_>) -> Result<Verified<'a>, RecordError> {
    if bytes.len() < FIXED {
        return Err(RecordError::Truncated {
            len: bytes.len(),
            needed: FIXED,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = u16_at(bytes, 8);
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let flags = u16_at(bytes, 10);
    if flags & !HAS_PARENT != 0 {
        return Err(RecordError::Flags(flags));
    }
    let token_count = u32_at(bytes, 12);
    if token_count > MAX_TOKENS {
        return Err(RecordError::Bounds("token count"));
    }
    let payload_len = u64_at(bytes, 64);
    if payload_len > MAX_PAYLOAD {
        return Err(RecordError::Bounds("payload length"));
    }
    let tokens_end = FIXED + 4 * token_count as usize;
    let payload_start = tokens_end + 8;
    let needed = payload_start + payload_len as usize;
    if bytes.len() < needed {
        return Err(RecordError::Truncated {
            len: bytes.len(),
            needed,
        });
    }
    if bytes.len() > needed {
        return Err(RecordError::TrailingBytes {
            extra: bytes.len() - needed,
        });
    }
    if xxh3_64(&bytes[..tokens_end]) != u64_at(bytes, tokens_end) {
        return Err(RecordError::HeaderChecksum);
    }
    if u128_at(bytes, 16) != expected.namespace.0 {
        return Err(RecordError::Namespace);
    }
    let found = SequenceHash::from_u128(u128_at(bytes, 32));
    if found != expected.hash {
        return Err(RecordError::Hash {
            expected: expected.hash,
            found,
        });
    }
    let tokens_match = expected.tokens.len() == token_count as usize
        && bytes[FIXED..tokens_end]
            .chunks_exact(4)
            .zip(expected.tokens)
            .all(|(b, &t)| b == t.to_le_bytes());
    if !tokens_match {
        return Err(RecordError::Tokens);
    }
    if payload_len != expected.payload_len {
        return Err(RecordError::PayloadLength {
            expected: expected.payload_len,
            found: payload_len,
        });
    }
    let payload = &bytes[payload_start..];
    if xxh3_128(payload) != u128_at(bytes, 72) {
        return Err(RecordError::PayloadChecksum);
    }
    let parent = (flags & HAS_PARENT != 0).then(|| SequenceHash::from_u128(u128_at(bytes, 48)));
    Ok(Verified { parent, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PARTS: NamespaceParts<'static> = NamespaceParts {
        model_sha256: "abc",
        tokenizer: "bpe",
        kv_dtype: "f16",
        block_size: 4,
        layout_version: 1,
        hash_seed: 0,
    };

    fn ns() -> Namespace {
        Namespace::new(&PARTS)
    }

    fn h(v: u128) -> SequenceHash {
        SequenceHash::from_u128(v)
    }

    #[test]
    fn round_trip_and_each_mismatch_is_named() {
        let tokens = [1, 2, 3, 4];
        let payload = vec![7u8; 64];
        let rec = encode(ns(), h(10), Some(h(9)), &tokens, &payload);
        let want = Expected {
            namespace: ns(),
            hash: h(10),
            tokens: &tokens,
            payload_len: 64,
        };
        let v = decode(&rec, &want).unwrap();
        assert_eq!(v.parent, Some(h(9)));
        assert_eq!(v.payload, &payload[..]);

        let other_ns = Namespace::new(&NamespaceParts {
            kv_dtype: "int8",
            ..PARTS
        });
        assert_ne!(other_ns, ns());
        let e = |w: Expected<'_>| decode(&rec, &w).unwrap_err();
        assert_eq!(
            e(Expected {
                namespace: other_ns,
                ..want
            }),
            RecordError::Namespace
        );
        assert!(matches!(
            e(Expected {
                hash: h(11),
                ..want
            }),
            RecordError::Hash { .. }
        ));
        assert_eq!(
            e(Expected {
                tokens: &[1, 2, 3, 5],
                ..want
            }),
            RecordError::Tokens
        );
        assert_eq!(
            e(Expected {
                tokens: &[1, 2, 3],
                ..want
            }),
            RecordError::Tokens
        );
        assert!(matches!(
            e(Expected {
                payload_len: 65,
                ..want
            }),
            RecordError::PayloadLength { .. }
        ));
        assert!(matches!(
            decode(&rec[..rec.len() - 1], &want),
            Err(RecordError::Truncated { .. })
        ));
        let mut longer = rec.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer, &want),
            Err(RecordError::TrailingBytes { extra: 1 })
        );
        assert!(matches!(
            decode(&[], &want),
            Err(RecordError::Truncated { .. })
        ));
        let root = encode(ns(), h(10), None, &tokens, &payload);
        assert_eq!(decode(&root, &want).unwrap().parent, None);
    }

    proptest! {
        #[test]
        fn any_flipped_byte_is_refused(
            tokens in proptest::collection::vec(any::<u32>(), 0..20),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            parent in proptest::option::of(any::<u128>()),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let rec = encode(ns(), h(5), parent.map(h), &tokens, &payload);
            let want = Expected { namespace: ns(), hash: h(5), tokens: &tokens, payload_len: payload.len() as u64 };
            prop_assert!(decode(&rec, &want).is_ok());
            let mut bad = rec.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(decode(&bad, &want).is_err(), "flip at byte {} bit {} accepted", i, bit);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let want = Expected { namespace: ns(), hash: h(5), tokens: &[], payload_len: 0 };
            let _ = decode(&bytes, &want);
        }
    }
}
