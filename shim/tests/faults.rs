//! `kill -9` at every step of `create`, of the CLI, of stage 1 and of the container's init
//! (through the runtime's `STRATA_FAULT` hook, see `engine::fault`): afterwards `list` works,
//! `delete --force` leaves no state directory, cgroup, process or mount, and the same id can be
//! created and run again.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

const POINTS: [&str; 9] = [
    "cli:cgroup",
    "cli:forked",
    "cli:namespaces",
    "cli:init-ready",
    "cli:devices",
    "cli:saved",
    "stage1:namespaces",
    "init:rootfs",
    "init:gate",
];

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
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

#[test]
fn kill_9_at_every_step_of_create_leaves_nothing_delete_cannot_remove() {
    require_root();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    for (n, point) in POINTS.iter().enumerate() {
        // The init's command line (from stage 1 on) names the container's runtime binary;
        // its program, once it runs, names this marker.
        let marker = format!("31{}{n}", std::process::id());
        let c = TestContainer::new("fault", &format!("exec sleep {marker}"));
        c.write_config();
        let err = std::fs::File::create(c.dir.join("create.stderr")).unwrap();
        let status = c
            .strata(&["create", &c.id])
            .env("STRATA_FAULT", point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        let stderr = std::fs::read_to_string(c.dir.join("create.stderr")).unwrap();
        if point.starts_with("cli:") {
            assert_eq!(status.signal(), Some(9), "{point}: the create was not killed: {status:?} {stderr}");
        } else {
            // Stage 1 or the init died: the create says so and cleans up after itself.
            assert!(!status.success(), "{point}: the create succeeded");
            assert!(!c.root.join(&c.id).exists(), "{point}: a failed create left its state: {stderr}");
        }
        // `list` reads the state root whatever was left in it.
        let list = c.strata(&["list", "--format", "json"]).output().unwrap();
        assert!(list.status.success(), "{point}: list: {}", String::from_utf8_lossy(&list.stderr));
        // `delete --force` removes what is there; nothing there is "does not exist".
        let delete = c.strata(&["delete", "--force", &c.id]).output().unwrap();
        let delete_err = String::from_utf8_lossy(&delete.stderr);
        assert!(
            delete.status.success() || delete_err.contains("does not exist"),
            "{point}: delete --force: {delete_err}"
        );
        assert!(!c.root.join(&c.id).exists(), "{point}: the state directory is left");
        assert!(!c.cgroup_dir().exists(), "{point}: the cgroup {} is left", c.cgroup_dir().display());
        let left: Vec<String> =
            processes_with(&marker).into_iter().chain(processes_with(&format!("init {}", c.id))).collect();
        assert!(left.is_empty(), "{point}: processes left: {left:?}");
        // The id is free again: a create and a run of the same container work.
        c.create();
        c.ok(&["start", &c.id]);
        assert_eq!(c.state()["status"], "running", "{point}");
        c.ok(&["delete", "--force", &c.id]);
        c.assert_gone(None);
    }
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(mounts_before, mounts_after, "host mounts were left");
}

#[test]
fn a_create_under_way_is_not_taken_for_abandoned() {
    require_root();
    // A state directory whose record names a live creator (this test process) is a create under
    // way: another create of the id fails, and delete leaves it alone.
    let c = TestContainer::new("busy", "exec sleep 1000");
    c.write_config();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat.rsplit_once(") ").unwrap().1.split(' ').nth(19).unwrap().parse().unwrap();
    let dir = c.root.join(&c.id);
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({"pid": std::process::id(), "pid_start_time": start,
        "cgroup_path": c.cgroup_dir(), "systemd_unit": null});
    std::fs::write(dir.join("creating.json"), record.to_string()).unwrap();
    let second = c.strata(&["create", &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("exists"), "{}", String::from_utf8_lossy(&second.stderr));
    let _ = c.strata(&["delete", "--force", &c.id]).output().unwrap();
    assert!(dir.join("creating.json").exists(), "delete removed a create under way");
    // Once that creator is gone (a pid start time that no longer matches), delete removes it.
    let record = serde_json::json!({"pid": std::process::id(), "pid_start_time": start + 1,
        "cgroup_path": c.cgroup_dir(), "systemd_unit": null});
    std::fs::write(dir.join("creating.json"), record.to_string()).unwrap();
    assert!(c.strata(&["delete", &c.id]).status().unwrap().success());
    assert!(!dir.exists());
}
