//! `extract`: parse a date's logs into staged records and a rejects file.
//!
//! Each file's format is detected from its content (no flag): a pretty-printed JSON array, CSV
//! with a header, or line-oriented logs. Line-oriented logs cover Python `str(dict)` lines, JSON
//! lines and records after a prefix (`offset=N, value={...}`, Airflow task-log lines): on each
//! line a record starts at the first `{` followed by optional spaces and a quote, and the safe
//! parser in [`crate::record::literal`] reads exactly that record.
//!
//! Every input line is counted as exactly one of: part of a record, rejected, noise, blank. Each
//! rejected line is written to `rejects/date=D/rejects.jsonl` with its file, line, reason and
//! raw text. Records are staged as an Arrow IPC file under `_staging/date=D/` together with
//! `extract.json` (inputs with sha256, counts), which `write` turns into Parquet.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::Hash;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_ipc::writer::FileWriter;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::input::InputFile;
use crate::layout::{Layout, WritebackFile, fsync_path, swap_into_place};
use crate::lock::DateLock;
use crate::record::clean::{clean_bytes, escape_raw};
use crate::record::literal::{self, Drops, Entries, FlatScratch, Limits, Value, ValueRef};
use crate::record::normalize::{Normalizer, Origin};
use crate::record::schema::{BatchBuilder, C_SENDER, STAGED_NAMES_KEY, StagedNames, staged_schema};
use crate::record::{Kind, Record, RecordRef};
use crate::stage::Outcome;
use crate::stage::dedupe::{DedupeIndex, Key};

/// File name of the staged records inside the staging directory.
pub const STAGED_RECORDS: &str = "records.arrow";
/// File name of the extract summary inside the staging directory.
pub const STAGED_SUMMARY: &str = "extract.json";
/// The bitmap of staged rows that are exact duplicates, in the staging directory.
pub const DROPPED_ROWS: &str = "dropped-rows.bitmap";
/// File name of the rejects file inside `rejects/date=D/`.
pub const REJECTS_FILE: &str = "rejects.jsonl";

/// Bytes of a rejected line kept in the rejects file when the line is over the limit.
const RAW_PREFIX_OF_LONG_LINE: usize = 1024;
/// Rows per staged Arrow batch.
const BATCH_ROWS: usize = 64 * 1024;
/// Bytes of lines handed to the parser at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// How a file's content was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One record (or noise) per line: Python repr, JSON lines, prefixed lines.
    Lines,
    /// A pretty-printed JSON array of records.
    JsonArray,
    /// CSV with a header row.
    Csv,
    /// No content.
    Empty,
}

/// Counts for one input file. `lines == record_lines + rejected + noise + blank` always.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileStats {
    /// Path relative to the input root.
    pub file: String,
    /// The file's room.
    pub room: String,
    /// Detected format.
    pub format: Option<Format>,
    /// File size in bytes as stored (compressed for `.gz`).
    pub size: u64,
    /// SHA-256 of the file as stored.
    pub sha256: String,
    /// Lines read (after decompression).
    pub lines: u64,
    /// Lines that are part of a record.
    pub record_lines: u64,
    /// Lines rejected (each one is in the rejects file).
    pub rejected: u64,
    /// Lines with no record.
    pub noise: u64,
    /// Empty or whitespace-only lines.
    pub blank: u64,
    /// Records parsed (before dropping duplicates).
    pub records: u64,
    /// Exact duplicates of an earlier Kafka record (same room, offset and content), dropped.
    pub duplicates: u64,
    /// Records with the room and offset of an earlier record but other content, kept.
    pub conflicts: u64,
    /// Records from system senders.
    pub system: u64,
    /// Records without a usable time.
    pub ts_missing: u64,
    /// Characters dropped from strings, by kind.
    pub dropped: DropCounts,
    /// JSON arrays: elements read, and those rejected. The reject ratio of an array file counts
    /// elements, not lines, so that one bad element in a one-line array is not 100% rejected.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub elements: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_elements: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Serializable mirror of [`Drops`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropCounts {
    /// Lone surrogates (escaped or encoded).
    pub lone_surrogates: u64,
    /// Bytes that are not UTF-8.
    pub invalid_bytes: u64,
    /// Control characters other than `\n` and `\t`.
    pub control_chars: u64,
}

impl DropCounts {
    fn add(&mut self, d: &Drops) {
        self.lone_surrogates += d.lone_surrogates;
        self.invalid_bytes += d.invalid_bytes;
        self.control_chars += d.control_chars;
    }

    fn merge(&mut self, o: &DropCounts) {
        self.lone_surrogates += o.lone_surrogates;
        self.invalid_bytes += o.invalid_bytes;
        self.control_chars += o.control_chars;
    }
}

/// Totals over all files of the date.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Lines read.
    pub lines: u64,
    /// Lines that are part of a record.
    pub record_lines: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Lines with no record.
    pub noise: u64,
    /// Blank lines.
    pub blank: u64,
    /// Records parsed.
    pub records: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Offset conflicts kept.
    pub conflicts: u64,
    /// Records staged for output (records minus duplicates: rows `write` writes).
    pub staged: u64,
    /// System records staged.
    pub system: u64,
    /// Records without a usable time.
    pub ts_missing: u64,
    /// Distinct senders staged (null counts as one).
    pub senders: u64,
    /// Dropped characters.
    pub dropped: DropCounts,
}

/// The settings besides the zone and the input that decide which records `extract` stages and
/// what they hold: kept with the staged records and in the date's manifest, so that `run` redoes
/// a date whose records they would change (a new system sender, a field alias, a line limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSettings {
    /// `system_senders`, sorted.
    pub system_senders: Vec<String>,
    /// `[fields]`.
    pub fields: crate::config::FieldAliases,
    /// `max_line_bytes`.
    pub max_line_bytes: usize,
}

impl RecordSettings {
    /// The current ones.
    pub fn of(settings: &Settings) -> RecordSettings {
        let mut system_senders = settings.system_senders.clone();
        system_senders.sort();
        system_senders.dedup();
        RecordSettings {
            system_senders,
            fields: settings.fields.clone(),
            max_line_bytes: settings.max_line_bytes,
        }
    }
}

/// What `extract` staged for a date; saved as `extract.json` and read by `write`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtractSummary {
    /// Tool version that staged it.
    pub version: String,
    /// The settings besides the zone that decided the staged records (absent in staging from
    /// before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_settings: Option<RecordSettings>,
    /// The logical date.
    pub date: NaiveDate,
    /// Zone used for naive times.
    pub tz: String,
    /// Per-file counts.
    pub files: Vec<FileStats>,
    /// Totals.
    pub totals: Totals,
    /// Rows per sender (null sender under the empty key is not possible in JSON maps, so
    /// it is listed under `__HIVE_DEFAULT_PARTITION__`).
    pub per_sender: std::collections::BTreeMap<String, u64>,
    /// A bitmap in the staging directory of the staged rows `write` leaves out (exact
    /// duplicates), one bit per row; absent when none is left out. (Staging written before
    /// this field existed has none: its duplicates were never staged.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_rows_file: Option<String>,
    /// Paths that matched the date but were not regular files.
    pub skipped_paths: Vec<crate::input::SkippedPath>,
    /// Seconds spent.
    pub duration_s: f64,
}

/// A rejected line.
#[derive(Debug, Serialize)]
struct RejectRow<'a> {
    file: &'a str,
    line: u64,
    reason: &'a str,
    detail: String,
    raw: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_bytes: Option<u64>,
}

/// Runs `extract` under the date's lock.
pub fn run(settings: &Settings, date: NaiveDate) -> Result<Outcome> {
    crate::stage::clean_output::check_output_root(settings)?;
    let layout = Layout::new(&settings.output_root);
    let _lock = DateLock::acquire(&layout, date, "chatetl extract")?;
    let summary = extract(settings, &layout, date)?;
    Ok(outcome(settings, &layout, summary))
}

