//! `aggregate`: checked against an independent computation (DuckDB SQL over the same Parquet,
//! through `tests/interop/aggregate_check.py` with `CHATETL_TEST_PYTHON`), range = sum of parts,
//! and the exit codes for dates without complete output.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::*;
use serde_json::Value;

mod common;
use common::copy_tree;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chatetl(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatetl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHATETL_") {
            c.env_remove(k);
        }
    }
    c.args([
        "--input-root",
        "in",
        "--output-root",
        "out",
        "--tz",
        "Asia/Seoul",
    ])
    .args(args)
    .current_dir(dir)
    .env("TZ", "UTC")
    .output()
    .unwrap()
}

fn ok(o: Output) -> Output {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// sender key → [messages, characters, rooms, first_us, last_us]; null sender as "\0null".
type Senders = BTreeMap<String, Vec<Option<i64>>>;

fn read(path: &Path) -> DataFrame {
    ParquetReader::new(fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

/// chatetl's senders.parquet as the same map the DuckDB script prints.
fn senders_of(dir: &Path) -> Senders {
    let df = read(&dir.join("senders.parquet"));
    let id = df.column("sender_id").unwrap().str().unwrap().clone();
    let int = |name: &str| {
        let c = df.column(name).unwrap().cast(&DataType::Int64).unwrap();
        let ca = c.i64().unwrap().clone();
        (0..ca.len()).map(|i| ca.get(i)).collect::<Vec<_>>()
    };
    let (n, ch, r, f, l) = (
        int("messages"),
        int("characters"),
        int("rooms"),
        int("first_ts"),
        int("last_ts"),
    );
    (0..df.height())
        .map(|i| {
            (
                id.get(i).map_or("\0null".to_string(), str::to_string),
                vec![n[i], ch[i], r[i], f[i], l[i]],
            )
        })
        .collect()
}

/// room → [messages, senders] from rooms.parquet.
fn rooms_of(dir: &Path) -> BTreeMap<String, Vec<i64>> {
    let df = read(&dir.join("rooms.parquet"));
    let room = df.column("room").unwrap().str().unwrap().clone();
    let int = |name: &str| {
        let c = df.column(name).unwrap().cast(&DataType::Int64).unwrap();
        let ca = c.i64().unwrap().clone();
        (0..ca.len())
            .map(|i| ca.get(i).unwrap())
            .collect::<Vec<_>>()
    };
    let (n, s) = (int("messages"), int("senders"));
    (0..df.height())
        .map(|i| (room.get(i).unwrap().to_string(), vec![n[i], s[i]]))
        .collect()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

/// Compares chatetl's aggregates in `agg_dir` with DuckDB's over the same dates.
fn check_against_duckdb(work: &Path, agg_dir: &Path, dates: &[&str]) {
    let senders = senders_of(agg_dir);
    let rooms = rooms_of(agg_dir);
    let s = summary(agg_dir);
    // Internal consistency holds with or without Python.
    let total = s["messages"].as_i64().unwrap();
    assert_eq!(senders.values().map(|v| v[0].unwrap()).sum::<i64>(), total);
    assert_eq!(rooms.values().map(|v| v[0]).sum::<i64>(), total);
    let Some(python) = std::env::var_os("CHATETL_TEST_PYTHON") else {
        eprintln!(
            "skipped DuckDB comparison: CHATETL_TEST_PYTHON is not set (scripts/test sets it)"
        );
        return;
    };
    let o = Command::new(python)
        .arg(repo().join("tests/interop/aggregate_check.py"))
        .arg(work.join("out/messages"))
        .arg("Asia/Seoul")
        .args(dates)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(want["messages"].as_i64().unwrap(), total);
    let want_senders: Senders = serde_json::from_value(want["senders"].clone()).unwrap();
    assert_eq!(senders, want_senders, "senders differ from DuckDB");
    let want_rooms: BTreeMap<String, Vec<i64>> =
        serde_json::from_value(want["rooms"].clone()).unwrap();
    assert_eq!(rooms, want_rooms, "rooms differ from DuckDB");
    assert_eq!(s["hourly"], want["hourly"], "hourly activity differs");
    // The top list is the head of the full table, ordered by messages then sender.
    let top = s["top_senders"].as_array().unwrap();
    assert!(!top.is_empty());
    let max = senders.values().map(|v| v[0].unwrap()).max().unwrap();
    assert_eq!(top[0]["messages"].as_i64().unwrap(), max);
}

fn sample_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("sample_logs"), &dir.path().join("in"));
    dir
}

#[test]
fn aggregates_of_sample_logs_match_duckdb_and_a_range_is_the_sum_of_its_parts() {
    let dir = sample_workspace();
    let w = dir.path();
    ok(chatetl(
        w,
        &["run", "--from", "2024-10-24", "--to", "2024-10-25"],
    ));
    for d in ["2024-10-24", "2024-10-25"] {
        let o = ok(chatetl(w, &["aggregate", "--date", d, "--top", "3"]));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("messages") && text.contains("busiest hour"),
            "{text}"
        );
        check_against_duckdb(w, &w.join(format!("out/aggregates/date={d}")), &[d]);
    }
    // A range with one date before the data: listed as missing, the rest aggregated.
    let o = ok(chatetl(
        w,
        &[
            "--json",
            "aggregate",
            "--from",
            "2024-10-23",
            "--to",
            "2024-10-25",
        ],
    ));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missing_dates"], serde_json::json!(["2024-10-23"]));
    // A long range: the terminal line names the first ten missing dates, summary.json all.
    let o = ok(chatetl(
        w,
        &["aggregate", "--from", "2024-01-01", "--to", "2024-12-31"],
    ));
    let first = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(
        first.contains("(2 dates; without complete output: 2024-01-01, ")
            && first.ends_with("2024-01-10 and 354 more (all in summary.json))"),
        "{first}"
    );
    let all: Value = serde_json::from_slice(
        &std::fs::read(w.join("out/aggregates/range=2024-01-01_2024-12-31/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(all["missing_dates"].as_array().unwrap().len(), 364);
    let range = w.join("out/aggregates/range=2024-10-23_2024-10-25");
    check_against_duckdb(w, &range, &["2024-10-24", "2024-10-25"]);
    // Sum of parts: messages, characters per sender; messages per room; hourly.
    let a = w.join("out/aggregates/date=2024-10-24");
    let b = w.join("out/aggregates/date=2024-10-25");
    let mut parts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for d in [&a, &b] {
        for (k, v) in senders_of(d) {
            let e = parts.entry(k).or_default();
            e.0 += v[0].unwrap();
            e.1 += v[1].unwrap();
        }
    }
    let whole: BTreeMap<String, (i64, i64)> = senders_of(&range)
        .into_iter()
        .map(|(k, v)| (k, (v[0].unwrap(), v[1].unwrap())))
        .collect();
    assert_eq!(whole, parts);
    let mut room_parts: BTreeMap<String, i64> = BTreeMap::new();
    for d in [&a, &b] {
        for (k, v) in rooms_of(d) {
            *room_parts.entry(k).or_default() += v[0];
        }
    }
    let room_whole: BTreeMap<String, i64> = rooms_of(&range)
        .into_iter()
        .map(|(k, v)| (k, v[0]))
        .collect();
    assert_eq!(room_whole, room_parts);
    let (sa, sb, sr) = (summary(&a), summary(&b), summary(&range));
    for h in 0..24 {
        assert_eq!(
            sr["hourly"][h].as_i64().unwrap(),
            sa["hourly"][h].as_i64().unwrap() + sb["hourly"][h].as_i64().unwrap()
        );
    }
    // Idempotent: aggregating again gives the same files.
    let before = fs::read(a.join("senders.parquet")).unwrap();
    ok(chatetl(w, &["aggregate", "--date", "2024-10-24"]));
    assert_eq!(fs::read(a.join("senders.parquet")).unwrap(), before);
}

#[test]
fn system_messages_are_left_out_unless_asked() {
    let dir = sample_workspace();
    let w = dir.path();
    let o = ok(chatetl(w, &["--json", "run", "--date", "2024-10-24"]));
    // `run` aggregates the date it wrote.
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["dates"][0]["aggregates"],
        "out/aggregates/date=2024-10-24"
    );
    let by_run = fs::read(w.join("out/aggregates/date=2024-10-24/senders.parquet")).unwrap();
    let o = ok(chatetl(w, &["--json", "aggregate", "--date", "2024-10-24"]));
    assert_eq!(
        fs::read(w.join("out/aggregates/date=2024-10-24/senders.parquet")).unwrap(),
        by_run
    );
    let without: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = ok(chatetl(
        w,
        &[
            "--json",
            "aggregate",
            "--date",
            "2024-10-24",
            "--include-system",
        ],
    ));
    let with: Value = serde_json::from_slice(&o.stdout).unwrap();
    let manifest: Value =
        serde_json::from_slice(&fs::read(w.join("out/messages/date=2024-10-24/_SUCCESS")).unwrap())
            .unwrap();
    let system = manifest["counts"]["system"].as_i64().unwrap();
    assert!(system > 0);
    assert_eq!(
        with["messages"].as_i64().unwrap(),
        without["messages"].as_i64().unwrap() + system
    );
    assert_eq!(with["messages"], manifest["rows"]);
}

#[test]
fn stop_words_are_configurable() {
    let dir = sample_workspace();
    let w = dir.path();
    ok(chatetl(w, &["run", "--date", "2024-10-24"]));
    let words = |v: &Value| -> Vec<String> {
        v["top_words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["word"].as_str().unwrap().to_string())
            .collect()
    };
    let o = ok(chatetl(
        w,
        &["--json", "aggregate", "--date", "2024-10-24", "--top", "50"],
    ));
    let default: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(words(&default).contains(&"오늘".to_string()));
    assert!(!words(&default).contains(&"the".to_string()));
    fs::write(
        w.join("chatetl.toml"),
        "stop_words = [\"오늘\", \"User\"]\n",
    )
    .unwrap();
    let o = ok(chatetl(
        w,
        &["--json", "aggregate", "--date", "2024-10-24", "--top", "50"],
    ));
    let custom: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!words(&custom).contains(&"오늘".to_string()));
    assert!(!words(&custom).contains(&"user".to_string()));
}

#[test]
fn dates_without_complete_output_exit_66() {
    let dir = sample_workspace();
    let w = dir.path();
    let o = chatetl(w, &["aggregate", "--date", "2024-10-24"]);
    assert_eq!(o.status.code(), Some(66));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = chatetl(
        w,
        &["aggregate", "--from", "2024-10-20", "--to", "2024-10-22"],
    );
    assert_eq!(o.status.code(), Some(66));
    let o = chatetl(
        w,
        &["aggregate", "--from", "2024-10-25", "--to", "2024-10-24"],
    );
    assert_eq!(o.status.code(), Some(64));
}

/// A committed Parquet file damaged afterwards (its pages, or its footer): exit 65 with one
/// line naming the partition, and the aggregates committed before stay as they were.
#[test]
fn a_damaged_parquet_file_exits_65_and_keeps_the_previous_aggregates() {
    let dir = sample_workspace();
    let w = dir.path();
    ok(chatetl(w, &["run", "--no-notify", "--date", "2024-10-24"]));
    let agg = w.join("out/aggregates/date=2024-10-24");
    let snapshot = || -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(&agg)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.display().to_string(), fs::read(&p).unwrap())
            })
            .collect()
    };
    let before = snapshot();
    let mut files: Vec<PathBuf> = fs::read_dir(w.join("out/messages/date=2024-10-24"))
        .unwrap()
        .map(|e| e.unwrap().path().join("part-00000.parquet"))
        .filter(|p| p.exists())
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).unwrap().len()));
    // The largest file's pages (its metadata left whole), then another file's footer.
    let (pages, footer) = (&files[0], &files[1]);
    let mut bytes = fs::read(pages).unwrap();
    for b in &mut bytes[8..200] {
        *b ^= 0x5a;
    }
    fs::write(pages, &bytes).unwrap();
    for (damaged, cut) in [(pages, false), (footer, true)] {
        if cut {
            let len = fs::metadata(damaged).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(damaged)
                .unwrap()
                .set_len(len - 3)
                .unwrap();
        }
        let o = chatetl(w, &["aggregate", "--date", "2024-10-24"]);
        assert_eq!(
            o.status.code(),
            Some(65),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let partition = damaged.parent().unwrap().file_name().unwrap();
        assert!(err.contains(&*partition.to_string_lossy()), "{err}");
        let after = snapshot();
        assert!(after == before, "the committed aggregates changed");
    }
}

