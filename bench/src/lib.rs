//! Helpers shared by strata's benchmarks: the peers (runc, crun), a busybox bundle, and timing
//! of one container life cycle per runtime so that every comparison is made in the same run.

pub mod containerd;
pub mod faults;
pub mod images;
pub mod load;
pub mod report;
pub mod scratch;
pub mod soak;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A runtime under test.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Display name.
    pub name: &'static str,
    /// The binary.
    pub binary: PathBuf,
    /// Whether it must run in a private mount namespace with a tmpfs over
    /// /sys/fs/cgroup/unified (crun refuses the hybrid layout otherwise).
    pub hide_hybrid_cgroup2: bool,
}

/// The strata binary: `$STRATA_BIN`, else the workspace's release build.
pub fn strata_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STRATA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/strata");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} is missing: run `cargo build --release -p strata-shim` first", p.display()))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// strata plus whichever of crun and runc are installed.
pub fn runtimes() -> Result<Vec<Runtime>, String> {
    let mut out = vec![Runtime { name: "strata", binary: strata_binary()?, hide_hybrid_cgroup2: false }];
    if let Some(b) = which("crun") {
        let hybrid = Path::new("/sys/fs/cgroup/unified").is_dir();
        out.push(Runtime { name: "crun", binary: b, hide_hybrid_cgroup2: hybrid });
    }
    if let Some(b) = which("runc") {
        out.push(Runtime { name: "runc", binary: b, hide_hybrid_cgroup2: false });
    }
    // An earlier strata build, to measure what a change costs the start path in the same run.
    if let Some(b) = std::env::var_os("STRATA_BENCH_BASELINE") {
        let binary = PathBuf::from(b);
        if !binary.is_file() {
            return Err(format!("STRATA_BENCH_BASELINE={}: no such file", binary.display()));
        }
        out.push(Runtime { name: "baseline", binary, hide_hybrid_cgroup2: false });
    }
    Ok(out)
}

/// A bundle in a temporary directory: busybox-static rootfs and strata's default config
/// (default namespaces including network, default capabilities, masked paths, seccomp) running
/// `args`.
pub struct BusyboxBundle {
    dir: tempfile::TempDir,
}

impl BusyboxBundle {
    /// Builds the bundle.
    pub fn new(args: &[&str]) -> Result<BusyboxBundle, String> {
        let dir = tempfile::Builder::new().prefix("strata-bench-").tempdir().map_err(|e| e.to_string())?;
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .map_err(|e| format!("/bin/busybox: {e} (install busybox-static)"))?;
        for applet in ["sh", "true", "sleep", "echo", "cat", "httpd", "nc", "wget"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).map_err(|e| e.to_string())?;
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let config = engine::spec::default_config(&args, false);
        std::fs::write(dir.path().join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
        Ok(BusyboxBundle { dir })
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites config.json to run `args` in the host's network namespace (the other
    /// namespaces stay), so that a server in the container is reachable on the loopback.
    pub fn set_host_network_args(&self, args: &[String]) -> Result<(), String> {
        let mut config = engine::spec::default_config(args, false);
        if let Some(ns) = config.pointer_mut("/linux/namespaces").and_then(|n| n.as_array_mut()) {
            ns.retain(|n| n["type"] != "network");
        }
        std::fs::write(self.dir.path().join("config.json"), config.to_string()).map_err(|e| e.to_string())
    }
}

/// The page the HTTP workload serves.
pub const HTTP_PAGE: &str = "strata-http";

/// The HTTP workload: busybox httpd in the foreground serving one page from /dev/shm (the root
/// file system is read-only) on `listen` (`127.0.0.1:PORT` for containers in the host's network
/// namespace).
pub fn http_workload(listen: &str) -> Vec<String> {
    let script = format!("echo {HTTP_PAGE} > /dev/shm/index.html && exec httpd -f -p {listen} -h /dev/shm");
    vec!["sh".into(), "-c".into(), script]
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound and released for the workload).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Asks `http://127.0.0.1:port/` until the page comes back; returns the time from `since` to
/// the first complete answer. A refused connection (nothing listens yet) is retried at once,
/// so the figure is within a fraction of a millisecond of the server's readiness.
pub fn first_http_response(port: u16, since: Instant, limit: Duration) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut last = String::from("no attempt");
    while since.elapsed() < limit {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut answer = Vec::new();
                let asked = s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let read = asked.and_then(|()| s.read_to_end(&mut answer));
                let text = String::from_utf8_lossy(&answer);
                if text.starts_with("HTTP/1.") && text.contains(HTTP_PAGE) {
                    return Ok(since.elapsed());
                }
                last = match read {
                    Err(e) => format!("reading the answer: {e}"),
                    Ok(_) => format!("unexpected answer {:?}", text.chars().take(80).collect::<String>()),
                };
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Err(format!("no HTTP answer on 127.0.0.1:{port} within {} s ({last})", limit.as_secs()))
}

/// A command of `rt` with its state under `root`. crun gets a private mount namespace with a
/// tmpfs over /sys/fs/cgroup/unified, as it refuses the hybrid layout otherwise; the bench
/// does that for it, strata needs no such help.
pub fn runtime_command(rt: &Runtime, root: &Path) -> Command {
    let mut cmd = Command::new(&rt.binary);
    cmd.arg("--root").arg(root);
    if rt.hide_hybrid_cgroup2 {
        // SAFETY: the closure runs in the forked child before exec and only makes system calls.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                    None::<&str>,
                )?;
                nix::mount::mount(
                    Some("tmpfs"),
                    "/sys/fs/cgroup/unified",
                    Some("tmpfs"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )?;
                Ok(())
            });
        }
    }
    cmd
}

