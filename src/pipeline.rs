//! `run`: the stages composed over one date or a range of dates.
//!
//! For each date, under that date's lock: check-log (no input → 99, skipped), extract, write,
//! aggregate (`out/aggregates/date=D`).
//! A date whose `_SUCCESS` manifest already lists exactly the current input files (path, size and
//! sha256) is up to date and left alone unless `--force`. Dates run in order; the exit code is the
//! worst of the dates' codes ([`ExitCode::worst`]); after a failed date the range stops unless
//! `--continue-on-error`.

use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::input::Discovery;
use crate::layout::Layout;
use crate::lock::DateLock;
use crate::stage::{Outcome, aggregate, check_log, extract, write};

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
}

/// What happened to one date.
#[derive(Debug, Clone, Serialize)]
pub struct DateResult {
    /// The date.
    pub date: NaiveDate,
    /// `ok`, `up_to_date`, `skipped`, or the failure's name.
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
    let mut results = Vec::new();
    let mut exit = ExitCode::Ok;
    let mut date = opts.from;
    let mut last_err = None;
    loop {
        let started = Instant::now();
        let r = run_date(settings, &layout, date, opts.force);
        let result = match r {
            Ok(mut res) => {
                res.duration_s = started.elapsed().as_secs_f64();
                res
            }
            Err(e) => {
                let code = e.exit_code();
                tracing::error!("{date}: {e}");
                let failed = DateResult {
                    exit: code,
                    date,
                    status: code.name().to_string(),
                    exit_code: code.code(),
                    rows: 0,
                    rejected: 0,
                    files: 0,
                    output: None,
                    aggregates: None,
                    error: Some(e.to_string()),
                    duration_s: started.elapsed().as_secs_f64(),
                };
                last_err = Some(e);
                failed
            }
        };
        let code = result.exit;
        exit = exit.worst(code);
        results.push(result);
        if (code.is_failure() && !opts.continue_on_error) || date >= opts.to {
            break;
        }
        date = date.succ_opt().expect("date in range");
    }
    // A single date that failed reports its own error line, as a stage would.
    if results.len() == 1
        && let Some(err) = last_err
    {
        return Err(err);
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
    }
    let json = json!({
        "command": "run",
        "status": exit.name(),
        "exit_code": exit.code(),
        "dates": results,
    });
    Ok(Outcome { exit, human, json })
}

/// Runs one date under its lock.
fn run_date(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    force: bool,
) -> Result<DateResult> {
    let _lock = DateLock::acquire(layout, date, "chatetl run")?;
    let found = check_log::discover(settings, date)?;
    let mut res = DateResult {
        exit: ExitCode::Ok,
        date,
        status: String::new(),
        exit_code: 0,
        rows: 0,
        rejected: 0,
        files: found.files.len(),
        output: None,
        aggregates: None,
        error: None,
        duration_s: 0.0,
    };
    if !found.has_input() {
        res.status = "skipped".into();
        res.exit_code = ExitCode::Skipped.code();
        res.exit = ExitCode::Skipped;
        tracing::info!("{date}: no input; skipped.");
        return Ok(res);
    }
    if !force
        && let Some(m) = write::read_manifest(layout, date)?
        && inputs_unchanged(&m, &found, settings)?
    {
        res.status = "up_to_date".into();
        res.rows = m.rows;
        res.rejected = m.counts.rejected;
        res.output = Some(layout.messages_dir(date).display().to_string());
        res.aggregates = Some(match aggregate::committed_dir(layout, date) {
            Some(dir) => dir.display().to_string(),
            None => aggregate_date(settings, layout, date)?,
        });
        return Ok(res);
    }
    let summary = extract::extract(settings, layout, date)?
        .ok_or_else(|| Error::Internal("input disappeared between check-log and extract".into()))?;
    let manifest = write::write(settings, layout, date)?;
    res.status = "ok".into();
    res.rows = manifest.rows;
    res.rejected = summary.totals.rejected;
    res.output = Some(layout.messages_dir(date).display().to_string());
    res.aggregates = Some(aggregate_date(settings, layout, date)?);
    Ok(res)
}

/// Aggregates a date that has just been written (the caller holds its lock).
fn aggregate_date(settings: &Settings, layout: &Layout, date: NaiveDate) -> Result<String> {
    let opts = aggregate::AggregateOptions {
        from: date,
        to: date,
        top: 10,
        include_system: false,
    };
    let (_, dir) = aggregate::build(settings, layout, &opts, vec![date], Vec::new())?;
    Ok(dir.display().to_string())
}

/// True when the manifest lists exactly the files found now, with the same sizes and hashes.
fn inputs_unchanged(m: &write::Manifest, found: &Discovery, settings: &Settings) -> Result<bool> {
    if m.tool_version != env!("CARGO_PKG_VERSION")
        || m.tz != settings.tz.name()
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
