//! A private containerd with the CRI plugin: its config (version 2 for containerd 1.7, version 3
//! for 2.x), root, state, socket, CNI network and log all under one directory, both runtime
//! handlers (`runc`: `io.containerd.runc.v2`; `strata`: `io.containerd.strata.v1`) configured.
//! The pods' snapshotter is containerd's overlayfs or strata's (`strata snapshotter`, a proxy
//! snapshot plugin serving a layer store under the same directory, started before containerd and
//! stopped after it). It runs until [`Containerd::stop`] (or drop); [`Containerd::restart`]
//! keeps its root and state, and the snapshotter, as a node's containerd restarting does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Cri, Error, Result};

/// The pods' sandbox image, built from `strata-pause` (`vmtest/cri/make-image.sh`).
pub const PAUSE_IMAGE: &str = "docker.io/library/strata-pause:cri";
/// The containers' image: busybox-static with every applet.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/strata-busybox:cri";
/// The containerd namespace of CRI.
pub const NAMESPACE: &str = "k8s.io";
/// The snapshotters the suite can give CRI: containerd's own, and strata's (proxy plugin name).
pub const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "strata"];
/// The handler (containerd 2.x only) whose pods are made through containerd's sandbox API by
/// strata's shim itself (`sandboxer = 'shim'`), without a pause container.
pub const SANDBOX_HANDLER: &str = "strata-sandbox";
/// The CNI network: a bridge with host-local addresses on a private /24.
pub const NETWORK: &str = "strata-cri";
/// The bridge the CNI network makes.
pub const BRIDGE: &str = "strata-cri0";
/// The pods' addresses.
pub const SUBNET_PREFIX: &str = "10.88.0.";

/// What the suite runs against, from the environment (`Settings::from_env`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `STRATA_CRI_CONTAINERD`: the containerd binary (`ctr` is beside it).
    pub containerd: PathBuf,
    /// `STRATA_CRI_HANDLER`: the runtime handler pods run with, `strata` (default) or `runc`.
    pub handler: String,
    /// `STRATA_CRI_DIR`: containerd's root, state, socket and config (default `/run/strata-cri`;
    /// short, for socket paths, and on a file system overlayfs can use as upper layer).
    pub dir: PathBuf,
    /// `STRATA_CRI_PATH`: containerd's PATH, where it finds the shims (and they `strata`,
    /// `runc`); default: containerd's directory, then this process's PATH.
    pub path: String,
    /// `STRATA_CRI_CNI_BIN`: the CNI plugins (default `/opt/cni/bin`).
    pub cni_bin: PathBuf,
    /// `STRATA_CRI_IMAGES`: the directory holding `pause.tar` and `busybox.tar`.
    pub images: PathBuf,
    /// `STRATA_CRI_LOG`: containerd's log file (default `<dir>/containerd.log`).
    pub log: PathBuf,
    /// `STRATA_CRI_LOG_LEVEL`: containerd's log level (default `info`).
    pub log_level: String,
    /// `STRATA_CRI_RPC_TIMEOUT`: seconds a CRI call may take (default 120, kubelet's default runtime-request-timeout).
    pub rpc_timeout: Duration,
    /// `STRATA_CRI_SNAPSHOTTER`: CRI's snapshotter for every pod, `overlayfs` (default) or
    /// `strata` (`strata snapshotter`, run from the `strata` on `path`, its store `<dir>/store`).
    pub snapshotter: String,
}

fn env_or(name: &str, default: impl Into<String>) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
}

