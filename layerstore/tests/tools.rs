//! Images made by umoci and skopeo (Debian's `umoci` and `skopeo` packages, which CI installs) import,
//! and an image strata exports is readable by skopeo. Needs root (overlay mounts, owners).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn run(cmd: &str, args: &[&str], cwd: &Path) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}; CI installs Debian's umoci and skopeo packages"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds `oci/` with umoci: a busybox layer, then a layer that deletes /etc/motd (a whiteout).
fn umoci_image(dir: &Path) {
    run("umoci", &["init", "--layout", "oci"], dir);
    run("umoci", &["new", "--image", "oci:bb"], dir);
    run("umoci", &["unpack", "--image", "oci:bb", "bundle"], dir);
    let rootfs = dir.join("bundle/rootfs");
    fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
    fs::write(rootfs.join("etc/motd"), "hello").expect("write");
    run("umoci", &["repack", "--image", "oci:bb", "bundle"], dir);
    fs::remove_dir_all(dir.join("bundle")).expect("rm bundle");
    run("umoci", &["unpack", "--image", "oci:bb", "bundle"], dir);
    fs::remove_file(dir.join("bundle/rootfs/etc/motd")).expect("rm motd");
    run("umoci", &["repack", "--image", "oci:bb", "bundle"], dir);
    run("umoci", &["config", "--image", "oci:bb", "--config.cmd", "/bin/sh"], dir);
}

#[test]
fn images_made_by_umoci_import_with_their_whiteouts() {
    let (tmp, store) = store();
    umoci_image(tmp.path());
    let records = store.import(&tmp.path().join("oci"), None).expect("import umoci layout");
    assert_eq!(records[0].name, "bb");
    assert!(records[0].layers.len() >= 2);
    let rootfs = Rootfs::new(&store, "umoci", "bb");
    assert!(rootfs.path.join("bin/busybox").exists());
    assert!(!rootfs.path.join("etc/motd").exists(), "umoci's whiteout of /etc/motd was not applied");
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn images_made_by_skopeo_import_as_oci_archive_docker_archive_and_zstd() {
    let (tmp, store) = store();
    let dir = tmp.path();
    umoci_image(dir);
    let skopeo = |src: &str, dst: &str, extra: &[&str]| {
        let mut args = vec!["--insecure-policy", "copy"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[src, dst]);
        run("skopeo", &args, dir);
    };
    skopeo("oci:oci:bb", "oci-archive:bb-oci.tar:bb", &[]);
    skopeo("oci:oci:bb", "docker-archive:bb-docker.tar:example.com/bb:v1", &[]);
    skopeo("oci:oci:bb", "oci:zstd:bbz", &["--dest-compress-format", "zstd"]);
    let from_oci = store.import(&dir.join("bb-oci.tar"), Some("from-oci-archive")).expect("oci-archive");
    let from_docker = store.import(&dir.join("bb-docker.tar"), None).expect("docker-archive");
    let from_zstd = store.import(&dir.join("zstd"), None).expect("zstd layout");
    assert_eq!(from_docker[0].name, "example.com/bb:v1");
    // Three encodings of one image: the same uncompressed layers, so the same snapshots.
    assert_eq!(from_oci[0].chain, from_docker[0].chain);
    assert_eq!(from_oci[0].chain, from_zstd[0].chain);
    for name in ["from-oci-archive", "example.com/bb:v1", "bbz"] {
        let rootfs = Rootfs::new(&store, &format!("c-{}", name.replace(['/', ':'], "-")), name);
        assert!(rootfs.path.join("bin/busybox").exists(), "{name}");
    }
}

#[test]
fn an_exported_image_is_readable_by_skopeo() {
    let (tmp, store) = store();
    let dir = tmp.path();
    umoci_image(dir);
    store.import(&dir.join("oci"), None).expect("import");
    store.export("bb", &dir.join("exported")).expect("export");
    let out = Command::new("skopeo").args(["inspect", "oci:exported:bb"]).current_dir(dir).output().expect("skopeo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = Command::new("skopeo").args(["inspect", "oci:oci:bb"]).current_dir(dir).output().expect("skopeo");
    let digest = |o: &[u8]| serde_json::from_slice::<serde_json::Value>(o).expect("json")["Digest"].clone();
    assert_eq!(digest(&out.stdout), digest(&original.stdout), "export changed the manifest digest");
    run("skopeo", &["--insecure-policy", "copy", "oci:exported:bb", "dir:copied"], dir);
}
