//! The OpenAI API end to end, over real sockets with the real model: answers, streaming,
//! usage and cached tokens, cache salts, `n`, stop conditions, and that the server keeps
//! serving after every kind of bad input.

use serde_json::{json, Value};

mod common;

use common::{config, model_path, runtime, TestServer, MODEL};

/// A long shared system prompt (well over a few 16-token blocks).
const SYSTEM: &str = "You are a meticulous assistant for a company that sells bicycles. \
    Always answer in one short sentence. Never invent prices. If you do not know, say so. \
    Our shop opens at nine in the morning and closes at six in the evening, every day \
    except Sunday. We repair every brand of bicycle and sell helmets, lights and locks.";

fn chat(system: Option<&str>, question: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": question}));
    json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 12})
}

#[test]
fn chat_answers_and_usage_counts_cached_tokens_per_salt() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    runtime().block_on(async {
        let r = client
            .post_json(
                "/v1/chat/completions",
                &chat(None, "What is the capital of France?"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(answer.contains("Paris"), "{answer}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

        let cached = |v: &Value| {
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        };
        let first = client
            .post_json(
                "/v1/chat/completions",
                &chat(Some(SYSTEM), "When do you open?"),
            )
            .await
            .unwrap()
            .json();
        let second = client
            .post_json(
                "/v1/chat/completions",
                &chat(Some(SYSTEM), "Do you sell locks?"),
            )
            .await
            .unwrap()
            .json();
        assert_eq!(cached(&first), 0, "{first}");
        let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(
            cached(&second) >= 64 && cached(&second) < prompt,
            "{second}"
        );

        // A salt separates caches: the same prompt under a new salt hits nothing, then
        // hits under that salt.
        let mut salted = chat(Some(SYSTEM), "Do you sell locks?");
        salted["cache_salt"] = json!("tenant-a");
        let a1 = client
            .post_json("/v1/chat/completions", &salted)
            .await
            .unwrap()
            .json();
        let a2 = client
            .post_json("/v1/chat/completions", &salted)
            .await
            .unwrap()
            .json();
        assert_eq!(cached(&a1), 0, "{a1}");
        assert!(cached(&a2) > 0, "{a2}");
        // Same greedy answer whatever the cache did.
        assert_eq!(a1["choices"][0]["message"], second["choices"][0]["message"]);

        // The router followed the KV: at least the cache hits were routed by overlap.
        let metrics = client.get("/metrics").await.unwrap();
        let text = String::from_utf8_lossy(&metrics.body).to_string();
        let overlap = text
            .lines()
            .find(|l| {
                l.starts_with("kvmesh:routing_decisions_total") && l.contains("reason=\"overlap\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!(overlap >= 2, "{text}");
    });
}

#[test]
fn streams_chunks_usage_and_done() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    runtime().block_on(async {
        let mut body = chat(None, "Name a color.");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": true});
        let mut events = client
            .post_stream("/v1/chat/completions", &body)
            .await
            .unwrap()
            .unwrap();
        let mut chunks = Vec::new();
        while let Some(e) = events.next().await {
            chunks.push(e.unwrap());
        }
        assert_eq!(chunks.last().map(String::as_str), Some("[DONE]"));
        let parsed: Vec<Value> = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(parsed.iter().all(|c| c["object"] == "chat.completion.chunk"));
        assert!(parsed.iter().all(|c| c["id"] == parsed[0]["id"]));
        // Continuous usage: every chunk carries usage; the last has no choices.
        assert!(parsed.iter().all(|c| c["usage"].is_object()), "{parsed:?}");
        let last = parsed.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        let text: String = parsed
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let finish = parsed
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .collect::<Vec<_>>();
        assert_eq!(finish.len(), 1);
        let completion = last["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion));
        assert!(!text.is_empty());

        // Without stream_options: no usage field at all on the chunks.
        let mut body = json!({"model": MODEL, "prompt": "One, two,", "max_tokens": 3, "stream": true, "temperature": 0});
        let mut events = client.post_stream("/v1/completions", &body).await.unwrap().unwrap();
        let first: Value = serde_json::from_str(&events.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(first["object"], "text_completion");
        assert!(first.get("usage").is_none(), "{first}");
        // The same prompt whole gives the text the stream gave.
        let mut streamed = first["choices"][0]["text"].as_str().unwrap().to_string();
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            if e != "[DONE]" {
                let v: Value = serde_json::from_str(&e).unwrap();
                streamed.push_str(v["choices"][0]["text"].as_str().unwrap());
            }
        }
        body["stream"] = json!(false);
        let whole = client.post_json("/v1/completions", &body).await.unwrap().json();
        assert_eq!(whole["choices"][0]["text"].as_str().unwrap(), streamed);
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
    });
}

#[test]
fn n_choices_stop_strings_and_token_prompts() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    runtime().block_on(async {
        let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8,
                          "n": 3, "temperature": 0.9, "seed": 11});
        let v = client
            .post_json("/v1/completions", &body)
            .await
            .unwrap()
            .json();
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3, "{v}");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
        }
        assert_eq!(v["usage"]["completion_tokens"], 24);
        // Seeded: the same request gives the same choices.
        let again = client
            .post_json("/v1/completions", &body)
            .await
            .unwrap()
            .json();
        assert_eq!(again["choices"], v["choices"]);

        // A batch of prompts, one as token ids.
        let body = json!({"prompt": ["The sky is", "Grass is"], "max_tokens": 2, "temperature": 0});
        let v = client
            .post_json("/v1/completions", &body)
            .await
            .unwrap()
            .json();
        assert_eq!(v["choices"].as_array().unwrap().len(), 2, "{v}");
        let body = json!({"prompt": [504, 3484, 314], "max_tokens": 2, "temperature": 0});
        let r = client.post_json("/v1/completions", &body).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);

        // A stop string cuts the text before it and finishes with "stop".
        let free = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 12, "temperature": 0});
        let v = client
            .post_json("/v1/completions", &free)
            .await
            .unwrap()
            .json();
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        assert!(text.contains('7'), "{text}");
        let mut stopped = free.clone();
        stopped["stop"] = json!(["7"]);
        let v = client
            .post_json("/v1/completions", &stopped)
            .await
            .unwrap()
            .json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["choices"][0]["text"].as_str().unwrap(),
            &text[..text.find('7').unwrap()]
        );

        // min_tokens holds off the end-of-turn token of a chat answer.
        let mut body = chat(None, "What is the capital of France?");
        body["max_tokens"] = json!(40);
        let short = client
            .post_json("/v1/chat/completions", &body)
            .await
            .unwrap()
            .json();
        let short_len = short["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(short["choices"][0]["finish_reason"], "stop", "{short}");
        body["min_tokens"] = json!(short_len + 5);
        let long = client
            .post_json("/v1/chat/completions", &body)
            .await
            .unwrap()
            .json();
        assert!(
            long["usage"]["completion_tokens"].as_u64().unwrap() >= short_len + 5,
            "{long}"
        );
    });
}

