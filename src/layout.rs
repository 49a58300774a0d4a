//! Every output path, partition escaping, and the commit protocol.
//!
//! Nothing else in the crate builds an output path by hand: this module decides what a date owns
//! under the output root, so `clean-output` removes exactly that, and `write` commits exactly
//! that, atomically.
//!
//! ```text
//! out/messages/date=D/sender_id=S/part-00000.parquet   the dataset (Hive layout)
//! out/messages/date=D/_SUCCESS                         manifest, written last
//! out/rejects/date=D/rejects.jsonl
//! out/aggregates/date=D/...
//! out/_staging/date=D/                                  extract's output, write's input
//! out/_tmp/<dataset>-date=D-<pid>-<n>                   directories being built (leftovers of a crash)
//! out/_locks/date=D.lock                                per-date advisory lock
//! out/status/date=D.json                                last outcome of each stage (for notify)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::error::{Error, Result};

/// The Hive name of a null partition value.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// The datasets a date owns under the output root, in the order they are produced.
pub const DATASETS: [&str; 4] = ["messages", "rejects", "aggregates", "reports"];

/// Paths under one output root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The output root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `date=YYYY-MM-DD`, the partition directory name of a date.
    pub fn date_dir_name(date: NaiveDate) -> String {
        format!("date={}", date.format("%Y-%m-%d"))
    }

    /// `<root>/<dataset>/date=D`.
    pub fn dataset_dir(&self, dataset: &str, date: NaiveDate) -> PathBuf {
        self.root.join(dataset).join(Self::date_dir_name(date))
    }

    /// `<root>/messages`, the Hive dataset readers point at.
    pub fn messages_root(&self) -> PathBuf {
        self.root.join("messages")
    }

    /// `<root>/messages/date=D`.
    pub fn messages_dir(&self, date: NaiveDate) -> PathBuf {
        self.dataset_dir("messages", date)
    }

    /// `<root>/rejects/date=D`.
    pub fn rejects_dir(&self, date: NaiveDate) -> PathBuf {
        self.dataset_dir("rejects", date)
    }

    /// `<root>/aggregates/date=D`.
    pub fn aggregates_dir(&self, date: NaiveDate) -> PathBuf {
        self.dataset_dir("aggregates", date)
    }

    /// `<root>/_staging/date=D`: extract's output and write's input.
    pub fn staging_dir(&self, date: NaiveDate) -> PathBuf {
        self.dataset_dir("_staging", date)
    }

    /// `<root>/_tmp`: directories under construction.
    pub fn tmp_root(&self) -> PathBuf {
        self.root.join("_tmp")
    }

    /// `<root>/_locks/date=D.lock`.
    pub fn lock_file(&self, date: NaiveDate) -> PathBuf {
        self.root
            .join("_locks")
            .join(format!("{}.lock", Self::date_dir_name(date)))
    }

    /// `<root>/status/date=D.json`: the last outcome of each stage for the date.
    pub fn status_file(&self, date: NaiveDate) -> PathBuf {
        self.root
            .join("status")
            .join(format!("{}.json", Self::date_dir_name(date)))
    }

    /// Every path a date owns once committed (the staging area and its report included).
    pub fn owned_dirs(&self, date: NaiveDate) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = DATASETS.iter().map(|d| self.dataset_dir(d, date)).collect();
        v.push(self.staging_dir(date));
        v.push(self.report_file(date));
        // The stages' outcomes, which `notify --status auto` reads, describe output that goes.
        v.push(self.status_file(date));
        v
    }

    /// `<root>/reports/report_D.html`: the date's HTML report.
    pub fn report_file(&self, date: NaiveDate) -> PathBuf {
        self.root
            .join("reports")
            .join(format!("report_{}.html", date.format("%Y-%m-%d")))
    }

    /// Leftover temporary directories of interrupted runs for `date` (from any process).
    pub fn tmp_leftovers(&self, date: NaiveDate) -> Result<Vec<PathBuf>> {
        let tag = format!("-{}-", Self::date_dir_name(date));
        let dir = self.tmp_root();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot list the output", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list the output", &dir, e))?;
            if entry.file_name().to_string_lossy().contains(&tag) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates a fresh, empty temporary directory for building `dataset` of `date`.
    pub fn new_tmp_dir(&self, dataset: &str, date: NaiveDate) -> Result<PathBuf> {
        let tmp = self.tmp_root();
        fs::create_dir_all(&tmp).map_err(|e| Error::cant_create(&tmp, e))?;
        for n in 0u32.. {
            let p = tmp.join(format!(
                "{dataset}-{}-{}-{n}",
                Self::date_dir_name(date),
                std::process::id()
            ));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::cant_create(&p, e)),
            }
        }
        unreachable!("u32 range exhausted")
    }
}

