//! Duplicate Kafka records across a date's files, found in bounded memory.
//!
//! `extract` stages every record and notes, for each one with a Kafka offset, a fixed-size key:
//! (room hash, offset, content hash, staged row, file, sender). Keys are sorted in runs that fit
//! a share of the memory budget, runs that do not all fit are spilled to disk, and a k-way merge
//! visits every (room, offset) group in (content, row) order. In each group the first staged row
//! of each distinct content is kept; a later row with a content seen before in the group is an
//! exact duplicate and is dropped; each kept content other than the group's first row is an
//! offset conflict. (The same rule as comparing each record against the earlier ones online, but
//! memory no longer grows with the number of records: 40 bytes a key on disk, one bit a row for
//! the rows dropped.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes of one key on disk.
const KEY_BYTES: usize = 40;
/// Bit of `Key::row_flags` set for records from a system sender.
const SYSTEM: u64 = 1 << 63;
/// Bit of `Key::row_flags` set for records without a usable time.
const NO_TS: u64 = 1 << 62;
const ROW_MASK: u64 = NO_TS - 1;

/// What is known of one staged record with a Kafka offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    room: u64,
    offset: i64,
    content: u64,
    /// The staged row number and the `SYSTEM`/`NO_TS` flags.
    row_flags: u64,
    file: u32,
    sender: u32,
}

impl Key {
    /// A key for staged row `row` of input file `file` (an index) and sender `sender` (an index).
    pub fn new(room: u64, offset: i64, content: u64, row: u64, file: u32, sender: u32) -> Key {
        debug_assert!(row <= ROW_MASK);
        Key {
            room,
            offset,
            content,
            row_flags: row & ROW_MASK,
            file,
            sender,
        }
    }

    /// Marks the record as a system record and/or one without time.
    pub fn with_flags(mut self, system: bool, no_ts: bool) -> Key {
        if system {
            self.row_flags |= SYSTEM;
        }
        if no_ts {
            self.row_flags |= NO_TS;
        }
        self
    }

    fn row(&self) -> u64 {
        self.row_flags & ROW_MASK
    }

    fn order(&self) -> (u64, i64, u64, u64) {
        (self.room, self.offset, self.content, self.row())
    }

    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        b[0..8].copy_from_slice(&self.room.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.content.to_le_bytes());
        b[24..32].copy_from_slice(&self.row_flags.to_le_bytes());
        b[32..36].copy_from_slice(&self.file.to_le_bytes());
        b[36..40].copy_from_slice(&self.sender.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; KEY_BYTES]) -> Key {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Key {
            room: u64_at(0),
            offset: u64_at(8) as i64,
            content: u64_at(16),
            row_flags: u64_at(24),
            file: u32_at(32),
            sender: u32_at(36),
        }
    }
}

/// Counts the resolution charges to one input file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileTally {
    /// Exact duplicates dropped from this file.
    pub duplicates: u64,
    /// Offset conflicts (kept) in this file.
    pub conflicts: u64,
    /// Dropped rows that were system records.
    pub dropped_system: u64,
    /// Dropped rows without time.
    pub dropped_no_ts: u64,
}

/// The outcome: which staged rows to drop, and the counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// One bit per staged row (bit `row % 64` of word `row / 64`), set for rows to drop.
    pub dropped: Vec<u64>,
    /// Rows dropped in all.
    pub dropped_rows: u64,
    /// Per input file, by the index given to [`Key::new`].
    pub files: Vec<FileTally>,
    /// Rows dropped per sender index.
    pub senders: Vec<u64>,
}

/// Runs merged at once: more are first merged into longer runs, so open files (two per run in
/// the final merge, which is cut in two) and read buffers stay bounded whatever the number of
/// records.
const FAN_IN: usize = 64;
/// Most rooms whose last offset the index follows (see `DedupeIndex::rising`).
const RISING_ROOMS: usize = 1 << 12;

/// Last offset pushed per room.
type LastOffsets = HashMap<u64, i64, foldhash::fast::FixedState>;

