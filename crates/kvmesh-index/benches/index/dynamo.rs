//! Dynamo's indexes behind [`Subject`]. Each `Op` becomes one `RouterEvent` (a run of
//! blocks with its parent, as vLLM publishes `BlockStored` / `BlockRemoved`).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use dynamo_kv_router::indexer::{KvIndexerInterface, SyncIndexer};
use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, OverlapScores, RouterEvent,
};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, RadixTree, ThreadPoolIndexer};

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::alloc::{chunk, Heap};
use crate::env_usize;
use crate::subjects::Subject;
use crate::workload::{Block, Op};

/// Polls a future to completion on this thread (the pool's flush is async; its oneshot
/// channels need no runtime).
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn heap_of_vec<T>(v: &Vec<T>) -> Heap {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes == 0 {
        return Heap::default();
    }
    Heap {
        bytes: bytes as isize,
        malloc: chunk(bytes),
    }
}

/// Dynamo events for `ops`, and the heap they own (charged to whoever consumes them).
/// With `KVMESH_BENCH_PEER_PER_BLOCK=1` every run is split into one-block events, the
/// granularity of kvmesh's `KvEvent`s (to show what batching is worth to the peer).
fn to_dynamo(ops: &[Op], next_id: &mut [u64]) -> (Vec<RouterEvent>, Heap) {
    let split;
    let ops = if env_usize("KVMESH_BENCH_PEER_PER_BLOCK", 0) != 0 {
        split = per_block(ops);
        &split[..]
    } else {
        ops
    };
    let mut handed = Heap::default();
    let events = ops
        .iter()
        .map(|op| {
            let (worker, data) = match op {
                Op::Store {
                    worker,
                    parent,
                    blocks,
                    start,
                } => {
                    let blocks: Vec<_> = blocks
                        .iter()
                        .map(|b| KvCacheStoredBlockData {
                            block_hash: ExternalSequenceBlockHash(b.seq as u64),
                            tokens_hash: LocalBlockHash(b.local),
                            mm_extra_info: None,
                        })
                        .collect();
                    let h = heap_of_vec(&blocks);
                    handed.bytes += h.bytes;
                    handed.malloc += h.malloc;
                    let data = KvCacheEventData::Stored(KvCacheStoreData {
                        parent_hash: parent.map(|p| ExternalSequenceBlockHash(p.seq as u64)),
                        start_position: Some(*start),
                        blocks,
                    });
                    (*worker, data)
                }
                Op::Remove { worker, seqs } => {
                    let block_hashes: Vec<_> = seqs
                        .iter()
                        .map(|&s| ExternalSequenceBlockHash(s as u64))
                        .collect();
                    let h = heap_of_vec(&block_hashes);
                    handed.bytes += h.bytes;
                    handed.malloc += h.malloc;
                    (
                        *worker,
                        KvCacheEventData::Removed(KvCacheRemoveData { block_hashes }),
                    )
                }
            };
            let id = &mut next_id[worker as usize];
            *id += 1;
            let event = KvCacheEvent {
                event_id: *id,
                data,
                dp_rank: 0,
            };
            RouterEvent::new(u64::from(worker), event)
        })
        .collect();
    (events, handed)
}

fn per_block(ops: &[Op]) -> Vec<Op> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Store {
                worker,
                parent,
                blocks,
                start,
            } => {
                let mut parent = *parent;
                for (j, b) in blocks.iter().enumerate() {
                    out.push(Op::Store {
                        worker: *worker,
                        parent,
                        blocks: vec![*b],
                        start: start + j as u32,
                    });
                    parent = Some(*b);
                }
            }
            Op::Remove { worker, seqs } => out.extend(seqs.iter().map(|&s| Op::Remove {
                worker: *worker,
                seqs: vec![s],
            })),
        }
    }
    out
}

fn local_hashes(q: &[Block]) -> Vec<LocalBlockHash> {
    q.iter().map(|b| LocalBlockHash(b.local)).collect()
}

fn sorted_scores(s: &OverlapScores) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = s
        .scores
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(w, &c)| (w.worker_id as u32, c))
        .collect();
    v.sort_unstable();
    v
}

/// `RadixTree`: Dynamo's single-threaded tree (`Rc<RefCell<_>>` nodes, compressed edges).
pub struct Radix {
    tree: RadixTree,
    next_id: Vec<u64>,
    heap: Heap,
    queries: Vec<Vec<LocalBlockHash>>,
    errors: usize,
}

impl Radix {
    pub fn new(workers: u32) -> Self {
        let before = Heap::now();
        let mut r = Radix {
            tree: RadixTree::new(),
            next_id: vec![0; workers as usize],
            heap: Heap::default(),
            queries: Vec::new(),
            errors: 0,
        };
        r.heap.charge(before, Heap::default());
        r
    }
}

impl Subject for Radix {
    fn name(&self) -> String {
        "dynamo RadixTree, 1 thread".into()
    }

