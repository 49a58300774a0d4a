//! `write`: a date's staged records to Hive-partitioned Parquet, committed atomically.
//!
//! Rows are ordered by (sender, ts, source_file, source_line) with an external merge sort: the
//! staged records (which hold each sender and source file as an id, their names in the staged
//! file's footer) are cut into runs that fit the memory budget, each run is sorted by the ranks
//! of those names, runs that do not all fit are spilled to Arrow IPC files, and a k-way merge
//! streams the rows out sender by sender into `sender_id=<escaped>/part-00000.parquet`, the
//! source file's name in place of its id. Every run is cut at the same sender ranks into ranges
//! of about equal rows (chosen from the first run), so the merge goes range by range on one
//! lane per core, each merging, encoding and writing its ranges' files on its own;
//! a lane with no range left encodes row groups that the lanes still merging hand it.
//! Memory stays bounded by the budget whatever the number of rows; beyond it are only the day's
//! names with a few bytes of rank per name.
//!
//! The whole date is built in a temporary directory under the output root; every file is
//! fsynced, `_SUCCESS` is written last, and one atomic exchange puts the directory at
//! `messages/date=D`. A crash at any point leaves the previous complete date in place.
//! Output is deterministic: same staged input, same tool version, byte-identical files.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType, UInt32Type};
use arrow_array::{Array, RecordBatch};
use arrow_ipc::writer::FileWriter;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::{Codec, Settings};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::layout::{Layout, fsync_path, sender_dir_name, swap_into_place};
use crate::lock::DateLock;
use crate::record::Kind;
use crate::record::schema::{
    C_FILE, C_KIND, C_LINE, C_SENDER, C_TS, STAGED_NAMES_KEY, StagedNames, parquet_schema,
    staged_schema,
};
use crate::stage::Outcome;
use crate::stage::extract::{self, ExtractSummary, STAGED_RECORDS};
use crate::stage::ipc::IpcBlocks;

/// Name of the manifest written last into `messages/date=D/`.
pub const SUCCESS_FILE: &str = "_SUCCESS";
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows per batch produced by the merge, and most rows per batch of a sorted run.
const MERGE_BATCH_ROWS: usize = 8 * 1024;
/// Sender ranges per lane: enough that the lanes end close together, whatever the ranges' sizes.
const RANGES_PER_LANE: usize = 4;
/// Fewest rows per batch of a spilled run, however many runs there are.
const MIN_MERGE_BATCH_ROWS: usize = 64;

/// One Parquet file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutputFile {
    /// Path relative to `messages/date=D/`.
    pub path: String,
    /// The sender ID (null for the null partition).
    pub sender_id: Option<String>,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// One input file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestInput {
    /// Path relative to the input root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: String,
}

/// The `_SUCCESS` manifest: what a complete date holds. No wall-clock time, so it is as
/// reproducible as the Parquet files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Manifest format version.
    pub manifest_version: u32,
    /// chatetl version that wrote it.
    pub tool_version: String,
    /// The logical date.
    pub date: NaiveDate,
    /// Zone used for naive times.
    pub tz: String,
    /// Codec of the Parquet files (`zstd` in manifests from before it could be chosen).
    #[serde(default = "zstd")]
    pub compression: String,
    /// The settings that decided the records, as extract staged them (absent in manifests from
    /// before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_settings: Option<extract::RecordSettings>,
    /// Inputs.
    pub inputs: Vec<ManifestInput>,
    /// Line and record counts from extract.
    pub counts: extract::Totals,
    /// Output files, sorted by path.
    pub files: Vec<OutputFile>,
    /// Rows written (equals `counts.staged`).
    pub rows: u64,
}

fn zstd() -> String {
    Codec::default().to_string()
}

/// Reads the manifest of a complete date, if any.
pub fn read_manifest(layout: &Layout, date: NaiveDate) -> Result<Option<Manifest>> {
    let path = layout.messages_dir(date).join(SUCCESS_FILE);
    match fs::read(&path) {
        Ok(t) => serde_json::from_slice(&t)
            .map(Some)
            .map_err(|e| Error::Data(format!("{}: unreadable manifest: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", &path, e)),
    }
}

/// Runs `write` under the date's lock.
pub fn run(settings: &Settings, date: NaiveDate) -> Result<Outcome> {
    crate::stage::clean_output::check_output_root(settings)?;
    let layout = Layout::new(&settings.output_root);
    let _lock = DateLock::acquire(&layout, date, "chatetl write")?;
    let started = Instant::now();
    let manifest = write(settings, &layout, date)?;
    Ok(outcome(&layout, &manifest, started.elapsed().as_secs_f64()))
}

/// Human and JSON summaries of a write.
pub fn outcome(layout: &Layout, m: &Manifest, seconds: f64) -> Outcome {
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    let dir = layout.messages_dir(m.date);
    let human = format!(
        "{}: wrote {} rows in {} files ({} bytes) to {} in {seconds:.2}s\n",
        m.date,
        m.rows,
        m.files.len(),
        bytes,
        dir.display()
    );
    let json = json!({
        "stage": "write",
        "date": m.date.to_string(),
        "status": "ok",
        "exit_code": ExitCode::Ok.code(),
        "dir": dir,
        "rows": m.rows,
        "files": m.files.len(),
        "bytes": bytes,
        "duration_s": seconds,
    });
    Outcome {
        exit: ExitCode::Ok,
        human,
        json,
    }
}

/// Writes `date` from its staging area; the caller holds the date's lock.
pub fn write(settings: &Settings, layout: &Layout, date: NaiveDate) -> Result<Manifest> {
    let summary = extract::read_summary(layout, date)?.ok_or_else(|| {
        Error::NoInput(format!(
            "nothing staged for {date} under {}; run `chatetl extract --date {date}` first",
            layout.staging_dir(date).display()
        ))
    })?;
    for leftover in layout.tmp_leftovers(date)? {
        if leftover
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("messages-"))
        {
            crate::layout::remove_path(&leftover)
                .map_err(|e| Error::io("cannot remove", &leftover, e))?;
        }
    }
    let tmp = layout.new_tmp_dir("messages", date)?;
    let result = build(settings, layout, date, &summary, &tmp)
        .and_then(|manifest| swap_into_place(&tmp, &layout.messages_dir(date)).map(|()| manifest));
    match result {
        Ok(manifest) => {
            tracing::info!("Committed {} rows of {date}.", manifest.rows);
            Ok(manifest)
        }
        Err(e) => {
            // Built or not, what is left in `tmp` is garbage: the unfinished date, the new one
            // when the commit failed before the swap (the previous output stays in place), or the
            // previous one when the swap was done and a step after it failed.
            let _ = crate::layout::remove_path(&tmp);
            Err(e)
        }
    }
}

