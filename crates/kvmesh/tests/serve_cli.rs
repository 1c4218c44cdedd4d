//! `kvmesh serve` as a user runs it: the binary on a free port, the Python `openai` package
//! as the client, greedy output equal to `kvmesh generate`'s, and SIGTERM draining to exit 0.
//!
//! Skips (passing, with a message) when the model or the Python packages are absent, unless
//! `KVMESH_REQUIRE_MODEL=1` (set by `.ci/run`, which installs both), where they must be there.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "smollm2-135m-instruct";

fn required() -> bool {
    std::env::var_os("KVMESH_REQUIRE_MODEL").is_some()
}

fn model_present() -> bool {
    let dir = match std::env::var_os("KVMESH_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/kvmesh/models"),
            None => return false,
        },
    };
    let present = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file();
    assert!(
        present || !required(),
        "the model is missing and KVMESH_REQUIRE_MODEL is set"
    );
    if !present {
        eprintln!("SKIP: the model is not in the store; run `kvmesh model fetch`");
    }
    present
}

/// A running `kvmesh serve`, killed on drop.
struct Serve {
    child: Child,
    base: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvmesh"))
            .args([
                "serve",
                "--port",
                "0",
                "--workers",
                "2",
                "--kv-cache-gib",
                "0.1",
                "--no-fetch",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvmesh runs");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("serve: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kvmesh serve printed no ready line");
            };
            if let Some(rest) = line.strip_prefix("kvmesh: ready at ") {
                let base = rest.split_whitespace().next().expect("a URL").to_string();
                return Serve {
                    child,
                    base,
                    stderr: rx,
                };
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_has_openai() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai, prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || !required(),
        "python3 lacks openai/prometheus_client and KVMESH_REQUIRE_MODEL is set"
    );
    if !ok {
        eprintln!("SKIP: python3 -m pip install openai prometheus_client to run this test");
    }
    ok
}

#[test]
fn the_openai_python_client_works_against_kvmesh_serve() {
    if !model_present() || !python_has_openai() {
        return;
    }
    let serve = Serve::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_e2e.py");
    let out = Command::new("python3")
        .args([script, &serve.base, MODEL])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_e2e.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}

#[test]
fn greedy_output_equals_kvmesh_generate_and_sigterm_drains_to_exit_0() {
    if !model_present() {
        return;
    }
    let prompt = "Explain in two sentences why the sky is blue.";
    let generated = Command::new(env!("CARGO_BIN_EXE_kvmesh"))
        .args([
            "generate",
            "--chat",
            "--prompt",
            prompt,
            "--max-tokens",
            "32",
            "--threads",
            "1",
        ])
        .output()
        .expect("kvmesh generate runs");
    assert!(generated.status.success());
    let expected = String::from_utf8(generated.stdout).unwrap();

    let mut serve = Serve::start(&["--routing", "round-robin"]);
    let addr = serve
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 32,
    })
    .to_string();
    // Twice: round-robin sends one to each worker, and both must agree with `generate`.
    for _ in 0..2 {
        let reply = post(&addr, "/v1/chat/completions", &body);
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            format!("{content}\n"),
            expected,
            "server and generate differ"
        );
    }

    // SIGTERM: drains and exits 0.
    let pid = serve.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "kvmesh serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let lines: Vec<String> = serve.stderr.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("kvmesh: stopped")),
        "{lines:?}"
    );
}

/// A one-shot HTTP/1.1 POST with std only; the body of the reply.
fn post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    body.to_string()
}
