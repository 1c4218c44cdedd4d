//! The tokenizer on the real SmolLM2-135M-Instruct GGUF: known-answer ids, round trips,
//! special tokens, streaming and the chat template. Every test prints a message and passes
//! when the model file is absent (looked for in `$KVMESH_MODELS_DIR`, else
//! `~/.cache/kvmesh/models`).

use std::path::PathBuf;
use std::time::Instant;

use kvmesh_engine::{ChatMessage, ChatTemplate, GgufFile, Tokenizer};

mod common;

use common::{model_path, MODEL_FILE};

/// The model's GGUF and tokenizer, or `None` (with a message) when the file is absent.
fn load() -> Option<(GgufFile, Tokenizer)> {
    let path = model_path();
    let Some(path) = path else {
        eprintln!(
            "skipping: {MODEL_FILE} not found in $KVMESH_MODELS_DIR or ~/.cache/kvmesh/models \
             (fetch it with the kvmesh model store)"
        );
        return None;
    };
    let gguf = GgufFile::open(&path).expect("model GGUF parses");
    let tokenizer = Tokenizer::from_gguf(&gguf).expect("tokenizer builds");
    Some((gguf, tokenizer))
}

/// Known answers: (text, add_special, ids).
///
/// Produced on 2026-11-27 by a throw-away Python script (not part of the project) that read
/// `tokenizer.ggml.{tokens,token_type,merges}` from this GGUF with the `gguf` package and
/// encoded each text two independent ways, which agreed on every case:
///  A. Hugging Face `tokenizers` 0.23.3 (PyPI): `models.BPE(vocab, merges)`,
///     `pre_tokenizers.Sequence([Digits(individual_digits=True),
///     ByteLevel(add_prefix_space=False, use_regex=True)])`, `decoders.ByteLevel()`, and the 17
///     type-3 tokens added with `add_special_tokens` (left out for `add_special = false`);
///  B. a clean-room pure-Python byte-level BPE: GPT-2's `bytes_to_unicode`, each `\p{N}`
///     character split off, GPT-2's split regex (`regex` package), lowest-rank merge first,
///     control tokens split out leftmost-longest, bytes without a token dropped.
/// The Rust side builds its BPE through the Rust `tokenizers` crate, so A shares its merge
/// code; B shares nothing. B also agreed with A on 100 KB of this workspace's sources.
const KNOWN: &[(&str, bool, &[u32])] = &[
    ("Hello, world!", true, &[19556, 28, 905, 17]),
    ("The quick brown fox jumps over the lazy dog.", true, &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]),
    ("12345", true, &[33, 34, 35, 36, 37]),
    ("Price: $1,234.56 on 2024-01-15 (x²)", true, &[27148, 42, 1885, 33, 28, 34, 35, 36, 30, 37, 38, 335, 216, 34, 32, 34, 36, 29, 32, 33, 29, 33, 37, 365, 104, 19133, 25]),
    ("fn main() {\n    println!(\"hi {}\", 42);\n}\n", true, &[7853, 1085, 1000, 1662, 472, 1628, 34115, 17, 1470, 6004, 4548, 1002, 216, 36, 34, 4258, 198, 109, 198]),
    ("def f(x):\n\treturn x ** 2  # square", true, &[1604, 275, 24, 104, 727, 198, 197, 5406, 1792, 1903, 216, 34, 216, 907, 5222]),
    ("naïve café résumé — déjà vu", true, &[3546, 46494, 37366, 412, 2756, 5422, 2756, 1841, 32564, 90, 16739, 386, 101]),
    ("日本語のテキスト、中文文本。五十", true, &[23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 29917, 28589, 29184, 29184, 40993, 19076, 16736, 238, 27991, 219]),
    ("😀🎉👍🏽 emoji 🇫🇷", true, &[10813, 242, 218, 10813, 232, 227, 10813, 235, 231, 10813, 233, 138, 649, 33777, 15107, 225, 121, 10813, 225, 132]),
    ("  leading and trailing spaces   ", true, &[216, 2899, 284, 35079, 5600, 333]),
    ("line1\n\nline3\r\nwindows\n", true, &[1311, 33, 198, 198, 1311, 35, 201, 198, 37066, 198]),
    ("I'm sure they've done it, we'll see what's what.", true, &[57, 5248, 2090, 502, 3543, 2294, 357, 28, 392, 3060, 963, 732, 506, 732, 30]),
    ("ALLCAPS and MiXeD cAsE", true, &[12631, 33467, 67, 284, 11633, 72, 85, 52, 265, 1653, 53]),
    ("Привет, мир! Καλημέρα κόσμε. مرحبا بالعالم", true, &[155, 249, 46879, 16464, 32547, 28, 41337, 7872, 9175, 17, 5664, 244, 8998, 17162, 25723, 16674, 34075, 13583, 8998, 31953, 36180, 18751, 16674, 14240, 30, 36395, 20602, 44626, 31462, 10805, 45726, 22208, 34966, 22208, 21706]),
    ("https://example.com/path?q=1&r=two#frag", true, &[4687, 1742, 7434, 30, 824, 31, 1537, 47, 97, 45, 33, 22, 98, 45, 11355, 19, 28082]),
    ("\t\t tabs\tand   many     spaces", true, &[1656, 29416, 197, 397, 256, 800, 289, 5600]),
    ("x=3.14159e-10; y = -42", true, &[104, 45, 35, 30, 33, 36, 33, 37, 41, 85, 29, 33, 32, 43, 329, 446, 731, 36, 34]),
    ("", true, &[]),
    ("a\u{4}b \u{7f}", true, &[81, 82, 216, 217]),
    ("a<|im_end|>b", true, &[81, 2, 82]),
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", true, &[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198]),
    ("<|im_start|>", false, &[44, 108, 306, 79, 3738, 108, 46]),
    ("a<|im_end|>b <|endoftext|>", false, &[81, 44, 108, 306, 79, 486, 108, 46, 82, 2067, 108, 486, 1714, 2692, 108, 46]),
];

