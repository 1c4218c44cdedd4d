//! The indexes under test behind one interface, [`Subject`], and kvmesh's adapters.

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use kvmesh_core::{KvEvent, SequenceHash, Tier};
use kvmesh_index::{ExactIndex, PrefixIndex, ShardedIndex, WorkerId};

use crate::alloc::Heap;
use crate::workload::{Block, Op};

/// One index fed from [`Op`]s: converts them to its own events (untimed), applies them (timed,
/// memory charged), and answers prepared queries.
pub(crate) trait Subject {
    fn name(&self) -> String;
    /// A short id for criterion.
    fn id(&self) -> &'static str;
    /// Applies `ops`; returns the time spent inside the index.
    fn ingest(&mut self, ops: &[Op]) -> Duration;
    fn heap(&self) -> Heap;
    /// The index's own estimate of its heap, if it has one.
    fn own_estimate(&self) -> Option<usize>;
    /// (worker, block) pairs the index reports holding.
    fn entries(&self) -> usize;
    fn load_queries(&mut self, queries: &[Vec<Block>]);
    /// Times each loaded query in `range` once (ns).
    fn time_lookups(&mut self, range: Range<usize>) -> Vec<u64>;
    /// Per-worker leading blocks of loaded query `i`, sorted by worker.
    fn scores(&self, i: usize) -> Vec<(u32, u32)>;
    fn bench_lookup(&self, b: &mut criterion::Bencher<'_>);
}

pub(crate) fn sequence_hash(b: &Block) -> SequenceHash {
    SequenceHash::from_u128(b.seq)
}

/// kvmesh events, grouped into per-worker runs.
pub(crate) fn to_kvmesh(ops: &[Op]) -> (Vec<(WorkerId, usize, usize)>, Vec<KvEvent>) {
    let mut runs = Vec::with_capacity(ops.len());
    let mut events = Vec::with_capacity(ops.iter().map(Op::blocks).sum());
    for op in ops {
        let start = events.len();
        let worker = match op {
            Op::Store {
                worker,
                parent,
                blocks,
                ..
            } => {
                let mut prev = parent.as_ref().map(sequence_hash);
                for b in blocks {
                    let hash = sequence_hash(b);
                    events.push(KvEvent::Stored {
                        hash,
                        parent: prev,
                        tier: Tier::Device,
                    });
                    prev = Some(hash);
                }
                worker
            }
            Op::Remove { worker, seqs } => {
                events.extend(seqs.iter().map(|&s| KvEvent::Removed {
                    hash: SequenceHash::from_u128(s),
                    tier: Tier::Device,
                }));
                worker
            }
        };
        runs.push((WorkerId(*worker), start, events.len()));
    }
    (runs, events)
}

pub(crate) struct Kvmesh<I> {
    index: I,
    threads: usize,
    heap: Heap,
    queries: Vec<Vec<SequenceHash>>,
}

impl<I> Kvmesh<I> {
    pub(crate) fn new(index: I, threads: usize) -> Self {
        Kvmesh {
            index,
            threads,
            heap: Heap::default(),
            queries: Vec::new(),
        }
    }
}

/// What `Kvmesh<I>` needs beyond `PrefixIndex`: a shared-reference apply for threaded ingest.
pub(crate) trait KvmeshIndex: PrefixIndex + Sync {
    const NAME: &'static str;
    const ID: &'static str;
    /// The name with this instance's configuration.
    fn label(&self) -> String {
        Self::NAME.to_string()
    }
    fn apply_run(&self, _worker: WorkerId, _events: &[KvEvent]) {
        unreachable!("single-threaded index")
    }
}

impl KvmeshIndex for ExactIndex {
    const NAME: &'static str = "kvmesh ExactIndex";
    const ID: &'static str = "kvmesh_exact";
}

impl KvmeshIndex for ShardedIndex {
    const NAME: &'static str = "kvmesh ShardedIndex";
    const ID: &'static str = "kvmesh_sharded";
    fn label(&self) -> String {
        format!("{}({})", Self::NAME, self.shard_count())
    }
    fn apply_run(&self, worker: WorkerId, events: &[KvEvent]) {
        self.apply_batch_shared(worker, events);
    }
}

impl<I: KvmeshIndex> Subject for Kvmesh<I> {
    fn name(&self) -> String {
        format!("{}, {} thread(s)", self.index.label(), self.threads)
    }

    fn id(&self) -> &'static str {
        I::ID
    }

    fn ingest(&mut self, ops: &[Op]) -> Duration {
        let (runs, events) = to_kvmesh(ops);
        let before = Heap::now();
        let t = Instant::now();
        if self.threads <= 1 {
            for &(w, a, b) in &runs {
                self.index.apply_batch(w, &events[a..b]);
            }
        } else {
            // Per-worker order is kept: each worker's runs go to one thread.
            let (index, threads) = (&self.index, self.threads);
            let (runs, events) = (&runs, &events);
            std::thread::scope(|s| {
                for k in 0..threads {
                    s.spawn(move || {
                        for &(w, a, b) in runs {
                            if w.0 as usize % threads == k {
                                index.apply_run(w, &events[a..b]);
                            }
                        }
                    });
                }
            });
        }
        let dt = t.elapsed();
        self.heap.charge(before, Heap::default());
        dt
    }

    fn heap(&self) -> Heap {
        self.heap
    }

    fn own_estimate(&self) -> Option<usize> {
        Some(self.index.memory_usage())
    }

    fn entries(&self) -> usize {
        self.index.stats().entries
    }

    fn load_queries(&mut self, queries: &[Vec<Block>]) {
        self.queries = queries
            .iter()
            .map(|q| q.iter().map(sequence_hash).collect())
            .collect();
    }

    fn time_lookups(&mut self, range: Range<usize>) -> Vec<u64> {
        // Copied before the clock starts, as the peer's adapter must (its lookup takes the
        // sequence by value): both sides start with the request in cache, as a router does
        // right after hashing it.
        let owned: Vec<_> = self.queries[range].to_vec();
        owned
            .iter()
            .map(|q| {
                let t = Instant::now();
                drop(black_box(self.index.overlaps(black_box(q))));
                t.elapsed().as_nanos() as u64
            })
            .collect()
    }

    fn scores(&self, i: usize) -> Vec<(u32, u32)> {
        let s = self.index.overlaps(&self.queries[i]);
        s.iter().map(|(w, c)| (w.0, c.total())).collect()
    }

    fn bench_lookup(&self, b: &mut criterion::Bencher<'_>) {
        // Set up like the peer's: a fresh copy of the next request, outside the timing.
        let mut i = 0;
        b.iter_batched(
            || {
                i = (i + 1) % self.queries.len();
                self.queries[i].clone()
            },
            |q| self.index.overlaps(&q),
            criterion::BatchSize::SmallInput,
        )
    }
}
