//! Exit codes, decided in one place.
//!
//! Schedulers branch on these numbers (Airflow's `BashOperator` treats 99 as "skipped"), so they are
//! part of the public contract: see the table in the README. Every error type in the crate maps to
//! exactly one code through [`crate::Error::exit_code`], and a date range merges per-date codes with
//! [`ExitCode::worst`].

use serde::Serialize;

/// The process exit codes chatetl uses (a sysexits-style subset plus 99 for "skipped").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "i32")]
pub enum ExitCode {
    /// 0: done, or already up to date.
    Ok,
    /// 99: nothing to do, no input for the date (Airflow's default skip code).
    Skipped,
    /// 64: usage error (bad flag, bad date).
    Usage,
    /// 65: data error (too many rejected lines, unreadable format).
    DataErr,
    /// 66: input missing where it was required.
    NoInput,
    /// 69: a service (Kafka) is unavailable.
    Unavailable,
    /// 70: internal error, a bug.
    Software,
    /// 73: output cannot be created.
    CantCreate,
    /// 74: I/O error while reading or writing.
    IoErr,
    /// 75: temporary failure (lock held by another run, broker timeout); retry later.
    TempFail,
    /// 78: configuration error.
    Config,
}

impl ExitCode {
    /// The numeric code handed to the operating system.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Skipped => 99,
            ExitCode::Usage => 64,
            ExitCode::DataErr => 65,
            ExitCode::NoInput => 66,
            ExitCode::Unavailable => 69,
            ExitCode::Software => 70,
            ExitCode::CantCreate => 73,
            ExitCode::IoErr => 74,
            ExitCode::TempFail => 75,
            ExitCode::Config => 78,
        }
    }

    /// True for every code a scheduler should treat as a failure (not 0, not 99).
    pub fn is_failure(self) -> bool {
        !matches!(self, ExitCode::Ok | ExitCode::Skipped)
    }

    /// Severity used to merge codes: success < skipped < retryable failure < hard failure.
    fn rank(self) -> u8 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Skipped => 1,
            ExitCode::TempFail => 2,
            _ => 3,
        }
    }

    /// The code a run over several dates (or stages) ends with: failures over 99 over 0.
    ///
    /// A hard failure outranks a retryable one (75), so a scheduler does not retry a range in
    /// which one date is broken for good; between two hard failures the earlier one wins.
    pub fn worst(self, other: ExitCode) -> ExitCode {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// The code with this number, if chatetl uses it.
    pub fn from_code(n: i32) -> Option<ExitCode> {
        use ExitCode::*;
        [
            Ok,
            Skipped,
            Usage,
            DataErr,
            NoInput,
            Unavailable,
            Software,
            CantCreate,
            IoErr,
            TempFail,
            Config,
        ]
        .into_iter()
        .find(|c| c.code() == n)
    }

    /// A short lowercase name for summaries (`ok`, `skipped`, `data_error`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ExitCode::Ok => "ok",
            ExitCode::Skipped => "skipped",
            ExitCode::Usage => "usage_error",
            ExitCode::DataErr => "data_error",
            ExitCode::NoInput => "no_input",
            ExitCode::Unavailable => "unavailable",
            ExitCode::Software => "internal_error",
            ExitCode::CantCreate => "cant_create",
            ExitCode::IoErr => "io_error",
            ExitCode::TempFail => "temporary_failure",
            ExitCode::Config => "config_error",
        }
    }
}

impl From<ExitCode> for i32 {
    fn from(c: ExitCode) -> i32 {
        c.code()
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode::*;

    #[test]
    fn codes_match_the_design_table() {
        let table = [
            (Ok, 0),
            (Skipped, 99),
            (Usage, 64),
            (DataErr, 65),
            (NoInput, 66),
            (Unavailable, 69),
            (Software, 70),
            (CantCreate, 73),
            (IoErr, 74),
            (TempFail, 75),
            (Config, 78),
        ];
        for (c, n) in table {
            assert_eq!(c.code(), n, "{c:?}");
            assert_eq!(super::ExitCode::from_code(n), Some(c));
        }
        assert_eq!(super::ExitCode::from_code(1), None);
    }

    #[test]
    fn worst_prefers_failures_then_skipped_then_ok() {
        assert_eq!(Ok.worst(Skipped), Skipped);
        assert_eq!(Skipped.worst(Ok), Skipped);
        assert_eq!(Skipped.worst(DataErr), DataErr);
        assert_eq!(DataErr.worst(Skipped), DataErr);
        assert_eq!(Ok.worst(Ok), Ok);
    }

    #[test]
    fn hard_failure_outranks_retryable_and_first_hard_failure_wins() {
        assert_eq!(TempFail.worst(IoErr), IoErr);
        assert_eq!(IoErr.worst(TempFail), IoErr);
        assert_eq!(DataErr.worst(IoErr), DataErr);
        assert_eq!(Skipped.worst(TempFail), TempFail);
    }

    #[test]
    fn failure_classification() {
        assert!(!Ok.is_failure());
        assert!(!Skipped.is_failure());
        assert!(TempFail.is_failure());
        assert!(Config.is_failure());
    }

    #[test]
    fn serializes_as_number() {
        assert_eq!(serde_json::to_string(&Skipped).unwrap(), "99");
    }
}
