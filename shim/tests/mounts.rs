//! Mounts as runc 1.3 makes them, seen from inside real containers: recursive options,
//! nosymfollow, tmpcopyup, relative bind sources, idmapped mounts, propagation to and from the
//! host, and options strata would drop refused by name.
//!
//! Tests that change "host" mounts first move their thread into a private mount namespace
//! (`private_mounts`), from which strata then runs: nothing they mount is seen outside, and it
//! all goes away with the test, pass or fail.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nix::mount::{MsFlags, mount};
use serde_json::json;
use std::path::Path;

/// Moves the calling thread (and the processes it starts) into a private mount namespace.
fn private_mounts() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
}

fn tmpfs(at: &Path) {
    mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).unwrap();
}

/// Detaches a mount of the test's namespace when dropped, so that its directory can be
/// removed after it, pass or fail.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn bind(c: &mut TestContainer, source: &str, dest: &str, options: serde_json::Value) {
    c.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": dest, "type": "bind", "source": source, "options": options}));
}

#[test]
fn recursive_read_only_reaches_every_mount_below() {
    private_mounts();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    tmpfs(&src.path().join("sub"));
    // Unmounted before the directory goes, or the directory stays behind in /tmp.
    let _sub = Unmount(src.path().join("sub"));
    let script = "touch /m/top 2>/dev/null && echo top-rw || echo top-ro; touch /m/sub/x 2>/dev/null && echo sub-rw || echo sub-ro";
    // `ro` makes the bind mount read-only, not the mounts below it.
    let mut c = TestContainer::new("ro", script);
    bind(&mut c, src.path().to_str().unwrap(), "/m", json!(["rbind", "ro"]));
    assert_eq!(c.run_ok(), "top-ro\nsub-rw\n");
    // `rro` makes them all read-only (mount_setattr with AT_RECURSIVE).
    let mut c = TestContainer::new("rro", script);
    bind(&mut c, src.path().to_str().unwrap(), "/m", json!(["rbind", "rro"]));
    assert_eq!(c.run_ok(), "top-ro\nsub-ro\n");
    let mut c = TestContainer::new("rnoexec", "grep ' /m/sub ' /proc/self/mounts | cut -d' ' -f4");
    bind(&mut c, src.path().to_str().unwrap(), "/m", json!(["rbind", "rnoexec", "rnosuid", "rnodev"]));
    let opts = c.run_ok();
    for o in ["noexec", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x.trim() == o), "{o} missing on the submount: {opts}");
    }
}

#[test]
fn nosymfollow_relative_sources_and_tmpcopyup() {
    let mut c = TestContainer::new(
        "nosym",
        "cat /m/link 2>/dev/null || echo refused; cat /rel/data; cat /etc/passwd | head -1; grep ' /etc ' /proc/self/mounts | cut -d' ' -f3",
    );
    std::fs::create_dir(c.dir.join("data")).unwrap();
    std::fs::write(c.dir.join("data/data"), "relative\n").unwrap();
    std::fs::write(c.dir.join("data/target"), "followed\n").unwrap();
    std::os::unix::fs::symlink("target", c.dir.join("data/link")).unwrap();
    let dir = c.dir.join("data").display().to_string();
    bind(&mut c, &dir, "/m", json!(["rbind", "nosymfollow"]));
    // Relative to the bundle, as the runtime-spec says.
    bind(&mut c, "data", "/rel", json!(["rbind", "ro"]));
    c.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "mode=755"]}));
    assert_eq!(c.run_ok(), "refused\nrelative\nroot:x:0:0:root:/root:/bin/sh\ntmpfs\n");
}

#[test]
fn options_that_would_be_dropped_are_refused_by_name() {
    let mut c = TestContainer::new("badopt", "true");
    bind(&mut c, "/tmp", "/m", json!(["rbind", "nosiud"]));
    let out = c.run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounts[") && err.contains("nosiud"), "{err}");
    c.assert_gone(None);
    // A file system's own options go to it; one it does not take is named.
    let mut c = TestContainer::new("badfsopt", "true");
    c.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "sizee=2m"]}),
    );
    let out = c.run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/scratch") && err.contains("sizee=2m"), "{err}");
    c.assert_gone(None);
}

