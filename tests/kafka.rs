//! Kafka: `notify` and `run`'s notifications against librdkafka's in-process mock cluster (fault
//! injection: broker down, slow broker, refused and retried requests, leader changes), and
//! `notify` plus `extract --from-kafka` against a real Kafka-protocol broker (Tansu) that the test
//! starts on 127.0.0.1.
//!
//! Tansu is found through `CHATETL_TANSU`, `tansu` on the PATH, or the CI cache
//! (`~/.cache/chatetl/tansu-0.6.0/bin/tansu`). Without it those tests say so and pass, unless
//! `CHATETL_REQUIRE_KAFKA=1` (set by `.ci/run`) makes a missing broker a failure.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Tansu, code, consume, ok, repo, run, stderr, stdout, workspace};
use polars::prelude::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

fn mock(
    brokers: i32,
    topic: &str,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = MockCluster::new(brokers).unwrap();
    m.create_topic(topic, 1, brokers).unwrap();
    m
}

/// `notify` for 2024-10-24 against `brokers`, after a `run` of sample_logs into `out`.
fn notify(dir: &Path, out: &Path, brokers: &str, extra: &[&str]) -> std::process::Output {
    run(dir, &notify_args(out, brokers, extra))
}

/// The arguments of [`notify`].
fn notify_args<'a>(out: &'a Path, brokers: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--output-root",
        out.to_str().unwrap(),
        "notify",
        "--date",
        "2024-10-24",
        "--brokers",
        brokers,
        "--topic",
        "room",
    ];
    args.extend_from_slice(extra);
    args
}

fn sample_run(dir: &Path, input: &Path, out: &Path) {
    ok(run(
        dir,
        &[
            "--input-root",
            input.to_str().unwrap(),
            "--output-root",
            out.to_str().unwrap(),
            "run",
            "--date",
            "2024-10-24",
        ],
    ));
}

#[test]
fn notify_posts_one_chat_message_with_the_days_summary() {
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let m = mock(1, "room");
    let o = ok(notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "auto"],
    ));
    assert!(stdout(&o).contains("sent to room"), "{}", stdout(&o));
    let msgs = consume(&m.bootstrap_servers(), "room", 1, 1);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let msg = &msgs[0];
    let keys: Vec<&str> = msg
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["end", "message", "sender", "time"]);
    assert_eq!(msg["sender"], "chatetl");
    assert_eq!(msg["end"], false);
    let now = chrono::Utc::now().timestamp();
    assert!((msg["time"].as_i64().unwrap() - now).abs() < 60, "{msg}");
    let manifest: Value =
        serde_json::from_slice(&fs::read(out.join("messages/date=2024-10-24/_SUCCESS")).unwrap())
            .unwrap();
    let text = msg["message"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "chatetl 2024-10-24: success, {} records from {} senders in 3 rooms, {} rejected line",
            manifest["rows"], manifest["counts"]["senders"], manifest["counts"]["rejected"]
        )),
        "{text}"
    );
}

#[test]
fn notify_dry_run_prints_and_sends_nothing_and_keys_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("chatetl.toml"),
        "[kafka]\nsender = \"etl-bot\"\n[kafka.keys]\nsender = \"user\"\nend = \"is_end\"\n",
    )
    .unwrap();
    let o = ok(run(
        dir.path(),
        &[
            "notify",
            "--date",
            "2024-10-24",
            "--status",
            "failure",
            "--message",
            "나 여기 {'x'}",
            "--dry-run",
        ],
    ));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["user"], "etl-bot");
    assert_eq!(v["message"], "나 여기 {'x'}");
    assert_eq!(v["is_end"], false);
    assert!(v["time"].is_i64());
    // Without brokers and topic a real send is a configuration error.
    let o = run(
        dir.path(),
        &["notify", "--date", "2024-10-24", "--status", "success"],
    );
    assert_eq!(code(&o), 78, "{}", stderr(&o));
}