/// Builds the complete date directory in `tmp` (manifest last).
fn build(
    settings: &Settings,
    layout: &Layout,
    date: NaiveDate,
    summary: &ExtractSummary,
    tmp: &Path,
) -> Result<Manifest> {
    let staged = layout.staging_dir(date).join(STAGED_RECORDS);
    let budget = (settings.memory_budget_mb as usize) << 20;
    let spill_dir = tmp.join(".spill");
    let dropped = match &summary.dropped_rows_file {
        Some(name) if name == extract::DROPPED_ROWS => {
            let path = layout.staging_dir(date).join(name);
            let bits =
                crate::stage::dedupe::read_bitmap(&path, summary.totals.records).map_err(|e| {
                    Error::Data(format!(
                        "{}: unreadable staged records: {e}",
                        path.display()
                    ))
                })?;
            Some(bits)
        }
        Some(other) => {
            return Err(Error::Data(format!(
                "{}: unexpected dropped_rows_file {other:?}",
                layout
                    .staging_dir(date)
                    .join(extract::STAGED_SUMMARY)
                    .display()
            )));
        }
        None => None,
    };
    // The rows left out must be what the summary says (a damaged bitmap or summary would
    // otherwise show only once the date is written, as a row count that does not add up).
    // Staging without a bitmap (none left out, or written before bitmaps, when duplicates were
    // never staged) is checked by that count alone.
    if let Some(bits) = &dropped
        && let left_out = bits.iter().map(|w| u64::from(w.count_ones())).sum::<u64>()
        && summary.totals.records.checked_sub(left_out) != Some(summary.totals.staged)
    {
        return Err(Error::Data(format!(
            "{}: damaged staged records: {} rows, {left_out} of them left out as duplicates, \
             but {} to write",
            layout.staging_dir(date).display(),
            summary.totals.records,
            summary.totals.staged
        )));
    }
    // Half the budget for the runs: the one being read, and per sorter thread a run held twice
    // while it is put in order (the run and its sorted copy), plus up to three quarters of a run
    // of per-row bookkeeping (sort keys, 40 bytes a row, whose buffer then holds the order;
    // sender places, destinations and text places, 16 more), where the benchmark's staged rows
    // take 93 bytes. The merge, which comes after, has the same half again.
    let sorters = crate::stage::threads_within(budget, 4 << 20).min(4);
    let run_bytes = 2 * budget / (4 + 11 * sorters);
    let staged_bytes = fs::metadata(&staged)
        .map_err(|e| Error::io("cannot read", &staged, e))?
        .len();
    let lanes = lanes(budget);
    let chunk_rows = merge_chunk_rows(
        staged_bytes,
        summary.totals.records,
        run_bytes,
        budget / lanes,
    );
    let (runs, ranks) = make_runs(
        &staged,
        dropped.as_deref(),
        RunSizes {
            run_bytes,
            chunk_rows,
            parts: if lanes > 1 {
                RANGES_PER_LANE * lanes
            } else {
                1
            },
        },
        sorters,
        &spill_dir,
    )?;
    let progress = crate::progress::rows(summary.totals.staged, "write");
    // A lane with no range left encodes row groups for the lanes still merging when a gathered
    // row group, held until it is encoded (at most one per helper), fits in the share of the
    // budget that the idle lane's merge no longer uses. A gathered row holds its source file's
    // name and its kind's, each with a 4-byte offset, where the staged row holds an id and a code.
    let longest_file = ranks.file_names.iter().map(String::len).max().unwrap_or(0);
    let longest_kind = Kind::ALL
        .iter()
        .map(|k| k.as_str().len())
        .max()
        .unwrap_or(0);
    let names = longest_file + longest_kind + 8;
    let row_bytes = staged_bytes / summary.totals.records.max(1) + names as u64;
    let handoff = ROW_GROUP_ROWS as u64 * row_bytes <= (budget / (2 * lanes)) as u64;
    let mut files = merge_and_write(
        runs,
        &ranks,
        tmp,
        (lanes, settings.compression, handoff),
        &progress,
    )?;
    progress.finish_and_clear();
    if spill_dir.exists() {
        fs::remove_dir_all(&spill_dir).map_err(|e| Error::io("cannot remove", &spill_dir, e))?;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    if rows != summary.totals.staged {
        // The staged records file holds another number of rows than its summary lists.
        return Err(Error::Data(format!(
            "{}: damaged staged records: wrote {rows} rows but {} were staged",
            layout.staging_dir(date).display(),
            summary.totals.staged
        )));
    }
    let manifest = Manifest {
        manifest_version: 1,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        date,
        tz: summary.tz.clone(),
        compression: settings.compression.to_string(),
        record_settings: summary.record_settings.clone(),
        inputs: summary
            .files
            .iter()
            .map(|f| ManifestInput {
                path: f.file.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            })
            .collect(),
        counts: summary.totals.clone(),
        files,
        rows,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    extract::write_synced(&tmp.join(SUCCESS_FILE), &text)?;
    fsync_path(tmp).map_err(|e| Error::io("cannot sync", tmp, e))?;
    Ok(manifest)
}

/// Rows per batch of a spilled run. Each lane's merge holds one batch of every run: when a big
/// day in a small budget makes many runs, their batches get shorter, so that together they stay
/// within a quarter of the lane's `budget` (down to MIN_MERGE_BATCH_ROWS rows).
fn merge_chunk_rows(staged_bytes: u64, staged_rows: u64, run_bytes: usize, budget: usize) -> usize {
    let runs = staged_bytes.div_ceil(run_bytes.max(1) as u64).max(1);
    let row_bytes = (staged_bytes / staged_rows.max(1)).max(1);
    let rows = (budget as u64 / 4) / runs.saturating_mul(row_bytes);
    (rows.min(MERGE_BATCH_ROWS as u64) as usize).max(MIN_MERGE_BATCH_ROWS)
}

/// How `make_runs` cuts: bytes of staged rows per run, rows per batch of a spilled run, and
/// about how many sender ranges (of equal rows) to cut every run into.
#[derive(Clone, Copy)]
struct RunSizes {
    run_bytes: usize,
    chunk_rows: usize,
    parts: usize,
}

/// A sorted run, cut where each sender range begins: its batches (in memory or spilled to an IPC
/// file, one block per batch), the first batch of every range with one more index at the end,
/// and the rows of every range.
struct Run {
    blocks: Blocks,
    starts: Vec<usize>,
    rows: Vec<u64>,
}

/// Where a run's batches are.
enum Blocks {
    Memory(Vec<RecordBatch>),
    Spilled(Spilled),
}

/// A run spilled as an IPC file of its own, stored at `offset..offset + len` of its sorter's
/// spill file. The sorters append their runs to one file each and the merge reads every run
/// through that file's one descriptor (positioned reads), so a write holds one file per sorter
/// open however many runs a big day in a small budget makes.
struct Spilled {
    file: Arc<File>,
    path: PathBuf,
    offset: u64,
    len: u64,
}

/// A sorter's spill file, created at its first spilled run; runs are appended.
struct SpillFile {
    file: Arc<File>,
    path: PathBuf,
    end: u64,
}

/// The merge's order as integers: (sender rank, ts, file rank, line). Ranks follow the byte
/// order of the names, the null sender first, so this is the order of `cmp_rows`.
type MergeKey = (u32, Option<i64>, u32, i64);

/// Ranks of every sender and file of the date by name, by id, and their names. The staged
/// records hold a sender's and a source file's id (into the [`StagedNames`] of their footer)
/// where the Parquet files hold the name: putting a run in order, spilling it and reading it
/// back move four bytes a row for each, and rows compare by integers.
struct Ranks {
    /// A sender id's rank, from 1 (0 for the null sender's slot: a null sender has no id, and
    /// rank 0 in the merge keys).
    senders: Vec<u32>,
    /// The highest sender rank.
    max_sender: u32,
    /// A file id's rank, from 1; files of one name share it.
    files: Vec<u32>,
    sender_names: Vec<Option<String>>,
    file_names: Vec<String>,
}

/// Ranks of names in byte order, from 1, equal names sharing one; 0 for `None`.
fn dense_ranks(names: &[Option<&str>]) -> Vec<u32> {
    let mut by_name: Vec<usize> = (0..names.len()).filter(|&i| names[i].is_some()).collect();
    by_name.sort_unstable_by_key(|&i| names[i]);
    let (mut rank, mut r, mut prev) = (vec![0u32; names.len()], 0u32, None);
    for i in by_name {
        if names[i] != prev {
            (r, prev) = (r + 1, names[i]);
        }
        rank[i] = r;
    }
    rank
}

impl Ranks {
    /// The ranks of the names of a staged file; an error when two ids name one sender (they
    /// would write one partition twice) or a sender has a name `extract` stages as null (its
    /// partition would be the null sender's).
    fn new(names: StagedNames) -> std::result::Result<Ranks, String> {
        let null_named = |s: &&String| s.is_empty() || s.as_str() == crate::layout::HIVE_NULL;
        if let Some(name) = names.senders.iter().flatten().find(null_named) {
            return Err(format!("a sender named {name:?}, which is staged as null"));
        }
        let senders: Vec<Option<&str>> = names.senders.iter().map(|s| s.as_deref()).collect();
        let senders = dense_ranks(&senders);
        let max_sender = senders.iter().copied().max().unwrap_or(0);
        let named = names.senders.iter().flatten().count();
        if max_sender as usize != named {
            return Err("a sender with two ids".into());
        }
        let files: Vec<Option<&str>> = names.files.iter().map(|f| Some(f.as_str())).collect();
        Ok(Ranks {
            senders,
            max_sender,
            files: dense_ranks(&files),
            sender_names: names.senders,
            file_names: names.files,
        })
    }

    /// Checks that every sender and file id of a staged batch has a name (a sender id the null
    /// sender's slot has none), and every kind code a kind. `sender_ranks` and `sorted_order`
    /// rely on it.
    fn check(&self, b: &RecordBatch) -> std::result::Result<(), String> {
        let kinds = b
            .column(C_KIND)
            .as_primitive::<arrow_array::types::UInt8Type>();
        if let Some(code) = kinds
            .values()
            .iter()
            .find(|&&k| k as usize >= Kind::ALL.len())
        {
            return Err(format!("kind code {code} names no kind"));
        }
        let senders = b.column(C_SENDER).as_primitive::<UInt32Type>();
        if let Some(id) = senders
            .iter()
            .flatten()
            .find(|&id| self.senders.get(id as usize).is_none_or(|&r| r == 0))
        {
            return Err(format!("sender id {id} names no sender"));
        }
        let files = b.column(C_FILE).as_primitive::<UInt32Type>();
        if let Some(id) = files
            .values()
            .iter()
            .find(|&&id| id as usize >= self.files.len())
        {
            return Err(format!("source file id {id} names no file"));
        }
        Ok(())
    }

    /// The sender rank of every row of a checked batch.
    fn sender_ranks(&self, b: &RecordBatch) -> Vec<u32> {
        let ids = b.column(C_SENDER).as_primitive::<UInt32Type>();
        match ids.nulls() {
            None => ids
                .values()
                .iter()
                .map(|&id| self.senders[id as usize])
                .collect(),
            Some(nulls) => ids
                .values()
                .iter()
                .zip(nulls.iter())
                .map(|(&id, valid)| if valid { self.senders[id as usize] } else { 0 })
                .collect(),
        }
    }

    /// The name of the sender at row `i` of a sorted batch (None: the null sender).
    fn sender(&self, b: &RecordBatch, i: usize) -> Result<Option<String>> {
        let ids = b.column(C_SENDER).as_primitive::<UInt32Type>();
        if ids.is_null(i) {
            return Ok(None);
        }
        match self.sender_names.get(ids.value(i) as usize) {
            Some(Some(name)) => Ok(Some(name.clone())),
            _ => Err(Error::Internal("merge: a sender id with no name".into())),
        }
    }

    /// The merge keys of a sorted batch's rows.
    fn keys(&self, b: &RecordBatch) -> Result<Vec<MergeKey>> {
        let senders = b.column(C_SENDER).as_primitive::<UInt32Type>();
        let files = b.column(C_FILE).as_primitive::<UInt32Type>();
        let ts = b.column(C_TS).as_primitive::<TimestampMicrosecondType>();
        let lines = b.column(C_LINE).as_primitive::<Int64Type>();
        let unknown = || Error::Internal("merge: a name id with no rank".into());
        let mut keys = Vec::with_capacity(b.num_rows());
        for i in 0..b.num_rows() {
            let sender = match senders.is_null(i) {
                true => 0,
                false => *self
                    .senders
                    .get(senders.value(i) as usize)
                    .ok_or_else(unknown)?,
            };
            let file = *self
                .files
                .get(files.value(i) as usize)
                .ok_or_else(unknown)?;
            keys.push((
                sender,
                (!ts.is_null(i)).then(|| ts.value(i)),
                file,
                lines.value(i),
            ));
        }
        Ok(keys)
    }
}

/// Reads the staged records, leaves out the rows set in `dropped` (a bitmap by staged row), and
/// cuts them into sorted runs of at most `run_bytes` each (or one staged batch, if larger); also
/// gives the ranks of the names behind the staged ids.
///
/// This thread reads and cuts the runs and hands them in turn to `sorters` threads, which sort
/// and spill them: in memory are the run being read and, per sorter, a run with its sorted copy
/// and the sort's bookkeeping. A date that fits in one run stays in memory.
fn make_runs(
    staged: &Path,
    dropped: Option<&[u64]>,
    sizes: RunSizes,
    sorters: usize,
    spill_dir: &Path,
) -> Result<(Vec<Run>, Ranks)> {
    let RunSizes {
        run_bytes,
        chunk_rows,
        parts,
    } = sizes;
    let file = File::open(staged).map_err(|e| Error::io("cannot read", staged, e))?;
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::Data(format!(
            "{}: unreadable staged records: {e}",
            staged.display()
        ))
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("cannot read", staged, e))?
        .len();
    // SAFETY: every batch goes through `check_batch` below before anything reads its values.
    // It checks what arrow's validation would (with simdutf8 for the text, where the standard
    // library's UTF-8 check was a tenth of write). A staged file damaged so that a buffer is
    // shorter than its metadata says makes the decoder panic while it builds the arrays (exit
    // 70), where arrow's validation would have reported it: the file is this tool's own,
    // written, fsynced and committed by `extract`.
    let reader = unsafe { IpcBlocks::open(Arc::new(file), 0, len) }.map_err(|e| unreadable(&e))?;
    if reader.schema().fields() != staged_schema().fields() {
        return Err(Error::Data(format!(
            "{}: unreadable staged records: not the staged schema of this version",
            staged.display()
        )));
    }
    let names: StagedNames = reader
        .metadata()
        .get(STAGED_NAMES_KEY)
        .ok_or_else(|| unreadable(&"no names for the ids of senders and files"))
        .and_then(|text| serde_json::from_str(text).map_err(|e| unreadable(&e)))?;
    let owned_ranks = Ranks::new(names).map_err(|e| unreadable(&e))?;
    let ranks = &owned_ranks;
    // Set by a sorter that failed, so that reading stops before that sorter's turn comes round.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let failed = &failed;
    let stopped = || Error::Internal("a run sorter stopped".into());
    std::thread::scope(|scope| {
        let (mut queues, mut handles) = (Vec::new(), Vec::new());
        for sorter in 0..sorters.max(1) {
            // (run number, its batches, whether it is the last, the ranks where ranges begin)
            let (tx, rx) = std::sync::mpsc::sync_channel::<RunJob>(0);
            queues.push(tx);
            handles.push(scope.spawn(move || -> Result<Vec<(usize, Run)>> {
                let mut runs = Vec::new();
                let mut spill = None;
                let mut scratch = Vec::new();
                for (n, batches, last, bounds) in rx {
                    let run = if n == 0 && last {
                        let ranks = (ranks, &mut scratch);
                        sort_run(batches, ranks, MERGE_BATCH_ROWS, &bounds).map(
                            |(sorted, starts, rows)| Run {
                                blocks: Blocks::Memory(sorted),
                                starts,
                                rows,
                            },
                        )
                    } else if batches.is_empty() {
                        continue;
                    } else {
                        let to = (spill_dir, sorter);
                        let ranks = (ranks, &mut scratch);
                        spill_run(batches, ranks, &mut spill, to, chunk_rows, &bounds)
                    };
                    match run {
                        Ok(run) => runs.push((n, run)),
                        Err(e) => {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
                Ok(runs)
            }));
        }
        // The sender ranks where ranges begin, chosen from the first run (a stretch of the day
        // whose senders stand for the day's) and the same for every run.
        let mut bounds: Option<Arc<Vec<u32>>> = None;
        let mut send = |n: usize, batches: Vec<RecordBatch>, last: bool| {
            let bounds = bounds
                .get_or_insert_with(|| Arc::new(range_bounds(&batches, parts, ranks)))
                .clone();
            queues[n % queues.len()]
                .send((n, batches, last, bounds))
                .map_err(|_| stopped())
        };
        let read = (|| -> Result<()> {
            let (mut cur, mut cur_bytes, mut first_row, mut n) = (Vec::new(), 0usize, 0u64, 0);
            let blocks = reader.num_batches();
            for batch in reader.batches(0..blocks) {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(stopped());
                }
                let batch = batch.map_err(|e| unreadable(&e))?;
                crate::record::check::check_batch(&batch).map_err(|e| unreadable(&e))?;
                ranks.check(&batch).map_err(|e| unreadable(&e))?;
                let rows = batch.num_rows() as u64;
                let batch = match dropped {
                    Some(bits) => without_dropped(batch, bits, first_row)?,
                    None => batch,
                };
                first_row += rows;
                // A run ends before the batch that would take it over `run_bytes`.
                let bytes = batch_bytes(&batch);
                if !cur.is_empty() && cur_bytes + bytes > run_bytes {
                    send(n, std::mem::take(&mut cur), false)?;
                    (cur_bytes, n) = (0, n + 1);
                }
                cur_bytes += bytes;
                cur.push(batch);
            }
            send(n, cur, true)
        })();
        drop(queues);
        let (mut runs, mut failed) = (Vec::new(), None);
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => runs.extend(r),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => failed = failed.or(Some(Error::Internal("a run sorter panicked".into()))),
            }
        }
        // A sorter's error explains a run that could not be handed over.
        if let Some(e) = failed {
            return Err(e);
        }
        read?;
        runs.sort_by_key(|(n, _)| *n);
        match runs.as_slice() {
            [
                (
                    _,
                    Run {
                        blocks: Blocks::Memory(_),
                        ..
                    },
                ),
            ] => tracing::info!("sorted in memory (one run)"),
            _ => tracing::info!(
                "sorted in {} runs spilled to disk (run size {} MiB, {sorters} sorters)",
                runs.len(),
                run_bytes >> 20
            ),
        }
        Ok(runs.into_iter().map(|(_, r)| r).collect())
    })
    .map(|runs| (runs, owned_ranks))
}

/// The rows of `batch` (staged rows `first_row..`) whose bits are not set in `dropped`.
fn without_dropped(batch: RecordBatch, dropped: &[u64], first_row: u64) -> Result<RecordBatch> {
    use crate::stage::dedupe::is_dropped;
    let rows = first_row..first_row + batch.num_rows() as u64;
    if !rows.clone().any(|r| is_dropped(dropped, r)) {
        return Ok(batch);
    }
    let keep: arrow_array::BooleanArray = rows.map(|r| Some(!is_dropped(dropped, r))).collect();
    arrow_select::filter::filter_record_batch(&batch, &keep)
        .map_err(|e| Error::Internal(format!("cannot filter staged records: {e}")))
}

/// Bytes a batch's rows occupy. Not `get_array_memory_size`: batches read from IPC share one
/// buffer per block, which that method counts once per column, hundreds of times too much.
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// What a sorter thread is handed: the run's number, its batches, whether it is the last run,
/// and the sender ranks where ranges begin.
type RunJob = (usize, Vec<RecordBatch>, bool, Arc<Vec<u32>>);

/// Sorts a run, then appends it to this sorter's spill file (created at the first run, as
/// `spill-K.arrow`) as an IPC file of its own, one block per batch.
fn spill_run(
    batches: Vec<RecordBatch>,
    ranks: (&Ranks, &mut Vec<u32>),
    spill: &mut Option<SpillFile>,
    (dir, sorter): (&Path, usize),
    chunk_rows: usize,
    bounds: &[u32],
) -> Result<Run> {
    let (sorted, starts, rows) = sort_run(batches, ranks, chunk_rows, bounds)?;
    if spill.is_none() {
        fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let path = dir.join(format!("spill-{sorter}.arrow"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("cannot create", &path, e))?;
        *spill = Some(SpillFile {
            file: Arc::new(file),
            path,
            end: 0,
        });
    }
    let spill = spill.as_mut().expect("created above");
    let path = &spill.path;
    let io_err = |e: arrow_schema::ArrowError| {
        Error::io("cannot write", path, std::io::Error::other(e.to_string()))
    };
    // Appended at `end`: this thread alone writes this file, and nobody reads it yet.
    let mut w =
        FileWriter::try_new(BufWriter::new(&*spill.file), &staged_schema()).map_err(io_err)?;
    for b in sorted {
        w.write(&b).map_err(io_err)?;
    }
    w.finish().map_err(io_err)?;
    let mut out = w.into_inner().map_err(io_err)?;
    let end =
        std::io::Seek::stream_position(&mut out).map_err(|e| Error::io("cannot write", path, e))?;
    let blocks = Blocks::Spilled(Spilled {
        file: spill.file.clone(),
        path: path.clone(),
        offset: spill.end,
        len: end - spill.end,
    });
    spill.end = end;
    Ok(Run {
        blocks,
        starts,
        rows,
    })
}

/// The sender ranks where about `parts` ranges of equal rows begin, from the rows of `batches`:
/// range 0 holds the null sender and the ranks before the first bound, range `i` the ranks from
/// bound `i - 1` on. A sender is never split, so a busy one makes its range larger and there may
/// be fewer ranges.
fn range_bounds(batches: &[RecordBatch], parts: usize, ranks: &Ranks) -> Vec<u32> {
    let mut rank_rows = vec![0u64; ranks.max_sender as usize + 1];
    for b in batches {
        for r in ranks.sender_ranks(b) {
            rank_rows[r as usize] += 1;
        }
    }
    let total: u64 = rank_rows.iter().sum();
    let parts = parts.max(1) as u64;
    let (mut bounds, mut before) = (Vec::new(), rank_rows[0]);
    for (rank, &rows) in rank_rows.iter().enumerate().skip(1) {
        if rows == 0 {
            continue;
        }
        // A range begins at the first sender with at least its share of the rows before it.
        if before * parts >= total * (bounds.len() as u64 + 1) {
            bounds.push(rank as u32);
        }
        before += rows;
    }
    bounds
}

/// The range of a sender rank (0: the null sender) among the ranges that begin at `bounds`.
fn range_of(bounds: &[u32], rank: u32) -> usize {
    bounds.partition_point(|&b| b <= rank)
}

/// Sorted batches cut where each range begins (`rows` per range, in order): the batches, and the
/// index of every range's first batch with one more index at the end.
fn cut_ranges(sorted: Vec<RecordBatch>, rows: &[u64]) -> Result<(Vec<RecordBatch>, Vec<usize>)> {
    let mut out = Vec::with_capacity(sorted.len() + rows.len());
    let mut starts = Vec::with_capacity(rows.len() + 1);
    let mut batches = sorted.into_iter().filter(|b| b.num_rows() > 0);
    let mut rest: Option<RecordBatch> = None;
    for &n in rows {
        starts.push(out.len());
        let mut left = n as usize;
        while left > 0 {
            let b = rest.take().or_else(|| batches.next()).ok_or_else(|| {
                Error::Internal("a sender range has more rows than its run".into())
            })?;
            if b.num_rows() <= left {
                left -= b.num_rows();
                out.push(b);
            } else {
                out.push(b.slice(0, left));
                rest = Some(b.slice(left, b.num_rows() - left));
                left = 0;
            }
        }
    }
    starts.push(out.len());
    if rest.is_some() || batches.next().is_some() {
        return Err(Error::Internal(
            "a run has more rows than its sender ranges".into(),
        ));
    }
    Ok((out, starts))
}

/// Compares two rows by (sender, ts, source_file, source_line) by name; nulls first. The
/// reference order that `sorted_order` and the merge's integer keys are tested against.
#[cfg(test)]
fn cmp_rows(names: &StagedNames, a: &RecordBatch, i: usize, b: &RecordBatch, j: usize) -> Ordering {
    let sender = |x: &RecordBatch, i: usize| {
        let ids = x.column(C_SENDER).as_primitive::<UInt32Type>();
        (!ids.is_null(i)).then(|| names.senders[ids.value(i) as usize].as_deref().unwrap())
    };
    let file = |x: &RecordBatch, i: usize| {
        let ids = x.column(C_FILE).as_primitive::<UInt32Type>();
        names.files[ids.value(i) as usize].as_str()
    };
    sender(a, i)
        .cmp(&sender(b, j))
        .then_with(|| {
            let ta = a.column(C_TS).as_primitive::<TimestampMicrosecondType>();
            let tb = b.column(C_TS).as_primitive::<TimestampMicrosecondType>();
            let a_t = (!ta.is_null(i)).then(|| ta.value(i));
            let b_t = (!tb.is_null(j)).then(|| tb.value(j));
            a_t.cmp(&b_t)
        })
        .then_with(|| file(a, i).cmp(file(b, j)))
        .then_with(|| {
            let la = a.column(C_LINE).as_primitive::<Int64Type>();
            let lb = b.column(C_LINE).as_primitive::<Int64Type>();
            la.value(i).cmp(&lb.value(j))
        })
}

/// A run's order, from [`sorted_order`].
struct RunOrder {
    /// The rows in order, as (batch, row) pairs.
    order: Vec<(usize, usize)>,
    /// The place of every row's sender among the run's senders in rank order (0 for the first),
    /// one vector per batch.
    senders: Vec<Vec<u32>>,
    /// The rows of every such place.
    place_rows: Vec<usize>,
    /// The day's sender rank at every place.
    place_ranks: Vec<u32>,
}

impl RunOrder {
    /// The rows of every range that begins at `bounds`.
    fn range_rows(&self, bounds: &[u32]) -> Vec<u64> {
        let mut rows = vec![0u64; bounds.len() + 1];
        for (&rank, &n) in self.place_ranks.iter().zip(&self.place_rows) {
            rows[range_of(bounds, rank)] += n as u64;
        }
        rows
    }
}

/// The row order of a run's (checked) batches by (sender, ts, source_file, source_line) by
/// name, nulls first, ties in row order: the order of [`cmp_rows`], computed on integer keys.
/// `scratch` (kept by a sorter from run to run, and left as it was found) maps the day's sender
/// ranks to the run's: 4 bytes per sender of the day, once per sorter, where everything else
/// grows with the run's own senders.
fn sorted_order(batches: &[RecordBatch], ranks: &Ranks, scratch: &mut Vec<u32>) -> RunOrder {
    const ABSENT: u32 = u32::MAX;
    let mut senders: Vec<Vec<u32>> = batches.iter().map(|b| ranks.sender_ranks(b)).collect();
    let day = ranks.max_sender as usize + 1;
    if scratch.len() < day {
        scratch.resize(day, ABSENT);
    }
    // The run's senders in rank order, then each row's sender by its place among them.
    let mut place_ranks = Vec::new();
    for &r in senders.iter().flatten() {
        if scratch[r as usize] == ABSENT {
            scratch[r as usize] = 0;
            place_ranks.push(r);
        }
    }
    place_ranks.sort_unstable();
    for (place, &r) in place_ranks.iter().enumerate() {
        scratch[r as usize] = place as u32;
    }
    for r in senders.iter_mut().flatten() {
        *r = scratch[*r as usize];
    }
    for &r in &place_ranks {
        scratch[r as usize] = ABSENT;
    }
    // The rows are first placed by sender (a counting sort over the run's senders), then each
    // sender's rows are sorted by (ts, file, line, row order): a sort of the whole run on
    // (sender, ...) did the same with more comparisons and longer keys.
    // First the place where each sender's rows start, then (moved on as rows are placed) where
    // they end.
    let mut place = vec![0usize; place_ranks.len()];
    for &p in senders.iter().flatten() {
        place[p as usize] += 1;
    }
    let place_rows = place.clone();
    let mut rows = 0;
    for p in place.iter_mut() {
        (*p, rows) = (rows, rows + *p);
    }
    let mut keys: Vec<(Option<i64>, u32, i64, u32, u32)> = vec![(None, 0, 0, 0, 0); rows];
    for (bi, b) in batches.iter().enumerate() {
        let ts = b.column(C_TS).as_primitive::<TimestampMicrosecondType>();
        let files = b.column(C_FILE).as_primitive::<UInt32Type>().values();
        let lines = b.column(C_LINE).as_primitive::<Int64Type>();
        for (i, &sender) in senders[bi].iter().enumerate() {
            let at = &mut place[sender as usize];
            keys[*at] = (
                (!ts.is_null(i)).then(|| ts.value(i)),
                ranks.files[files[i] as usize],
                lines.value(i),
                bi as u32,
                i as u32,
            );
            *at += 1;
        }
    }
    let mut start = 0;
    for end in place {
        let _handed_over = sort_nearly_sorted(&mut keys[start..end]);
        start = end;
    }
    let order = keys
        .into_iter()
        .map(|k| (k.3 as usize, k.4 as usize))
        .collect();
    RunOrder {
        order,
        senders,
        place_rows,
        place_ranks,
    }
}

/// Sorts `v`, fast when it is nearly in order already: a sender's rows arrive about in time
/// order (a log is written as messages come), so an insertion sort moves each row a few places
/// at most where the unstable sort compared each about log2(n) times (a tenth of write on the
/// benchmark's day, whose times are in order by the second). Once it has moved rows more than
/// eight places each on average (input far from order, such as a busy sender's many rows within
/// each second in random order), it hands over to the unstable sort, so it never costs much more
/// than that. True when it handed over.
fn sort_nearly_sorted<T: Ord + Copy>(v: &mut [T]) -> bool {
    let mut moves = 0;
    for i in 1..v.len() {
        let x = v[i];
        if v[i - 1] <= x {
            continue;
        }
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
        moves += i - j;
        if moves > 8 * i + 64 {
            v.sort_unstable();
            return true;
        }
    }
    false
}

/// Sorts the rows of a run into batches of at most `chunk_rows` rows, cut where each range that
/// begins at `bounds` begins: the batches, the index of every range's first batch (one more at
/// the end) and the rows of every range. The run's batches are dropped once their rows are
/// copied into order.
fn sort_run(
    batches: Vec<RecordBatch>,
    (ranks, scratch): (&Ranks, &mut Vec<u32>),
    chunk_rows: usize,
    bounds: &[u32],
) -> Result<(Vec<RecordBatch>, Vec<usize>, Vec<u64>)> {
    let run = sorted_order(&batches, ranks, scratch);
    let rows = run.range_rows(bounds);
    let sorted = crate::stage::reorder::reorder(
        &staged_schema(),
        &batches,
        &run.order,
        Some(&run.senders),
        chunk_rows,
    )?;
    drop(run);
    drop(batches);
    let (sorted, starts) = cut_ranges(sorted, &rows)?;
    Ok((sorted, starts, rows))
}

/// A cursor over one sender range of a sorted run, with the merge keys of its current batch.
struct Cursor {
    batches: Box<dyn Iterator<Item = Result<RecordBatch>>>,
    batch: RecordBatch,
    keys: Vec<MergeKey>,
    row: usize,
}

impl Cursor {
    /// A cursor over the rows of `range` in `run`; None when it has none.
    fn open(run: &Run, range: usize, ranks: &Ranks) -> Result<Option<Cursor>> {
        let (first, end) = (run.starts[range], run.starts[range + 1]);
        if first == end {
            return Ok(None);
        }
        let mut batches: Box<dyn Iterator<Item = Result<RecordBatch>>> = match &run.blocks {
            Blocks::Memory(v) => {
                let range = v
                    .get(first..end)
                    .ok_or_else(|| Error::Internal("a sender range past its run's end".into()))?
                    .to_vec();
                Box::new(range.into_iter().map(Ok))
            }
            Blocks::Spilled(spilled) => {
                let path = spilled.path.clone();
                let cannot = |e: &dyn std::fmt::Display| {
                    Error::io("cannot read", &path, std::io::Error::other(e.to_string()))
                };
                // SAFETY: `spill_run` wrote this run moments ago in this call, at these offsets of
                // its sorter's spill file in the date's private temporary directory, from batches
                // that were validated when the staged records were read; validating them again
                // (UTF-8 above all) was a tenth of write.
                let r =
                    unsafe { IpcBlocks::open(spilled.file.clone(), spilled.offset, spilled.len) }
                        .map_err(|e| cannot(&e))?;
                if r.num_batches() < end {
                    return Err(cannot(&"fewer blocks than were written"));
                }
                Box::new(r.batches(first..end).map(move |b| {
                    b.map_err(|e| Error::io("cannot read", &path, std::io::Error::other(e)))
                }))
            }
        };
        loop {
            match batches.next() {
                None => return Ok(None),
                Some(b) => {
                    let b = b?;
                    if b.num_rows() > 0 {
                        return Ok(Some(Cursor {
                            batches,
                            keys: ranks.keys(&b)?,
                            batch: b,
                            row: 0,
                        }));
                    }
                }
            }
        }
    }

    /// Moves to the next row; false when the range is exhausted.
    fn advance(&mut self, ranks: &Ranks) -> Result<bool> {
        self.row += 1;
        while self.row >= self.batch.num_rows() {
            match self.batches.next() {
                None => return Ok(false),
                Some(b) => {
                    self.batch = b?;
                    self.keys = ranks.keys(&self.batch)?;
                    self.row = 0;
                }
            }
        }
        Ok(true)
    }

    fn key(&self) -> MergeKey {
        self.keys[self.row]
    }
}

/// Heap entry: a cursor's current row, the smallest (key, cursor) on top.
#[derive(PartialEq, Eq)]
struct HeapItem {
    key: MergeKey,
    cursor: usize,
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.key, o.cursor).cmp(&(self.key, self.cursor))
    }
}

