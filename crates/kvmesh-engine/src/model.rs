//! A llama-architecture transformer whose attention reads and writes paged KV blocks.
//!
//! Architecture (Llama 2/3, SmolLM2, Mistral without sliding window): token embedding; per
//! layer RMSNorm -> Q/K/V projections -> rotary position embedding -> attention over the KV
//! cache -> output projection -> residual, then RMSNorm -> SwiGLU feed-forward
//! (`down(silu(gate(x)) * up(x))`) -> residual; a final RMSNorm and the output projection
//! (tied to the embedding when the file has no `output.weight`).
//!
//! # How a step runs
//!
//! One call to [`LlamaModel::forward`] takes a batch of *chunks*: each is a run of new tokens
//! of one sequence (a prefill chunk, or a single decode token) with its block table. All
//! chunks' tokens are stacked into one matrix, so every weight is read once per step however
//! many sequences take part (continuous batching); only attention is per sequence, reading
//! that sequence's blocks through the paged kernels. Unlike candle's llama, KV is never
//! concatenated or copied per step: K and V rows go straight into their blocks.
//!
//! RoPE here rotates adjacent pairs `(x[2i], x[2i+1])` (ggml's "normal" mode): GGUF converters
//! permute the Q/K weights of Hugging Face checkpoints so that this matches their rotate-half.
//!
//! Weights stay in the file's quantisation ([`PackedLinear`]) and are multiplied with f32
//! activations by batch-invariant kernels (see `linear`), so a token's logits do not depend on
//! what else is in its step. The Q, K and V projections are packed as one matrix, and so are
//! the gate and up projections: one pass over the activations and one parallel region each.
//!
//! Attention is parallel over work items: each sequence's chunk, with long prefill chunks
//! split into runs of query rows (a row's result does not depend on which run holds it).

use kvmesh_core::{BlockId, KvDtype, KvGeometry, ModelDims};
use rayon::prelude::*;

use crate::attention::PagedAttention;
use crate::error::GgufError;
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvCacheError};
use crate::linear::PackedLinear;
use crate::quant::GgmlType;

/// Query rows per attention work item when a prefill chunk is split across threads.
const ATTENTION_ROWS: usize = 32;

/// A step's activations through a layer, `n` tokens; the buffers are reused from layer to
/// layer.
struct Activations {
    n: usize,
    /// The residual stream, `[n][hidden]`.
    x: Vec<f32>,
    /// RoPE angles, `[n][head_dim / 2]`.
    angles: Vec<(f32, f32)>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

/// Hyper-parameters of a llama-architecture model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Feed-forward inner width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub max_context: usize,
}

impl LlamaConfig {
    /// Reads the `llama.*` metadata; errors if the architecture is not llama.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let arch = file.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::Malformed {
                offset: 0,
                what: format!(
                    "architecture '{arch}' is not supported: kvmesh runs llama-architecture models"
                ),
            });
        }
        let u = |k: &str| -> Result<usize, GgufError> {
            Ok(file.require_u64(&format!("llama.{k}"))? as usize)
        };
        let f = |k: &str, default: f64| -> f32 {
            file.get(&format!("llama.{k}"))
                .and_then(|v| v.as_f64())
                .unwrap_or(default) as f32
        };
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads = file
            .get("llama.attention.head_count_kv")
            .and_then(|v| v.as_u64())
            .map_or(num_heads, |v| v as usize);
        let embd = file.tensor("token_embd.weight")?;
        let vocab_size = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size.checked_div(num_heads).unwrap_or(0),
            rope_theta: f("rope.freq_base", 10_000.0),
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            max_context: u("context_length")?,
        };
        let bad = |what: String| GgufError::Malformed { offset: 0, what };
        if cfg.num_heads == 0
            || cfg.num_kv_heads == 0
            || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads)
            || !cfg.hidden_size.is_multiple_of(cfg.num_heads)
            || !cfg.head_dim.is_multiple_of(2)
            || cfg.num_layers == 0
            || cfg.vocab_size == 0
        {
            return Err(bad(format!("inconsistent llama hyper-parameters: {cfg:?}")));
        }
        Ok(cfg)
    }

    /// The KV geometry of this model with `dtype` elements in blocks of `block_size` tokens.
    pub fn kv_geometry(&self, block_size: u32, dtype: KvDtype) -> KvGeometry {
        KvGeometry::new(
            ModelDims {
                num_layers: self.num_layers as u32,
                num_query_heads: self.num_heads as u32,
                num_kv_heads: self.num_kv_heads as u32,
                head_dim: self.head_dim as u32,
                max_context: Some(self.max_context as u32),
            },
            dtype,
            block_size,
        )
        .expect("validated in from_gguf")
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V projections stacked: `q_dim + 2 kv_dim` outputs.
    wqkv: PackedLinear,
    wo: PackedLinear,
    ffn_norm: Vec<f32>,
    /// Gate and up projections stacked: `2 intermediate` outputs.
    w_gate_up: PackedLinear,
    w_down: PackedLinear,
}

