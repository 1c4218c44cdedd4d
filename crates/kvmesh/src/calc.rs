//! `kvmesh calc`: KV-cache capacity planning for one model on one accelerator.
//!
//! Arguments are parsed by clap into [`CalcArgs`], then checked and turned into library values
//! ([`Plan`]) in one place, the only place that reads files. The numbers come from
//! `kvmesh_core`'s geometry and capacity modules, whose docs hold the memory and allocation
//! models; this module only gathers them into a [`Report`] and prints it as text or JSON.
//!
//! # JSON schema (`--json`), version 1
//!
//! Sizes are bytes, fractions are in `[0, 1]`, lengths are tokens. Fields are only ever added
//! within a schema version.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema_version` | int | 1 |
//! | `model` | object | `name` (preset name or null), `source` (`"preset"`, `"config"`, `"dims"`), `path` (config path or null), `note` (preset note or null), `num_layers`, `num_query_heads`, `num_kv_heads`, `head_dim`, `max_context` (or null) |
//! | `attention_kind` | string | `"MHA"`, `"GQA (group of N)"` or `"MQA"` |
//! | `dtype`, `block_size` | string, int | KV element type, tokens per block |
//! | `bytes_per_token` | int | K and V of every layer, scales included |
//! | `data_bytes_per_token`, `scale_bytes_per_token` | int | its two parts |
//! | `bytes_per_token_per_layer`, `bytes_per_block` | int | |
//! | `memory` | object | `device_bytes`, `utilization`, `usable_bytes` (device x utilisation), `weights_bytes` |
//! | `kv_budget_bytes` | int | `usable_bytes - weights_bytes` |
//! | `blocks_fit`, `tokens_fit` | int | whole blocks in the budget; `blocks_fit x block_size` |
//! | `context_len`, `max_concurrency` | int | sequences of `context_len` tokens that fit at once |
//! | `variants.attention` | array | the model with kv heads = query heads, its own, 1 (duplicates dropped) |
//! | `variants.dtype` | array | the model at f16, fp8, int8, int4 (and the chosen dtype if another) |
//! | `allocation` | object or null | present with `--trace` or `--mean-len` |
//!
//! A variant is `{attention_kind, kv_heads, dtype, bytes_per_token, bytes_per_block, blocks_fit,
//! tokens_fit, max_concurrency, selected}`, `selected` marking the configuration asked for.
//! `allocation` is `{source ("trace" or "mean_max"), trace (path or null), lengths {count, mean,
//! p50, p99, max} (count, p50 and p99 null for mean_max), reserve_len, reserve_from ("trace_max"
//! or "max_len"), over_reservation, over_model_context (null when unknown), contiguous
//! {utilization, max_concurrency, reserved_tokens_per_request}, paged {same}, concurrency_gain
//! (paged / contiguous concurrency, null when contiguous fits none)}`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use kvmesh_core::{
    compare_allocation, find_preset, presets, AllocationComparison, AllocationResult,
    CapacityError, GeometryError, KvCapacity, KvDtype, KvGeometry, LengthStats, MemoryBudget,
    ModelDims,
};
use serde::Serialize;

use text::{human_bytes, thousands};

mod text;

/// Context length for the concurrency line when the model does not state its own.
const FALLBACK_CONTEXT: u64 = 4096;

/// The dtypes every report compares.
const COMPARED_DTYPES: [KvDtype; 4] = [KvDtype::F16, KvDtype::Fp8, KvDtype::Int8, KvDtype::Int4];

