//! `kvmesh sim`: replay a trace (or a generated workload) through a simulated fleet running
//! kvmesh's real block pool and router, and report latency, hit ratios and balance.
//!
//! Arguments are parsed by clap into [`SimArgs`], then checked and turned into library values
//! ([`Plan`]: a workload source, a [`ClusterBuilder`], the policies to run) in one place; the
//! simulation itself is `kvmesh_sim`'s, whose docs define every metric. This module reads the
//! trace, runs the policies (showing a progress bar on a terminal), and prints a table
//! ([`table`]), JSON, and with `--compare` a PNG ([`plot`], behind the `plot` feature).
//!
//! # JSON schema (`--json`), version 1
//!
//! `{schema_version: 1, workload: {name, requests, block_size, duration_s, speedup, ideal:
//! {prompt_blocks, hit_blocks, prompt_tokens, hit_tokens, distinct_blocks, block_hit_ratio,
//! token_hit_ratio}}, runs: [run...], plot: path or null}`, where each run is
//! `kvmesh_sim::SimReport` serialised (see its fields) plus `wall_s`, the host seconds the
//! simulation took. Times are seconds, ratios are in `[0, 1]`, memory is bytes. Fields are only
//! ever added within a schema version.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use kvmesh_core::EvictionPolicyKind;
use kvmesh_sim::{
    ClusterBuilder, CostModel, IdealCache, KvAwareConfig, MultiTurn, PoolCapacity, Rag,
    RoutingPolicy, SharedPrefix, SimReport, Workload, COST_PRESETS, MOONCAKE_BLOCK_TOKENS,
};
use serde::Serialize;

mod plot;
mod table;

