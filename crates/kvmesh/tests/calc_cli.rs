//! `kvmesh calc` end to end: the built binary, its text and JSON output, and its errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

mod common;

use common::{fails, kvmesh};

/// Runs a command that must succeed and returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = kvmesh(args);
    assert_eq!(out.code, Some(0), "kvmesh {args:?} failed: {}", out.stderr);
    out.stdout
}

fn json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(&args)).expect("valid JSON")
}

/// A file under the temp dir with a name no other test (or test run) uses.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kvmesh-calc-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn shared_trace() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["shared/data", "../shared/data"]
        .iter()
        .map(|dir| root.join(dir).join("mooncake/conversation_trace.jsonl"))
        .find(|p| p.is_file())
}

#[test]
fn llama_3_70b_bytes_per_token() {
    let text = ok(&["calc", "--model", "llama-3-70b", "--dtype", "f16"]);
    // 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 B.
    assert!(
        text.contains("per token                 327,680 B   320.0 KiB"),
        "{text}"
    );
    assert!(
        text.contains("per token per layer         4,096 B"),
        "{text}"
    );
    assert!(text.contains("5,242,880 B     5.0 MiB"), "{text}");
    assert!(text.contains("GQA (group of 8)"), "{text}");
    let v = json(&["calc", "--model", "llama-3-70b", "--dtype", "f16"]);
    assert_eq!(v["bytes_per_token"], 327_680);
    assert_eq!(v["bytes_per_block"], 16 * 327_680);
    assert_eq!(v["bytes_per_token_per_layer"], 4_096);
    // 80 GiB x 0.9 = 72 GiB = 14,745.6 blocks of 5 MiB; 8,192 tokens = 512 blocks.
    assert_eq!(v["kv_budget_bytes"], 72u64 << 30);
    assert_eq!(v["blocks_fit"], 14_745);
    assert_eq!(v["tokens_fit"], 14_745 * 16);
    assert_eq!(v["context_len"], 8_192);
    assert_eq!(v["max_concurrency"], 28);
    assert_eq!(v["attention_kind"], "GQA (group of 8)");
    assert!(v["allocation"].is_null());
}

#[test]
fn mistral_7b_bytes_per_token() {
    let v = json(&["calc", "--model", "mistral-7b"]);
    assert_eq!(v["bytes_per_token"], 131_072);
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["block_size"], 16);
    assert!(ok(&["calc", "--model", "mistral-7b"]).contains("131,072 B"));
}

#[test]
fn falcon_7b_is_mqa_and_falcon_40b_explains_why_it_is_not() {
    let text = ok(&["calc", "--model", "falcon-7b"]);
    assert!(text.contains("Attention   MQA"), "{text}");
    assert_eq!(
        json(&["calc", "--model", "falcon-7b"])["attention_kind"],
        "MQA"
    );

    let text = ok(&["calc", "--model", "falcon-40b"]);
    assert!(text.contains("Attention   GQA (group of 16)"), "{text}");
    assert!(text.contains("marketed as multi-query"), "{text}");
    assert!(text.contains("new_decoder_architecture"), "{text}");
    let v = json(&["calc", "--model", "falcon-40b"]);
    assert!(v["model"]["note"]
        .as_str()
        .unwrap()
        .contains("num_kv_heads = 8"));
}

