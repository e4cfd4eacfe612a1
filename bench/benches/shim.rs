//! The containerd shim: `ctr run --rm IMAGE id /bin/true` through strata's shim
//! (`io.containerd.strata.v1`) against containerd's runc v2 shim (runc, and crun through it when
//! installed), and the resident memory of each shim per running container, in one run.
//!
//! Protects two figures: strata's `ctr run` median ≤ 0.6× runc's, and strata's shim RSS ≤ 2 MiB
//! per container (published: Go shim ≈ 11 MB, rust-extensions' Rust runc shim ≈ 3.45 MB).
//! A private containerd (own root, state and socket, CRI disabled) is started with the release
//! shim (`target/release/containerd-shim-strata-v1`, or `$STRATA_SHIM_BIN`) first on its PATH;
//! `$STRATA_CONTAINERD` picks another containerd. Rounds: env STRATA_BENCH_ROUNDS (default 20).

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strata_bench::median;

const IMAGE: &str = "docker.io/library/strata-busybox:bench";
const NAMESPACE: &str = "strata-bench";
/// Running containers per runtime for the memory figure.
const RESIDENT: usize = 3;

fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_SHIM_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/containerd-shim-strata-v1");
    assert!(p.exists(), "{} is missing: run `cargo build --release -p strata-shim` first", p.display());
    p
}

/// A runtime as `ctr run` selects it.
struct Peer {
    name: &'static str,
    flags: Vec<&'static str>,
    shim: &'static str,
}

fn peers() -> Vec<Peer> {
    let mut v = vec![Peer {
        name: "strata",
        flags: vec!["--runtime", "io.containerd.strata.v1"],
        shim: "containerd-shim-strata-v1",
    }];
    v.push(Peer { name: "runc", flags: vec!["--runtime", "io.containerd.runc.v2"], shim: "containerd-shim-runc-v2" });
    if Command::new("crun").arg("--version").output().is_ok_and(|o| o.status.success()) {
        v.push(Peer {
            name: "crun",
            flags: vec!["--runtime", "io.containerd.runc.v2", "--runc-binary", "crun"],
            shim: "containerd-shim-runc-v2",
        });
    }
    v
}

/// A private containerd that cleans up after itself.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new().prefix("ctdb").tempdir_in("/tmp").expect("temporary directory");
        let p = dir.path();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n",
            p.join("root").display(),
            p.join("state").display(),
            p.join("c.sock").display()
        );
        std::fs::write(p.join("config.toml"), config).expect("config.toml");
        let shim_dir = shim_binary().parent().expect("shim directory").to_path_buf();
        let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
        let containerd = std::env::var("STRATA_CONTAINERD").unwrap_or_else(|_| "containerd".into());
        let log = std::fs::File::create(p.join("containerd.log")).expect("log");
        let daemon = Command::new(containerd)
            .arg("--config")
            .arg(p.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd)");
        let c = Containerd { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let archive = c.dir.path().join("image.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/tests/containerd/make-image.sh");
        assert!(Command::new("sh").arg(script).arg(&archive).arg(IMAGE).status().is_ok_and(|s| s.success()));
        let out = c.ctr(&["images", "import", &archive.display().to_string()]);
        assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    /// `ctr run` for `peer`; `--cpu-shares 0` because strata refuses cpu.shares on hosts whose
    /// cgroup2 lacks the cpu controller, and both runtimes must run the same spec.
    fn run(&self, peer: &Peer, extra: &[&str], id: &str, cmd: &[&str]) -> Duration {
        self.try_run(peer, extra, id, cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_run(&self, peer: &Peer, extra: &[&str], id: &str, cmd: &[&str]) -> Result<Duration, String> {
        let mut args = vec!["run", "--cpu-shares", "0"];
        args.extend_from_slice(&peer.flags);
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        let t = Instant::now();
        let out = self.ctr(&args);
        let elapsed = t.elapsed();
        if out.status.success() {
            Ok(elapsed)
        } else {
            // A failed `ctr run --rm` leaves the container record behind.
            let _ = self.ctr(&["containers", "rm", id]);
            Err(format!("{} ctr run: {}", peer.name, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&containers.stdout).lines() {
            let _ = self.ctr(&["containers", "rm", id]);
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
        // containerd's default cgroupsPath is /<namespace>/<id>: the namespace's parent goes too,
        // and so does the shim's (empty) state directory for the namespace.
        for mount in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let _ = std::fs::remove_dir(Path::new(mount).join(NAMESPACE));
        }
        let _ = std::fs::remove_dir(engine::shimv2::service::state_root(NAMESPACE));
        let prefix = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).collect();
        targets.reverse();
        for t in targets {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The pid of the shim serving container `id` (its command line names the id; the runc shim
/// names it too, as `-id`).
fn shim_pid(shim: &str, id: &str) -> Option<i32> {
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

/// (RSS, PSS) in KiB from procfs.
fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(peer: &Peer) -> String {
    format!("b-{}-{}", peer.name, SEQ.fetch_add(1, Ordering::Relaxed))
}

fn shim(c: &mut Criterion) {
    let ctd = Containerd::start();
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut peers = peers();
    // A peer that cannot run here (crun refuses hybrid cgroups through the runc shim) is
    // reported and left out; strata must run.
    peers.retain(|p| match ctd.try_run(p, &["--rm"], &next_id(p), &["/bin/true"]) {
        Ok(_) => true,
        Err(e) if p.name != "strata" => {
            eprintln!("shim: {} unavailable: {e}", p.name);
            false
        }
        Err(e) => panic!("{e}"),
    });
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for _ in 0..rounds {
        for (i, p) in peers.iter().enumerate() {
            times[i].push(ctd.run(p, &["--rm"], &next_id(p), &["/bin/true"]));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!("\nshim: ctr run --rm IMAGE id /bin/true; {rounds} interleaved rounds");
    for (p, m) in peers.iter().zip(&medians) {
        println!("shim: {:<6} median {:>8.2} ms", p.name, m.as_secs_f64() * 1e3);
    }
    for (p, m) in peers.iter().zip(&medians).skip(1) {
        println!(
            "shim: ratio strata/{} = {:.2} (target ≤ 0.60 against runc)",
            p.name,
            medians[0].as_secs_f64() / m.as_secs_f64()
        );
    }

    println!("\nshim: resident memory of the shim per running container ({RESIDENT} containers each)");
    for p in &peers {
        let mut rss = Vec::new();
        let mut pss = Vec::new();
        for _ in 0..RESIDENT {
            let id = next_id(p);
            ctd.run(p, &["-d"], &id, &["sleep", "1000"]);
            let pid = shim_pid(p.shim, &id).unwrap_or_else(|| panic!("no {} shim for {id}", p.name));
            let (r, s) = memory_kib(pid);
            rss.push(r);
            pss.push(s);
        }
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
        println!("shim: {:<6} RSS {:>6.2} MiB  PSS {:>6.2} MiB", p.name, avg(&rss), avg(&pss));
        if p.name == "strata" {
            println!("shim: strata RSS target ≤ 2.00 MiB: {}", if avg(&rss) <= 2.0 { "met" } else { "NOT met" });
        }
    }

    let mut group = c.benchmark_group("shim");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    for p in &peers {
        group.bench_function(p.name, |b| b.iter(|| ctd.run(p, &["--rm"], &next_id(p), &["/bin/true"])));
    }
    group.finish();
}

criterion_group!(benches, shim);
criterion_main!(benches);
