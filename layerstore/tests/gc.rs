//! Reference-counted gc, fsck, and crash safety of ingest. Needs root (overlay mounts).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use layerstore::{Digest, FsckProblem, Store};

fn two_images(tmp: &std::path::Path, store: &Store) {
    let base = busybox_layer();
    Image::new(vec![(base.clone(), Comp::Gzip), (Layer::new().file("a", b"a").tar(), Comp::Gzip)])
        .write_layout(&tmp.join("a"), "a");
    Image::new(vec![(base, Comp::Gzip), (Layer::new().file("b", b"b").tar(), Comp::Gzip)])
        .write_layout(&tmp.join("b"), "b");
    store.import(&tmp.join("a"), None).expect("import a");
    store.import(&tmp.join("b"), None).expect("import b");
}

#[test]
fn gc_never_deletes_what_a_container_uses() {
    let (tmp, store) = store();
    two_images(tmp.path(), &store);
    let a = store.image("a").expect("a");
    let rootfs = Rootfs::new(&store, "uses-a", "a");
    store.remove_image("a").expect("rm a");
    store.remove_image("b").expect("rm b");
    let report = store.gc().expect("gc");
    eprintln!("gc with a container: {report:?}");
    for c in &a.chain {
        assert!(store.snapshot_path(c).exists(), "gc removed snapshot {c} under a container");
    }
    assert!(rootfs.path.join("bin/busybox").exists());
    assert_eq!(fs::read_to_string(rootfs.path.join("a")).expect("read"), "a");
    assert!(store.fsck(false).expect("fsck").is_clean());
    drop(rootfs);
    let report = store.gc().expect("gc");
    eprintln!("gc after the container: {report:?}");
    assert!(contents(&store).is_empty(), "left after gc: {:?}", contents(&store));
}

#[test]
fn removing_one_image_keeps_the_shared_base_of_another() {
    let (tmp, store) = store();
    two_images(tmp.path(), &store);
    store.remove_image("a").expect("rm a");
    let report = store.gc().expect("gc");
    // a's own layer: its blob, config, manifest and snapshot.
    assert_eq!((report.blobs, report.snapshots), (3, 1), "{report:?}");
    let rootfs = Rootfs::new(&store, "uses-b", "b");
    assert!(rootfs.path.join("bin/busybox").exists() && rootfs.path.join("b").exists());
    assert!(store.image("a").is_err());
}

#[test]
fn fsck_detects_and_repairs_a_corrupted_blob() {
    let (tmp, store) = store();
    two_images(tmp.path(), &store);
    let layer = store.image("a").expect("a").layers[1].clone();
    let path = store.blobs().path(&layer);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(&path, b"bit rot").expect("corrupt");
    let report = store.fsck(false).expect("fsck");
    eprintln!("fsck: {:?}", report.problems);
    assert!(matches!(&report.problems[..], [FsckProblem::CorruptBlob { digest, .. }] if *digest == layer));
    let report = store.fsck(true).expect("fsck --repair");
    assert_eq!(report.repaired, 1);
    // The image now lacks that blob: reported until it is imported again.
    let report = store.fsck(false).expect("fsck");
    assert!(matches!(&report.problems[..], [FsckProblem::Missing { .. }]), "{:?}", report.problems);
    store.import(&tmp.path().join("a"), None).expect("re-import restores the blob");
    assert!(store.fsck(false).expect("fsck").is_clean());
}

