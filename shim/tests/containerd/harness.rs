//! A private containerd for one test: its own root, state, socket and config (CRI disabled),
//! with the strata shim first on its PATH; and a guard that leaves nothing behind — tasks,
//! containers, shims, containers' processes, cgroups, mounts and directories — even when the
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The image every scenario runs: busybox-static in one layer.
pub const IMAGE: &str = "docker.io/library/strata-busybox:test";

/// The runtime under test.
pub const RUNTIME: &str = "io.containerd.strata.v1";

/// The shim under test: `$STRATA_SHIM_BIN` (e.g. the static musl release build the README
/// installs), else the one cargo built for this package.
pub fn shim_bin() -> PathBuf {
    std::env::var_os("STRATA_SHIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-strata-v1")))
}

/// The containerd binary: `$STRATA_CONTAINERD` (a cached 1.7 or 2.1), else the one on PATH.
pub fn containerd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_CONTAINERD") {
        return PathBuf::from(p);
    }
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("containerd"))
        .chain([PathBuf::from("/usr/bin/containerd"), PathBuf::from("/usr/sbin/containerd")])
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "containerd is not installed: `apt-get install containerd` (Debian bookworm's 1.6.20; bash .ci/run does)"
        )
    })
}

/// `ctr` next to containerd.
fn ctr_bin() -> PathBuf {
    let beside = containerd_bin().with_file_name("ctr");
    if beside.exists() { beside } else { PathBuf::from("ctr") }
}

/// The image archive, built once per test binary by `make-image.sh`.
pub fn image_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("strata-busybox-image.tar");
        let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd/make-image.sh");
        let st = Command::new("sh").arg(script).arg(&tmp).arg(IMAGE).status().expect("running make-image.sh");
        assert!(st.success(), "make-image.sh failed");
        std::fs::rename(&tmp, &out).expect("renaming the image archive");
        out
    })
}