/// Human and JSON summaries of an extract.
pub fn outcome(settings: &Settings, layout: &Layout, s: Option<ExtractSummary>) -> Outcome {
    let Some(s) = s else {
        return Outcome {
            exit: ExitCode::Skipped,
            human: "no input for this date; nothing staged\n".into(),
            json: json!({"stage": "extract", "status": "skipped", "exit_code": 99}),
        };
    };
    let mut human = format!(
        "{:<44} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6}\n",
        "file", "lines", "records", "rejected", "noise", "blank", "dups"
    );
    for f in &s.files {
        human.push_str(&format!(
            "{:<44} {:>7} {:>8} {:>8} {:>6} {:>6} {:>6}\n",
            f.file, f.lines, f.records, f.rejected, f.noise, f.blank, f.duplicates
        ));
    }
    let t = &s.totals;
    human.push_str(&format!(
        "{}: staged {} records from {} senders ({} system); {} of {} lines rejected; dropped {} lone surrogates, {} invalid bytes, {} control characters\n",
        s.date,
        t.staged,
        t.senders,
        t.system,
        t.rejected,
        t.lines,
        t.dropped.lone_surrogates,
        t.dropped.invalid_bytes,
        t.dropped.control_chars
    ));
    human.push_str(&format!(
        "rejects: {}\n",
        layout.rejects_dir(s.date).join(REJECTS_FILE).display()
    ));
    let _ = settings;
    let json = json!({
        "stage": "extract",
        "date": s.date.to_string(),
        "status": "ok",
        "exit_code": 0,
        "summary": s,
        "rejects_file": layout.rejects_dir(s.date).join(REJECTS_FILE),
    });
    Outcome {
        exit: ExitCode::Ok,
        human,
        json,
    }
}

/// Extracts `date`; the caller holds the date's lock. `Ok(None)` means no input (skipped).
pub fn extract(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
) -> Result<Option<ExtractSummary>> {
    discarding_stale(layout, date, extract_files(settings, layout, date))
}

fn extract_files(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
) -> Result<Option<ExtractSummary>> {
    let started = Instant::now();
    let found = crate::stage::check_log::discover(settings, date)?;
    if !found.has_input() {
        return Ok(None);
    }
    let whole_file_cap = ((settings.memory_budget_mb as usize) << 20) / 2;
    let total: u64 = found.files.iter().map(|f| f.size).sum();
    let summary = stage_and_commit(settings, layout, date, started, found.skipped, |sink| {
        sink.progress = crate::progress::bytes(total, "extract");
        let mut stats_all = Vec::new();
        for f in &found.files {
            sink.file_no = u32::try_from(stats_all.len())
                .map_err(|_| Error::Data("more than 2^32 input files in one day".into()))?;
            stats_all.push(extract_file(sink, f, whole_file_cap)?);
        }
        sink.progress.finish_and_clear();
        Ok(stats_all)
    })?
    .ok_or_else(|| Error::Internal("input files gave no file statistics".into()))?;
    tracing::info!(
        "Staged {} records of {date} from {} files.",
        summary.totals.staged,
        summary.files.len()
    );
    Ok(Some(summary))
}

/// Runs `extract --from-kafka TOPIC` under the date's lock.
pub fn run_kafka(settings: &Settings, date: NaiveDate, topic: &str) -> Result<Outcome> {
    crate::stage::clean_output::check_output_root(settings)?;
    let layout = Layout::new(&settings.output_root);
    let _lock = DateLock::acquire(&layout, date, "chatetl extract --from-kafka")?;
    let summary = extract_kafka(settings, &layout, date, topic)?;
    Ok(outcome(settings, &layout, summary))
}

/// Extracts the messages of `topic` whose timestamps fall on `date` in the configured zone; the
/// caller holds the date's lock. Each message is one "line": `source_file` is
/// `kafka:TOPIC/PARTITION`, `source_line` and `kafka_offset` are its offset, the room is the
/// topic unless the record names one. `Ok(None)` means no message on that day (skipped).
pub fn extract_kafka(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    topic: &str,
) -> Result<Option<ExtractSummary>> {
    discarding_stale(layout, date, extract_topic(settings, layout, date, topic))
}

fn extract_topic(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    topic: &str,
) -> Result<Option<ExtractSummary>> {
    let started = Instant::now();
    let (start_ms, end_ms) = crate::kafka::day_window_ms(date, settings.tz);
    let summary = stage_and_commit(settings, layout, date, started, Vec::new(), |sink| {
        sink.dedupe = false;
        // One FileStats (and hash) per partition, in the order the partitions are read.
        let mut parts: Vec<(FileStats, Sha256)> = Vec::new();
        let mut source = None::<InputFile>;
        let r = crate::kafka::read_day(&settings.kafka, topic, start_ms, end_ms, &mut |m| {
            let rel = format!("kafka:{topic}/{}", m.partition);
            if source.as_ref().is_none_or(|s| s.rel != rel) {
                let f = InputFile {
                    path: PathBuf::new(),
                    rel,
                    room: topic.to_string(),
                    size: 0,
                    gzip: false,
                };
                sink.file_no = u32::try_from(parts.len())
                    .map_err(|_| Error::Data("more than 2^32 partitions in one day".into()))?;
                parts.push((
                    FileStats {
                        file: f.rel.clone(),
                        room: f.room.clone(),
                        format: Some(Format::Lines),
                        ..Default::default()
                    },
                    Sha256::new(),
                ));
                source = Some(f);
            }
            let (stats, hasher) = parts.last_mut().expect("a partition");
            kafka_message(sink, source.as_ref().expect("a source"), stats, hasher, &m)
        })?;
        tracing::info!(
            "{topic}: {} messages on {date} ({} read outside the day's window).",
            r.in_window,
            r.outside_window
        );
        Ok(parts
            .into_iter()
            .map(|(mut stats, hasher)| {
                stats.sha256 = hex::encode(hasher.finalize());
                stats
            })
            .collect())
    })?;
    if let Some(s) = &summary {
        tracing::info!(
            "Staged {} records of {date} from Kafka topic {topic}.",
            s.totals.staged
        );
    }
    Ok(summary)
}

