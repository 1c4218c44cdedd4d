//! The engine: requests in, tokens out, one continuous-batching step at a time.
//!
//! # Guarantees
//!
//! - **No starvation**: waiting requests are admitted first-come first-served, and a request
//!   preempted for memory goes back to the *front* of the queue.
//! - **Same tokens whatever the scheduling**: greedy output does not depend on prefix-cache
//!   hits, chunk sizes or preemption, because every path computes the same KV for the same
//!   positions (up to floating-point summation order in the matrix kernels).
//! - **Fail closed**: a block's KV is reused only after it was computed in full and committed
//!   under its chained hash; a partially computed or preempted block is never matched.
//! - **Memory is bounded** by the KV block budget; cancellation frees a request's blocks at
//!   once.
//!
//! # Current policy ([`EngineConfig`], in the style of vLLM's v1 scheduler)
//!
//! Each step has a token budget (`max_num_batched_tokens`). Running requests go first, in
//! admission order: a decoding request takes one token, a request still in prefill takes the
//! rest of its prompt up to the budget (chunked prefill). Then waiting requests are admitted
//! while budget, `max_num_seqs` and blocks allow; each first claims its longest cached prefix
//! (`enable_prefix_caching`), so only the uncached tail is computed. All scheduled tokens run
//! in one forward pass. When a running request cannot get a block, the most recently admitted
//! running request is preempted: its blocks are released (full ones stay in the prefix cache,
//! so the recompute usually hits them) and it re-enters the queue with its generated tokens.
//!
//! # Output text and stop strings
//!
//! An engine given a tokenizer ([`Engine::with_tokenizer`]) detokenises as vLLM's output
//! processor does: each [`RequestOutput`] carries the text its token completed
//! ([`RequestOutput::text`]), text that may be the start of a stop string is held back until
//! it is decided, and a matching stop string ends the request at once with
//! [`FinishReason::Stop`], its blocks freed in the same step and the text cut before the match
//! (see `detokenizer.rs` for the matching rules). Without a tokenizer there is no text, and a
//! request with stop strings is refused ([`EngineError::StopStringsNeedTokenizer`]) rather
//! than run without them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use kvmesh_core::{
    BlockHasher, BlockPool, EvictionPolicyKind, ExtraKeys, KvDtype, KvEvent, PoolError, PoolStats,
    SequenceHasher, SequenceId,
};
use thiserror::Error;

use crate::detokenizer::Detokenizer;
use crate::kv_cache::KvCache;
use crate::model::{Chunk, LlamaModel};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// Scheduler and memory settings; names follow vLLM's.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Tokens per KV block (default 16).
    pub block_size: u32,
    /// KV blocks in the cache: the memory budget (default 2048).
    pub num_blocks: usize,
    /// Element type of the KV cache (default [`KvDtype::F16`]; [`KvDtype::F32`] and
    /// [`KvDtype::Int8`], with a scale per head vector, are the others stored). Attention
    /// computes in f32 whatever it reads.
    pub kv_cache_dtype: KvDtype,
    /// Most requests running at once (default 64).
    pub max_num_seqs: usize,
    /// Most tokens computed per step, prefill and decode together (default 2048).
    pub max_num_batched_tokens: usize,
    /// Reuse cached prefixes (default true). Off recomputes every prompt.
    pub enable_prefix_caching: bool,
    /// Longest prompt plus output (default: the model's context length).
    pub max_model_len: Option<usize>,
    /// Seed of the block hashes (per deployment).
    pub hash_seed: u64,
    /// Record the pool's KV events (`Stored` / `Removed`) for [`Engine::drain_kv_events`]
    /// (default false). A worker behind a KV-aware router turns this on and drains after
    /// every step; off, nothing is buffered.
    pub record_kv_events: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 2048,
            kv_cache_dtype: KvDtype::F16,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            enable_prefix_caching: true,
            max_model_len: None,
            hash_seed: 0,
            record_kv_events: false,
        }
    }
}

/// Why the engine refused a request or a setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// An impossible setting.
    #[error("invalid engine setting: {0}")]
    Config(String),
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// Prompt plus `max_tokens` exceed what the engine can hold.
    #[error(
        "prompt of {prompt} tokens plus up to {max_tokens} generated exceeds the {limit}-token \
         limit (max_model_len or the KV budget); shorten the prompt or lower max_tokens"
    )]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Requested generation length.
        max_tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Invalid sampling parameters.
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    /// Stop strings were given to an engine that has no tokenizer to produce text.
    #[error(
        "stop strings need an engine with a tokenizer (Engine::with_tokenizer); \
         use stop_token_ids instead, or give the engine the model's tokenizer"
    )]
    StopStringsNeedTokenizer,
    /// A generated token could not be detokenised (a bug: `with_tokenizer` checks that the
    /// tokenizer covers the model's vocabulary).
    #[error("detokenizing: {0}")]
    Detokenize(String),
    /// The KV cache refused a write or read (a bug: the pool and cache disagree).
    #[error("KV cache: {0}")]
    Cache(String),
    /// An internal pool error (a bug).
    #[error("block pool: {0}")]
    Pool(#[from] PoolError),
}

