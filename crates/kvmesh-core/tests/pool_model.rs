//! Differential property test: random operation sequences run through [`BlockPool`] and a
//! clean-room reference model must give the same results, the same KV events in the same
//! order and the same counters, and the pool must pass `check_invariants` after every step.
//!
//! The reference keeps no free list, no candidate set and no counters: it recomputes
//! everything by scanning plain vectors, which is slow and obviously right. Eviction picks the
//! candidate (unreferenced, registered, no registered child) with the smallest policy key.
//! Physical block ids differ between the two (the reference allocates any free block), so
//! only id-free observations are compared.

use std::collections::HashMap;

use kvmesh_core::{
    BlockHasher, BlockPool, EvictionCandidate, EvictionPolicy, EvictionPolicyKind, ExtraKeys,
    KvEvent, PoolError, SequenceHash, SequenceId, Tier,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct RefBlock {
    refs: u32,
    hash: Option<SequenceHash>,
    parent: Option<SequenceHash>,
    last_access: u64,
    hits: u32,
    filled: usize,
}

#[derive(Debug, Clone)]
struct RefSeq {
    blocks: Vec<usize>,
    len: usize,
    registered: usize,
}

/// The reference pool: plain vectors and linear scans.
struct RefPool {
    bs: usize,
    lfu: bool,
    blocks: Vec<RefBlock>,
    seqs: HashMap<u32, RefSeq>,
    next_seq: u32,
    clock: u64,
    events: Vec<KvEvent>,
    hits: (u64, u64),
    stored: u64,
    evicted: u64,
    deduplicated: u64,
    cow: u64,
}

impl RefPool {
    fn new(n: usize, bs: usize, lfu: bool) -> Self {
        let blank = RefBlock {
            refs: 0,
            hash: None,
            parent: None,
            last_access: 0,
            hits: 0,
            filled: 0,
        };
        RefPool {
            bs,
            lfu,
            blocks: vec![blank; n],
            seqs: HashMap::new(),
            next_seq: 0,
            clock: 0,
            events: Vec::new(),
            hits: (0, 0),
            stored: 0,
            evicted: 0,
            deduplicated: 0,
            cow: 0,
        }
    }

    fn lookup(&self, h: SequenceHash) -> Option<usize> {
        self.blocks.iter().position(|b| b.hash == Some(h))
    }

    fn is_free(&self, i: usize) -> bool {
        self.blocks[i].refs == 0 && self.blocks[i].hash.is_none()
    }

    fn is_candidate(&self, i: usize) -> bool {
        let b = &self.blocks[i];
        b.refs == 0
            && b.hash.is_some()
            && !self
                .blocks
                .iter()
                .any(|c| c.hash.is_some() && c.parent == b.hash)
    }

    fn available(&self) -> usize {
        self.blocks.iter().filter(|b| b.refs == 0).count()
    }

    fn allocate(&mut self) -> usize {
        let i = match (0..self.blocks.len()).find(|&i| self.is_free(i)) {
            Some(i) => i,
            None => {
                let victim = (0..self.blocks.len())
                    .filter(|&i| self.is_candidate(i))
                    .min_by_key(|&i| {
                        let b = &self.blocks[i];
                        if self.lfu {
                            (u64::from(b.hits), b.last_access)
                        } else {
                            (0, b.last_access)
                        }
                    })
                    .expect("availability checked");
                let hash = self.blocks[victim].hash.take().unwrap();
                self.blocks[victim].parent = None;
                self.evicted += 1;
                self.events.push(KvEvent::Removed {
                    hash,
                    tier: Tier::Device,
                });
                victim
            }
        };
        let b = &mut self.blocks[i];
        *b = RefBlock {
            refs: 1,
            hash: None,
            parent: None,
            last_access: self.clock,
            hits: 0,
            filled: 0,
        };
        i
    }

    fn unpin(&mut self, i: usize) {
        let b = &mut self.blocks[i];
        b.refs -= 1;
        b.last_access = self.clock;
        if b.refs == 0 && b.hash.is_none() {
            b.filled = 0;
        }
    }

    fn pin(&mut self, i: usize) {
        self.blocks[i].refs += 1;
        self.blocks[i].last_access = self.clock;
    }

    fn match_prefix(&mut self, hashes: &[SequenceHash], tokens: usize) -> (u32, usize) {
        self.clock += 1;
        let mut blocks = Vec::new();
        for &h in hashes {
            let Some(i) = self.lookup(h) else { break };
            self.pin(i);
            self.blocks[i].hits += 1;
            blocks.push(i);
        }
        let n = blocks.len();
        if !hashes.is_empty() || tokens > 0 {
            self.hits.0 += hashes.len() as u64;
            self.hits.1 += n as u64;
        }
        let id = self.next_seq;
        self.next_seq += 1;
        self.seqs.insert(
            id,
            RefSeq {
                blocks,
                len: n * self.bs,
                registered: n,
            },
        );
        (id, n)
    }

    /// Returns Err(()) when out of blocks, else whether a copy-on-write happened (and slots).
    fn append(&mut self, id: u32, tokens: usize) -> Result<Option<usize>, ()> {
        self.clock += 1;
        let s = self.seqs[&id].clone();
        let partial = s.len % self.bs;
        let cow = tokens > 0 && partial != 0 && self.blocks[*s.blocks.last().unwrap()].refs > 1;
        let new_len = s.len + tokens;
        let new_blocks = new_len.div_ceil(self.bs) - s.blocks.len();
        if new_blocks + usize::from(cow) > self.available() {
            return Err(());
        }
        let mut table = s.blocks.clone();
        if cow {
            let dst = self.allocate();
            let src = table.pop().unwrap();
            self.unpin(src);
            table.push(dst);
            self.cow += 1;
        }
        for _ in 0..new_blocks {
            let b = self.allocate();
            table.push(b);
        }
        for (k, &b) in table.iter().enumerate().skip(s.len / self.bs) {
            self.blocks[b].filled = (new_len - k * self.bs).min(self.bs);
        }
        let seq = self.seqs.get_mut(&id).unwrap();
        seq.blocks = table;
        seq.len = new_len;
        Ok(cow.then_some(partial))
    }

    fn commit(&mut self, id: u32, hashes: &[SequenceHash]) -> usize {
        self.clock += 1;
        let s = self.seqs[&id].clone();
        assert!(hashes.len() <= s.len / self.bs);
        let mut table = s.blocks.clone();
        for (i, &h) in hashes.iter().enumerate().skip(s.registered) {
            let own = table[i];
            match self.lookup(h) {
                Some(twin) if twin == own => {}
                Some(twin) => {
                    // Every sequence holding `own` at this position moves to the twin.
                    self.seqs.get_mut(&id).unwrap().blocks = table.clone();
                    let mut sharers: Vec<u32> = self
                        .seqs
                        .iter()
                        .filter(|(_, s)| s.blocks.get(i) == Some(&own))
                        .map(|(&k, _)| k)
                        .collect();
                    sharers.sort();
                    for k in sharers {
                        self.pin(twin);
                        self.blocks[twin].hits += 1;
                        self.seqs.get_mut(&k).unwrap().blocks[i] = twin;
                        self.unpin(own);
                        self.deduplicated += 1;
                    }
                    table = self.seqs[&id].blocks.clone();
                }
                None => {
                    let parent = (i > 0).then(|| self.blocks[table[i - 1]].hash.unwrap());
                    self.blocks[own].hash = Some(h);
                    self.blocks[own].parent = parent;
                    self.blocks[own].hits = 0;
                    self.stored += 1;
                    self.events.push(KvEvent::Stored {
                        hash: h,
                        parent,
                        tier: Tier::Device,
                    });
                }
            }
        }
        let seq = self.seqs.get_mut(&id).unwrap();
        seq.blocks = table;
        let newly = hashes.len().saturating_sub(seq.registered);
        seq.registered = seq.registered.max(hashes.len());
        newly
    }

    fn fork(&mut self, id: u32) -> u32 {
        self.clock += 1;
        let s = self.seqs[&id].clone();
        for &b in &s.blocks {
            self.pin(b);
        }
        let new = self.next_seq;
        self.next_seq += 1;
        self.seqs.insert(new, s);
        new
    }

    fn release(&mut self, id: u32) {
        self.clock += 1;
        let s = self.seqs.remove(&id).unwrap();
        for &b in s.blocks.iter().rev() {
            self.unpin(b);
        }
    }

    fn clear(&mut self) {
        self.clock += 1;
        for b in &mut self.blocks {
            if b.refs == 0 && b.hash.is_some() {
                b.filled = 0;
            }
            b.hash = None;
            b.parent = None;
        }
        for s in self.seqs.values_mut() {
            s.registered = 0;
        }
        self.events.push(KvEvent::Cleared { tier: Tier::Device });
    }

    fn counts(&self) -> (usize, usize, usize) {
        let active = self.blocks.iter().filter(|b| b.refs > 0).count();
        let cached = self
            .blocks
            .iter()
            .filter(|b| b.refs == 0 && b.hash.is_some())
            .count();
        (self.blocks.len() - active - cached, active, cached)
    }

    fn used_slots(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.refs > 0)
            .map(|b| b.filled as u64)
            .sum()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new request whose prompt is `labels` full blocks plus `partial` tokens.
    Start {
        labels: Vec<u8>,
        partial: usize,
    },
    /// Decode or chunked prefill: `tokens` more tokens; new full blocks get labels from `seed`.
    Append {
        pick: usize,
        tokens: usize,
        seed: u8,
    },
    Fork {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    Clear,
}

fn op(bs: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec(0u8..3, 0..5), 0..bs)
            .prop_map(|(labels, partial)| Op::Start { labels, partial }),
        4 => (any::<usize>(), 1..=2 * bs, 0u8..3)
            .prop_map(|(pick, tokens, seed)| Op::Append { pick, tokens, seed }),
        1 => any::<usize>().prop_map(|pick| Op::Fork { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::Clear),
    ]
}

/// A live sequence as the test driver sees it: its block labels and length.
struct Live {
    pool_id: SequenceId,
    ref_id: u32,
    labels: Vec<u8>,
    len: usize,
}

fn chain(hasher: &BlockHasher, labels: &[u8]) -> Vec<SequenceHash> {
    let bs = hasher.block_size();
    let tokens: Vec<u32> = labels
        .iter()
        .flat_map(|&l| std::iter::repeat_n(u32::from(l), bs))
        .collect();
    hasher.hash_prefix(&tokens)
}

fn run(
    num_blocks: usize,
    bs: usize,
    kind: EvictionPolicyKind,
    policy: Box<dyn EvictionPolicy>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut pool = BlockPool::builder()
        .num_blocks(num_blocks)
        .block_size(bs as u32)
        .build_with_policy(policy)
        .unwrap();
    let mut reference = RefPool::new(num_blocks, bs, kind == EvictionPolicyKind::Lfu);
    let hasher = BlockHasher::new(0, bs as u32, &ExtraKeys::default());
    let mut live: Vec<Live> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Start { labels, partial } => {
                // Ops are generated for the largest block size; a partial block stays partial.
                let partial = partial % bs;
                let hashes = chain(&hasher, labels);
                let total = labels.len() * bs + partial;
                let m = pool.match_prefix(&hashes, total);
                let (ref_id, ref_cached) = reference.match_prefix(&hashes, total);
                prop_assert_eq!(m.cached_blocks, ref_cached, "step {}: match", step);
                let rest = total - m.cached_tokens;
                let got = pool.append_slots(m.sequence, rest);
                let want = reference.append(ref_id, rest);
                prop_assert_eq!(got.is_ok(), want.is_ok(), "step {}: {:?}", step, got);
                if got.is_ok() {
                    let n = pool.commit_blocks(m.sequence, &hashes).unwrap();
                    prop_assert_eq!(n, reference.commit(ref_id, &hashes));
                    live.push(Live {
                        pool_id: m.sequence,
                        ref_id,
                        labels: labels.clone(),
                        len: total,
                    });
                } else {
                    pool.release(m.sequence).unwrap();
                    reference.release(ref_id);
                }
            }
            Op::Append { pick, tokens, seed } if !live.is_empty() => {
                let n = live.len();
                let s = &mut live[pick % n];
                let got = pool.append_slots(s.pool_id, *tokens);
                let want = reference.append(s.ref_id, *tokens);
                match (&got, &want) {
                    (Ok(copy), Ok(cow)) => {
                        prop_assert_eq!(copy.map(|c| c.slots as usize), *cow, "step {}", step);
                        let full_before = s.len / bs;
                        s.len += tokens;
                        for k in 0..(s.len / bs - full_before) {
                            s.labels.push((seed + k as u8) % 3);
                        }
                        let hashes = chain(&hasher, &s.labels);
                        let n = pool.commit_blocks(s.pool_id, &hashes).unwrap();
                        prop_assert_eq!(n, reference.commit(s.ref_id, &hashes));
                    }
                    (Err(PoolError::OutOfBlocks { .. }), Err(())) => {}
                    _ => prop_assert!(false, "step {}: pool {:?}, reference {:?}", step, got, want),
                }
            }
            Op::Fork { pick } if !live.is_empty() => {
                let s = &live[pick % live.len()];
                let pool_id = pool.fork(s.pool_id).unwrap();
                let ref_id = reference.fork(s.ref_id);
                let (labels, len) = (s.labels.clone(), s.len);
                live.push(Live {
                    pool_id,
                    ref_id,
                    labels,
                    len,
                });
            }
            Op::Release { pick } if !live.is_empty() => {
                let s = live.swap_remove(pick % live.len());
                pool.release(s.pool_id).unwrap();
                reference.release(s.ref_id);
            }
            Op::Clear => {
                pool.clear_cache();
                reference.clear();
            }
            _ => continue,
        }
        if let Err(e) = pool.check_invariants() {
            return Err(TestCaseError::fail(format!("step {step} ({op:?}): {e}")));
        }
        let events: Vec<KvEvent> = pool.drain_events().collect();
        prop_assert_eq!(&events, &reference.events, "step {}: events", step);
        reference.events.clear();
        let st = pool.stats();
        let (free, active, cached) = reference.counts();
        prop_assert_eq!(
            (st.free, st.active, st.cached),
            (free, active, cached),
            "step {}",
            step
        );
        prop_assert_eq!((st.query_blocks, st.hit_blocks), reference.hits);
        prop_assert_eq!(
            (st.stored, st.evicted, st.deduplicated, st.cow_copies),
            (
                reference.stored,
                reference.evicted,
                reference.deduplicated,
                reference.cow
            )
        );
        prop_assert_eq!(st.used_slots, reference.used_slots());
        for s in &live {
            prop_assert_eq!(pool.sequence_len(s.pool_id).unwrap(), s.len);
        }
    }
    for s in live.drain(..) {
        pool.release(s.pool_id).unwrap();
    }
    pool.check_invariants()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(pool.stats().active, 0);
    Ok(())
}

