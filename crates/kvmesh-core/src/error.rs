//! Error types of kvmesh-core.
//!
//! Build-time errors ([`ConfigError`], [`GeometryError`]) are kept apart from run-time ones
//! ([`PoolError`]): the first means "fix your settings", the second "this operation could not
//! be done now". Every variant carries the numbers needed to act on it.

use thiserror::Error;

use crate::pool::SequenceId;

/// A model geometry or `config.json` that cannot describe a KV cache.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// A count that must be positive is zero.
    #[error("{field} must be at least 1")]
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// Query heads must be shared evenly among KV heads.
    #[error("{query_heads} query heads cannot be shared evenly by {kv_heads} KV heads")]
    HeadsNotDivisible {
        /// Query (attention) heads.
        query_heads: u32,
        /// Key/value heads.
        kv_heads: u32,
    },
    /// The dtype name is not one kvmesh knows.
    #[error("unknown KV dtype '{0}': use f32, f16, bf16, fp8, int8 or int4")]
    UnknownDtype(String),
    /// `config.json` is not valid JSON.
    #[error("line {line}, column {column}: invalid JSON: {message}")]
    ConfigSyntax {
        /// 1-based line of the error.
        line: usize,
        /// Column of the error as serde_json counts it: 1-based, or 0 when the error is at
        /// the start of a line (an unexpected end of input after a newline).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// `config.json` is valid JSON but not an object.
    #[error("expected a JSON object at the top level")]
    ConfigNotObject,
    /// A field the geometry needs is absent.
    #[error("missing field '{field}' (also looked for {aliases:?})")]
    MissingField {
        /// The Hugging Face name of the field.
        field: &'static str,
        /// Other names accepted for it.
        aliases: &'static [&'static str],
    },
    /// A field has a value of the wrong type or range.
    #[error("field '{field}' is {value}, expected {expected}")]
    InvalidField {
        /// The field name.
        field: &'static str,
        /// The value found, as JSON.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
}

/// Settings that cannot build a block pool.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A pool needs at least one block.
    #[error("the pool needs at least one block")]
    ZeroBlocks,
    /// Blocks need at least one token slot.
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,
    /// More blocks than a [`crate::BlockId`] can address.
    #[error("{requested} blocks requested; at most {max} are addressable")]
    TooManyBlocks {
        /// Blocks asked for.
        requested: usize,
        /// The addressable maximum.
        max: usize,
    },
}

/// An operation on the block pool that could not be done.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Not enough blocks, even after evicting every evictable cached block. Nothing changed.
    #[error(
        "out of KV blocks: {requested} needed, {free} free and {evictable} evictable; \
         finish or preempt a sequence, or give the pool more blocks"
    )]
    OutOfBlocks {
        /// Blocks the operation needed.
        requested: usize,
        /// Blocks on the free list.
        free: usize,
        /// Cached blocks that could have been evicted.
        evictable: usize,
    },
    /// The sequence id is not live (released already, or from another pool).
    #[error("unknown sequence {0:?}: it was released or never existed")]
    UnknownSequence(SequenceId),
    /// Registering a block that is not full yet, or beyond the sequence's end.
    #[error(
        "sequence {sequence:?} has {full_blocks} full blocks and {registered} registered; \
         cannot register {requested} more"
    )]
    NotFull {
        /// The sequence.
        sequence: SequenceId,
        /// Its full blocks.
        full_blocks: usize,
        /// Blocks already registered.
        registered: usize,
        /// Blocks asked to register.
        requested: usize,
    },
    /// `commit_blocks` named a block with a hash other than the one it is registered under.
    #[error(
        "block {block_index} of sequence {sequence:?} is already registered under another hash; \
         forks of one sequence must commit the same hashes"
    )]
    HashConflict {
        /// The sequence.
        sequence: SequenceId,
        /// Position of the block in its block table.
        block_index: usize,
    },
    /// A sequence longer than the pool could ever address.
    #[error("sequence length {requested} tokens overflows the pool's limits")]
    TooLong {
        /// Tokens asked for.
        requested: usize,
    },
}