/// The files one lane writes, on the lane's own thread: the sender's file being written, its
/// row group being encoded, and the files finished (handed to the sync thread).
///
/// Rows come as the merge hands them out, in pieces of at most `MERGE_BATCH_ROWS` rows of one
/// sender, cut at row groups' ends; each piece is gathered and written to the row group's column
/// writers, as `ArrowWriter` writes the batches it is given. A file's bytes depend only on its
/// rows (pieces are cut where the sender's rows reach a multiple of `MERGE_BATCH_ROWS` or a row
/// group's end), never on the lane, the runs or the budget.
struct LaneFiles<'a> {
    dir: &'a Path,
    factory: &'a ArrowRowGroupWriterFactory,
    codec: Codec,
    schema: arrow_schema::SchemaRef,
    /// The source files' names by id.
    file_names: &'a [String],
    synced: std::sync::mpsc::SyncSender<(File, PathBuf)>,
    /// Lanes with no range left, which encode row groups handed to them (`None`: this lane
    /// encodes all its row groups itself).
    helpers: Option<&'a Helpers>,
    file: Option<SenderFile>,
    group: Option<Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>>,
    /// The current row group's gathered rows, when a helper is to encode it.
    handed: Option<Vec<RecordBatch>>,
    group_rows: usize,
    /// The next row group's number in the current file.
    row_group: usize,
    /// The current file's row groups not yet appended to it, in order, with their rows.
    pending: std::collections::VecDeque<(Pending, u64)>,
    files: Vec<OutputFile>,
}

