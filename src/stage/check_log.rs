//! `check-log`: does the date have input? Lists its files with sizes.
//!
//! Exit 0 when at least one non-empty file exists, 99 when there is none (Airflow skips the
//! downstream tasks), 66 instead of 99 with `--require`, 74 when the input root cannot be read.

use chrono::NaiveDate;
use serde_json::json;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::input::{self, Discovery, Pattern};
use crate::stage::Outcome;

/// Finds the date's input files under the configured input root.
pub fn discover(settings: &Settings, date: NaiveDate) -> Result<Discovery> {
    let pattern = settings
        .input_pattern
        .as_deref()
        .map(Pattern::compile)
        .transpose()?;
    input::discover(&settings.input_root, date, pattern.as_ref())
}

/// Runs `check-log`.
pub fn run(settings: &Settings, date: NaiveDate, require: bool) -> Result<Outcome> {
    let found = discover(settings, date)?;
    let total: u64 = found.files.iter().map(|f| f.size).sum();
    let mut human = String::new();
    for f in &found.files {
        human.push_str(&format!("{:>12}  {}\n", f.size, f.path.display()));
    }
    for s in &found.skipped {
        human.push_str(&format!("{:>12}  {} (skipped: {})\n", "-", s.rel, s.reason));
    }
    let exit = if found.has_input() {
        human.push_str(&format!(
            "{date}: {} file(s), {total} bytes under {}\n",
            found.files.len(),
            settings.input_root.display()
        ));
        ExitCode::Ok
    } else if require {
        return Err(Error::NoInput(format!(
            "no input for {date} under {} (required)",
            settings.input_root.display()
        )));
    } else {
        human.push_str(&format!(
            "{date}: no input under {}; skipped\n",
            settings.input_root.display()
        ));
        ExitCode::Skipped
    };
    let json = json!({
        "stage": "check-log",
        "date": date.to_string(),
        "status": exit.name(),
        "exit_code": exit.code(),
        "input_root": settings.input_root,
        "files": found.files,
        "skipped": found.skipped,
        "total_bytes": total,
    });
    Ok(Outcome { exit, human, json })
}
