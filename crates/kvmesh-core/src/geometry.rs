//! KV geometry: what the KV cache of one model costs per token, per block and per layer.
//!
//! A transformer stores, for every token it has seen, one key and one value vector per layer
//! and per *KV head*. The number of KV heads relative to query heads is what separates the
//! attention kinds this crate cares about:
//!
//! | kind | KV heads | example |
//! |---|---|---|
//! | MHA (multi-head) | = query heads | Llama 2 7B: 32 / 32 |
//! | GQA (grouped-query) | divides query heads | Llama 3 70B: 64 query heads share 8 KV heads |
//! | MQA (multi-query) | 1 | Falcon 7B: 71 query heads share 1 KV head |
//!
//! So `bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element`, plus
//! quantisation scales for the quantised dtypes. A [`KvGeometry`] fixes these numbers and the
//! block size (tokens per block) and derives everything else; [`ModelDims`] holds a model's shape
//! from a built-in preset ([`find_preset`]) or a Hugging Face `config.json`
//! ([`ModelDims::from_hf_config`]).
//!
//! # Block layout
//!
//! One block is one contiguous region holding every layer (large, simple transfers to lower
//! tiers, see DESIGN.md). Elements are laid out `[layer][K|V][kv_head][slot][head_dim]`, so the
//! keys of one head for the tokens of a block are contiguous, which is what an attention kernel
//! walks. Quantised dtypes append one `f32` scale per `(layer, K|V, kv_head, slot)` after the
//! data, laid out the same way. That is 4 bytes per head vector: 3% on top of int8 data at head
//! dim 128, 6% on top of int4. Per-tensor fp8 scales would be smaller, but per-vector scales keep
//! one scheme for every quantised dtype and bound the error per token.

use std::fmt;
use std::str::FromStr;

use crate::error::GeometryError;

/// The element type of stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit float (e4m3), with a scale per head vector.
    Fp8,
    /// 8-bit integer, symmetric, with a scale per head vector.
    Int8,
    /// 4-bit integer, symmetric, two per byte, with a scale per head vector.
    Int4,
}

impl KvDtype {
    /// Every dtype, widest first.
    pub const ALL: [KvDtype; 6] = [
        KvDtype::F32,
        KvDtype::F16,
        KvDtype::Bf16,
        KvDtype::Fp8,
        KvDtype::Int8,
        KvDtype::Int4,
    ];

    /// Bits per stored element.
    pub const fn bits(self) -> u64 {
        match self {
            KvDtype::F32 => 32,
            KvDtype::F16 | KvDtype::Bf16 => 16,
            KvDtype::Fp8 | KvDtype::Int8 => 8,
            KvDtype::Int4 => 4,
        }
    }

    /// Whether the dtype stores a scale per head vector beside the data.
    pub const fn is_quantized(self) -> bool {
        matches!(self, KvDtype::Fp8 | KvDtype::Int8 | KvDtype::Int4)
    }

    /// The canonical short name, as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
            KvDtype::Int8 => "int8",
            KvDtype::Int4 => "int4",
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvDtype {
    type Err = GeometryError;

    /// Accepts the canonical names and the spellings used by PyTorch and Hugging Face configs
    /// (`float16`, `bfloat16`, `fp8_e4m3`, ...), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let dtype = match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "float" => KvDtype::F32,
            "f16" | "fp16" | "float16" | "half" => KvDtype::F16,
            "bf16" | "bfloat16" => KvDtype::Bf16,
            "fp8" | "f8" | "fp8_e4m3" | "float8_e4m3fn" | "e4m3" => KvDtype::Fp8,
            "int8" | "i8" | "q8" => KvDtype::Int8,
            "int4" | "i4" | "q4" => KvDtype::Int4,
            _ => return Err(GeometryError::UnknownDtype(s.to_string())),
        };
        Ok(dtype)
    }
}

/// How query heads share KV heads; derived from the head counts, never configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Multi-head attention: one KV head per query head.
    Mha,
    /// Grouped-query attention: `group` query heads share each KV head.
    Gqa {
        /// Query heads per KV head (at least 2).
        group: u32,
    },
    /// Multi-query attention: all query heads share a single KV head.
    Mqa,
}

