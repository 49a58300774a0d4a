//! Helpers shared by the integration tests that run the real binary.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// The repository root (where sample_logs lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command for the binary with `CHATETL_*`, `AIRFLOW_CTX_*` and `TZ` removed, `TZ=UTC`, and
/// cwd set to `dir`.
pub fn chatetl(dir: &Path) -> Command {
    with_test_env(Command::new(env!("CARGO_BIN_EXE_chatetl")), dir)
}

/// Like [`chatetl`], but run as nobody (uid 65534, through `setpriv`) when the tests run as root,
/// who passes every permission check: for the cases where a permission must be refused. Give
/// nobody the directories it needs first (see [`is_root`]).
pub fn unprivileged(dir: &Path) -> Command {
    if !is_root() {
        return chatetl(dir);
    }
    wrapped(
        dir,
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
    )
}

/// Like [`chatetl`], but the binary run by `wrapper wrapper_args... <binary>` (the arguments
/// given to the command follow).
pub fn wrapped(dir: &Path, wrapper: &str, wrapper_args: &[&str]) -> Command {
    let mut c = Command::new(wrapper);
    c.args(wrapper_args).arg(env!("CARGO_BIN_EXE_chatetl"));
    with_test_env(c, dir)
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    unsafe extern "C" {
        safe fn geteuid() -> u32;
    }
    geteuid() == 0
}

fn with_test_env(mut c: Command, dir: &Path) -> Command {
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

/// Reads every message of partitions `0..partitions` of `topic`, waiting up to 15 s for `want`.
pub fn consume(brokers: &str, topic: &str, partitions: i32, want: usize) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "chatetl-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
    // Nothing more arrives.
    let _ = consumer.poll(Duration::from_millis(300)).map(|m| {
        if let Ok(m) = m {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    });
    out
}

/// The `message` texts of the notifications in partition 0 of `topic` (waiting for `want`).
pub fn notification_texts(brokers: &str, topic: &str, want: usize) -> Vec<String> {
    consume(brokers, topic, 1, want)
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A Tansu broker (in-memory storage) on a free port of 127.0.0.1, killed on drop.
pub struct Tansu {
    child: Child,
    port: u16,
    bin: PathBuf,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tansu {
    /// Starts Tansu with in-memory storage on a free port of 127.0.0.1, or returns None (and says
    /// why) when no binary is installed and the environment does not require one.
    pub fn start() -> Option<Tansu> {
        let home = std::env::var("HOME").unwrap_or_default();
        let candidates = [
            std::env::var("CHATETL_TANSU").ok().map(PathBuf::from),
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("tansu"))
                    .find(|p| p.is_file())
            }),
            Some(PathBuf::from(format!(
                "{home}/.cache/chatetl/tansu-0.6.0/bin/tansu"
            ))),
        ];
        let Some(bin) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
            assert!(
                std::env::var("CHATETL_REQUIRE_KAFKA").as_deref() != Ok("1"),
                "CHATETL_REQUIRE_KAFKA=1 but no tansu binary (set CHATETL_TANSU)"
            );
            eprintln!("SKIPPED: no tansu binary; .ci/run installs one");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let t = Tansu { child, port, bin };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(t)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let st = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "tansu topic create {name}");
    }

    /// Produces payloads with explicit timestamps, round-robin over `partitions`.
    pub fn produce(&self, topic: &str, partitions: i32, messages: &[(i64, Vec<u8>)]) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for (i, (ts, payload)) in messages.iter().enumerate() {
            let mut rec: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic)
                .payload(payload.as_slice())
                .timestamp(*ts)
                .partition(i as i32 % partitions);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(20)).unwrap();
    }
}