/// A row group of the current file waiting to be appended to it.
enum Pending {
    /// Encoded by this lane.
    Here(Vec<ArrowColumnChunk>),
    /// Handed to a helper, which encodes it.
    Away(Arc<Encoded>),
}

/// Row groups of one file waiting to be appended, at most: a lane that has handed groups over
/// goes on with the next ones and appends the handed ones as they come back.
const MAX_PENDING_GROUPS: usize = 2;

impl<'a> LaneFiles<'a> {
    fn new(
        dir: &'a Path,
        (factory, codec, file_names): (&'a ArrowRowGroupWriterFactory, Codec, &'a [String]),
        synced: std::sync::mpsc::SyncSender<(File, PathBuf)>,
        helpers: Option<&'a Helpers>,
    ) -> LaneFiles<'a> {
        LaneFiles {
            dir,
            factory,
            codec,
            schema: parquet_schema(),
            file_names,
            synced,
            helpers,
            file: None,
            group: None,
            handed: None,
            group_rows: 0,
            row_group: 0,
            pending: std::collections::VecDeque::new(),
            files: Vec::new(),
        }
    }

    /// Starts a sender's file.
    fn open(&mut self, sender: Option<String>) -> Result<()> {
        if self.file.is_some() {
            return Err(Error::Internal(
                "a file opened before the last was closed".into(),
            ));
        }
        self.file = Some(SenderFile::create(self.dir, sender, self.codec)?);
        self.row_group = 0;
        Ok(())
    }

    /// Adds the current sender's next rows (`picks` into `sources`), cut into row groups of
    /// `ROW_GROUP_ROWS`.
    fn rows(&mut self, sources: &[RecordBatch], mut picks: &[(usize, usize)]) -> Result<()> {
        while !picks.is_empty() {
            let room = ROW_GROUP_ROWS - self.group_rows;
            let (piece, rest) = picks.split_at(room.min(picks.len()));
            let batch = gather(&self.schema, sources, piece, self.file_names)?;
            if self.group.is_none() && self.handed.is_none() {
                // A sender that already filled a row group has more to come: its next row group
                // goes to a helper if one is idle (handing over a file's only, partly filled,
                // row group would leave this lane waiting for it at the file's end).
                if self.row_group > 0 && self.helpers.is_some_and(Helpers::reserve) {
                    self.handed = Some(Vec::new());
                } else {
                    let w = self
                        .factory
                        .create_column_writers(self.row_group)
                        .map_err(encoding_err)?;
                    self.group = Some(w);
                }
                self.row_group += 1;
            }
            if let Some(handed) = &mut self.handed {
                handed.push(batch);
            } else if let Some(writers) = &mut self.group {
                encode_batch(writers, &self.schema, &batch)?;
            }
            self.group_rows += piece.len();
            if self.group_rows == ROW_GROUP_ROWS {
                self.end_row_group()?;
            }
            picks = rest;
        }
        Ok(())
    }

    /// Ends the current row group, if any: closes its writers, or hands its rows to a helper;
    /// then appends the row groups that are ready, in order.
    fn end_row_group(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.group_rows) as u64;
        if let Some(batches) = self.handed.take() {
            let helpers = self
                .helpers
                .ok_or_else(|| Error::Internal("a row group handed to no helper".into()))?;
            let done = helpers.submit(self.row_group - 1, batches);
            self.pending.push_back((Pending::Away(done), rows));
        } else if let Some(writers) = self.group.take() {
            self.pending
                .push_back((Pending::Here(close_writers(writers)?), rows));
        }
        self.append_ready(false)
    }

    /// Appends the pending row groups that are ready (with `all`, every one, waiting for those
    /// a helper is encoding and encoding here those none has taken; likewise when too many are
    /// pending).
    fn append_ready(&mut self, all: bool) -> Result<()> {
        while let Some((front, _)) = self.pending.front() {
            let wait = all || self.pending.len() > MAX_PENDING_GROUPS;
            if let Pending::Away(done) = front
                && !wait
                && !done.is_ready()
            {
                break;
            }
            let (group, rows) = self.pending.pop_front().expect("front exists");
            let chunks = match group {
                Pending::Here(chunks) => chunks,
                Pending::Away(done) => self
                    .helpers
                    .ok_or_else(|| Error::Internal("a row group handed to no helper".into()))?
                    .take(&done, self.factory)?,
            };
            self.file
                .as_mut()
                .ok_or_else(|| Error::Internal("a row group before its file".into()))?
                .append(chunks, rows)?;
        }
        Ok(())
    }

    /// Ends the current sender's file: its last row group and its footer; the sync thread
    /// fsyncs it.
    fn close(&mut self) -> Result<()> {
        self.end_row_group()?;
        self.append_ready(true)?;
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Internal("a close before its file".into()))?;
        let (handle, path, out) = file.finish()?;
        self.synced
            .send((handle, path))
            .map_err(|_| Error::Internal("the file syncer stopped".into()))?;
        self.files.push(out);
        Ok(())
    }
}

fn encoding_err(e: parquet::errors::ParquetError) -> Error {
    Error::Internal(format!("encoding rows: {e}"))
}

/// Encodes a batch of the Parquet schema into a row group's column writers.
fn encode_batch(
    writers: &mut [parquet::arrow::arrow_writer::ArrowColumnWriter],
    schema: &arrow_schema::SchemaRef,
    batch: &RecordBatch,
) -> Result<()> {
    let mut next = writers.iter_mut();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for leaf in compute_leaves(field.as_ref(), column).map_err(encoding_err)? {
            next.next()
                .ok_or_else(|| Error::Internal("a column writer is missing".into()))?
                .write(&leaf)
                .map_err(encoding_err)?;
        }
    }
    Ok(())
}

/// Closes a row group's column writers: its column chunks, compressed.
fn close_writers(
    writers: Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>,
) -> Result<Vec<ArrowColumnChunk>> {
    writers
        .into_iter()
        .map(|w| w.close())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(encoding_err)
}

/// Lanes that have no range left to merge, encoding row groups that lanes still merging hand
/// them, so that a range holding most of the day's rows (one busy sender's) keeps every core
/// busy. The bytes are the same whoever encodes a row group.
///
/// A lane reserves an idle helper when it starts gathering a row group for it, so that at most
/// one handed-over row group per helper is held unencoded; and a lane that needs a row group it
/// handed over while no helper has taken it yet takes it back and encodes it itself, so no lane
/// ever waits on a queue.
struct Helpers {
    state: std::sync::Mutex<HelperState>,
    wake: std::sync::Condvar,
    /// Row groups handed over, and encoded by helpers (the others were taken back).
    handed: std::sync::atomic::AtomicUsize,
    encoded: std::sync::atomic::AtomicUsize,
}

struct HelperState {
    jobs: std::collections::VecDeque<Arc<Encoded>>,
    /// Lanes waiting for a row group to encode.
    idle: usize,
    /// Row groups being gathered for a helper.
    reserved: usize,
    /// Lanes still merging their ranges.
    merging: usize,
    stopped: bool,
}

/// A row group handed over: its gathered rows until someone encodes them, then its column
/// chunks.
struct Encoded {
    row_group: usize,
    state: std::sync::Mutex<EncodedState>,
    ready: std::sync::Condvar,
}

enum EncodedState {
    Queued(Vec<RecordBatch>),
    Encoding,
    Done(Result<Vec<ArrowColumnChunk>>),
    Taken,
}

impl Encoded {
    fn lock(&self) -> std::sync::MutexGuard<'_, EncodedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_ready(&self) -> bool {
        matches!(*self.lock(), EncodedState::Done(_))
    }

    /// The gathered rows, to be encoded by the caller, unless someone took them already.
    fn claim(&self) -> Option<Vec<RecordBatch>> {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, EncodedState::Encoding) {
            EncodedState::Queued(batches) => Some(batches),
            other => {
                *st = other;
                None
            }
        }
    }

    fn put(&self, chunks: Result<Vec<ArrowColumnChunk>>) {
        *self.lock() = EncodedState::Done(chunks);
        self.ready.notify_all();
    }
}