/// Stages one Kafka message as one line of its partition.
fn kafka_message(
    sink: &mut Sink,
    source: &InputFile,
    stats: &mut FileStats,
    hasher: &mut Sha256,
    m: &crate::kafka::DayMessage,
) -> Result<()> {
    let offset = m.offset.max(0) as u64;
    let payload = m.payload.as_deref().unwrap_or_default();
    hasher.update(m.offset.to_le_bytes());
    hasher.update((payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    stats.size += payload.len() as u64;
    if payload.len() > sink.max_line {
        let out = LineOut::TooLong(payload.len() as u64);
        return account(sink, stats, offset, &payload[..sink.max_line], out);
    }
    // Every message should hold a record: one that does not is rejected, not noise. The record's
    // offset is the message's.
    let mut record = None;
    let parsed = classify_line(
        &sink.normalizer,
        &sink.limits,
        payload,
        None,
        offset,
        source,
        &mut sink.scratch,
        |r| record = Some(r.to_owned_record()),
    );
    let out = match parsed {
        LineOut::Noise => {
            LineOut::Reject("not_a_record", "the message holds no {...} record".into())
        }
        other => other,
    };
    account(sink, stats, offset, payload, out)?;
    // Set exactly when the message held a record.
    match record {
        Some(mut record) => {
            record.kafka_offset = Some(m.offset);
            sink.stage(stats, record)
        }
        None => Ok(()),
    }
}

/// Stages a date from a source: builds staging and rejects in temporary directories with
/// `fill`, then commits both (or, over the reject threshold, only the rejects). A `fill` that
/// found no input at all (no file stats) commits nothing and gives `None`.
fn stage_and_commit(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    started: Instant,
    skipped_paths: Vec<crate::input::SkippedPath>,
    fill: impl FnOnce(&mut Sink) -> Result<Vec<FileStats>>,
) -> Result<Option<ExtractSummary>> {
    for leftover in layout.tmp_leftovers(date)? {
        crate::layout::remove_path(&leftover)
            .map_err(|e| Error::io("cannot remove", &leftover, e))?;
    }
    let staging_tmp = layout.new_tmp_dir("staging", date)?;
    let rejects_tmp = layout.new_tmp_dir("rejects", date)?;
    let result = extract_into(settings, date, &staging_tmp, &rejects_tmp, fill);
    let remove_tmps = || {
        let _ = crate::layout::remove_path(&staging_tmp);
        let _ = crate::layout::remove_path(&rejects_tmp);
    };
    let (mut summary, reject_ratio) = match result {
        Ok(v) if !v.0.files.is_empty() => v,
        Ok(_) => {
            remove_tmps();
            return Ok(None);
        }
        Err(e) => {
            remove_tmps();
            return Err(e);
        }
    };
    summary.skipped_paths = skipped_paths;
    summary.duration_s = started.elapsed().as_secs_f64();
    let too_many = reject_ratio > settings.max_reject_ratio;
    swap_into_place(&rejects_tmp, &layout.rejects_dir(date)).inspect_err(|_| remove_tmps())?;
    if too_many {
        let _ = crate::layout::remove_path(&staging_tmp);
        let staged = layout.staging_dir(date);
        crate::layout::remove_path(&staged).map_err(|e| Error::io("cannot remove", &staged, e))?;
        return Err(Error::Data(format!(
            "{date}: {} of {} non-blank lines rejected ({:.0}% > max_reject_ratio {:.0}%); nothing staged; see {}",
            summary.totals.rejected,
            summary.totals.lines - summary.totals.blank,
            reject_ratio * 100.0,
            settings.max_reject_ratio * 100.0,
            layout.rejects_dir(date).join(REJECTS_FILE).display()
        )));
    }
    let summary_path = staging_tmp.join(STAGED_SUMMARY);
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Internal(e.to_string()))?;
    write_synced(&summary_path, &text)
        .and_then(|()| {
            fsync_path(&staging_tmp).map_err(|e| Error::io("cannot sync", &staging_tmp, e))
        })
        .and_then(|()| swap_into_place(&staging_tmp, &layout.staging_dir(date)))
        .inspect_err(|_| remove_tmps())?;
    Ok(Some(summary))
}

/// `extracted`, once what an earlier extract staged for `date` is gone when this one staged
/// nothing or failed (at any step): those records no longer match the input, and `write` would
/// commit them; with them gone it exits 66 (nothing staged). The caller holds the date's lock.
fn discarding_stale(
    layout: &Layout,
    date: NaiveDate,
    extracted: Result<Option<ExtractSummary>>,
) -> Result<Option<ExtractSummary>> {
    match &extracted {
        Ok(Some(_)) => {}
        Ok(None) => discard_staged(layout, date, "no input"),
        Err(_) => discard_staged(layout, date, "extract failed"),
    }
    extracted
}

/// Removes what was staged for `date` (see [`discarding_stale`]).
pub fn discard_staged(layout: &Layout, date: NaiveDate, outcome: &str) {
    let staged = layout.staging_dir(date);
    if let Err(e) = crate::layout::remove_path(&staged) {
        tracing::warn!(
            "{date}: {outcome}, and the records staged earlier could not be removed: {}: {e}",
            staged.display()
        );
    }
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io("cannot create", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write", path, e))
}

/// Everything shared while extracting one date.
struct Sink {
    normalizer: Normalizer,
    limits: Limits,
    max_line: usize,
    builder: BatchBuilder,
    writer: FileWriter<BufWriter<WritebackFile>>,
    staged_path: PathBuf,
    rejects: BufWriter<File>,
    rejects_path: PathBuf,
    /// Keys of the staged records with a Kafka offset, resolved into duplicates at the end.
    dedupe_index: DedupeIndex,
    /// Sender → index into `sender_rows`.
    senders: HashMap<Option<String>, u32, foldhash::fast::RandomState>,
    /// Rows staged per sender index, duplicates included.
    sender_rows: Vec<u64>,
    /// Rows in the staged records file so far (duplicates included, left out by `write`): the
    /// next record's row number.
    rows: u64,
    /// Index of the file being read (0 for the first).
    file_no: u32,
    /// Input bytes read, on a terminal.
    progress: indicatif::ProgressBar,
    /// Drop exact duplicates by (room, offset): files, where two consumers may have appended the
    /// same Kafka record; not Kafka itself, where partitions share rooms and offsets.
    dedupe: bool,
    budget_bytes: usize,
    /// Parse buffers of the records parsed on this thread (Kafka messages).
    scratch: FlatScratch,
}

impl Sink {
    fn reject(
        &mut self,
        stats: &mut FileStats,
        line: u64,
        reason: &str,
        detail: String,
        raw: &[u8],
        raw_len: Option<u64>,
    ) -> Result<()> {
        stats.rejected += 1;
        let row = RejectRow {
            file: &stats.file,
            line,
            reason,
            detail,
            raw: escape_raw(raw),
            raw_bytes: raw_len,
        };
        let mut text = serde_json::to_vec(&row).map_err(|e| Error::Internal(e.to_string()))?;
        text.push(b'\n');
        self.rejects
            .write_all(&text)
            .map_err(|e| Error::io("cannot write", &self.rejects_path, e))
    }

    /// Normalises and stages one parsed record (or rejects its lines).
    fn record(
        &mut self,
        stats: &mut FileStats,
        entries: Vec<(String, Value)>,
        origin: Origin<'_>,
        raw: &[u8],
    ) -> Result<bool> {
        match self.normalizer.normalize(entries, &origin) {
            Ok(r) => {
                self.stage(stats, r)?;
                Ok(true)
            }
            Err(rej) => {
                self.reject(stats, origin.line, rej.code(), rej.text().into(), raw, None)?;
                Ok(false)
            }
        }
    }

    fn stage(&mut self, stats: &mut FileStats, r: Record) -> Result<()> {
        let sender = self.sender_index(&r.sender_id)?;
        let r = r.as_ref();
        self.stage_row(stats, &row_meta(&r, sender))?;
        let staged_sender = r.sender_id.is_some().then_some(sender);
        self.builder.push_ref(&r, staged_sender, self.file_no);
        if self.builder.len() >= BATCH_ROWS || self.builder.bytes() >= self.budget_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// The index of a sender in `sender_rows`, a new one for a sender not met before.
    fn sender_index(&mut self, sender: &Option<String>) -> Result<u32> {
        if let Some(&i) = self.senders.get(sender) {
            return Ok(i);
        }
        let i = u32::try_from(self.sender_rows.len())
            .map_err(|_| Error::Data("more than 2^32 senders in one day".into()))?;
        self.senders.insert(sender.clone(), i);
        self.sender_rows.push(0);
        Ok(i)
    }

    /// Counts the next staged row (`meta.sender` being its index in `sender_rows`) and notes its
    /// duplicate-check key; the row itself is staged by the caller, in the same order.
    fn stage_row(&mut self, stats: &mut FileStats, meta: &RowMeta) -> Result<()> {
        stats.records += 1;
        stats.system += u64::from(meta.system);
        stats.ts_missing += u64::from(meta.no_ts);
        self.sender_rows[meta.sender as usize] += 1;
        if let Some((room, off, content)) = meta.key.filter(|_| self.dedupe) {
            let key = Key::new(room, off, content, self.rows, self.file_no, meta.sender)
                .with_flags(meta.system, meta.no_ts);
            self.dedupe_index.push(key)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Stages a chunk parsed by a line parser: its rows' counts, rejects and batch.
    fn stage_chunk(&mut self, stats: &mut FileStats, chunk: &Chunk, parsed: Parsed) -> Result<()> {
        let senders = parsed
            .senders
            .iter()
            .map(|s| self.sender_index(s))
            .collect::<Result<Vec<u32>>>()?;
        // Rows staged one by one go first, so that row numbers follow the file.
        self.flush()?;
        let mut rows = parsed.rows.iter();
        for (i, (l, out)) in chunk.lines.iter().zip(parsed.outs).enumerate() {
            let no = chunk.first_line_no + i as u64 + 1;
            let is_record = matches!(out, LineOut::Record(_));
            account(self, stats, no, &chunk.data[l.start..l.end], out)?;
            if is_record {
                let meta = rows
                    .next()
                    .ok_or_else(|| Error::Internal("a parsed row is missing".into()))?;
                let sender = senders[meta.sender as usize];
                self.stage_row(stats, &RowMeta { sender, ..*meta })?;
            }
        }
        for batch in &parsed.batches {
            let batch = with_date_senders(batch, &senders)?;
            self.writer
                .write(&batch)
                .map_err(|e| arrow_err("cannot write", &self.staged_path, e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish();
        self.writer
            .write(&batch)
            .map_err(|e| arrow_err("cannot write", &self.staged_path, e))
    }
}

/// A parsed chunk's batch with each sender's id for the date (`ids[i]` for the chunk's id `i`),
/// where the parser gave the chunk's senders ids of its own.
fn with_date_senders(batch: &RecordBatch, ids: &[u32]) -> Result<RecordBatch> {
    let chunk_ids = batch.column(C_SENDER).as_primitive::<UInt32Type>();
    let mut unknown = false;
    let date_ids: Vec<u32> = chunk_ids
        .iter()
        .map(|id| match id.map(|i| ids.get(i as usize)) {
            Some(Some(&id)) => id,
            Some(None) => {
                unknown = true;
                0
            }
            None => 0,
        })
        .collect();
    if unknown {
        return Err(Error::Internal("a parsed row's sender has no id".into()));
    }
    let mut cols = batch.columns().to_vec();
    cols[C_SENDER] = Arc::new(UInt32Array::new(
        date_ids.into(),
        chunk_ids.nulls().cloned(),
    ));
    RecordBatch::try_new(batch.schema(), cols).map_err(|e| Error::Internal(e.to_string()))
}

fn arrow_err(what: &'static str, path: &Path, e: arrow_schema::ArrowError) -> Error {
    match e {
        arrow_schema::ArrowError::IoError(_, io) => Error::io(what, path, io),
        other => Error::io(what, path, io::Error::other(other.to_string())),
    }
}

/// A fixed-seed 64-bit hash (foldhash: SipHash was a tenth of extract's time).
fn hash_of<T: Hash>(t: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6368_6174_6574_6c00).hash_one(t)
}

/// What the sink needs of a staged row besides the row itself.
#[derive(Debug, Clone, Copy)]
struct RowMeta {
    /// The sender's index (per chunk in a line parser, per date in the sink).
    sender: u32,
    system: bool,
    no_ts: bool,
    /// (room hash, offset, content hash) of a record with a Kafka offset.
    key: Option<(u64, i64, u64)>,
}

fn row_meta(r: &RecordRef<'_>, sender: u32) -> RowMeta {
    RowMeta {
        sender,
        system: r.kind == Kind::System,
        no_ts: r.ts.is_none(),
        key: r.kafka_offset.map(|off| {
            let content = hash_of(&(&r.sender_id, r.message, r.ts, &r.extra));
            (hash_of(&r.room), off, content)
        }),
    }
}

/// Extracts every file into the temporary staging and rejects directories.
fn extract_into(
    settings: &Settings,
    date: NaiveDate,
    staging: &Path,
    rejects: &Path,
    fill: impl FnOnce(&mut Sink) -> Result<Vec<FileStats>>,
) -> Result<(ExtractSummary, f64)> {
    let staged_path = staging.join(STAGED_RECORDS);
    let file =
        File::create(&staged_path).map_err(|e| Error::io("cannot create", &staged_path, e))?;
    let writer = FileWriter::try_new(BufWriter::new(WritebackFile::new(file)), &staged_schema())
        .map_err(|e| arrow_err("cannot write", &staged_path, e))?;
    let rejects_path = rejects.join(REJECTS_FILE);
    let budget = (settings.memory_budget_mb as usize) << 20;
    let rf =
        File::create(&rejects_path).map_err(|e| Error::io("cannot create", &rejects_path, e))?;
    let mut sink = Sink {
        normalizer: Normalizer::new(settings),
        limits: Limits::default(),
        max_line: settings.max_line_bytes,
        builder: BatchBuilder::new(),
        writer,
        staged_path: staged_path.clone(),
        rejects: BufWriter::new(rf),
        rejects_path: rejects_path.clone(),
        dedupe_index: DedupeIndex::new(staging.join(".dedupe"), budget / 4),
        senders: HashMap::default(),
        sender_rows: Vec::new(),
        rows: 0,
        file_no: 0,
        dedupe: true,
        progress: indicatif::ProgressBar::hidden(),
        budget_bytes: budget >> 3,
        scratch: FlatScratch::default(),
    };
    let mut stats_all = fill(&mut sink)?;
    // Staged rows leave memory before the duplicate index is merged.
    sink.flush()?;
    // The names behind the staged ids, in the file's footer: a sender's id is its index in
    // `sender_rows`, a source file's the index of its statistics.
    let mut names = StagedNames {
        senders: vec![None; sink.sender_rows.len()],
        files: stats_all.iter().map(|s| s.file.clone()).collect(),
    };
    for (name, &i) in &sink.senders {
        names.senders[i as usize] = name.clone();
    }
    let names = serde_json::to_string(&names).map_err(|e| Error::Internal(e.to_string()))?;
    // The footer is a flatbuffer, which cannot pass 2 GiB.
    if names.len() > 1 << 30 {
        return Err(Error::Data(format!(
            "{date}: the names of the senders and files take {} MiB, more than a staged file holds",
            names.len() >> 20
        )));
    }
    let mut writer = sink.writer;
    writer.write_metadata(STAGED_NAMES_KEY, names);
    // The staged file is complete: it is finished and synced to disk while the duplicates are
    // resolved (the sync was half a second of waiting at 1 GB).
    let index = std::mem::replace(&mut sink.dedupe_index, DedupeIndex::new(PathBuf::new(), 0));
    let (rows, files, senders) = (sink.rows, stats_all.len(), sink.sender_rows.len());
    let (res, staged) = std::thread::scope(|scope| {
        let staged = scope.spawn(|| finish_staged(writer, &staged_path));
        let res = index.resolve(rows, files, senders);
        let staged = staged
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the staged file's writer panicked".into())));
        (res, staged)
    });
    let res = res?;
    staged?;
    for (stats, t) in stats_all.iter_mut().zip(&res.files) {
        stats.duplicates = t.duplicates;
        stats.conflicts = t.conflicts;
        stats.system -= t.dropped_system;
        stats.ts_missing -= t.dropped_no_ts;
    }
    let dropped_rows_file = if res.dropped_rows > 0 {
        let path = staging.join(DROPPED_ROWS);
        crate::stage::dedupe::write_bitmap(&path, &res.dropped)
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Some(DROPPED_ROWS.to_string())
    } else {
        None
    };
    for stats in &stats_all {
        debug_assert_eq!(
            stats.lines,
            stats.record_lines + stats.rejected + stats.noise + stats.blank
        );
    }
    sink.rejects
        .flush()
        .map_err(|e| Error::io("cannot write", &rejects_path, e))?;
    sink.rejects
        .get_ref()
        .sync_all()
        .map_err(|e| Error::io("cannot sync", &rejects_path, e))?;

    let mut t = Totals::default();
    for s in &stats_all {
        t.lines += s.lines;
        t.record_lines += s.record_lines;
        t.rejected += s.rejected;
        t.noise += s.noise;
        t.blank += s.blank;
        t.records += s.records;
        t.duplicates += s.duplicates;
        t.conflicts += s.conflicts;
        t.system += s.system;
        t.ts_missing += s.ts_missing;
        t.dropped.merge(&s.dropped);
    }
    t.staged = t.records - t.duplicates;
    t.senders = sink.senders.len() as u64;
    let per_sender = sink
        .senders
        .iter()
        .map(|(k, &i)| {
            (
                k.clone()
                    .unwrap_or_else(|| crate::layout::HIVE_NULL.to_string()),
                sink.sender_rows[i as usize] - res.senders[i as usize],
            )
        })
        .collect();
    // Lines for line formats, elements for JSON arrays (whose elements may share lines).
    let (mut units, mut rejected_units) = (0u64, 0u64);
    for s in &stats_all {
        if s.elements > 0 {
            units += s.elements;
            rejected_units += s.rejected_elements;
        } else {
            units += s.lines - s.blank;
            rejected_units += s.rejected;
        }
    }
    let ratio = if units == 0 {
        0.0
    } else {
        rejected_units as f64 / units as f64
    };
    let summary = ExtractSummary {
        version: env!("CARGO_PKG_VERSION").to_string(),
        record_settings: Some(RecordSettings::of(settings)),
        date,
        tz: settings.tz.name().to_string(),
        files: stats_all,
        totals: t,
        per_sender,
        dropped_rows_file,
        skipped_paths: Vec::new(),
        duration_s: 0.0,
    };
    Ok((summary, ratio))
}

/// Ends the staged records file and syncs it to disk.
fn finish_staged(mut writer: FileWriter<BufWriter<WritebackFile>>, path: &Path) -> Result<()> {
    writer
        .finish()
        .map_err(|e| arrow_err("cannot write", path, e))?;
    let mut inner = writer
        .into_inner()
        .map_err(|e| arrow_err("cannot write", path, e))?;
    inner
        .flush()
        .map_err(|e| Error::io("cannot write", path, e))?;
    inner
        .get_ref()
        .file()
        .sync_all()
        .map_err(|e| Error::io("cannot sync", path, e))
}

/// A reader that hashes the bytes it passes on and counts them on the progress bar.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    progress: indicatif::ProgressBar,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Reads one file, choosing the format from its first line.
fn extract_file(sink: &mut Sink, f: &InputFile, whole_file_cap: usize) -> Result<FileStats> {
    let mut stats = FileStats {
        file: f.rel.clone(),
        room: f.room.clone(),
        size: f.size,
        ..Default::default()
    };
    let raw = File::open(&f.path).map_err(|e| Error::io("cannot read", &f.path, e))?;
    let hashing = HashingReader {
        inner: raw,
        hasher: Sha256::new(),
        progress: sink.progress.clone(),
    };
    let mut hashing = BufReader::with_capacity(1 << 20, hashing);
    let decoded: Box<dyn Read + '_> = if f.gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(&mut hashing))
    } else {
        Box::new(&mut hashing)
    };
    let mut reader = BufReader::with_capacity(1 << 20, decoded);
    let read_err = |e: io::Error| {
        if f.gzip
            && matches!(
                e.kind(),
                io::ErrorKind::InvalidInput
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::UnexpectedEof
            )
        {
            Error::Data(format!(
                "{}: not a readable gzip file: {e}",
                f.path.display()
            ))
        } else {
            Error::io("cannot read", &f.path, e)
        }
    };

    // Peek at the start: BOM, first non-blank bytes.
    let head = peek_head(&mut reader).map_err(read_err)?;
    let format = detect_format(&head, &f.rel);
    stats.format = Some(format);
    match format {
        Format::Empty | Format::Lines => {
            lines_mode(sink, &mut stats, &mut reader, f).map_err(|e| match e {
                LineErr::Io(e) => read_err(e),
                LineErr::Other(e) => e,
            })?
        }
        Format::JsonArray | Format::Csv => {
            let mut buf = Vec::new();
            (&mut reader)
                .take(whole_file_cap as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(read_err)?;
            if buf.len() > whole_file_cap {
                return Err(Error::Data(format!(
                    "{}: a {} file larger than {} MiB is not supported (raise memory_budget_mb)",
                    f.path.display(),
                    if format == Format::Csv {
                        "CSV"
                    } else {
                        "JSON array"
                    },
                    whole_file_cap >> 20
                )));
            }
            let text = strip_bom(&buf);
            let index = LineIndex::new(text);
            if format == Format::Csv {
                csv_mode(sink, &mut stats, text, &index, f)?;
            } else {
                array_mode(sink, &mut stats, text, &index, f)?;
            }
        }
    }
    drop(reader);
    // Read any bytes the decoder left (gzip trailer) so the hash covers the whole file.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| Error::io("cannot read", &f.path, e))?;
    stats.sha256 = hex::encode(hashing.into_inner().hasher.finalize());
    Ok(stats)
}

/// Up to 64 KiB from the start of the stream, without consuming it.
fn peek_head<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let buf = r.fill_buf()?;
    Ok(buf[..buf.len().min(64 << 10)].to_vec())
}

fn strip_bom(b: &[u8]) -> &[u8] {
    b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)
}

/// Chooses the format from the first bytes and the file name.
fn detect_format(head: &[u8], name: &str) -> Format {
    let head = strip_bom(head);
    let trimmed = head.trim_ascii_start();
    if trimmed.is_empty() {
        return Format::Empty;
    }
    if let Some(rest) = trimmed.strip_prefix(b"[") {
        let rest = rest.trim_ascii_start();
        if rest.is_empty() || rest[0] == b'{' || rest[0] == b']' {
            return Format::JsonArray;
        }
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".csv") || lower.ends_with(".csv.gz") {
        return Format::Csv;
    }
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    if !first_line.contains(&b'{') && first_line.contains(&b',') {
        let fields: Vec<String> = String::from_utf8_lossy(first_line)
            .trim_end_matches('\r')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_ascii_lowercase())
            .collect();
        if fields
            .iter()
            .any(|f| ["message", "msg", "content", "text"].contains(&f.as_str()))
        {
            return Format::Csv;
        }
    }
    Format::Lines
}

enum LineErr {
    Io(io::Error),
    Other(Error),
}

impl From<Error> for LineErr {
    fn from(e: Error) -> Self {
        LineErr::Other(e)
    }
}

/// One line of a chunk: its bytes (without `\n` and a trailing `\r`), or a too-long marker.
struct LineRef {
    start: usize,
    end: usize,
    /// Total length when the line exceeded the limit (only a prefix is kept).
    too_long: Option<u64>,
}

/// Reads complete lines in chunks, never holding more than `limit` bytes of one line.
struct LineChunker {
    limit: usize,
    first: bool,
}

impl LineChunker {
    /// Fills `data`/`lines` with the next chunk; returns false at end of input.
    fn next_chunk<R: BufRead>(
        &mut self,
        r: &mut R,
        data: &mut Vec<u8>,
        lines: &mut Vec<LineRef>,
    ) -> io::Result<bool> {
        data.clear();
        lines.clear();
        let mut cur_start = 0usize;
        let mut cur_len = 0u64;
        let mut too_long = false;
        loop {
            if data.len() >= CHUNK_BYTES && cur_len == 0 {
                return Ok(true);
            }
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                if cur_len > 0 {
                    self.end_line(data, lines, (cur_start, cur_len), too_long);
                }
                return Ok(!lines.is_empty());
            }
            let (piece, consumed, ends_line) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let new_len = cur_len + piece.len() as u64;
            // One byte over the limit may be the `\r` of a CRLF ending, which is not part of the
            // line: `end_line` decides.
            if new_len > self.limit as u64 + 1 {
                too_long = true;
            }
            if too_long {
                // Keep only a prefix of an over-long line, for the rejects file.
                let kept = data.len() - cur_start;
                if kept > RAW_PREFIX_OF_LONG_LINE {
                    data.truncate(cur_start + RAW_PREFIX_OF_LONG_LINE);
                }
                let room = RAW_PREFIX_OF_LONG_LINE.saturating_sub(kept);
                data.extend_from_slice(&piece[..room.min(piece.len())]);
            } else {
                data.extend_from_slice(piece);
            }
            cur_len = new_len;
            r.consume(consumed);
            if ends_line {
                self.end_line(data, lines, (cur_start, cur_len), too_long);
                cur_start = data.len();
                cur_len = 0;
                too_long = false;
            }
        }
    }

    /// Ends the line of `len` bytes at `start..` in `data`: over the limit unless one byte over
    /// is its CRLF's `\r` (then it was held whole, and only a prefix of it is kept).
    fn end_line(
        &mut self,
        data: &mut Vec<u8>,
        lines: &mut Vec<LineRef>,
        (start, len): (usize, u64),
        mut too_long: bool,
    ) {
        if !too_long && len > self.limit as u64 && data.last() != Some(&b'\r') {
            too_long = true;
            data.truncate(start + RAW_PREFIX_OF_LONG_LINE.min(data.len() - start));
        }
        self.push_line(data, lines, start, len, too_long);
    }

    fn push_line(
        &mut self,
        data: &mut [u8],
        lines: &mut Vec<LineRef>,
        start: usize,
        len: u64,
        too_long: bool,
    ) {
        let mut s = start;
        let mut end = data.len();
        if self.first {
            self.first = false;
            if data[s..end].starts_with(b"\xEF\xBB\xBF") {
                s += 3;
            }
        }
        // The `\r` of a CRLF ending, also on an over-long line kept whole (a small limit).
        if end > s && data[end - 1] == b'\r' && (end - start) as u64 == len {
            end -= 1;
        }
        lines.push(LineRef {
            start: s,
            end,
            too_long: too_long.then_some(len),
        });
    }
}

/// Where a record starts on a line: a `{` followed by optional spaces and a quote.
pub fn find_record_start(line: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'{', &line[from..]) {
        let at = from + i;
        let mut j = at + 1;
        while j < line.len() && (line[j] == b' ' || line[j] == b'\t') {
            j += 1;
        }
        if j < line.len() && (line[j] == b'\'' || line[j] == b'"') {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// `N` from `offset=N` in a line's prefix.
fn prefix_offset(prefix: &[u8]) -> Option<i64> {
    let pos = memchr::memmem::rfind(prefix, b"offset=")?;
    let digits: Vec<u8> = prefix[pos + 7..]
        .iter()
        .copied()
        .take_while(|b| b.is_ascii_digit())
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A chunk of complete lines read from a file.
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    lines: Vec<LineRef>,
    /// Lines of the file before this chunk.
    first_line_no: u64,
}

/// A chunk handed to a parser thread, and where its lines' outcomes go.
type ParseJob = (Chunk, std::sync::mpsc::SyncSender<(Chunk, Parsed)>);

/// Line-oriented formats.
///
/// A pipeline: this thread reads chunks of lines and stages the records, in line order, while
/// parser threads (one per core) classify, parse and normalise whole chunks ahead of it, a few
/// chunks in flight at a time. Parsing is pure, so the parsers share nothing but the normaliser.
fn lines_mode<R: BufRead>(
    sink: &mut Sink,
    stats: &mut FileStats,
    r: &mut R,
    f: &InputFile,
) -> std::result::Result<(), LineErr> {
    let mut chunker = LineChunker {
        limit: sink.max_line,
        first: true,
    };
    // A chunk in flight holds its lines and their parsed records, about 16 MiB: a parser per
    // core as the memory budget allows, and two chunks per parser (plus the one being staged)
    // as a quarter of the budget allows, at least one per parser. With one chunk per parser the
    // parsers waited while this thread staged the oldest chunk, both cores busy only 90% of the
    // time.
    let budget = sink.budget_bytes << 3;
    let parsers = crate::stage::threads_within(budget, 64 << 20);
    let in_flight = (2 * parsers + 1).min((budget / (64 << 20)).max(parsers + 1));
    // The parsers' own copies: this thread keeps `sink` to itself.
    let normalizer = sink.normalizer.clone();
    let limits = sink.limits;
    let budget_bytes = sink.budget_bytes;
    let file_no = sink.file_no;
    let (normalizer, limits) = (&normalizer, &limits);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<ParseJob>(in_flight);
    let job_rx = std::sync::Mutex::new(job_rx);
    let job_rx = &job_rx;
    std::thread::scope(|scope| {
        // Owned here, so that the parsers see the end of the jobs whenever this closure returns.
        let job_tx = job_tx;
        for _ in 0..parsers {
            scope.spawn(move || {
                let mut parser = LineParser {
                    normalizer,
                    limits,
                    scratch: FlatScratch::default(),
                    builder: BatchBuilder::new(),
                    sender_ids: HashMap::default(),
                    budget_bytes,
                };
                loop {
                    let job = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((chunk, done))) = job else { return };
                    let outs = parser.parse(&chunk, f, file_no);
                    // The reader stopped early (an error) when nobody waits for the result.
                    let _ = done.send((chunk, outs));
                }
            });
        }
        let mut pending = std::collections::VecDeque::new();
        let mut spare: Vec<Chunk> = Vec::new();
        let mut line_no = 0u64;
        let mut eof = false;
        // A read error waits until the chunks before it are staged: an error staging those comes
        // first, as it would have without reading ahead.
        let mut read_err = None;
        loop {
            while !eof && pending.len() < in_flight {
                let mut chunk = spare.pop().unwrap_or_else(|| Chunk {
                    data: Vec::with_capacity(CHUNK_BYTES + (64 << 10)),
                    ..Default::default()
                });
                match chunker.next_chunk(r, &mut chunk.data, &mut chunk.lines) {
                    Ok(true) => {}
                    Ok(false) => {
                        eof = true;
                        break;
                    }
                    Err(e) => {
                        read_err = Some(e);
                        eof = true;
                        break;
                    }
                }
                chunk.first_line_no = line_no;
                line_no += chunk.lines.len() as u64;
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
                if job_tx.send((chunk, done_tx)).is_err() {
                    return Err(Error::Internal("the line parsers stopped".into()).into());
                }
                pending.push_back(done_rx);
            }
            let Some(done) = pending.pop_front() else {
                return match read_err {
                    Some(e) => Err(LineErr::Io(e)),
                    None => Ok(()),
                };
            };
            let (chunk, outs) = done
                .recv()
                .map_err(|_| Error::Internal("a line parser stopped".into()))?;
            sink.stage_chunk(stats, &chunk, outs)?;
            spare.push(chunk);
        }
    })
}

/// Counts one line by what it turned out to be: blank, noise, rejected (into the rejects file,
/// `line` being the bytes kept) or a record (which the caller stages).
fn account(
    sink: &mut Sink,
    stats: &mut FileStats,
    line_no: u64,
    line: &[u8],
    out: LineOut,
) -> Result<()> {
    stats.lines += 1;
    match out {
        LineOut::Blank => stats.blank += 1,
        LineOut::Noise => stats.noise += 1,
        LineOut::TooLong(total) => sink.reject(
            stats,
            line_no,
            "line_too_long",
            format!(
                "line of {total} bytes exceeds max_line_bytes {}; first {} bytes kept",
                sink.max_line,
                line.len()
            ),
            line,
            Some(total),
        )?,
        LineOut::Reject(reason, detail) => {
            sink.reject(stats, line_no, reason, detail, line, None)?
        }
        LineOut::Record(drops) => {
            stats.record_lines += 1;
            stats.dropped.add(&drops);
        }
    }
    Ok(())
}

/// What one line turned out to be, decided off the main thread.
enum LineOut {
    Blank,
    Noise,
    TooLong(u64),
    Reject(&'static str, String),
    /// A record, handed to the caller's `on_record`; the characters its strings lost.
    Record(Drops),
}

/// A chunk's lines parsed: what each line is, and the records as one Arrow batch.
struct Parsed {
    outs: Vec<LineOut>,
    /// The records, in line order (batches of at most BATCH_ROWS rows and about `budget_bytes`).
    batches: Vec<RecordBatch>,
    /// One per record, in line order; `sender` indexes `senders`.
    rows: Vec<RowMeta>,
    /// The chunk's distinct senders.
    senders: Vec<Option<String>>,
}

/// A parser thread's state, reused from chunk to chunk.
struct LineParser<'n> {
    normalizer: &'n Normalizer,
    limits: &'n Limits,
    scratch: FlatScratch,
    builder: BatchBuilder,
    sender_ids: HashMap<String, u32, foldhash::fast::RandomState>,
    budget_bytes: usize,
}

impl LineParser<'_> {
    /// Classifies and parses a chunk's lines, in line order, staging the records into a batch.
    fn parse(&mut self, chunk: &Chunk, f: &InputFile, file_no: u32) -> Parsed {
        self.sender_ids.clear();
        let mut senders: Vec<Option<String>> = Vec::new();
        let mut null_sender = None;
        let mut rows = Vec::new();
        let mut batches = Vec::new();
        let mut outs = Vec::with_capacity(chunk.lines.len());
        // One UTF-8 check of the whole chunk instead of one per line (simdutf8's setup cost is
        // per call: 5% of extract, per line); a chunk that is not all UTF-8 is checked by line.
        let chunk_text = simdutf8::basic::from_utf8(&chunk.data).ok();
        for (i, l) in chunk.lines.iter().enumerate() {
            if self.builder.len() >= BATCH_ROWS || self.builder.bytes() >= self.budget_bytes {
                batches.push(self.builder.finish());
            }
            if let Some(total) = l.too_long {
                outs.push(LineOut::TooLong(total));
                continue;
            }
            let (builder, sender_ids) = (&mut self.builder, &mut self.sender_ids);
            let on_record = |r: RecordRef<'_>| {
                let sender = match r.sender_id.as_deref() {
                    None => *null_sender.get_or_insert_with(|| {
                        senders.push(None);
                        senders.len() as u32 - 1
                    }),
                    Some(s) => match sender_ids.get(s) {
                        Some(&i) => i,
                        None => {
                            senders.push(Some(s.to_string()));
                            sender_ids.insert(s.to_string(), senders.len() as u32 - 1);
                            senders.len() as u32 - 1
                        }
                    },
                };
                rows.push(row_meta(&r, sender));
                let staged_sender = r.sender_id.is_some().then_some(sender);
                builder.push_ref(&r, staged_sender, file_no);
            };
            outs.push(classify_line(
                self.normalizer,
                self.limits,
                &chunk.data[l.start..l.end],
                chunk_text.and_then(|t| t.get(l.start..l.end)),
                chunk.first_line_no + i as u64 + 1,
                f,
                &mut self.scratch,
                on_record,
            ));
        }
        if !self.builder.is_empty() {
            batches.push(self.builder.finish());
        }
        Parsed {
            outs,
            batches,
            rows,
            senders,
        }
    }
}

/// Classifies one line and, when it holds a record, parses and normalises it and hands it to
/// `on_record`. Records of scalars take the allocation-free path of the parser. `text` is the
/// line as text when it is already known to be UTF-8.
#[allow(clippy::too_many_arguments)]
fn classify_line(
    normalizer: &Normalizer,
    limits: &Limits,
    line: &[u8],
    text: Option<&str>,
    line_no: u64,
    f: &InputFile,
    scratch: &mut FlatScratch,
    on_record: impl FnOnce(RecordRef<'_>),
) -> LineOut {
    if line.trim_ascii().is_empty() {
        return LineOut::Blank;
    }
    let Some(start) = find_record_start(line) else {
        return LineOut::Noise;
    };
    let mut drops = Drops::default();
    let owned;
    let flat = match text {
        Some(t) => literal::parse_flat_dict_str(t, start, limits, &mut drops, scratch),
        None => literal::parse_flat_dict(line, start, limits, &mut drops, scratch),
    };
    // Filled in place (no copy of its inline entries), after `owned` so that it may borrow it.
    let mut entries = Entries::new();
    let end = match flat {
        Some((end, dict)) => {
            dict.entries_into(&mut entries);
            end
        }
        None => match literal::parse_dict(line, start, limits, &mut drops) {
            Ok((parsed, end)) => {
                owned = parsed;
                entries.extend(owned.iter().map(|(k, v)| (k.as_str(), ValueRef::of(v))));
                end
            }
            Err(e) => return LineOut::Reject(e.kind.code(), e.to_string()),
        },
    };
    if !line[end..].trim_ascii().is_empty() {
        return LineOut::Reject(
            "trailing_garbage",
            format!("unexpected text after the record at byte {end}"),
        );
    }
    let origin = Origin {
        file_room: &f.room,
        source_file: &f.rel,
        line: line_no,
        prefix_offset: prefix_offset(&line[..start]),
    };
    match normalizer.normalize_ref(&entries, &origin) {
        Ok(r) => {
            on_record(r);
            LineOut::Record(drops)
        }
        Err(rej) => LineOut::Reject(rej.code(), rej.text().into()),
    }
}

/// Start offsets of lines in a whole-file buffer.
struct LineIndex {
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    fn new(text: &[u8]) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text).map(|i| i + 1));
        if starts.last() == Some(&text.len()) {
            starts.pop();
        }
        if text.is_empty() {
            starts.clear();
        }
        LineIndex {
            starts,
            len: text.len(),
        }
    }

    fn count(&self) -> usize {
        self.starts.len()
    }

    /// 0-based line index of a byte offset.
    fn line_of(&self, off: usize) -> usize {
        match self.starts.binary_search(&off) {
            Ok(i) => i,
            Err(i) => i - 1,
        }
    }

    /// The bytes of 0-based line `i`, without `\n`/`\r\n`.
    fn line<'a>(&self, text: &'a [u8], i: usize) -> &'a [u8] {
        let s = self.starts[i];
        let mut e = self.starts.get(i + 1).copied().unwrap_or(self.len);
        if e > s && text[e - 1] == b'\n' {
            e -= 1;
        }
        if e > s && text[e - 1] == b'\r' {
            e -= 1;
        }
        &text[s..e]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineClass {
    Unset,
    Record,
    Rejected,
}

