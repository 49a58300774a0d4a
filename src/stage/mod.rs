//! One module per stage. Each stage is a small idempotent operation: it takes validated
//! [`crate::config::Settings`] and its own arguments, and returns an [`Outcome`] (its exit code,
//! a human summary, and the same facts as JSON) or an [`crate::Error`].

use serde_json::Value;

use crate::exit::ExitCode;

pub mod aggregate;
pub mod check_log;
pub mod clean_output;
pub mod dedupe;
pub mod extract;
pub mod ipc;
pub mod notify;
pub mod reorder;
pub mod report;
pub mod write;

/// Threads for parallel work: one per core (at most 8), fewer when each needs `per_thread` bytes
/// of a `budget` that cannot hold one per core; at least one.
pub fn threads_within(budget: usize, per_thread: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(8).min(budget / per_thread.max(1)).max(1)
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn threads_within_a_budget() {
        assert_eq!(super::threads_within(16 << 20, 64 << 20), 1);
        assert_eq!(super::threads_within(0, 0), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(super::threads_within(1 << 40, 1), cores.min(8));
    }
}
