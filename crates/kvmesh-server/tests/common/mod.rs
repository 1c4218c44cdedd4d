//! A real server on a free port with the real model, for the integration tests.
//!
//! Each [`TestServer`] runs in its own thread with its own runtime, so a test's client
//! runtime and the server never share a scheduler. Skips (the tests pass, with a message)
//! when the model file is absent, unless `KVMESH_REQUIRE_MODEL=1` (set by `.ci/run`), where
//! a missing model fails the test.

#![allow(dead_code)] // each test file uses part of this

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmesh_engine::EngineConfig;
use kvmesh_index::RoutingPolicy;
use kvmesh_server::client::Client;
use kvmesh_server::{ApiSettings, AppState, RequestLimits, ServeConfig, Server};

/// The GGUF file the tests run.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model name the test servers answer to.
pub const MODEL: &str = "smol";

/// The model file, or `None` (test skipped) when absent and not required.
pub fn model_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("KVMESH_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kvmesh/models"),
    };
    let path = dir.join(MODEL_FILE);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("KVMESH_REQUIRE_MODEL").is_none(),
        "{} is missing and KVMESH_REQUIRE_MODEL is set: run `kvmesh model fetch`",
        path.display()
    );
    eprintln!("SKIP: {MODEL_FILE} not found; run `kvmesh model fetch` to run this test");
    None
}

/// Settings of a test server: small, so tests are quick and limits are reachable.
pub fn config(model_path: PathBuf) -> ServeConfig {
    ServeConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        model_path,
        engine: EngineConfig {
            num_blocks: 512,
            max_num_seqs: 4,
            max_model_len: Some(1024),
            ..EngineConfig::default()
        },
        workers: 2,
        threads: 2,
        routing: RoutingPolicy::default(),
        api: ApiSettings {
            served_model_names: vec![MODEL.to_string()],
            api_key: None,
            limits: RequestLimits::default(),
            max_body_bytes: 64 * 1024,
            max_queued_requests: 16,
        },
        drain_timeout: Duration::from_secs(10),
    }
}

/// A running server; stops (draining) when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state (to read worker metrics directly).
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), kvmesh_server::ServeError>>>,
}

impl TestServer {
    /// Starts a server and waits until it is ready.
    pub fn start(config: ServeConfig) -> TestServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let server = Server::bind(config).await?;
                let _ = addr_tx.send((server.addr(), Arc::clone(server.state())));
                server
                    .run(
                        async move {
                            let _ = stop_rx.await;
                        },
                        |_| {},
                    )
                    .await
            })
        });
        let (addr, state) = addr_rx.recv().expect("the server binds");
        let deadline = Instant::now() + Duration::from_secs(120);
        while state.ready.get().is_none() {
            assert!(Instant::now() < deadline, "the server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        TestServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A client for it.
    pub fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.addr), None).expect("url")
    }

    /// Stops the server; returns what `run` returned.
    pub fn stop(mut self) -> Result<(), kvmesh_server::ServeError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), kvmesh_server::ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread"),
            None => Ok(()),
        }
    }

    /// Blocks held by requests over all workers.
    pub fn blocks_used(&self) -> u64 {
        let ready = self.state.ready.get().expect("ready");
        ready
            .workers
            .iter()
            .map(|w| w.metrics().blocks_used())
            .sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// A runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Waits until `f` holds, for up to `secs` seconds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Asserts the server still answers a small request.
pub async fn assert_serves(client: &Client) {
    let body = serde_json::json!({"prompt": "Hi", "max_tokens": 2});
    let r = client.post_json("/v1/completions", &body).await.unwrap();
    assert_eq!(r.status, 200, "the server stopped serving: {:?}", r.body);
}
