//! What `kvmesh bench` sends: sessions of turns, from a seeded generator or a trace.
//!
//! Every workload is a list of [`Session`]s: a system prompt (maybe shared with other
//! sessions) and one or more user turns, each with the output length to ask for. A
//! single-turn session is one request; a multi-turn session's turn `k + 1` is sent only after
//! turn `k` answered, with the whole history (the real answers included), as a chat client
//! does. Text is made of common English words drawn from a seeded stream, one word per
//! requested token: BPE tokenizers write most such words (with their leading space) as one
//! token, so lengths land close to what was asked (the server's `usage` reports the exact
//! counts, and the report uses those).
//!
//! | workload | sessions |
//! |---|---|
//! | `shared-prompt` | one turn each: a system prompt all requests share, then a unique question |
//! | `multi-turn` | `--turns` turns each, a shared system prompt, conversations interleaved |
//! | `rag` | one turn each: one of `--documents` long documents, then a question |
//! | `trace` | a Mooncake-format trace: each hash id becomes the same block of text wherever it appears, so equal ids mean equal prefixes; timestamps kept (scaled) |

use std::path::Path;

use anyhow::{Context, Result};
use kvmesh_sim::{read_mooncake_file, Rng};

/// Common words, each one token with a leading space in GPT-style BPE vocabularies.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "over",
    "new",
    "sound",
    "take",
    "only",
    "little",
    "work",
    "know",
    "place",
    "year",
    "live",
    "me",
    "back",
    "give",
    "most",
    "very",
    "after",
    "thing",
    "our",
    "just",
    "name",
    "good",
    "sentence",
    "man",
    "think",
    "say",
    "great",
    "where",
    "help",
    "through",
    "much",
    "before",
    "line",
    "right",
    "too",
    "mean",
    "old",
    "any",
    "same",
    "tell",
    "boy",
    "follow",
    "came",
    "want",
    "show",
    "also",
    "around",
    "form",
    "three",
    "small",
    "set",
    "put",
    "end",
    "does",
    "another",
    "well",
    "large",
    "must",
    "big",
    "even",
    "such",
    "because",
    "turn",
    "here",
    "why",
    "ask",
    "went",
    "men",
    "read",
    "need",
    "land",
    "different",
    "home",
    "us",
    "move",
    "try",
    "kind",
    "hand",
    "picture",
    "again",
    "change",
    "off",
    "play",
    "spell",
    "air",
    "away",
    "animal",
    "house",
    "point",
    "page",
    "letter",
    "mother",
    "answer",
    "found",
    "study",
    "still",
    "learn",
    "should",
    "world",
];

/// One user turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The user's message.
    pub text: String,
    /// Tokens to generate.
    pub max_tokens: u32,
}

/// A conversation (one turn for single-request workloads).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The system prompt, if any.
    pub system: Option<String>,
    /// The user turns, in order.
    pub turns: Vec<Turn>,
    /// When its first turn may be sent, in seconds from the start (traces); `None` follows
    /// the arrival process.
    pub at: Option<f64>,
}

/// Settings of the generated workloads.
#[derive(Debug, Clone)]
pub struct GenSettings {
    /// Requests in all (turns over all sessions).
    pub requests: usize,
    /// Tokens of the shared system prompt (shared-prompt, multi-turn).
    pub shared_prefix_tokens: usize,
    /// Tokens of each user turn / question.
    pub prompt_tokens: usize,
    /// Tokens to generate per request.
    pub output_tokens: u32,
    /// Turns per conversation (multi-turn).
    pub turns: usize,
    /// Documents (rag).
    pub documents: usize,
    /// Tokens per document (rag).
    pub document_tokens: usize,
    /// Seed.
    pub seed: u64,
}

