//! Importing images in every supported form, layer and file dedup, export, and the overlay root file
//! system. Needs root (owners, device nodes, overlay mounts), as CI runs it.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use common::*;
use layerstore::{Digest, Store};
use serde_json::json;

fn app_layer(name: &str, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i * 31 + name.len()) as u8).collect();
    Layer::new().dir("app").file(&format!("app/{name}"), &data).file("etc/app.conf", name.as_bytes()).tar()
}

/// The store and its pool are private to root: another user can neither list the pool (whose
/// names tell every setuid binary of every image) nor reach an image's files; an existing store
/// with looser modes is tightened on open. A container still reads its files as any user (the
/// runtime mounts its root file system).
#[test]
fn the_store_and_its_pool_are_private_to_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (tmp, store) = store();
    // the temp directory itself is 0700: open it so that only the store's modes stand in the way
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let layout = tmp.path().join("layout");
    Image::new(vec![(busybox_layer(), Comp::Gzip)]).write_layout(&layout, "busybox:latest");
    store.import(&layout, None).expect("import");
    for dir in [store.root().to_path_buf(), store.root().join("pool")] {
        assert_eq!(fs::metadata(&dir).expect("stat").mode() & 0o777, 0o700, "{}", dir.display());
    }
    let as_nobody = |path: &std::path::Path| {
        Command::new("ls").arg(path).uid(65534).gid(65534).output().expect("ls as nobody").status.success()
    };
    assert!(Command::new("ls").arg(store.root().join("pool")).status().expect("ls").success());
    assert!(!as_nobody(&store.root().join("pool")), "nobody lists the pool");
    assert!(!as_nobody(&store.root().join("snapshots")), "nobody reaches the snapshots");
    assert!(as_nobody(tmp.path()), "the test's own directory is open (the check above means something)");

    fs::set_permissions(store.root(), fs::Permissions::from_mode(0o755)).expect("loosen");
    fs::set_permissions(store.root().join("pool"), fs::Permissions::from_mode(0o755)).expect("loosen");
    let reopened = Store::open(store.root()).expect("reopen");
    assert_eq!(fs::metadata(reopened.root()).expect("stat").mode() & 0o777, 0o700);
    assert_eq!(fs::metadata(reopened.root().join("pool")).expect("stat").mode() & 0o777, 0o700);

    // a container's processes still read the image's files as another user
    let rootfs = Rootfs::new(&store, "c-private", "busybox:latest");
    let out = Command::new("chroot")
        .arg("--userspec=65534:65534")
        .arg(&rootfs.path)
        .args(["/bin/sh", "-c", "cat /etc/group"])
        .output()
        .expect("chroot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nogroup"));
}

/// A config may give sha512 diff IDs (the image spec allows them): the layer is checked against
/// the digest of that algorithm.
#[test]
fn sha512_diff_ids_are_checked_with_sha512() {
    let (tmp, store) = store();
    let tar = Layer::new().file("hello", b"sha512").tar();
    let mut image = Image::new(vec![(tar.clone(), Comp::Gzip)]);
    image.diff_ids = Some(vec![Digest::of(layerstore::Algorithm::Sha512, &tar)]);
    image.write_layout(&tmp.path().join("layout"), "sha512:latest");
    store.import(&tmp.path().join("layout"), None).expect("import with a sha512 diff ID");
    let rootfs = Rootfs::new(&store, "c512", "sha512:latest");
    assert_eq!(fs::read(rootfs.path.join("hello")).expect("hello"), b"sha512");
    drop(rootfs);

    let mut wrong = Image::new(vec![(tar.clone(), Comp::Gzip)]);
    wrong.diff_ids = Some(vec![Digest::of(layerstore::Algorithm::Sha512, b"other")]);
    wrong.write_layout(&tmp.path().join("wrong"), "wrong:latest");
    let err = store.import(&tmp.path().join("wrong"), None).expect_err("a wrong sha512 diff ID");
    assert!(err.to_string().contains("sha512:"), "{err}");
}