/// Escapes a partition value the way Hive and Spark do (`ExternalCatalogUtils.escapePathName`).
///
/// The characters `" # % ' * / : = ? \ ^ { [ ] }`, DEL and the ASCII controls become `%XX`;
/// everything else, non-ASCII included, stays as UTF-8. An empty value cannot be represented and
/// is written as the null partition by the caller.
pub fn escape_partition_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        let needs = matches!(
            ch,
            '"' | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '^'
                | '{'
                | '['
                | ']'
                | '}'
                | '\u{7f}'
        ) || (ch as u32) < 0x20;
        if needs {
            out.push_str(&format!("%{:02X}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// The partition directory name of a sender: `sender_id=<escaped>`, or the Hive null partition.
///
/// Every Hive reader (Spark, DuckDB, Polars, pyarrow) reads a value that unescapes to
/// `__HIVE_DEFAULT_PARTITION__` as null, however it is escaped, so normalisation turns a sender
/// literally named that into a null sender (keeping the name in `extra`).
pub fn sender_dir_name(sender: Option<&str>) -> String {
    match sender {
        None | Some("") | Some(HIVE_NULL) => format!("sender_id={HIVE_NULL}"),
        Some(s) => format!("sender_id={}", escape_partition_value(s)),
    }
}

/// Longest escaped sender value that still makes a valid directory name (`sender_id=` + value
/// must fit the common 255-byte file-name limit).
pub const MAX_ESCAPED_SENDER_BYTES: usize = 255 - "sender_id=".len();

/// Shortens a sender ID whose partition directory name would not fit the file system.
///
/// Policy: the longest prefix (whole characters) whose escaped form fits, followed by `~` and the
/// first 16 hex digits of the SHA-256 of the full ID, so distinct long IDs stay distinct and the
/// value is stable across runs. Returns `None` when the ID fits as it is. The caller keeps the
/// full ID in the row's `extra` as `sender_id_full`, so nothing is lost.
pub fn shorten_sender_id(id: &str) -> Option<String> {
    // Escaping turns a byte into at most three (`%XX`): short names need no escaping to tell.
    if id.len() * 3 <= MAX_ESCAPED_SENDER_BYTES
        || escape_partition_value(id).len() <= MAX_ESCAPED_SENDER_BYTES
    {
        return None;
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(id.as_bytes());
    let suffix = format!("~{}", hex::encode(&digest[..8]));
    let budget = MAX_ESCAPED_SENDER_BYTES - suffix.len();
    let mut out = String::new();
    let mut used = 0;
    for ch in id.chars() {
        let n = escape_partition_value(ch.encode_utf8(&mut [0; 4])).len();
        if used + n > budget {
            break;
        }
        used += n;
        out.push(ch);
    }
    out.push_str(&suffix);
    Some(out)
}

/// Reverses [`escape_partition_value`] (used by tests and by readers of our own output).
pub fn unescape_partition_value(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a path (file, symlink or directory tree) without ever following a symlink.
///
/// A symlink is removed as a link; its target is never touched. Missing paths are fine.
pub fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Calls `fsync` on a file or directory.
pub fn fsync_path(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Bytes written between two requests to start writing a [`WritebackFile`] back to disk.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// A file being written that asks the kernel to start writing it back every 32 MiB, so that the
/// `fsync` at the end waits for the last stretch only, not for the whole file (a second and a
/// half for extract's 900 MB of staged records).
pub struct WritebackFile {
    file: fs::File,
    written: u64,
    started: u64,
}

impl WritebackFile {
    /// Wraps a file opened for writing at its start.
    pub fn new(file: fs::File) -> WritebackFile {
        WritebackFile {
            file,
            written: 0,
            started: 0,
        }
    }

    /// The file, e.g. to `sync_all` it.
    pub fn file(&self) -> &fs::File {
        &self.file
    }
}

impl io::Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_BYTES {
            start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Starts writing a range of a file back to disk without waiting for it: only a hint, so errors
/// are left to the `fsync` that follows.
#[cfg(target_os = "linux")]
fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on an open file descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &fs::File, _offset: u64, _len: u64) {}

/// Atomically puts the fully built directory `new` at `dest`, replacing what was there.
///
/// On Linux this is one `renameat2(RENAME_EXCHANGE)`: a reader sees the old complete directory or
/// the new complete one, never a mix and never nothing. The old content ends up at `new`'s path
/// and is removed afterwards. Where the exchange is not supported, the old directory is first
/// renamed aside, which leaves a short window in which `dest` is absent but never half-written.
pub fn swap_into_place(new: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().expect("destination has a parent");
    fs::create_dir_all(parent).map_err(|e| Error::cant_create(parent, e))?;
    let exists = fs::symlink_metadata(dest).is_ok();
    if !exists {
        fs::rename(new, dest).map_err(|e| Error::io("cannot commit", dest, e))?;
    } else {
        match exchange(new, dest) {
            Ok(()) => {}
            // Only where the file system cannot exchange: move the old directory aside first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                let aside = new.with_extension("old");
                fs::rename(dest, &aside).map_err(|e| Error::io("cannot move aside", dest, e))?;
                if let Err(e) = fs::rename(new, dest) {
                    // Put the previous output back before reporting.
                    let _ = fs::rename(&aside, dest);
                    return Err(Error::io("cannot commit", dest, e));
                }
                fs::rename(&aside, new).map_err(|e| Error::io("cannot move", &aside, e))?;
            }
            Err(e) => return Err(Error::io("cannot commit", dest, e)),
        }
        // The new output is in place; the old one (now at `new`) is only garbage. Failing to
        // remove it must not fail the commit: the next run removes leftovers.
        if let Err(e) = remove_path(new) {
            tracing::warn!(
                "cannot remove {}: {e} (left for the next run)",
                new.display()
            );
        }
    }
    fsync_path(parent).map_err(|e| Error::io("cannot sync", parent, e))?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let l = Layout::new("out");
        let date = d("2024-10-24");
        assert_eq!(
            l.messages_dir(date),
            PathBuf::from("out/messages/date=2024-10-24")
        );
        assert_eq!(
            l.rejects_dir(date),
            PathBuf::from("out/rejects/date=2024-10-24")
        );
        assert_eq!(
            l.staging_dir(date),
            PathBuf::from("out/_staging/date=2024-10-24")
        );
        assert_eq!(
            l.lock_file(date),
            PathBuf::from("out/_locks/date=2024-10-24.lock")
        );
    }

    #[test]
    fn escaping_matches_hive() {
        assert_eq!(escape_partition_value("ham"), "ham");
        assert_eq!(escape_partition_value("a/b"), "a%2Fb");
        assert_eq!(escape_partition_value("x=1"), "x%3D1");
        assert_eq!(escape_partition_value("100%"), "100%25");
        assert_eq!(escape_partition_value("dev ops"), "dev ops");
        assert_eq!(escape_partition_value("하늘😀"), "하늘😀");
        assert_eq!(escape_partition_value("a\tb"), "a%09b");
        assert_eq!(
            escape_partition_value("/=%:#?*'\"\\[]^{}"),
            "%2F%3D%25%3A%23%3F%2A%27%22%5C%5B%5D%5E%7B%7D"
        );
        assert_eq!(escape_partition_value(".."), "..");
    }

    #[test]
    fn sender_dirs() {
        assert_eq!(
            sender_dir_name(None),
            "sender_id=__HIVE_DEFAULT_PARTITION__"
        );
        assert_eq!(sender_dir_name(Some("a/b")), "sender_id=a%2Fb");
        assert_eq!(
            sender_dir_name(Some(HIVE_NULL)),
            "sender_id=__HIVE_DEFAULT_PARTITION__"
        );
    }

    #[test]
    fn escaping_round_trips() {
        for s in [
            "../../etc",
            "/abs/path",
            "a%2Fb",
            "100%",
            "하늘 😀 {x}",
            "q'\"\\",
        ] {
            assert_eq!(unescape_partition_value(&escape_partition_value(s)), s);
        }
    }

    #[test]
    fn long_sender_ids_are_shortened_stably_and_distinctly() {
        let a: String = "가".repeat(300);
        let b: String = format!("{}나", "가".repeat(299));
        let sa = shorten_sender_id(&a).unwrap();
        let sb = shorten_sender_id(&b).unwrap();
        assert!(escape_partition_value(&sa).len() <= MAX_ESCAPED_SENDER_BYTES);
        assert!(("sender_id=".len() + escape_partition_value(&sa).len()) <= 255);
        assert_ne!(sa, sb);
        assert_eq!(shorten_sender_id(&a).unwrap(), sa);
        assert!(sa.starts_with("가가가"));
        assert_eq!(shorten_sender_id("ham"), None);
        let slashes = "/".repeat(100);
        let s = shorten_sender_id(&slashes).unwrap();
        assert!(escape_partition_value(&s).len() <= MAX_ESCAPED_SENDER_BYTES);
    }

    #[test]
    fn tmp_leftovers_are_per_date() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let a = l.new_tmp_dir("messages", d("2024-10-24")).unwrap();
        let _b = l.new_tmp_dir("messages", d("2024-10-25")).unwrap();
        assert_eq!(l.tmp_leftovers(d("2024-10-24")).unwrap(), vec![a]);
    }

    #[test]
    fn swap_replaces_whole_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("messages/date=2024-10-24");
        fs::create_dir_all(&dest).unwrap();
        fs::write(dest.join("old.txt"), "old").unwrap();
        let new = dir.path().join("new");
        fs::create_dir_all(&new).unwrap();
        fs::write(new.join("new.txt"), "new").unwrap();
        swap_into_place(&new, &dest).unwrap();
        assert!(dest.join("new.txt").exists());
        assert!(!dest.join("old.txt").exists());
        assert!(!new.exists());
    }

    #[test]
    fn remove_path_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&target, victim.join("link")).unwrap();
        remove_path(&victim).unwrap();
        assert!(target.join("keep").exists());
        assert!(!victim.exists());
    }
}