/// A run of new tokens of one sequence, part of a step.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// The sequence's block table, covering positions `0..start + tokens.len()`.
    pub block_table: &'a [BlockId],
    /// Position of the first token (tokens before it are already in the cache).
    pub start: usize,
    /// The tokens.
    pub tokens: &'a [u32],
    /// Whether to return logits for the chunk's last token.
    pub logits: bool,
}

/// A loaded model.
pub struct LlamaModel {
    cfg: LlamaConfig,
    /// Token embeddings, also the output projection when the file ties them.
    embed: PackedLinear,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// The output projection, when not tied to the embedding.
    output: Option<PackedLinear>,
    attention: PagedAttention,
    /// RoPE inverse frequencies `theta^(-2i / head_dim)`, one per rotated pair.
    inv_freq: Vec<f32>,
    threads: usize,
    /// The compute threads: `threads` rayon workers that loading and every step run inside,
    /// so a step's ~150 parallel regions (linear layers, attention) start on a worker that
    /// takes part, not on a caller that sleeps until the workers finish (measured ~5-15%
    /// faster per linear layer at 16 tokens, 2 threads). `None` with one thread, or if the OS
    /// refused the threads (rayon's global pool then serves).
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl LlamaModel {
    /// Loads weights from a parsed GGUF file, keeping quantised tensors as they are (see
    /// [`PackedLinear`]), and starts `threads` compute threads (at least one: the caller).
    pub fn load(file: &GgufFile, threads: usize) -> Result<Self, GgufError> {
        let threads = threads.max(1);
        let pool = (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("kvmesh-compute-{i}"))
                    .build()
                    .ok()
            })
            .flatten();
        let mut model = match &pool {
            Some(pool) => pool.install(|| Self::load_weights(file, threads)),
            None => Self::load_weights(file, threads),
        }?;
        model.pool = pool;
        Ok(model)
    }

    fn load_weights(file: &GgufFile, threads: usize) -> Result<Self, GgufError> {
        let cfg = LlamaConfig::from_gguf(file)?;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        // Tensors `names` (each `rows` x `cols`) stacked into one matrix.
        let matrix = |names: &[(&str, usize)], cols: usize| -> Result<PackedLinear, GgufError> {
            let mut parts = Vec::with_capacity(names.len());
            for &(name, rows) in names {
                let info = file.tensor(name)?;
                if info.dims != [cols as u64, rows as u64] {
                    return Err(GgufError::Malformed {
                        offset: info.offset,
                        what: format!(
                            "tensor '{name}' has shape {:?}, expected [{cols}, {rows}]",
                            info.dims
                        ),
                    });
                }
                let ty = GgmlType::from_id(info.type_id).ok_or_else(|| {
                    GgufError::UnsupportedTensorType {
                        name: name.to_string(),
                        type_id: info.type_id,
                    }
                })?;
                parts.push((info, ty));
            }
            let rows: usize = names.iter().map(|&(_, rows)| rows).sum();
            let (first, ty) = parts[0];
            let pack = |ty: GgmlType, bytes: &[u8]| {
                PackedLinear::from_ggml(ty, bytes, rows, cols).map_err(|e| GgufError::Malformed {
                    offset: first.offset,
                    what: format!("tensor '{}': {e}", first.name),
                })
            };
            if parts.iter().all(|&(_, t)| t == ty) {
                // Same type: the rows' bytes simply follow each other.
                let bytes: Vec<u8> = parts
                    .iter()
                    .flat_map(|&(info, _)| file.tensor_bytes(info).iter().copied())
                    .collect();
                pack(ty, &bytes)
            } else {
                // Mixed types: stack as f32 (quantised to 8 bits by the packer).
                let mut bytes = Vec::with_capacity(rows * cols * 4);
                for &(info, _) in &parts {
                    let values = file.tensor_f32(&info.name)?;
                    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                }
                pack(GgmlType::F32, &bytes)
            }
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, GgufError> {
            let v = file.tensor_f32(name)?;
            if v.len() != len {
                return Err(GgufError::Malformed {
                    offset: file.tensor(name)?.offset,
                    what: format!("tensor '{name}' has {} elements, expected {len}", v.len()),
                });
            }
            Ok(v)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let (q_dim, kv_dim, ffn) = (
                cfg.num_heads * hd,
                cfg.num_kv_heads * hd,
                cfg.intermediate_size,
            );
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm"), h)?,
                wqkv: matrix(
                    &[
                        (&p("attn_q"), q_dim),
                        (&p("attn_k"), kv_dim),
                        (&p("attn_v"), kv_dim),
                    ],
                    h,
                )?,
                wo: matrix(&[(&p("attn_output"), h)], q_dim)?,
                ffn_norm: vector(&p("ffn_norm"), h)?,
                w_gate_up: matrix(&[(&p("ffn_gate"), ffn), (&p("ffn_up"), ffn)], h)?,
                w_down: matrix(&[(&p("ffn_down"), h)], ffn)?,
            });
        }
        let embed = matrix(&[("token_embd.weight", cfg.vocab_size)], h)?;
        let output = match file.tensor("output.weight") {
            Ok(_) => Some(matrix(&[("output.weight", cfg.vocab_size)], h)?),
            Err(GgufError::MissingTensor(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(LlamaModel {
            embed,
            out_norm: vector("output_norm.weight", h)?,
            layers,
            output,
            attention: PagedAttention::new(),
            inv_freq: (0..cfg.head_dim / 2)
                .map(|i| cfg.rope_theta.powf(-2.0 * i as f32 / cfg.head_dim as f32))
                .collect(),
            threads,
            pool: None,
            cfg,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wqkv.bytes()
                    + l.wo.bytes()
                    + l.w_gate_up.bytes()
                    + l.w_down.bytes()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers + self.embed.bytes() + self.output.as_ref().map_or(0, PackedLinear::bytes)
    }

    /// Runs one step over `chunks`, writing their K/V into `cache`, and puts into `logits` the
    /// logits of the last token of every chunk with `logits` set, in chunk order: one row of
    /// `vocab_size` each. `logits` is resized to fit; pass the same buffer every step, so that
    /// a batch's rows (3 MiB at batch 16) are not allocated, faulted in and zeroed each time.
    ///
    /// Errors (and changes nothing in later layers) when a block table does not cover its
    /// chunk or the cache does not match the model.
    ///
    /// # Panics
    /// If a token id is outside the vocabulary; the engine validates prompts on entry.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        chunks: &[Chunk<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), KvCacheError> {
        match &self.pool {
            Some(pool) => pool.install(|| self.forward_here(cache, chunks, logits)),
            None => self.forward_here(cache, chunks, logits),
        }
    }

    /// [`forward`](Self::forward) on the current thread (a worker of `pool` when there is
    /// one): the layers once over all tokens, each linear layer and the attention split
    /// across threads.
    fn forward_here(
        &self,
        cache: &mut KvCache,
        chunks: &[Chunk<'_>],
        logits: &mut Vec<f32>,
    ) -> Result<(), KvCacheError> {
        let mut a = self.embed(chunks);
        for (li, layer) in self.layers.iter().enumerate() {
            self.qkv(layer, &mut a);
            self.write_kv(cache, li as u32, chunks, &a)?;
            self.attention_and_mlp(layer, li as u32, cache, chunks, &mut a)?;
        }
        self.logits(chunks, &a, logits);
        Ok(())
    }

    /// Elements of one token's keys (or values) in one layer.
    fn kv_dim(&self) -> usize {
        self.cfg.num_kv_heads * self.cfg.head_dim
    }

    /// Writes this layer's K/V rows of every chunk (`a.k`, `a.v`) into the cache.
    fn write_kv(
        &self,
        cache: &mut KvCache,
        layer: u32,
        chunks: &[Chunk<'_>],
        a: &Activations,
    ) -> Result<(), KvCacheError> {
        let kv_dim = self.kv_dim();
        let mut row = 0;
        for c in chunks {
            let rows = row * kv_dim..(row + c.tokens.len()) * kv_dim;
            cache.write_tokens(
                layer,
                c.block_table,
                c.start,
                &a.k[rows.clone()],
                &a.v[rows],
            )?;
            row += c.tokens.len();
        }
        Ok(())
    }

    /// The chunks' token embeddings and RoPE angles, with buffers for one layer's activations.
    fn embed(&self, chunks: &[Chunk<'_>]) -> Activations {
        let cfg = &self.cfg;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.num_heads * hd, self.kv_dim());
        let n: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut x = Vec::with_capacity(n * h);
        let mut angles = Vec::with_capacity(n * self.inv_freq.len());
        for c in chunks {
            for (i, &t) in c.tokens.iter().enumerate() {
                let at = x.len();
                x.resize(at + h, 0.0);
                self.embed.dequantize_row(t as usize, &mut x[at..]);
                rope_angles(&self.inv_freq, c.start + i, &mut angles);
            }
        }
        let ffn = cfg.intermediate_size;
        Activations {
            n,
            x,
            angles,
            normed: vec![0.0; n * h],
            qkv: vec![0.0; n * (q_dim + 2 * kv_dim)],
            q: vec![0.0; n * q_dim],
            k: vec![0.0; n * kv_dim],
            v: vec![0.0; n * kv_dim],
            attn: vec![0.0; n * q_dim],
            proj: vec![0.0; n * h],
            gate_up: vec![0.0; n * 2 * ffn],
            act: vec![0.0; n * ffn],
        }
    }

    /// Norm, Q/K/V projection and RoPE of one layer: fills `a.q`, `a.k`, `a.v`.
    fn qkv(&self, layer: &Layer, a: &mut Activations) {
        let cfg = &self.cfg;
        let (q_dim, kv_dim) = (cfg.num_heads * cfg.head_dim, self.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let pairs = self.inv_freq.len();
        rms_norm(&a.x, &layer.attn_norm, cfg.rms_eps, &mut a.normed);
        layer.wqkv.forward(&a.normed, a.n, &mut a.qkv, self.threads);
        for (t, row) in a.qkv.chunks_exact(qkv_dim).enumerate() {
            let (qr, kv) = row.split_at(q_dim);
            let (kr, vr) = kv.split_at(kv_dim);
            let (q, k) = (
                &mut a.q[t * q_dim..][..q_dim],
                &mut a.k[t * kv_dim..][..kv_dim],
            );
            q.copy_from_slice(qr);
            k.copy_from_slice(kr);
            a.v[t * kv_dim..][..kv_dim].copy_from_slice(vr);
            let angles = &a.angles[t * pairs..(t + 1) * pairs];
            rope(q, angles);
            rope(k, angles);
        }
    }

    /// Attention over the cache (K/V of this layer already written), output projection and
    /// residual, then norm, SwiGLU feed-forward and residual: `a.x` becomes the layer's output.
    fn attention_and_mlp(
        &self,
        layer: &Layer,
        li: u32,
        cache: &KvCache,
        chunks: &[Chunk<'_>],
        a: &mut Activations,
    ) -> Result<(), KvCacheError> {
        let cfg = &self.cfg;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        self.attend_all(cache, li, chunks, &a.q, &mut a.attn, scale)?;
        layer.wo.forward(&a.attn, a.n, &mut a.proj, self.threads);
        add_assign(&mut a.x, &a.proj);

        rms_norm(&a.x, &layer.ffn_norm, cfg.rms_eps, &mut a.normed);
        layer
            .w_gate_up
            .forward(&a.normed, a.n, &mut a.gate_up, self.threads);
        let ffn = cfg.intermediate_size;
        for (o, gu) in a
            .act
            .chunks_exact_mut(ffn)
            .zip(a.gate_up.chunks_exact(2 * ffn))
        {
            let (g, u) = gu.split_at(ffn);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
        layer.w_down.forward(&a.act, a.n, &mut a.proj, self.threads);
        add_assign(&mut a.x, &a.proj);
        Ok(())
    }

    /// Final norm and output projection of the last token of every chunk that samples, into
    /// `out` (`[row][vocab]`, resized to fit; every element is written by the product, so
    /// nothing is cleared).
    fn logits(&self, chunks: &[Chunk<'_>], a: &Activations, out: &mut Vec<f32>) {
        let h = self.cfg.hidden_size;
        let mut last_rows = Vec::new();
        let mut row = 0;
        for c in chunks {
            row += c.tokens.len();
            if c.logits && !c.tokens.is_empty() {
                last_rows.extend_from_slice(&a.x[(row - 1) * h..row * h]);
            }
        }
        let m = last_rows.len() / h;
        let mut normed_last = vec![0.0; m * h];
        rms_norm(
            &last_rows,
            &self.out_norm,
            self.cfg.rms_eps,
            &mut normed_last,
        );
        out.resize(m * self.cfg.vocab_size, 0.0);
        let output = self.output.as_ref().unwrap_or(&self.embed);
        output.forward(&normed_last, m, out, self.threads);
    }

    /// Attention of every chunk's query rows over its cached keys and values, in parallel:
    /// one work item per decode token, runs of [`ATTENTION_ROWS`] rows for prefill chunks,
    /// and, when that gives fewer items than threads (a lone decode), one item per KV head.
    fn attend_all(
        &self,
        cache: &KvCache,
        layer: u32,
        chunks: &[Chunk<'_>],
        q: &[f32],
        attn: &mut [f32],
        scale: f32,
    ) -> Result<(), KvCacheError> {
        let cfg = &self.cfg;
        let q_dim = cfg.num_heads * cfg.head_dim;
        let rows: usize = chunks
            .iter()
            .map(|c| c.tokens.len().div_ceil(ATTENTION_ROWS))
            .sum();
        let by_head = self.threads > 1 && rows < self.threads;
        let kv_heads = cfg.num_kv_heads as u32;
        // A lone row's query heads of KV heads a..b are one contiguous slice.
        let head_len = q_dim / cfg.num_kv_heads;
        let mut items = Vec::new();
        let (mut q_rest, mut out_rest) = (q, attn);
        for c in chunks {
            let mut done = 0;
            while done < c.tokens.len() {
                let rows = ATTENTION_ROWS.min(c.tokens.len() - done);
                let (qi, qr) = q_rest.split_at(rows * q_dim);
                let (oi, or) = std::mem::take(&mut out_rest).split_at_mut(rows * q_dim);
                let start = c.start + done;
                if by_head && rows == 1 {
                    for (h, (qh, oh)) in
                        qi.chunks(head_len).zip(oi.chunks_mut(head_len)).enumerate()
                    {
                        let h = h as u32;
                        items.push((c.block_table, start, h..h + 1, qh, oh));
                    }
                } else {
                    items.push((c.block_table, start, 0..kv_heads, qi, oi));
                }
                (q_rest, out_rest) = (qr, or);
                done += rows;
            }
        }
        let run = |(table, start, heads, q, out): AttentionItem<'_, '_>| {
            self.attention
                .attend(cache, layer, table, start, heads, q, out, scale)
        };
        if self.threads > 1 && items.len() > 1 {
            items.into_par_iter().try_for_each(run)
        } else {
            items.into_iter().try_for_each(run)
        }
    }
}

/// One attention work item: a block table, the first query position, the KV heads, and the
/// query rows and their output.
type AttentionItem<'t, 'q> = (
    &'t [BlockId],
    usize,
    std::ops::Range<u32>,
    &'q [f32],
    &'q mut [f32],
);

/// `out = x / rms(x) * w`, row by row (rows of `w.len()`).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = xv * inv * wv;
        }
    }
}

/// The RoPE angles of `pos`: `(sin, cos)` of `pos x freq` for every frequency. Computed once
/// per token and step, then used by every layer and head.
fn rope_angles(inv_freq: &[f32], pos: usize, out: &mut Vec<(f32, f32)>) {
    out.extend(inv_freq.iter().map(|&freq| (pos as f32 * freq).sin_cos()));
}

/// Rotates adjacent pairs of every head vector in `x` by `angles` (from [`rope_angles`]).
fn rope(x: &mut [f32], angles: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(2 * angles.len()) {
        for (pair, &(sin, cos)) in head.chunks_exact_mut(2).zip(angles) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
