//! Sending a workload open-loop and timing every streamed response.
//!
//! Arrivals follow a gamma process at `rate` requests per second (`burstiness` 1 is Poisson;
//! below 1 burstier, above 1 more regular), as vLLM's `bench serve`; an infinite rate sends
//! everything at once; `max_concurrency` caps requests in flight. At each arrival one
//! *ready* turn is drawn at random (seeded): a session's first turn is ready once the
//! session is admitted (at most `max_active_sessions` at a time), a later turn once the
//! previous one answered. Drawing at random interleaves conversations the way independent
//! users do, so no routing policy can get lucky from a fixed send order. A trace's sessions
//! are sent at their own timestamps instead.
//!
//! Every request streams (`stream_options.include_usage`, so the server's token counts and
//! cached tokens come back). Time to first token is measured from just before the request is
//! written to the first chunk that carries text; inter-token latencies are the gaps between
//! text chunks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kvmesh_server::client::Client;
use kvmesh_sim::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::workload::Session;

/// Which API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    /// `/v1/chat/completions`: messages through the server's chat template.
    Chat,
    /// `/v1/completions`: the conversation written out as plain text.
    Completions,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The API.
    pub endpoint: Endpoint,
    /// The `model` field.
    pub model: String,
    /// Requests per second (`f64::INFINITY`: all at once).
    pub rate: f64,
    /// Gamma shape of the arrival gaps (1: Poisson).
    pub burstiness: f64,
    /// Most requests in flight.
    pub max_concurrency: usize,
    /// Most conversations started and not finished.
    pub max_active_sessions: usize,
    /// Send `ignore_eos` and `min_tokens = max_tokens` so every answer has the asked length.
    pub ignore_eos: bool,
    /// Stop sending after this long (in-flight requests still finish).
    pub duration: Option<Duration>,
    /// Per-request limit.
    pub timeout: Duration,
    /// Seed of the arrival process and the turn draws.
    pub seed: u64,
}

/// What happened to one request.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    /// Seconds from the run's start to sending.
    pub sent_at: f64,
    /// Set when the request failed: its kind (`http_429`, `connect`, `stream`, `timeout`).
    pub error: Option<String>,
    /// Seconds to the first text.
    pub ttft: Option<f64>,
    /// Gaps between text chunks, seconds.
    pub itl: Vec<f64>,
    /// Seconds from sending to the end of the stream.
    pub e2e: f64,
    /// Prompt tokens (the server's count; else the words sent).
    pub prompt_tokens: u64,
    /// Generated tokens (the server's count; else text chunks).
    pub output_tokens: u64,
    /// Prompt tokens the server says it served from cache, if it says.
    pub cached_tokens: Option<u64>,
}

struct Done {
    session: usize,
    turn: usize,
    record: RequestRecord,
    answer: String,
}

