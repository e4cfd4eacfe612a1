//! The soak: many container lifecycles through the strata CLI and through containerd with
//! strata's shim, then a count of everything a lifecycle could leave behind, taken before and
//! after: host mounts, cgroups, runtime and shim processes, state directories, containerd's
//! containers and active snapshots, containerd's descriptors, and the resident set and
//! descriptors of a shim that served many execs. `strata-bench`'s `soak` binary runs it long
//! (1000 of each, see README); `tests/soak.rs` runs it short in CI.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, NAMESPACE, Peer, peers, shim_binary, shim_pid};
use crate::load::run_load;
use crate::{BusyboxBundle, strata_binary};

/// How long a soak is.
#[derive(Debug, Clone, Copy)]
pub struct SoakOptions {
    /// Lifecycles through the CLI (create, start, exec, kill, delete; every other one with a
    /// terminal through a console socket).
    pub cli: usize,
    /// `ctr run --rm` lifecycles through containerd with strata's shim.
    pub containerd: usize,
    /// Concurrent clients for the containerd lifecycles.
    pub clients: usize,
    /// `ctr task exec` into one long-lived container, to watch its shim's memory.
    pub execs: usize,
    /// Pods through containerd: a sandbox container and [`POD_CONTAINERS`] containers run to
    /// completion in it, all served by the sandbox's shim (grouped by the
    /// `io.kubernetes.cri.sandbox-id` annotation, as the CRI plugin asks).
    pub pods: usize,
}

/// Containers run in each pod of the soak.
pub const POD_CONTAINERS: usize = 3;

/// What a soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Lifecycles completed through the CLI and through containerd, and execs.
    pub cli: usize,
    /// See [`SoakReport::cli`].
    pub containerd: usize,
    /// See [`SoakReport::cli`].
    pub execs: usize,
    /// Pods whose whole lifecycle completed, and the containers run in them.
    pub pods: usize,
    /// See [`SoakReport::pods`].
    pub pod_containers: usize,
    /// Failed lifecycles, each with its error.
    pub failures: Vec<String>,
    /// What was left behind, each named (the goal: none).
    pub leaks: Vec<String>,
    /// The exec'd-into shim's resident set (KiB) after the first tenth of the execs and at the end.
    pub shim_rss_kib: (u64, u64),
    /// Its open descriptors at the same two points.
    pub shim_fds: (usize, usize),
    /// Wall time of each part.
    pub cli_time: Duration,
    /// See [`SoakReport::cli_time`].
    pub containerd_time: Duration,
}

/// What the host holds that a container could leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Census {
    mounts: Vec<String>,
    cgroups: Vec<String>,
    processes: Vec<String>,
}

fn cgroup2_mount() -> PathBuf {
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup/unified")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// What the host holds now.
pub(crate) fn census() -> Census {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .collect();
    let mut cgroups = Vec::new();
    let mut stack = vec![cgroup2_mount()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroups.push(e.path().display().to_string());
                stack.push(e.path());
            }
        }
    }
    cgroups.sort();
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm == "strata" || comm.starts_with("containerd-shim") {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            processes.push(format!("{} ({comm}: {})", e.file_name().to_string_lossy(), cmdline.trim_end()));
        }
    }
    Census { mounts, cgroups, processes }
}

/// Names what `after` holds that `before` did not.
pub(crate) fn compare(before: &Census, after: &Census, leaks: &mut Vec<String>) {
    let new = |a: &[String], b: &[String]| -> Vec<String> { b.iter().filter(|x| !a.contains(x)).cloned().collect() };
    for m in new(&before.mounts, &after.mounts) {
        leaks.push(format!("mount {m}"));
    }
    for c in new(&before.cgroups, &after.cgroups) {
        leaks.push(format!("cgroup {c}"));
    }
    for p in new(&before.processes, &after.processes) {
        leaks.push(format!("process {p}"));
    }
}

/// What the host holds now that it did not at `before`. A shim exits on its own after its last
/// delete, and a killed process is gone once reaped: processes get 5 s to go.
pub(crate) fn left_since(before: &Census) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = census();
    while after.processes.iter().any(|p| !before.processes.contains(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = census();
    }
    let mut leaks = Vec::new();
    compare(before, &after, &mut leaks);
    leaks
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The names in `dir` (none when it is missing).
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Receives the pty master a `create --console-socket` sends.
fn receive_console(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let (conn, _) = listener.accept().map_err(|e| format!("console socket: {e}"))?;
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| format!("console socket: {e}"))?;
    let fd = msg
        .cmsgs()
        .map_err(|e| format!("console socket: {e}"))?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(f) => f.first().copied(),
            _ => None,
        })
        .ok_or("no pty master on the console socket")?;
    // SAFETY: the descriptor was just received and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One CLI lifecycle: create (with a terminal through `console` if given), start, exec, kill,
