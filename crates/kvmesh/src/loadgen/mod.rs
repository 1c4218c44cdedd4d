//! `kvmesh bench --url URL`: an open-loop load generator for any OpenAI-compatible endpoint
//! (kvmesh, llama.cpp's server, vLLM, SGLang), and `--compare` to run one workload against
//! several endpoints or kvmesh routing modes in one run, side by side.
//!
//! - [`workload`]: what is sent (shared prompt, multi-turn, RAG, a Mooncake trace);
//! - [`runner`]: how it is sent (gamma/Poisson arrivals, concurrency cap, streaming timing);
//! - [`report`]: the numbers, as vLLM's `bench serve` defines and names them;
//! - [`plot`]: the PNG.
//!
//! A `--compare` target is a URL, or `serve:POLICY`, for which the bench starts `kvmesh
//! serve --routing POLICY` itself on a free port (with `--serve-arg`s), runs the workload and
//! stops it, so every such run starts from a cold cache. With `--rounds N` the targets run
//! in turn N times (A B C A B C ...), and each target's report merges its rounds: other work
//! on a shared machine then weighs on every target alike.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kvmesh_server::client::Client;

pub mod plot;
pub mod report;
pub mod runner;
pub mod workload;

use report::{Report, Slo};
use runner::{Endpoint, RequestRecord, RunSettings};
use workload::{GenSettings, Session, TraceScale};

/// Which workload to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// One system prompt shared by every request, then a unique question each.
    SharedPrompt,
    /// Conversations of --turns turns; each turn resends the whole history.
    MultiTurn,
    /// A few long documents (--documents), each request asks about one.
    Rag,
    /// A Mooncake-format trace (--trace), hash ids as deterministic text.
    Trace,
}