impl AttentionKind {
    /// Derives the kind from head counts. `query_heads` must be a multiple of `kv_heads`.
    pub const fn from_heads(query_heads: u32, kv_heads: u32) -> Self {
        if kv_heads == query_heads {
            AttentionKind::Mha
        } else if kv_heads == 1 {
            AttentionKind::Mqa
        } else {
            AttentionKind::Gqa {
                group: query_heads / kv_heads,
            }
        }
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttentionKind::Mha => f.write_str("MHA"),
            AttentionKind::Gqa { group } => write!(f, "GQA (group of {group})"),
            AttentionKind::Mqa => f.write_str("MQA"),
        }
    }
}

/// The shape of a model that matters for its KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    /// Transformer layers (each keeps its own K and V).
    pub num_layers: u32,
    /// Attention (query) heads.
    pub num_query_heads: u32,
    /// Key/value heads; equal to `num_query_heads` for MHA, 1 for MQA.
    pub num_kv_heads: u32,
    /// Elements per head vector.
    pub head_dim: u32,
    /// Longest context the model was trained for, when known.
    pub max_context: Option<u32>,
}

impl ModelDims {
    /// Parses the dimensions out of a Hugging Face `config.json` document.
    ///
    /// Reads `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` (defaulting to
    /// the attention heads, i.e. MHA), `head_dim` (defaulting to `hidden_size / heads`) and
    /// `max_position_embeddings`. Falcon's names (`n_layer`, `n_head`, `n_head_kv`,
    /// `num_kv_heads`, `multi_query`, `new_decoder_architecture`) and a nested `text_config`
    /// (multimodal models) are understood too. This does no IO: the caller reads the file and
    /// adds its path to the error.
    pub fn from_hf_config(json: &str) -> Result<Self, GeometryError> {
        let root: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            // serde_json appends " at line L column C"; the variant carries them already.
            let full = e.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_string(),
                None => full,
            };
            GeometryError::ConfigSyntax {
                line: e.line(),
                column: e.column(),
                message,
            }
        })?;
        let cfg = match root.get("text_config") {
            Some(text) if text.is_object() => text,
            _ => &root,
        };
        if !cfg.is_object() {
            return Err(GeometryError::ConfigNotObject);
        }
        let num_layers = required_u32(cfg, &["num_hidden_layers", "n_layer", "num_layers"])?;
        let num_query_heads = required_u32(cfg, &["num_attention_heads", "n_head", "num_heads"])?;
        let num_kv_heads = match optional_u32(
            cfg,
            &[
                "num_key_value_heads",
                "num_kv_heads",
                "n_head_kv",
                "multi_query_group_num",
            ],
        )? {
            Some(kv) => kv,
            // Falcon: `multi_query` without the new architecture means one KV head.
            None if cfg.get("multi_query").and_then(|v| v.as_bool()) == Some(true)
                && cfg
                    .get("new_decoder_architecture")
                    .and_then(|v| v.as_bool())
                    != Some(true) =>
            {
                1
            }
            None => num_query_heads,
        };
        let head_dim = match optional_u32(cfg, &["head_dim"])? {
            Some(d) => d,
            None => {
                let hidden = required_u32(cfg, &["hidden_size", "n_embd", "d_model"])?;
                if num_query_heads == 0 || hidden % num_query_heads != 0 {
                    return Err(GeometryError::InvalidField {
                        field: "hidden_size",
                        value: hidden.to_string(),
                        expected: "a multiple of num_attention_heads (or give head_dim)",
                    });
                }
                hidden / num_query_heads
            }
        };
        let max_context = optional_u32(cfg, &["max_position_embeddings", "n_positions"])?;
        let dims = ModelDims {
            num_layers,
            num_query_heads,
            num_kv_heads,
            head_dim,
            max_context,
        };
        dims.validate()?;
        Ok(dims)
    }

    /// Checks that every count is non-zero and query heads divide into KV heads evenly.
    pub fn validate(&self) -> Result<(), GeometryError> {
        for (field, value) in [
            ("num_layers", self.num_layers),
            ("num_query_heads", self.num_query_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(GeometryError::Zero { field });
            }
        }
        if !self.num_query_heads.is_multiple_of(self.num_kv_heads) {
            return Err(GeometryError::HeadsNotDivisible {
                query_heads: self.num_query_heads,
                kv_heads: self.num_kv_heads,
            });
        }
        Ok(())
    }

    /// The attention kind these head counts make.
    pub fn attention_kind(&self) -> AttentionKind {
        AttentionKind::from_heads(self.num_query_heads, self.num_kv_heads)
    }
}

fn optional_u32(
    cfg: &serde_json::Value,
    names: &[&'static str],
) -> Result<Option<u32>, GeometryError> {
    for &name in names {
        match cfg.get(name) {
            None | Some(serde_json::Value::Null) => continue,
            Some(v) => {
                return v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| GeometryError::InvalidField {
                        field: name,
                        value: v.to_string(),
                        expected: "a non-negative integer below 2^32",
                    })
            }
        }
    }
    Ok(None)
}