/// A request's id.
pub type RequestId = u64;

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token, or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled by the caller.
    Aborted,
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    /// The request.
    pub id: RequestId,
    /// The token generated this step, if any.
    pub token: Option<u32>,
    /// The output text this step released: what the token completed plus any text held back
    /// earlier that is now decided (stop strings), and, in the request's last output, all
    /// that remained held. Concatenated over a request's outputs it is the request's text,
    /// cut before a matched stop string. Always empty for an engine without a tokenizer.
    pub text: String,
    /// Set when the request is done.
    pub finished: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache at (last) admission.
    pub cached_tokens: usize,
}

#[derive(Debug)]
struct Request {
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SamplingParams,
    sampler: Sampler,
    hasher: SequenceHasher,
    seq: Option<SequenceId>,
    /// Tokens whose KV is in the cache.
    computed: usize,
    cached_tokens: usize,
    /// Text and stop strings; `Some` exactly when the engine has a tokenizer.
    detok: Option<Detokenizer>,
}

impl Request {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Steps run.
    pub steps: u64,
    /// Prompt tokens computed (prefill, including recompute after preemption).
    pub prefill_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// The block pool's counters.
    pub pool: PoolStats,
}

/// A model, its paged KV cache, the block pool and the scheduler.
pub struct Engine {
    model: Arc<LlamaModel>,
    cache: KvCache,
    pool: BlockPool,
    hasher: BlockHasher,
    cfg: EngineConfig,
    max_len: usize,
    stop_tokens: Vec<u32>,
    tokenizer: Option<Arc<Tokenizer>>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    requests: HashMap<RequestId, Request>,
    next_id: RequestId,
    stats: EngineStats,
    /// The last step's logits, `[row][vocab]`: one buffer reused every step.
    logits: Vec<f32>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("waiting", &self.waiting.len())
            .field("running", &self.running.len())
            .finish()
    }
}

