//! A private containerd for the benches and the report: its own root, state and socket, the CRI
//! plugin disabled, strata's shim first on its PATH. [`Containerd`] kills every task, removes
//! every container, stops the daemon and unmounts whatever it left mounted under its directory
//! when dropped, so an error half-way leaves nothing behind.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The containerd namespace every bench container lives in.
pub const NAMESPACE: &str = "strata-bench";

/// The busybox image the start-time measurements run.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/strata-busybox:bench";

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// strata's shim: `$STRATA_SHIM_BIN`; else the static musl build of the same profile when it
/// was built (`cargo build --release --target x86_64-unknown-linux-musl -p strata-shim --bin
/// containerd-shim-strata-v1`, how the shim is meant to be installed: see README); else
/// `containerd-shim-strata-v1` next to the strata binary ([`crate::strata_binary`]).
pub fn shim_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STRATA_SHIM_BIN") {
        // containerd finds the shim by name on its PATH: another name would run another shim.
        let p = PathBuf::from(p);
        if p.file_name().is_none_or(|n| n != "containerd-shim-strata-v1") {
            return Err(format!("STRATA_SHIM_BIN={}: the file must be named containerd-shim-strata-v1", p.display()));
        }
        return Ok(p);
    }
    let strata = crate::strata_binary()?;
    let musl = strata.parent().and_then(|profile| {
        let target = profile.parent()?;
        Some(target.join("x86_64-unknown-linux-musl").join(profile.file_name()?).join("containerd-shim-strata-v1"))
    });
    if let Some(p) = musl.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let p = strata.with_file_name("containerd-shim-strata-v1");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} is missing: build it next to {} (`cargo build -p strata-shim`)", p.display(), strata.display()))
    }
}

/// A runtime as `ctr run` selects it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Display name.
    pub name: &'static str,
    /// `ctr run` flags selecting the runtime.
    pub flags: Vec<&'static str>,
    /// The shim binary's name, to find its process.
    pub shim: &'static str,
}

/// strata through its shim, runc through containerd's runc v2 shim, and crun through the same
/// shim with `--runc-binary crun` (whether it works here is for the caller to find out).
pub fn peers() -> Vec<Peer> {
    vec![
        Peer { name: "strata", flags: vec!["--runtime", "io.containerd.strata.v1"], shim: "containerd-shim-strata-v1" },
        Peer { name: "runc", flags: vec!["--runtime", "io.containerd.runc.v2"], shim: "containerd-shim-runc-v2" },
        Peer {
            name: "crun",
            flags: vec!["--runtime", "io.containerd.runc.v2", "--runc-binary", "crun"],
            shim: "containerd-shim-runc-v2",
        },
    ]
}

/// A private containerd that cleans up after itself.
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    /// strata's snapshotter, when containerd has it as the `strata` proxy plugin.
    snapshotter: Option<Child>,
}

/// strata's snapshotter daemon: beside the `strata` binary the benchmarks run.
pub fn snapshotter_binary() -> Result<PathBuf, String> {
    let p = crate::strata_binary()?.with_file_name("strata-snapshotter");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} is missing: run `cargo build --release -p strata-snapshotter` first", p.display()))
    }
}

impl Containerd {
    /// Starts containerd (`$STRATA_CONTAINERD`, else `containerd` on the PATH), with `shim_dir`
    /// (where strata's shim is) first on its PATH if given, and waits until it answers.
    pub fn start(shim_dir: Option<&Path>) -> Result<Containerd, String> {
        Self::start_with_env(shim_dir, &[])
    }

    /// [`Containerd::start`] with `env` added to the daemon's environment (and so to the shims'
    /// it starts).
    pub fn start_with_env(shim_dir: Option<&Path>, env: &[(&str, &str)]) -> Result<Containerd, String> {
        Self::start_inner(shim_dir, env, None)
    }

    /// [`Containerd::start`] with strata's snapshotter (`bin`) serving a store of its own
    /// (`<scratch>/store`) as the `strata` proxy snapshot plugin, the one images are unpacked into
    /// by [`Containerd::import_into`], and its differ as the `strata-diff` proxy diff plugin that
    /// unpacks the layers, configured as the README does (`STRATA_BENCH_DIFFER=containerd`: without
    /// it, containerd's own differ unpacks them).
    pub fn start_with_snapshotter(bin: &Path) -> Result<Containerd, String> {
        Self::start_inner(None, &[], Some(bin))
    }

