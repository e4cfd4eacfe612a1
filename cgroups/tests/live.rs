//! Tests on a real cgroup2 hierarchy, as root.
//!
//! On the development host (hybrid layout, cgroup2 at /sys/fs/cgroup/unified with only hugetlb)
//! they cover what needs no controller: create, freeze/thaw, kill, delete, the eBPF device
//! program, stats of the core files, and the refusal of unavailable controllers. With
//! `STRATA_VMTEST=1` (set by vmtest/run.sh inside a VM with a pure cgroup2 and every controller)
//! the controller tests run too: memory.max OOM kill and its event, pids.max, cpu.max
//! throttling, io.max, live update, plausible stats.
//!
//! Every cgroup is named `strata-test-<pid>-<name>` and removed by a guard even when the test
//! fails. Child processes are this test binary run again with `STRATA_CGROUP_HELPER` set: it
//! waits for a line on stdin (so the parent can move it into the cgroup first), then acts.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cgroups::{Cgroup, Error, Hierarchy, Layout, Limit};
use oci_spec::runtime::LinuxResources;

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn vm_mode() -> bool {
    std::env::var_os("STRATA_VMTEST").is_some_and(|v| v == "1")
}

/// Skips (returns `None`) unless running as root on a cgroup2 host.
fn hierarchy() -> Option<Hierarchy> {
    if !is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let h = Hierarchy::detect().expect("cgroup2 hierarchy");
    if vm_mode() {
        assert_eq!(h.layout(), Layout::Pure, "STRATA_VMTEST=1 expects a pure cgroup2");
    }
    Some(h)
}

/// Skips unless inside the VM (pure cgroup2 with every controller).
fn vm_hierarchy() -> Option<Hierarchy> {
    if !vm_mode() {
        eprintln!("skipped: needs STRATA_VMTEST=1 (run vmtest/run.sh)");
        return None;
    }
    hierarchy()
}

/// A test cgroup that is killed and removed when dropped, even after a failed assertion.
struct Guard(Cgroup);

impl Guard {
    fn create(h: &Hierarchy, name: &str, r: Option<&LinuxResources>) -> Guard {
        let rel = format!("strata-test-{}-{name}", std::process::id());
        let cg = Cgroup::create(h, Path::new(&rel), r).expect("create test cgroup");
        Guard(cg)
    }
}

impl std::ops::Deref for Guard {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.thaw();
        let _ = self.0.kill_all();
        if let Err(e) = self.0.delete() {
            eprintln!("cleanup of {} failed: {e}", self.0.path().display());
        }
    }
}

/// A helper child started in `cg`.
struct Helper {
    child: Child,
}