/// Capacity planning: how much KV cache fits, and what MHA/GQA/MQA, quantisation and paging change
///
/// Give a model (--model, --config or explicit dims) and an accelerator (--mem-gib, --util,
/// --weights-gib). kvmesh prints the KV bytes per token, per layer and per block, how many tokens
/// and blocks fit in the KV budget (memory x utilisation - weights), and how many sequences of
/// --context-len tokens run at once; then the same model as MHA, as itself and as MQA, and at f16,
/// fp8, int8 and int4.
///
/// With a length distribution (--trace, or --mean-len and --max-len) it also compares two
/// allocators, each request holding its final length (input + output tokens). Contiguous
/// pre-allocation reserves the longest request's length for every request (--max-len
/// overrides), so utilisation is mean length / reservation; paged allocation gives each request
/// ceil(length / block size) blocks, so only its last block is partly empty. Both are
/// steady-state upper bounds: no prefix sharing, no preemption headroom.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CalcArgs {
    /// Built-in model preset, e.g. llama-3-70b (see --list-models)
    #[arg(long, value_name = "NAME", group = "source")]
    model: Option<String>,

    /// Hugging Face config.json to read the model's shape from
    #[arg(long, value_name = "PATH", group = "source")]
    config: Option<PathBuf>,

    /// Print the built-in presets, their shapes and notes, and exit
    #[arg(long)]
    list_models: bool,

    /// Transformer layers (needs --query-heads, --kv-heads, --head-dim)
    #[arg(
        long,
        value_name = "N",
        group = "source",
        requires_all = ["query_heads", "kv_heads", "head_dim"],
        help_heading = "Explicit geometry"
    )]
    layers: Option<u32>,

    /// Attention (query) heads
    #[arg(
        long,
        value_name = "N",
        requires = "layers",
        help_heading = "Explicit geometry"
    )]
    query_heads: Option<u32>,

    /// Key/value heads (= query heads for MHA, 1 for MQA)
    #[arg(
        long,
        value_name = "N",
        requires = "layers",
        help_heading = "Explicit geometry"
    )]
    kv_heads: Option<u32>,

    /// Elements per head vector
    #[arg(
        long,
        value_name = "N",
        requires = "layers",
        help_heading = "Explicit geometry"
    )]
    head_dim: Option<u32>,

    /// The model's longest context, the default for --context-len [default: none]
    #[arg(
        long,
        value_name = "N",
        requires = "layers",
        help_heading = "Explicit geometry"
    )]
    max_context: Option<u32>,

    /// KV element type: f32, f16, bf16, fp8, int8 or int4 (quantised ones add a 4-byte scale per head vector)
    #[arg(long, value_name = "DTYPE", default_value = "f16")]
    dtype: KvDtype,

    /// Tokens per KV block
    #[arg(
        long,
        value_name = "TOKENS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    block_size: u32,

    /// Accelerator memory in GiB (2^30 bytes)
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "GIB",
        default_value_t = 80.0
    )]
    mem_gib: f64,

    /// Fraction of accelerator memory the engine may use, weights included, in (0, 1]
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "FRACTION",
        default_value_t = 0.9
    )]
    util: f64,

    /// GiB taken by model weights (and anything else resident), subtracted from the usable memory
    #[arg(
        allow_negative_numbers = true,
        long,
        value_name = "GIB",
        default_value_t = 0.0
    )]
    weights_gib: f64,

    /// Sequence length for the max-concurrency line [default: the model's max context, else 4096]
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u64).range(1..))]
    context_len: Option<u64>,

    /// Request lengths from a Mooncake trace (JSON lines: timestamp, input_length, output_length, hash_ids)
    #[arg(
        long,
        value_name = "FILE",
        group = "lengths",
        help_heading = "Allocation"
    )]
    trace: Option<PathBuf>,

    /// Mean request length (input + output tokens); every request is taken at the mean (needs --max-len)
    #[arg(
        long,
        value_name = "TOKENS",
        group = "lengths",
        requires = "max_len",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Allocation"
    )]
    mean_len: Option<u64>,

    /// Tokens contiguous allocation reserves per request [default with --trace: the longest request]
    #[arg(
        long,
        value_name = "TOKENS",
        requires = "lengths",
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Allocation"
    )]
    max_len: Option<u64>,

    /// Print machine-readable JSON (schema version 1) instead of tables
    #[arg(long)]
    json: bool,
}

