//! What the HTTP handlers share: settings, the loaded model's pieces once ready, the router,
//! the workers, admission, and server-level counters.
//!
//! The server listens before the model is loaded (so `/health` can say 503 "loading" rather
//! than refuse connections); [`AppState::ready`] is set once, when every worker runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use kvmesh_engine::{ChatTemplate, Tokenizer};
use kvmesh_index::Router;

use crate::metrics::ServerMetrics;
use crate::openai::{ApiError, RequestLimits};
use crate::worker::WorkerHandle;

/// Settings the handlers read.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Names the model answers to; the first is reported.
    pub served_model_names: Vec<String>,
    /// Bearer token required on `/v1/*`, if set.
    pub api_key: Option<String>,
    /// Per-request bounds.
    pub limits: RequestLimits,
    /// Most bytes in a request body.
    pub max_body_bytes: usize,
    /// Requests waiting beyond those the workers can run at once (`--max-queued-requests`).
    pub max_queued_requests: usize,
}

/// The model and workers, once loaded.
#[derive(Debug)]
pub struct Ready {
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Its chat template.
    pub template: ChatTemplate,
    /// The engine workers.
    pub workers: Vec<WorkerHandle>,
    /// The routing core, fed by the workers' KV events.
    pub router: Arc<Mutex<Router>>,
    /// Seed of the block hashes (the engines').
    pub hash_seed: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// Longest prompt plus output.
    pub max_len: usize,
    /// Choices that may be in flight at once: workers' `max_num_seqs` plus the queue.
    pub capacity: usize,
}

impl Ready {
    /// The router, locked (a poisoned lock is recovered: the router stays consistent).
    pub fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shared by every handler.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub settings: ApiSettings,
    /// Set once the model is loaded.
    pub ready: OnceLock<Ready>,
    /// Set when shutdown begins: new requests get 503.
    pub shutting_down: AtomicBool,
    /// Choices admitted and not finished.
    in_flight: AtomicUsize,
    /// Request ids (also the router's in-flight keys).
    next_id: AtomicU64,
    /// Server-level counters.
    pub metrics: ServerMetrics,
}

impl AppState {
    /// A state with nothing loaded yet.
    pub fn new(settings: ApiSettings) -> Arc<Self> {
        Arc::new(AppState {
            settings,
            ready: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            metrics: ServerMetrics::default(),
        })
    }

    /// The loaded model, or 503 while loading or shutting down.
    pub fn serving(&self) -> Result<&Ready, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            self.metrics.reject("unavailable");
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        self.ready.get().ok_or_else(|| {
            self.metrics.reject("unavailable");
            ApiError::unavailable("The model is still loading; retry in a moment (GET /health says when it is ready).")
        })
    }

    /// The name responses report.
    pub fn model_name(&self) -> &str {
        self.settings
            .served_model_names
            .first()
            .map_or("kvmesh", String::as_str)
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Admits `choices` more choices, or 429 when that would exceed `capacity`.
    pub fn admit(self: &Arc<Self>, choices: usize, capacity: usize) -> Result<Admission, ApiError> {
        let before = self.in_flight.fetch_add(choices, Ordering::AcqRel);
        if before + choices > capacity {
            self.in_flight.fetch_sub(choices, Ordering::AcqRel);
            self.metrics.reject("queue_full");
            return Err(ApiError::queue_full(capacity));
        }
        Ok(Admission {
            state: Arc::clone(self),
            choices,
        })
    }

    /// Choices in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Admitted choices; released on drop.
#[derive(Debug)]
pub struct Admission {
    state: Arc<AppState>,
    choices: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state
            .in_flight
            .fetch_sub(self.choices, Ordering::AcqRel);
    }
}
