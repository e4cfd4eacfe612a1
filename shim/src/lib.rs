//! The strata engine: turns an OCI bundle (runtime-spec `config.json` plus a root file system)
//! into an isolated, running process, and manages it afterwards.
//!
//! How a container comes to life (see `ARCHITECTURE.md` for the whole picture):
//!
//! 1. [`bundle`] reads and validates `config.json`; every error names the file and the field.
//! 2. [`container::create`] makes the state directory and the cgroup, then forks a first child
//!    that joins or unshares the namespaces ([`namespaces`]) and forks the container's init.
//! 3. The init ([`init`]) prepares the root file system ([`rootfs`]), the terminal ([`tty`]),
//!    the user, capabilities and limits ([`process`]), waits at the start gate, installs seccomp
//!    and executes the user's program.
//! 4. [`container`] also implements start, state, kill, exec, pause/resume and delete over the
//!    state kept by [`state`].

pub mod bundle;
pub mod container;
pub mod copy;
pub mod error;
pub mod events;
pub mod exec;
pub mod fault;
pub mod features;
pub mod fields;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod launch;
pub mod lsm;
pub mod namespaces;
pub mod netdev;
pub mod process;
pub mod procfs;
pub mod rootfs;
pub mod scheduling;
pub mod seal;
pub mod shimv2;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;
pub mod tty;

pub use error::{Error, Result};
