//! One suite for every [`PrefixIndex`]: scenario tests and a differential property test against
//! a naive reference (a plain map per worker), under random event streams with duplicates,
//! reordering, removals, clears and worker loss.

use std::collections::HashMap;

use kvmesh_core::{KvEvent, SequenceHash, Tier};
use kvmesh_index::{
    ApproxIndex, ExactIndex, OverlapScores, PrefixIndex, ShardedIndex, TierCounts, TierMask,
    WorkerId,
};
use proptest::prelude::*;

/// Every implementation under test, fresh.
fn implementations() -> Vec<(&'static str, Box<dyn PrefixIndex>)> {
    vec![
        ("exact", Box::new(ExactIndex::new())),
        ("sharded", Box::new(ShardedIndex::new(4))),
        ("sharded, one shard", Box::new(ShardedIndex::new(1))),
        (
            "approx",
            Box::new(ApproxIndex::new(u64::MAX / 4, usize::MAX).unwrap()),
        ),
    ]
}

/// The reference: what each worker holds, nothing else.
#[derive(Default)]
struct Reference {
    held: HashMap<WorkerId, HashMap<SequenceHash, TierMask>>,
    orphans: u64,
    duplicates: u64,
    unknown_removes: u64,
}

impl Reference {
    fn mask(&self, w: WorkerId, h: SequenceHash) -> TierMask {
        self.held
            .get(&w)
            .and_then(|m| m.get(&h))
            .copied()
            .unwrap_or(TierMask::EMPTY)
    }

    fn apply(&mut self, w: WorkerId, e: &KvEvent) {
        match *e {
            KvEvent::Stored { hash, parent, tier } => {
                if parent.is_some_and(|p| self.mask(w, p).is_empty()) {
                    self.orphans += 1;
                }
                let m = self.held.entry(w).or_default().entry(hash).or_default();
                if m.contains(tier) {
                    self.duplicates += 1;
                }
                *m = m.with(tier);
            }
            KvEvent::Removed { hash, tier } => {
                let map = self.held.entry(w).or_default();
                match map.get(&hash).copied() {
                    Some(m) if m.contains(tier) => {
                        let m = m.without(tier);
                        if m.is_empty() {
                            map.remove(&hash);
                        } else {
                            map.insert(hash, m);
                        }
                    }
                    _ => self.unknown_removes += 1,
                }
            }
            KvEvent::Cleared { tier } => {
                if let Some(map) = self.held.get_mut(&w) {
                    map.retain(|_, m| {
                        *m = m.without(tier);
                        !m.is_empty()
                    });
                }
            }
        }
        self.held.retain(|_, m| !m.is_empty());
    }

    fn overlaps(&self, hashes: &[SequenceHash]) -> OverlapScores {
        let pairs = self
            .held
            .keys()
            .map(|&w| {
                let mut c = TierCounts::default();
                for &h in hashes {
                    match self.mask(w, h).fastest() {
                        Some(t) => c.0[t as usize] += 1,
                        None => break,
                    }
                }
                (w, c)
            })
            .collect();
        OverlapScores::from_pairs(pairs)
    }

    fn entries(&self) -> usize {
        self.held.values().map(|m| m.len()).sum()
    }

    fn blocks(&self) -> usize {
        let mut all: Vec<_> = self.held.values().flat_map(|m| m.keys()).collect();
        all.sort();
        all.dedup();
        all.len()
    }
}

