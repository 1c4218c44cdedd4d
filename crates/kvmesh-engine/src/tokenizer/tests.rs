//! Unit tests on a small synthetic vocabulary, plus checks of the byte table against the
//! `tokenizers` crate's own decoder on the real model (skipped when it is absent).

use super::*;

/// GGUF metadata values for [`gguf`].
enum V {
    Str(&'static str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file with the given metadata and no tensors.
fn gguf(entries: &[(&str, V)]) -> GgufFile {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        string(&mut b, k);
        match v {
            V::Str(s) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                string(&mut b, s);
            }
            V::U32(u) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&u.to_le_bytes());
            }
            V::Bool(x) => {
                b.extend_from_slice(&7u32.to_le_bytes());
                b.push(u8::from(*x));
            }
            V::Strs(items) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut b, s);
                }
            }
            V::I32s(items) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    b.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
    }
    GgufFile::parse(b).expect("test GGUF parses")
}

const SPECIALS: [&str; 4] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"];

/// A small SmolLM-like vocabulary: 3 control tokens, 1 user-defined, the 256 byte symbols,
/// then merged tokens. Ids: 0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>`, 3 `<tool>`.
fn vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3, 3, 3, 4];
    for b in 0..=255u8 {
        tokens.push(byte_level::byte_to_char(b).to_string());
        types.push(1);
    }
    let merges = ["h e", "Ġ t", "Ġt he", "1 2", "l l", "Ġ w"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (
        tokens,
        types,
        merges.iter().map(|m| m.to_string()).collect(),
    )
}

/// The metadata of the small vocabulary with `pre`, with `overrides` replacing or adding keys.
fn entries(pre: &'static str, overrides: Vec<(&'static str, V)>) -> Vec<(&'static str, V)> {
    let (tokens, types, merges) = vocab();
    let mut e = vec![
        (key::MODEL, V::Str("gpt2")),
        (key::PRE, V::Str(pre)),
        (key::TOKENS, V::Strs(tokens)),
        (key::TOKEN_TYPE, V::I32s(types)),
        (key::MERGES, V::Strs(merges)),
        (key::BOS, V::U32(1)),
        (key::EOS, V::U32(2)),
        (key::UNKNOWN, V::U32(0)),
    ];
    for (k, v) in overrides {
        e.retain(|(old, _)| *old != k);
        e.push((k, v));
    }
    e
}

/// The small vocabulary's tokenizer (also used by other modules' unit tests).
pub(crate) fn small(pre: &'static str) -> Tokenizer {
    Tokenizer::from_gguf(&gguf(&entries(pre, vec![]))).unwrap()
}

