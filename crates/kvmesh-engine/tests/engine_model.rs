//! The engine on the real model (SmolLM2-135M-Instruct): answers, greedy outputs that do not
//! depend on prefix caching, chunking or preemption, and text with stop strings.
//!
//! Skips (passing, with a message) when the model file is absent: `kvmesh model fetch` puts it
//! in `$KVMESH_MODELS_DIR` or `~/.cache/kvmesh/models`; `.ci/run` does so.

use std::sync::{Arc, OnceLock};

use kvmesh_core::KvDtype;
use kvmesh_engine::{
    ChatMessage, ChatTemplate, Engine, EngineConfig, EngineError, FinishReason, GgufError,
    GgufFile, LlamaModel, RequestOutput, SamplingParams, Tokenizer,
};

mod common;

use common::{model_path, MODEL_FILE as FILE};

struct Loaded {
    model: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
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
                tokenizer: Arc::new(Tokenizer::from_gguf(&file).expect("tokenizer")),
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

/// Every KV element type answers the question, and within each one greedy tokens do not
/// depend on prefix caching (cached int8 or f32 blocks are reused exactly as computed).
/// How far int8 and f32 runs stray from the f16 default is printed, not asserted: a quantised
/// cache may pick a different token where two are nearly tied.
#[test]
fn every_kv_dtype_answers_and_is_batch_invariant() {
    let Some(m) = loaded() else { return };
    let question = [chat(m, "What is the capital of France?")];
    let ps = prompts(m);
    let with = |dtype, prefix_caching| EngineConfig {
        kv_cache_dtype: dtype,
        enable_prefix_caching: prefix_caching,
        ..EngineConfig::default()
    };
    let default_run = run(&mut engine(m, EngineConfig::default()), &ps, 12);
    for dtype in [KvDtype::F32, KvDtype::Int8] {
        let mut cached = engine(m, with(dtype, true));
        let answer = run(&mut cached, &question, 24);
        let text = m.tokenizer.decode(&answer[0], true).unwrap();
        assert!(text.contains("Paris"), "{dtype} answer: {text:?}");
        let warm = run(&mut cached, &ps, 12);
        let again = run(&mut cached, &ps, 12);
        let reference = run(&mut engine(m, with(dtype, false)), &ps, 12);
        assert_eq!(warm, reference, "{dtype}");
        assert_eq!(again, reference, "{dtype}");
        let same = reference
            .iter()
            .zip(&default_run)
            .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
            .collect::<Vec<_>>();
        eprintln!("{dtype}: leading tokens equal to the f16 run, per prompt: {same:?} of 12");
    }
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

/// `ignore_eos` ignores the model's end tokens only: a request's own stop tokens still end it.
#[test]
fn ignore_eos_keeps_the_requests_own_stop_tokens() {
    let Some(m) = loaded() else { return };
    let prompt = chat(m, "Name three colours.");
    let free = run(
        &mut engine(m, EngineConfig::default()),
        std::slice::from_ref(&prompt),
        6,
    );
    let params = SamplingParams {
        ignore_eos: true,
        stop_token_ids: vec![free[0][2]],
        ..SamplingParams::greedy(6)
    };
    let mut e = engine(m, EngineConfig::default());
    let out = run_with(&mut e, &[prompt], params);
    let stop_at = free[0].iter().position(|&t| t == free[0][2]).unwrap();
    assert_eq!(out[0], free[0][..=stop_at], "stops at the first stop token");
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

/// An engine that produces text.
fn text_engine(m: &Loaded) -> Engine {
    engine(m, EngineConfig::default())
        .with_tokenizer(Arc::clone(&m.tokenizer))
        .unwrap()
}

/// Runs one request to completion; returns its outputs (those with a token).
fn outputs(e: &mut Engine, prompt: Vec<u32>, params: SamplingParams) -> Vec<RequestOutput> {
    e.add_request(prompt, params).unwrap();
    let mut outs = Vec::new();
    while e.has_unfinished() {
        outs.extend(e.step().unwrap().into_iter().filter(|o| o.token.is_some()));
        assert!(outs.len() < 1000, "engine made no progress");
    }
    outs
}

fn texts(outs: &[RequestOutput]) -> Vec<String> {
    outs.iter().map(|o| o.text.clone()).collect()
}

fn with_stops(stops: &[&str]) -> SamplingParams {
    SamplingParams {
        stop_strings: stops.iter().map(|s| s.to_string()).collect(),
        ..SamplingParams::greedy(48)
    }
}

/// The greedy reply to a colour question: its per-token text pieces (no stop strings).
fn reference_pieces(m: &Loaded) -> Vec<String> {
    let outs = outputs(
        &mut text_engine(m),
        chat(m, "Name three colours."),
        SamplingParams::greedy(48),
    );
    let tokens: Vec<u32> = outs.iter().filter_map(|o| o.token).collect();
    let pieces = texts(&outs);
    assert_eq!(
        pieces.concat(),
        m.tokenizer.decode(&tokens, true).unwrap(),
        "streamed text is the one-shot decode"
    );
    pieces
}

fn first_char(s: &str) -> &str {
    s.chars().next().map_or("", |c| &s[..c.len_utf8()])
}

fn last_char(s: &str) -> &str {
    s.chars()
        .next_back()
        .map_or("", |c| &s[s.len() - c.len_utf8()..])
}

#[test]
fn a_stop_string_spanning_two_tokens_ends_the_request_at_once() {
    let Some(m) = loaded() else { return };
    let pieces = reference_pieces(m);
    let full = pieces.concat();
    // The first token boundary where "last char + first char" occurs first in the text.
    let (i, stop) = (0..pieces.len() - 1)
        .find_map(|i| {
            let stop = format!("{}{}", last_char(&pieces[i]), first_char(&pieces[i + 1]));
            let boundary = pieces[..=i].concat().len();
            let start = boundary - last_char(&pieces[i]).len();
            (stop.chars().count() == 2 && full.find(&stop) == Some(start)).then_some((i, stop))
        })
        .expect("some boundary between two non-empty pieces");
    let boundary = pieces[..=i].concat().len();
    let cut = boundary - last_char(&pieces[i]).len();

    let mut e = text_engine(m);
    let id = e
        .add_request(chat(m, "Name three colours."), with_stops(&[&stop]))
        .unwrap();
    let mut text = String::new();
    let mut generated = 0;
    loop {
        let outs = e.step().unwrap();
        let Some(o) = outs.iter().find(|o| o.id == id && o.token.is_some()) else {
            continue;
        };
        generated += 1;
        text.push_str(&o.text);
        if o.finished.is_some() {
            assert_eq!(o.finished, Some(FinishReason::Stop));
            break;
        }
    }
    assert_eq!(
        generated,
        i + 2,
        "finished at the token that completed {stop:?}"
    );
    assert_eq!(text, full[..cut], "cut before {stop:?}");
    assert!(!e.has_unfinished());
    assert_eq!(
        e.stats().pool.active,
        0,
        "blocks released in the stopping step"
    );
}

#[test]
fn a_held_back_prefix_that_does_not_match_is_released() {
    let Some(m) = loaded() else { return };
    let pieces = reference_pieces(m);
    let full = pieces.concat();
    // A token ending with a character c that the next token's text does not end with;
    // "c\u{7}" never occurs, so c is held back at token i and released at token i + 1.
    let i = (0..pieces.len() - 1)
        .find(|&i| {
            let c = last_char(&pieces[i]);
            !c.is_empty() && !pieces[i + 1].is_empty() && !pieces[i + 1].ends_with(c)
        })
        .expect("a suitable token");
    let c = last_char(&pieces[i]);
    let stop = format!("{c}\u{7}");
    assert!(!full.contains(&stop));

    let got = texts(&outputs(
        &mut text_engine(m),
        chat(m, "Name three colours."),
        with_stops(&[&stop]),
    ));
    assert_eq!(got.concat(), full, "everything released in the end");
    let upto = |p: &[String], j: usize| p[..=j].concat();
    assert_eq!(
        upto(&got, i),
        upto(&pieces, i)[..upto(&pieces, i).len() - c.len()],
        "{c:?} held back"
    );
    assert_eq!(upto(&got, i + 1), upto(&pieces, i + 1), "and released");
}

#[test]
fn a_stop_string_in_the_first_token_frees_the_blocks_at_once() {
    let Some(m) = loaded() else { return };
    let pieces = reference_pieces(m);
    let stop = first_char(&pieces[0]).to_string();
    assert!(!stop.is_empty(), "the reply starts with text");

    // Another request runs beside it, in lockstep with a twin engine where it runs alone.
    let (mut alone, mut both) = (text_engine(m), text_engine(m));
    let other = chat(m, "What is 2 + 3?");
    alone
        .add_request(other.clone(), SamplingParams::greedy(8))
        .unwrap();
    both.add_request(other, SamplingParams::greedy(8)).unwrap();
    alone.step().unwrap();
    both.step().unwrap();
    let id = both
        .add_request(chat(m, "Name three colours."), with_stops(&[&stop]))
        .unwrap();
    alone.step().unwrap();
    let outs = both.step().unwrap();
    let o = outs
        .iter()
        .find(|o| o.id == id)
        .expect("prefilled and sampled in one step");
    assert!(o.token.is_some());
    assert_eq!(o.text, "");
    assert_eq!(o.finished, Some(FinishReason::Stop));
    assert_eq!(
        both.stats().pool.active,
        alone.stats().pool.active,
        "its blocks are freed in the step that stopped it"
    );
    assert!(both.has_unfinished(), "the other request runs on");
}

#[test]
fn stop_strings_without_a_tokenizer_are_refused() {
    let Some(m) = loaded() else { return };
    let mut plain = engine(m, EngineConfig::default());
    assert_eq!(
        plain.add_request(vec![1, 2, 3], with_stops(&["x"])),
        Err(EngineError::StopStringsNeedTokenizer)
    );
    let outs = outputs(&mut plain, vec![1, 2, 3], SamplingParams::greedy(2));
    assert!(
        outs.iter().all(|o| o.text.is_empty()),
        "no text without a tokenizer"
    );
    assert!(matches!(
        text_engine(m).add_request(vec![1, 2, 3], with_stops(&[""])),
        Err(EngineError::Sampling(_))
    ));
}
