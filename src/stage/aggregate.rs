//! `aggregate`: daily (or range) aggregates of the committed Parquet dataset.
//!
//! Reads `messages/date=D` for every complete date (one with `_SUCCESS`) with Polars lazy scans
//! of the Hive layout, `sender_id` declared String so `007` stays `007`, and writes, atomically,
//! `aggregates/date=D/` (a range: `aggregates/range=D1_D2/`):
//!
//! - `senders.parquet`: per sender, messages, characters, distinct rooms, first and last time;
//! - `rooms.parquet`: per room, messages, distinct senders, busiest hour (in `--tz`);
//! - `hourly.parquet`: messages per hour of the day in `--tz`, per room and overall (room null);
//! - `words.parquet`: the most used words (whitespace tokens, punctuation stripped, lower-cased,
//!   stop words removed; Hangul is kept as it is);
//! - `summary.json`: all of it together, plus the dates used and those without complete output.
//!
//! System messages (configured system senders) are left out unless `--include-system`.
//! Each sender partition is scanned by Polars in slices of rows and each slice grouped by room
//! there; the text and clock measures (characters, words, hours in the zone) are added in one
//! pass over its rows, so memory is bounded by a slice, not by the largest sender's day.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use polars::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::config::{Codec, Settings};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::layout::{Layout, fsync_path, swap_into_place};
use crate::stage::Outcome;
use crate::stage::write::SUCCESS_FILE;

/// Words that say nothing about a conversation (English and Korean particles-as-words).
pub const DEFAULT_STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "at", "be", "but", "by", "for", "from", "has", "have", "i", "in",
    "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "so", "that", "the", "this",
    "to", "was", "we", "were", "with", "you", "your", "네", "그", "이", "저", "것", "수", "좀",
    "더", "잘", "또", "다",
];

/// How many words `words.parquet` keeps.
const WORDS_KEPT: usize = 1000;

