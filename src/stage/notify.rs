//! `notify`: posts one message about a date's outcome to the chat room's Kafka topic, in the chat
//! app's own message shape (`{"sender": "chatetl", "message": "...", "time": <epoch s>, "end":
//! false}` by default, key names configurable), and exits 0 only once the broker confirmed it.
//!
//! The default text is built from what the date left on disk: the `_SUCCESS` manifest and the
//! aggregates' summary for a success, the status file (`out/status/date=D.json`) for a failure.
//! `--status auto` decides the status from the status file too, which is what a scheduler task
//! that runs whatever happened upstream (Airflow's `trigger_rule="all_done"`) wants.

use std::time::Instant;

use chrono::NaiveDate;
use serde_json::{Map, Value, json};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::layout::Layout;
use crate::stage::Outcome;
use crate::stage::write::read_manifest;
use crate::status::{self, DateStatus};

/// The outcome being announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NotifyStatus {
    /// The date is complete.
    Success,
    /// A stage failed.
    Failure,
    /// There was no input for the date.
    Skipped,
    /// Decide from the date's status file (out/status/date=D.json).
    Auto,
}

impl NotifyStatus {
    /// `success`, `failure`, `skipped` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyStatus::Success => "success",
            NotifyStatus::Failure => "failure",
            NotifyStatus::Skipped => "skipped",
            NotifyStatus::Auto => "auto",
        }
    }
}

/// What to announce.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    /// The date.
    pub date: NaiveDate,
    /// The status, or `Auto`.
    pub status: NotifyStatus,
    /// Text instead of the generated one.
    pub message: Option<String>,
    /// Print the message and send nothing.
    pub dry_run: bool,
}

/// A failure to describe: which stage, its exit code, its error line.
#[derive(Debug, Clone, Default)]
pub struct FailureInfo {
    /// The stage that failed.
    pub stage: Option<String>,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Its error line.
    pub error: Option<String>,
}

/// Runs `notify`.
pub fn run(settings: &Settings, opts: &NotifyOptions) -> Result<Outcome> {
    let layout = Layout::new(&settings.output_root);
    let st = status::read(&layout, opts.date);
    let (status, failure) = match opts.status {
        NotifyStatus::Auto => decide(&layout, opts.date, &st)?,
        NotifyStatus::Failure => (NotifyStatus::Failure, last_failure(&st)),
        s => (s, FailureInfo::default()),
    };
    let text = match &opts.message {
        Some(m) => m.clone(),
        None => default_text(&layout, opts.date, status, &failure, &st, Took::FromStatus),
    };
    send(settings, opts.date, status, &text, opts.dry_run)
}

/// Builds the message, sends it (unless `dry_run`) and describes what happened.
pub fn send(
    settings: &Settings,
    date: NaiveDate,
    status: NotifyStatus,
    text: &str,
    dry_run: bool,
) -> Result<Outcome> {
    let k = &settings.kafka;
    let payload = message_json(settings, text, chrono::Utc::now().timestamp());
    let payload_text =
        serde_json::to_string(&payload).map_err(|e| Error::Internal(e.to_string()))?;
    if dry_run {
        return Ok(Outcome {
            exit: ExitCode::Ok,
            human: format!("{payload_text}\n"),
            json: json!({
                "stage": "notify", "date": date.to_string(), "status": "dry_run",
                "exit_code": 0, "outcome": status.as_str(), "topic": k.topic, "message": payload,
            }),
        });
    }
    let topic = k.topic.as_deref().ok_or_else(|| {
        Error::Config(
            "no Kafka topic: give --topic, CHATETL_KAFKA_TOPIC or kafka.topic in the config file"
                .into(),
        )
    })?;
    let started = Instant::now();
    let d = crate::kafka::produce_one(k, topic, payload_text.as_bytes())?;
    tracing::info!(
        "Notified {topic} ({}) at partition {} offset {}.",
        status.as_str(),
        d.partition,
        d.offset
    );
    Ok(Outcome {
        exit: ExitCode::Ok,
        human: format!(
            "sent to {topic} (partition {}, offset {}) in {:.2} s: {payload_text}\n",
            d.partition,
            d.offset,
            started.elapsed().as_secs_f64()
        ),
        json: json!({
            "stage": "notify", "date": date.to_string(), "status": "ok", "exit_code": 0,
            "outcome": status.as_str(), "topic": topic, "partition": d.partition,
            "offset": d.offset, "message": payload,
        }),
    })
}

