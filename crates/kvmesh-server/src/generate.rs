//! One generation request, from checked prompts to the response: admission, routing,
//! submission to a worker, and the response, whole or streamed.
//!
//! # The request path
//!
//! 1. The handler has tokenised the prompt(s) and checked every parameter.
//! 2. **Admission**: the request's choices (prompts x `n`) are admitted against the server's
//!    capacity, or it gets 429 with `Retry-After`. The admission is held until the response
//!    ends, however it ends.
//! 3. **Routing**: each prompt's block hashes (the engines' hasher, with the request's cache
//!    salt) go to the [`Router`](kvmesh_index::Router), which picks a worker from its index and
//!    the load it has sent; all `n` choices of a prompt go to that worker, so they share the
//!    prompt's KV through the prefix cache.
//! 4. **Submission**: each choice goes to the worker's command queue with a channel for its
//!    outputs; all choices of the request share one channel.
//! 5. **Response**: outputs are gathered into one body, or turned into SSE chunks as they come.
//!    The router hears of each prompt's first token and end ([`InFlight`]).
//!
//! A client that goes away drops the response, hence the channel's receiver; each worker
//! aborts the choice at its next step and its blocks return to the pool.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvmesh_core::ExtraKeys;
use kvmesh_engine::{EngineError, FinishReason, SamplingParams};
use tokio::sync::mpsc;

use crate::openai::response::{
    ChatChoice, Chunk, ChunkChoice, Completion, CompletionChoice, Delta, ResponseMessage,
};
use crate::openai::{finish_reason_name, ApiError, Usage};
use crate::state::{Admission, AppState, Ready};
use crate::worker::{ChoiceOutput, Submission, WorkerEvent};

/// Which endpoint asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions`.
    Chat,
}

/// A checked generation request.
#[derive(Debug)]
pub struct Generation {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Per prompt: its tokens and one engine setting per choice.
    pub prompts: Vec<(Vec<u32>, Vec<SamplingParams>)>,
    /// Stream SSE.
    pub stream: bool,
    /// Send a final usage chunk.
    pub include_usage: bool,
    /// Send usage on every chunk.
    pub continuous_usage: bool,
    /// Requests with different salts never share cached blocks.
    pub cache_salt: Option<String>,
    /// When the request arrived.
    pub arrival: Instant,
}

/// The routed prompts of a request in flight: tells the router of first tokens and ends.
struct InFlight {
    ready_state: Arc<AppState>,
    /// Router request id per prompt, and whether its first token came.
    prompts: Vec<(u64, bool)>,
    _admission: Admission,
}

impl InFlight {
    fn ready(&self) -> &Ready {
        self.ready_state
            .ready
            .get()
            .expect("in flight only once ready")
    }

