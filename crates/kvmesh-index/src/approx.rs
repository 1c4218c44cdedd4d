//! The approximate index, for engines that publish no KV events.
//!
//! Without events the router can only assume: when it sends a request to a worker, that worker
//! will hold the request's prefix blocks for a while. [`ApproxIndex`] records exactly that
//! (device tier) and forgets each entry after a time-to-live, or earliest-first when more than
//! `capacity` (worker, block) entries are held, standing in for the worker's own eviction. It
//! is an estimate: a worker that evicted early is still credited, one that kept blocks longer
//! is not. Dynamo's equivalent is `ApproxKvIndexer`; the TTL and the bound are the two knobs.
//!
//! Time is passed in (milliseconds or any monotone unit): call [`ApproxIndex::expire`] with the
//! current time before lookups; `record_routing` expires too. Real KV events may still be fed
//! through [`PrefixIndex::apply`], for mixed fleets; expiry only touches what routing recorded.

use std::collections::{HashMap, VecDeque};

use kvmesh_core::{KvEvent, SequenceHash, Tier};

use crate::error::IndexConfigError;
use crate::exact::ExactIndex;
use crate::overlap::{OverlapScores, WorkerId};
use crate::stats::IndexStats;
use crate::traits::PrefixIndex;

/// A prefix index learnt from routing decisions, with a TTL and a capacity bound.
#[derive(Debug)]
pub struct ApproxIndex {
    inner: ExactIndex,
    ttl: u64,
    capacity: usize,
    /// Latest expiry of each recorded entry.
    expiry: HashMap<(WorkerId, SequenceHash), u64>,
    /// Recorded entries in the order recorded; superseded ones are skipped when popped.
    queue: VecDeque<(u64, WorkerId, SequenceHash)>,
    expired: u64,
    evicted: u64,
}

impl ApproxIndex {
    /// Entries live `ttl` time units; at most `capacity` (worker, block) entries are kept.
    pub fn new(ttl: u64, capacity: usize) -> Result<Self, IndexConfigError> {
        if ttl == 0 {
            return Err(IndexConfigError::ZeroTtl);
        }
        if capacity == 0 {
            return Err(IndexConfigError::ZeroCapacity);
        }
        Ok(ApproxIndex {
            inner: ExactIndex::new(),
            ttl,
            capacity,
            expiry: HashMap::new(),
            queue: VecDeque::new(),
            expired: 0,
            evicted: 0,
        })
    }

    /// Assumes `worker` holds the blocks of `hashes` from `now` until `now + ttl`.
    pub fn record_routing(&mut self, worker: WorkerId, hashes: &[SequenceHash], now: u64) {
        self.expire(now);
        let until = now.saturating_add(self.ttl);
        let mut parent = None;
        for &hash in hashes {
            self.inner.apply(
                worker,
                &KvEvent::Stored {
                    hash,
                    parent,
                    tier: Tier::Device,
                },
            );
            parent = Some(hash);
            self.expiry.insert((worker, hash), until);
            self.queue.push_back((until, worker, hash));
        }
        while self.expiry.len() > self.capacity {
            if !self.pop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        self.compact();
    }

    /// Drops every entry whose TTL ended at or before `now`.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(until, _, _)) = self.queue.front() {
            if until > now {
                break;
            }
            if self.pop_oldest() {
                self.expired += 1;
            }
        }
    }

    /// Entries dropped by TTL and by the capacity bound so far.
    pub fn forgotten(&self) -> (u64, u64) {
        (self.expired, self.evicted)
    }

    /// Pops the queue's front; returns whether it was a live entry (and removed it).
    fn pop_oldest(&mut self) -> bool {
        while let Some((until, worker, hash)) = self.queue.pop_front() {
            if self.expiry.get(&(worker, hash)) == Some(&until) {
                self.expiry.remove(&(worker, hash));
                self.inner.remove(worker, hash, Tier::Device);
                return true;
            }
        }
        false
    }

    /// Refreshed entries leave superseded queue items behind; rebuild when they dominate.
    fn compact(&mut self) {
        if self.queue.len() > 2 * self.expiry.len() + 1024 {
            let mut live: Vec<_> = self.expiry.iter().map(|(&(w, h), &u)| (u, w, h)).collect();
            live.sort_unstable_by_key(|&(u, w, h)| (u, w, h.as_u128()));
            self.queue = live.into();
        }
    }
}

impl PrefixIndex for ApproxIndex {
    fn apply(&mut self, worker: WorkerId, event: &KvEvent) {
        self.inner.apply(worker, event);
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        self.inner.remove_worker(worker);
        self.expiry.retain(|&(w, _), _| w != worker);
        self.queue.retain(|&(_, w, _)| w != worker);
    }

    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores {
        self.inner.overlaps(hashes)
    }

    fn stats(&self) -> IndexStats {
        self.inner.stats()
    }

    fn memory_usage(&self) -> usize {
        use std::mem::size_of;
        self.inner.memory_usage()
            + self.expiry.capacity() * (size_of::<((WorkerId, SequenceHash), u64)>() + 1)
            + self.queue.capacity() * size_of::<(u64, WorkerId, SequenceHash)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u128) -> SequenceHash {
        SequenceHash::from_u128(i)
    }

    #[test]
    fn routing_is_remembered_until_the_ttl() {
        let mut idx = ApproxIndex::new(100, 1000).unwrap();
        idx.record_routing(WorkerId(1), &[h(1), h(2)], 0);
        assert_eq!(idx.overlaps(&[h(1), h(2)]).get(WorkerId(1)).total(), 2);
        idx.record_routing(WorkerId(1), &[h(1)], 50); // refresh the first block only
        idx.expire(100);
        assert_eq!(idx.overlaps(&[h(1), h(2)]).get(WorkerId(1)).total(), 1);
        idx.expire(150);
        assert!(idx.overlaps(&[h(1)]).is_empty());
        assert_eq!(idx.forgotten(), (2, 0));
        assert_eq!(idx.stats().blocks, 0);
    }

    #[test]
    fn capacity_drops_the_oldest_entries() {
        let mut idx = ApproxIndex::new(1_000, 3).unwrap();
        idx.record_routing(WorkerId(1), &[h(1), h(2)], 0);
        idx.record_routing(WorkerId(2), &[h(1), h(3)], 1);
        assert_eq!(idx.stats().entries, 3);
        assert_eq!(idx.overlaps(&[h(1), h(2)]).get(WorkerId(1)).total(), 0);
        assert_eq!(idx.overlaps(&[h(1), h(3)]).get(WorkerId(2)).total(), 2);
        assert!(ApproxIndex::new(0, 1).is_err());
    }
}
