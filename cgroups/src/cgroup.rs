//! One container's cgroup: creation, resources, processes, freeze, kill, removal.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::error::{Error, Result, io_err};
use crate::events::MemoryEventStream;
use crate::hierarchy::Hierarchy;
use crate::resources::{self, needed_controllers};
use crate::stats::{self, Stats};

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

    /// Creates the cgroup at `rel` under the hierarchy, enabling in every ancestor's
    /// `cgroup.subtree_control` the controllers `resources` needs (an error if one cannot be)
    /// and, as runc does, every other controller the ancestor offers (where it can: a cgroup
    /// with processes of its own takes none), so that the container has all the statistics
    /// (memory, pids, io) whether or not its config limits them. Then applies the resources.
    /// Every check runs before the first directory is made; on a later error nothing created by
    /// this call is left behind.
    pub fn create(h: &Hierarchy, rel: &Path, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Error::InvalidPath(rel.display().to_string()));
        }
        let mut needed = Vec::new();
        if let Some(r) = resources {
            h.check_resources(r)?;
            needed = needed_controllers(r)?.into_iter().map(|(_, c)| c).collect();
        }
        let mut created = Vec::new();
        let result = (|| {
            let mut dir = h.mount.clone();
            for comp in rel.components() {
                for c in &needed {
                    enable_controller(&dir, c)?;
                }
                enable_offered_controllers(&dir, &needed);
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

    /// Applies (or updates) resources on the cgroup: interface files, then the device program.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        let plan = resources::plan(r)?;
        if let Some(limit) = plan.check_memory_limit {
            let usage: u64 = self
                .read("memory.current")?
                .trim()
                .parse()
                .map_err(|_| Error::Parse { what: "memory.current", text: String::new() })?;
            if (limit as u64) < usage {
                return Err(Error::MemoryBelowUsage { path: self.dir.clone(), limit, usage });
            }
        }
        for w in &plan.writes {
            match w.candidates.iter().find(|(f, _)| self.dir.join(f).exists()) {
                Some((file, value)) => self.write(file, value)?,
                None if w.optional => {}
                None => {
                    let (file, value) = w.first();
                    self.write(file, value)?;
                }
            }
        }
        if let Some(rules) = &plan.devices {
            crate::devices::apply(&self.dir, rules)?;
        }
        Ok(())
    }

    /// Live update of a running container's resources (`strata update`, the shim's Update).
    /// Fields absent from `r` keep their current values.
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        self.apply(r)
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

    /// Whether any process lives in the cgroup or its descendants; a cgroup removed meanwhile
    /// (systemd removes a scope's once its last process is gone) holds none.
    pub fn is_populated(&self) -> Result<bool> {
        match self.read("cgroup.events") {
            Ok(text) => Ok(text.lines().any(|l| l.trim() == "populated 1")),
            Err(e) if self.vanished(&e) => Ok(false),
            Err(_) => match self.pids() {
                Ok(pids) => Ok(!pids.is_empty()),
                Err(e) if self.vanished(&e) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Whether `e` is a file of this cgroup not found because the cgroup itself is gone.
    fn vanished(&self, e: &Error) -> bool {
        matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound) && !self.dir.exists()
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

    /// Asks the kernel to freeze (or thaw) the cgroup without waiting until it is: watch
    /// [`Cgroup::is_frozen`] for the end (a caller with an event loop must not sleep on it).
    pub fn request_freeze(&self, frozen: bool) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// Sends SIGKILL to every process in the cgroup and below without waiting for them to
    /// die (`cgroup.kill`): watch [`Cgroup::is_populated`] for the end. On kernels before
    /// 5.14, which have no `cgroup.kill`, this is [`Cgroup::kill_all`], which waits.
    pub fn kill_all_nowait(&self) -> Result<()> {
        let killed =
            if self.dir.join("cgroup.kill").exists() { self.write("cgroup.kill", "1") } else { self.kill_all() };
        // (a cgroup removed meanwhile has no process left to kill)
        match killed {
            Err(e) if self.vanished(&e) => Ok(()),
            r => r,
        }
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

    /// Kills every process in the cgroup and its descendants (cgroup.kill, or, on kernels
    /// before 5.14, SIGKILL to each pid of a frozen cgroup until it is empty) and waits until
    /// it is empty.
    pub fn kill_all(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.dir.join("cgroup.kill").exists() {
            self.write("cgroup.kill", "1")?;
        } else {
            // Freezing first stops processes from forking away from the signals.
            let frozen = self.freeze().is_ok();
            for pid in self.pids()? {
                // SAFETY: kill(2) takes plain integers and has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if frozen {
                self.thaw()?;
            }
        }
        let mut sleep = Duration::from_micros(200);
        while self.is_populated()? {
            if Instant::now() > deadline {
                return Err(Error::KillTimeout { path: self.dir.clone(), remaining: self.pids()?.len() });
            }
            for pid in self.pids()? {
                // SAFETY: as above; repeated for processes that raced into the cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(sleep);
            sleep = (sleep * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Removes the cgroup and the cgroups a container created below it, deepest first,
    /// retrying each while the kernel still reports it busy (exiting processes).
    pub fn delete(&self) -> Result<()> {
        remove_tree(&self.dir, Instant::now() + Duration::from_secs(5))
    }

    /// Resource usage.
    pub fn stats(&self) -> Result<Stats> {
        stats::read(&self.dir)
    }

    /// A stream of memory events (OOM kills and limits reached).
    pub fn memory_events(&self) -> Result<MemoryEventStream> {
        MemoryEventStream::open(&self.dir)
    }

    /// The ids of the device eBPF programs attached to this cgroup.
    pub fn device_programs(&self) -> Result<Vec<u32>> {
        crate::devices::attached_programs(&self.dir)
    }

    /// Writes `value` to an interface file, which must exist (cgroupfs cannot create files:
    /// a missing file means the controller is not enabled here).
    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        let mut f = fs::OpenOptions::new().write(true).truncate(true).open(&path).map_err(io_err(&path))?;
        f.write_all(value.as_bytes()).map_err(io_err(&path))
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).map_err(io_err(&path))
    }
}

fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(dir))?.is_dir() {
            remove_tree(&entry.path(), deadline)?;
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
}

/// Enables, best effort, every controller `dir` offers that is not enabled for its children
/// yet (besides `needed`, which the caller enabled or failed on).
fn enable_offered_controllers(dir: &Path, needed: &[&str]) {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (offered, enabled) = (read("cgroup.controllers"), read("cgroup.subtree_control"));
    for c in offered.split_whitespace() {
        if needed.contains(&c) || enabled.split_whitespace().any(|e| e == c) {
            continue;
        }
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(dir.join("cgroup.subtree_control")) {
            let _ = f.write_all(format!("+{c}").as_bytes());
        }
    }
}

fn enable_controller(dir: &Path, controller: &str) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).map_err(io_err(&file))?;
    if current.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new().write(true).truncate(true).open(&file).map_err(io_err(&file))?;
    f.write_all(format!("+{controller}").as_bytes()).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::InternalProcesses { path: dir.to_path_buf(), controller: controller.to_string() }
        } else {
            io_err(&file)(e)
        }
    })
}