/// What to aggregate.
#[derive(Debug, Clone)]
pub struct AggregateOptions {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Rows in the terminal table and in summary.json's top lists.
    pub top: usize,
    pub include_system: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SenderRow {
    pub sender_id: Option<String>,
    pub messages: u64,
    pub characters: u64,
    pub rooms: u64,
    /// Microseconds since the epoch, UTC.
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomRow {
    pub room: String,
    pub messages: u64,
    pub senders: u64,
    /// Hour of the day (0-23, in the configured zone) with the most messages; ties → earliest.
    pub busiest_hour: Option<u32>,
    pub busiest_hour_messages: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Aggregates {
    pub dates: Vec<NaiveDate>,
    /// Dates of the range without a complete `messages/date=D` (no `_SUCCESS`).
    pub missing_dates: Vec<NaiveDate>,
    pub tz: String,
    pub include_system: bool,
    /// The `stop_words` the word counts left out, sorted.
    pub stop_words: Vec<String>,
    pub messages: u64,
    pub senders: Vec<SenderRow>,
    pub rooms: Vec<RoomRow>,
    /// Messages per hour of the day, all rooms.
    pub hourly: [u64; 24],
    /// Messages per hour of the day, per room.
    pub hourly_by_room: BTreeMap<String, [u64; 24]>,
    pub words: Vec<(String, u64)>,
}

/// Runs `aggregate` for a date or a range.
pub fn run(settings: &Settings, opts: &AggregateOptions) -> Result<Outcome> {
    crate::stage::clean_output::check_output_root(settings)?;
    let started = Instant::now();
    let layout = Layout::new(&settings.output_root);
    let (dates, missing) = complete_dates(&layout, opts.from, opts.to)?;
    let _lock = if opts.from == opts.to {
        Some(crate::lock::DateLock::acquire(
            &layout,
            opts.from,
            "chatetl aggregate",
        )?)
    } else {
        None
    };
    let (agg, dest) = build(settings, &layout, opts, dates, missing)?;
    Ok(outcome(&agg, opts, &dest, started.elapsed().as_secs_f64()))
}

/// Computes and commits the aggregates of `dates` (the complete dates of `opts`' range) into
/// `aggregates/date=D` or `aggregates/range=D1_D2`. The caller holds the lock of a single date.
pub fn build(
    settings: &Settings,
    layout: &Layout,
    opts: &AggregateOptions,
    dates: Vec<NaiveDate>,
    missing: Vec<NaiveDate>,
) -> Result<(Aggregates, PathBuf)> {
    let agg = compute(settings, layout, &dates, missing, opts.include_system)?;
    let dest = if opts.from == opts.to {
        layout.aggregates_dir(opts.from)
    } else {
        layout
            .root()
            .join("aggregates")
            .join(format!("range={}_{}", opts.from, opts.to))
    };
    let tmp = layout.new_tmp_dir("aggregates", opts.from)?;
    let written = write_outputs(&agg, (opts.top, settings.compression), &tmp)
        .and_then(|()| swap_into_place(&tmp, &dest));
    if let Err(e) = written {
        let _ = crate::layout::remove_path(&tmp);
        return Err(e);
    }
    Ok((agg, dest))
}

/// The dates of `from..=to` with complete output, and those without. No complete date is an
/// error (66): a single date says how to make it.
pub fn complete_dates(
    layout: &Layout,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(Vec<NaiveDate>, Vec<NaiveDate>)> {
    if from > to {
        return Err(Error::Usage(format!("--from {from} is after --to {to}")));
    }
    let mut dates = Vec::new();
    let mut missing = Vec::new();
    for d in from.iter_days().take_while(|d| *d <= to) {
        if layout.messages_dir(d).join(SUCCESS_FILE).is_file() {
            dates.push(d);
        } else {
            missing.push(d);
        }
    }
    if dates.is_empty() {
        return Err(Error::NoInput(if from == to {
            format!(
                "{from}: no complete output ({} is missing); run `chatetl run --date {from}` first",
                layout.messages_dir(from).join(SUCCESS_FILE).display(),
            )
        } else {
            format!("{from}..{to}: no date in the range has complete output")
        }));
    }
    Ok((dates, missing))
}

fn polars_err(what: &str, e: PolarsError) -> Error {
    Error::Data(format!("{what}: {e}"))
}

/// A lazy scan of one sender partition of a complete date, with the Hive columns declared as
/// strings (so `007` stays `007` and the null partition reads as null).
fn scan_partition(dir: &Path) -> Result<LazyFrame> {
    let hive_schema = Schema::from_iter([
        Field::new("date".into(), DataType::String),
        Field::new("sender_id".into(), DataType::String),
    ]);
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            hive_start_idx: 0,
            schema: Some(Arc::new(hive_schema)),
            try_parse_dates: false,
        },
        ..Default::default()
    };
    let glob = format!("{}/*.parquet", dir.display());
    LazyFrame::scan_parquet(PlRefPath::new(glob.as_str()), args)
        .map_err(|e| polars_err(&format!("cannot scan {glob}"), e))
}

/// Rows a sender partition's row pass takes at a time on each of `threads` threads: memory is
/// bounded by a slice, not by the sender's day. A row is allowed 2 KiB (its strings, Polars'
/// copies, the room groups): 128K rows a thread with the default 512 MiB on two threads. A power
/// of two, so slices divide write's 128K-row row groups (or span whole ones), at least 16K rows
/// so a row group is not decoded more than 8 times. (Rows much longer than 2 KiB, which
/// `max_line_bytes` allows, take more.)
fn slice_rows(budget_mb: u64, threads: usize) -> IdxSize {
    let rows = (budget_mb << 20) / (threads.max(1) as u64) / 2048;
    let pow2 = 1u64 << rows.max(1).ilog2();
    pow2.clamp(16 << 10, 1 << 20) as IdxSize
}

/// Rows in the Parquet files of a partition, from their footers.
fn partition_rows(dir: &Path) -> Result<u64> {
    use parquet::file::reader::FileReader;
    let mut rows = 0u64;
    for e in fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))? {
        let path = e.map_err(|e| Error::io("cannot list", dir, e))?.path();
        if path.extension().is_some_and(|x| x == "parquet") {
            let f = File::open(&path).map_err(|e| Error::io("cannot read", &path, e))?;
            let r = parquet::file::reader::SerializedFileReader::new(f)
                .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
            rows += r.metadata().file_metadata().num_rows().max(0) as u64;
        }
    }
    Ok(rows)
}

