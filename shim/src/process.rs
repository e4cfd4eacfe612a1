//! The process side of a container: rlimits, user and groups, the five capability sets,
//! no_new_privs, environment and the program lookup.

use crate::error::{Error, Result, SysContext};
use crate::sys;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, PosixRlimit, PosixRlimitType, User};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The kernel's number for an OCI capability name, or a message naming it.
pub fn cap_index(c: &Capability) -> std::result::Result<u8, String> {
    let name = format!("CAP_{c}");
    caps::Capability::from_str(&name).map(|c| c.index()).map_err(|_| format!("unknown capability {name}"))
}

/// A capability set as a bit mask; capabilities the running kernel does not know are skipped,
/// as runc does, so that a newer config still runs on an older kernel.
pub fn cap_mask(set: Option<&Capabilities>) -> u64 {
    let last = sys::last_cap();
    set.into_iter()
        .flatten()
        .filter_map(|c| cap_index(c).ok())
        .filter(|&i| i <= last)
        .fold(0u64, |m, i| m | (1u64 << i))
}

/// Which of the `wanted` capabilities the calling process can still grant: those in its bounding
/// set (only the wanted ones are asked for: one prctl each). The runtime-spec asks that
/// capabilities which cannot be granted be skipped with a warning, not fail.
pub fn grantable_caps(wanted: u64) -> u64 {
    (0..=sys::last_cap())
        .filter(|i| wanted & (1u64 << i) != 0 && sys::bounding_has(*i))
        .fold(0u64, |m, i| m | (1u64 << i))
}

/// The names of the capabilities a process asks for that this runtime cannot grant.
pub fn ungrantable(caps: Option<&LinuxCapabilities>) -> Vec<String> {
    let wanted = CapMasks::of(caps).all();
    let missing = wanted & !grantable_caps(wanted);
    caps.into_iter()
        .flat_map(|c| [c.bounding(), c.effective(), c.permitted(), c.inheritable(), c.ambient()])
        .flatten()
        .flatten()
        .filter(|c| cap_index(c).is_ok_and(|i| missing & (1u64 << i) != 0))
        .map(|c| format!("CAP_{c}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `setrlimit`'s resource type: an enum in glibc, an int in musl.
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

fn rlimit_resource(t: PosixRlimitType) -> RlimitResource {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Applies `process.rlimits` (before privileges are dropped, so hard limits can be raised).
pub fn apply_rlimits(limits: &[PosixRlimit]) -> Result<()> {
    for l in limits {
        let r = libc::rlimit { rlim_cur: l.soft(), rlim_max: l.hard() };
        // SAFETY: setrlimit reads a valid rlimit struct that lives across the call.
        if unsafe { libc::setrlimit(rlimit_resource(l.typ()), &r) } != 0 {
            return Err(Error::sys(format!("process.rlimits: setting {}", l.typ()), nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// The five capability sets of a process as bit masks. A process without `capabilities`
/// gets none at all (runc's behaviour until 1.2; see the README's runc table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapMasks {
    /// Bounding set.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

impl CapMasks {
    /// The masks of `process.capabilities` (all empty when absent).
    pub fn of(caps: Option<&LinuxCapabilities>) -> CapMasks {
        let Some(c) = caps else { return CapMasks::default() };
        CapMasks {
            bounding: cap_mask(c.bounding().as_ref()),
            effective: cap_mask(c.effective().as_ref()),
            permitted: cap_mask(c.permitted().as_ref()),
            inheritable: cap_mask(c.inheritable().as_ref()),
            ambient: cap_mask(c.ambient().as_ref()),
        }
    }

    /// Every capability any of the sets names.
    pub fn all(&self) -> u64 {
        self.bounding | self.effective | self.permitted | self.inheritable | self.ambient
    }

    /// These masks without the capabilities outside `grantable`.
    pub fn within(self, grantable: u64) -> CapMasks {
        CapMasks {
            bounding: self.bounding & grantable,
            effective: self.effective & grantable,
            permitted: self.permitted & grantable,
            inheritable: self.inheritable & grantable,
            ambient: self.ambient & grantable,
        }
    }
}

/// Switches to the configured user and groups and sets the five capability sets, in the order
/// the kernel requires: bounding set first (needs CAP_SETPCAP), ids with KEEPCAPS, then
/// effective/permitted/inheritable in one capset, then ambient.
pub fn switch_user_and_caps(user: &User, caps: Option<&LinuxCapabilities>) -> Result<()> {
    // What cannot be granted is skipped (the runtime warned when it read the config).
    let masks = CapMasks::of(caps);
    let masks = masks.within(grantable_caps(masks.all()));
    for i in 0..=sys::last_cap() {
        if masks.bounding & (1u64 << i) == 0 {
            sys::bounding_drop(i).ctx(|| format!("process.capabilities.bounding: dropping capability {i}"))?;
        }
    }
    sys::set_keep_caps(true).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let setgroups_allowed = std::fs::read_to_string("/proc/self/setgroups").map(|s| s.trim() != "deny").unwrap_or(true);
    if setgroups_allowed {
        let groups: Vec<Gid> = user.additional_gids().iter().flatten().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).ctx(|| "process.user.additionalGids: setgroups".into())?;
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("process.user.gid: setresgid({gid})"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("process.user.uid: setresuid({uid})"))?;
    sys::set_keep_caps(false).ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let sets = sys::CapSets { effective: masks.effective, permitted: masks.permitted, inheritable: masks.inheritable };
    sys::capset(sets).ctx(|| "process.capabilities: capset".into())?;
    for i in 0..=sys::last_cap() {
        if masks.ambient & (1u64 << i) != 0 {
            sys::ambient_raise(i).ctx(|| format!("process.capabilities.ambient: raising capability {i}"))?;
        }
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as libc::mode_t));
    } else {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }
    Ok(())
}

/// The environment for the program: the configured one with each variable once (a later
/// `KEY=` replaces an earlier one, as `exec -e` expects), plus HOME from the container's
/// `/etc/passwd` (or `/`) when it is not set, as runc does. `field` names the list in errors.
pub fn environment(env: &[String], uid: u32, field: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 1);
    for e in env {
        let key = match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => k,
            _ => return Err(Error::Invalid(format!("{field}: {e:?} is not KEY=VALUE"))),
        };
        out.retain(|o| o.split_once('=').map(|(k, _)| k) != Some(key));
        out.push(e.clone());
    }
    if !out.iter().any(|e| e.strip_prefix("HOME=").is_some_and(|h| !h.is_empty())) {
        out.retain(|e| !e.starts_with("HOME="));
        let home = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| home_of(&p, uid))
            .unwrap_or_else(|| "/".to_string());
        out.push(format!("HOME={home}"));
    }
    Ok(out)
}

fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
    })
}

/// Finds the program `arg0` the way execvp would, with the container's PATH. Runs inside the
/// container's root, so that a missing program is reported before the container starts.
pub fn find_program(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if arg0.contains('/') {
        return if is_exec(Path::new(arg0)) {
            Ok(PathBuf::from(arg0))
        } else {
            Err(Error::Init(format!("process.args[0]: {arg0}: no such executable file in the container")))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if is_exec(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::Init(format!("process.args[0]: {arg0:?}: executable file not found in $PATH ({path})")))
}

/// Converts strings to C strings for execve; a NUL byte inside is an error naming the field.
pub fn cstrings(items: &[String], field: &str) -> Result<Vec<CString>> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| Error::Invalid(format!("{field}: {s:?} contains a NUL byte"))))
        .collect()
}

