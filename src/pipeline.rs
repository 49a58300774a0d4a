//! `run`: the stages composed over one date or a range of dates.
//!
//! For each date, under that date's lock: check-log (no input → 99, skipped), extract, write,
//! aggregate (`out/aggregates/date=D`); then, when Kafka is configured and not `--no-notify`,
//! notify (success, skipped, or failure with the failed stage's code and error).
//! A date whose `_SUCCESS` manifest already lists exactly the current input files (path, size and
//! sha256) is up to date and left alone unless `--force`. Dates run in order; the exit code is the
//! worst of the dates' codes ([`ExitCode::worst`]); after a failed date the range stops unless
//! `--continue-on-error`.

use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::{Codec, Settings};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::input::Discovery;
use crate::layout::Layout;
use crate::lock::DateLock;
use crate::stage::notify::{self, NotifyStatus};
use crate::stage::{Outcome, aggregate, check_log, extract, write};
use crate::status;

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// First date.
    pub from: NaiveDate,
    /// Last date (inclusive).
    pub to: NaiveDate,
    /// Rebuild dates that are already complete.
    pub force: bool,
    /// Keep going after a failed date.
    pub continue_on_error: bool,
    /// Post each date's outcome to Kafka (when brokers and topic are configured).
    pub notify: bool,
}

/// One stage of one date.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    /// `check-log`, `extract`, `write`, `aggregate` or `notify`.
    pub stage: &'static str,
    /// `ok`, `skipped`, `up_to_date`, or the failure's name.
    pub status: String,
    /// The stage's exit code.
    pub exit_code: i32,
    /// Seconds spent.
    pub duration_s: f64,
    /// The error, when the stage failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What happened to one date.
#[derive(Debug, Clone, Serialize)]
pub struct DateResult {
    /// The date.
    pub date: NaiveDate,
    /// `ok`, `up_to_date`, `skipped`, `notify_failed`, or the failure's name.
    pub status: String,
    /// Exit code of the date.
    pub exit_code: i32,
    #[serde(skip)]
    exit: ExitCode,
    /// Records written.
    pub rows: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Input files.
    pub files: usize,
    /// Where the output is.
    pub output: Option<String>,
    /// Where the date's aggregates are.
    pub aggregates: Option<String>,
    /// The error, when the date failed.
    pub error: Option<String>,
    /// Seconds spent.
    pub duration_s: f64,
    /// Each stage in order.
    pub stages: Vec<StageResult>,
    /// The notification posted (topic, partition, offset), when one was.
    pub notified: Option<serde_json::Value>,
}

impl DateResult {
    fn new(date: NaiveDate) -> DateResult {
        DateResult {
            date,
            status: String::new(),
            exit_code: 0,
            exit: ExitCode::Ok,
            rows: 0,
            rejected: 0,
            files: 0,
            output: None,
            aggregates: None,
            error: None,
            duration_s: 0.0,
            stages: Vec::new(),
            notified: None,
        }
    }

    fn set_exit(&mut self, exit: ExitCode, status: &str) {
        self.exit = exit;
        self.exit_code = exit.code();
        self.status = status.to_string();
    }

    /// Runs one stage, recording its status, code and duration.
    fn stage<T>(&mut self, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        self.stages.push(StageResult {
            stage,
            status: match &r {
                Ok(_) => "ok".into(),
                Err(e) => e.exit_code().name().into(),
            },
            exit_code: r.as_ref().map_or_else(|e| e.exit_code().code(), |_| 0),
            duration_s: t.elapsed().as_secs_f64(),
            error: r.as_ref().err().map(|e| e.to_string()),
        });
        r
    }
}