/// A deduplicated file changed behind the store's back: fsck names the pool file and each
/// snapshot file, and --repair unpacks every affected snapshot again from its kept layer blob,
/// after which the store is clean and the files are the layers' again. A snapshot whose blob was
/// not kept is reported as not repaired, with the reason.
#[test]
fn fsck_detects_and_repairs_a_changed_deduplicated_file() {
    let (tmp, store) = store();
    two_images(tmp.path(), &store);
    let image = store.image("a").expect("a");
    let snap = store.snapshot_path(&image.chain[0]).join("fs/bin/busybox");
    let original = fs::read(&snap).expect("busybox");
    fs::write(&snap, b"changed").expect("write");
    let report = store.fsck(false).expect("fsck");
    assert!(report.problems.iter().any(|p| matches!(p, FsckProblem::CorruptPoolFile { .. })), "{:?}", report.problems);
    assert!(
        report.problems.iter().any(|p| matches!(p, FsckProblem::SnapshotFile { path, .. } if path == "bin/busybox")),
        "{:?}",
        report.problems
    );
    let report = store.fsck(true).expect("fsck --repair");
    assert!(report.unrepaired.is_empty(), "{:?}", report.unrepaired);
    assert!(report.repaired >= 2, "pool file and snapshot: {}", report.repaired);
    assert_eq!(fs::read(&snap).expect("busybox"), original, "the snapshot holds the layer's file again");
    let after = store.fsck(false).expect("fsck");
    assert!(after.is_clean(), "{:?}", after.problems);

    // an image imported without its layer blobs cannot be repaired that way, and fsck says why
    let (tmp2, lean) = common::store();
    Image::new(vec![(busybox_layer(), Comp::Gzip)]).write_layout(&tmp2.path().join("l"), "lean");
    lean.import_with(&tmp2.path().join("l"), None, layerstore::ImportOptions { drop_layer_blobs: true })
        .expect("import without blobs");
    let chain = lean.image("lean").expect("lean").chain[0].clone();
    fs::write(lean.snapshot_path(&chain).join("fs/etc/group"), b"changed").expect("write");
    let report = lean.fsck(true).expect("fsck --repair");
    assert!(report.unrepaired.iter().any(|u| u.contains("not kept")), "{:?}", report.unrepaired);
    let after = lean.fsck(false).expect("fsck");
    assert!(
        after.problems.iter().any(|p| p.to_string().contains("/etc/group")),
        "still reported: {:?}",
        after.problems
    );
    // as the message says: imported again keeping its blobs, the snapshot is repaired from them
    lean.import(&tmp2.path().join("l"), None).expect("import keeping the blobs");
    let report = lean.fsck(true).expect("fsck --repair");
    assert!(report.unrepaired.is_empty(), "{:?}", report.unrepaired);
    let after = lean.fsck(false).expect("fsck");
    assert!(after.is_clean(), "{:?}", after.problems);
    assert_eq!(
        fs::read(lean.snapshot_path(&chain).join("fs/etc/group")).expect("group"),
        b"root:x:0:\nnogroup:x:65534:\n"
    );
}

/// A reader that never ends, so the child is killed mid-ingest.
struct Endless;

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(5));
        buf.fill(7);
        Ok(buf.len())
    }
}

