//! Prefix-index benchmarks on a seeded, realistic KV event stream, optionally side by side with
//! Dynamo's `dynamo-kv-router` (feature `dynamo`). Recorded numbers: `../BENCH.md` and
//! `docs/bench/index.md`.
//!
//! ```text
//! cargo bench -p kvmesh-index --bench index                      # kvmesh only
//! cargo bench -p kvmesh-index --bench index --features dynamo    # + Dynamo RadixTree / ThreadPool
//! ```
//!
//! # Workload
//!
//! W workers, each a block pool of `cap` blocks. Requests come from `32 W` conversation slots
//! picked by Zipf(1.0) popularity; a conversation is one of 16 system prompts (Zipf(1.2), 4..32
//! blocks; 10% of conversations have none) followed by turns of 2..24 new blocks each, up to 256
//! blocks, after which the slot starts a new conversation (20% of requests also do). A
//! conversation goes to its home worker (90%) or a random one. The worker stores the blocks it
//! lacks (one `Stored` run, parent = the last block it held) and, when over capacity, evicts its
//! least recently used chain tail-first up to the first block another chain still uses (one
//! `Removed` run). Every `Stored` has a parent the worker holds, so both indexes accept all events.
//!
//! # Phases (printed as markdown tables)
//!
//! Per fleet size (`KVMESH_BENCH_WORKERS`, default `16,256`): fill to 90% of capacity (ingest
//! of pure stores), warm churn (2 x capacity events), measured churn (stores + removes),
//! memory at that steady state, then `KVMESH_BENCH_QUERIES` lookups of 64..128-block request
//! chains, each timed alone with `Instant` (p50/p99/p99.9), with hit ratio and a check that every
//! index returns the same per-worker overlaps; beside them, a random-line floor (the cache lines
//! ExactIndex's walk probes, read with nothing else: `index/floor.rs`). Then a churn run of
//! `KVMESH_BENCH_CHURN_EVENTS` (default 10M) events at `KVMESH_BENCH_CHURN_WORKERS` (default 256)
//! workers printing memory at 10 checkpoints, and criterion means for lookups and cold-fill
//! ingest. `KVMESH_BENCH_SHARDS` (default 1) sets `ShardedIndex`'s shard count.
//!
//! # Memory accounting
//!
//! A counting global allocator tracks live heap bytes. Each index is charged with the net change
//! of that count while the index is being called (nothing else runs then), plus the heap of
//! events handed to it by value (Dynamo's events own `Vec`s). So both sides are measured the same
//! way, by bytes requested from the allocator; the `malloc` column adds glibc's per-chunk cost
//! (8-byte header, 16-byte rounding, 32-byte minimum), which weighs on many small allocations.
//! `KVMESH_BENCH_COUNT_ALLOC=0` turns counting off to show its cost on timings.
//!
//! Files: `index/workload.rs` (generator), `index/subjects.rs` (the [`Subject`] interface and kvmesh's
//! adapters), `index/dynamo.rs` (the peer, feature `dynamo`), `index/alloc.rs` (counting allocator),
//! `index/floor.rs` (the random-line floor).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use kvmesh_index::{ExactIndex, ShardedIndex};

#[path = "index/alloc.rs"]
mod alloc;
#[path = "index/floor.rs"]
mod floor;
#[cfg(feature = "dynamo")]
#[path = "index/dynamo.rs"]
mod peer;
#[path = "index/subjects.rs"]
mod subjects;
#[path = "index/workload.rs"]
mod workload;

use alloc::COUNT_ALLOC;
use floor::LineFloor;
use subjects::{Kvmesh, Subject};
use workload::{Block, Config, Op, Workload};

// ---------------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------------

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Knobs {
    quick: bool,
    seed: u64,
    threads: usize,
    queries: usize,
    chunk: usize,
    shards: usize,
}

/// How many indexes are compared (2 for kvmesh, 2 more with `dynamo`).
const SUBJECTS: usize = if cfg!(feature = "dynamo") { 4 } else { 2 };

/// A fresh, empty index number `i` (see [`SUBJECTS`]).
fn subject(i: usize, workers: u32, k: &Knobs) -> Box<dyn Subject> {
    match i {
        0 => Box::new(Kvmesh::new(ExactIndex::new(), 1)),
        1 => Box::new(Kvmesh::new(ShardedIndex::new(k.shards), k.threads)),
        #[cfg(feature = "dynamo")]
        2 => Box::new(peer::Radix::new(workers)),
        #[cfg(feature = "dynamo")]
        3 => Box::new(peer::Pool::new(workers, k.threads)),
        _ => unreachable!("{workers} workers: no index {i}"),
    }
}