/// A broker that is down, or refuses connections, or a name that does not resolve: 69 without
/// waiting out `--timeout` (60 s here; the bound below is only that it did not wait it out).
#[test]
fn broker_down_exits_69_without_waiting_out_the_timeout() {
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let m = mock(1, "room");
    m.broker_down(1).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (brokers, says) in [
        (m.bootstrap_servers(), "unreachable"),
        (format!("127.0.0.1:{port}"), "Connection refused"),
        ("no-such-host.invalid:9092".to_string(), "resolve"),
    ] {
        let t = Instant::now();
        let o = notify(
            dir.path(),
            &out,
            &brokers,
            &["--status", "success", "--timeout", "60"],
        );
        let took = t.elapsed();
        assert_eq!(code(&o), 69, "{brokers}: {}", stderr(&o));
        assert!(took < Duration::from_secs(45), "{brokers}: took {took:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("unreachable") && err.contains(says), "{err}");
    }
}

/// A bootstrap name with two addresses whose first refuses, in front of a slow broker: librdkafka
/// reports every broker down after the refusal, then connects to the other address. That is no
/// outage, and the notification is delivered (taking one report for an outage made it 69 in a
/// quarter of a second, about half the time). The name gets its two addresses in a private mount
/// namespace (`unshare -m` bind-mounting a hosts file and `multi on`), which needs root: skipped
/// otherwise.
#[test]
fn a_name_whose_first_address_refuses_is_no_outage() {
    let (dir, input, out) = workspace();
    let (hosts, conf) = (dir.path().join("hosts"), dir.path().join("host.conf"));
    fs::write(
        &hosts,
        "127.0.0.2 kbroker\n127.0.0.1 kbroker\n127.0.0.1 localhost\n",
    )
    .unwrap();
    fs::write(&conf, "multi on\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/host.conf && exec \"$@\"",
        hosts.display(),
        conf.display()
    );
    let in_namespace = |program: &str| {
        let mut c = std::process::Command::new("unshare");
        c.args(["-m", "sh", "-c", &script, "sh", program]);
        c
    };
    let resolved = common::is_root()
        && Path::new("/etc/host.conf").exists()
        && in_namespace("getent")
            .args(["ahostsv4", "kbroker"])
            .output()
            .is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                o.status.success() && text.contains("127.0.0.1") && text.contains("127.0.0.2")
            });
    if !resolved {
        eprintln!("skipped: needs root, unshare and /etc/host.conf to give a name two addresses");
        return;
    }
    sample_run(dir.path(), &input, &out);
    for _ in 0..4 {
        let m = mock(1, "room");
        m.broker_round_trip_time(1, Duration::from_millis(700))
            .unwrap();
        let port = m
            .bootstrap_servers()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        let brokers = format!("kbroker:{port}");
        let o = common::wrapped(dir.path(), "unshare", &["-m", "sh", "-c", &script, "sh"])
            .args(notify_args(
                &out,
                &brokers,
                &["--status", "success", "--timeout", "20"],
            ))
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
}

#[test]
fn slow_broker_exits_75() {
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let m = mock(1, "room");
    // Let the client connect and learn the cluster, then slow every answer down.
    ok(notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "success"],
    ));
    m.broker_round_trip_time(1, Duration::from_secs(6)).unwrap();
    let t = Instant::now();
    let o = notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "success", "--timeout", "2"],
    );
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn refused_delivery_exits_69_and_retried_errors_still_deliver() {
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let m = mock(1, "room");
    m.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let o = notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "success", "--timeout", "5"],
    );
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    // Transient errors (leader moved, not enough replicas) are retried within the timeout.
    m.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    ok(notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "success", "--timeout", "10"],
    ));
    assert_eq!(consume(&m.bootstrap_servers(), "room", 1, 1).len(), 1);
}

#[test]
fn a_leader_change_between_notifications_is_followed() {
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let m = mock(3, "room");
    m.partition_leader("room", 0, Some(1)).unwrap();
    ok(notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "success"],
    ));
    m.partition_leader("room", 0, Some(3)).unwrap();
    ok(notify(
        dir.path(),
        &out,
        &m.bootstrap_servers(),
        &["--status", "failure"],
    ));
    let msgs = consume(&m.bootstrap_servers(), "room", 1, 2);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[1]["message"].as_str().unwrap().contains("failure"));
}

