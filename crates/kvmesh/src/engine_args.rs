//! The engine's settings as command-line flags, shared by `generate` and `serve`: the model,
//! the scheduler (vLLM's names) and the KV budget.
//!
//! The KV budget is one of `--kv-cache-gib` (the default, 0.5 GiB), `--num-blocks`, or
//! `--kv-cache-memory-fraction` (the fraction of the memory limit, the cgroup v2 or v1 limit
//! or `MemTotal`, that weights and KV may use together; see `kvmesh_engine::MemoryLimit`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use kvmesh_core::KvDtype;
use kvmesh_engine::{
    kv_blocks_for_fraction, EngineConfig, LlamaConfig, MemoryLimit, DEFAULT_MODEL,
};

use crate::model_cmd;

/// The model and the engine's settings.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Model name in the store (see `kvmesh model list`)
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// A GGUF file to load instead of a store model
    #[arg(long, value_name = "FILE")]
    pub model_path: Option<PathBuf>,
    /// Model directory [default: $KVMESH_MODELS_DIR, else ~/.cache/kvmesh/models]
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
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
    /// Longest prompt plus output, in tokens [default: the model's context, capped by the KV
    /// budget]
    #[arg(long, value_name = "TOKENS")]
    max_model_len: Option<usize>,
    /// Compute threads [default: all cores]
    #[arg(long)]
    pub threads: Option<usize>,
}

impl EngineArgs {
    /// The store name of the model (`--model`).
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The model file: `--model-path`, else the store's copy of `--model` (or an error that
    /// says how to fetch it).
    pub fn model_file(&self) -> Result<PathBuf> {
        match &self.model_path {
            Some(p) => Ok(p.clone()),
            None => Ok(model_cmd::find_model(self.models_dir.as_ref(), &self.model)?.1),
        }
    }

    /// The engine's settings for a model of `model` geometry whose weights take
    /// `weight_bytes` of memory, and where its KV budget came from.
    pub fn engine_config(
        &self,
        model: &LlamaConfig,
        weight_bytes: u64,
    ) -> Result<(EngineConfig, String)> {
        let block_bytes = model
            .kv_geometry(self.block_size, self.kv_cache_dtype)
            .bytes_per_block();
        let (num_blocks, budget) = kv_budget(self, weight_bytes, block_bytes)?;
        let cfg = EngineConfig {
            block_size: self.block_size,
            num_blocks,
            kv_cache_dtype: self.kv_cache_dtype,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            max_model_len: self.max_model_len,
            ..EngineConfig::default()
        };
        Ok((cfg, budget))
    }
}

/// The KV budget in blocks from whichever budget flag was given (clap allows at most one),
/// and a description of where it came from for the startup report.
fn kv_budget(args: &EngineArgs, weight_bytes: u64, block_bytes: u64) -> Result<(usize, String)> {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EngineArgs,
    }

    fn parse(extra: &[&str]) -> Result<EngineArgs, clap::Error> {
        let argv = ["kvmesh"].iter().chain(extra);
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
