//! Signal names as `kill` accepts them (`TERM`, `SIGTERM`, `15`, `RTMIN+3`) and exit statuses.

use crate::error::{Error, Result};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use std::str::FromStr;

/// Parses a signal given by name (with or without `SIG`) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=libc::SIGRTMAX()).contains(&n) {
            return Ok(n);
        }
        return Err(Error::Invalid(format!("invalid signal number {n}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() { 0 } else { rest.trim_start_matches('+').parse().map_err(|_| bad(s))? };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() { Ok(n) } else { Err(bad(s)) };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() { 0 } else { rest.trim_start_matches('-').parse().map_err(|_| bad(s))? };
        let n = libc::SIGRTMAX() - off;
        return if n >= libc::SIGRTMIN() { Ok(n) } else { Err(bad(s)) };
    }
    Signal::from_str(&format!("SIG{name}")).map(|sig| sig as i32).map_err(|_| bad(s))
}

fn bad(s: &str) -> Error {
    Error::Invalid(format!("unknown signal {s:?}"))
}

/// The shell convention for an exit status: the code, or 128+N for signal N.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// The same for a raw `wait` status; `None` for a stop or a continue.
pub fn raw_exit_code(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// Reaps one child that has ended, without blocking: its pid and exit code (as
/// [`exit_code`]); `None` once no ended child is left.
///
/// nix's `waitpid` cannot be used for this: it decodes a death by a real-time signal into an
/// error after the kernel has already reaped the child, so the exit would be lost.
pub fn reap_any() -> Option<(i32, i32)> {
    reap(-1, libc::WNOHANG)
}

/// `waitpid(which, flags)` until a child has ended (stops and continues are skipped): its pid
/// and exit code; `None` when there is none (or, with `WNOHANG`, none yet).
pub fn reap(which: libc::pid_t, flags: libc::c_int) -> Option<(i32, i32)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only the status integer we own.
        let pid = unsafe { libc::waitpid(which, &mut status, flags | libc::__WALL) };
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if pid <= 0 {
            return None;
        }
        if let Some(code) = raw_exit_code(status) {
            return Some((pid, code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("RTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("RTMIN+999").is_err());
    }

    #[test]
    fn exit_codes() {
        let pid = nix::unistd::Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)), Some(137));
    }

    #[test]
    fn a_child_killed_by_a_real_time_signal_is_reaped_with_its_code() {
        let rt = libc::SIGRTMIN() + 2;
        // SAFETY: the child only raises a signal and exits; no locks are taken after fork.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                libc::signal(rt, libc::SIG_DFL);
                libc::raise(rt);
                libc::_exit(9);
            }
        }
        // Only this child: the other tests' children are theirs to reap.
        assert_eq!(reap(child, 0), Some((child, 128 + rt)));
    }
}