/// Simulate a fleet of inference workers behind a router: hit ratio, TTFT, balance
///
/// Each worker is a mock engine with a real kvmesh block pool (capacity, prefix hits, LRU
/// eviction), continuous batching with chunked prefill under a token budget, and preemption
/// by recompute; a cost model (--cost-model) gives each step's time. The router is kvmesh's:
/// a prefix index fed by the workers' KV events (after --event-delay-ms), a load tracker,
/// and a routing policy (--policy). Time is simulated: an hour of trace runs in seconds.
///
/// Input: a Mooncake JSON-lines trace (--trace FILE.jsonl; its hash ids name 512-token blocks,
/// mapped onto --block-size blocks), an Azure CSV trace (--trace FILE.csv: arrivals and
/// lengths only, no shared prefixes), or a generated workload (--generate).
///
/// Output: one column per policy: block hit ratio and its ratio to the ideal (one infinite
/// cache shared by all workers), TTFT / inter-token / end-to-end latency percentiles,
/// throughput, load imbalance (max / mean busy time over workers), preemptions, evictions and
/// cache memory. --compare runs every policy on the same input and also draws a PNG.
///
/// Examples:
///   kvmesh sim --trace conversation_trace.jsonl --workers 8 --compare
///   kvmesh sim --trace conversation_trace.jsonl --workers 8 --blocks-per-worker device
///   kvmesh sim --generate multi-turn --requests 2000 --workers 4 --policy round-robin --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct SimArgs {
    /// Trace to replay: Mooncake .jsonl, or Azure .csv (see --format)
    #[arg(long, value_name = "FILE", group = "input", help_heading = "Input")]
    trace: Option<PathBuf>,

    /// Trace format [default: from the extension: .csv is azure, anything else mooncake]
    #[arg(long, value_enum, requires = "trace", help_heading = "Input")]
    format: Option<TraceFormat>,

    /// Tokens per hash id in a Mooncake-format trace
    #[arg(long, value_name = "TOKENS", default_value_t = MOONCAKE_BLOCK_TOKENS, help_heading = "Input")]
    trace_block_size: u32,

    /// Generate a workload instead of reading one
    #[arg(
        long,
        value_enum,
        value_name = "KIND",
        group = "input",
        help_heading = "Input"
    )]
    generate: Option<GenerateKind>,

    /// Requests to generate (about: shared-prefix rounds up to whole groups of 16,
    /// multi-turn to whole conversations of 5 turns)
    #[arg(long, value_name = "N", default_value_t = 1000, help_heading = "Input")]
    requests: usize,

    /// Arrival rate of generated requests per second (multi-turn: new conversations per
    /// second) [default: shared-prefix 8, multi-turn 1, rag 4]
    #[arg(
        long,
        value_name = "PER_S",
        allow_negative_numbers = true,
        help_heading = "Input"
    )]
    rate: Option<f64>,

    /// Replay only the first N requests
    #[arg(long, value_name = "N", help_heading = "Input")]
    max_requests: Option<usize>,

    /// Divide inter-arrival times by X (2 = twice the load)
    #[arg(
        long,
        value_name = "X",
        default_value_t = 1.0,
        allow_negative_numbers = true,
        help_heading = "Input"
    )]
    speedup: f64,

    /// Workers in the fleet
    #[arg(long, value_name = "N", default_value_t = 8, help_heading = "Fleet")]
    workers: usize,

    /// Routing policy: kv (cache overlap and load), round-robin, random, least-loaded,
    /// cache-only
    #[arg(long, value_name = "P", default_value = "kv", help_heading = "Fleet")]
    policy: String,

    /// Run every policy on the same input, side by side, and draw a PNG
    #[arg(long, conflicts_with = "policy", help_heading = "Fleet")]
    compare: bool,

    /// KV-aware policy: weight of decode load (KV blocks in flight) against prefill work
    #[arg(
        long,
        value_name = "W",
        allow_negative_numbers = true,
        help_heading = "Fleet"
    )]
    kv_decode_weight: Option<f64>,

    /// KV-aware policy: weight of a worker's queued prefill against the request's own
    #[arg(
        long,
        value_name = "W",
        allow_negative_numbers = true,
        help_heading = "Fleet"
    )]
    kv_queued_prefill_weight: Option<f64>,

    /// KV-aware policy: softmax temperature (0 picks the cheapest worker)
    #[arg(
        long,
        value_name = "T",
        allow_negative_numbers = true,
        help_heading = "Fleet"
    )]
    kv_temperature: Option<f64>,

    /// KV blocks per worker: a number, `unlimited` (sized from the input so nothing is ever
    /// evicted) or `device` (what fits the cost model's GPU next to the weights)
    #[arg(
        long,
        value_name = "B",
        default_value = "unlimited",
        help_heading = "Fleet"
    )]
    blocks_per_worker: String,

    /// Tokens per KV block [default: the trace's block size for Mooncake traces, else 16]
    #[arg(long, value_name = "TOKENS", help_heading = "Fleet")]
    block_size: Option<u32>,

    /// Step-time model: h100-llama3-8b or cpu-smollm2-135m
    #[arg(long, value_name = "PRESET", default_value = COST_PRESETS[0], help_heading = "Fleet")]
    cost_model: String,

    /// Delay between a worker's KV event and the router seeing it, milliseconds
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0.0,
        allow_negative_numbers = true,
        help_heading = "Fleet"
    )]
    event_delay_ms: f64,

    /// Sequences running at once per worker
    #[arg(long, value_name = "N", default_value_t = 256, help_heading = "Fleet")]
    max_seqs: usize,

    /// Tokens per engine step (prefill chunks and decodes together)
    #[arg(
        long,
        value_name = "TOKENS",
        default_value_t = 8192,
        help_heading = "Fleet"
    )]
    token_budget: u32,

    /// Eviction policy of the workers' caches: lru or lfu
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "lru",
        help_heading = "Fleet"
    )]
    eviction: String,

    /// Seed of generators and of the random policy
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Fleet")]
    seed: u64,

    /// Print JSON instead of a table: {schema_version, workload (with its ideal), runs (one
    /// report per policy), plot}; no progress bar
    #[arg(long, help_heading = "Output")]
    json: bool,

    /// Where --compare writes its PNG [default: sim-compare.png]
    #[arg(
        long,
        value_name = "FILE",
        requires = "compare",
        help_heading = "Output"
    )]
    plot: Option<PathBuf>,
}

/// Trace formats `--format` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TraceFormat {
    /// Mooncake JSON lines (timestamp, input_length, output_length, hash_ids)
    Mooncake,
    /// Azure LLM inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens)
    Azure,
}

/// Generators `--generate` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GenerateKind {
    /// Groups of prompts sharing a 2,048-token system prompt (SGLang's benchmark shape)
    SharedPrefix,
    /// Conversations resending their history each turn
    MultiTurn,
    /// A system prompt, 4 of 2,000 documents by Zipf popularity, a query
    Rag,
}

/// Where the workload comes from, validated.
#[derive(Debug, Clone)]
enum Source {
    Trace { path: PathBuf, format: TraceFormat },
    Generate(GenerateKind),
}

/// Validated arguments: everything needed to run.
#[derive(Debug)]
struct Plan {
    source: Source,
    block_size: u32,
    builder: ClusterBuilder,
    policies: Vec<RoutingPolicy>,
    capacity_text: String,
    plot: Option<PathBuf>,
    plot_explicit: bool,
}

