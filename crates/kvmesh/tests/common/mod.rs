//! Running the built `kvmesh` binary from integration tests.

use std::process::Command;

/// What a run printed and how it ended.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kvmesh ARGS`; fails the test if it panicked.
pub fn kvmesh(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmesh"))
        .args(args)
        .output()
        .expect("run kvmesh");
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    };
    assert!(
        !out.stderr.contains("panicked"),
        "kvmesh panicked: {}",
        out.stderr
    );
    out
}

/// Runs a command that must fail with exit code 1 and a `kvmesh: error:` message on stderr
/// (nothing on stdout); returns the message.
pub fn fails(args: &[&str]) -> String {
    let out = kvmesh(args);
    assert_eq!(
        out.code,
        Some(1),
        "kvmesh {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.starts_with("kvmesh: error: "), "{}", out.stderr);
    out.stderr
}
