//! The edge of the program: parse flags, set up logging, dispatch to a stage, print its summary,
//! and turn the outcome into an exit code. This is the only place that decides the exit code.

use std::ffi::OsString;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};

use clap::Parser;
use clap::error::ErrorKind;
use serde_json::json;

use crate::cli::{Cli, Command};
use chrono::NaiveDate;

use crate::config::{KafkaFlags, Settings};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::layout::Layout;
use crate::stage::{self, Outcome};
use crate::status;

/// Runs chatetl with these arguments and returns the exit code. Never panics.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::Ok,
                _ => ExitCode::Usage,
            };
            match e.kind() {
                // Help and version as clap prints them; help for a missing subcommand too, but
                // that is still a usage error.
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::Usage;
                }
                _ => {
                    let error = usage_error(&e.render().to_string());
                    eprintln!("{}", error_line(&error));
                    // `--json` asked for one summary on stdout, also when the rest of the line
                    // could not be parsed (`--json` is global: anywhere after the program name).
                    if args.iter().skip(1).any(|a| a == "--json") {
                        let v = json!({"status": code.name(), "exit_code": code.code(), "error": error});
                        print_stdout(&format!("{v}\n"));
                    }
                }
            }
            return code;
        }
    };
    let json_mode = cli.global.json;
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("chatetl: internal error (a bug, please report it): {msg}{at}");
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(|| dispatch(cli))).unwrap_or_else(|_| {
        Err(Error::Internal(
            "the program panicked; see the line above".into(),
        ))
    });
    match result {
        Ok(outcome) => outcome.exit,
        Err(e) => {
            let code = e.exit_code();
            if !matches!(e, Error::Internal(_)) || !e.to_string().contains("panicked") {
                eprintln!("{}", error_line(&e.to_string()));
            }
            if json_mode {
                let v = json!({"status": code.name(), "exit_code": code.code(), "error": e.to_string()});
                print_stdout(&format!("{v}\n"));
            }
            code
        }
    }
}

/// A usage error as clap renders it (an `error:` line, maybe indented details and a tip, a usage
/// line, a pointer to `--help`) in one line, like every other error.
fn usage_error(rendered: &str) -> String {
    let mut parts = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u);
        } else if !line.is_empty() && !line.starts_with("For more information") {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let mut one = parts.join(" ");
    if let Some(u) = usage {
        one.push_str(&format!(" (usage: {u})"));
    }
    one.push_str("; see --help");
    one
}

/// The one line printed on stderr for an error, naming the Airflow try when there is one.
pub fn error_line(e: &str) -> String {
    match status::airflow_try_number() {
        Some(n) => format!("chatetl: error (airflow try {n}): {e}"),
        None => format!("chatetl: error: {e}"),
    }
}

fn print_stdout(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`chatetl ... | head`) is not an error worth a panic.
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn init_logging(settings: &Settings) {
    let level = match settings.verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHATETL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("chatetl={level}")));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn aggregate_options(a: crate::cli::AggregateArgs) -> Result<stage::aggregate::AggregateOptions> {
    let (from, to) = match (a.date, a.from, a.to) {
        (Some(d), _, _) => (d, d),
        (None, Some(f), Some(t)) => (f, t),
        _ => return Err(Error::Usage("give --date or both --from and --to".into())),
    };
    Ok(stage::aggregate::AggregateOptions {
        from,
        to,
        top: a.top,
        include_system: a.include_system,
    })
}

fn kafka_flags(k: &crate::cli::KafkaArgs, topic: Option<String>) -> KafkaFlags {
    KafkaFlags {
        brokers: k.brokers.clone(),
        topic,
        timeout_s: k.timeout,
    }
}

