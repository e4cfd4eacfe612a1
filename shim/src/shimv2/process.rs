//! The daemon's table of tasks and their processes. A process's life is one explicit state
//! ([`Life`]), as containerd's shim keeps init and exec states: created, starting (its helper
//! runs), running, draining (reaped, its terminal output still going out) and exited; a
//! deleted process leaves the table.

use super::stdio::{Kept, StdioPaths};
use super::ttrpc::{RpcResult, status};
use crate::state::StateRoot;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc::Code;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Life {
    /// The init waits at the start gate; an exec is registered, not started (its OCI
    /// process, JSON, is kept for `Start`, and for a retry when a start failed).
    Created {
        /// An exec's process description.
        spec: Option<String>,
    },
    /// Its helper runs (the init's `Create`, an exec's `Start`).
    Starting,
    /// The program runs.
    Running,
    /// Reaped; the exit is reported once its terminal output drained, or at `until`.
    Draining {
        /// The exit status.
        code: u32,
        /// When it exited.
        at: Timestamp,
        /// When it is reported anyway.
        until: Instant,
    },
    /// Its exit is reported: what `Wait`, `State` and `Delete` see.
    Exited {
        /// The exit status.
        code: u32,
        /// When it exited.
        at: Timestamp,
    },
}

impl Life {
    /// The reported exit, if any.
    pub fn exit(&self) -> Option<(u32, Timestamp)> {
        match self {
            Life::Exited { code, at } => Some((*code, at.clone())),
            _ => None,
        }
    }

    /// Whether the process is gone (reaped), reported or not.
    pub fn is_gone(&self) -> bool {
        matches!(self, Life::Draining { .. } | Life::Exited { .. })
    }

    /// The exit whether reported or still draining.
    pub fn any_exit(&self) -> Option<(u32, Timestamp)> {
        match self {
            Life::Draining { code, at, .. } | Life::Exited { code, at } => Some((*code, at.clone())),
            _ => None,
        }
    }
}

/// One process of a task: the init (empty `exec_id`) or an exec.
#[derive(Debug)]
pub struct Proc {
    /// Empty for the init.
    pub exec_id: String,
    /// Its pid (0 until its helper reports it).
    pub pid: i32,
    /// Its stdio as containerd gave it.
    pub paths: StdioPaths,
    /// Where it is in its life.
    pub life: Life,
    /// The pump copying stdin in, until EOF or `CloseIO`.
    pub stdin_pump: Option<u64>,
    /// The pump copying the terminal's output out; the exit waits until it ends.
    pub pty_pump: Option<u64>,
    /// What the daemon keeps of its stdio.
    pub kept: Kept,
}

impl Proc {
    /// A process in `life` with `paths`.
    pub fn new(exec_id: &str, paths: StdioPaths, life: Life) -> Proc {
        Proc {
            exec_id: exec_id.to_string(),
            pid: 0,
            paths,
            life,
            stdin_pump: None,
            pty_pump: None,
            kept: Kept::default(),
        }
    }
}

/// A task: its container's init and execs.
#[derive(Debug)]
pub struct Task {
    /// The engine's state root for this task (the runtime options may name one).
    pub root: StateRoot,
    /// The bundle.
    pub bundle: PathBuf,
    /// How many of containerd's rootfs mounts the shim stacked on `bundle/rootfs`.
    pub rootfs_mounts: usize,
    /// The container's cgroup.
    pub cgroup: PathBuf,
    /// The init.
    pub init: Proc,
    /// The execs, by id.
    pub execs: HashMap<String, Proc>,
    /// The memory-event watcher's token, if the host has the memory controller.
    pub oom_watch: Option<u64>,
    /// The stdio owner from the runtime options, for the init and every exec.
    pub io_owner: Option<(u32, u32)>,
    /// `Delete` waits for its cgroup to empty: nothing else may change it.
    pub deleting: bool,
}

impl Task {
    /// The init (empty id) or an exec.
    pub fn proc_mut(&mut self, exec_id: &str) -> RpcResult<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs.get_mut(exec_id).ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    /// Every process, the init first.
    pub fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        std::iter::once(&mut self.init).chain(self.execs.values_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_seen_only_when_reported() {
        let draining = Life::Draining { code: 3, at: Timestamp::new(), until: Instant::now() };
        assert!(draining.is_gone());
        assert_eq!(draining.exit(), None);
        assert_eq!(draining.any_exit().map(|e| e.0), Some(3));
        let exited = Life::Exited { code: 3, at: Timestamp::new() };
        assert_eq!(exited.exit().map(|e| e.0), Some(3));
        assert!(!Life::Running.is_gone());
        assert!(!Life::Created { spec: None }.is_gone());
    }
}
