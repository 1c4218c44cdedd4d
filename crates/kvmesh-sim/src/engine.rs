//! A mock inference engine: the real block pool, a continuous-batching scheduler, and a cost
//! model in place of the model.
//!
//! Each worker of the simulated fleet is one [`MockEngine`]. It keeps KV in a real
//! [`kvmesh_core::BlockPool`] (so capacity, prefix hits, LRU eviction and the `Stored` /
//! `Removed` events are the production code's), schedules like vLLM's engine, and asks a
//! [`CostModel`] how long each step takes. It never computes a token.
//!
//! # Guarantees
//!
//! - **Progress.** A request that fits the pool on its own (prompt + output blocks <= pool
//!   blocks) always finishes; one that can never fit is refused at [`MockEngine::enqueue`].
//!   When blocks run out, a sequence preempts newer sequences not yet in the current step
//!   (newest first), else itself; preempted sequences release their blocks and go back to the
//!   front of the waiting queue, and nothing is admitted past them. So the oldest decoding
//!   sequence always advances, decodes finish in bounded time, and the freed blocks let the
//!   queue's head back in.
//! - **Fail closed.** A block is committed (made reusable, `Stored`) only at the end of the step
//!   that computed its last token, and only for the prompt, whose content the workload names.
//! - **Bounded work per step:** O(running sequences + admitted ones).
//!
//! # Current policy (tied to [`EngineConfig`])
//!
//! One step, at time `now`:
//!
//! 1. **Decodes first** (`running`, admission order): one token each, one KV slot each.
//! 2. **Running prefills** (`running`): the next chunk, `min(left, budget left)` tokens
//!    ([`EngineConfig::token_budget`], chunked prefill).
//! 3. **Admissions** (`waiting`, FIFO; preempted sequences go back to its front), only if
//!    nothing was preempted this step and fewer than [`EngineConfig::max_num_seqs`] run: match
//!    the longest cached prefix ([`BlockPool::match_prefix`]), at most `prompt - 1` tokens so
//!    the last prompt token is computed (its logits give the first output token), then a first
//!    chunk. An admission that finds no blocks is undone and waits; admissions do not
//!    preempt.
//! 4. The step lasts `CostModel::step_time_s` of its shape. At its end, prefill progress is
//!    applied, newly full prompt blocks are committed, a sequence whose prefill completed
//!    yields a token (its first token, unless it was recomputing after preemption), each
//!    decode yields a token, and sequences that reached their output length are released.
//!
//! Decode-first ordering is vLLM v0's chunked-prefill policy (and Sarathi-Serve's): decodes
//! never starve behind a long prefill, at the cost of slower prefills under heavy decode load.
//! Preemption is by recompute, vLLM's default; the recomputed prefill covers the prompt and
//! the tokens generated so far, and may hit the sequence's own committed blocks. Generated
//! tokens are not committed to the cache: the simulator does not know their content.

use std::collections::VecDeque;

use kvmesh_core::{BlockPool, EvictionPolicyKind, KvEvent, PoolError, PoolStats, SequenceId};

use crate::cost::{CostModel, StepShape};
use crate::error::ConfigError;
use crate::workload::Request;

/// Settings of one mock engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Tokens per block (must equal the workload's).
    pub block_size: u32,
    /// Sequences running at once (vLLM `max_num_seqs`). Default 256.
    pub max_num_seqs: usize,
    /// Tokens per step, prefill chunks and decodes together (vLLM
    /// `max_num_batched_tokens`). Default 8,192.
    pub token_budget: u32,
    /// Eviction policy of the pool. Default LRU.
    pub eviction: EvictionPolicyKind,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            num_blocks: 4096,
            block_size: 16,
            max_num_seqs: 256,
            token_budget: 8192,
            eviction: EvictionPolicyKind::Lru,
        }
    }
}