fn kind() -> impl Strategy<Value = EvictionPolicyKind> {
    prop_oneof![Just(EvictionPolicyKind::Lru), Just(EvictionPolicyKind::Lfu)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_reference(
        num_blocks in 2usize..24,
        bs in 1usize..5,
        kind in kind(),
        ops in prop::collection::vec(op(4), 1..80),
    ) {
        run(num_blocks, bs, kind, kind.build(num_blocks), &ops)?;
    }
}

/// Evicts the *most* recently used candidate: wrong on purpose.
#[derive(Debug)]
struct NewestFirst(Vec<EvictionCandidate>);

impl EvictionPolicy for NewestFirst {
    fn name(&self) -> &'static str {
        "newest-first"
    }
    fn insert(&mut self, c: EvictionCandidate) {
        self.0.push(c);
    }
    fn remove(&mut self, block: kvmesh_core::BlockId) {
        self.0.retain(|c| c.block != block);
    }
    fn pop_victim(&mut self) -> Option<kvmesh_core::BlockId> {
        let i = (0..self.0.len()).max_by_key(|&i| self.0[i].last_access)?;
        Some(self.0.swap_remove(i).block)
    }
    fn contains(&self, block: kvmesh_core::BlockId) -> bool {
        self.0.iter().any(|c| c.block == block)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
    fn memory_usage(&self) -> usize {
        0
    }
}

/// The harness must notice a policy that breaks LRU order; otherwise it proves nothing.
#[test]
fn harness_catches_a_wrong_eviction_order() {
    let ops = vec![
        Op::Start {
            labels: vec![0, 0],
            partial: 0,
        },
        Op::Release { pick: 0 },
        Op::Start {
            labels: vec![1, 1],
            partial: 0,
        },
        Op::Release { pick: 0 },
        Op::Start {
            labels: vec![2],
            partial: 0,
        },
    ];
    let lru = EvictionPolicyKind::Lru;
    assert!(run(4, 2, lru, lru.build(4), &ops).is_ok());
    assert!(run(4, 2, lru, Box::new(NewestFirst(Vec::new())), &ops).is_err());
}