impl Settings {
    /// The settings the `STRATA_CRI_*` variables give.
    pub fn from_env() -> Result<Settings> {
        let containerd = PathBuf::from(std::env::var("STRATA_CRI_CONTAINERD").map_err(|_| Error::Setting {
            name: "STRATA_CRI_CONTAINERD",
            problem: "not set: the path of the containerd binary to test".into(),
        })?);
        if !containerd.is_file() {
            return Err(Error::Setting {
                name: "STRATA_CRI_CONTAINERD",
                problem: format!("{} is not a file", containerd.display()),
            });
        }
        let handler = env_or("STRATA_CRI_HANDLER", "strata");
        if !["strata", "runc", SANDBOX_HANDLER].contains(&handler.as_str()) {
            return Err(Error::Setting {
                name: "STRATA_CRI_HANDLER",
                problem: format!("{handler:?}: strata, runc or {SANDBOX_HANDLER}"),
            });
        }
        let snapshotter = env_or("STRATA_CRI_SNAPSHOTTER", SNAPSHOTTERS[0]);
        if !SNAPSHOTTERS.contains(&snapshotter.as_str()) {
            return Err(Error::Setting {
                name: "STRATA_CRI_SNAPSHOTTER",
                problem: format!("{snapshotter:?}: {}", SNAPSHOTTERS.join(" or ")),
            });
        }
        let dir = PathBuf::from(env_or("STRATA_CRI_DIR", "/run/strata-cri"));
        let beside = containerd.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let path = env_or("STRATA_CRI_PATH", format!("{beside}:{}", std::env::var("PATH").unwrap_or_default()));
        let log = PathBuf::from(env_or("STRATA_CRI_LOG", dir.join("containerd.log").display().to_string()));
        // kubelet's default --runtime-request-timeout: 2 minutes.
        let rpc_timeout = env_or("STRATA_CRI_RPC_TIMEOUT", "120")
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| Error::Setting { name: "STRATA_CRI_RPC_TIMEOUT", problem: e.to_string() })?;
        Ok(Settings {
            containerd,
            handler,
            dir,
            path,
            cni_bin: PathBuf::from(env_or("STRATA_CRI_CNI_BIN", "/opt/cni/bin")),
            images: PathBuf::from(env_or("STRATA_CRI_IMAGES", "/mnt/host/images")),
            log,
            log_level: env_or("STRATA_CRI_LOG_LEVEL", "info"),
            rpc_timeout,
            snapshotter,
        })
    }
}

/// Runs `cmd`, killing it after `limit`; its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    // Readers on threads of their own, so a chatty command cannot fill a pipe and stall.
    let mut out = child.stdout.take().map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    });
    let mut err = child.stderr.take().map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().map_err(|e| Error::io(format!("waiting for {what}"), e))? {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Containerd(format!("{what} ran past {limit:?}: killed")));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let join =
        |h: &mut Option<std::thread::JoinHandle<Vec<u8>>>| h.take().and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output { status, stdout: join(&mut out), stderr: join(&mut err) })
}

/// containerd's major version, from `containerd --version` (`containerd <module> 1.7.24 ...`).
pub fn major_version(containerd: &Path) -> Result<u32> {
    let out = run_bounded(Command::new(containerd).arg("--version"), Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::Containerd(format!("no version in {:?}", text.trim())))
}

/// A running private containerd; stopped on drop.
pub struct Containerd {
    settings: Settings,
    major: u32,
    daemon: Option<Child>,
    /// `strata snapshotter`, with `STRATA_CRI_SNAPSHOTTER=strata`.
    snapshotter: Option<Child>,
}