fn plan(args: &SimArgs) -> Result<Plan> {
    let source = match (&args.trace, args.generate) {
        (Some(path), None) => {
            let format = args.format.unwrap_or_else(|| {
                let csv = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
                if csv {
                    TraceFormat::Azure
                } else {
                    TraceFormat::Mooncake
                }
            });
            Source::Trace {
                path: path.clone(),
                format,
            }
        }
        (None, Some(kind)) => Source::Generate(kind),
        _ => bail!("give an input: --trace FILE or --generate KIND (see kvmesh sim --help)"),
    };
    if args.trace_block_size == 0 {
        bail!("--trace-block-size must be at least 1");
    }
    let block_size = match (args.block_size, &source) {
        (Some(0), _) => bail!("--block-size must be at least 1 token"),
        (Some(bs), _) => bs,
        (
            None,
            Source::Trace {
                format: TraceFormat::Mooncake,
                ..
            },
        ) => args.trace_block_size,
        (None, _) => 16,
    };
    if !(args.speedup.is_finite() && args.speedup > 0.0) {
        bail!("--speedup must be a positive number, got {}", args.speedup);
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number, got {rate}");
        }
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if !(args.event_delay_ms.is_finite() && args.event_delay_ms >= 0.0) {
        bail!(
            "--event-delay-ms must be a number >= 0, got {}",
            args.event_delay_ms
        );
    }
    let cost: CostModel = args.cost_model.parse()?;
    let eviction: EvictionPolicyKind = args.eviction.parse().map_err(|_| {
        anyhow::anyhow!(
            "unknown eviction policy '{}': use lru or lfu",
            args.eviction
        )
    })?;
    let capacity = match args.blocks_per_worker.to_ascii_lowercase().as_str() {
        "unlimited" | "inf" => PoolCapacity::Unlimited,
        "device" => PoolCapacity::Device,
        n => PoolCapacity::Blocks(n.parse().map_err(|_| {
            anyhow::anyhow!(
                "--blocks-per-worker must be a number, unlimited or device, got '{}'",
                args.blocks_per_worker
            )
        })?),
    };
    let capacity_text = match capacity {
        PoolCapacity::Unlimited => "unlimited cache".to_string(),
        PoolCapacity::Device => format!("device-sized cache ({})", cost.description),
        PoolCapacity::Blocks(n) => format!("{} blocks per worker", table::thousands(n as u64)),
    };

    let mut kv = KvAwareConfig::default();
    if let Some(w) = args.kv_decode_weight {
        kv.decode_weight = w;
    }
    if let Some(w) = args.kv_queued_prefill_weight {
        kv.queued_prefill_weight = w;
    }
    if let Some(t) = args.kv_temperature {
        kv.temperature = t;
    }
    kv.validate()?;
    let policies = if args.compare {
        let mut all = RoutingPolicy::all().to_vec();
        all[0] = RoutingPolicy::KvAware(kv);
        all
    } else {
        let p: RoutingPolicy = args.policy.parse()?;
        vec![match p {
            RoutingPolicy::KvAware(_) => RoutingPolicy::KvAware(kv),
            other => other,
        }]
    };

    let mut builder = ClusterBuilder::new();
    builder
        .workers(args.workers)
        .capacity(capacity)
        .max_num_seqs(args.max_seqs)
        .token_budget(args.token_budget)
        .eviction(eviction)
        .cost_model(cost)
        .event_delay_ns((args.event_delay_ms * 1e6).round() as u64)
        .seed(args.seed);

    let plot_explicit = args.plot.is_some();
    if plot_explicit && !plot::AVAILABLE {
        return Err(plot::PlotError::NotCompiled.into());
    }
    let plot = args.compare.then(|| {
        args.plot
            .clone()
            .unwrap_or_else(|| PathBuf::from("sim-compare.png"))
    });
    Ok(Plan {
        source,
        block_size,
        builder,
        policies,
        capacity_text,
        plot,
        plot_explicit,
    })
}