/// Load generator settings (`kvmesh bench --url URL ...`).
///
/// Metrics follow vLLM's `bench serve`: TTFT (send to first text), TPOT ((E2E - TTFT) /
/// (output tokens - 1)), ITL (gaps between text chunks), E2E latency, request and token
/// throughput, goodput under --goodput bounds; the JSON uses its key names
/// (request_throughput, output_throughput, median_ttft_ms, p99_itl_ms, ...).
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The endpoint's base URL
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Compare targets in one run: a URL, or serve:POLICY to start `kvmesh serve --routing
    /// POLICY` (repeatable; replaces --url)
    #[arg(long, value_name = "TARGET")]
    compare: Vec<String>,
    /// Arguments for the `kvmesh serve` of serve:POLICY targets (repeatable, e.g.
    /// --serve-arg=--workers --serve-arg=2)
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Runs of each target, alternating between targets
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Bearer token for the endpoint
    #[arg(long)]
    api_key: Option<String>,
    /// The model field of each request [default: the first model of GET /v1/models]
    #[arg(long)]
    model: Option<String>,
    /// Which API to call
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    endpoint: Endpoint,
    /// What to send
    #[arg(long, value_enum, default_value_t = WorkloadKind::MultiTurn)]
    workload: WorkloadKind,
    /// Requests to send (turns over all conversations)
    #[arg(long, default_value_t = 64)]
    num_requests: usize,
    /// Stop sending after this many seconds (in-flight requests finish)
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Requests per second, Poisson (or gamma with --burstiness); inf sends all at once
    #[arg(long, default_value_t = f64::INFINITY)]
    rate: f64,
    /// Gamma shape of the arrival gaps: 1 is Poisson, below 1 burstier
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Most requests in flight [default: no limit]
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Conversations open at once (multi-turn)
    #[arg(long, default_value_t = 16)]
    max_active_sessions: usize,
    /// Tokens of the shared system prompt (shared-prompt, multi-turn)
    #[arg(long, default_value_t = 256)]
    shared_prefix_tokens: usize,
    /// Tokens of each user turn or question
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens to generate per request
    #[arg(long, default_value_t = 32)]
    output_tokens: u32,
    /// Turns per conversation (multi-turn)
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Documents (rag)
    #[arg(long, default_value_t = 4)]
    documents: usize,
    /// Tokens per document (rag)
    #[arg(long, default_value_t = 1024)]
    document_tokens: usize,
    /// The Mooncake-format trace (workload trace)
    #[arg(long, value_name = "JSONL")]
    trace: Option<PathBuf>,
    /// Tokens each of the trace's 512-token hash ids becomes (scales prompts to a small model)
    #[arg(long, default_value_t = 16)]
    trace_block_tokens: usize,
    /// Factor on the trace's output lengths [default: trace-block-tokens / 512]
    #[arg(long)]
    trace_output_scale: Option<f64>,
    /// Factor on the trace's timestamps (0.5 replays twice as fast)
    #[arg(long, default_value_t = 1.0)]
    trace_time_scale: f64,
    /// Longest prompt taken from the trace, in tokens
    #[arg(long, default_value_t = 4096)]
    trace_max_prompt_tokens: usize,
    /// Let answers end at the model's end-of-sequence token (default: ask for ignore_eos so
    /// every answer has --output-tokens tokens)
    #[arg(long)]
    allow_eos: bool,
    /// Goodput bounds, KEY:MS with KEY ttft, tpot or e2el (repeatable)
    #[arg(long, value_name = "KEY:MS")]
    goodput: Vec<Slo>,
    /// Percentiles to report (the median always is)
    #[arg(long, value_delimiter = ',', default_value = "90,99")]
    percentiles: Vec<f64>,
    /// Seed of the text, the arrivals and the turn draws
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-request time limit, seconds
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Write the reports as JSON (one object, or {"runs": [...]} with --compare)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the table as markdown (with ratios to the first target)
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write a PNG: TTFT over time and the TTFT and ITL CDFs
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Runs the load generator; returns the table.
pub fn run(args: &LoadArgs) -> Result<String> {
    if args.rate <= 0.0 || args.rate.is_nan() {
        bail!("--rate must be positive (inf for all at once)");
    }
    if args.percentiles.iter().any(|p| !(0.0..=100.0).contains(p)) {
        bail!("--percentiles must be within 0..100");
    }
    let sessions = sessions(args)?;
    let targets: Vec<String> = if args.compare.is_empty() {
        vec![args.url.clone()]
    } else {
        args.compare.clone()
    };
    let total: usize = sessions.iter().map(|s| s.turns.len()).sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    use std::io::IsTerminal;
    let bar = crate::progress::Progress::new(
        (total * targets.len() * args.rounds.max(1) as usize) as u64,
        std::io::stderr().is_terminal(),
    );
    let mut per_target: Vec<(Vec<RequestRecord>, f64, Vec<ServerSide>)> =
        vec![(Vec::new(), 0.0, Vec::new()); targets.len()];
    let mut done_before = 0u64;
    for round in 0..args.rounds.max(1) {
        for (i, target) in targets.iter().enumerate() {
            bar.start(&format!("{target} (round {})", round + 1));
            let (records, duration, side) =
                runtime.block_on(run_target(args, target, &sessions, &|n| {
                    bar.set(done_before + n)
                }))?;
            done_before += records.len() as u64;
            per_target[i].0.extend(records);
            per_target[i].1 += duration;
            per_target[i].2.push(side);
        }
    }
    bar.finish();
    let reports: Vec<Report> = targets
        .iter()
        .zip(&per_target)
        .map(|(t, (records, duration, sides))| {
            let mut r = Report::new(t, records, *duration, &args.percentiles, &args.goodput);
            let last = sides.last().copied().unwrap_or_default();
            if let Some((start, end)) = last.rss_mib {
                r.metrics.insert("server_rss_start_mib".into(), start);
                r.metrics.insert("server_rss_end_mib".into(), end);
            }
            if let Some(b) = last.blocks_used_after {
                r.metrics.insert("server_blocks_used_after".into(), b);
            }
            r
        })
        .collect();
    let size = match args.duration {
        Some(d) => format!("{d} s (up to {total} requests) per run"),
        None => format!("{total} requests per run"),
    };
    let title = format!(
        "kvmesh bench: {:?} workload, {size}, rate {}, {} round(s)",
        args.workload, args.rate, args.rounds
    );
    if let Some(path) = &args.json {
        let value = if reports.len() == 1 {
            reports[0].json()
        } else {
            serde_json::json!({ "runs": reports.iter().map(Report::json).collect::<Vec<_>>() })
        };
        std::fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        let md = format!(
            "{title}\n\n{}",
            report::markdown(&reports, &args.percentiles)
        );
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &title, &reports)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    Ok(format!(
        "{title}\n{}",
        report::table(&reports, &args.percentiles)
    ))
}

