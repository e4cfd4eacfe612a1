//! The crate's error type: one enum whose variants carry the path, field or syscall that failed.

use std::io;
use std::path::{Path, PathBuf};

use crate::hierarchy::Layout;

/// Errors of the cgroups crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup2 file system is mounted.
    #[error(
        "no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoHierarchy,
    /// The resources ask for a controller this host does not offer.
    #[error(
        "linux.resources.{field} needs the cgroup v2 `{controller}` controller, which this host does not offer ({layout} layout, cgroup2 at {mount} offers: {available})"
    )]
    ControllerUnavailable {
        /// The OCI field that asked for it.
        field: &'static str,
        /// The controller name.
        controller: &'static str,
        /// `pure` or `hybrid`.
        layout: Layout,
        /// Where cgroup2 is mounted.
        mount: PathBuf,
        /// The controllers that are available.
        available: String,
    },
    /// A `cgroupsPath` or `unified` key that would leave the cgroup or name no interface file.
    #[error("linux.cgroupsPath {0:?} is invalid: it must not contain `..` components or NUL bytes")]
    InvalidPath(String),
    /// A `cgroupsPath` in the systemd driver's form, `slice:prefix:name`, without that driver.
    #[error(
        "linux.cgroupsPath {0:?} is a systemd cgroup path (slice:prefix:name), but the cgroupfs driver is in use: run with --systemd-cgroup (the shim: SystemdCgroup = true), or give a cgroupfs path (/a/b or a/b)"
    )]
    SystemdPath(String),
    /// A `cgroupsPath` the systemd driver cannot use.
    #[error("linux.cgroupsPath {path:?} is not a systemd cgroup path: {reason}")]
    InvalidSystemdPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// systemd refused or failed a request of the systemd cgroup driver.
    #[error("systemd cgroup driver: {action} {unit}: {message}")]
    Systemd {
        /// The unit concerned (empty while connecting).
        unit: String,
        /// What strata asked for.
        action: &'static str,
        /// systemd's error, or the I/O error.
        message: String,
    },
    /// A `linux.resources.unified` key that is not an interface file name this crate may write.
    #[error("linux.resources.unified key {key:?} is refused: {reason}")]
    InvalidUnifiedKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// A resource value that cannot be expressed in cgroup v2.
    #[error("linux.resources.{field} is invalid: {reason}")]
    InvalidResource {
        /// The OCI field.
        field: &'static str,
        /// Why, and what to change.
        reason: String,
    },
    /// A resource feature that this crate does not implement yet.
    #[error("linux.resources.{0} is not supported yet")]
    Unsupported(&'static str),
    /// checkBeforeUpdate refused a memory limit below the current usage.
    #[error(
        "cgroup {path}: memory limit {limit} is below the current usage {usage} (checkBeforeUpdate is set); raise the limit or free memory first"
    )]
    MemoryBelowUsage {
        /// The cgroup.
        path: PathBuf,
        /// The requested limit.
        limit: i64,
        /// memory.current.
        usage: u64,
    },
    /// Enabling a controller failed because the parent cgroup holds processes.
    #[error(
        "cgroup {path}: cannot enable `{controller}` for children while it holds processes (no internal processes rule); use a cgroupsPath under an empty cgroup"
    )]
    InternalProcesses {
        /// The parent cgroup.
        path: PathBuf,
        /// The controller.
        controller: String,
    },
    /// An interface file's text that does not have the kernel's format.
    #[error("cannot parse {what} from {text:?}")]
    Parse {
        /// Which format.
        what: &'static str,
        /// The text (truncated).
        text: String,
    },
    /// An I/O error on a cgroup file.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A system call that is not a plain file operation (bpf, inotify) failed.
    #[error("{syscall} on {path}: {source}")]
    Syscall {
        /// Which call (for example `bpf(BPF_PROG_LOAD)`).
        syscall: &'static str,
        /// The cgroup it was for.
        path: PathBuf,
        /// The errno.
        source: io::Error,
    },
    /// The kernel verifier rejected the generated device program.
    #[error("the kernel rejected the device eBPF program for {path}: {source}; verifier log: {log}")]
    DeviceProgramRejected {
        /// The cgroup it was for.
        path: PathBuf,
        /// The errno of BPF_PROG_LOAD.
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Freezing did not complete in time.
    #[error("cgroup {0}: timed out waiting for frozen state")]
    FreezeTimeout(PathBuf),
    /// Killing did not empty the cgroup in time.
    #[error("cgroup {path}: {remaining} processes still present after SIGKILL")]
    KillTimeout {
        /// The cgroup.
        path: PathBuf,
        /// How many pids were left.
        remaining: usize,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}
