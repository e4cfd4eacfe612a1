//! Unpacking layers: overlayfs whiteouts, metadata kept, the escape suite, and a property test that a
//! stack of layers mounted as overlay shows the tree that applying the layers one by one makes.
//! Needs root (owners, device nodes, trusted xattrs, overlay mounts), as CI runs it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use layerstore::{Error, UnpackOptions, unpack_layer};
use proptest::prelude::*;

fn unpack(tar: &[u8], root: &Path) -> layerstore::Result<layerstore::UnpackStats> {
    fs::create_dir_all(root).expect("mkdir root");
    unpack_layer(tar, root, &sha256(tar), &UnpackOptions::default())
}

#[test]
fn whiteouts_become_overlay_char_devices_and_opaque_xattrs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let tar = Layer::new().dir("etc").whiteout("etc", "gone").dir("var").opaque("var").whiteout("", "top").tar();
    unpack(&tar, &root).expect("unpack");
    for p in ["etc/gone", "top"] {
        let m = fs::symlink_metadata(root.join(p)).expect("whiteout exists");
        assert!(m.file_type().is_char_device(), "{p} is not a char device");
        assert_eq!(m.rdev(), 0, "{p} is not 0:0");
    }
    let mut buf = [0u8; 8];
    let n = rustix::fs::lgetxattr(root.join("var"), "trusted.overlay.opaque", &mut buf).expect("opaque xattr");
    assert_eq!(&buf[..n], b"y");
    assert!(!root.join("var/.wh..wh..opq").exists());
    assert!(!root.join("etc/.wh.gone").exists());
}

/// The image spec: a whiteout hides what the layers below hold, never an entry of its own layer,
/// whether that entry comes before the whiteout in the tar or after it.
#[test]
fn a_whiteout_never_hides_an_entry_of_its_own_layer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let tar = Layer::new()
        .file("before", b"kept")
        .whiteout("", "before")
        .whiteout("", "after")
        .file("after", b"also kept")
        .dir("d")
        .file("d/x", b"x")
        .whiteout("", "d")
        .whiteout("", "lower")
        .tar();
    unpack(&tar, &root).expect("unpack");
    assert_eq!(fs::read(root.join("before")).expect("before"), b"kept");
    assert_eq!(fs::read(root.join("after")).expect("after"), b"also kept");
    assert_eq!(fs::read(root.join("d/x")).expect("d/x"), b"x");
    // a name of the layers below still gets its whiteout
    assert!(fs::symlink_metadata(root.join("lower")).expect("whiteout").file_type().is_char_device());
}

/// Go's tar (Docker, buildkit) writes what does not fit the header in PAX records: a file's size
/// (from 8 GiB; the header's field is then 0), large owner ids and fractional mtimes.
#[test]
fn pax_sizes_owners_and_mtimes_are_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let data = b"pax-sized content";
    let mut b = tar::Builder::new(Vec::new());
    let size = data.len().to_string();
    b.append_pax_extensions([
        ("size", size.as_bytes()),
        ("uid", b"3000000".as_slice()),
        ("gid", b"3000001".as_slice()),
        ("mtime", b"1700000123.75".as_slice()),
    ])
    .expect("pax header");
    let mut h = tar::Header::new_ustar();
    h.set_path("big").expect("path");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o640);
    h.set_size(0); // the size is the PAX record's
    // garbage where the PAX records stand in
    h.as_old_mut().uid = *b"xxxxxxx\0";
    h.as_old_mut().mtime = *b"yyyyyyyyyyy\0";
    h.set_cksum();
    b.append(&h, data.as_slice()).expect("entry");
    let mut next = tar::Header::new_gnu();
    next.set_size(10);
    next.set_mode(0o644);
    next.set_entry_type(tar::EntryType::Regular);
    next.set_uid(0);
    next.set_gid(0);
    next.set_mtime(MTIME);
    b.append_data(&mut next, "after", b"next entry".as_slice()).expect("next");
    let tar = b.into_inner().expect("tar");
    unpack(&tar, &root).expect("unpack");
    let m = fs::metadata(root.join("big")).expect("big");
    assert_eq!(fs::read(root.join("big")).expect("read"), data);
    assert_eq!((m.uid(), m.gid(), m.mtime()), (3_000_000, 3_000_001, 1_700_000_123));
    assert_eq!(fs::read(root.join("after")).expect("after"), b"next entry", "the stream stays in step");
}

