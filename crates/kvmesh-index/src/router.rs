//! The routing core: the prefix index, the load tracker and the worker selector behind one type.
//!
//! [`Router`] is what `kvmesh sim` (in simulated time) and `kvmesh serve` (behind HTTP) both
//! route with, so what the simulator predicts is what the server does. It sees only what a
//! production router sees: the KV events workers publish, and the requests it sent with their
//! first token and completion. It never looks inside a worker.
//!
//! Each decision is classified by *why* the worker was chosen ([`RouteReason`]), which the
//! server exports as a metric: whether requests follow their KV (`overlap`), spread by load
//! because nobody held their prefix (`load`), or were placed without cache or load
//! information (`fallback`: round-robin and random).
//!
//! Events from a worker outside the fleet are counted and ignored; events about blocks the
//! index does not hold are the index's business (counted in its stats). Nothing here panics
//! on bad input.

use kvmesh_core::{KvEvent, SequenceHash};

use crate::error::IndexConfigError;
use crate::exact::ExactIndex;
use crate::load::{LoadTracker, RequestId, WorkerLoad};
use crate::overlap::WorkerId;
use crate::selection::{RoutingPolicy, RoutingRequest, Selection, WorkerSelector};
use crate::traits::PrefixIndex;

/// Why the router chose a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteReason {
    /// The chosen worker holds a prefix of the request (at least one block, any tier).
    Overlap,
    /// No cached prefix on the chosen worker: chosen by load (KV-aware, least-loaded).
    Load,
    /// Chosen without cache or load information (round-robin, random).
    Fallback,
}

impl RouteReason {
    /// Every reason, for exporting zero counters.
    pub const ALL: [RouteReason; 3] = [
        RouteReason::Overlap,
        RouteReason::Load,
        RouteReason::Fallback,
    ];

    /// Lower-case name (the metric label).
    pub const fn name(self) -> &'static str {
        match self {
            RouteReason::Overlap => "overlap",
            RouteReason::Load => "load",
            RouteReason::Fallback => "fallback",
        }
    }
}

/// One routing decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// The selector's choice: worker, its cached blocks for this request, cost.
    pub selection: Selection,
    /// Why.
    pub reason: RouteReason,
}

/// The router's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// KV events applied to the index.
    pub events: u64,
    /// `Stored` events whose parent the index did not hold (reordering or loss).
    pub orphan_stores: u64,
    /// `Removed` events for blocks the index did not hold.
    pub unknown_removes: u64,
    /// Events from workers outside the fleet (ignored).
    pub unknown_worker_events: u64,
    /// Blocks the index holds (over all workers and tiers).
    pub index_blocks: usize,
    /// Decisions by reason, in [`RouteReason::ALL`] order.
    pub decisions: [u64; 3],
}

/// Routes requests to workers `0..workers` by a [`RoutingPolicy`], fed by KV events.
#[derive(Debug)]
pub struct Router {
    index: ExactIndex,
    loads: LoadTracker,
    selector: WorkerSelector,
    workers: u32,
    block_size: u32,
    events: u64,
    unknown_worker_events: u64,
    decisions: [u64; 3],
}

impl Router {
    /// A router over workers `0..workers` whose blocks hold `block_size` tokens; `seed`
    /// drives the random policy and softmax sampling.
    pub fn new(
        workers: u32,
        block_size: u32,
        policy: RoutingPolicy,
        seed: u64,
    ) -> Result<Self, IndexConfigError> {
        let mut loads = LoadTracker::new();
        for w in 0..workers {
            loads.add_worker(WorkerId(w));
        }
        Ok(Router {
            index: ExactIndex::new(),
            loads,
            selector: WorkerSelector::new(policy, seed)?,
            workers,
            block_size: block_size.max(1),
            events: 0,
            unknown_worker_events: 0,
            decisions: [0; 3],
        })
    }

    /// Chooses a worker for request `id` (unique among requests in flight) whose prompt has
    /// `prompt_tokens` tokens and full-block sequence `hashes`, and records it as in flight
    /// there. `affinity` keeps a session on one worker among equals. `None` only for a fleet
    /// without workers.
    pub fn route(
        &mut self,
        id: u64,
        hashes: &[SequenceHash],
        prompt_tokens: u64,
        affinity: Option<u64>,
    ) -> Option<Route> {
        let overlaps = self.index.overlaps(hashes);
        let request = RoutingRequest {
            hashes,
            prompt_tokens,
            block_size: self.block_size,
            affinity,
        };
        let selection = self.selector.select(&request, &overlaps, &self.loads)?;
        let bs = u64::from(self.block_size);
        let cached = (u64::from(selection.cached.total()) * bs).min(prompt_tokens);
        self.loads.on_start(
            RequestId(id),
            selection.worker,
            prompt_tokens.div_ceil(bs),
            prompt_tokens - cached,
        );
        let reason = match self.selector.policy() {
            RoutingPolicy::RoundRobin | RoutingPolicy::Random => RouteReason::Fallback,
            _ if selection.cached.total() > 0 => RouteReason::Overlap,
            _ => RouteReason::Load,
        };
        self.decisions[reason as usize] += 1;
        Some(Route { selection, reason })
    }

