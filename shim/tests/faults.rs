//! `kill -9` at every step of `create`, of the CLI, of stage 1 and of the container's init
//! (through the runtime's `STRATA_FAULT` hook, see `engine::fault`): afterwards `list` works,
//! `delete --force` leaves no state directory, cgroup, process or mount, and the same id can be
//! created and run again.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../layerstore/tests/registry/mod.rs"]
mod registry;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

#[test]
fn kill_9_at_every_step_of_create_leaves_nothing_delete_cannot_remove() {
    require_root();
    for (n, point) in engine::fault::CREATE_STEPS.iter().enumerate() {
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
        } else if *point == "init:gate" {
            // The init dies once it has reported ready: the create may have saved the container
            // (which is then stopped) or seen the death and cleaned up; either way delete works.
            if status.success() {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while c.state()["status"] != "stopped" && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                assert_eq!(c.state()["status"], "stopped", "{point}");
            }
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
        let mounts: Vec<String> = mounts_under(&c.dir).into_iter().chain(mounts_under(&c.root)).collect();
        assert!(mounts.is_empty(), "{point}: host mounts left: {mounts:?}");
        // The id is free again: a create and a run of the same container work.
        c.create();
        c.ok(&["start", &c.id]);
        assert_eq!(c.state()["status"], "running", "{point}");
        c.ok(&["delete", "--force", &c.id]);
        c.assert_gone(None);
    }
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

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
        Tmpfs(dir.to_path_buf())
    }

    fn remount_read_only(&self) {
        let flags = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
        nix::mount::mount(None::<&str>, &self.0, None::<&str>, flags, None::<&str>).unwrap();
    }

    /// Bytes in use.
    fn used(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The busybox layout with a second layer holding `mib` MiB of incompressible bytes: an import
/// that takes long enough to be killed half-way, and a size to fill a small store with.
fn big_layout(dir: &std::path::Path, mib: usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "big", data.as_slice()).unwrap();
    busybox_layout_with(dir, "user", Some(tar.into_inner().unwrap()));
}

/// Runs the store command `args` nine times, killed with SIGKILL 1 to 400 ms after its start,
/// and checks each time that the store recovers ([`assert_store_recovers`]). Returns how many
/// runs were killed before they finished.
fn kill_9_at_delays(state: &std::path::Path, store: &std::path::Path, args: &[&str], image: &str) -> usize {
    let mut killed_mid_way = 0;
    for delay_ms in [1, 3, 10, 30, 60, 100, 150, 250, 400] {
        let mut child = store_cmd(state, store, args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        if child.wait().unwrap().signal() == Some(9) {
            killed_mid_way += 1;
        }
        assert_store_recovers(state, store, image, &format!("{} killed after {delay_ms} ms", args[1]));
    }
    killed_mid_way
}

#[test]
fn kill_9_during_import_leaves_only_temporary_files() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (state, store, layout) = (tmp.path().join("state"), tmp.path().join("store"), tmp.path().join("layout"));
    big_layout(&layout, 24);
    let layout_arg = layout.to_str().unwrap();
    let killed = kill_9_at_delays(&state, &store, &["image", "import", layout_arg], "bb");
    assert!(killed >= 3, "only {killed} imports were killed before they finished");
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "import", layout_arg]));
    assert!(ok, "the import after the kills: {err}");
    let (ok, out, err) = output(store_cmd(&state, &store, &["run", "--rm", "bb", "sh", "-c", "wc -c </big"]));
    assert!(ok && out.trim() == (24 << 20).to_string(), "{out}{err}");
}

