//! Response bodies and stream chunks, field for field as OpenAI's API (and vLLM's server)
//! write them, so any client library reads them.
//!
//! `usage.prompt_tokens_details.cached_tokens` is always present, 0 included: the number of
//! prompt tokens whose KV came from the prefix cache. (vLLM reports it only behind
//! `--enable-prompt-tokens-details` and drops zeros, which breaks clients that read it.)

use kvmesh_engine::FinishReason;
use serde::Serialize;

/// `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (all choices share the prompt; counted once per prompt).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
    /// Details of the prompt tokens.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// Usage from its parts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// The wire name of a finish reason.
pub fn finish_reason_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Aborted => "abort",
    }
}

/// One choice of a (non-streamed) completion.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// The choice's index.
    pub index: usize,
    /// The generated text.
    pub text: String,
    /// Always null (log probabilities are not computed).
    pub logprobs: Option<()>,
    /// `stop`, `length` or `abort`.
    pub finish_reason: Option<&'static str>,
}

/// A chat message in a response.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One choice of a (non-streamed) chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// The choice's index.
    pub index: usize,
    /// The reply.
    pub message: ResponseMessage,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop`, `length` or `abort`.
    pub finish_reason: Option<&'static str>,
}

/// A whole response: `text_completion` or `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct Completion<C> {
    /// `cmpl-...` or `chatcmpl-...`.
    pub id: String,
    /// `text_completion` or `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per prompt and `n`.
    pub choices: Vec<C>,
    /// Token counts.
    pub usage: Usage,
}

/// A streamed chat delta.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    /// `assistant` in a choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice in a stream chunk: a completion's `text` or a chat `delta`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ChunkChoice {
    /// `/v1/completions`.
    Text {
        /// The choice's index.
        index: usize,
        /// New text.
        text: String,
        /// Always null.
        logprobs: Option<()>,
        /// Set on the choice's last chunk.
        finish_reason: Option<&'static str>,
    },
    /// `/v1/chat/completions`.
    Chat {
        /// The choice's index.
        index: usize,
        /// New text (and the role, first).
        delta: Delta,
        /// Always null.
        logprobs: Option<()>,
        /// Set on the choice's last chunk.
        finish_reason: Option<&'static str>,
    },
}

/// One SSE chunk: `text_completion` or `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// The request's id (the same on every chunk).
    pub id: String,
    /// `text_completion` or `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// The choices this chunk advances (empty on the final usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Present (null or a value) only when `stream_options.include_usage` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_always_carries_cached_tokens() {
        let v = serde_json::to_value(Usage::new(10, 3, 0)).unwrap();
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(v["total_tokens"], 13);
    }

    #[test]
    fn chunks_write_usage_only_when_asked() {
        let mut c = Chunk {
            id: "x".into(),
            object: "chat.completion.chunk",
            created: 0,
            model: "m".into(),
            choices: vec![ChunkChoice::Chat {
                index: 0,
                delta: Delta {
                    role: Some("assistant"),
                    content: None,
                },
                logprobs: None,
                finish_reason: None,
            }],
            usage: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("usage").is_none());
        assert_eq!(
            v["choices"][0]["delta"],
            serde_json::json!({"role": "assistant"})
        );
        c.usage = Some(None);
        assert!(serde_json::to_value(&c).unwrap()["usage"].is_null());
    }
}
