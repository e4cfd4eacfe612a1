//! The systemd cgroup driver against a real systemd: `vmtest/systemd.sh` boots the VM with
//! systemd as PID 1 and runs these tests there (`--include-ignored`); the host has no systemd
//! running, so they are ignored on it. What they check is seen from outside: the scope unit as
//! `systemctl show` reports it, the cgroup files, the container's own view.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `systemctl show UNIT -p P...` as `(P, value)` pairs.
fn show(unit: &str, props: &[&str]) -> Vec<(String, String)> {
    let mut cmd = Command::new("systemctl");
    cmd.args(["show", unit]);
    for p in props {
        cmd.args(["-p", p]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "systemctl show {unit}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

fn prop(unit: &str, name: &str) -> String {
    show(unit, &[name]).into_iter().find(|(k, _)| k == name).map(|(_, v)| v).unwrap_or_default()
}

/// The unit is gone from systemd (a collected transient unit is not found). A stop is over once
/// the unit is inactive (what strata waits for, as runc does); systemd collects it from its next
/// turn on, which on a loaded guest may come a little later: up to 10 s are given.
fn assert_unit_gone(unit: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state = show(unit, &["LoadState", "ActiveState"]);
        let get = |name: &str| state.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        if get("LoadState") == Some("not-found") {
            return;
        }
        assert!(
            get("ActiveState") == Some("inactive") && std::time::Instant::now() < deadline,
            "{unit} is still known to systemd: {state:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

/// `strata --systemd-cgroup create`: whether it succeeded, and its stderr (through a file: the
/// container inherits stdio, and a pipe would stay open as long as it runs).
fn create_systemd(c: &TestContainer) -> (bool, String) {
    c.write_config();
    let err_path = c.dir.join("create.stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let status = c
        .strata(&["--systemd-cgroup", "create", &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .unwrap();
    (status.success(), std::fs::read_to_string(&err_path).unwrap_or_default())
}

#[test]
#[ignore = "needs systemd as PID 1: run by vmtest/systemd.sh"]
fn a_container_is_a_delegated_transient_scope_with_its_resources() {
    let mut c = TestContainer::new("sd", "cat /proc/self/cgroup; sleep 100");
    let unit = format!("strata-{}.scope", c.id);
    c.config["linux"]["cgroupsPath"] = json!(format!("stratatest.slice:strata:{}", c.id));
    c.config["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 40},
        "cpu": {"quota": 50000, "period": 100000, "shares": 2048}
    });
    let (ok, err) = create_systemd(&c);
    assert!(ok, "create: {err}");

    let dir = PathBuf::from("/sys/fs/cgroup/stratatest.slice").join(&unit);
    let state = c.state();
    assert_eq!(state["status"], "created");
    let pid = state["pid"].as_i64().unwrap();
    assert!(read(&dir.join("cgroup.procs")).lines().any(|l| l == pid.to_string()), "init {pid} not in {dir:?}");

    let props = show(&unit, &["ActiveState", "Slice", "Delegate", "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec"]);
    let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or("");
    assert_eq!(get("ActiveState"), "active", "{props:?}");
    assert_eq!(get("Slice"), "stratatest.slice");
    assert_eq!(get("Delegate"), "yes");
    assert_eq!(get("MemoryMax"), "67108864");
    assert_eq!(get("TasksMax"), "40");
    assert_eq!(get("CPUQuotaPerSecUSec"), "500ms");
    assert_eq!(read(&dir.join("memory.max")), "67108864");
    assert_eq!(read(&dir.join("pids.max")), "40");
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("cpu.weight")), cgroups::shares_to_weight(2048).to_string());
    assert_eq!(prop(&unit, "CPUWeight"), cgroups::shares_to_weight(2048).to_string());

    // update changes the files and systemd's own view (a daemon-reload keeps the new values)
    c.ok(&["update", "--memory", "134217728", "--pids-limit", "60", &c.id]);
    assert_eq!(read(&dir.join("memory.max")), "134217728");
    assert_eq!(prop(&unit, "MemoryMax"), "134217728");
    assert_eq!(prop(&unit, "TasksMax"), "60");
    let reload = Command::new("systemctl").arg("daemon-reload").status().unwrap();
    assert!(reload.success());
    assert_eq!(read(&dir.join("memory.max")), "134217728", "daemon-reload reset the limit");

    c.ok(&["start", &c.id]);
    // exec joins the scope too
    let out = c.ok(&["exec", &c.id, "cat", "/proc/self/cgroup"]);
    let own_ns = c.config["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "cgroup");
    let expected = if own_ns { "0::/".to_string() } else { format!("0::/stratatest.slice/{unit}") };
    assert_eq!(out.trim(), expected);

    c.ok(&["delete", "--force", &c.id]);
    assert_unit_gone(&unit);
    assert!(!dir.exists(), "{dir:?} left behind");
    assert!(!c.root.join(&c.id).exists(), "state left behind");
}

#[test]
#[ignore = "needs systemd as PID 1: run by vmtest/systemd.sh"]
fn without_a_cgroups_path_the_scope_is_strata_id_in_system_slice() {
    let c = TestContainer::new("sd-default", "exit 7");
    c.write_config();
    let out = c.strata(&["--systemd-cgroup", "run", &c.id]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = format!("strata-{}.scope", c.id);
    assert_unit_gone(&unit);
    assert!(!PathBuf::from("/sys/fs/cgroup/system.slice").join(&unit).exists());

    let c = TestContainer::new("sd-default-2", "sleep 100");
    let (ok, err) = create_systemd(&c);
    assert!(ok, "create: {err}");
    let unit = format!("strata-{}.scope", c.id);
    assert_eq!(prop(&unit, "Slice"), "system.slice");
    assert!(PathBuf::from("/sys/fs/cgroup/system.slice").join(&unit).join("cgroup.procs").exists());
    c.ok(&["delete", "--force", &c.id]);
    assert_unit_gone(&unit);
}

#[test]
#[ignore = "needs systemd as PID 1: run by vmtest/systemd.sh"]
fn a_create_that_fails_after_the_scope_started_stops_it() {
    let mut c = TestContainer::new("sd-fail", "true");
    c.config["linux"]["cgroupsPath"] = json!(format!("stratatest.slice:strata:{}", c.id));
    // the init fails on this mount, after systemd has made the scope
    c.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/mnt/x", "type": "bind", "source": "/nonexistent/strata-test", "options": ["bind"]
    }));
    let (ok, err) = create_systemd(&c);
    assert!(!ok);
    assert!(err.contains("/nonexistent/strata-test"), "{err}");
    let unit = format!("strata-{}.scope", c.id);
    assert_unit_gone(&unit);
    assert!(!PathBuf::from("/sys/fs/cgroup/stratatest.slice").join(&unit).exists());
    assert!(!c.root.join(&c.id).exists(), "state left behind");

    // the name is free again: the same container now starts
    c.config["mounts"].as_array_mut().unwrap().pop();
    let (ok, err) = create_systemd(&c);
    assert!(ok, "create: {err}");
    assert_eq!(prop(&unit, "ActiveState"), "active");
    c.ok(&["delete", "--force", &c.id]);
    assert_unit_gone(&unit);
}

#[test]
#[ignore = "needs systemd as PID 1: run by vmtest/systemd.sh"]
fn a_cgroupfs_path_is_refused_by_the_systemd_driver_and_the_reverse() {
    let mut c = TestContainer::new("sd-paths", "true");
    c.config["linux"]["cgroupsPath"] = json!("/strata-test/x");
    let (ok, err) = create_systemd(&c);
    assert!(!ok);
    assert!(err.contains("slice:prefix:name"), "{err}");
    c.config["linux"]["cgroupsPath"] = json!("stratatest.slice:strata:x");
    c.write_config();
    let out = c.strata(&["create", &c.id]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--systemd-cgroup"));
    assert!(!c.root.join(&c.id).exists(), "state left behind");
}