/// Finishes per-line accounting for the whole-file formats: unset lines are blank or noise.
fn settle_lines(stats: &mut FileStats, classes: &[LineClass], text: &[u8], index: &LineIndex) {
    stats.lines = classes.len() as u64;
    // Several elements can share a line (`json.dump` without indent): a line counts once, and a
    // line holding any rejected element is rejected (its rows are in the rejects file) even when
    // other elements on it were staged.
    stats.rejected = 0;
    for (i, c) in classes.iter().enumerate() {
        match c {
            LineClass::Record => stats.record_lines += 1,
            LineClass::Rejected => stats.rejected += 1,
            LineClass::Unset => {
                if index.line(text, i).trim_ascii().is_empty() {
                    stats.blank += 1;
                } else {
                    stats.noise += 1;
                }
            }
        }
    }
}

/// Rejects every line from `from` (0-based) to the end, each with its own row.
fn reject_tail(
    sink: &mut Sink,
    stats: &mut FileStats,
    classes: &mut [LineClass],
    (text, index): (&[u8], &LineIndex),
    from: usize,
    reason: &str,
    detail: &str,
) -> Result<()> {
    for (i, class) in classes.iter_mut().enumerate().skip(from) {
        if *class == LineClass::Rejected {
            continue; // its row is already in the rejects file
        }
        *class = LineClass::Rejected;
        sink.reject(
            stats,
            i as u64 + 1,
            reason,
            detail.to_string(),
            index.line(text, i),
            None,
        )?;
    }
    Ok(())
}

