//! One suite for every `Storage` backend: round trips, the byte bound and LRU order,
//! replacement, batches; then what only the disk store promises (restart, interrupted
//! writes, files damaged or deleted behind its back), each ending in a verified read or a
//! refused record, never a wrong one.

use std::path::PathBuf;

use kvmesh_core::SequenceHash;
use kvmesh_tier::record::{self, Expected, Namespace, RecordError};
use kvmesh_tier::{DiskStore, HostStore, Storage, StorageError};

const NS: Namespace = Namespace::from_u128(0x6b76);
const TOKENS: [u32; 4] = [5, 6, 7, 8];
const PAYLOAD: usize = 100;

fn h(i: u128) -> SequenceHash {
    SequenceHash::from_u128(i + 1)
}

fn rec(i: u128) -> Vec<u8> {
    record::encode(NS, h(i), None, &TOKENS, &[i as u8; PAYLOAD])
}

fn want(i: u128) -> Expected<'static> {
    Expected {
        namespace: NS,
        hash: h(i),
        tokens: &TOKENS,
        payload_len: PAYLOAD as u64,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmesh-tier-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The shared suite: `make(capacity)` builds an empty store.
fn suite(make: &mut dyn FnMut(u64) -> Box<dyn Storage>) {
    let size = rec(0).len() as u64;

    // Round trip, contains, list, remove.
    let mut s = make(10 * size);
    assert!(s.get(h(0)).unwrap().is_none());
    s.put(h(0), &rec(0)).unwrap();
    s.put(h(1), &rec(1)).unwrap();
    let bytes = s.get(h(1)).unwrap().unwrap();
    assert_eq!(
        record::decode(&bytes, &want(1)).unwrap().payload,
        &[1u8; PAYLOAD][..]
    );
    assert!(s.contains(h(0)) && !s.contains(h(5)));
    let mut keys = s.list();
    keys.sort();
    assert_eq!(keys, vec![h(0), h(1)]);
    assert_eq!(s.used_bytes(), 2 * size);
    assert!(s.remove(h(0)).unwrap());
    assert!(!s.remove(h(0)).unwrap());
    assert!(s.get(h(0)).unwrap().is_none());
    assert_eq!(s.used_bytes(), size);

    // The byte bound, least recently used first; a get refreshes recency.
    let mut s = make(3 * size);
    for i in 0..3 {
        assert!(s.put(h(i), &rec(i)).unwrap().evicted.is_empty());
    }
    s.get(h(0)).unwrap().unwrap();
    let out = s.put(h(3), &rec(3)).unwrap();
    assert_eq!(out.evicted, vec![h(1)]);
    assert!(s.used_bytes() <= s.capacity_bytes());
    assert!(s.contains(h(0)) && !s.contains(h(1)));

    // Replacing a key counts its bytes once.
    let out = s.put(h(3), &rec(3)).unwrap();
    assert!(out.replaced && out.evicted.is_empty());
    assert_eq!(s.used_bytes(), 3 * size);

    // Too large for the whole store: refused, nothing lost.
    let mut tiny = make(size - 1);
    assert!(matches!(
        tiny.put(h(0), &rec(0)),
        Err(StorageError::TooLarge { .. })
    ));
    assert_eq!(tiny.used_bytes(), 0);

    // Batches.
    let mut s = make(10 * size);
    let (r0, r1) = (rec(0), rec(1));
    s.put_batch(&[(h(0), &r0), (h(1), &r1)]).unwrap();
    let got = s.get_batch(&[h(1), h(9), h(0)]).unwrap();
    assert_eq!(got, vec![Some(r1), None, Some(r0)]);
}

#[test]
fn host_store_passes_the_suite() {
    suite(&mut |capacity| Box::new(HostStore::new(capacity)));
}

#[test]
fn disk_store_passes_the_suite() {
    let mut n = 0;
    suite(&mut |capacity| {
        n += 1;
        let (store, report) = DiskStore::open(temp_dir(&format!("suite{n}")), capacity).unwrap();
        assert_eq!(report.records, 0);
        Box::new(store)
    });
}

#[test]
fn disk_store_survives_restarts_and_damage() {
    let dir = temp_dir("restart");
    let size = rec(0).len() as u64;
    {
        let (mut s, _) = DiskStore::open(&dir, 10 * size).unwrap();
        for i in 0..4 {
            s.put(h(i), &rec(i)).unwrap();
        }
    }
    // An interrupted write and a stranger's file.
    std::fs::write(dir.join(".tmp-999-0"), b"half a record").unwrap();
    std::fs::write(dir.join("notes.txt"), b"keep me").unwrap();
    let (mut s, report) = DiskStore::open(&dir, 10 * size).unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.bytes, 4 * size);
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.foreign_files, 1);
    assert!(dir.join("notes.txt").exists() && !dir.join(".tmp-999-0").exists());
    for i in 0..4 {
        let bytes = s.get(h(i)).unwrap().unwrap();
        assert!(record::decode(&bytes, &want(i)).is_ok());
    }

    // Damage behind the store's back: a flipped byte, a truncated file, a deleted file.
    let path = |i: u128| dir.join(format!("{:032x}.kvb", h(i).as_u128()));
    let mut bytes = std::fs::read(path(0)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(path(0), &bytes).unwrap();
    let bytes = std::fs::read(path(1)).unwrap();
    std::fs::write(path(1), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(path(2)).unwrap();
    let got = s.get(h(0)).unwrap().unwrap();
    assert_eq!(
        record::decode(&got, &want(0)),
        Err(RecordError::PayloadChecksum)
    );
    let got = s.get(h(1)).unwrap().unwrap();
    assert!(matches!(
        record::decode(&got, &want(1)),
        Err(RecordError::Truncated { .. })
    ));
    assert!(s.get(h(2)).unwrap().is_none(), "a deleted file is a miss");
    assert!(!s.contains(h(2)));
    // A record under the right name but for another block is refused too.
    std::fs::write(path(3), rec(0)).unwrap();
    let got = s.get(h(3)).unwrap().unwrap();
    assert!(matches!(
        record::decode(&got, &want(3)),
        Err(RecordError::Hash { .. })
    ));

    // Reopened with a smaller bound: the oldest records go.
    drop(s);
    let (s, report) = DiskStore::open(&dir, 2 * size).unwrap();
    assert!(s.used_bytes() <= 2 * size);
    assert!(report.evicted >= 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
