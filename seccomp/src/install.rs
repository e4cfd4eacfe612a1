//! Installing a program with the raw `seccomp(2)` syscall.
//!
//! Not `prctl(PR_SET_SECCOMP)` and not seccompiler's `apply_filter`: both are fine, but the latter
//! sets `no_new_privs` itself, and whether to set it is the engine's decision (`noNewPrivileges`
//! in the OCI spec; the kernel accepts a filter without it from a holder of `CAP_SYS_ADMIN`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use libc::{
    SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_TSYNC_ESRCH,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, SECCOMP_SET_MODE_FILTER, c_ulong, sock_filter, sock_fprog,
};

use crate::Error;

/// Calls `seccomp(SECCOMP_SET_MODE_FILTER, flags, program)`; returns the syscall's result (the
/// listener fd with `NEW_LISTENER`, otherwise 0).
fn seccomp_set_mode_filter(program: &[sock_filter], flags: c_ulong) -> io::Result<libc::c_long> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `program`, which outlives the call; the kernel only reads it
    // (the `*mut` in sock_fprog is the C API's, not a write). No other memory is touched.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fprog as *const sock_fprog) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Installs `program` on the calling thread (or every thread, with TSYNC).
pub(crate) fn install(
    program: &[sock_filter],
    mut flags: c_ulong,
    uses_notify: bool,
) -> Result<Option<OwnedFd>, Error> {
    if uses_notify {
        flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if flags & SECCOMP_FILTER_FLAG_TSYNC != 0 {
            // TSYNC reports failure through the return value, which NEW_LISTENER also uses
            flags |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
        }
    } else {
        // only meaningful for a listener; the kernel rejects it without one
        flags &= !SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    }
    let rc = match seccomp_set_mode_filter(program, flags) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 => {
            // kernels before 5.19 lack the flag; the filter itself is unchanged without it
            tracing::warn!(
                "seccomp: the kernel does not know SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV; installing without it"
            );
            seccomp_set_mode_filter(program, flags & !SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        }
        other => other,
    }
    .map_err(Error::Install)?;
    if !uses_notify {
        return Ok(None);
    }
    let fd = i32::try_from(rc).map_err(|_| Error::Install(io::Error::other("listener fd out of range")))?;
    // SAFETY: with NEW_LISTENER a successful seccomp(2) returns a new fd that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}