#[test]
fn bad_input_gets_openai_errors_and_the_server_keeps_serving() {
    let Some(path) = model_path() else { return };
    let mut cfg = config(path);
    cfg.api.api_key = Some("sesame".to_string());
    let server = TestServer::start(cfg);
    let client = kvmesh_server::client::Client::new(
        &format!("http://{}", server.addr),
        Some("sesame".into()),
    )
    .unwrap();
    let anonymous = server.client();
    let long_prompt = "word ".repeat(1500);
    runtime().block_on(async {
        let ok = json!({"prompt": "Hello", "max_tokens": 2});
        let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
            ("/v1/completions", "{not json".into(), 400, None),
            ("/v1/completions", "".into(), 400, None),
            (
                "/v1/completions",
                json!({"prompt": 5}).to_string(),
                400,
                None,
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": "ten"}).to_string(),
                400,
                None,
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "model": "gpt-9"}).to_string(),
                404,
                Some("model"),
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": -1}).to_string(),
                400,
                Some("max_tokens"),
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": 1_000_000_000u64}).to_string(),
                400,
                Some("prompt"),
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "top_p": 1.5}).to_string(),
                400,
                Some("top_p"),
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "n": 10_000}).to_string(),
                400,
                Some("n"),
            ),
            (
                "/v1/completions",
                json!({"prompt": [99_999_999]}).to_string(),
                400,
                Some("prompt"),
            ),
            (
                "/v1/completions",
                json!({"prompt": []}).to_string(),
                400,
                Some("prompt"),
            ),
            (
                "/v1/completions",
                json!({"prompt": long_prompt}).to_string(),
                400,
                Some("prompt"),
            ),
            ("/v1/completions", "x".repeat(100 * 1024), 413, None),
            (
                "/v1/chat/completions",
                json!({"messages": []}).to_string(),
                400,
                Some("messages"),
            ),
            (
                "/v1/chat/completions",
                json!({"messages": "hi"}).to_string(),
                400,
                None,
            ),
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
                    .to_string(),
                400,
                Some("messages[0].content"),
            ),
            ("/v1/nothing", "{}".into(), 404, None),
        ];
        for (path, body, status, param) in cases {
            let r = client.post_raw(path, body.clone()).await.unwrap();
            let v = r.json();
            assert_eq!(
                r.status.as_u16(),
                status,
                "{path} {}: {v}",
                &body[..body.len().min(80)]
            );
            let e = &v["error"];
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            assert!(e["type"].is_string(), "{v}");
            assert_eq!(e["param"].as_str(), param, "{v}");
            let after = client.post_json("/v1/completions", &ok).await.unwrap();
            assert_eq!(
                after.status, 200,
                "the server stopped serving after {path} {status}"
            );
        }
        let context = client
            .post_json(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": 5000}),
            )
            .await
            .unwrap()
            .json();
        assert_eq!(context["error"]["code"], "context_length_exceeded");
        assert!(
            context["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1024 tokens"),
            "{context}"
        );

        // The key: wrong or missing is 401; /health and /metrics stay open.
        let r = anonymous.post_json("/v1/completions", &ok).await.unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        assert_eq!(anonymous.get("/health").await.unwrap().status, 200);
        assert_eq!(anonymous.get("/metrics").await.unwrap().status, 200);
        let models = client.get("/v1/models").await.unwrap().json();
        assert_eq!(models["data"][0]["id"], MODEL);
        assert_eq!(models["data"][0]["max_model_len"], 1024);
    });
    assert_eq!(server.state.in_flight(), 0);
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_blocks() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    let rt = runtime();
    let idle = server.blocks_used();
    assert_eq!(idle, 0);
    rt.block_on(async {
        let body = json!({"prompt": "Tell me a long story about a dragon.", "max_tokens": 900,
                          "ignore_eos": true, "stream": true, "temperature": 0});
        let mut events = client
            .post_stream("/v1/completions", &body)
            .await
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            events.next().await.unwrap().unwrap();
        }
        assert!(server.blocks_used() > 0);
        drop(events); // the client goes away mid-stream
    });
    assert!(
        common::eventually(10, || server.blocks_used() == 0
            && server.state.in_flight() == 0),
        "blocks held: {}, in flight: {}",
        server.blocks_used(),
        server.state.in_flight()
    );
    let ready = server.state.ready.get().unwrap();
    let aborted: u64 = ready
        .workers
        .iter()
        .map(|w| w.metrics().finished[2].load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(aborted, 1);
    // The router forgot it too, and the server serves on.
    assert_eq!(ready.router().in_flight(), 0);
    rt.block_on(common::assert_serves(&client));
}