#[test]
fn attention_and_dtype_variants() {
    let v = json(&["calc", "--model", "llama-3-70b"]);
    let attention = v["variants"]["attention"].as_array().unwrap();
    let kinds: Vec<(&str, u64, u64, bool)> = attention
        .iter()
        .map(|a| {
            (
                a["attention_kind"].as_str().unwrap(),
                a["kv_heads"].as_u64().unwrap(),
                a["bytes_per_token"].as_u64().unwrap(),
                a["selected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("MHA", 64, 8 * 327_680, false),
            ("GQA (group of 8)", 8, 327_680, true),
            ("MQA", 1, 327_680 / 8, false),
        ]
    );
    let dtypes: Vec<(&str, u64)> = v["variants"]["dtype"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dtype"].as_str().unwrap(),
                d["bytes_per_token"].as_u64().unwrap(),
            )
        })
        .collect();
    // Quantised dtypes add one 4-byte scale per head vector: 80 x 2 x 8 x 4 = 5,120 B.
    assert_eq!(
        dtypes,
        [
            ("f16", 327_680),
            ("fp8", 163_840 + 5_120),
            ("int8", 163_840 + 5_120),
            ("int4", 81_920 + 5_120)
        ]
    );

    // An MHA model has no separate "own" row; a dtype outside the four is added first.
    let v = json(&["calc", "--model", "llama-2-7b", "--dtype", "f32"]);
    let kinds: Vec<&str> = v["variants"]["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attention_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["MHA", "MQA"]);
    assert_eq!(v["variants"]["dtype"][0]["dtype"], "f32");
    assert_eq!(v["variants"]["dtype"][0]["selected"], true);
    assert_eq!(v["variants"]["dtype"].as_array().unwrap().len(), 5);
}

#[test]
fn explicit_dims_config_and_budget_flags() {
    // 2 layers x 2 KV heads x 8 x 2 x 2 B = 128 B/token; 4-token blocks of 512 B.
    let args = [
        "calc",
        "--layers",
        "2",
        "--query-heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "8",
        "--block-size",
        "4",
        "--mem-gib",
        "1",
        "--util",
        "0.5",
        "--weights-gib",
        "0.25",
    ];
    let v = json(&args);
    assert_eq!(v["model"]["source"], "dims");
    assert_eq!(v["bytes_per_token"], 128);
    assert_eq!(v["bytes_per_block"], 512);
    assert_eq!(v["kv_budget_bytes"], 1u64 << 28); // 1 GiB x 0.5 - 0.25 GiB
    assert_eq!(v["blocks_fit"], 1u64 << 19);
    assert_eq!(v["context_len"], 4_096); // no max context: the fallback
    assert_eq!(v["max_concurrency"], (1u64 << 19) / 1_024);
    assert_eq!(v["memory"]["weights_bytes"], 1u64 << 28);
    let mut with_ctx = args.to_vec();
    with_ctx.extend(["--max-context", "100", "--context-len", "10"]);
    let v = json(&with_ctx);
    assert_eq!(v["context_len"], 10);
    assert_eq!(v["model"]["max_context"], 100);

    let config = TempFile::new(
        "config.json",
        r#"{"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_size": 4096, "max_position_embeddings": 32768}"#,
    );
    let v = json(&["calc", "--config", config.path()]);
    assert_eq!(v["model"]["source"], "config");
    assert_eq!(v["model"]["path"], config.path());
    assert_eq!(v["bytes_per_token"], 131_072);
    assert_eq!(v["context_len"], 32_768);
}

#[test]
fn weights_are_subtracted_and_said_so() {
    let text = ok(&["calc", "--model", "llama-3-8b"]);
    assert!(text.contains("weights not subtracted"), "{text}");
    let v = json(&["calc", "--model", "llama-3-8b", "--weights-gib", "16"]);
    assert_eq!(v["kv_budget_bytes"], (72u64 - 16) << 30);
    let err = fails(&["calc", "--model", "llama-3-70b", "--weights-gib", "140"]);
    assert!(err.contains("weights"), "{err}");
    assert!(
        err.contains("140.0 GiB") && err.contains("72.0 GiB"),
        "{err}"
    );
}

#[test]
fn allocation_from_mean_and_max() {
    // llama-3-8b: 128 KiB/token, 2 MiB blocks; 72 GiB = 36,864 blocks = 589,824 tokens.
    let v = json(&[
        "calc",
        "--model",
        "llama-3-8b",
        "--mean-len",
        "1366",
        "--max-len",
        "8192",
    ]);
    let a = &v["allocation"];
    assert_eq!(a["source"], "mean_max");
    assert_eq!(a["reserve_len"], 8_192);
    assert_eq!(a["reserve_from"], "max_len");
    assert!(a["lengths"]["count"].is_null());
    assert_eq!(a["contiguous"]["max_concurrency"], 72); // 589,824 / 8,192
    let util = a["contiguous"]["utilization"].as_f64().unwrap();
    assert!((util - 1366.0 / 8192.0).abs() < 1e-12, "{util}");
    // 1,366 tokens = 86 blocks (1,376 tokens): 36,864 / 86 = 428.6.
    assert_eq!(a["paged"]["max_concurrency"], 428);
    let util = a["paged"]["utilization"].as_f64().unwrap();
    assert!((util - 1366.0 / 1376.0).abs() < 1e-12, "{util}");

    let text = ok(&[
        "calc",
        "--model",
        "llama-3-8b",
        "--mean-len",
        "1366",
        "--max-len",
        "8192",
    ]);
    assert!(
        text.contains("every request is taken at the mean"),
        "{text}"
    );
    assert!(text.contains("seed claim"), "{text}");
    assert!(text.contains("16.7%"), "{text}");
    assert!(text.contains("99.3%"), "{text}");

    let err = fails(&[
        "calc",
        "--model",
        "llama-3-8b",
        "--mean-len",
        "9000",
        "--max-len",
        "8192",
    ]);
    assert!(
        err.contains("--mean-len 9000 is above --max-len 8192"),
        "{err}"
    );
}

#[test]
fn allocation_from_a_small_trace() {
    let line = |input: u64, output: u64| {
        format!(
            "{{\"timestamp\": 0, \"input_length\": {input}, \"output_length\": {output}, \"hash_ids\": []}}\n"
        )
    };
    // Lengths 100, 300, 1,000, 2,600 (sum 4,000); blocks of 16: 7 + 19 + 63 + 163 = 252.
    let body = [line(90, 10), line(300, 0), line(900, 100), line(2000, 600)].concat();
    let trace = TempFile::new("trace.jsonl", &format!("{body}\n"));
    let v = json(&["calc", "--model", "llama-3-8b", "--trace", trace.path()]);
    let a = &v["allocation"];
    assert_eq!(a["source"], "trace");
    assert_eq!(a["trace"], trace.path());
    assert_eq!(a["lengths"]["count"], 4);
    assert_eq!(a["lengths"]["mean"], 1_000.0);
    assert_eq!(a["lengths"]["p50"], 300);
    assert_eq!(a["lengths"]["p99"], 2_600);
    assert_eq!(a["lengths"]["max"], 2_600);
    assert_eq!(a["reserve_len"], 2_600);
    assert_eq!(a["reserve_from"], "trace_max");
    assert_eq!(a["over_reservation"], 0);
    assert_eq!(a["over_model_context"], 0);
    assert_eq!(a["contiguous"]["max_concurrency"], 589_824 / 2_600);
    assert_eq!(a["paged"]["max_concurrency"], 36_864 * 4 / 252);
    let paged = a["paged"]["utilization"].as_f64().unwrap();
    assert!((paged - 4_000.0 / (252.0 * 16.0)).abs() < 1e-12, "{paged}");

    // A shorter reservation leaves the longest request out, and says so.
    let v = json(&[
        "calc",
        "--model",
        "llama-3-8b",
        "--trace",
        trace.path(),
        "--max-len",
        "1000",
    ]);
    assert_eq!(v["allocation"]["over_reservation"], 1);
    assert_eq!(v["allocation"]["reserve_from"], "max_len");
    let text = ok(&[
        "calc",
        "--model",
        "llama-3-8b",
        "--trace",
        trace.path(),
        "--max-len",
        "1000",
    ]);
    assert!(
        text.contains("1 requests (25.0%) are longer than the reservation"),
        "{text}"
    );
}

#[test]
fn malformed_config_names_file_and_line() {
    let config = TempFile::new("config.json", "{\n  \"num_hidden_layers\": 2,\n  oops\n}\n");
    let err = fails(&["calc", "--config", config.path()]);
    assert!(
        err.contains(&format!("{}:3:3: invalid JSON", config.path())),
        "{err}"
    );
    let config = TempFile::new(
        "config.json",
        r#"{"num_attention_heads": 8, "hidden_size": 64}"#,
    );
    let err = fails(&["calc", "--config", config.path()]);
    assert!(
        err.contains(config.path()) && err.contains("num_hidden_layers"),
        "{err}"
    );
}

#[test]
fn malformed_trace_names_file_and_line() {
    let good = r#"{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}"#;
    let trace = TempFile::new(
        "trace.jsonl",
        &format!("{good}\n\n{good}\n{{\"timestamp\": 1, \"input_length\": \"x\"}}\n{good}\n"),
    );
    let err = fails(&["calc", "--model", "llama-3-8b", "--trace", trace.path()]);
    assert!(
        err.contains(&format!("{}:4: invalid record", trace.path())),
        "{err}"
    );
    let empty = TempFile::new("empty.jsonl", "\n\n");
    let err = fails(&["calc", "--model", "llama-3-8b", "--trace", empty.path()]);
    assert!(err.contains("no requests"), "{err}");
}

#[test]
fn missing_files_are_named() {
    let missing = std::env::temp_dir().join("kvmesh-calc-cli-does-not-exist/config.json");
    let missing = missing.to_str().unwrap();
    let err = fails(&["calc", "--config", missing]);
    assert!(err.contains(missing), "{err}");
    let err = fails(&["calc", "--model", "llama-3-8b", "--trace", missing]);
    assert!(err.contains(missing), "{err}");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let err = fails(&["calc", "--model", "llama-9"]);
    assert!(
        err.contains("unknown model 'llama-9'") && err.contains("llama-3-70b"),
        "{err}"
    );
    let err = fails(&["calc"]);
    assert!(err.contains("--model"), "{err}");
    for args in [
        &["calc", "--model", "llama-3-8b", "--util", "1.5"][..],
        &["calc", "--model", "llama-3-8b", "--util", "0"],
        &["calc", "--model", "llama-3-8b", "--mem-gib", "-5"],
        &["calc", "--model", "llama-3-8b", "--mem-gib", "0"],
        &["calc", "--model", "llama-3-8b", "--mem-gib", "0.001"],
        &[
            "calc",
            "--layers",
            "2",
            "--query-heads",
            "4",
            "--kv-heads",
            "3",
            "--head-dim",
            "8",
        ],
        &[
            "calc",
            "--layers",
            "0",
            "--query-heads",
            "4",
            "--kv-heads",
            "4",
            "--head-dim",
            "8",
        ],
    ] {
        fails(args);
    }
    // Usage errors are clap's (exit 2).
    for args in [
        &["calc", "--model", "llama-3-8b", "--config", "x.json"][..],
        &["calc", "--model", "llama-3-8b", "--dtype", "int3"],
        &["calc", "--model", "llama-3-8b", "--block-size", "0"],
        &["calc", "--model", "llama-3-8b", "--context-len", "0"],
        &["calc", "--model", "llama-3-8b", "--mean-len", "10"],
        &["calc", "--model", "llama-3-8b", "--max-len", "10"],
        &["calc", "--layers", "2"],
    ] {
        assert_eq!(kvmesh(args).code, Some(2), "{args:?}");
    }
}

#[test]
fn list_models_prints_every_preset_with_its_note() {
    let text = ok(&["calc", "--list-models"]);
    for name in [
        "llama-2-7b",
        "llama-3-70b",
        "mistral-7b",
        "falcon-7b",
        "falcon-40b",
        "smollm2-135m",
    ] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert!(text.contains("sliding window"), "{text}");
    let v: Value = serde_json::from_str(&ok(&["calc", "--list-models", "--json"])).unwrap();
    let falcon = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "falcon-7b")
        .unwrap();
    assert_eq!(falcon["attention_kind"], "MQA");
}