#[test]
fn an_idmapped_mount_shows_files_with_mapped_owners() {
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(src.path().join("rootfile"), "x").unwrap();
    std::os::unix::fs::chown(src.path(), Some(0), Some(0)).unwrap();
    let mut c = TestContainer::new(
        "idmap",
        "stat -c '%u:%g' /m/rootfile; touch /m/made-inside; stat -c '%u:%g' /m/made-inside",
    );
    // On-disk 0 appears as 1000: the container's user 1000 owns the files and writes as 0.
    c.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    c.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/m", "type": "bind", "source": src.path(), "options": ["bind", "idmap"],
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
        "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}));
    assert_eq!(c.run_ok(), "1000:1000\n1000:1000\n");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(src.path().join("made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0), "written through the mapping, owned by 0 on disk");
    // Mappings are needed: the mount's own, or the container's user namespace.
    let mut c = TestContainer::new("idmapnone", "true");
    bind(&mut c, src.path().to_str().unwrap(), "/m", json!(["bind", "idmap"]));
    let out = c.run();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mounts[7].options"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_rshared_bind_passes_mounts_made_inside_back_to_the_host() {
    private_mounts();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().to_str().unwrap().to_string();
    mount(Some(dir.as_str()), dir.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    mount(None::<&str>, dir.as_str(), None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    std::fs::create_dir(shared.path().join("inner")).unwrap();
    let mut c = TestContainer::new("bidir", "mount -t tmpfs -o size=1m made-inside /m/inner && echo mounted");
    c.config["linux"]["rootfsPropagation"] = json!("rshared");
    c.config["process"]["capabilities"] =
        json!({"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"], "permitted": ["CAP_SYS_ADMIN"]});
    c.config["linux"].as_object_mut().unwrap().remove("seccomp");
    bind(&mut c, &dir, "/m", json!(["rbind", "rshared"]));
    assert_eq!(c.run_ok(), "mounted\n");
    let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let inner = format!("{dir}/inner");
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(inner.as_str())),
        "the container's mount did not reach the host"
    );
    let _ = nix::mount::umount2(inner.as_str(), nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(dir.as_str(), nix::mount::MntFlags::MNT_DETACH);
}

#[test]
fn a_prestart_hook_mounting_into_the_container_is_seen_inside() {
    // The hook enters the container's mount namespace (the pid is in the state on its stdin)
    // and mounts a tmpfs where the container's /hooked is, as device plugins' hooks do.
    let mut c = TestContainer::new("hookmount", "grep ' /home/user ' /proc/self/mounts | cut -d' ' -f1,3");
    let rootfs = busybox_rootfs().display().to_string();
    let script = format!(
        "pid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p'); nsenter --mount=/proc/$pid/ns/mnt mount -t tmpfs from-hook {rootfs}/home/user"
    );
    c.config["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]});
    assert_eq!(c.run_ok(), "from-hook tmpfs\n");
}

#[test]
fn a_read_only_path_is_only_made_read_only() {
    private_mounts();
    let src = tempfile::tempdir().unwrap();
    executable(&src.path().join("prog"));
    std::fs::create_dir(src.path().join("sub")).unwrap();
    tmpfs(&src.path().join("sub"));
    let _sub = Unmount(src.path().join("sub"));
    executable(&src.path().join("sub/prog"));
    // As runc: read-only, the mounts below too, and nothing else of the mount's flags changed
    // (a directory of programs stays executable). The read-only copy is stacked on the bind,
    // so the last line of each mount point is the one the container sees.
    let script = "/m/prog; /m/sub/prog; touch /m/x 2>/dev/null && echo top-rw || echo top-ro; \
                  touch /m/sub/x 2>/dev/null && echo sub-rw || echo sub-ro; \
                  for m in /m /m/sub; do grep \" $m \" /proc/self/mounts | tail -1 | cut -d' ' -f4; done";
    let mut c = TestContainer::new("ropaths", script);
    bind(&mut c, src.path().to_str().unwrap(), "/m", json!(["rbind"]));
    c.config["linux"]["readonlyPaths"].as_array_mut().unwrap().push(json!("/m"));
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..4], ["ran", "ran", "top-ro", "sub-ro"], "{out}");
    assert_eq!(lines.len(), 6, "{out}");
    for opts in &lines[4..] {
        let opts: Vec<&str> = opts.split(',').collect();
        assert!(opts.contains(&"ro"), "not read-only: {opts:?}");
        for added in ["nosuid", "nodev", "noexec"] {
            assert!(!opts.contains(&added), "{added} added: {opts:?}");
        }
    }
}

#[test]
fn idmap_recursion_follows_rbind_for_the_tree_and_ridmap_for_the_mapping() {
    private_mounts();
    let mapped = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
    let idmapped = |name: &str, source: &Path, options: serde_json::Value| {
        let script =
            "for f in /m/rootfile /m/pts/ptmx /m/tmp/file; do stat -c %u:%g $f 2>/dev/null || echo missing; done";
        let mut c = TestContainer::new(name, script);
        c.config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/m", "type": "bind", "source": source, "options": options,
            "uidMappings": mapped, "gidMappings": mapped}));
        c
    };
    // Files owned by 0 on disk, which the mapping shows as 1000; a tmpfs below, which can be
    // idmapped, and a devpts below, which cannot.
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(src.path().join("rootfile"), "x").unwrap();
    std::fs::create_dir(src.path().join("tmp")).unwrap();
    std::fs::create_dir(src.path().join("pts")).unwrap();
    tmpfs(&src.path().join("tmp"));
    let _tmp = Unmount(src.path().join("tmp"));
    std::fs::write(src.path().join("tmp/file"), "x").unwrap();
    let pts = src.path().join("pts");
    mount(Some("devpts"), &pts, Some("devpts"), MsFlags::empty(), Some("newinstance,ptmxmode=0666")).unwrap();
    let pts_mount = Unmount(pts);
    // rbind + idmap: the submounts come along, the mapping is the top mount's only (as runc),
    // so a submount that cannot be idmapped does not stop it.
    let c = idmapped("rbindidmap", src.path(), json!(["rbind", "idmap"]));
    assert_eq!(c.run_ok(), "1000:1000\n0:0\n0:0\n");
    // rbind + ridmap: every mount of the tree is idmapped, and the devpts cannot be.
    let c = idmapped("rbindridmapfail", src.path(), json!(["rbind", "ridmap"]));
    let out = c.run();
    assert!(!out.status.success(), "a devpts was idmapped");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounts[7]") && err.contains("idmapping"), "{err}");
    c.assert_gone(None);
    // Without the devpts, rbind + ridmap maps the tmpfs too.
    drop(pts_mount);
    let c = idmapped("rbindridmap", src.path(), json!(["rbind", "ridmap"]));
    assert_eq!(c.run_ok(), "1000:1000\nmissing\n1000:1000\n");
    // bind + ridmap: only the top mount is cloned; the tmpfs stays behind.
    let c = idmapped("bindridmap", src.path(), json!(["bind", "ridmap"]));
    assert_eq!(c.run_ok(), "1000:1000\nmissing\nmissing\n");
}
