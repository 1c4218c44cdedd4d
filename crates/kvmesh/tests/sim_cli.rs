//! `kvmesh sim` end to end: the built binary, its table, JSON and PNG, and its errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

mod common;

use common::{fails, kvmesh, Output};

fn ok(args: &[&str]) -> Output {
    let out = kvmesh(args);
    assert_eq!(out.code, Some(0), "kvmesh {args:?} failed: {}", out.stderr);
    out
}

fn json(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = ok(&args);
    assert!(
        out.stderr.is_empty() || !out.stderr.contains('['),
        "no progress bar with --json"
    );
    serde_json::from_str(&out.stdout).expect("valid JSON")
}

/// A fresh file path in the target's temporary directory.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "sim-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn mooncake_line(ts: u64, input: u64, ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!(
        "{{\"timestamp\": {ts}, \"input_length\": {input}, \"output_length\": 20, \"hash_ids\": [{}]}}\n",
        ids.join(", ")
    )
}

fn shared_trace() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["shared/data", "../shared/data"]
        .iter()
        .map(|d| root.join(d).join("mooncake/conversation_trace.jsonl"))
        .find(|p| p.is_file())
}

#[test]
fn help_explains_inputs_policies_and_output() {
    let out = ok(&["sim", "--help"]);
    for needle in [
        "--trace",
        "--generate",
        "--workers",
        "--policy",
        "--blocks-per-worker",
        "--speedup",
        "--compare",
        "--json",
        "round-robin",
        "ideal",
        "imbalance",
    ] {
        assert!(out.stdout.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn generated_workload_as_json() {
    let v = json(&[
        "sim",
        "--generate",
        "multi-turn",
        "--requests",
        "200",
        "--workers",
        "4",
    ]);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["workload"]["requests"], 200);
    assert_eq!(v["workload"]["block_size"], 16);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r["policy"], "kv");
    assert_eq!(r["completed"], 200);
    let hit = r["hits"]["block_hit_ratio"].as_f64().unwrap();
    let ideal = v["workload"]["ideal"]["block_hit_ratio"].as_f64().unwrap();
    assert!(hit > 0.3 && hit <= ideal, "{hit} vs {ideal}");
    for key in ["ttft", "itl", "e2e"] {
        assert!(r[key]["p99"].as_f64().unwrap() >= r[key]["p50"].as_f64().unwrap());
    }
    assert!(r["load"]["imbalance"].as_f64().unwrap() >= 1.0);
    assert_eq!(r["load"]["workers"].as_array().unwrap().len(), 4);
    assert!(r["wall_s"].as_f64().unwrap() > 0.0);
    assert!(v["plot"].is_null());
}

#[test]
fn compare_prints_every_policy_and_draws() {
    let png = temp_file("cmp.png", "");
    let mut args = vec![
        "sim",
        "--generate",
        "shared-prefix",
        "--requests",
        "128",
        "--workers",
        "4",
        "--compare",
    ];
    if cfg!(feature = "plot") {
        args.extend(["--plot", png.to_str().unwrap()]);
    }
    let out = ok(&args);
    let header = out
        .stdout
        .lines()
        .find(|l| l.contains("round-robin"))
        .expect("a header row");
    for p in ["kv", "round-robin", "random", "least-loaded", "cache-only"] {
        assert!(header.contains(p), "{header}");
    }
    for row in [
        "block hit ratio",
        "/ ideal",
        "p99",
        "busy time",
        "evicted blocks",
    ] {
        assert!(out.stdout.contains(row), "missing {row}:\n{}", out.stdout);
    }
    if cfg!(feature = "plot") {
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.len() > 10_000);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(out.stdout.contains("plot written to"));
    } else {
        // The table is printed; the missing plot is a note, and asking for one explicitly
        // is an error naming the feature.
        assert!(out.stderr.contains("`plot` feature"), "{}", out.stderr);
        args.extend(["--plot", png.to_str().unwrap()]);
        assert!(fails(&args).contains("`plot` feature"));
    }
}