fn load(args: &SimArgs, plan: &Plan) -> Result<Workload> {
    let bs = plan.block_size;
    let mut workload = match &plan.source {
        Source::Trace {
            path,
            format: TraceFormat::Mooncake,
        } => Workload::load_mooncake(path, args.trace_block_size, bs, args.max_requests)?,
        Source::Trace {
            path,
            format: TraceFormat::Azure,
        } => Workload::load_azure(path, bs, args.max_requests)?,
        Source::Generate(kind) => {
            let n = args.requests;
            let w = match kind {
                GenerateKind::SharedPrefix => {
                    let mut g = SharedPrefix {
                        seed: args.seed,
                        ..SharedPrefix::default()
                    }
                    .with_requests(n);
                    if let Some(r) = args.rate {
                        g.rate_per_s = r;
                    }
                    g.generate(bs)?
                }
                GenerateKind::MultiTurn => {
                    let mut g = MultiTurn {
                        seed: args.seed,
                        ..MultiTurn::default()
                    }
                    .with_requests(n);
                    if let Some(r) = args.rate {
                        g.conversation_rate_per_s = r;
                    }
                    g.generate(bs)?
                }
                GenerateKind::Rag => {
                    let mut g = Rag {
                        seed: args.seed,
                        ..Rag::default()
                    }
                    .with_requests(n);
                    if let Some(r) = args.rate {
                        g.rate_per_s = r;
                    }
                    g.generate(bs)?
                }
            };
            let mut w = w;
            if let Some(m) = args.max_requests {
                w.truncate(m);
            }
            w
        }
    };
    if workload.is_empty() {
        bail!("the workload has no requests");
    }
    if args.speedup != 1.0 {
        workload.speed_up(args.speedup);
    }
    Ok(workload)
}

/// One policy's result, as printed and serialised.
#[derive(Debug, Serialize)]
pub(crate) struct Run {
    /// Host seconds the simulation took.
    pub wall_s: f64,
    #[serde(flatten)]
    pub report: SimReport,
}

#[derive(Debug, Serialize)]
struct WorkloadInfo<'a> {
    name: &'a str,
    requests: usize,
    block_size: u32,
    duration_s: f64,
    speedup: f64,
    ideal: IdealJson,
}

#[derive(Debug, Serialize)]
struct IdealJson {
    #[serde(flatten)]
    cache: IdealCache,
    block_hit_ratio: f64,
    token_hit_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    schema_version: u32,
    workload: WorkloadInfo<'a>,
    runs: &'a [Run],
    plot: Option<&'a Path>,
}

/// Runs `kvmesh sim` and returns what to print on stdout.
pub fn run(args: &SimArgs) -> Result<String> {
    let plan = plan(args)?;
    let workload = load(args, &plan).with_context(|| match &plan.source {
        Source::Trace { path, .. } => format!("cannot load trace {}", path.display()),
        Source::Generate(_) => "cannot generate the workload".to_string(),
    })?;
    let ideal = workload.ideal();
    let progress = crate::progress::Progress::new(
        (workload.len() * plan.policies.len()) as u64,
        !args.json && std::io::stderr().is_terminal(),
    );
    let mut runs = Vec::with_capacity(plan.policies.len());
    for (i, &policy) in plan.policies.iter().enumerate() {
        let mut builder = plan.builder.clone();
        builder.policy(policy);
        let cluster = builder.build(&workload)?;
        progress.start(policy.name());
        let offset = (i * workload.len()) as u64;
        let started = Instant::now();
        let report = cluster.run_with_progress(&mut |done, _| progress.set(offset + done as u64));
        runs.push(Run {
            wall_s: started.elapsed().as_secs_f64(),
            report,
        });
    }
    progress.finish();

    let mut plot_written = None;
    let mut plot_note = None;
    if let Some(path) = &plan.plot {
        match plot::draw(path, &workload, &runs, &plan.capacity_text) {
            Ok(()) => plot_written = Some(path.as_path()),
            Err(e @ plot::PlotError::NotCompiled) if !plan.plot_explicit => {
                plot_note = Some(e.to_string());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        }
    }

    let text = if args.json {
        let out = Output {
            schema_version: 1,
            workload: WorkloadInfo {
                name: workload.name(),
                requests: workload.len(),
                block_size: workload.block_size(),
                duration_s: workload.duration_ns() as f64 / 1e9,
                speedup: args.speedup,
                ideal: IdealJson {
                    cache: ideal,
                    block_hit_ratio: ideal.block_hit_ratio(),
                    token_hit_ratio: ideal.token_hit_ratio(),
                },
            },
            runs: &runs,
            plot: plot_written,
        };
        let mut json = serde_json::to_string_pretty(&out)?;
        json.push('\n');
        json
    } else {
        table::render(&workload, &ideal, &runs, &plan.capacity_text, plot_written)
    };
    if let Some(note) = plot_note {
        eprintln!("kvmesh: note: no plot written: {note}");
    }
    Ok(text)
}
