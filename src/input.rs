//! Input discovery: which files under the input root belong to a logical date, and their rooms.
//!
//! Without a configured pattern, a file belongs to date D when its path relative to the input
//! root contains D as `YYYY-MM-DD`, `YYYYMMDD` or `YYMMDD` with no digit directly before or
//! after (so `20241024` does not also count as `241024`, and `120241024` counts as nothing).
//! With `input_pattern`, the relative path must match the pattern, whose `{date}` or
//! `{date:STRFTIME}` placeholder is D formatted, `{room}` is one path segment naming the room,
//! `*` is any run of characters within a segment, `**/` any number of directories (none
//! included) and `**` elsewhere any run across segments.
//!
//! The room of a file is the pattern's `{room}`, else its first directory under the input root,
//! else (a file at the top level) its name without extensions. Hidden files and directories
//! (`.name`) and editor/partial temporaries (`name~`, `*.tmp`, `*.swp`, `*.part`, `#name#`) are
//! skipped. Symlinks are followed, but a directory reached twice (a symlink loop) is visited once;
//! anything that is not a regular file (FIFO, socket, device, dangling link) is listed as skipped
//! instead of being opened.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use chrono::format::{Item, StrftimeItems};
use regex::Regex;
use serde::Serialize;

use crate::error::{Error, Result};

/// One input file of a date.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InputFile {
    /// Path to open.
    pub path: PathBuf,
    /// Path relative to the input root, with `/` separators; this is `source_file` in the output.
    pub rel: String,
    /// The room its records belong to unless they name one.
    pub room: String,
    /// Size in bytes (compressed size for `.gz`).
    pub size: u64,
    /// Whether the file is gzip-compressed (by name).
    pub gzip: bool,
}

/// A path that matched the date but cannot be read as a log file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SkippedPath {
    /// Path relative to the input root.
    pub rel: String,
    /// Why it was skipped.
    pub reason: String,
}

/// The outcome of discovery.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Discovery {
    /// Files of the date, sorted by relative path.
    pub files: Vec<InputFile>,
    /// Paths of the date that are not regular files.
    pub skipped: Vec<SkippedPath>,
}

impl Discovery {
    /// True when at least one file has content.
    pub fn has_input(&self) -> bool {
        self.files.iter().any(|f| f.size > 0)
    }
}

/// A compiled `input_pattern`.
#[derive(Debug, Clone)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Date(String),
    Room,
    Star,
    DoubleStar,
    /// `**/`: any number of whole directories, none included.
    AnyDirs,
}

impl Pattern {
    /// Parses and validates a pattern such as `{room}/chat_{date:%Y%m%d}.log`.
    pub fn compile(pattern: &str) -> Result<Pattern> {
        let bad = |why: &str| Error::Config(format!("input_pattern '{pattern}': {why}"));
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = pattern;
        let mut has_date = false;
        while let Some(c) = rest.chars().next() {
            if c == '{' {
                let end = rest.find('}').ok_or_else(|| bad("unclosed '{'"))?;
                let inner = &rest[1..end];
                let part = if inner == "room" {
                    Part::Room
                } else if inner == "date" {
                    Part::Date("%Y-%m-%d".into())
                } else if let Some(fmt) = inner.strip_prefix("date:") {
                    if fmt.is_empty() || StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
                        return Err(bad(&format!("invalid strftime format '{fmt}'")));
                    }
                    Part::Date(fmt.to_string())
                } else {
                    return Err(bad(&format!(
                        "unknown placeholder '{{{inner}}}' (use {{date}}, {{date:FMT}} or {{room}})"
                    )));
                };
                has_date |= matches!(part, Part::Date(_));
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(part);
                rest = &rest[end + 1..];
            } else if let Some(r) = rest.strip_prefix("**") {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                // `**/` is any number of directories, none included (as bash's globstar and
                // gitignore have it); `**` elsewhere any run of characters across segments.
                match r.strip_prefix('/') {
                    Some(after) => {
                        parts.push(Part::AnyDirs);
                        rest = after;
                    }
                    None => {
                        parts.push(Part::DoubleStar);
                        rest = r;
                    }
                }
            } else if let Some(r) = rest.strip_prefix('*') {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Star);
                rest = r;
            } else {
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !has_date {
            return Err(bad("needs a {date} placeholder"));
        }
        Ok(Pattern { parts })
    }