fn subjects(workers: u32, k: &Knobs) -> Vec<Box<dyn Subject>> {
    (0..SUBJECTS).map(|i| subject(i, workers, k)).collect()
}

fn mib(b: isize) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Ingest totals of one phase for one subject.
#[derive(Default, Clone, Copy)]
struct Tally {
    time: Duration,
    stored: usize,
    removed: usize,
}

impl Tally {
    fn rate(&self, what: usize) -> f64 {
        what as f64 / self.time.as_secs_f64()
    }
}

fn feed(w: &mut Workload, subjects: &mut [Box<dyn Subject>], tallies: &mut [Tally], chunk: usize) {
    let ops = w.chunk(chunk);
    let (mut st, mut rm) = (0, 0);
    for op in &ops {
        match op {
            Op::Store { blocks, .. } => st += blocks.len(),
            Op::Remove { seqs, .. } => rm += seqs.len(),
        }
    }
    for (s, t) in subjects.iter_mut().zip(tallies.iter_mut()) {
        t.time += s.ingest(&ops);
        t.stored += st;
        t.removed += rm;
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Builds one fleet's indexes through fill and churn, printing ingest, memory and lookups.
/// Returns the subjects with their queries loaded, for criterion.
fn fleet(workers: u32, k: &Knobs) -> Vec<Box<dyn Subject>> {
    let cfg = Config::new(workers, k.seed);
    let mut w = Workload::new(cfg);
    let mut subs = subjects(workers, k);
    let n = subs.len();
    let cap = cfg.capacity();
    println!(
        "\n## {workers} workers x {} blocks = {cap} (worker, block) entries at capacity",
        cfg.cap
    );

    let mut fill = vec![Tally::default(); n];
    while w.live < cap * 9 / 10 {
        feed(&mut w, &mut subs, &mut fill, k.chunk);
    }
    let mut warm = vec![Tally::default(); n];
    while warm[0].stored + warm[0].removed < 2 * cap {
        feed(&mut w, &mut subs, &mut warm, k.chunk);
    }
    let churn_events = if k.quick {
        cap
    } else {
        (4 * cap).max(2_000_000)
    };
    let mut churn = vec![Tally::default(); n];
    while churn[0].stored + churn[0].removed < churn_events {
        feed(&mut w, &mut subs, &mut churn, k.chunk);
    }

    println!("\n### Ingest ({workers} workers)\n");
    println!("| index | fill: stored blocks/s | churn: block events/s (stored + removed) | ratio vs first |");
    println!("|---|---:|---:|---:|");
    let base = (
        fill[0].rate(fill[0].stored),
        churn[0].rate(churn[0].stored + churn[0].removed),
    );
    for (s, (f, c)) in subs.iter().zip(fill.iter().zip(&churn)) {
        let (fr, cr) = (f.rate(f.stored), c.rate(c.stored + c.removed));
        println!(
            "| {} | {:.2} M | {:.2} M | {:.2} / {:.2} |",
            s.name(),
            fr / 1e6,
            cr / 1e6,
            fr / base.0,
            cr / base.1
        );
    }
    println!(
        "\nfill: {} stored blocks ({} removed); churn: {} stored + {} removed",
        fill[0].stored, fill[0].removed, churn[0].stored, churn[0].removed
    );

    println!(
        "\n### Memory at steady state ({workers} workers, {} live entries)\n",
        w.live
    );
    println!(
        "| index | heap MiB | bytes/entry | with malloc chunks | own estimate | entries reported |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &subs {
        let h = s.heap();
        let own = s.own_estimate().map_or("-".to_string(), |b| {
            format!("{:.1} B", b as f64 / w.live as f64)
        });
        let entries = s.entries();
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {}{} |",
            s.name(),
            mib(h.bytes),
            h.bytes as f64 / w.live as f64,
            h.malloc as f64 / w.live as f64,
            own,
            entries,
            if entries == w.live { "" } else { " (MISMATCH)" }
        );
    }

    // Lookups.
    let queries: Vec<Vec<Block>> = (0..k.queries).map(|_| w.query(64, 128)).collect();
    let qlen = queries.iter().map(Vec::len).sum::<usize>() as f64 / queries.len() as f64;
    for s in subs.iter_mut() {
        s.load_queries(&queries);
    }
    let mut disagree = 0;
    let (mut hit, mut holders) = (0.0, 0usize);
    let mut probed = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let first = subs[0].scores(i);
        let best = first.iter().map(|&(_, c)| c).max().unwrap_or(0) as usize;
        hit += best as f64 / q.len() as f64;
        probed.push((best + 1).min(q.len()));
        holders += first.len();
        if subs[1..].iter().any(|s| s.scores(i) != first) {
            disagree += 1;
        }
    }
    println!(
        "\n### Lookup ({workers} workers; {} queries of {:.0} blocks on average; best-worker hit ratio {:.1}%; {:.1} workers hold a prefix per query; indexes disagree on {disagree} queries)\n",
        queries.len(),
        qlen,
        100.0 * hit / queries.len() as f64,
        holders as f64 / queries.len() as f64
    );
    println!("| index | p50 | p90 | p99 | p99.9 | mean | p50 ratio vs first |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let lens: Vec<usize> = queries.iter().map(Vec::len).collect();
    let floor = LineFloor::new(subs[0].own_estimate().unwrap_or(0), &probed, &lens, k.seed);
    // One untimed pass each, then batches of 256 queries round-robin over the indexes and the
    // floor, so that a noisy neighbour on a shared machine hits all of them alike.
    for s in subs.iter_mut() {
        s.time_lookups(0..queries.len());
    }
    floor.time_lookups(0..queries.len());
    let mut times = vec![Vec::with_capacity(queries.len()); n + 1];
    for start in (0..queries.len()).step_by(256) {
        let range = start..(start + 256).min(queries.len());
        for (s, t) in subs.iter_mut().zip(&mut times) {
            t.extend(s.time_lookups(range.clone()));
        }
        times[n].extend(floor.time_lookups(range));
    }
    let names: Vec<String> = subs
        .iter()
        .map(|s| s.name())
        .chain([floor.name()])
        .collect();
    let mut base_p50 = 0;
    let mut floor_p50 = 0;
    for (name, mut ns) in names.iter().zip(times) {
        ns.sort_unstable();
        let p50 = percentile(&ns, 0.5);
        if base_p50 == 0 {
            base_p50 = p50;
        }
        floor_p50 = p50;
        println!(
            "| {} | {:.2} us | {:.2} us | {:.2} us | {:.2} us | {:.2} us | {:.2} |",
            name,
            p50 as f64 / 1e3,
            percentile(&ns, 0.9) as f64 / 1e3,
            percentile(&ns, 0.99) as f64 / 1e3,
            percentile(&ns, 0.999) as f64 / 1e3,
            ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
            p50 as f64 / base_p50 as f64
        );
    }
    println!(
        "\n{} p50 / floor p50: {:.2} (the floor reads the lines its walk probes and nothing else; see `index/floor.rs`)",
        names[0],
        base_p50 as f64 / floor_p50 as f64
    );
    assert_eq!(disagree, 0, "indexes disagree on overlaps");
    subs
}

/// A long run at steady live size; memory at 10 checkpoints should stay flat.
fn churn_run(workers: u32, events: usize, k: &Knobs) {
    let cfg = Config::new(workers, k.seed ^ 0xC0FFEE);
    let mut w = Workload::new(cfg);
    let mut subs = subjects(workers, k);
    let n = subs.len();
    let cap = cfg.capacity();
    let mut tallies = vec![Tally::default(); n];
    let t0 = Instant::now();
    // Fill, then 2 x capacity events of churn: the block map's size settles (a power-of-two
    // table doubling during warm-up is growth to the steady size, not a leak).
    while w.live < cap * 9 / 10 {
        feed(&mut w, &mut subs, &mut tallies, k.chunk);
    }
    let filled = tallies[0].stored;
    while tallies[0].stored + tallies[0].removed < filled + 2 * cap {
        feed(&mut w, &mut subs, &mut tallies, k.chunk);
    }
    println!(
        "\n## Churn: {events} block events at {workers} workers x {} blocks, after a fill of {filled} stored blocks and a warm-up of {} block events\n",
        cfg.cap,
        tallies[0].stored + tallies[0].removed - filled
    );
    let mut header = "| events | live entries |".to_string();
    for s in &subs {
        header += &format!(" {} MiB (B/entry) |", s.name());
    }
    println!("{header}");
    println!("|{}", "---:|".repeat(2 + n));
    let mut curves: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut tallies = vec![Tally::default(); n];
    for c in 0..=10 {
        while tallies[0].stored + tallies[0].removed < events * c / 10 {
            feed(&mut w, &mut subs, &mut tallies, k.chunk);
        }
        let mut row = format!(
            "| {} | {} |",
            tallies[0].stored + tallies[0].removed,
            w.live
        );
        for (s, curve) in subs.iter().zip(&mut curves) {
            let h = s.heap();
            curve.push(h.bytes as f64);
            row += &format!(
                " {:.1} ({:.1}) |",
                mib(h.bytes),
                h.bytes as f64 / w.live as f64
            );
        }
        println!("{row}");
    }
    println!();
    for ((s, curve), t) in subs.iter().zip(&curves).zip(&tallies) {
        let max = curve.iter().cloned().fold(f64::MIN, f64::max);
        let min = curve.iter().cloned().fold(f64::MAX, f64::min);
        let ratio = max / min;
        println!(
            "- {}: max/min heap {:.3} -> {}; last/first {:.3}; {:.2} M block events/s over the run",
            s.name(),
            ratio,
            if ratio <= 1.1 {
                "FLAT (<= 1.10)"
            } else {
                "NOT FLAT (> 1.10)"
            },
            curve[curve.len() - 1] / curve[0],
            t.rate(t.stored + t.removed) / 1e6
        );
    }
    println!(
        "\nchurn run wall time (generator included): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if cfg!(feature = "dynamo") {
        println!(
            "note: ConcurrentRadixTreeCompressed unlinks emptied nodes only in a sweep run at most every \
             5 minutes (dynamo-kv-router src/cleanup.rs, CLEANUP_INTERVAL_MS), the first 5 minutes \
             after construction; this run was shorter, so its growth is the garbage of the whole run."
        );
    }
}

fn criterion_benches(c: &mut Criterion, fleets: &[(u32, Vec<Box<dyn Subject>>)], k: &Knobs) {
    let mut g = c.benchmark_group("lookup");
    for (workers, subs) in fleets {
        for s in subs {
            g.bench_function(BenchmarkId::new(s.id(), format!("w{workers}")), |b| {
                s.bench_lookup(b)
            });
        }
    }
    g.finish();

    // Cold fill of an empty index: the first ~64k block events of a 16-worker stream.
    let workers = 16;
    let ops =
        Workload::new(Config::new(workers, k.seed)).chunk(if k.quick { 1000 } else { 65_536 });
    let blocks: usize = ops.iter().map(Op::blocks).sum();
    let mut g = c.benchmark_group("ingest_fill");
    g.throughput(Throughput::Elements(blocks as u64));
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    for i in 0..SUBJECTS {
        let id = subject(i, workers, k).id();
        g.bench_function(BenchmarkId::new(id, format!("w{workers}")), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| subject(i, workers, k).ingest(&ops))
                    .sum()
            })
        });
    }
    g.finish();
}

