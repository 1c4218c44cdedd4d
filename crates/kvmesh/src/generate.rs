//! `kvmesh generate`: one prompt through the engine, streamed to stdout, with timings.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use kvmesh_engine::{
    ChatMessage, ChatTemplate, Engine, EngineConfig, GgufFile, LlamaModel, SamplingParams,
    Tokenizer, DEFAULT_MODEL,
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
    /// KV cache memory budget in GiB
    #[arg(long, default_value_t = 0.5)]
    kv_cache_gib: f64,
    /// KV cache size in blocks (overrides --kv-cache-gib)
    #[arg(long)]
    num_blocks: Option<usize>,
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
        .kv_geometry(args.block_size)
        .bytes_per_block();
    let num_blocks = match args.num_blocks {
        Some(n) => n,
        None => {
            if !(args.kv_cache_gib.is_finite() && args.kv_cache_gib > 0.0) {
                bail!("--kv-cache-gib must be positive");
            }
            (args.kv_cache_gib * (1u64 << 30) as f64 / block_bytes as f64) as usize
        }
    };
    let weight_bytes = model.weight_bytes();
    let cfg = EngineConfig {
        block_size: args.block_size,
        num_blocks,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        enable_prefix_caching: !args.no_enable_prefix_caching,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(Arc::new(model), cfg, tokenizer.stop_tokens().to_vec())?;
    eprintln!(
        "loaded {} in {:.2} s: weights {:.0} MiB in memory, KV cache {:.0} MiB ({} blocks of {} tokens), {} threads",
        path.display(),
        load_start.elapsed().as_secs_f64(),
        weight_bytes as f64 / (1 << 20) as f64,
        engine.kv_bytes() as f64 / (1 << 20) as f64,
        num_blocks,
        args.block_size,
        threads
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
        ..SamplingParams::default()
    };
    let prompt_len = prompt.len();
    engine.add_request(prompt, params)?;

    let start = Instant::now();
    let mut first_token = None;
    let mut generated = 0usize;
    let mut stream = tokenizer.decode_stream(true);
    let mut output = String::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    'run: while engine.has_unfinished() {
        for out in engine.step()? {
            let Some(token) = out.token else { continue };
            first_token.get_or_insert_with(|| start.elapsed());
            generated += 1;
            stream.step_into(token, &mut output)?;
            // Stop strings: cut before the first match and end the request.
            if let Some(cut) = args
                .stop
                .iter()
                .filter_map(|s| output.find(s.as_str()))
                .min()
            {
                output.truncate(cut);
                write_new(&mut stdout, &output, &mut printed)?;
                engine.abort(out.id);
                break 'run;
            }
            // Hold back a possible prefix of a stop string.
            let hold = args
                .stop
                .iter()
                .map(|s| longest_suffix_prefix(&output, s))
                .max()
                .unwrap_or(0);
            let safe = floor_char_boundary(&output, output.len() - hold);
            write_new(&mut stdout, &output[..safe], &mut printed)?;
        }
    }
    output.push_str(&stream.finish());
    write_new(&mut stdout, &output, &mut printed)?;
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

fn write_new(out: &mut impl Write, text: &str, printed: &mut usize) -> Result<()> {
    if text.len() > *printed {
        out.write_all(&text.as_bytes()[*printed..])?;
        out.flush()?;
        *printed = text.len();
    }
    Ok(())
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_prefixes_are_held_back() {
        assert_eq!(longest_suffix_prefix("hello wor", "world"), 3);
        assert_eq!(longest_suffix_prefix("hello", "world"), 0);
        assert_eq!(longest_suffix_prefix("abc", ""), 0);
        assert_eq!(floor_char_boundary("héllo", 2), 1);
    }
}