    fn start_inner(
        shim_dir: Option<&Path>,
        env: &[(&str, &str)],
        snapshotter: Option<&Path>,
    ) -> Result<Containerd, String> {
        for tool in ["containerd", "ctr"] {
            if std::env::var_os("STRATA_CONTAINERD").is_none() && which(tool).is_none() {
                return Err(format!("`{tool}` is not installed (apt-get install containerd)"));
            }
        }
        // Short and in /tmp (or a scratch file system mounted there): the socket path must fit in
        // sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("ctdb")
            .tempdir_in(crate::scratch::dir())
            .map_err(|e| format!("tempdir: {e}"))?;
        let p = dir.path();
        let mut config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n",
            p.join("root").display(),
            p.join("state").display(),
            p.join("c.sock").display()
        );
        let mut snap = None;
        if let Some(bin) = snapshotter {
            // (containerd 2's transfer service unpacks only into the snapshotters it lists, with
            // the differ named there; 1.7's diff service asks its differs in order)
            let sock = p.join("s.sock").display().to_string();
            let differ = std::env::var("STRATA_BENCH_DIFFER").unwrap_or_default() != "containerd";
            config.push_str(&format!(
                "[proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{sock}\"\n"
            ));
            if differ {
                config.push_str(&format!(
                    "  [proxy_plugins.strata-diff]\n    type = \"diff\"\n    address = \"{sock}\"\n\
                     [plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [\"strata-diff\", \"walking\"]\n"
                ));
            }
            config.push_str(&format!(
                "[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n  platform = \"linux/amd64\"\n  \
                 snapshotter = \"strata\"\n{}",
                if differ { "  differ = \"strata-diff\"\n" } else { "" }
            ));
            let log = std::fs::File::create(p.join("snapshotter.log")).map_err(|e| format!("snapshotter.log: {e}"))?;
            let child = Command::new(bin)
                .arg("--address")
                .arg(p.join("s.sock"))
                .arg("--store")
                .arg(p.join("store"))
                .arg("--containerd-root")
                .arg(p.join("root"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| format!("snapshotter.log: {e}"))?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            let mut child = SnapshotterGuard(Some(child));
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(p.join("s.sock")).is_err() {
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(p.join("snapshotter.log")).unwrap_or_default();
                    return Err(format!("strata-snapshotter did not come up: {}", log.trim()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            snap = child.0.take();
        }
        std::fs::write(p.join("config.toml"), config).map_err(|e| format!("config.toml: {e}"))?;
        let mut path = std::env::var("PATH").unwrap_or_default();
        // The shim runs its helper from the `strata` binary: next to it, else on the PATH.
        if let Some(dir) = crate::strata_binary().ok().and_then(|s| s.parent().map(Path::to_path_buf)) {
            path = format!("{}:{path}", dir.display());
        }
        if let Some(dir) = shim_dir {
            path = format!("{}:{path}", dir.display());
        }
        let containerd = std::env::var("STRATA_CONTAINERD").unwrap_or_else(|_| "containerd".into());
        let log = std::fs::File::create(p.join("containerd.log")).map_err(|e| format!("containerd.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("containerd.log: {e}"))?;
        let daemon = Command::new(&containerd)
            .arg("--config")
            .arg(p.join("config.toml"))
            .env("PATH", path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{containerd}: {e} (apt-get install containerd)"))?;
        // From here on, Drop stops the daemon whatever happens.
        let c = Containerd { dir, daemon, snapshotter: snap };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"])?.status.success() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("containerd did not answer within 30 s: {}", tail.join(" / ")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// Whether this `ctr` takes `images import --discard-unpacked-layers` (containerd 1.7 and
    /// later): the layer blobs go from the content store once unpacked, as CRI's
    /// `discard_unpacked_layers` does for pulls.
    pub fn can_discard_unpacked_layers(&self) -> bool {
        self.ctr(&["images", "import", "--help"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--discard-unpacked-layers"))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// containerd's root directory (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The store strata's snapshotter serves (its snapshots and content pool), when started
    /// with one.
    pub fn snapshotter_store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A scratch directory that goes away with this containerd.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// A `ctr` command against this containerd, in [`NAMESPACE`].
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.dir.path().join("c.sock")).arg("--namespace").arg(NAMESPACE).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr` to completion.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, String> {
        self.ctr_command(args).output().map_err(|e| format!("ctr: {e}"))
    }

    /// Stops strata's snapshotter, if this containerd has one: on SIGTERM it finishes what it does
    /// after its answers (adoptions, pool links) and exits. An error if it does not exit by itself,
    /// successfully, within a minute (it is killed then). containerd stays up without it.
    pub fn stop_snapshotter(&mut self) -> Result<(), String> {
        let Some(mut child) = self.snapshotter.take() else { return Ok(()) };
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("strata-snapshotter exited with {status}")),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                waited => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("strata-snapshotter did not stop within a minute: {waited:?}"));
                }
            }
        }
    }

    /// The lines `ctr` prints on stdout (none when it cannot run), e.g. `task ls -q`.
    pub fn lines(&self, args: &[&str]) -> Vec<String> {
        self.ctr(args)
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// `ctr images import` of an image archive.
    pub fn import(&self, archive: &Path) -> Result<(), String> {
        self.import_into(archive, "overlayfs")
    }

    /// `ctr images import --snapshotter SNAPSHOTTER` of an image archive.
    pub fn import_into(&self, archive: &Path, snapshotter: &str) -> Result<(), String> {
        self.import_with(archive, snapshotter, &[])
    }

    /// `ctr images import --snapshotter SNAPSHOTTER FLAGS...` of an image archive.
    pub fn import_with(&self, archive: &Path, snapshotter: &str, flags: &[&str]) -> Result<(), String> {
        let a = archive.display().to_string();
        let mut args = vec!["images", "import", "--snapshotter", snapshotter];
        args.extend_from_slice(flags);
        args.push(&a);
        let out = self.ctr(&args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ctr images import {}: {}", archive.display(), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Runs containerd's garbage collection to its end: what was released (the layer blobs of
    /// `--discard-unpacked-layers`) goes now rather than at the collector's next scheduled pass.
    /// A small image is imported into `snapshotter` and removed with `--sync`, which waits for the
    /// collection that removal starts.
    pub fn collect_garbage(&self, snapshotter: &str) -> Result<(), String> {
        const TRIGGER: &str = "docker.io/library/strata-gc-trigger:latest";
        let archive = self.dir.path().join("gc-trigger.tar");
        make_busybox_image(&archive, TRIGGER)?;
        self.import_into(&archive, snapshotter)?;
        let out = self.ctr(&["images", "rm", "--sync", TRIGGER])?;
        let _ = std::fs::remove_file(&archive);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ctr images rm --sync: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Builds the busybox image archive (shim/tests/containerd/make-image.sh) and imports it as
    /// [`BUSYBOX_IMAGE`].
    pub fn import_busybox(&self) -> Result<(), String> {
        let archive = self.dir.path().join("busybox.tar");
        make_busybox_image(&archive, BUSYBOX_IMAGE)?;
        self.import(&archive)
    }

    fn run_args<'a>(peer: &'a Peer, extra: &[&'a str], id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
        // `--cpu-shares 0`: strata refuses cpu.shares on hosts whose cgroup2 lacks the cpu
        // controller, and every runtime must run the same spec.
        let mut args = vec!["run", "--cpu-shares", "0"];
        args.extend_from_slice(&peer.flags);
        args.extend_from_slice(extra);
        args.push(BUSYBOX_IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        args
    }

    fn failed(&self, peer: &Peer, id: &str, stderr: &[u8]) -> String {
        // A failed `ctr run --rm` leaves the container record behind.
        let _ = self.ctr(&["containers", "rm", id]);
        format!("{} ctr run: {}", peer.name, String::from_utf8_lossy(stderr).trim())
    }

    /// `ctr run` of [`BUSYBOX_IMAGE`] with `peer`; returns the wall time.
    pub fn run(&self, peer: &Peer, extra: &[&str], id: &str, cmd: &[&str]) -> Result<Duration, String> {
        let t = Instant::now();
        let out = self.ctr(&Self::run_args(peer, extra, id, cmd))?;
        let elapsed = t.elapsed();
        if out.status.success() { Ok(elapsed) } else { Err(self.failed(peer, id, &out.stderr)) }
    }

    /// `ctr run --rm` of a command writing to stdout: (spawn to first byte, spawn to exit).
    pub fn run_first_byte(&self, peer: &Peer, id: &str, cmd: &[&str]) -> Result<(Duration, Duration), String> {
        let ctr = self.ctr_command(&Self::run_args(peer, &["--rm"], id, cmd));
        let (first, exit, out) = crate::time_first_byte(ctr).map_err(|e| format!("ctr: {e}"))?;
        if !out.status.success() {
            return Err(self.failed(peer, id, &out.stderr));
        }
        let first = first.ok_or_else(|| format!("{}: the workload wrote nothing", peer.name))?;
        Ok((first, exit))
    }
}

impl Containerd {
    /// `ctr run --detach --net-host` of the HTTP workload on a fresh port with `peer`: spawn to
    /// the first HTTP answer. The task and container are removed afterwards, also on error.
    pub fn run_http(&self, peer: &Peer, id: &str) -> Result<Duration, String> {
        let port = crate::free_port()?;
        let workload = crate::http_workload(&format!("127.0.0.1:{port}"));
        let cmd: Vec<&str> = workload.iter().map(String::as_str).collect();
        let mut ctr = self.ctr_command(&Self::run_args(peer, &["--detach", "--net-host"], id, &cmd));
        ctr.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let child = ctr.spawn().map_err(|e| format!("ctr: {e}"))?;
        let answered = crate::first_http_response(port, t, Duration::from_secs(30));
        let out = child.wait_with_output().map_err(|e| format!("ctr: {e}"))?;
        // `task delete --force` kills the task and waits for it before deleting.
        let _ = self.ctr(&["task", "delete", "--force", id]);
        let _ = self.ctr(&["containers", "rm", id]);
        if !out.status.success() {
            return Err(format!("{} ctr run --detach: {}", peer.name, String::from_utf8_lossy(&out.stderr).trim()));
        }
        answered.map_err(|e| format!("{}: {e}", peer.name))
    }
}

/// Writes a one-layer busybox image archive named `reference` (shim/tests/containerd/make-image.sh).
fn make_busybox_image(archive: &Path, reference: &str) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/tests/containerd/make-image.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(archive)
        .arg(reference)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.lines(&["task", "ls", "-q"]);
        for id in &tasks {
            let _ = self.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]);
        }
        if !tasks.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
        }
        for id in &tasks {
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        for id in self.lines(&["containers", "ls", "-q"]) {
            let _ = self.ctr(&["containers", "rm", &id]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        drop(SnapshotterGuard(self.snapshotter.take()));
        // containerd's default cgroupsPath is /<namespace>/<id>: the namespace's parent goes too
        // (runc makes it in every v1 hierarchy here), and so do the shims' (empty) state
        // directories for the namespace.
        remove_empty_cgroup_everywhere(NAMESPACE);
        let _ = std::fs::remove_dir(engine::shimv2::service::state_root(NAMESPACE));
        // runc's shim keeps its state in /run/containerd/runc/<namespace> and leaves the
        // directory behind, empty, when its last container is gone.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(NAMESPACE));
        unmount_under(self.dir.path());
    }
}

/// Removes the cgroup `name` (relative to each hierarchy's root) from every mounted cgroup
/// hierarchy, v1 and v2, where it is empty: what a runtime left after its containers went.
/// `rmdir` fails on a cgroup that still has processes or children, which is left alone.
pub fn remove_empty_cgroup_everywhere(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if !matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        if let Some(mount) = left.split(' ').nth(4) {
            let _ = std::fs::remove_dir(Path::new(mount).join(name));
        }
    }
}

/// Detaches every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut targets: Vec<&str> =
        mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
    targets.reverse();
    for t in targets {
        let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Bytes allocated on disk under `dir`, each inode counted once however many links it has.
/// Does not cross into other file systems (mounts below `dir`).
pub fn disk_usage(dir: &Path) -> Result<u64, String> {
    fn walk(dir: &Path, dev: u64, seen: &mut HashSet<(u64, u64)>, total: &mut u64) -> Result<(), String> {
        for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            let m = e.path().symlink_metadata().map_err(|err| format!("{}: {err}", e.path().display()))?;
            if m.dev() != dev {
                continue;
            }
            if seen.insert((m.dev(), m.ino())) {
                *total += m.blocks() * 512;
            }
            if m.is_dir() {
                walk(&e.path(), dev, seen, total)?;
            }
        }
        Ok(())
    }
    let m = dir.metadata().map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut seen = HashSet::new();
    let mut total = m.blocks() * 512;
    seen.insert((m.dev(), m.ino()));
    walk(dir, m.dev(), &mut seen, &mut total)?;
    Ok(total)
}

/// The pid of the shim serving container `id` (its command line names the id, after `-id`).
pub fn shim_pid(shim: &str, id: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().is_some_and(|a| a.ends_with(shim))
            && args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
            && args.iter().any(|a| a == NAMESPACE)
        {
            return Some(pid);
        }
    }
    None
}

/// Stops a snapshotter daemon (SIGTERM, then SIGKILL after 10 s) when dropped.
struct SnapshotterGuard(Option<Child>);

impl Drop for SnapshotterGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_are_counted_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let a = dir.path().join("a");
        std::fs::write(&a, vec![7u8; 256 * 1024]).unwrap_or_else(|e| panic!("write: {e}"));
        let one = disk_usage(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::hard_link(&a, dir.path().join("b")).unwrap_or_else(|e| panic!("link: {e}"));
        let two = disk_usage(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(one >= 256 * 1024, "{one}");
        assert_eq!(one, two);
    }
}
