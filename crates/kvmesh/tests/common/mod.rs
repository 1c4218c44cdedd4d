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
