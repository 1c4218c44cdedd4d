//! The simulated router: the real prefix index, load tracker and worker selector.
//!
//! It sees what a production router sees: the KV events workers publish (after a delay the
//! cluster chooses), and the requests it sent with their first token and completion. Events
//! from a worker outside the fleet are counted and ignored; events about blocks the index does
//! not hold are the index's business (counted in its stats). Nothing here panics on bad input.

use kvmesh_core::KvEvent;
use kvmesh_index::{
    ExactIndex, IndexConfigError, LoadTracker, PrefixIndex, RequestId, RoutingPolicy,
    RoutingRequest, Selection, WorkerId, WorkerSelector,
};

use crate::metrics::RouterReport;
use crate::workload::Request;

/// Routes requests to workers by a [`RoutingPolicy`], fed by KV events.
#[derive(Debug)]
pub struct Router {
    index: ExactIndex,
    loads: LoadTracker,
    selector: WorkerSelector,
    workers: u32,
    block_size: u32,
    events: u64,
    unknown_worker_events: u64,
}

impl Router {
    /// A router over workers `0..workers` whose blocks hold `block_size` tokens.
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
            block_size,
            events: 0,
            unknown_worker_events: 0,
        })
    }

    /// Chooses a worker for request `id` and records it as in flight there (`None` only
    /// for a fleet without workers).
    pub fn route(&mut self, id: u64, req: &Request) -> Option<Selection> {
        let overlaps = self.index.overlaps(&req.hashes);
        let routing = RoutingRequest {
            hashes: &req.hashes,
            prompt_tokens: u64::from(req.prompt_tokens),
            block_size: self.block_size,
            affinity: req.session,
        };
        let choice = self.selector.select(&routing, &overlaps, &self.loads)?;
        let bs = u64::from(self.block_size);
        let cached = (u64::from(choice.cached.total()) * bs).min(u64::from(req.prompt_tokens));
        let blocks = u64::from(req.prompt_tokens).div_ceil(bs);
        self.loads.on_start(
            RequestId(id),
            choice.worker,
            blocks,
            u64::from(req.prompt_tokens) - cached,
        );
        Some(choice)
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

    /// The request produced its first token.
    pub fn on_first_token(&mut self, id: u64) {
        self.loads.on_prefill_done(RequestId(id));
    }

    /// The request ended (finished or rejected).
    pub fn on_finish(&mut self, id: u64) {
        self.loads.on_finish(RequestId(id));
    }

    /// The index (for inspection).
    pub fn index(&self) -> &ExactIndex {
        &self.index
    }

    /// Counters for the report.
    pub fn report(&self) -> RouterReport {
        let s = self.index.stats();
        RouterReport {
            events: self.events,
            orphan_stores: s.orphan_stores,
            unknown_removes: s.unknown_removes,
            unknown_worker_events: self.unknown_worker_events,
            index_blocks: s.blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmesh_core::{SequenceHash, Tier};

    fn request(hashes: Vec<SequenceHash>) -> Request {
        Request {
            arrival_ns: 0,
            prompt_tokens: hashes.len() as u32 * 16,
            output_tokens: 1,
            session: None,
            hashes,
            tail: None,
        }
    }

    #[test]
    fn bad_events_never_panic() {
        let mut r = Router::new(2, 16, RoutingPolicy::default(), 0).unwrap();
        let h = SequenceHash::from_u128;
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
        let rep = r.report();
        assert_eq!(rep.unknown_worker_events, 3);
        assert_eq!(rep.unknown_removes, 3);
        assert_eq!(rep.orphan_stores, 2);
        // Finishing unknown requests is harmless too.
        r.on_first_token(12345);
        r.on_finish(12345);
        let choice = r.route(1, &request(vec![h(1)])).unwrap();
        assert!(choice.worker.0 < 2);
    }

    #[test]
    fn routes_to_the_worker_holding_the_prefix() {
        let mut r = Router::new(4, 16, RoutingPolicy::default(), 0).unwrap();
        let hashes: Vec<_> = (1..=6).map(SequenceHash::from_u128).collect();
        let mut parent = None;
        for &hash in &hashes {
            r.apply_events(
                WorkerId(3),
                &[KvEvent::Stored {
                    hash,
                    parent,
                    tier: Tier::Device,
                }],
            );
            parent = Some(hash);
        }
        let choice = r.route(1, &request(hashes)).unwrap();
        assert_eq!(choice.worker, WorkerId(3));
        assert_eq!(choice.cached.total(), 6);
    }
}
