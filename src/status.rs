//! The last outcome of each stage for a date, in `out/status/date=D.json`.
//!
//! A stage marks itself `running` when it starts and records its exit code, error and duration
//! when it ends. `notify --status auto` reads this to tell the chat room what happened, also when
//! the stages ran as separate scheduler tasks (Airflow) and a task was killed: a stage still marked
//! `running` while nobody holds the date's lock did not finish.
//!
//! Recording is best effort: failing to write the status never changes a stage's exit code.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::exit::ExitCode;
use crate::layout::Layout;

/// One stage's last outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageStatus {
    /// `running`, `ok`, `skipped`, or the failure's name.
    pub status: String,
    /// Exit code (absent while running).
    pub exit_code: Option<i32>,
    /// The error line, for a failure.
    pub error: Option<String>,
    /// When the stage started.
    pub started_at: DateTime<Utc>,
    /// When it ended (absent while running).
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds spent.
    pub duration_s: Option<f64>,
    /// Airflow's try number, when the stage ran as an Airflow task.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub try_number: Option<String>,
    /// Process ID.
    pub pid: u32,
}

/// The status file of one date.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DateStatus {
    /// The date.
    pub date: Option<NaiveDate>,
    /// The stage that started last.
    pub last: Option<String>,
    /// Per stage.
    pub stages: BTreeMap<String, StageStatus>,
}

/// Reads a date's status; a missing or unreadable file reads as empty.
pub fn read(layout: &Layout, date: NaiveDate) -> DateStatus {
    fs::read(layout.status_file(date))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(layout: &Layout, date: NaiveDate, st: &DateStatus) -> std::io::Result<()> {
    let path = layout.status_file(date);
    let dir = path.parent().expect("status file has a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        Layout::date_dir_name(date),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

/// The Airflow try number of this process, when run by Airflow.
pub fn airflow_try_number() -> Option<String> {
    std::env::var("AIRFLOW_CTX_TRY_NUMBER")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Stores `entry` as `stage`'s outcome and `stage` as the last one (best effort).
fn put(layout: &Layout, date: NaiveDate, stage: &str, entry: StageStatus) {
    let mut st = read(layout, date);
    st.date = Some(date);
    st.last = Some(stage.to_string());
    st.stages.insert(stage.to_string(), entry);
    if let Err(e) = save(layout, date, &st) {
        // Once a date: a stage that could not record its start cannot record its end either.
        static WARNED: std::sync::Mutex<Option<NaiveDate>> = std::sync::Mutex::new(None);
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if *warned != Some(date) {
            *warned = Some(date);
            tracing::warn!("cannot record the status of {date}: {e}");
        }
    }
}

/// Marks `stage` of `date` as running.
pub fn begin(layout: &Layout, date: NaiveDate, stage: &str) -> DateTime<Utc> {
    let now = Utc::now();
    let entry = StageStatus {
        status: "running".into(),
        exit_code: None,
        error: None,
        started_at: now,
        finished_at: None,
        duration_s: None,
        try_number: airflow_try_number(),
        pid: std::process::id(),
    };
    put(layout, date, stage, entry);
    now
}

/// Marks `stage` of `date` as running, unless another process holds the date's lock: that one
/// will turn this stage away (75), and its status must stand. Returns the start time to pass to
/// [`finish`] when something was recorded.
pub fn begin_unless_locked(layout: &Layout, date: NaiveDate, stage: &str) -> Option<DateTime<Utc>> {
    (!crate::lock::is_held(layout, date)).then(|| begin(layout, date, stage))
}

/// Records how `stage` of `date` ended.
pub fn finish(
    layout: &Layout,
    date: NaiveDate,
    stage: &str,
    started_at: DateTime<Utc>,
    exit: ExitCode,
    error: Option<String>,
) {
    let status = match exit {
        ExitCode::Ok => "ok",
        other => other.name(),
    };
    finish_as(layout, date, stage, started_at, exit, status, error);
}

/// Records how `stage` of `date` ended, with a status word of its own (`up_to_date`).
pub fn finish_as(
    layout: &Layout,
    date: NaiveDate,
    stage: &str,
    started_at: DateTime<Utc>,
    exit: ExitCode,
    status: &str,
    error: Option<String>,
) {
    let now = Utc::now();
    let entry = StageStatus {
        status: status.to_string(),
        exit_code: Some(exit.code()),
        error,
        started_at,
        finished_at: Some(now),
        duration_s: Some((now - started_at).num_milliseconds() as f64 / 1000.0),
        try_number: airflow_try_number(),
        pid: std::process::id(),
    };
    put(layout, date, stage, entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_then_finish_keeps_other_stages() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let d = NaiveDate::from_ymd_opt(2024, 10, 24).unwrap();
        let t = begin(&layout, d, "extract");
        let st = read(&layout, d);
        assert_eq!(st.stages["extract"].status, "running");
        finish(&layout, d, "extract", t, ExitCode::Ok, None);
        let t = begin(&layout, d, "write");
        finish(
            &layout,
            d,
            "write",
            t,
            ExitCode::IoErr,
            Some("disk full".into()),
        );
        let st = read(&layout, d);
        assert_eq!(st.last.as_deref(), Some("write"));
        assert_eq!(st.stages["extract"].status, "ok");
        assert_eq!(st.stages["write"].exit_code, Some(74));
        assert_eq!(st.stages["write"].error.as_deref(), Some("disk full"));
        // Another date is untouched.
        let other = NaiveDate::from_ymd_opt(2024, 10, 25).unwrap();
        assert!(read(&layout, other).stages.is_empty());
    }
}