impl Helper {
    fn start(cg: &Cgroup, action: &str) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--exact", "helper_child", "--nocapture", "--test-threads=1", "-q"])
            .env("STRATA_CGROUP_HELPER", action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        if let Err(e) = cg.add_process(pid) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("add_process: {e}");
        }
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        Helper { child }
    }

    /// Waits for exit; returns the status and the `RESULT` lines.
    fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("helper did not finish in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let lines = out.lines().filter_map(|l| l.strip_prefix("RESULT ")).map(str::to_string).collect();
        (status, lines)
    }

    /// Waits for the first `RESULT` line (the child keeps running).
    fn first_line(&mut self) -> String {
        let mut line = String::new();
        let mut r = BufReader::new(self.child.stdout.as_mut().unwrap());
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "helper closed stdout");
            if let Some(rest) = line.strip_prefix("RESULT ") {
                return rest.trim().to_string();
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the body of the helper child (a no-op when run as an ordinary test).
#[test]
fn helper_child() {
    let Ok(action) = std::env::var("STRATA_CGROUP_HELPER") else {
        return;
    };
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let (verb, arg) = action.split_once(':').unwrap_or((&action, ""));
    match verb {
        "open" => {
            for path in arg.split(',') {
                match std::fs::File::open(path) {
                    Ok(_) => println!("RESULT {path} ok"),
                    Err(e) => println!("RESULT {path} err {}", e.raw_os_error().unwrap_or(0)),
                }
            }
        }
        "alloc" => {
            let mb: usize = arg.parse().unwrap();
            let mut keep = Vec::new();
            for i in 0..mb {
                keep.push(vec![i as u8 | 1; 1 << 20]);
            }
            println!("RESULT allocated {}", keep.len());
        }
        "fork" => {
            let n: usize = arg.parse().unwrap();
            let (mut ok, mut failed) = (0, 0);
            let mut pids = Vec::new();
            for _ in 0..n {
                // SAFETY: the child calls only async-signal-safe functions (sleep, _exit).
                match unsafe { libc::fork() } {
                    0 => {
                        // SAFETY: as above.
                        unsafe {
                            libc::sleep(30);
                            libc::_exit(0);
                        }
                    }
                    -1 => failed += 1,
                    pid => {
                        ok += 1;
                        pids.push(pid);
                    }
                }
            }
            println!("RESULT forked {ok} failed {failed}");
            for pid in pids {
                // SAFETY: plain signal and wait on our own children.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
        "spin" => {
            let end = Instant::now() + Duration::from_millis(arg.parse().unwrap());
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            println!("RESULT spun");
        }
        "sleep" => {
            println!("RESULT sleeping");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Memory a child moved into the cgroup allocated before the move stays charged where it
        // was (cgroup v2 does not migrate charges): touch some after the move, then sleep.
        "hold" => {
            let mb: usize = arg.parse().unwrap();
            let keep: Vec<Vec<u8>> = (0..mb).map(|i| vec![i as u8 | 1; 1 << 20]).collect();
            println!("RESULT holding {}", keep.len());
            std::thread::sleep(Duration::from_secs(60));
            std::hint::black_box(keep);
        }
        other => panic!("unknown helper action {other}"),
    }
    std::process::exit(0);
}

fn no_test_cgroups_left(h: &Hierarchy, name: &str) {
    let path = h.mount().join(format!("strata-test-{}-{name}", std::process::id()));
    assert!(!path.exists(), "{} left behind", path.display());
}

// ---- host and VM ----

#[test]
fn unavailable_controller_is_refused_and_nothing_is_created() {
    let Some(h) = hierarchy() else { return };
    if h.has_controller("memory") {
        eprintln!("skipped: this host offers memory (pure layout)");
        return;
    }
    let rel = format!("strata-test-{}-refuse/inner", std::process::id());
    let err = Cgroup::create(&h, Path::new(&rel), Some(&res(r#"{"memory":{"limit":1048576}}"#))).unwrap_err();
    assert!(matches!(err, Error::ControllerUnavailable { controller: "memory", .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("`memory`") && msg.contains(&h.layout().to_string()), "{msg}");
    no_test_cgroups_left(&h, "refuse");
}

#[test]
fn create_freeze_thaw_kill_delete() {
    let Some(h) = hierarchy() else { return };
    let path;
    {
        let cg = Guard::create(&h, "life", None);
        path = cg.path().to_path_buf();
        assert!(path.starts_with(h.mount()));
        let mut helper = Helper::start(&cg, "sleep");
        assert_eq!(helper.first_line(), "sleeping");
        assert_eq!(cg.pids().unwrap(), vec![helper.child.id() as i32]);
        cg.freeze().unwrap();
        assert!(cg.is_frozen().unwrap());
        let state = std::fs::read_to_string(format!("/proc/{}/stat", helper.child.id())).unwrap();
        assert!(state.contains(") S ") || state.contains(") D "), "{state}");
        cg.thaw().unwrap();
        assert!(!cg.is_frozen().unwrap());
        cg.kill_all().unwrap();
        assert!(cg.pids().unwrap().is_empty());
        let status = helper.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // A frozen cgroup is killable too.
        let mut helper = Helper::start(&cg, "sleep");
        assert_eq!(helper.first_line(), "sleeping");
        cg.freeze().unwrap();
        cg.kill_all().unwrap();
        assert_eq!(helper.child.wait().unwrap().signal(), Some(libc::SIGKILL));
        std::fs::create_dir(path.join("nested")).unwrap();
        cg.delete().unwrap();
        assert!(!path.exists());
    }
    assert!(!path.exists());
}

#[test]
fn device_rules_deny_dev_null_and_allow_dev_zero() {
    let Some(h) = hierarchy() else { return };
    let rules =
        r#"{"devices":[{"allow":true,"access":"rwm"},{"allow":false,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#;
    let cg = Guard::create(&h, "devices", Some(&res(rules)));
    assert_eq!(cg.device_programs().unwrap().len(), 1);
    let (status, lines) = Helper::start(&cg, "open:/dev/null,/dev/zero").finish(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(lines, vec![format!("/dev/null err {}", libc::EPERM), "/dev/zero ok".to_string()]);

    // Live update: the new program replaces the old one, not adds to it.
    cg.update(&res(r#"{"devices":[{"allow":true,"access":"rwm"}]}"#)).unwrap();
    assert_eq!(cg.device_programs().unwrap().len(), 1);
    let (_, lines) = Helper::start(&cg, "open:/dev/null").finish(Duration::from_secs(20));
    assert_eq!(lines, vec!["/dev/null ok".to_string()]);

    // Default deny: only what is allowed opens.
    cg.update(&res(
        r#"{"devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":5,"access":"r"}]}"#,
    ))
    .unwrap();
    let (_, lines) = Helper::start(&cg, "open:/dev/zero,/dev/null").finish(Duration::from_secs(20));
    assert_eq!(lines, vec!["/dev/zero ok".to_string(), format!("/dev/null err {}", libc::EPERM)]);
}

#[test]
fn core_stats_are_read() {
    let Some(h) = hierarchy() else { return };
    let cg = Guard::create(&h, "stats", None);
    let (status, _) = Helper::start(&cg, "spin:200").finish(Duration::from_secs(20));
    assert!(status.success());
    let s = cg.stats().unwrap();
    assert!(s.cpu.usage_usec >= 100_000, "{:?}", s.cpu);
    assert!(s.cpu.user_usec > 0);
    if Path::new("/proc/pressure").exists() {
        assert!(s.pressure.cpu.is_some());
    }
}

// ---- VM only (pure cgroup2, every controller) ----

#[test]
fn vm_memory_max_oom_kills_and_the_event_is_seen() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "oom", Some(&res(r#"{"memory":{"limit":33554432,"swap":33554432}}"#)));
    assert_eq!(std::fs::read_to_string(cg.path().join("memory.max")).unwrap().trim(), "33554432");
    let mut events = cg.memory_events().unwrap();
    let (status, lines) = Helper::start(&cg, "alloc:256").finish(Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?} {lines:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut kills = 0;
    while kills == 0 && Instant::now() < deadline {
        if let Some(u) = events.wait(Some(Duration::from_secs(2))).unwrap() {
            kills += u.new_oom_kills();
        }
    }
    assert!(kills >= 1, "no oom_kill event; last {:?}", events.last());
    let m = cg.stats().unwrap().memory.unwrap();
    assert!(m.events.oom_kill >= 1 && m.events.max >= 1, "{m:?}");
    assert!(m.peak.is_none_or(|p| p <= 33_554_432 + (1 << 20)), "{m:?}");
}

#[test]
fn vm_pids_max_refuses_forks() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "pids", Some(&res(r#"{"pids":{"limit":4}}"#)));
    let (status, lines) = Helper::start(&cg, "fork:10").finish(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // The helper itself and its threads count too, so at most 3 forks succeed.
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    let (ok, failed): (u32, u32) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert!(ok <= 3 && failed >= 7, "{lines:?}");
    assert!(cg.stats().unwrap().pids.unwrap().refused_forks >= 7);
}

#[test]
fn vm_cpu_max_throttles() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "cpu", Some(&res(r#"{"cpu":{"quota":10000,"period":100000,"shares":512}}"#)));
    let start = Instant::now();
    let (status, _) = Helper::start(&cg, "spin:600").finish(Duration::from_secs(60));
    assert!(status.success());
    let s = cg.stats().unwrap();
    assert!(s.cpu.nr_throttled > 0 && s.cpu.throttled_usec > 0, "{:?}", s.cpu);
    assert!(s.cpu.nr_periods >= s.cpu.nr_throttled);
    eprintln!("spin 600 ms wall under 10% quota took {:?}: {:?}", start.elapsed(), s.cpu);
    let weight = std::fs::read_to_string(cg.path().join("cpu.weight")).unwrap();
    assert_eq!(weight.trim(), cgroups::shares_to_weight(512).to_string());
}

fn first_block_device() -> Option<(u64, u64)> {
    std::fs::read_dir("/sys/block").ok()?.flatten().find_map(|entry| {
        let dev = std::fs::read_to_string(entry.path().join("dev")).ok()?;
        let (a, b) = dev.trim().split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    })
}

#[test]
fn vm_io_max_is_written() {
    let Some(h) = vm_hierarchy() else { return };
    let (ma, mi) = first_block_device().expect("a block device in /sys/block (the VM loads loop)");
    let r = res(&format!(
        r#"{{"blockIO":{{"weight":200,"throttleReadBpsDevice":[{{"major":{ma},"minor":{mi},"rate":1048576}}],"throttleWriteIOPSDevice":[{{"major":{ma},"minor":{mi},"rate":100}}]}}}}"#
    ));
    let cg = Guard::create(&h, "io", Some(&r));
    let text = std::fs::read_to_string(cg.path().join("io.max")).unwrap();
    let line: cgroups::values::IoMax = text.lines().next().expect("io.max line").parse().unwrap();
    assert_eq!(line.rbps, Some(Limit::Value(1_048_576)), "{text}");
    assert_eq!(line.wiops, Some(Limit::Value(100)), "{text}");
    assert_eq!(line.wbps, Some(Limit::Max), "{text}");
    let _ = cg.stats().unwrap();
}

#[test]
fn vm_live_update_changes_limits_of_a_running_process() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "update", Some(&res(r#"{"pids":{"limit":10},"memory":{"limit":67108864}}"#)));
    let mut helper = Helper::start(&cg, "hold:4");
    assert_eq!(helper.first_line(), "holding 4");
    cg.update(&res(r#"{"pids":{"limit":20},"memory":{"limit":134217728},"cpu":{"quota":50000,"period":100000}}"#))
        .unwrap();
    let read = |f: &str| std::fs::read_to_string(cg.path().join(f)).unwrap().trim().to_string();
    assert_eq!(read("pids.max"), "20");
    assert_eq!(read("memory.max"), "134217728");
    assert_eq!(read("cpu.max"), "50000 100000");
    // checkBeforeUpdate refuses a limit below current usage, and changes nothing.
    let usage = cg.stats().unwrap().memory.unwrap().current;
    assert!(usage >= 4 << 20, "the helper holding 4 MiB uses {usage} bytes");
    let err = cg.update(&res(r#"{"memory":{"limit":4096,"checkBeforeUpdate":true}}"#)).unwrap_err();
    assert!(matches!(err, Error::MemoryBelowUsage { .. }), "{err}");
    assert_eq!(read("memory.max"), "134217728");
    cg.update(&res(r#"{"unified":{"memory.high":"104857600"}}"#)).unwrap();
    assert_eq!(read("memory.high"), "104857600");
}

#[test]
fn vm_stats_are_plausible() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "vmstats", Some(&res(r#"{"memory":{"limit":268435456},"pids":{"limit":100}}"#)));
    let mut helper = Helper::start(&cg, "hold:4");
    assert_eq!(helper.first_line(), "holding 4");
    let s = cg.stats().unwrap();
    let m = s.memory.expect("memory stats");
    assert!(m.current > 0 && m.current < 268_435_456, "{m:?}");
    assert_eq!(m.max, Some(Limit::Value(268_435_456)));
    assert!(m.stat.contains_key("anon") && m.stat.contains_key("file"));
    let p = s.pids.expect("pids stats");
    assert!(p.current >= 1 && p.current < 100 && p.max == Limit::Value(100), "{p:?}");
    assert!(s.pressure.memory.is_some() && s.pressure.io.is_some() && s.pressure.cpu.is_some());
}

#[test]
fn vm_kill_and_freeze_nested_tree() {
    let Some(h) = vm_hierarchy() else { return };
    let cg = Guard::create(&h, "tree", Some(&res(r#"{"pids":{"limit":50}}"#)));
    // A container that made its own child cgroup: cgroup.kill and delete reach it.
    let inner = Cgroup::open(cg.path().join("inner"));
    std::fs::create_dir(inner.path()).unwrap();
    let mut a = Helper::start(&inner, "sleep");
    assert_eq!(a.first_line(), "sleeping");
    cg.freeze().unwrap();
    assert!(inner.is_frozen().unwrap());
    cg.thaw().unwrap();
    cg.kill_all().unwrap();
    assert!(!cg.is_populated().unwrap());
    assert_eq!(a.child.wait().unwrap().signal(), Some(libc::SIGKILL));
    cg.delete().unwrap();
    assert!(!cg.path().exists());
}