/// `count` seeded words.
pub fn words(rng: &mut Rng, count: usize) -> String {
    let mut out = String::with_capacity(count * 6);
    for i in 0..count {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    out
}

/// One system prompt shared by every request, then a unique question each.
pub fn shared_prompt(s: &GenSettings) -> Vec<Session> {
    let mut rng = Rng::new(s.seed);
    let system = words(&mut rng, s.shared_prefix_tokens);
    (0..s.requests)
        .map(|_| Session {
            system: Some(system.clone()),
            turns: vec![Turn {
                text: words(&mut rng, s.prompt_tokens),
                max_tokens: s.output_tokens,
            }],
            at: None,
        })
        .collect()
}

/// Conversations of `turns` turns under one system prompt.
pub fn multi_turn(s: &GenSettings) -> Vec<Session> {
    let mut rng = Rng::new(s.seed ^ 0x6d75_6c74);
    let system = words(&mut rng, s.shared_prefix_tokens);
    let turns = s.turns.max(1);
    let sessions = s.requests.div_ceil(turns);
    (0..sessions)
        .map(|i| {
            let n = turns.min(s.requests - i * turns);
            Session {
                system: Some(system.clone()),
                turns: (0..n)
                    .map(|_| Turn {
                        text: words(&mut rng, s.prompt_tokens),
                        max_tokens: s.output_tokens,
                    })
                    .collect(),
                at: None,
            }
        })
        .collect()
}

/// A few long documents; each request asks a question about one (uniformly drawn).
pub fn rag(s: &GenSettings) -> Vec<Session> {
    let mut rng = Rng::new(s.seed ^ 0x0072_6167);
    let docs: Vec<String> = (0..s.documents.max(1))
        .map(|_| words(&mut rng, s.document_tokens))
        .collect();
    (0..s.requests)
        .map(|_| {
            let doc = &docs[rng.below(docs.len() as u64) as usize];
            Session {
                system: None,
                turns: vec![Turn {
                    text: format!("{doc}\n\nQuestion: {}", words(&mut rng, s.prompt_tokens)),
                    max_tokens: s.output_tokens,
                }],
                at: None,
            }
        })
        .collect()
}

/// Scaling of a Mooncake trace to a small model.
#[derive(Debug, Clone, Copy)]
pub struct TraceScale {
    /// Tokens each 512-token hash id becomes.
    pub block_tokens: usize,
    /// Factor on output lengths.
    pub output_scale: f64,
    /// Factor on timestamps (0.5 replays twice as fast).
    pub time_scale: f64,
    /// Longest prompt kept, in tokens (longer prompts are cut, whole blocks first).
    pub max_prompt_tokens: usize,
    /// Most requests replayed.
    pub max_requests: usize,
}

/// A Mooncake-format trace, scaled: each hash id becomes `block_tokens` words drawn from a
/// stream seeded by the id, so requests sharing leading ids share leading text.
pub fn trace(path: &Path, scale: TraceScale) -> Result<Vec<Session>> {
    let records = read_mooncake_file(path)
        .with_context(|| format!("reading the trace {}", path.display()))?;
    let per_block = scale.block_tokens.max(1);
    let max_blocks = (scale.max_prompt_tokens / per_block).max(1);
    Ok(records
        .iter()
        .take(scale.max_requests)
        .map(|r| {
            let blocks: Vec<String> = r
                .hash_ids
                .iter()
                .take(max_blocks)
                .map(|&id| words(&mut Rng::new(id ^ 0x6b76_6d65_7368), per_block))
                .collect();
            let out = ((r.output_length as f64 * scale.output_scale).round() as u32).max(1);
            Session {
                system: None,
                turns: vec![Turn {
                    text: blocks.join(" "),
                    max_tokens: out,
                }],
                at: Some(r.timestamp_ms as f64 / 1e3 * scale.time_scale),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GenSettings {
        GenSettings {
            requests: 10,
            shared_prefix_tokens: 50,
            prompt_tokens: 8,
            output_tokens: 4,
            turns: 3,
            documents: 2,
            document_tokens: 40,
            seed: 1,
        }
    }

    #[test]
    fn generated_workloads_have_the_asked_shape() {
        let s = settings();
        let shared = shared_prompt(&s);
        assert_eq!(shared.len(), 10);
        assert!(shared.iter().all(|x| x.system == shared[0].system));
        assert_ne!(shared[0].turns[0].text, shared[1].turns[0].text);
        assert_eq!(shared[0].system.as_ref().unwrap().split(' ').count(), 50);

        let mt = multi_turn(&s);
        assert_eq!(mt.iter().map(|x| x.turns.len()).sum::<usize>(), 10);
        assert_eq!(mt.len(), 4);
        assert_eq!(mt[3].turns.len(), 1);

        let r = rag(&s);
        assert_eq!(r.len(), 10);
        let docs: std::collections::HashSet<_> = r
            .iter()
            .map(|x| x.turns[0].text.split("\n\n").next().unwrap().to_string())
            .collect();
        assert!(docs.len() <= 2);
        // Deterministic.
        assert_eq!(shared_prompt(&s), shared);
    }

    #[test]
    fn trace_ids_become_shared_text() {
        let dir = std::env::temp_dir().join(format!("kvmesh-loadgen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        std::fs::write(
            &path,
            "{\"timestamp\": 0, \"input_length\": 1024, \"output_length\": 64, \"hash_ids\": [7, 8]}\n\
             {\"timestamp\": 1500, \"input_length\": 1024, \"output_length\": 64, \"hash_ids\": [7, 9]}\n",
        )
        .unwrap();
        let scale = TraceScale {
            block_tokens: 5,
            output_scale: 0.5,
            time_scale: 2.0,
            max_prompt_tokens: 100,
            max_requests: 10,
        };
        let t = trace(&path, scale).unwrap();
        assert_eq!(t.len(), 2);
        let a: Vec<&str> = t[0].turns[0].text.split(' ').collect();
        let b: Vec<&str> = t[1].turns[0].text.split(' ').collect();
        assert_eq!(a.len(), 10);
        assert_eq!(a[..5], b[..5]);
        assert_ne!(a[5..], b[5..]);
        assert_eq!(t[1].at, Some(3.0));
        assert_eq!(t[0].turns[0].max_tokens, 32);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