/// Everything `r` yields until end of file or an error (a pty master ends with EIO).
fn read_all(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// strata's snapshotter daemon, which `strata snapshotter` runs from beside `strata` (`cargo
/// build -p strata-snapshotter`; `cargo test --workspace` builds it).
fn check_snapshotter_built() {
    let bin = Path::new(env!("CARGO_BIN_EXE_strata")).with_file_name("strata-snapshotter");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p strata-snapshotter`", bin.display());
}

/// Whether the containerd under test takes proxy diff plugins (1.7 and later).
fn proxy_differs() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        let out = Command::new(containerd_bin()).arg("--version").output().expect("containerd --version");
        // "containerd github.com/containerd/containerd 1.6.20~ds1 …" (2.x: "…/containerd/v2 2.1.9…")
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let version = text.split_whitespace().nth(2).unwrap_or_default().to_string();
        let mut v = version.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (v.next(), v.next());
        assert!(major.is_some() && minor.is_some(), "no version in `containerd --version`: {text}");
        (major, minor) >= (Some(1), Some(7))
    })
}

/// Which differ unpacks layers into strata's snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Differ {
    /// strata's (`strata-diff`, served by the snapshotter).
    Strata,
    /// containerd's own (`walking`).
    Containerd,
}

/// A running private containerd; dropping it cleans everything up.
pub struct Containerd {
    dir: tempfile::TempDir,
    namespace: String,
    daemon: Option<Child>,
    /// strata's snapshotter, when containerd has it as the `strata` proxy plugin.
    snapshotter: Option<Child>,
    /// Extra environment of the daemon (and so of the shims it starts).
    env: Vec<(String, String)>,
    /// Which differ unpacks into strata's snapshotter, when it runs.
    differ: Option<Differ>,
}

impl Containerd {
    /// Starts containerd and imports the test image.
    pub fn start() -> Containerd {
        Containerd::start_inner(None)
    }

    /// Starts strata's snapshotter (its store in this test's directory) and containerd with it as
    /// the `strata` proxy snapshot plugin and its differ as the `strata-diff` proxy diff plugin,
    /// first in the diff service's order and paired with the snapshotter for the transfer
    /// service, as the README configures them; imports the test image into it.
    /// containerd 1.6 has no proxy diff plugins: there, containerd's own differ unpacks (see
    /// [`Containerd::strata_differ`]).
    pub fn start_with_snapshotter() -> Containerd {
        if proxy_differs() {
            Containerd::start_inner(Some(Differ::Strata))
        } else {
            eprintln!("containerd before 1.7 has no proxy diff plugins: its own differ unpacks");
            Containerd::start_inner(Some(Differ::Containerd))
        }
    }

    /// Whether strata's differ unpacks the layers into strata's snapshotter.
    pub fn strata_differ(&self) -> bool {
        self.differ == Some(Differ::Strata)
    }

    /// [`Containerd::start_with_snapshotter`] without strata's differ: containerd's own unpacks
    /// the layers into strata's snapshots.
    pub fn start_with_snapshotter_and_containerd_s_differ() -> Containerd {
        Containerd::start_inner(Some(Differ::Containerd))
    }

    fn start_inner(snapshotter: Option<Differ>) -> Containerd {
        assert!(nix::unistd::geteuid().is_root(), "these tests run containerd and containers: run them as root");
        static N: AtomicU32 = AtomicU32::new(0);
        // Socket paths must stay under 108 bytes: a short directory in /tmp.
        let dir = tempfile::Builder::new().prefix("ctd").tempdir_in("/tmp").expect("temporary directory");
        let namespace = format!("strata-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let p = dir.path();
        let sock = p.join("s.sock").display().to_string();
        // containerd 2's transfer service (`ctr images import/pull`) unpacks only into the
        // snapshotters its unpack_config lists, with the differ named there.
        let proxy = match snapshotter {
            None => String::new(),
            Some(differ) => {
                // (with two differs for the platform, an entry that names none gets either)
                let (diff_plugin, diff_service, paired, walking) = match differ {
                    Differ::Containerd => (String::new(), String::new(), "", ""),
                    Differ::Strata => (
                        format!("  [proxy_plugins.strata-diff]\n    type = \"diff\"\n    address = \"{sock}\"\n"),
                        "[plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [\"strata-diff\", \"walking\"]\n"
                            .to_string(),
                        "  differ = \"strata-diff\"\n",
                        "  differ = \"walking\"\n",
                    ),
                };
                format!(
                    "[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{sock}\"\n\
                     {diff_plugin}{diff_service}\
                     [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  \
                     platform = \"linux/amd64\"\n  snapshotter = \"strata\"\n{paired}\
                     [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  \
                     platform = \"linux/amd64\"\n  snapshotter = \"overlayfs\"\n{walking}"
                )
            }
        };
        std::fs::write(
            p.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[debug]\n  level = \"debug\"\n{proxy}",
                root = p.join("root").display(),
                state = p.join("state").display(),
                sock = p.join("c.sock").display(),
            ),
        )
        .expect("writing config.toml");
        let mut c =
            Containerd { dir, namespace, daemon: None, snapshotter: None, env: Vec::new(), differ: snapshotter };
        if snapshotter.is_some() {
            c.spawn_snapshotter();
        }
        c.spawn_daemon();
        eprintln!("{}", c.ok(&["version"]).lines().filter(|l| l.contains("Version")).collect::<Vec<_>>().join(" / "));
        let archive = image_archive().display().to_string();
        let import = if snapshotter.is_some() {
            c.ctr(&["images", "import", "--snapshotter", "strata", &archive])
        } else {
            c.ctr(&["images", "import", &archive])
        };
        assert!(import.status.success(), "ctr images import: {}", String::from_utf8_lossy(&import.stderr));
        c
    }

    fn spawn_daemon(&mut self) {
        let p = self.dir.path();
        let shim_dir = shim_bin().parent().expect("shim directory").to_path_buf();
        // The shim runs its helper from the `strata` binary: next to it, else on the PATH.
        let strata_dir = Path::new(env!("CARGO_BIN_EXE_strata")).parent().expect("strata directory").to_path_buf();
        let path =
            format!("{}:{}:{}", shim_dir.display(), strata_dir.display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("containerd.log"))
            .expect("containerd.log");
        let daemon = Command::new(containerd_bin())
            .arg("--config")
            .arg(p.join("config.toml"))
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr_bounded(&["version"]).is_some_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "containerd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_daemon(&mut self) {
        self.stop_daemon_with(nix::sys::signal::Signal::SIGTERM);
    }

    /// The layer store the snapshotter serves.
    pub fn snapshotter_store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The snapshotter's log, for failure messages.
    pub fn snapshotter_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("snapshotter.log")).unwrap_or_default()
    }

    fn spawn_snapshotter(&mut self) {
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("snapshotter.log"))
            .expect("snapshotter.log");
        check_snapshotter_built();
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("snapshotter")
            .arg("--address")
            .arg(p.join("s.sock"))
            .arg("--store")
            .arg(self.snapshotter_store())
            .arg("--containerd-root")
            .arg(p.join("root"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting strata-snapshotter");
        self.snapshotter = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(p.join("s.sock")).is_err() {
            assert!(Instant::now() < deadline, "strata-snapshotter did not come up:\n{}", self.snapshotter_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_snapshotter(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut d) = self.snapshotter.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.id() as i32), signal);
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Kills the snapshotter with SIGKILL and starts it again on the same store and socket.
    pub fn kill_9_snapshotter_and_restart(&mut self) {
        self.stop_snapshotter(nix::sys::signal::Signal::SIGKILL);
        self.spawn_snapshotter();
    }

    fn stop_daemon_with(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.id() as i32), signal);
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Stops containerd and starts it again on the same root, state and socket.
    pub fn restart(&mut self) {
        self.stop_daemon();
        self.spawn_daemon();
    }

    /// Kills containerd with SIGKILL and starts it again on the same root, state and socket.
    pub fn kill_9_and_restart(&mut self) {
        self.stop_daemon_with(nix::sys::signal::Signal::SIGKILL);
        self.spawn_daemon();
    }

    /// Restarts containerd with `env` added to its environment (and so to the shims' it starts).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop_daemon();
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.spawn_daemon();
    }

    /// The daemon's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The containerd namespace of this test.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `ctr` against this containerd, in this test's namespace, killed after 60 s.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg("60").arg(ctr_bin());
        self.ctr_args(&mut cmd, args);
        cmd
    }

    /// `ctr` without a time limit, for commands the test stops itself (`ctr events`).
    pub fn ctr_cmd_untimed(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ctr_bin());
        self.ctr_args(&mut cmd, args);
        cmd
    }

    fn ctr_args(&self, cmd: &mut Command, args: &[&str]) {
        cmd.arg("--address").arg(self.dir.path().join("c.sock")).arg("--namespace").arg(&self.namespace);
        // ctr keeps the FIFOs of `run` and `task exec` in /run/containerd/fifo unless told
        // otherwise; a test's go in its own directory, which the guard removes.
        let sub = match args {
            ["run", ..] => 1,
            ["task", "exec", ..] => 2,
            _ => 0,
        };
        cmd.args(&args[..sub]);
        if sub > 0 {
            cmd.arg("--fifo-dir").arg(self.dir.path().join("fifo"));
        }
        cmd.args(&args[sub..]).stdin(Stdio::null());
    }

    /// Runs `ctr` and collects its output. A `ctr` still running after 60 s fails the test
    /// with what every process of this test was waiting on.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut cmd = self.ctr_cmd_untimed(args);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("running ctr");
        let out = std::thread::spawn({
            let mut o = child.stdout.take().expect("stdout");
            move || read_all(&mut o)
        });
        let err = std::thread::spawn({
            let mut e = child.stderr.take().expect("stderr");
            move || read_all(&mut e)
        });
        let status = match self.wait_until(&mut child, Duration::from_secs(60)) {
            Some(st) => st,
            None => self.diagnose_and_fail(&mut child, &format!("ctr {args:?}")),
        };
        Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
    }

    /// `ctr` for the guard and for polling: never panics (the guard may run while a test is
    /// already failing); a `ctr` still running after 10 s is killed and counts as failed.
    fn ctr_bounded(&self, args: &[&str]) -> Option<Output> {
        let mut cmd = self.ctr_cmd_untimed(args);
        let file = tempfile::tempfile().ok()?;
        let mut child = cmd.stdout(file.try_clone().ok()?).stderr(Stdio::null()).spawn().ok()?;
        let status = match self.wait_until(&mut child, Duration::from_secs(10)) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        };
        use std::io::{Read, Seek};
        let mut stdout = Vec::new();
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(0)).ok()?;
        file.read_to_end(&mut stdout).ok()?;
        Some(Output { status, stdout, stderr: Vec::new() })
    }

    /// `ctr` on a terminal of its own: a new session whose controlling terminal is a fresh pty.
    /// Returns the exit status and everything written to the terminal.
    pub fn ctr_with_terminal(&self, args: &[&str]) -> (std::process::ExitStatus, String) {
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut cmd = self.ctr_cmd_untimed(args);
        cmd.stdin(pty.slave.try_clone().expect("pty"))
            .stdout(pty.slave.try_clone().expect("pty"))
            .stderr(pty.slave.try_clone().expect("pty"));
        // SAFETY: only async-signal-safe calls between fork and exec: setsid, then the
        // terminal on stdin becomes the new session's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("running ctr on a pty");
        drop(cmd);
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        // The terminal reads until every slave is closed (EIO), i.e. until ctr is gone.
        let reader = std::thread::spawn(move || {
            let mut m = master;
            read_all(&mut m)
        });
        let status = match self.wait_until(&mut child, Duration::from_secs(60)) {
            Some(st) => st,
            None => self.diagnose_and_fail(&mut child, &format!("ctr {args:?} on a terminal")),
        };
        let text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        (status, text)
    }

    /// Waits for `child` at most `limit`; `None` if it still runs.
    fn wait_until(&self, child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {}
                _ => return None,
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Fails the test with the state of every process of this test (ctr, shims, containers):
    /// what each waits on in the kernel; then kills `child`.
    fn diagnose_and_fail(&self, child: &mut Child, what: &str) -> ! {
        let report = self.processes_report();
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish in 60 s; processes of this test:\n{report}");
    }

    /// Every process whose command line names this test's directory or namespace, and their
    /// descendants: pid, parent, state, kernel wait channel and stack, command line.
    pub fn processes_report(&self) -> String {
        let marks = [self.dir.path().display().to_string(), self.namespace.clone()];
        let mut procs = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            let mut f = after.split(' ');
            let state = f.next().unwrap_or("?").to_string();
            let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            procs.push((pid, ppid, state, cmd));
        }
        let mut keep: Vec<i32> =
            procs.iter().filter(|p| marks.iter().any(|m| p.3.contains(m.as_str()))).map(|p| p.0).collect();
        loop {
            let more: Vec<i32> =
                procs.iter().filter(|p| keep.contains(&p.1) && !keep.contains(&p.0)).map(|p| p.0).collect();
            if more.is_empty() {
                break;
            }
            keep.extend(more);
        }
        let mut report = String::new();
        for (pid, ppid, state, cmd) in procs.iter().filter(|p| keep.contains(&p.0)) {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            report.push_str(&format!("{pid} (parent {ppid}) {state} wchan={wchan} {cmd}\n"));
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
                let tw = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
                report.push_str(&format!("    thread {} wchan={tw}\n", task.file_name().to_string_lossy()));
            }
            for l in stack.lines() {
                report.push_str(&format!("    {l}\n"));
            }
        }
        report
    }

    /// Runs `ctr` and asserts it succeeded; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run` arguments for the strata runtime. `--cpu-shares 0` drops ctr's default
    /// cpu.shares, which strata refuses on hosts whose cgroup2 lacks the cpu controller.
    pub fn run_args<'a>(&self, flags: &[&'a str], id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--runtime", RUNTIME, "--cpu-shares", "0"];
        v.extend_from_slice(flags);
        v.push(IMAGE);
        v.push(id);
        v.extend_from_slice(cmd);
        v
    }

    /// The task's (pid, status) as `ctr task ls` shows it, if listed.
    pub fn task(&self, id: &str) -> Option<(i32, String)> {
        let out = self.ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id))
                .then(|| (f.get(1).and_then(|p| p.parse().ok()).unwrap_or(0), f.get(2).unwrap_or(&"").to_string()))
        })
    }

    /// Waits until `id`'s status is `want`.
    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.task(id).map(|t| t.1);
            if now.as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "task {id} is {now:?}, not {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pids of this test's shim daemons (their command line names our socket).
    pub fn shim_pids(&self) -> Vec<i32> {
        let sock = self.dir.path().join("c.sock").display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_shim = args.first().is_some_and(|a| a.ends_with("containerd-shim-strata-v1"));
            if is_shim && args.contains(&sock) && args.contains(&self.namespace) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits (at most 10 s) until no shim of this test runs any more; `why` is the failure.
    pub fn wait_shims_gone(&self, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shim_pids().is_empty() {
            assert!(Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bundle containerd made for task `id` (where the shim's `address` file is).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join("state/io.containerd.runtime.v2.task").join(&self.namespace).join(id)
    }

    /// The engine's state directory for this test's namespace.
    pub fn state_root(&self) -> PathBuf {
        engine::shimv2::service::state_root(&self.namespace)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Through containerd first, while it runs: kill and delete every task and container.
        let ids = |out: Option<Output>| -> Vec<String> {
            out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default()
        };
        let tasks = ids(self.ctr_bounded(&["task", "ls", "-q"]));
        for id in &tasks {
            let _ = self.ctr_bounded(&["task", "kill", "-a", "-s", "SIGKILL", id]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for id in &tasks {
            let _ = self.ctr_bounded(&["task", "delete", "-f", id]);
        }
        for id in ids(self.ctr_bounded(&["containers", "ls", "-q"])) {
            let _ = self.ctr_bounded(&["containers", "rm", &id]);
        }
        // Then by force: shims, containerd, containers the engine still knows, mounts, files.
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        self.stop_daemon();
        self.stop_snapshotter(nix::sys::signal::Signal::SIGTERM);
        let root = self.state_root();
        if let Ok(sr) = engine::state::StateRoot::new(&root) {
            for id in sr.list().unwrap_or_default() {
                let _ = engine::container::delete(&sr, &id, true);
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        // containerd's default cgroupsPath is /<namespace>/<id>: the namespace's parent goes too,
        // in every mounted hierarchy (rmdir leaves a cgroup that is still in use alone).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            if matches!(right.split(' ').next(), Some("cgroup" | "cgroup2"))
                && let Some(mount) = left.split(' ').nth(4)
            {
                let _ = std::fs::remove_dir(Path::new(mount).join(&self.namespace));
            }
        }
        let prefix = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
        targets.reverse();
        for t in targets {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- containerd log (end) ---\n{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            let snap = self.snapshotter_log();
            if !snap.is_empty() {
                eprintln!("--- snapshotter log ---\n{snap}");
            }
        }
    }
}