/// The chat app's message object with the configured key names.
pub fn message_json(settings: &Settings, text: &str, epoch_s: i64) -> Value {
    let k = &settings.kafka;
    let mut m = Map::new();
    m.insert(k.keys.sender.clone(), Value::String(k.sender.clone()));
    m.insert(k.keys.message.clone(), Value::String(text.to_string()));
    m.insert(k.keys.time.clone(), Value::from(epoch_s));
    m.insert(k.keys.end.clone(), Value::Bool(false));
    Value::Object(m)
}

/// Decides the status from the status file: the stage that started last tells. A success needs
/// the last stage to be `aggregate` or `run`; a pipeline that stopped earlier (a later task
/// failed before chatetl could record anything) is a failure.
fn decide(
    layout: &Layout,
    date: NaiveDate,
    st: &DateStatus,
) -> Result<(NotifyStatus, FailureInfo)> {
    let Some(last) = st
        .last
        .as_ref()
        .and_then(|l| st.stages.get(l).map(|s| (l, s)))
    else {
        return Err(Error::NoInput(format!(
            "nothing is recorded for {date} in {}; give --status success|failure|skipped",
            layout.status_file(date).display()
        )));
    };
    let (stage, s) = last;
    if s.status == "running" {
        let error = if crate::lock::is_held(layout, date) {
            format!("{stage} is still running")
        } else {
            format!("{stage} did not finish (killed or crashed)")
        };
        return Ok((
            NotifyStatus::Failure,
            FailureInfo {
                stage: Some(stage.clone()),
                exit_code: None,
                error: Some(error),
            },
        ));
    }
    Ok(match s.exit_code {
        // Only a finished pipeline is a success: the last stage is aggregate (or run).
        Some(0) if matches!(stage.as_str(), "aggregate" | "run") => {
            (NotifyStatus::Success, FailureInfo::default())
        }
        Some(0) => (
            NotifyStatus::Failure,
            FailureInfo {
                stage: Some(stage.clone()),
                exit_code: None,
                error: Some("the stages after it did not run".into()),
            },
        ),
        Some(99) => (NotifyStatus::Skipped, FailureInfo::default()),
        code => (
            NotifyStatus::Failure,
            FailureInfo {
                stage: Some(stage.clone()),
                exit_code: code,
                error: s.error.clone(),
            },
        ),
    })
}

/// The most recent failed stage in the status file, if any.
fn last_failure(st: &DateStatus) -> FailureInfo {
    st.stages
        .iter()
        .filter(|(_, s)| s.exit_code.is_some_and(|c| c != 0 && c != 99))
        .max_by_key(|(_, s)| s.finished_at)
        .map(|(stage, s)| FailureInfo {
            stage: Some(stage.clone()),
            exit_code: s.exit_code,
            error: s.error.clone(),
        })
        .unwrap_or_default()
}

/// How long the date took to build, for a success's text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Took {
    /// Measured by the caller (seconds).
    Measured(f64),
    /// The run found the date up to date and built nothing.
    UpToDate,
    /// Read from the status file: the last `run`, else extract + write + aggregate.
    FromStatus,
}

