//! The router's cost per request in `kvmesh serve`, the engine excluded: hashing the prompt
//! into block hashes, the locked `Router::route` (index lookup, load-aware selection,
//! in-flight bookkeeping), and the first-token and finish updates. Reported as p50 / p99 /
//! max over individually timed requests, at 2 workers and at 256 simulated workers whose
//! index holds a realistic population of cached conversations.
//!
//! Run: `cargo bench -p kvmesh-server --bench router_overhead`. Target (the serving issue):
//! p99 under 1 ms at 2 and at 256 workers.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use kvmesh_core::{BlockHasher, ExtraKeys, KvEvent, Tier};
use kvmesh_index::{Router, RoutingPolicy, WorkerId};

const BLOCK: u32 = 16;
/// Conversations cached across the fleet.
const CONVERSATIONS: usize = 4096;
/// Tokens of each cached conversation (64 blocks).
const PREFIX_TOKENS: usize = 1024;
/// New tokens each request adds to its conversation.
const NEW_TOKENS: usize = 64;
const REQUESTS: usize = 20_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let hasher = BlockHasher::new(0, BLOCK, &ExtraKeys::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let conversations: Vec<Vec<u32>> = (0..CONVERSATIONS)
        .map(|_| {
            (0..PREFIX_TOKENS)
                .map(|_| (rng.next() % 49_000) as u32)
                .collect()
        })
        .collect();
    println!(
        "router overhead per request: hash {} + {NEW_TOKENS} prompt tokens, route, first token, finish",
        PREFIX_TOKENS
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "workers", "index blocks", "p50 us", "p99 us", "max us", "mean us"
    );
    for workers in [2u32, 256] {
        let router = Mutex::new(Router::new(workers, BLOCK, RoutingPolicy::default(), 0).unwrap());
        // Each conversation cached on one worker, as the workers' events would say.
        for (i, c) in conversations.iter().enumerate() {
            let hashes = hasher.hash_prefix(c);
            let mut parent = None;
            let events: Vec<KvEvent> = hashes
                .iter()
                .map(|&hash| {
                    let e = KvEvent::Stored {
                        hash,
                        parent,
                        tier: Tier::Device,
                    };
                    parent = Some(hash);
                    e
                })
                .collect();
            router
                .lock()
                .unwrap()
                .apply_events(WorkerId(i as u32 % workers), &events);
        }
        let blocks = router.lock().unwrap().stats().index_blocks;
        let mut times = Vec::with_capacity(REQUESTS);
        for r in 0..REQUESTS {
            let mut prompt = conversations[(rng.next() as usize) % CONVERSATIONS].clone();
            prompt.extend((0..NEW_TOKENS).map(|_| (rng.next() % 49_000) as u32));
            let id = r as u64;
            let start = Instant::now();
            let hashes = hasher.hash_prefix(&prompt);
            let route = router
                .lock()
                .unwrap()
                .route(id, &hashes, prompt.len() as u64, None);
            black_box(route);
            router.lock().unwrap().on_first_token(id);
            router.lock().unwrap().on_finish(id);
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        println!(
            "{workers:>8} {blocks:>12} {:>10.2} {:>10.2} {:>10.2} {mean:>10.2}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1]
        );
    }
}
