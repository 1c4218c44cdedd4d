//! Scenario tests of the block pool; `tests/pool_model.rs` checks random operation sequences
//! against a reference model.

use super::*;
use crate::hash::{BlockHasher, ExtraKeys};

const BS: u32 = 4;

fn pool(blocks: usize, eviction: EvictionPolicyKind) -> BlockPool {
    BlockPool::builder()
        .num_blocks(blocks)
        .block_size(BS)
        .eviction(eviction)
        .build()
        .unwrap()
}

fn hashes(tokens: &[u32]) -> Vec<SequenceHash> {
    BlockHasher::new(0, BS, &ExtraKeys::default()).hash_prefix(tokens)
}

/// Runs a whole request: match, allocate the rest, commit full blocks, release.
fn serve(pool: &mut BlockPool, tokens: &[u32]) -> usize {
    let h = hashes(tokens);
    let m = pool.match_prefix(&h, tokens.len());
    pool.append_slots(m.sequence, tokens.len() - m.cached_tokens)
        .unwrap();
    pool.commit_blocks(m.sequence, &h).unwrap();
    pool.release(m.sequence).unwrap();
    pool.check_invariants().unwrap();
    m.cached_blocks
}

fn removed(pool: &mut BlockPool) -> Vec<SequenceHash> {
    pool.drain_events()
        .filter_map(|e| match e {
            KvEvent::Removed { hash, .. } => Some(hash),
            _ => None,
        })
        .collect()
}

#[test]
fn builder_rejects_impossible_settings() {
    assert_eq!(
        BlockPool::builder().build().unwrap_err(),
        ConfigError::ZeroBlocks
    );
    assert_eq!(
        BlockPool::builder()
            .num_blocks(4)
            .block_size(0)
            .build()
            .unwrap_err(),
        ConfigError::ZeroBlockSize
    );
    // Rejected before anything sized by the block count is allocated.
    assert!(matches!(
        BlockPool::builder().num_blocks(u32::MAX as usize).build(),
        Err(ConfigError::TooManyBlocks { .. })
    ));
}

#[test]
fn cached_prefix_is_reused_and_counted() {
    let mut p = pool(16, EvictionPolicyKind::Lru);
    let prompt: Vec<u32> = (0..10).collect();
    assert_eq!(serve(&mut p, &prompt), 0);
    assert_eq!(serve(&mut p, &prompt), 2);
    let mut other = prompt.clone();
    other[5] = 99; // second block differs
    assert_eq!(serve(&mut p, &other), 1);
    let s = p.stats();
    assert_eq!((s.query_blocks, s.hit_blocks), (6, 3));
    assert_eq!((s.query_tokens, s.hit_tokens), (30, 12));
    assert_eq!(s.cached, 3);
    assert_eq!(s.free + s.active + s.cached, s.capacity);
}

#[test]
fn eviction_takes_tails_first_in_lru_order() {
    let mut p = pool(6, EvictionPolicyKind::Lru);
    let a: Vec<u32> = (0..12).collect(); // 3 blocks
    let b: Vec<u32> = (100..112).collect(); // 3 blocks, disjoint
    serve(&mut p, &a);
    serve(&mut p, &b);
    p.drain_events().for_each(drop);
    // Need 4 blocks: a is older, so a's chain goes first, tail first, then b's tail.
    let s = p.match_prefix(&[], 16).sequence;
    p.append_slots(s, 16).unwrap();
    let ha = hashes(&a);
    let hb = hashes(&b);
    assert_eq!(removed(&mut p), vec![ha[2], ha[1], ha[0], hb[2]]);
    p.check_invariants().unwrap();
    // b's first two blocks are still a usable prefix.
    assert_eq!(p.cached_prefix_len(&hb), 2);
}

