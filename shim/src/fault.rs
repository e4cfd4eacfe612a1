//! The fault-injection hook of the tests (`tests/faults.rs`, the containerd suite, the report's
//! fault campaign): with `STRATA_FAULT=<who>:<step>` in the runtime's environment, the process
//! `who` (`cli` for the process running `create`, the shim's helper included; `stage1`; `init`;
//! `shim`, the shim daemon) kills itself with SIGKILL on reaching `step`, as an out-of-memory
//! kill or an operator's `kill -9` would, so that the tests can check what `delete`, `list`, the
//! next `create` and containerd make of what is left. Without the variable a step costs one
//! environment lookup. The points: [`CREATE_STEPS`] and, in the shim daemon, `shim:<method>` on
//! receiving any call of the task API, `shim:Create-answer` and `shim:Start-answer` (those a
//! lifecycle meets are [`SHIM_CALLS`]).

use std::os::unix::ffi::OsStrExt;

/// The steps of `create` that can be faulted, in the order a create reaches them: the process
/// running `create` (the CLI, or the shim's helper), stage 1, the container's init.
pub const CREATE_STEPS: [&str; 9] = [
    "cli:cgroup",
    "cli:forked",
    "cli:namespaces",
    "cli:init-ready",
    "cli:devices",
    "cli:saved",
    "stage1:namespaces",
    "init:rootfs",
    "init:gate",
];

/// The shim daemon's points met by a container's lifecycle through containerd: each call on
/// its receipt, and create and start once done, just before they answer.
pub const SHIM_CALLS: [&str; 10] = [
    "shim:Create",
    "shim:Create-answer",
    "shim:Start",
    "shim:Start-answer",
    "shim:State",
    "shim:Exec",
    "shim:Wait",
    "shim:Kill",
    "shim:Delete",
    "shim:Shutdown",
];

/// Kills this process with SIGKILL when `STRATA_FAULT` names `who:step`.
pub fn point(who: &str, step: &str) {
    let Some(want) = std::env::var_os("STRATA_FAULT") else { return };
    let want = want.as_bytes();
    if want.len() == who.len() + 1 + step.len()
        && want.starts_with(who.as_bytes())
        && want[who.len()] == b':'
        && want.ends_with(step.as_bytes())
    {
        // SAFETY: kill(2) and _exit(2) take integers only. The init of a PID namespace ignores
        // a SIGKILL from inside it: that one ends just as abruptly with _exit.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
            libc::_exit(128 + libc::SIGKILL);
        }
    }
}
