//! kvmesh-engine: a CPU inference engine whose attention reads paged KV blocks.
//!
//! The pieces, in the order a request meets them: a [`ModelStore`] fetches and verifies a GGUF
//! file; [`GgufFile`] parses it without trusting it; [`Tokenizer`] and [`ChatTemplate`] come
//! from its metadata; [`LlamaModel`] loads its weights (kept in the file's quantisation, [`PackedLinear`]);
//! an [`Engine`] owns the model, a [`KvCache`] of fixed-size blocks and a
//! [`kvmesh_core::BlockPool`] that decides which block holds which tokens, and runs
//! continuous-batching steps whose attention ([`PagedAttention`]) reads each sequence's KV
//! through its block table. A cached prefix skips its compute for real: its blocks are pinned
//! and only the rest of the prompt runs through the model. Given the tokenizer
//! ([`Engine::with_tokenizer`]), the engine also returns each step's text and ends requests on
//! stop strings. [`MemoryLimit`] and [`kv_blocks_for_fraction`] size the KV budget as a
//! fraction of the process's memory limit.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kvmesh_engine::*;
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let tokenizer = Arc::new(Tokenizer::from_gguf(&file)?);
//! let model = Arc::new(LlamaModel::load(&file, 2)?);
//! let stop_tokens = tokenizer.stop_tokens().to_vec();
//! let mut engine = Engine::new(model, EngineConfig::default(), stop_tokens)?
//!     .with_tokenizer(Arc::clone(&tokenizer))?;
//! let prompt = tokenizer.encode("The capital of France is", false)?;
//! let params = SamplingParams {
//!     stop_strings: vec![".".to_string()],
//!     ..SamplingParams::greedy(16)
//! };
//! engine.add_request(prompt, params)?;
//! while engine.has_unfinished() {
//!     for out in engine.step()? {
//!         print!("{}", out.text); // streamed, cut before the first "."
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod attention;
mod detokenizer;
mod engine;
mod error;
mod gguf;
mod huge_pages;
mod kv_cache;
mod linear;
#[cfg(feature = "gemm")]
mod matmul;
mod memory;
mod model;
mod model_store;
mod quant;
mod sampling;
mod simd;
mod tokenizer;

pub use attention::{
    paged_attention_decode, paged_attention_prefill, AttentionBackend, PagedAttention,
};
pub use engine::{
    Engine, EngineConfig, EngineError, EngineStats, FinishReason, RequestId, RequestOutput,
};
pub use error::GgufError;
pub use gguf::{GgufFile, MetadataValue, TensorInfo};
pub use kv_cache::{KvCache, KvCacheError};
pub use linear::{PackError, PackedLinear, WeightFormat};
#[cfg(feature = "gemm")]
pub use matmul::{gemm_linear, DenseMatrix};
pub use memory::{kv_blocks_for_fraction, MemoryError, MemoryLimit, MemoryLimitSource};
pub use model::{Chunk, LlamaConfig, LlamaModel};
pub use model_store::{
    sha256_file, FetchError, ModelSpec, ModelStore, DEFAULT_MODEL, KNOWN_MODELS,
};
pub use quant::{dequantize, f16_to_f32, f32_to_f16, GgmlType};
pub use sampling::{argmax, Sampler, SamplingParams};
pub use tokenizer::{
    ChatMessage, ChatTemplate, CodecError, DecodeStream, Tokenizer, TokenizerError,
};
