//! The engine on the real model (SmolLM2-135M-Instruct): answers, and greedy outputs that do
//! not depend on prefix caching, chunking or preemption.
//!
//! Skips (passing, with a message) when the model file is absent: `kvmesh model fetch` puts it
//! in `$KVMESH_MODELS_DIR` or `~/.cache/kvmesh/models`; `.ci/run` does so.

use std::sync::{Arc, OnceLock};

use kvmesh_engine::{
    ChatMessage, ChatTemplate, Engine, EngineConfig, EngineError, GgufError, GgufFile, LlamaModel,
    SamplingParams, Tokenizer,
};

mod common;

use common::{model_path, MODEL_FILE as FILE};

struct Loaded {
    model: Arc<LlamaModel>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn loaded() -> Option<&'static Loaded> {
    static MODEL: OnceLock<Option<Loaded>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let Some(path) = model_path() else {
                eprintln!("SKIP: {FILE} not found; run `kvmesh model fetch` to run this test");
                return None;
            };
            let file = GgufFile::open(&path).expect("model parses");
            Some(Loaded {
                model: Arc::new(LlamaModel::load(&file, 2).expect("model loads")),
                tokenizer: Tokenizer::from_gguf(&file).expect("tokenizer"),
                template: ChatTemplate::from_gguf(&file).expect("chat template"),
            })
        })
        .as_ref()
}

fn engine(m: &Loaded, cfg: EngineConfig) -> Engine {
    Engine::new(
        Arc::clone(&m.model),
        cfg,
        m.tokenizer.stop_tokens().to_vec(),
    )
    .unwrap()
}

fn chat(m: &Loaded, question: &str) -> Vec<u32> {
    let text = m.template.render(&[ChatMessage::user(question)], true);
    m.tokenizer.encode(&text, true).unwrap()
}

/// Runs every prompt to completion; returns each one's generated tokens.
fn run(engine: &mut Engine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    run_with(engine, prompts, SamplingParams::greedy(max_tokens))
}

fn run_with(engine: &mut Engine, prompts: &[Vec<u32>], params: SamplingParams) -> Vec<Vec<u32>> {
    let ids: Vec<_> = prompts
        .iter()
        .map(|p| engine.add_request(p.clone(), params.clone()).unwrap())
        .collect();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut steps = 0;
    while engine.has_unfinished() {
        for o in engine.step().unwrap() {
            let i = ids.iter().position(|&id| id == o.id).unwrap();
            out[i].extend(o.token);
        }
        steps += 1;
        assert!(steps < 10_000, "engine made no progress");
    }
    out
}

#[test]
fn the_capital_of_france_is_paris() {
    let Some(m) = loaded() else { return };
    let mut e = engine(m, EngineConfig::default());
    let out = run(&mut e, &[chat(m, "What is the capital of France?")], 24);
    let text = m.tokenizer.decode(&out[0], true).unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
}

fn prompts(m: &Loaded) -> Vec<Vec<u32>> {
    // A shared system prompt and different questions: prefix caching has something to hit.
    [
        "Name three colours.",
        "What is 2 + 3?",
        "Say hello in French.",
    ]
    .iter()
    .map(|q| chat(m, q))
    .collect()
}

#[test]
fn greedy_tokens_do_not_depend_on_prefix_caching() {
    let Some(m) = loaded() else { return };
    let ps = prompts(m);
    let mut plain = engine(
        m,
        EngineConfig {
            enable_prefix_caching: false,
            ..EngineConfig::default()
        },
    );
    let mut cached = engine(m, EngineConfig::default());
    // Warm the cache with the same prompts, then run them again: they hit.
    let warm = run(&mut cached, &ps, 12);
    let hits_before = cached.stats().pool.hit_tokens;
    let again = run(&mut cached, &ps, 12);
    assert!(
        cached.stats().pool.hit_tokens > hits_before,
        "second run hit the cache"
    );
    let reference = run(&mut plain, &ps, 12);
    assert_eq!(plain.stats().pool.hit_tokens, 0);
    assert_eq!(warm, reference);
    assert_eq!(again, reference);
}

#[test]
fn greedy_tokens_do_not_depend_on_chunking_or_preemption() {
    let Some(m) = loaded() else { return };
    let ps = prompts(m);
    // Every request generates exactly 40 tokens, so they all grow at once.
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(40)
    };
    let reference = run_with(&mut engine(m, EngineConfig::default()), &ps, params.clone());

    let mut chunked = engine(
        m,
        EngineConfig {
            max_num_batched_tokens: 7,
            ..EngineConfig::default()
        },
    );
    assert_eq!(
        run_with(&mut chunked, &ps, params.clone()),
        reference,
        "chunked prefill"
    );

    // Room for every prompt but not for 40 more tokens each: decoding must preempt.
    let prompt_blocks: usize = ps.iter().map(|p| p.len().div_ceil(16)).sum();
    let mut tight = engine(
        m,
        EngineConfig {
            num_blocks: prompt_blocks,
            ..EngineConfig::default()
        },
    );
    assert_eq!(
        run_with(&mut tight, &ps, params),
        reference,
        "with preemption"
    );
    let lens: Vec<usize> = ps.iter().map(Vec::len).collect();
    assert!(
        tight.stats().preemptions > 0,
        "the test forced no preemption: prompts {lens:?}, {:?}",
        tight.stats()
    );
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let Some(m) = loaded() else { return };
    let mut e = engine(
        m,
        EngineConfig {
            num_blocks: 4,
            ..EngineConfig::default()
        },
    );
    assert_eq!(
        e.add_request(vec![], SamplingParams::greedy(1)),
        Err(EngineError::EmptyPrompt)
    );
    let long = vec![1u32; 100];
    assert!(matches!(
        e.add_request(long, SamplingParams::greedy(1)),
        Err(EngineError::TooLong { limit: 64, .. })
    ));
    assert!(matches!(
        e.add_request(vec![u32::MAX], SamplingParams::greedy(1)),
        Err(EngineError::BadToken { .. })
    ));
    let id = e
        .add_request(vec![1, 2, 3], SamplingParams::greedy(4))
        .unwrap();
    assert!(e.abort(id));
    assert!(!e.has_unfinished());
}

#[test]
fn truncated_and_foreign_model_files_are_errors() {
    let Some(path) = model_path() else {
        eprintln!("SKIP: {FILE} not found");
        return;
    };
    let bytes = std::fs::read(&path).unwrap();
    for cut in [3, 100, 5_000, bytes.len() / 2] {
        let err = GgufFile::parse(bytes[..cut].to_vec()).map(|_| ());
        assert!(err.is_err(), "cut at {cut} parsed");
    }
    // Same file with another architecture name: parses, but is not a llama model.
    let needle = b"llama";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut foreign = bytes.clone();
    foreign[at..at + 5].copy_from_slice(b"gpt2x");
    let file = GgufFile::parse(foreign).unwrap();
    let err = LlamaModel::load(&file, 1).unwrap_err();
    assert!(matches!(err, GgufError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("not supported"), "{err}");
}
