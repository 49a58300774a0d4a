//! Progress bars (indicatif) for the long stages, on a terminal only.
//!
//! Nothing is drawn when stderr is not a terminal (Airflow, cron, pipes), with `-q`, or with
//! `--json`: the bars are hidden and cost an atomic add per update.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns bars on when stderr is a terminal and `allowed` (not quiet, not JSON).
pub fn init(allowed: bool) {
    ENABLED.store(
        allowed && std::io::stderr().is_terminal(),
        Ordering::Relaxed,
    );
}

/// A bar counting bytes of input.
pub fn bytes(len: u64, what: &str) -> ProgressBar {
    bar(
        len,
        what,
        "{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
}

/// A bar counting rows.
pub fn rows(len: u64, what: &str) -> ProgressBar {
    bar(
        len,
        what,
        "{msg:10} [{bar:30}] {human_pos}/{human_len} rows {per_sec} eta {eta}",
    )
}

fn bar(len: u64, what: &str, template: &str) -> ProgressBar {
    if !ENABLED.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bars_are_hidden_unless_enabled_on_a_terminal() {
        super::init(true);
        // The test harness's stderr is not a terminal (captured), so bars stay hidden.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(super::bytes(10, "extract").is_hidden());
        }
        super::init(false);
        assert!(super::rows(10, "write").is_hidden());
    }
}