    fn first_token(&mut self, prompt: usize) {
        if let Some((id, seen)) = self.prompts.get_mut(prompt) {
            if !*seen {
                *seen = true;
                let id = *id;
                self.ready().router().on_first_token(id);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut router = self.ready().router();
        for &(id, _) in &self.prompts {
            router.on_finish(id);
        }
    }
}

/// Admits, routes and submits `generation`; answers with the whole response or a stream.
pub async fn run(state: Arc<AppState>, generation: Generation) -> Result<Response, ApiError> {
    let ready = state.serving()?;
    let choices_per_prompt = generation.prompts.first().map_or(0, |p| p.1.len());
    let total: usize = generation.prompts.iter().map(|p| p.1.len()).sum();
    let admission = state.admit(total, ready.capacity)?;
    let id = state.next_id();
    let extra = ExtraKeys {
        lora_id: None,
        cache_salt: generation
            .cache_salt
            .as_ref()
            .map(|s| s.as_bytes().to_vec()),
    };
    let hasher = kvmesh_core::BlockHasher::new(ready.hash_seed, ready.block_size, &extra);

    let (tx, rx) = mpsc::unbounded_channel();
    let mut in_flight = InFlight {
        ready_state: Arc::clone(&state),
        prompts: Vec::new(),
        _admission: admission,
    };
    let mut prompt_tokens = Vec::new();
    for (p, (prompt, params)) in generation.prompts.into_iter().enumerate() {
        let hashes = hasher.hash_prefix(&prompt);
        let route_id = id.wrapping_mul(1 << 8).wrapping_add(p as u64);
        let route = ready
            .router()
            .route(route_id, &hashes, prompt.len() as u64, None)
            .ok_or_else(|| ApiError::internal("no workers"))?;
        in_flight.prompts.push((route_id, false));
        let w = route.selection.worker.0 as usize;
        tracing::debug!(
            request = id,
            prompt = p,
            worker = w,
            reason = route.reason.name(),
            cached_blocks = route.selection.cached.total(),
            prompt_tokens = prompt.len(),
            "routed"
        );
        prompt_tokens.push(prompt.len());
        let worker = ready
            .workers
            .get(w)
            .ok_or_else(|| ApiError::internal(format!("the router chose unknown worker {w}")))?;
        for (c, params) in params.into_iter().enumerate() {
            let submission = Submission {
                prompt: prompt.clone(),
                params,
                extra: extra.clone(),
                choice: p * choices_per_prompt + c,
                arrival: generation.arrival,
                outputs: tx.clone(),
            };
            if worker.submit(submission).is_err() {
                return Err(ApiError::unavailable(format!(
                    "worker {w}'s command queue is full or the worker is gone; retry"
                )));
            }
        }
    }
    drop(tx);

    let meta = Meta {
        id: match generation.endpoint {
            Endpoint::Completions => format!("cmpl-{id:016x}"),
            Endpoint::Chat => format!("chatcmpl-{id:016x}"),
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: state.model_name().to_string(),
        endpoint: generation.endpoint,
        choices_per_prompt: choices_per_prompt.max(1),
        prompt_tokens,
        choices: total,
    };
    if generation.stream {
        let options = StreamOptions {
            include_usage: generation.include_usage,
            continuous_usage: generation.continuous_usage && generation.include_usage,
        };
        Ok(stream(meta, options, rx, in_flight).into_response())
    } else {
        whole(meta, rx, in_flight).await
    }
}

/// What every response and chunk repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    choices_per_prompt: usize,
    prompt_tokens: Vec<usize>,
    choices: usize,
}

impl Meta {
    fn prompt_of(&self, choice: usize) -> usize {
        choice / self.choices_per_prompt
    }
}

/// Per-choice progress.
#[derive(Debug, Clone, Default)]
struct ChoiceState {
    text: String,
    tokens: usize,
    cached: Option<usize>,
    finished: Option<FinishReason>,
}

impl ChoiceState {
    /// Counts one output of the choice (its text is the caller's); true when the output
    /// finished it.
    fn record(
        &mut self,
        token: Option<u32>,
        cached: usize,
        finished: Option<FinishReason>,
    ) -> bool {
        if token.is_some() {
            self.tokens += 1;
        }
        self.cached = Some(cached);
        let newly = finished.is_some() && self.finished.is_none();
        if newly {
            self.finished = finished;
        }
        newly
    }
}

/// Token counts so far, over all choices; cached tokens counted once per prompt.
fn usage(meta: &Meta, states: &[ChoiceState]) -> Usage {
    let prompt: usize = meta.prompt_tokens.iter().sum();
    let completion = states.iter().map(|s| s.tokens).sum();
    let cached = (0..meta.prompt_tokens.len())
        .map(|p| {
            let first = p * meta.choices_per_prompt;
            states[first..first + meta.choices_per_prompt]
                .iter()
                .filter_map(|s| s.cached)
                .max()
                .unwrap_or(0)
        })
        .sum();
    Usage::new(prompt, completion, cached)
}

/// The next output of any choice; an error when the engine failed a choice or the worker
/// went away before the request finished.
async fn next_output(
    rx: &mut mpsc::UnboundedReceiver<WorkerEvent>,
) -> Result<ChoiceOutput, ApiError> {
    match rx.recv().await {
        Some(WorkerEvent::Output(o)) => Ok(o),
        Some(WorkerEvent::Failed { error, .. }) => Err(engine_error(error)),
        None => Err(ApiError::internal(
            "a worker stopped before finishing the request",
        )),
    }
}

/// Counts `o` into its choice's state and tells the router of the prompt's first token.
/// `None` for a choice the request does not have; else whether `o` finished its choice.
fn apply(
    meta: &Meta,
    states: &mut [ChoiceState],
    in_flight: &mut InFlight,
    o: &ChoiceOutput,
) -> Option<bool> {
    let s = states.get_mut(o.choice)?;
    if o.token.is_some() {
        in_flight.first_token(meta.prompt_of(o.choice));
    }
    Some(s.record(o.token, o.cached_tokens, o.finished))
}

fn engine_error(error: EngineError) -> ApiError {
    match error {
        EngineError::TooLong { .. }
        | EngineError::EmptyPrompt
        | EngineError::BadToken { .. }
        | EngineError::Sampling(_)
        | EngineError::StopStringsNeedTokenizer => ApiError::bad_request(error.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

async fn whole(
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<WorkerEvent>,
    mut in_flight: InFlight,
) -> Result<Response, ApiError> {
    let mut states = vec![ChoiceState::default(); meta.choices];
    let mut done = 0;
    while done < meta.choices {
        let o = next_output(&mut rx).await?;
        if let Some(newly_done) = apply(&meta, &mut states, &mut in_flight, &o) {
            states[o.choice].text.push_str(&o.text);
            done += usize::from(newly_done);
        }
    }
    drop(in_flight);
    let usage = usage(&meta, &states);
    let reason = |s: &ChoiceState| s.finished.map(finish_reason_name);
    let body = match meta.endpoint {
        Endpoint::Completions => serde_json::to_value(Completion {
            id: meta.id,
            object: "text_completion",
            created: meta.created,
            model: meta.model,
            choices: states
                .iter()
                .enumerate()
                .map(|(index, s)| CompletionChoice {
                    index,
                    text: s.text.clone(),
                    logprobs: None,
                    finish_reason: reason(s),
                })
                .collect(),
            usage,
        }),
        Endpoint::Chat => serde_json::to_value(Completion {
            id: meta.id,
            object: "chat.completion",
            created: meta.created,
            model: meta.model,
            choices: states
                .iter()
                .enumerate()
                .map(|(index, s)| ChatChoice {
                    index,
                    message: ResponseMessage {
                        role: "assistant",
                        content: s.text.clone(),
                    },
                    logprobs: None,
                    finish_reason: reason(s),
                })
                .collect(),
            usage,
        }),
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(body).into_response())
}

#[derive(Debug, Clone, Copy)]
struct StreamOptions {
    include_usage: bool,
    continuous_usage: bool,
}

/// SSE chunks of SSE `data:` lines, in the order OpenAI sends them: for chat, a first chunk
/// per choice with the role; a chunk per piece of text; a choice's last chunk with its
/// finish reason; with `include_usage`, a final chunk with empty `choices` and the usage;
/// then `data: [DONE]`. A failure after the stream began is sent as an error event, then
/// `[DONE]`.
fn stream(
    meta: Meta,
    options: StreamOptions,
    mut rx: mpsc::UnboundedReceiver<WorkerEvent>,
    mut in_flight: InFlight,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    // A task turns worker events into SSE events; the body streams them. When the client
    // goes, the body is dropped, the task's next send fails and it returns, dropping `rx`
    // (so the workers abort) and `in_flight` (so the router forgets the request).
    let (out, out_rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut states = vec![ChoiceState::default(); meta.choices];
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>| {
            let object = match meta.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            };
            let c = Chunk {
                id: meta.id.clone(),
                object,
                created: meta.created,
                model: meta.model.clone(),
                choices,
                usage,
            };
            Event::default().data(serde_json::to_string(&c).unwrap_or_default())
        };
        let usage_field = |states: &[ChoiceState]| {
            options
                .include_usage
                .then(|| options.continuous_usage.then(|| usage(&meta, states)))
        };
        if meta.endpoint == Endpoint::Chat {
            for index in 0..meta.choices {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                let first = ChunkChoice::Chat {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                if out
                    .send(chunk(vec![first], usage_field(&states)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut done = 0;
        while done < meta.choices {
            // A client that leaves while its request waits (no output yet) is noticed here
            // too, not only at the next send.
            let o = tokio::select! {
                o = next_output(&mut rx) => o,
                () = out.closed() => return,
            };
            let o = match o {
                Ok(o) => o,
                Err(e) => {
                    let _ = out.send(Event::default().data(e.body().to_string())).await;
                    break;
                }
            };
            let Some(newly_done) = apply(&meta, &mut states, &mut in_flight, &o) else {
                continue;
            };
            let ChoiceOutput {
                choice,
                text,
                finished,
                ..
            } = o;
            if newly_done {
                done += 1;
            } else if text.is_empty() {
                continue; // nothing to show yet (a held-back stop string, a special token)
            }
            let finish_reason = finished.map(finish_reason_name);
            let c = match meta.endpoint {
                Endpoint::Completions => ChunkChoice::Text {
                    index: choice,
                    text,
                    logprobs: None,
                    finish_reason,
                },
                Endpoint::Chat => ChunkChoice::Chat {
                    index: choice,
                    delta: Delta {
                        role: None,
                        content: (!text.is_empty()).then_some(text),
                    },
                    logprobs: None,
                    finish_reason,
                },
            };
            if out
                .send(chunk(vec![c], usage_field(&states)))
                .await
                .is_err()
            {
                return;
            }
        }
        if options.include_usage {
            let u = usage(&meta, &states);
            if out.send(chunk(Vec::new(), Some(Some(u)))).await.is_err() {
                return;
            }
        }
        drop(in_flight);
        let _ = out.send(Event::default().data("[DONE]")).await;
    });
    let body = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok(e), rx))
    });
    Sse::new(body)
}