impl Engine {
    /// An engine over `model` with `stop_tokens` (the model's end-of-sequence / end-of-turn
    /// tokens) ending every request unless it sets `ignore_eos`. The model is shared, so
    /// several engines (or tests) can use one copy of the weights.
    pub fn new(
        model: Arc<LlamaModel>,
        cfg: EngineConfig,
        stop_tokens: Vec<u32>,
    ) -> Result<Self, EngineError> {
        let bad = |s: &str| Err(EngineError::Config(s.to_string()));
        if cfg.block_size == 0 {
            return bad("block_size must be at least 1");
        }
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return bad("max_num_seqs and max_num_batched_tokens must be at least 1");
        }
        let max_len = cfg
            .max_model_len
            .unwrap_or(model.config().max_context)
            .min(cfg.num_blocks * cfg.block_size as usize);
        if max_len < 2 {
            return bad("the KV budget must hold at least two tokens");
        }
        let geometry = model
            .config()
            .kv_geometry(cfg.block_size, cfg.kv_cache_dtype);
        let cache = KvCache::new(geometry, cfg.num_blocks)
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let pool = BlockPool::builder()
            .num_blocks(cfg.num_blocks)
            .block_size(cfg.block_size)
            .eviction(EvictionPolicyKind::Lru)
            .record_events(cfg.record_kv_events)
            .build()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        Ok(Engine {
            hasher: BlockHasher::new(cfg.hash_seed, cfg.block_size, &ExtraKeys::default()),
            model,
            cache,
            pool,
            max_len,
            stop_tokens,
            tokenizer: None,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            requests: HashMap::new(),
            next_id: 0,
            stats: EngineStats::default(),
            logits: Vec::new(),
        })
    }

    /// Gives the engine the model's tokenizer: from then on every [`RequestOutput`] carries
    /// its text, and requests may set [`SamplingParams::stop_strings`]. Refused when the
    /// tokenizer has fewer tokens than the model's vocabulary (the model could sample an id it
    /// cannot decode). Set it before adding requests; requests already queued get no text.
    pub fn with_tokenizer(mut self, tokenizer: Arc<Tokenizer>) -> Result<Self, EngineError> {
        let vocab = self.model.config().vocab_size;
        if tokenizer.vocab_size() < vocab {
            return Err(EngineError::Config(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab}",
                tokenizer.vocab_size()
            )));
        }
        self.tokenizer = Some(tokenizer);
        Ok(self)
    }

    /// The tokenizer given with [`with_tokenizer`](Self::with_tokenizer), if any.
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Bytes of KV cache memory.
    pub fn kv_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            pool: self.pool.stats(),
            ..self.stats
        }
    }

    /// Whether any request is waiting or running.
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Requests admitted and holding KV.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests queued (new, or preempted and waiting to resume).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether request `id` is queued and not running (false once admitted, or unknown).
    pub fn is_waiting(&self, id: RequestId) -> bool {
        self.waiting.contains(&id)
    }

    /// The longest prompt plus output a request may have: `max_model_len`, or the model's
    /// context, capped by the KV budget.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The block hasher for sequences under `extra` keys (a cache salt, say): the hashes a
    /// router computes for a request are the ones this engine's prefix cache uses.
    pub fn block_hasher(&self, extra: &ExtraKeys) -> BlockHasher {
        BlockHasher::new(self.cfg.hash_seed, self.cfg.block_size, extra)
    }

    /// Moves the KV events recorded since the last call into `out`, oldest first (none unless
    /// [`EngineConfig::record_kv_events`]).
    pub fn drain_kv_events(&mut self, out: &mut Vec<KvEvent>) {
        out.extend(self.pool.drain_events());
    }

    /// Queues a request; it starts at a later [`step`](Self::step). Stop strings need a
    /// tokenizer ([`EngineError::StopStringsNeedTokenizer`]).
    pub fn add_request(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<RequestId, EngineError> {
        self.add_request_with_keys(prompt, params, &ExtraKeys::default())
    }

    /// [`add_request`](Self::add_request) under sequence-wide `extra` keys: a request shares
    /// cached blocks only with requests under the same keys (a tenant's or a request's
    /// `cache_salt`, a LoRA id), because the keys enter every block's hash.
    pub fn add_request_with_keys(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        extra: &ExtraKeys,
    ) -> Result<RequestId, EngineError> {
        params.validate().map_err(EngineError::Sampling)?;
        if !params.stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(EngineError::StopStringsNeedTokenizer);
        }
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&token) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadToken { token, vocab });
        }
        if prompt.len().saturating_add(params.max_tokens) > self.max_len {
            return Err(EngineError::TooLong {
                prompt: prompt.len(),
                max_tokens: params.max_tokens,
                limit: self.max_len,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let block_hasher = if *extra == ExtraKeys::default() {
            self.hasher.clone()
        } else {
            self.block_hasher(extra)
        };
        let mut hasher = SequenceHasher::new(block_hasher);
        hasher.append(&prompt);
        let detok = self
            .tokenizer
            .as_ref()
            .map(|t| Detokenizer::new(t, params.stop_strings.clone()));
        self.requests.insert(
            id,
            Request {
                detok,
                sampler: Sampler::new(params.seed.unwrap_or(id ^ 0x5eed)),
                prompt_len: prompt.len(),
                tokens: prompt,
                params,
                hasher,
                seq: None,
                computed: 0,
                cached_tokens: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(id)
    }

    /// Cancels a request and frees its blocks now. Returns false for an unknown id.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let Some(req) = self.requests.remove(&id) else {
            return false;
        };
        if let Some(seq) = req.seq {
            self.pool.release(seq).expect("live sequence");
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&r| r != id);
        true
    }

    /// Runs one step: schedules, computes one forward pass, samples. Returns what each
    /// request scheduled this step produced (requests still in prefill produce no token).
    pub fn step(&mut self) -> Result<Vec<RequestOutput>, EngineError> {
        let scheduled = self.schedule()?;
        if scheduled.is_empty() {
            return Ok(Vec::new());
        }
        self.stats.steps += 1;

        let chunks: Vec<Chunk<'_>> = scheduled
            .iter()
            .map(|&(id, n)| {
                let r = &self.requests[&id];
                let seq = r.seq.expect("scheduled requests hold a sequence");
                Chunk {
                    block_table: self.pool.block_table(seq).expect("live sequence"),
                    start: r.computed,
                    tokens: &r.tokens[r.computed..r.computed + n],
                    logits: r.computed + n == r.tokens.len(),
                }
            })
            .collect();
        self.model
            .forward(&mut self.cache, &chunks, &mut self.logits)
            .map_err(|e| EngineError::Cache(e.to_string()))?;
        drop(chunks);

        let mut outputs = Vec::with_capacity(scheduled.len());
        let vocab = self.model.config().vocab_size;
        let mut logits = self.logits.chunks_exact_mut(vocab);
        let bs = self.cfg.block_size as usize;
        for (id, n) in scheduled {
            let r = self.requests.get_mut(&id).expect("scheduled");
            if r.computed < r.prompt_len {
                self.stats.prefill_tokens += n.min(r.prompt_len - r.computed) as u64;
            }
            r.computed += n;
            let seq = r.seq.expect("scheduled");
            if self.cfg.enable_prefix_caching {
                let full = r.computed / bs;
                self.pool.commit_blocks(seq, &r.hasher.hashes()[..full])?;
            }
            if r.computed < r.tokens.len() {
                continue; // prefill continues next step
            }
            let row = logits.next().expect("one row per finished chunk");
            if r.generated() < r.params.min_tokens {
                // Too early to stop: the stop tokens cannot be sampled (vLLM's min_tokens).
                let model_stops = self.stop_tokens.iter().filter(|_| !r.params.ignore_eos);
                for &t in model_stops.chain(&r.params.stop_token_ids) {
                    if let Some(l) = row.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let token = r.sampler.sample(row, &r.params);
            r.tokens.push(token);
            r.hasher.push(token);
            self.stats.generated_tokens += 1;
            // As in vLLM, `ignore_eos` ignores the model's end tokens, not the request's own.
            let stop_token = (!r.params.ignore_eos && self.stop_tokens.contains(&token))
                || r.params.stop_token_ids.contains(&token);
            let mut finished = if stop_token {
                Some(FinishReason::Stop)
            } else if r.generated() >= r.params.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut text = String::new();
            if let Some(d) = &mut r.detok {
                // A stop token's own text is not output (as in vLLM).
                let stop_string = !stop_token
                    && d.push(token, &mut text)
                        .map_err(|e| EngineError::Detokenize(e.to_string()))?;
                if stop_string || (finished.is_some() && d.finish(&mut text)) {
                    finished = Some(FinishReason::Stop);
                }
            }
            outputs.push(RequestOutput {
                id,
                token: Some(token),
                text,
                finished,
                cached_tokens: r.cached_tokens,
            });
            if finished.is_some() {
                self.pool.release(seq)?;
                self.requests.remove(&id);
                self.running.retain(|&x| x != id);
            }
        }
        Ok(outputs)
    }

    /// Chooses this step's work: `(request, tokens to compute)`, running requests first.
    fn schedule(&mut self) -> Result<Vec<(RequestId, usize)>, EngineError> {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut scheduled = Vec::new();

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let r = &self.requests[&id];
            let n = (r.tokens.len() - r.computed).min(budget);
            let seq = r.seq.expect("running requests hold a sequence");
            let need = r.computed + n;
            let have = self.pool.sequence_len(seq)?;
            match self.pool.append_slots(seq, need.saturating_sub(have)) {
                Ok(copy) => {
                    if let Some(copy) = copy {
                        self.cache
                            .copy_prefix(copy)
                            .expect("pool blocks are cache blocks");
                    }
                    scheduled.push((id, n));
                    budget -= n;
                    i += 1;
                }
                Err(PoolError::OutOfBlocks { .. }) => {
                    // Preempt the most recently admitted request; it may be this one.
                    let victim = *self.running.last().expect("non-empty");
                    self.preempt(victim)?;
                    scheduled.retain(|&(s, _)| s != victim);
                    if victim == id {
                        continue;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }

        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let bs = self.cfg.block_size as usize;
            let r = &self.requests[&id];
            // Leave at least the last token to compute: its logits are needed.
            let reusable = if self.cfg.enable_prefix_caching {
                (r.tokens.len() - 1) / bs
            } else {
                0
            };
            let m = self
                .pool
                .match_prefix(&r.hasher.hashes()[..reusable], r.tokens.len());
            let n = (r.tokens.len() - m.cached_tokens).min(budget);
            match self.pool.append_slots(m.sequence, n) {
                Ok(copy) => {
                    debug_assert!(copy.is_none(), "a fresh sequence shares no partial block");
                    self.waiting.pop_front();
                    let r = self.requests.get_mut(&id).expect("waiting");
                    r.seq = Some(m.sequence);
                    r.computed = m.cached_tokens;
                    r.cached_tokens = m.cached_tokens;
                    self.running.push(id);
                    scheduled.push((id, n));
                    budget -= n;
                }
                Err(PoolError::OutOfBlocks { .. }) => {
                    self.pool.release(m.sequence)?;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(scheduled)
    }

    /// Releases a running request's blocks and puts it back at the front of the queue.
    fn preempt(&mut self, id: RequestId) -> Result<(), EngineError> {
        let r = self.requests.get_mut(&id).expect("running");
        if let Some(seq) = r.seq.take() {
            self.pool.release(seq)?;
        }
        r.computed = 0;
        self.running.retain(|&x| x != id);
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
        Ok(())
    }
}