#[test]
fn a_parent_shared_by_two_chains_outlives_both_tails() {
    let mut p = pool(5, EvictionPolicyKind::Lru);
    let root: Vec<u32> = (0..4).collect();
    let left: Vec<u32> = root.iter().copied().chain(10..14).collect();
    let right: Vec<u32> = root.iter().copied().chain(20..24).collect();
    serve(&mut p, &left);
    serve(&mut p, &right);
    serve(&mut p, &root); // touches the shared parent last
    p.drain_events().for_each(drop);
    let s = p.match_prefix(&[], 16).sequence;
    p.append_slots(s, 16).unwrap();
    let (hl, hr) = (hashes(&left), hashes(&right));
    // Four blocks needed, two free: both tails go, the parent (most recent) survives.
    assert_eq!(removed(&mut p), vec![hl[1], hr[1]]);
    assert_eq!(p.cached_prefix_len(&hl), 1);
}

#[test]
fn lfu_keeps_the_popular_prefix() {
    let mut p = pool(4, EvictionPolicyKind::Lfu);
    let hot: Vec<u32> = (0..8).collect();
    let cold: Vec<u32> = (50..58).collect();
    for _ in 0..3 {
        serve(&mut p, &hot);
    }
    serve(&mut p, &cold); // more recent, but never hit
    p.drain_events().for_each(drop);
    let s = p.match_prefix(&[], 8).sequence;
    p.append_slots(s, 8).unwrap();
    let hc = hashes(&cold);
    assert_eq!(removed(&mut p), vec![hc[1], hc[0]]);
    assert_eq!(p.cached_prefix_len(&hashes(&hot)), 2);
}

#[test]
fn out_of_blocks_changes_nothing() {
    let mut p = pool(4, EvictionPolicyKind::Lru);
    serve(&mut p, &(0..8).collect::<Vec<_>>());
    let s = p.match_prefix(&[], 0).sequence;
    p.append_slots(s, 8).unwrap();
    let before = p.stats();
    let err = p.append_slots(s, 9).unwrap_err();
    assert_eq!(
        err,
        PoolError::OutOfBlocks {
            requested: 3,
            free: 0,
            evictable: 2
        }
    );
    assert_eq!(p.stats(), before);
    assert_eq!(p.sequence_len(s).unwrap(), 8);
    p.check_invariants().unwrap();
}

#[test]
fn fork_copies_a_shared_partial_block_on_write() {
    let mut p = pool(8, EvictionPolicyKind::Lru);
    let a = p.match_prefix(&[], 0).sequence;
    p.append_slots(a, 6).unwrap(); // one full block, 2 slots in the second
    let b = p.fork(a).unwrap();
    assert_eq!(p.block_table(a).unwrap(), p.block_table(b).unwrap());
    let shared = p.block_table(a).unwrap()[1];
    let copy = p.append_slots(b, 1).unwrap().expect("copy-on-write");
    assert_eq!(copy.src, shared);
    assert_eq!(copy.slots, 2);
    assert_eq!(p.block_table(b).unwrap()[1], copy.dst);
    assert_eq!(p.block_table(a).unwrap()[1], shared);
    // The full block stays shared; a's partial block is now private: no copy.
    assert_eq!(p.block_table(a).unwrap()[0], p.block_table(b).unwrap()[0]);
    assert_eq!(p.append_slots(a, 1).unwrap(), None);
    assert_eq!(p.stats().cow_copies, 1);
    p.check_invariants().unwrap();
    p.release(a).unwrap();
    p.release(b).unwrap();
    assert_eq!(p.num_free(), 8);
}

#[test]
fn concurrent_computation_of_one_block_is_deduplicated() {
    let mut p = pool(8, EvictionPolicyKind::Lru);
    let tokens: Vec<u32> = (0..8).collect();
    let h = hashes(&tokens);
    let a = p.match_prefix(&h, 8).sequence;
    let b = p.match_prefix(&h, 8).sequence;
    p.append_slots(a, 8).unwrap();
    p.append_slots(b, 8).unwrap();
    assert_eq!(p.num_free(), 4);
    p.commit_blocks(a, &h).unwrap();
    p.commit_blocks(b, &h).unwrap();
    assert_eq!(p.block_table(a).unwrap(), p.block_table(b).unwrap());
    assert_eq!(p.num_free(), 6, "b's copies were freed at once");
    assert_eq!(p.stats().deduplicated, 2);
    let stored = p
        .drain_events()
        .filter(|e| matches!(e, KvEvent::Stored { .. }))
        .count();
    assert_eq!(stored, 2);
    p.check_invariants().unwrap();
}