/// Collects keys in sorted runs of at most `mem_bytes` and resolves them at the end.
pub struct DedupeIndex {
    buf: Vec<Key>,
    cap: usize,
    dir: PathBuf,
    runs: Vec<PathBuf>,
    /// Run files written so far (names are never reused).
    written: usize,
    /// The run being sorted and written on another thread, while keys go on arriving.
    pending: Option<(PathBuf, std::thread::JoinHandle<Result<()>>)>,
    /// The last offset of each room, while every room's offsets have grown in the order the
    /// keys arrived (as a Kafka consumer writes them): then no two keys share a (room, offset),
    /// and there is nothing to resolve. `None` once one did not (or too many rooms to follow).
    rising: Option<LastOffsets>,
}

impl Drop for DedupeIndex {
    fn drop(&mut self) {
        // Not left writing into a directory that is about to be removed.
        if let Some((_, h)) = self.pending.take() {
            let _ = h.join();
        }
    }
}

impl DedupeIndex {
    /// An empty index that spills into `dir` (created when first needed) once its keys exceed
    /// `mem_bytes`: keys arrive in one third while another is sorted into the last and written.
    pub fn new(dir: PathBuf, mem_bytes: usize) -> DedupeIndex {
        DedupeIndex {
            buf: Vec::new(),
            // A third for the keys arriving, a third for the run being sorted, a third for the
            // copy `sort_keys` sorts into.
            cap: (mem_bytes / 3 / std::mem::size_of::<Key>()).max(1024),
            dir,
            runs: Vec::new(),
            written: 0,
            pending: None,
            rising: Some(LastOffsets::default()),
        }
    }

    /// Notes one key; when the keys in memory fill their third of the budget, they are sorted and
    /// spilled on another thread.
    pub fn push(&mut self, k: Key) -> Result<()> {
        if let Some(last) = &mut self.rising {
            let rose = match last.get_mut(&k.room) {
                Some(o) if *o < k.offset => {
                    *o = k.offset;
                    true
                }
                Some(_) => false,
                None => {
                    last.insert(k.room, k.offset);
                    last.len() <= RISING_ROOMS
                }
            };
            if !rose {
                self.rising = None;
            }
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        self.buf.push(k);
        if self.buf.len() >= self.cap {
            // One run in the works at a time: the keys arriving, plus the run and its sorted
            // copy, are three thirds of the budget at most.
            self.wait()?;
            let keys = std::mem::take(&mut self.buf);
            let path = self.next_run()?;
            let run = path.clone();
            let sorter = std::thread::Builder::new()
                .spawn(move || write_keys(&run, sort_keys(keys).into_iter().map(Ok)));
            let sorter = sorter.map_err(|e| Error::io("cannot start a thread for", &path, e))?;
            self.pending = Some((path, sorter));
        }
        Ok(())
    }

    /// Waits for the run being written, if any.
    fn wait(&mut self) -> Result<()> {
        if let Some((path, sorter)) = self.pending.take() {
            sorter
                .join()
                .map_err(|_| Error::Internal("the duplicate-key sorter panicked".into()))??;
            self.runs.push(path);
        }
        Ok(())
    }

    /// The path of the next run file.
    fn next_run(&mut self) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        let path = self.dir.join(format!("keys-{:05}.bin", self.written));
        self.written += 1;
        Ok(path)
    }

    /// Writes sorted keys as the next run file.
    fn write_run(&mut self, keys: impl Iterator<Item = Result<Key>>) -> Result<()> {
        let path = self.next_run()?;
        write_keys(&path, keys)?;
        self.runs.push(path);
        Ok(())
    }

    /// Opens runs for a merge, with read buffers that share the index's memory with
    /// `readers_per_run - 1` more readers of each run.
    fn open(&self, runs: &[PathBuf], readers_per_run: usize) -> Result<Vec<Source<'static>>> {
        let readers = runs.len().max(1) * readers_per_run.max(1);
        let buf = (self.cap * KEY_BYTES / readers).clamp(16 << 10, 256 << 10);
        runs.iter()
            .map(|p| {
                let f = File::open(p).map_err(|e| Error::io("cannot read", p, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| Error::io("cannot read", p, e))?
                    .len();
                if len % KEY_BYTES as u64 != 0 {
                    return Err(Error::Internal(format!(
                        "{}: {len} bytes is not a whole number of keys",
                        p.display()
                    )));
                }
                Ok(Source::File {
                    reader: BufReader::with_capacity(buf, f),
                    path: p.clone(),
                    left: len / KEY_BYTES as u64,
                })
            })
            .collect()
    }

