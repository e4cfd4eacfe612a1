//! cgroups v2 for strata: find the unified hierarchy, create a container's cgroup, apply OCI
//! resources, freeze, kill and remove it.
//!
//! strata manages cgroup v2 only. On a hybrid host (v1 controllers plus a cgroup2 mount at
//! `/sys/fs/cgroup/unified`) the v2 tree exists but offers few controllers; a request for a
//! controller the host does not offer is refused by [`Cgroup::check_resources`] before anything
//! is created.

use oci_spec::runtime::LinuxResources;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the cgroups crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoHierarchy,
    /// The resources ask for a controller this host does not offer.
    #[error(
        "linux.resources.{field} needs the cgroup v2 `{controller}` controller, which this host does not offer ({layout} layout, cgroup2 at {mount} offers: {available})"
    )]
    ControllerUnavailable {
        /// The OCI field that asked for it.
        field: &'static str,
        /// The controller name.
        controller: &'static str,
        /// `pure` or `hybrid`.
        layout: Layout,
        /// Where cgroup2 is mounted.
        mount: PathBuf,
        /// The controllers that are available.
        available: String,
    },
    /// A `cgroupsPath` that would leave the hierarchy.
    #[error("linux.cgroupsPath {0:?} is invalid: it must not contain `..` components")]
    InvalidPath(String),
    /// A resource feature that this crate does not implement yet.
    #[error("linux.resources.{0} is not supported yet")]
    Unsupported(&'static str),
    /// An I/O error on a cgroup file.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// Freezing did not complete in time.
    #[error("cgroup {0}: timed out waiting for frozen state")]
    FreezeTimeout(PathBuf),
}

type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

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
    mount: PathBuf,
    layout: Layout,
    controllers: Vec<String>,
}

