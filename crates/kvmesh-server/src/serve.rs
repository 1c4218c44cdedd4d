//! `kvmesh serve` as a library call: bind, load the model in the background, run N engine
//! workers behind the in-process router, and drain on shutdown.
//!
//! # Start-up
//!
//! The socket is bound first, so clients and health checks get an answer at once: 503
//! "loading" until every worker's engine is built, then 200. Each worker loads its own copy
//! of the weights with its share of the threads (`threads / workers`, at least one): the
//! model's compute threads belong to the model, and sharing one copy would serialise the
//! workers' forward passes on one thread pool.
//!
//! # Shutdown
//!
//! When the `shutdown` future completes (Ctrl-C / SIGTERM in the binary): `/health` and new
//! requests answer 503, the listener stops accepting, in-flight requests run to completion
//! for up to `drain_timeout`, then whatever is left is aborted (streams end with finish
//! reason `abort`), and the worker threads are joined.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmesh_engine::{ChatTemplate, Engine, EngineConfig, GgufFile, LlamaModel, Tokenizer};
use kvmesh_index::{Router, RoutingPolicy, WorkerId};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::events::InProcessPublisher;
use crate::state::{ApiSettings, AppState, Ready};
use crate::worker::WorkerHandle;

/// Everything `kvmesh serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free one; see [`Server::addr`]).
    pub addr: SocketAddr,
    /// The GGUF model file.
    pub model_path: PathBuf,
    /// Settings of each worker's engine (its `num_blocks` is per worker).
    pub engine: EngineConfig,
    /// Engine workers (at least 1).
    pub workers: usize,
    /// Compute threads in all, split between the workers.
    pub threads: usize,
    /// How the router picks a worker.
    pub routing: RoutingPolicy,
    /// The HTTP side's settings.
    pub api: ApiSettings,
    /// How long shutdown waits for in-flight requests before aborting them.
    pub drain_timeout: Duration,
}

/// Why the server could not start or run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another server using the port? pick another with --port)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model could not be loaded.
    #[error("loading the model {path}: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A bad setting.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The HTTP server failed.
    #[error("serving HTTP: {0}")]
    Http(std::io::Error),
}

/// A bound server, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: ServeConfig,
    state: Arc<AppState>,
}

impl Server {
    /// Binds the address and checks the settings; loads nothing yet.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        if config.workers == 0 {
            return Err(ServeError::Config("--workers must be at least 1".into()));
        }
        if config.api.served_model_names.is_empty() {
            return Err(ServeError::Config(
                "at least one served model name is needed".into(),
            ));
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let state = AppState::new(config.api.clone());
        Ok(Server {
            listener,
            config,
            state,
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.addr)
    }

    /// The shared state (for tests and the binary's ready line).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains. `on_ready` runs once the model is
    /// loaded (the binary prints its ready line there). Returns after the workers stopped.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(&Ready) + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            config,
            state,
        } = self;
        let app = crate::app::router(Arc::clone(&state));

        // Load in the background while the listener already answers 503.
        let load_state = Arc::clone(&state);
        let load_config = config.clone();
        let loading = tokio::task::spawn_blocking(move || load(&load_config));

        let (stop_tx, mut stop_http) = tokio::sync::watch::channel(false);
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_http.wait_for(|s| *s).await;
                })
                .await
        });

        // Serve until the shutdown signal; a signal during loading stops at once.
        let mut shutdown = Box::pin(shutdown);
        let threads = tokio::select! {
            loaded = loading => match loaded {
                Ok(Ok((ready, threads))) => {
                    // Serving first, then the ready line: a client that reacts to the line
                    // must not get "loading".
                    let _ = load_state.ready.set(ready);
                    if let Some(ready) = load_state.ready.get() {
                        on_ready(ready);
                    }
                    shutdown.as_mut().await;
                    threads
                }
                Ok(Err(e)) => {
                    let _ = stop_tx.send(true);
                    let _ = http.await;
                    return Err(e);
                }
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(ServeError::Config(format!("the loading task failed: {e}")));
                }
            },
            () = shutdown.as_mut() => Vec::new(),
        };
        tracing::info!("shutting down: draining in-flight requests");
        state.shutting_down.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);

        let drained = tokio::time::timeout(config.drain_timeout, async {
            while state.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = state.in_flight(),
                "drain timeout: aborting the requests still running"
            );
            if let Some(ready) = state.ready.get() {
                for w in &ready.workers {
                    w.abort_all();
                }
            }
        }
        let served = http.await;
        if let Some(ready) = state.ready.get() {
            for w in &ready.workers {
                w.stop();
            }
        }
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Http(e)),
            Err(e) => Err(ServeError::Config(format!("the HTTP task failed: {e}"))),
        }
    }
}

type Loaded = (Ready, Vec<std::thread::JoinHandle<()>>);

/// Loads the tokenizer, the template and one engine per worker, and starts the workers.
fn load(config: &ServeConfig) -> Result<Loaded, ServeError> {
    let path = &config.model_path;
    let fail = |message: String| ServeError::Model {
        path: path.clone(),
        message,
    };
    let file = GgufFile::open(path).map_err(|e| fail(e.to_string()))?;
    let tokenizer = Arc::new(Tokenizer::from_gguf(&file).map_err(|e| fail(e.to_string()))?);
    let template = ChatTemplate::from_gguf(&file).map_err(|e| fail(e.to_string()))?;
    let workers = config.workers;
    let per_worker = (config.threads / workers).max(1);
    let engine_config = EngineConfig {
        record_kv_events: true,
        ..config.engine.clone()
    };
    let router = Arc::new(Mutex::new(
        Router::new(workers as u32, engine_config.block_size, config.routing, 0)
            .map_err(|e| ServeError::Config(e.to_string()))?,
    ));
    let queue = engine_config.max_num_seqs + config.api.max_queued_requests;
    let mut handles = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let mut max_len = usize::MAX;
    for w in 0..workers {
        let model = LlamaModel::load(&file, per_worker).map_err(|e| fail(e.to_string()))?;
        let engine = Engine::new(
            Arc::new(model),
            engine_config.clone(),
            tokenizer.stop_tokens().to_vec(),
        )
        .and_then(|e| e.with_tokenizer(Arc::clone(&tokenizer)))
        .map_err(|e| ServeError::Config(e.to_string()))?;
        max_len = max_len.min(engine.max_len());
        tracing::info!(
            worker = w,
            threads = per_worker,
            kv_blocks = engine_config.num_blocks,
            kv_bytes = engine.kv_bytes(),
            "worker loaded"
        );
        let publisher = Box::new(InProcessPublisher::new(Arc::clone(&router)));
        let (handle, thread) = WorkerHandle::spawn(WorkerId(w as u32), engine, publisher, queue)
            .map_err(|e| ServeError::Config(format!("starting worker {w}: {e}")))?;
        handles.push(handle);
        threads.push(thread);
    }
    let ready = Ready {
        tokenizer,
        template,
        workers: handles,
        router,
        hash_seed: engine_config.hash_seed,
        block_size: engine_config.block_size,
        max_len,
        capacity: workers * engine_config.max_num_seqs + config.api.max_queued_requests,
    };
    Ok((ready, threads))
}