/// Executes the program; returns only on failure.
pub fn exec(program: &Path, args: &[CString], env: &[CString]) -> Error {
    let prog = match CString::new(program.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return Error::Invalid(format!("{}: contains a NUL byte", program.display())),
    };
    match nix::unistd::execve(&prog, args, env) {
        Err(e) => Error::sys(format!("executing {}", program.display()), e),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_from_names() {
        let set: Capabilities = [Capability::Chown, Capability::Kill].into_iter().collect();
        assert_eq!(cap_mask(Some(&set)), (1 << 0) | (1 << 5));
        assert_eq!(cap_mask(None), 0);
    }

    #[test]
    fn home_lookup() {
        let p = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        assert_eq!(home_of(p, 33).as_deref(), Some("/var/www"));
        assert_eq!(home_of(p, 5), None);
        let env = environment(&["HOME=/x".into()], 0, "env").unwrap();
        assert_eq!(env, vec!["HOME=/x".to_string()]);
        let env = environment(&["A=1".into(), "B=2".into(), "A=3".into(), "HOME=/h".into()], 0, "env").unwrap();
        assert_eq!(env, vec!["B=2", "A=3", "HOME=/h"]);
        assert!(environment(&["NOEQUALS".into()], 0, "process.env").unwrap_err().to_string().contains("process.env"));
    }

    #[test]
    fn program_lookup_uses_path() {
        let found = find_program("sh", &["PATH=/nonexistent:/bin:/usr/bin".into()]).unwrap();
        assert!(found.ends_with("sh"));
        let err = find_program("no-such-program-xyz", &["PATH=/bin".into()]).unwrap_err().to_string();
        assert!(err.contains("process.args[0]") && err.contains("no-such-program-xyz"), "{err}");
    }
}