/// The sender partitions of a date, in name order.
fn partitions(layout: &Layout, date: NaiveDate) -> Result<Vec<PathBuf>> {
    let dir = layout.messages_dir(date);
    let mut v = Vec::new();
    for e in fs::read_dir(&dir).map_err(|e| Error::io("cannot list", &dir, e))? {
        let e = e.map_err(|e| Error::io("cannot list", &dir, e))?;
        if e.file_name().to_string_lossy().starts_with("sender_id=") {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Maps keyed by text seen on every row: foldhash, not SipHash (a tenth of aggregate's time);
/// their order never reaches the output, which is sorted.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

#[derive(Default)]
struct SenderAcc {
    messages: u64,
    characters: u64,
    rooms: std::collections::BTreeSet<String>,
    first: Option<i64>,
    last: Option<i64>,
}

/// Everything counted over some sender partitions; partial tallies merge into the whole.
#[derive(Default)]
struct Tally {
    senders: HashMap<Option<String>, SenderAcc>,
    room_messages: HashMap<String, u64>,
    room_senders: HashMap<String, HashSet<Option<String>>>,
    hourly: [u64; 24],
    hourly_by_room: BTreeMap<String, [u64; 24]>,
    words: HashMap<String, u64>,
    total: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        for (k, a) in o.senders {
            let acc = self.senders.entry(k).or_default();
            acc.messages += a.messages;
            acc.characters += a.characters;
            acc.rooms.extend(a.rooms);
            acc.first = min_opt(acc.first, a.first);
            acc.last = acc.last.max(a.last);
        }
        for (k, n) in o.room_messages {
            *self.room_messages.entry(k).or_default() += n;
        }
        for (k, s) in o.room_senders {
            self.room_senders.entry(k).or_default().extend(s);
        }
        for (h, n) in o.hourly.iter().enumerate() {
            self.hourly[h] += n;
        }
        for (k, hours) in &o.hourly_by_room {
            add_hours(&mut self.hourly_by_room, k, hours);
        }
        for (k, n) in o.words {
            *self.words.entry(k).or_default() += n;
        }
        self.total += o.total;
    }

    /// Adds the `slice` rows of a sender partition from row `offset` on.
    fn add_slice(
        &mut self,
        part: &Path,
        (offset, slice): (u64, IdxSize),
        include_system: bool,
        hours: &mut LocalHours<'_>,
    ) -> Result<()> {
        // Slice before filtering, so that each slice is read once from the row groups it
        // covers.
        let mut lf = scan_partition(part)?.slice(offset as i64, slice);
        if !include_system {
            lf = lf.filter(col("kind").eq(lit("message")));
        }
        let rows = lf
            .select([
                col("sender_id"),
                col("room"),
                col("ts").cast(DataType::Int64),
                col("message"),
            ])
            .collect()
            .map_err(|e| polars_err(&format!("{}", part.display()), e))?;
        self.add_rows(&rows, hours)
    }

    /// Adds rows (sender_id, room, ts, message) of one sender partition.
    fn add_rows(&mut self, rows: &DataFrame, hours: &mut LocalHours<'_>) -> Result<()> {
        if rows.height() == 0 {
            return Ok(());
        }
        self.total += rows.height() as u64;
        let sender = str_col(rows, "sender_id")?.get(0).map(str::to_string);
        let by_room = rows
            .clone()
            .lazy()
            .group_by([col("room")])
            .agg([
                len().alias("messages"),
                col("ts").min().alias("first_ts"),
                col("ts").max().alias("last_ts"),
            ])
            .collect()
            .map_err(|e| polars_err("room groups", e))?;
        let acc = self.senders.entry(sender.clone()).or_default();
        {
            let room = str_col(&by_room, "room")?;
            let n = u64_col(&by_room, "messages")?;
            let first = i64_col(&by_room, "first_ts")?;
            let last = i64_col(&by_room, "last_ts")?;
            for i in 0..by_room.height() {
                let r = room.get(i).unwrap_or("").to_string();
                acc.messages += n[i];
                acc.first = min_opt(acc.first, first[i]);
                acc.last = acc.last.max(last[i]);
                *self.room_messages.entry(r.clone()).or_default() += n[i];
                self.room_senders
                    .entry(r.clone())
                    .or_default()
                    .insert(sender.clone());
                acc.rooms.insert(r);
            }
        }
        let room = str_col(rows, "room")?;
        let message = str_col(rows, "message")?;
        let ts = rows
            .column("ts")
            .and_then(|c| c.i64().cloned())
            .map_err(|e| polars_err("ts column", e))?;
        // Hour counts by room over this slice, added to the tally's at the end (rooms change
        // from row to row: a lookup in the tally's ordered map for each was a twentieth of
        // aggregate).
        let mut room_hours: HashMap<&str, [u64; 24]> = HashMap::default();
        for i in 0..rows.height() {
            let text = message.get(i).unwrap_or("");
            acc.characters += text.chars().count() as u64;
            if let Some(t) = ts.get(i)
                && let Some(h) = hours.hour(t)
            {
                self.hourly[h] += 1;
                room_hours
                    .entry(room.get(i).unwrap_or(""))
                    .or_insert([0; 24])[h] += 1;
            }
            // Stop words are counted too and left out at the end: one lookup a word, not two.
            for w in tokens(text) {
                match self.words.get_mut(w.as_ref()) {
                    Some(n) => *n += 1,
                    None => {
                        self.words.insert(w.into_owned(), 1);
                    }
                }
            }
        }
        for (r, counts) in room_hours {
            add_hours(&mut self.hourly_by_room, r, &counts);
        }
        Ok(())
    }
}

fn add_hours(by_room: &mut BTreeMap<String, [u64; 24]>, room: &str, counts: &[u64; 24]) {
    let mine = match by_room.get_mut(room) {
        Some(m) => m,
        None => by_room.entry(room.to_string()).or_insert([0; 24]),
    };
    for (h, n) in counts.iter().enumerate() {
        mine[h] += n;
    }
}

/// Computes every aggregate over the complete `dates`.
///
/// One slice of a sender partition at a time per thread, on as many threads as there are cores
/// (at most two: Polars decodes with its own pool), each thread tallying its slices apart and
/// the tallies merged at the end, so that a busy sender's partition is shared by the threads;
/// memory is bounded by one slice of rows per thread. Polars scans each slice and groups it by
/// room (messages, first and last time); one pass over its rows adds characters, hours in `tz`
/// and words.
pub fn compute(
    settings: &Settings,
    layout: &Layout,
    dates: &[NaiveDate],
    missing_dates: Vec<NaiveDate>,
    include_system: bool,
) -> Result<Aggregates> {
    let tz = &settings.tz;
    let stops: HashSet<&str> = settings.stop_words.iter().map(String::as_str).collect();
    let mut parts = Vec::new();
    for date in dates {
        parts.extend(partitions(layout, *date)?);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2);
    let slice = slice_rows(settings.memory_budget_mb, threads);
    // Slices (partition, first row) are handed out in order. A partition whose footers cannot be
    // read fails before any slice is read; a failed slice stops both threads, and the error
    // reported is that of the first failed slice in order, whatever the timing.
    let mut slices = Vec::new();
    for (p, part) in parts.iter().enumerate() {
        let rows = partition_rows(part)?;
        slices.extend((0..rows).step_by(slice as usize).map(|offset| (p, offset)));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> std::result::Result<Tally, (usize, Error)> {
        let mut tally = Tally::default();
        let mut hours = LocalHours::new(tz);
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(p, offset)) = slices.get(i) else {
                return Ok(tally);
            };
            let part = &parts[p];
            if let Err(e) = tally.add_slice(part, (offset, slice), include_system, &mut hours) {
                next.store(usize::MAX / 2, std::sync::atomic::Ordering::Relaxed);
                return Err((i, e));
            }
        }
    };
    let tallies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut out = vec![work()];
        for h in handles {
            out.push(h.join().unwrap_or_else(|_| {
                Err((0, Error::Internal("an aggregate thread panicked".into())))
            }));
        }
        out
    });
    let mut t = Tally::default();
    let mut first_err: Option<(usize, Error)> = None;
    for tally in tallies {
        match tally {
            Ok(tally) => t.merge(tally),
            Err((i, e)) => {
                if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_err = Some((i, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    let Tally {
        senders,
        room_messages,
        room_senders,
        hourly,
        hourly_by_room,
        words,
        total,
    } = t;
    let mut senders: Vec<SenderRow> = senders
        .into_iter()
        .map(|(sender_id, a)| SenderRow {
            sender_id,
            messages: a.messages,
            characters: a.characters,
            rooms: a.rooms.len() as u64,
            first_ts: a.first,
            last_ts: a.last,
        })
        .collect();
    senders.sort_by(|a, b| {
        b.messages
            .cmp(&a.messages)
            .then_with(|| a.sender_id.cmp(&b.sender_id))
    });
    let mut rooms: Vec<RoomRow> = room_messages
        .into_iter()
        .map(|(room, messages)| {
            let (busiest_hour, busiest_hour_messages) =
                hourly_by_room.get(&room).map(busiest).unwrap_or((None, 0));
            RoomRow {
                senders: room_senders.get(&room).map_or(0, |s| s.len() as u64),
                room,
                messages,
                busiest_hour,
                busiest_hour_messages,
            }
        })
        .collect();
    rooms.sort_by(|a, b| {
        b.messages
            .cmp(&a.messages)
            .then_with(|| a.room.cmp(&b.room))
    });
    let mut words: Vec<(String, u64)> = words
        .into_iter()
        .filter(|(w, _)| !stops.contains(w.as_str()))
        .collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    words.truncate(WORDS_KEPT);
    Ok(Aggregates {
        dates: dates.to_vec(),
        missing_dates,
        tz: tz.name().to_string(),
        include_system,
        stop_words: sorted_stop_words(settings),
        messages: total,
        senders,
        rooms,
        hourly,
        hourly_by_room,
        words,
    })
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn str_col<'a>(df: &'a DataFrame, name: &str) -> Result<&'a StringChunked> {
    df.column(name)
        .and_then(|c| c.str())
        .map_err(|e| polars_err(&format!("column {name}"), e))
}

fn u64_col(df: &DataFrame, name: &str) -> Result<Vec<u64>> {
    let c = df
        .column(name)
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(|e| polars_err(&format!("column {name}"), e))?;
    let ca = c
        .u64()
        .map_err(|e| polars_err(&format!("column {name}"), e))?;
    Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or(0)).collect())
}

fn i64_col(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    let ca = df
        .column(name)
        .and_then(|c| c.i64())
        .map_err(|e| polars_err(&format!("column {name}"), e))?;
    Ok((0..ca.len()).map(|i| ca.get(i)).collect())
}

/// The hour of the day of a UTC microsecond timestamp in `tz`.
fn hour_in(micros: i64, tz: &Tz) -> Option<usize> {
    let utc = chrono::DateTime::from_timestamp_micros(micros)?;
    Some(tz.from_utc_datetime(&utc.naive_utc()).hour() as usize)
}

/// Hours of the day in a zone for many timestamps: the zone's offset is looked up once per UTC
/// hour. Zones change offset less than once an hour, so an offset that is the same at both ends
/// of a UTC hour holds all through it; an hour with a transition in it is computed exactly.
struct LocalHours<'a> {
    tz: &'a Tz,
    /// The UTC hour (seconds since the epoch / 3600) looked up last, and its offset in seconds
    /// when the offset is the same all through it.
    bucket: Option<(i64, Option<i64>)>,
}

impl<'a> LocalHours<'a> {
    fn new(tz: &'a Tz) -> LocalHours<'a> {
        LocalHours { tz, bucket: None }
    }

    fn offset_at(&self, secs: i64) -> Option<i64> {
        use chrono::Offset;
        let utc = chrono::DateTime::from_timestamp(secs, 0)?;
        Some(
            self.tz
                .offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc() as i64,
        )
    }

    fn hour(&mut self, micros: i64) -> Option<usize> {
        let secs = micros.div_euclid(1_000_000);
        let bucket = secs.div_euclid(3600);
        let offset = match self.bucket {
            // An hour is a valid time all through or not at all (chrono's range starts at an
            // hour and ends with one), and the cached hour was checked.
            Some((b, off)) if b == bucket => off,
            _ => {
                chrono::DateTime::from_timestamp_micros(micros)?;
                let a = self.offset_at(bucket * 3600);
                let off = a.filter(|&a| self.offset_at(bucket * 3600 + 3599) == Some(a));
                self.bucket = Some((bucket, off));
                off
            }
        };
        match offset {
            Some(off) => Some((secs + off).div_euclid(3600).rem_euclid(24) as usize),
            None => hour_in(micros, self.tz),
        }
    }
}

/// The hour with the most messages (the earliest on a tie), and its count.
fn busiest(h: &[u64; 24]) -> (Option<u32>, u64) {
    let mut best: (Option<u32>, u64) = (None, 0);
    for (i, &n) in h.iter().enumerate() {
        if n > best.1 {
            best = (Some(i as u32), n);
        }
    }
    best
}

/// Words of a message: whitespace-separated, punctuation and symbols stripped from both ends,
/// lower-cased; tokens with no letter or digit (emoji, `...`) are dropped. Hangul is a letter, so
/// `안녕하세요!` gives `안녕하세요`.
pub fn tokens(text: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> + '_ {
    text.split_whitespace().filter_map(|t| {
        let w = t.trim_matches(|c: char| !is_alphanumeric(c));
        if w.is_empty() {
            None
        } else if w.chars().any(changes_case) {
            Some(std::borrow::Cow::Owned(w.to_lowercase()))
        } else {
            Some(std::borrow::Cow::Borrowed(w))
        }
    })
}

/// Hangul syllables (가-힣): letters without case, most of the text in these chats.
const HANGUL_SYLLABLES: std::ops::RangeInclusive<char> = '\u{AC00}'..='\u{D7A3}';

/// `char::is_alphanumeric`, answered without the Unicode tables for ASCII and Hangul syllables
/// (the tables' lookup was a sixth of aggregate's time), and from [`CLASSES`] for the other
/// characters of the first two planes (emoji above all).
fn is_alphanumeric(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric()
    } else if HANGUL_SYLLABLES.contains(&c) {
        true
    } else {
        class(c) & ALPHANUMERIC != 0
    }
}

/// Whether `to_lowercase` changes `c`: upper case, and title-case letters (ǅ), which are not
/// upper case but still change.
fn changes_case(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_uppercase()
    } else if HANGUL_SYLLABLES.contains(&c) {
        false
    } else {
        class(c) & CHANGES_CASE != 0
    }
}