/// The generated text.
pub fn default_text(
    layout: &Layout,
    date: NaiveDate,
    status: NotifyStatus,
    failure: &FailureInfo,
    st: &DateStatus,
    took: Took,
) -> String {
    match status {
        NotifyStatus::Success | NotifyStatus::Auto => {
            let Ok(Some(m)) = read_manifest(layout, date) else {
                return format!("chatetl {date}: success");
            };
            let rooms = std::fs::read(layout.aggregates_dir(date).join("summary.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("rooms").and_then(Value::as_u64));
            let run = st.stages.get("run");
            let took = match took {
                Took::FromStatus if run.is_some_and(|r| r.status == "up_to_date") => Took::UpToDate,
                other => other,
            };
            let duration = match took {
                Took::Measured(d) => Some(d),
                Took::UpToDate => None,
                Took::FromStatus => run.and_then(|s| s.duration_s).or_else(|| {
                    let parts: Vec<f64> = ["extract", "write", "aggregate"]
                        .iter()
                        .filter_map(|s| st.stages.get(*s).and_then(|s| s.duration_s))
                        .collect();
                    (!parts.is_empty()).then(|| parts.iter().sum())
                }),
            };
            let mut t = format!(
                "chatetl {date}: success, {} records from {} senders",
                m.rows, m.counts.senders
            );
            if let Some(r) = rooms {
                t.push_str(&format!(" in {r} rooms"));
            }
            let plural = if m.counts.rejected == 1 { "" } else { "s" };
            t.push_str(&format!(", {} rejected line{plural}", m.counts.rejected));
            if let Some(d) = duration {
                t.push_str(&format!(", took {d:.1} s"));
            } else if took == Took::UpToDate {
                t.push_str(", already up to date");
            }
            t
        }
        NotifyStatus::Skipped => format!("chatetl {date}: skipped, no chat logs for this date"),
        NotifyStatus::Failure => {
            let mut t = format!("chatetl {date}: failure");
            if let Some(stage) = &failure.stage {
                t.push_str(&format!(", {stage}"));
                if let Some(c) = failure.exit_code {
                    t.push_str(&format!(" exited {c}"));
                    if let Some(name) = ExitCode::from_code(c) {
                        t.push_str(&format!(" ({})", name.name()));
                    }
                }
            }
            if let Some(e) = &failure.error {
                t.push_str(&format!(": {e}"));
            }
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status;

    fn settings(root: &std::path::Path) -> Settings {
        let args = crate::cli::GlobalArgs {
            output_root: Some(root.to_path_buf()),
            config: Some("/dev/null".into()),
            ..Default::default()
        };
        Settings::load_with(&args, &|_| None).unwrap()
    }

    #[test]
    fn message_uses_configured_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        let v = message_json(&s, "hi", 1_700_000_000);
        assert_eq!(
            v,
            json!({"sender": "chatetl", "message": "hi", "time": 1_700_000_000, "end": false})
        );
        s.kafka.keys.sender = "user".into();
        s.kafka.keys.end = "is_end".into();
        s.kafka.sender = "etl-bot".into();
        let v = message_json(&s, "hi", 1);
        assert_eq!(v["user"], "etl-bot");
        assert_eq!(v["is_end"], false);
    }

    #[test]
    fn auto_status_follows_the_last_stage() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let d = NaiveDate::from_ymd_opt(2024, 10, 24).unwrap();
        assert_eq!(
            decide(&layout, d, &status::read(&layout, d))
                .unwrap_err()
                .exit_code()
                .code(),
            66
        );
        let t = status::begin(&layout, d, "check-log");
        status::finish(&layout, d, "check-log", t, ExitCode::Skipped, None);
        let (s, _) = decide(&layout, d, &status::read(&layout, d)).unwrap();
        assert_eq!(s, NotifyStatus::Skipped);
        let t = status::begin(&layout, d, "extract");
        let (s, f) = decide(&layout, d, &status::read(&layout, d)).unwrap();
        assert_eq!(s, NotifyStatus::Failure);
        assert!(f.error.unwrap().contains("did not finish"));
        status::finish(
            &layout,
            d,
            "extract",
            t,
            ExitCode::DataErr,
            Some("too many rejects".into()),
        );
        let st = status::read(&layout, d);
        let (s, f) = decide(&layout, d, &st).unwrap();
        assert_eq!(s, NotifyStatus::Failure);
        let text = default_text(&layout, d, s, &f, &st, Took::FromStatus);
        assert_eq!(
            text,
            "chatetl 2024-10-24: failure, extract exited 65 (data_error): too many rejects"
        );
        let t = status::begin(&layout, d, "write");
        status::finish(&layout, d, "write", t, ExitCode::Ok, None);
        let st = status::read(&layout, d);
        let (s, f) = decide(&layout, d, &st).unwrap();
        assert_eq!(s, NotifyStatus::Failure);
        assert_eq!(
            default_text(&layout, d, s, &f, &st, Took::FromStatus),
            "chatetl 2024-10-24: failure, write: the stages after it did not run"
        );
        let t = status::begin(&layout, d, "aggregate");
        status::finish(&layout, d, "aggregate", t, ExitCode::Ok, None);
        let (s, _) = decide(&layout, d, &status::read(&layout, d)).unwrap();
        assert_eq!(s, NotifyStatus::Success);
        // Without a manifest a success says only that.
        let text = default_text(
            &layout,
            d,
            s,
            &FailureInfo::default(),
            &st,
            Took::FromStatus,
        );
        assert_eq!(text, "chatetl 2024-10-24: success");
    }
}
