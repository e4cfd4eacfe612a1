//! containerd's CRI (v1) driven the way kubelet drives it, for the suite in `tests/cri.rs`,
//! which runs inside the pure cgroup v2 VM (`vmtest/cri.sh`): the host's hybrid cgroups make
//! containerd's CRI refuse pods there.
//!
//! - [`containerd`]: a private containerd with the CRI plugin (its config, root, state, socket,
//!   CNI network and log), started, restarted and stopped by the suite; images imported with
//!   `ctr`.
//! - [`client`]: the CRI client (tonic over the Unix socket), every call bounded by a timeout.
//! - [`pod`]: pod and container configurations as kubelet writes them, and the sweep that
//!   removes a scenario's pods whatever happened to it.
//! - [`logs`]: the CRI log format (`TIMESTAMP STREAM F|P CONTENT`).
//! - [`stream`]: a client of containerd's streaming server (Exec and Attach as `kubectl` uses
//!   them: a WebSocket with the `v4.channel.k8s.io` protocol).
//! - [`leaks`]: what containers leave on the machine (mounts, cgroups, network namespaces,
//!   processes, state directories), to check that nothing is left once everything is removed.
//!
//! The `strata-pause` binary is the pods' sandbox program (no registry is reachable, so the
//! pause image is built locally from it).

pub mod client;
pub mod containerd;
pub mod leaks;
pub mod logs;
pub mod pod;
pub mod stream;

pub use client::Cri;
pub use containerd::{Containerd, Settings};

use std::time::Duration;

/// What the suite's library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CRI call answered with an error.
    #[error("{call}: {code:?}: {message}")]
    Rpc { call: &'static str, code: tonic::Code, message: String },
    /// A CRI call did not answer in time.
    #[error("{call}: no answer within {timeout:?}")]
    Timeout { call: &'static str, timeout: Duration },
    /// The CRI socket could not be reached.
    #[error("connecting to {socket}: {source}")]
    Connect { socket: String, source: tonic::transport::Error },
    /// A file or a process could not be handled.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// containerd did not do what it was asked (its log says why).
    #[error("containerd: {0}")]
    Containerd(String),
    /// An exec or attach stream failed or said something unexpected.
    #[error("streaming: {0}")]
    Stream(String),
    /// A setting of the suite is missing or wrong.
    #[error("setting {name}: {problem}")]
    Setting { name: &'static str, problem: String },
}

impl Error {
    /// The gRPC code of a refused call, if this is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}

/// The library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
