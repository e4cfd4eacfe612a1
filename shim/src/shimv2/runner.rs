//! The helpers in flight: each `Create` and exec `Start` runs `strata __strata-shim-helper`
//! (see [`super::helper`]) while the daemon's loop goes on serving the other containers. A
//! helper is one more child: the loop's reaper hands its exit to [`Runner::on_exit`], which
//! reads its report and returns what the call was waiting for; a helper still running at its
//! deadline is killed, and its call fails. The payload `T` is whatever the caller needs to
//! finish the call (the connection to answer, the stdio to keep).

use super::helper::{self, HelperRequest};
use super::ttrpc::{RpcError, status};
use containerd_shim::protos::ttrpc::Code;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a helper may take to create a container or start an exec (a hook may be slow).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// A helper's report is `<dir>/.report-<shim pid>-<n>` (written as `….tmp`, then renamed).
const REPORT_PREFIX: &str = ".report-";

/// Removes the reports of shims that are gone from `dir`: a shim killed while its helper ran
/// never reads that helper's report (the helper also removes a report it wrote after its shim
/// died; this catches the one written just before). A running process of the same pid keeps
/// its files. Used by the cleanup of a dead shim.
pub fn remove_orphaned_reports(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let pid = report_owner(&e.path());
        // (a zombie counts as gone: a shim killed with SIGKILL stays one until it is waited for;
        // so does one still exiting, whose helpers take back what they write after this)
        if let Some(pid) = pid
            && crate::state::process_gone_or_exiting(pid)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The pid of the shim a report is for, from its name (`.report-<shim pid>-<n>`).
pub fn report_owner(report: &Path) -> Option<i32> {
    let name = report.file_name()?.to_str()?;
    name.strip_prefix(REPORT_PREFIX)?.split('-').next()?.parse().ok()
}

#[derive(Debug)]
struct Running<T> {
    report: PathBuf,
    deadline: Instant,
    killed: bool,
    /// Killed because its call was called off (the container deleted meanwhile).
    cancelled: bool,
    payload: T,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Runner<T> {
    binary: PathBuf,
    /// `binary` through a read-only mount of it (see [`crate::seal::read_only_view_of`]), with
    /// the identity of the file it was made from: a helper executed from it is protected from
    /// the start and needs no re-execution of its own. Made again when the file changes (an
    /// upgrade), dropped for good when it cannot be made or executed.
    protected: Option<(OwnedFd, (u64, u64))>,
    tried_protected: bool,
    dir: PathBuf,
    timeout: Duration,
    running: HashMap<i32, Running<T>>,
    next: u64,
}

impl<T> Runner<T> {
    /// Helpers run `binary`; their reports go to `dir`.
    pub fn new(binary: PathBuf, dir: PathBuf, timeout: Duration) -> Runner<T> {
        Runner { binary, dir, timeout, running: HashMap::new(), next: 0, protected: None, tried_protected: false }
    }

    /// The binary to execute: the protected view of `binary` while it is the same file.
    fn executable(&mut self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let id = std::fs::metadata(&self.binary).ok().map(|m| (m.dev(), m.ino()))?;
        if self.protected.as_ref().is_some_and(|(_, made_from)| *made_from != id) {
            self.protected = None;
            self.tried_protected = false;
        }
        if self.protected.is_none() && !self.tried_protected {
            self.tried_protected = true;
            // Only an ELF binary runs from a descriptor closed on exec (a script's interpreter
            // could not open it): anything else keeps running from its path.
            let mut magic = [0u8; 4];
            let elf = std::fs::File::open(&self.binary)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok_and(|()| magic == *b"\x7fELF");
            if !elf {
                return None;
            }
            // Made from the path, then checked to be the file just looked at.
            match crate::seal::read_only_view_of(&self.binary) {
                Ok(fd)
                    if std::fs::File::from(fd.try_clone().ok()?).metadata().is_ok_and(|m| (m.dev(), m.ino()) == id) =>
                {
                    self.protected = Some((fd, id));
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("no read-only view of {} ({e}): helpers re-execute", self.binary.display()),
            }
        }
        self.protected.as_ref().map(|(fd, _)| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
    }

    /// Starts a helper for `req` with the process's stdio; its exit completes it.
    pub fn start(&mut self, req: &HelperRequest, stdio: [OwnedFd; 3], payload: T) -> Result<i32, RpcError> {
        self.next += 1;
        let report = self.dir.join(format!("{REPORT_PREFIX}{}-{}", std::process::id(), self.next));
        // The protected view executes as the helper's binary where it can; a file that cannot
        // run from a descriptor closed on exec (a script) runs from its path, as before.
        let spawned = match self.executable() {
            Some(exe) => helper::spawn(&exe, req, &report, &stdio).or_else(|e| {
                tracing::debug!("running the helper from its read-only view failed ({e}): using its path");
                self.protected = None;
                helper::spawn(&self.binary, req, &report, &stdio)
            }),
            None => helper::spawn(&self.binary, req, &report, &stdio),
        };
        let pid = spawned.map_err(|e| status(Code::UNKNOWN, e.to_string()))? as i32;
        self.running.insert(
            pid,
            Running { report, deadline: Instant::now() + self.timeout, killed: false, cancelled: false, payload },
        );
        Ok(pid)
    }

    /// Whether `pid` is a helper in flight.
    pub fn is_helper(&self, pid: i32) -> bool {
        self.running.contains_key(&pid)
    }

    /// Whether any helper runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The payloads of the helpers in flight.
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        self.running.values().map(|r| &r.payload)
    }

    /// The earliest deadline of a helper not yet killed.
    pub fn deadline(&self) -> Option<Instant> {
        self.running.values().filter(|r| !r.killed).map(|r| r.deadline).min()
    }

    /// Kills the helpers past their deadline (their exits then fail their calls).
    pub fn kill_overdue(&mut self, now: Instant) {
        for (pid, r) in self.running.iter_mut().filter(|(_, r)| !r.killed && r.deadline <= now) {
            log::error!("the shim helper {pid} took longer than {:?}: killing it", self.timeout);
            // SAFETY: kill(2) takes integers only; the helper is our unreaped child, so its
            // pid cannot have been reused.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            r.killed = true;
        }
    }

    /// Kills the helpers whose payload `which` picks (their calls were called off: their
    /// exits then fail them as cancelled). Whether there was any.
    pub fn cancel(&mut self, which: impl Fn(&T) -> bool) -> bool {
        let mut any = false;
        for (pid, r) in self.running.iter_mut().filter(|(_, r)| which(&r.payload)) {
            if !r.killed {
                // SAFETY: as in `kill_overdue`.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            (r.killed, r.cancelled, any) = (true, true, true);
        }
        any
    }

    /// A reaped child that ended with `code` (128 + the signal when one killed it): if it was a
    /// helper, its payload and the pid of the process it made (or why it failed).
    pub fn on_exit(&mut self, pid: i32, code: i32) -> Option<(T, Result<i32, RpcError>)> {
        let r = self.running.remove(&pid)?;
        if r.cancelled {
            let _ = std::fs::remove_file(&r.report);
            return Some((r.payload, Err(status(Code::CANCELLED, "called off: the task was deleted meanwhile"))));
        }
        if r.killed {
            let _ = std::fs::remove_file(&r.report);
            let err = status(Code::DEADLINE_EXCEEDED, format!("the shim helper took longer than {:?}", self.timeout));
            return Some((r.payload, Err(err)));
        }
        let mut rep = helper::read_report(&r.report);
        if rep.pid.is_none() && code > 128 && !r.report.exists() {
            // Killed before it could report (an out-of-memory kill, a `kill -9`): say so.
            let said = rep.error.take().unwrap_or_default();
            rep.error =
                Some(format!("the shim helper was killed by signal {} before it reported ({said})", code - 128));
        }
        let result = match (rep.pid, rep.error) {
            (_, Some(e)) => Err(status(Code::UNKNOWN, e)),
            (Some(p), None) => Ok(p),
            (None, None) => Err(status(Code::UNKNOWN, "the shim helper reported no pid")),
        };
        Some((r.payload, result))
    }

    /// Where reports go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for the strata binary: writes `report` (JSON) to its third argument.
    fn fake_helper(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-strata");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_report_names_the_shim_it_is_for() {
        assert_eq!(report_owner(Path::new("/run/x/.report-4242-7")), Some(4242));
        assert_eq!(report_owner(Path::new("/run/x/.report-4242-7.tmp")), Some(4242));
        assert_eq!(report_owner(Path::new("/run/x/c1")), None);
        assert_eq!(report_owner(Path::new("/run/x/.report-x-1")), None);
    }

    #[test]
    fn reports_of_dead_shims_are_removed_and_a_live_one_s_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        // Exited, not yet waited for.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let undead = zombie.id();
        while std::fs::read_to_string(format!("/proc/{undead}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let live = std::process::id();
        for name in [
            format!(".report-{dead}-1"),
            format!(".report-{dead}-2.tmp"),
            format!(".report-{undead}-4"),
            format!(".report-{live}-3"),
            "c1".into(),
        ] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        remove_orphaned_reports(dir.path());
        zombie.wait().unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [format!(".report-{live}-3"), "c1".to_string()]);
    }

    fn null3() -> [OwnedFd; 3] {
        let f = || OwnedFd::from(std::fs::File::options().read(true).write(true).open("/dev/null").unwrap());
        [f(), f(), f()]
    }

    fn req() -> HelperRequest {
        HelperRequest::Create {
            root: "/r".into(),
            id: "c1".into(),
            bundle: "/b".into(),
            console_socket: None,
            no_new_keyring: false,
            systemd_cgroup: false,
        }
    }

    fn reap(runner: &mut Runner<&'static str>, pid: i32) -> (&'static str, Result<i32, RpcError>) {
        let (_, code) = crate::signals::reap(pid, 0).unwrap();
        runner.on_exit(pid, code).unwrap()
    }

    #[test]
    fn a_helper_reports_the_pid_it_made_or_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let ok = fake_helper(dir.path(), r#"printf '{"pid": 4242, "error": null}' > "$3""#);
        let mut runner = Runner::new(ok, dir.path().to_path_buf(), HELPER_TIMEOUT);
        let pid = runner.start(&req(), null3(), "create c1").unwrap();
        assert!(runner.is_helper(pid));
        let (payload, result) = reap(&mut runner, pid);
        assert_eq!((payload, result), ("create c1", Ok(4242)));
        assert!(runner.is_empty());
        assert!(runner.on_exit(pid, 0).is_none(), "a helper completes once");

        let failing = fake_helper(dir.path(), r#"printf '{"pid": null, "error": "mounts[3]: no such file"}' > "$3""#);
        let mut runner = Runner::new(failing, dir.path().to_path_buf(), HELPER_TIMEOUT);
        let pid = runner.start(&req(), null3(), "x").unwrap();
        let (_, result) = reap(&mut runner, pid);
        assert_eq!(result.unwrap_err().message, "mounts[3]: no such file");

        let killed = fake_helper(dir.path(), "kill -9 $$");
        let mut runner = Runner::new(killed, dir.path().to_path_buf(), HELPER_TIMEOUT);
        let pid = runner.start(&req(), null3(), "x").unwrap();
        let (_, result) = reap(&mut runner, pid);
        let message = result.unwrap_err().message;
        assert!(message.starts_with("the shim helper was killed by signal 9 before it reported"), "{message}");
    }

    #[test]
    fn a_helper_past_its_deadline_is_killed_and_its_call_fails() {
        let dir = tempfile::tempdir().unwrap();
        let stuck = fake_helper(dir.path(), "exec sleep 30");
        let mut runner = Runner::new(stuck, dir.path().to_path_buf(), Duration::from_millis(10));
        let pid = runner.start(&req(), null3(), "x").unwrap();
        assert!(runner.deadline().is_some());
        std::thread::sleep(Duration::from_millis(20));
        runner.kill_overdue(Instant::now());
        assert!(runner.deadline().is_none(), "a killed helper has no deadline left");
        let (_, result) = reap(&mut runner, pid);
        assert_eq!(result.unwrap_err().code, Code::DEADLINE_EXCEEDED);
    }

    #[test]
    fn a_called_off_helper_is_killed_and_its_call_fails_as_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let stuck = fake_helper(dir.path(), "exec sleep 30");
        let mut runner = Runner::new(stuck, dir.path().to_path_buf(), HELPER_TIMEOUT);
        let a = runner.start(&req(), null3(), "create a").unwrap();
        let b = runner.start(&req(), null3(), "create b").unwrap();
        assert!(runner.cancel(|p| *p == "create a"));
        assert!(!runner.cancel(|p| *p == "create c"), "nothing to call off");
        let (payload, result) = reap(&mut runner, a);
        assert_eq!((payload, result.unwrap_err().code), ("create a", Code::CANCELLED));
        assert!(runner.is_helper(b), "the other helper goes on");
        runner.cancel(|_| true);
        assert_eq!(reap(&mut runner, b).1.unwrap_err().code, Code::CANCELLED);
    }
}
