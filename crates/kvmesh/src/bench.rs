//! `kvmesh bench engine`: the engine's system-level numbers on the real model. (`kvmesh
//! bench` without a subcommand is the load generator, [`crate::loadgen`].)
//!
//! - prefill throughput: one cold prompt of 512 and of 2,048 tokens (prefix caching off),
//!   tokens / time to first token;
//! - decode throughput at batch 1, 8 and 16: that many sequences with 512-token contexts
//!   generating together, generated tokens / decode time (prefill excluded);
//! - TTFT of a 2,048-token prompt cold, then of a second prompt sharing its first 1,984 tokens
//!   (prefix caching on): the speed-up prefix caching gives.
//!
//! Prompts are token ids drawn from a fixed-seed generator over ordinary (non-control) tokens,
//! so runs are repeatable and need no text corpus. Every number is the best of `--repeat`
//! measurements (fresh prompts; for decode, consecutive windows of `--decode-tokens` steps),
//! as `scripts/bench_llamacpp.py` does for llama.cpp: on a shared machine the best run is the
//! one least disturbed by other work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Subcommand};
use kvmesh_core::KvDtype;
use kvmesh_engine::{
    Engine, EngineConfig, GgufFile, LlamaModel, PagedAttention, SamplingParams, Tokenizer,
    DEFAULT_MODEL,
};
use serde::Serialize;

use crate::model_cmd;

/// Load-test an OpenAI-compatible endpoint (`kvmesh bench --url URL`), or measure the
/// engine (`kvmesh bench engine`).
///
/// Without a subcommand, sends a workload open-loop to --url (or to every --compare target
/// in turn) and reports TTFT, TPOT, ITL and end-to-end latency percentiles, throughput,
/// goodput, errors and the cached tokens the server reports, defined and named as in vLLM's
/// `bench serve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchTarget>,
    #[command(flatten)]
    load: crate::loadgen::LoadArgs,
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Prefill and decode throughput and prefix-cache TTFT of the CPU engine on the real model
    ///
    /// The kernels use the widest SIMD the CPU has (AVX-512, else AVX2); set the environment
    /// variable KVMESH_MAX_SIMD=avx2 (or scalar) to measure a narrower set on the same machine.
    Engine(EngineBenchArgs),
}

/// Settings of `kvmesh bench engine`.
#[derive(Debug, Args)]
pub struct EngineBenchArgs {
    /// Model name in the store
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Model directory [default: $KVMESH_MODELS_DIR, else ~/.cache/kvmesh/models]
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Compute threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Element type of the KV cache (f16, f32 or int8)
    #[arg(long, default_value = "f16", value_name = "DTYPE")]
    kv_cache_dtype: KvDtype,
    /// Tokens generated per sequence in each decode measurement window
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Measurements per number; the best is reported
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    threads: usize,
    /// The SIMD level the kernels run at (`avx512`, `avx2-fma` or `scalar`; see
    /// `KVMESH_MAX_SIMD`).
    simd: String,
    kv_cache_dtype: String,
    /// Measurements per number (the best is reported).
    repeat: u32,
    weights_mib: f64,
    prefill: Vec<Throughput>,
    decode: Vec<Throughput>,
    ttft_cold_ms: f64,
    ttft_cached_ms: f64,
    cached_tokens: usize,
    ttft_speedup: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    /// Prompt length (prefill) or batch size (decode).
    size: usize,
    tokens_per_s: f64,
}

/// Runs `kvmesh bench ...`.
pub fn run(args: &BenchArgs) -> Result<String> {
    match &args.what {
        Some(BenchTarget::Engine(a)) => engine(a),
        None => crate::loadgen::run(&args.load),
    }
}

