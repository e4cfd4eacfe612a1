//! Container state on disk: `<root>/<id>/state.json`, written atomically (temporary file, fsync,
//! rename), plus the `exec.fifo` start gate while the container is created but not started.

use crate::error::{Error, Result, SysContext};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The default state root, as runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/strata";
const STATE_FILE: &str = "state.json";
/// The FIFO that holds a created container's init until `start`.
pub const EXEC_FIFO: &str = "exec.fifo";

/// The runtime-spec lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// The user's process runs.
    Running,
    /// Frozen through the cgroup.
    Paused,
    /// The init process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What strata records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// The runtime-spec version of the bundle.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The init's pid in the host's pid namespace.
    pub pid: i32,
    /// The init's start time (field 22 of /proc/pid/stat), so a recycled pid is not mistaken
    /// for the container.
    pub pid_start_time: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root file system.
    pub rootfs: PathBuf,
    /// The container's cgroup directory.
    pub cgroup_path: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The owner (the user who created it).
    pub owner: String,
    /// The bundle's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Whether `start` has been run.
    #[serde(default)]
    pub started: bool,
    /// The bundle's hooks as they were at `create` (`poststart` and `poststop` run later, and
    /// the bundle may have changed or gone by then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// `--no-new-keyring` at `create`: execs keep the runtime's session keyring too.
    #[serde(default)]
    pub no_new_keyring: bool,
    /// The container's resources as set now (without device rules): what `update` merges into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<oci_spec::runtime::LinuxResources>,
    /// The transient scope unit holding the cgroup, under the systemd cgroup driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
}

impl ContainerState {
    /// The runtime-spec state document a hook receives on its stdin, with `status`.
    pub fn hook_state(&self, status: &str) -> Vec<u8> {
        crate::hooks::state_document(&self.oci_version, &self.id, status, self.pid, &self.bundle, &self.annotations)
    }
}

/// The runtime-spec `state` document as `strata state` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// runtime-spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Init pid (0 when stopped).
    pub pid: i32,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root file system.
    pub rootfs: PathBuf,
    /// Creation time.
    pub created: String,
    /// Owner.
    pub owner: String,
    /// Annotations.
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
}

/// What a `create` records before it makes anything, so that whatever it leaves when it is
/// killed half-way can be found and removed: who is creating, and the cgroup (and systemd
/// unit) it is about to make.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Creating {
    /// The creating process and its start time (a reused pid is not it).
    pub pid: i32,
    /// See [`Creating::pid`].
    pub pid_start_time: u64,
    /// The container's cgroup directory.
    pub cgroup_path: PathBuf,
    /// The scope unit, with the systemd cgroup driver.
    pub systemd_unit: Option<String>,
}

impl Creating {
    /// A record for a creation by this process.
    pub fn by_this_process(cgroup_path: PathBuf, systemd_unit: Option<String>) -> Creating {
        let pid = std::process::id() as i32;
        Creating { pid, pid_start_time: process_start_time(pid).unwrap_or(0), cgroup_path, systemd_unit }
    }

    /// Whether the creating process is still at work.
    pub fn creator_alive(&self) -> bool {
        process_start_time(self.pid).is_some_and(|t| t == self.pid_start_time)
    }
}

const CREATING_FILE: &str = "creating.json";

fn path_c(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| Error::Invalid(format!("{}: contains a NUL byte", p.display())))
}

/// Writes `value` as JSON to a new file `path` (mode 0600).
///
/// Nothing in the state root is synced to disk: a record there describes processes, which do
/// not outlive the kernel, and what it must survive (the runtime killed at any point) the page
/// cache already keeps; a rename makes each file whole or absent. (runc does not sync its state
/// either. The default root is a tmpfs; where it is not, the three syncs of a start cost
/// 1.4-1.7 ms in all on the project's test machine, whose /run is on its disk.)
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let data = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("writing {}", path.display()))?;
    f.write_all(&data).ctx(|| format!("writing {}", path.display()))
}

/// The state root directory (`--root`).
#[derive(Debug, Clone)]
pub struct StateRoot {
    dir: PathBuf,
}

/// Checks that an id is safe as a directory name and a cgroup name.
pub fn validate_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest && id.len() <= 1024 { Ok(()) } else { Err(Error::InvalidId(id.to_string())) }
}

