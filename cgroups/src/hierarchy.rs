//! Finding the cgroup2 hierarchy, the controllers it offers, and resolving `cgroupsPath`.

use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result, io_err};
use crate::resources::needed_controllers;

/// How cgroup2 is mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup2 alone at /sys/fs/cgroup.
    Pure,
    /// cgroup v1 controllers plus cgroup2 at a side mount.
    Hybrid,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Pure => "pure cgroup v2",
            Layout::Hybrid => "hybrid cgroup v1/v2",
        })
    }
}

/// The host's cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub(crate) mount: PathBuf,
    layout: Layout,
    controllers: Vec<String>,
}

impl Hierarchy {
    /// Finds the cgroup2 mount of the calling process and the controllers it offers.
    pub fn detect() -> Result<Hierarchy> {
        let info = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(info).map_err(io_err(info))?;
        let (mount, layout) = parse_mountinfo(&text).ok_or(Error::NoHierarchy)?;
        Hierarchy::at(mount, layout)
    }

    /// Uses the cgroup2 hierarchy mounted at `mount` (also used by tests on a fake tree).
    pub fn at(mount: PathBuf, layout: Layout) -> Result<Hierarchy> {
        let file = mount.join("cgroup.controllers");
        let controllers =
            fs::read_to_string(&file).map_err(io_err(&file))?.split_whitespace().map(str::to_string).collect();
        Ok(Hierarchy { mount, layout, controllers })
    }

    /// Where cgroup2 is mounted.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Pure or hybrid.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The controllers the root offers.
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// Whether the root offers `controller`.
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The cgroup of the calling process, relative to the mount.
    pub fn own_cgroup(&self) -> Result<PathBuf> {
        let file = Path::new("/proc/self/cgroup");
        let text = fs::read_to_string(file).map_err(io_err(file))?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/');
        Ok(PathBuf::from(rel))
    }

    /// Checks, before anything is created, that every controller `resources` needs is offered
    /// and that every value can be expressed in cgroup v2.
    pub fn check_resources(&self, resources: &LinuxResources) -> Result<()> {
        for (field, controller) in needed_controllers(resources)? {
            if !self.has_controller(controller) {
                return Err(Error::ControllerUnavailable {
                    field,
                    controller,
                    layout: self.layout,
                    mount: self.mount.clone(),
                    available: if self.controllers.is_empty() { "none".into() } else { self.controllers.join(" ") },
                });
            }
        }
        crate::resources::plan(resources)?;
        Ok(())
    }

    /// Resolves an OCI `cgroupsPath` (absolute, or relative to the caller's own cgroup) to a path
    /// relative to the mount.
    pub fn resolve(&self, cgroups_path: &str) -> Result<PathBuf> {
        if cgroups_path.split(':').count() == 3 && !cgroups_path.starts_with('/') {
            return Err(Error::SystemdPath(cgroups_path.to_string()));
        }
        if Path::new(cgroups_path).components().any(|c| matches!(c, Component::ParentDir))
            || cgroups_path.contains(':')
            || cgroups_path.contains('\0')
        {
            return Err(Error::InvalidPath(cgroups_path.to_string()));
        }
        if let Some(abs) = cgroups_path.strip_prefix('/') {
            Ok(PathBuf::from(abs.trim_start_matches('/')))
        } else {
            Ok(self.own_cgroup()?.join(cgroups_path))
        }
    }
}

/// Finds the first cgroup2 mount point in a mountinfo text, and whether v1 hierarchies exist.
pub(crate) fn parse_mountinfo(text: &str) -> Option<(PathBuf, Layout)> {
    let mut mount = None;
    let mut has_v1 = false;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next().unwrap_or("");
        let mount_point = left.split_whitespace().nth(4).unwrap_or("");
        match fstype {
            "cgroup2" if mount.is_none() => mount = Some(PathBuf::from(unescape(mount_point))),
            "cgroup" => has_v1 = true,
            _ => {}
        }
    }
    Some((mount?, if has_v1 { Layout::Hybrid } else { Layout::Pure }))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_hybrid_and_pure() {
        let hybrid = "25 20 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
            26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
            27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(parse_mountinfo(hybrid), Some((PathBuf::from("/sys/fs/cgroup/unified"), Layout::Hybrid)));
        let pure = "26 25 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(pure), Some((PathBuf::from("/sys/fs/cgroup"), Layout::Pure)));
        let spaced = "26 25 0:23 / /mnt/a\\040b rw - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(spaced).map(|m| m.0), Some(PathBuf::from("/mnt/a b")));
        assert_eq!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn resolve_rejects_dotdot_and_colons() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        let h = Hierarchy::at(dir.path().to_path_buf(), Layout::Pure).unwrap();
        assert!(h.resolve("/a/../../b").is_err());
        let e = h.resolve("system.slice:cri-containerd:abc").unwrap_err().to_string();
        assert!(e.contains("systemd cgroup path") && e.contains("--systemd-cgroup"), "{e}");
        assert!(matches!(h.resolve("/a:b"), Err(Error::InvalidPath(_))));
        assert_eq!(h.resolve("/a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(h.resolve("//a").unwrap(), PathBuf::from("a"));
        assert!(h.resolve("rel/x").unwrap().ends_with("rel/x"));
    }
}