#[test]
fn commit_checks_fullness_and_stale_ids_are_rejected() {
    let mut p = pool(4, EvictionPolicyKind::Lru);
    let tokens: Vec<u32> = (0..8).collect();
    let h = hashes(&tokens);
    let s = p.match_prefix(&[], 0).sequence;
    p.append_slots(s, 7).unwrap();
    assert!(matches!(
        p.commit_blocks(s, &h),
        Err(PoolError::NotFull { full_blocks: 1, .. })
    ));
    assert_eq!(p.commit_blocks(s, &h[..1]).unwrap(), 1);
    assert_eq!(p.commit_blocks(s, &h[..1]).unwrap(), 0, "idempotent");
    p.release(s).unwrap();
    assert_eq!(p.release(s), Err(PoolError::UnknownSequence(s)));
    assert!(p.append_slots(s, 1).is_err());
    // The slot is reused by the next sequence with a new generation.
    let t = p.match_prefix(&[], 0).sequence;
    assert_ne!(s, t);
    assert!(p.block_table(s).is_err());
}

#[test]
fn clear_drops_the_cache_and_lets_live_sequences_register_again() {
    let mut p = pool(8, EvictionPolicyKind::Lru);
    let tokens: Vec<u32> = (0..8).collect();
    let h = hashes(&tokens);
    serve(&mut p, &tokens);
    let live = p.match_prefix(&h, 8);
    assert_eq!(live.cached_blocks, 2);
    p.drain_events().for_each(drop);
    p.clear_cache();
    assert_eq!(
        p.drain_events().collect::<Vec<_>>(),
        vec![KvEvent::Cleared { tier: Tier::Device }]
    );
    assert_eq!(p.cached_prefix_len(&h), 0);
    p.check_invariants().unwrap();
    assert_eq!(p.commit_blocks(live.sequence, &h).unwrap(), 2);
    assert_eq!(p.cached_prefix_len(&h), 2);
    p.check_invariants().unwrap();
}

#[test]
fn slot_utilisation_counts_partial_blocks() {
    let mut p = pool(8, EvictionPolicyKind::Lru);
    let s = p.match_prefix(&[], 0).sequence;
    p.append_slots(s, 5).unwrap();
    let st = p.stats();
    assert_eq!((st.active, st.used_slots), (2, 5));
    assert!((st.slot_utilisation() - 5.0 / 8.0).abs() < 1e-12);
}

#[test]
fn events_can_be_turned_off() {
    let mut p = BlockPool::builder()
        .num_blocks(4)
        .block_size(BS)
        .record_events(false)
        .build()
        .unwrap();
    serve(&mut p, &(0..8).collect::<Vec<_>>());
    assert_eq!(p.drain_events().count(), 0);
    let mut sink = Vec::new();
    p.flush_events(&mut sink);
    assert!(sink.is_empty());
}

#[test]
fn deduplication_moves_forks_that_share_the_block_too() {
    // S computes two blocks and forks before committing; U commits the first block first.
    let mut p = pool(8, EvictionPolicyKind::Lru);
    let tokens: Vec<u32> = (0..8).collect();
    let h = hashes(&tokens);
    let s = p.match_prefix(&h, 8).sequence;
    p.append_slots(s, 8).unwrap();
    let f = p.fork(s).unwrap();
    let u = p.match_prefix(&h, 8).sequence;
    p.append_slots(u, 4).unwrap();
    p.commit_blocks(u, &h[..1]).unwrap();
    p.commit_blocks(s, &h).unwrap();
    // The fork follows S onto U's block, so S's second block has one parent for all holders.
    assert_eq!(p.block_table(f).unwrap(), p.block_table(s).unwrap());
    assert_eq!(p.block_table(s).unwrap()[0], p.block_table(u).unwrap()[0]);
    p.check_invariants().unwrap();
    p.release(u).unwrap();
    p.release(s).unwrap();
    p.check_invariants().unwrap();
    assert_eq!(p.commit_blocks(f, &h).unwrap(), 2);
    p.release(f).unwrap();
    p.check_invariants().unwrap();
    assert_eq!(p.num_available(), 8);
}