#[test]
fn help_explains_every_flag_and_the_allocation_model() {
    let help = ok(&["calc", "--help"]);
    for flag in [
        "--model",
        "--config",
        "--list-models",
        "--layers",
        "--query-heads",
        "--kv-heads",
        "--head-dim",
        "--max-context",
        "--dtype",
        "--block-size",
        "--mem-gib",
        "--util",
        "--weights-gib",
        "--context-len",
        "--trace",
        "--mean-len",
        "--max-len",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    for default in [
        "[default: f16]",
        "[default: 16]",
        "[default: 80]",
        "[default: 0.9]",
        "[default: 0]",
        "[default: the model's max context, else 4096]",
    ] {
        assert!(help.contains(default), "{default} missing from --help");
    }
    assert!(help.contains("Contiguous"), "{help}");
    assert!(help.contains("ceil(length / block size) blocks"), "{help}");
}

#[test]
fn real_mooncake_trace() {
    let Some(path) = shared_trace() else {
        eprintln!("skipping: mooncake/conversation_trace.jsonl not found under shared/data");
        return;
    };
    let path = path.to_str().unwrap();
    let v = json(&["calc", "--model", "llama-3-70b", "--trace", path]);
    let a = &v["allocation"];
    assert_eq!(a["lengths"]["count"], 12_031);
    let mean = a["lengths"]["mean"].as_f64().unwrap();
    // Input mean 12,035 plus output mean 343.
    assert!((mean - 12_378.0).abs() < 1.0, "{mean}");
    assert_eq!(a["reserve_len"], a["lengths"]["max"]);
    assert_eq!(a["over_reservation"], 0);
    let (contiguous, paged) = (
        a["contiguous"]["utilization"].as_f64().unwrap(),
        a["paged"]["utilization"].as_f64().unwrap(),
    );
    assert!(contiguous < paged && paged <= 1.0, "{contiguous} {paged}");
    assert!(a["paged"]["max_concurrency"].as_u64() > a["contiguous"]["max_concurrency"].as_u64());
}
