//! Idmapped bind mounts (`idmap`, `ridmap`, a mount's `uidMappings`/`gidMappings`): the files
//! of the source appear with their owners mapped, as Kubernetes' user-namespaced pods need.
//!
//! The kernel asks for privilege over the source's file system to make one, which the
//! container's init (in a user namespace of its own) may lack. So the runtime makes each as a
//! detached mount — `open_tree(OPEN_TREE_CLONE)` of the source, `mount_setattr` with
//! `MOUNT_ATTR_IDMAP` and a user namespace holding the mapping — and hands the descriptors to
//! stage 1; the init attaches them at their destinations with `move_mount`, as runc does.
//!
//! The mapping is the mount's own, or else the container's user namespace (then the runtime
//! makes the mounts once the container's id maps are written).

use crate::error::{Error, Result, SysContext};
use crate::rootfs::parse_options;
use crate::sys::{self, Fork};
use oci_spec::runtime::{LinuxIdMapping, Mount, Spec};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// `OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC`.
const OPEN_TREE_CLONE: u32 = 0x1 | libc::O_CLOEXEC as u32;

/// One idmapped mount to make.
#[derive(Debug, Clone)]
pub struct IdmapMount {
    /// Its index in `mounts`.
    pub index: usize,
    /// The source on the host.
    pub source: PathBuf,
    /// `rbind`: the mounts below the source come along (a clone of the whole tree).
    pub tree: bool,
    /// `ridmap`: every mount of the clone is idmapped, not only the top one. Kept apart from
    /// `tree` as runc does: `rbind` + `idmap` brings submounts unmapped (one whose file system
    /// cannot be idmapped does not fail the mount), `bind` + `ridmap` brings none.
    pub map_tree: bool,
    /// The mount's own mappings; `None`: the container's user namespace.
    pub own: Option<(Vec<LinuxIdMapping>, Vec<LinuxIdMapping>)>,
}

/// Whether a mount is idmapped.
pub fn is_idmapped(m: &Mount) -> bool {
    parse_options(m.options().as_deref().unwrap_or_default()).idmap.is_some()
        || m.uid_mappings().is_some()
        || m.gid_mappings().is_some()
}

/// The idmapped mounts of a config, in order.
pub fn plan(spec: &Spec, bundle: &Path) -> Vec<IdmapMount> {
    spec.mounts()
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, m)| is_idmapped(m))
        .map(|(index, m)| {
            let o = parse_options(m.options().as_deref().unwrap_or_default());
            let source = m.source().clone().unwrap_or_default();
            let source = if source.is_relative() { bundle.join(source) } else { source };
            let own = match (m.uid_mappings(), m.gid_mappings()) {
                (Some(u), Some(g)) => Some((u.clone(), g.clone())),
                _ => None,
            };
            IdmapMount {
                index,
                source,
                tree: o.flags.contains(nix::mount::MsFlags::MS_REC),
                map_tree: o.idmap == Some(true),
                own,
            }
        })
        .collect()
}