impl EngineConfig {
    /// Checks the settings can run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_blocks == 0 {
            return Err(ConfigError::ZeroBlocks);
        }
        if self.block_size == 0 {
            return Err(ConfigError::ZeroBlockSize);
        }
        // Checked here too: kvmesh-core's builder sizes the eviction policy for `num_blocks`
        // before it checks the limit, so an absurd count would allocate first.
        let max = u32::MAX as usize - 1;
        if self.num_blocks > max {
            return Err(ConfigError::Pool(kvmesh_core::ConfigError::TooManyBlocks {
                requested: self.num_blocks,
                max,
            }));
        }
        if self.max_num_seqs == 0 {
            return Err(ConfigError::ZeroMaxSeqs);
        }
        if self.token_budget < self.block_size {
            return Err(ConfigError::BudgetBelowBlock {
                budget: self.token_budget,
                block_size: self.block_size,
            });
        }
        Ok(())
    }
}

/// A request admitted for the first time, with what the cache gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The request's index in the workload.
    pub request: u32,
    /// Leading prompt blocks found in this worker's cache.
    pub cached_blocks: u32,
}

/// What a step did, for the caller's metrics and router. Cleared by each call that fills it.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// Requests admitted for the first time (filled by `begin_step`).
    pub admitted: Vec<Admission>,
    /// Requests preempted (filled by `begin_step`).
    pub preempted: Vec<u32>,
    /// Requests that produced their first token (filled by `finish_step`).
    pub first_tokens: Vec<u32>,
    /// Gaps between consecutive tokens of one request, ns (filled by `finish_step`).
    pub token_gaps_ns: Vec<u64>,
    /// Requests that finished (filled by `finish_step`).
    pub finished: Vec<u32>,
}

impl StepOutput {
    fn clear(&mut self) {
        self.admitted.clear();
        self.preempted.clear();
        self.first_tokens.clear();
        self.token_gaps_ns.clear();
        self.finished.clear();
    }
}

/// Counters of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests accepted by `enqueue`.
    pub enqueued: u64,
    /// Requests refused by `enqueue` (they could never fit the pool).
    pub rejected: u64,
    /// Requests finished.
    pub finished: u64,
    /// Steps run.
    pub steps: u64,
    /// Simulated time spent in steps, ns.
    pub busy_ns: u64,
    /// Prompt tokens computed (recomputation included).
    pub prefill_tokens: u64,
    /// Tokens computed again after a preemption.
    pub recomputed_tokens: u64,
    /// Decode tokens produced.
    pub decode_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Most blocks in use (active or cached) at once.
    pub peak_used_blocks: usize,
    /// Pool operations that failed where they cannot (a bug if non-zero).
    pub pool_errors: u64,
}

#[derive(Debug, Clone)]
struct Seq {
    request: u32,
    pool_seq: Option<SequenceId>,
    /// Tokens of KV the prefill must produce: the prompt, plus tokens generated before a
    /// preemption.
    target: u32,
    /// KV slots written (equals the pool sequence's length while running).
    computed: u32,
    /// Prompt blocks committed.
    committed: u32,
    generated: u32,
    output: u32,
    /// Tokens scheduled in the current step (0: not scheduled).
    step_tokens: u32,
    step_prefill: bool,
    admitted_once: bool,
    last_token_ns: u64,
}

/// One worker: a block pool, waiting and running queues, a cost model.
///
/// Driven by the caller's clock: [`begin_step`](Self::begin_step) schedules a batch and says
/// how long it takes; [`finish_step`](Self::finish_step) applies it at that time.
#[derive(Debug)]
pub struct MockEngine {
    cfg: EngineConfig,
    cost: CostModel,
    pool: BlockPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    in_step: bool,
    stats: EngineStats,
}