const ALPHANUMERIC: u8 = 1;
const CHANGES_CASE: u8 = 2;

/// The two answers through the standard library's Unicode tables.
fn class_of(c: char) -> u8 {
    let changes = c.is_uppercase() || !c.to_lowercase().eq([c]);
    (if c.is_alphanumeric() { ALPHANUMERIC } else { 0 }) | (if changes { CHANGES_CASE } else { 0 })
}

/// `class_of` of every character below U+20000 (the planes of nearly every chat character),
/// computed once from the standard library's tables (a few milliseconds, 128 KiB): the tables'
/// lookups for emoji and other non-Hangul characters were a twentieth of aggregate.
static CLASSES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn class(c: char) -> u8 {
    let table = CLASSES.get_or_init(|| {
        (0..0x2_0000u32)
            .map(|u| char::from_u32(u).map_or(0, class_of))
            .collect()
    });
    match table.get(c as usize) {
        Some(&k) => k,
        None => class_of(c),
    }
}

/// The aggregates' codec: the messages' one (zstd at polars' own level: the tables are small).
fn polars_codec(codec: Codec) -> ParquetCompression {
    match codec {
        Codec::Zstd(_) => ParquetCompression::Zstd(None),
        Codec::Snappy => ParquetCompression::Snappy,
        Codec::Lz4 => ParquetCompression::Lz4Raw,
        Codec::None => ParquetCompression::Uncompressed,
    }
}