#[test]
fn owners_modes_xattrs_mtimes_hardlinks_and_devices_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let tar = Layer::new()
        .dir("bin")
        .file_with("bin/suid", b"x", 0o4755, 1000, 2000)
        .hardlink("bin/suid-link", "bin/suid")
        .file_with_xattr("bin/cap", b"y", "user.strata", b"value")
        .symlink("bin/sh", "suid")
        .chardev("null", 1, 3)
        .fifo("pipe")
        .tar();
    let stats = unpack(&tar, &root).expect("unpack");
    assert_eq!(stats.diff_id, Some(sha256(&tar)));
    let m = fs::metadata(root.join("bin/suid")).expect("suid");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 2000, 0o4755), "owner or set-id bit lost");
    assert_eq!(m.mtime() as u64, MTIME);
    assert_eq!(fs::metadata(root.join("bin/suid-link")).expect("link").ino(), m.ino());
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(root.join("bin/cap"), "user.strata", &mut buf).expect("xattr");
    assert_eq!(&buf[..n], b"value");
    assert_eq!(fs::read_link(root.join("bin/sh")).expect("symlink").to_str(), Some("suid"));
    let null = fs::symlink_metadata(root.join("null")).expect("dev");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(root.join("pipe")).expect("fifo").file_type().is_fifo());
    assert_eq!(fs::metadata(root.join("bin")).expect("dir").mtime() as u64, MTIME, "directory mtime");
}

/// Hostile layers: each must fail with [`Error::Escape`] and write nothing outside the root.
#[test]
fn escaping_layers_are_rejected_and_write_nothing_outside() {
    type Build = fn(&mut Layer) -> &mut Layer;
    let cases: Vec<(&str, Build)> = vec![
        ("dotdot file", |l| l.file("../evil", b"x")),
        ("absolute file", |l| l.file("/tmp/strata-evil-abs", b"x")),
        ("dotdot in the middle", |l| l.dir("a").file("a/../../evil", b"x")),
        ("relative symlink parent", |l| l.symlink("link", "../outside").file("link/evil", b"x")),
        ("absolute symlink parent", |l| l.symlink("link", "/").file("link/tmp/strata-evil-sym", b"x")),
        ("directory through symlink", |l| l.symlink("link", "../outside").dir("link/evildir")),
        ("hardlink out with dotdot", |l| l.hardlink("h", "../outside/secret")),
        ("hardlink to absolute path", |l| l.hardlink("h", "/etc/passwd")),
        ("hardlink through symlink", |l| l.symlink("link", "../outside").hardlink("h", "link/secret")),
        ("whiteout of dotdot", |l| l.file(".wh...", b"")),
        ("symlink chain parent", |l| l.symlink("a", "b").symlink("b", "../outside").file("a/evil", b"x")),
    ];
    for (what, build) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("secret"), "secret").expect("write");
        let tar = build(&mut Layer::new()).tar();
        let err = unpack(&tar, &tmp.path().join("root")).expect_err(what);
        assert!(matches!(err, Error::Escape { .. }), "{what}: wrong error {err}");
        let names: Vec<_> = fs::read_dir(&outside).expect("read").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec!["secret"], "{what}: wrote outside the root");
        assert_eq!(fs::read_to_string(outside.join("secret")).expect("read"), "secret", "{what}");
        assert!(!tmp.path().join("evil").exists(), "{what}");
        assert!(!Path::new("/tmp/strata-evil-abs").exists() && !Path::new("/tmp/strata-evil-sym").exists());
        eprintln!("{what}: {err}");
    }
}

#[test]
fn a_symlink_replaced_by_a_directory_is_not_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let tar = Layer::new().symlink("d", "../outside").dir("d").file("d/f", b"inside").tar();
    unpack(&tar, &tmp.path().join("root")).expect("last entry wins");
    assert!(fs::symlink_metadata(tmp.path().join("root/d")).expect("d").is_dir());
    assert_eq!(fs::read_dir(&outside).expect("read").count(), 0);
}