/// Runs the pipeline over the range.
pub fn run(settings: &Settings, opts: &RunOptions) -> Result<Outcome> {
    if opts.to < opts.from {
        return Err(Error::Usage(format!(
            "--to {} is before --from {}",
            opts.to, opts.from
        )));
    }
    crate::stage::clean_output::check_output_root(settings)?;
    let layout = Layout::new(&settings.output_root);
    let notify = opts.notify && notify_configured(settings);
    let mut results = Vec::new();
    let mut exit = ExitCode::Ok;
    let mut date = opts.from;
    let mut last_err = None;
    loop {
        let started = Instant::now();
        let recorded_at = status::begin_unless_locked(&layout, date, "run");
        let mut res = DateResult::new(date);
        let r = run_date(settings, &layout, date, opts.force, &mut res);
        res.duration_s = started.elapsed().as_secs_f64();
        let failure = match r {
            Ok(()) => {
                if let Some(t) = recorded_at {
                    // ok, up_to_date or skipped, as in the run's own summary.
                    status::finish_as(&layout, date, "run", t, res.exit, &res.status, None);
                }
                None
            }
            Err(e) => {
                let code = e.exit_code();
                if opts.from != opts.to {
                    tracing::error!("{date}: {e}");
                }
                res.set_exit(code, code.name());
                res.error = Some(e.to_string());
                if let Some(t) = recorded_at.filter(|_| !matches!(e, Error::Locked(_))) {
                    status::finish(&layout, date, "run", t, code, res.error.clone());
                }
                let failed_stage = res.stages.last().map(|s| s.stage.to_string());
                last_err = Some(e);
                Some(notify::FailureInfo {
                    stage: failed_stage,
                    exit_code: Some(code.code()),
                    error: res.error.clone(),
                })
            }
        };
        if notify && !matches!(last_err, Some(Error::Locked(_))) {
            notify_date(settings, &layout, &mut res, failure);
        }
        let code = res.exit;
        exit = exit.worst(code);
        results.push(res);
        if (code.is_failure() && !opts.continue_on_error) || date >= opts.to {
            break;
        }
        last_err = None;
        date = date.succ_opt().expect("date in range");
    }
    // A single date that failed in a stage reports that stage's error line, as the stage would.
    // With --json the summary is still printed, with the error in it.
    if results.len() == 1
        && let Some(err) = last_err
    {
        eprintln!("{}", crate::app::error_line(&err.to_string()));
        return Ok(Outcome {
            exit,
            human: String::new(),
            json: summary_json(exit, &results),
        });
    }
    let mut human = format!(
        "{:<12} {:<12} {:>4} {:>8} {:>8} {:>8}  output\n",
        "date", "status", "code", "files", "rows", "rejected"
    );
    for r in &results {
        human.push_str(&format!(
            "{:<12} {:<12} {:>4} {:>8} {:>8} {:>8}  {}\n",
            r.date.to_string(),
            r.status,
            r.exit_code,
            r.files,
            r.rows,
            r.rejected,
            r.output
                .clone()
                .or_else(|| r.error.clone())
                .unwrap_or_default()
        ));
    }
    for r in &results {
        if let (Some(out), Some(agg)) = (&r.output, &r.aggregates) {
            human.push_str(&format!(
                "{}: Parquet in {out}, aggregates in {agg}, rejected lines in {}\n",
                r.date,
                layout.rejects_dir(r.date).join("rejects.jsonl").display()
            ));
        }
        if let Some(n) = &r.notified {
            human.push_str(&format!(
                "{}: notified {} ({})\n",
                r.date,
                n["topic"].as_str().unwrap_or_default(),
                n["outcome"].as_str().unwrap_or_default()
            ));
        }
    }
    Ok(Outcome {
        exit,
        human,
        json: summary_json(exit, &results),
    })
}

fn summary_json(exit: ExitCode, results: &[DateResult]) -> serde_json::Value {
    json!({
        "command": "run",
        "status": exit.name(),
        "exit_code": exit.code(),
        "dates": results,
    })
}

/// True when notifications can be sent: brokers and topic are both configured.
fn notify_configured(settings: &Settings) -> bool {
    match (&settings.kafka.brokers, &settings.kafka.topic) {
        (Some(_), Some(_)) => true,
        (None, None) => {
            tracing::info!("No Kafka brokers and topic configured; not notifying.");
            false
        }
        _ => {
            tracing::warn!(
                "Kafka notifications need both brokers and a topic; only one is configured, so run does not notify."
            );
            false
        }
    }
}

/// Posts the date's outcome. A failed notification never hides a failed stage's exit code; after
/// a success or a skip it becomes the date's exit code (the room was not told), and re-running
/// the date, which is then up to date, sends it again.
fn notify_date(
    settings: &Settings,
    layout: &Layout,
    res: &mut DateResult,
    failure: Option<notify::FailureInfo>,
) {
    let status = match (&failure, res.exit) {
        (Some(_), _) => NotifyStatus::Failure,
        (None, ExitCode::Skipped) => NotifyStatus::Skipped,
        (None, _) => NotifyStatus::Success,
    };
    let st = status::read(layout, res.date);
    let text = notify::default_text(
        layout,
        res.date,
        status,
        &failure.clone().unwrap_or_default(),
        &st,
        if res.status == "up_to_date" {
            notify::Took::UpToDate
        } else {
            notify::Took::Measured(res.duration_s)
        },
    );
    let date = res.date;
    let sent = res.stage("notify", || {
        notify::send(settings, date, status, &text, false)
    });
    match sent {
        Ok(o) => {
            res.notified = Some(json!({
                "topic": o.json["topic"], "partition": o.json["partition"],
                "offset": o.json["offset"], "outcome": status.as_str(),
            }))
        }
        Err(e) => {
            if failure.is_some() {
                tracing::warn!("{date}: the failure notification was not sent: {e}");
            } else {
                tracing::error!("{date}: {e}");
                res.set_exit(e.exit_code(), "notify_failed");
                res.error = Some(e.to_string());
            }
        }
    }
}