    /// Applies a batch of events from `worker`; a worker outside the fleet is ignored.
    pub fn apply_events(&mut self, worker: WorkerId, events: &[KvEvent]) {
        if worker.0 >= self.workers {
            self.unknown_worker_events += events.len() as u64;
            return;
        }
        self.events += events.len() as u64;
        self.index.apply_batch(worker, events);
    }

    /// Request `id` produced its first token: its prefill no longer loads its worker.
    pub fn on_first_token(&mut self, id: u64) {
        self.loads.on_prefill_done(RequestId(id));
    }

    /// Request `id` ended (finished, failed or aborted). Unknown ids are ignored.
    pub fn on_finish(&mut self, id: u64) {
        self.loads.on_finish(RequestId(id));
    }

    /// The index (for inspection).
    pub fn index(&self) -> &ExactIndex {
        &self.index
    }

    /// Worker `w`'s load as the router sees it.
    pub fn load(&self, worker: WorkerId) -> WorkerLoad {
        self.loads.load(worker)
    }

    /// Requests routed and not finished.
    pub fn in_flight(&self) -> usize {
        self.loads.in_flight()
    }

    /// The policy.
    pub fn policy(&self) -> &RoutingPolicy {
        self.selector.policy()
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        let s = self.index.stats();
        RouterStats {
            events: self.events,
            orphan_stores: s.orphan_stores,
            unknown_removes: s.unknown_removes,
            unknown_worker_events: self.unknown_worker_events,
            index_blocks: s.blocks,
            decisions: self.decisions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_core::Tier;

    fn h(i: u128) -> SequenceHash {
        SequenceHash::from_u128(i)
    }

    #[test]
    fn bad_events_never_panic() {
        let mut r = Router::new(2, 16, RoutingPolicy::default(), 0).unwrap();
        let stored = KvEvent::Stored {
            hash: h(1),
            parent: Some(h(99)),
            tier: Tier::Device,
        };
        let removed = KvEvent::Removed {
            hash: h(42),
            tier: Tier::Device,
        };
        r.apply_events(WorkerId(7), &[stored, removed]);
        r.apply_events(WorkerId(u32::MAX), &[KvEvent::Cleared { tier: Tier::Host }]);
        r.apply_events(WorkerId(1), &[removed, stored, stored, removed, removed]);
        r.apply_events(WorkerId(0), &[KvEvent::Cleared { tier: Tier::Disk }]);
        let s = r.stats();
        assert_eq!(s.unknown_worker_events, 3);
        assert_eq!(s.unknown_removes, 3);
        assert_eq!(s.orphan_stores, 2);
        // Finishing unknown requests is harmless too.
        r.on_first_token(12345);
        r.on_finish(12345);
        let route = r.route(1, &[h(1)], 16, None).unwrap();
        assert!(route.selection.worker.0 < 2);
    }

    #[test]
    fn routes_to_the_worker_holding_the_prefix_and_says_why() {
        let mut r = Router::new(4, 16, RoutingPolicy::default(), 0).unwrap();
        let hashes: Vec<_> = (1..=6).map(h).collect();
        let mut parent = None;
        for &hash in &hashes {
            let event = KvEvent::Stored {
                hash,
                parent,
                tier: Tier::Device,
            };
            r.apply_events(WorkerId(3), &[event]);
            parent = Some(hash);
        }
        let route = r.route(1, &hashes, 96, None).unwrap();
        assert_eq!(route.selection.worker, WorkerId(3));
        assert_eq!(route.selection.cached.total(), 6);
        assert_eq!(route.reason, RouteReason::Overlap);
        // The whole prompt was cached: nothing queued for prefill, six blocks held.
        let load = r.load(WorkerId(3));
        assert_eq!((load.requests, load.blocks, load.prefill_tokens), (1, 6, 0));

        let other = r.route(2, &[h(77)], 16, None).unwrap();
        assert_eq!(other.reason, RouteReason::Load);
        assert_ne!(
            other.selection.worker,
            WorkerId(3),
            "the loaded worker is avoided"
        );
        assert_eq!(r.in_flight(), 2);
        r.on_finish(1);
        r.on_finish(2);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.stats().decisions, [1, 1, 0]);
    }

    #[test]
    fn round_robin_decisions_are_fallbacks() {
        let mut r = Router::new(2, 16, RoutingPolicy::RoundRobin, 0).unwrap();
        let a = r.route(1, &[h(1)], 16, None).unwrap();
        let b = r.route(2, &[h(1)], 16, None).unwrap();
        assert_ne!(a.selection.worker, b.selection.worker);
        assert_eq!(a.reason, RouteReason::Fallback);
        assert_eq!(r.stats().decisions, [0, 0, 2]);
    }
}
