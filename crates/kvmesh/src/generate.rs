//! `kvmesh generate`: one prompt through the engine, streamed to stdout, with timings.
//!
//! The engine does the text: it is given the tokenizer, so each step's outputs carry their
//! text delta, and stop strings (`--stop`) are matched, held back and cut inside the engine
//! (see `kvmesh_engine::Engine::with_tokenizer`); this command only prints.
//!
//! The model and engine flags are [`EngineArgs`], shared with `kvmesh serve`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use kvmesh_engine::{
    ChatMessage, ChatTemplate, Engine, GgufFile, LlamaModel, SamplingParams, Tokenizer,
};

use crate::engine_args::EngineArgs;
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
    /// The model and the engine's settings
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs `kvmesh generate`: the text goes to stdout as it is generated, timings to stderr.
pub fn run(args: &GenerateArgs) -> Result<String> {
    let e = &args.engine;
    let path = e.model_file()?;
    let threads = model_cmd::threads(e.threads);
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
    let weight_bytes = model.weight_bytes();
    let (cfg, budget) = e.engine_config(model.config(), weight_bytes as u64)?;
    let num_blocks = cfg.num_blocks;
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
        engine.config().block_size,
        num_blocks as u64 * u64::from(engine.config().block_size),
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

/// Bytes as MiB for the reports, with the exact byte count.
fn mib(bytes: u64) -> String {
    format!(
        "{:.1} MiB ({bytes} bytes)",
        bytes as f64 / (1u64 << 20) as f64
    )
}
