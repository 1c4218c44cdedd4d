//! The set of workers (and their tiers) holding one block: tiny, sorted, allocation-free for
//! the common case of a single holder.
//!
//! Most blocks in a fleet sit on one worker (KV-aware routing keeps prefixes together); a
//! shared system prompt may sit on all of them. So the set is an enum: one inline pair (no
//! heap; the enum is 24 bytes, the size of a `Vec`) or a sorted `Vec`. Sorted by worker id, two
//! sets intersect by a linear merge, which is what prefix lookups do block after block.

use crate::overlap::{TierMask, WorkerId};

/// A worker and the tiers it holds the block on.
pub(crate) type Holder = (WorkerId, TierMask);

#[derive(Debug, Clone)]
pub(crate) enum WorkerSet {
    One(Holder),
    /// Sorted by worker id; never holds exactly one element (that is `One`).
    Many(Vec<Holder>),
}

impl WorkerSet {
    pub(crate) fn as_slice(&self) -> &[Holder] {
        match self {
            WorkerSet::One(pair) => std::slice::from_ref(pair),
            WorkerSet::Many(v) => v,
        }
    }

    pub(crate) fn get(&self, worker: WorkerId) -> TierMask {
        let s = self.as_slice();
        s.binary_search_by_key(&worker, |&(w, _)| w)
            .map(|i| s[i].1)
            .unwrap_or(TierMask::EMPTY)
    }

    /// Sets the worker's mask; an empty mask removes the worker. Returns the previous mask.
    pub(crate) fn set(&mut self, worker: WorkerId, mask: TierMask) -> TierMask {
        match self {
            WorkerSet::One((w, m)) if *w == worker => {
                let old = *m;
                if mask.is_empty() {
                    *self = WorkerSet::Many(Vec::new());
                } else {
                    *m = mask;
                }
                old
            }
            WorkerSet::One(pair) => {
                if !mask.is_empty() {
                    let mut v = vec![*pair, (worker, mask)];
                    v.sort_by_key(|&(w, _)| w);
                    *self = WorkerSet::Many(v);
                }
                TierMask::EMPTY
            }
            WorkerSet::Many(v) => match v.binary_search_by_key(&worker, |&(w, _)| w) {
                Ok(i) => {
                    let old = v[i].1;
                    if mask.is_empty() {
                        v.remove(i);
                        if v.len() == 1 {
                            *self = WorkerSet::One(v[0]);
                        }
                    } else {
                        v[i].1 = mask;
                    }
                    old
                }
                Err(i) => {
                    if !mask.is_empty() {
                        if v.is_empty() {
                            *self = WorkerSet::One((worker, mask));
                        } else {
                            v.insert(i, (worker, mask));
                        }
                    }
                    TierMask::EMPTY
                }
            },
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, WorkerSet::Many(v) if v.is_empty())
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            WorkerSet::One(_) => 0,
            WorkerSet::Many(v) => v.capacity() * std::mem::size_of::<Holder>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_core::Tier;

    #[test]
    fn grows_shrinks_and_stays_sorted() {
        let d = TierMask::of(Tier::Device);
        let mut s = WorkerSet::One((WorkerId(5), d));
        assert_eq!(s.set(WorkerId(2), d), TierMask::EMPTY);
        assert_eq!(s.set(WorkerId(9), d), TierMask::EMPTY);
        let ids: Vec<u32> = s.as_slice().iter().map(|(w, _)| w.0).collect();
        assert_eq!(ids, [2, 5, 9]);
        assert_eq!(s.set(WorkerId(5), TierMask::EMPTY), d);
        assert_eq!(s.set(WorkerId(2), TierMask::EMPTY), d);
        assert!(matches!(s, WorkerSet::One((WorkerId(9), _))));
        s.set(WorkerId(9), TierMask::EMPTY);
        assert!(s.is_empty());
        s.set(WorkerId(1), d);
        assert!(matches!(s, WorkerSet::One((WorkerId(1), _))));
        assert_eq!(std::mem::size_of::<WorkerSet>(), 24);
    }
}
