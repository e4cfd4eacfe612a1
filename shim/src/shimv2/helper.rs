//! The helper process that creates containers and execs into them for the shim daemon.
//!
//! The daemon never forks a container itself. It stays small (no engine code for creating
//! containers is in its binary, see [`super`]), and the engine's create path wants a fresh
//! single-threaded process (it forks with a raw `clone` whose child allocates before it executes
//! the user's program). So for `Create` and an exec's `Start` the daemon spawns `strata
//! __strata-shim-helper REQUEST REPORT` (through `std::process::Command`, whose child only calls
//! async-signal-safe functions before `execve`), with the container's stdio as the helper's
//! stdio; the helper first re-executes itself through a path no container can write
//! ([`crate::seal`]), as every `strata` command does. The helper runs the engine call, writes
//! its report and exits; the container's processes, which the engine makes the helper's
//! children, are then reparented to the daemon, the child subreaper, exactly as runc's are to
//! containerd-shim-runc-v2.

use crate::container::{self, CreateOptions};
use crate::error::{Error, Result};
use crate::exec::{self, ExecRequest};
use crate::state::StateRoot;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The first argument that turns the shim binary into the helper.
pub const HELPER_ARG: &str = "__strata-shim-helper";

/// What the helper is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Create container `id` from `bundle`, leaving its init at the start gate.
    Create {
        /// The engine's state root.
        root: PathBuf,
        /// The container id.
        id: String,
        /// The bundle directory.
        bundle: PathBuf,
        /// Where the pty master goes when the process has a terminal.
        console_socket: Option<PathBuf>,
        /// Keep the runtime's session keyring (the `NoNewKeyring` runtime option).
        #[serde(default)]
        no_new_keyring: bool,
        /// The systemd cgroup driver (the `SystemdCgroup` runtime option).
        #[serde(default)]
        systemd_cgroup: bool,
    },
    /// Run the `poststart` or `poststop` hooks (`kind`) of a container with its state document
    /// on their stdin; their failures are warnings (the runtime-spec's rule), logged.
    Hooks {
        /// `poststart` or `poststop`.
        kind: String,
        /// The container's hooks (JSON).
        hooks: String,
        /// The state document they get.
        state: String,
    },
    /// Run `process` (an OCI process, JSON) in container `id`, detached.
    Exec {
        /// The engine's state root.
        root: PathBuf,
        /// The container id.
        id: String,
        /// The OCI process (JSON, as containerd sent it).
        process: String,
        /// Where the pty master goes when the process has a terminal.
        console_socket: Option<PathBuf>,
    },
}

/// What the helper reports back through its report file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HelperReport {
    /// The pid of the container's init or of the exec'd process.
    pub pid: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Spawns the helper (`strata`, the binary `helper`) for `req` with the given stdio and
/// returns its pid. The caller waits for its exit and then reads `report`.
pub fn spawn(helper: &Path, req: &HelperRequest, report: &Path, stdio: &[OwnedFd; 3]) -> Result<u32> {
    let json = serde_json::to_string(req).map_err(|e| Error::Invalid(format!("helper request: {e}")))?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::io("duplicating the helper's stdio", e));
    let (stdin, stdout, stderr) = (dup(&stdio[0])?, dup(&stdio[1])?, dup(&stdio[2])?);
    let child = Command::new(helper)
        .arg(HELPER_ARG)
        .arg(json)
        .arg(report)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(|e| Error::io(format!("spawning the shim helper {}", helper.display()), e))?;
    // The daemon's reaper waits for it; dropping a Child neither waits nor kills.
    Ok(child.id())
}

/// Reads and removes a helper's report.
pub fn read_report(report: &Path) -> HelperReport {
    let r = match std::fs::read(report) {
        Ok(data) => serde_json::from_slice(&data)
            .unwrap_or_else(|e| HelperReport { pid: None, error: Some(format!("unreadable helper report: {e}")) }),
        Err(e) => HelperReport { pid: None, error: Some(format!("the shim helper left no report: {e}")) },
    };
    let _ = std::fs::remove_file(report);
    r
}