fn run_args<'a>(
    input: &'a Path,
    out: &'a Path,
    brokers: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "--input-root",
        input.to_str().unwrap(),
        "--output-root",
        out.to_str().unwrap(),
        "run",
        "--brokers",
        brokers,
        "--topic",
        "room",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn run_notifies_success_skipped_and_failure() {
    let (dir, input, out) = workspace();
    let m = mock(1, "room");
    let b = m.bootstrap_servers();
    // A date with logs, a date without, and a broken one.
    ok(run(
        dir.path(),
        &run_args(&input, &out, &b, &["--date", "2024-10-24"]),
    ));
    let o = run(
        dir.path(),
        &run_args(&input, &out, &b, &["--date", "2024-10-20"]),
    );
    assert_eq!(code(&o), 99, "{}", stderr(&o));
    fs::write(
        input.join("lobby/chat_2024-10-26.log"),
        "{'user': 'a', 'message': 'cut\n{'user': 'b', 'message': 'off\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        &run_args(&input, &out, &b, &["--date", "2024-10-26"]),
    );
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    let texts = common::notification_texts(&b, "room", 3);
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(
        texts[0].starts_with("chatetl 2024-10-24: success, "),
        "{texts:?}"
    );
    assert_eq!(
        texts[1],
        "chatetl 2024-10-20: skipped, no chat logs for this date"
    );
    assert!(
        texts[2].starts_with("chatetl 2024-10-26: failure, extract exited 65 (data_error): "),
        "{texts:?}"
    );
    // --no-notify sends nothing.
    ok(run(
        dir.path(),
        &run_args(&input, &out, &b, &["--date", "2024-10-24", "--no-notify"]),
    ));
    assert_eq!(consume(&b, "room", 1, 4).len(), 3);
}