impl Hierarchy {
    /// Finds the cgroup2 mount of the calling process and the controllers it offers.
    pub fn detect() -> Result<Hierarchy> {
        let info = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(info).map_err(io_err(info))?;
        let mut mount = None;
        let mut has_v1 = false;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let fstype = right.split_whitespace().next().unwrap_or("");
            let mount_point = left.split_whitespace().nth(4).unwrap_or("");
            match fstype {
                "cgroup2" if mount.is_none() => mount = Some(PathBuf::from(unescape(mount_point))),
                "cgroup" => has_v1 = true,
                _ => {}
            }
        }
        let mount = mount.ok_or(Error::NoHierarchy)?;
        Hierarchy::at(mount, if has_v1 { Layout::Hybrid } else { Layout::Pure })
    }

    /// Uses the cgroup2 hierarchy mounted at `mount` (also used by tests on a fake tree).
    pub fn at(mount: PathBuf, layout: Layout) -> Result<Hierarchy> {
        let file = mount.join("cgroup.controllers");
        let controllers = fs::read_to_string(&file)
            .map_err(io_err(&file))?
            .split_whitespace()
            .map(str::to_string)
            .collect();
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

    /// Whether the root offers `controller`.
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The cgroup of the calling process, relative to the mount.
    pub fn own_cgroup(&self) -> Result<PathBuf> {
        let file = Path::new("/proc/self/cgroup");
        let text = fs::read_to_string(file).map_err(io_err(file))?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        Ok(PathBuf::from(rel))
    }

    /// Checks, before anything is created, that every controller `resources` needs is offered.
    pub fn check_resources(&self, resources: &LinuxResources) -> Result<()> {
        for (field, controller) in needed_controllers(resources) {
            if !self.has_controller(controller) {
                return Err(Error::ControllerUnavailable {
                    field,
                    controller,
                    layout: self.layout,
                    mount: self.mount.clone(),
                    available: if self.controllers.is_empty() {
                        "none".into()
                    } else {
                        self.controllers.join(" ")
                    },
                });
            }
        }
        Ok(())
    }

    /// Resolves an OCI `cgroupsPath` (absolute, or relative to the caller's own cgroup) to a path
    /// relative to the mount.
    pub fn resolve(&self, cgroups_path: &str) -> Result<PathBuf> {
        if Path::new(cgroups_path)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
            || cgroups_path.contains(':')
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

/// The controllers `resources` needs, with the OCI field that asks for each.
fn needed_controllers(r: &LinuxResources) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if m.limit().is_some() || m.reservation().is_some() || m.swap().is_some() {
            out.push(("memory", "memory"));
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some() || c.quota().is_some() || c.period().is_some() || c.idle().is_some() {
            out.push(("cpu", "cpu"));
        }
        if c.cpus().is_some() || c.mems().is_some() {
            out.push(("cpu.cpus", "cpuset"));
        }
    }
    if r.pids().is_some() {
        out.push(("pids", "pids"));
    }
    if let Some(b) = r.block_io() {
        if b.weight().is_some()
            || b.weight_device().is_some()
            || b.throttle_read_bps_device().is_some()
            || b.throttle_write_bps_device().is_some()
            || b.throttle_read_iops_device().is_some()
            || b.throttle_write_iops_device().is_some()
        {
            out.push(("blockIO", "io"));
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        out.push(("hugepageLimits", "hugetlb"));
    }
    if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
        out.push(("rdma", "rdma"));
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Opens an existing cgroup directory (for example one recorded in a container's state).
    pub fn open(dir: PathBuf) -> Cgroup {
        Cgroup { dir }
    }

    /// Creates the cgroup at `rel` under the hierarchy, enabling the controllers `resources`
    /// needs in every ancestor's `cgroup.subtree_control`, and applies the resources.
    /// On error nothing created by this call is left behind.
    pub fn create(h: &Hierarchy, rel: &Path, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        if let Some(r) = resources {
            h.check_resources(r)?;
        }
        let needed: Vec<&str> = resources.map(needed_controllers).unwrap_or_default().into_iter().map(|(_, c)| c).collect();
        let mut created = Vec::new();
        let result = (|| {
            let mut dir = h.mount.clone();
            for comp in rel.components() {
                for c in &needed {
                    enable_controller(&dir, c)?;
                }
                dir.push(comp);
                match fs::create_dir(&dir) {
                    Ok(()) => created.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&dir)(e)),
                }
            }
            let cg = Cgroup { dir };
            if let Some(r) = resources {
                cg.apply(r)?;
            }
            Ok(cg)
        })();
        if result.is_err() {
            for dir in created.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
        result
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Applies (or updates) resources on the cgroup.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(p) = r.pids() {
            let limit = p.limit();
            self.write("pids.max", &if limit <= 0 { "max".to_string() } else { limit.to_string() })?;
        }
        if let Some(m) = r.memory() {
            if let Some(l) = m.limit() {
                self.write("memory.max", &max_or(l))?;
            }
            if let Some(l) = m.reservation() {
                self.write("memory.low", &max_or(l))?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(q) = c.quota() {
                let period = c.period().unwrap_or(100_000);
                self.write("cpu.max", &format!("{} {period}", max_or(q)))?;
            }
            if let Some(s) = c.shares() {
                self.write("cpu.weight", &shares_to_weight(s).to_string())?;
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            self.write(&format!("hugetlb.{}.max", h.page_size()), &h.limit().to_string())?;
        }
        if let Some(unified) = r.unified() {
            for (k, v) in unified {
                if k.contains('/') || k.starts_with('.') || !k.contains('.') {
                    return Err(Error::InvalidPath(k.clone()));
                }
                self.write(k, v)?;
            }
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let text = self.read("cgroup.procs")?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Freezes every process and waits until the kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<()> {
        self.write("cgroup.freeze", "1")?;
        self.wait_frozen(true)
    }

    /// Thaws the cgroup.
    pub fn thaw(&self) -> Result<()> {
        self.write("cgroup.freeze", "0")?;
        self.wait_frozen(false)
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(self.read("cgroup.events")?.lines().any(|l| l.trim() == "frozen 1"))
    }

    fn wait_frozen(&self, want: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sleep = Duration::from_micros(100);
        while self.is_frozen()? != want {
            if Instant::now() > deadline {
                return Err(Error::FreezeTimeout(self.dir.clone()));
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills every process in the cgroup (cgroup.kill, or SIGKILL to each pid where that file
    /// does not exist) and waits until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        if self.dir.join("cgroup.kill").exists() {
            self.write("cgroup.kill", "1")?;
        } else {
            for pid in self.pids()? {
                // SAFETY: kill(2) takes plain integers and has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pids()?.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Removes the cgroup (retrying while it is busy) and any empty parents up to, but not
    /// including, `keep` (the mount root or the caller's own cgroup).
    pub fn delete(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io_err(&self.dir)(e)),
            }
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(io_err(&path))
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).map_err(io_err(&path))
    }
}

fn enable_controller(dir: &Path, controller: &str) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).map_err(io_err(&file))?;
    if current.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    fs::write(&file, format!("+{controller}")).map_err(io_err(&file))
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".to_string() } else { v.to_string() }
}

/// Converts cgroup v1 `cpu.shares` (2..262144) to cgroup v2 `cpu.weight` (1..10000) with the
/// formula runc and crun share, so a config means the same under every runtime.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_shares_map_near_default_weight() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    proptest! {
        #[test]
        fn weight_is_in_range_and_monotonic(a in 2u64..=262_144, b in 2u64..=262_144) {
            let (wa, wb) = (shares_to_weight(a), shares_to_weight(b));
            prop_assert!((1..=10_000).contains(&wa));
            prop_assert_eq!(a <= b, wa <= wb || wa == wb);
        }
    }

    #[test]
    fn refuses_missing_controller_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
        let h = Hierarchy::at(dir.path().to_path_buf(), Layout::Hybrid).unwrap();
        let r: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":1048576}}"#).unwrap();
        let err = Cgroup::create(&h, Path::new("strata/x"), Some(&r)).unwrap_err().to_string();
        assert!(err.contains("`memory`") && err.contains("hybrid"), "{err}");
        assert!(!dir.path().join("strata").exists());
    }

    #[test]
    fn resolve_rejects_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        let h = Hierarchy::at(dir.path().to_path_buf(), Layout::Pure).unwrap();
        assert!(h.resolve("/a/../../b").is_err());
        assert_eq!(h.resolve("/a/b").unwrap(), PathBuf::from("a/b"));
    }
}
