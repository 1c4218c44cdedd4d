//! Text to tokens and back, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! # Types
//!
//! - [`Tokenizer`]: byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as used by SmolLM2,
//!   GPT-2 and StarCoder. [`encode`](Tokenizer::encode), [`decode`](Tokenizer::decode), the
//!   special ids ([`bos`](Tokenizer::bos), [`eos`](Tokenizer::eos),
//!   [`stop_tokens`](Tokenizer::stop_tokens)) and vocabulary look-ups.
//! - [`DecodeStream`]: per-sequence incremental detokeniser for streaming output; never
//!   splits a UTF-8 character across the pieces it returns.
//! - [`ChatTemplate`] and [`ChatMessage`]: the model's ChatML prompt format, recognised from
//!   `tokenizer.chat_template` without a Jinja engine (see [`ChatTemplate::parse`]).
//! - [`TokenizerError`] when metadata is missing or malformed (build time), [`CodecError`]
//!   when an id is out of range or encoding fails (run time).
//!
//! ```no_run
//! use kvmesh_engine::{ChatMessage, ChatTemplate, GgufFile, Tokenizer};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gguf = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! let tokenizer = Tokenizer::from_gguf(&gguf)?;
//! let prompt = ChatTemplate::from_gguf(&gguf)?.render(&[ChatMessage::user("Hi!")], true);
//! let ids = tokenizer.encode(&prompt, true)?; // starts with 1 = <|im_start|>
//! let mut stream = tokenizer.decode_stream(true);
//! for &id in &ids {
//!     print!("{}", stream.step(id)?);
//! }
//! print!("{}", stream.finish());
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//!
//! `encode(text, add_special)` has two modes, like llama.cpp's `parse_special`:
//!
//! - `add_special = true`: the text is trusted (a rendered chat prompt). Control tokens
//!   written in it (token type 3, and type 2 "unknown") are matched atomically, leftmost
//!   longest, so `"<|im_start|>"` is id 1; BOS is prepended if `tokenizer.ggml.add_bos_token`
//!   and EOS appended if `tokenizer.ggml.add_eos_token` (both absent = false, as in
//!   SmolLM2).
//! - `add_special = false`: the text is plain (a user's message or a completion prompt):
//!   control-token spellings are encoded as ordinary text (`"<|im_start|>"` is 7 tokens),
//!   nothing is added. A caller that assembles prompts from untrusted parts can thus keep
//!   users from injecting turn markers.
//!
//! User-defined tokens (type 4) are matched in both modes, as in llama.cpp. Text between
//! matches is pre-tokenized and BPE-merged on its own, exactly as the Hugging Face tokenizer
//! does around its added tokens.
//!
//! A byte whose symbol is not in the vocabulary is dropped from the encoding, as llama.cpp and
//! Hugging Face (BPE without an unknown token) do. SmolLM2 lacks 21: 0xC0, 0xC1 and
//! 0xF5..=0xFF, which UTF-8 never uses, but also the control characters 0x04, 0x06, 0x13,
//! 0x14, 0x16, 0x1D and the lead bytes 0xF1, 0xF2 (planes 4 to 11). So `decode(encode(s))`
//! is `s` only for text without those. Mapping them to `unknown_token_id` instead would put
//! SmolLM2's `<|endoftext|>` (id 0) in the middle of a prompt.
//!
//! `decode(ids, skip_special)` concatenates each token's bytes and reads them as UTF-8,
//! replacing invalid sequences with U+FFFD; `skip_special` leaves out control and
//! unknown-type tokens. Ids at or above [`vocab_size`](Tokenizer::vocab_size) are an error,
//! not silently dropped.
//!
//! [`stop_tokens`](Tokenizer::stop_tokens) is EOS, `tokenizer.ggml.eot_token_id` and
//! `eom_token_id` if present, and every non-normal token spelled like a known end-of-turn
//! marker (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|eom_id|>`, `<|end|>`,
//! `<end_of_turn>`, `<EOT>`), as llama.cpp's end-of-generation set. For SmolLM2-Instruct that
//! is `{0 <|endoftext|>, 2 <|im_end|>}`: EOS is 2, and the base model's end-of-text also ends a
//! reply.
//!
//! # Pre-tokenizers
//!
//! `tokenizer.ggml.pre` names the split applied before BPE; a wrong split silently changes
//! ids, so only the ones implemented here are accepted:
//!
//! | `pre` | split |
//! |---|---|
//! | `smollm`, `starcoder`, `refact` | each digit alone (`Digits(individual_digits)`), then GPT-2's regex |
//! | `gpt-2` | GPT-2's regex |
//!
//! Others (`llama-bpe`, `qwen2`, `deepseek-*`, ...) and a missing key are
//! [`TokenizerError::UnsupportedPreTokenizer`]; SentencePiece (`"llama"`) vocabularies are
//! [`TokenizerError::UnsupportedModel`].
//!
//! # Design
//!
//! Encoding runs on the Hugging Face `tokenizers` crate (0.23, no default features, pure-Rust
//! `fancy-regex` for the split's look-ahead): a `BPE` model over the GGUF vocabulary and
//! merges, `Sequence[Digits, ByteLevel]` pre-tokenizer. Its byte-level regex and merge loop
//! are what the model was trained with, and re-implementing them is where tokenizers go
//! subtly wrong. Three parts are kvmesh's own, each for a reason:
//!
//! - **Control tokens** are not registered in the Hugging Face added vocabulary; kvmesh
//!   splits them out itself with one `regex` alternation. The added vocabulary matches always
//!   (its `encode_special_tokens` switch is per tokenizer, `&mut self`), and a second
//!   tokenizer for the plain mode would double the vocabulary and merge tables.
//! - **Decoding** uses a flat per-token byte table (the GPT-2 byte alphabet undone once, at
//!   load) rather than the crate's `ByteLevel` decoder, which allocates a `String` per token.
//!   The unit tests check the table against that decoder on every one of SmolLM2's 49,152
//!   tokens.
//! - **Streaming** works on bytes, not strings: the crate's `DecodeStream` borrows the
//!   tokenizer and detects a split character by a trailing U+FFFD in the decoded text, so a
//!   genuine U+FFFD from the model is held back until the next token (forever if it is the
//!   last). [`DecodeStream`] holds back at most 3 bytes of an incomplete character and owns an
//!   `Arc` of the table.
//!
//! Rejected: a hand-written BPE (about 150 lines, but every pre-tokenizer regex would be ours
//! to get right); `tokenizers`' `onig` feature (a C library to build) and its JSON loading (a
//! GGUF has no `tokenizer.json`).
//!
//! Cost, measured 2026-11-27 on the shared 2-core build machine, at an uncommitted tree on
//! top of the initial kvmesh commit:
//!
//! - Build: `tokenizers` brings 84 crates (rayon, serde, fancy-regex, ...); a clean debug
//!   build of them alone took 2 minutes.
//! - Load: `Tokenizer::from_gguf` on SmolLM2 takes ~0.2 s in release (49,152 tokens, 48,900
//!   merges).
//! - Encode: ~225,000 tokens/s (0.7 MB/s) on 100 KB of this workspace's Rust sources (32,371
//!   tokens, steady state; the first pass 200,000), `cargo test --release -p kvmesh-engine
//!   --test tokenizer -- --ignored --nocapture`. The Hugging Face pre-tokenizer is most of
//!   it: Python `tokenizers` 0.23.3 (with `onig`) encodes the same text at ~255,000 tokens/s
//!   and spends 116 of its 125 ms pre-tokenizing. A hand-written split feeding the crate's
//!   BPE could be several times faster; at SmolLM2's CPU prefill speeds (thousands of tokens
//!   per second) encoding is about 1% of a prompt's time, so it is not worth a second split
//!   implementation yet.
//! - Decode: 1.3 ms for those 32,371 tokens.

