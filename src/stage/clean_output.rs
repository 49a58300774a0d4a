//! `clean-output`: removes everything a date produced under the output root, and nothing else.
//!
//! What a date owns is decided by [`Layout::owned_dirs`] and [`Layout::tmp_leftovers`]. A symlink
//! is removed as a link, never followed; a path reached through a symlinked parent is left alone
//! and reported. The output root must not be `/`, the home directory, or the input root (78).

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde_json::json;

use crate::config::{Settings, normalize_path};
use crate::error::{Error, Result};
use crate::exit::ExitCode;
use crate::layout::{Layout, remove_path};
use crate::lock::DateLock;
use crate::stage::Outcome;

/// Refuses output roots whose cleaning could destroy something that is not ours.
pub fn check_output_root(settings: &Settings) -> Result<()> {
    let out = normalize_path(&settings.output_root);
    let input = normalize_path(&settings.input_root);
    if out.parent().is_none() {
        return Err(Error::Config(format!(
            "refusing output root {}: it is the file system root",
            settings.output_root.display()
        )));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        && normalize_path(Path::new(&home)) == out
    {
        return Err(Error::Config(format!(
            "refusing output root {}: it is the home directory",
            settings.output_root.display()
        )));
    }
    if out == input {
        return Err(Error::Config(format!(
            "refusing output root {}: it is the input root",
            settings.output_root.display()
        )));
    }
    // Nested either way, discovery would read our own output as logs, or cleaning would
    // delete logs.
    if out.starts_with(&input) || input.starts_with(&out) {
        return Err(Error::Config(format!(
            "refusing output root {}: it is nested with the input root {}",
            settings.output_root.display(),
            settings.input_root.display()
        )));
    }
    Ok(())
}

/// True when some directory between `root` (exclusive) and `path` (exclusive) is a symlink.
fn reached_through_symlink(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return true;
    };
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// What cleaning a date removes (or would remove).
#[derive(Debug, Default)]
pub struct CleanReport {
    /// Paths removed (or that would be removed in a dry run).
    pub removed: Vec<PathBuf>,
    /// Paths left alone because they are reached through a symlink.
    pub refused: Vec<PathBuf>,
}

/// Removes the date's outputs; the caller holds the date's lock.
pub fn clean_date(layout: &Layout, date: NaiveDate, dry_run: bool) -> Result<CleanReport> {
    let mut report = CleanReport::default();
    let mut candidates = layout.owned_dirs(date);
    candidates.extend(layout.tmp_leftovers(date)?);
    for path in candidates {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if reached_through_symlink(layout.root(), &path) {
            tracing::warn!(
                "Not removing {}: it is reached through a symlink.",
                path.display()
            );
            report.refused.push(path);
            continue;
        }
        if !dry_run {
            remove_path(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        }
        report.removed.push(path);
    }
    Ok(report)
}

/// Runs `clean-output`.
pub fn run(settings: &Settings, date: NaiveDate, dry_run: bool) -> Result<Outcome> {
    check_output_root(settings)?;
    let layout = Layout::new(&settings.output_root);
    let mut human = String::new();
    let report = if std::fs::symlink_metadata(layout.root()).is_err() {
        CleanReport::default()
    } else {
        let _lock = DateLock::acquire(&layout, date, "chatetl clean-output")?;
        clean_date(&layout, date, dry_run)?
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    for p in &report.removed {
        human.push_str(&format!("{verb} {}\n", p.display()));
    }
    for p in &report.refused {
        human.push_str(&format!(
            "left {} (reached through a symlink)\n",
            p.display()
        ));
    }
    if report.removed.is_empty() {
        human.push_str(&format!("{date}: nothing to remove\n"));
    }
    let json = json!({
        "stage": "clean-output",
        "date": date.to_string(),
        "status": ExitCode::Ok.name(),
        "exit_code": 0,
        "dry_run": dry_run,
        "removed": report.removed,
        "refused": report.refused,
    });
    Ok(Outcome {
        exit: ExitCode::Ok,
        human,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn removes_only_the_date_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "x").unwrap();
        let layout = Layout::new(dir.path().join("out"));
        let (d1, d2) = (d("2024-10-24"), d("2024-10-25"));
        for date in [d1, d2] {
            fs::create_dir_all(layout.messages_dir(date).join("sender_id=a")).unwrap();
            fs::create_dir_all(layout.rejects_dir(date)).unwrap();
        }
        std::os::unix::fs::symlink(&outside, layout.messages_dir(d1).join("link")).unwrap();
        let leftover = layout.new_tmp_dir("messages", d1).unwrap();

        let dry = clean_date(&layout, d1, true).unwrap();
        assert_eq!(dry.removed.len(), 3);
        assert!(layout.messages_dir(d1).exists());

        let r = clean_date(&layout, d1, false).unwrap();
        assert_eq!(r.removed.len(), 3);
        assert!(!layout.messages_dir(d1).exists());
        assert!(!leftover.exists());
        assert!(layout.messages_dir(d2).exists() && layout.rejects_dir(d2).exists());
        assert!(outside.join("precious").exists());
        assert!(clean_date(&layout, d1, false).unwrap().removed.is_empty());
    }

    #[test]
    fn symlinked_dataset_dir_is_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("date=2024-10-24")).unwrap();
        let layout = Layout::new(dir.path().join("out"));
        fs::create_dir_all(layout.root()).unwrap();
        std::os::unix::fs::symlink(&outside, layout.root().join("messages")).unwrap();
        let r = clean_date(&layout, d("2024-10-24"), false).unwrap();
        assert_eq!(r.refused.len(), 1);
        assert!(outside.join("date=2024-10-24").exists());
    }
}
