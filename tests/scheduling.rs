//! The scheduling examples. The cron wrapper (examples/cron) logs and keeps the exit code. The
//! example DAG (examples/airflow/chat_logs_dag.py) is run by a real Airflow: `airflow dags test`
//! with a SQLite metadata database, the real binary, sample_logs and a Tansu broker for the
//! notifications; the test checks the task states, the outputs and the messages in the room.
//!
//! Airflow is found through `CHATETL_AIRFLOW` (the `airflow` executable of a virtualenv; made by
//! scripts/test from tests/airflow/requirements.txt). Without it the test says so and passes,
//! unless `CHATETL_REQUIRE_AIRFLOW=1` (set by `.ci/run`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Tansu, repo};
use serde_json::Value;

struct Airflow {
    bin: PathBuf,
    home: PathBuf,
    input: PathBuf,
    out: PathBuf,
    brokers: String,
}

impl Airflow {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("CHATETL_") || k.starts_with("AIRFLOW") {
                c.env_remove(k);
            }
        }
        let db = format!("sqlite:///{}", self.home.join("airflow.db").display());
        c.env("AIRFLOW_HOME", &self.home)
            .env(
                "AIRFLOW__CORE__DAGS_FOLDER",
                repo().join("examples/airflow"),
            )
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", db)
            .env("CHATETL_BIN", env!("CARGO_BIN_EXE_chatetl"))
            .env("CHATETL_INPUT_ROOT", &self.input)
            .env("CHATETL_DAG_RETRIES", "0")
            .env("CHATETL_OUTPUT_ROOT", &self.out)
            .env("CHATETL_TZ", "Asia/Seoul")
            .env("CHATETL_CONFIG", "/dev/null")
            .env("CHATETL_KAFKA_BROKERS", &self.brokers)
            .env("CHATETL_KAFKA_TOPIC", "chat")
            .current_dir(&self.home);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        self.run_checked(args, true)
    }

    fn run_checked(&self, args: &[&str], must_succeed: bool) -> String {
        let o = self.command().args(args).output().expect("airflow runs");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success() || !must_succeed,
            "airflow {args:?} failed\nstdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    }

    /// Parses the JSON array Airflow prints (after any log lines).
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let text = self.run(args);
        let start = text.find("\n[").map(|i| i + 1).unwrap_or(0);
        serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Runs `airflow dags test` for a logical date and returns the task states of that run.
    fn test_run(&self, logical_date: &str) -> BTreeMap<String, String> {
        // A run that fails may make `dags test` exit non-zero; the states tell.
        self.run_checked(&["dags", "test", "chat_logs", logical_date], false);
        let runs = self.json(&["dags", "list-runs", "chat_logs", "-o", "json"]);
        let wanted = chrono::DateTime::parse_from_rfc3339(logical_date).unwrap();
        let run = runs
            .iter()
            .find(|r| {
                chrono::DateTime::parse_from_rfc3339(r["logical_date"].as_str().unwrap()).unwrap()
                    == wanted
            })
            .unwrap_or_else(|| panic!("no run for {logical_date}: {runs:?}"));
        let run_id = run["run_id"].as_str().unwrap();
        self.json(&[
            "tasks",
            "states-for-dag-run",
            "chat_logs",
            run_id,
            "-o",
            "json",
        ])
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
    }
}