#[test]
fn mooncake_and_azure_traces_by_extension() {
    let mut text = String::new();
    for i in 0..40u64 {
        // 10 conversations of 4 turns: turn k extends turn k-1 by one block.
        let conv = i % 10;
        let turn = i / 10;
        let ids: Vec<u64> = (0..=turn).map(|k| conv * 100 + k).collect();
        text.push_str(&mooncake_line(i * 500, 512 * (turn + 1), &ids));
    }
    let trace = temp_file("t.jsonl", &text);
    let v = json(&["sim", "--trace", trace.to_str().unwrap(), "--workers", "2"]);
    assert_eq!(v["workload"]["block_size"], 512);
    // 100 blocks, 10 conversations x (0 + 1 + 2 + 3) reusable blocks, ideal 60 / 100.
    assert_eq!(v["workload"]["ideal"]["block_hit_ratio"], 0.6);
    let v16 = json(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--block-size",
        "16",
        "--policy",
        "round-robin",
    ]);
    assert_eq!(v16["workload"]["block_size"], 16);
    assert_eq!(v16["runs"][0]["policy"], "round-robin");

    let csv = temp_file(
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n\
         2023-11-16 18:15:46.6805900,374,44\n\
         2023-11-16 18:15:50.9951690,396,109\n",
    );
    let v = json(&["sim", "--trace", csv.to_str().unwrap()]);
    assert_eq!(v["workload"]["requests"], 2);
    assert_eq!(v["runs"][0]["completed"], 2);
    assert_eq!(v["workload"]["ideal"]["hit_blocks"], 0);
}

#[test]
fn malformed_trace_lines_name_file_and_line() {
    let text = format!(
        "{}\n{{\"timestamp\": 5, \"input_length\": 512, \"output_len",
        mooncake_line(0, 512, &[1]).trim_end()
    );
    let trace = temp_file("bad.jsonl", &text);
    let err = fails(&["sim", "--trace", trace.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{}:2: invalid record", trace.display())),
        "{err}"
    );
    let mismatch = temp_file("ids.jsonl", &mooncake_line(0, 2000, &[1, 2]));
    let err = fails(&["sim", "--trace", mismatch.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "{}:1: invalid request: 2 hash ids for 2000 input tokens",
            mismatch.display()
        )),
        "{err}"
    );
    let csv = temp_file(
        "bad.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\nnoon,1,1\n",
    );
    let err = fails(&["sim", "--trace", csv.to_str().unwrap()]);
    assert!(err.contains(&format!("{}:2:", csv.display())), "{err}");
    let err = fails(&["sim", "--trace", "/no/such/trace.jsonl"]);
    assert!(err.contains("/no/such/trace.jsonl"), "{err}");
}

#[test]
fn impossible_settings_are_refused() {
    let gen = ["sim", "--generate", "rag", "--requests", "10"];
    let with = |extra: &[&str]| {
        let mut a = gen.to_vec();
        a.extend_from_slice(extra);
        fails(&a)
    };
    assert!(with(&["--workers", "0"]).contains("at least one worker"));
    assert!(with(&["--blocks-per-worker", "0"]).contains("at least 1"));
    assert!(with(&["--blocks-per-worker", "lots"]).contains("--blocks-per-worker"));
    assert!(with(&["--token-budget", "4"]).contains("below one block"));
    assert!(with(&["--policy", "best"]).contains("unknown routing policy"));
    assert!(with(&["--cost-model", "tpu"]).contains("unknown cost model"));
    assert!(with(&["--speedup", "0"]).contains("--speedup"));
    assert!(with(&["--kv-decode-weight", "-1"]).contains("decode_weight"));
    let err = fails(&["sim", "--workers", "2"]);
    assert!(err.contains("--trace FILE or --generate KIND"), "{err}");
}

#[test]
fn real_trace_prefix_compares_policies() {
    let Some(path) = shared_trace() else {
        eprintln!("skipping: mooncake/conversation_trace.jsonl not found under ../shared/data");
        return;
    };
    let png = temp_file("real.png", "");
    let mut args = vec![
        "sim",
        "--trace",
        path.to_str().unwrap(),
        "--max-requests",
        "3000",
        "--workers",
        "8",
        "--compare",
    ];
    if cfg!(feature = "plot") {
        args.extend(["--plot", png.to_str().unwrap()]);
    }
    let v = json(&args);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 5);
    let hit = |i: usize| runs[i]["hits"]["block_hit_ratio"].as_f64().unwrap();
    assert_eq!(runs[0]["policy"], "kv");
    assert_eq!(runs[1]["policy"], "round-robin");
    assert!(hit(0) > hit(1), "kv {} vs round-robin {}", hit(0), hit(1));
    assert!(runs.iter().all(|r| r["completed"] == 3000));
}