/// Writes the Parquet files and summary.json into `dir` and syncs them.
fn write_outputs(agg: &Aggregates, (top, codec): (usize, Codec), dir: &Path) -> Result<()> {
    let ts_type = DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC));
    let mut senders = df!(
        "sender_id" => agg.senders.iter().map(|s| s.sender_id.clone()).collect::<Vec<_>>(),
        "messages" => agg.senders.iter().map(|s| s.messages).collect::<Vec<_>>(),
        "characters" => agg.senders.iter().map(|s| s.characters).collect::<Vec<_>>(),
        "rooms" => agg.senders.iter().map(|s| s.rooms).collect::<Vec<_>>(),
        "first_ts" => agg.senders.iter().map(|s| s.first_ts).collect::<Vec<_>>(),
        "last_ts" => agg.senders.iter().map(|s| s.last_ts).collect::<Vec<_>>(),
    )
    .and_then(|df| {
        df.lazy()
            .with_columns([
                col("first_ts").cast(ts_type.clone()),
                col("last_ts").cast(ts_type.clone()),
            ])
            .collect()
    })
    .map_err(|e| polars_err("senders table", e))?;
    let mut rooms = df!(
        "room" => agg.rooms.iter().map(|r| r.room.clone()).collect::<Vec<_>>(),
        "messages" => agg.rooms.iter().map(|r| r.messages).collect::<Vec<_>>(),
        "senders" => agg.rooms.iter().map(|r| r.senders).collect::<Vec<_>>(),
        "busiest_hour" => agg.rooms.iter().map(|r| r.busiest_hour).collect::<Vec<_>>(),
        "busiest_hour_messages" => agg.rooms.iter().map(|r| r.busiest_hour_messages).collect::<Vec<_>>(),
    )
    .map_err(|e| polars_err("rooms table", e))?;
    let mut h_room: Vec<Option<String>> = Vec::new();
    let mut h_hour: Vec<u32> = Vec::new();
    let mut h_n: Vec<u64> = Vec::new();
    for (h, n) in agg.hourly.iter().enumerate() {
        h_room.push(None);
        h_hour.push(h as u32);
        h_n.push(*n);
    }
    for (room, counts) in &agg.hourly_by_room {
        for (h, n) in counts.iter().enumerate() {
            h_room.push(Some(room.clone()));
            h_hour.push(h as u32);
            h_n.push(*n);
        }
    }
    let mut hourly = df!("room" => h_room, "hour" => h_hour, "messages" => h_n)
        .map_err(|e| polars_err("hourly table", e))?;
    let mut words = df!(
        "word" => agg.words.iter().map(|w| w.0.clone()).collect::<Vec<_>>(),
        "count" => agg.words.iter().map(|w| w.1).collect::<Vec<_>>(),
    )
    .map_err(|e| polars_err("words table", e))?;
    for (name, df) in [
        ("senders.parquet", &mut senders),
        ("rooms.parquet", &mut rooms),
        ("hourly.parquet", &mut hourly),
        ("words.parquet", &mut words),
    ] {
        let path = dir.join(name);
        let f = File::create(&path).map_err(|e| Error::cant_create(&path, e))?;
        ParquetWriter::new(f)
            .with_compression(polars_codec(codec))
            .finish(df)
            .map_err(|e| Error::io("cannot write", &path, std::io::Error::other(e.to_string())))?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("cannot sync", &path, e))?;
    }
    let summary = summary_json(agg, top);
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Internal(e.to_string()))?;
    crate::stage::extract::write_synced(&dir.join("summary.json"), &text)?;
    fsync_path(dir).map_err(|e| Error::io("cannot sync", dir, e))?;
    Ok(())
}