#[test]
fn a_sender_larger_than_a_slice_aggregates_the_same_in_any_budget() {
    // One sender with 30,000 rows (system rows among them) in three rooms, over the whole day:
    // with a 16 MiB budget the aggregate reads that partition in several slices.
    let mut text = String::new();
    for i in 0..30_000u64 {
        let user = match i % 10 {
            0 => "[INFO]".to_string(),
            1..=6 => "big".to_string(),
            n => format!("s{n}"),
        };
        text.push_str(&format!(
            "{{'user': '{user}', 'message': 'word{} 안녕 {}', 'time': {}, 'room': 'r{}'}}\n",
            i % 13,
            "x".repeat((i % 7) as usize),
            1_729_695_600 + i * 2,
            i % 3
        ));
    }
    let mut summaries = Vec::new();
    for budget in [16, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        fs::create_dir_all(w.join("in/lobby")).unwrap();
        fs::write(w.join("in/lobby/chat_2024-10-24.log"), &text).unwrap();
        fs::write(
            w.join("chatetl.toml"),
            format!("memory_budget_mb = {budget}\n"),
        )
        .unwrap();
        ok(chatetl(w, &["run", "--no-notify", "--date", "2024-10-24"]));
        let agg = w.join("out/aggregates/date=2024-10-24");
        check_against_duckdb(w, &agg, &["2024-10-24"]);
        let mut s = summary(&agg);
        s.as_object_mut().unwrap().remove("duration_s");
        assert_eq!(s["messages"], 27_000, "{s}");
        summaries.push(s);
    }
    assert_eq!(summaries[0], summaries[1]);
}

#[test]
fn corpus_aggregates_match_duckdb() {
    let corpus = repo().join("../shared/corpus");
    if !corpus.is_dir() {
        eprintln!("skipped: ../shared/corpus is absent");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    for sub in fs::read_dir(&corpus).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            copy_tree(
                &sub,
                &w.join("in")
                    .join(sub.file_name().unwrap())
                    .join("2024-08-27"),
            );
        }
    }
    ok(chatetl(w, &["run", "--date", "2024-08-27"]));
    ok(chatetl(w, &["aggregate", "--date", "2024-08-27"]));
    check_against_duckdb(
        w,
        &w.join("out/aggregates/date=2024-08-27"),
        &["2024-08-27"],
    );
}
