//! Seeded workload generators: shared system prompts, multi-turn chat, retrieval-augmented
//! generation.
//!
//! Each generator is a plain config struct (public fields, documented defaults) whose
//! `generate(block_size)` returns a [`Workload`]; the same config and seed always give the
//! same workload. Prompts are built from [`Segment`]s whose ids are *chained*: a segment's id
//! mixes its parent's id with its own content id, so two prompts share a segment's id exactly
//! when they share everything up to its end, which is the rule [`crate::BlockMapper`] relies
//! on.
//!
//! | generator | shape | what it stresses |
//! |---|---|---|
//! | [`SharedPrefix`] | groups of prompts, each group sharing a long system prompt (SGLang's `generated-shared-prefix` benchmark, same defaults) | prefix reuse across requests; routers must not herd a group onto one worker |
//! | [`MultiTurn`] | conversations whose every turn resends the whole history | session affinity: a conversation's KV is on the worker that served its last turn |
//! | [`Rag`] | a system prompt, then k documents drawn by Zipf popularity, then a query | partial reuse: only prompts that retrieve the same top documents share more than the system prompt |
//!
//! Arrivals are Poisson (exponential gaps) at the configured rate, except that a
//! conversation's later turns follow its previous turn after an exponential think time (open
//! loop: a turn does not wait for the previous answer, as in a trace replay).

use crate::rng::{Rng, Zipf};
use crate::workload::{Segment, Workload, WorkloadBuilder, WorkloadError};

/// Mixes a parent segment id with a content id (SplitMix64's finaliser over both).
fn chain(parent: u64, content: u64) -> u64 {
    let mut z = parent
        .rotate_left(17)
        .wrapping_add(content.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Content ids: distinct kinds of content never collide.
mod content {
    pub const SYSTEM: u64 = 1 << 56;
    pub const QUESTION: u64 = 2 << 56;
    pub const USER: u64 = 3 << 56;
    pub const ANSWER: u64 = 4 << 56;
    pub const DOCUMENT: u64 = 5 << 56;
    pub const ROOT: u64 = 0x5eed;
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9).round() as u64
}

/// Groups of prompts sharing a system prompt (SGLang `bench_serving --dataset-name
/// generated-shared-prefix` defaults: 64 groups x 16 prompts, 2,048-token system prompt,
/// 128-token question, 256 output tokens), in random order, Poisson arrivals.
///
/// At 512-token blocks the ideal block hit ratio is `(p - 1) / p x s / (s + 1)` for `p`
/// prompts per group and `s` system blocks: 0.75 with the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPrefix {
    /// Groups (distinct system prompts). Default 64.
    pub groups: usize,
    /// Prompts per group. Default 16.
    pub prompts_per_group: usize,
    /// System prompt tokens. Default 2,048.
    pub system_tokens: u32,
    /// Question tokens (unique per prompt). Default 128.
    pub question_tokens: u32,
    /// Output tokens. Default 256.
    pub output_tokens: u32,
    /// Mean arrivals per second. Default 8.
    pub rate_per_s: f64,
    /// Seed. Default 0.
    pub seed: u64,
}

impl Default for SharedPrefix {
    fn default() -> Self {
        SharedPrefix {
            groups: 64,
            prompts_per_group: 16,
            system_tokens: 2048,
            question_tokens: 128,
            output_tokens: 256,
            rate_per_s: 8.0,
            seed: 0,
        }
    }
}

impl SharedPrefix {
    /// About `n` requests: `ceil(n / prompts_per_group)` groups.
    pub fn with_requests(mut self, n: usize) -> Self {
        self.groups = n.div_ceil(self.prompts_per_group.max(1)).max(1);
        self
    }

    /// The workload, hashed at `block_size`.
    pub fn generate(&self, block_size: u32) -> Result<Workload, WorkloadError> {
        let mut rng = Rng::new(self.seed);
        let mut order: Vec<(usize, usize)> = (0..self.groups)
            .flat_map(|g| (0..self.prompts_per_group).map(move |p| (g, p)))
            .collect();
        rng.shuffle(&mut order);
        let mut b = WorkloadBuilder::new(block_size)?;
        let mut t = 0.0;
        let root = chain(content::ROOT, self.seed);
        for (i, &(g, p)) in order.iter().enumerate() {
            if i > 0 {
                t += rng.exponential(1.0 / self.rate_per_s);
            }
            let system = chain(root, content::SYSTEM | g as u64);
            let question = chain(
                system,
                content::QUESTION | (g * self.prompts_per_group + p) as u64,
            );
            let segments = [
                Segment {
                    id: system,
                    tokens: self.system_tokens,
                },
                Segment {
                    id: question,
                    tokens: self.question_tokens,
                },
            ];
            b.push(
                secs_to_ns(t),
                &segments,
                u64::from(self.output_tokens),
                Some(g as u64),
            )?;
        }
        Ok(b.build(format!(
            "shared-prefix ({} groups x {}, system {} + question {} tokens, seed {})",
            self.groups,
            self.prompts_per_group,
            self.system_tokens,
            self.question_tokens,
            self.seed
        )))
    }
}

