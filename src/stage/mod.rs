//! One module per stage. Each stage is a small idempotent operation: it takes validated
//! [`crate::config::Settings`] and its own arguments, and returns an [`Outcome`] (its exit code,
//! a human summary, and the same facts as JSON) or an [`crate::Error`].

use serde_json::Value;

use crate::exit::ExitCode;

pub mod aggregate;
pub mod check_log;
pub mod clean_output;
pub mod extract;
pub mod notify;
pub mod report;
pub mod write;

/// What a stage reports when it did not fail.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// 0 (done) or 99 (skipped).
    pub exit: ExitCode,
    /// Summary for people, printed on stdout unless `--json` or `-q`.
    pub human: String,
    /// Summary for machines, printed on stdout with `--json`.
    pub json: Value,
}