fn sessions(args: &LoadArgs) -> Result<Vec<Session>> {
    let g = GenSettings {
        requests: args.num_requests,
        shared_prefix_tokens: args.shared_prefix_tokens,
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        turns: args.turns,
        documents: args.documents,
        document_tokens: args.document_tokens,
        seed: args.seed,
    };
    Ok(match args.workload {
        WorkloadKind::SharedPrompt => workload::shared_prompt(&g),
        WorkloadKind::MultiTurn => workload::multi_turn(&g),
        WorkloadKind::Rag => workload::rag(&g),
        WorkloadKind::Trace => {
            let Some(path) = &args.trace else {
                bail!("--workload trace needs --trace FILE (a Mooncake-format JSONL trace)");
            };
            workload::trace(
                path,
                TraceScale {
                    block_tokens: args.trace_block_tokens,
                    output_scale: args
                        .trace_output_scale
                        .unwrap_or(args.trace_block_tokens as f64 / 512.0),
                    time_scale: args.trace_time_scale,
                    max_prompt_tokens: args.trace_max_prompt_tokens,
                    max_requests: args.num_requests,
                },
            )?
        }
    })
}

/// What a run saw of the server itself (kvmesh servers only; `None` where unknown).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSide {
    /// Resident memory of a spawned `kvmesh serve` when it became ready and after the run, MiB.
    pub rss_mib: Option<(f64, f64)>,
    /// KV blocks still held by requests after the run (`kvmesh:kv_blocks{state="used"}`),
    /// polled for up to 5 s: 0 when accounting is back to idle.
    pub blocks_used_after: Option<f64>,
}

/// Runs the workload once against `target`; the records, the run's duration, and what it
/// saw of the server.
async fn run_target(
    args: &LoadArgs,
    target: &str,
    sessions: &[Session],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<RequestRecord>, f64, ServerSide)> {
    let mut spawned = None;
    let url = match target.strip_prefix("serve:") {
        Some(policy) => {
            let s = SpawnedServe::start(policy, &args.serve_arg)?;
            let url = s.url.clone();
            spawned = Some(s);
            url
        }
        None => target.to_string(),
    };
    let client = Client::new(&url, args.api_key.clone())?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let reply = client
                .get("/v1/models")
                .await
                .with_context(|| format!("GET {url}/v1/models"))?;
            reply.json()["data"][0]["id"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("{url}/v1/models named no model; pass --model"))?
        }
    };
    let settings = RunSettings {
        endpoint: args.endpoint,
        model,
        rate: args.rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency.unwrap_or(usize::MAX),
        max_active_sessions: args.max_active_sessions,
        ignore_eos: !args.allow_eos,
        duration: args.duration.map(Duration::from_secs_f64),
        timeout: Duration::from_secs_f64(args.timeout),
        seed: args.seed,
    };
    let rss_start = spawned.as_ref().and_then(|s| rss_mib(s.child.id()));
    let start = Instant::now();
    let records = runner::run(&client, sessions, &settings, progress).await;
    let duration = start.elapsed().as_secs_f64();
    let mut side = ServerSide::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        side.blocks_used_after = blocks_used(&client).await;
        if side.blocks_used_after.is_none_or(|b| b == 0.0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_end = spawned.as_ref().and_then(|s| rss_mib(s.child.id()));
    side.rss_mib = rss_start.zip(rss_end);
    drop(spawned);
    Ok((records, duration, side))
}

/// Resident memory of process `pid` in MiB (Linux `/proc`).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The sum of `kvmesh:kv_blocks{state="used"}` on the target's /metrics, if it has them.
async fn blocks_used(client: &Client) -> Option<f64> {
    let reply = client.get("/metrics").await.ok()?;
    let text = String::from_utf8_lossy(&reply.body);
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("kvmesh:kv_blocks{") && l.contains("state=\"used\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A `kvmesh serve` this bench started; killed on drop.
struct SpawnedServe {
    child: Child,
    url: String,
}

impl SpawnedServe {
    fn start(policy: &str, extra: &[String]) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the kvmesh binary")?;
        let mut child = Command::new(exe)
            .args(["serve", "--port", "0", "--routing", policy])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kvmesh serve")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line.clone()).is_err() && line.contains("error") {
                    eprintln!("kvmesh serve: {line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "kvmesh serve --routing {policy} did not become ready:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(rest) = line.strip_prefix("kvmesh: ready at ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                return Ok(SpawnedServe { child, url });
            }
            seen.push(line);
        }
    }
}

impl Drop for SpawnedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
