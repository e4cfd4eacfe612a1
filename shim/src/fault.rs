//! The fault-injection hook of the tests (`tests/faults.rs`): with `STRATA_FAULT=<who>:<step>` in
//! the runtime's environment, the process `who` (`cli` for the process running `create`, the
//! shim's helper included; `stage1`; `init`) kills itself with SIGKILL on reaching `step`, as an
//! out-of-memory kill or an operator's `kill -9` would, so that the tests can check what
//! `delete`, `list` and the next `create` make of what is left. Without the variable a step
//! costs one environment lookup. The steps: `cli:cgroup`, `cli:forked`, `cli:namespaces`,
//! `cli:init-ready`, `cli:devices`, `cli:saved`, `stage1:namespaces`, `init:rootfs`,
//! `init:gate`; and the shim daemon's, `shim:<method>` on receiving any call of the task API
//! (`shim:Create`, `shim:Start`, `shim:Kill`, ...), `shim:Create-answer` and
//! `shim:Start-answer` once the work is done, just before the answer goes.

use std::os::unix::ffi::OsStrExt;

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
