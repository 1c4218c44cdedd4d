//! The HTTP routes: the OpenAI API, `/health`, `/metrics`, and the checks every request
//! passes before it reaches [`generate`](crate::generate).
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/completions` | text completion, whole or SSE |
//! | `POST /v1/chat/completions` | chat completion (the model's chat template), whole or SSE |
//! | `GET /v1/models` | the served model, with `max_model_len` |
//! | `GET /health` | 200 once the model is loaded; 503 while loading or shutting down |
//! | `GET /metrics` | Prometheus text ([`metrics`](crate::metrics)) |
//!
//! Bodies are read as bytes under the size limit (413 beyond it) and parsed here, so every
//! malformed body gets an OpenAI-shaped 400 rather than the framework's plain-text rejection.
//! With `--api-key`, `/v1/*` needs `Authorization: Bearer <key>` (401 otherwise); `/health`
//! and `/metrics` stay open, as in vLLM.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use kvmesh_engine::ChatMessage;
use serde::de::DeserializeOwned;

use crate::generate::{self, Endpoint, Generation};
use crate::metrics;
use crate::openai::{ApiError, ChatRequest, CommonFields, CompletionRequest, Prompt};
use crate::state::{AppState, Ready};

/// The axum application over `state`.
pub fn router(state: Arc<AppState>) -> axum::Router {
    let api = axum::Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ));
    axum::Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .with_state(state)
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.settings.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            state.metrics.reject("unauthorized");
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Parses a JSON body, mapping every failure to an OpenAI error.
fn parse<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        state.metrics.reject("invalid");
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.settings.max_body_bytes)
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        state.metrics.reject("invalid");
        ApiError::bad_request(format!("invalid JSON body: {e}"))
    })
}

/// Checks the model name (absent means the served model).
fn check_model(state: &AppState, common: &CommonFields) -> Result<(), ApiError> {
    match &common.model {
        Some(m) if !state.settings.served_model_names.iter().any(|n| n == m) => {
            state.metrics.reject("invalid");
            Err(ApiError::model_not_found(m))
        }
        _ => Ok(()),
    }
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let ready = state.serving()?;
    let request: CompletionRequest = parse(&state, body)?;
    check_model(&state, &request.common)?;
    let prompts = match request.prompt {
        Prompt::Text(t) => vec![encode(ready, &t)?],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| encode(ready, t))
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![ids],
        Prompt::TokenLists(lists) => lists,
    };
    let generation = checked(
        &state,
        ready,
        &request.common,
        prompts,
        "prompt",
        arrival,
        Endpoint::Completions,
    )?;
    generate::run(state, generation).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let ready = state.serving()?;
    let request: ChatRequest = parse(&state, body)?;
    check_model(&state, &request.common)?;
    if request.messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "messages must not be empty",
        ));
    }
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| Ok(ChatMessage::new(m.role.clone(), m.text(i)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = ready.template.render(&messages, true);
    let prompt = encode(ready, &text)?;
    let generation = checked(
        &state,
        ready,
        &request.common,
        vec![prompt],
        "messages",
        arrival,
        Endpoint::Chat,
    )?;
    generate::run(state, generation).await
}

/// Tokenises a trusted prompt (control tokens matched, BOS added as the model asks), as
/// `kvmesh generate` does.
fn encode(ready: &Ready, text: &str) -> Result<Vec<u32>, ApiError> {
    ready
        .tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::bad_param("prompt", format!("cannot tokenise the prompt: {e}")))
}

/// Checks the sampling fields against the prompts and builds the generation.
fn checked(
    state: &AppState,
    ready: &Ready,
    common: &CommonFields,
    prompts: Vec<Vec<u32>>,
    param: &str,
    arrival: Instant,
    endpoint: Endpoint,
) -> Result<Generation, ApiError> {
    let limits = &state.settings.limits;
    let result = (|| {
        if prompts.is_empty() {
            return Err(ApiError::bad_param(param, format!("the {param} is empty")));
        }
        if prompts.len() > limits.max_prompts {
            return Err(ApiError::bad_param(
                param,
                format!(
                    "at most {} prompts per request, got {}",
                    limits.max_prompts,
                    prompts.len()
                ),
            ));
        }
        let sampling = common.sampling(limits)?;
        let vocab = ready.tokenizer.vocab_size();
        let mut out = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::bad_param(
                    param,
                    format!("token id {t} is outside the vocabulary of {vocab}"),
                ));
            }
            let params = (0..sampling.n)
                .map(|c| sampling.params_for(prompt.len(), ready.max_len, c, param))
                .collect::<Result<Vec<_>, _>>()?;
            out.push((prompt, params));
        }
        let options = common.stream_options.unwrap_or_default();
        Ok(Generation {
            endpoint,
            prompts: out,
            stream: common.stream,
            include_usage: options.include_usage,
            continuous_usage: options.continuous_usage_stats,
            cache_salt: common.cache_salt.clone(),
            arrival,
        })
    })();
    if result.is_err() {
        state.metrics.reject("invalid");
    }
    result
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let ready = state.serving()?;
    let data: Vec<_> = state
        .settings
        .served_model_names
        .iter()
        .map(|name| {
            serde_json::json!({
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "kvmesh",
                "root": name,
                "max_model_len": ready.max_len,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })).into_response())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match state.ready.get() {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready.get();
    let workers: Vec<_> = ready
        .map(|r| r.workers.iter().map(|w| w.metrics()).collect())
        .unwrap_or_default();
    let router = ready.map(|r| r.router().stats());
    let text = metrics::render(
        state.model_name(),
        &workers,
        router.as_ref(),
        &state.metrics,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
