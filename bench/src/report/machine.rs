//! The machine the report ran on and the version of every peer.

use std::process::Command;

use super::vm::{Accel, Kernel};

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() || !o.stdout.is_empty() => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(1).collect();
            if lines.is_empty() { format!("unavailable: `{cmd}` printed nothing") } else { lines.join("; ") }
        }
        Ok(o) => format!("unavailable: `{cmd}` failed ({})", o.status),
        Err(e) => format!("unavailable: `{cmd}`: {e}"),
    }
}

fn meminfo_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or_else(|| "unknown".into(), |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cgroup_layout() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2 (unified)"
    } else if std::path::Path::new("/sys/fs/cgroup/unified").is_dir() {
        "hybrid (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified)"
    } else {
        "cgroup v1"
    }
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("PRETTY_NAME="))
                .map(|l| l.trim_start_matches("PRETTY_NAME=").trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// (label, value) pairs for the report's machine section.
pub fn describe(accel: &Accel, kernel: Option<&Kernel>) -> Vec<(String, String)> {
    let strata = crate::strata_binary()
        .map(|b| first_line_of(&b.to_string_lossy(), &["--version"]))
        .unwrap_or_else(|e| format!("unavailable: {e}"));
    let git = first_line_of("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]);
    let mut v = vec![
        ("date (UTC)".to_string(), first_line_of("date", &["-u", "+%Y-%m-%d %H:%M:%S"])),
        ("cores".into(), std::thread::available_parallelism().map_or_else(|e| e.to_string(), |n| n.get().to_string())),
        ("CPU".into(), cpu_model()),
        ("memory".into(), meminfo_total()),
        ("host kernel".into(), first_line_of("uname", &["-r"])),
        ("host OS".into(), os_release()),
        ("cgroups".into(), cgroup_layout().into()),
        ("VM accelerator".into(), format!("{} ({})", accel.label(), accel.reason)),
        ("strata".into(), format!("{strata} (git {git})")),
        ("runc".into(), first_line_of("runc", &["--version"])),
        ("crun".into(), first_line_of("crun", &["--version"])),
        ("qemu".into(), first_line_of("qemu-system-x86_64", &["--version"])),
        (
            "guest kernel".into(),
            kernel.map_or_else(|| "unavailable: not cached".into(), |k| format!("{} ({})", k.package, k.release)),
        ),
        ("busybox".into(), first_line_of("busybox", &[])),
        ("containerd".into(), first_line_of("containerd", &["--version"])),
        ("mke2fs".into(), first_line_of("mke2fs", &["-V"])),
    ];
    v.retain(|(_, val)| !val.is_empty());
    v
}
