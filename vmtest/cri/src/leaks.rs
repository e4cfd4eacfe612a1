//! What pods and containers can leave behind on the node once CRI has removed them: mounts
//! under containerd's directories, cgroups under the pods' parents, network namespaces,
//! processes (shims, containers' processes), state directories of containerd, of the shims
//! and of the runtimes, active snapshots and allocated pod addresses. [`find`] lists them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Containerd;
use crate::containerd::{NAMESPACE, NETWORK, run_bounded};

/// Cgroup trees in which CRI's runtimes put pods' and containers' cgroups.
pub const CGROUP_TREES: [&str; 2] = ["/sys/fs/cgroup/kubepods", "/sys/fs/cgroup/k8s.io"];

/// Every leftover found, one description each.
pub fn find(ctd: &Containerd) -> Vec<String> {
    let mut leaks = Vec::new();
    leaks.extend(mounts(ctd));
    leaks.extend(cgroups());
    leaks.extend(entries(Path::new("/run/netns"), &[]).into_iter().map(|p| format!("network namespace {p}")));
    leaks.extend(processes(ctd.pid()));
    leaks.extend(state_dirs(ctd));
    leaks.extend(active_snapshots(ctd));
    leaks
}

/// Mounts at or under containerd's directory (rootfs, sandbox shm, netns pins) or `/run/netns`.
pub fn mounts(ctd: &Containerd) -> Vec<String> {
    let dir = ctd.settings().dir.clone();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| {
            Path::new(m).starts_with(&dir)
                || Path::new(m).starts_with("/run/netns")
                || m.starts_with("/run/containerd/")
        })
        .map(|m| format!("mount {m}"))
        .collect()
}

/// Cgroups left in [`CGROUP_TREES`]: any directory below `kubepods/besteffort` (pod cgroups
/// are removed by the suite as kubelet does, once their pod is gone), and anything in
/// `k8s.io`.
pub fn cgroups() -> Vec<String> {
    let mut found = Vec::new();
    for tree in CGROUP_TREES {
        walk(Path::new(tree), &mut |p| {
            let keep = [Path::new("/sys/fs/cgroup/kubepods"), Path::new("/sys/fs/cgroup/kubepods/besteffort")];
            if !keep.contains(&p) && p != Path::new(tree) {
                found.push(format!("cgroup {} (procs: {})", p.display(), procs(p)));
            }
        });
    }
    found
}

fn procs(cgroup: &Path) -> String {
    let text = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    let v: Vec<&str> = text.split_whitespace().collect();
    if v.is_empty() { "none".into() } else { v.join(" ") }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    f(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), f);
            }
        }
    }
}

/// The names in `dir` other than `except` (none if it does not exist).
fn entries(dir: &Path, except: &[&str]) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !except.contains(&n.as_str()))
        .map(|n| dir.join(n).display().to_string())
        .collect();
    v.sort();
    v
}

fn ns_of(pid: &str, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

/// Processes that belong to containers or shims: any in another pid or network namespace than
/// the VM's init, and any shim, runtime or pause program, whatever its namespaces.
pub fn processes(containerd: Option<u32>) -> Vec<String> {
    let me = std::process::id().to_string();
    let ctd = containerd.map(|p| p.to_string()).unwrap_or_default();
    let init_pid = ns_of("1", "pid");
    let init_net = ns_of("1", "net");
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec!["cannot read /proc".into()] };
    let mut found = Vec::new();
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me || pid == ctd {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() {
            continue; // a kernel thread, or already gone
        }
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
        let foreign = ns_of(&pid, "pid") != init_pid || ns_of(&pid, "net") != init_net;
        let program = cmd.split(' ').next().and_then(|a| a.rsplit('/').next()).unwrap_or_default();
        let known =
            program.starts_with("containerd-shim") || ["strata", "runc", "pause", "strata-pause"].contains(&program);
        if foreign || known {
            found.push(format!("process {pid}: {cmd}"));
        }
    }
    found
}

/// Per-container directories of containerd, CRI, the shims and the runtimes, and pod addresses
/// still allocated.
pub fn state_dirs(ctd: &Containerd) -> Vec<String> {
    let (root, state) = (ctd.root(), ctd.state());
    let mut found = Vec::new();
    for dir in [
        state.join("io.containerd.runtime.v2.task").join(NAMESPACE),
        root.join("io.containerd.grpc.v1.cri/containers"),
        root.join("io.containerd.grpc.v1.cri/sandboxes"),
        state.join("io.containerd.grpc.v1.cri/containers"),
        state.join("io.containerd.grpc.v1.cri/sandboxes"),
        PathBuf::from("/run/containerd/strata").join(NAMESPACE),
        PathBuf::from("/run/containerd/runc").join(NAMESPACE),
        PathBuf::from("/run/containerd/s"),
    ] {
        found.extend(entries(&dir, &[]).into_iter().map(|p| format!("state {p}")));
    }
    let ipam = ctd.ipam_dir().join(NETWORK);
    found.extend(
        entries(&ipam, &["lock", "last_reserved_ip.0"])
            .into_iter()
            .map(|p| format!("pod address still allocated: {p}")),
    );
    found
}

/// Active (container) snapshots: every container's is removed with it; images' are committed.
pub fn active_snapshots(ctd: &Containerd) -> Vec<String> {
    let out = match run_bounded(
        ctd.ctr().args(["snapshots", "--snapshotter", ctd.snapshotter(), "ls"]),
        Duration::from_secs(60),
    ) {
        Ok(o) if o.status.success() => o,
        Ok(o) => return vec![format!("ctr snapshots ls: {}", String::from_utf8_lossy(&o.stderr).trim())],
        Err(e) => return vec![format!("ctr snapshots ls: {e}")],
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        // KEY [PARENT] KIND: the kind is the last column.
        .filter(|l| l.split_whitespace().last().is_some_and(|k| k != "Committed"))
        .map(|l| format!("snapshot {}", l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}