fn h(i: u8) -> SequenceHash {
    // Spread bits so the sharded index uses several shards.
    SequenceHash::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

fn tier(i: u8) -> Tier {
    Tier::ALL[usize::from(i % 4)]
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        w: u8,
        block: u8,
        parent: Option<u8>,
        tier: u8,
    },
    Remove {
        w: u8,
        block: u8,
        tier: u8,
    },
    Clear {
        w: u8,
        tier: u8,
    },
    RemoveWorker {
        w: u8,
    },
    /// Store a whole chain `0..len` of family `f` (the common case, in order).
    Chain {
        w: u8,
        f: u8,
        len: u8,
        tier: u8,
    },
    /// A pause between events: queries run after every op anyway.
    Query,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..5, 0u8..24, prop::option::of(0u8..24), 0u8..4)
            .prop_map(|(w, block, parent, tier)| Op::Store { w, block, parent, tier }),
        3 => (0u8..5, 0u8..24, 0u8..4).prop_map(|(w, block, tier)| Op::Remove { w, block, tier }),
        1 => (0u8..5, 0u8..4).prop_map(|(w, tier)| Op::Clear { w, tier }),
        1 => (0u8..5).prop_map(|w| Op::RemoveWorker { w }),
        4 => (0u8..5, 0u8..3, 1u8..8, 0u8..4).prop_map(|(w, f, len, tier)| Op::Chain { w, f, len, tier }),
        2 => Just(Op::Query),
    ]
}

/// Chain family `f`: blocks `8f .. 8f+len` (ids below 24, shared with random ops).
fn chain(f: u8, len: u8) -> Vec<SequenceHash> {
    (0..len).map(|i| h(8 * f + i)).collect()
}

fn events_of(op: &Op, id: fn(u8) -> WorkerId) -> Vec<(WorkerId, Option<KvEvent>)> {
    match *op {
        Op::Store {
            w,
            block,
            parent,
            tier: t,
        } => vec![(
            id(w),
            Some(KvEvent::Stored {
                hash: h(block),
                parent: parent.map(h),
                tier: tier(t),
            }),
        )],
        Op::Remove { w, block, tier: t } => vec![(
            id(w),
            Some(KvEvent::Removed {
                hash: h(block),
                tier: tier(t),
            }),
        )],
        Op::Clear { w, tier: t } => {
            vec![(id(w), Some(KvEvent::Cleared { tier: tier(t) }))]
        }
        Op::RemoveWorker { w } => vec![(id(w), None)],
        Op::Chain { w, f, len, tier: t } => chain(f, len)
            .iter()
            .enumerate()
            .map(|(i, &hash)| {
                (
                    id(w),
                    Some(KvEvent::Stored {
                        hash,
                        parent: (i > 0).then(|| h(8 * f + i as u8 - 1)),
                        tier: tier(t),
                    }),
                )
            })
            .collect(),
        Op::Query => Vec::new(),
    }
}

/// Worker ids 0..5 as they are.
fn small_id(w: u8) -> WorkerId {
    WorkerId(w.into())
}

/// Worker ids that do not fit two to an inline slot (2^27 and up), mixed with small ones, so
/// that pairs of holders also go to the shared holder-set arena.
fn large_id(w: u8) -> WorkerId {
    WorkerId([0, 1 << 27, 7, u32::MAX - 1, u32::MAX][usize::from(w % 5)])
}