#[test]
fn known_answer_ids() {
    let Some((_, t)) = load() else { return };
    for &(text, add_special, ids) in KNOWN {
        assert_eq!(t.encode(text, add_special).unwrap(), ids, "{text:?}");
        // 0x04 has no token in SmolLM2's vocabulary and is dropped.
        assert_eq!(
            t.decode(ids, false).unwrap(),
            text.replace('\u{4}', ""),
            "{text:?}"
        );
    }
}

/// Texts for round trips and streaming, beyond the known answers.
const EXTRA: &[&str] = &[
    "impl<T: Clone> Iterator for Foo<'_, T> { type Item = &'static str; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "    \n\n\n\t \t   \r\n  ",
    "a  b   c    d     e",
    "\n",
    " ",
    "Zürich, Ærøskøbing, İstanbul, Đà Nẵng, São Paulo, Kraków",
    "数学: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6 ≈ ∞ → ∀x∈ℝ",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 1️⃣ keycap, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, 𓀀",
    "0123456789 ٠١٢٣٤٥٦٧٨٩ ①②③ Ⅻ",
    "<|im_start|> <|im_end|><|im_end|> <repo_name>x<file_sep>",
    "<|im_sta rt|> <|im_end| <|IM_END|>",
];

fn all_texts() -> impl Iterator<Item = &'static str> {
    KNOWN
        .iter()
        .map(|k| k.0)
        .filter(|t| !t.contains('\u{4}'))
        .chain(EXTRA.iter().copied())
}

#[test]
fn decode_inverts_encode() {
    let Some((_, t)) = load() else { return };
    for text in all_texts() {
        for add_special in [true, false] {
            let ids = t.encode(text, add_special).unwrap();
            assert_eq!(
                t.decode(&ids, false).unwrap(),
                text,
                "{text:?} add_special={add_special}"
            );
        }
    }
}

#[test]
fn special_tokens_and_vocabulary() {
    let Some((_, t)) = load() else { return };
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos(), Some(1));
    assert_eq!(t.eos(), 2);
    assert!(t.is_eos(2) && !t.is_eos(0));
    assert_eq!(t.token_str(1), Some("<|im_start|>"));
    assert_eq!(t.token_str(2), Some("<|im_end|>"));
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    assert_eq!(t.encode("<|im_start|>", true).unwrap(), [1]);
    assert_eq!(t.encode("<|im_end|>", true).unwrap(), [2]);
    // Plain mode: the spelling is text (7 tokens), not the control token.
    let plain = t.encode("<|im_start|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&1));
    // SmolLM2 says add_bos_token = false: nothing is prepended even with add_special.
    assert_eq!(
        t.encode("Hi", true).unwrap(),
        t.encode("Hi", false).unwrap()
    );
    // End of turn: EOS (<|im_end|>) and <|endoftext|>.
    assert_eq!(t.stop_tokens(), &[0, 2]);
    assert!(t.is_stop(2) && t.is_stop(0) && !t.is_stop(1));
    assert!((0..17).all(|id| t.is_special(id)) && !t.is_special(17));
    // Skipping decode drops all 17 control tokens.
    let ids = t
        .encode("<|im_start|>user\nHi<|im_end|>\n<file_sep>", true)
        .unwrap();
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nHi\n");
    assert!(t.decode(&[49152], false).is_err());
}

#[test]
fn digits_are_split_one_per_token() {
    let Some((_, t)) = load() else { return };
    let ids = t.encode("12345", false).unwrap();
    let pieces: Vec<_> = ids.iter().map(|&id| t.token_str(id).unwrap()).collect();
    assert_eq!(pieces, ["1", "2", "3", "4", "5"]);
    let ids = t.encode("x 2024", false).unwrap();
    let pieces: Vec<_> = ids.iter().map(|&id| t.token_str(id).unwrap()).collect();
    assert_eq!(pieces, ["x", "Ġ", "2", "0", "2", "4"]);
}

