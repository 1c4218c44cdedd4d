//! The discrete-event fleet simulation: arrivals, a router, workers, and KV events in
//! between.
//!
//! ```text
//!  arrivals (workload order) ──► Router ──route──► MockEngine w ──steps──► tokens, finishes
//!                                  ▲  index.overlaps once per request        │
//!                                  │  LoadTracker: start / first token / end ◄┘
//!                                  └──── KV events, after `event_delay` ◄──── pool of w
//! ```
//!
//! Time is virtual (nanoseconds). Three kinds of event happen: a request arrives (taken from
//! the workload in order, never queued ahead of time), a worker's step ends, and a batch of KV
//! events reaches the router. Events at the same instant run in the order they were created,
//! and before an arrival at that instant. An idle worker starts a step the moment a request
//! reaches it; a busy one picks new requests up at its next step boundary, as a real
//! engine's scheduler loop does.
//!
//! The router learns three things, each when a real one would: KV events (`Stored` when a
//! worker commits a block at the end of a step, `Removed` when it evicts one while
//! allocating), delayed by [`ClusterBuilder::event_delay_ns`] (0 applies them at once); the
//! first token of a request (its prefill is no longer queued) and its end (both immediate:
//! responses stream through the router). Each request is looked up in the index once, at
//! arrival.
//!
//! Cost per simulated event: one heap operation plus the engine's step work, O(running
//! sequences); the run is single-threaded and deterministic for a given builder and workload.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use kvmesh_core::KvEvent;
use kvmesh_index::{PrefixIndex, Router, WorkerId};

use crate::cost::CostModel;
use crate::engine::{MockEngine, StepOutput};
use crate::metrics::{
    max_over_mean, CacheMemory, EngineTotals, Histogram, HitReport, LoadReport, Percentiles,
    RouterReport, SimReport, Throughput, WorkerReport,
};
use crate::workload::{ratio, IdealCache, Workload};

mod builder;

pub use builder::{ClusterBuilder, PoolCapacity};

const NONE: u64 = u64::MAX;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) policy: String,
    pub(crate) cost: CostModel,
    pub(crate) unlimited: bool,
    pub(crate) blocks_per_worker: usize,
    pub(crate) event_delay_ns: u64,
    /// The workload's ideal, computed once.
    pub(crate) ideal: IdealCache,
}

#[derive(Debug)]
enum Event {
    StepDone(u32),
    KvEvents(u32, Vec<KvEvent>),
}

#[derive(Debug)]
struct Timed {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Debug, Clone, Copy)]
struct RequestRecord {
    worker: u32,
    cached_blocks: u32,
    admitted: bool,
    rejected: bool,
    first_token_ns: u64,
    finish_ns: u64,
}

/// A fleet ready to run one workload; built by [`ClusterBuilder`].
#[derive(Debug)]
pub struct Cluster<'w> {
    workload: &'w Workload,
    engines: Vec<MockEngine>,
    router: Router,
    settings: Settings,
    queue: BinaryHeap<Reverse<Timed>>,
    order: u64,
    records: Vec<RequestRecord>,
    routed: Vec<u64>,
    itl: Histogram,
    out: StepOutput,
    finished: usize,
}

impl<'w> Cluster<'w> {
    fn new(
        workload: &'w Workload,
        engines: Vec<MockEngine>,
        router: Router,
        settings: Settings,
    ) -> Self {
        let n = engines.len();
        Cluster {
            workload,
            engines,
            router,
            settings,
            queue: BinaryHeap::new(),
            order: 0,
            records: vec![
                RequestRecord {
                    worker: u32::MAX,
                    cached_blocks: 0,
                    admitted: false,
                    rejected: false,
                    first_token_ns: NONE,
                    finish_ns: NONE,
                };
                workload.len()
            ],
            routed: vec![0; n],
            itl: Histogram::default(),
            out: StepOutput::default(),
            finished: 0,
        }
    }

    /// The workers' engines (for inspection: pools, counters).
    pub fn engines(&self) -> &[MockEngine] {
        &self.engines
    }

    /// Runs the whole workload and reports.
    pub fn run(self) -> SimReport {
        self.run_with_progress(&mut |_, _| {})
    }

    /// Runs the whole workload, calling `progress(requests ended, requests)` as requests
    /// finish (or are rejected), and reports.
    pub fn run_with_progress(mut self, progress: &mut dyn FnMut(usize, usize)) -> SimReport {
        self.simulate(progress);
        self.report()
    }