fn main() {
    COUNT_ALLOC.store(env_usize("KVMESH_BENCH_COUNT_ALLOC", 1) != 0, Relaxed);
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run a small smoke.
    let quick = !std::env::args().any(|a| a == "--bench");
    let k = Knobs {
        quick,
        seed: env_usize("KVMESH_BENCH_SEED", 42) as u64,
        threads: env_usize("KVMESH_BENCH_THREADS", 2),
        queries: env_usize("KVMESH_BENCH_QUERIES", if quick { 200 } else { 20_000 }),
        chunk: if quick { 2048 } else { 65_536 },
        shards: env_usize("KVMESH_BENCH_SHARDS", 1),
    };
    let workers: Vec<u32> = std::env::var("KVMESH_BENCH_WORKERS")
        .unwrap_or_else(|_| if quick { "4".into() } else { "16,256".into() })
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "# kvmesh-index bench (seed {}, {} ingest threads for the concurrent indexes, allocation counting {})",
        k.seed,
        k.threads,
        if COUNT_ALLOC.load(Relaxed) { "on" } else { "OFF" }
    );
    let fleets: Vec<(u32, Vec<Box<dyn Subject>>)> =
        workers.iter().map(|&n| (n, fleet(n, &k))).collect();
    let churn_events = env_usize(
        "KVMESH_BENCH_CHURN_EVENTS",
        if quick { 20_000 } else { 10_000_000 },
    );
    if churn_events > 0 {
        let churn_workers = env_usize("KVMESH_BENCH_CHURN_WORKERS", if quick { 4 } else { 256 });
        churn_run(churn_workers as u32, churn_events, &k);
    }
    if env_usize("KVMESH_BENCH_CRITERION", 1) != 0 {
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args();
        criterion_benches(&mut c, &fleets, &k);
        c.final_summary();
    }
}
