//! Request bodies of `/v1/completions` and `/v1/chat/completions`, parsed without trusting
//! them, and turned into engine settings.
//!
//! Parsing is serde's (a wrong type is a 400 naming the field and position); ranges are
//! checked here with the parameter named in the error, as vLLM does. Unknown fields are
//! ignored, as OpenAI's and vLLM's servers do, so clients that send `user` or `logprobs: null`
//! work. Numbers that must be positive are read as signed so a negative value gets a message
//! saying what is wrong rather than a type error.

use kvmesh_engine::SamplingParams;
use serde::Deserialize;

use super::error::ApiError;

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamOptions {
    /// A last chunk with the request's usage (and `usage: null` on the others).
    #[serde(default)]
    pub include_usage: bool,
    /// Usage so far on every chunk (vLLM's extension; needs `include_usage`).
    #[serde(default)]
    pub continuous_usage_stats: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// The model name (optional: the served model).
    pub model: Option<String>,
    /// Most tokens to generate (default: what the context leaves, as vLLM).
    pub max_tokens: Option<i64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Fewest tokens before a stop token may end the output.
    pub min_tokens: Option<i64>,
    /// Sampling temperature (default 1 as OpenAI; 0 is greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold in (0, 1].
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens (vLLM's extension; 0 or -1 disables).
    pub top_k: Option<i64>,
    /// Seed of the random stream.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Stop token ids.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Ignore the model's end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Requests with different salts never share cached KV blocks.
    pub cache_salt: Option<String>,
}

/// `prompt` of `/v1/completions`: text, token ids, or a batch of either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: Prompt,
    /// Shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// A chat message's `content`: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts; only `{"type": "text", "text": ...}` is supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The part's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// What is said (may be null for an assistant turn).
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

impl Message {
    /// The content as one text (parts joined); non-text parts are refused.
    pub fn text(&self, i: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        _ => {
                            return Err(ApiError::bad_param(
                                &format!("messages[{i}].content"),
                                format!(
                                    "content parts of type `{}` are not supported: this model reads text only",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Bounds on what one request may ask for (server settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most choices per prompt (`n`).
    pub max_n: usize,
    /// Most prompts in one batched completion request.
    pub max_prompts: usize,
    /// Most stop strings.
    pub max_stop_strings: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_n: 16,
            max_prompts: 16,
            max_stop_strings: 16,
        }
    }
}

/// The sampling settings of a request, checked; `max_tokens` is decided once the prompt's
/// length is known ([`Sampling::params_for`]).
#[derive(Debug, Clone)]
pub struct Sampling {
    base: SamplingParams,
    max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: usize,
}

impl CommonFields {
    /// Checks ranges and builds the engine's settings.
    pub fn sampling(&self, limits: &RequestLimits) -> Result<Sampling, ApiError> {
        let positive = |name: &str, v: Option<i64>| -> Result<Option<usize>, ApiError> {
            match v {
                None => Ok(None),
                Some(v) if v >= 1 => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
                Some(v) => Err(ApiError::bad_param(
                    name,
                    format!("{name} must be at least 1, got {v}"),
                )),
            }
        };
        let max_tokens = match self.max_completion_tokens {
            Some(_) => positive("max_completion_tokens", self.max_completion_tokens)?,
            None => positive("max_tokens", self.max_tokens)?,
        };
        let n = positive("n", self.n)?.unwrap_or(1);
        if n > limits.max_n {
            return Err(ApiError::bad_param(
                "n",
                format!(
                    "n must be at most {} (the server's --max-n), got {n}",
                    limits.max_n
                ),
            ));
        }
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(v) if v >= 0 => usize::try_from(v).unwrap_or(usize::MAX),
            Some(v) => {
                return Err(ApiError::bad_param(
                    "min_tokens",
                    format!("min_tokens must be >= 0, got {v}"),
                ))
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::bad_param(
                "temperature",
                format!("temperature must be in [0, 2], got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_param(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => {
                return Err(ApiError::bad_param(
                    "top_k",
                    format!("top_k must be -1 (off) or at least 1, got {k}"),
                ))
            }
        };
        let stop_strings = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let stop_strings: Vec<String> =
            stop_strings.into_iter().filter(|s| !s.is_empty()).collect();
        if stop_strings.len() > limits.max_stop_strings {
            return Err(ApiError::bad_param(
                "stop",
                format!(
                    "at most {} stop strings are accepted, got {}",
                    limits.max_stop_strings,
                    stop_strings.len()
                ),
            ));
        }
        if let Some(o) = self.stream_options {
            if !self.stream && (o.include_usage || o.continuous_usage_stats) {
                return Err(ApiError::bad_param(
                    "stream_options",
                    "stream_options is only allowed with stream: true",
                ));
            }
        }
        let base = SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            // A negative seed is a valid 64-bit pattern; keep it, as vLLM accepts any int.
            seed: self.seed.map(|s| s as u64),
            max_tokens: 1,
            min_tokens,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            stop_strings,
            ignore_eos: self.ignore_eos,
        };
        Ok(Sampling {
            base,
            max_tokens,
            n,
        })
    }
}

impl Sampling {
    /// The engine settings for a prompt of `prompt_len` tokens under a `max_len`-token
    /// context, with choice `choice`'s seed (seeded requests give each choice its own
    /// stream). `param` names the prompt field in the error (`prompt` or `messages`).
    pub fn params_for(
        &self,
        prompt_len: usize,
        max_len: usize,
        choice: usize,
        param: &str,
    ) -> Result<SamplingParams, ApiError> {
        let too_long = |max_tokens: usize| {
            let mut e = ApiError::bad_param(
                param,
                format!(
                    "This model's maximum context length is {max_len} tokens. However, you requested \
                     {} tokens ({prompt_len} in the {param}, {max_tokens} in the completion). \
                     Please reduce the length of the {param} or completion.",
                    prompt_len.saturating_add(max_tokens)
                ),
            );
            e.code = Some("context_length_exceeded");
            e
        };
        if prompt_len == 0 {
            return Err(ApiError::bad_param(param, format!("the {param} is empty")));
        }
        if prompt_len >= max_len {
            return Err(too_long(self.max_tokens.unwrap_or(1)));
        }
        let max_tokens = match self.max_tokens {
            Some(m) if prompt_len.saturating_add(m) > max_len => return Err(too_long(m)),
            Some(m) => m,
            None => max_len - prompt_len,
        };
        if self.base.min_tokens > max_tokens {
            return Err(ApiError::bad_param(
                "min_tokens",
                format!(
                    "min_tokens ({}) must not exceed max_tokens ({max_tokens})",
                    self.base.min_tokens
                ),
            ));
        }
        Ok(SamplingParams {
            max_tokens,
            seed: self.base.seed.map(|s| s.wrapping_add(choice as u64)),
            ..self.base.clone()
        })
    }

    /// Whether any stop string was given.
    pub fn has_stop_strings(&self) -> bool {
        !self.base.stop_strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Sampling, ApiError> {
        let r: ChatRequest =
            serde_json::from_str(json).map_err(|e| ApiError::bad_request(e.to_string()))?;
        r.common.sampling(&RequestLimits::default())
    }

    #[test]
    fn ranges_are_checked_with_the_param_named() {
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        for (field, param) in [
            (r#""max_tokens":-1"#, "max_tokens"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_completion_tokens":-3"#, "max_completion_tokens"),
            (r#""top_p":1.5"#, "top_p"),
            (r#""top_p":0"#, "top_p"),
            (r#""temperature":-0.1"#, "temperature"),
            (r#""n":0"#, "n"),
            (r#""n":1000"#, "n"),
            (r#""top_k":-2"#, "top_k"),
            (r#""min_tokens":-1"#, "min_tokens"),
            (
                r#""stream_options":{"include_usage":true}"#,
                "stream_options",
            ),
        ] {
            let e = parse(&format!("{{{msgs},{field}}}")).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{field}: {e:?}");
            assert_eq!(e.status, 400);
        }
        let e = parse(&format!(r#"{{{msgs},"max_tokens":"ten"}}"#)).unwrap_err();
        assert!(e.message.contains("invalid type"), "{e:?}");
    }

    #[test]
    fn max_tokens_defaults_to_the_rest_of_the_context_and_is_bounded_by_it() {
        let s = parse(r#"{"messages":[],"temperature":0}"#).unwrap();
        assert_eq!(s.params_for(10, 100, 0, "messages").unwrap().max_tokens, 90);
        let s = parse(r#"{"messages":[],"max_tokens":91}"#).unwrap();
        let e = s.params_for(10, 100, 0, "messages").unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(
            e.message.contains("maximum context length is 100 tokens"),
            "{}",
            e.message
        );
        assert!(e
            .message
            .contains("101 tokens (10 in the messages, 91 in the completion)"));
        assert!(s.params_for(100, 100, 0, "prompt").is_err());
        let s = parse(r#"{"messages":[],"max_tokens":5,"min_tokens":6}"#).unwrap();
        assert_eq!(
            s.params_for(1, 100, 0, "prompt")
                .unwrap_err()
                .param
                .as_deref(),
            Some("min_tokens")
        );
    }

    #[test]
    fn choices_get_their_own_seeds_and_stop_accepts_both_shapes() {
        let s = parse(r#"{"messages":[],"seed":7,"n":3,"stop":"x"}"#).unwrap();
        assert_eq!(s.n, 3);
        let seeds: Vec<_> = (0..3)
            .map(|c| s.params_for(1, 10, c, "m").unwrap().seed)
            .collect();
        assert_eq!(seeds, [Some(7), Some(8), Some(9)]);
        assert!(s.has_stop_strings());
        let s = parse(r#"{"messages":[],"stop":["a","","b"]}"#).unwrap();
        assert_eq!(
            s.params_for(1, 10, 0, "m").unwrap().stop_strings,
            ["a", "b"]
        );
    }

    #[test]
    fn prompts_in_every_shape() {
        for (json, ok) in [
            (r#"{"prompt":"hi"}"#, true),
            (r#"{"prompt":["a","b"]}"#, true),
            (r#"{"prompt":[1,2,3]}"#, true),
            (r#"{"prompt":[[1],[2,3]]}"#, true),
            (r#"{"prompt":[-1]}"#, false),
            (r#"{"prompt":7}"#, false),
            (r#"{}"#, false),
        ] {
            let r: Result<CompletionRequest, _> = serde_json::from_str(json);
            assert_eq!(r.is_ok(), ok, "{json}");
        }
    }
}
