//! The crate's error type.
//!
//! Each variant names a class of failure that a scheduler must be able to tell apart, and maps to
//! exactly one exit code. Messages are one sentence that says what failed and where, so the
//! single line printed on stderr is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

use crate::exit::ExitCode;

/// Everything that can stop a stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad flag or argument value (64).
    #[error("{0}")]
    Usage(String),
    /// Invalid configuration: file, environment or refused paths (78).
    #[error("{0}")]
    Config(String),
    /// The input data cannot be used: too many rejects, unreadable format (65).
    #[error("{0}")]
    Data(String),
    /// Input that was required is missing (66).
    #[error("{0}")]
    NoInput(String),
    /// Reading or writing failed (74).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read".
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The output location cannot be created or written at all (73).
    #[error("cannot create output {}: {source}", path.display())]
    CantCreate {
        /// The path that could not be created.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process holds the lock for this date (75).
    #[error("{0}")]
    Locked(String),
    /// A temporary failure worth retrying, such as a broker timeout (75).
    #[error("{0}")]
    Temporary(String),
    /// An external service is unavailable (69).
    #[error("{0}")]
    Unavailable(String),
    /// A bug (70).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::Usage,
            Error::Config(_) => ExitCode::Config,
            Error::Data(_) => ExitCode::DataErr,
            Error::NoInput(_) => ExitCode::NoInput,
            Error::Io { what, source, .. } if is_cant_create(what, source) => ExitCode::CantCreate,
            Error::Io { .. } => ExitCode::IoErr,
            Error::CantCreate { .. } => ExitCode::CantCreate,
            Error::Locked(_) | Error::Temporary(_) => ExitCode::TempFail,
            Error::Unavailable(_) => ExitCode::Unavailable,
            Error::Internal(_) => ExitCode::Software,
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(what: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            what,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Shorthand for an [`Error::CantCreate`].
    pub fn cant_create(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::CantCreate {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// What is done to the output (as opposed to reading the input or the staged records).
const OUTPUT_ACTIONS: [&str; 9] = [
    "cannot commit",
    "cannot list the output",
    "cannot create",
    "cannot write",
    "cannot sync",
    "cannot move",
    "cannot move aside",
    "cannot remove",
    "cannot lock",
];

/// A read-only file system, or a permission refused while making the output, is "output cannot be
/// created" (73), not an I/O failure (74). A permission refused on reading stays 74 (unreadable
/// input).
fn is_cant_create(what: &str, e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
        || (e.kind() == io::ErrorKind::PermissionDenied && OUTPUT_ACTIONS.contains(&what))
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code() {
        let io_err = || io::Error::other("boom");
        let cases: Vec<(Error, i32)> = vec![
            (Error::Usage("x".into()), 64),
            (Error::Config("x".into()), 78),
            (Error::Data("x".into()), 65),
            (Error::NoInput("x".into()), 66),
            (Error::io("cannot read", "/x", io_err()), 74),
            (
                Error::io(
                    "cannot write",
                    "/x",
                    io::Error::from_raw_os_error(libc::EROFS),
                ),
                73,
            ),
            (Error::cant_create("/x", io_err()), 73),
            (
                Error::io(
                    "cannot commit",
                    "/x",
                    io::Error::from_raw_os_error(libc::EACCES),
                ),
                73,
            ),
            (
                Error::io(
                    "cannot read",
                    "/x",
                    io::Error::from_raw_os_error(libc::EACCES),
                ),
                74,
            ),
            (
                Error::io(
                    "cannot write",
                    "/x",
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ),
                74,
            ),
            (Error::Locked("x".into()), 75),
            (Error::Temporary("x".into()), 75),
            (Error::Unavailable("x".into()), 69),
            (Error::Internal("x".into()), 70),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code().code(), code, "{e:?}");
        }
    }

    #[test]
    fn io_message_names_the_path() {
        let e = Error::io("cannot read", "/data/x.log", io::Error::other("boom"));
        assert_eq!(e.to_string(), "cannot read /data/x.log: boom");
    }
}
