//! The seeded workload: conversations over shared system prompts, routed to worker pools that
//! store what they lack and evict least recently used chains tail-first (see the bench's doc).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use kvmesh_core::PassThroughHasher;

use crate::env_usize;

/// SplitMix64: a small, seedable generator (no dependency).
pub(crate) struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < p
    }
}

pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Cumulative Zipf(s) over `n` ranks.
pub(crate) struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= acc);
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

/// One KV block: its chained sequence hash (kvmesh's key; Dynamo's `ExternalSequenceBlockHash`
/// is its low 64 bits) and the hash of its own tokens (Dynamo's `LocalBlockHash`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub(crate) seq: u128,
    #[cfg_attr(not(feature = "dynamo"), allow(dead_code))]
    pub(crate) local: u64,
}

pub(crate) fn next_block(parent: Option<&Block>, rng: &mut Rng) -> Block {
    let local = rng.next_u64();
    let p = parent.map_or(0x5EED, |b| b.seq);
    let lo = mix64((p as u64) ^ mix64(local));
    let hi = mix64(((p >> 64) as u64) ^ local.rotate_left(29) ^ 0xA076_1D64_78BD_642F);
    Block {
        seq: ((hi as u128) << 64) | lo as u128,
        local,
    }
}

pub(crate) fn extend_chain(chain: &mut Vec<Block>, n: usize, rng: &mut Rng) {
    for _ in 0..n {
        let b = next_block(chain.last(), rng);
        chain.push(b);
    }
}

/// What a worker's pool reported, before it is turned into either index's events.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `blocks` were stored after `parent`; `start` is the first one's position.
    Store {
        worker: u32,
        parent: Option<Block>,
        blocks: Vec<Block>,
        #[cfg_attr(not(feature = "dynamo"), allow(dead_code))]
        start: u32,
    },
    /// `seqs` were evicted, tail first.
    Remove { worker: u32, seqs: Vec<u128> },
}

impl Op {
    pub(crate) fn blocks(&self) -> usize {
        match self {
            Op::Store { blocks, .. } => blocks.len(),
            Op::Remove { seqs, .. } => seqs.len(),
        }
    }
}

type U128Map<V> = HashMap<u128, V, BuildHasherDefault<PassThroughHasher>>;

struct Held {
    parent: Option<u128>,
    children: u32,
    tick: u64,
}

/// One worker's cache as a forest of held blocks with LRU over leaves (lazy queue).
struct Pool {
    held: U128Map<Held>,
    leaves: VecDeque<(u64, u128)>,
    cap: usize,
}

impl Pool {
    /// The request `chain` ran on this worker: store what it lacks, then evict down to `cap`.
    fn request(&mut self, worker: u32, chain: &[Block], tick: u64, ops: &mut Vec<Op>) {
        // Held blocks always have their whole prefix held, so scan back to the first held one.
        let mut i = chain.len();
        while i > 0 && !self.held.contains_key(&chain[i - 1].seq) {
            i -= 1;
        }
        let last = chain[chain.len() - 1].seq;
        if i == chain.len() {
            let h = self.held.get_mut(&last).expect("held");
            h.tick = tick;
            if h.children == 0 {
                self.leaves.push_back((tick, last));
            }
            return;
        }
        let parent = (i > 0).then(|| chain[i - 1]);
        if let Some(p) = parent {
            self.held.get_mut(&p.seq).expect("held").children += 1;
        }
        for j in i..chain.len() {
            self.held.insert(
                chain[j].seq,
                Held {
                    parent: (j > 0).then(|| chain[j - 1].seq),
                    children: u32::from(j + 1 < chain.len()),
                    tick,
                },
            );
        }
        self.leaves.push_back((tick, last));
        ops.push(Op::Store {
            worker,
            parent,
            blocks: chain[i..].to_vec(),
            start: i as u32,
        });
        while self.held.len() > self.cap {
            self.evict_one(worker, ops);
        }
        if self.leaves.len() > 4 * self.held.len() + 1024 {
            let held = &self.held;
            self.leaves
                .retain(|(t, s)| held.get(s).is_some_and(|h| h.children == 0 && h.tick == *t));
        }
    }

