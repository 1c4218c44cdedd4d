//! Fuzzes the server's request decoding: a body as `/v1/completions` and as
//! `/v1/chat/completions` would parse it, then the checks that turn it into engine settings.
//!
//! Contract checked: nothing panics; a request that passes `sampling` and `params_for` gives
//! engine settings the engine accepts (`SamplingParams::validate`) that fit the context
//! (prompt + max_tokens <= max_len, min_tokens <= max_tokens); every refusal is a 400 whose
//! message is not empty.
//!
//! Input: the first two bytes choose the prompt length (0-1023) and the context (1-1024), the
//! rest is the body.

#![no_main]

use kvmesh_server::openai::{ChatRequest, CommonFields, CompletionRequest, RequestLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let prompt_len = usize::from(data[0]) * 4;
    let max_len = usize::from(data[1]) * 4 + 1;
    let body = &data[2..];
    if let Ok(r) = serde_json::from_slice::<CompletionRequest>(body) {
        check(&r.common, prompt_len, max_len);
    }
    if let Ok(r) = serde_json::from_slice::<ChatRequest>(body) {
        check(&r.common, prompt_len, max_len);
        for (i, m) in r.messages.iter().enumerate() {
            if let Err(e) = m.text(i) {
                assert_eq!(e.status, 400);
            }
        }
    }
});

fn check(common: &CommonFields, prompt_len: usize, max_len: usize) {
    let sampling = match common.sampling(&RequestLimits::default()) {
        Ok(s) => s,
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(!e.message.is_empty() && e.param.is_some(), "{e:?}");
            return;
        }
    };
    assert!(sampling.n >= 1 && sampling.n <= RequestLimits::default().max_n);
    for choice in 0..sampling.n {
        match sampling.params_for(prompt_len, max_len, choice, "prompt") {
            Ok(p) => {
                assert!(p.validate().is_ok(), "{p:?}");
                assert!(prompt_len + p.max_tokens <= max_len, "{p:?} over {max_len}");
                assert!(p.min_tokens <= p.max_tokens);
            }
            Err(e) => {
                assert_eq!(e.status, 400);
                assert!(!e.message.is_empty());
            }
        }
    }
}
