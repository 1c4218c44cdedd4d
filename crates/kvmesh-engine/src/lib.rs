//! kvmesh-engine: a CPU inference engine whose attention reads paged KV blocks.
//!
//! Work in progress (issue 4): GGUF loading and dequantisation, paged attention kernels.
#![deny(missing_docs)]

mod attention;
mod engine;
mod error;
mod gguf;
mod kv_cache;
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
