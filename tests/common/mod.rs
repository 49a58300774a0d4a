//! Helpers shared by the integration tests that run the real binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where sample_logs lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command for the binary with `CHATETL_*`, `AIRFLOW_CTX_*` and `TZ` removed, `TZ=UTC`, and
/// cwd set to `dir`.
pub fn chatetl(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHATETL_") || k == "TZ" || k.starts_with("AIRFLOW_CTX") {
            c.env_remove(k);
        }
    }
    c.env("TZ", "UTC").current_dir(dir);
    c
}

/// Runs the binary in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    chatetl(dir).args(args).output().expect("binary runs")
}

/// The exit code.
pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 0 and returns the output.
pub fn ok(o: Output) -> Output {
    assert_eq!(
        code(&o),
        0,
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A temp dir holding a copy of sample_logs as `in/` and an output root `out/`.
pub fn workspace() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    copy_tree(&repo().join("sample_logs"), &input);
    let out = dir.path().join("out");
    (dir, input, out)
}