/// The identity model: identical files of different images are one pooled inode on disk, but a
/// container never writes to it: overlayfs copies a file up before its content or metadata
/// changes, so a write in one container is seen neither by another container nor by any image.
/// fsck then checks every pooled file of every snapshot (content and metadata) and finds a change
/// made behind the store's back.
#[test]
fn a_write_to_a_deduplicated_file_stays_in_its_container_and_fsck_checks_snapshots() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, store) = store();
    for (name, extra) in [("one", "1"), ("two", "2")] {
        let app = Layer::new().file("shared", b"the same bytes").file("own", extra.as_bytes()).tar();
        Image::new(vec![(busybox_layer(), Comp::Gzip), (app, Comp::Gzip)])
            .write_layout(&tmp.path().join(name), &format!("{name}:latest"));
        store.import(&tmp.path().join(name), None).expect("import");
    }
    let (one, two) = (store.image("one:latest").expect("one"), store.image("two:latest").expect("two"));
    let snap = |r: &layerstore::ImageRecord| store.snapshot_path(r.chain.last().expect("chain")).join("fs/shared");
    let (ino_one, ino_two) =
        (fs::metadata(snap(&one)).expect("one").ino(), fs::metadata(snap(&two)).expect("two").ino());
    assert_eq!(ino_one, ino_two, "the file is deduplicated (one inode in both snapshots)");

    let a = Rootfs::new(&store, "iso-a", "one:latest");
    let b = Rootfs::new(&store, "iso-b", "two:latest");
    let c = Rootfs::new(&store, "iso-c", "one:latest");
    fs::write(a.path.join("shared"), "written in a").expect("write in a");
    fs::set_permissions(a.path.join("shared"), fs::Permissions::from_mode(0o600)).expect("chmod in a");
    fs::write(a.path.join("bin/sh"), "clobbered").expect("write busybox in a");
    for other in [&b, &c] {
        assert_eq!(fs::read(other.path.join("shared")).expect("read"), b"the same bytes");
        assert_eq!(fs::metadata(other.path.join("shared")).expect("stat").mode() & 0o777, 0o644);
        assert_ne!(fs::read(other.path.join("bin/sh")).expect("busybox"), b"clobbered");
    }
    assert_eq!(fs::read(snap(&one)).expect("snapshot"), b"the same bytes");
    assert_eq!(fs::metadata(snap(&one)).expect("snapshot").ino(), ino_one, "the snapshot still links the pool");
    drop((a, b, c));
    let report = store.fsck(false).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.files_checked > 2, "fsck checked {} snapshot files", report.files_checked);

    // behind the store's back: the pooled inode changed (both images see it), a mode changed
    fs::write(snap(&one), "tampered").expect("tamper");
    let own = store.snapshot_path(one.chain.last().expect("chain")).join("fs/own");
    fs::set_permissions(&own, fs::Permissions::from_mode(0o4755)).expect("chmod");
    let report = store.fsck(false).expect("fsck");
    let shown: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(shown.iter().any(|p| p.contains("pool file") && p.contains("content hash")), "{shown:?}");
    assert_eq!(shown.iter().filter(|p| p.contains("/shared: its content")).count(), 2, "{shown:?}");
    assert!(shown.iter().any(|p| p.contains("/own: its mode, owner or mtime changed")), "{shown:?}");
}