impl Containerd {
    /// Writes the config and the CNI network, starts containerd, waits until its CRI says the
    /// runtime and the network are ready, and imports the images.
    pub fn start(settings: &Settings) -> Result<Containerd> {
        let major = major_version(&settings.containerd)?;
        let d = &settings.dir;
        for sub in ["root", "state", "cni", "logs"] {
            std::fs::create_dir_all(d.join(sub))
                .map_err(|e| Error::io(format!("creating {}", d.join(sub).display()), e))?;
        }
        if let Some(parent) = settings.log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let config = if major >= 2 { config_v3(settings) } else { config_v2(settings) };
        write(&d.join("config.toml"), &config)?;
        write(&d.join("cni/10-strata-cri.conflist"), &cni_conflist(settings))?;
        let mut c = Containerd { settings: settings.clone(), major, daemon: None, snapshotter: None };
        if settings.snapshotter == "strata" {
            c.spawn_snapshotter()?;
        }
        c.spawn()?;
        for archive in ["pause.tar", "busybox.tar"] {
            c.import(&settings.images.join(archive))?;
        }
        let cri = c.client()?;
        for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
            // CRI learns of imported images from containerd's events: wait until it has.
            if !wait_for(Duration::from_secs(30), || cri.image_present(image).unwrap_or(false)) {
                return Err(Error::Containerd(format!("CRI does not list the imported image {image}")));
            }
        }
        Ok(c)
    }

    /// containerd's major version (1 or 2).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.settings.dir.join("c.sock")
    }

    /// The snapshotter CRI gives pods (`ctr snapshots --snapshotter` takes it).
    pub fn snapshotter(&self) -> &str {
        &self.settings.snapshotter
    }

    /// strata's snapshotter's socket.
    pub fn snapshotter_socket(&self) -> PathBuf {
        self.settings.dir.join("s.sock")
    }

    /// The layer store strata's snapshotter serves.
    pub fn snapshotter_store(&self) -> PathBuf {
        self.settings.dir.join("store")
    }

    /// What strata's snapshotter has logged so far (empty if it never ran).
    pub fn snapshotter_log(&self) -> String {
        std::fs::read_to_string(self.settings.log.with_file_name("snapshotter.log")).unwrap_or_default()
    }

    /// containerd's root directory (persistent data: content, snapshots, CRI's containers).
    pub fn root(&self) -> PathBuf {
        self.settings.dir.join("root")
    }

    /// containerd's state directory (runtime data: bundles, FIFOs, sandbox files).
    pub fn state(&self) -> PathBuf {
        self.settings.dir.join("state")
    }

    /// Where pods' logs go (their `log_directory`s).
    pub fn log_root(&self) -> PathBuf {
        self.settings.dir.join("logs")
    }

    /// The host-local IPAM's data (allocated addresses).
    pub fn ipam_dir(&self) -> PathBuf {
        self.settings.dir.join("ipam")
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// A new CRI client on this containerd.
    pub fn client(&self) -> Result<Cri> {
        Cri::connect(&self.socket(), self.settings.rpc_timeout)
    }

    /// The last `lines` lines of containerd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let all = std::fs::read_to_string(&self.settings.log).unwrap_or_default();
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `strata snapshotter` (the `strata` first on the suite's PATH) on its socket and
    /// store, logging beside containerd's log, and waits until it accepts connections.
    fn spawn_snapshotter(&mut self) -> Result<()> {
        let strata = std::env::split_paths(&self.settings.path)
            .map(|d| d.join("strata"))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Containerd(format!("no `strata` on STRATA_CRI_PATH {}", self.settings.path)))?;
        let log_path = self.settings.log.with_file_name("snapshotter.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| Error::io("duplicating the log descriptor", e))?;
        let child = Command::new(&strata)
            .arg("snapshotter")
            .arg("--address")
            .arg(self.snapshotter_socket())
            .arg("--store")
            .arg(self.snapshotter_store())
            .arg("--containerd-root")
            .arg(self.root())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(format!("starting {} snapshotter", strata.display()), e))?;
        self.snapshotter = Some(child);
        let up = wait_for(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(self.snapshotter_socket()).is_ok()
        });
        if !up {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::Containerd(format!("strata snapshotter did not listen within 30 s: {}", text.trim())));
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.log)
            .map_err(|e| Error::io(format!("opening {}", self.settings.log.display()), e))?;
        let log2 = log.try_clone().map_err(|e| Error::io("duplicating the log descriptor", e))?;
        let child = Command::new(&self.settings.containerd)
            .arg("--config")
            .arg(self.settings.dir.join("config.toml"))
            .env("PATH", &self.settings.path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.settings.containerd.display()), e))?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(d) = self.daemon.as_mut()
                && let Ok(Some(st)) = d.try_wait()
            {
                self.daemon = None;
                return Err(Error::Containerd(format!("exited at start ({st}):\n{}", self.log_tail(30))));
            }
            let last = match self.client().and_then(|c| c.ready()) {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Containerd(format!(
                    "CRI not ready within 90 s (last: {last}):\n{}",
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 20 s). Shims and containers stay, as they
    /// do when a node's containerd stops.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            terminate(d, Duration::from_secs(20));
        }
    }

    /// Stops containerd, leaves it down for `down_for`, and starts it again on the same root,
    /// state and socket, then waits for its CRI.
    pub fn restart(&mut self, down_for: Duration) -> Result<()> {
        self.stop();
        std::thread::sleep(down_for);
        self.spawn()
    }

    /// `ctr images import` into CRI's namespace.
    pub fn import(&self, archive: &Path) -> Result<()> {
        let out = run_bounded(
            self.ctr().args(["images", "import", "--snapshotter", &self.settings.snapshotter]).arg(archive),
            Duration::from_secs(180),
        )?;
        if !out.status.success() {
            return Err(Error::Containerd(format!(
                "ctr images import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// `ctr` on this containerd in CRI's namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new(self.settings.containerd.with_file_name("ctr"));
        cmd.arg("--address").arg(self.socket()).arg("--namespace").arg(NAMESPACE);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // The snapshotter outlives containerd (containerd may call it while it stops).
        if let Some(s) = self.snapshotter.take() {
            terminate(s, Duration::from_secs(10));
        }
    }
}

/// Stops a daemon we started: SIGTERM, then SIGKILL once `grace` has passed; reaps it.
fn terminate(mut child: Child, grace: Duration) {
    // SAFETY: kill(2) with the pid of our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Calls `ok` until it says yes (true) or `limit` passes (false).
pub fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The parts of the config both versions share.
fn common_head(s: &Settings, version: u32) -> String {
    let d = &s.dir;
    format!(
        "version = {version}\nroot = \"{root}\"\nstate = \"{state}\"\n\n\
         [grpc]\n  address = \"{sock}\"\n\n[debug]\n  level = \"{level}\"\n\n{proxy}",
        root = d.join("root").display(),
        state = d.join("state").display(),
        sock = d.join("c.sock").display(),
        level = s.log_level,
        proxy = proxy_snapshotter(s),
    )
}

/// strata's snapshotter as a proxy plugin and its differ as another, first in the diff service's
/// order (containerd 1.7 asks its differs in turn), and the platform the transfer service unpacks
/// for it with that differ (containerd 2's `ctr images import` unpacks only into the
/// snapshotters listed there); nothing for overlayfs.
fn proxy_snapshotter(s: &Settings) -> String {
    if s.snapshotter != "strata" {
        return String::new();
    }
    let sock = s.dir.join("s.sock").display().to_string();
    format!(
        "[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{sock}\"\n\
         \x20 [proxy_plugins.strata-diff]\n    type = \"diff\"\n    address = \"{sock}\"\n\n\
         [plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [\"strata-diff\", \"walking\"]\n\n\
         [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux/amd64\"\n  \
         snapshotter = \"strata\"\n  differ = \"strata-diff\"\n\n"
    )
}

/// containerd 1.7's config (version 2): everything CRI is under `io.containerd.grpc.v1.cri`.
fn config_v2(s: &Settings) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "{head}[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n\n\
         [{cri}]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  restrict_oom_score_adj = true\n  \
         disable_apparmor = true\n  enable_selinux = false\n  enable_cdi = false\n  \
         disable_tcp_service = true\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\n\
         [{cri}.containerd]\n  snapshotter = \"{snap}\"\n  default_runtime_name = \"runc\"\n\n\
         [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
         [{cri}.containerd.runtimes.strata]\n  runtime_type = \"io.containerd.strata.v1\"\n\n\
         [{cri}.cni]\n  bin_dir = \"{bin}\"\n  conf_dir = \"{conf}\"\n",
        head = common_head(s, 2),
        snap = s.snapshotter,
        bin = s.cni_bin.display(),
        conf = s.dir.join("cni").display(),
    )
}

/// containerd 2.x's config (version 3): images and runtime are plugins of their own.
fn config_v3(s: &Settings) -> String {
    let images = "plugins.'io.containerd.cri.v1.images'";
    let rt = "plugins.'io.containerd.cri.v1.runtime'";
    format!(
        "{head}[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n\n\
         [{images}]\n  snapshotter = '{snap}'\n\n\
         [{images}.pinned_images]\n  sandbox = '{PAUSE_IMAGE}'\n\n\
         [{rt}]\n  restrict_oom_score_adj = true\n  disable_apparmor = true\n  enable_selinux = false\n  \
         enable_cdi = false\n\n\
         [{rt}.containerd]\n  default_runtime_name = 'runc'\n\n\
         [{rt}.containerd.runtimes.runc]\n  runtime_type = 'io.containerd.runc.v2'\n\n\
         [{rt}.containerd.runtimes.strata]\n  runtime_type = 'io.containerd.strata.v1'\n\n\
         [{rt}.containerd.runtimes.{SANDBOX_HANDLER}]\n  runtime_type = 'io.containerd.strata.v1'\n  \
         sandboxer = 'shim'\n\n\
         [{rt}.cni]\n  bin_dirs = ['{bin}']\n  conf_dir = '{conf}'\n\n\
         [plugins.'io.containerd.grpc.v1.cri']\n  disable_tcp_service = true\n  \
         stream_server_address = '127.0.0.1'\n  stream_server_port = '0'\n",
        head = common_head(s, 3),
        snap = s.snapshotter,
        bin = s.cni_bin.display(),
        conf = s.dir.join("cni").display(),
    )
}

/// The pods' network: loopback, and a bridge that is the pods' gateway, no masquerading (no
/// iptables in the VM), host-local addresses kept in the suite's directory.
fn cni_conflist(s: &Settings) -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{SUBNET_PREFIX}0/24"}}]],
        "dataDir": "{ipam}"
      }}
    }},
    {{ "type": "loopback" }}
  ]
}}
"#,
        ipam = s.dir.join("ipam").display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            containerd: PathBuf::from("/opt/c/containerd"),
            handler: "strata".into(),
            dir: PathBuf::from("/run/x"),
            path: String::new(),
            cni_bin: PathBuf::from("/opt/cni/bin"),
            images: PathBuf::from("/i"),
            log: PathBuf::from("/run/x/containerd.log"),
            log_level: "info".into(),
            rpc_timeout: Duration::from_secs(1),
            snapshotter: "overlayfs".into(),
        }
    }

    #[test]
    fn configs_name_both_handlers_and_the_local_sandbox_image() {
        for c in [config_v2(&settings()), config_v3(&settings())] {
            assert!(c.contains("io.containerd.strata.v1") && c.contains("io.containerd.runc.v2"), "{c}");
            assert!(c.contains(PAUSE_IMAGE) && c.contains("restrict_oom_score_adj = true"), "{c}");
            assert!(c.contains("/run/x/c.sock") && c.contains("/run/x/cni"), "{c}");
        }
        assert!(config_v2(&settings()).starts_with("version = 2\n"));
        assert!(
            config_v3(&settings())
                .contains("runtimes.strata-sandbox]\n  runtime_type = 'io.containerd.strata.v1'\n  sandboxer = 'shim'")
        );
        assert!(config_v3(&settings()).starts_with("version = 3\n"));
    }

    #[test]
    fn strata_s_snapshotter_is_a_proxy_plugin_and_every_pod_s_snapshotter() {
        let s = Settings { snapshotter: "strata".into(), ..settings() };
        for c in [config_v2(&s), config_v3(&s)] {
            assert!(
                c.contains("[proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"/run/x/s.sock\""),
                "{c}"
            );
            assert!(
                c.contains("[proxy_plugins.strata-diff]\n    type = \"diff\"\n    address = \"/run/x/s.sock\"")
                    && c.contains("default = [\"strata-diff\", \"walking\"]")
                    && c.contains("snapshotter = \"strata\"\n  differ = \"strata-diff\""),
                "{c}"
            );
            assert!(
                c.contains("snapshotter = \"strata\"\n  default_runtime_name") || c.contains("snapshotter = 'strata'"),
                "{c}"
            );
            assert!(!c.contains("overlayfs"), "{c}");
        }
        for c in [config_v2(&settings()), config_v3(&settings())] {
            assert!(!c.contains("proxy_plugins") && c.contains("overlayfs"), "{c}");
        }
    }

    #[test]
    fn the_cni_network_is_a_bridge_without_masquerading() {
        let c = cni_conflist(&settings());
        assert!(c.contains("\"ipMasq\": false") && c.contains(BRIDGE) && c.contains("/run/x/ipam"), "{c}");
    }
}