/// The reference: apply layers one by one to a plain directory, as `docker` applies a diff.
fn apply_reference(layers: &[LayerOps], root: &Path) {
    fs::create_dir_all(root).expect("mkdir");
    for layer in layers {
        let d = root.join("d");
        if layer.remove_d {
            let _ = fs::remove_dir_all(&d);
        }
        if layer.opaque_d && d.exists() {
            fs::remove_dir_all(&d).expect("clear d");
        }
        if layer.opaque_d || layer.ops.iter().any(|(n, _)| n.starts_with("d/")) {
            fs::create_dir_all(&d).expect("mkdir d");
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for (name, op) in &layer.ops {
            let p = root.join(name);
            match op {
                Some(content) => {
                    fs::write(&p, [*content]).expect("write");
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
                }
                None => {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct LayerOps {
    /// name -> Some(content) to write, None to white out.
    ops: BTreeMap<String, Option<u8>>,
    opaque_d: bool,
    remove_d: bool,
}

impl LayerOps {
    fn tar(&self) -> Vec<u8> {
        let mut l = Layer::new();
        if self.remove_d {
            l.whiteout("", "d");
        }
        if self.opaque_d || self.ops.keys().any(|n| n.starts_with("d/")) {
            l.dir("d");
        }
        if self.opaque_d {
            l.opaque("d");
        }
        for (name, op) in &self.ops {
            match op {
                Some(c) => l.file(name, &[*c]),
                None => match name.rsplit_once('/') {
                    Some((dir, base)) => l.whiteout(dir, base),
                    None => l.whiteout("", name),
                },
            };
        }
        l.tar()
    }
}

fn layer_ops() -> impl Strategy<Value = LayerOps> {
    const NAMES: [&str; 6] = ["a", "b", "c", "d/e", "d/f", "d/g"];
    let op = prop_oneof![Just(None), (0u8..3).prop_map(Some)];
    (proptest::collection::btree_map(proptest::sample::select(&NAMES[..]), op, 0..5), any::<bool>(), any::<bool>())
        .prop_map(|(ops, opaque_d, remove_d)| {
            let mut ops: BTreeMap<String, Option<u8>> = ops.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            // A layer that whites out `d` writes nothing inside it, as a diff never does.
            if remove_d {
                ops.retain(|k, _| !k.starts_with("d/"));
            }
            LayerOps { ops, opaque_d: opaque_d && !remove_d, remove_d }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn layer_stacks_mount_to_the_tree_of_applying_them_one_by_one(layers in proptest::collection::vec(layer_ops(), 1..5)) {
        let (tmp, store) = store();
        let mut tars = vec![(Layer::new().dir("d").file("d/base", b"base").file("a", b"base").tar(), Comp::None)];
        tars.extend(layers.iter().map(|l| (l.tar(), Comp::None)));
        Image::new(tars).write_layout(&tmp.path().join("layout"), "stack");
        store.import(&tmp.path().join("layout"), None).expect("import");
        let reference = tmp.path().join("reference");
        let mut all = vec![LayerOps {
            ops: [("d/base".to_string(), None), ("a".to_string(), None)].into(), opaque_d: false, remove_d: false,
        }];
        all.extend(layers.iter().cloned());
        // The base layer of the reference, written directly.
        fs::create_dir_all(reference.join("d")).expect("mkdir");
        fs::set_permissions(reference.join("d"), fs::Permissions::from_mode(0o755)).expect("chmod");
        for p in ["d/base", "a"] {
            fs::write(reference.join(p), "base").expect("write");
            fs::set_permissions(reference.join(p), fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        apply_reference(&layers, &reference);
        let rootfs = Rootfs::new(&store, "prop", "stack");
        prop_assert_eq!(tree(&rootfs.path), tree(&reference));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Damaged archives (random bytes written over a hostile seed) fail or unpack, but never panic and
    /// never write outside the root.
    #[test]
    fn damaged_archives_never_write_outside_or_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let mut tar = Layer::new()
            .dir("a")
            .symlink("a/up", "../../outside")
            .file("a/up/evil", b"x")
            .hardlink("h", "../outside/x")
            .file("a/b/c", b"data")
            .whiteout("a", "gone")
            .tar();
        for (at, byte) in flips {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        tar.truncate(cut.index(tar.len()) + 1);
        let _ = unpack(&tar, &tmp.path().join("root"));
        prop_assert_eq!(fs::read_dir(&outside).expect("read").count(), 0);
        let names: Vec<_> = fs::read_dir(tmp.path()).expect("read").map(|e| e.expect("entry").file_name()).collect();
        prop_assert_eq!(names.len(), 2, "{:?}", names);
    }
}