fn build_err(overrides: Vec<(&'static str, V)>) -> TokenizerError {
    Tokenizer::from_gguf(&gguf(&entries("smollm", overrides))).unwrap_err()
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_id(s).unwrap()
}

#[test]
fn merges_apply_and_decode_round_trips() {
    let t = small("smollm");
    let ids = t.encode("the the hello", false).unwrap();
    let expected = [
        id(&t, "t"),
        id(&t, "he"),
        id(&t, "Ġthe"),
        id(&t, "Ġ"),
        id(&t, "he"),
    ];
    assert_eq!(&ids[..5], &expected);
    assert_eq!(t.decode(&ids, false).unwrap(), "the the hello");
    assert_eq!(t.vocab_size(), 4 + 256 + 6);
    assert_eq!(t.token_str(id(&t, "Ġthe")), Some("Ġthe"));
    assert_eq!(t.token_bytes(id(&t, "Ġthe")), Some(&b" the"[..]));
    assert_eq!(t.token_str(9999), None);
}

#[test]
fn digits_are_split_only_by_the_smollm_pre_tokenizer() {
    let smollm = small("smollm");
    assert_eq!(
        smollm.encode("12", false).unwrap(),
        [id(&smollm, "1"), id(&smollm, "2")]
    );
    let gpt2 = small("gpt-2");
    assert_eq!(gpt2.encode("12", false).unwrap(), [id(&gpt2, "12")]);
}

#[test]
fn control_tokens_are_atomic_only_with_add_special() {
    let t = small("smollm");
    let text = "<|im_start|>hell<|im_end|>";
    let trusted = t.encode(text, true).unwrap();
    assert_eq!(trusted[0], 1);
    assert_eq!(*trusted.last().unwrap(), 2);
    assert_eq!(trusted, [1, id(&t, "he"), id(&t, "ll"), 2]);
    let plain = t.encode(text, false).unwrap();
    assert!(!plain.contains(&1) && !plain.contains(&2));
    assert_eq!(t.decode(&plain, false).unwrap(), text);
    assert_eq!(t.decode(&trusted, false).unwrap(), text);
    assert_eq!(t.decode(&trusted, true).unwrap(), "hell");
    // User-defined tokens are matched in both modes and kept by a skipping decode.
    assert_eq!(t.encode("<tool>", false).unwrap(), [3]);
    assert_eq!(t.encode("<tool>", true).unwrap(), [3]);
    assert_eq!(t.decode(&[3], true).unwrap(), "<tool>");
    assert!(t.is_special(1) && !t.is_special(3));
}

#[test]
fn leftmost_longest_among_overlapping_specials() {
    let (mut tokens, mut types, merges) = vocab();
    tokens.push("<|im".to_string());
    types.push(3);
    let g = gguf(&entries(
        "smollm",
        vec![
            (key::TOKENS, V::Strs(tokens)),
            (key::TOKEN_TYPE, V::I32s(types.clone())),
            (key::MERGES, V::Strs(merges)),
        ],
    ));
    let t = Tokenizer::from_gguf(&g).unwrap();
    let short = (types.len() - 1) as u32;
    assert_eq!(t.encode("<|im_end|><|im", true).unwrap(), [2, short]);
}

#[test]
fn bytes_without_a_token_are_dropped() {
    let (mut tokens, types, merges) = vocab();
    tokens[4 + 0x04] = "unused-0x04".to_string();
    let g = gguf(&entries(
        "smollm",
        vec![
            (key::TOKENS, V::Strs(tokens)),
            (key::TOKEN_TYPE, V::I32s(types)),
            (key::MERGES, V::Strs(merges)),
        ],
    ));
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(
        t.encode("a\u{4}b", false).unwrap(),
        t.encode("ab", false).unwrap()
    );
}

#[test]
fn bos_and_eos_are_added_only_when_the_model_asks() {
    let t = small("smollm");
    assert_eq!((t.bos(), t.eos()), (Some(1), 2));
    assert!(t.is_eos(2) && !t.is_eos(0));
    assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    let g = gguf(&entries(
        "smollm",
        vec![(key::ADD_BOS, V::Bool(true)), (key::ADD_EOS, V::Bool(true))],
    ));
    let t = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(t.encode("", true).unwrap(), [1, 2]);
    assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn stop_tokens_are_eos_and_end_of_turn_markers() {
    let t = small("smollm");
    assert_eq!(t.stop_tokens(), &[0, 2]);
    assert!(t.is_stop(0) && t.is_stop(2) && !t.is_stop(1));
    let g = gguf(&entries("smollm", vec![(key::EOT, V::U32(3))]));
    assert_eq!(Tokenizer::from_gguf(&g).unwrap().stop_tokens(), &[0, 2, 3]);
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let t = small("smollm");
    let err = t.decode(&[5, 100_000], false).unwrap_err();
    assert!(matches!(
        err,
        CodecError::InvalidTokenId {
            id: 100_000,
            vocab_size: 266
        }
    ));
    assert!(t.decode_stream(false).step(u32::MAX).is_err());
}

#[test]
fn unsupported_models_and_pre_tokenizers_are_named() {
    let e = build_err(vec![(key::MODEL, V::Str("llama"))]);
    assert!(matches!(e, TokenizerError::UnsupportedModel { ref model } if model == "llama"));
    assert!(e.to_string().contains("SentencePiece"));
    let e = build_err(vec![(key::PRE, V::Str("llama-bpe"))]);
    assert!(
        matches!(e, TokenizerError::UnsupportedPreTokenizer { pre: Some(ref p) } if p == "llama-bpe")
    );
}

/// Metadata entries replacing or adding to those of [`entries`].
type Overrides = Vec<(&'static str, V)>;

/// Metadata changes and a check of the error they must cause.
type Case = (Overrides, fn(&TokenizerError) -> bool);

#[test]
fn malformed_metadata_is_a_typed_error() {
    let (tokens, types, merges) = vocab();
    let n = tokens.len();
    let with_merge = |m: &str| {
        let mut all = merges.clone();
        all.push(m.to_string());
        (key::MERGES, V::Strs(all))
    };
    let cases: Vec<Case> = vec![
        (vec![(key::TOKENS, V::Strs(vec![]))], |e| {
            matches!(e, TokenizerError::BadVocabSize { size: 0 })
        }),
        (vec![(key::MODEL, V::U32(2))], |e| {
            matches!(
                e,
                TokenizerError::WrongMetadataType {
                    key: key::MODEL,
                    ..
                }
            )
        }),
        (vec![(key::TOKENS, V::I32s(vec![1, 2]))], |e| {
            matches!(
                e,
                TokenizerError::BadArrayElement {
                    key: key::TOKENS,
                    index: 0,
                    ..
                }
            )
        }),
        (vec![(key::TOKEN_TYPE, V::I32s(types[1..].to_vec()))], |e| {
            matches!(
                e,
                TokenizerError::LengthMismatch {
                    key: key::TOKEN_TYPE,
                    ..
                }
            )
        }),
        (
            vec![(
                key::TOKEN_TYPE,
                V::I32s({
                    let mut t = types.clone();
                    t[7] = 9;
                    t
                }),
            )],
            |e| {
                matches!(
                    e,
                    TokenizerError::BadArrayElement {
                        key: key::TOKEN_TYPE,
                        index: 7,
                        ..
                    }
                )
            },
        ),
        (vec![with_merge("he")], |e| {
            matches!(e, TokenizerError::MalformedMerge { index: 6, .. })
        }),
        (vec![with_merge("h ")], |e| {
            matches!(e, TokenizerError::MalformedMerge { index: 6, .. })
        }),
        (
            vec![with_merge("Ġthe ll")],
            |e| matches!(e, TokenizerError::MergeNotInVocab { index: 6, token, .. } if token == "Ġthell"),
        ),
        (
            vec![with_merge("zz y")],
            |e| matches!(e, TokenizerError::MergeNotInVocab { index: 6, token, .. } if token == "zz"),
        ),
        (vec![(key::EOS, V::U32(n as u32))], |e| {
            matches!(e, TokenizerError::TokenIdOutOfRange { key: key::EOS, .. })
        }),
        (vec![(key::PADDING, V::U32(u32::MAX))], |e| {
            matches!(
                e,
                TokenizerError::TokenIdOutOfRange {
                    key: key::PADDING,
                    ..
                }
            )
        }),
        (vec![(key::ADD_BOS, V::U32(1))], |e| {
            matches!(
                e,
                TokenizerError::WrongMetadataType {
                    key: key::ADD_BOS,
                    ..
                }
            )
        }),
        (
            vec![(
                key::TOKENS,
                V::Strs({
                    let mut t = tokens.clone();
                    t[5] = "<|im_end|>".to_string();
                    t
                }),
            )],
            |e| {
                matches!(
                    e,
                    TokenizerError::DuplicateToken {
                        first: 2,
                        second: 5,
                        ..
                    }
                )
            },
        ),
    ];
    for (i, (overrides, expected)) in cases.into_iter().enumerate() {
        let e = build_err(overrides);
        assert!(expected(&e), "case {i}: {e:?}");
    }
    // Absent keys.
    for k in [key::MODEL, key::TOKENS, key::MERGES, key::EOS] {
        let mut e = entries("smollm", vec![]);
        e.retain(|(old, _)| *old != k);
        let err = Tokenizer::from_gguf(&gguf(&e)).unwrap_err();
        assert!(
            matches!(err, TokenizerError::MissingMetadata { key } if key == k),
            "{k}: {err:?}"
        );
    }
    let mut e = entries("smollm", vec![(key::ADD_BOS, V::Bool(true))]);
    e.retain(|(old, _)| *old != key::BOS);
    let err = Tokenizer::from_gguf(&gguf(&e)).unwrap_err();
    assert!(matches!(
        err,
        TokenizerError::MissingMetadata { key: key::BOS }
    ));
}

#[test]
fn missing_token_types_mean_all_normal() {
    let mut e = entries("smollm", vec![]);
    e.retain(|(old, _)| *old != key::TOKEN_TYPE);
    let t = Tokenizer::from_gguf(&gguf(&e)).unwrap();
    assert_ne!(t.encode("<|im_start|>", true).unwrap(), [1]);
    assert_eq!(t.stop_tokens(), &[2]);
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<DecodeStream>();
}

/// The real model, if present.
fn real_model() -> Option<GgufFile> {
    let dir = std::env::var_os("KVMESH_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/kvmesh/models"))
        })?;
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (set KVMESH_MODELS_DIR)",
            path.display()
        );
        return None;
    }
    Some(GgufFile::open(&path).expect("model parses"))
}

/// The byte table must agree with the `tokenizers` crate's `ByteLevel` decoder on every token,
/// and on sequences that cut characters, since `decode` and `DecodeStream` use only the table.
#[test]
fn byte_table_matches_the_crate_decoder_on_every_real_token() {
    let Some(g) = real_model() else { return };
    let t = Tokenizer::from_gguf(&g).unwrap();
    for id in 0..t.vocab_size() as u32 {
        let ours = t.decode(&[id], false).unwrap();
        let theirs = t.bpe.decode(&[id], false).unwrap();
        assert_eq!(ours, theirs, "token {id} {:?}", t.token_str(id));
    }
    // Pseudo-random sequences (a fixed LCG) mix byte tokens that split characters.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..2000 {
        let ids: Vec<u32> = (0..8)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % t.vocab_size() as u64) as u32
            })
            .collect();
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            t.bpe.decode(&ids, false).unwrap()
        );
    }
}
