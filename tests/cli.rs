//! Integration tests: run the real `chatetl` binary in temporary directories with a clean
//! environment, one test per exit code and per behaviour a scheduler relies on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod common;

use common::{chatetl, code, is_root, repo, run, stderr, stdout, unprivileged, workspace};

fn args<'a>(input: &'a Path, out: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--input-root",
        input.to_str().unwrap(),
        "--output-root",
        out.to_str().unwrap(),
        "--tz",
        "Asia/Seoul",
    ];
    v.extend_from_slice(rest);
    v
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

// ---------------------------------------------------------------- foundation

#[test]
fn help_lists_working_subcommands() {
    let o = run(&repo(), &["--help"]);
    assert_eq!(code(&o), 0);
    for sub in ["check-log", "clean-output", "extract", "write", "config"] {
        assert!(stdout(&o).contains(sub), "{sub} missing from help");
    }
}

#[test]
fn check_log_exit_codes() {
    let (dir, input, out) = workspace();
    let o = run(
        dir.path(),
        &args(&input, &out, &["check-log", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("lobby/chat_2024-10-24.log"));
    assert!(stdout(&o).contains("consumer_20241024.log"));

    let o = run(
        dir.path(),
        &args(&input, &out, &["check-log", "--date", "2024-10-26"]),
    );
    assert_eq!(code(&o), 99);
    let o = run(
        dir.path(),
        &args(
            &input,
            &out,
            &["check-log", "--date", "2024-10-26", "--require"],
        ),
    );
    assert_eq!(code(&o), 66);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let o = run(
        dir.path(),
        &args(
            &input,
            &out,
            &["--json", "check-log", "--date", "2024-10-25"],
        ),
    );
    assert_eq!(code(&o), 0);
    let v = json_of(&o);
    assert_eq!(v["files"].as_array().unwrap().len(), 5, "{v}");
}

#[test]
fn empty_files_only_means_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(input.join("room")).unwrap();
    fs::write(input.join("room/chat_2024-10-24.log"), "").unwrap();
    let out = dir.path().join("out");
    let o = run(
        dir.path(),
        &args(&input, &out, &["check-log", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 99);
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    for a in [
        vec!["check-log", "--date", "2024-13-45"],
        vec!["check-log"],
        vec!["check-log", "--date", "2024-10-24", "--bogus"],
        vec!["frobnicate"],
        vec![
            "extract",
            "--date",
            "2024-10-24",
            "--max-reject-ratio",
            "abc",
        ],
        vec![],
    ] {
        let o = run(dir.path(), &a);
        assert_eq!(code(&o), 64, "{a:?}: {}", stderr(&o));
        // One line, like every other error (no arguments at all prints the help).
        if !a.is_empty() {
            assert_eq!(stderr(&o).lines().count(), 1, "{a:?}: {}", stderr(&o));
            assert!(stderr(&o).starts_with("chatetl: error: "), "{}", stderr(&o));
        }
    }
    let o = run(dir.path(), &["check-log"]);
    assert!(
        stderr(&o).contains("--date <YYYY-MM-DD> (usage: chatetl check-log"),
        "{}",
        stderr(&o)
    );
    // With --json, the summary on stdout too.
    let o = run(dir.path(), &["--json", "run", "--date", "2024-1-01"]);
    assert_eq!(code(&o), 64);
    let v = json_of(&o);
    assert_eq!(v["exit_code"], 64, "{v}");
    assert!(v["error"].as_str().unwrap().contains("2024-1-01"), "{v}");
}

#[test]
fn config_errors_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("chatetl.toml"),
        "tz = \"UTC\"\noutput_rot = \"x\"\n",
    )
    .unwrap();
    let o = run(dir.path(), &["check-log", "--date", "2024-10-24"]);
    assert_eq!(code(&o), 78);
    assert!(stderr(&o).contains("output_rot"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);

    let o = run(dir.path(), &["--config", "missing.toml", "config"]);
    assert_eq!(code(&o), 78);

    let o = chatetl(dir.path())
        .args(["--config", "/dev/null", "config"])
        .env("CHATETL_TZ", "Not/AZone")
        .output()
        .unwrap();
    assert_eq!(code(&o), 78);
}

#[test]
fn config_shows_precedence() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("chatetl.toml"),
        "tz = \"Asia/Seoul\"\noutput_root = \"file_out\"\n",
    )
    .unwrap();
    let o = chatetl(dir.path())
        .args(["--input-root", "flag_in", "config"])
        .env("CHATETL_OUTPUT_ROOT", "env_out")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("input_root = \"flag_in\"    # flag"), "{s}");
    assert!(s.contains("output_root = \"env_out\"    # env"), "{s}");
    assert!(s.contains("tz = \"Asia/Seoul\"    # file"), "{s}");
}

#[test]
fn unreadable_input_root_exits_74() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &["--input-root", "nope", "check-log", "--date", "2024-10-24"],
    );
    assert_eq!(code(&o), 74);
}

#[test]
fn panic_is_one_line_and_exit_70() {
    let dir = tempfile::tempdir().unwrap();
    let o = chatetl(dir.path())
        .args(["config"])
        .env("CHATETL_DEBUG_PANIC", "1")
        .output()
        .unwrap();
    assert_eq!(code(&o), 70);
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("internal error"));
}

