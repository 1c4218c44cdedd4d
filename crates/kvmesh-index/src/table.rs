//! The block table: open addressing with linear probing, one 16-byte slot `(key, value)` per
//! bucket and no separate control bytes, so a probe touches one cache line where a hashbrown
//! table touches two (its control bytes and its buckets live apart: two dependent misses per
//! lookup on a large table). Keys are uniform 64-bit hashes; the home bucket is the key scaled
//! to the table length (`key * len >> 64`), so the length need not be a power of two and the
//! table grows by 1.5x. Values are never 0; a 0 value marks an empty bucket. Removal shifts the
//! following entries back (no tombstones), so memory and probe lengths follow the live content.
//!
//! The table grows by 1.5x past 5/8 full and shrinks (to half full) below 1/4 full: 25.6-38.4
//! bytes per live key between growth steps (up to 64 just above the shrink threshold), so at a
//! steady live size its memory depends on history by up to one 1.5x step. `retain_mut` (used by `Cleared` and worker removal) rebuilds the table when it removed
//! anything.

/// Most buckets in use before the table grows (5/8: short probe sequences, also for absent keys).
const MAX_LOAD_NUM: usize = 5;
const MAX_LOAD_DEN: usize = 8;
const MIN_LEN: usize = 16;

/// Where [`Table::search`] would put an absent key (`None`: the table has no buckets yet).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vacancy(Option<usize>);

#[derive(Debug, Default)]
pub(crate) struct Table {
    slots: Vec<(u64, u64)>,
    len: usize,
}

