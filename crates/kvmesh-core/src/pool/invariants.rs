//! A full consistency check of the pool, for tests, fuzzing and debugging.
//!
//! It recomputes every counter from scratch (O(blocks + table entries)), so it is far too slow
//! for a hot path; property tests call it after every operation.

use std::fmt;

use super::{BlockId, BlockPool, NO_BLOCK};

/// A broken pool invariant: a bug in the pool or in an [`crate::EvictionPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation(pub String);

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block pool invariant violated: {}", self.0)
    }
}

impl std::error::Error for InvariantViolation {}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(InvariantViolation(format!($($fmt)+)));
        }
    };
}

impl BlockPool {
    /// Checks that ref counts, the free list, the registry, cached-children counts, eviction
    /// candidates, sequence tables and counters all agree.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let n = self.blocks.len();
        let bs = self.block_size as usize;

        // References held by sequence tables.
        let mut refs = vec![0u32; n];
        let mut used_slots = 0u64;
        for slot in &self.sequences {
            let Some(s) = &slot.state else { continue };
            ensure!(
                s.blocks.len() == s.len.div_ceil(bs),
                "a sequence of {} tokens has {} blocks",
                s.len,
                s.blocks.len()
            );
            ensure!(
                s.registered <= s.len / bs,
                "a sequence registered {} blocks but has only {} full",
                s.registered,
                s.len / bs
            );
            for (i, b) in s.blocks.iter().enumerate() {
                refs[b.index()] += 1;
                let m = &self.blocks[b.index()];
                let expect = (s.len - i * bs).min(bs) as u32;
                ensure!(m.filled == expect, "{b:?} filled {} != {expect}", m.filled);
                if i < s.registered {
                    ensure!(m.registered, "{b:?} in a registered prefix is unregistered");
                    let parent = if i == 0 { NO_BLOCK } else { s.blocks[i - 1].0 };
                    ensure!(m.parent == parent, "{b:?} parent {} != {parent}", m.parent);
                }
            }
        }

        // Free list: unique, unreferenced, unregistered.
        let mut on_free = vec![false; n];
        for b in &self.free {
            ensure!(!on_free[b.index()], "{b:?} twice on the free list");
            on_free[b.index()] = true;
        }

        let mut children = vec![0u32; n];
        for m in self.blocks.iter().filter(|m| m.registered) {
            if m.parent != NO_BLOCK {
                children[m.parent as usize] += 1;
            }
        }

        let (mut active, mut cached, mut evictable) = (0, 0, 0);
        for (i, m) in self.blocks.iter().enumerate() {
            let b = BlockId(i as u32);
            ensure!(
                m.ref_count == refs[i],
                "{b:?} ref count {} but {} table references",
                m.ref_count,
                refs[i]
            );
            ensure!(
                !(on_free[i] && (m.ref_count > 0 || m.registered)),
                "{b:?} is free and referenced or registered"
            );
            ensure!(
                m.cached_children == children[i],
                "{b:?} counts {} cached children, has {}",
                m.cached_children,
                children[i]
            );
            if m.registered {
                ensure!(
                    self.registry.get(&m.hash) == Some(&b),
                    "{b:?} registered under {:?} but the registry disagrees",
                    m.hash
                );
                if m.parent != NO_BLOCK {
                    let p = &self.blocks[m.parent as usize];
                    ensure!(p.registered, "{b:?} is cached but its parent is not");
                    ensure!(
                        m.ref_count == 0 || p.ref_count > 0,
                        "{b:?} is in use but its parent is not"
                    );
                }
            }
            let is_candidate = m.ref_count == 0 && m.registered && m.cached_children == 0;
            ensure!(
                self.policy.contains(b) == is_candidate,
                "{b:?}: policy holds it = {}, evictable = {is_candidate} (tails-first rule)",
                self.policy.contains(b)
            );
            if m.ref_count > 0 {
                active += 1;
                used_slots += u64::from(m.filled);
            } else if m.registered {
                cached += 1;
            } else {
                ensure!(
                    on_free[i],
                    "{b:?} is unreferenced, unregistered and not free"
                );
            }
            evictable += usize::from(is_candidate);
        }
        ensure!(
            self.registry.len() == self.blocks.iter().filter(|m| m.registered).count(),
            "registry has {} entries for fewer registered blocks",
            self.registry.len()
        );
        ensure!(
            active == self.num_active,
            "active {active} != {}",
            self.num_active
        );
        ensure!(
            cached == self.num_cached,
            "cached {cached} != {}",
            self.num_cached
        );
        ensure!(evictable == self.policy.len(), "policy holds extra blocks");
        ensure!(
            self.free.len() + active + cached == n,
            "capacity not conserved: {} free + {active} active + {cached} cached != {n}",
            self.free.len()
        );
        ensure!(
            used_slots == self.stats.used_slots,
            "used slots {used_slots} != counter {}",
            self.stats.used_slots
        );
        Ok(())
    }
}