    /// Resolves duplicates among `rows` staged rows from `files` input files and `senders`
    /// senders, and removes the spill files.
    pub fn resolve(mut self, rows: u64, files: usize, senders: usize) -> Result<Resolution> {
        let new_res = || Resolution {
            dropped: vec![0; rows.div_ceil(64) as usize],
            dropped_rows: 0,
            files: vec![FileTally::default(); files],
            senders: vec![0; senders],
        };
        if self.rising.is_some() {
            // Every (room, offset) is distinct: nothing to drop, no conflict. (The merge that
            // finds this out was a twentieth of extract at 1 GB.)
            self.wait()?;
            if !self.runs.is_empty() {
                fs::remove_dir_all(&self.dir)
                    .map_err(|e| Error::io("cannot remove", &self.dir, e))?;
            }
            return Ok(new_res());
        }
        // The keys still in memory are sorted in two halves on two threads (the sort was most of
        // the time the extract waits here), and merged with the runs. The last spilled run is
        // finished first: with it and its sorted copy still in memory, the halves and their
        // copies would take the index over its budget.
        self.wait()?;
        let mut first = std::mem::take(&mut self.buf);
        let second = first.split_off(first.len() / 2);
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| sort_keys(first));
            let second = sort_keys(second);
            (first.join(), second)
        });
        let first =
            first.map_err(|_| Error::Internal("the duplicate-key sorter panicked".into()))?;
        // Too many runs for one merge with the two halves in memory (a small budget and a big
        // day): merge the oldest FAN_IN (or all) into one longer run until few enough are left.
        while self.runs.len() + 2 > FAN_IN {
            let n = FAN_IN.min(self.runs.len());
            let batch: Vec<PathBuf> = self.runs.drain(..n).collect();
            let merged = Merge::new(self.open(&batch, 1)?)?;
            self.write_run(merged)?;
            for p in &batch {
                fs::remove_file(p).map_err(|e| Error::io("cannot remove", p, e))?;
            }
        }
        // The final merge in two halves of the key space, one per thread: keys of rooms before
        // `split` and the others. A (room, offset) group is never cut, so each half resolves its
        // groups alone, and the halves' outcomes add up. (One merge was half a second at 1 GB,
        // with the other core idle.)
        let split = first.get(first.len() / 2).map(|k| k.room);
        let mut low: Vec<Source<'_>> =
            self.open(&self.runs, if split.is_some() { 2 } else { 1 })?;
        let mut high = Vec::new();
        if let Some(split) = split {
            for s in &mut low {
                high.push(s.split_at_room(split)?);
            }
        }
        for keys in [&first, &second] {
            let at = split.map_or(keys.len(), |r| keys.partition_point(|k| k.room < r));
            low.push(Source::Memory(keys[..at].iter().copied()));
            high.push(Source::Memory(keys[at..].iter().copied()));
        }
        let (low, high) = std::thread::scope(|s| {
            let high = s.spawn(|| resolve_merge(high, new_res()));
            let low = resolve_merge(low, new_res());
            let high = high
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("a duplicate merge panicked".into())));
            (low, high)
        });
        let (mut res, high) = (low?, high?);
        res.add(high);
        if !self.runs.is_empty() {
            fs::remove_dir_all(&self.dir).map_err(|e| Error::io("cannot remove", &self.dir, e))?;
        }
        Ok(res)
    }
}

/// Sorts keys by [`Key::order`] into a new vector. The keys are placed by room first (a counting
/// sort, rooms in order), then each room's keys are sorted: keys that arrive in offset order, as
/// a Kafka consumer writes them, are found in order in one pass (the standard sort checks for
/// that first), where one sort of all the keys compared and moved each key some twenty times.
/// More distinct rooms than a sixteenth of the keys take that one sort.
fn sort_keys(mut keys: Vec<Key>) -> Vec<Key> {
    type Rooms = HashMap<u64, usize, foldhash::fast::FixedState>;
    let mut rooms = Rooms::default();
    let most = keys.len() / 16 + 1;
    for k in &keys {
        *rooms.entry(k.room).or_insert(0) += 1;
        if rooms.len() > most {
            keys.sort_unstable_by_key(Key::order);
            return keys;
        }
    }
    // Each room's first place in the output, rooms in order.
    let mut by_room: Vec<(u64, usize)> = rooms.iter().map(|(&r, &n)| (r, n)).collect();
    by_room.sort_unstable();
    let mut at = 0;
    for (room, n) in &by_room {
        rooms.insert(*room, at);
        at += n;
    }
    let mut out = vec![Key::new(0, 0, 0, 0, 0, 0); keys.len()];
    for k in &keys {
        let next = rooms.get_mut(&k.room).expect("every room was counted");
        out[*next] = *k;
        *next += 1;
    }
    drop(keys);
    let mut start = 0;
    for (_, n) in by_room {
        out[start..start + n].sort_unstable_by_key(Key::order);
        start += n;
    }
    out
}