mod byte_level;
mod chat;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;

use crate::gguf::{GgufFile, MetadataValue};
use byte_level::TokenTable;

pub use chat::{ChatMessage, ChatTemplate};
pub use stream::DecodeStream;

/// Spellings of end-of-turn markers across model families (llama.cpp's list).
const END_OF_TURN_TEXTS: [&str; 7] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
];

/// Metadata keys read here.
mod key {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS: &str = "tokenizer.ggml.eos_token_id";
    pub const UNKNOWN: &str = "tokenizer.ggml.unknown_token_id";
    pub const PADDING: &str = "tokenizer.ggml.padding_token_id";
    pub const EOT: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM: &str = "tokenizer.ggml.eom_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
}

/// A tokenizer that cannot be built from the metadata given (build time).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A required metadata key is absent.
    #[error("missing metadata key '{key}'")]
    MissingMetadata {
        /// The key.
        key: &'static str,
    },
    /// A metadata key has the wrong type.
    #[error("metadata key '{key}' should be {expected}")]
    WrongMetadataType {
        /// The key.
        key: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// An element of a metadata array has the wrong type or value.
    #[error("element {index} of metadata array '{key}' should be {expected}")]
    BadArrayElement {
        /// The array's key.
        key: &'static str,
        /// The element's index.
        index: usize,
        /// What it should be.
        expected: &'static str,
    },
    /// A tokenizer model other than byte-level BPE.
    #[error(
        "tokenizer model '{model}' is not supported (only \"gpt2\", byte-level BPE; \
         \"llama\" is SentencePiece)"
    )]
    UnsupportedModel {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// A pre-tokenizer kvmesh does not implement, or none named.
    #[error(
        "pre-tokenizer {pre:?} is not supported (tokenizer.ggml.pre must be one of \
         \"smollm\", \"starcoder\", \"refact\", \"gpt-2\")"
    )]
    UnsupportedPreTokenizer {
        /// The value of `tokenizer.ggml.pre`, if present.
        pre: Option<String>,
    },
    /// The vocabulary is empty or has more than `u32::MAX` tokens.
    #[error("vocabulary has {size} tokens (must be 1 to 2^32 - 1)")]
    BadVocabSize {
        /// Its size.
        size: usize,
    },
    /// A per-token array whose length differs from the vocabulary's.
    #[error("metadata array '{key}' has {len} entries for {vocab_size} tokens")]
    LengthMismatch {
        /// The array's key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Two tokens with the same text.
    #[error("token {second} repeats the text {text:?} of token {first}")]
    DuplicateToken {
        /// The text.
        text: String,
        /// The first id with it.
        first: u32,
        /// The repeat.
        second: u32,
    },
    /// A merge that is not two non-empty tokens separated by a space.
    #[error("merge {index} is {merge:?}, not \"left right\"")]
    MalformedMerge {
        /// Its index in `tokenizer.ggml.merges`.
        index: usize,
        /// Its text.
        merge: String,
    },
    /// A merge whose parts or result are not in the vocabulary.
    #[error("merge {index} needs token {token:?}, which is not in the vocabulary")]
    MergeNotInVocab {
        /// Its index in `tokenizer.ggml.merges`.
        index: usize,
        /// The missing token.
        token: String,
    },
    /// A special token id at or beyond the vocabulary size.
    #[error("'{key}' is {id}, but the vocabulary has {vocab_size} tokens")]
    TokenIdOutOfRange {
        /// The key.
        key: &'static str,
        /// The id.
        id: u64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A chat template kvmesh does not render.
    #[error("unsupported chat template: {reason}")]
    UnsupportedChatTemplate {
        /// Why.
        reason: &'static str,
    },
    /// The `tokenizers` or `regex` crate refused the construction.
    #[error("cannot build the {what}: {source}")]
    Backend {
        /// What was being built.
        what: &'static str,
        /// The library's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A failure to encode or decode (run time).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A token id at or beyond the vocabulary size.
    #[error("token id {id} is out of range (vocabulary has {vocab_size} tokens)")]
    InvalidTokenId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The `tokenizers` crate failed to encode (not expected for valid UTF-8 input).
    #[error("encoding failed: {source}")]
    Encode {
        /// The library's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a token is, from `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenType {
    /// 1 (and 0, undefined): ordinary text.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token such as `<|im_start|>`.
    Control,
    /// 4: added by the model's authors; matched in text always.
    UserDefined,
    /// 5: a placeholder.
    Unused,
    /// 6: a SentencePiece byte token (`<0x0A>`).
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> Option<Self> {
        Some(match v {
            0 | 1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Left out by a skipping decode; matched in text only with `add_special`.
    fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

/// Which split runs before BPE (see the module docs' table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreSplit {
    DigitsThenGpt2,
    Gpt2,
}

/// A byte-level BPE tokenizer loaded from GGUF metadata. `Send + Sync`; share it with `Arc`.
pub struct Tokenizer {
    bpe: tokenizers::Tokenizer,
    table: Arc<TokenTable>,
    tokens: Vec<String>,
    pre: PreSplit,
    /// Matches control, unknown-type and user-defined tokens in text.
    special_matcher: Option<regex::Regex>,
    /// Matches user-defined tokens only.
    user_matcher: Option<regex::Regex>,
    /// The ids of the texts the matchers find.
    atomic_ids: HashMap<String, u32>,
    bos: Option<u32>,
    eos: u32,
    add_bos: bool,
    add_eos: bool,
    stop: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.pre)
            .field("atomic_tokens", &self.atomic_ids.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Reads `model` (must be `"gpt2"`), `pre`, `tokens`, `token_type` (absent = all normal),
    /// `merges`, `eos_token_id` (required), `bos_token_id`, `add_bos_token`, `add_eos_token`,
    /// and checks `unknown_token_id`, `padding_token_id`, `eot_token_id` and `eom_token_id`
    /// against the vocabulary size.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let model = require_str(gguf, key::MODEL)?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                model: model.to_string(),
            });
        }
        let pre = match opt_str(gguf, key::PRE)? {
            Some("smollm" | "starcoder" | "refact") => PreSplit::DigitsThenGpt2,
            Some("gpt-2") => PreSplit::Gpt2,
            other => {
                return Err(TokenizerError::UnsupportedPreTokenizer {
                    pre: other.map(str::to_string),
                })
            }
        };

        let tokens = string_array(gguf, key::TOKENS)?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(TokenizerError::BadVocabSize { size: n });
        }
        let types = token_types(gguf, n)?;
        let mut vocab = Vocab::default();
        vocab.reserve(n);
        for (id, text) in (0u32..).zip(&tokens) {
            if let Some(&first) = vocab.get(*text) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.to_string(),
                    first,
                    second: id,
                });
            }
            vocab.insert(text.to_string(), id);
        }
        let merges = merges(gguf, &vocab)?;

        let id = |key| opt_token_id(gguf, key, n);
        let bos = id(key::BOS)?;
        let eos = id(key::EOS)?.ok_or(TokenizerError::MissingMetadata { key: key::EOS })?;
        id(key::UNKNOWN)?;
        id(key::PADDING)?;
        let eot = id(key::EOT)?;
        let eom = id(key::EOM)?;
        let add_bos = opt_bool(gguf, key::ADD_BOS)?.unwrap_or(false);
        let add_eos = opt_bool(gguf, key::ADD_EOS)?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingMetadata { key: key::BOS });
        }

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|source| TokenizerError::Backend {
                what: "BPE model",
                source,
            })?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
        let split: PreTokenizerWrapper = match pre {
            PreSplit::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
            }
            PreSplit::Gpt2 => byte_level.into(),
        };
        hf.with_pre_tokenizer(Some(split));
        hf.with_decoder(Some(ByteLevel::default()));

        let mut atomic_ids = HashMap::new();
        let mut all_atomic = Vec::new();
        let mut user_defined = Vec::new();
        let mut stop = vec![eos];
        stop.extend(eot.into_iter().chain(eom));
        for (id, (text, ty)) in (0u32..).zip(tokens.iter().zip(&types)) {
            if ty.is_special() || *ty == TokenType::UserDefined {
                if !text.is_empty() {
                    atomic_ids.insert(text.to_string(), id);
                    all_atomic.push(*text);
                }
                if *ty == TokenType::UserDefined && !text.is_empty() {
                    user_defined.push(*text);
                }
            }
            if *ty != TokenType::Normal && END_OF_TURN_TEXTS.contains(text) {
                stop.push(id);
            }
        }
        stop.sort_unstable();
        stop.dedup();

        let table = TokenTable::new(
            tokens
                .iter()
                .zip(&types)
                .map(|(text, ty)| (*text, ty.is_special())),
        );
        Ok(Tokenizer {
            bpe: hf,
            table: Arc::new(table),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            pre,
            special_matcher: matcher(all_atomic)?,
            user_matcher: matcher(user_defined)?,
            atomic_ids,
            bos,
            eos,
            add_bos,
            add_eos,
            stop,
        })
    }

    /// Encodes `text`; `add_special` says whether it is a trusted prompt (control tokens
    /// matched, BOS/EOS added as the model asks) or plain text. See the module docs.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, CodecError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        let matcher = if add_special {
            &self.special_matcher
        } else {
            &self.user_matcher
        };
        let mut plain_from = 0;
        if let Some(matcher) = matcher {
            for m in matcher.find_iter(text) {
                self.encode_plain(&text[plain_from..m.start()], &mut ids)?;
                ids.extend(self.atomic_ids.get(m.as_str()));
                plain_from = m.end();
            }
        }
        self.encode_plain(&text[plain_from..], &mut ids)?;
        if add_special && self.add_eos {
            ids.push(self.eos);
        }
        Ok(ids)
    }

    /// Pre-tokenizes and BPE-encodes text that holds no atomic token.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), CodecError> {
        if text.is_empty() {
            return Ok(());
        }
        let encoding = self
            .bpe
            .encode_fast(text, false)
            .map_err(|source| CodecError::Encode { source })?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// Decodes `ids` to text, leaving out control tokens if `skip_special`. Bytes that are not
    /// UTF-8 (a character cut off at the end, say) become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, CodecError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        self.table.append(ids, skip_special, &mut bytes)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// An incremental detokeniser for one sequence; see [`DecodeStream`].
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream {
        DecodeStream::new(Arc::clone(&self.table), skip_special)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Whether `id` is the end-of-sequence token.
    pub fn is_eos(&self, id: u32) -> bool {
        id == self.eos
    }

    /// The tokens that end a reply, sorted: EOS and the end-of-turn markers (module docs).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// Whether `id` ends a reply (is in [`stop_tokens`](Self::stop_tokens)).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop.binary_search(&id).is_ok()
    }

    /// Whether `id` is a control (or unknown-type) token: matched in text only with
    /// `add_special`, left out by a skipping decode.
    pub fn is_special(&self, id: u32) -> bool {
        self.table.is_special(id)
    }

    /// Number of tokens; ids run from 0 to this, exclusive.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// A token's vocabulary entry as stored (byte-level symbols: `"Ġthe"` is " the").
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens
            .get(usize::try_from(id).ok()?)
            .map(String::as_str)
    }

    /// The bytes a token decodes to (possibly part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.table.piece(id)
    }

    /// The id of a vocabulary entry, spelled as stored (`"<|im_end|>"`, `"Ġthe"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.bpe.token_to_id(token)
    }
}