fn states(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn manifest(out: &Path, date: &str) -> Value {
    serde_json::from_slice(&fs::read(out.join(format!("messages/date={date}/_SUCCESS"))).unwrap())
        .unwrap()
}

#[test]
fn the_example_dag_runs_a_day_and_skips_a_day_without_logs() {
    let Some(bin) = std::env::var_os("CHATETL_AIRFLOW").map(PathBuf::from) else {
        assert!(
            std::env::var("CHATETL_REQUIRE_AIRFLOW").as_deref() != Ok("1"),
            "CHATETL_REQUIRE_AIRFLOW=1 but CHATETL_AIRFLOW is not set"
        );
        eprintln!("SKIPPED: CHATETL_AIRFLOW is not set (scripts/test sets it)");
        return;
    };
    let Some(broker) = Tansu::start() else { return };
    broker.create_topic("chat", 1);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    common::copy_tree(&repo().join("sample_logs"), &input);
    // 2024-10-26: only broken records, so extract fails with 65.
    fs::write(
        input.join("lobby/chat_2024-10-26.log"),
        "{'user': 'a', 'message': 'cut\n{'user': 'b', 'message': 'off\n",
    )
    .unwrap();
    let af = Airflow {
        bin,
        home: dir.path().join("airflow"),
        input: input.clone(),
        out: dir.path().join("out"),
        brokers: broker.brokers(),
    };
    fs::create_dir_all(&af.home).unwrap();
    af.run(&["db", "migrate"]);

    // The run at 2024-10-25 01:00 in Seoul covers 2024-10-24, a day of sample_logs.
    let got = af.test_run("2024-10-25T01:00:00+09:00");
    let all_ok = [
        ("check_log", "success"),
        ("extract", "success"),
        ("write", "success"),
        ("aggregate", "success"),
        ("notify", "success"),
        ("stage_failed", "skipped"),
    ];
    assert_eq!(got, states(&all_ok));
    // The same output as `chatetl run` of that day.
    let reference = dir.path().join("reference");
    let o = common::run(
        dir.path(),
        &[
            "--input-root",
            repo().join("sample_logs").to_str().unwrap(),
            "--output-root",
            reference.to_str().unwrap(),
            "--tz",
            "Asia/Seoul",
            "run",
            "--date",
            "2024-10-24",
        ],
    );
    assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    assert_eq!(
        manifest(&af.out, "2024-10-24"),
        manifest(&reference, "2024-10-24")
    );
    assert!(
        af.out
            .join("aggregates/date=2024-10-24/summary.json")
            .is_file()
    );
    // Each stage recorded its outcome, with Airflow's try number.
    let status: Value =
        serde_json::from_slice(&fs::read(af.out.join("status/date=2024-10-24.json")).unwrap())
            .unwrap();
    for stage in ["check-log", "extract", "write", "aggregate"] {
        assert_eq!(status["stages"][stage]["exit_code"], 0, "{status}");
        assert_eq!(status["stages"][stage]["try_number"], "1", "{status}");
    }

    // 2024-10-20 has no logs: check_log is skipped, so are the stages after it; notify still
    // runs and says "skipped".
    let got = af.test_run("2024-10-21T01:00:00+09:00");
    assert_eq!(
        got,
        states(&[
            ("check_log", "skipped"),
            ("extract", "skipped"),
            ("write", "skipped"),
            ("aggregate", "skipped"),
            ("notify", "success"),
            ("stage_failed", "skipped"),
        ])
    );
    assert!(!af.out.join("messages/date=2024-10-20").exists());

    // 2024-10-26 is broken: extract fails, the stages after it do not run, notify reports the
    // failure, and stage_failed makes the run fail.
    let got = af.test_run("2024-10-27T01:00:00+09:00");
    assert_eq!(
        got,
        states(&[
            ("check_log", "success"),
            ("extract", "failed"),
            ("write", "upstream_failed"),
            ("aggregate", "upstream_failed"),
            ("notify", "success"),
            ("stage_failed", "failed"),
        ])
    );

    let texts = common::notification_texts(&broker.brokers(), "chat", 3);
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(
        texts[2].starts_with("chatetl 2024-10-26: failure, extract exited 65 (data_error): "),
        "{texts:?}"
    );
    assert!(
        texts[0].starts_with("chatetl 2024-10-24: success, "),
        "{texts:?}"
    );
    assert_eq!(
        texts[1],
        "chatetl 2024-10-20: skipped, no chat logs for this date"
    );
}

fn cron_wrapper(dir: &Path, day: &str) -> (i32, String, String) {
    cron_wrapper_args(dir, Some(day), day)
}

/// Runs the wrapper with `arg` (or none) and reads the log of `day`.
fn cron_wrapper_args(dir: &Path, arg: Option<&str>, day: &str) -> (i32, String, String) {
    let mut c = Command::new(repo().join("examples/cron/chatetl-daily.sh"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CHATETL_") {
            c.env_remove(k);
        }
    }
    let o = c
        .args(arg)
        .env("CHATETL_DAY_TZ", "Asia/Seoul")
        .env("CHATETL_BIN", env!("CARGO_BIN_EXE_chatetl"))
        .env("CHATETL_LOG_DIR", dir.join("logs"))
        .env("CHATETL_INPUT_ROOT", repo().join("sample_logs"))
        .env("CHATETL_OUTPUT_ROOT", dir.join("out"))
        .env("CHATETL_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let log = fs::read_to_string(dir.join(format!("logs/chatetl-{day}.log"))).unwrap_or_default();
    (
        o.status.code().unwrap(),
        log,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cron_wrapper_logs_and_keeps_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, err) = cron_wrapper(dir.path(), "2024-10-24");
    assert_eq!(code, 0, "{log}{err}");
    assert!(log.contains("chatetl run --date 2024-10-24"), "{log}");
    assert!(log.contains("Parquet in"), "{log}");
    assert!(log.trim_end().ends_with("exit 0"), "{log}");
    assert!(err.is_empty(), "{err}");
    assert!(
        dir.path()
            .join("out/messages/date=2024-10-24/_SUCCESS")
            .is_file()
    );
    // No logs that day: 99 kept, one line on stderr, the log says why.
    let (code, log, err) = cron_wrapper(dir.path(), "2024-10-02");
    assert_eq!(code, 99, "{log}{err}");
    assert!(log.contains("skipped"), "{log}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Running a day twice appends to its log.
    let (code, log, _) = cron_wrapper(dir.path(), "2024-10-24");
    assert_eq!(code, 0);
    assert_eq!(
        log.matches("chatetl run --date 2024-10-24").count(),
        2,
        "{log}"
    );
    assert!(log.contains("up_to_date"), "{log}");
    // Without a date: yesterday in CHATETL_DAY_TZ.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Seoul)
        .date_naive();
    let yesterday = today.pred_opt().unwrap().to_string();
    let (code, log, err) = cron_wrapper_args(dir.path(), None, &yesterday);
    assert!(
        log.contains(&format!("chatetl run --date {yesterday}")),
        "{log}{err}"
    );
    assert_eq!(code, 99, "{log}{err}");
}
