//! Tests of [`Cgroup`] against a temporary directory laid out like cgroupfs.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::{Cgroup, Error, Hierarchy, Layout};

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

/// A fake cgroup2 root offering `controllers`, with a cgroup `rel` holding `files` (all empty).
fn fake(controllers: &str, rel: &str, files: &[&str]) -> (tempfile::TempDir, Hierarchy, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
    fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
    let mut dir = root.path().to_path_buf();
    for comp in Path::new(rel).components() {
        dir.push(comp);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
    }
    for f in files {
        fs::write(dir.join(f), "").unwrap();
    }
    let h = Hierarchy::at(root.path().to_path_buf(), Layout::Pure).unwrap();
    (root, h, dir)
}

fn read(dir: &Path, f: &str) -> String {
    fs::read_to_string(dir.join(f)).unwrap()
}

#[test]
fn refuses_missing_controller_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
    let h = Hierarchy::at(dir.path().to_path_buf(), Layout::Hybrid).unwrap();
    for (json, controller) in [
        (r#"{"memory":{"limit":1048576}}"#, "`memory`"),
        (r#"{"pids":{"limit":10}}"#, "`pids`"),
        (r#"{"cpu":{"cpus":"0"}}"#, "`cpuset`"),
        (r#"{"unified":{"io.weight":"default 100"}}"#, "`io`"),
    ] {
        let err = Cgroup::create(&h, Path::new("strata/x"), Some(&res(json))).unwrap_err().to_string();
        assert!(err.contains(controller) && err.contains("hybrid"), "{err}");
        assert!(!dir.path().join("strata").exists());
    }
}

#[test]
fn create_writes_every_file_and_enables_controllers_in_ancestors() {
    let files =
        ["memory.max", "memory.low", "memory.swap.max", "cpu.weight", "cpu.max", "pids.max", "io.weight", "io.max"];
    let (_root, h, dir) = fake("cpu memory pids io", "pod/ctr", &files);
    let r = res(
        r#"{"memory":{"limit":1048576,"reservation":4096,"swap":2097152},"cpu":{"shares":1024,"quota":20000,"period":100000},
        "pids":{"limit":20},"blockIO":{"weight":500,"throttleWriteBpsDevice":[{"major":8,"minor":0,"rate":1048576}]}}"#,
    );
    let cg = Cgroup::create(&h, Path::new("pod/ctr"), Some(&r)).unwrap();
    assert_eq!(cg.path(), dir);
    assert_eq!(read(&dir, "memory.max"), "1048576");
    assert_eq!(read(&dir, "memory.low"), "4096");
    assert_eq!(read(&dir, "memory.swap.max"), "1048576");
    assert_eq!(read(&dir, "cpu.weight"), "100");
    assert_eq!(read(&dir, "cpu.max"), "20000 100000");
    assert_eq!(read(&dir, "pids.max"), "20");
    assert_eq!(read(&dir, "io.weight"), "default 4950");
    assert_eq!(read(&dir, "io.max"), "8:0 wbps=1048576");
    // Controllers are enabled in the root and in `pod`, never in the leaf.
    assert!(read(h.mount(), "cgroup.subtree_control").starts_with('+'));
    assert!(read(&dir.join(".."), "cgroup.subtree_control").starts_with('+'));
    assert_eq!(read(&dir, "cgroup.subtree_control"), "");
}

#[test]
fn failed_apply_removes_the_directories_it_made() {
    let (root, h, _) = fake("memory", "", &[]);
    let err = Cgroup::create(&h, Path::new("a"), Some(&res(r#"{"memory":{"limit":4096}}"#))).unwrap_err();
    assert!(err.to_string().contains("memory.max"), "{err}");
    assert!(!root.path().join("a").exists());
}

#[test]
fn create_refuses_non_normal_components() {
    let (_root, h, _) = fake("", "", &[]);
    assert!(matches!(Cgroup::create(&h, Path::new("a/../b"), None), Err(Error::InvalidPath(_))));
    assert!(matches!(Cgroup::create(&h, Path::new("/abs"), None), Err(Error::InvalidPath(_))));
}

#[test]
fn check_before_update_refuses_a_limit_below_usage() {
    let (_root, _h, dir) = fake("memory", "c", &["memory.max"]);
    fs::write(dir.join("memory.current"), "8192\n").unwrap();
    let cg = Cgroup::open(dir.clone());
    let err = cg.update(&res(r#"{"memory":{"limit":4096,"checkBeforeUpdate":true}}"#)).unwrap_err();
    assert!(matches!(err, Error::MemoryBelowUsage { usage: 8192, .. }), "{err}");
    assert_eq!(read(&dir, "memory.max"), "");
    cg.update(&res(r#"{"memory":{"limit":16384,"checkBeforeUpdate":true}}"#)).unwrap();
    assert_eq!(read(&dir, "memory.max"), "16384");
    cg.update(&res(r#"{"memory":{"limit":4096}}"#)).unwrap();
    assert_eq!(read(&dir, "memory.max"), "4096");
}

#[test]
fn bfq_weight_is_preferred_when_present() {
    let (_root, _h, dir) = fake("io", "c", &["io.weight", "io.bfq.weight"]);
    Cgroup::open(dir.clone()).apply(&res(r#"{"blockIO":{"weight":300}}"#)).unwrap();
    assert_eq!(read(&dir, "io.bfq.weight"), "300");
    assert_eq!(read(&dir, "io.weight"), "");
}

#[test]
fn unified_traversal_is_refused_before_any_write() {
    let (_root, h, _) = fake("memory", "", &[]);
    let r = res(r#"{"unified":{"../../etc/passwd":"x"}}"#);
    assert!(matches!(h.check_resources(&r), Err(Error::InvalidUnifiedKey { .. })));
}

#[test]
fn delete_removes_nested_cgroups_and_tolerates_absence() {
    let (_root, _h, dir) = fake("", "c", &[]);
    fs::remove_file(dir.join("cgroup.subtree_control")).unwrap();
    fs::create_dir_all(dir.join("inner/deeper")).unwrap();
    let cg = Cgroup::open(dir.clone());
    cg.delete().unwrap();
    assert!(!dir.exists());
    cg.delete().unwrap();
}

#[test]
fn freeze_state_reads_cgroup_events() {
    let (_root, _h, dir) = fake("", "c", &["cgroup.freeze"]);
    fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    let cg = Cgroup::open(dir);
    assert!(cg.is_frozen().unwrap());
    assert!(cg.is_populated().unwrap());
    cg.freeze().unwrap();
}

/// A cgroup removed under the caller (as systemd removes a scope's once its last process has
/// gone) is empty and has nothing left to kill; one whose files are missing while it is there is
/// still an error.
#[test]
fn a_cgroup_removed_meanwhile_is_empty_and_killed() {
    let (_root, _h, dir) = fake("", "gone.scope", &[]);
    let cg = Cgroup::open(dir.clone());
    assert!(cg.is_populated().is_err(), "a cgroup without cgroup.events or cgroup.procs");
    fs::remove_file(dir.join("cgroup.subtree_control")).unwrap();
    fs::remove_dir(&dir).unwrap();
    assert!(!cg.is_populated().unwrap());
    cg.kill_all_nowait().unwrap();
}