/// Conversations: turn `k` sends the system prompt, every earlier user turn and answer, and a
/// new user turn; its answer is `output` tokens long.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiTurn {
    /// Conversations. Default 200.
    pub conversations: usize,
    /// Turns per conversation. Default 5.
    pub turns: usize,
    /// System prompt tokens, shared by every conversation. Default 512.
    pub system_tokens: u32,
    /// User turn tokens, uniform in `[min, max]`. Default `(64, 512)`.
    pub user_tokens: (u32, u32),
    /// Answer tokens, uniform in `[min, max]`. Default `(64, 512)`.
    pub output_tokens: (u32, u32),
    /// New conversations per second (Poisson). Default 1.
    pub conversation_rate_per_s: f64,
    /// Mean seconds between a turn's arrival and the next turn's (exponential). Default 20.
    pub think_time_s: f64,
    /// Seed. Default 0.
    pub seed: u64,
}

impl Default for MultiTurn {
    fn default() -> Self {
        MultiTurn {
            conversations: 200,
            turns: 5,
            system_tokens: 512,
            user_tokens: (64, 512),
            output_tokens: (64, 512),
            conversation_rate_per_s: 1.0,
            think_time_s: 20.0,
            seed: 0,
        }
    }
}

impl MultiTurn {
    /// About `n` requests: `ceil(n / turns)` conversations.
    pub fn with_requests(mut self, n: usize) -> Self {
        self.conversations = n.div_ceil(self.turns.max(1)).max(1);
        self
    }

    /// The workload, hashed at `block_size`.
    pub fn generate(&self, block_size: u32) -> Result<Workload, WorkloadError> {
        let mut rng = Rng::new(self.seed);
        let mut b = WorkloadBuilder::new(block_size)?;
        let root = chain(content::ROOT, self.seed);
        let system = chain(root, content::SYSTEM);
        let mut start = 0.0;
        let mut segments = Vec::new();
        for c in 0..self.conversations {
            if c > 0 {
                start += rng.exponential(1.0 / self.conversation_rate_per_s);
            }
            segments.clear();
            segments.push(Segment {
                id: system,
                tokens: self.system_tokens,
            });
            let mut t = start;
            let mut parent = system;
            for turn in 0..self.turns {
                if turn > 0 {
                    t += rng.exponential(self.think_time_s);
                }
                let key = ((c as u64) << 16) | turn as u64;
                parent = chain(parent, content::USER | key);
                segments.push(Segment {
                    id: parent,
                    tokens: rng
                        .between(u64::from(self.user_tokens.0), u64::from(self.user_tokens.1))
                        as u32,
                });
                let answer = rng.between(
                    u64::from(self.output_tokens.0),
                    u64::from(self.output_tokens.1),
                );
                b.push(secs_to_ns(t), &segments, answer, Some(c as u64))?;
                // The next turn resends this answer.
                parent = chain(parent, content::ANSWER | key);
                segments.push(Segment {
                    id: parent,
                    tokens: answer as u32,
                });
            }
        }
        Ok(b.build(format!(
            "multi-turn ({} conversations x {} turns, seed {})",
            self.conversations, self.turns, self.seed
        )))
    }
}

/// Retrieval-augmented generation: a system prompt, `docs_per_query` distinct documents
/// drawn by Zipf popularity (most relevant first), then a unique query.
#[derive(Debug, Clone, PartialEq)]
pub struct Rag {
    /// Requests. Default 1,000.
    pub requests: usize,
    /// Documents in the corpus. Default 2,000.
    pub documents: usize,
    /// Tokens per document. Default 1,024.
    pub document_tokens: u32,
    /// Documents per prompt (at most `documents`). Default 4.
    pub docs_per_query: usize,
    /// Zipf exponent of document popularity. Default 1.1.
    pub zipf_exponent: f64,
    /// System prompt tokens. Default 256.
    pub system_tokens: u32,
    /// Query tokens (unique per request). Default 64.
    pub query_tokens: u32,
    /// Output tokens. Default 128.
    pub output_tokens: u32,
    /// Mean arrivals per second. Default 4.
    pub rate_per_s: f64,
    /// Seed. Default 0.
    pub seed: u64,
}

impl Default for Rag {
    fn default() -> Self {
        Rag {
            requests: 1000,
            documents: 2000,
            document_tokens: 1024,
            docs_per_query: 4,
            zipf_exponent: 1.1,
            system_tokens: 256,
            query_tokens: 64,
            output_tokens: 128,
            rate_per_s: 4.0,
            seed: 0,
        }
    }
}

impl Rag {
    /// `n` requests.
    pub fn with_requests(mut self, n: usize) -> Self {
        self.requests = n;
        self
    }

