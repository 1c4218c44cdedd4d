//! Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.
//!
//! Order of operations (the one vLLM and llama.cpp users expect): temperature 0 means greedy
//! (argmax, lowest id on ties) and ignores the rest; otherwise logits are divided by the
//! temperature, the `top_k` largest are kept, then the smallest set whose probability reaches
//! `top_p`, and one token is drawn from what remains. Each request has its own random stream
//! (seeded by `seed`, or by its request id), so a request's output does not depend on what
//! else is in the batch.

/// How to sample one request's tokens, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy decoding (default 0).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables (default 0).
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability; 1 disables (default 1).
    pub top_p: f32,
    /// Seed of the request's random stream; `None` derives it from the request id.
    pub seed: Option<u64>,
    /// Most tokens to generate (default 256).
    pub max_tokens: usize,
    /// Fewest tokens to generate before an end-of-sequence or stop token may end the request
    /// (default 0): until then those tokens are masked out of sampling, as vLLM's
    /// `min_tokens`. Unlike vLLM, stop strings are not delayed: they still end the request.
    pub min_tokens: usize,
    /// Extra token ids that end generation (the model's end-of-turn tokens always do, unless
    /// `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation when the output text contains one; the text is cut before
    /// the match (vLLM's default `include_stop_str_in_output=false`). They need an engine with
    /// a tokenizer ([`Engine::with_tokenizer`](crate::Engine::with_tokenizer)); none may be
    /// empty.
    pub stop_strings: Vec<String>,
    /// Keep generating past the model's end-of-sequence tokens (for benchmarks); the
    /// request's own `stop_token_ids` and `stop_strings` still apply, as in vLLM.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            max_tokens: 256,
            min_tokens: 0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks ranges; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".to_string());
        }
        if self.min_tokens > self.max_tokens {
            return Err(format!(
                "min_tokens ({}) must not exceed max_tokens ({})",
                self.min_tokens, self.max_tokens
            ));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return Err("stop strings must not be empty".to_string());
        }
        Ok(())
    }
}

/// A request's random stream (splitmix64: tiny state, good statistical quality).
#[derive(Debug, Clone)]
pub struct Sampler {
    state: u64,
}

impl Sampler {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Sampler { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks a token from `logits` under `params`.
    pub fn sample(&mut self, logits: &[f32], params: &SamplingParams) -> u32 {
        if params.temperature == 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / params.temperature))
            .collect();
        if params.top_k > 0 && params.top_k < cand.len() {
            cand.select_nth_unstable_by(params.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(params.top_k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        for p in &mut probs {
            *p /= total;
        }
        if params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    acc += p;
                    acc >= params.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut target = self.next_unit() * total;
        for (i, p) in probs.iter().enumerate() {
            if target < *p {
                return cand[i].0;
            }
            target -= p;
        }
        cand[probs.len() - 1].0
    }
}

/// The index of the largest logit; the lowest index among equals. NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_with_low_index_on_ties() {
        let mut s = Sampler::new(0);
        let p = SamplingParams::greedy(1);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &p), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draw() {
        let logits = [0.0, 1.0, 2.0, 3.0, 4.0];
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(1);
        for _ in 0..200 {
            assert!(s.sample(&logits, &params) >= 3);
        }
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..SamplingParams::default()
        };
        // p(4) = 0.64 alone reaches 0.5.
        for _ in 0..200 {
            assert_eq!(s.sample(&logits, &params), 4);
        }
    }

    #[test]
    fn draws_follow_the_softmax_and_are_reproducible() {
        let logits = [0.0, (2.0f32).ln(), (3.0f32).ln()]; // probabilities 1/6, 2/6, 3/6
        let params = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(42);
        let mut counts = [0u32; 3];
        for _ in 0..6000 {
            counts[s.sample(&logits, &params) as usize] += 1;
        }
        for (c, want) in counts.iter().zip([1000.0, 2000.0, 3000.0]) {
            assert!((f64::from(*c) - want).abs() < 200.0, "{counts:?}");
        }
        let a: Vec<u32> = (0..20)
            .map(|_| Sampler::new(7).sample(&logits, &params))
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert!(SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        }
        .validate()
        .is_err());
    }
}