/// Runs `ops` through every index and the reference, comparing after every op.
fn agrees_with_the_reference(ops: &[Op], id: fn(u8) -> WorkerId) -> Result<(), TestCaseError> {
    for (name, mut index) in implementations() {
        let mut reference = Reference::default();
        for (step, op) in ops.iter().enumerate() {
            let events = events_of(op, id);
            if let (Op::Chain { .. }, Some(&(w, _))) = (op, events.first()) {
                // A run, as engines publish it: one batch.
                let run: Vec<KvEvent> = events.into_iter().filter_map(|(_, e)| e).collect();
                index.apply_batch(w, &run);
                run.iter().for_each(|e| reference.apply(w, e));
                continue;
            }
            for (w, event) in events {
                match event {
                    Some(e) => {
                        index.apply(w, &e);
                        reference.apply(w, &e);
                    }
                    None => {
                        index.remove_worker(w);
                        reference.held.remove(&w);
                    }
                }
            }
            for f in 0..3 {
                for len in [1, 4, 8] {
                    let q = chain(f, len);
                    prop_assert_eq!(
                        index.overlaps(&q),
                        reference.overlaps(&q),
                        "{}: step {} {:?}, query {}/{}",
                        name,
                        step,
                        op,
                        f,
                        len
                    );
                }
            }
            let st = index.stats();
            prop_assert_eq!(st.entries, reference.entries(), "{}: entries", name);
            prop_assert_eq!(st.blocks, reference.blocks(), "{}: blocks", name);
            prop_assert_eq!(st.workers, reference.held.len(), "{}: workers", name);
            prop_assert_eq!(st.orphan_stores, reference.orphans, "{}: orphans", name);
            prop_assert_eq!(st.duplicate_stores, reference.duplicates, "{}: dups", name);
            prop_assert_eq!(st.unknown_removes, reference.unknown_removes, "{}", name);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_index_agrees_with_the_reference(ops in prop::collection::vec(op(), 1..120)) {
        agrees_with_the_reference(&ops, small_id)?;
    }

    /// The same with worker ids of every size: holder pairs that do not fit inline, and the
    /// shared (interned) holder sets changed copy-on-write by one block while other blocks keep
    /// the old set.
    #[test]
    fn every_index_agrees_with_the_reference_for_large_worker_ids(
        ops in prop::collection::vec(op(), 1..120),
    ) {
        agrees_with_the_reference(&ops, large_id)?;
    }

    /// Events re-ordered within a worker's stream (stores only) end in the same state, and a
    /// duplicated stream changes nothing the second time.
    #[test]
    fn order_and_duplicates_do_not_change_the_result(
        perm in Just((0u8..16).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let stores: Vec<KvEvent> = (0u8..16)
            .map(|i| KvEvent::Stored {
                hash: h(i),
                parent: (i > 0).then(|| h(i - 1)),
                tier: Tier::Device,
            })
            .collect();
        let q: Vec<_> = (0u8..16).map(h).collect();
        for (name, mut index) in implementations() {
            for &i in &perm {
                index.apply(WorkerId(1), &stores[usize::from(i)]);
            }
            let once = index.overlaps(&q);
            index.apply_batch(WorkerId(1), &stores);
            prop_assert_eq!(index.overlaps(&q), once.clone(), "{}", name);
            prop_assert_eq!(once.get(WorkerId(1)).total(), 16, "{}", name);
            prop_assert_eq!(index.stats().duplicate_stores, 16, "{}", name);
        }
    }
}

/// Long mixed batches (more events than `ExactIndex` reads ahead at once) end where the same
/// events applied one by one end.
#[test]
fn long_batches_match_single_events() {
    let mut events = Vec::new();
    for round in 0..6u8 {
        for i in 0..20u8 {
            let b = round * 20 + i;
            events.push(KvEvent::Stored {
                hash: h(b),
                parent: (i > 0).then(|| h(b - 1)),
                tier: tier(round),
            });
        }
        for i in (5..20u8).rev().step_by(round as usize + 1) {
            events.push(KvEvent::Removed {
                hash: h(round * 20 + i),
                tier: tier(round),
            });
        }
        if round == 3 {
            events.push(KvEvent::Cleared { tier: tier(1) });
        }
    }
    for (name, mut batched) in implementations() {
        let (_, mut single) = implementations()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("same implementation");
        batched.apply_batch(WorkerId(2), &events);
        events.iter().for_each(|e| single.apply(WorkerId(2), e));
        for round in 0..6u8 {
            let q: Vec<_> = (0..20).map(|i| h(round * 20 + i)).collect();
            assert_eq!(
                batched.overlaps(&q),
                single.overlaps(&q),
                "{name}: round {round}"
            );
        }
        let (a, b) = (batched.stats(), single.stats());
        assert_eq!(
            (a.entries, a.blocks, a.orphan_stores, a.unknown_removes),
            (b.entries, b.blocks, b.orphan_stores, b.unknown_removes),
            "{name}"
        );
    }
}

/// `Stored` events for blocks `h(0)..h(len)` on the device tier, each naming the one before.
fn device_chain(len: u8) -> Vec<KvEvent> {
    (0..len)
        .map(|i| KvEvent::Stored {
            hash: h(i),
            parent: (i > 0).then(|| h(i - 1)),
            tier: Tier::Device,
        })
        .collect()
}

/// Requests much longer than the walk's prefetch window (16 blocks ahead, a ring of 32 homes):
/// every worker's own prefix length, up to 150 blocks, on every implementation.
#[test]
fn long_prefixes_are_counted_past_the_prefetch_window() {
    for (name, mut index) in implementations() {
        let lens = [1u8, 15, 16, 17, 31, 32, 33, 47, 48, 64, 100, 150];
        for (w, &len) in lens.iter().enumerate() {
            index.apply_batch(WorkerId(w as u32), &device_chain(len));
        }
        let q: Vec<_> = (0..200u8).map(h).collect();
        let s = index.overlaps(&q);
        for (w, &len) in lens.iter().enumerate() {
            assert_eq!(
                s.get(WorkerId(w as u32)).total(),
                u32::from(len),
                "{name}: worker {w}"
            );
        }
    }
}

/// Every change inside a chain that one worker stored block after block must show in lookups:
/// a branch off its middle, a middle block removed and stored again, a tier dropped, a second
/// holder. (An index that reads such chains without probing each block must notice all of
/// them: a dropped experiment, "runs", failed this test when a branch moved its parent out of
/// its chain; see `BENCH.md`.)
#[test]
fn changes_inside_a_chain_stored_by_one_worker_show_in_lookups() {
    let q: Vec<_> = (0..40u8).map(h).collect();
    let (device, host) = (Tier::Device, Tier::Host);
    let stored = |hash, parent, tier| KvEvent::Stored { hash, parent, tier };
    let removed = |hash, tier| KvEvent::Removed { hash, tier };
    for (name, mut index) in implementations() {
        let (w, other) = (WorkerId(1), WorkerId(2));
        let counts = |index: &dyn PrefixIndex| index.overlaps(&q).get(w);
        index.apply_batch(w, &device_chain(40));
        assert_eq!(counts(&*index).total(), 40, "{name}");
        // A branch off block 9 leaves the chain whole.
        let branch = SequenceHash::from_u128(1000);
        index.apply(w, &stored(branch, Some(h(9)), device));
        assert_eq!(counts(&*index).total(), 40, "{name}: branch");
        index.apply(w, &removed(h(9), device));
        assert_eq!(counts(&*index).total(), 9, "{name}: block 9 removed");
        index.apply(w, &stored(h(9), Some(h(8)), device));
        assert_eq!(counts(&*index).total(), 40, "{name}: block 9 back");
        // Block 20 moves to the host tier.
        index.apply(w, &stored(h(20), Some(h(19)), host));
        index.apply(w, &removed(h(20), device));
        let c = counts(&*index);
        let on = (c.on(device), c.on(host));
        assert_eq!(on, (39, 1), "{name}: block 20 on host");
        // A second holder of block 30, then blocks 35 and 30 removed.
        index.apply(other, &stored(h(30), None, device));
        assert_eq!(counts(&*index).total(), 40, "{name}: second holder");
        index.apply(w, &removed(h(35), device));
        assert_eq!(counts(&*index).total(), 35, "{name}: block 35 removed");
        index.apply(w, &removed(h(30), device));
        assert_eq!(counts(&*index).total(), 30, "{name}: block 30 removed");
    }
}

/// A lookup tracks up to 32 workers on the stack and spills to the heap beyond: both must
/// count every worker's own prefix, with workers dropping out at different blocks.
#[test]
fn prefixes_of_many_workers_are_counted_on_and_off_the_stack() {
    for holders in [20u32, 40, 300] {
        for (name, mut index) in implementations() {
            let q: Vec<_> = (0..12u8).map(h).collect();
            for w in 0..holders {
                index.apply_batch(WorkerId(w * 3), &device_chain(1 + (w * 7 % 12) as u8));
            }
            let s = index.overlaps(&q);
            assert_eq!(s.len(), holders as usize, "{name}");
            for w in 0..holders {
                let expect = 1 + w * 7 % 12;
                assert_eq!(s.get(WorkerId(w * 3)).total(), expect, "{name}: worker {w}");
            }
        }
    }
}

/// Blocks with equal holder sets share one set in `ExactIndex`; changing one block's holders
/// must leave the others' alone.
#[test]
fn a_shared_holder_set_changes_for_one_block_only() {
    for (name, mut index) in implementations() {
        let q: Vec<_> = (0..8u8).map(h).collect();
        for w in 0..6u32 {
            index.apply_batch(WorkerId(w), &device_chain(8));
        }
        index.apply(
            WorkerId(3),
            &KvEvent::Removed {
                hash: h(5),
                tier: Tier::Device,
            },
        );
        index.apply(
            WorkerId(4),
            &KvEvent::Stored {
                hash: h(2),
                parent: Some(h(1)),
                tier: Tier::Host,
            },
        );
        let s = index.overlaps(&q);
        for w in 0..6u32 {
            let expect = if w == 3 { 5 } else { 8 };
            assert_eq!(s.get(WorkerId(w)).total(), expect, "{name}: worker {w}");
            assert_eq!(
                s.get(WorkerId(w)).on(Tier::Device),
                expect,
                "{name}: worker {w}"
            );
        }
    }
}

/// The harness must catch an index that ignores removals, or it proves nothing.
#[test]
fn the_reference_catches_a_lost_removal() {
    let mut index = ExactIndex::new();
    let mut reference = Reference::default();
    let store = KvEvent::Stored {
        hash: h(1),
        parent: None,
        tier: Tier::Device,
    };
    index.apply(WorkerId(0), &store);
    reference.apply(WorkerId(0), &store);
    // The "buggy index" skips this removal.
    reference.apply(
        WorkerId(0),
        &KvEvent::Removed {
            hash: h(1),
            tier: Tier::Device,
        },
    );
    assert_ne!(index.overlaps(&[h(1)]), reference.overlaps(&[h(1)]));
}

#[test]
fn tiers_are_counted_by_the_fastest_copy() {
    for (name, mut index) in implementations() {
        let w = WorkerId(3);
        let put = |index: &mut Box<dyn PrefixIndex>, b: u8, p: Option<u8>, t: Tier| {
            index.apply(
                w,
                &KvEvent::Stored {
                    hash: h(b),
                    parent: p.map(h),
                    tier: t,
                },
            )
        };
        put(&mut index, 0, None, Tier::Host);
        put(&mut index, 0, None, Tier::Device);
        put(&mut index, 1, Some(0), Tier::Disk);
        put(&mut index, 2, Some(1), Tier::Remote);
        let c = index.overlaps(&[h(0), h(1), h(2), h(3)]).get(w);
        assert_eq!(c.0, [1, 0, 1, 1], "{name}");
        index.apply(
            w,
            &KvEvent::Removed {
                hash: h(0),
                tier: Tier::Device,
            },
        );
        let c = index.overlaps(&[h(0), h(1), h(2)]).get(w);
        assert_eq!(c.0, [0, 1, 1, 1], "{name}: host copy remains");
        index.apply(w, &KvEvent::Cleared { tier: Tier::Host });
        assert!(index.overlaps(&[h(0)]).is_empty(), "{name}");
    }
}

#[test]
fn memory_returns_to_baseline_after_churn() {
    for (name, mut index) in implementations() {
        let baseline = index.memory_usage();
        for round in 0..20u32 {
            for w in 0..8u32 {
                for i in 0..500u32 {
                    let hash = SequenceHash::from_u128(
                        (u128::from(round) << 64 | u128::from(w) << 32 | u128::from(i))
                            .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                    );
                    index.apply(
                        WorkerId(w),
                        &KvEvent::Stored {
                            hash,
                            parent: None,
                            tier: Tier::Device,
                        },
                    );
                }
            }
            for w in 0..8u32 {
                if round % 2 == 0 {
                    index.apply(WorkerId(w), &KvEvent::Cleared { tier: Tier::Device });
                } else {
                    index.remove_worker(WorkerId(w));
                }
            }
        }
        let st = index.stats();
        assert_eq!((st.blocks, st.entries, st.workers), (0, 0, 0), "{name}");
        let after = index.memory_usage();
        assert!(
            after <= baseline + 64 * 1024,
            "{name}: memory {after} B after churn, baseline {baseline} B"
        );
    }
}

#[test]
fn unknown_workers_and_blocks_never_panic() {
    for (_, mut index) in implementations() {
        index.apply(
            WorkerId(u32::MAX),
            &KvEvent::Removed {
                hash: h(9),
                tier: Tier::Disk,
            },
        );
        index.apply(WorkerId(7), &KvEvent::Cleared { tier: Tier::Device });
        index.remove_worker(WorkerId(12345));
        assert!(index.overlaps(&[]).is_empty());
        assert!(index.overlaps(&[h(9)]).is_empty());
        assert_eq!(index.stats().unknown_removes, 1);
    }
}

/// Writers on several threads (one per worker, as event consumers run) and concurrent readers:
/// the sharded index ends where a single-threaded one fed the same streams ends, and readers
/// only ever see prefixes that some worker really held.
#[test]
fn sharded_index_under_concurrent_writers_and_readers() {
    use std::sync::Arc;

    /// A 16-block chain; `round`s share nothing.
    fn family(round: u32) -> Vec<SequenceHash> {
        (0..16u32)
            .map(|i| {
                SequenceHash::from_u128(
                    (u128::from(round) << 32 | u128::from(i))
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                )
            })
            .collect()
    }

    let stream = |w: u32| -> Vec<KvEvent> {
        let mut events = Vec::new();
        for round in 0..200u32 {
            let chain = family(round % 50);
            for (i, &hash) in chain.iter().enumerate() {
                events.push(KvEvent::Stored {
                    hash,
                    parent: (i > 0).then(|| chain[i - 1]),
                    tier: Tier::Device,
                });
            }
            if (round + w).is_multiple_of(3) {
                for &hash in chain.iter().rev().take(8) {
                    events.push(KvEvent::Removed {
                        hash,
                        tier: Tier::Device,
                    });
                }
            }
        }
        events
    };
    let shared = Arc::new(ShardedIndex::new(8));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let idx = Arc::clone(&shared);
            let events = stream(w);
            std::thread::spawn(move || {
                for e in &events {
                    idx.apply_shared(WorkerId(w), e);
                }
            })
        })
        .collect();
    let reader = {
        let idx = Arc::clone(&shared);
        std::thread::spawn(move || {
            let q = family(0);
            for _ in 0..2000 {
                for (w, c) in idx.overlaps_shared(&q).iter() {
                    assert!(w.0 < 4 && c.total() <= 16);
                }
            }
        })
    };
    for t in writers {
        t.join().unwrap();
    }
    reader.join().unwrap();

    let mut sequential = ExactIndex::new();
    for w in 0..4u32 {
        sequential.apply_batch(WorkerId(w), &stream(w));
    }
    let (a, b) = (shared.stats_shared(), sequential.stats());
    assert_eq!(
        (a.blocks, a.entries, a.workers),
        (b.blocks, b.entries, b.workers)
    );
    for round in 0..50u32 {
        let q = family(round);
        assert_eq!(shared.overlaps_shared(&q), sequential.overlaps(&q));
    }
}