/// The helper's main: runs the request given as arguments and writes the report. Returns the
/// process exit code.
pub fn main(args: &[String]) -> i32 {
    let (Some(json), Some(report)) = (args.first(), args.get(1)) else {
        eprintln!("usage: {HELPER_ARG} REQUEST REPORT");
        return 2;
    };
    // The shim that spawned it, named in the report's path: after the re-execution below, the
    // parent may already be another process (a shim that died meanwhile).
    let shim = super::runner::report_owner(Path::new(report))
        .map(nix::unistd::Pid::from_raw)
        .unwrap_or_else(nix::unistd::getppid);
    // Before the engine forks anything that enters a container: re-execute through a path the
    // container cannot write (see `crate::seal`); this returns only when already protected.
    let result = crate::seal::reexec_sealed()
        .and_then(|()| {
            serde_json::from_str::<HelperRequest>(json).map_err(|e| Error::Invalid(format!("helper request: {e}")))
        })
        .and_then(|req| run(&req));
    let rep = match result {
        Ok(pid) => HelperReport { pid: Some(pid), error: None },
        Err(e) => HelperReport { pid: None, error: Some(e.to_string()) },
    };
    let data = serde_json::to_vec(&rep).unwrap_or_default();
    let tmp = PathBuf::from(format!("{report}.tmp"));
    if std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, report)).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return 1;
    }
    // A shim that died meanwhile never reads it (containerd's cleanup of the dead shim may have
    // run already: it starts once the shim's socket closes, early in its exit, before this
    // process gets another parent): the report is taken back. The cleanup counts an exiting
    // shim's reports as orphans too, so one of the two removes each.
    if nix::unistd::getppid() != shim || crate::state::process_gone_or_exiting(shim.as_raw()) {
        let _ = std::fs::remove_file(report);
    }
    i32::from(rep.error.is_some())
}

fn run(req: &HelperRequest) -> Result<i32> {
    match req {
        HelperRequest::Hooks { kind, hooks, state } => {
            let kind = match kind.as_str() {
                "poststart" => crate::hooks::Kind::Poststart,
                "poststop" => crate::hooks::Kind::Poststop,
                other => return Err(Error::Invalid(format!("helper: hooks of kind {other:?} are not run here"))),
            };
            let hooks: oci_spec::runtime::Hooks =
                serde_json::from_str(hooks).map_err(|e| Error::Invalid(format!("helper: hooks: {e}")))?;
            crate::hooks::run_or_warn(Some(&hooks), kind, || state.clone().into_bytes());
            Ok(0)
        }
        HelperRequest::Create { root, id, bundle, console_socket, no_new_keyring, systemd_cgroup } => {
            let root = StateRoot::new(root)?;
            let bundle = crate::bundle::Bundle::load(bundle)?;
            let opts = CreateOptions {
                console_socket: console_socket.clone(),
                no_new_keyring: *no_new_keyring,
                systemd_cgroup: *systemd_cgroup,
                ..Default::default()
            };
            let created = container::create(&root, id, &bundle, &opts, false)?;
            Ok(created.state.pid)
        }
        HelperRequest::Exec { root, id, process, console_socket } => {
            let root = StateRoot::new(root)?;
            let config = crate::bundle::parse_config(&root.load(id)?.bundle.join("config.json"))?;
            let process = exec::merge_process(process.as_bytes(), config.process().as_ref(), "exec process")?;
            let pid_file = root.container_dir(id)?.join(format!(".exec-{}.pid", std::process::id()));
            let opts = CreateOptions {
                console_socket: console_socket.clone(),
                pid_file: Some(pid_file.clone()),
                preserve_fds: 0,
                no_new_keyring: false,
                pidfd_socket: None,
                systemd_cgroup: false,
            };
            exec::exec(
                &root,
                id,
                &ExecRequest { process, detach: true, opts, sub_cgroup: None, ignore_paused: false },
            )?;
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| Error::Init("exec: the process's pid was not recorded".into()));
            let _ = std::fs::remove_file(&pid_file);
            pid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report");
        std::fs::write(&path, serde_json::to_vec(&HelperReport { pid: Some(42), error: None }).unwrap()).unwrap();
        let r = read_report(&path);
        assert_eq!((r.pid, r.error), (Some(42), None));
        assert!(!path.exists(), "a report is consumed");
        assert!(read_report(&path).error.is_some_and(|e| e.contains("no report")));
    }

    #[test]
    fn requests_survive_the_command_line() {
        let req = HelperRequest::Exec {
            root: "/run/x".into(),
            id: "c1".into(),
            process: r#"{"args": ["sh"], "cwd": "/"}"#.into(),
            console_socket: None,
        };
        let back: HelperRequest = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert!(matches!(back, HelperRequest::Exec { id, .. } if id == "c1"));
    }
}