#[test]
fn oci_layout_with_gzip_busybox_imports_and_runs_in_overlay() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let image = Image::new(vec![(busybox_layer(), Comp::Gzip), (app_layer("hello", 1000), Comp::Gzip)]);
    let w = image.write_layout(&layout, "busybox:latest");
    let started = Instant::now();
    let records = store.import(&layout, None).expect("import");
    eprintln!("import+unpack of busybox layout: {:?}", started.elapsed());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].name, "busybox:latest");
    assert_eq!(records[0].layers, w.layers);
    assert_eq!(store.image("busybox").expect("by short name").manifest, w.manifest);
    let config = store.image_config("busybox:latest").expect("config");
    let cmd = config.config().as_ref().and_then(|c| c.cmd().clone()).unwrap_or_default();
    assert_eq!(cmd, vec!["/bin/sh".to_string()]);

    let rootfs = Rootfs::new(&store, "c1", "busybox:latest");
    let out = Command::new("chroot")
        .arg(&rootfs.path)
        .args(["/bin/sh", "-c", "cat /app/hello | wc -c; cat /etc/app.conf"])
        .output()
        .expect("chroot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // busybox wc may pad; the content is what matters.
    assert!(String::from_utf8_lossy(&out.stdout).contains("1000"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    // Writes go to the container's upper directory, never into a snapshot.
    fs::write(rootfs.path.join("etc/passwd"), "changed").expect("write through overlay");
    let lower = store.snapshot_path(&records[0].chain[0]).join("fs/etc/passwd");
    assert!(fs::read_to_string(lower).expect("lower").starts_with("root:"));
    drop(rootfs);
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn oci_archive_with_zstd_and_uncompressed_layers_imports() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let image = Image::new(vec![(busybox_layer(), Comp::Zstd), (app_layer("z", 10), Comp::None)]);
    image.write_layout(&layout, "mixed:1");
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout, &archive);
    let records = store.import(&archive, Some("renamed:2")).expect("import archive");
    assert_eq!(records[0].name, "renamed:2");
    let top = store.snapshot_path(&records[0].chain[1]).join("fs/app/z");
    assert_eq!(fs::metadata(top).expect("unpacked").len(), 10);
    // The staging copy of the archive is gone.
    assert_eq!(fs::read_dir(store.root().join("tmp")).expect("tmp").count(), 0);
}

#[test]
fn docker_save_archive_imports_with_repo_tag() {
    let (tmp, store) = store();
    let dir = tmp.path().join("save");
    fs::create_dir_all(dir.join("l1")).expect("mkdir");
    fs::create_dir_all(dir.join("l2")).expect("mkdir");
    let l1 = busybox_layer();
    let l2 = app_layer("d", 100);
    fs::write(dir.join("l1/layer.tar"), &l1).expect("write");
    fs::write(dir.join("l2/layer.tar"), &l2).expect("write");
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&l1).to_string(), sha256(&l2).to_string()]},
    }))
    .expect("json");
    let config_name = format!("{}.json", sha256(&config).hex());
    fs::write(dir.join(&config_name), &config).expect("write");
    let manifest =
        json!([{"Config": config_name, "RepoTags": ["saved:v1"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]);
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).expect("json")).expect("write");
    let archive = tmp.path().join("save.tar");
    tar_dir(&dir, &archive);
    let records = store.import(&archive, None).expect("import docker save");
    assert_eq!(records[0].name, "saved:v1");
    assert_eq!(records[0].diff_ids, vec![sha256(&l1), sha256(&l2)]);
    assert!(store.snapshot_path(&records[0].chain[1]).join("fs/app/d").exists());
}

#[test]
fn index_with_several_platforms_picks_linux_host_arch() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let native = Image::new(vec![(app_layer("native", 5), Comp::Gzip)]).blobs(None);
    let other = Image::new(vec![(app_layer("other", 6), Comp::Gzip)]).blobs(None);
    let other_arch = if layerstore::host_arch() == "arm64" { "amd64" } else { "arm64" };
    fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    for (d, data) in native.blobs.iter().chain(&other.blobs) {
        fs::write(layout.join("blobs/sha256").join(d.hex()), data).expect("write");
    }
    let desc = |w: &Written, arch: &str| {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": w.manifest.to_string(),
               "size": w.manifest_bytes.len(), "platform": {"os": "linux", "architecture": arch}})
    };
    // the host's architecture in a variant no CPU runs comes first: it is passed over
    let mut unrunnable = desc(&other, layerstore::host_arch());
    unrunnable["platform"]["variant"] = "v99".into();
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
        desc(&other, other_arch), unrunnable, desc(&native, layerstore::host_arch())]}))
    .expect("json");
    let index_digest = sha256(&index);
    fs::write(layout.join("blobs/sha256").join(index_digest.hex()), &index).expect("write");
    let top = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index_digest.to_string(), "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).expect("json")).expect("write");
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let records = store.import(&layout, None).expect("import index");
    assert_eq!(records[0].manifest, native.manifest);
    assert!(!store.blobs().contains(&other.layers[0]), "the other platform's layer was stored");
}