    fn id(&self) -> &'static str {
        "dynamo_radix"
    }

    fn ingest(&mut self, ops: &[Op]) -> Duration {
        let (mut events, handed) = to_dynamo(ops, &mut self.next_id);
        let before = Heap::now();
        let t = Instant::now();
        // `drain`: the outer Vec's buffer must be freed after the window, not in it.
        for e in events.drain(..) {
            if self.tree.apply_event(e).is_err() {
                self.errors += 1;
            }
        }
        let dt = t.elapsed();
        self.heap.charge(before, handed);
        assert_eq!(self.errors, 0, "RadixTree rejected events");
        dt
    }

    fn heap(&self) -> Heap {
        self.heap
    }

    fn own_estimate(&self) -> Option<usize> {
        None
    }

    fn entries(&self) -> usize {
        self.tree.current_size()
    }

    fn load_queries(&mut self, queries: &[Vec<Block>]) {
        self.queries = queries.iter().map(|q| local_hashes(q)).collect();
    }

    fn time_lookups(&mut self, range: Range<usize>) -> Vec<u64> {
        // `find_matches` takes the sequence by value: clone it before the clock starts.
        let mut owned: Vec<_> = self.queries[range].to_vec();
        owned
            .drain(..)
            .map(|q| {
                let t = Instant::now();
                drop(black_box(self.tree.find_matches(black_box(q), false)));
                t.elapsed().as_nanos() as u64
            })
            .collect()
    }

    fn scores(&self, i: usize) -> Vec<(u32, u32)> {
        sorted_scores(&self.tree.find_matches(self.queries[i].clone(), false))
    }

    fn bench_lookup(&self, b: &mut criterion::Bencher<'_>) {
        let mut i = 0;
        b.iter_batched(
            || {
                i = (i + 1) % self.queries.len();
                self.queries[i].clone()
            },
            |q| self.tree.find_matches(q, false),
            criterion::BatchSize::SmallInput,
        )
    }
}

/// `ThreadPoolIndexer<ConcurrentRadixTreeCompressed>`: events go to `threads` OS threads
/// (sticky per worker); lookups run inline. Ingest time is enqueue-to-flush.
pub struct Pool {
    pool: ThreadPoolIndexer<ConcurrentRadixTreeCompressed>,
    threads: usize,
    next_id: Vec<u64>,
    heap: Heap,
    queries: Vec<Vec<LocalBlockHash>>,
}

impl Pool {
    pub fn new(workers: u32, threads: usize) -> Self {
        let before = Heap::now();
        let mut p = Pool {
            pool: ThreadPoolIndexer::new(ConcurrentRadixTreeCompressed::new(), threads, 16),
            threads,
            next_id: vec![0; workers as usize],
            heap: Heap::default(),
            queries: Vec::new(),
        };
        p.heap.charge(before, Heap::default());
        p
    }
}

impl Subject for Pool {
    fn name(&self) -> String {
        format!(
            "dynamo ThreadPool<ConcurrentRadixTreeCompressed>, {} thread(s)",
            self.threads
        )
    }

    fn id(&self) -> &'static str {
        "dynamo_pool"
    }

    fn ingest(&mut self, ops: &[Op]) -> Duration {
        let (mut events, handed) = to_dynamo(ops, &mut self.next_id);
        let before = Heap::now();
        let t = Instant::now();
        for e in events.drain(..) {
            self.pool.enqueue_event(e).expect("pool online");
        }
        block_on(self.pool.flush_and_wait()).expect("flush");
        let dt = t.elapsed();
        self.heap.charge(before, handed);
        dt
    }

    fn heap(&self) -> Heap {
        self.heap
    }

    fn own_estimate(&self) -> Option<usize> {
        None
    }

    fn entries(&self) -> usize {
        block_on(self.pool.shard_sizes())
            .iter()
            .map(|s| s.block_count)
            .sum()
    }

    fn load_queries(&mut self, queries: &[Vec<Block>]) {
        self.queries = queries.iter().map(|q| local_hashes(q)).collect();
    }

    fn time_lookups(&mut self, range: Range<usize>) -> Vec<u64> {
        let backend = self.pool.backend();
        // Copied before the clock starts, like every other adapter's requests.
        let owned: Vec<_> = self.queries[range].to_vec();
        owned
            .iter()
            .map(|q| {
                let t = Instant::now();
                drop(black_box(backend.find_matches(black_box(q), false)));
                t.elapsed().as_nanos() as u64
            })
            .collect()
    }

    fn scores(&self, i: usize) -> Vec<(u32, u32)> {
        sorted_scores(&self.pool.backend().find_matches(&self.queries[i], false))
    }

    fn bench_lookup(&self, b: &mut criterion::Bencher<'_>) {
        let backend = self.pool.backend();
        let mut i = 0;
        b.iter_batched(
            || {
                i = (i + 1) % self.queries.len();
                self.queries[i].clone()
            },
            |q| backend.find_matches(&q, false),
            criterion::BatchSize::SmallInput,
        )
    }
}