/// One leftmost-longest alternation of `texts`, or `None` if there are none.
fn matcher(mut texts: Vec<&str>) -> Result<Option<regex::Regex>, TokenizerError> {
    if texts.is_empty() {
        return Ok(None);
    }
    // The regex crate's alternation is leftmost-first: longest first makes it leftmost-longest.
    texts.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    let pattern = texts
        .iter()
        .map(|t| regex::escape(t))
        .collect::<Vec<_>>()
        .join("|");
    regex::Regex::new(&pattern)
        .map(Some)
        .map_err(|e| TokenizerError::Backend {
            what: "special-token matcher",
            source: Box::new(e),
        })
}

fn require_str<'a>(gguf: &'a GgufFile, key: &'static str) -> Result<&'a str, TokenizerError> {
    opt_str(gguf, key)?.ok_or(TokenizerError::MissingMetadata { key })
}

fn opt_str<'a>(gguf: &'a GgufFile, key: &'static str) -> Result<Option<&'a str>, TokenizerError> {
    gguf.get(key)
        .map(|v| {
            v.as_str().ok_or(TokenizerError::WrongMetadataType {
                key,
                expected: "a string",
            })
        })
        .transpose()
}

fn opt_bool(gguf: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    gguf.get(key)
        .map(|v| {
            v.as_bool().ok_or(TokenizerError::WrongMetadataType {
                key,
                expected: "a bool",
            })
        })
        .transpose()
}