fn iso(micros: Option<i64>) -> Option<String> {
    micros
        .and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// summary.json: everything, the top lists cut to `top`.
pub fn summary_json(agg: &Aggregates, top: usize) -> serde_json::Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "dates": agg.dates,
        "missing_dates": agg.missing_dates,
        "tz": agg.tz,
        "include_system": agg.include_system,
        "top": top,
        "stop_words": agg.stop_words,
        "messages": agg.messages,
        "senders": agg.senders.len(),
        "rooms": agg.rooms.len(),
        "top_senders": agg.senders.iter().take(top).map(|s| json!({
            "sender_id": s.sender_id,
            "messages": s.messages,
            "characters": s.characters,
            "rooms": s.rooms,
            "first": iso(s.first_ts),
            "last": iso(s.last_ts),
        })).collect::<Vec<_>>(),
        "busiest_rooms": agg.rooms.iter().take(top).collect::<Vec<_>>(),
        "hourly": agg.hourly,
        "hourly_by_room": agg.hourly_by_room,
        "top_words": agg.words.iter().take(top).map(|(w, n)| json!({"word": w, "count": n})).collect::<Vec<_>>(),
    })
}

/// Terminal width of a string (Hangul and most emoji take two columns).
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = c as u32;
            if (0x1100..=0x115F).contains(&u)
                || (0x2E80..=0xA4CF).contains(&u)
                || (0xAC00..=0xD7A3).contains(&u)
                || (0xF900..=0xFAFF).contains(&u)
                || (0xFE30..=0xFE4F).contains(&u)
                || (0xFF00..=0xFF60).contains(&u)
                || (0x1F300..=0x1FAFF).contains(&u)
            {
                2
            } else {
                1
            }
        })
        .sum()
}