impl MockEngine {
    /// An idle engine with an empty pool.
    pub fn new(cfg: EngineConfig, cost: CostModel) -> Result<Self, ConfigError> {
        cfg.validate()?;
        cost.validate().map_err(ConfigError::InvalidCostModel)?;
        let pool = BlockPool::builder()
            .num_blocks(cfg.num_blocks)
            .block_size(cfg.block_size)
            .eviction(cfg.eviction)
            .build()?;
        Ok(MockEngine {
            cfg,
            cost,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            in_step: false,
            stats: EngineStats::default(),
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The block pool (for statistics and invariant checks).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The engine's counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Whether a step is in flight (between `begin_step` and `finish_step`).
    pub fn in_step(&self) -> bool {
        self.in_step
    }

    /// Requests waiting for admission.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests running (holding blocks).
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Whether the engine holds no request.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Blocks request `req` needs to run to completion on its own.
    pub fn blocks_needed(&self, req: &Request) -> usize {
        let tokens = u64::from(req.prompt_tokens.max(1)) + u64::from(req.output_tokens.max(1));
        tokens.div_ceil(u64::from(self.cfg.block_size)) as usize
    }

    /// Queues request number `index` (its position in the workload). Returns false, and
    /// queues nothing, when it could never fit this engine's pool.
    pub fn enqueue(&mut self, index: u32, req: &Request) -> bool {
        if self.blocks_needed(req) > self.cfg.num_blocks {
            self.stats.rejected += 1;
            return false;
        }
        self.stats.enqueued += 1;
        self.waiting.push_back(Seq {
            request: index,
            pool_seq: None,
            target: req.prompt_tokens.max(1),
            computed: 0,
            committed: 0,
            generated: 0,
            output: req.output_tokens.max(1),
            step_tokens: 0,
            step_prefill: false,
            admitted_once: false,
            last_token_ns: 0,
        });
        true
    }

    /// Drains the pool's buffered KV events (evictions during `begin_step`, commits during
    /// `finish_step`).
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, KvEvent> {
        self.pool.drain_events()
    }

    /// Schedules the next step; returns its duration in ns, or `None` when
    /// there is nothing to run (the engine is idle, or waiting requests find no blocks and
    /// nothing runs, which cannot happen for requests `enqueue` accepted). `requests` is the
    /// workload the indices given to `enqueue` refer to.
    ///
    /// # Panics
    /// If a step is already in flight.
    pub fn begin_step(&mut self, requests: &[Request], out: &mut StepOutput) -> Option<u64> {
        assert!(!self.in_step, "begin_step while a step is in flight");
        out.clear();
        let mut shape = StepShape::default();
        let mut budget = self.cfg.token_budget;
        let mut preempted = false;

        // 1. Decodes, then 2. running prefills.
        for decode_pass in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let s = &self.running[i];
                let prefilling = s.computed < s.target;
                if prefilling == decode_pass || s.step_tokens > 0 {
                    i += 1;
                    continue;
                }
                let tokens = if prefilling {
                    (s.target - s.computed).min(budget)
                } else {
                    1
                };
                match self.allocate(i, tokens, out) {
                    Allocated::No => {
                        // `i` itself was preempted; the next sequence moved into its place.
                        preempted = true;
                        continue;
                    }
                    Allocated::AfterPreempting => preempted = true,
                    Allocated::Yes => {}
                }
                let s = &mut self.running[i];
                s.step_tokens = tokens;
                s.step_prefill = prefilling;
                if prefilling {
                    shape.add_prefill(u64::from(tokens), u64::from(s.computed));
                } else {
                    shape.add_decode(u64::from(s.computed) + 1);
                }
                budget -= tokens;
                i += 1;
            }
        }

        // 3. Admissions.
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let req = &requests[front.request as usize];
            let target = front.target;
            let usable = req
                .hashes
                .len()
                .min(((target - 1) / self.cfg.block_size) as usize);
            let m = self
                .pool
                .match_prefix(&req.hashes[..usable], target as usize);
            let computed = m.cached_tokens as u32;
            let tokens = (target - computed).min(budget);
            if self.pool.append_slots(m.sequence, tokens as usize).is_err() {
                self.release(m.sequence);
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            if !s.admitted_once {
                s.admitted_once = true;
                out.admitted.push(Admission {
                    request: s.request,
                    cached_blocks: m.cached_blocks as u32,
                });
            }
            s.pool_seq = Some(m.sequence);
            s.computed = computed;
            s.committed = m.cached_blocks as u32;
            s.step_tokens = tokens;
            s.step_prefill = true;
            shape.add_prefill(u64::from(tokens), u64::from(computed));
            budget -= tokens;
            self.running.push(s);
        }

        let used = self.pool.num_blocks() - self.pool.num_free();
        self.stats.peak_used_blocks = self.stats.peak_used_blocks.max(used);
        if shape.is_empty() {
            return None;
        }
        self.in_step = true;
        self.stats.steps += 1;
        self.stats.prefill_tokens += shape.prefill_tokens;
        let ns = (self.cost.step_time_s(&shape) * 1e9).ceil().max(1.0) as u64;
        self.stats.busy_ns += ns;
        Some(ns)
    }

    /// Makes room for `tokens` more slots of running sequence `i`, preempting newer
    /// sequences not scheduled in this step (newest first), then `i` itself. Victims are
    /// always after `i`, so `i` keeps its position unless it is preempted.
    fn allocate(&mut self, i: usize, tokens: u32, out: &mut StepOutput) -> Allocated {
        let mut preempted = false;
        loop {
            let seq = self.running[i]
                .pool_seq
                .expect("running sequences hold a pool sequence");
            match self.pool.append_slots(seq, tokens as usize) {
                Ok(_) if preempted => return Allocated::AfterPreempting,
                Ok(_) => return Allocated::Yes,
                Err(PoolError::OutOfBlocks { .. }) => {
                    let victim =
                        (i + 1..self.running.len()).rfind(|&v| self.running[v].step_tokens == 0);
                    match victim {
                        Some(v) => {
                            self.preempt(v, out);
                            preempted = true;
                        }
                        None => {
                            self.preempt(i, out);
                            return Allocated::No;
                        }
                    }
                }
                Err(_) => {
                    // Cannot happen for a live sequence; count it and restart the sequence
                    // rather than panic.
                    self.stats.pool_errors += 1;
                    self.preempt(i, out);
                    return Allocated::No;
                }
            }
        }
    }

    fn preempt(&mut self, index: usize, out: &mut StepOutput) {
        let mut s = self.running.remove(index);
        if let Some(seq) = s.pool_seq.take() {
            self.release(seq);
        }
        self.stats.preemptions += 1;
        self.stats.recomputed_tokens += u64::from(s.computed);
        if s.generated > 0 && s.computed >= s.target {
            // Decoding: recompute the prompt and every generated token; the last one's KV was
            // not written yet (`computed` = prompt + generated - 1 while decoding). A sequence
            // preempted during a recompute keeps its target.
            s.target = s.computed + 1;
        }
        s.computed = 0;
        s.committed = 0;
        s.step_tokens = 0;
        out.preempted.push(s.request);
        self.waiting.push_front(s);
    }

    fn release(&mut self, seq: SequenceId) {
        if self.pool.release(seq).is_err() {
            self.stats.pool_errors += 1;
        }
    }

    /// Applies the step begun by `begin_step`, at `now` (ns, its end).
    ///
    /// # Panics
    /// If no step is in flight.
    pub fn finish_step(&mut self, now: u64, requests: &[Request], out: &mut StepOutput) {
        assert!(self.in_step, "finish_step without begin_step");
        self.in_step = false;
        out.clear();
        let bs = self.cfg.block_size;
        let pool = &mut self.pool;
        let stats = &mut self.stats;
        self.running.retain_mut(|s| {
            if s.step_tokens == 0 {
                return true;
            }
            let tokens = std::mem::take(&mut s.step_tokens);
            let seq = s.pool_seq.expect("running sequences hold a pool sequence");
            let produced = if s.step_prefill {
                s.computed += tokens;
                let hashes = &requests[s.request as usize].hashes;
                let full = ((s.computed / bs) as usize).min(hashes.len()) as u32;
                if full > s.committed {
                    if pool.commit_blocks(seq, &hashes[..full as usize]).is_err() {
                        stats.pool_errors += 1;
                    }
                    s.committed = full;
                }
                s.computed == s.target
            } else {
                s.computed += 1;
                stats.decode_tokens += 1;
                true
            };
            if produced {
                if s.generated == 0 {
                    out.first_tokens.push(s.request);
                } else {
                    out.token_gaps_ns.push(now - s.last_token_ns);
                }
                s.generated += 1;
                s.last_token_ns = now;
                // One KV slot per prompt token and per generated token but the newest.
                debug_assert_eq!(
                    s.computed,
                    requests[s.request as usize].prompt_tokens.max(1) + s.generated - 1
                );
                if s.generated >= s.output {
                    if pool.release(seq).is_err() {
                        stats.pool_errors += 1;
                    }
                    stats.finished += 1;
                    out.finished.push(s.request);
                    return false;
                }
            }
            true
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocated {
    Yes,
    AfterPreempting,
    No,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Segment, Workload, WorkloadBuilder};

    /// Requests with prompts made of the given segments, all arriving at 0.
    fn workload(bs: u32, prompts: &[(&[(u64, u32)], u64)]) -> Workload {
        let mut b = WorkloadBuilder::new(bs).unwrap();
        for (segments, output) in prompts {
            let segs: Vec<Segment> = segments
                .iter()
                .map(|&(id, tokens)| Segment { id, tokens })
                .collect();
            b.push(0, &segs, *output, None).unwrap();
        }
        b.build("test")
    }

    fn engine(num_blocks: usize, bs: u32, budget: u32) -> MockEngine {
        MockEngine::new(
            EngineConfig {
                num_blocks,
                block_size: bs,
                token_budget: budget,
                ..EngineConfig::default()
            },
            CostModel::default(),
        )
        .unwrap()
    }

    /// Runs until idle, checking the pool after every call; returns every step's output.
    fn drain(e: &mut MockEngine, w: &Workload, now: &mut u64) -> Vec<StepOutput> {
        let mut outs = Vec::new();
        loop {
            let mut out = StepOutput::default();
            let Some(d) = e.begin_step(w.requests(), &mut out) else {
                break;
            };
            e.pool().check_invariants().unwrap();
            outs.push(out.clone());
            *now += d;
            e.finish_step(*now, w.requests(), &mut out);
            e.pool().check_invariants().unwrap();
            outs.push(out);
        }
        assert!(e.is_idle());
        outs
    }

    fn stored(e: &mut MockEngine) -> usize {
        e.drain_events()
            .filter(|ev| matches!(ev, KvEvent::Stored { .. }))
            .count()
    }

    #[test]
    fn one_request_prefills_then_decodes() {
        let w = workload(16, &[(&[(1, 100)], 5)]);
        let mut e = engine(64, 16, 8192);
        assert!(e.enqueue(0, &w.requests()[0]));
        let mut now = 0;
        let outs = drain(&mut e, &w, &mut now);
        // Prefill step, then 4 decode steps: begin/finish pairs.
        assert_eq!(outs.len(), 10);
        assert_eq!(
            outs[0].admitted,
            [Admission {
                request: 0,
                cached_blocks: 0
            }]
        );
        assert_eq!(outs[1].first_tokens, [0]);
        assert_eq!(outs.iter().map(|o| o.token_gaps_ns.len()).sum::<usize>(), 4);
        assert_eq!(outs[9].finished, [0]);
        let s = e.stats();
        assert_eq!((s.steps, s.prefill_tokens, s.decode_tokens), (5, 100, 4));
        assert_eq!(stored(&mut e), 6);
        // Everything released; the 6 full prompt blocks stay cached.
        assert_eq!(e.pool_stats().cached, 6);
        assert_eq!(e.pool_stats().active, 0);
    }

    #[test]
    fn a_repeated_prompt_hits_all_but_a_block_aligned_last_block() {
        for (prompt, expect) in [(100, 6), (96, 5)] {
            let w = workload(16, &[(&[(1, prompt)], 2), (&[(1, prompt)], 2)]);
            let mut e = engine(64, 16, 8192);
            let mut now = 0;
            e.enqueue(0, &w.requests()[0]);
            drain(&mut e, &w, &mut now);
            e.enqueue(1, &w.requests()[1]);
            let outs = drain(&mut e, &w, &mut now);
            assert_eq!(
                outs[0].admitted,
                [Admission {
                    request: 1,
                    cached_blocks: expect
                }],
                "prompt {prompt}"
            );
        }
    }

    #[test]
    fn chunked_prefill_respects_the_budget_and_decodes_go_first() {
        let w = workload(16, &[(&[(1, 100)], 3), (&[(2, 40)], 3)]);
        let mut e = engine(64, 16, 32);
        let mut now = 0;
        e.enqueue(0, &w.requests()[0]);
        e.enqueue(1, &w.requests()[1]);
        let outs = drain(&mut e, &w, &mut now);
        let s = e.stats();
        assert_eq!(s.prefill_tokens, 140);
        // Request 0 takes 32-token chunks; request 1 waits until a step has budget left.
        let first_token_step = |r: u32| {
            outs.iter()
                .position(|o| o.first_tokens.contains(&r))
                .unwrap()
                / 2
        };
        assert_eq!(
            first_token_step(0),
            3,
            "100 tokens in chunks of 32, 32, 32, 4"
        );
        assert!(first_token_step(1) >= 3);
        assert_eq!(outs.iter().map(|o| o.finished.len()).sum::<usize>(), 2);
    }

    #[test]
    fn preemption_by_recompute_under_a_small_pool() {
        // Each request needs 3 prompt + 3 decode blocks; 4 of them want 24 of 10 blocks.
        let prompts: Vec<(u64, u32)> = (1..=4).map(|id| (id, 48)).collect();
        let specs: Vec<(&[(u64, u32)], u64)> = prompts
            .iter()
            .map(|p| (std::slice::from_ref(p), 40))
            .collect();
        let w = workload(16, &specs);
        let mut e = engine(10, 16, 64);
        for (i, r) in w.requests().iter().enumerate() {
            assert!(e.enqueue(i as u32, r));
        }
        let mut now = 0;
        let outs = drain(&mut e, &w, &mut now);
        let s = e.stats();
        assert!(s.preemptions > 0, "{s:?}");
        assert!(s.recomputed_tokens > 0);
        assert_eq!(s.finished, 4);
        assert_eq!(s.pool_errors, 0);
        assert!(outs.iter().any(|o| !o.preempted.is_empty()));
        // Every request produced exactly its 40 tokens.
        let firsts: usize = outs.iter().map(|o| o.first_tokens.len()).sum();
        let gaps: usize = outs.iter().map(|o| o.token_gaps_ns.len()).sum();
        assert_eq!((firsts, gaps), (4, 4 * 39));
        assert!(
            e.pool_stats().evicted > 0,
            "cached prompts were evicted to make room"
        );
    }

    #[test]
    fn a_request_larger_than_the_pool_is_refused() {
        let w = workload(16, &[(&[(1, 200)], 100)]);
        let mut e = engine(10, 16, 64);
        assert!(!e.enqueue(0, &w.requests()[0]));
        assert_eq!(e.stats().rejected, 1);
        assert!(e.is_idle());
        let mut out = StepOutput::default();
        assert_eq!(e.begin_step(w.requests(), &mut out), None);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let bad = |cfg: EngineConfig| MockEngine::new(cfg, CostModel::default()).err();
        assert_eq!(
            bad(EngineConfig {
                num_blocks: 0,
                ..EngineConfig::default()
            }),
            Some(ConfigError::ZeroBlocks)
        );
        assert_eq!(
            bad(EngineConfig {
                token_budget: 4,
                ..EngineConfig::default()
            }),
            Some(ConfigError::BudgetBelowBlock {
                budget: 4,
                block_size: 16
            })
        );
    }
}