    /// The regex matching relative paths of `date`.
    fn regex_for(&self, date: NaiveDate) -> Regex {
        let mut re = String::from("^");
        for p in &self.parts {
            match p {
                Part::Lit(s) => re.push_str(&regex::escape(s)),
                Part::Date(fmt) => re.push_str(&regex::escape(&date.format(fmt).to_string())),
                Part::Room => re.push_str("(?P<room>[^/]+)"),
                Part::Star => re.push_str("[^/]*"),
                Part::DoubleStar => re.push_str(".*"),
                Part::AnyDirs => re.push_str("(?:.*/)?"),
            }
        }
        re.push('$');
        Regex::new(&re).expect("pattern regex is built from escaped parts")
    }
}

/// True when `rel` names `date` in one of the three accepted forms, at digit boundaries.
pub fn path_mentions_date(rel: &str, date: NaiveDate) -> bool {
    let forms = [
        date.format("%Y-%m-%d").to_string(),
        date.format("%Y%m%d").to_string(),
        date.format("%y%m%d").to_string(),
    ];
    let b = rel.as_bytes();
    forms.iter().any(|f| {
        rel.match_indices(f.as_str()).any(|(i, m)| {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + m.len()).copied();
            !before.is_some_and(|c| c.is_ascii_digit())
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
    })
}

fn is_hidden_or_temporary(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || [".tmp", ".swp", ".part", ".partial", ".crdownload"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The room of a file at the top level: its name without extensions.
fn stem_room(name: &str) -> String {
    let mut s = name;
    loop {
        match s.rsplit_once('.') {
            Some((head, ext))
                if !head.is_empty()
                    && ["gz", "log", "json", "jsonl", "ndjson", "csv", "txt", "out"]
                        .contains(&ext.to_ascii_lowercase().as_str()) =>
            {
                s = head
            }
            _ => return s.to_string(),
        }
    }
}

/// Finds the files of `date` under `root`.
pub fn discover(root: &Path, date: NaiveDate, pattern: Option<&Pattern>) -> Result<Discovery> {
    let meta = fs::metadata(root).map_err(|e| Error::io("cannot read input root", root, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            "cannot read input root",
            root,
            std::io::Error::other("not a directory"),
        ));
    }
    let regex = pattern.map(|p| p.regex_for(date));
    let mut out = Discovery::default();
    let mut visited = HashSet::new();
    visited.insert((meta.dev(), meta.ino()));
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| Error::io("cannot read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot read directory", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_hidden_or_temporary(&name) {
                continue;
            }
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            let path = entry.path();
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    if matches_date(&rel, date, regex.as_ref()).is_some() {
                        out.skipped.push(SkippedPath {
                            rel,
                            reason: format!("cannot follow: {e}"),
                        });
                    }
                    continue;
                }
            };
            if meta.is_dir() {
                if visited.insert((meta.dev(), meta.ino())) {
                    stack.push((path, rel));
                }
                continue;
            }
            let Some(pattern_room) = matches_date(&rel, date, regex.as_ref()) else {
                continue;
            };
            if !meta.is_file() {
                out.skipped.push(SkippedPath {
                    rel,
                    reason: "not a regular file".into(),
                });
                continue;
            }
            let room = pattern_room.unwrap_or_else(|| match rel.split_once('/') {
                Some((first, _)) => first.to_string(),
                None => stem_room(&name),
            });
            // A room is a one-line name: a path's control characters (an escape sequence, a
            // newline or tab in a directory name) are dropped.
            let room: String = room.chars().filter(|c| !c.is_control()).collect();
            out.files.push(InputFile {
                gzip: name.to_ascii_lowercase().ends_with(".gz"),
                path,
                rel,
                room,
                size: meta.len(),
            });
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.skipped.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// `Some(room from the pattern, if any)` when `rel` belongs to `date`.
fn matches_date(rel: &str, date: NaiveDate, regex: Option<&Regex>) -> Option<Option<String>> {
    match regex {
        Some(re) => re
            .captures(rel)
            .map(|c| c.name("room").map(|m| m.as_str().to_string())),
        None => path_mentions_date(rel, date).then_some(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn date_forms_at_digit_boundaries() {
        let date = d("2024-10-24");
        assert!(path_mentions_date("lobby/chat_2024-10-24.log", date));
        assert!(path_mentions_date("lobby/chat_20241024.log", date));
        assert!(path_mentions_date("team6_241024_1_messages.json", date));
        assert!(path_mentions_date("2024-10-24/x.log", date));
        assert!(!path_mentions_date("lobby/chat_2024-10-25.log", date));
        assert!(!path_mentions_date("lobby/chat_120241024.log", date));
        assert!(!path_mentions_date("lobby/chat_202410241.log", date));
        assert!(!path_mentions_date("id_9241024.log", date));
    }

    #[test]
    fn room_from_first_directory_or_stem() {
        assert_eq!(
            stem_room("team6_241024_1_messages.json.gz"),
            "team6_241024_1_messages"
        );
        assert_eq!(stem_room("chat.log"), "chat");
        assert_eq!(stem_room(".log"), ".log");
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "x\n").unwrap();
        }
        dir
    }

    #[test]
    fn discovers_files_skips_hidden_and_temporary() {
        let dir = tree(&[
            "lobby/chat_2024-10-24.log",
            "lobby/chat_2024-10-25.log",
            "lobby/.chat_2024-10-24.log",
            "lobby/chat_2024-10-24.log~",
            "lobby/chat_2024-10-24.log.tmp",
            ".hidden/chat_2024-10-24.log",
            "team2/sub/messages_20241024.jsonl.gz",
            "top_20241024.log",
        ]);
        let got = discover(dir.path(), d("2024-10-24"), None).unwrap();
        let rels: Vec<_> = got
            .files
            .iter()
            .map(|f| (f.rel.as_str(), f.room.as_str()))
            .collect();
        assert_eq!(
            rels,
            vec![
                ("lobby/chat_2024-10-24.log", "lobby"),
                ("team2/sub/messages_20241024.jsonl.gz", "team2"),
                ("top_20241024.log", "top_20241024"),
            ]
        );
        assert!(got.files[1].gzip);
        assert!(got.has_input());
    }

    #[test]
    fn pattern_with_room_and_strftime() {
        let dir = tree(&[
            "rooms/a/chat_20241024.log",
            "rooms/b/chat_20241024.txt",
            "x/chat_20241024.log",
        ]);
        let p = Pattern::compile("rooms/{room}/chat_{date:%Y%m%d}.log").unwrap();
        let got = discover(dir.path(), d("2024-10-24"), Some(&p)).unwrap();
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.files[0].room, "a");
        let p = Pattern::compile("**/chat_{date:%Y%m%d}.*").unwrap();
        let got = discover(dir.path(), d("2024-10-24"), Some(&p)).unwrap();
        assert_eq!(got.files.len(), 3);
    }

    #[test]
    fn rooms_from_paths_lose_control_characters() {
        let dir = tree(&["r\u{1b}[31mRED\u{1b}[0m\nX/chat_2024-10-24.log"]);
        let got = discover(dir.path(), d("2024-10-24"), None).unwrap();
        assert_eq!(got.files[0].room, "r[31mRED[0mX");
    }

    #[test]
    fn double_star_slash_is_any_number_of_directories_none_included() {
        let dir = tree(&[
            "2024-10-24/top.log",
            "2024-10-24/a/b/deep.log",
            "2024-10-24/a/mid.log",
            "chat_2024-10-24.log",
            "2024-10-24x/no.log",
        ]);
        let names = |pattern: &str| {
            let p = Pattern::compile(pattern).unwrap();
            let mut v: Vec<String> = discover(dir.path(), d("2024-10-24"), Some(&p))
                .unwrap()
                .files
                .into_iter()
                .map(|f| f.rel)
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names("{date}/**/*.log"),
            [
                "2024-10-24/a/b/deep.log",
                "2024-10-24/a/mid.log",
                "2024-10-24/top.log"
            ]
        );
        // At the start too; and `**` not before a slash still crosses segments.
        assert_eq!(names("**/chat_{date}.log"), ["chat_2024-10-24.log"]);
        assert_eq!(names("{date}/**deep.log"), ["2024-10-24/a/b/deep.log"]);
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        for p in ["{room}/x.log", "{date:%Q}", "{dat}", "{date"] {
            assert_eq!(
                Pattern::compile(p).unwrap_err().exit_code().code(),
                78,
                "{p}"
            );
        }
    }

    #[test]
    fn symlink_loop_and_fifo_do_not_hang() {
        let dir = tree(&["lobby/chat_2024-10-24.log"]);
        std::os::unix::fs::symlink(dir.path().join("lobby"), dir.path().join("lobby/loop"))
            .unwrap();
        let fifo = dir.path().join("lobby/pipe_2024-10-24.log");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let got = discover(dir.path(), d("2024-10-24"), None).unwrap();
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].reason, "not a regular file");
    }

    #[test]
    fn missing_root_is_io_error() {
        let e = discover(Path::new("/nonexistent/input"), d("2024-10-24"), None).unwrap_err();
        assert_eq!(e.exit_code().code(), 74);
    }
}