#[test]
fn run_with_the_broker_down_keeps_the_data_and_the_stage_codes() {
    let (dir, input, out) = workspace();
    let m = mock(1, "room");
    m.broker_down(1).unwrap();
    let b = m.bootstrap_servers();
    let o = run(
        dir.path(),
        &run_args(
            &input,
            &out,
            &b,
            &["--date", "2024-10-24", "--timeout", "2", "--json"],
        ),
    );
    // The date is complete; the room was not told, so the run says 69.
    assert_eq!(code(&o), 69, "{}", stderr(&o));
    assert!(out.join("messages/date=2024-10-24/_SUCCESS").is_file());
    assert!(
        out.join("aggregates/date=2024-10-24/summary.json")
            .is_file()
    );
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let d = &v["dates"][0];
    assert_eq!(d["status"], "notify_failed");
    let stages: Vec<(&str, i64)> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("check-log", 0),
            ("extract", 0),
            ("write", 0),
            ("aggregate", 0),
            ("notify", 69)
        ]
    );
    // A failed stage keeps its own code even when the failure notification fails too.
    fs::write(
        input.join("lobby/chat_2024-10-26.log"),
        "{'user': 'a', 'message': 'cut\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        &run_args(
            &input,
            &out,
            &b,
            &["--date", "2024-10-26", "--timeout", "2"],
        ),
    );
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    // Re-running the complete date once the broker is back sends the notification.
    m.broker_up(1).unwrap();
    let o = ok(run(
        dir.path(),
        &run_args(&input, &out, &b, &["--date", "2024-10-24"]),
    ));
    assert!(stdout(&o).contains("up_to_date"), "{}", stdout(&o));
    assert_eq!(consume(&b, "room", 1, 1).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// A real broker: Tansu (tests/common).

#[test]
fn notify_through_a_real_broker_is_consumed_back() {
    let Some(broker) = Tansu::start() else { return };
    broker.create_topic("room", 1);
    let (dir, input, out) = workspace();
    sample_run(dir.path(), &input, &out);
    let o = ok(notify(
        dir.path(),
        &out,
        &broker.brokers(),
        &["--status", "auto"],
    ));
    assert!(
        stdout(&o).contains("partition 0, offset 0"),
        "{}",
        stdout(&o)
    );
    let msgs = consume(&broker.brokers(), "room", 1, 1);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["sender"], "chatetl");
    assert_eq!(msgs[0]["end"], false);
    assert!(msgs[0]["time"].is_i64());
    assert!(
        msgs[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("chatetl 2024-10-24: success, "),
        "{msgs:?}"
    );
    // A topic that does not exist is refused at once.
    let o = run(
        dir.path(),
        &[
            "--output-root",
            out.to_str().unwrap(),
            "notify",
            "--date",
            "2024-10-24",
            "--status",
            "success",
            "--brokers",
            &broker.brokers(),
            "--topic",
            "no-such-room",
        ],
    );
    assert_eq!(code(&o), 69, "{}", stderr(&o));
}

/// Rows of a committed date as sorted text, without the columns that name where a record came
/// from (file and line, or topic partition and offset).
fn rows_of(out: &Path, date: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let base = out.join(format!("messages/date={date}"));
    for sender in fs::read_dir(&base).unwrap() {
        let sender = sender.unwrap();
        if !sender.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(sender.path()).unwrap() {
            let path = f.unwrap().path();
            let df = ParquetReader::new(fs::File::open(&path).unwrap())
                .finish()
                .unwrap();
            let df = df
                .select(["ts", "message", "room", "kind", "extra"])
                .unwrap();
            for i in 0..df.height() {
                let row: Vec<String> = df
                    .columns()
                    .iter()
                    .map(|c| {
                        // Timestamps as integers (formatting a zoned datetime needs a Polars
                        // feature the crate does not build).
                        let c = if c.name().as_str() == "ts" {
                            c.cast(&DataType::Int64).unwrap()
                        } else {
                            c.clone()
                        };
                        format!("{}", c.get(i).unwrap())
                    })
                    .collect();
                rows.push(format!(
                    "{}|{}",
                    sender.file_name().to_string_lossy(),
                    row.join("|")
                ));
            }
        }
    }
    rows.sort();
    rows
}

fn extract_and_write(dir: &Path, args: &[&str], out: &Path, date: &str) -> Value {
    let mut a: Vec<&str> = vec![
        "--output-root",
        out.to_str().unwrap(),
        "--json",
        "extract",
        "--date",
        date,
    ];
    a.extend_from_slice(args);
    let o = ok(run(dir, &a));
    ok(run(
        dir,
        &[
            "--output-root",
            out.to_str().unwrap(),
            "write",
            "--date",
            date,
        ],
    ));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

#[test]
fn extract_from_kafka_stages_the_same_records_as_the_same_lines_in_a_file() {
    let Some(broker) = Tansu::start() else { return };
    broker.create_topic("lobby", 2);
    // Tansu answers time look-ups by append time, so the day is today (UTC).
    let now = chrono::Utc::now();
    let today = now.date_naive().to_string();
    let now_ms = now.timestamp_millis();
    let text = fs::read_to_string(repo().join("sample_logs/lobby/chat_2024-10-24.log")).unwrap()
        + &fs::read_to_string(repo().join("sample_logs/product/consumer_20241024.log")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains('{')).collect();
    assert!(lines.len() > 50);
    let mut messages: Vec<(i64, Vec<u8>)> = lines
        .iter()
        .map(|l| (now_ms, l.as_bytes().to_vec()))
        .collect();
    // Messages of the day before and the day after are not the day's.
    messages.push((
        now_ms - 2 * 86_400_000,
        b"{'user': 'old', 'message': 'yesterday'}".to_vec(),
    ));
    messages.push((
        now_ms + 2 * 86_400_000,
        b"{'user': 'new', 'message': 'tomorrow'}".to_vec(),
    ));
    broker.produce("lobby", 2, &messages);

    let dir = tempfile::tempdir().unwrap();
    // The same lines as a log file of room "lobby".
    let input = dir.path().join("in");
    fs::create_dir_all(input.join("lobby")).unwrap();
    fs::write(
        input.join(format!("lobby/chat_{today}.log")),
        lines.join("\n") + "\n",
    )
    .unwrap();
    let from_file = dir.path().join("from_file");
    let file_summary = extract_and_write(
        dir.path(),
        &["--input-root", input.to_str().unwrap()],
        &from_file,
        &today,
    );

    let from_kafka = dir.path().join("from_kafka");
    let b = broker.brokers();
    let kafka_summary = extract_and_write(
        dir.path(),
        &["--from-kafka", "lobby", "--brokers", &b],
        &from_kafka,
        &today,
    );
    let ft = &file_summary["summary"]["totals"];
    let kt = &kafka_summary["summary"]["totals"];
    assert_eq!(kt["staged"], ft["staged"], "{kt} vs {ft}");
    assert_eq!(kt["lines"].as_u64().unwrap(), lines.len() as u64, "{kt}");
    let files: Vec<&str> = kafka_summary["summary"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["kafka:lobby/0", "kafka:lobby/1"]);
    let expected = rows_of(&from_file, &today);
    assert_eq!(rows_of(&from_kafka, &today), expected);

    // The fallback when time look-ups are not trusted: scan from the earliest offset and keep
    // messages by timestamp. Same records.
    fs::write(
        dir.path().join("chatetl.toml"),
        "[kafka]\ntime_lookup = false\n",
    )
    .unwrap();
    let scanned = dir.path().join("scanned");
    let s = extract_and_write(
        dir.path(),
        &["--from-kafka", "lobby", "--brokers", &b],
        &scanned,
        &today,
    );
    assert_eq!(s["summary"]["totals"]["staged"], ft["staged"]);
    assert_eq!(rows_of(&scanned, &today), expected);

    // Source columns say where each record came from.
    let part = fs::read_dir(from_kafka.join(format!("messages/date={today}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let file = fs::read_dir(&part).unwrap().next().unwrap().unwrap().path();
    let df = ParquetReader::new(fs::File::open(file).unwrap())
        .finish()
        .unwrap();
    let col = df.column("source_file").unwrap().str().unwrap().clone();
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..col.len() {
        *sources.entry(col.get(i).unwrap().to_string()).or_default() += 1;
    }
    assert!(
        sources.keys().all(|k| k.starts_with("kafka:lobby/")),
        "{sources:?}"
    );

    // A day with no messages is skipped (99); a topic that does not exist is 66.
    let o = run(
        dir.path(),
        &[
            "--output-root",
            scanned.to_str().unwrap(),
            "extract",
            "--date",
            "2001-01-01",
            "--from-kafka",
            "lobby",
            "--brokers",
            &b,
        ],
    );
    assert_eq!(code(&o), 99, "{}", stderr(&o));
    let o = run(
        dir.path(),
        &[
            "--output-root",
            scanned.to_str().unwrap(),
            "extract",
            "--date",
            &today,
            "--from-kafka",
            "nope",
            "--brokers",
            &b,
        ],
    );
    assert_eq!(code(&o), 66, "{}", stderr(&o));
}

#[test]
fn a_backfill_with_one_broken_date_ends_with_the_worst_code_and_the_others_complete() {
    let (dir, input, out) = workspace();
    // 2024-10-25 broken (only cut records), 2024-10-26 a good day.
    for e in walk(&input) {
        if e.to_string_lossy().contains("2024-10-25") || e.to_string_lossy().contains("20241025") {
            fs::remove_file(e).unwrap();
        }
    }
    fs::write(
        input.join("lobby/chat_2024-10-25.log"),
        "{'user': 'a', 'message': 'cut\n{'user': 'b', 'message': 'off\n",
    )
    .unwrap();
    fs::copy(
        input.join("lobby/chat_2024-10-24.log"),
        input.join("lobby/chat_2024-10-26.log"),
    )
    .unwrap();
    let m = mock(1, "room");
    let b = m.bootstrap_servers();
    let range = ["--from", "2024-10-24", "--to", "2024-10-26"];
    // Without --continue-on-error the range stops at the broken date.
    let o = run(dir.path(), &run_args(&input, &out, &b, &range));
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    assert!(out.join("messages/date=2024-10-24/_SUCCESS").is_file());
    assert!(!out.join("messages/date=2024-10-26").exists());
    // With it, the other two complete and the exit code is still the worst.
    let mut args = run_args(&input, &out, &b, &range);
    args.extend(["--continue-on-error", "--json"]);
    let o = run(dir.path(), &args);
    assert_eq!(code(&o), 65, "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let per_date: Vec<(String, i64)> = v["dates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["date"].as_str().unwrap().to_string(),
                d["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_date,
        [
            ("2024-10-24".to_string(), 0),
            ("2024-10-25".to_string(), 65),
            ("2024-10-26".to_string(), 0)
        ]
    );
    for d in ["2024-10-24", "2024-10-26"] {
        assert!(
            out.join(format!("messages/date={d}/_SUCCESS")).is_file(),
            "{d}"
        );
        assert!(
            out.join(format!("aggregates/date={d}/summary.json"))
                .is_file(),
            "{d}"
        );
    }
    assert!(!out.join("messages/date=2024-10-25/_SUCCESS").exists());
    // Each date told the room: success, failure (twice: both runs), success.
    let texts = common::notification_texts(&b, "room", 5);
    let heads: Vec<&str> = texts.iter().map(|t| &t[..28.min(t.len())]).collect();
    assert_eq!(
        heads,
        [
            "chatetl 2024-10-24: success,",
            "chatetl 2024-10-25: failure,",
            "chatetl 2024-10-24: success,",
            "chatetl 2024-10-25: failure,",
            "chatetl 2024-10-26: success,",
        ]
    );
}

/// Every file under `root`.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