#[test]
fn overload_gets_429_with_retry_after_and_every_admitted_request_completes() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    // 2 workers x 4 running + 16 queued = 24 in flight at most.
    let capacity = 24;
    let rt = runtime();
    let (ok, rejected) = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let body = json!({"prompt": format!("Count to {i}:"), "max_tokens": 16,
                                  "ignore_eos": true, "temperature": 0});
                client.post_json("/v1/completions", &body).await
            }));
        }
        let (mut ok, mut rejected) = (0, 0);
        for t in tasks {
            let r = tokio::time::timeout(std::time::Duration::from_secs(300), t)
                .await
                .expect("nothing hangs")
                .unwrap()
                .unwrap();
            match r.status.as_u16() {
                200 => {
                    let v = r.json();
                    assert_eq!(v["choices"][0]["finish_reason"], "length");
                    assert_eq!(v["usage"]["completion_tokens"], 16);
                    ok += 1;
                }
                429 => {
                    assert_eq!(r.retry_after.as_deref(), Some("1"));
                    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
                    rejected += 1;
                }
                s => panic!("unexpected status {s}: {:?}", r.body),
            }
        }
        (ok, rejected)
    });
    assert_eq!(ok + rejected, 200);
    assert!(ok >= capacity, "{ok} admitted");
    assert!(rejected > 0, "no request was refused");
    assert_eq!(server.state.in_flight(), 0);
    assert!(common::eventually(5, || server.blocks_used() == 0));
    rt.block_on(common::assert_serves(&client));
}

#[test]
fn shutdown_drains_a_stream_in_flight() {
    let Some(path) = model_path() else { return };
    let server = TestServer::start(config(path));
    let client = server.client();
    let rt = runtime();
    let mut events = rt.block_on(async {
        let body = json!({"prompt": "Write a poem.", "max_tokens": 40, "ignore_eos": true,
                          "stream": true, "temperature": 0});
        let mut events = client
            .post_stream("/v1/completions", &body)
            .await
            .unwrap()
            .unwrap();
        events.next().await.unwrap().unwrap();
        events
    });
    let state = std::sync::Arc::clone(&server.state);
    let stopper = std::thread::spawn(move || server.stop());
    // New requests are refused while draining; the stream in flight completes.
    assert!(common::eventually(5, || state
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)));
    rt.block_on(async {
        let mut last = None;
        let mut n = 1;
        while let Some(e) = events.next().await {
            let e = e.unwrap();
            n += 1;
            last = Some(e);
        }
        assert_eq!(last.as_deref(), Some("[DONE]"));
        assert_eq!(n, 41, "40 tokens then [DONE]");
    });
    stopper
        .join()
        .unwrap()
        .expect("run returns Ok after draining");
}