#[test]
fn a_full_store_gives_one_error_and_keeps_nothing_of_the_failed_import() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (state, layout, big) = (tmp.path().join("state"), tmp.path().join("layout"), tmp.path().join("big"));
    busybox_layout(&layout);
    big_layout(&big, 24);
    let fs = Tmpfs::mount(&tmp.path().join("store"), "16m");
    let store = fs.0.clone();
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "import", layout.to_str().unwrap()]));
    assert!(ok, "{err}");
    let used_before = fs.used();
    // 24 MiB more does not fit in 16.
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "import", big.to_str().unwrap()]));
    assert!(!ok, "an import larger than the store succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Nothing of it is kept: the store is as it was, and it still works.
    assert!(fs.used() <= used_before + (64 << 10), "{} bytes kept of the failed import", fs.used() - used_before);
    let (_, images, _) = output(store_cmd(&state, &store, &["image", "ls", "-q"]));
    assert_eq!(images, "bb\n");
    let (ok, out, err) = output(store_cmd(&state, &store, &["fsck"]));
    assert!(ok && out.contains(" 0 problems"), "{out}{err}");
    let (ok, out, err) = output(store_cmd(&state, &store, &["run", "--rm", "bb", "sh", "-c", "echo ok"]));
    assert!(ok && out == "ok\n", "{out}{err}");

    // A read-only store: reading works, writing is refused in one line.
    fs.remount_read_only();
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "import", big.to_str().unwrap()]));
    assert!(!ok && err.contains("Read-only file system"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (_, images, _) = output(store_cmd(&state, &store, &["image", "ls", "-q"]));
    assert_eq!(images, "bb\n");
}

/// Pushes the OCI layout at `layout` (its image `bb`) to `registry` as `name`; the reference to pull.
fn push(registry: &registry::Registry, layout: &std::path::Path, name: &str) -> String {
    registry.push(layout, "bb", name, "oci");
    format!("{}/{name}", registry.host())
}

/// After an interrupted import or pull: fsck names nothing but the temporary files of the killed
/// writer, the image is listed whole or not at all, and gc leaves a store with no problem.
fn assert_store_recovers(state: &std::path::Path, store: &std::path::Path, image: &str, when: &str) {
    let (_, out, err) = output(store_cmd(state, store, &["fsck"]));
    for line in out.lines().filter(|l| !l.starts_with("fsck:")) {
        assert!(line.starts_with("stray temp file"), "{when}: {line}\n{out}{err}");
    }
    let (listed, images, err) = output(store_cmd(state, store, &["image", "ls", "-q"]));
    let whole = format!("{image}\n");
    assert!(listed && (images.is_empty() || images == whole), "{when}: {images}{err}");
    if images == whole {
        // Stored before the kill: the next rounds start again from an empty store.
        let (ok, _, err) = output(store_cmd(state, store, &["image", "rm", image]));
        assert!(ok, "{err}");
    }
    let (ok, out, err) = output(store_cmd(state, store, &["gc"]));
    assert!(ok, "{when}: gc: {out}{err}");
    let (ok, out, err) = output(store_cmd(state, store, &["fsck"]));
    assert!(ok && out.contains(" 0 problems"), "{when}: after gc: {out}{err}");
}

#[test]
fn kill_9_during_pull_leaves_only_temporary_files() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (state, store, layout) = (tmp.path().join("state"), tmp.path().join("store"), tmp.path().join("layout"));
    big_layout(&layout, 24);
    let registry = registry::Registry::start();
    let reference = push(&registry, &layout, "big:v1");
    let killed = kill_9_at_delays(&state, &store, &["image", "pull", &reference], &reference);
    assert!(killed >= 3, "only {killed} pulls were killed before they finished");
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "pull", &reference]));
    assert!(ok, "the pull after the kills: {err}");
    let (ok, out, err) = output(store_cmd(&state, &store, &["run", "--rm", &reference, "sh", "-c", "wc -c </big"]));
    assert!(ok && out.trim() == (24 << 20).to_string(), "{out}{err}");
}

#[test]
fn a_full_store_fails_the_pull_in_one_error_and_keeps_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (state, small, big) = (tmp.path().join("state"), tmp.path().join("small"), tmp.path().join("big"));
    busybox_layout(&small);
    big_layout(&big, 24);
    let registry = registry::Registry::start();
    let (small, big) = (push(&registry, &small, "small:v1"), push(&registry, &big, "big:v1"));
    let fs = Tmpfs::mount(&tmp.path().join("store"), "16m");
    let store = fs.0.clone();
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "pull", &small]));
    assert!(ok, "{err}");
    let used_before = fs.used();
    let (ok, _, err) = output(store_cmd(&state, &store, &["image", "pull", &big]));
    assert!(!ok, "a pull larger than the store succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(fs.used() <= used_before + (64 << 10), "{} bytes kept of the failed pull", fs.used() - used_before);
    let (_, images, _) = output(store_cmd(&state, &store, &["image", "ls", "-q"]));
    assert_eq!(images, format!("{small}\n"));
    let (ok, out, err) = output(store_cmd(&state, &store, &["fsck"]));
    assert!(ok && out.contains(" 0 problems"), "{out}{err}");
    let (ok, out, err) = output(store_cmd(&state, &store, &["run", "--rm", &small, "sh", "-c", "echo ok"]));
    assert!(ok && out == "ok\n", "{out}{err}");
}

#[test]
fn a_full_state_root_fails_the_create_and_leaves_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("run"), "64k");
    // Fill it: the state root is a directory on a full /run.
    std::fs::create_dir(fs.0.join("strata")).unwrap();
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    drop(filler);
    let mut c = TestContainer::new("full", "exec sleep 1000");
    c.root = fs.0.join("strata");
    c.write_config();
    let out = c.strata(&["create", &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a create on a full state root succeeded");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!c.root.join(&c.id).exists(), "state left");
    assert!(!c.cgroup_dir().exists(), "cgroup left");
    assert_eq!(std::fs::read_dir(&c.root).unwrap().count(), 0, "temporary state left: {err}");
    // With room again, the same create works.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    c.create();
    c.ok(&["delete", "--force", &c.id]);
    c.assert_gone(None);
}