/// A pretty-printed JSON array of records (`json.dump(..., indent=4)`), possibly cut off.
fn array_mode(
    sink: &mut Sink,
    stats: &mut FileStats,
    text: &[u8],
    index: &LineIndex,
    f: &InputFile,
) -> Result<()> {
    let mut classes = vec![LineClass::Unset; index.count()];
    let skip_ws = |mut p: usize| {
        while p < text.len() && text[p].is_ascii_whitespace() {
            p += 1;
        }
        p
    };
    let mut pos = skip_ws(0);
    debug_assert_eq!(text.get(pos), Some(&b'['));
    pos += 1;
    loop {
        pos = skip_ws(pos);
        if pos >= text.len() {
            // Cut off after a complete element: nothing left to reject but the missing `]`.
            break;
        }
        if text[pos] == b']' {
            let after = skip_ws(pos + 1);
            if after < text.len() {
                let l = index.line_of(after);
                stats.elements += 1;
                stats.rejected_elements += 1;
                reject_tail(
                    sink,
                    stats,
                    &mut classes,
                    (text, index),
                    l,
                    "trailing_garbage",
                    "text after the end of the JSON array",
                )?;
            }
            break;
        }
        let start_line = index.line_of(pos);
        let mut drops = Drops::default();
        match literal::parse_value(text, pos, &sink.limits, &mut drops) {
            Ok((value, end)) => {
                let end_line = index.line_of(end.saturating_sub(1).max(pos));
                let raw = index.line(text, start_line);
                let ok = match value {
                    Value::Dict(entries) => {
                        let origin = Origin {
                            file_room: &f.room,
                            source_file: &f.rel,
                            line: start_line as u64 + 1,
                            prefix_offset: None,
                        };
                        sink.record(stats, entries, origin, raw)?
                    }
                    _ => {
                        sink.reject(
                            stats,
                            start_line as u64 + 1,
                            "not_a_record",
                            "array element is not a dict".into(),
                            raw,
                            None,
                        )?;
                        false
                    }
                };
                let class = if ok {
                    LineClass::Record
                } else {
                    LineClass::Rejected
                };
                if ok {
                    stats.dropped.add(&drops);
                } else {
                    // The first line got its reject row; the element's other lines get theirs.
                    for i in start_line + 1..=end_line {
                        sink.reject(
                            stats,
                            i as u64 + 1,
                            "not_a_record",
                            format!(
                                "part of the rejected element starting at line {}",
                                start_line + 1
                            ),
                            index.line(text, i),
                            None,
                        )?;
                    }
                }
                stats.elements += 1;
                if !ok {
                    stats.rejected_elements += 1;
                }
                for c in &mut classes[start_line..=end_line] {
                    if *c != LineClass::Rejected {
                        *c = class;
                    }
                }
                pos = skip_ws(end);
                if pos < text.len() && text[pos] == b',' {
                    pos += 1;
                } else if pos < text.len() && text[pos] != b']' {
                    let l = index.line_of(pos);
                    stats.elements += 1;
                    stats.rejected_elements += 1;
                    reject_tail(
                        sink,
                        stats,
                        &mut classes,
                        (text, index),
                        l,
                        "unexpected_char",
                        "expected ',' or ']' after an array element",
                    )?;
                    break;
                }
            }
            Err(e) => {
                let at = index.line_of(e.offset.min(text.len().saturating_sub(1)));
                let detail = format!(
                    "broken array element starting at line {}: {} (line {})",
                    start_line + 1,
                    e.kind.code(),
                    at + 1
                );
                stats.elements += 1;
                stats.rejected_elements += 1;
                reject_tail(
                    sink,
                    stats,
                    &mut classes,
                    (text, index),
                    start_line,
                    e.kind.code(),
                    &detail,
                )?;
                break;
            }
        }
    }
    settle_lines(stats, &classes, text, index);
    Ok(())
}