fn pad(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

fn outcome(agg: &Aggregates, opts: &AggregateOptions, dest: &Path, seconds: f64) -> Outcome {
    let mut human = String::new();
    let span = if opts.from == opts.to {
        opts.from.to_string()
    } else {
        format!("{}..{}", opts.from, opts.to)
    };
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    // The terminal line names the first missing dates; summary.json lists them all.
    const MISSING_SHOWN: usize = 10;
    let missing = &agg.missing_dates;
    human.push_str(&format!(
        "{span}: {} from {} in {} ({}{}{})\n",
        count(agg.messages as usize, "message"),
        count(agg.senders.len(), "sender"),
        count(agg.rooms.len(), "room"),
        count(agg.dates.len(), "date"),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; without complete output: {}{}",
                missing
                    .iter()
                    .take(MISSING_SHOWN)
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                match missing.len().saturating_sub(MISSING_SHOWN) {
                    0 => String::new(),
                    more => format!(" and {more} more (all in summary.json)"),
                }
            )
        },
        if agg.include_system {
            "; system messages included"
        } else {
            ""
        },
    ));
    let name = |s: &SenderRow| {
        s.sender_id
            .clone()
            .unwrap_or_else(|| "(unknown)".to_string())
    };
    let top: Vec<&SenderRow> = agg.senders.iter().take(opts.top).collect();
    let w = top
        .iter()
        .map(|s| width(&name(s)))
        .max()
        .unwrap_or(6)
        .max(6);
    human.push_str(&format!(
        "\n{}  {:>8}  {:>10}  {:>5}\n",
        pad("sender", w),
        "messages",
        "characters",
        "rooms"
    ));
    for s in &top {
        human.push_str(&format!(
            "{}  {:>8}  {:>10}  {:>5}\n",
            pad(&name(s), w),
            s.messages,
            s.characters,
            s.rooms
        ));
    }
    let rooms: Vec<&RoomRow> = agg.rooms.iter().take(opts.top).collect();
    let w = rooms
        .iter()
        .map(|r| width(&r.room))
        .max()
        .unwrap_or(4)
        .max(4);
    human.push_str(&format!(
        "\n{}  {:>8}  {:>7}  {:>12}\n",
        pad("room", w),
        "messages",
        "senders",
        "busiest hour"
    ));
    for r in &rooms {
        human.push_str(&format!(
            "{}  {:>8}  {:>7}  {:>12}\n",
            pad(&r.room, w),
            r.messages,
            r.senders,
            r.busiest_hour
                .map(|h| format!("{h:02}:00"))
                .unwrap_or_default()
        ));
    }
    human.push_str(&format!("\nwritten to {}\n", dest.display()));
    let mut json = summary_json(agg, opts.top);
    json["stage"] = json!("aggregate");
    json["status"] = json!("ok");
    json["exit_code"] = json!(0);
    json["dir"] = json!(dest.display().to_string());
    json["duration_s"] = json!(seconds);
    Outcome {
        exit: ExitCode::Ok,
        human,
        json,
    }
}

/// The date's aggregates when they are what `run` would make of the committed date now: by this
/// version, in the zone, with the codec and stop words of `settings`, without system messages
/// and with top lists of `top` (not an `aggregate --include-system` or `--top` made by hand).
pub fn committed_dir(
    layout: &Layout,
    date: NaiveDate,
    settings: &Settings,
    top: usize,
) -> Option<PathBuf> {
    let d = layout.aggregates_dir(date);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).ok()?).ok()?;
    let same = summary["version"] == env!("CARGO_PKG_VERSION")
        && summary["tz"] == settings.tz.name()
        && summary["include_system"] == false
        && summary["top"] == top
        && summary["stop_words"] == json!(sorted_stop_words(settings));
    (same && written_with(&d.join("senders.parquet"), settings.compression)).then_some(d)
}

fn sorted_stop_words(settings: &Settings) -> Vec<String> {
    let mut v = settings.stop_words.clone();
    v.sort();
    v.dedup();
    v
}