/// Checks a mount's idmapping: both mappings or neither, and without its own a user namespace
/// of the container to take them from. Returns the field and the reason.
pub fn check(m: &Mount, container_userns: bool) -> std::result::Result<(), (&'static str, String)> {
    if !is_idmapped(m) {
        return Ok(());
    }
    match (m.uid_mappings(), m.gid_mappings()) {
        (Some(_), None) => {
            return Err(("gidMappings", "an idmapped mount needs gidMappings with its uidMappings".into()));
        }
        (None, Some(_)) => {
            return Err(("uidMappings", "an idmapped mount needs uidMappings with its gidMappings".into()));
        }
        (None, None) if !container_userns => {
            return Err((
                "options",
                "an idmapped mount needs uidMappings and gidMappings, or a user namespace of the container".into(),
            ));
        }
        _ => {}
    }
    for (name, maps) in [("uidMappings", m.uid_mappings()), ("gidMappings", m.gid_mappings())] {
        if maps.as_ref().is_some_and(|v| v.is_empty() || v.iter().any(|x| x.size() == 0)) {
            return Err((name, "every mapping needs a size above 0 (and there must be one)".into()));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(("options", "idmapped mounts need a runtime running as root".into()));
    }
    Ok(())
}

/// Makes the detached idmapped mounts; `container_userns` is the container's user namespace
/// for those without mappings of their own.
pub fn make(mounts: &[IdmapMount], container_userns: Option<&OwnedFd>) -> Result<Vec<(usize, OwnedFd)>> {
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let own;
        let userns = match (&m.own, container_userns) {
            (Some((u, g)), _) => {
                own = userns_with(u, g)?;
                &own
            }
            (None, Some(ns)) => ns,
            (None, None) => {
                return Err(Error::Invalid(format!(
                    "mounts[{}]: an idmapped mount without mappings needs the container's user namespace",
                    m.index
                )));
            }
        };
        let flags = OPEN_TREE_CLONE | if m.tree { sys::AT_RECURSIVE } else { 0 };
        let tree = sys::open_tree(libc::AT_FDCWD, &m.source, flags)
            .ctx(|| format!("mounts[{}]: open_tree({})", m.index, m.source.display()))?;
        let attr = sys::MountAttr {
            attr_set: sys::mount_attr::IDMAP,
            userns_fd: std::os::fd::AsRawFd::as_raw_fd(userns) as u64,
            ..Default::default()
        };
        sys::mount_setattr(&tree, if m.map_tree { sys::AT_RECURSIVE } else { 0 }, &attr).map_err(|e| {
            Error::sys(
                format!(
                    "mounts[{}]: idmapping {} (does its file system support idmapped mounts?)",
                    m.index,
                    m.source.display()
                ),
                e,
            )
        })?;
        out.push((m.index, tree));
    }
    Ok(out)
}

/// A user namespace holding the given mappings: a child is forked into a new one, its maps
/// written, the namespace opened, and the child killed.
fn userns_with(uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<OwnedFd> {
    let fmt = |maps: &[LinuxIdMapping]| {
        maps.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect::<String>()
    };
    let child = match sys::fork(libc::CLONE_NEWUSER).ctx(|| "forking into a new user namespace".into())? {
        Fork::Child => loop {
            // SAFETY: pause only waits for a signal; the parent kills this child.
            unsafe { libc::pause() };
        },
        Fork::Parent(pid) => pid,
    };
    let result = (|| {
        let proc = crate::procfs::ProcFs::open()?;
        proc.write(Path::new(&format!("{child}/uid_map")), fmt(uids).as_bytes())?;
        proc.write(Path::new(&format!("{child}/gid_map")), fmt(gids).as_bytes())?;
        let f =
            std::fs::File::open(format!("/proc/{child}/ns/user")).ctx(|| "opening the mapping's namespace".into())?;
        Ok(OwnedFd::from(f))
    })();
    // SAFETY: kill(2) takes integers only.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(options: &str) -> IdmapMount {
        let spec: Spec = serde_json::from_str(&format!(
            r#"{{"mounts":[{{"destination":"/m","type":"bind","source":"/src","options":{options},
                "uidMappings":[{{"containerID":0,"hostID":1000,"size":1}}],
                "gidMappings":[{{"containerID":0,"hostID":1000,"size":1}}]}}]}}"#
        ))
        .unwrap();
        let mut p = plan(&spec, Path::new("/bundle"));
        assert_eq!(p.len(), 1);
        p.remove(0)
    }

    #[test]
    fn rbind_decides_the_tree_and_ridmap_the_mapping() {
        let m = plan_of(r#"["rbind","idmap"]"#);
        assert!(m.tree && !m.map_tree, "{m:?}");
        let m = plan_of(r#"["bind","ridmap"]"#);
        assert!(!m.tree && m.map_tree, "{m:?}");
        let m = plan_of(r#"["rbind","ridmap"]"#);
        assert!(m.tree && m.map_tree, "{m:?}");
        let m = plan_of(r#"["bind"]"#);
        assert!(!m.tree && !m.map_tree, "{m:?}");
    }
}