/// util-linux `unshare` flags for the namespaces of the bundle's `config.json`.
pub fn unshare_flags(bundle: &Path) -> Vec<&'static str> {
    let config: serde_json::Value = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let kinds: Vec<String> = config["linux"]["namespaces"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["type"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let flag = |k: &str| match k {
        "pid" => Some("--pid"),
        "network" => Some("--net"),
        "ipc" => Some("--ipc"),
        "uts" => Some("--uts"),
        "mount" => Some("--mount"),
        "cgroup" => Some("--cgroup"),
        "user" => Some("--user"),
        "time" => Some("--time"),
        _ => None,
    };
    kinds.iter().filter_map(|k| flag(k)).collect()
}

/// The start-time floor: the bare kernel work of a container start without a runtime,
/// `unshare FLAGS --fork chroot ROOTFS ARGV...` (no mounts, cgroup, capabilities or seccomp).
pub fn floor_command(flags: &[&str], rootfs: &Path, argv: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(flags).arg("--fork").arg("chroot").arg(rootfs).args(argv);
    cmd
}

/// One `run` of the bundle (create, start, wait, delete) with `rt`; returns the wall time.
pub fn run_once(rt: &Runtime, bundle: &Path, state_root: &Path, id: &str) -> Result<Duration, String> {
    let mut cmd = runtime_command(rt, state_root);
    cmd.args(["run", "--bundle"]).arg(bundle).arg(id);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().map_err(|e| format!("{}: {e}", rt.name))?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return Err(format!("{} run failed: {}", rt.name, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(elapsed)
}

/// Spawns `cmd` with stdout and stderr piped and times it: (spawn to its first byte on stdout,
/// spawn to exit, its output). The first byte marks the workload's first instruction.
pub fn time_first_byte(mut cmd: Command) -> std::io::Result<(Option<Duration>, Duration, std::process::Output)> {
    use std::io::Read;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
    let mut byte = [0u8; 1];
    let first = match stdout.read(&mut byte) {
        Ok(1) => Some(t.elapsed()),
        _ => None,
    };
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let out = child.wait_with_output()?;
    Ok((first, t.elapsed(), out))
}

/// The median of some durations.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(median(&mut [ms(4), ms(1), ms(2), ms(3)]), Duration::from_micros(2500));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
