//! `strata image import|ls|inspect|du|export|run|rm`, `strata gc` and `strata fsck` through the binary,
//! on an OCI layout built here from the busybox root file system. Needs root, as CI runs it.

// The shared fixtures unwrap, as the other suites of this crate allow.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn strata(state: &Path, store: &Path, args: &[&str]) -> (bool, String, String) {
    output(store_cmd(state, store, args))
}

#[test]
fn image_import_run_du_export_rm_gc_fsck() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, store) = (tmp.path().join("state"), tmp.path().join("store"));
    busybox_layout(&tmp.path().join("layout"));
    let layout = tmp.path().join("layout");
    let ok = |args: &[&str]| {
        let (success, out, err) = strata(&state, &store, args);
        assert!(success, "strata {args:?}: {out}\n{err}");
        out
    };
    assert!(ok(&["image", "import", layout.to_str().expect("utf8")]).starts_with("bb\t"));
    assert_eq!(ok(&["image", "ls", "-q"]), "bb\n");
    assert!(ok(&["image", "inspect", "bb"]).contains("GREETING=hello"));
    // The image's CMD, ENV, WORKDIR and USER.
    assert_eq!(ok(&["image", "run", "--rm", "--name", "img-run-1", "bb"]), "hello from /tmp as 1000\n");
    // A command and an environment variable from the command line.
    assert_eq!(ok(&["image", "run", "-e", "GREETING=bye", "bb", "sh", "-c", "echo $GREETING"]), "bye\n");
    // The top-level `run IMAGE` form, docker style, from a directory without config.json.
    assert_eq!(ok(&["run", "--rm", "-e", "GREETING=top", "bb", "sh", "-c", "echo $GREETING"]), "top\n");
    if std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").contains(" - cgroup ") {
        // Hybrid host: a memory limit cannot be enforced and is refused before anything exists.
        let (success, _, err) = strata(&state, &store, &["run", "--memory", "64m", "bb", "true"]);
        assert!(!success);
        assert!(err.contains("`memory`") && err.contains("hybrid"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let (success, _, _) = strata(&state, &store, &["image", "run", "bb", "sh", "-c", "exit 3"]);
    assert!(!success, "the exit status was lost");
    assert_eq!(std::fs::read_dir(store.join("containers")).expect("dir").count(), 0, "a root file system was left");
    assert!(ok(&["image", "du"]).contains("saved by file dedup"));
    ok(&["image", "export", "bb", tmp.path().join("exported").to_str().expect("utf8")]);
    assert!(ok(&["fsck"]).contains("0 problems"));
    // An `image run` whose strata was killed: its claim and mount stay until `strata gc` sees that the
    // engine no longer knows the container (after a minute's grace).
    let owner = format!("strata state root {}", state.display());
    layerstore::Store::open(&store).unwrap().create_rootfs("orphan", "bb", &owner).unwrap();
    let claim = store.join("containers/orphan/ref.json");
    assert!(Command::new("touch").arg("-d").arg("2 minutes ago").arg(&claim).status().unwrap().success());
    assert!(ok(&["gc"]).contains("removed the root file system of exited container orphan"));
    assert_eq!(std::fs::read_dir(store.join("containers")).expect("dir").count(), 0);
    ok(&["image", "rm", "bb"]);
    assert_eq!(ok(&["image", "ls", "-q"]), "");
    assert!(ok(&["gc"]).starts_with("gc: removed 0 blobs"));
    let (success, _, err) = strata(&state, &store, &["image", "run", "bb"]);
    assert!(!success && err.contains("not found"), "{err}");
}

/// By default an import keeps no layer blob (du shows the tar splits instead) and export rebuilds
/// the layers: the image imported elsewhere has the same config. `--keep-blobs` keeps them, and
/// export then writes the original manifest. A damaged tar split is one clear error that names it.
#[test]
fn import_is_lean_by_default_and_export_rebuilds_the_layers() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, store) = (tmp.path().join("state"), tmp.path().join("store"));
    let layout = tmp.path().join("layout");
    busybox_layout(&layout);
    let layout_arg = layout.to_str().expect("utf8");
    let blob_count = |store: &std::path::Path| std::fs::read_dir(store.join("blobs/sha256")).expect("blobs").count();
    let (success, out, err) = strata(&state, &store, &["image", "import", layout_arg]);
    assert!(success, "{out}\n{err}");
    assert_eq!(blob_count(&store), 2, "only the manifest and the config stay");
    let (success, out, err) = strata(&state, &store, &["image", "run", "--rm", "bb", "sh", "-c", "echo $GREETING"]);
    assert!(success && out == "hello\n", "{out}\n{err}");
    let (success, out, _) = strata(&state, &store, &["image", "du", "--format", "json"]);
    let du: serde_json::Value = serde_json::from_str(&out).expect("du json");
    assert!(success && du["splitBytes"].as_u64() > Some(0) && du["blobBytes"].as_u64() < Some(4096), "{out}");
    let dest = tmp.path().join("exported");
    let (success, out, err) = strata(&state, &store, &["image", "export", "bb", dest.to_str().expect("utf8")]);
    assert!(success, "{out}\n{err}");
    let inspect = |store: &std::path::Path, image: &str| -> serde_json::Value {
        let (success, out, err) = strata(&state, store, &["image", "inspect", image]);
        assert!(success, "{out}\n{err}");
        serde_json::from_str(&out).expect("inspect json")
    };
    let original = inspect(&store, "bb");
    let kept = tmp.path().join("kept");
    let (success, out, err) = strata(&state, &kept, &["image", "import", "--keep-blobs", dest.to_str().expect("utf8")]);
    assert!(success, "{out}\n{err}");
    let again = inspect(&kept, "bb");
    assert_eq!(again["image"]["config"], original["image"]["config"], "{again}");
    assert_eq!(again["image"]["chain"], original["image"]["chain"], "{again}");
    assert!(blob_count(&kept) > 2, "--keep-blobs kept no layer blob");
    // Kept blobs export as they came: the same manifest digest.
    let dest2 = tmp.path().join("exported-again");
    let (success, _, err) = strata(&state, &kept, &["image", "export", "bb", dest2.to_str().expect("utf8")]);
    assert!(success, "{err}");
    let index = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index")).expect("index json")
    };
    assert_eq!(index(&dest2)["manifests"][0]["digest"], index(&dest)["manifests"][0]["digest"]);
    // A damaged split: export fails in one line naming it and writes nothing; fsck reports it.
    let split = std::fs::read_dir(store.join("snapshots"))
        .expect("snapshots")
        .map(|e| e.expect("snapshot").path().join("tar-split.zst"))
        .find(|p| p.exists())
        .expect("a snapshot with a tar split");
    std::fs::write(&split, b"damaged").expect("damage");
    let dest3 = tmp.path().join("exported-damaged");
    let (success, _, err) = strata(&state, &store, &["image", "export", "bb", dest3.to_str().expect("utf8")]);
    assert!(!success && err.contains("tar-split.zst"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!dest3.exists(), "a failed export left its directory");
    let (success, out, _) = strata(&state, &store, &["fsck"]);
    assert!(!success && out.contains("tar-split.zst"), "{out}");
}