/// Whether a table was compressed with `codec` (as the aggregates use it: zstd at any level),
/// from its first column chunk (a table without one compressed nothing); false when it cannot be
/// read.
fn written_with(table: &Path, codec: Codec) -> bool {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let Some(reader) = File::open(table)
        .ok()
        .and_then(|f| SerializedFileReader::new(f).ok())
    else {
        return false;
    };
    let first = reader
        .metadata()
        .row_groups()
        .first()
        .and_then(|g| g.columns().first());
    let expected = crate::stage::write::parquet_codec(codec);
    first.is_none_or(|c| {
        std::mem::discriminant(&c.compression()) == std::mem::discriminant(&expected)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_powers_of_two_within_bounds() {
        assert_eq!(slice_rows(512, 2), 128 << 10);
        assert_eq!(slice_rows(600, 2), 128 << 10);
        assert_eq!(slice_rows(16, 2), 16 << 10);
        assert_eq!(slice_rows(1 << 20, 1), 1 << 20);
    }

    #[test]
    fn tokens_strip_punctuation_and_keep_hangul() {
        let t: Vec<_> =
            tokens("안녕하세요! 회의 시작할까요? Deploy, 'quoted' {json} 😀 ... a/b").collect();
        assert_eq!(
            t,
            [
                "안녕하세요",
                "회의",
                "시작할까요",
                "deploy",
                "quoted",
                "json",
                "a/b"
            ]
        );
        // Lower-casing is `to_lowercase`, title-case letters included; lower-case words are
        // borrowed.
        for w in ["ǅemal", "ᾈ", "ÀB", "straße", "안녕"] {
            assert_eq!(tokens(w).next().unwrap(), w.to_lowercase());
        }
        assert!(matches!(
            tokens("안녕 ok").next(),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }

    /// `tokens` as first written, with the standard library's Unicode tables throughout.
    fn tokens_reference(text: &str) -> Vec<String> {
        text.split_whitespace()
            .filter_map(|t| {
                let w = t.trim_matches(|c: char| !c.is_alphanumeric());
                (!w.is_empty()).then(|| w.to_lowercase())
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn tokens_match_the_unicode_tables(
            text in proptest::string::string_regex(
                "([a-zA-Z0-9 ,.!?'{}]|[가-힣]|[ㄱ-ㅎ]|[ǄǅǆÀ-ÿΑ-ω]|\\PC|\\s){0,40}"
            ).unwrap()
        ) {
            let got: Vec<String> = tokens(&text).map(|w| w.into_owned()).collect();
            proptest::prop_assert_eq!(got, tokens_reference(&text));
        }
    }

    #[test]
    fn case_and_letters_agree_with_the_tables_on_every_char() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            assert_eq!(is_alphanumeric(c), c.is_alphanumeric(), "{c:?}");
            let changes = c.is_uppercase() || !c.to_lowercase().eq([c]);
            assert_eq!(changes_case(c), changes, "{c:?}");
        }
    }

    #[test]
    fn hours_are_in_the_zone_and_busiest_breaks_ties_early() {
        let seoul: Tz = "Asia/Seoul".parse().unwrap();
        // 2024-10-24T00:30:00Z is 09:30 in Seoul.
        let t = chrono::DateTime::parse_from_rfc3339("2024-10-24T00:30:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(hour_in(t, &seoul), Some(9));
        assert_eq!(hour_in(t, &chrono_tz::UTC), Some(0));
        // Every quarter hour of a year with two transitions, and of a half-hour zone with a
        // 30-minute transition (Lord Howe), agrees with the per-timestamp conversion.
        for zone in [
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "UTC",
        ] {
            let tz: Tz = zone.parse().unwrap();
            let mut hours = LocalHours::new(&tz);
            let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:07:00Z")
                .unwrap()
                .timestamp_micros();
            for q in 0..(366 * 96) {
                let t = start + q * 900_000_000;
                assert_eq!(hours.hour(t), hour_in(t, &tz), "{zone} at {t}");
            }
        }
        let mut hours = LocalHours::new(&seoul);
        assert_eq!(hours.hour(t), Some(9));
        assert_eq!(hours.hour(i64::MAX), None);
        assert_eq!(hours.hour(-1), hour_in(-1, &seoul));
        // At chrono's limits, with the hour just checked in the cache: the time past the last
        // valid one shares no hour with it (the range is checked on a cache miss only).
        let max = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros();
        let min = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros();
        assert!(hours.hour(max).is_some());
        assert_eq!(hours.hour(max + 1), None);
        assert!(hours.hour(min).is_some());
        assert_eq!(hours.hour(min - 1), None);
        let mut h = [0u64; 24];
        h[3] = 5;
        h[7] = 5;
        assert_eq!(busiest(&h), (Some(3), 5));
        assert_eq!(busiest(&[0; 24]), (None, 0));
    }

    #[test]
    fn wide_characters_pad_by_columns() {
        assert_eq!(width("하늘"), 4);
        assert_eq!(pad("하늘", 6), "하늘  ");
        assert_eq!(pad("ab", 4), "ab  ");
    }
}
