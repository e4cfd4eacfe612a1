//! The engine's error type: every variant says what failed and where.

use std::io;
use std::path::PathBuf;

/// Result of the engine's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bundle's `config.json` is missing, unreadable or invalid.
    #[error("{file}: {field}: {message}")]
    Config {
        /// The configuration file.
        file: PathBuf,
        /// The JSON path of the offending field (`.` for the document).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A container id that is not `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    #[error("invalid container id {0:?}: use letters, digits, '_', '.' and '-' (not first)")]
    InvalidId(String),
    /// `create` for an id that exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// An operation on an id that does not exist.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// An operation not allowed in the container's current state.
    #[error("container {id:?} is {status}: cannot {action}")]
    WrongState {
        /// The container.
        id: String,
        /// Its state.
        status: String,
        /// What was asked.
        action: &'static str,
    },
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error number.
        errno: nix::errno::Errno,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The container's init reported an error while setting up.
    #[error("{0}")]
    Init(String),
    /// An argument on the command line or in a process description is invalid.
    #[error("{0}")]
    Invalid(String),
    /// cgroup management failed.
    #[error(transparent)]
    Cgroup(#[from] cgroups::Error),
    /// seccomp compilation or installation failed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
}

impl Error {
    /// Wraps an errno with a description of the failed step.
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Error {
        Error::Sys { what: what.into(), errno }
    }

    /// Wraps an I/O error with a description of the failed step.
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}

/// Adds context to syscall results.
pub trait SysContext<T> {
    /// Describes the failed step.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

impl<T> SysContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