fn required_u32(
    cfg: &serde_json::Value,
    names: &'static [&'static str],
) -> Result<u32, GeometryError> {
    optional_u32(cfg, names)?.ok_or(GeometryError::MissingField {
        field: names[0],
        aliases: &names[1..],
    })
}

/// A named, built-in model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPreset {
    /// The name `--model` accepts (lower case, dashes).
    pub name: &'static str,
    /// The model's dimensions.
    pub dims: ModelDims,
    /// Where the numbers come from, and anything surprising about them.
    pub note: &'static str,
}

const fn dims(layers: u32, q: u32, kv: u32, head_dim: u32, ctx: u32) -> ModelDims {
    ModelDims {
        num_layers: layers,
        num_query_heads: q,
        num_kv_heads: kv,
        head_dim,
        max_context: Some(ctx),
    }
}

static PRESETS: [ModelPreset; 9] = [
    ModelPreset {
        name: "llama-2-7b",
        dims: dims(32, 32, 32, 128, 4096),
        note: "meta-llama/Llama-2-7b-hf config.json (MHA)",
    },
    ModelPreset {
        name: "llama-2-70b",
        dims: dims(80, 64, 8, 128, 4096),
        note: "meta-llama/Llama-2-70b-hf config.json",
    },
    ModelPreset {
        name: "llama-3-8b",
        dims: dims(32, 32, 8, 128, 8192),
        note: "meta-llama/Meta-Llama-3-8B config.json",
    },
    ModelPreset {
        name: "llama-3-70b",
        dims: dims(80, 64, 8, 128, 8192),
        note: "meta-llama/Meta-Llama-3-70B config.json",
    },
    ModelPreset {
        name: "mistral-7b",
        dims: dims(32, 32, 8, 128, 32768),
        note:
            "mistralai/Mistral-7B-v0.1 config.json (its 4096-token sliding window is not modelled)",
    },
    ModelPreset {
        name: "qwen2.5-7b",
        dims: dims(28, 28, 4, 128, 32768),
        note: "Qwen/Qwen2.5-7B config.json",
    },
    ModelPreset {
        name: "falcon-7b",
        dims: dims(32, 71, 1, 64, 2048),
        note: "tiiuae/falcon-7b config.json: multi_query, one KV head (MQA)",
    },
    ModelPreset {
        name: "falcon-40b",
        dims: dims(60, 128, 8, 64, 2048),
        note:
            "tiiuae/falcon-40b config.json: marketed as multi-query, but new_decoder_architecture \
               keeps num_kv_heads = 8 (one per tensor-parallel rank), which is GQA by head count; \
               falcon-7b is the MQA preset",
    },
    ModelPreset {
        name: "smollm2-135m",
        dims: dims(30, 9, 3, 64, 8192),
        note: "HuggingFaceTB/SmolLM2-135M config.json (the model kvmesh-engine runs)",
    },
];

/// Every built-in preset.
pub fn presets() -> &'static [ModelPreset] {
    &PRESETS
}

/// Looks a preset up by name, ignoring case and treating `_` and spaces like `-`.
///
/// ```
/// let p = kvmesh_core::find_preset("Llama_3_70B").unwrap();
/// assert_eq!(p.dims.num_kv_heads, 8);
/// ```
pub fn find_preset(name: &str) -> Option<&'static ModelPreset> {
    let wanted: String = name
        .trim()
        .chars()
        .map(|c| match c {
            '_' | ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    PRESETS.iter().find(|p| p.name == wanted)
}

/// Which half of the KV pair a vector belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvPart {
    /// Keys.
    Key = 0,
    /// Values.
    Value = 1,
}

/// The storage geometry of one model's KV cache: model dims, dtype and block size.
///
/// ```
/// use kvmesh_core::{find_preset, KvDtype, KvGeometry};
/// let llama = find_preset("llama-3-70b").unwrap();
/// let g = KvGeometry::new(llama.dims, KvDtype::F16, 16).unwrap();
/// assert_eq!(g.bytes_per_token(), 327_680); // 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 B
/// assert_eq!(g.bytes_per_block(), 16 * 327_680);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    dims: ModelDims,
    dtype: KvDtype,
    block_size: u32,
}

