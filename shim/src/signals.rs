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
}