impl Table {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u64, u64)>()
    }

    fn home(&self, key: u64) -> usize {
        ((u128::from(key) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The bucket holding `key`, or the empty bucket where it would go.
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mut i = self.home(key);
        loop {
            let (k, v) = self.slots[i];
            if v == 0 {
                return Err(i);
            }
            if k == key {
                return Ok(i);
            }
            i = self.next(i);
        }
    }

    /// Starts loading `key`'s home bucket into cache.
    #[inline]
    pub(crate) fn prefetch(&self, key: u64) {
        if let Some(b) = self.slots.get(self.home(key)) {
            crate::prefetch::prefetch(b);
        }
    }

    /// [`Table::prefetch`], plus the next cache line when the home bucket ends its line: a store
    /// probing for a vacancy, or a removal shifting its cluster back, is likely to read it. (For
    /// lookups of present keys the second line is mostly wasted: it measured slower there.)
    #[inline]
    pub(crate) fn prefetch_for_update(&self, key: u64) {
        let home = self.home(key);
        if let Some(b) = self.slots.get(home) {
            crate::prefetch::prefetch(b);
            if (b as *const (u64, u64) as usize) % 64 == 48 {
                if let Some(n) = self.slots.get(home + 1) {
                    crate::prefetch::prefetch(n);
                }
            }
        }
    }

    pub(crate) fn get(&self, key: u64) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(key).ok().map(|i| self.slots[i].1)
    }

    /// The bucket index of `key`, if present (valid until the next insert or removal).
    pub(crate) fn find(&self, key: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.probe(key).ok()
    }

    /// `Ok(bucket)` of `key` if present, else `Err(vacancy)` to pass to [`Table::insert_at`]
    /// (both valid until the next insert or removal).
    pub(crate) fn search(&self, key: u64) -> Result<usize, Vacancy> {
        if self.slots.is_empty() {
            return Err(Vacancy(None));
        }
        self.probe(key).map_err(|i| Vacancy(Some(i)))
    }

    /// Inserts `key`, absent, with `value` (not 0), where [`Table::search`] found no entry: one
    /// probe sequence for a lookup and an insert, unless the table must grow first.
    pub(crate) fn insert_at(&mut self, vacancy: Vacancy, key: u64, value: u64) {
        match vacancy.0 {
            Some(i) if (self.len + 1) * MAX_LOAD_DEN <= self.slots.len() * MAX_LOAD_NUM => {
                debug_assert!(value != 0 && self.slots[i].1 == 0);
                self.slots[i] = (key, value);
                self.len += 1;
            }
            _ => self.insert_new(key, value),
        }
    }

    pub(crate) fn value_mut(&mut self, i: usize) -> &mut u64 {
        &mut self.slots[i].1
    }

    /// Inserts `key` (absent) with `value` (not 0).
    pub(crate) fn insert_new(&mut self, key: u64, value: u64) {
        debug_assert!(value != 0);
        if self.slots.is_empty() {
            self.slots = vec![(0, 0); MIN_LEN];
        } else if (self.len + 1) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
            self.rebuild(self.slots.len() + self.slots.len() / 2);
        }
        let i = match self.probe(key) {
            Ok(i) | Err(i) => i,
        };
        self.slots[i] = (key, value);
        self.len += 1;
    }

    /// Empties bucket `i`, shifting later entries of its cluster back, and shrinks the table
    /// when it is under a quarter full.
    pub(crate) fn remove_at(&mut self, mut i: usize) {
        self.len -= 1;
        let mut j = i;
        loop {
            j = self.next(j);
            let (k, v) = self.slots[j];
            if v == 0 {
                break;
            }
            let h = self.home(k);
            // The entry at j may move to i unless its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < h && h <= j
            } else {
                i < h || h <= j
            };
            if !stays {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = (0, 0);
        self.shrink_if_sparse();
    }

    fn shrink_if_sparse(&mut self) {
        if self.len == 0 || (self.slots.len() > 64 && self.len < self.slots.len() / 4) {
            self.rebuild((self.len * 2).max(MIN_LEN));
        }
    }

    /// Applies `f` to every value; entries whose value `f` sets to 0 are removed.
    pub(crate) fn retain_mut(&mut self, mut f: impl FnMut(&mut u64)) {
        let mut removed = false;
        for (_, v) in self.slots.iter_mut().filter(|(_, v)| *v != 0) {
            f(v);
            if *v == 0 {
                removed = true;
                self.len -= 1;
            }
        }
        if removed {
            // Emptied buckets broke probe sequences: re-place everything.
            let n = if self.len < self.slots.len() / 4 {
                (self.len * 2).max(MIN_LEN)
            } else {
                self.slots.len()
            };
            self.rebuild(n);
        }
    }

    /// Re-places every entry in `n` buckets; an empty table gives its memory back.
    fn rebuild(&mut self, n: usize) {
        if self.len == 0 && n <= MIN_LEN {
            self.slots = Vec::new();
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![(0, 0); n]);
        for (k, v) in old {
            if v != 0 {
                let i = match self.probe(k) {
                    Ok(i) | Err(i) => i,
                };
                self.slots[i] = (k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hash_map_under_churn() {
        let mut t = Table::default();
        let mut m = HashMap::new();
        let mut x = 0x1234_5678_9abc_def0u64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A small key space (with clustered keys) forces hits, removals and wrap-around.
            let key = if step.is_multiple_of(3) {
                x % 512
            } else {
                ((x % 4096) << 52) | (x % 7)
            };
            match t.search(key) {
                Ok(i) if x.is_multiple_of(2) => {
                    t.remove_at(i);
                    m.remove(&key);
                }
                Ok(i) => *t.value_mut(i) = step + 1,
                Err(vacancy) => {
                    if x.is_multiple_of(5) {
                        t.insert_new(key, step + 1);
                    } else {
                        t.insert_at(vacancy, key, step + 1);
                    }
                    m.insert(key, step + 1);
                }
            }
            if let Some(i) = t.find(key) {
                m.insert(key, t.slots[i].1);
            }
            if step.is_multiple_of(50_000) {
                t.retain_mut(|v| {
                    if v.is_multiple_of(3) {
                        *v = 0;
                    }
                });
                m.retain(|_, v| !v.is_multiple_of(3));
            }
            assert_eq!(t.len(), m.len());
        }
        for (&k, &v) in &m {
            assert_eq!(t.get(k), Some(v));
        }
        t.retain_mut(|v| *v = 0);
        assert_eq!((t.len(), t.heap_bytes()), (0, 0));
    }
}