/// An image's `/etc/passwd` is read inside its root: a link to a host file finds the image's own
/// (here, none), and a FIFO or a device is refused at once instead of hanging `strata run`.
#[test]
fn image_user_lookup_stays_inside_the_image() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    let host_passwd = tmp.path().join("host-passwd");
    std::fs::write(&host_passwd, "hostuser:x:4242:4242::/:/bin/sh\n").expect("host file");
    // a one-entry layer holding `etc/passwd` of `kind` (a symlink to `target`, or a FIFO)
    let layer = |kind: tar::EntryType, target: Option<&str>| {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        match target {
            Some(target) => t.append_link(&mut h, "etc/passwd", target).expect("symlink"),
            None => t.append_data(&mut h, "etc/passwd", std::io::empty()).expect("entry"),
        }
        t.into_inner().expect("tar")
    };
    let link = |target: &str| layer(tar::EntryType::Symlink, Some(target));
    let fifo = layer(tar::EntryType::Fifo, None);
    for (case, layer, expected) in [
        ("host-link", link(host_passwd.to_str().expect("utf8")), "is not in /etc/passwd"),
        ("dev-zero", link("/dev/zero"), "is not in /etc/passwd"),
        ("fifo", fifo, "not a regular file"),
    ] {
        let dir = tmp.path().join(case);
        let (state, store) = (dir.join("state"), dir.join("store"));
        busybox_layout_with(&dir.join("layout"), "hostuser", Some(layer));
        let (ok, out, err) = strata(&state, &store, &["image", "import", dir.join("layout").to_str().expect("utf8")]);
        assert!(ok, "{out}{err}");
        let started = std::time::Instant::now();
        let out = Command::new("timeout")
            .arg("60")
            .arg(strata_bin())
            .arg("--root")
            .arg(&state)
            .args(["image", "--store"])
            .arg(&store)
            .args(["run", "bb", "id", "-u"])
            .stdin(Stdio::null())
            .output()
            .expect("run strata");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: ran as {}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains(expected), "{case}: {err}");
        assert!(!err.contains("4242"), "{case}: the host's file was read: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{case}: took {:?}", started.elapsed());
        assert_eq!(
            std::fs::read_dir(store.join("containers")).expect("dir").count(),
            0,
            "{case}: a root file system was left"
        );
    }
}