/// Encodes a row group's gathered rows into its column chunks; a panic is an error.
fn encode_group(
    factory: &ArrowRowGroupWriterFactory,
    row_group: usize,
    batches: &[RecordBatch],
) -> Result<Vec<ArrowColumnChunk>> {
    let encode = || -> Result<Vec<ArrowColumnChunk>> {
        let schema = parquet_schema();
        let mut writers = factory
            .create_column_writers(row_group)
            .map_err(encoding_err)?;
        for batch in batches {
            encode_batch(&mut writers, &schema, batch)?;
        }
        close_writers(writers)
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
        .unwrap_or_else(|_| Err(Error::Internal("a row group encoder panicked".into())))
}

impl Helpers {
    fn new(lanes: usize) -> Helpers {
        Helpers {
            state: std::sync::Mutex::new(HelperState {
                jobs: std::collections::VecDeque::new(),
                idle: 0,
                reserved: 0,
                merging: lanes,
                stopped: false,
            }),
            wake: std::sync::Condvar::new(),
            handed: std::sync::atomic::AtomicUsize::new(0),
            encoded: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HelperState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves an idle helper for the row group about to be gathered, if one is free.
    fn reserve(&self) -> bool {
        let mut st = self.lock();
        let free = !st.stopped && st.idle > st.jobs.len() + st.reserved;
        st.reserved += usize::from(free);
        free
    }

    /// Queues row group `row_group` (its gathered rows) for the helper reserved for it (tests
    /// also queue without a reservation, as if its helper had left).
    fn submit(&self, row_group: usize, batches: Vec<RecordBatch>) -> Arc<Encoded> {
        let job = Arc::new(Encoded {
            row_group,
            state: std::sync::Mutex::new(EncodedState::Queued(batches)),
            ready: std::sync::Condvar::new(),
        });
        self.handed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.lock();
        st.reserved = st.reserved.saturating_sub(1);
        if !st.stopped {
            st.jobs.push_back(job.clone());
            self.wake.notify_one();
        }
        job
    }

    /// A handed-over row group's column chunks: encoded here when no helper has taken it yet
    /// (or the write stopped), else once its helper is done.
    fn take(
        &self,
        job: &Arc<Encoded>,
        factory: &ArrowRowGroupWriterFactory,
    ) -> Result<Vec<ArrowColumnChunk>> {
        if let Some(batches) = job.claim() {
            // Counted as reserved while its rows are held, as they were while queued.
            {
                let mut st = self.lock();
                st.jobs.retain(|j| !Arc::ptr_eq(j, job));
                st.reserved += 1;
            }
            let chunks = encode_group(factory, job.row_group, &batches);
            drop(batches);
            let mut st = self.lock();
            st.reserved = st.reserved.saturating_sub(1);
            return chunks;
        }
        let mut st = job.lock();
        loop {
            match std::mem::replace(&mut *st, EncodedState::Taken) {
                EncodedState::Done(chunks) => return chunks,
                EncodedState::Taken => {
                    return Err(Error::Internal("a row group taken twice".into()));
                }
                other => {
                    *st = other;
                    st = job.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// A lane has merged its last range (or failed): once no lane merges, helpers stop.
    fn lane_done(&self) {
        let mut st = self.lock();
        st.merging = st.merging.saturating_sub(1);
        self.wake.notify_all();
    }

    /// The write failed: helpers stop, and lanes encode what they handed over themselves.
    fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        st.jobs.clear();
        self.wake.notify_all();
    }

    /// Encodes handed-over row groups until no lane merges any more.
    fn serve(&self, factory: &ArrowRowGroupWriterFactory) {
        let mut st = self.lock();
        st.idle += 1;
        loop {
            if let Some(job) = st.jobs.pop_front() {
                st.idle -= 1;
                drop(st);
                if let Some(batches) = job.claim() {
                    let chunks = encode_group(factory, job.row_group, &batches);
                    drop(batches);
                    if chunks.is_ok() {
                        self.encoded
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    job.put(chunks);
                }
                st = self.lock();
                st.idle += 1;
            } else if st.merging == 0 || st.stopped {
                st.idle -= 1;
                return;
            } else {
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// Tells the helpers when a lane ends, however it ends; a lane that panicked stops the write
/// (the other lanes, through the flag, and the helpers).
struct LaneDone<'a>(&'a Helpers, &'a std::sync::atomic::AtomicBool);

impl Drop for LaneDone<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.1.store(true, std::sync::atomic::Ordering::Relaxed);
            self.0.stop();
        }
        self.0.lane_done();
    }
}

/// Lanes for the write: one per core as the memory budget allows. The merge has half the budget:
/// a quarter for the batches of the runs (split between the lanes), and a quarter for the lanes'
/// row groups in flight, each a piece of at most `MERGE_BATCH_ROWS` gathered rows, the row
/// group's pages, compressed but for the pages being filled, and the file's buffer (5-8 MiB).
fn lanes(budget: usize) -> usize {
    crate::stage::threads_within(budget / 4, 8 << 20)
}

/// Merges the runs and writes one Parquet file per sender, on `lanes` threads.
///
/// Every run is cut at the same sender names into ranges, so the ranges are independent: each
/// is a merge of its stretch of every run into its senders' files. The lanes take ranges in
/// turn, the largest first, and merge, encode and write each on their own thread, so that every
/// core works without waiting on another (a merge thread feeding encoder threads left a quarter
/// of the cores idle in hand-offs). A sync thread fsyncs finished files off the lanes' way.
fn merge_and_write(
    runs: Vec<Run>,
    ranks: &Ranks,
    dir: &Path,
    (lanes, codec, handoff): (usize, Codec, bool),
    progress: &indicatif::ProgressBar,
) -> Result<Vec<OutputFile>> {
    // Column writers for every file's row groups: all files share the schema and properties.
    let (_, factory) = parquet_file_writer(std::io::sink(), codec)
        .map_err(|e| Error::Internal(format!("parquet writer: {e}")))?;
    let parts = runs.first().map_or(0, |r| r.rows.len());
    if runs
        .iter()
        .any(|r| r.rows.len() != parts || r.starts.len() != parts + 1)
    {
        return Err(Error::Internal("runs cut into different ranges".into()));
    }
    let mut ranges: Vec<(u64, usize)> = (0..parts)
        .map(|i| (runs.iter().map(|r| r.rows[i]).sum(), i))
        .filter(|&(rows, _)| rows > 0)
        .collect();
    ranges.sort_unstable_by(|a, b| b.cmp(a));
    let handoff = handoff && lanes > 1;
    // Lanes beyond the ranges only help, so they are started only when they can.
    let merging = lanes.clamp(1, ranges.len().max(1));
    let lanes = if handoff { lanes } else { merging };
    let total: u64 = ranges.iter().map(|r| r.0).sum();
    if let Some(&(largest, _)) = ranges.first() {
        tracing::info!(
            "merging {} sender ranges on {merging} lanes; the largest holds {:.0}% of the rows",
            ranges.len(),
            100.0 * largest as f64 / total.max(1) as f64
        );
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let helpers = Helpers::new(lanes);
    let started = Instant::now();
    let (runs, ranges, factory, next, stop, helpers, started) =
        (&runs, &ranges, &factory, &next, &stop, &helpers, &started);
    std::thread::scope(|scope| {
        // Finished files waiting for their fsync (each holds only a descriptor).
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<(File, PathBuf)>(64);
        let syncer = scope.spawn(move || -> Result<()> {
            for (file, path) in sync_rx {
                file.sync_all()
                    .map_err(|e| Error::io("cannot sync", &path, e))?;
                drop(file);
                let parent = path.parent().expect("file has a parent");
                fsync_path(parent).map_err(|e| Error::io("cannot sync", parent, e))?;
            }
            Ok(())
        });
        let handles: Vec<_> = (0..lanes)
            .map(|_| {
                let sync_tx = sync_tx.clone();
                scope.spawn(move || -> Result<Vec<OutputFile>> {
                    let merged = {
                        // Dropped, so that helpers know this lane merges no more, before it
                        // helps.
                        let _done = LaneDone(helpers, stop);
                        let mut files = LaneFiles::new(
                            dir,
                            (factory, codec, &ranks.file_names),
                            sync_tx,
                            handoff.then_some(helpers),
                        );
                        let mut merged = Ok(());
                        while merged.is_ok() && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(_, range)) = ranges.get(i) else {
                                break;
                            };
                            merged = merge_range(runs, range, ranks, &mut files, progress, stop);
                        }
                        merged.map(|()| files.files)
                    };
                    match merged {
                        Ok(files) => {
                            tracing::debug!(
                                "a lane merged its last range at {:.2}s",
                                started.elapsed().as_secs_f64()
                            );
                            if handoff {
                                helpers.serve(factory);
                            }
                            Ok(files)
                        }
                        Err(e) => {
                            stop.store(true, std::sync::atomic::Ordering::Relaxed);
                            helpers.stop();
                            Err(e)
                        }
                    }
                })
            })
            .collect();
        drop(sync_tx);
        let (mut files, mut failed) = (Vec::new(), None);
        for h in handles {
            match h.join() {
                Ok(Ok(f)) => files.extend(f),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => failed = failed.or(Some(Error::Internal("a write lane panicked".into()))),
            }
        }
        tracing::debug!("lanes done at {:.2}s", started.elapsed().as_secs_f64());
        let synced = syncer
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the file syncer panicked".into())));
        tracing::debug!("files synced at {:.2}s", started.elapsed().as_secs_f64());
        // The syncer's error first: a lane stops because the syncer stopped, not the reverse.
        synced?;
        let handed = helpers.handed.load(std::sync::atomic::Ordering::Relaxed);
        if handed > 0 {
            tracing::info!(
                "{handed} row groups handed to lanes with no range left, {} encoded by them",
                helpers.encoded.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(files),
        }
    })
}

/// Merges one sender range of every run into its senders' files; stops early, leaving the files
/// unfinished, once `stop` is set (another lane failed, so the write fails).
fn merge_range(
    runs: &[Run],
    range: usize,
    ranks: &Ranks,
    out: &mut LaneFiles<'_>,
    progress: &indicatif::ProgressBar,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let mut cursors = Vec::new();
    for r in runs {
        if let Some(c) = Cursor::open(r, range, ranks)? {
            cursors.push(c);
        }
    }
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter().enumerate() {
        heap.push(HeapItem {
            key: c.key(),
            cursor: i,
        });
    }
    // The sender rank of the file being written.
    let mut current: Option<u32> = None;
    // Pending output rows as (source batch slot, row); slots index into `sources`.
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut picks: Vec<(usize, usize)> = Vec::new();
    let flush = |sources: &mut Vec<RecordBatch>,
                 picks: &mut Vec<(usize, usize)>,
                 out: &mut LaneFiles<'_>|
     -> Result<()> {
        progress.inc(picks.len() as u64);
        out.rows(sources, picks)?;
        sources.clear();
        picks.clear();
        Ok(())
    };
    let mut next = heap.pop();
    while let Some(top) = next {
        let c = &mut cursors[top.cursor];
        if current != Some(top.key.0) {
            if current.is_some() {
                flush(&mut sources, &mut picks, out)?;
                out.close()?;
            }
            current = Some(top.key.0);
            out.open(ranks.sender(&c.batch, c.row)?)?;
        }
        let slot = match sources
            .iter()
            .rposition(|b| Arc::ptr_eq(&b.columns()[0], &c.batch.columns()[0]))
        {
            Some(s) => s,
            None => {
                sources.push(c.batch.clone());
                sources.len() - 1
            }
        };
        // This row and those after it in the cursor's batch that still come before every other
        // cursor's row (a sender's rows mostly come in long stretches of one run), of the same
        // sender, as far as the piece has room: taken together, as one row at a time would take
        // them.
        let first = heap.peek().map(|h| (h.key, h.cursor));
        let last = (c.row + MERGE_BATCH_ROWS - picks.len()).min(c.keys.len());
        let mut end = c.row + 1;
        while end < last {
            let key = c.keys[end];
            if key.0 != top.key.0 || first.is_some_and(|f| (key, top.cursor) > f) {
                break;
            }
            end += 1;
        }
        picks.extend((c.row..end).map(|row| (slot, row)));
        c.row = end - 1;
        if picks.len() >= MERGE_BATCH_ROWS {
            flush(&mut sources, &mut picks, out)?;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
        }
        // The cursor's next row: taken next if it still comes first, else it trades places with
        // the heap's first.
        next = if c.advance(ranks)? {
            let item = HeapItem {
                key: c.key(),
                cursor: top.cursor,
            };
            match heap.peek_mut() {
                Some(mut first) if *first > item => Some(std::mem::replace(&mut *first, item)),
                _ => Some(item),
            }
        } else {
            heap.pop()
        };
    }
    if current.is_some() {
        flush(&mut sources, &mut picks, out)?;
        out.close()?;
    }
    Ok(())
}

/// A file that hashes the bytes written to it, so a written file need not be read back.
struct HashingFile {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl std::io::Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writer settings: the configured codec, statistics (but for free text), fixed `created_by` so
/// files are reproducible.
pub fn writer_properties(codec: Codec) -> WriterProperties {
    let mut b = WriterProperties::builder();
    // Columns whose values rarely repeat in a sender's day: dictionary encoding would only fill
    // a dictionary, fall back to plain, and cost about a tenth of write in hashing.
    for column in ["ts", "message", "kafka_offset", "source_line"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Integers that mostly grow within a file (rows are in time order, offsets and lines follow
    // it): stored as deltas, a few bits a value, where plain took 8 bytes for zstd to compress.
    for column in ["ts", "kafka_offset", "source_line"] {
        b = b.set_column_encoding(
            ColumnPath::from(column),
            parquet::basic::Encoding::DELTA_BINARY_PACKED,
        );
    }
    // Free text: no reader prunes pages by the smallest and largest message, and finding them
    // compared every message with two others (a twentieth of write).
    for column in ["message", "extra"] {
        b = b.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    b.set_compression(parquet_codec(codec))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("chatetl {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The Parquet codec of a configured one (its zstd levels are checked when settings are read).
pub fn parquet_codec(codec: Codec) -> Compression {
    match codec {
        Codec::Zstd(level) => {
            Compression::ZSTD(ZstdLevel::try_new(i32::from(level)).unwrap_or_default())
        }
        Codec::Snappy => Compression::SNAPPY,
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::None => Compression::UNCOMPRESSED,
    }
}

/// A Parquet file writer over `w` with the files' schema and properties (`ArrowWriter` writes the
/// header and, in the footer, the Arrow schema readers use), and the factory of column writers
/// for its row groups.
fn parquet_file_writer<W: std::io::Write + Send>(
    w: W,
    codec: Codec,
) -> parquet::errors::Result<(SerializedFileWriter<W>, ArrowRowGroupWriterFactory)> {
    ArrowWriter::try_new(w, parquet_schema(), Some(writer_properties(codec)))?
        .into_serialized_writer()
}

/// One sender's Parquet file being written, row group by row group.
struct SenderFile {
    sender: Option<String>,
    rel: String,
    path: PathBuf,
    writer: SerializedFileWriter<BufWriter<HashingFile>>,
    rows: u64,
}

impl SenderFile {
    fn create(dir: &Path, sender: Option<String>, codec: Codec) -> Result<SenderFile> {
        let rel = format!("{}/part-00000.parquet", sender_dir_name(sender.as_deref()));
        let path = dir.join(&rel);
        let parent = path.parent().expect("file has a parent");
        fs::create_dir(parent).map_err(|e| Error::io("cannot create", parent, e))?;
        let file = File::create(&path).map_err(|e| Error::io("cannot create", &path, e))?;
        let hashing = HashingFile {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let (writer, _) = parquet_file_writer(BufWriter::with_capacity(1 << 20, hashing), codec)
            .map_err(|e| parquet_err(&path, e))?;
        Ok(SenderFile {
            sender,
            rel,
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends a row group of `rows` rows: its column chunks, compressed.
    fn append(&mut self, chunks: Vec<ArrowColumnChunk>, rows: u64) -> Result<()> {
        let path = &self.path;
        let mut w = self
            .writer
            .next_row_group()
            .map_err(|e| parquet_err(path, e))?;
        for chunk in chunks {
            chunk
                .append_to_row_group(&mut w)
                .map_err(|e| parquet_err(path, e))?;
        }
        w.close().map_err(|e| parquet_err(path, e))?;
        self.rows += rows;
        Ok(())
    }

    /// Writes the footer; the file (still to be synced), its path and its manifest entry.
    fn finish(self) -> Result<(File, PathBuf, OutputFile)> {
        let path = self.path;
        let buf = self
            .writer
            .into_inner()
            .map_err(|e| parquet_err(&path, e))?;
        let hashing = buf
            .into_inner()
            .map_err(|e| Error::io("cannot write", &path, e.into_error()))?;
        let out = OutputFile {
            path: self.rel,
            sender_id: self.sender,
            rows: self.rows,
            bytes: hashing.bytes,
            sha256: hex::encode(hashing.hasher.finalize()),
        };
        Ok((hashing.file, path, out))
    }
}

/// A piece's rows as one batch of the Parquet schema (the partition column left out, the source
/// file and the kind by name).
fn gather(
    schema: &arrow_schema::SchemaRef,
    sources: &[RecordBatch],
    picks: &[(usize, usize)],
    file_names: &[String],
) -> Result<RecordBatch> {
    let staged = staged_schema();
    // A sender's rows mostly come in long stretches of one run (runs are stretches of the
    // day): copy those whole, and gather row by row only when they are short.
    let segments = segments(picks);
    let whole = segments.len() * 16 <= picks.len();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (ci, f) in staged.fields().iter().enumerate() {
        if f.name() == "sender_id" {
            continue;
        }
        let col = if whole {
            let parts: Vec<_> = segments
                .iter()
                .map(|&(slot, row, len)| sources[slot].column(ci).slice(row, len))
                .collect();
            let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&parts)
        } else {
            let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(ci).as_ref()).collect();
            arrow_select::interleave::interleave(&arrays, picks)
        };
        let col = col.map_err(|e| Error::Internal(format!("gathering rows: {e}")))?;
        cols.push(match ci {
            C_FILE => {
                let ids = col.as_primitive::<UInt32Type>().values();
                names_of(ids.iter().map(|&id| id as usize), file_names, "a file id")?
            }
            C_KIND => {
                let codes = col.as_primitive::<arrow_array::types::UInt8Type>().values();
                let kinds = Kind::ALL.map(Kind::as_str);
                names_of(codes.iter().map(|&c| c as usize), &kinds, "a kind code")?
            }
            _ => col,
        });
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))
}

/// The names of a sorted run's ids (a source file's, a kind's code) as text; `what` names the
/// ids in the error for one of no name.
fn names_of<S: AsRef<str>>(
    ids: impl Iterator<Item = usize> + Clone,
    names: &[S],
    what: &str,
) -> Result<arrow_array::ArrayRef> {
    let mut bytes = 0;
    for id in ids.clone() {
        let name = names
            .get(id)
            .ok_or_else(|| Error::Internal(format!("gathering rows: {what} with no name")))?;
        bytes += name.as_ref().len();
    }
    let mut b = arrow_array::builder::StringBuilder::with_capacity(ids.size_hint().0, bytes);
    for id in ids {
        b.append_value(names[id].as_ref());
    }
    Ok(Arc::new(b.finish()))
}

/// Picks as stretches of consecutive rows of one source: (source, first row, rows).
fn segments(picks: &[(usize, usize)]) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for &(slot, row) in picks {
        match out.last_mut() {
            Some((s, r, n)) if *s == slot && *r + *n == row => *n += 1,
            _ => out.push((slot, row, 1)),
        }
    }
    out
}

fn parquet_err(path: &Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => Error::io("cannot write", path, *io),
                Err(other) => Error::io(
                    "cannot write",
                    path,
                    std::io::Error::other(other.to_string()),
                ),
            }
        }
        other => Error::io(
            "cannot write",
            path,
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// Rows per sender as written, from a manifest.
pub fn rows_per_sender(m: &Manifest) -> BTreeMap<Option<String>, u64> {
    m.files
        .iter()
        .map(|f| (f.sender_id.clone(), f.rows))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crate::record::schema::BatchBuilder;
    use proptest::prelude::*;

    /// The names of the tests' staged ids: senders `s0`..`s255` (id k for `sk`, so ids do not
    /// follow the names' order: "s10" < "s2"), then a few more; files `f0`..`f255`.
    fn test_names() -> StagedNames {
        let mut names = StagedNames::default();
        for k in 0..=255 {
            names.sender(Some(&format!("s{k}")));
            names.file(&format!("f{k}"));
        }
        for extra in ["a", "b", "bb", "big", "c", "d", "e", "zz"] {
            names.sender(Some(extra));
        }
        names
    }

    fn test_ranks() -> Ranks {
        Ranks::new(test_names()).unwrap()
    }

    fn batch(rows: &[(Option<u8>, Option<i64>, u8, i64)]) -> RecordBatch {
        let mut b = BatchBuilder::new();
        let mut names = test_names();
        for &(sender, ts, file, line) in rows {
            b.push(
                &Record {
                    ts,
                    sender_id: sender.map(|s| format!("s{s}")),
                    message: format!("m{line}"),
                    room: "r".into(),
                    kafka_offset: None,
                    kind: Kind::Message,
                    extra: None,
                    source_file: format!("f{file}"),
                    source_line: line as u64,
                },
                &mut names,
            );
        }
        assert_eq!(names, test_names(), "a name the tests' table does not hold");
        b.finish()
    }

    proptest! {
        /// The adaptive sort sorts whatever it is given: rows nearly in order (each moved a few
        /// places from its own), which it sorts by insertion, and rows far from order (shuffled
        /// or reversed), which it hands to the unstable sort part way through.
        #[test]
        fn sort_nearly_sorted_sorts(
            n in 0usize..3000,
            shape in 0u8..4,
            swaps in proptest::collection::vec((0usize..3000, 1usize..40), 0..400),
            seed in any::<u64>(),
        ) {
            let mut v: Vec<(u32, u64)> = (0..n as u32).map(|i| (i / 3, seed ^ u64::from(i))).collect();
            match shape {
                // Nearly in order: elements moved by up to 3 places, or by up to 40.
                0 | 3 => for &(at, by) in &swaps {
                    let by = if shape == 0 { 1 + by % 3 } else { by };
                    if at + by < n {
                        v.swap(at, at + by);
                    }
                },
                1 => v.reverse(),
                _ => for (i, &(at, _)) in swaps.iter().enumerate() {
                    if n > 0 {
                        v.swap(i % n, at % n);
                    }
                },
            }
            let mut expected = v.clone();
            expected.sort_unstable();
            let handed_over = sort_nearly_sorted(&mut v);
            prop_assert_eq!(v, expected);
            // Each path is taken where it should be: rows moved by at most 3 places stay with
            // the insertion sort; reversed rows, beyond a few dozen, go to the unstable sort.
            match shape {
                0 => prop_assert!(!handed_over),
                1 => prop_assert!(handed_over || n < 30),
                _ => {}
            }
        }

        /// The integer-key order over a run's batches is the order of `cmp_rows`, ties in row
        /// order (a stable sort).
        #[test]
        fn sorted_order_matches_cmp_rows(rows in proptest::collection::vec(
            (proptest::option::of(0u8..6), proptest::option::of(-3i64..3), 0u8..3, 0i64..4),
            0..200,
        ), cuts in proptest::collection::vec(0usize..200, 0..3)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(rows.len())).collect();
            cuts.push(0);
            cuts.push(rows.len());
            cuts.sort_unstable();
            let batches: Vec<RecordBatch> = cuts.windows(2).map(|w| batch(&rows[w[0]..w[1]])).collect();
            let mut expected: Vec<(usize, usize)> = batches
                .iter()
                .enumerate()
                .flat_map(|(bi, b)| (0..b.num_rows()).map(move |i| (bi, i)))
                .collect();
            let names = test_names();
            expected.sort_by(|&(xb, x), &(yb, y)| cmp_rows(&names, &batches[xb], x, &batches[yb], y));
            let mut scratch = Vec::new();
            prop_assert_eq!(sorted_order(&batches, &test_ranks(), &mut scratch).order, expected);
            prop_assert!(scratch.iter().all(|&p| p == u32::MAX), "scratch left changed");
        }

        /// The merge's keys of rows in two runs compare as `cmp_rows` does.
        #[test]
        fn merge_keys_match_cmp_rows(
            a in proptest::collection::vec(
                (proptest::option::of(0u8..6), proptest::option::of(-3i64..3), 0u8..3, 0i64..4),
                1..40,
            ),
            b in proptest::collection::vec(
                (proptest::option::of(0u8..6), proptest::option::of(-3i64..3), 0u8..3, 0i64..4),
                1..40,
            ),
        ) {
            let (a, b) = (batch(&a), batch(&b));
            let (names, ranks) = (test_names(), test_ranks());
            let (ka, kb) = (ranks.keys(&a).unwrap(), ranks.keys(&b).unwrap());
            for (i, x) in ka.iter().enumerate() {
                for (j, y) in kb.iter().enumerate() {
                    prop_assert_eq!(x.cmp(y), cmp_rows(&names, &a, i, &b, j));
                }
            }
        }
    }

    fn senders(batch: &RecordBatch) -> Vec<Option<u32>> {
        batch
            .column(C_SENDER)
            .as_primitive::<UInt32Type>()
            .iter()
            .collect()
    }

    fn named(senders: &[(Option<&str>, usize)]) -> RecordBatch {
        let mut b = BatchBuilder::new();
        let mut names = test_names();
        for &(name, n) in senders {
            for i in 0..n {
                b.push(
                    &Record {
                        ts: Some(i as i64),
                        sender_id: name.map(str::to_string),
                        message: "m".into(),
                        room: "r".into(),
                        kafka_offset: None,
                        kind: Kind::Message,
                        extra: None,
                        source_file: "f0".into(),
                        source_line: i as u64,
                    },
                    &mut names,
                );
            }
        }
        assert_eq!(names, test_names(), "a name the tests' table does not hold");
        b.finish()
    }

    #[test]
    fn ranges_have_about_equal_rows_and_never_split_a_sender() {
        let day = named(&[
            (Some("c"), 20),
            (None, 10),
            (Some("a"), 30),
            (Some("d"), 10),
            (Some("b"), 30),
        ]);
        // 100 rows in quarters: ranges begin at b (40 rows before it), c (70) and d (90).
        let (names, ranks) = (test_names(), test_ranks());
        let rank = |s: Option<&str>| match s {
            None => 0,
            Some(s) => {
                let id = names.senders.iter().position(|n| n.as_deref() == Some(s));
                ranks.senders[id.unwrap()]
            }
        };
        let bounds = range_bounds(std::slice::from_ref(&day), 4, &ranks);
        assert_eq!(bounds, [Some("b"), Some("c"), Some("d")].map(rank));
        let of = |s: Option<&str>| range_of(&bounds, rank(s));
        assert_eq!(
            [
                None,
                Some("a"),
                Some("b"),
                Some("bb"),
                Some("c"),
                Some("d"),
                Some("zz")
            ]
            .map(of),
            [0, 0, 1, 1, 2, 3, 3]
        );
        // A sender with most of the rows takes several shares; one range is the whole day.
        let busy = named(&[(Some("a"), 90), (Some("b"), 10)]);
        let busy_bounds = range_bounds(std::slice::from_ref(&busy), 4, &ranks);
        assert_eq!(busy_bounds, [rank(Some("b"))]);
        assert!(range_bounds(std::slice::from_ref(&day), 1, &ranks).is_empty());
        assert!(range_bounds(&[], 8, &ranks).is_empty());
        // A run's rows per range follow the same bounds, whatever the run's own senders.
        let run = named(&[(Some("bb"), 3), (None, 2), (Some("e"), 4)]);
        let order = sorted_order(std::slice::from_ref(&run), &ranks, &mut Vec::new());
        assert_eq!(order.range_rows(&bounds), [2, 3, 0, 4]);
    }

    #[test]
    fn sorted_batches_are_cut_where_each_range_begins() {
        let a = named(&[(Some("a"), 2), (Some("b"), 1)]);
        let b = named(&[(Some("b"), 1), (Some("d"), 3)]);
        let (cut, starts) = cut_ranges(vec![a.clone(), b.clone()], &[2, 0, 2, 3]).unwrap();
        assert_eq!(starts, [0, 1, 1, 3, 4]);
        assert_eq!(
            cut.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [2, 1, 1, 3]
        );
        let got: Vec<_> = cut.iter().flat_map(senders).collect();
        let want: Vec<_> = [&a, &b].into_iter().flat_map(senders).collect();
        assert_eq!(got, want);
        // Counts that do not add up to the rows are an internal error, not a panic.
        assert!(cut_ranges(vec![a.clone()], &[2]).is_err());
        assert!(cut_ranges(vec![a], &[2, 2]).is_err());
        let (none, starts) = cut_ranges(Vec::new(), &[0, 0]).unwrap();
        assert!(none.is_empty());
        assert_eq!(starts, [0, 0, 0]);
    }

    /// Writes `batches` as a staged records file and writes it with runs of `run_bytes`, cut
    /// into `parts` ranges, on `lanes` lanes: every file's path and bytes.
    fn written(
        batches: &[RecordBatch],
        run_bytes: usize,
        (parts, lanes): (usize, usize),
        chunk_rows: usize,
    ) -> (Vec<(String, Vec<u8>)>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join(STAGED_RECORDS);
        let mut w = FileWriter::try_new(File::create(&staged).unwrap(), &staged_schema()).unwrap();
        for b in batches {
            w.write(b).unwrap();
        }
        w.write_metadata(
            STAGED_NAMES_KEY,
            serde_json::to_string(&test_names()).unwrap(),
        );
        w.finish().unwrap();
        let sizes = RunSizes {
            run_bytes,
            chunk_rows,
            parts,
        };
        let spill = dir.path().join(".spill");
        let (runs, ranks) = make_runs(&staged, None, sizes, 2, &spill).unwrap();
        let count = runs.len();
        // However many runs, one spill file per sorter.
        let spill_files = fs::read_dir(&spill).map_or(0, |d| d.count());
        assert_eq!(spill_files, if count > 1 { 2 } else { 0 }, "{count} runs");
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let mut files =
            merge_and_write(runs, &ranks, &out, (lanes, Codec::default(), true), &bar).unwrap();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let files = files
            .into_iter()
            .map(|f| {
                let bytes = fs::read(out.join(&f.path)).unwrap();
                assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256);
                (f.path, bytes)
            })
            .collect();
        (files, count)
    }

    /// Runs spilled and merged range by range on several lanes give the files of one run merged
    /// whole on one lane, byte for byte.
    #[test]
    fn ranges_on_lanes_write_the_bytes_of_one_merge() {
        // A skewed day: sender 0 has a third of the rows; times go round so runs interleave.
        let rows: Vec<(Option<u8>, Option<i64>, u8, i64)> = (0..6000)
            .map(|i: i64| {
                let s = match i % 9 {
                    0..=2 => Some(0),
                    3 => None,
                    k => Some(k as u8 + (i % 4) as u8 * 10),
                };
                (s, Some(i * 7 % 500), (i % 3) as u8, i)
            })
            .collect();
        let batches: Vec<RecordBatch> = rows.chunks(400).map(batch).collect();
        let (whole, runs) = written(&batches, usize::MAX, (1, 1), 50);
        assert_eq!(runs, 1);
        assert!(whole.len() > 20);
        for (parts, lanes) in [(1, 1), (8, 2), (8, 3), (3, 1)] {
            let (got, runs) = written(&batches, 60_000, (parts, lanes), 50);
            assert!(runs > 3, "{runs} runs");
            assert_eq!(got.len(), whole.len());
            for (g, w) in got.iter().zip(&whole) {
                assert_eq!(g.0, w.0);
                assert!(
                    g.1 == w.1,
                    "{} differs with {parts} ranges on {lanes} lanes",
                    g.0
                );
            }
        }
        // One run in memory, cut into ranges.
        let (got, _) = written(&batches, usize::MAX, (8, 2), 50);
        assert!(got == whole);
    }

    /// A sender with more rows than a row group, whose rows tie on every key across runs (they
    /// differ in their message only, so an order that breaks ties differently shows): spilled
    /// runs merged by ranges on lanes, pieces cut at the row group's end, give the bytes of one
    /// run merged whole.
    #[test]
    fn a_sender_larger_than_a_row_group_with_ties_across_runs() {
        let n = ROW_GROUP_ROWS + 9_000;
        let mut batches = Vec::new();
        let mut b = BatchBuilder::new();
        let mut names = test_names();
        for i in 0..n {
            let sender = match i % 50 {
                0 => None,
                1 => Some("a".to_string()),
                2 => Some("c".to_string()),
                _ => Some("big".to_string()),
            };
            b.push(
                &Record {
                    ts: Some((i % 700) as i64),
                    sender_id: sender,
                    message: format!("m{i}"),
                    room: "r".into(),
                    kafka_offset: Some(i as i64),
                    kind: Kind::Message,
                    extra: None,
                    source_file: "f0".into(),
                    source_line: (i % 300) as u64,
                },
                &mut names,
            );
            if b.len() == 4096 {
                batches.push(b.finish());
            }
        }
        batches.push(b.finish());
        let (whole, _) = written(&batches, usize::MAX, (1, 1), 8192);
        let (got, runs) = written(&batches, 1 << 20, (8, 2), 777);
        assert!(runs > 3, "{runs} runs");
        assert_eq!(got.len(), 4);
        assert!(got == whole, "ranges on lanes changed the bytes");
    }

    #[test]
    fn spilled_batches_shrink_so_the_merge_fits_a_quarter_of_the_budget() {
        let (gb, mib) = (1u64 << 30, 1usize << 20);
        // 1 GiB staged, 150 bytes a row.
        let rows = gb / 150;
        // 512 MiB: runs of 51 MiB, 21 runs; full batches fit.
        assert_eq!(
            merge_chunk_rows(gb, rows, 512 * mib / 10, 512 * mib),
            MERGE_BATCH_ROWS
        );
        // 64 MiB: 161 runs; a quarter of the budget over them.
        let chunk = merge_chunk_rows(gb, rows, 64 * mib / 10, 64 * mib);
        assert!(chunk < MERGE_BATCH_ROWS && chunk > MIN_MERGE_BATCH_ROWS);
        assert!(161 * chunk as u64 * 150 <= 16 * mib as u64);
        // A tiny budget bottoms out; an empty staging file still gives a size.
        assert_eq!(
            merge_chunk_rows(gb, rows, mib / 10, mib),
            MIN_MERGE_BATCH_ROWS
        );
        assert_eq!(merge_chunk_rows(0, 0, 0, 0), MIN_MERGE_BATCH_ROWS);
    }

    /// Helpers encode what they are handed and stop when no lane merges any more; a row group
    /// no helper has taken (none was free, or the write failed) is encoded by the lane that
    /// needs it. The chunks are the same either way.
    #[test]
    fn helpers_encode_handed_row_groups_or_give_them_back() {
        let (_, factory) = parquet_file_writer(std::io::sink(), Codec::default()).unwrap();
        let rows: Vec<_> = (0..10).map(|i| (Some(1), Some(i), 0u8, i)).collect();
        let piece: Vec<_> = (0..rows.len()).map(|i| (0, i)).collect();
        let (sources, ranks) = ([batch(&rows)], test_ranks());
        let gathered = gather(&parquet_schema(), &sources, &piece, &ranks.file_names).unwrap();
        // The source file, an id in the run, comes back as its name (the Parquet schema has no
        // sender column, so it is one column earlier).
        let files: Vec<String> = rows.iter().map(|r| format!("f{}", r.2)).collect();
        // So does the kind, a code in the run.
        let kinds = gathered.column(C_KIND - 1).as_string::<i32>();
        assert!(kinds.iter().all(|k| k == Some("message")));
        assert!(
            gathered
                .column(C_FILE - 1)
                .as_string::<i32>()
                .iter()
                .eq(files.iter().map(|f| Some(f.as_str())))
        );
        let file_bytes = |chunks: Vec<ArrowColumnChunk>| -> Vec<u8> {
            let (mut w, _) = parquet_file_writer(Vec::new(), Codec::default()).unwrap();
            let mut g = w.next_row_group().unwrap();
            for c in chunks {
                c.append_to_row_group(&mut g).unwrap();
            }
            g.close().unwrap();
            w.into_inner().unwrap()
        };
        let encoded = |h: &Helpers| h.encoded.load(std::sync::atomic::Ordering::Relaxed);

        // Two lanes: one merging, one helping, which returns once the other is done. One idle
        // helper takes one reservation.
        let helpers = Helpers::new(2);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let helped = std::thread::scope(|scope| {
            let helper = scope.spawn(|| helpers.serve(&factory));
            let chunks = {
                // Done on every way out, so that a failed check cannot leave the helper waiting.
                let (_merging, _other) = (LaneDone(&helpers, &stop), LaneDone(&helpers, &stop));
                while !helpers.reserve() {
                    std::thread::yield_now();
                }
                assert!(!helpers.reserve(), "one helper, reserved twice");
                let job = helpers.submit(0, vec![gathered.clone()]);
                // (Taken before the helper claims it, it would be encoded here.)
                while !job.is_ready() {
                    std::thread::yield_now();
                }
                helpers.take(&job, &factory).unwrap()
            };
            helper.join().unwrap();
            chunks
        });
        assert_eq!(helped.len(), parquet_schema().fields().len());
        assert_eq!(encoded(&helpers), 1);
        let expected = file_bytes(helped);

        // No helper: nothing to reserve, and a queued row group is taken back.
        let helpers = Helpers::new(2);
        assert!(!helpers.reserve());
        let job = helpers.submit(0, vec![gathered.clone()]);
        assert!(!job.is_ready());
        assert_eq!(helpers.lock().jobs.len(), 1);
        let back = helpers.take(&job, &factory).unwrap();
        assert!(helpers.lock().jobs.is_empty());
        assert!(file_bytes(back) == expected);

        // The write failed: the queue empties, nothing is reserved any more, the lane encodes
        // its row group itself, and a helper that starts now returns at once.
        let helpers = Helpers::new(2);
        let job = helpers.submit(0, vec![gathered.clone()]);
        helpers.stop();
        assert!(helpers.lock().jobs.is_empty());
        assert!(!helpers.reserve());
        assert!(file_bytes(helpers.take(&job, &factory).unwrap()) == expected);
        helpers.serve(&factory);
        assert_eq!(encoded(&helpers), 0);

        // A lane that panics stops the write (the other lanes and the helpers) and counts as
        // done.
        let helpers = Helpers::new(2);
        assert!(!stop.load(std::sync::atomic::Ordering::Relaxed));
        let lane = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _done = LaneDone(&helpers, &stop);
            panic!("a lane fails");
        }));
        assert!(lane.is_err());
        assert!(stop.load(std::sync::atomic::Ordering::Relaxed));
        let st = helpers.lock();
        assert!(st.stopped);
        assert_eq!(st.merging, 1);
    }

    /// Row groups encoded apart and appended in order give the bytes that `ArrowWriter` gives for
    /// the same batches, for a file of several row groups whose rows come from several sources,
    /// in stretches and one by one.
    #[test]
    fn row_groups_encoded_apart_match_arrow_writer() {
        let n = ROW_GROUP_ROWS * 4 + 3000;
        // Two sources, as two runs would give them; picks alternate between long stretches and
        // single rows.
        let rows = |k: usize| -> Vec<(Option<u8>, Option<i64>, u8, i64)> {
            (0..n)
                .map(|i| {
                    (
                        Some(1),
                        Some((i * 7 % 1000) as i64),
                        k as u8,
                        (i * 2 + k) as i64,
                    )
                })
                .collect()
        };
        let (sources, ranks) = ([batch(&rows(0)), batch(&rows(1))], test_ranks());
        let mut picks = Vec::with_capacity(n);
        let mut next = [0usize; 2];
        for i in 0..n {
            let src = if (i / 5000) % 2 == 0 {
                i % 2
            } else {
                (i / 5000) % 2
            };
            picks.push((src, next[src]));
            next[src] += 1;
        }
        let pieces: Vec<Vec<(usize, usize)>> =
            picks.chunks(MERGE_BATCH_ROWS).map(|c| c.to_vec()).collect();

        let mut expected = ArrowWriter::try_new(
            Vec::new(),
            parquet_schema(),
            Some(writer_properties(Codec::default())),
        )
        .unwrap();
        for p in &pieces {
            expected
                .write(&gather(&parquet_schema(), &sources, p, &ranks.file_names).unwrap())
                .unwrap();
        }
        let expected = expected.into_inner().unwrap();

        // Encoded by the lane alone, then with a lane that has no range left encoding the row
        // groups it is handed (every one after the first while it is idle): the same bytes.
        for helped in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (_, factory) = parquet_file_writer(std::io::sink(), Codec::default()).unwrap();
            let (synced, sync_rx) = std::sync::mpsc::sync_channel(64);
            let helpers = Helpers::new(1);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let files = std::thread::scope(|scope| {
                let helper = helped.then(|| scope.spawn(|| helpers.serve(&factory)));
                while helped && helpers.lock().idle == 0 {
                    std::thread::yield_now();
                }
                let _done = LaneDone(&helpers, &stop);
                let mut out = LaneFiles::new(
                    dir.path(),
                    (&factory, Codec::default(), &ranks.file_names),
                    synced,
                    helped.then_some(&helpers),
                );
                out.open(Some("s1".into())).unwrap();
                for p in &pieces {
                    out.rows(&sources, p).unwrap();
                }
                out.close().unwrap();
                drop(_done);
                if let Some(h) = helper {
                    h.join().unwrap();
                }
                out.files
            });
            assert_eq!(sync_rx.try_iter().count(), 1);
            let handed = helpers.handed.load(std::sync::atomic::Ordering::Relaxed);
            if helped {
                assert!(handed >= 1, "no row group was handed over");
            } else {
                assert_eq!(handed, 0);
            }
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].rows, n as u64);
            let got = fs::read(dir.path().join(&files[0].path)).unwrap();
            assert_eq!(got.len(), expected.len());
            assert!(
                got == expected,
                "row-group encoding changed the file's bytes (helped: {helped})"
            );
            let file = File::open(dir.path().join(&files[0].path)).unwrap();
            let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
            let meta = parquet::file::reader::FileReader::metadata(&reader);
            assert_eq!(meta.num_row_groups(), 5);
            // Statistics for every column but the free text.
            let group = meta.row_group(0);
            for (i, field) in parquet_schema().fields().iter().enumerate() {
                let free_text = matches!(field.name().as_str(), "message" | "extra");
                assert_eq!(
                    group.column(i).statistics().is_none(),
                    free_text,
                    "statistics of {}",
                    field.name()
                );
            }
        }
    }

    #[test]
    fn picks_group_into_stretches_of_one_source() {
        let picks = [(0, 5), (0, 6), (0, 7), (1, 0), (0, 8), (0, 9), (0, 11)];
        assert_eq!(
            segments(&picks),
            [(0, 5, 3), (1, 0, 1), (0, 8, 2), (0, 11, 1)]
        );
        assert!(segments(&[]).is_empty());
    }

    /// A whole stretch copied with `concat` gives the rows `interleave` gives.
    #[test]
    fn stretches_and_gathering_give_the_same_rows() {
        let a = batch(&[
            (Some(1), Some(1), 0, 1),
            (Some(1), Some(2), 0, 2),
            (Some(2), None, 1, 3),
        ]);
        let b = batch(&[(Some(1), Some(0), 0, 4), (None, None, 0, 5)]);
        let picks = [(1, 0), (0, 0), (0, 1), (1, 1), (0, 2)];
        let sources = [a, b];
        for ci in 0..sources[0].num_columns() {
            let arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(ci).as_ref()).collect();
            let gathered = arrow_select::interleave::interleave(&arrays, &picks).unwrap();
            let parts: Vec<_> = segments(&picks)
                .iter()
                .map(|&(s, r, n)| sources[s].column(ci).slice(r, n))
                .collect();
            let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            let copied = arrow_select::concat::concat(&parts).unwrap();
            assert_eq!(gathered.to_data(), copied.to_data(), "column {ci}");
        }
    }

    proptest! {
        /// Dense ranks are the places of the names among the distinct names in byte order (0
        /// for None), equal names sharing one.
        #[test]
        fn dense_ranks_are_places_in_byte_order(names in proptest::collection::vec(
            proptest::option::of(
                proptest::sample::select(vec!["", "a", "ab", "b", "사용자", "user001", "user002"])
            ),
            0..30,
        )) {
            let distinct: std::collections::BTreeSet<&str> = names.iter().flatten().copied().collect();
            let want: Vec<u32> = names
                .iter()
                .map(|v| v.map_or(0, |s| distinct.iter().position(|d| *d == s).unwrap() as u32 + 1))
                .collect();
            prop_assert_eq!(dense_ranks(&names), want);
        }
    }

    proptest! {
        /// Ids whose names repeat (a Kafka partition read twice gives two file ids of one name)
        /// or a null sender's slot: the order and the merge keys still follow the names.
        #[test]
        fn ids_sharing_a_name_sort_as_that_name(rows in proptest::collection::vec(
            (proptest::option::of(prop_oneof![Just(0u32), Just(2), Just(3)]),
             proptest::option::of(-2i64..2), 0u32..4, 0i64..3),
            1..80,
        )) {
            let names = StagedNames {
                senders: vec![Some("b".into()), None, Some("a".into()), Some("ab".into())],
                files: vec!["y".into(), "x".into(), "y".into(), "x".into()],
            };
            let ranks = Ranks::new(names.clone()).unwrap();
            let (a, b) = rows.split_at(rows.len() / 2);
            let batches = [with_ids(a), with_ids(b)];
            for batch in &batches {
                prop_assert!(ranks.check(batch).is_ok());
            }
            let mut expected: Vec<(usize, usize)> = batches
                .iter()
                .enumerate()
                .flat_map(|(bi, b)| (0..b.num_rows()).map(move |i| (bi, i)))
                .collect();
            expected.sort_by(|&(xb, x), &(yb, y)| cmp_rows(&names, &batches[xb], x, &batches[yb], y));
            prop_assert_eq!(sorted_order(&batches, &ranks, &mut Vec::new()).order, expected);
            let keys: Vec<Vec<MergeKey>> = batches.iter().map(|b| ranks.keys(b).unwrap()).collect();
            for (xb, x) in keys.iter().enumerate() {
                for (yb, y) in keys.iter().enumerate() {
                    for (i, kx) in x.iter().enumerate() {
                        for (j, ky) in y.iter().enumerate() {
                            prop_assert_eq!(kx.cmp(ky), cmp_rows(&names, &batches[xb], i, &batches[yb], j));
                        }
                    }
                }
            }
        }
    }

    /// A batch of rows (sender id, ts, file id, line) with those ids as they are.
    fn with_ids(rows: &[(Option<u32>, Option<i64>, u32, i64)]) -> RecordBatch {
        let plain: Vec<_> = rows
            .iter()
            .map(|&(_, ts, _, line)| (Some(0), ts, 0, line))
            .collect();
        let b = batch(&plain);
        let mut cols = b.columns().to_vec();
        cols[C_SENDER] = Arc::new(arrow_array::UInt32Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        ));
        cols[C_FILE] = Arc::new(arrow_array::UInt32Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ));
        RecordBatch::try_new(b.schema(), cols).unwrap()
    }

    /// Ranks follow the names, not the ids; a sender named by two ids, or an id of no name, is
    /// an error, not a panic or a partition written twice.
    #[test]
    fn ranks_follow_names_and_refuse_ids_without_one() {
        let names = StagedNames {
            senders: vec![Some("s2".into()), None, Some("s10".into())],
            files: vec!["b".into(), "a".into(), "b".into()],
        };
        let ranks = Ranks::new(names.clone()).unwrap();
        // "s10" < "s2"; the null sender's slot has rank 0; files of one name share a rank.
        assert_eq!(ranks.senders, [2, 0, 1]);
        assert_eq!(ranks.max_sender, 2);
        assert_eq!(ranks.files, [2, 1, 2]);
        let twice = StagedNames {
            senders: vec![Some("x".into()), Some("x".into())],
            files: Vec::new(),
        };
        assert!(Ranks::new(twice).is_err());
        for null_named in ["", crate::layout::HIVE_NULL] {
            let names = StagedNames {
                senders: vec![Some("x".into()), Some(null_named.into())],
                files: Vec::new(),
            };
            assert!(Ranks::new(names).is_err_and(|e| e.contains("staged as null")));
        }

        let ids = |senders: Vec<Option<u32>>, files: Vec<u32>| {
            let rows: Vec<_> = senders
                .into_iter()
                .zip(files)
                .map(|(s, f)| (s, None, f, 0))
                .collect();
            with_ids(&rows)
        };
        assert!(ranks.check(&ids(vec![Some(0), None], vec![0, 2])).is_ok());
        assert_eq!(
            ranks.sender_ranks(&ids(vec![Some(0), None], vec![0, 2])),
            [2, 0]
        );
        let bad = [
            (
                ids(vec![Some(1), None], vec![0, 0]),
                "sender id 1 names no sender",
            ),
            (
                ids(vec![Some(3), None], vec![0, 0]),
                "sender id 3 names no sender",
            ),
            (
                ids(vec![Some(0), None], vec![0, 3]),
                "source file id 3 names no file",
            ),
        ];
        for (b, e) in bad {
            assert_eq!(ranks.check(&b).unwrap_err(), e);
        }
        // A kind is staged as its code; a code of no kind is refused too.
        let b = ids(vec![Some(0), None], vec![0, 0]);
        let mut cols = b.columns().to_vec();
        cols[C_KIND] = Arc::new(arrow_array::UInt8Array::from(vec![1, 2]));
        let b = RecordBatch::try_new(b.schema(), cols).unwrap();
        assert_eq!(ranks.check(&b).unwrap_err(), "kind code 2 names no kind");
    }
}