/// Visits the merged keys of `sources` group by group into `res`.
fn resolve_merge(sources: Vec<Source<'_>>, mut res: Resolution) -> Result<Resolution> {
    let mut group = Group::default();
    for k in Merge::new(sources)? {
        group.add(&k?, &mut res)?;
    }
    group.close(&mut res);
    Ok(res)
}

impl Resolution {
    /// Adds the outcome of another part of the keys (same rows, files and senders).
    fn add(&mut self, o: Resolution) {
        for (w, x) in self.dropped.iter_mut().zip(o.dropped) {
            *w |= x;
        }
        self.dropped_rows += o.dropped_rows;
        for (t, x) in self.files.iter_mut().zip(o.files) {
            // Every field named: one added to `FileTally` must be added here too.
            let FileTally {
                duplicates,
                conflicts,
                dropped_system,
                dropped_no_ts,
            } = x;
            t.duplicates += duplicates;
            t.conflicts += conflicts;
            t.dropped_system += dropped_system;
            t.dropped_no_ts += dropped_no_ts;
        }
        for (n, x) in self.senders.iter_mut().zip(o.senders) {
            *n += x;
        }
    }
}

/// Writes sorted keys to a run file.
fn write_keys(path: &Path, keys: impl Iterator<Item = Result<Key>>) -> Result<()> {
    let err = |e| Error::io("cannot write", path, e);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(err)?);
    for k in keys {
        w.write_all(&k?.to_bytes()).map_err(err)?;
    }
    w.into_inner().map_err(|e| err(e.into_error()))?;
    Ok(())
}

/// A k-way merge of sorted sources, in key order.
struct Merge<'a> {
    sources: Vec<Source<'a>>,
    heap: BinaryHeap<Reverse<Head>>,
}

impl<'a> Merge<'a> {
    fn new(mut sources: Vec<Source<'a>>) -> Result<Merge<'a>> {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(k) = s.next()? {
                heap.push(Reverse(Head(k, i)));
            }
        }
        Ok(Merge { sources, heap })
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Key>;

    fn next(&mut self) -> Option<Result<Key>> {
        let Reverse(Head(k, i)) = self.heap.pop()?;
        match self.sources[i].next() {
            Ok(Some(next)) => self.heap.push(Reverse(Head(next, i))),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(k))
    }
}

/// A key and the source it came from, ordered by the key.
struct Head(Key, usize);

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.0.order() == o.0.order()
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.order().cmp(&o.0.order())
    }
}

enum Source<'a> {
    /// Sorted keys in memory.
    Memory(std::iter::Copied<std::slice::Iter<'a, Key>>),
    /// A run file (whole keys only: checked when opened), its path and the keys left to read.
    File {
        reader: BufReader<File>,
        path: PathBuf,
        left: u64,
    },
}

