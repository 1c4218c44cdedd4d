//! How long one engine step takes: a roofline-style cost model with named presets.
//!
//! One step of a continuous-batching engine runs every scheduled token through the model at
//! once: prefill chunks (many tokens of one sequence) and decodes (one token each). Its time is
//!
//! ```text
//! step = launch
//!      + max(weights, per_token x tokens)        linear layers: read the weights once per
//!                                               step, or compute-bound once the batch is big
//!      + pair x sum over prefill chunks of n x (c + (n + 1) / 2)
//!                                               causal attention of n new tokens over c
//!                                               earlier ones (compute)
//!      + kv_read x sum over decodes of context   decode attention reads every KV token of
//!                                               its sequence (memory)
//! ```
//!
//! with `tokens` = prefill tokens + decode sequences. This is the standard first-order model
//! (weights-bound decode, compute-bound prefill, attention linear in context for decode and
//! quadratic for prefill); it leaves out kernel-size effects, prefix-caching overheads and
//! CPU scheduling jitter. Everything the simulator reports about time rests on these
//! constants, so each preset says where its numbers come from and how sure they are.
//!
//! # Presets
//!
//! | name | model, hardware | confidence |
//! |---|---|---|
//! | `h100-llama3-8b` (default) | Llama-3-8B, bf16 weights and KV, one H100 SXM 80 GB | prefill: medium (one published measurement); decode: medium-low (hardware arithmetic) |
//! | `cpu-smollm2-135m` | SmolLM2-135M, f32, the project's CPU engine on a 2-core machine | low (arithmetic estimates; replace with `kvmesh bench` measurements) |
//!
//! **`h100-llama3-8b`.** Prefill: SGLang's maintainers measured Llama-3.1-8B-Instruct on one
//! H100 at 27,670 input tokens/s for 8,192-token random prompts with 8 output tokens
//! (sgl-project/sglang pull request 1060, 2024-08-13, `bench_serving --random-input 8192
//! --random-output 8`), i.e. 36.1 us per prompt token including attention. Attention costs
//! 4 x 32 layers x 32 heads x 128 dims = 0.52 MFLOP per (query, key) pair; at ~400 TFLOP/s
//! (FlashAttention-class kernels reach 50-75% of the 989 TFLOP/s dense bf16 peak) that is
//! 1.3 ns per pair, 5.4 us per token at an average 4,096-token causal context, which leaves
//! 30 us per token for the linear layers (16 GFLOP per token at 53% of peak). Decode: the
//! step floor is reading 16.1 GB of weights at ~3 TB/s achieved of 3.35 TB/s HBM3 (5.5 ms);
//! KV is 128 KiB per token (32 layers x 8 KV heads x 128 x K,V x 2 bytes), 44 ns per token
//! read at 3 TB/s; 1 ms of launch and scheduling overhead per step, in line with the CPU
//! overheads vLLM's v0.6.0 performance write-up (2024-09-05) profiles for this model on this
//! GPU. Together: ~7 ms per decode step at batch 1 with short contexts, ~9 ms at batch 64
//! with 1,000-token contexts.
//!
//! **`cpu-smollm2-135m`.** SmolLM2-135M (30 layers, 9 query / 3 KV heads of 64, hidden 576,
//! 134.5 M parameters, tied embeddings) in f32: 269 MFLOP per token; a 2-core AVX2 machine at
//! ~80 GFLOP/s achieved gives 3.4 ms per token (~300 prompt tokens/s). Weights are 538 MB;
//! at ~10 GB/s of memory bandwidth a decode step costs at least 54 ms (~18 tokens/s for one
//! stream). Attention: 69 kFLOP per pair at ~40 GFLOP/s, 1.7 ns; KV is 46 KB per token in f32,
//! 4.6 us per token read. 0.2 ms of overhead per step. None of this is measured yet.

use std::fmt;
use std::str::FromStr;

use kvmesh_core::{find_preset, KvDtype, KvGeometry};
use serde::Serialize;