#[test]
fn kill_9_mid_ingest_leaves_no_visible_blob() {
    if let Ok(root) = std::env::var("STRATA_TEST_INGEST_CHILD") {
        let store = Store::open(std::path::Path::new(&root)).expect("open");
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().expect("digest");
        let _ = store.blobs().ingest(Endless, Some(&digest), "endless");
        unreachable!("the endless ingest returned");
    }
    let (_tmp, store) = store();
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "kill_9_mid_ingest_leaves_no_visible_blob", "--nocapture"])
        .env("STRATA_TEST_INGEST_CHILD", store.root())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    let ingest = store.root().join("ingest");
    let is_writing = || {
        fs::read_dir(&ingest).expect("ingest").any(|e| {
            let e = e.expect("entry");
            e.file_name().to_string_lossy().starts_with("blob-") && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    while !is_writing() {
        assert!(started.elapsed() < Duration::from_secs(30), "the child never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(store.blobs().list().expect("list").is_empty(), "a partial blob became visible");
    let report = store.fsck(false).expect("fsck");
    assert!(matches!(&report.problems[..], [FsckProblem::Stray { .. }]), "{:?}", report.problems);
    store.fsck(true).expect("repair");
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn kill_9_mid_unpack_leaves_no_visible_image_or_snapshot() {
    if let Ok(dir) = std::env::var("STRATA_TEST_IMPORT_CHILD") {
        let dir = std::path::Path::new(&dir);
        let store = Store::open(&dir.join("store")).expect("open");
        let _ = store.import(&dir.join("layout"), None);
        // Reached only if the parent was too slow to kill us: it then fails its own checks.
        std::process::exit(0);
    }
    let (tmp, store) = store();
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    Image::new(vec![(Layer::new().file("a", &big).file("b", &big).tar(), Comp::Gzip)])
        .write_layout(&tmp.path().join("layout"), "big");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "kill_9_mid_unpack_leaves_no_visible_image_or_snapshot", "--nocapture"])
        .env("STRATA_TEST_IMPORT_CHILD", tmp.path())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    let tmp_dir = store.root().join("tmp");
    let unpacking = || {
        fs::read_dir(&tmp_dir).expect("tmp").any(|e| {
            let p = e.expect("entry").path();
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("snap-"))
                && fs::metadata(p.join("fs/a")).is_ok_and(|m| m.len() > 0)
        })
    };
    while !unpacking() {
        assert!(started.elapsed() < Duration::from_secs(60), "the child never started unpacking");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(store.images().expect("images").is_empty(), "a half-imported image is visible");
    assert_eq!(fs::read_dir(store.root().join("snapshots")).expect("snapshots").count(), 0);
    let report = store.fsck(false).expect("fsck");
    assert!(report.problems.iter().all(|p| matches!(p, FsckProblem::Stray { .. })), "{:?}", report.problems);
    store.fsck(true).expect("repair");
    store.gc().expect("gc");
    assert!(contents(&store).is_empty(), "{:?}", contents(&store));
    store.import(&tmp.path().join("layout"), None).expect("import after the crash");
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn dropped_layer_blobs_free_the_disk_run_the_image_and_export_rebuilt_layers() {
    use layerstore::ImportOptions;
    let (tmp, store) = store();
    let base = busybox_layer();
    let own = Layer::new().file("a", b"a").tar();
    Image::new(vec![(base.clone(), Comp::Gzip), (own, Comp::Gzip)]).write_layout(&tmp.path().join("a"), "a");
    Image::new(vec![(base, Comp::Gzip), (Layer::new().file("b", b"b").tar(), Comp::Gzip)])
        .write_layout(&tmp.path().join("b"), "b");
    // b keeps its blobs; a drops its own: the shared base blob stays for b.
    store.import(&tmp.path().join("b"), None).expect("import b");
    let dropped = ImportOptions { drop_layer_blobs: true };
    let a = store.import_with(&tmp.path().join("a"), None, dropped).expect("import a").remove(0);
    assert!(a.layer_blobs_dropped);
    let b = store.image("b").expect("b");
    assert!(store.blobs().contains(&a.layers[0]), "the base blob b keeps was dropped");
    assert!(!store.blobs().contains(&a.layers[1]), "a's own layer blob is still there");
    assert!(store.blobs().contains(&a.manifest) && store.blobs().contains(&a.config));
    assert!(store.fsck(false).expect("fsck").is_clean());
    // It runs from its snapshots.
    let rootfs = Rootfs::new(&store, "uses-a", "a");
    assert_eq!(fs::read_to_string(rootfs.path.join("a")).expect("read"), "a");
    drop(rootfs);
    // Export rebuilds a's own layer from its snapshot's tar split: the config and diff IDs are the
    // original ones (a fresh store unpacks the export and checks every diff ID), the kept base
    // blob keeps its digest.
    let out = tmp.path().join("export-a");
    store.export("a", &out).expect("export of a rebuilt layer");
    assert!(out.join("blobs/sha256").join(a.layers[0].hex()).exists(), "the kept base blob");
    let (_tmp3, other) = common::store();
    let again = other.import(&out, None).expect("import the export").remove(0);
    assert_eq!((&again.config, &again.diff_ids, &again.chain), (&a.config, &a.diff_ids, &a.chain));
    assert_eq!(again.layers[0], a.layers[0]);
    assert!(other.fsck(false).expect("fsck").is_clean());
    // A tar split that no longer rebuilds the layer: export fails naming it and leaves no index,
    // fsck reports it.
    let split = store.snapshot_path(&a.chain[1]).join("tar-split.zst");
    let good = fs::read(&split).expect("split");
    fs::write(&split, b"not zstd").expect("damage the split");
    let out2 = tmp.path().join("export-a2");
    let e = store.export("a", &out2).expect_err("export with a damaged split");
    assert!(e.to_string().contains("tar-split.zst"), "{e}");
    assert!(!out2.exists(), "the export's new directory was left");
    let report = store.fsck(false).expect("fsck");
    assert!(report.problems.iter().any(|p| p.to_string().contains("tar-split.zst")), "{:?}", report.problems);
    fs::write(&split, good).expect("restore the split");
    // gc keeps what the images need; removing b drops the base blob too, not a's snapshots.
    store.gc().expect("gc");
    store.remove_image("b").expect("rm b");
    store.gc().expect("gc");
    assert!(!store.blobs().contains(&b.layers[0]));
    assert!(a.chain.iter().all(|c| store.snapshot_path(c).exists()));
    assert!(store.fsck(false).expect("fsck").is_clean());
    // Imported again with its blobs, it exports with the original digests.
    store.import(&tmp.path().join("a"), None).expect("import a again");
    assert!(!store.image("a").expect("a").layer_blobs_dropped);
    store.export("a", &out).expect("export");
    assert!(out.join("blobs/sha256").join(a.layers[1].hex()).exists());
    assert!(store.fsck(false).expect("fsck").is_clean());
}

/// An interrupted pull's `.partial` download waits a day for the next pull to resume it; then
/// `gc` collects it.
#[test]
fn gc_collects_partial_downloads_older_than_a_day() {
    let (_tmp, store) = store();
    let ingest = store.root().join("ingest");
    let (old, fresh) = (
        ingest.join(format!("pull-sha256-{}.partial", "a".repeat(64))),
        ingest.join(format!("pull-sha256-{}.partial", "b".repeat(64))),
    );
    fs::write(&old, b"abandoned").expect("old");
    fs::write(&fresh, b"resumable").expect("fresh");
    let status = Command::new("touch").args(["-d", "2 days ago"]).arg(&old).status().expect("touch");
    assert!(status.success());
    let report = store.gc().expect("gc");
    assert_eq!(report.temps, 1, "{report:?}");
    assert!(!old.exists(), "the two-day-old download stayed");
    assert!(fresh.exists(), "the fresh download went");
}