impl<'a> Source<'a> {
    fn next(&mut self) -> Result<Option<Key>> {
        match self {
            Source::Memory(it) => Ok(it.next()),
            Source::File { left: 0, .. } => Ok(None),
            Source::File { reader, path, left } => {
                let mut b = [0u8; KEY_BYTES];
                match reader.read_exact(&mut b) {
                    Ok(()) => {
                        *left -= 1;
                        Ok(Some(Key::from_bytes(&b)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Internal(
                        format!("{}: the run ended early (truncated)", path.display()),
                    )),
                    Err(e) => Err(Error::io("cannot read", path, e)),
                }
            }
        }
    }

    /// Splits an unread run file at its first key of room `room` or later: this source keeps
    /// the keys before, the returned one (the same file, opened again) the rest.
    fn split_at_room(&mut self, room: u64) -> Result<Source<'a>> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::FileExt;
        let Source::File { reader, path, left } = self else {
            return Err(Error::Internal("only a run file is split".into()));
        };
        let path: &Path = path;
        let f = reader.get_ref();
        let room_at = |i: u64| -> Result<u64> {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, i * KEY_BYTES as u64)
                .map_err(|e| Error::io("cannot read", path, e))?;
            Ok(u64::from_le_bytes(b))
        };
        // Binary search for the first key whose room is not below `room`.
        let (mut lo, mut hi) = (0u64, *left);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if room_at(mid)? < room {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut high = File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
        high.seek(SeekFrom::Start(lo * KEY_BYTES as u64))
            .map_err(|e| Error::io("cannot read", path, e))?;
        let high = Source::File {
            reader: BufReader::with_capacity(reader.capacity(), high),
            path: path.to_path_buf(),
            left: *left - lo,
        };
        *left = lo;
        Ok(high)
    }
}

/// The (room, offset) group being visited, in (content, row) order.
#[derive(Default)]
struct Group {
    key: Option<(u64, i64)>,
    content: u64,
    /// The group's first staged row and its file.
    first: (u64, u32),
}

impl Group {
    fn add(&mut self, k: &Key, res: &mut Resolution) -> Result<()> {
        if self.key != Some((k.room, k.offset)) {
            self.close(res);
            self.key = Some((k.room, k.offset));
            self.first = (k.row(), k.file);
        } else if k.content == self.content {
            return drop_row(k, res);
        }
        // The first row of a content in its group: kept, and counted as a conflict until the
        // group closes and the group's first row is uncounted.
        self.content = k.content;
        if k.row() < self.first.0 {
            self.first = (k.row(), k.file);
        }
        tally(res, k.file)?.conflicts += 1;
        Ok(())
    }

