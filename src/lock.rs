//! Per-date advisory lock under the output root.
//!
//! Two processes working on the same date would race on its staging area and commit; the second
//! one exits 75 at once (a scheduler retries it later) and names the holder. Different dates
//! use different lock files and proceed concurrently. The lock is an `flock` on
//! `out/_locks/date=D.lock`, so it is released by the kernel when the holder dies, even by SIGKILL.
//! Lock files are never deleted: deleting a lock file while another process waits on it would let
//! two holders coexist.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;

use chrono::NaiveDate;

use crate::error::{Error, Result};
use crate::layout::Layout;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct DateLock {
    _file: File,
}

impl DateLock {
    /// Takes the lock for `date`, or fails with [`Error::Locked`] (75) naming the holder.
    pub fn acquire(layout: &Layout, date: NaiveDate, what: &str) -> Result<DateLock> {
        let path = layout.lock_file(date);
        let dir = path.parent().expect("lock file has a parent");
        fs::create_dir_all(dir).map_err(|e| Error::cant_create(dir, e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::cant_create(&path, e))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                };
                return Err(Error::Locked(format!(
                    "date {date} is locked by {holder} (lock file {}); try again when it has finished",
                    path.display()
                )));
            }
            return Err(Error::io("cannot lock", &path, err));
        }
        let info = format!(
            "pid {} ({what}, started {})",
            std::process::id(),
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(info.as_bytes()))
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(DateLock { _file: file })
    }
}

/// True when some process holds the lock of `date` right now (the lock file is not created).
pub fn is_held(layout: &Layout, date: NaiveDate) -> bool {
    let Ok(file) = File::open(layout.lock_file(date)) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; a shared lock we get is released on close.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_of_same_date_is_refused_other_dates_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let d1 = NaiveDate::from_ymd_opt(2024, 10, 24).unwrap();
        let d2 = NaiveDate::from_ymd_opt(2024, 10, 25).unwrap();
        let held = DateLock::acquire(&layout, d1, "test").unwrap();
        // flock locks belong to the open file description, so a second open conflicts even
        // within one process.
        let err = DateLock::acquire(&layout, d1, "test").unwrap_err();
        assert_eq!(err.exit_code().code(), 75);
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let _other = DateLock::acquire(&layout, d2, "test").unwrap();
        assert!(is_held(&layout, d1));
        drop(held);
        assert!(!is_held(&layout, d1));
        DateLock::acquire(&layout, d1, "test").unwrap();
    }
}