impl KvGeometry {
    /// A geometry for `dims` stored as `dtype` in blocks of `block_size` tokens.
    pub fn new(dims: ModelDims, dtype: KvDtype, block_size: u32) -> Result<Self, GeometryError> {
        dims.validate()?;
        if block_size == 0 {
            return Err(GeometryError::Zero {
                field: "block_size",
            });
        }
        Ok(KvGeometry {
            dims,
            dtype,
            block_size,
        })
    }

    /// The same geometry with another dtype.
    pub fn with_dtype(self, dtype: KvDtype) -> Self {
        KvGeometry { dtype, ..self }
    }

    /// The same model with `kv_heads` KV heads (for MHA vs GQA vs MQA comparisons).
    pub fn with_kv_heads(self, kv_heads: u32) -> Result<Self, GeometryError> {
        KvGeometry::new(
            ModelDims {
                num_kv_heads: kv_heads,
                ..self.dims
            },
            self.dtype,
            self.block_size,
        )
    }

    /// The model dimensions.
    pub fn dims(&self) -> &ModelDims {
        &self.dims
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// MHA, GQA or MQA, from the head counts.
    pub fn attention_kind(&self) -> AttentionKind {
        self.dims.attention_kind()
    }

    /// Head vectors stored per token: K and V, every layer, every KV head.
    pub fn vectors_per_token(&self) -> u64 {
        2 * u64::from(self.dims.num_layers) * u64::from(self.dims.num_kv_heads)
    }

    /// Bytes of key/value data per token, without scales.
    pub fn data_bytes_per_token(&self) -> u64 {
        self.vectors_per_token() * u64::from(self.dims.head_dim) * self.dtype.bits() / 8
    }

    /// Bytes of quantisation scales per token (0 for unquantised dtypes).
    pub fn scale_bytes_per_token(&self) -> u64 {
        if self.dtype.is_quantized() {
            self.vectors_per_token() * 4
        } else {
            0
        }
    }

    /// Bytes per token: data plus scales.
    pub fn bytes_per_token(&self) -> u64 {
        self.data_bytes_per_token() + self.scale_bytes_per_token()
    }

    /// Bytes per token in one layer.
    pub fn bytes_per_token_per_layer(&self) -> u64 {
        self.bytes_per_token() / u64::from(self.dims.num_layers)
    }

    /// Bytes of one block (all layers, K and V, scales included).
    pub fn bytes_per_block(&self) -> u64 {
        self.bytes_per_token() * u64::from(self.block_size)
    }

    /// Elements in one block's data region.
    pub fn elements_per_block(&self) -> usize {
        (self.vectors_per_token() * u64::from(self.dims.head_dim) * u64::from(self.block_size))
            as usize
    }

    /// Index of the first element of the head vector for `(layer, part, kv_head, slot)` inside
    /// a block's data region, in the layout `[layer][K|V][kv_head][slot][head_dim]`.
    ///
    /// The same index divided by `head_dim` locates the vector's scale in the scale region.
    pub fn element_offset(&self, layer: u32, part: KvPart, kv_head: u32, slot: u32) -> usize {
        debug_assert!(layer < self.dims.num_layers);
        debug_assert!(kv_head < self.dims.num_kv_heads);
        debug_assert!(slot < self.block_size);
        let kv = u64::from(self.dims.num_kv_heads);
        let bs = u64::from(self.block_size);
        let vector =
            ((u64::from(layer) * 2 + part as u64) * kv + u64::from(kv_head)) * bs + u64::from(slot);
        (vector * u64::from(self.dims.head_dim)) as usize
    }

    /// Whole blocks that fit in `bytes`.
    pub fn blocks_in(&self, bytes: u64) -> u64 {
        bytes / self.bytes_per_block()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(name: &str, dtype: KvDtype) -> KvGeometry {
        KvGeometry::new(find_preset(name).unwrap().dims, dtype, 16).unwrap()
    }

    #[test]
    fn bytes_per_token_of_known_models() {
        assert_eq!(
            geometry("llama-3-70b", KvDtype::F16).bytes_per_token(),
            327_680
        );
        assert_eq!(
            geometry("mistral-7b", KvDtype::F16).bytes_per_token(),
            131_072
        );
        assert_eq!(
            geometry("llama-3-8b", KvDtype::F16).bytes_per_token(),
            131_072
        );
        assert_eq!(
            geometry("llama-2-7b", KvDtype::F16).bytes_per_token(),
            524_288
        );
        assert_eq!(
            geometry("smollm2-135m", KvDtype::F32).bytes_per_token(),
            46_080
        );
        // fp8 halves the data and adds one f32 scale per head vector.
        let fp8 = geometry("llama-3-70b", KvDtype::Fp8);
        assert_eq!(fp8.data_bytes_per_token(), 163_840);
        assert_eq!(fp8.scale_bytes_per_token(), 80 * 2 * 8 * 4);
        assert_eq!(
            geometry("llama-3-70b", KvDtype::Int4).data_bytes_per_token(),
            81_920
        );
    }

    #[test]
    fn attention_kinds() {
        assert_eq!(
            geometry("llama-2-7b", KvDtype::F16).attention_kind(),
            AttentionKind::Mha
        );
        assert_eq!(
            geometry("llama-3-70b", KvDtype::F16).attention_kind(),
            AttentionKind::Gqa { group: 8 }
        );
        assert_eq!(
            geometry("falcon-7b", KvDtype::F16).attention_kind(),
            AttentionKind::Mqa
        );
        assert_eq!(
            geometry("falcon-40b", KvDtype::F16).attention_kind(),
            AttentionKind::Gqa { group: 16 }
        );
        let mqa = geometry("llama-3-70b", KvDtype::F16)
            .with_kv_heads(1)
            .unwrap();
        assert_eq!(mqa.bytes_per_token(), 327_680 / 8);
        assert!(geometry("llama-3-70b", KvDtype::F16)
            .with_kv_heads(3)
            .is_err());
    }

    #[test]
    fn element_offsets_tile_the_block() {
        let g = KvGeometry::new(dims(2, 4, 2, 8, 0), KvDtype::F32, 4).unwrap();
        let mut seen = vec![false; g.elements_per_block()];
        for layer in 0..2 {
            for part in [KvPart::Key, KvPart::Value] {
                for head in 0..2 {
                    for slot in 0..4 {
                        let at = g.element_offset(layer, part, head, slot);
                        for s in &mut seen[at..at + 8] {
                            assert!(!*s, "overlap");
                            *s = true;
                        }
                    }
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn hf_config_llama_and_falcon() {
        let llama = r#"{"hidden_size": 8192, "num_attention_heads": 64, "num_hidden_layers": 80,
            "num_key_value_heads": 8, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}"#;
        assert_eq!(
            ModelDims::from_hf_config(llama).unwrap(),
            find_preset("llama-3-70b").unwrap().dims
        );
        let falcon7 = r#"{"hidden_size": 4544, "n_head": 71, "n_layer": 32, "multi_query": true}"#;
        let d = ModelDims::from_hf_config(falcon7).unwrap();
        assert_eq!((d.num_kv_heads, d.head_dim), (1, 64));
        let falcon40 = r#"{"hidden_size": 8192, "num_attention_heads": 128, "num_hidden_layers": 60,
            "num_kv_heads": 8, "multi_query": true, "new_decoder_architecture": true}"#;
        assert_eq!(ModelDims::from_hf_config(falcon40).unwrap().num_kv_heads, 8);
        let nested = r#"{"text_config": {"hidden_size": 576, "num_attention_heads": 9,
            "num_hidden_layers": 30, "num_key_value_heads": 3}}"#;
        assert_eq!(ModelDims::from_hf_config(nested).unwrap().head_dim, 64);
    }

    #[test]
    fn hf_config_errors_say_where_and_what() {
        let err =
            ModelDims::from_hf_config("{\n  \"num_hidden_layers\": 2,\n  oops\n}").unwrap_err();
        assert!(
            matches!(err, GeometryError::ConfigSyntax { line: 3, .. }),
            "{err}"
        );
        assert!(
            !err.to_string().contains(" at line "),
            "position once: {err}"
        );
        let err = ModelDims::from_hf_config(r#"{"num_attention_heads": 8, "hidden_size": 64}"#)
            .unwrap_err();
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
        let err = ModelDims::from_hf_config(
            r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 3, "hidden_size": 64}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, GeometryError::HeadsNotDivisible { .. }),
            "{err}"
        );
        let err = ModelDims::from_hf_config(r#"{"num_hidden_layers": -2}"#).unwrap_err();
        assert!(matches!(err, GeometryError::InvalidField { .. }), "{err}");
        assert!(ModelDims::from_hf_config("[1, 2]").is_err());
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in KvDtype::ALL {
            assert_eq!(d.name().parse::<KvDtype>().unwrap(), d);
        }
        assert_eq!("BFloat16".parse::<KvDtype>().unwrap(), KvDtype::Bf16);
        assert!("int3".parse::<KvDtype>().is_err());
    }
}