#[test]
fn second_image_sharing_the_base_costs_only_its_own_layer() {
    let (tmp, store) = store();
    let base = busybox_layer();
    Image::new(vec![(base.clone(), Comp::Gzip), (app_layer("one", 50_000), Comp::Gzip)])
        .write_layout(&tmp.path().join("a"), "a");
    Image::new(vec![(base, Comp::Gzip), (app_layer("two", 70_000), Comp::Gzip)])
        .write_layout(&tmp.path().join("b"), "b");
    store.import(&tmp.path().join("a"), None).expect("import a");
    let before = store.du().expect("du").on_disk_bytes;
    let snaps_before = fs::read_dir(store.root().join("snapshots")).expect("dir").count();
    store.import(&tmp.path().join("b"), None).expect("import b");
    let after = store.du().expect("du");
    let snaps_after = fs::read_dir(store.root().join("snapshots")).expect("dir").count();
    assert_eq!(snaps_after, snaps_before + 1, "the base layer was unpacked again");
    let grown = after.on_disk_bytes - before;
    eprintln!("second image grew the store by {grown} bytes; du: {after:?}");
    // Its own layer: ~70 kB unpacked plus a compressed blob, config, manifest and directories.
    assert!(grown < 300_000, "second image cost {grown} bytes");
    assert!(after.saved_by_layer_dedup >= fs::metadata("/bin/busybox").expect("busybox").len());
}

#[test]
fn identical_files_in_unrelated_layers_share_one_inode_and_show_in_du() {
    let (tmp, store) = store();
    // Same files under different layer digests, as when the same Dockerfile is rebuilt.
    let rebuilt = |stamp: &str| {
        let mut l = Layer::new();
        l.dir("bin").file_with("bin/busybox", &fs::read("/bin/busybox").expect("busybox"), 0o755, 0, 0);
        l.file("etc/build-stamp", stamp.as_bytes());
        l.tar()
    };
    Image::new(vec![(rebuilt("1"), Comp::Gzip)]).write_layout(&tmp.path().join("a"), "a");
    Image::new(vec![(rebuilt("2"), Comp::Gzip)]).write_layout(&tmp.path().join("b"), "b");
    let a = store.import(&tmp.path().join("a"), None).expect("import a").remove(0);
    let b = store.import(&tmp.path().join("b"), None).expect("import b").remove(0);
    assert_ne!(a.chain, b.chain);
    let ino = |r: &layerstore::ImageRecord| {
        fs::metadata(store.snapshot_path(&r.chain[0]).join("fs/bin/busybox")).expect("stat").ino()
    };
    assert_eq!(ino(&a), ino(&b), "identical busybox files were not deduplicated");
    let du = store.du().expect("du");
    let size = fs::metadata("/bin/busybox").expect("busybox").len();
    eprintln!("file dedup: {du:?}");
    assert!(du.saved_by_file_dedup >= size, "du shows {} saved, expected >= {size}", du.saved_by_file_dedup);
    assert!(du.on_disk_bytes < du.logical_bytes);
}

#[test]
fn export_reproduces_the_original_digests_and_reimports() {
    let (tmp, store) = store();
    let w = Image::new(vec![(busybox_layer(), Comp::Gzip)]).write_layout(&tmp.path().join("in"), "exp:1");
    store.import(&tmp.path().join("in"), None).expect("import");
    let out = tmp.path().join("out");
    store.export("exp:1", &out).expect("export");
    for (d, data) in &w.blobs {
        assert_eq!(&fs::read(out.join("blobs/sha256").join(d.hex())).expect("exported blob"), data);
    }
    let other = Store::open(&tmp.path().join("other")).expect("open");
    let records = other.import(&out, None).expect("re-import");
    assert_eq!(records[0].manifest, w.manifest);
    assert_eq!(records[0].name, "exp:1");
}

