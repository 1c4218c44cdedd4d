//! `kvmesh generate`: one prompt through the engine, streamed to stdout, with timings.
//!
//! The engine does the text: it is given the tokenizer, so each step's outputs carry their
//! text delta, and stop strings (`--stop`) are matched, held back and cut inside the engine
//! (see `kvmesh_engine::Engine::with_tokenizer`); this command only prints.
//!
//! The KV budget is one of `--kv-cache-gib` (the default, 0.5 GiB), `--num-blocks`, or
//! `--kv-cache-memory-fraction` (the fraction of the memory limit, the cgroup v2 or v1 limit
//! or `MemTotal`, that weights and KV may use together; see `kvmesh_engine::MemoryLimit`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use kvmesh_core::KvDtype;
use kvmesh_engine::{
    kv_blocks_for_fraction, ChatMessage, ChatTemplate, Engine, EngineConfig, GgufFile, LlamaModel,
    MemoryLimit, SamplingParams, Tokenizer, DEFAULT_MODEL,
};

use crate::model_cmd;

/// Generate text from a prompt with the CPU engine (paged KV, prefix caching).
///
/// Prints the generated text as it is produced, then the time to first token (TTFT), prefill
/// and decode speed, and memory. The engine settings use vLLM's names.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt text
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    chat: bool,
    /// System message for --chat [default: the template's own]
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep only the K most likely tokens (0: off)
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off)
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the output contains this string (repeatable); the output is cut before it
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarking)
    #[arg(long)]
    ignore_eos: bool,
    /// Model name in the store (see `kvmesh model list`)
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// A GGUF file to load instead of a store model
    #[arg(long, value_name = "FILE")]
    model_path: Option<PathBuf>,
    /// Model directory [default: $KVMESH_MODELS_DIR, else ~/.cache/kvmesh/models]
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Tokens per KV block
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Most sequences running at once
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Most tokens computed per step (prefill chunks and decodes together)
    #[arg(long, default_value_t = 2048)]
    max_num_batched_tokens: usize,
    /// Disable prefix caching (every prompt is recomputed)
    #[arg(long)]
    no_enable_prefix_caching: bool,
    /// Element type of the KV cache: f16, f32, or int8 (a scale per head vector; half of
    /// f16's memory and bandwidth, values within half a quantisation step)
    #[arg(long, default_value = "f16", value_name = "DTYPE")]
    kv_cache_dtype: KvDtype,
    /// KV cache memory budget in GiB [default: 0.5 when no other budget is given]
    #[arg(long, group = "kv_budget")]
    kv_cache_gib: Option<f64>,
    /// KV cache size in blocks
    #[arg(long, group = "kv_budget")]
    num_blocks: Option<usize>,
    /// Fraction (0 < F <= 1) of the memory limit (the cgroup v2 memory.max or v1
    /// memory.limit_in_bytes if lower, else MemTotal) for weights and KV cache together; the KV
    /// cache gets what the weights leave
    #[arg(long, value_name = "F", group = "kv_budget")]
    kv_cache_memory_fraction: Option<f64>,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `kvmesh generate`: the text goes to stdout as it is generated, timings to stderr.
pub fn run(args: &GenerateArgs) -> Result<String> {
    let path = match &args.model_path {
        Some(p) => p.clone(),
        None => model_cmd::find_model(args.models_dir.as_ref(), &args.model)?.1,
    };
    let threads = model_cmd::threads(args.threads);
    let load_start = Instant::now();
    let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&file).context("building the tokenizer")?;
    let model = LlamaModel::load(&file, threads).context("loading the weights")?;
    let template = args
        .chat
        .then(|| ChatTemplate::from_gguf(&file))
        .transpose()
        .context("reading the chat template")?;
    drop(file);
    let block_bytes = model
        .config()
        .kv_geometry(args.block_size, args.kv_cache_dtype)
        .bytes_per_block();
    let weight_bytes = model.weight_bytes();
    let (num_blocks, budget) = kv_budget(args, weight_bytes as u64, block_bytes)?;
    let cfg = EngineConfig {
        block_size: args.block_size,
        num_blocks,
        kv_cache_dtype: args.kv_cache_dtype,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        enable_prefix_caching: !args.no_enable_prefix_caching,
        ..EngineConfig::default()
    };
    let stop_tokens = tokenizer.stop_tokens().to_vec();
    let tokenizer = Arc::new(tokenizer);
    let mut engine =
        Engine::new(Arc::new(model), cfg, stop_tokens)?.with_tokenizer(Arc::clone(&tokenizer))?;
    eprintln!(
        "loaded {} in {:.2} s, {threads} threads\n\
         weights {} in memory; KV cache {} = {num_blocks} blocks x {} tokens = {} tokens ({budget})",
        path.display(),
        load_start.elapsed().as_secs_f64(),
        mib(weight_bytes as u64),
        mib(engine.kv_bytes() as u64),
        args.block_size,
        num_blocks as u64 * u64::from(args.block_size),
    );

    let text = match &template {
        Some(t) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::system(system.clone()));
            }
            messages.push(ChatMessage::user(args.prompt.clone()));
            t.render(&messages, true)
        }
        None => args.prompt.clone(),
    };
    let prompt = tokenizer.encode(&text, args.chat)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        stop_strings: args.stop.clone(),
        ..SamplingParams::default()
    };
    let prompt_len = prompt.len();
    engine.add_request(prompt, params)?;

    let start = Instant::now();
    let mut first_token = None;
    let mut generated = 0usize;
    let mut stdout = std::io::stdout().lock();
    while engine.has_unfinished() {
        for out in engine.step()? {
            if out.token.is_none() {
                continue;
            }
            first_token.get_or_insert_with(|| start.elapsed());
            generated += 1;
            stdout.write_all(out.text.as_bytes())?;
            stdout.flush()?;
        }
    }
    writeln!(stdout)?;
    let total = start.elapsed().as_secs_f64();
    let ttft = first_token.map_or(total, |d| d.as_secs_f64());
    let stats = engine.stats();
    let decode_tokens = generated.saturating_sub(1);
    eprintln!(
        "--\nprompt {prompt_len} tokens ({} cached), generated {generated} tokens\n\
         TTFT {:.1} ms ({:.0} prompt tok/s), decode {:.1} tok/s, total {:.2} s",
        stats.pool.hit_tokens,
        ttft * 1e3,
        prompt_len as f64 / ttft,
        if total > ttft {
            decode_tokens as f64 / (total - ttft)
        } else {
            0.0
        },
        total
    );
    Ok(String::new())
}

