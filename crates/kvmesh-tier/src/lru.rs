//! Byte-bounded least-recently-used bookkeeping shared by the stores: which keys are held,
//! their sizes, and which to evict next. O(log n) per touch (a `BTreeMap` ordered by a
//! monotonic tick), no unsafe linked list.

use std::collections::{BTreeMap, HashMap};

use kvmesh_core::SequenceHash;

#[derive(Debug, Default)]
pub(crate) struct Lru {
    entries: HashMap<SequenceHash, (u64, u64)>, // key -> (size, tick)
    order: BTreeMap<u64, SequenceHash>,
    tick: u64,
    used: u64,
}

impl Lru {
    /// Records `key` of `size` bytes as most recently used; returns its old size if known.
    pub(crate) fn insert(&mut self, key: SequenceHash, size: u64) -> Option<u64> {
        let old = self.remove(key);
        self.tick += 1;
        self.entries.insert(key, (size, self.tick));
        self.order.insert(self.tick, key);
        self.used += size;
        old
    }

    /// Marks `key` most recently used; false if unknown.
    pub(crate) fn touch(&mut self, key: SequenceHash) -> bool {
        let Some((size, _)) = self.entries.get(&key).copied() else {
            return false;
        };
        self.insert(key, size);
        true
    }

    /// Forgets `key`; its size if known.
    pub(crate) fn remove(&mut self, key: SequenceHash) -> Option<u64> {
        let (size, tick) = self.entries.remove(&key)?;
        self.order.remove(&tick);
        self.used -= size;
        Some(size)
    }

    /// Forgets least recently used keys, never `keep`, until at most `capacity` bytes are
    /// held; returns them, oldest first, for the caller to drop their bytes.
    pub(crate) fn evict_over(
        &mut self,
        capacity: u64,
        keep: Option<SequenceHash>,
    ) -> Vec<SequenceHash> {
        let mut evicted = Vec::new();
        while self.used > capacity {
            let Some(victim) = self.order.values().copied().find(|&k| Some(k) != keep) else {
                break;
            };
            self.remove(victim);
            evicted.push(victim);
        }
        evicted
    }

    pub(crate) fn contains(&self, key: SequenceHash) -> bool {
        self.entries.contains_key(&key)
    }

    pub(crate) fn keys(&self) -> Vec<SequenceHash> {
        self.entries.keys().copied().collect()
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }
}