/// Where the model's shape came from.
#[derive(Debug)]
enum ModelSource {
    Preset(&'static kvmesh_core::ModelPreset),
    Config(PathBuf),
    Dims,
}

/// A length distribution for the allocation comparison.
#[derive(Debug)]
enum Lengths {
    Trace { path: PathBuf, lengths: Vec<u64> },
    MeanMax { mean: u64 },
}

/// Validated arguments: library values ready to compute with.
#[derive(Debug)]
struct Plan {
    source: ModelSource,
    geometry: KvGeometry,
    budget: MemoryBudget,
    context_len: u64,
    lengths: Option<Lengths>,
    max_len: Option<u64>,
}

/// Runs `kvmesh calc` and returns what it prints.
pub fn run(args: &CalcArgs) -> Result<String> {
    if args.list_models {
        return text::list_models(args.json);
    }
    let plan = plan(args)?;
    let report = report(&plan)?;
    if args.json {
        let mut json = serde_json::to_string_pretty(&report)?;
        json.push('\n');
        Ok(json)
    } else {
        Ok(text::render(&report))
    }
}

fn plan(args: &CalcArgs) -> Result<Plan> {
    let (source, dims) = if let Some(name) = &args.model {
        let preset = find_preset(name).with_context(|| {
            let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
            format!(
                "unknown model '{name}'; presets: {} (see --list-models)",
                names.join(", ")
            )
        })?;
        (ModelSource::Preset(preset), preset.dims)
    } else if let Some(path) = &args.config {
        let dims = read_config(path)?;
        (ModelSource::Config(path.clone()), dims)
    } else if let (Some(layers), Some(q), Some(kv), Some(hd)) =
        (args.layers, args.query_heads, args.kv_heads, args.head_dim)
    {
        let dims = ModelDims {
            num_layers: layers,
            num_query_heads: q,
            num_kv_heads: kv,
            head_dim: hd,
            max_context: args.max_context,
        };
        (ModelSource::Dims, dims)
    } else {
        bail!(
            "no model given: pass --model NAME (see --list-models), --config PATH/config.json, \
             or --layers, --query-heads, --kv-heads and --head-dim"
        );
    };
    let geometry = KvGeometry::new(dims, args.dtype, args.block_size)
        .context("the model's shape cannot describe a KV cache")?;
    let budget = MemoryBudget::from_gib(args.mem_gib, args.util, args.weights_gib)?;
    let context_len = args
        .context_len
        .or(dims.max_context.map(u64::from))
        .unwrap_or(FALLBACK_CONTEXT);
    let lengths = match (&args.trace, args.mean_len) {
        (Some(path), _) => Some(read_trace(path)?),
        (None, Some(mean)) => {
            let max = args.max_len.context("--mean-len needs --max-len")?;
            if mean > max {
                bail!("--mean-len {mean} is above --max-len {max}");
            }
            Some(Lengths::MeanMax { mean })
        }
        (None, None) => None,
    };
    Ok(Plan {
        source,
        geometry,
        budget,
        context_len,
        lengths,
        max_len: args.max_len,
    })
}

fn read_config(path: &Path) -> Result<ModelDims> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    ModelDims::from_hf_config(&text).map_err(|e| match e {
        GeometryError::ConfigSyntax {
            line,
            column,
            message,
        } => {
            // serde_json's message repeats the position; the prefix says it already.
            let message = match message.rfind(" at line ") {
                Some(at) => &message[..at],
                None => &message,
            };
            anyhow::anyhow!(
                "{}:{line}:{column}: invalid JSON: {message}",
                path.display()
            )
        }
        other => anyhow::anyhow!("{}: {other}", path.display()),
    })
}

fn read_trace(path: &Path) -> Result<Lengths> {
    // Stream the records and keep only their lengths: calc has no use for the hash ids.
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open trace {}", path.display()))?;
    let lengths = kvmesh_sim::MooncakeReader::new(std::io::BufReader::new(file), path)
        .map(|record| record.map(|r| r.total_length()))
        .collect::<Result<Vec<u64>, _>>()?;
    if lengths.is_empty() {
        bail!("{}: the trace has no requests", path.display());
    }
    Ok(Lengths::Trace {
        path: path.to_path_buf(),
        lengths,
    })
}

/// Everything `kvmesh calc` reports; serialised as the JSON schema of the module docs.
#[derive(Debug, Serialize)]
struct Report {
    schema_version: u32,
    model: ModelInfo,
    attention_kind: String,
    dtype: &'static str,
    block_size: u32,
    bytes_per_token: u64,
    data_bytes_per_token: u64,
    scale_bytes_per_token: u64,
    bytes_per_token_per_layer: u64,
    bytes_per_block: u64,
    memory: MemoryInfo,
    kv_budget_bytes: u64,
    blocks_fit: u64,
    tokens_fit: u64,
    context_len: u64,
    max_concurrency: u64,
    variants: Variants,
    allocation: Option<Allocation>,
}

