//! Hostile input and concurrency: each case has a clear outcome (a rejected line or an exit
//! code), no panic, nothing written outside the output root, memory bounded.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{chatetl, code, ok, stderr, stdout, workspace};
use serde_json::Value;

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs the binary and returns its output and peak RSS in MiB (wait4's rusage).
fn run_measured(cmd: &mut Command) -> (std::process::Output, u64) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Read the pipes on threads so a chatty child never blocks; reap with wait4 for the rusage.
    let mut child = child;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).unwrap();
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).unwrap();
        v
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid);
    let out = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    };
    (out, ru.ru_maxrss as u64 / 1024)
}

#[test]
fn hostile_records_are_rejected_or_kept_safely_and_nothing_escapes_the_output_root() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let out = dir.path().join("out");
    fs::create_dir_all(input.join("lobby")).unwrap();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for i in 0..200 {
        lines.push(format!("{{'user': 'u{i}', 'message': 'fine {i}'}}").into_bytes());
    }
    let long_name = "가".repeat(3400); // ~10 KB
    for sender in [
        "../../etc",
        "/abs/path",
        "__HIVE_DEFAULT_PARTITION__",
        "..",
        ".",
        &long_name,
    ] {
        lines.push(format!("{{'user': '{sender}', 'message': 'hostile sender'}}").into_bytes());
    }
    // A NUL byte in the sender, written as an escape and raw.
    lines.push(b"{'user': 'nul\\x00byte', 'message': 'escaped NUL'}".to_vec());
    lines.push(b"{'user': 'raw\x00nul', 'message': 'raw NUL'}".to_vec());
    // Nesting 100,000 deep and an integer of 10,000 digits.
    let deep = format!(
        "{{'user': 'deep', 'message': 'x', 'extra': {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    lines.push(deep.into_bytes());
    lines.push(
        format!(
            "{{'user': 'big', 'message': 'n', 'offset': {}}}",
            "9".repeat(10_000)
        )
        .into_bytes(),
    );
    // Something that would run code under eval().
    lines.push(
        b"{'user': __import__('os').system('touch /tmp/chatetl-pwned'), 'message': 'x'}".to_vec(),
    );
    let mut text = lines.join(&b"\n"[..]);
    text.push(b'\n');
    fs::write(input.join("lobby/chat_2024-10-24.log"), &text).unwrap();
    let before_outside = tree(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("out"))
        .collect::<Vec<_>>();

    let o = ok(chatetl(dir.path())
        .args([
            "--input-root",
            "in",
            "--output-root",
            "out",
            "--json",
            "run",
            "--date",
            "2024-10-24",
        ])
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(!Path::new("/tmp/chatetl-pwned").exists());

    // Nothing new outside out/.
    let after_outside = tree(dir.path())
        .into_iter()
        .filter(|p| !p.starts_with("out"))
        .collect::<Vec<_>>();
    assert_eq!(after_outside, before_outside);
    // Every sender directory is one path component right under the date.
    let date_dir = out.join("messages/date=2024-10-24");
    for e in fs::read_dir(&date_dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "_SUCCESS" {
            continue;
        }
        let bytes = name.as_bytes();
        assert!(bytes.starts_with(b"sender_id="), "{name:?}");
        assert!(!bytes.contains(&b'/') && !bytes.contains(&0), "{name:?}");
        assert!(bytes.len() <= 255, "{} bytes", bytes.len());
        assert_eq!(
            fs::canonicalize(e.path()).unwrap().parent().unwrap(),
            fs::canonicalize(&date_dir).unwrap()
        );
    }
    // The deep, the huge integer and the eval bait are rejected with reasons; the rest are kept.
    let rejects: Vec<Value> = fs::read_to_string(out.join("rejects/date=2024-10-24/rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = rejects
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"too_deep"), "{reasons:?}");
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    let manifest: Value =
        serde_json::from_slice(&fs::read(date_dir.join("_SUCCESS")).unwrap()).unwrap();
    let c = &manifest["counts"];
    assert_eq!(c["lines"].as_u64().unwrap(), lines.len() as u64);
    assert_eq!(
        c["record_lines"].as_u64().unwrap() + c["rejected"].as_u64().unwrap(),
        lines.len() as u64,
        "{c}"
    );
}

#[test]
fn a_64_mib_line_without_newline_is_rejected_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("in/lobby")).unwrap();
    let mut text = b"{'user': 'a', 'message': 'ok'}\n{'user': 'b', 'message': '".to_vec();
    text.resize(text.len() + (64 << 20), b'x');
    fs::write(dir.path().join("in/lobby/chat_2024-10-24.log"), &text).unwrap();
    drop(text);
    let (o, rss) = run_measured(chatetl(dir.path()).args([
        "--input-root",
        "in",
        "--output-root",
        "out",
        "--json",
        "extract",
        "--date",
        "2024-10-24",
    ]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["summary"]["totals"]["rejected"], 1);
    assert_eq!(v["summary"]["totals"]["staged"], 1);
    let reject: Value = serde_json::from_str(
        fs::read_to_string(dir.path().join("out/rejects/date=2024-10-24/rejects.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reject["reason"], "line_too_long");
    assert_eq!(reject["line"], 2);
    // The line is never held whole: the peak is that of a tiny input, give or take a few MiB
    // (the baseline includes what the forked child shared with this test process).
    let small = tempfile::tempdir().unwrap();
    fs::create_dir_all(small.path().join("in/lobby")).unwrap();
    fs::write(
        small.path().join("in/lobby/chat_2024-10-24.log"),
        "{'user': 'a', 'message': 'ok'}\n",
    )
    .unwrap();
    let (o, base) = run_measured(chatetl(small.path()).args([
        "--input-root",
        "in",
        "--output-root",
        "out",
        "extract",
        "--date",
        "2024-10-24",
    ]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        rss < base + 16,
        "peak RSS {rss} MiB for a 64 MiB line, {base} MiB for one short line"
    );
}

#[test]
fn a_fifo_a_directory_and_a_symlink_loop_where_logs_are_expected() {
    let (dir, input, out) = workspace();
    let fifo = input.join("lobby/chat_2024-10-24.fifo.log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::create_dir_all(input.join("team2/chat_2024-10-24.log")).unwrap();
    std::os::unix::fs::symlink(
        "loop_b_2024-10-24.log",
        input.join("team2/loop_a_2024-10-24.log"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "loop_a_2024-10-24.log",
        input.join("team2/loop_b_2024-10-24.log"),
    )
    .unwrap();
    let o = chatetl(dir.path())
        .args([
            "--input-root",
            input.to_str().unwrap(),
            "--output-root",
            out.to_str().unwrap(),
            "--json",
            "run",
            "--date",
            "2024-10-24",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s: Value =
        serde_json::from_slice(&fs::read(out.join("messages/date=2024-10-24/_SUCCESS")).unwrap())
            .unwrap();
    let inputs: Vec<&str> = s["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(
        !inputs
            .iter()
            .any(|p| p.contains("fifo") || p.contains("loop_")),
        "{inputs:?}"
    );
}

#[test]
fn two_runs_of_one_date_one_waits_out_and_different_dates_run_in_parallel() {
    let (dir, input, out) = workspace();
    let spawn = |date: &str| {
        chatetl(dir.path())
            .args([
                "--input-root",
                input.to_str().unwrap(),
                "--output-root",
                out.to_str().unwrap(),
                "run",
                "--force",
                "--date",
                date,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Different dates at once: both complete.
    let a = spawn("2024-10-24");
    let b = spawn("2024-10-25");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (code(&a), code(&b)),
        (0, 0),
        "{} {}",
        stderr(&a),
        stderr(&b)
    );
    // The same date many times at once: each one either completes or exits 75 naming the
    // holder, at least one completes, and the date is complete afterwards.
    let runs: Vec<_> = (0..6).map(|_| spawn("2024-10-24")).collect();
    let codes: Vec<i32> = runs
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            if code(&o) == 75 {
                assert!(stderr(&o).contains("is locked by"), "{}", stderr(&o));
            }
            code(&o)
        })
        .collect();
    assert!(codes.iter().all(|c| *c == 0 || *c == 75), "{codes:?}");
    assert!(codes.contains(&0), "{codes:?}");
    assert!(out.join("messages/date=2024-10-24/_SUCCESS").is_file());
}

/// Checks a committed date: the manifest lists exactly the Parquet files on disk, with their
/// sizes and SHA-256. Returns the manifest.
fn assert_complete(date_dir: &Path) -> Value {
    use sha2::{Digest, Sha256};
    let m: Value = serde_json::from_slice(&fs::read(date_dir.join("_SUCCESS")).unwrap()).unwrap();
    let mut listed: Vec<String> = Vec::new();
    for f in m["files"].as_array().unwrap() {
        let p = date_dir.join(f["path"].as_str().unwrap());
        let bytes = fs::read(&p).unwrap();
        assert_eq!(
            bytes.len() as u64,
            f["bytes"].as_u64().unwrap(),
            "{}",
            p.display()
        );
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
        listed.push(f["path"].as_str().unwrap().to_string());
    }
    let mut on_disk: Vec<String> = tree(date_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    listed.sort();
    assert_eq!(on_disk, listed);
    m
}

/// A small tmpfs at `dir` (root only); None when mounting is not allowed here.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_exits_74_keeps_the_previous_output_and_removes_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let Some(_fs) = Tmpfs::mount(&out, "3m") else {
        assert!(
            std::env::var("CHATETL_REQUIRE_TMPFS").as_deref() != Ok("1"),
            "CHATETL_REQUIRE_TMPFS=1 but tmpfs cannot be mounted"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let input = dir.path().join("in");
    fs::create_dir_all(input.join("lobby")).unwrap();
    let log = input.join("lobby/chat_2024-10-24.log");
    let line = |i: usize| {
        format!(
            "{{'user': 'u{}', 'message': 'message number {i} 안녕하세요'}}\n",
            i % 50
        )
    };
    fs::write(&log, (0..2_000).map(line).collect::<String>()).unwrap();
    let args = [
        "--input-root",
        input.to_str().unwrap(),
        "--output-root",
        out.to_str().unwrap(),
        "run",
        "--date",
        "2024-10-24",
    ];
    ok(chatetl(dir.path()).args(args).output().unwrap());
    let date_dir = out.join("messages/date=2024-10-24");
    let before = assert_complete(&date_dir);
    // Ten times the input no longer fits: 74, one line, the previous output as it was.
    fs::write(&log, (0..60_000).map(line).collect::<String>()).unwrap();
    let o = chatetl(dir.path()).args(args).output().unwrap();
    assert_eq!(code(&o), 74, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
    assert_eq!(assert_complete(&date_dir), before);
    let tmp = out.join("_tmp");
    let leftovers: Vec<_> = fs::read_dir(&tmp).map(|d| d.collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