/// Runs `sessions` against `client`; one record per request sent. `progress` is called with
/// the number of requests finished.
pub async fn run(
    client: &Client,
    sessions: &[Session],
    settings: &RunSettings,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<RequestRecord> {
    let total: usize = sessions.iter().map(|s| s.turns.len()).sum();
    let traced = sessions.iter().all(|s| s.at.is_some()) && !sessions.is_empty();
    let mut rng = Rng::new(settings.seed);
    let mut histories: Vec<Vec<(String, String)>> = vec![Vec::new(); sessions.len()];
    let mut next_session = 0usize;
    let mut active = 0usize;
    let mut ready: Vec<(usize, usize)> = Vec::new();
    let mut records = Vec::with_capacity(total);
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
    let start = Instant::now();
    let mut next_arrival = 0.0f64;
    let mut in_flight = 0usize;
    let mut sent = 0usize;
    let stop_at = settings.duration.map(|d| d.as_secs_f64());

    loop {
        let now = start.elapsed().as_secs_f64();
        let stopped = stop_at.is_some_and(|s| now >= s);
        // Admit sessions: traces by timestamp, generated ones up to the active limit.
        while next_session < sessions.len() {
            let s = &sessions[next_session];
            let admit = if traced {
                s.at.unwrap_or(0.0) <= now
            } else {
                active < settings.max_active_sessions.max(1)
            };
            if !admit {
                break;
            }
            if !s.turns.is_empty() {
                ready.push((next_session, 0));
                active += 1;
            }
            next_session += 1;
        }
        if (sent == total || stopped) && in_flight == 0 {
            break;
        }
        let due = traced || now >= next_arrival;
        if !stopped && due && !ready.is_empty() && in_flight < settings.max_concurrency.max(1) {
            let (s, t) = if traced {
                ready.remove(0) // in timestamp order
            } else {
                ready.swap_remove(rng.below(ready.len() as u64) as usize)
            };
            let body = request_body(settings, &sessions[s], t, &histories[s]);
            let client = client.clone();
            let tx = tx.clone();
            let endpoint = settings.endpoint;
            let timeout = settings.timeout;
            let words = body_words(&sessions[s], t, &histories[s]);
            tokio::spawn(async move {
                let sent_at = start.elapsed().as_secs_f64();
                let (mut record, answer) =
                    match tokio::time::timeout(timeout, one(&client, endpoint, &body)).await {
                        Ok(r) => r,
                        Err(_) => (
                            RequestRecord {
                                error: Some("timeout".into()),
                                e2e: timeout.as_secs_f64(),
                                ..RequestRecord::default()
                            },
                            String::new(),
                        ),
                    };
                record.sent_at = sent_at;
                if record.prompt_tokens == 0 {
                    record.prompt_tokens = words;
                }
                let _ = tx.send(Done {
                    session: s,
                    turn: t,
                    record,
                    answer,
                });
            });
            in_flight += 1;
            sent += 1;
            if !traced {
                next_arrival += gap(&mut rng, settings.rate, settings.burstiness);
            }
            continue;
        }
        // Wait for a completion, or for the next arrival (or trace timestamp) when one can go.
        let wake = if traced {
            sessions.get(next_session).and_then(|s| s.at)
        } else if !ready.is_empty() && in_flight < settings.max_concurrency.max(1) {
            Some(next_arrival)
        } else {
            None
        };
        let wake = match (wake, stop_at) {
            (Some(w), Some(s)) => Some(w.min(s)),
            (w, None) => w,
            (None, s) => s,
        };
        let done = match wake {
            Some(at) => {
                let left = Duration::from_secs_f64((at - start.elapsed().as_secs_f64()).max(0.0));
                match tokio::time::timeout(left, rx.recv()).await {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            }
            None => rx.recv().await,
        };
        let Some(done) = done else { break };
        in_flight -= 1;
        let session = &sessions[done.session];
        if done.record.error.is_none() && done.turn + 1 < session.turns.len() {
            histories[done.session].push((session.turns[done.turn].text.clone(), done.answer));
            ready.push((done.session, done.turn + 1));
        } else {
            // Finished, or failed: a conversation does not go on past an error.
            sent += session.turns.len() - done.turn - 1;
            active = active.saturating_sub(1);
        }
        records.push(done.record);
        progress(records.len() as u64);
    }
    records
}

/// Seconds to the next arrival.
fn gap(rng: &mut Rng, rate: f64, burstiness: f64) -> f64 {
    if !rate.is_finite() || rate <= 0.0 {
        return 0.0;
    }
    let shape = burstiness.max(1e-3);
    gamma(rng, shape) / (rate * shape)
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; boosted for shape < 1).
fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.unit().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // A standard normal by Box-Muller.
        let (u1, u2) = (rng.unit().max(f64::MIN_POSITIVE), rng.unit());
        let x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.unit().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

fn body_words(session: &Session, turn: usize, history: &[(String, String)]) -> u64 {
    let count = |s: &str| s.split_whitespace().count() as u64;
    session.system.as_deref().map_or(0, count)
        + history
            .iter()
            .map(|(u, a)| count(u) + count(a))
            .sum::<u64>()
        + count(&session.turns[turn].text)
}

fn request_body(
    settings: &RunSettings,
    session: &Session,
    turn: usize,
    history: &[(String, String)],
) -> Value {
    let t = &session.turns[turn];
    let mut body = json!({
        "model": settings.model,
        "max_tokens": t.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if settings.ignore_eos {
        // Both spellings of "exactly max_tokens": vLLM and kvmesh read ignore_eos, llama.cpp's
        // server only min_tokens (it masks end-of-sequence until then).
        body["ignore_eos"] = json!(true);
        body["min_tokens"] = json!(t.max_tokens);
    }
    match settings.endpoint {
        Endpoint::Chat => {
            let mut messages = Vec::new();
            if let Some(s) = &session.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            for (u, a) in history {
                messages.push(json!({"role": "user", "content": u}));
                messages.push(json!({"role": "assistant", "content": a}));
            }
            messages.push(json!({"role": "user", "content": t.text}));
            body["messages"] = Value::Array(messages);
        }
        Endpoint::Completions => {
            let mut prompt = session
                .system
                .clone()
                .map(|s| s + "\n\n")
                .unwrap_or_default();
            for (u, a) in history {
                prompt.push_str(&format!("User: {u}\nAssistant: {a}\n"));
            }
            prompt.push_str(&format!("User: {}\nAssistant:", t.text));
            body["prompt"] = json!(prompt);
        }
    }
    body
}

/// Sends one streamed request; the record (without `sent_at`) and the answer's text.
async fn one(client: &Client, endpoint: Endpoint, body: &Value) -> (RequestRecord, String) {
    let path = match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    };
    let start = Instant::now();
    let fail = |kind: String| {
        (
            RequestRecord {
                error: Some(kind),
                e2e: start.elapsed().as_secs_f64(),
                ..RequestRecord::default()
            },
            String::new(),
        )
    };
    let mut events = match client.post_stream(path, body).await {
        Ok(Ok(events)) => events,
        Ok(Err(reply)) => return fail(format!("http_{}", reply.status.as_u16())),
        Err(kvmesh_server::client::ClientError::Connect { .. }) => return fail("connect".into()),
        Err(_) => return fail("http".into()),
    };
    let mut record = RequestRecord::default();
    let mut answer = String::new();
    let mut last_text: Option<Instant> = None;
    let mut chunks = 0u64;
    let mut usage: Option<Value> = None;
    while let Some(event) = events.next().await {
        let data = match event {
            Ok(d) => d,
            Err(_) => return fail("stream".into()),
        };
        if data == "[DONE]" {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return fail("bad_chunk".into());
        };
        if v.get("error").is_some() {
            return fail("stream_error".into());
        }
        if v["usage"].is_object() {
            usage = Some(v["usage"].clone());
        }
        let text = v["choices"]
            .get(0)
            .and_then(|c| {
                c["delta"]["content"]
                    .as_str()
                    .or_else(|| c["text"].as_str())
            })
            .unwrap_or("");
        if text.is_empty() {
            continue;
        }
        let now = Instant::now();
        match last_text {
            None => record.ttft = Some(now.duration_since(start).as_secs_f64()),
            Some(prev) => record.itl.push(now.duration_since(prev).as_secs_f64()),
        }
        last_text = Some(now);
        chunks += 1;
        answer.push_str(text);
    }
    record.e2e = start.elapsed().as_secs_f64();
    let count = |v: &Value, k: &str| v[k].as_u64();
    match &usage {
        Some(u) => {
            record.output_tokens = count(u, "completion_tokens").unwrap_or(chunks);
            record.prompt_tokens = count(u, "prompt_tokens").unwrap_or(0);
            record.cached_tokens = u["prompt_tokens_details"]["cached_tokens"].as_u64();
        }
        None => record.output_tokens = chunks,
    }
    if record.ttft.is_none() {
        return fail("empty".into());
    }
    (record, answer)
}

/// Errors by kind.
pub fn errors_by_kind(records: &[RequestRecord]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for r in records {
        if let Some(e) = &r.error {
            *out.entry(e.clone()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_gaps_have_the_asked_mean() {
        for burstiness in [0.5, 1.0, 4.0] {
            let mut rng = Rng::new(3);
            let n = 20_000;
            let mean = (0..n).map(|_| gap(&mut rng, 4.0, burstiness)).sum::<f64>() / n as f64;
            assert!(
                (mean - 0.25).abs() < 0.01,
                "burstiness {burstiness}: mean gap {mean}"
            );
        }
        assert_eq!(gap(&mut Rng::new(1), f64::INFINITY, 1.0), 0.0);
    }

    #[test]
    fn bodies_carry_the_history() {
        let session = Session {
            system: Some("sys".into()),
            turns: vec![
                super::super::workload::Turn {
                    text: "a".into(),
                    max_tokens: 3,
                },
                super::super::workload::Turn {
                    text: "b".into(),
                    max_tokens: 3,
                },
            ],
            at: None,
        };
        let settings = RunSettings {
            endpoint: Endpoint::Chat,
            model: "m".into(),
            rate: 1.0,
            burstiness: 1.0,
            max_concurrency: 1,
            max_active_sessions: 1,
            ignore_eos: true,
            duration: None,
            timeout: Duration::from_secs(1),
            seed: 0,
        };
        let history = vec![("a".to_string(), "answer".to_string())];
        let body = request_body(&settings, &session, 1, &history);
        let roles: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(body["ignore_eos"], true);
        let settings = RunSettings {
            endpoint: Endpoint::Completions,
            ..settings
        };
        let body = request_body(&settings, &session, 1, &history);
        assert_eq!(
            body["prompt"],
            "sys\n\nUser: a\nAssistant: answer\nUser: b\nAssistant:"
        );
        assert_eq!(body_words(&session, 1, &history), 4);
    }
}