    fn close(&mut self, res: &mut Resolution) {
        if self.key.take().is_some() {
            // The group's first row was counted as a conflict when its content began.
            res.files[self.first.1 as usize].conflicts -= 1;
        }
    }
}

fn tally(res: &mut Resolution, file: u32) -> Result<&mut FileTally> {
    res.files
        .get_mut(file as usize)
        .ok_or_else(|| Error::Internal(format!("duplicate index: no file #{file}")))
}

fn drop_row(k: &Key, res: &mut Resolution) -> Result<()> {
    let row = k.row();
    let word = res
        .dropped
        .get_mut((row / 64) as usize)
        .ok_or_else(|| Error::Internal(format!("duplicate index: no staged row {row}")))?;
    *word |= 1 << (row % 64);
    res.dropped_rows += 1;
    let sender = res
        .senders
        .get_mut(k.sender as usize)
        .ok_or_else(|| Error::Internal(format!("duplicate index: no sender #{}", k.sender)))?;
    *sender += 1;
    let t = tally(res, k.file)?;
    t.duplicates += 1;
    t.dropped_system += u64::from(k.row_flags & SYSTEM != 0);
    t.dropped_no_ts += u64::from(k.row_flags & NO_TS != 0);
    Ok(())
}

/// Whether staged row `row` is set in a bitmap from [`Resolution::dropped`].
pub fn is_dropped(bits: &[u64], row: u64) -> bool {
    bits.get((row / 64) as usize)
        .is_some_and(|w| w & (1 << (row % 64)) != 0)
}

/// Writes a bitmap as little-endian words.
pub fn write_bitmap(path: &Path, bits: &[u64]) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for word in bits {
        w.write_all(&word.to_le_bytes())?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// Reads a bitmap written by [`write_bitmap`] for `rows` rows.
pub fn read_bitmap(path: &Path, rows: u64) -> io::Result<Vec<u64>> {
    let bytes = fs::read(path)?;
    let words = rows.div_ceil(64) as usize;
    if bytes.len() != words * 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} bytes, expected {} for {rows} rows",
                bytes.len(),
                words * 8
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    /// The online rule `extract` used before: the first content at an offset is kept; a later
    /// equal content is a duplicate; another content is a conflict the first time (kept), a
    /// duplicate after.
    fn online(keys: &[Key], files: usize) -> (Vec<u64>, Vec<FileTally>) {
        let mut seen: HashMap<(u64, i64), u64> = HashMap::new();
        let mut conflicting: HashSet<(u64, i64, u64)> = HashSet::new();
        let mut dropped = Vec::new();
        let mut t = vec![FileTally::default(); files];
        for k in keys {
            let f = &mut t[k.file as usize];
            match seen.get(&(k.room, k.offset)) {
                Some(&c) if c == k.content => {}
                Some(_) if conflicting.insert((k.room, k.offset, k.content)) => {
                    f.conflicts += 1;
                    continue;
                }
                Some(_) => {}
                None => {
                    seen.insert((k.room, k.offset), k.content);
                    continue;
                }
            }
            dropped.push(k.row());
            f.duplicates += 1;
            f.dropped_system += u64::from(k.row_flags & SYSTEM != 0);
            f.dropped_no_ts += u64::from(k.row_flags & NO_TS != 0);
        }
        (dropped, t)
    }

    fn keys_from(spec: &[(u8, u8, u8, bool)], files: u32) -> Vec<Key> {
        spec.iter()
            .enumerate()
            .map(|(row, &(room, offset, content, sys))| {
                Key::new(
                    u64::from(room),
                    i64::from(offset) - 2,
                    u64::from(content),
                    row as u64,
                    row as u32 % files,
                    u32::from(content % 3),
                )
                .with_flags(sys, content % 2 == 0)
            })
            .collect()
    }

    /// An index under `dir` that spills a run every `cap` keys, given `keys`, its runs written.
    fn spilled(dir: &Path, cap: usize, keys: impl IntoIterator<Item = Key>) -> DedupeIndex {
        let mut idx = DedupeIndex::new(dir.join("d"), 0);
        idx.cap = cap;
        for k in keys {
            idx.push(k).unwrap();
        }
        idx.wait().unwrap();
        idx
    }

    fn resolve(keys: &[Key], files: usize, mem_keys: usize) -> Resolution {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = DedupeIndex::new(dir.path().join("d"), 0);
        idx.cap = mem_keys;
        // Two rows after the last key have none (records without an offset).
        let rows = keys.last().map_or(0, |k| k.row() + 2);
        for k in keys {
            idx.push(*k).unwrap();
        }
        let res = idx.resolve(rows, files, 3).unwrap();
        assert!(!dir.path().join("d").exists(), "spill files removed");
        res
    }

    /// Resolves `keys` and checks the rows dropped and the per-file tallies against the online
    /// rule; gives the resolution.
    fn agrees_with_online(
        keys: &[Key],
        files: usize,
        mem_keys: usize,
    ) -> Result<Resolution, TestCaseError> {
        let (dropped, tallies) = online(keys, files);
        let res = resolve(keys, files, mem_keys);
        let got: Vec<u64> = (0..keys.len() as u64 + 2)
            .filter(|&r| is_dropped(&res.dropped, r))
            .collect();
        prop_assert_eq!(&got, &dropped);
        prop_assert_eq!(res.dropped_rows, dropped.len() as u64);
        prop_assert_eq!(&res.files, &tallies);
        Ok(res)
    }

    proptest! {
        /// `sort_keys` gives the order of one sort of all the keys: few rooms or many (the
        /// fallback), offsets in arrival order or not, with repeated (room, offset, content).
        #[test]
        fn sort_keys_is_the_order_of_one_sort(
            spec in proptest::collection::vec((0u64..4, 0i64..6, 0u64..3), 0..400),
            many_rooms in any::<bool>(),
            offsets_in_order in any::<bool>(),
        ) {
            let keys: Vec<Key> = spec
                .iter()
                .enumerate()
                .map(|(i, &(room, off, content))| {
                    let room = if many_rooms { (i as u64 * 7919) % 1021 } else { room << 40 };
                    let off = if offsets_in_order { i as i64 / 3 } else { off };
                    Key::new(room, off, content, i as u64, (i % 3) as u32, (i % 5) as u32)
                        .with_flags(i % 2 == 0, i % 7 == 0)
                })
                .collect();
            let mut want = keys.clone();
            want.sort_unstable_by_key(Key::order);
            prop_assert_eq!(sort_keys(keys), want);
        }

        #[test]
        fn same_as_the_online_rule(
            spec in proptest::collection::vec((0u8..3, 0u8..5, 0u8..4, any::<bool>()), 0..300),
            mem_keys in 1usize..64,
        ) {
            let keys = keys_from(&spec, 3);
            let res = agrees_with_online(&keys, 3, mem_keys)?;
            let by_sender: u64 = res.senders.iter().sum();
            prop_assert_eq!(by_sender, res.dropped_rows);
        }
    }

    proptest! {
        /// Offsets that rise in every room (a global counter over interleaved rooms, as a
        /// consumer writes them) resolve without a merge; a repeat of an earlier record, or an
        /// offset that goes back, makes the index merge; both agree with the online rule.
        #[test]
        fn rising_offsets_and_one_step_back(
            rooms in proptest::collection::vec(0u64..40, 1..400),
            back in proptest::option::of((any::<prop::sample::Index>(), 0u64..2)),
            mem_keys in 1usize..64,
        ) {
            let mut keys: Vec<Key> = rooms
                .iter()
                .enumerate()
                .map(|(i, &room)| Key::new(room, i as i64, i as u64 % 5, i as u64, 0, 0))
                .collect();
            if let Some((at, changed)) = back {
                // An earlier key again, same content (a duplicate) or not (a conflict).
                let k = keys[at.index(keys.len())];
                keys.push(Key::new(k.room, k.offset, k.content + changed, keys.len() as u64, 0, 0));
            }
            let dir = tempfile::tempdir().unwrap();
            let idx = spilled(dir.path(), mem_keys, keys.iter().copied());
            prop_assert_eq!(idx.rising.is_some(), back.is_none());
            agrees_with_online(&keys, 1, mem_keys)?;
        }
    }

    #[test]
    fn too_many_rooms_to_follow_take_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let keys = (0..=RISING_ROOMS as u64).map(|r| Key::new(r, 0, 0, r, 0, 0));
        let idx = spilled(dir.path(), 1 << 20, keys);
        assert!(idx.rising.is_none());
        let res = idx.resolve(RISING_ROOMS as u64 + 1, 1, 1).unwrap();
        assert_eq!(res.dropped_rows, 0);
    }