/// The shape of one engine step: what the scheduler put in the batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Prompt tokens computed in this step, all chunks together.
    pub prefill_tokens: u64,
    /// Causal attention pairs of the prefill chunks: `sum n x (c + (n + 1) / 2)`.
    pub prefill_pairs: f64,
    /// Sequences decoding one token each.
    pub decode_seqs: u64,
    /// KV tokens those decodes read (their context lengths, summed).
    pub decode_kv_tokens: u64,
}

impl StepShape {
    /// Adds a prefill chunk of `new_tokens` after `context` tokens already in the KV cache.
    pub fn add_prefill(&mut self, new_tokens: u64, context: u64) {
        let n = new_tokens as f64;
        self.prefill_tokens += new_tokens;
        self.prefill_pairs += n * (context as f64 + (n + 1.0) / 2.0);
    }

    /// Adds one decoding sequence whose KV holds `context` tokens.
    pub fn add_decode(&mut self, context: u64) {
        self.decode_seqs += 1;
        self.decode_kv_tokens += context;
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decode_seqs == 0
    }
}

/// Step-time constants of one model on one device; see the module docs for the formula.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostModel {
    /// Preset name (or `custom`).
    pub name: String,
    /// What it models, in words.
    pub description: String,
    /// Fixed cost of every step (launch, scheduling), seconds.
    pub launch_s: f64,
    /// Reading the weights once, seconds: the floor of a step's linear layers.
    pub weights_s: f64,
    /// Linear-layer compute per token, seconds.
    pub per_token_s: f64,
    /// Prefill attention per (query, key) pair, seconds.
    pub attention_pair_s: f64,
    /// Decode attention per KV token read, seconds.
    pub kv_read_s: f64,
    /// KV bytes per token of the modelled model and dtype (for cache memory).
    pub kv_bytes_per_token: u64,
    /// Device memory left for KV (for [`CostModel::device_blocks`]), bytes.
    pub kv_budget_bytes: u64,
}

/// The preset names [`CostModel::preset`] accepts, default first.
pub const COST_PRESETS: [&str; 2] = ["h100-llama3-8b", "cpu-smollm2-135m"];

fn kv_bytes(model: &str, dtype: KvDtype) -> u64 {
    let dims = find_preset(model).expect("built-in model preset").dims;
    KvGeometry::new(dims, dtype, 1)
        .expect("valid preset")
        .bytes_per_token()
}

impl CostModel {
    /// A named preset (see the module docs), or `None` for an unknown name.
    pub fn preset(name: &str) -> Option<CostModel> {
        match name.to_ascii_lowercase().as_str() {
            "h100-llama3-8b" | "h100" => Some(CostModel {
                name: "h100-llama3-8b".into(),
                description: "Llama-3-8B, bf16, one H100 SXM 80 GB".into(),
                launch_s: 1.0e-3,
                weights_s: 5.5e-3,
                per_token_s: 30e-6,
                attention_pair_s: 1.3e-9,
                kv_read_s: 44e-9,
                kv_bytes_per_token: kv_bytes("llama-3-8b", KvDtype::Bf16),
                // 80 GB x 0.9 utilisation - 16.1 GB of weights.
                kv_budget_bytes: 72_000_000_000 - 16_100_000_000,
            }),
            "cpu-smollm2-135m" | "cpu" => Some(CostModel {
                name: "cpu-smollm2-135m".into(),
                description: "SmolLM2-135M, f32, 2 CPU cores (estimate)".into(),
                launch_s: 0.2e-3,
                weights_s: 54e-3,
                per_token_s: 3.4e-3,
                attention_pair_s: 1.7e-9,
                kv_read_s: 4.6e-6,
                kv_bytes_per_token: kv_bytes("smollm2-135m", KvDtype::F32),
                // 4 GiB of host memory for KV.
                kv_budget_bytes: 4 << 30,
            }),
            _ => None,
        }
    }

    /// The default preset, `h100-llama3-8b`.
    pub fn h100_llama3_8b() -> CostModel {
        Self::preset(COST_PRESETS[0]).expect("built-in preset")
    }