/// CSV with a header row (`pandas.to_csv`), RFC 4180 quoting.
fn csv_mode(
    sink: &mut Sink,
    stats: &mut FileStats,
    text: &[u8],
    index: &LineIndex,
    f: &InputFile,
) -> Result<()> {
    let mut classes = vec![LineClass::Unset; index.count()];
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text);
    let mut drops = Drops::default();
    let headers: Vec<String> = match rdr.byte_headers() {
        Ok(h) => h
            .iter()
            .map(|b| clean_bytes(b, &mut drops).trim().to_string())
            .collect(),
        Err(e) => {
            return Err(Error::Data(format!(
                "{}: unreadable CSV header: {e}",
                f.path.display()
            )));
        }
    };
    let mut rec = csv::ByteRecord::new();
    loop {
        let start_byte = rdr.position().byte() as usize;
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                let rec_start = rec.position().map_or(start_byte, |p| p.byte() as usize);
                let end_byte = (rdr.position().byte() as usize).max(rec_start + 1);
                let first = index.line_of(rec_start.min(text.len().saturating_sub(1)));
                let last = index.line_of((end_byte - 1).min(text.len().saturating_sub(1)));
                let raw_end = index.starts.get(last + 1).copied().unwrap_or(text.len());
                let raw = &text[index.starts[first]..raw_end];
                let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
                if rec.len() != headers.len() {
                    for (i, class) in classes.iter_mut().enumerate().take(last + 1).skip(first) {
                        *class = LineClass::Rejected;
                        sink.reject(
                            stats,
                            i as u64 + 1,
                            "csv_field_count",
                            format!(
                                "{} fields where the header has {}",
                                rec.len(),
                                headers.len()
                            ),
                            index.line(text, i),
                            None,
                        )?;
                    }
                    continue;
                }
                let mut d = Drops::default();
                let entries: Vec<(String, Value)> = headers
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| (h.clone(), Value::Str(clean_bytes(v, &mut d))))
                    .collect();
                let origin = Origin {
                    file_room: &f.room,
                    source_file: &f.rel,
                    line: first as u64 + 1,
                    prefix_offset: None,
                };
                let ok = sink.record(stats, entries, origin, raw)?;
                if ok {
                    stats.dropped.add(&d);
                } else {
                    for i in first + 1..=last {
                        sink.reject(
                            stats,
                            i as u64 + 1,
                            "csv_record",
                            format!("part of the rejected record starting at line {}", first + 1),
                            index.line(text, i),
                            None,
                        )?;
                    }
                }
                for c in &mut classes[first..=last] {
                    if *c != LineClass::Rejected {
                        *c = if ok {
                            LineClass::Record
                        } else {
                            LineClass::Rejected
                        };
                    }
                }
            }
            Err(e) => {
                let at = e.position().map_or(start_byte, |p| p.byte() as usize);
                let l = index.line_of(at.min(text.len().saturating_sub(1)));
                reject_tail(
                    sink,
                    stats,
                    &mut classes,
                    (text, index),
                    l,
                    "csv_error",
                    &e.to_string(),
                )?;
                break;
            }
        }
    }
    // The header line is structure: count it as noise (it is not blank and holds no record).
    settle_lines(stats, &classes, text, index);
    Ok(())
}