/// wait until stopped, delete.
fn cli_lifecycle(strata: &Path, root: &Path, bundle: &Path, id: &str, console: Option<&Path>) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(strata)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| format!("{}: {e}", strata.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("strata {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let bundle_arg = bundle.display().to_string();
    let mut master = None;
    match console {
        Some(sock) => {
            let listener =
                std::os::unix::net::UnixListener::bind(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
            let sock_arg = sock.display().to_string();
            // The create's stdio is not the container's (it has the terminal): pipes are safe.
            run(&["create", "--bundle", &bundle_arg, "--console-socket", &sock_arg, id])?;
            master = Some(receive_console(&listener)?);
            let _ = std::fs::remove_file(sock);
        }
        None => {
            // Without a terminal the container inherits the create's stdio: no pipe may stay open.
            let status = Command::new(strata)
                .arg("--root")
                .arg(root)
                .args(["create", "--bundle", &bundle_arg, id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("strata create {id}: {status}"));
            }
        }
    }
    let result = (|| {
        run(&["start", id])?;
        let out = run(&["exec", id, "sh", "-c", "echo exec-ok"])?;
        if out.trim() != "exec-ok" {
            return Err(format!("exec in {id} printed {out:?}"));
        }
        run(&["kill", id, "KILL"])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run(&["state", id])?.contains("\"stopped\"") {
            if Instant::now() > deadline {
                return Err(format!("{id} did not stop within 10 s of SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        run(&["delete", id]).map(drop)
    })();
    if result.is_err() {
        let _ = run(&["delete", "--force", id]);
    }
    drop(master);
    result
}

/// Kills task `id` and deletes it and its container (waiting at most 10 s for the exit).
fn remove_task(ctd: &Containerd, id: &str) {
    let _ = ctd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctd.ctr(&["task", "delete", id]).is_ok_and(|o| !o.status.success()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ctd.ctr(&["containers", "rm", id]);
}

/// A pod: its sandbox container runs, [`POD_CONTAINERS`] containers run to completion beside
/// it in the sandbox's shim, then the sandbox goes, and its shim with it.
fn pod_lifecycle(ctd: &Containerd, peer: &Peer, pod: &str) -> Result<(), String> {
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    ctd.run(peer, &["--detach", "--annotation", &annotation], pod, &["sleep", "100000"])?;
    let result = (|| {
        let shim = shim_pid(peer.shim, pod).ok_or_else(|| format!("{pod}: no shim for its sandbox"))?;
        for k in 0..POD_CONTAINERS {
            let id = format!("{pod}-c{k}");
            ctd.run(peer, &["--rm", "--annotation", &annotation], &id, &["/bin/true"])?;
            if shim_pid(peer.shim, &id).is_some() {
                return Err(format!("{id} got a shim of its own, not its pod's"));
            }
        }
        if shim_pid(peer.shim, pod) != Some(shim) {
            return Err(format!("{pod}: the sandbox's shim {shim} did not outlive its containers"));
        }
        Ok(shim)
    })();
    remove_task(ctd, pod);
    let shim = result?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{shim}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match std::fs::read_to_string(format!("/proc/{shim}/stat")) {
        Ok(stat) if !stat.contains(") Z") => Err(format!("{pod}: its shim {shim} outlived the pod")),
        _ => Ok(()),
    }
}

/// Runs the soak. An error is a soak that could not run (no containerd, no binary); failures
/// and leaks are in the report.
pub fn soak(opts: SoakOptions) -> Result<SoakReport, String> {
    let strata = strata_binary()?;
    let shim = shim_binary()?;
    let mut report = SoakReport::default();
    let before = census();

    // Through the CLI, in one state root.
    let work = tempfile::Builder::new().prefix("strata-soak-").tempdir().map_err(|e| e.to_string())?;
    let root = work.path().join("state");
    let plain = BusyboxBundle::new(&["sleep", "100000"])?;
    let tty = BusyboxBundle::new(&["sleep", "100000"])?;
    let config = tty.path().join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    spec["process"]["terminal"] = serde_json::Value::Bool(true);
    std::fs::write(&config, spec.to_string()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for i in 0..opts.cli {
        let id = format!("soak-cli-{i}");
        let result = if i % 2 == 0 {
            cli_lifecycle(&strata, &root, plain.path(), &id, None)
        } else {
            cli_lifecycle(&strata, &root, tty.path(), &id, Some(&work.path().join("console.sock")))
        };
        match result {
            Ok(()) => report.cli += 1,
            Err(e) => report.failures.push(e),
        }
    }
    report.cli_time = t.elapsed();
    for e in entries(&root) {
        report.leaks.push(format!("CLI state {}", root.join(e).display()));
    }

    // Through containerd with strata's shim.
    let shim_dir = shim.parent().ok_or_else(|| format!("{} has no directory", shim.display()))?;
    let ctd = Containerd::start(Some(shim_dir))?;
    ctd.import_busybox()?;
    let strata_peer: Peer = peers().into_iter().find(|p| p.name == "strata").ok_or("no strata peer")?;
    let ctd_fds_before = fd_count(ctd.pid());
    let t = Instant::now();
    let load = run_load(&ctd, &strata_peer, opts.containerd, opts.clients, "soak-ctd");
    report.containerd = load.latencies.len();
    report.failures.extend(load.failures);
    // One long-lived container, exec'd into over and over.
    ctd.run(&strata_peer, &["--detach"], "soak-resident", &["sleep", "100000"])?;
    let pid = shim_pid(strata_peer.shim, "soak-resident").ok_or("no shim for soak-resident")? as u32;
    let warm = (opts.execs / 10).max(1);
    for i in 0..opts.execs {
        if i == warm {
            report.shim_rss_kib.0 = rss_kib(pid);
            report.shim_fds.0 = fd_count(pid);
        }
        let exec_id = format!("e{i}");
        let out = ctd.ctr(&["task", "exec", "--exec-id", &exec_id, "soak-resident", "/bin/true"])?;
        if out.status.success() {
            report.execs += 1;
        } else {
            report.failures.push(format!("exec {exec_id}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    report.shim_rss_kib.1 = rss_kib(pid);
    report.shim_fds.1 = fd_count(pid);
    remove_task(&ctd, "soak-resident");
    for p in 0..opts.pods {
        match pod_lifecycle(&ctd, &strata_peer, &format!("soak-pod-{p}")) {
            Ok(()) => {
                report.pods += 1;
                report.pod_containers += POD_CONTAINERS;
            }
            Err(e) => report.failures.push(e),
        }
    }
    report.containerd_time = t.elapsed();
    // containerd's descriptors settle once its clients are gone.
    std::thread::sleep(Duration::from_millis(500));
    let ctd_fds_after = fd_count(ctd.pid());
    if ctd_fds_after > ctd_fds_before {
        report.leaks.push(format!("containerd holds {} descriptors more", ctd_fds_after - ctd_fds_before));
    }
    for c in ctd.lines(&["containers", "ls", "-q"]) {
        report.leaks.push(format!("containerd container {c}"));
    }
    for s in ctd.lines(&["snapshots", "ls"]).iter().filter(|l| l.contains("Active")) {
        report.leaks.push(format!("active snapshot {s}"));
    }
    for e in entries(&engine::shimv2::service::state_root(NAMESPACE)) {
        report.leaks.push(format!("shim state {e}"));
    }
    if report.shim_rss_kib.1 > report.shim_rss_kib.0 + 256 {
        report.leaks.push(format!(
            "the shim's resident set grew from {} KiB to {} KiB over {} execs",
            report.shim_rss_kib.0, report.shim_rss_kib.1, opts.execs
        ));
    }
    if report.shim_fds.1 > report.shim_fds.0 {
        report.leaks.push(format!("the shim's descriptors grew from {} to {}", report.shim_fds.0, report.shim_fds.1));
    }
    drop(ctd);
    report.leaks.extend(left_since(&before));
    Ok(report)
}

impl SoakReport {
    /// The report's lines, as the binary and the test print them.
    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "soak: {} CLI lifecycles (create, start, exec, kill, delete; half with a terminal) in {:.1} s",
                self.cli,
                self.cli_time.as_secs_f64()
            ),
            format!(
                "soak: {} containerd lifecycles (ctr run --rm, strata's shim) and {} execs into one container in {:.1} s",
                self.containerd,
                self.execs,
                self.containerd_time.as_secs_f64()
            ),
            format!(
                "soak: {} pods through containerd (a sandbox and {POD_CONTAINERS} containers each, one shim per pod)",
                self.pods
            ),
            format!(
                "soak: that shim's resident set {} KiB -> {} KiB, descriptors {} -> {}",
                self.shim_rss_kib.0, self.shim_rss_kib.1, self.shim_fds.0, self.shim_fds.1
            ),
            format!("soak: {} failed, {} left behind", self.failures.len(), self.leaks.len()),
        ]
        .into_iter()
        .chain(self.failures.iter().take(10).map(|f| format!("soak: failed: {f}")))
        .chain(self.leaks.iter().take(20).map(|l| format!("soak: left behind: {l}")))
        .collect()
    }
}