    /// Seconds one step of this shape takes.
    pub fn step_time_s(&self, s: &StepShape) -> f64 {
        if s.is_empty() {
            return 0.0;
        }
        let tokens = (s.prefill_tokens + s.decode_seqs) as f64;
        self.launch_s
            + self.weights_s.max(self.per_token_s * tokens)
            + self.attention_pair_s * s.prefill_pairs
            + self.kv_read_s * s.decode_kv_tokens as f64
    }

    /// Blocks of `block_size` tokens that fit in the modelled device's KV budget.
    pub fn device_blocks(&self, block_size: u32) -> usize {
        let per_block = self.kv_bytes_per_token * u64::from(block_size.max(1));
        (self.kv_budget_bytes / per_block.max(1)) as usize
    }

    /// Checks every constant is finite and non-negative.
    pub fn validate(&self) -> Result<(), &'static str> {
        let all = [
            ("launch_s", self.launch_s),
            ("weights_s", self.weights_s),
            ("per_token_s", self.per_token_s),
            ("attention_pair_s", self.attention_pair_s),
            ("kv_read_s", self.kv_read_s),
        ];
        for (name, v) in all {
            if !v.is_finite() || v < 0.0 {
                return Err(name);
            }
        }
        if self.launch_s + self.weights_s + self.per_token_s <= 0.0 {
            return Err("launch_s + weights_s + per_token_s");
        }
        Ok(())
    }
}

impl Default for CostModel {
    fn default() -> Self {
        Self::h100_llama3_8b()
    }
}

/// An unknown cost-model preset name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCostModel(pub String);

impl fmt::Display for UnknownCostModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown cost model '{}': use {}",
            self.0,
            COST_PRESETS.join(" or ")
        )
    }
}

impl std::error::Error for UnknownCostModel {}

impl FromStr for CostModel {
    type Err = UnknownCostModel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CostModel::preset(s).ok_or_else(|| UnknownCostModel(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_preset_reproduces_its_sources() {
        let m = CostModel::h100_llama3_8b();
        assert_eq!(m.kv_bytes_per_token, 128 * 1024);
        // One 8,192-token prompt in 8,192-token chunks: ~36 us per token (SGLang PR 1060).
        let mut s = StepShape::default();
        s.add_prefill(8192, 0);
        let per_token = m.step_time_s(&s) / 8192.0;
        assert!((per_token - 36.1e-6).abs() < 1.5e-6, "{per_token}");
        // Decode at batch 1, short context: ~7 ms.
        let mut d = StepShape::default();
        d.add_decode(500);
        let t = m.step_time_s(&d);
        assert!((0.006..0.008).contains(&t), "{t}");
        // Batch 64 at 1,000 tokens: more, but well under 64 x batch 1.
        let mut b = StepShape::default();
        (0..64).for_each(|_| b.add_decode(1000));
        let t64 = m.step_time_s(&b);
        assert!(t64 > t && t64 < 0.012, "{t64}");
        // 55.9 GB / 64 MiB: 832 blocks of 512 tokens fit an H100 next to the weights.
        assert_eq!(m.device_blocks(512), 832);
        assert_eq!(m.step_time_s(&StepShape::default()), 0.0);
    }

    #[test]
    fn presets_parse_and_validate() {
        for name in COST_PRESETS {
            let m: CostModel = name.parse().unwrap();
            assert_eq!(m.name, name);
            assert_eq!(m.validate(), Ok(()));
        }
        let err = "tpu".parse::<CostModel>().unwrap_err();
        assert!(err.to_string().contains("h100-llama3-8b"));
        let cpu = CostModel::preset("cpu").unwrap();
        assert_eq!(cpu.kv_bytes_per_token, 2 * 30 * 3 * 64 * 4);
        let bad = CostModel {
            kv_read_s: f64::NAN,
            ..cpu
        };
        assert_eq!(bad.validate(), Err("kv_read_s"));
    }
}