    #[test]
    fn halves_of_the_key_space_resolve_as_one_merge() {
        // 40 rooms, spilled runs and keys in memory: the final merge is cut at a room in the
        // middle, each run file is split by binary search, and the halves' outcomes add up to
        // the online rule's.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let spec: Vec<(u8, u8, u8, bool)> = (0..5000)
            .map(|_| {
                let r = next();
                (
                    (r % 40) as u8,
                    (r >> 8) as u8 % 20,
                    (r >> 16) as u8 % 3,
                    r >> 24 & 1 == 1,
                )
            })
            .collect();
        let keys = keys_from(&spec, 3);
        let (dropped, tallies) = online(&keys, 3);
        for mem_keys in [300, 1700, 4999, 5000, 6000] {
            let res = resolve(&keys, 3, mem_keys);
            let got: Vec<u64> = (0..spec.len() as u64 + 2)
                .filter(|&r| is_dropped(&res.dropped, r))
                .collect();
            assert_eq!(got, dropped, "{mem_keys} keys in memory");
            assert_eq!(res.files, tallies);
            assert_eq!(res.senders.iter().sum::<u64>(), dropped.len() as u64);
        }
    }

    #[test]
    fn one_offset_in_two_files() {
        // Offset 7 of room 1: A (file 0), B (file 1), B, A; offset 8: C. Rows 1..=5.
        let keys = [
            Key::new(1, 7, 0xA, 1, 0, 0),
            Key::new(1, 7, 0xB, 2, 1, 1),
            Key::new(1, 7, 0xB, 3, 1, 1),
            Key::new(1, 7, 0xA, 4, 1, 0).with_flags(true, true),
            Key::new(1, 8, 0xC, 5, 1, 2),
        ];
        let res = resolve(&keys, 2, 2);
        assert_eq!(res.dropped_rows, 2);
        assert_eq!(res.dropped, vec![(1 << 3) | (1 << 4)]);
        assert_eq!(res.files[0], FileTally::default());
        assert_eq!(
            res.files[1],
            FileTally {
                duplicates: 2,
                conflicts: 1,
                dropped_system: 1,
                dropped_no_ts: 1
            }
        );
        assert_eq!(res.senders, vec![1, 1, 0]);
    }

