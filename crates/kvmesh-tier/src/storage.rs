//! The `Storage` trait: a bounded store of block records keyed by sequence hash.
//!
//! A store holds opaque record bytes ([`crate::record`] makes and checks them); it does not
//! trust or interpret them, and a reader verifies every record it gets back. Stores are
//! bounded in bytes and evict least recently used records to make room; `put` reports what
//! it evicted so the caller can publish `Removed` events for that tier. Methods take
//! `&mut self`: a store belongs to one owner (the tier engine's IO thread), which keeps the
//! implementations free of locks; batch forms exist so a backend with per-call costs (files,
//! a network) can amortise them.

use kvmesh_core::{SequenceHash, Tier};
use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// One record is larger than the whole store.
    #[error("a record of {size} bytes does not fit a store of {capacity} bytes")]
    TooLarge {
        /// The record's size.
        size: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// The backend's IO failed.
    #[error("storage IO on {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// `Ok` when a record of `size` bytes can fit a store of `capacity` bytes at all.
pub(crate) fn check_fits(size: u64, capacity: u64) -> Result<(), StorageError> {
    if size > capacity {
        return Err(StorageError::TooLarge { size, capacity });
    }
    Ok(())
}

/// What a successful `put` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Records evicted to make room (least recently used first).
    pub evicted: Vec<SequenceHash>,
    /// Whether the key was already stored (its record was replaced).
    pub replaced: bool,
}

/// A bounded store of block records.
pub trait Storage: Send {
    /// The tier this store serves.
    fn tier(&self) -> Tier;

    /// Stores `record` under `key`, evicting least recently used records while over
    /// capacity. The record is visible to `get` only once the call returned `Ok`.
    fn put(&mut self, key: SequenceHash, record: &[u8]) -> Result<PutOutcome, StorageError>;

    /// The record under `key`, if stored (and marks it recently used). A record that
    /// vanished from the backend is `Ok(None)` and forgotten.
    fn get(&mut self, key: SequenceHash) -> Result<Option<Vec<u8>>, StorageError>;

    /// Whether `key` is stored (no recency update).
    fn contains(&self, key: SequenceHash) -> bool;

    /// Removes `key`; whether it was stored.
    fn remove(&mut self, key: SequenceHash) -> Result<bool, StorageError>;

    /// Every stored key (any order).
    fn list(&self) -> Vec<SequenceHash>;

    /// Bytes of records stored.
    fn used_bytes(&self) -> u64;

    /// The bound on [`used_bytes`](Self::used_bytes).
    fn capacity_bytes(&self) -> u64;

    /// [`put`](Self::put) for several records, in order; stops at the first error.
    fn put_batch(&mut self, records: &[(SequenceHash, &[u8])]) -> Result<PutOutcome, StorageError> {
        let mut all = PutOutcome::default();
        for &(key, record) in records {
            let out = self.put(key, record)?;
            all.evicted.extend(out.evicted);
            all.replaced |= out.replaced;
        }
        Ok(all)
    }

    /// [`get`](Self::get) for several keys, in order.
    fn get_batch(&mut self, keys: &[SequenceHash]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        keys.iter().map(|&k| self.get(k)).collect()
    }
}