/// A lean import keeps no layer blob whose tar its snapshot's tar split rebuilds, and export
/// rebuilds each such tar bit for bit: GNU long names and links, PAX records (an xattr, a
/// fractional mtime), hardlinks, symlinks, empty and odd-sized files, and bytes after the end of the
/// archive. A layer that replaces one of its own entries gets no split and keeps its blob.
#[test]
fn lean_import_rebuilds_every_layer_tar_bit_for_bit_on_export() {
    let (tmp, store) = store();
    let hdr = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut hdr(tar::EntryType::Directory, 0o755, 0), "d", std::io::empty()).expect("dir");
    let long = format!("d/{}", "n".repeat(150));
    let odd: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    b.append_data(&mut hdr(tar::EntryType::Regular, 0o644, 1000), &long, odd.as_slice()).expect("long name");
    b.append_pax_extensions([("SCHILY.xattr.user.strata", b"v".as_slice()), ("mtime", b"1700000000.5".as_slice())])
        .expect("pax");
    b.append_data(&mut hdr(tar::EntryType::Regular, 0o600, 3), "d/pax", b"pax".as_slice()).expect("pax file");
    b.append_data(&mut hdr(tar::EntryType::Regular, 0o644, 0), "empty", std::io::empty()).expect("empty");
    b.append_link(&mut hdr(tar::EntryType::Link, 0o644, 0), "d/hard", &long).expect("hardlink");
    b.append_link(&mut hdr(tar::EntryType::Symlink, 0o777, 0), "sym", "d/pax").expect("symlink");
    let mut rich = b.into_inner().expect("tar");
    rich.extend_from_slice(&[0u8; 8192]);
    rich.extend_from_slice(b"bytes after the end of the archive");
    let replaced = Layer::new().file("dup", b"first").file("dup", b"second").tar();
    let w = Image::new(vec![(rich.clone(), Comp::Gzip), (replaced, Comp::Zstd)])
        .write_layout(&tmp.path().join("in"), "lean:1");
    let lean = layerstore::ImportOptions { drop_layer_blobs: true };
    let record = store.import_with(&tmp.path().join("in"), None, lean).expect("import").remove(0);
    assert!(!store.blobs().contains(&w.layers[0]), "the rebuildable layer's blob was kept");
    assert!(store.blobs().contains(&w.layers[1]), "the layer without a split lost its blob");
    assert!(store.du().expect("du").split_bytes > 0);
    let report = store.fsck(false).expect("fsck");
    assert!(report.is_clean() && report.splits_checked == 1, "{report:?}");

    let out = tmp.path().join("out");
    store.export("lean:1", &out).expect("export");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("index.json")).expect("index")).expect("index json");
    let manifest_digest: Digest = index["manifests"][0]["digest"].as_str().expect("digest").parse().expect("digest");
    assert_ne!(manifest_digest, w.manifest, "a rebuilt layer makes a new manifest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("blobs/sha256").join(manifest_digest.hex())).expect("manifest"))
            .expect("manifest json");
    assert_eq!(manifest["config"]["digest"].as_str(), Some(w.config.to_string().as_str()));
    let layer0: Digest = manifest["layers"][0]["digest"].as_str().expect("layer").parse().expect("layer");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let blob = fs::read(out.join("blobs/sha256").join(layer0.hex())).expect("rebuilt blob");
    assert_eq!(manifest["layers"][0]["size"].as_u64(), Some(blob.len() as u64));
    assert_eq!(sha256(&blob), layer0);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar).expect("gunzip");
    assert!(tar == rich, "the rebuilt tar differs from the original ({} vs {} bytes)", tar.len(), rich.len());
    assert_eq!(manifest["layers"][1]["digest"].as_str(), Some(w.layers[1].to_string().as_str()));
    // The export is a valid image with the same config: another store imports it (checking each
    // layer against its diff ID) to the same chain.
    let other = Store::open(&tmp.path().join("other")).expect("open");
    let again = other.import(&out, None).expect("re-import").remove(0);
    assert_eq!((again.config, again.chain), (record.config, record.chain));
}

#[test]
fn concurrent_writers_of_one_blob_store_it_once() {
    let (_tmp, store) = store();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest: Digest = sha256(&data);
    let created: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| store.blobs().ingest(data.as_slice(), Some(&digest), "test blob").expect("ingest").1))
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(created.iter().filter(|c| **c == layerstore::Ingested::Created).count(), 1);
    assert_eq!(store.blobs().verify(&digest).expect("verify"), None);
    assert!(contents(&store).iter().all(|p| !p.starts_with(store.root().join("ingest"))));
}

#[test]
fn many_layers_mount() {
    let (tmp, store) = store();
    let mut layers = vec![(busybox_layer(), Comp::Gzip)];
    for i in 0..120 {
        layers.push((Layer::new().file(&format!("layer-{i}"), i.to_string().as_bytes()).tar(), Comp::None));
    }
    Image::new(layers).write_layout(&tmp.path().join("l"), "tall");
    store.import(&tmp.path().join("l"), None).expect("import");
    let rootfs = Rootfs::new(&store, "tall-1", "tall");
    assert_eq!(fs::read_to_string(rootfs.path.join("layer-119")).expect("top"), "119");
    assert_eq!(fs::read_to_string(rootfs.path.join("layer-0")).expect("bottom"), "0");
    assert!(rootfs.path.join("bin/busybox").exists());
}
