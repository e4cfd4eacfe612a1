//! Which namespaces a container gets: new ones (unshared) and existing ones (joined by path).

use crate::error::{Error, Result, SysContext};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The clone flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
    }
}

/// The name under `/proc/<pid>/ns/`.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The namespace plan of a container.
#[derive(Debug, Default)]
pub struct Plan {
    /// Flags to unshare, user namespace excluded.
    pub unshare: libc::c_int,
    /// Whether a new user namespace is made (before everything else is unshared).
    pub new_user: bool,
    /// Existing namespaces to join, user namespace first.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Plan {
    /// Builds the plan from the config's namespace list.
    pub fn from_spec(list: &[LinuxNamespace]) -> Plan {
        let mut plan = Plan::default();
        for ns in list {
            match ns.path() {
                Some(p) => plan.join.push((ns.typ(), p.clone())),
                None if ns.typ() == LinuxNamespaceType::User => plan.new_user = true,
                None => plan.unshare |= flag(ns.typ()),
            }
        }
        plan.join.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
        plan
    }

    /// Whether the container gets a pid namespace of its own or joins one.
    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        self.unshare & flag(t) != 0
            || (t == LinuxNamespaceType::User && self.new_user)
            || self.join.iter().any(|(j, _)| *j == t)
    }

    /// Opens every namespace to join; done before any is joined, while the host's paths resolve.
    pub fn open_joins(&self) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>> {
        self.join
            .iter()
            .map(|(t, p)| {
                let f = std::fs::File::open(p).ctx(|| format!("opening namespace {} ({t})", p.display()))?;
                Ok((*t, OwnedFd::from(f)))
            })
            .collect()
    }
}

/// Joins each opened namespace.
pub fn join_all(fds: &[(LinuxNamespaceType, OwnedFd)]) -> Result<()> {
    for (t, fd) in fds {
        crate::sys::setns(fd, flag(*t)).map_err(|e| Error::sys(format!("joining the {t} namespace"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_puts_user_join_first_and_splits_new() {
        let list: Vec<LinuxNamespace> = serde_json::from_str(
            r#"[{"type":"network","path":"/proc/1/ns/net"},{"type":"pid"},{"type":"user","path":"/proc/1/ns/user"},{"type":"mount"}]"#,
        )
        .unwrap();
        let plan = Plan::from_spec(&list);
        assert_eq!(plan.unshare, libc::CLONE_NEWPID | libc::CLONE_NEWNS);
        assert!(!plan.new_user);
        assert_eq!(plan.join[0].0, LinuxNamespaceType::User);
        assert!(plan.has(LinuxNamespaceType::Network));
        assert!(!plan.has(LinuxNamespaceType::Uts));
    }
}