fn engine(args: &EngineBenchArgs) -> Result<String> {
    let (spec, path) = model_cmd::find_model(args.models_dir.as_ref(), &args.model)?;
    let threads = model_cmd::threads(args.threads);
    let file = GgufFile::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let model = Arc::new(LlamaModel::load(&file, threads)?);
    drop(file);
    let vocab: Vec<u32> = (0..tokenizer.vocab_size() as u32)
        .filter(|&t| !tokenizer.is_special(t))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut prompt = |len: usize| -> Vec<u32> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                vocab[(seed % vocab.len() as u64) as usize]
            })
            .collect()
    };
    let new_engine = |prefix_caching: bool| -> Result<Engine> {
        Ok(Engine::new(
            Arc::clone(&model),
            EngineConfig {
                num_blocks: 1024,
                kv_cache_dtype: args.kv_cache_dtype,
                enable_prefix_caching: prefix_caching,
                max_num_batched_tokens: 2048,
                ..EngineConfig::default()
            },
            Vec::new(),
        )?)
    };
    let one_token = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };

    let repeat = args.repeat as usize;
    let mut prefill = Vec::new();
    for len in [512usize, 2048] {
        let mut best = Duration::MAX;
        for _ in 0..repeat {
            let mut e = new_engine(false)?;
            best = best.min(time_to_first_token(&mut e, prompt(len), one_token.clone())?);
        }
        prefill.push(Throughput {
            size: len,
            tokens_per_s: len as f64 / best.as_secs_f64(),
        });
    }

    let mut decode = Vec::new();
    for batch in [1usize, 8, 16] {
        let mut e = new_engine(false)?;
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(args.decode_tokens * repeat)
        };
        for _ in 0..batch {
            e.add_request(prompt(512), params.clone())?;
        }
        // Prefill everything first: each request's first token comes with the end of its
        // prefill, so wait until every request has produced one (counting requests, not
        // tokens: early requests decode while later ones are still in prefill).
        let mut started = std::collections::HashSet::new();
        while started.len() < batch {
            started.extend(e.step()?.iter().filter(|o| o.token.is_some()).map(|o| o.id));
        }
        let mut best = 0f64;
        for _ in 0..repeat {
            let t = Instant::now();
            let mut generated = 0;
            for _ in 0..args.decode_tokens {
                if !e.has_unfinished() {
                    break;
                }
                generated += e.step()?.iter().filter(|o| o.token.is_some()).count();
            }
            best = best.max(generated as f64 / t.elapsed().as_secs_f64());
        }
        decode.push(Throughput {
            size: batch,
            tokens_per_s: best,
        });
    }

    let (mut cold, mut warm, mut cached_tokens) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..repeat {
        let mut e = new_engine(true)?;
        let base = prompt(2048);
        cold = cold.min(time_to_first_token(
            &mut e,
            base.clone(),
            one_token.clone(),
        )?);
        let mut second = base[..1984].to_vec();
        second.extend(prompt(64));
        let hits_before = e.stats().pool.hit_tokens;
        warm = warm.min(time_to_first_token(&mut e, second, one_token.clone())?);
        cached_tokens = (e.stats().pool.hit_tokens - hits_before) as usize;
    }

    let report = Report {
        threads,
        simd: PagedAttention::new().backend().to_string(),
        kv_cache_dtype: args.kv_cache_dtype.to_string(),
        repeat: args.repeat,
        weights_mib: model.weight_bytes() as f64 / (1 << 20) as f64,
        prefill,
        decode,
        ttft_cold_ms: cold.as_secs_f64() * 1e3,
        ttft_cached_ms: warm.as_secs_f64() * 1e3,
        cached_tokens,
        ttft_speedup: cold.as_secs_f64() / warm.as_secs_f64(),
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    let mut out = format!(
        "kvmesh engine on {} ({} threads, {} kernels, weights {:.0} MiB, {} KV cache, best of {})\n\n",
        spec.name,
        report.threads,
        report.simd,
        report.weights_mib,
        report.kv_cache_dtype,
        report.repeat
    );
    for p in &report.prefill {
        out += &format!(
            "prefill {:>5} tokens      {:>8.1} tok/s\n",
            p.size, p.tokens_per_s
        );
    }
    for d in &report.decode {
        out += &format!(
            "decode  batch {:>2} @ ctx 512  {:>8.1} tok/s\n",
            d.size, d.tokens_per_s
        );
    }
    out += &format!(
        "TTFT 2048-token prompt: cold {:.1} ms, with {} tokens cached {:.1} ms ({:.1}x faster)\n",
        report.ttft_cold_ms, report.cached_tokens, report.ttft_cached_ms, report.ttft_speedup
    );
    Ok(out)
}

fn time_to_first_token(
    engine: &mut Engine,
    prompt: Vec<u32>,
    params: SamplingParams,
) -> Result<Duration> {
    let id = engine.add_request(prompt, params)?;
    let start = Instant::now();
    loop {
        if engine
            .step()?
            .iter()
            .any(|o| o.id == id && o.token.is_some())
        {
            let t = start.elapsed();
            while engine.has_unfinished() {
                engine.step()?;
            }
            return Ok(t);
        }
    }
}
