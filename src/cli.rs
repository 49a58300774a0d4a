//! Command-line types (clap derive) and nothing else.
//!
//! These are the raw flags; [`crate::config::Settings`] validates them together with the
//! environment and the config file into what the stages trust.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

/// Turns a chat service's daily logs into a Hive-partitioned Parquet dataset and daily aggregates.
///
/// Every stage works on one logical date (`--date YYYY-MM-DD`), is idempotent, and exits with a
/// code a scheduler can branch on: 0 done, 99 skipped (no input), 64 usage, 65 data, 66 no input,
/// 69 service unavailable, 70 internal, 73 cannot create output, 74 I/O, 75 retry, 78 config.
#[derive(Debug, Parser)]
#[command(name = "chatetl", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The stage to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args, Default, Clone)]
pub struct GlobalArgs {
    /// Root directory of the input logs [default: sample_logs].
    #[arg(long, global = true, value_name = "DIR")]
    pub input_root: Option<PathBuf>,
    /// Root directory of all output [default: out].
    #[arg(long, global = true, value_name = "DIR")]
    pub output_root: Option<PathBuf>,
    /// Configuration file [default: chatetl.toml when present].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// IANA time zone of naive times in the logs, e.g. Asia/Seoul [default: the system zone].
    #[arg(long, global = true, value_name = "ZONE")]
    pub tz: Option<String>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr, and no human summary on stdout.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The stages.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the input files of a date; exit 0 when there is input, 99 when there is none.
    CheckLog(CheckLogArgs),
    /// Remove everything a date produced under the output root (and nothing else).
    CleanOutput(CleanOutputArgs),
    /// Parse a date's logs into staged records and a rejects file.
    Extract(ExtractArgs),
    /// Write a date's staged records as Hive-partitioned Parquet, committed atomically.
    Write(DateArg),
    /// The whole pipeline for a date or a range: check-log, extract, write, aggregate, notify.
    Run(RunArgs),
    /// Top senders, busiest rooms, hourly activity and words of a date or a range, from the
    /// committed Parquet dataset, as Parquet files and summary.json under out/aggregates/
    Aggregate(AggregateArgs),
    /// One self-contained HTML page (inline SVG charts) of a date's or a range's aggregates,
    /// under out/reports/
    Report(AggregateArgs),
    /// Post one message about a date's outcome to the chat room's Kafka topic (in the chat app's
    /// own JSON shape); exit 0 once the broker confirmed it, 69 unreachable or refused, 75 timeout
    Notify(NotifyArgs),
    /// Print the effective configuration and where each value came from.
    Config,
}

/// `--date YYYY-MM-DD`.
#[derive(Debug, Args, Clone)]
pub struct DateArg {
    /// The logical date to process.
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: NaiveDate,
}

/// Arguments of `check-log`.
#[derive(Debug, Args)]
pub struct CheckLogArgs {
    /// The date.
    #[command(flatten)]
    pub date: DateArg,
    /// Exit 66 instead of 99 when the date has no input.
    #[arg(long)]
    pub require: bool,
}

/// Arguments of `clean-output`.
#[derive(Debug, Args)]
pub struct CleanOutputArgs {
    /// The date.
    #[command(flatten)]
    pub date: DateArg,
    /// Print what would be removed and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The date.
    #[command(flatten)]
    pub date: DateArg,
    /// Fail (65) when rejected lines exceed this share of the non-blank lines [default: 0.5].
    #[arg(long, value_name = "RATIO")]
    pub max_reject_ratio: Option<f64>,
    /// Read the date's messages from this Kafka topic instead of log files (messages whose
    /// timestamp falls on the date in --tz; room = the topic)
    #[arg(long, value_name = "TOPIC")]
    pub from_kafka: Option<String>,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Kafka connection flags.
#[derive(Debug, Args, Clone, Default)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port] [env: CHATETL_KAFKA_BROKERS]
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// Seconds to wait for the broker [default: 10] [env: CHATETL_KAFKA_TIMEOUT]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// Arguments of `notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The date the message is about.
    #[command(flatten)]
    pub date: DateArg,
    /// The outcome to announce; `auto` reads it from out/status/date=D.json, which every stage
    /// updates (for a scheduler task that runs whatever happened upstream)
    #[arg(long, value_enum)]
    pub status: crate::stage::notify::NotifyStatus,
    /// Text to send instead of the generated summary
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Print the message that would be sent and send nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Topic of the chat room [env: CHATETL_KAFKA_TOPIC]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The date to process (or use --from/--to).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
    pub date: Option<NaiveDate>,
    /// First date of a range.
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "to")]
    pub from: Option<NaiveDate>,
    /// Last date of a range (inclusive).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "from")]
    pub to: Option<NaiveDate>,
    /// Rebuild dates whose output is already complete for the same input.
    #[arg(long)]
    pub force: bool,
    /// Keep processing the remaining dates after one fails.
    #[arg(long)]
    pub continue_on_error: bool,
    /// Do not post success/failure/skipped notifications to Kafka.
    #[arg(long)]
    pub no_notify: bool,
    /// Topic of the chat room for notifications [env: CHATETL_KAFKA_TOPIC]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Kafka connection.
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Arguments of `aggregate` and `report`.
#[derive(Debug, Args)]
pub struct AggregateArgs {
    /// The logical date to aggregate
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
    pub date: Option<NaiveDate>,
    /// First date of a range (dates without complete output are listed, not aggregated)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "to")]
    pub from: Option<NaiveDate>,
    /// Last date of a range (inclusive)
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date, requires = "from")]
    pub to: Option<NaiveDate>,
    /// Rows of the top lists: on the terminal and in summary.json (aggregate), on the page (report)
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Count system messages (configured system senders) too
    #[arg(long)]
    pub include_system: bool,
}

/// Parses a strict `YYYY-MM-DD` calendar date.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let ok_shape = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !ok_shape {
        return Err(format!("'{s}' is not a date of the form YYYY-MM-DD"));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("'{s}' is not a calendar date"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dates_are_strict() {
        assert!(parse_date("2024-10-24").is_ok());
        assert!(parse_date("2024-02-29").is_ok());
        for bad in [
            "2024-13-45",
            "2023-02-29",
            "2024-1-24",
            "20241024",
            "2024-10-24x",
            "",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