    /// Runs until every request has ended; the cluster stays inspectable.
    pub fn simulate(&mut self, progress: &mut dyn FnMut(usize, usize)) {
        let workload: &'w Workload = self.workload;
        let requests = workload.requests();
        let mut next = 0;
        loop {
            let arrival = requests.get(next).map(|r| r.arrival_ns);
            let queued = self.queue.peek().map(|Reverse(t)| t.at);
            match (arrival, queued) {
                (None, None) => break,
                (Some(a), Some(q)) if q <= a => self.pop(progress),
                (Some(a), _) => {
                    self.arrive(next, a, progress);
                    next += 1;
                }
                (None, Some(_)) => self.pop(progress),
            }
        }
        progress(self.finished, requests.len());
    }

    fn push(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Timed {
            at,
            order: self.order,
            event,
        }));
    }

    fn pop(&mut self, progress: &mut dyn FnMut(usize, usize)) {
        let Some(Reverse(t)) = self.queue.pop() else {
            return;
        };
        match t.event {
            Event::StepDone(w) => self.step_done(w, t.at, progress),
            Event::KvEvents(w, events) => self.router.apply_events(WorkerId(w), &events),
        }
    }

    fn arrive(&mut self, index: usize, now: u64, progress: &mut dyn FnMut(usize, usize)) {
        let workload: &'w Workload = self.workload;
        let req = &workload.requests()[index];
        let Some(route) = self.router.route(
            index as u64,
            &req.hashes,
            u64::from(req.prompt_tokens),
            req.session,
        ) else {
            return;
        };
        let w = route.selection.worker.0;
        self.records[index].worker = w;
        self.routed[w as usize] += 1;
        let engine = &mut self.engines[w as usize];
        if !engine.enqueue(index as u32, req) {
            self.records[index].rejected = true;
            self.router.on_finish(index as u64);
            self.finished += 1;
            progress(self.finished, self.records.len());
            return;
        }
        if !engine.in_step() {
            self.begin_step(w, now);
        }
    }

    fn begin_step(&mut self, w: u32, now: u64) {
        let workload: &'w Workload = self.workload;
        let requests = workload.requests();
        let engine = &mut self.engines[w as usize];
        let duration = engine.begin_step(requests, &mut self.out);
        for a in &self.out.admitted {
            let r = &mut self.records[a.request as usize];
            r.admitted = true;
            r.cached_blocks = a.cached_blocks;
        }
        self.publish(w, now);
        if let Some(d) = duration {
            self.push(now + d, Event::StepDone(w));
        }
    }

    fn step_done(&mut self, w: u32, now: u64, progress: &mut dyn FnMut(usize, usize)) {
        let workload: &'w Workload = self.workload;
        let requests = workload.requests();
        self.engines[w as usize].finish_step(now, requests, &mut self.out);
        for &r in &self.out.first_tokens {
            self.records[r as usize].first_token_ns = now;
            self.router.on_first_token(u64::from(r));
        }
        for &gap in &self.out.token_gaps_ns {
            self.itl.record(gap);
        }
        for &r in &self.out.finished {
            self.records[r as usize].finish_ns = now;
            self.router.on_finish(u64::from(r));
        }
        if !self.out.finished.is_empty() {
            self.finished += self.out.finished.len();
            progress(self.finished, self.records.len());
        }
        self.publish(w, now);
        self.begin_step(w, now);
    }

    /// Sends worker `w`'s buffered KV events to the router, now or after the delay.
    fn publish(&mut self, w: u32, now: u64) {
        let engine = &mut self.engines[w as usize];
        let delay = self.settings.event_delay_ns;
        if delay == 0 {
            let events: Vec<KvEvent> = engine.drain_events().collect();
            if !events.is_empty() {
                self.router.apply_events(WorkerId(w), &events);
            }
        } else {
            let events: Vec<KvEvent> = engine.drain_events().collect();
            if !events.is_empty() {
                self.push(now + delay, Event::KvEvents(w, events));
            }
        }
    }

    /// The report of what ran so far.
    pub fn report(&self) -> SimReport {
        let workload = self.workload;
        let requests = workload.requests();
        let bs = u64::from(workload.block_size());
        let ideal = self.settings.ideal;

        let (mut ttft, mut e2e) = (Vec::new(), Vec::new());
        let (mut prompt_blocks, mut hit_blocks, mut prompt_tokens, mut hit_tokens) = (0, 0, 0, 0);
        let (mut out_tokens, mut all_tokens) = (0u64, 0u64);
        let mut last = 0;
        let mut rejected = 0;
        for (req, rec) in requests.iter().zip(&self.records) {
            rejected += usize::from(rec.rejected);
            if rec.admitted {
                prompt_blocks += req.prompt_blocks() as u64;
                hit_blocks += u64::from(rec.cached_blocks);
                prompt_tokens += u64::from(req.prompt_tokens);
                hit_tokens += (u64::from(rec.cached_blocks) * bs).min(u64::from(req.prompt_tokens));
            }
            if rec.first_token_ns != NONE {
                ttft.push((rec.first_token_ns - req.arrival_ns) as f64 / 1e9);
            }
            if rec.finish_ns != NONE {
                e2e.push((rec.finish_ns - req.arrival_ns) as f64 / 1e9);
                last = last.max(rec.finish_ns);
                out_tokens += u64::from(req.output_tokens.max(1));
                all_tokens += u64::from(req.output_tokens.max(1)) + u64::from(req.prompt_tokens);
            }
        }
        let completed = e2e.len();
        let first = requests.first().map_or(0, |r| r.arrival_ns);
        let makespan_s = last.saturating_sub(first) as f64 / 1e9;
        let per_s = |x: f64| {
            if makespan_s > 0.0 {
                x / makespan_s
            } else {
                0.0
            }
        };
        let block_hit_ratio = ratio(hit_blocks, prompt_blocks);

        let workers: Vec<WorkerReport> = self
            .engines
            .iter()
            .zip(&self.routed)
            .map(|(e, &routed)| {
                let s = e.stats();
                WorkerReport {
                    requests: routed,
                    busy_s: s.busy_ns as f64 / 1e9,
                    prefill_tokens: s.prefill_tokens,
                    decode_tokens: s.decode_tokens,
                    steps: s.steps,
                    preemptions: s.preemptions,
                    evicted_blocks: e.pool_stats().evicted,
                    peak_blocks: s.peak_used_blocks,
                }
            })
            .collect();
        let mut engine = EngineTotals::default();
        for e in &self.engines {
            let s = e.stats();
            engine.steps += s.steps;
            engine.prefill_tokens += s.prefill_tokens;
            engine.recomputed_tokens += s.recomputed_tokens;
            engine.preemptions += s.preemptions;
            engine.evicted_blocks += e.pool_stats().evicted;
            engine.pool_errors += s.pool_errors;
        }
        let kv_bytes_per_block = self.settings.cost.kv_bytes_per_token * bs;
        let peak_max = workers.iter().map(|w| w.peak_blocks).max().unwrap_or(0);
        let peak_total: usize = workers.iter().map(|w| w.peak_blocks).sum();

        SimReport {
            policy: self.settings.policy.clone(),
            workers: self.engines.len(),
            block_size: workload.block_size(),
            unlimited_cache: self.settings.unlimited,
            cost_model: self.settings.cost.name.clone(),
            event_delay_s: self.settings.event_delay_ns as f64 / 1e9,
            requests: requests.len(),
            completed,
            rejected,
            ttft: Percentiles::of(&mut ttft),
            itl: Percentiles::of_histogram_ns(&self.itl),
            e2e: Percentiles::of(&mut e2e),
            throughput: Throughput {
                makespan_s,
                requests_per_s: per_s(completed as f64),
                output_tokens_per_s: per_s(out_tokens as f64),
                total_tokens_per_s: per_s(all_tokens as f64),
            },
            hits: HitReport {
                prompt_blocks,
                hit_blocks,
                block_hit_ratio,
                token_hit_ratio: ratio(hit_tokens, prompt_tokens),
                ideal_block_hit_ratio: ideal.block_hit_ratio(),
                ideal_token_hit_ratio: ideal.token_hit_ratio(),
                ratio_to_ideal: if ideal.block_hit_ratio() > 0.0 {
                    block_hit_ratio / ideal.block_hit_ratio()
                } else {
                    0.0
                },
            },
            load: LoadReport {
                imbalance: max_over_mean(workers.iter().map(|w| w.busy_s)),
                request_imbalance: max_over_mean(workers.iter().map(|w| w.requests as f64)),
                prefill_imbalance: max_over_mean(workers.iter().map(|w| w.prefill_tokens as f64)),
                workers,
            },
            memory: CacheMemory {
                blocks_per_worker: self.settings.blocks_per_worker,
                kv_bytes_per_block,
                peak_kv_bytes_max: peak_max as u64 * kv_bytes_per_block,
                peak_kv_bytes_total: peak_total as u64 * kv_bytes_per_block,
                pool_metadata_bytes: self
                    .engines
                    .iter()
                    .map(|e| e.pool().memory_usage() as u64)
                    .sum(),
                index_bytes: self.router.index().memory_usage() as u64,
            },
            engine,
            router: RouterReport::from(self.router.stats()),
        }
    }
}