    /// The workload, hashed at `block_size`.
    pub fn generate(&self, block_size: u32) -> Result<Workload, WorkloadError> {
        let mut rng = Rng::new(self.seed);
        let zipf = Zipf::new(self.documents.max(1), self.zipf_exponent);
        let k = self.docs_per_query.min(self.documents);
        let mut b = WorkloadBuilder::new(block_size)?;
        let root = chain(content::ROOT, self.seed);
        let system = chain(root, content::SYSTEM);
        let mut t = 0.0;
        let mut docs = Vec::with_capacity(k);
        let mut segments = Vec::with_capacity(k + 2);
        for i in 0..self.requests {
            if i > 0 {
                t += rng.exponential(1.0 / self.rate_per_s);
            }
            docs.clear();
            while docs.len() < k {
                let d = zipf.sample(&mut rng);
                if !docs.contains(&d) {
                    docs.push(d);
                }
            }
            // Most popular (most relevant) first, as a retriever ranks them.
            docs.sort_unstable();
            segments.clear();
            segments.push(Segment {
                id: system,
                tokens: self.system_tokens,
            });
            let mut parent = system;
            for &d in &docs {
                parent = chain(parent, content::DOCUMENT | d as u64);
                segments.push(Segment {
                    id: parent,
                    tokens: self.document_tokens,
                });
            }
            segments.push(Segment {
                id: chain(parent, content::QUESTION | i as u64),
                tokens: self.query_tokens,
            });
            b.push(
                secs_to_ns(t),
                &segments,
                u64::from(self.output_tokens),
                None,
            )?;
        }
        Ok(b.build(format!(
            "rag ({} requests, {} of {} documents, zipf {}, seed {})",
            self.requests, k, self.documents, self.zipf_exponent, self.seed
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_defaults_match_the_sglang_shape() {
        let w = SharedPrefix::default().generate(512).unwrap();
        assert_eq!(w.len(), 1024);
        assert!(w.requests().iter().all(|r| r.prompt_tokens == 2176));
        let ideal = w.ideal();
        assert!((ideal.block_hit_ratio() - 0.75).abs() < 1e-9, "{ideal:?}");
        // Poisson at 8 req/s: ~128 s.
        let secs = w.duration_ns() as f64 / 1e9;
        assert!((100.0..160.0).contains(&secs), "{secs}");
    }

    #[test]
    fn generators_are_deterministic_per_seed() {
        let a = MultiTurn::default().generate(16).unwrap();
        let b = MultiTurn::default().generate(16).unwrap();
        assert_eq!(a.requests(), b.requests());
        let c = MultiTurn {
            seed: 1,
            ..MultiTurn::default()
        }
        .generate(16)
        .unwrap();
        assert_ne!(a.requests(), c.requests());
        let r1 = Rag::default().with_requests(50).generate(64).unwrap();
        let r2 = Rag::default().with_requests(50).generate(64).unwrap();
        assert_eq!(r1.requests(), r2.requests());
        let s1 = SharedPrefix::default()
            .with_requests(40)
            .generate(16)
            .unwrap();
        assert_eq!(s1.len(), 48);
        assert_eq!(
            s1.requests(),
            SharedPrefix::default()
                .with_requests(40)
                .generate(16)
                .unwrap()
                .requests()
        );
    }

    #[test]
    fn a_turn_extends_its_previous_turn() {
        let w = MultiTurn {
            conversations: 3,
            turns: 4,
            ..MultiTurn::default()
        }
        .generate(16)
        .unwrap();
        assert_eq!(w.len(), 12);
        for session in 0..3 {
            let turns: Vec<_> = w
                .requests()
                .iter()
                .filter(|r| r.session == Some(session))
                .collect();
            assert_eq!(turns.len(), 4);
            for pair in turns.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                assert!(b.arrival_ns >= a.arrival_ns);
                assert!(b.prompt_tokens > a.prompt_tokens + a.output_tokens);
                assert_eq!(
                    a.hashes[..],
                    b.hashes[..a.hashes.len()],
                    "history is a prefix"
                );
            }
        }
        // Different conversations share only the system prompt (512 tokens = 32 blocks).
        let first: Vec<_> = w
            .requests()
            .iter()
            .filter(|r| r.session != w.requests()[0].session)
            .collect();
        let shared = w.requests()[0]
            .hashes
            .iter()
            .zip(&first[0].hashes)
            .take_while(|(x, y)| x == y)
            .count();
        assert_eq!(shared, 32);
    }

    #[test]
    fn rag_shares_the_system_prompt_and_popular_documents() {
        let w = Rag::default().with_requests(400).generate(256).unwrap();
        let ideal = w.ideal();
        // Every prompt after the first reuses at least the system prompt (1 of 18 blocks).
        assert!(ideal.block_hit_ratio() > 1.0 / 18.0, "{ideal:?}");
        assert!(ideal.block_hit_ratio() < 0.9, "{ideal:?}");
        assert!(w
            .requests()
            .iter()
            .all(|r| r.prompt_tokens == 256 + 4 * 1024 + 64));
    }
}
