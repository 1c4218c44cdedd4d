//! kvmesh-engine: a CPU inference engine whose attention reads paged KV blocks.
//!
//! The pieces, in the order a request meets them: a [`ModelStore`] fetches and verifies a GGUF
//! file; [`GgufFile`] parses it without trusting it; [`Tokenizer`] and [`ChatTemplate`] come
//! from its metadata; [`LlamaModel`] loads its weights (requantised to 8 bits, [`QMatrix`]);
//! an [`Engine`] owns the model, a [`KvCache`] of fixed-size blocks and a
//! [`kvmesh_core::BlockPool`] that decides which block holds which tokens, and runs
//! continuous-batching steps whose attention ([`PagedAttention`]) reads each sequence's KV
//! through its block table. A cached prefix skips its compute for real: its blocks are pinned
//! and only the rest of the prompt runs through the model.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kvmesh_engine::*;
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let tokenizer = Tokenizer::from_gguf(&file)?;
//! let model = Arc::new(LlamaModel::load(&file, 2)?);
//! let mut engine = Engine::new(model, EngineConfig::default(), tokenizer.stop_tokens().to_vec())?;
//! let prompt = tokenizer.encode("The capital of France is", false)?;
//! engine.add_request(prompt, SamplingParams::greedy(8))?;
//! let mut tokens = Vec::new();
//! while engine.has_unfinished() {
//!     tokens.extend(engine.step()?.into_iter().filter_map(|o| o.token));
//! }
//! println!("{}", tokenizer.decode(&tokens, true)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod attention;
mod engine;
mod error;
mod gguf;
mod kv_cache;
#[cfg(feature = "gemm")]
mod matmul;
mod model;
mod model_store;
mod qmatvec;
mod quant;
mod sampling;
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
#[cfg(feature = "gemm")]
pub use matmul::{linear, Matrix};
pub use model::{Chunk, LlamaConfig, LlamaModel};
pub use model_store::{
    sha256_file, FetchError, ModelSpec, ModelStore, DEFAULT_MODEL, KNOWN_MODELS,
};
pub use qmatvec::{qlinear, QMatrix};
pub use quant::{dequantize, GgmlType};
pub use sampling::{argmax, Sampler, SamplingParams};
pub use tokenizer::{
    ChatMessage, ChatTemplate, CodecError, DecodeStream, Tokenizer, TokenizerError,
};