/// Runs one date under its lock, filling `res` stage by stage.
fn run_date(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    force: bool,
    res: &mut DateResult,
) -> Result<()> {
    let _lock = DateLock::acquire(layout, date, "chatetl run")?;
    // Whatever a killed run of this date left in out/_tmp goes now (we hold the date's lock, so
    // no live process owns it), also when the date turns out to be up to date.
    for leftover in layout.tmp_leftovers(date)? {
        crate::layout::remove_path(&leftover)
            .map_err(|e| Error::io("cannot remove", &leftover, e))?;
    }
    let found = res.stage("check-log", || check_log::discover(settings, date))?;
    res.files = found.files.len();
    if !found.has_input() {
        if let Some(s) = res.stages.last_mut() {
            s.status = "skipped".into();
            s.exit_code = ExitCode::Skipped.code();
        }
        res.set_exit(ExitCode::Skipped, "skipped");
        // As `extract` with no input: what was staged from an earlier input must not be
        // committed by a later `write`.
        extract::discard_staged(layout, date, "no input");
        tracing::info!("{date}: no input; skipped.");
        return Ok(());
    }
    res.set_exit(ExitCode::Ok, "ok");
    if !force
        && let Some(m) = write::read_manifest(layout, date)?
        && inputs_unchanged(&m, &found, settings)?
    {
        res.status = "up_to_date".into();
        res.rows = m.rows;
        res.rejected = m.counts.rejected;
        res.output = Some(layout.messages_dir(date).display().to_string());
        res.aggregates = Some(
            match aggregate::committed_dir(layout, date, settings, RUN_TOP) {
                Some(dir) => dir.display().to_string(),
                None => res.stage("aggregate", || aggregate_date(settings, layout, date))?,
            },
        );
        return Ok(());
    }
    let summary = res
        .stage("extract", || extract::extract(settings, layout, date))?
        .ok_or_else(|| Error::Internal("input disappeared between check-log and extract".into()))?;
    res.rejected = summary.totals.rejected;
    let manifest = res.stage("write", || write::write(settings, layout, date))?;
    res.rows = manifest.rows;
    res.output = Some(layout.messages_dir(date).display().to_string());
    res.aggregates = Some(res.stage("aggregate", || aggregate_date(settings, layout, date))?);
    Ok(())
}

/// Rows of the top lists in the aggregates `run` makes.
const RUN_TOP: usize = 10;

/// Aggregates a date that has just been written (the caller holds its lock).
fn aggregate_date(settings: &Settings, layout: &Layout, date: NaiveDate) -> Result<String> {
    let opts = aggregate::AggregateOptions {
        from: date,
        to: date,
        top: RUN_TOP,
        include_system: false,
    };
    let (_, dir) = aggregate::build(settings, layout, &opts, vec![date], Vec::new())?;
    Ok(dir.display().to_string())
}

/// True when the manifest lists exactly the files found now, with the same sizes and hashes, and
/// was written by this version with the same zone, codec and record settings.
fn inputs_unchanged(m: &write::Manifest, found: &Discovery, settings: &Settings) -> Result<bool> {
    if m.tool_version != env!("CARGO_PKG_VERSION")
        || m.tz != settings.tz.name()
        || m.compression.parse::<Codec>() != Ok(settings.compression)
        || m.record_settings.as_ref() != Some(&extract::RecordSettings::of(settings))
        || m.inputs.len() != found.files.len()
    {
        return Ok(false);
    }
    for (a, b) in m.inputs.iter().zip(&found.files) {
        if a.path != b.rel || a.size != b.size {
            return Ok(false);
        }
        let mut f =
            std::fs::File::open(&b.path).map_err(|e| Error::io("cannot read", &b.path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)
                .map_err(|e| Error::io("cannot read", &b.path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        if hex::encode(h.finalize()) != a.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}