/// The KV budget in blocks from whichever budget flag was given (clap allows at most one),
/// and a description of where it came from for the startup report.
fn kv_budget(args: &GenerateArgs, weight_bytes: u64, block_bytes: u64) -> Result<(usize, String)> {
    if let Some(n) = args.num_blocks {
        return Ok((n, format!("--num-blocks {n}")));
    }
    if let Some(fraction) = args.kv_cache_memory_fraction {
        let limit = MemoryLimit::detect().context("reading the memory limit")?;
        let blocks = kv_blocks_for_fraction(fraction, limit.bytes, weight_bytes, block_bytes)
            .context("--kv-cache-memory-fraction")?;
        return Ok((
            blocks,
            format!("--kv-cache-memory-fraction {fraction} of the memory limit {limit}, less the weights"),
        ));
    }
    let gib = args.kv_cache_gib.unwrap_or(DEFAULT_KV_CACHE_GIB);
    if !(gib.is_finite() && gib > 0.0) {
        bail!("--kv-cache-gib must be positive, got {gib}");
    }
    let blocks = (gib * (1u64 << 30) as f64 / block_bytes as f64) as usize;
    Ok((blocks, format!("--kv-cache-gib {gib}")))
}

/// The KV budget when no budget flag is given.
const DEFAULT_KV_CACHE_GIB: f64 = 0.5;

/// Bytes as MiB for the reports, with the exact byte count.
fn mib(bytes: u64) -> String {
    format!(
        "{:.1} MiB ({bytes} bytes)",
        bytes as f64 / (1u64 << 20) as f64
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: GenerateArgs,
    }

    fn parse(extra: &[&str]) -> Result<GenerateArgs, clap::Error> {
        let argv = ["kvmesh", "--prompt", "hi"].iter().chain(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn at_most_one_kv_budget_flag() {
        for pair in [
            ["--kv-cache-gib", "1", "--num-blocks", "10"],
            ["--num-blocks", "10", "--kv-cache-memory-fraction", "0.5"],
            ["--kv-cache-gib", "1", "--kv-cache-memory-fraction", "0.5"],
        ] {
            let err = parse(&pair).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }

    #[test]
    fn kv_budget_from_each_flag() {
        let mib = 1u64 << 20;
        let budget = |extra: &[&str]| kv_budget(&parse(extra).unwrap(), 0, mib);
        // The default is today's 0.5 GiB.
        assert_eq!(budget(&[]).unwrap().0, 512);
        assert_eq!(budget(&["--kv-cache-gib", "0.25"]).unwrap().0, 256);
        assert_eq!(budget(&["--num-blocks", "7"]).unwrap().0, 7);
        assert!(budget(&["--kv-cache-gib", "0"]).is_err());
        let err = budget(&["--kv-cache-memory-fraction", "1.5"]).unwrap_err();
        assert!(format!("{err:#}").contains("(0, 1]"), "{err:#}");
        // The real limit: a small fraction less huge weights leaves nothing.
        let args = parse(&["--kv-cache-memory-fraction", "0.01"]).unwrap();
        let err = kv_budget(&args, u64::MAX / 2, mib).unwrap_err();
        assert!(format!("{err:#}").contains("no room"), "{err:#}");
        let (blocks, how) = kv_budget(
            &parse(&["--kv-cache-memory-fraction", "0.5"]).unwrap(),
            0,
            mib,
        )
        .unwrap();
        assert!(blocks > 0 && how.contains("memory limit"), "{blocks} {how}");
    }
}