fn opt_token_id(
    gguf: &GgufFile,
    key: &'static str,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = gguf.get(key) else {
        return Ok(None);
    };
    let id = value.as_u64().ok_or(TokenizerError::WrongMetadataType {
        key,
        expected: "a non-negative integer",
    })?;
    match u32::try_from(id) {
        Ok(small) if (small as usize) < vocab_size => Ok(Some(small)),
        _ => Err(TokenizerError::TokenIdOutOfRange {
            key,
            id,
            vocab_size,
        }),
    }
}

fn array<'a>(gguf: &'a GgufFile, key: &'static str) -> Result<&'a [MetadataValue], TokenizerError> {
    gguf.get(key)
        .ok_or(TokenizerError::MissingMetadata { key })?
        .as_array()
        .ok_or(TokenizerError::WrongMetadataType {
            key,
            expected: "an array",
        })
}

fn string_array<'a>(gguf: &'a GgufFile, key: &'static str) -> Result<Vec<&'a str>, TokenizerError> {
    array(gguf, key)?
        .iter()
        .enumerate()
        .map(|(index, v)| {
            v.as_str().ok_or(TokenizerError::BadArrayElement {
                key,
                index,
                expected: "a string",
            })
        })
        .collect()
}

fn token_types(gguf: &GgufFile, vocab_size: usize) -> Result<Vec<TokenType>, TokenizerError> {
    if gguf.get(key::TOKEN_TYPE).is_none() {
        return Ok(vec![TokenType::Normal; vocab_size]);
    }
    let values = array(gguf, key::TOKEN_TYPE)?;
    if values.len() != vocab_size {
        return Err(TokenizerError::LengthMismatch {
            key: key::TOKEN_TYPE,
            len: values.len(),
            vocab_size,
        });
    }
    values
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let raw = match *v {
                MetadataValue::Int(i) => Some(i),
                MetadataValue::Uint(u) => i64::try_from(u).ok(),
                _ => None,
            };
            raw.and_then(TokenType::from_i64)
                .ok_or(TokenizerError::BadArrayElement {
                    key: key::TOKEN_TYPE,
                    index,
                    expected: "a token type 0 to 6",
                })
        })
        .collect()
}

/// Parses `"left right"` merges (split at the first space after the first character, as
/// llama.cpp does) and checks that both parts and their concatenation are tokens.
fn merges(gguf: &GgufFile, vocab: &Vocab) -> Result<Vec<(String, String)>, TokenizerError> {
    let texts = string_array(gguf, key::MERGES)?;
    let mut out = Vec::with_capacity(texts.len());
    for (index, merge) in texts.into_iter().enumerate() {
        let first_len = merge.chars().next().map_or(0, char::len_utf8);
        let (left, right) = merge[first_len..]
            .find(' ')
            .map(|at| (&merge[..first_len + at], &merge[first_len + at + 1..]))
            .filter(|(l, r)| !l.is_empty() && !r.is_empty())
            .ok_or_else(|| TokenizerError::MalformedMerge {
                index,
                merge: merge.to_string(),
            })?;
        let joined = format!("{left}{right}");
        for token in [left, right, &joined] {
            if !vocab.contains_key(token) {
                return Err(TokenizerError::MergeNotInVocab {
                    index,
                    token: token.to_string(),
                });
            }
        }
        out.push((left.to_string(), right.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests;