#[test]
fn clean_output_removes_only_the_date_and_not_symlink_targets() {
    let (dir, input, out) = workspace();
    let outside = dir.path().join("precious");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep.txt"), "keep").unwrap();
    for d in ["2024-10-24", "2024-10-25"] {
        let p = out.join(format!("messages/date={d}/sender_id=a"));
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("part-00000.parquet"), "x").unwrap();
        fs::create_dir_all(out.join(format!("rejects/date={d}"))).unwrap();
        fs::create_dir_all(out.join("status")).unwrap();
        fs::write(out.join(format!("status/date={d}.json")), "{}").unwrap();
    }
    std::os::unix::fs::symlink(&outside, out.join("messages/date=2024-10-24/link")).unwrap();
    let o = run(
        dir.path(),
        &args(
            &input,
            &out,
            &["clean-output", "--date", "2024-10-24", "--dry-run"],
        ),
    );
    assert_eq!(code(&o), 0);
    assert!(out.join("messages/date=2024-10-24").exists());
    let o = run(
        dir.path(),
        &args(&input, &out, &["clean-output", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("removed"));
    assert!(!out.join("messages/date=2024-10-24").exists());
    assert!(!out.join("rejects/date=2024-10-24").exists());
    // The date's stage outcomes go with it: `notify --status auto` has nothing to report.
    assert!(!out.join("status/date=2024-10-24.json").exists());
    assert!(
        out.join("messages/date=2024-10-25/sender_id=a/part-00000.parquet")
            .exists()
    );
    assert!(out.join("rejects/date=2024-10-25").exists());
    assert!(out.join("status/date=2024-10-25.json").exists());
    assert_eq!(
        fs::read_to_string(outside.join("keep.txt")).unwrap(),
        "keep"
    );
    let o = run(
        dir.path(),
        &args(&input, &out, &["clean-output", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("nothing to remove"));
}

#[test]
fn clean_output_refuses_dangerous_roots() {
    let (dir, input, _out) = workspace();
    let nested = input.join("out");
    let parent = dir.path().to_str().unwrap();
    for root in [
        "/",
        input.to_str().unwrap(),
        nested.to_str().unwrap(),
        parent,
    ] {
        let o = run(
            dir.path(),
            &[
                "--input-root",
                input.to_str().unwrap(),
                "--output-root",
                root,
                "clean-output",
                "--date",
                "2024-10-24",
            ],
        );
        assert_eq!(code(&o), 78, "{root}: {}", stderr(&o));
        assert!(input.join("lobby").exists() && !nested.exists());
    }
    let home = dir.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let o = chatetl(dir.path())
        .env("HOME", &home)
        .args([
            "--output-root",
            home.to_str().unwrap(),
            "clean-output",
            "--date",
            "2024-10-24",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 78);
}

#[test]
fn second_process_on_the_same_date_exits_75() {
    let (dir, input, out) = workspace();
    let layout = chatetl::layout::Layout::new(&out);
    let date = chrono::NaiveDate::from_ymd_opt(2024, 10, 24).unwrap();
    let held = chatetl::lock::DateLock::acquire(&layout, date, "test holder").unwrap();
    let o = run(
        dir.path(),
        &args(&input, &out, &["clean-output", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(stderr(&o).contains("test holder"), "{}", stderr(&o));
    let o = run(
        dir.path(),
        &args(&input, &out, &["extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 75);
    // Another date is not blocked.
    let o = run(
        dir.path(),
        &args(&input, &out, &["clean-output", "--date", "2024-10-25"]),
    );
    assert_eq!(code(&o), 0);
    drop(held);
    let o = run(
        dir.path(),
        &args(&input, &out, &["clean-output", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0);
}

// ---------------------------------------------------------------- extract

fn rejects(out: &Path, date: &str) -> Vec<Value> {
    fs::read_to_string(out.join(format!("rejects/date={date}/rejects.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_accounting(summary: &Value) {
    for f in summary["files"].as_array().unwrap() {
        let n = |k: &str| f[k].as_u64().unwrap();
        assert_eq!(
            n("lines"),
            n("record_lines") + n("rejected") + n("noise") + n("blank"),
            "accounting of {f}"
        );
    }
}

#[test]
fn extract_sample_logs() {
    let (dir, input, out) = workspace();
    let o = run(
        dir.path(),
        &args(&input, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    let s = &v["summary"];
    assert_accounting(s);
    let t = &s["totals"];
    assert_eq!(t["rejected"], 1, "{t}");
    let rj = rejects(&out, "2024-10-24");
    assert_eq!(rj.len(), 1);
    assert_eq!(rj[0]["file"], "lobby/chat_2024-10-24.log");
    assert_eq!(rj[0]["line"], 26);
    assert!(rj[0]["raw"].as_str().unwrap().contains("오늘 회의는 3시에"));
    assert!(
        t["dropped"]["lone_surrogates"].as_u64().unwrap() >= 3,
        "{t}"
    );
    assert!(t["dropped"]["control_chars"].as_u64().unwrap() >= 2, "{t}");
    assert!(t["system"].as_u64().unwrap() >= 5, "{t}");
    let files = s["files"].as_array().unwrap();
    let consumer = files
        .iter()
        .find(|f| f["file"] == "product/consumer_20241024.log")
        .unwrap();
    assert_eq!(consumer["noise"], 6);
    assert_eq!(consumer["records"], 30);
    assert!(out.join("_staging/date=2024-10-24/records.arrow").exists());

    let o = run(
        dir.path(),
        &args(&input, &out, &["--json", "extract", "--date", "2024-10-25"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    assert_accounting(&v["summary"]);
    let t = &v["summary"]["totals"];
    assert_eq!(t["duplicates"], 1, "{t}");
    assert_eq!(t["rejected"], 0, "{t}");
    let files = v["summary"]["files"].as_array().unwrap();
    let csv = files
        .iter()
        .find(|f| f["file"] == "support/support_20241025.csv")
        .unwrap();
    assert_eq!(csv["records"], 15, "{csv}");
    assert_eq!(csv["format"], "csv");
    let arr = files
        .iter()
        .find(|f| f["file"] == "team6/2024-10-25_messages.json")
        .unwrap();
    assert_eq!(arr["records"], 20, "{arr}");
    assert_eq!(arr["format"], "json_array");
    let ops = files
        .iter()
        .find(|f| f["file"] == "ops/airflow_2024-10-25.log")
        .unwrap();
    assert_eq!(ops["records"], 4, "{ops}");
    assert_eq!(ops["noise"], 12, "{ops}");
}

/// Writes a fixture file under `in/<room>/` for 2024-10-24.
fn fixture(bytes: &[u8], name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(input.join("room")).unwrap();
    fs::write(input.join("room").join(name), bytes).unwrap();
    let out = dir.path().join("out");
    (dir, input, out)
}

#[test]
fn broken_records_on_known_lines_are_exactly_the_rejects() {
    let text = concat!(
        "{'user': 'a', 'message': 'ok 1', 'time': '2024-10-24 10:00:00'}\n", // 1
        "{'user': 'a', 'message': 'cut off\n",                               // 2 reject
        "just some noise\n",                                                 // 3 noise
        "\n",                                                                // 4 blank
        "{'user': 'b', 'message': 5}\n", // 5 reject: not a string
        "{\"user\": \"b\", \"message\": \"json {braces} 'quotes'\"}\n", // 6
        "{'user': 'c', 'message': 'x'} trailing\n", // 7 reject
        "{'user': 'c'}\n",               // 8 reject: no message
        "offset=9, value={'user': 'd', 'message': 'prefixed'}\n", // 9
        "{'user': 'e', 'message': __import__('os').system('id')}\n", // 10 reject
        "{'user': 'f', 'message': 'bad \u{ff} byte'}\n", // 11: a raw invalid byte, see below
    );
    let mut bytes = text.as_bytes().to_vec();
    // Make line 11 hold a raw invalid byte inside the string.
    let pos = bytes
        .windows(2)
        .position(|w| w == "\u{ff}".as_bytes())
        .unwrap();
    bytes.splice(pos..pos + 2, [0xffu8]);
    let (dir, input, out) = fixture(&bytes, "chat_2024-10-24.log");
    let o = run(
        dir.path(),
        &args(&input, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    assert_accounting(&v["summary"]);
    let lines: Vec<u64> = rejects(&out, "2024-10-24")
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 5, 7, 8, 10]);
    let rj = rejects(&out, "2024-10-24");
    assert_eq!(rj[1]["reason"], "message_not_string");
    assert_eq!(rj[2]["reason"], "trailing_garbage");
    assert_eq!(rj[3]["reason"], "missing_message");
    let t = &v["summary"]["totals"];
    assert_eq!(t["records"], 4);
    assert_eq!(t["noise"], 1);
    assert_eq!(t["blank"], 1);
    assert_eq!(t["dropped"]["invalid_bytes"], 1);
}

#[test]
fn record_shaped_garbage_exits_65_and_stages_nothing() {
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&format!("{{'user': 'x{i}', 'message': 'never closed\n"));
    }
    let (dir, input, out) = fixture(text.as_bytes(), "chat_2024-10-24.log");
    let o = run(
        dir.path(),
        &args(&input, &out, &["extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert_eq!(rejects(&out, "2024-10-24").len(), 20);
    assert!(!out.join("_staging/date=2024-10-24").exists());
    let o = run(
        dir.path(),
        &args(&input, &out, &["write", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 66);
}

#[test]
fn truncated_json_array_keeps_leading_records() {
    let text = "[\n    {\n        \"sender\": \"a\",\n        \"message\": \"one\"\n    },\n    {\n        \"sender\": \"b\",\n        \"message\": \"two\"\n    },\n    {\n        \"sender\": \"c\",\n        \"mess";
    let (dir, input, out) = fixture(text.as_bytes(), "2024-10-24_messages.json");
    let o = run(
        dir.path(),
        &args(
            &input,
            &out,
            &[
                "--json",
                "extract",
                "--date",
                "2024-10-24",
                "--max-reject-ratio",
                "1",
            ],
        ),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    assert_accounting(&v["summary"]);
    let f = &v["summary"]["files"][0];
    assert_eq!(f["records"], 2);
    assert_eq!(f["rejected"], 3);
    let rj = rejects(&out, "2024-10-24");
    assert_eq!(rj[0]["line"], 10);
    assert!(
        rj[0]["detail"].as_str().unwrap().contains("line 10"),
        "{}",
        rj[0]
    );
}

#[test]
fn gzip_bom_crlf_and_no_final_newline() {
    use std::io::Write;
    let text = "\u{feff}{\"sender\": \"a\", \"message\": \"\\uc548\\udce3\\udc84\\ub155\"}\r\n{\"sender\": \" b \", \"message\": \"\\u001b[3~x\\u0003\"}";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let (dir, input, out) = fixture(&gz.finish().unwrap(), "m_2024-10-24.jsonl.gz");
    let o = run(
        dir.path(),
        &args(&input, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    let f = &v["summary"]["files"][0];
    assert_eq!(f["lines"], 2);
    assert_eq!(f["records"], 2);
    assert_eq!(f["dropped"]["lone_surrogates"], 2);
    assert_eq!(f["dropped"]["control_chars"], 2);
    let o = run(
        dir.path(),
        &args(&input, &out, &["write", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        out.join("messages/date=2024-10-24/sender_id=a/part-00000.parquet")
            .exists()
    );
    assert!(
        out.join("messages/date=2024-10-24/sender_id=b/part-00000.parquet")
            .exists()
    );
}

#[test]
fn corrupt_gzip_is_a_data_error() {
    let (dir, input, out) = fixture(b"\x1f\x8b\x08\x00garbage", "m_2024-10-24.log.gz");
    let o = run(
        dir.path(),
        &args(&input, &out, &["extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 65, "{}", stderr(&o));
}

#[test]
fn unreadable_file_exits_74() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, input, out) = fixture(b"{'user': 'a', 'message': 'x'}\n", "chat_2024-10-24.log");
    let path = input.join("room/chat_2024-10-24.log");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    if is_root() {
        // Root reads anything: the binary runs as nobody, who may write the output root only.
        for p in [dir.path(), input.as_path(), &input.join("room")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
    let o = unprivileged(dir.path())
        .args(args(&input, &out, &["extract", "--date", "2024-10-24"]))
        .output()
        .unwrap();
    assert_eq!(code(&o), 74, "{}", stderr(&o));
    assert!(stderr(&o).contains("chat_2024-10-24.log"), "{}", stderr(&o));
}

#[test]
fn permission_refused_at_commit_exits_73_keeps_the_date_and_leaves_no_temporary_files() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, input, out) = fixture(
        b"{'user': 'a', 'message': 'x', 'time': '2024-10-24 10:00:00'}\n",
        "chat_2024-10-24.log",
    );
    if is_root() {
        for p in [dir.path(), input.as_path(), &input.join("room")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
    let as_nobody = |rest: &[&str]| {
        unprivileged(dir.path())
            .args(args(&input, &out, rest))
            .output()
            .unwrap()
    };
    let o = as_nobody(&["run", "--date", "2024-10-24"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let part = out.join("messages/date=2024-10-24/sender_id=a/part-00000.parquet");
    let before = fs::read(&part).unwrap();
    // The date cannot be swapped in: its parent refuses new entries.
    let messages = out.join("messages");
    fs::set_permissions(&messages, fs::Permissions::from_mode(0o555)).unwrap();
    let o = as_nobody(&["write", "--date", "2024-10-24"]);
    fs::set_permissions(&messages, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(code(&o), 73, "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    assert_eq!(fs::read(&part).unwrap(), before);
    let left: Vec<_> = fs::read_dir(out.join("_tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_failed_extract_leaves_nothing_for_write_to_commit() {
    let line = b"{'user': 'a', 'message': 'x', 'time': '2024-10-24 10:00:00'}\n";
    let (dir, input, out) = fixture(line, "chat_2024-10-24.log");
    let stage = |stage: &str| {
        run(
            dir.path(),
            &args(&input, &out, &[stage, "--date", "2024-10-24"]),
        )
    };
    let o = stage("run");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let part = out.join("messages/date=2024-10-24/sender_id=a/part-00000.parquet");
    let before = fs::read(&part).unwrap();
    // A second log of the day arrives broken: extract fails, and what it staged before is no
    // longer the day's input, so write has nothing to commit.
    fs::write(
        input.join("room/more_2024-10-24.log.gz"),
        b"\x1f\x8b\x08\x00garbage",
    )
    .unwrap();
    let o = stage("extract");
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    assert!(!out.join("_staging/date=2024-10-24").exists());
    let o = stage("write");
    assert_eq!(code(&o), 66, "{}", stderr(&o));
    assert_eq!(fs::read(&part).unwrap(), before);
    // The same when the day's input is gone.
    fs::remove_file(input.join("room/more_2024-10-24.log.gz")).unwrap();
    let o = stage("extract");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(out.join("_staging/date=2024-10-24").exists());
    fs::remove_file(input.join("room/chat_2024-10-24.log")).unwrap();
    let o = stage("extract");
    assert_eq!(code(&o), 99, "{}", stderr(&o));
    assert!(!out.join("_staging/date=2024-10-24").exists());
    let o = stage("write");
    assert_eq!(code(&o), 66, "{}", stderr(&o));
    assert_eq!(fs::read(&part).unwrap(), before);
    // And when `run` finds the input gone.
    fs::write(input.join("room/chat_2024-10-24.log"), line).unwrap();
    let o = stage("extract");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    fs::remove_file(input.join("room/chat_2024-10-24.log")).unwrap();
    let o = stage("run");
    assert_eq!(code(&o), 99, "{}", stderr(&o));
    assert!(!out.join("_staging/date=2024-10-24").exists());
}

#[test]
fn no_input_extract_is_skipped() {
    let (dir, input, out) = workspace();
    let o = run(
        dir.path(),
        &args(&input, &out, &["extract", "--date", "2024-10-26"]),
    );
    assert_eq!(code(&o), 99);
}

/// The shared corpus, when present beside the repository.
fn corpus() -> Option<PathBuf> {
    let p = repo().join("../shared/corpus");
    p.is_dir().then_some(p)
}

#[test]
fn corpus_files_extract_with_accounting() {
    let Some(corpus) = corpus() else {
        eprintln!("skipped: ../shared/corpus is absent");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let mut expected_files = 0;
    for sub in fs::read_dir(&corpus).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        for f in fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            let dest = input
                .join(sub.file_name().unwrap())
                .join("2024-08-27")
                .join(f.file_name().unwrap());
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(&f, &dest).unwrap();
            expected_files += 1;
        }
    }
    let out = dir.path().join("out");
    let o = run(
        dir.path(),
        &args(&input, &out, &["--json", "extract", "--date", "2024-08-27"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    let s = &v["summary"];
    assert_accounting(s);
    let files = s["files"].as_array().unwrap();
    assert_eq!(files.len(), expected_files);
    let by_name = |n: &str| {
        files
            .iter()
            .find(|f| f["file"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    assert_eq!(by_name("chat_20240827.log")["records"], 530);
    assert_eq!(by_name("get_json_stdout.log")["noise"], 2);
    assert_eq!(by_name("get_json_stdout.log")["records"], 197);
    let stdout_log = by_name("get_json_stdout.log");
    assert_eq!(stdout_log["rejected"], 0, "{stdout_log}");
    assert!(
        by_name("240826_messages.json")["dropped"]["lone_surrogates"]
            .as_u64()
            .unwrap()
            >= 3
    );
    assert!(
        by_name("doublechat/2024-08-27/messages.json")["dropped"]["control_chars"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert!(
        by_name("doublechat/2024-08-27/messages.json")["system"]
            .as_u64()
            .unwrap()
            >= 1
    );
    for f in files {
        assert_eq!(f["rejected"], 0, "{f}");
    }
    let o = run(
        dir.path(),
        &args(&input, &out, &["write", "--date", "2024-08-27"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

// ---------------------------------------------------------------- write

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn write_is_deterministic_and_manifest_matches() {
    let (dir, input, out) = workspace();
    for stage in ["extract", "write"] {
        let o = run(
            dir.path(),
            &args(&input, &out, &[stage, "--date", "2024-10-25"]),
        );
        assert_eq!(code(&o), 0, "{stage}: {}", stderr(&o));
    }
    let date_dir = out.join("messages/date=2024-10-25");
    let first: Vec<(PathBuf, Vec<u8>)> = parquet_files(&date_dir)
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert!(first.len() >= 5);
    let manifest: Value =
        serde_json::from_slice(&fs::read(date_dir.join("_SUCCESS")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), first.len());
    assert_eq!(manifest["rows"], manifest["counts"]["staged"]);
    for stage in ["extract", "write"] {
        let o = run(
            dir.path(),
            &args(&input, &out, &[stage, "--date", "2024-10-25"]),
        );
        assert_eq!(code(&o), 0);
    }
    let second: Vec<(PathBuf, Vec<u8>)> = parquet_files(&date_dir)
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    assert_eq!(first, second, "Parquet output differs between two runs");
    assert!(
        !out.join("_tmp").read_dir().unwrap().any(|_| true),
        "temporary leftovers"
    );
}

/// `write` reads the staged records without arrow's validation and checks them itself: staged
/// text damaged after extract (a byte that is never UTF-8, or a lone continuation byte in place
/// of a Hangul syllable's first byte), names of its ids damaged, or a staged file cut short or
/// with a damaged footer, is a data error, and the committed date stays as it was.
#[test]
fn damaged_staged_text_is_a_data_error_and_keeps_the_previous_date() {
    let line = |i: usize| format!("{{'user': 'u{}', 'message': 'mark{i:04} 가나'}}\n", i % 3);
    let text: String = (0..50).map(line).collect();
    let (dir, input, out) = fixture(text.as_bytes(), "chat_2024-10-24.log");
    let stages = |stages: &[&str]| {
        for stage in stages {
            let o = run(
                dir.path(),
                &args(&input, &out, &[stage, "--date", "2024-10-24"]),
            );
            assert_eq!(code(&o), 0, "{stage}: {}", stderr(&o));
        }
    };
    stages(&["extract", "write"]);
    let date_dir = out.join("messages/date=2024-10-24");
    let before = snapshot(&date_dir);
    assert_eq!(assert_complete_date(&date_dir), 50);
    let staged = out.join("_staging/date=2024-10-24/records.arrow");
    let pristine = fs::read(&staged).unwrap();
    let at = |needle: &[u8]| {
        pristine
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the message is in the staged file")
    };
    // `write` on a damaged staged file: exit 65 with one line holding `says`, the date as it was.
    let fails = |damaged: &[u8], says: &str| {
        fs::write(&staged, damaged).unwrap();
        let o = run(
            dir.path(),
            &args(&input, &out, &["write", "--date", "2024-10-24"]),
        );
        assert_eq!(code(&o), 65, "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert_eq!(snapshot(&date_dir), before, "the committed date changed");
    };
    let not_utf8 = at(b"mark0007");
    let split = at("mark0011 가나".as_bytes()) + "mark0011 가".len();
    for (pos, byte) in [(not_utf8, 0xFF), (split, 0x80)] {
        let mut damaged = pristine.clone();
        damaged[pos] = byte;
        fails(
            &damaged,
            "unreadable staged records: column message: not UTF-8",
        );
    }
    // The names behind the staged ids (JSON in the footer) damaged, the footer's length the
    // same: a sender id whose name is gone, a sender named by two ids.
    let names = at(br#""senders":["u0","u1","u2"]"#);
    for (names_now, says) in [
        (
            &br#""senders":[null,"u1","u2"]"#[..],
            "sender id 0 names no sender",
        ),
        (
            &br#""senders":["u0","u0","u2"]"#[..],
            "a sender with two ids",
        ),
    ] {
        let mut damaged = pristine.clone();
        damaged[names..names + names_now.len()].copy_from_slice(names_now);
        fails(&damaged, &format!("unreadable staged records: {says}"));
    }
    // Cut short (the footer gone), or its footer's length damaged (the length, four bytes
    // before the closing magic, made negative).
    let len = pristine.len();
    let mut bad_length = pristine.clone();
    bad_length[len - 10..len - 6].copy_from_slice(&u32::MAX.to_le_bytes());
    for damaged in [
        &pristine[..len - 100],
        &pristine[..len / 2],
        &bad_length[..],
    ] {
        fails(damaged, "unreadable staged records");
    }
    fs::write(&staged, &pristine).unwrap();
    stages(&["write"]);
    assert_eq!(assert_complete_date(&date_dir), 50);
}

/// The bitmap of duplicates left out and the summary's counts must agree with the staged
/// records: damaged after extract, they are a data error (65), not an internal one, and the
/// committed date stays as it was.
#[test]
fn damaged_duplicate_bitmap_or_counts_are_a_data_error() {
    let line = |i: usize| {
        format!(
            "{{'user': 'u{}', 'message': 'm{i}', 'chat_room': 'r', 'offset': {i}}}\n",
            i % 3
        )
    };
    // 50 records, then exact copies of the first three: 53 staged rows, 3 of them left out.
    let text: String = (0..50).chain(0..3).map(line).collect();
    let (dir, input, out) = fixture(text.as_bytes(), "chat_2024-10-24.log");
    let stage = |stage: &str| {
        run(
            dir.path(),
            &args(&input, &out, &[stage, "--date", "2024-10-24"]),
        )
    };
    for s in ["extract", "write"] {
        assert_eq!(code(&stage(s)), 0);
    }
    let date_dir = out.join("messages/date=2024-10-24");
    let before = snapshot(&date_dir);
    assert_eq!(assert_complete_date(&date_dir), 50);
    let staging = out.join("_staging/date=2024-10-24");
    let bitmap = staging.join("dropped-rows.bitmap");
    let summary = staging.join("extract.json");
    let (bits, counts) = (fs::read(&bitmap).unwrap(), fs::read(&summary).unwrap());
    let fails = |says: &str| {
        let o = stage("write");
        assert_eq!(code(&o), 65, "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert_eq!(snapshot(&date_dir), before, "the committed date changed");
    };
    // No row left out any more, or one more.
    for damaged in [vec![0u8; bits.len()], {
        let mut b = bits.clone();
        b[0] |= 0x80;
        b
    }] {
        fs::write(&bitmap, damaged).unwrap();
        fails("damaged staged records: 53 rows");
    }
    fs::write(&bitmap, &bits).unwrap();
    // The summary's count of rows to write changed; then with no bitmap at all (the rows
    // written do not add up).
    let mut v: Value = serde_json::from_slice(&counts).unwrap();
    v["totals"]["staged"] = 49.into();
    fs::write(&summary, serde_json::to_vec(&v).unwrap()).unwrap();
    fails("but 49 to write");
    v["dropped_rows_file"] = Value::Null;
    fs::write(&summary, serde_json::to_vec(&v).unwrap()).unwrap();
    fails("damaged staged records: wrote 53 rows but 49 were staged");
    fs::write(&summary, &counts).unwrap();
    assert_eq!(code(&stage("write")), 0);
    assert_eq!(assert_complete_date(&date_dir), 50);
}

/// Every file under `root` with its bytes and modification time.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let modified = fs::metadata(&p).unwrap().modified().unwrap();
                out.push((p.clone(), fs::read(&p).unwrap(), modified));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn run_twice_is_byte_identical_and_never_touches_another_date() {
    let (dir, input, out) = workspace();
    for date in ["2024-10-24", "2024-10-25"] {
        let o = run(dir.path(), &args(&input, &out, &["run", "--date", date]));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let other: Vec<PathBuf> = ["messages", "rejects", "aggregates"]
        .iter()
        .map(|d| out.join(d).join("date=2024-10-25"))
        .collect();
    let before: Vec<_> = other.iter().map(|d| snapshot(d)).collect();
    let strip = |v: Vec<(PathBuf, Vec<u8>, std::time::SystemTime)>| {
        v.into_iter().map(|(p, b, _)| (p, b)).collect::<Vec<_>>()
    };
    let first = strip(snapshot(&out.join("messages/date=2024-10-24")));
    let first_agg = strip(snapshot(&out.join("aggregates/date=2024-10-24")));
    let o = run(
        dir.path(),
        &args(&input, &out, &["run", "--force", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        strip(snapshot(&out.join("messages/date=2024-10-24"))),
        first
    );
    assert_eq!(
        strip(snapshot(&out.join("aggregates/date=2024-10-24"))),
        first_agg
    );
    // The other date: same bytes, same modification times.
    let after: Vec<_> = other.iter().map(|d| snapshot(d)).collect();
    assert_eq!(after, before);
}

/// The codecs of every column chunk of every Parquet file under `dir` (messages or aggregates),
/// without zstd's level, which files do not record.
fn parquet_codecs(dir: &Path) -> std::collections::BTreeSet<String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut codecs = std::collections::BTreeSet::new();
    for p in parquet_files(dir) {
        let r = SerializedFileReader::new(fs::File::open(&p).unwrap()).unwrap();
        for g in r.metadata().row_groups() {
            for c in g.columns() {
                let codec = format!("{:?}", c.compression());
                codecs.insert(codec.split('(').next().unwrap().to_string());
            }
        }
    }
    codecs
}

#[test]
fn compression_is_chosen_recorded_and_rebuilds_the_date() {
    let (dir, input, out) = workspace();
    let date = "2024-10-24";
    let messages = out.join(format!("messages/date={date}"));
    let aggregates = out.join(format!("aggregates/date={date}"));
    let manifest = || -> Value {
        serde_json::from_slice(&fs::read(messages.join("_SUCCESS")).unwrap()).unwrap()
    };
    let run_with = |codec: Option<&str>| {
        let mut c = chatetl(dir.path());
        if let Some(codec) = codec {
            c.env("CHATETL_COMPRESSION", codec);
        }
        c.args(args(
            &input,
            &out,
            &["--json", "run", "--no-notify", "--date", date],
        ))
        .output()
        .unwrap()
    };
    let status = |o: &Output| {
        json_of(o)["dates"][0]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let o = run_with(None);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let first = manifest();
    assert_eq!(first["compression"], "zstd");
    assert_eq!(parquet_codecs(&messages), ["ZSTD".to_string()].into());
    // Another codec: the date is rebuilt, not up to date, with the same rows in every file.
    for (codec, expected) in [
        ("snappy", "SNAPPY"),
        ("lz4", "LZ4_RAW"),
        ("none", "UNCOMPRESSED"),
        ("zstd:9", "ZSTD"),
    ] {
        let o = run_with(Some(codec));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(status(&o), "ok", "{codec}: {}", stdout(&o));
        let m = manifest();
        assert_eq!(m["compression"], codec);
        assert_eq!(
            parquet_codecs(&messages),
            [expected.to_string()].into(),
            "{codec}"
        );
        let rows = |m: &Value| -> Vec<(Value, Value)> {
            m["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["path"].clone(), f["rows"].clone()))
                .collect()
        };
        assert_eq!(rows(&m), rows(&first), "{codec}");
        // Files record the codec but not zstd's level: level 9 shows in the bytes (not always
        // fewer on files this small).
        if codec == "zstd:9" {
            assert_ne!(m["files"], first["files"]);
        }
        // The aggregates follow (zstd at polars' own level for any zstd level).
        assert_eq!(
            parquet_codecs(&aggregates),
            [expected.to_string()].into(),
            "{codec}"
        );
    }
    // The same codec again: up to date.
    let o = run_with(Some("zstd:9"));
    assert_eq!(status(&o), "up_to_date", "{}", stdout(&o));
    // Back to the default: the bytes of the first run.
    let o = run_with(None);
    assert_eq!(status(&o), "ok", "{}", stdout(&o));
    assert_eq!(manifest(), first);
    // An unknown codec is a configuration error, and the date stays as it was.
    let o = run_with(Some("brotli"));
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(stderr(&o).contains("CHATETL_COMPRESSION"), "{}", stderr(&o));
    assert_eq!(manifest(), first);
    // Messages rewritten alone with the default codec after a snappy run: `run` finds them up to
    // date but rebuilds the aggregates, still snappy.
    assert_eq!(code(&run_with(Some("snappy"))), 0);
    let o = chatetl(dir.path())
        .args(args(&input, &out, &["write", "--date", date]))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(parquet_codecs(&aggregates), ["SNAPPY".to_string()].into());
    let o = run_with(None);
    assert_eq!(status(&o), "up_to_date", "{}", stdout(&o));
    assert_eq!(parquet_codecs(&aggregates), ["ZSTD".to_string()].into());
}

/// `run` finds a date up to date only when the settings that decided its records are the same
/// (a new system sender changes `kind`), and keeps its aggregates only when they are the ones it
/// would make (not an `aggregate --include-system --top 1` made by hand since).
#[test]
fn run_redoes_a_date_whose_record_settings_or_aggregates_differ() {
    let (dir, input, out) = workspace();
    let date = "2024-10-24";
    let run_with = |system: Option<&str>| {
        let mut c = chatetl(dir.path());
        if let Some(s) = system {
            c.env("CHATETL_SYSTEM_SENDERS", s);
        }
        c.args(args(&input, &out, &["--json", "run", "--date", date]))
            .output()
            .unwrap()
    };
    let status = |o: &Output| {
        json_of(o)["dates"][0]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let summary = || -> Value {
        serde_json::from_slice(
            &fs::read(out.join(format!("aggregates/date={date}/summary.json"))).unwrap(),
        )
        .unwrap()
    };
    let top = || summary()["top_senders"][0]["sender_id"].clone();
    assert_eq!(status(&run_with(None)), "ok");
    let busiest = top();
    assert_eq!(status(&run_with(None)), "up_to_date");
    // The busiest sender made a system sender: the date is redone, and it leaves the top list.
    let mina = busiest.as_str().unwrap().to_string();
    assert_eq!(status(&run_with(Some(&mina))), "ok");
    assert_ne!(top(), busiest);
    assert_eq!(status(&run_with(Some(&mina))), "up_to_date");
    // Back to the defaults: redone again.
    assert_eq!(status(&run_with(None)), "ok");
    assert_eq!(top(), busiest);
    // Aggregates made by hand with other options are made again by an up-to-date run.
    let o = chatetl(dir.path())
        .args(args(
            &input,
            &out,
            &[
                "aggregate",
                "--date",
                date,
                "--include-system",
                "--top",
                "1",
            ],
        ))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(summary()["include_system"], true);
    assert_eq!(status(&run_with(None)), "up_to_date");
    assert_eq!(summary()["include_system"], false);
    assert_eq!(summary()["top"], 10);
}

/// Checks that `messages/date=D` is complete: `_SUCCESS` lists exactly the Parquet files on disk,
/// with their sizes and hashes. Returns the manifest's row count.
fn assert_complete_date(date_dir: &Path) -> u64 {
    use sha2::{Digest, Sha256};
    let manifest: Value =
        serde_json::from_slice(&fs::read(date_dir.join("_SUCCESS")).expect("_SUCCESS present"))
            .unwrap();
    let listed: Vec<PathBuf> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p = date_dir.join(f["path"].as_str().unwrap());
            let bytes = fs::read(&p)
                .unwrap_or_else(|e| panic!("{} listed but unreadable: {e}", p.display()));
            assert_eq!(bytes.len() as u64, f["bytes"].as_u64().unwrap());
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                f["sha256"].as_str().unwrap()
            );
            p
        })
        .collect();
    let mut listed = listed;
    listed.sort();
    assert_eq!(
        parquet_files(date_dir),
        listed,
        "files on disk differ from _SUCCESS"
    );
    manifest["rows"].as_u64().unwrap()
}

#[test]
fn sigkill_during_write_leaves_the_previous_complete_date() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/room");
    fs::create_dir_all(&input).unwrap();
    let make = |n: usize| {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "{{\"user\": \"sender{}\", \"message\": \"message number {i} 안녕 😀\", \"time\": {}}}\n",
                i % 300,
                1_729_728_000 + i
            ));
        }
        s
    };
    let file = input.join("chat_2024-10-24.jsonl");
    fs::write(&file, make(20_000)).unwrap();
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    for stage in ["extract", "write"] {
        let o = run(
            dir.path(),
            &args(&inp, &out, &[stage, "--date", "2024-10-24"]),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let date_dir = out.join("messages/date=2024-10-24");
    assert_eq!(assert_complete_date(&date_dir), 20_000);
    // New input staged; every interrupted write must leave 20,000 or 60,000 complete rows.
    fs::write(&file, make(60_000)).unwrap();
    let o = run(
        dir.path(),
        &args(&inp, &out, &["extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0);
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80, 160, 320] {
        let mut child = chatetl(dir.path())
            .args(args(&inp, &out, &["write", "--date", "2024-10-24"]))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let rows = assert_complete_date(&date_dir);
        assert!(
            rows == 20_000 || rows == 60_000,
            "after a kill at {delay_ms} ms: {rows} rows"
        );
    }
    let o = run(
        dir.path(),
        &args(&inp, &out, &["write", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(assert_complete_date(&date_dir), 60_000);
    let leftovers: Vec<_> = fs::read_dir(out.join("_tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "leftovers after a clean run: {leftovers:?}"
    );
}

#[test]
fn unwritable_output_root_exits_73() {
    let (dir, input, _out) = workspace();
    let o = run(
        dir.path(),
        &args(
            &input,
            Path::new("/proc/chatetl-out"),
            &["extract", "--date", "2024-10-24"],
        ),
    );
    assert_eq!(code(&o), 73, "{}", stderr(&o));
}

/// Extracts 2024-10-24 from `inp` into `out`, then writes it with `memory_budget_mb` =
/// `budget` (both must succeed): write's log (`-v`), the date's directory and its manifest.
fn extract_and_write(dir: &Path, inp: &Path, out: &Path, budget: &str) -> (String, PathBuf, Value) {
    let o = run(dir, &args(inp, out, &["extract", "--date", "2024-10-24"]));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = chatetl(dir)
        .env("CHATETL_MEMORY_BUDGET_MB", budget)
        .args(args(inp, out, &["-v", "write", "--date", "2024-10-24"]))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let date_dir = out.join("messages/date=2024-10-24");
    let m: Value = serde_json::from_slice(&fs::read(date_dir.join("_SUCCESS")).unwrap()).unwrap();
    (stderr(&o), date_dir, m)
}

#[test]
fn write_spills_beyond_the_memory_budget_and_gives_the_same_bytes() {
    // About 14 MB staged: more than the runs a 16 MiB budget allows (under 3 MiB, sorted by one
    // thread per core), so write must spill, and the merge must keep the runs in order.
    let mut s = String::new();
    for i in 0..90_000u64 {
        // Times go backwards per sender so the sort has work to do.
        s.push_str(&format!(
            "{{'user': 'sender{:03}', 'message': '메시지 {i} with some padding text to make rows wider', 'time': {}}}\n",
            (i * 7) % 400,
            1_729_800_000 - i
        ));
    }
    let (dir, inp, _) = fixture(s.as_bytes(), "chat_2024-10-24.log");
    // A JSON array on one line whose elements share sender, time, file and line: their order is
    // the staged order, in memory or across spilled runs.
    let tied: Vec<String> = (0..3_000)
        .map(|i| format!(r#"{{"user": "tied", "message": "m{i}", "time": 1729800000}}"#))
        .collect();
    fs::write(
        inp.join("room/array_2024-10-24.json"),
        format!("[{}]", tied.join(", ")),
    )
    .unwrap();
    let mut manifests = Vec::new();
    // 16 MiB: one lane merges every run whole; 64 MiB: runs cut into sender ranges merged on
    // one lane per core; 4 GiB: one run in memory, cut into ranges.
    for (root, budget) in [("small", "16"), ("medium", "64"), ("large", "4096")] {
        let out = dir.path().join(root);
        let (log, date_dir, m) = extract_and_write(dir.path(), &inp, &out, budget);
        if budget != "4096" {
            assert!(log.contains("spilled to disk"), "{log}");
        } else {
            assert!(log.contains("sorted in memory"), "{log}");
        }
        assert_eq!(assert_complete_date(&date_dir), 93_000);
        assert_eq!(m["files"].as_array().unwrap().len(), 401);
        assert!(!date_dir.join(".spill").exists());
        manifests.push(m["files"].clone());
    }
    // Same rows, same order, same bytes, whatever the budget.
    assert_eq!(manifests[0], manifests[1]);
    assert_eq!(manifests[0], manifests[2]);
}

/// A day where one sender writes almost every row: its file has several row groups, which the
/// lane with no range left encodes in part; the files are those of one lane writing alone.
#[test]
fn a_day_of_one_busy_sender_gives_the_bytes_of_one_lane() {
    let mut s = String::new();
    for i in 0..300_000u64 {
        let user = if i % 20 == 0 {
            format!("user{}", i % 7)
        } else {
            "relay-bot".to_string()
        };
        s.push_str(&format!(
            "{{\"user\": \"{user}\", \"message\": \"m{i}\", \"time\": {}}}\n",
            1_729_800_000 + i / 10
        ));
    }
    let (dir, inp, _) = fixture(s.as_bytes(), "chat_2024-10-24.log");
    let mut manifests = Vec::new();
    // 16 MiB: one lane; 512 MiB: one lane per core, and those with no range left help.
    for (root, budget) in [("one-lane", "16"), ("lanes", "512")] {
        let out = dir.path().join(root);
        let (log, date_dir, m) = extract_and_write(dir.path(), &inp, &out, budget);
        eprintln!("budget {budget} MiB: {log}");
        assert_eq!(assert_complete_date(&date_dir), 300_000);
        let files = m["files"].as_array().unwrap();
        assert_eq!(files.len(), 8);
        let bot = files
            .iter()
            .find(|f| f["sender_id"] == "relay-bot")
            .unwrap();
        assert_eq!(bot["rows"], 285_000);
        manifests.push(m["files"].clone());
    }
    assert_eq!(manifests[0], manifests[1]);
}

#[test]
fn duplicates_and_conflicts_at_one_offset() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/room");
    fs::create_dir_all(&input).unwrap();
    // Offset 7: A, then B twice (B conflicts with A once, then repeats exactly), then A again.
    let lines = [
        "offset=7, value={'user': 'a', 'message': 'A', 'time': 1729728000}",
        "offset=7, value={'user': 'b', 'message': 'B', 'time': 1729728001}",
        "offset=7, value={'user': 'b', 'message': 'B', 'time': 1729728001}",
        "offset=7, value={'user': 'a', 'message': 'A', 'time': 1729728000}",
        "offset=8, value={'user': 'a', 'message': 'C', 'time': 1729728002}",
    ];
    fs::write(input.join("consumer_2024-10-24.log"), lines.join("\n")).unwrap();
    // A second consumer's file with offset 8 again (an exact duplicate) and a system record.
    let copy = [
        lines[4],
        "offset=9, value={'user': '[INFO]', 'message': 'x joined', 'time': 1729728003}",
        "offset=9, value={'user': '[INFO]', 'message': 'x joined', 'time': 1729728003}",
    ];
    fs::write(input.join("copy_2024-10-24.log"), copy.join("\n")).unwrap();
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    let o = run(
        dir.path(),
        &args(&inp, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    let t = &v["summary"]["totals"];
    assert_eq!(t["records"], 8, "{t}");
    assert_eq!(t["duplicates"], 4, "{t}");
    assert_eq!(t["conflicts"], 1, "{t}");
    assert_eq!(t["staged"], 4, "{t}");
    assert_eq!(t["system"], 1, "{t}");
    let files = v["summary"]["files"].as_array().unwrap();
    assert_eq!(files[0]["duplicates"], 2, "{files:?}");
    assert_eq!(files[0]["conflicts"], 1, "{files:?}");
    assert_eq!(files[1]["duplicates"], 2, "{files:?}");
    assert_eq!(files[1]["system"], 1, "{files:?}");
    assert_eq!(
        v["summary"]["per_sender"],
        serde_json::json!({"[INFO]": 1, "a": 2, "b": 1})
    );
    // `write` leaves the duplicates out: the rows of lines 1, 2 and 5 of the first file and
    // line 2 of the copy.
    let o = run(
        dir.path(),
        &args(&inp, &out, &["--json", "write", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("messages/date=2024-10-24/_SUCCESS")).unwrap())
            .unwrap();
    assert_eq!(m["rows"], 4, "{m}");
    let rows: Vec<(String, u64)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["sender_id"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("[INFO]".to_string(), 1),
            ("a".to_string(), 2),
            ("b".to_string(), 1)
        ]
    );
}

#[test]
fn one_line_json_array_with_bad_elements_counts_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/room");
    fs::create_dir_all(&input).unwrap();
    // `json.dump` without indent: ten elements on one line, two of them bad; then a second
    // line with one good element.
    let mut elems: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"user": "u{i}", "message": "m{i}", "time": 1729728000}}"#))
        .collect();
    elems[3] = "42".into();
    elems[7] = r#"{"user": "u7", "time": 1729728000}"#.into();
    let text = format!(
        "[{},\n{}]",
        elems.join(", "),
        r#"{"user": "z", "message": "last", "time": 1729728001}"#
    );
    fs::write(input.join("messages_2024-10-24.json"), text).unwrap();
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    let o = run(
        dir.path(),
        &args(&inp, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    assert_accounting(&v["summary"]);
    let f = &v["summary"]["files"][0];
    assert_eq!(f["lines"], 2, "{f}");
    assert_eq!(f["rejected"], 1, "{f}");
    assert_eq!(f["record_lines"], 1, "{f}");
    assert_eq!(f["records"], 9, "{f}");
    assert_eq!(f["rejected_elements"], 2, "{f}");
    let rejects = fs::read_to_string(out.join("rejects/date=2024-10-24/rejects.jsonl")).unwrap();
    let rows: Vec<Value> = rejects
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["line"] == 1),
        "{rejects}"
    );
}

#[test]
fn parallel_parsing_keeps_every_line_in_its_place() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in/room");
    fs::create_dir_all(&input).unwrap();
    // 20,000 lines (several parallel chunks' worth): every 7th blank, every 11th noise, every
    // 13th broken; the others are records whose message names their own line number.
    let mut text = String::new();
    let (mut want_rejects, mut want_records) = (Vec::new(), 0);
    for n in 1..=20_000u64 {
        if n % 7 == 0 {
            text.push_str("   \n");
        } else if n % 11 == 0 {
            text.push_str("[2024-10-24 10:00:00] INFO consumer polled {taskinstance.py:2330}\n");
        } else if n % 13 == 0 {
            text.push_str(&format!("{{'user': 'u', 'message': 'line {n}\n"));
            want_rejects.push(n);
        } else {
            text.push_str(&format!(
                "{{'user': 'u{}', 'message': 'line {n}', 'time': {}}}\n",
                n % 50,
                1_729_728_000 + n
            ));
            want_records += 1;
        }
    }
    fs::write(input.join("chat_2024-10-24.log"), text).unwrap();
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    let o = run(
        dir.path(),
        &args(&inp, &out, &["--json", "extract", "--date", "2024-10-24"]),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json_of(&o);
    assert_accounting(&v["summary"]);
    assert_eq!(v["summary"]["totals"]["records"], want_records);
    let rejects = fs::read_to_string(out.join("rejects/date=2024-10-24/rejects.jsonl")).unwrap();
    let got: Vec<u64> = rejects
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(got, want_rejects);
    let staged = out.join("_staging/date=2024-10-24/records.arrow");
    let reader =
        arrow_ipc::reader::FileReader::try_new(fs::File::open(staged).unwrap(), None).unwrap();
    let mut rows = 0;
    for b in reader {
        let b = b.unwrap();
        let msg = b
            .column_by_name("message")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let line = b
            .column_by_name("source_line")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        for i in 0..b.num_rows() {
            assert_eq!(msg.value(i), format!("line {}", line.value(i)));
            rows += 1;
        }
    }
    assert_eq!(rows, want_records);
}
