//! The router's view of each worker's load, updated as requests start, finish prefill and end.
//!
//! The router cannot see inside workers, so it counts what it sent: requests in flight, the KV
//! blocks they hold (their prompt blocks, known at routing time), and prompt tokens still to be
//! prefilled (zero once the worker reports the first token). These are the inputs of the
//! decode-load and queued-prefill terms of the selection cost.

use std::collections::{BTreeMap, HashMap};

use crate::overlap::WorkerId;

/// A request's id, unique among requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// One worker's load as the router sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Requests routed to the worker and not finished.
    pub requests: u32,
    /// KV blocks those requests hold (prompt blocks at routing time).
    pub blocks: u64,
    /// Prompt tokens routed but not yet prefilled (cache hits excluded).
    pub prefill_tokens: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    worker: WorkerId,
    blocks: u64,
    prefill_tokens: u64,
}

/// Loads of every worker, and the requests in flight that make them up.
#[derive(Debug, Default, Clone)]
pub struct LoadTracker {
    workers: BTreeMap<WorkerId, WorkerLoad>,
    requests: HashMap<RequestId, InFlight>,
}

impl LoadTracker {
    /// No workers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a worker with no load (no-op if known).
    pub fn add_worker(&mut self, worker: WorkerId) {
        self.workers.entry(worker).or_default();
    }

    /// Removes a worker and forgets its requests in flight; returns them.
    pub fn remove_worker(&mut self, worker: WorkerId) -> Vec<RequestId> {
        self.workers.remove(&worker);
        let gone: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.worker == worker)
            .map(|(&id, _)| id)
            .collect();
        for id in &gone {
            self.requests.remove(id);
        }
        gone
    }

    /// Workers known, sorted by id.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, WorkerLoad)> + '_ {
        self.workers.iter().map(|(&w, &l)| (w, l))
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// A worker's load (zero if unknown).
    pub fn load(&self, worker: WorkerId) -> WorkerLoad {
        self.workers.get(&worker).copied().unwrap_or_default()
    }

    /// A request was sent to `worker`: it holds `blocks` KV blocks and needs `prefill_tokens`
    /// tokens of prefill. Returns false (and changes nothing) for an unknown worker or a
    /// request id already in flight.
    pub fn on_start(
        &mut self,
        request: RequestId,
        worker: WorkerId,
        blocks: u64,
        prefill_tokens: u64,
    ) -> bool {
        if self.requests.contains_key(&request) {
            return false;
        }
        let Some(load) = self.workers.get_mut(&worker) else {
            return false;
        };
        load.requests += 1;
        load.blocks += blocks;
        load.prefill_tokens += prefill_tokens;
        self.requests.insert(
            request,
            InFlight {
                worker,
                blocks,
                prefill_tokens,
            },
        );
        true
    }

    /// The worker produced the request's first token: its prefill is no longer queued.
    pub fn on_prefill_done(&mut self, request: RequestId) {
        if let Some(r) = self.requests.get_mut(&request) {
            if let Some(load) = self.workers.get_mut(&r.worker) {
                load.prefill_tokens -= r.prefill_tokens;
            }
            r.prefill_tokens = 0;
        }
    }

    /// The request ended (finished, cancelled or failed). Unknown ids are ignored.
    pub fn on_finish(&mut self, request: RequestId) {
        if let Some(r) = self.requests.remove(&request) {
            if let Some(load) = self.workers.get_mut(&r.worker) {
                load.requests -= 1;
                load.blocks -= r.blocks;
                load.prefill_tokens -= r.prefill_tokens;
            }
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_follows_the_request_lifecycle() {
        let mut t = LoadTracker::new();
        t.add_worker(WorkerId(0));
        assert!(t.on_start(RequestId(1), WorkerId(0), 4, 100));
        assert!(
            !t.on_start(RequestId(1), WorkerId(0), 4, 100),
            "duplicate id"
        );
        assert!(
            !t.on_start(RequestId(2), WorkerId(9), 4, 100),
            "unknown worker"
        );
        assert_eq!(
            t.load(WorkerId(0)),
            WorkerLoad {
                requests: 1,
                blocks: 4,
                prefill_tokens: 100
            }
        );
        t.on_prefill_done(RequestId(1));
        assert_eq!(t.load(WorkerId(0)).prefill_tokens, 0);
        t.on_finish(RequestId(1));
        t.on_finish(RequestId(1));
        assert_eq!(t.load(WorkerId(0)), WorkerLoad::default());
        assert!(t.on_start(RequestId(3), WorkerId(0), 1, 1));
        assert_eq!(t.remove_worker(WorkerId(0)), vec![RequestId(3)]);
        assert_eq!(t.in_flight(), 0);
    }
}