/// Reads the staged summary of a date, if any.
pub fn read_summary(layout: &Layout, date: NaiveDate) -> Result<Option<ExtractSummary>> {
    let path = layout.staging_dir(date).join(STAGED_SUMMARY);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::Data(format!(
            "{}: unreadable staging summary: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_start_needs_a_quoted_key() {
        assert_eq!(find_record_start(b"{'a': 1}"), Some(0));
        assert_eq!(find_record_start(b"x { \"a\": 1}"), Some(2));
        assert_eq!(
            find_record_start(b"[2024-08-28T14:37:00.274+0900] {taskinstance.py:2330} INFO - offset=3, value={'a': 1}"),
            Some(77)
        );
        assert_eq!(
            find_record_start(b"{taskinstance.py:2330} INFO - nothing"),
            None
        );
        assert_eq!(find_record_start(b"{}"), None);
    }

    #[test]
    fn prefix_offsets() {
        assert_eq!(prefix_offset(b"offset=12, value="), Some(12));
        assert_eq!(
            prefix_offset(b"[x] {t.py:1} INFO - offset=3, value="),
            Some(3)
        );
        assert_eq!(prefix_offset(b"value="), None);
    }

    #[test]
    fn format_detection() {
        assert_eq!(detect_format(b"[\n    {\n", "a.json"), Format::JsonArray);
        assert_eq!(
            detect_format(b"\xEF\xBB\xBF[]", "a.json"),
            Format::JsonArray
        );
        assert_eq!(
            detect_format(b"[2024-10-25T14:37:00.274+0900] {x.py:1} INFO", "a.log"),
            Format::Lines
        );
        assert_eq!(
            detect_format(b"\xEF\xBB\xBFnickname,message,time\n", "a.txt"),
            Format::Csv
        );
        assert_eq!(detect_format(b"{'message': 'a,b'}", "a.log"), Format::Lines);
        assert_eq!(detect_format(b"  \n ", "a.log"), Format::Empty);
        assert_eq!(detect_format(b"x", "a.csv"), Format::Csv);
    }

    #[test]
    fn chunker_counts_lines_like_wc_plus_unterminated_tail() {
        let input = b"\xEF\xBB\xBFa\r\n\nb\nccc".to_vec();
        let mut r = BufReader::with_capacity(2, &input[..]);
        let mut c = LineChunker {
            limit: 1 << 20,
            first: true,
        };
        let (mut data, mut lines) = (Vec::new(), Vec::new());
        assert!(c.next_chunk(&mut r, &mut data, &mut lines).unwrap());
        let got: Vec<&[u8]> = lines.iter().map(|l| &data[l.start..l.end]).collect();
        assert_eq!(got, vec![&b"a"[..], b"", b"b", b"ccc"]);
        assert!(!c.next_chunk(&mut r, &mut data, &mut lines).unwrap());
    }

    #[test]
    fn chunker_truncates_long_lines_without_holding_them() {
        let mut input = vec![b'x'; 5000];
        input.push(b'\n');
        input.extend_from_slice(b"ok\n");
        let mut r = BufReader::with_capacity(64, &input[..]);
        let mut c = LineChunker {
            limit: 100,
            first: true,
        };
        let (mut data, mut lines) = (Vec::new(), Vec::new());
        c.next_chunk(&mut r, &mut data, &mut lines).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].too_long, Some(5000));
        assert_eq!(lines[0].end - lines[0].start, RAW_PREFIX_OF_LONG_LINE);
        assert_eq!(&data[lines[1].start..lines[1].end], b"ok");
        assert!(data.len() < 1100);
    }

    #[test]
    fn a_crlf_ending_does_not_count_toward_the_limit() {
        let input = b"abcd\r\nabcde\nabcd\n\nabc\r\r\nabcde\r\nab\rcd\nabcd\r";
        let mut r = BufReader::with_capacity(3, &input[..]);
        let mut c = LineChunker {
            limit: 4,
            first: true,
        };
        let (mut data, mut lines) = (Vec::new(), Vec::new());
        c.next_chunk(&mut r, &mut data, &mut lines).unwrap();
        let got: Vec<(&[u8], Option<u64>)> = lines
            .iter()
            .map(|l| (&data[l.start..l.end], l.too_long))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"abcd"[..], None),
                (b"abcde", Some(5)),
                (b"abcd", None),
                (b"", None),
                (b"abc\r", None),
                (b"abcde", Some(6)),
                (b"ab\rcd", Some(5)),
                (b"abcd", None),
            ]
        );
    }

    #[test]
    fn line_index() {
        let t = b"a\r\nbb\n\nc";
        let ix = LineIndex::new(t);
        assert_eq!(ix.count(), 4);
        assert_eq!(ix.line(t, 0), b"a");
        assert_eq!(ix.line(t, 2), b"");
        assert_eq!(ix.line(t, 3), b"c");
        assert_eq!(ix.line_of(4), 1);
        assert_eq!(LineIndex::new(b"a\n").count(), 1);
        assert_eq!(LineIndex::new(b"").count(), 0);
    }
}
