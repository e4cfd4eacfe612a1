//! OCI seccomp profiles compiled to classic BPF and installed with `seccomp(2)`.
//!
//! The engine calls [`compile`] while it still reads the bundle (so a bad profile fails `create`
//! before anything exists) and [`Filter::install`] as the last step before `execve`.

use oci_spec::runtime::LinuxSeccomp;
use std::os::fd::OwnedFd;

/// Everything that can go wrong while compiling or installing a profile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The profile uses something this compiler does not implement yet.
    #[error("seccomp: {0} is not supported yet")]
    Unsupported(String),
    /// The kernel refused the program.
    #[error("seccomp: installing the filter failed: {0}")]
    Install(std::io::Error),
}

/// A compiled seccomp program, ready to install.
#[derive(Debug, Clone)]
pub struct Filter {
    _private: (),
}

/// Compiles an OCI seccomp profile.
pub fn compile(_profile: &LinuxSeccomp) -> Result<Filter, Error> {
    Err(Error::Unsupported("linux.seccomp".into()))
}

impl Filter {
    /// Installs the filter on the calling thread; returns the listener fd for `SCMP_ACT_NOTIFY`.
    pub fn install(&self) -> Result<Option<OwnedFd>, Error> {
        Err(Error::Unsupported("linux.seccomp".into()))
    }
}