/// Runs a one-date stage and records how it started and ended in the date's status file
/// (`out/status/date=D.json`, read by `notify --status auto`). Nothing is recorded when the output
/// root is refused, or when the stage was turned away by another process's lock on the date.
fn recorded(
    settings: &Settings,
    date: NaiveDate,
    stage: &str,
    f: impl FnOnce() -> Result<Outcome>,
) -> Result<Outcome> {
    let layout = Layout::new(&settings.output_root);
    if stage::clean_output::check_output_root(settings).is_err() {
        return f();
    }
    let Some(started) = status::begin_unless_locked(&layout, date, stage) else {
        return f();
    };
    let result = f();
    match &result {
        Ok(o) => status::finish(&layout, date, stage, started, o.exit, None),
        Err(Error::Locked(_)) => {}
        Err(e) => status::finish(
            &layout,
            date,
            stage,
            started,
            e.exit_code(),
            Some(e.to_string()),
        ),
    }
    result
}

fn dispatch(cli: Cli) -> Result<Outcome> {
    if std::env::var_os("CHATETL_DEBUG_PANIC").is_some() {
        panic!("CHATETL_DEBUG_PANIC is set");
    }
    let settings = Settings::load(&cli.global)?;
    init_logging(&settings);
    crate::progress::init(settings.verbosity >= 0 && !settings.json);
    // Under Airflow every log line names the task's try number: `airflow_try{n=2}: ...`.
    let _airflow =
        status::airflow_try_number().map(|n| tracing::error_span!("airflow_try", n = %n).entered());
    let s = &settings;
    let outcome = match cli.command {
        Command::CheckLog(a) => recorded(s, a.date.date, "check-log", || {
            stage::check_log::run(s, a.date.date, a.require)
        })?,
        Command::CleanOutput(a) => stage::clean_output::run(s, a.date.date, a.dry_run)?,
        Command::Extract(a) => {
            let settings = settings
                .clone()
                .with_max_reject_ratio(a.max_reject_ratio)?
                .with_kafka_flags(&kafka_flags(&a.kafka, None))?;
            recorded(&settings, a.date.date, "extract", || match &a.from_kafka {
                Some(topic) => stage::extract::run_kafka(&settings, a.date.date, topic),
                None => stage::extract::run(&settings, a.date.date),
            })?
        }
        Command::Write(a) => recorded(s, a.date, "write", || stage::write::run(s, a.date))?,
        Command::Notify(a) => {
            let settings = settings
                .clone()
                .with_kafka_flags(&kafka_flags(&a.kafka, a.topic))?;
            let opts = stage::notify::NotifyOptions {
                date: a.date.date,
                status: a.status,
                message: a.message,
                dry_run: a.dry_run,
            };
            stage::notify::run(&settings, &opts)?
        }
        Command::Run(a) => {
            let (from, to) = match (a.date, a.from, a.to) {
                (Some(d), _, _) => (d, d),
                (None, Some(f), Some(t)) => (f, t),
                _ => return Err(Error::Usage("give --date or both --from and --to".into())),
            };
            let opts = crate::pipeline::RunOptions {
                from,
                to,
                force: a.force,
                continue_on_error: a.continue_on_error,
                notify: !a.no_notify,
            };
            let settings = settings
                .clone()
                .with_kafka_flags(&kafka_flags(&a.kafka, a.topic))?;
            crate::pipeline::run(&settings, &opts)?
        }
        Command::Aggregate(a) => {
            let opts = aggregate_options(a)?;
            if opts.from == opts.to {
                recorded(s, opts.from, "aggregate", || {
                    stage::aggregate::run(s, &opts)
                })?
            } else {
                stage::aggregate::run(s, &opts)?
            }
        }
        Command::Report(a) => stage::report::run(&settings, &aggregate_options(a)?)?,
        Command::Config => Outcome {
            exit: ExitCode::Ok,
            human: settings.describe(),
            json: settings.to_json(),
        },
    };
    if settings.json {
        print_stdout(&format!("{}\n", outcome.json));
    } else if settings.verbosity >= 0 {
        print_stdout(&outcome.human);
    }
    Ok(outcome)
}
