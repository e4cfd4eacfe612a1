//! Containers with real cgroup v2 limits, on a pure cgroup2 kernel. The host's hybrid layout
//! offers none of these controllers, so these tests are ignored on the host and run inside the
//! VM by `vmtest/containers.sh` (`--include-ignored`, with `STRATA_BIN` naming the static
//! binary).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const VM_ONLY: &str = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh";

fn wait_stopped(c: &TestContainer, limit: Duration) {
    let deadline = Instant::now() + limit;
    while c.state()["status"] != "stopped" {
        assert!(Instant::now() < deadline, "container did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{key} missing in:\n{text}"))
}

/// `strata shim run` of container `c` with `extra` flags: its stdout, and everything about the
/// run for an assertion message. Fails unless it exits 0.
fn shim_run(c: &TestContainer, extra: &[&std::ffi::OsStr]) -> (String, String) {
    let out = std::process::Command::new(strata_bin())
        .args(["shim", "run", "--namespace", "strata-vm-test"])
        .args(extra)
        .arg("--bundle")
        .arg(&c.dir)
        .arg(&c.id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context =
        format!("status {:?}\nstdout:\n{stdout}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{context}");
    (stdout, context)
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn memory_limit_oom_kills_and_is_counted() {
    let _ = VM_ONLY;
    let mut c = TestContainer::new("oom", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived");
    c.config["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    c.create();
    let cg = c.cgroup_dir();
    assert_eq!(read(cg.join("memory.max")).trim(), "33554432");
    c.ok(&["start", &c.id]);
    wait_stopped(&c, Duration::from_secs(60));
    let events = read(cg.join("memory.events"));
    assert!(keyed(&events, "oom_kill ") >= 1, "no oom_kill in memory.events:\n{events}");
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn pids_limit_makes_forks_fail() {
    let mut c = TestContainer::new(
        "pids",
        "n=0; for i in $(seq 20); do sleep 2 & n=$((n+1)); done 2>/dev/null; echo started; cat /sys/fs/cgroup/pids.max",
    );
    c.config["linux"]["resources"]["pids"] = json!({"limit": 6});
    c.create();
    let cg = c.cgroup_dir();
    c.ok(&["start", &c.id]);
    wait_stopped(&c, Duration::from_secs(60));
    let events = read(cg.join("pids.events"));
    assert!(keyed(&events, "max ") >= 1, "no refused fork in pids.events:\n{events}");
    c.ok(&["delete", "--force", &c.id]);
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn cpu_quota_throttles_seen_from_inside() {
    let mut c = TestContainer::new(
        "cpu",
        "(while :; do :; done) & sleep 1; kill $!; grep -E '^(nr_throttled|throttled_usec)' /sys/fs/cgroup/cpu.stat; cat /sys/fs/cgroup/cpu.max",
    );
    c.config["linux"]["resources"]["cpu"] = json!({"quota": 10000, "period": 100000, "shares": 512});
    let out = c.run_ok();
    assert!(keyed(&out, "nr_throttled ") > 0, "not throttled:\n{out}");
    assert!(out.contains("10000 100000"), "{out}");
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn io_max_is_written_for_the_device() {
    let mut c = TestContainer::new("io", "cat /sys/fs/cgroup/io.max");
    // /dev/loop0 (7:0) exists in the VM.
    c.config["linux"]["resources"]["blockIO"] = json!({
        "throttleReadBpsDevice": [{"major": 7, "minor": 0, "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": 7, "minor": 0, "rate": 100}]
    });
    let out = c.run_ok();
    assert!(out.contains("7:0 rbps=1048576 wbps=max riops=max wiops=100"), "{out}");
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn update_pause_resume_and_kill_all_of_a_running_container() {
    let mut c = TestContainer::new("live", "sleep 100 & sleep 100 & while :; do sleep 0.1; done");
    c.config["linux"]["resources"]["pids"] = json!({"limit": 100});
    c.config["linux"]["resources"]["memory"] = json!({"limit": 268435456});
    c.create();
    c.ok(&["start", &c.id]);
    let cg = c.cgroup_dir();
    c.ok(&["update", "--pids-limit", "50", "--memory", "134217728", &c.id]);
    assert_eq!(read(cg.join("pids.max")).trim(), "50");
    assert_eq!(read(cg.join("memory.max")).trim(), "134217728");

    c.ok(&["pause", &c.id]);
    assert_eq!(c.state()["status"], "paused");
    assert!(read(cg.join("cgroup.events")).contains("frozen 1"));
    c.ok(&["resume", &c.id]);
    assert_eq!(c.state()["status"], "running");

    let pids: Vec<i32> = serde_json::from_str(&c.ok(&["ps", "--format", "json", &c.id])).unwrap();
    assert!(pids.len() >= 3, "{pids:?}");
    c.ok(&["kill", "--all", &c.id, "KILL"]);
    wait_stopped(&c, Duration::from_secs(20));
    assert!(read(cg.join("cgroup.procs")).trim().is_empty());
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn device_rules_in_the_vm() {
    // A config that only denies (CRI's): the standard devices stay usable, others are refused.
    let mut c = TestContainer::new(
        "dev",
        "cat /dev/probe 2>&1 | grep -q 'not permitted' && echo probe-denied || echo probe-open; echo x > /dev/null && echo null-ok; head -c1 /dev/zero | wc -c",
    );
    c.config["linux"]["devices"] = json!([{"path": "/dev/probe", "type": "c", "major": 42, "minor": 0}]);
    c.config["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    assert_eq!(c.run_ok(), "probe-denied\nnull-ok\n1\n");
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn shim_publishes_task_oom_when_the_memory_limit_kills() {
    // The shim on its own (`strata shim run`, containerd-shim-strata-v1 beside strata): a
    // process allocating past 32 MiB is OOM-killed and the shim publishes /tasks/oom.
    let mut c = TestContainer::new("shimoom", "dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1; echo survived");
    c.config["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    c.write_config();
    let (stdout, context) = shim_run(&c, &[]);
    assert!(stdout.lines().any(|l| l == "survived"), "{context}");
    let topics: Vec<&str> =
        stdout.lines().filter_map(|l| l.strip_prefix("event ")).filter_map(|l| l.split(' ').next()).collect();
    let oom = topics.iter().position(|t| *t == "/tasks/oom");
    let exit = topics.iter().position(|t| *t == "/tasks/exit");
    assert!(oom.is_some_and(|o| exit.is_some_and(|e| o < e)), "no /tasks/oom before /tasks/exit: {context}");
    assert!(stdout.contains(&format!("event /tasks/oom {{container_id: \"{}\"}}", c.id)), "{context}");
    assert_eq!(topics.last(), Some(&"/tasks/delete"), "{context}");
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn shim_update_raises_the_memory_limit_of_a_running_task() {
    // `Update` through the shim (`strata shim run --update`): the container starts limited to
    // 32 MiB, the update raises it to 256 MiB, and a 64 MiB allocation made after the update
    // survives; the container reads its new limit itself.
    let script = "sleep 2; cat /sys/fs/cgroup/memory.max; dd if=/dev/zero of=/dev/null bs=64M count=1 && echo survived";
    let mut c = TestContainer::new("shimupd", script);
    c.config["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    c.write_config();
    let resources = c.dir.join("update.json");
    std::fs::write(&resources, json!({"memory": {"limit": 268435456, "swap": 268435456}}).to_string()).unwrap();
    let (stdout, context) = shim_run(&c, &["--update".as_ref(), resources.as_os_str()]);
    assert!(stdout.lines().any(|l| l == "updated"), "{context}");
    assert!(stdout.lines().any(|l| l == "268435456"), "the container does not see the new limit: {context}");
    assert!(stdout.lines().any(|l| l == "survived"), "{context}");
    assert!(!stdout.contains("/tasks/oom"), "{context}");
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn cpuset_pins_the_container_to_one_cpu() {
    // The VM has two vCPUs: the container asks for CPU 1 only and sees only it.
    let mut c = TestContainer::new(
        "cpuset",
        "grep Cpus_allowed_list /proc/self/status; cat /sys/fs/cgroup/cpuset.cpus /sys/fs/cgroup/cpuset.cpus.effective",
    );
    c.config["linux"]["resources"]["cpu"] = json!({"cpus": "1", "mems": "0"});
    let out = c.run_ok();
    let allowed = out.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim);
    assert_eq!(allowed, Some("1"), "{out}");
    assert_eq!(out.lines().filter(|l| l.trim() == "1").count(), 2, "cpuset.cpus and .effective: {out}");
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn hugetlb_and_swap_limits_are_written() {
    // No huge pages or swap are configured in the VM, but the limits are the kernel's files:
    // what the container reads is what the spec asked for (swap: memory+swap minus memory).
    let mut c = TestContainer::new("hugeswap", "cat /sys/fs/cgroup/hugetlb.2MB.max /sys/fs/cgroup/memory.swap.max");
    c.config["linux"]["resources"]["hugepageLimits"] = json!([{"pageSize": "2MB", "limit": 4194304}]);
    c.config["linux"]["resources"]["memory"] = json!({"limit": 67108864, "swap": 100663296});
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["4194304", "33554432"], "{out}");
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn update_merges_with_what_the_container_has() {
    let mut c = TestContainer::new("merge", "while :; do sleep 0.1; done");
    c.config["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000});
    c.config["linux"]["resources"]["memory"] = json!({"limit": 134217728});
    c.create();
    c.ok(&["start", &c.id]);
    let cg = c.cgroup_dir();
    // A period-only update keeps the quota (runc 1.3 would write "max 200000").
    c.ok(&["update", "--cpu-period", "200000", &c.id]);
    assert_eq!(read(cg.join("cpu.max")).trim(), "50000 200000");
    // A swap-only update is computed against the memory limit the container has.
    c.ok(&["update", "--memory-swap", "201326592", &c.id]);
    assert_eq!(read(cg.join("memory.swap.max")).trim(), "67108864");
    assert_eq!(read(cg.join("memory.max")).trim(), "134217728");
    c.ok(&["delete", "--force", &c.id]);
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn events_report_an_oom_kill() {
    let mut c = TestContainer::new("eventsoom", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1");
    c.config["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    c.create();
    let mut events =
        c.strata(&["events", "--interval", "10s", &c.id]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The first statistics line comes once `events` watches memory.events: an OOM kill before
    // that would be the baseline, not an event (a slow guest once took longer than the fixed
    // wait this replaced).
    let mut lines = std::io::BufReader::new(events.stdout.take().unwrap());
    let mut text = String::new();
    std::io::BufRead::read_line(&mut lines, &mut text).unwrap();
    c.ok(&["start", &c.id]);
    std::io::Read::read_to_string(&mut lines, &mut text).unwrap();
    events.wait().unwrap();
    assert!(text.lines().any(|l| l == format!("{{\"type\":\"oom\",\"id\":\"{}\"}}", c.id)), "no oom event:\n{text}");
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}

#[test]
#[ignore = "needs a pure cgroup v2 kernel: run by vmtest/containers.sh"]
fn a_container_without_limits_still_has_every_controller() {
    // As runc does: every controller the parent offers is enabled for the container, so its
    // statistics (memory, pids, io) exist whether or not its config limits them (Kubernetes'
    // ContainerStats and eviction read memory from containers that set no limit).
    let mut c =
        TestContainer::new("allctl", "cat /sys/fs/cgroup/cgroup.controllers; cat /sys/fs/cgroup/memory.current");
    c.config["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let out = c.run_ok();
    let controllers = out.lines().next().unwrap_or_default();
    for want in ["cpu", "memory", "pids", "io"] {
        assert!(controllers.split_whitespace().any(|c| c == want), "{want} missing: {out}");
    }
    assert!(out.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()).is_some_and(|m| m > 0), "{out}");
}