impl StateRoot {
    /// Uses `dir` as the state root, creating it (mode 0700) when missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<StateRoot> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx(|| format!("creating state root {}", dir.display()))?;
        Ok(StateRoot { dir })
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.dir.join(id))
    }

    /// Creates the directory for a new container with the record of its creation in it, at
    /// once: the directory is made under a name no id can have and renamed into place without
    /// replacing anything, so an id's directory never exists without a record saying who made
    /// it. Fails with [`Error::Exists`] if the id is taken.
    pub fn create_dir(&self, id: &str, record: &Creating) -> Result<PathBuf> {
        let dir = self.container_dir(id)?;
        let tmp = self.dir.join(format!(".creating-{id}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new().mode(0o711).create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let made = write_json(&tmp.join(CREATING_FILE), record).and_then(|()| {
            let (from, to) = (path_c(&tmp)?, path_c(&dir)?);
            // SAFETY: renameat2 reads two NUL-terminated paths; the flags are a constant.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            match nix::errno::Errno::last() {
                nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => Err(Error::Exists(id.to_string())),
                e => Err(Error::sys(format!("renaming {} to {}", tmp.display(), dir.display()), e)),
            }
        });
        if made.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        made.map(|()| dir)
    }

    /// The record of how container `id` was being created, while its state is not saved yet
    /// (`None` once it is, or when there is no such container).
    pub fn load_creating(&self, id: &str) -> Result<Option<Creating>> {
        let dir = self.container_dir(id)?;
        if dir.join(STATE_FILE).exists() {
            return Ok(None);
        }
        let file = dir.join(CREATING_FILE);
        match fs::read(&file) {
            Ok(data) => {
                serde_json::from_slice(&data).map(Some).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", file.display()), e)),
        }
    }

    /// Writes the state of a container atomically.
    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let dir = self.container_dir(&state.id)?;
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(|| format!("writing {}", tmp.display()))?;
        f.write_all(&data).ctx(|| format!("writing {}", tmp.display()))?;
        // not synced: see write_json
        fs::rename(&tmp, dir.join(STATE_FILE)).ctx(|| format!("renaming {}", tmp.display()))?;
        // The state now says everything the record of the creation did.
        let _ = fs::remove_file(dir.join(CREATING_FILE));
        Ok(())
    }

    /// Loads the recorded state of container `id`.
    pub fn load(&self, id: &str) -> Result<ContainerState> {
        let file = self.container_dir(id)?.join(STATE_FILE);
        let data = match fs::read(&file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound(id.to_string())),
            Err(e) => return Err(Error::io(format!("reading {}", file.display()), e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))
    }

    /// The ids of every container with a state file, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).ctx(|| format!("reading {}", self.dir.display()))? {
            let entry = entry.ctx(|| format!("reading {}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_id(&name).is_ok() && entry.path().join(STATE_FILE).exists() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes the directory of container `id`.
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
        }
    }
}

/// Reads field 22 (start time in clock ticks) of `/proc/<pid>/stat`; `None` if the process is gone.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); start time is field 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` is gone, a zombie, or already exiting (`PF_EXITING`: past the start of
/// its exit, where its descriptors close and its children are about to be handed on). A process
/// that waits for another's exit to clean up after it can take this as the exit: nothing the
/// exiting process does from here on reads or writes files.
pub fn process_gone_or_exiting(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return true };
    // rest starts at field 3 (state); flags are field 9.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    matches!(fields.first(), Some(&"Z") | Some(&"X"))
        || fields.get(6).and_then(|f| f.parse::<u64>().ok()).is_none_or(|flags| flags & PF_EXITING != 0)
}

/// The current time as RFC 3339 with nanoseconds, in UTC.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats seconds since the epoch as RFC 3339 UTC.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(format_rfc3339(1_798_761_600, 0), "2027-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn ids_are_checked() {
        for good in ["a", "abc-1.2_x", "0"] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::new(dir.path().join("r")).unwrap();
        let record = Creating::by_this_process("/sys/fs/cgroup/x".into(), None);
        root.create_dir("c1", &record).unwrap();
        assert!(matches!(root.create_dir("c1", &record), Err(Error::Exists(_))));
        // The record is there until the state is saved, and no temporary directory is left.
        assert!(root.load_creating("c1").unwrap().is_some_and(|r| r.creator_alive()));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        let st = ContainerState {
            systemd_unit: None,
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            pid: 42,
            pid_start_time: 7,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup_path: "/sys/fs/cgroup/x".into(),
            created: now_rfc3339(),
            owner: "root".into(),
            annotations: HashMap::new(),
            started: false,
            hooks: None,
            no_new_keyring: false,
            resources: None,
        };
        root.save(&st).unwrap();
        assert_eq!(root.load("c1").unwrap().pid, 42);
        assert!(root.load_creating("c1").unwrap().is_none(), "the record outlived the saved state");
        assert_eq!(root.list().unwrap(), vec!["c1".to_string()]);
        root.remove("c1").unwrap();
        assert!(matches!(root.load("c1"), Err(Error::NotFound(_))));
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(!process_gone_or_exiting(std::process::id() as i32));
    }

    #[test]
    fn a_zombie_or_a_missing_process_is_gone_a_sleeping_one_is_not() {
        let mut sleeping = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let zombie = done.id() as i32;
        // not waited for: a zombie once it has exited
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read_to_string(format!("/proc/{zombie}/stat")).unwrap_or_default().contains(") Z ") {
            assert!(std::time::Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(process_gone_or_exiting(zombie));
        assert!(!process_gone_or_exiting(sleeping.id() as i32));
        sleeping.kill().unwrap();
        sleeping.wait().unwrap();
        done.wait().unwrap();
        assert!(process_gone_or_exiting(zombie), "a reaped process");
    }
}