/// Checks the stream against one-shot decode after every token of `ids`.
fn check_stream(t: &Tokenizer, ids: &[u32], skip_special: bool) {
    let mut stream = t.decode_stream(skip_special);
    let mut text = String::new();
    for k in 0..=ids.len() {
        let whole = t.decode(&ids[..k], skip_special).unwrap();
        let mut flushed = text.clone();
        flushed.push_str(&stream.clone().finish());
        assert_eq!(flushed, whole, "prefix {k} of {ids:?}");
        if !stream.has_pending() {
            assert_eq!(text, whole, "prefix {k} of {ids:?}");
        }
        if let Some(&id) = ids.get(k) {
            text.push_str(&stream.step(id).unwrap());
        }
    }
}

#[test]
fn stream_equals_one_shot_decode_for_every_prefix() {
    let Some((_, t)) = load() else { return };
    for text in all_texts() {
        let ids = t.encode(text, true).unwrap();
        check_stream(&t, &ids, false);
        check_stream(&t, &ids, true);
    }
    // An emoji is three byte tokens: nothing comes out until the last.
    let ids = t.encode("😀", false).unwrap();
    assert_eq!(ids.len(), 3);
    let mut s = t.decode_stream(false);
    assert_eq!(s.step(ids[0]).unwrap(), "");
    assert_eq!(s.step(ids[1]).unwrap(), "");
    assert!(s.has_pending());
    assert_eq!(s.step(ids[2]).unwrap(), "😀");
    assert_eq!(s.finish(), "");
    // Arbitrary ids (a fixed LCG), often invalid UTF-8: pieces + finish still match.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    for _ in 0..300 {
        // Bias towards the single-byte tokens (ids 17..273 hold most of them).
        let ids: Vec<u32> = (0..12)
            .map(|_| {
                if next() % 2 == 0 {
                    17 + next() % 256
                } else {
                    next() % 49152
                }
            })
            .collect();
        check_stream(&t, &ids, next() % 2 == 0);
    }
}

#[test]
fn chat_template_renders_and_encodes() {
    let Some((gguf, t)) = load() else { return };
    let template = ChatTemplate::from_gguf(&gguf).unwrap();
    assert_eq!(
        template.default_system_prompt(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    let conversation = [
        ChatMessage::user("What is 2+2?"),
        ChatMessage::assistant("4"),
    ];
    assert_eq!(
        template.render(&conversation, false),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4<|im_end|>\n"
    );
    let own_system = [
        ChatMessage::system("Answer in French."),
        ChatMessage::user("Hi"),
    ];
    assert_eq!(
        template.render(&own_system, true),
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // The rendered prompt encodes to the known answer (control tokens as single ids).
    let prompt = template.render(&[ChatMessage::user("What is 2+2?")], true);
    let known = KNOWN
        .iter()
        .find(|k| k.0 == prompt)
        .expect("prompt is a known answer");
    assert_eq!(t.encode(&prompt, true).unwrap(), known.2);
}

/// ~100 KB of this workspace's Rust sources (sorted paths, concatenated, cut at a character
/// boundary): realistic code text, no network.
fn corpus(limit: usize) -> String {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let crates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    walk(&crates, &mut files);
    files.sort();
    let mut text = String::new();
    for f in files {
        if text.len() >= limit {
            break;
        }
        text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
    }
    let mut end = limit.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// Encode throughput; run with `cargo test --release -p kvmesh-engine --test tokenizer --
/// --ignored --nocapture`. Prints an FNV-1a hash of the ids for comparison with another
/// tokenizer on the same text.
#[test]
#[ignore = "measurement, run in release"]
fn encode_throughput() {
    let Some((gguf, _)) = load() else { return };
    let start = Instant::now();
    let t = Tokenizer::from_gguf(&gguf).unwrap();
    let build = start.elapsed();
    let text = corpus(100_000);
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut tokens = 0;
    for round in 0..5 {
        let start = Instant::now();
        let ids = t.encode(&text, false).unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "round {round}: {} bytes -> {} tokens in {:.1} ms: {:.0} tokens/s, {:.1} MB/s",
            text.len(),
            ids.len(),
            secs * 1e3,
            ids.len() as f64 / secs,
            text.len() as f64 / secs / 1e6
        );
        if round == 0 {
            tokens = ids.len();
            for b in ids.iter().flat_map(|id| id.to_le_bytes()) {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            let start = Instant::now();
            let decoded = t.decode(&ids, false).unwrap();
            eprintln!("decode: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(decoded, text);
        }
    }
    eprintln!(
        "build {:.0} ms; ids fnv1a {hash:016x} over {tokens} tokens",
        build.as_secs_f64() * 1e3
    );
}