    /// Evicts the least recently used leaf and its ancestors that no other chain uses.
    fn evict_one(&mut self, worker: u32, ops: &mut Vec<Op>) {
        let (tick, mut cur) = loop {
            let (t, s) = self.leaves.pop_front().expect("a leaf while over capacity");
            if self
                .held
                .get(&s)
                .is_some_and(|h| h.children == 0 && h.tick == t)
            {
                break (t, s);
            }
        };
        let mut seqs = Vec::new();
        loop {
            let h = self.held.remove(&cur).expect("held");
            seqs.push(cur);
            let Some(p) = h.parent else { break };
            let ph = self.held.get_mut(&p).expect("parent held");
            ph.children -= 1;
            if ph.children > 0 {
                break;
            }
            if ph.tick > tick {
                self.leaves.push_back((ph.tick, p));
                break;
            }
            cur = p;
        }
        ops.push(Op::Remove { worker, seqs });
    }
}

struct Conversation {
    history: Vec<Block>,
    home: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) workers: u32,
    pub(crate) cap: usize,
    pub(crate) seed: u64,
}

impl Config {
    pub(crate) fn new(workers: u32, seed: u64) -> Config {
        let cap = env_usize(
            "KVMESH_BENCH_CAP",
            ((1 << 20) / workers as usize).clamp(256, 16_384),
        );
        Config { workers, cap, seed }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.workers as usize * self.cap
    }
}

pub(crate) struct Workload {
    cfg: Config,
    rng: Rng,
    prompts: Vec<Vec<Block>>,
    prompt_pick: Zipf,
    convs: Vec<Conversation>,
    conv_pick: Zipf,
    pools: Vec<Pool>,
    tick: u64,
    pub(crate) live: usize,
}

const MAX_CHAIN: usize = 256;

impl Workload {
    pub(crate) fn new(cfg: Config) -> Workload {
        let mut rng = Rng(cfg.seed);
        let prompts = (0..16)
            .map(|_| {
                let mut c = Vec::new();
                let n = rng.range(4, 32);
                extend_chain(&mut c, n, &mut rng);
                c
            })
            .collect();
        let slots = 32 * cfg.workers as usize;
        let mut w = Workload {
            cfg,
            rng,
            prompts,
            prompt_pick: Zipf::new(16, 1.2),
            convs: Vec::with_capacity(slots),
            conv_pick: Zipf::new(slots, 1.0),
            pools: (0..cfg.workers)
                .map(|_| Pool {
                    held: U128Map::default(),
                    leaves: VecDeque::new(),
                    cap: cfg.cap,
                })
                .collect(),
            tick: 0,
            live: 0,
        };
        for _ in 0..slots {
            let c = w.fresh_conversation();
            w.convs.push(c);
        }
        w
    }

    fn fresh_conversation(&mut self) -> Conversation {
        let history = if self.rng.chance(0.1) {
            Vec::new()
        } else {
            self.prompts[self.prompt_pick.sample(&mut self.rng)].clone()
        };
        Conversation {
            history,
            home: self.rng.below(self.cfg.workers as usize) as u32,
        }
    }

    /// Serves one request; returns the block events it caused.
    fn request(&mut self, ops: &mut Vec<Op>) -> usize {
        let slot = self.conv_pick.sample(&mut self.rng);
        let turn = self.rng.range(2, 24);
        if self.rng.chance(0.2) || self.convs[slot].history.len() + turn > MAX_CHAIN {
            self.convs[slot] = self.fresh_conversation();
        }
        let worker = if self.rng.chance(0.9) {
            self.convs[slot].home
        } else {
            self.rng.below(self.cfg.workers as usize) as u32
        };
        let conv = &mut self.convs[slot];
        extend_chain(&mut conv.history, turn, &mut self.rng);
        self.tick += 1;
        let first = ops.len();
        self.pools[worker as usize].request(worker, &conv.history, self.tick, ops);
        let mut n = 0;
        for op in &ops[first..] {
            match op {
                Op::Store { blocks, .. } => self.live += blocks.len(),
                Op::Remove { seqs, .. } => self.live -= seqs.len(),
            }
            n += op.blocks();
        }
        n
    }

    /// At least `events` block events, as ops.
    pub(crate) fn chunk(&mut self, events: usize) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut n = 0;
        while n < events {
            n += self.request(&mut ops);
        }
        ops
    }

    /// A request chain of `min..=max` blocks, without serving it: the history of a popular
    /// conversation plus a new turn, padded with new blocks or cut to fit.
    pub(crate) fn query(&mut self, min: usize, max: usize) -> Vec<Block> {
        let slot = self.conv_pick.sample(&mut self.rng);
        let mut chain = self.convs[slot].history.clone();
        let turn = self.rng.range(2, 24);
        extend_chain(&mut chain, turn, &mut self.rng);
        if chain.len() < min {
            let pad = min - chain.len();
            extend_chain(&mut chain, pad, &mut self.rng);
        }
        chain.truncate(max);
        chain
    }
}
