//! kvmesh-server: the OpenAI API in front of kvmesh's engine workers and KV-aware router.
//!
//! One process, the `kvmesh serve` default:
//!
//! ```text
//!  client ──HTTP──► app (axum): auth, body limit, parse + check, tokenise
//!                     │
//!                     ▼
//!                   generate: admit (429 when full) ─► Router (kvmesh-index: index + load
//!                     │                                 + selector) picks a worker
//!                     ▼
//!  worker thread 0..N: Engine::step() loop ── outputs ──► whole response or SSE chunks
//!                     │
//!                     └── pool KV events ──► KvEventPublisher ──► the Router's index
//! ```
//!
//! - [`app`]: routes, auth, parsing, `/health`, `/metrics`, `/v1/models`.
//! - [`generate`]: one request's path: admission, routing, submission, response.
//! - [`worker`]: the thread that owns an engine; the only code that touches it.
//! - [`events`]: how KV events reach the router ([`KvEventPublisher`]).
//! - [`metrics`]: vLLM-named Prometheus metrics.
//! - [`openai`]: wire types and errors.
//! - [`serve`]: binding, loading in the background, shutdown with a drain.
//! - [`client`]: a small HTTP client for OpenAI endpoints (the load generator's, and tests').
#![deny(missing_docs)]

pub mod app;
pub mod client;
pub mod events;
pub mod generate;
pub mod metrics;
pub mod openai;
pub mod serve;
pub mod state;
pub mod worker;

pub use events::{InProcessPublisher, KvEventPublisher};
pub use openai::{ApiError, RequestLimits};
pub use serve::{ServeConfig, ServeError, Server};
pub use state::{ApiSettings, AppState, Ready};
