//! Shared fixtures for the root-only integration tests: a busybox root file system built from
//! Debian's busybox-static, bundles in temporary directories, and guards that delete the
//! container and its files even when a test fails.

#![allow(dead_code)]

use layerstore::{Algorithm, Digest};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The strata binary: `$STRATA_BIN` (the VM suite passes the static one), else cargo's.
pub fn strata_bin() -> String {
    std::env::var("STRATA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").to_string())
}
/// Where cgroup2 is mounted: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a
/// pure one (the VM).
pub fn cgroup2_mount() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    if hybrid.exists() { PathBuf::from("/sys/fs/cgroup/unified") } else { PathBuf::from("/sys/fs/cgroup") }
}

/// Fails clearly when the tests cannot run here.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests create real containers: run them as root");
    assert!(Path::new("/bin/busybox").exists(), "install busybox-static (bash .ci/run does)");
}

/// A busybox root file system shared by every test of this binary (read-only use).
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        require_root();
        // Built once per test binary into cargo's per-target scratch directory (or the system's
        // temporary directory where that does not exist, as inside the VM).
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let base = if scratch.is_dir() { scratch.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("busybox-rootfs-{}", std::process::id()));
        build_busybox_rootfs(&dir);
        dir
    })
}

/// Makes a busybox root file system at `dir`.
pub fn build_busybox_rootfs(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
        .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A container under test: its bundle, its private state root, and cleanup on drop.
pub struct TestContainer {
    pub id: String,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub config: Value,
}

impl TestContainer {
    /// A bundle whose rootfs is the shared busybox tree, with the default config running `script`.
    pub fn new(name: &str, script: &str) -> TestContainer {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("t-{name}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("strata-bundle-{id}"));
        let root = std::env::temp_dir().join(format!("strata-root-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = engine::spec::default_config(&["sh".into(), "-c".into(), script.into()], false);
        config["root"]["path"] = Value::String(busybox_rootfs().display().to_string());
        TestContainer { id, dir, root, config }
    }

    /// Writes config.json.
    pub fn write_config(&self) {
        std::fs::write(self.dir.join("config.json"), serde_json::to_string_pretty(&self.config).unwrap()).unwrap();
    }

    /// `strata --root R <args>` with the bundle as working directory.
    pub fn strata(&self, args: &[&str]) -> Command {
        let mut c = Command::new(strata_bin());
        c.arg("--root").arg(&self.root).args(args).current_dir(&self.dir);
        c
    }

    /// Writes the config and runs the container in the foreground; returns its output.
    pub fn run(&self) -> Output {
        self.write_config();
        self.strata(&["run", &self.id]).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and returns stdout, asserting exit 0.
    pub fn run_ok(&self) -> String {
        let out = self.run();
        assert!(
            out.status.success(),
            "strata run failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the config and creates the container (detached stdio).
    pub fn create(&self) {
        self.write_config();
        // The container inherits stdio: a pipe here would stay open as long as it runs.
        let err_path = self.dir.join("create.stderr");
        let err = std::fs::File::create(&err_path).unwrap();
        let status =
            self.strata(&["create", &self.id]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).status().unwrap();
        assert!(status.success(), "create failed: {}", std::fs::read_to_string(&err_path).unwrap_or_default());
    }

    /// Runs a strata subcommand on this container and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.strata(args).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The state document.
    pub fn state(&self) -> Value {
        serde_json::from_str(&self.ok(&["state", &self.id])).unwrap()
    }

    /// The container's cgroup directory under the default location.
    pub fn cgroup_dir(&self) -> PathBuf {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_string();
        cgroup2_mount().join(rel).join("strata").join(&self.id)
    }

    /// Asserts that nothing of the container is left: state, cgroup, processes.
    pub fn assert_gone(&self, pid: Option<i32>) {
        assert!(!self.root.join(&self.id).exists(), "state directory left behind");
        assert!(!self.cgroup_dir().exists(), "cgroup {} left behind", self.cgroup_dir().display());
        if let Some(pid) = pid {
            let alive =
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z")).unwrap_or(false);
            assert!(!alive, "process {pid} left behind");
        }
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.strata(&["delete", "--force", &self.id]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Writes an OCI layout at `dir` with one uncompressed layer holding the busybox tree, named `bb`.
pub fn busybox_layout(dir: &Path) {
    busybox_layout_with(dir, "user", None);
}

/// [`busybox_layout`] with the config's `User`, and a second layer `top` over the busybox one.
pub fn busybox_layout_with(dir: &Path, user: &str, top: Option<Vec<u8>>) {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", busybox_rootfs()).expect("pack rootfs");
    let mut layers = vec![tar.into_inner().expect("finish tar")];
    layers.extend(top);
    let digests: Vec<Digest> = layers.iter().map(|l| Digest::of(Algorithm::Sha256, l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": layerstore::host_arch(), "os": "linux",
        "config": {"Cmd": ["sh", "-c", "echo $GREETING from $(pwd) as $(id -u)"], "Env": ["GREETING=hello", "PATH=/bin"],
                   "WorkingDir": "/tmp", "User": user},
        "rootfs": {"type": "layers", "diff_ids": digests.iter().map(Digest::to_string).collect::<Vec<_>>()},
    }))
    .expect("json");
    let config_digest = Digest::of(Algorithm::Sha256, &config);
    let descs: Vec<_> = layers
        .iter()
        .zip(&digests)
        .map(|(l, d)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len()}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .expect("json");
    let manifest_digest = Digest::of(Algorithm::Sha256, &manifest);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    for (d, data) in digests.iter().zip(&layers).chain([(&config_digest, &config), (&manifest_digest, &manifest)]) {
        std::fs::write(blobs.join(d.hex()), data).expect("write blob");
    }
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest.to_string(), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "bb"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("write");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
}

/// A command's status, stdout and stderr, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Host mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let dir = dir.display().to_string();
    info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(String::from).collect()
}

/// Processes whose command line holds `needle` (e.g. a container's unique sleep argument), as
/// `pid command line`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
            .replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// `strata --root STATE CMD --store STORE ARGS...` for the image and store commands.
pub fn store_cmd(state: &Path, store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(strata_bin());
    c.arg("--root").arg(state).arg(args[0]).arg("--store").arg(store).args(&args[1..]).stdin(Stdio::null());
    c
}

/// Runs `c`: whether it succeeded, its stdout and its stderr.
pub fn output(mut c: Command) -> (bool, String, String) {
    let out = c.output().expect("running strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