#[derive(Debug, Serialize)]
struct ModelInfo {
    name: Option<&'static str>,
    source: &'static str,
    path: Option<String>,
    note: Option<&'static str>,
    num_layers: u32,
    num_query_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_context: Option<u32>,
}

#[derive(Debug, Serialize)]
struct MemoryInfo {
    device_bytes: u64,
    utilization: f64,
    usable_bytes: u64,
    weights_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Variants {
    attention: Vec<Variant>,
    dtype: Vec<Variant>,
}

#[derive(Debug, Serialize)]
struct Variant {
    attention_kind: String,
    kv_heads: u32,
    dtype: &'static str,
    bytes_per_token: u64,
    bytes_per_block: u64,
    blocks_fit: u64,
    tokens_fit: u64,
    max_concurrency: u64,
    selected: bool,
}

#[derive(Debug, Serialize)]
struct Allocation {
    source: &'static str,
    trace: Option<String>,
    lengths: LengthSummary,
    reserve_len: u64,
    reserve_from: &'static str,
    over_reservation: u64,
    over_model_context: Option<u64>,
    contiguous: Allocator,
    paged: Allocator,
    concurrency_gain: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LengthSummary {
    count: Option<u64>,
    mean: f64,
    p50: Option<u64>,
    p99: Option<u64>,
    max: u64,
}

#[derive(Debug, Serialize)]
struct Allocator {
    utilization: f64,
    max_concurrency: u64,
    reserved_tokens_per_request: f64,
}

impl From<AllocationResult> for Allocator {
    fn from(r: AllocationResult) -> Self {
        Allocator {
            utilization: r.utilization,
            max_concurrency: r.max_concurrency,
            reserved_tokens_per_request: r.reserved_tokens_per_request,
        }
    }
}

fn report(plan: &Plan) -> Result<Report> {
    let g = &plan.geometry;
    let dims = *g.dims();
    let kv_budget = plan.budget.kv_budget_bytes().map_err(explain)?;
    let capacity = KvCapacity::new(g, kv_budget).map_err(explain)?;
    let max_concurrency = capacity.max_concurrency(plan.context_len)?;

    let variant = |v: KvGeometry| -> Result<Variant> {
        let (blocks_fit, max_concurrency) = match KvCapacity::new(&v, kv_budget) {
            Ok(c) => (c.blocks_fit(), c.max_concurrency(plan.context_len)?),
            Err(CapacityError::BudgetBelowOneBlock { .. }) => (0, 0),
            Err(e) => return Err(e.into()),
        };
        Ok(Variant {
            attention_kind: v.attention_kind().to_string(),
            kv_heads: v.dims().num_kv_heads,
            dtype: v.dtype().name(),
            bytes_per_token: v.bytes_per_token(),
            bytes_per_block: v.bytes_per_block(),
            blocks_fit,
            tokens_fit: blocks_fit * u64::from(v.block_size()),
            max_concurrency,
            selected: v == *g,
        })
    };
    let mut kv_heads = vec![dims.num_query_heads, dims.num_kv_heads, 1];
    kv_heads.dedup();
    let attention = kv_heads
        .into_iter()
        .map(|kv| variant(g.with_kv_heads(kv)?))
        .collect::<Result<_>>()?;
    let mut dtypes = COMPARED_DTYPES.to_vec();
    if !dtypes.contains(&g.dtype()) {
        dtypes.insert(0, g.dtype());
    }
    let dtype = dtypes
        .into_iter()
        .map(|d| variant(g.with_dtype(d)))
        .collect::<Result<_>>()?;

    let allocation = match &plan.lengths {
        None => None,
        Some(lengths) => Some(allocation(plan, lengths, &capacity)?),
    };

    let (name, source, path, note) = match &plan.source {
        ModelSource::Preset(p) => (Some(p.name), "preset", None, Some(p.note)),
        ModelSource::Config(path) => (None, "config", Some(path.display().to_string()), None),
        ModelSource::Dims => (None, "dims", None, None),
    };
    Ok(Report {
        schema_version: 1,
        model: ModelInfo {
            name,
            source,
            path,
            note,
            num_layers: dims.num_layers,
            num_query_heads: dims.num_query_heads,
            num_kv_heads: dims.num_kv_heads,
            head_dim: dims.head_dim,
            max_context: dims.max_context,
        },
        attention_kind: g.attention_kind().to_string(),
        dtype: g.dtype().name(),
        block_size: g.block_size(),
        bytes_per_token: g.bytes_per_token(),
        data_bytes_per_token: g.data_bytes_per_token(),
        scale_bytes_per_token: g.scale_bytes_per_token(),
        bytes_per_token_per_layer: g.bytes_per_token_per_layer(),
        bytes_per_block: g.bytes_per_block(),
        memory: MemoryInfo {
            device_bytes: plan.budget.device_bytes(),
            utilization: plan.budget.utilization(),
            usable_bytes: plan.budget.usable_bytes(),
            weights_bytes: plan.budget.weights_bytes(),
        },
        kv_budget_bytes: kv_budget,
        blocks_fit: capacity.blocks_fit(),
        tokens_fit: capacity.tokens_fit(),
        context_len: plan.context_len,
        max_concurrency,
        variants: Variants { attention, dtype },
        allocation,
    })
}

/// Restates a capacity error with thousands separators and human sizes.
fn explain(e: CapacityError) -> anyhow::Error {
    let sized = |b: u64| match b {
        0..1024 => format!("{b} B"),
        _ => format!("{} B ({})", thousands(b), human_bytes(b)),
    };
    match e {
        CapacityError::WeightsExceedBudget {
            weights_bytes: 0,
            usable_bytes,
        } => anyhow::anyhow!(
            "no memory for the KV cache: --mem-gib x --util is {}",
            sized(usable_bytes)
        ),
        CapacityError::WeightsExceedBudget {
            weights_bytes,
            usable_bytes,
        } => anyhow::anyhow!(
            "no memory left for the KV cache: the weights (--weights-gib) take {} but only {} \
             is usable (--mem-gib x --util)",
            sized(weights_bytes),
            sized(usable_bytes)
        ),
        CapacityError::BudgetBelowOneBlock {
            kv_budget_bytes,
            bytes_per_block,
        } => anyhow::anyhow!(
            "the KV budget of {} holds not one block of {}; give more memory or a smaller \
             --block-size",
            sized(kv_budget_bytes),
            sized(bytes_per_block)
        ),
        other => other.into(),
    }
}

fn allocation(plan: &Plan, lengths: &Lengths, capacity: &KvCapacity) -> Result<Allocation> {
    let max_context = plan.geometry.dims().max_context.map(u64::from);
    Ok(match lengths {
        Lengths::Trace { path, lengths } => {
            let stats = LengthStats::from_lengths(lengths)?;
            let (reserve_len, reserve_from) = match plan.max_len {
                Some(max) => (max, "max_len"),
                None => (stats.max, "trace_max"),
            };
            let cmp = compare_allocation(lengths, reserve_len, capacity)?;
            let over_model_context =
                max_context.map(|ctx| lengths.iter().filter(|&&l| l > ctx).count() as u64);
            allocation_of(
                "trace",
                Some(path.display().to_string()),
                LengthSummary {
                    count: Some(stats.count),
                    mean: stats.mean,
                    p50: Some(stats.p50),
                    p99: Some(stats.p99),
                    max: stats.max,
                },
                reserve_from,
                over_model_context,
                cmp,
            )
        }
        Lengths::MeanMax { mean } => {
            let max = plan.max_len.context("--mean-len needs --max-len")?;
            let cmp = compare_allocation(&[*mean], max, capacity)?;
            allocation_of(
                "mean_max",
                None,
                LengthSummary {
                    count: None,
                    mean: *mean as f64,
                    p50: None,
                    p99: None,
                    max,
                },
                "max_len",
                None,
                cmp,
            )
        }
    })
}

fn allocation_of(
    source: &'static str,
    trace: Option<String>,
    lengths: LengthSummary,
    reserve_from: &'static str,
    over_model_context: Option<u64>,
    cmp: AllocationComparison,
) -> Allocation {
    Allocation {
        source,
        trace,
        lengths,
        reserve_len: cmp.reserve_len,
        reserve_from,
        over_reservation: cmp.over_reservation,
        over_model_context,
        contiguous: cmp.contiguous.into(),
        paged: cmp.paged.into(),
        concurrency_gain: cmp.concurrency_gain(),
    }
}