    #[test]
    fn a_truncated_run_is_an_error_not_an_early_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = DedupeIndex::new(dir.path().join("d"), 0);
        idx.cap = 2;
        // Offsets that go back, so that the runs are merged (rising ones need no merge).
        for row in 0..5 {
            idx.push(Key::new(1, row as i64 % 2, 0, row, 0, 0)).unwrap();
        }
        let run = idx.runs[0].clone();
        let f = fs::OpenOptions::new().write(true).open(&run).unwrap();
        f.set_len(KEY_BYTES as u64 + 7).unwrap();
        let e = idx.resolve(5, 1, 1).unwrap_err();
        assert!(e.to_string().contains("not a whole number of keys"), "{e}");
    }

    #[test]
    fn a_run_cut_short_after_opening_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let idx = spilled(
            dir.path(),
            4,
            (0..4).map(|row| Key::new(1, row as i64, 0, row, 0, 0)),
        );
        let mut sources = idx.open(&idx.runs, 1).unwrap();
        // Whole keys, but fewer than when the run was opened.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&idx.runs[0])
            .unwrap();
        f.set_len(2 * KEY_BYTES as u64).unwrap();
        let s = &mut sources[0];
        assert!(s.next().unwrap().is_some() && s.next().unwrap().is_some());
        let e = s.next().unwrap_err();
        assert!(e.to_string().contains("ended early"), "{e}");
    }

    #[test]
    fn a_split_run_file_reads_each_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let idx = spilled(
            dir.path(),
            10,
            (0..10).map(|row| Key::new(row / 3, 0, 0, row, 0, 0)),
        );
        let drain = |s: &mut Source| {
            std::iter::from_fn(|| s.next().unwrap())
                .map(|k| k.room)
                .collect::<Vec<_>>()
        };
        // Rooms 0, 0, 0, 1, 1, 1, 2, 2, 2, 3 in one run, split before room 0, 2 and 9.
        let all: Vec<u64> = (0..10).map(|r| r / 3).collect();
        for (room, low_keys) in [(0, 0), (2, 6), (9, 10)] {
            let mut low = idx.open(&idx.runs, 2).unwrap().remove(0);
            let mut high = low.split_at_room(room).unwrap();
            let (l, h) = (drain(&mut low), drain(&mut high));
            assert_eq!(l, all[..low_keys], "split at room {room}");
            assert_eq!(h, all[low_keys..], "split at room {room}");
        }
    }

    #[test]
    fn many_runs_merge_in_passes() {
        // Run counts around the fan-in: one merge pass of every run left (63), passes that end
        // on 63 (126, 189) and on fewer (200: 137, 74, 11), none (61, 62).
        for runs in [61u64, 62, 63, 64, 126, 189, 200] {
            let dir = tempfile::tempdir().unwrap();
            // One key per run: offsets 0..runs/2, then again (exact duplicates) to the last run.
            let half = runs / 2;
            let keys = (0..runs).map(|row| Key::new(1, (row % half) as i64, 9, row, 0, 0));
            let idx = spilled(dir.path(), 1, keys);
            assert_eq!(idx.runs.len() as u64, runs);
            let res = idx.resolve(runs, 1, 1).unwrap();
            assert_eq!(res.dropped_rows, runs - half, "{runs} runs");
            assert!((0..half).all(|r| !is_dropped(&res.dropped, r)));
            assert!((half..runs).all(|r| is_dropped(&res.dropped, r)));
            assert!(!dir.path().join("d").exists());
        }
    }

    #[test]
    fn keys_and_bitmaps_round_trip() {
        let k = Key::new(u64::MAX, i64::MIN, 3, ROW_MASK, u32::MAX, 9).with_flags(true, false);
        assert_eq!(Key::from_bytes(&k.to_bytes()), k);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        write_bitmap(&p, &[5, 1 << 63]).unwrap();
        assert_eq!(read_bitmap(&p, 128).unwrap(), vec![5, 1 << 63]);
        let e = read_bitmap(&p, 200).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(is_dropped(&[5], 2) && !is_dropped(&[5], 1) && !is_dropped(&[5], 64));
    }
}
