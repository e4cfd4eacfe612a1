//! Device access control for cgroup v2: OCI device rules compiled to an eBPF program attached
//! to the cgroup (cgroup v2 has no devices.allow file).

pub mod bpf;
pub mod program;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::LinuxDeviceCgroup;

use crate::error::{Error, Result, io_err};

/// Compiles `rules`, attaches the program to the cgroup at `dir`, then detaches the programs
/// that were there before. In between both are attached and both must allow, so a live update
/// never opens a window with fewer restrictions than either rule set.
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let insns = program::compile(&program::rules_from_oci(rules)?);
    let cgroup = File::open(dir).map_err(io_err(dir))?;
    let syscall = |syscall| move |source| Error::Syscall { syscall, path: dir.to_path_buf(), source };
    let old = bpf::query(cgroup.as_fd()).map_err(syscall("bpf(BPF_PROG_QUERY)"))?;
    let prog = bpf::load_device_program(&insns).map_err(|(source, log)| Error::DeviceProgramRejected {
        path: dir.to_path_buf(),
        source,
        log,
    })?;
    bpf::attach(cgroup.as_fd(), prog.as_fd(), bpf::BPF_F_ALLOW_MULTI).map_err(syscall("bpf(BPF_PROG_ATTACH)"))?;
    for id in old {
        // A program detached meanwhile by someone else is gone already: not an error.
        let old_prog = match bpf::prog_fd_by_id(id) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(syscall("bpf(BPF_PROG_GET_FD_BY_ID)"))?,
        };
        match bpf::detach(cgroup.as_fd(), old_prog.as_fd()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(syscall("bpf(BPF_PROG_DETACH)"))?,
        }
    }
    Ok(())
}

/// The ids of the device programs attached to the cgroup at `dir`.
pub fn attached_programs(dir: &Path) -> Result<Vec<u32>> {
    let cgroup = File::open(dir).map_err(io_err(dir))?;
    bpf::query(cgroup.as_fd()).map_err(|source| Error::Syscall {
        syscall: "bpf(BPF_PROG_QUERY)",
        path: dir.to_path_buf(),
        source,
    })
}
