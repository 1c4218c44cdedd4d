//! The host-memory tier: records in a byte-bounded map with LRU eviction.
//!
//! Each record is one heap allocation of exactly its size, so the bound is on the bytes
//! held (plus a small per-entry overhead the bound does not count). A slab arena of fixed
//! block slots would avoid allocator work per offload; with records of one size per
//! deployment the allocator's size classes already reuse freed blocks, and that is left for
//! when a measurement says it matters.

use std::collections::HashMap;

use kvmesh_core::{SequenceHash, Tier};

use crate::lru::Lru;
use crate::storage::{check_fits, PutOutcome, Storage, StorageError};

/// Records in host memory, at most `capacity` bytes.
#[derive(Debug)]
pub struct HostStore {
    records: HashMap<SequenceHash, Vec<u8>>,
    lru: Lru,
    capacity: u64,
}

impl HostStore {
    /// An empty store holding at most `capacity` bytes of records.
    pub fn new(capacity: u64) -> Self {
        HostStore {
            records: HashMap::new(),
            lru: Lru::default(),
            capacity,
        }
    }
}

impl Storage for HostStore {
    fn tier(&self) -> Tier {
        Tier::Host
    }

    fn put(&mut self, key: SequenceHash, record: &[u8]) -> Result<PutOutcome, StorageError> {
        let size = record.len() as u64;
        check_fits(size, self.capacity)?;
        let replaced = self.lru.insert(key, size).is_some();
        self.records.insert(key, record.to_vec());
        let evicted = self.lru.evict_over(self.capacity, Some(key));
        for victim in &evicted {
            self.records.remove(victim);
        }
        Ok(PutOutcome { evicted, replaced })
    }

    fn get(&mut self, key: SequenceHash) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.lru.touch(key) {
            return Ok(None);
        }
        Ok(self.records.get(&key).cloned())
    }

    fn contains(&self, key: SequenceHash) -> bool {
        self.lru.contains(key)
    }

    fn remove(&mut self, key: SequenceHash) -> Result<bool, StorageError> {
        self.records.remove(&key);
        Ok(self.lru.remove(key).is_some())
    }

    fn list(&self) -> Vec<SequenceHash> {
        self.lru.keys()
    }

    fn used_bytes(&self) -> u64 {
        self.lru.used()
    }

    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
}
