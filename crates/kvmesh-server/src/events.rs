//! KV event transports: how a worker's pool events reach the router's index.
//!
//! A worker publishes each step's events as one batch through a [`KvEventPublisher`]. The
//! router's index is fed only this way, never by looking into a worker, so the same router
//! works whether its workers are threads of this process ([`InProcessPublisher`], the
//! `kvmesh serve` default) or other machines (a network transport implements the same trait).

use std::sync::{Arc, Mutex};

use kvmesh_core::KvEvent;
use kvmesh_index::{Router, WorkerId};

/// Carries one worker's KV event batches to a router.
pub trait KvEventPublisher: Send {
    /// Publishes one batch, in the order the pool produced it.
    fn publish(&mut self, worker: WorkerId, events: &[KvEvent]);
}

/// Applies events straight to a router in this process (a short lock per step).
#[derive(Debug, Clone)]
pub struct InProcessPublisher {
    router: Arc<Mutex<Router>>,
}

impl InProcessPublisher {
    /// A publisher into `router`.
    pub fn new(router: Arc<Mutex<Router>>) -> Self {
        InProcessPublisher { router }
    }
}

impl KvEventPublisher for InProcessPublisher {
    fn publish(&mut self, worker: WorkerId, events: &[KvEvent]) {
        // A poisoned lock means a router panic elsewhere; the index is still consistent
        // (every method leaves it so), so keep feeding it.
        let mut router = self.router.lock().unwrap_or_else(|p| p.into_inner());
        router.apply_events(worker, events);
    }
}
