//! Bad input: each case is one clear error, the store holds exactly what it held before, and fsck
//! stays clean. Needs root (the full-disk case mounts a small tmpfs).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use layerstore::{Error, Store};

/// Imports a good image, then `source` (built by `make` in `dir`), and checks that the bad import
/// changed nothing and left fsck clean. Returns the error.
fn check_rejected(make: impl FnOnce(&Path) -> std::path::PathBuf) -> Error {
    let (tmp, store) = store();
    Image::new(vec![(Layer::new().file("good", b"good").tar(), Comp::Gzip)])
        .write_layout(&tmp.path().join("good"), "good");
    store.import(&tmp.path().join("good"), None).expect("good import");
    let before = contents(&store);
    let source = make(tmp.path());
    let err = store.import(&source, None).expect_err("bad input imported");
    eprintln!("error: {err}");
    assert_eq!(contents(&store), before, "a failed import left something in the store");
    let fsck = store.fsck(false).expect("fsck");
    assert!(fsck.is_clean(), "fsck after a failed import: {:?}", fsck.problems);
    err
}

fn layout_with(dir: &Path, layers: Vec<(Vec<u8>, Comp)>, edit: impl FnOnce(&Path, &Written)) -> std::path::PathBuf {
    let layout = dir.join("bad");
    let w = Image::new(layers).write_layout(&layout, "bad");
    edit(&layout, &w);
    layout
}

#[test]
fn blob_not_matching_its_digest() {
    let err = check_rejected(|dir| {
        layout_with(dir, vec![(busybox_layer(), Comp::Gzip)], |layout, w| {
            let path = layout.join("blobs/sha256").join(w.layers[0].hex());
            let mut data = fs::read(&path).expect("read");
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
            fs::write(&path, data).expect("write");
        })
    });
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

/// A layout of `image` in `dir/bad`.
fn layout_of(dir: &Path, image: &Image) -> std::path::PathBuf {
    image.write_layout(&dir.join("bad"), "bad");
    dir.join("bad")
}

#[test]
fn tar_truncated_inside_a_file() {
    let err = check_rejected(|dir| {
        // The manifest names the cut blob (so its digest verifies); the config keeps the full tar's diff ID.
        let full = busybox_layer();
        let mut image = Image::new(vec![(full[..full.len() / 2 + 100].to_vec(), Comp::None)]);
        image.diff_ids = Some(vec![sha256(&full)]);
        layout_of(dir, &image)
    });
    assert!(matches!(err, Error::BadArchive { .. }), "{err}");
}

#[test]
fn tar_truncated_between_entries_fails_its_diff_id() {
    let err = check_rejected(|dir| {
        let full = Layer::new().file("a", &[1; 4096]).file("b", &[2; 4096]).tar();
        let mut image = Image::new(vec![(full[..512 + 4096].to_vec(), Comp::Gzip)]);
        image.diff_ids = Some(vec![sha256(&full)]);
        layout_of(dir, &image)
    });
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[test]
fn corrupt_gzip_stream() {
    let err = check_rejected(|dir| {
        // The blob's digest matches its corrupt bytes: only decompression can tell.
        let mut image = Image::new(vec![(busybox_layer(), Comp::Gzip)]);
        image.damage = Some(|blob| {
            let third = blob.len() / 3;
            blob[third..third + 64].iter_mut().for_each(|b| *b = b.wrapping_add(1));
        });
        layout_of(dir, &image)
    });
    assert!(matches!(err, Error::BadArchive { .. }), "{err}");
}

#[test]
fn escaping_layer_in_an_image() {
    let err = check_rejected(|dir| {
        let evil = Layer::new().symlink("etc", "/etc").file("etc/strata-evil", b"x").tar();
        layout_with(dir, vec![(busybox_layer(), Comp::Gzip), (evil, Comp::Gzip)], |_, _| {})
    });
    assert!(matches!(err, Error::Escape { .. }), "{err}");
    assert!(!Path::new("/etc/strata-evil").exists());
}

#[test]
fn unknown_layer_media_type() {
    let err = check_rejected(|dir| {
        let layout = dir.join("bad");
        let w =
            Image::new(vec![(busybox_layer(), Comp::Gzip)]).blobs(Some("application/vnd.example.layer.v1+squashfs"));
        write_layout_blobs(&layout, "bad", &w);
        layout
    });
    assert!(matches!(err, Error::UnknownMediaType { .. }), "{err}");
}

#[test]
fn manifest_naming_a_missing_blob() {
    let err = check_rejected(|dir| {
        layout_with(
            dir,
            vec![(busybox_layer(), Comp::Gzip), (Layer::new().file("x", b"x").tar(), Comp::Gzip)],
            |layout, w| {
                fs::remove_file(layout.join("blobs/sha256").join(w.layers[1].hex())).expect("remove");
            },
        )
    });
    assert!(matches!(err, Error::MissingBlob { .. }), "{err}");
}

#[test]
fn not_an_image() {
    let err = check_rejected(|dir| {
        fs::create_dir_all(dir.join("empty")).expect("mkdir");
        dir.join("empty")
    });
    assert!(matches!(err, Error::NotAnImage { .. }), "{err}");
}

/// Unmounts the tmpfs when the test ends, pass or fail.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Still mounted only when the test failed before its own unmount: detach it then.
        let _ = Command::new("umount").arg("-l").arg(&self.0).stderr(std::process::Stdio::null()).status();
    }
}

#[test]
fn full_disk_during_unpack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let small = tmp.path().join("small");
    fs::create_dir(&small).expect("mkdir");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&small).status().expect("mount");
    assert!(ok.success(), "mounting a tmpfs needs root");
    let _guard = Tmpfs(small.clone());
    let store = Store::open(&small.join("store")).expect("open");
    let before = contents(&store);
    // Compresses to a few kB, unpacks to 8 MB.
    let big = Layer::new().file("big", &vec![0u8; 8 << 20]).tar();
    Image::new(vec![(big, Comp::Gzip)]).write_layout(&tmp.path().join("layout"), "big");
    let err = store.import(&tmp.path().join("layout"), None).expect_err("import onto a full disk");
    eprintln!("error: {err}");
    let msg = err.to_string();
    assert!(msg.contains("No space left on device") || msg.contains("os error 28"), "{msg}");
    assert_eq!(contents(&store), before);
    assert!(store.fsck(false).expect("fsck").is_clean());
    // Nothing of the failed import is still open there (its decompression thread is gone with
    // it): the file system unmounts at once.
    drop(store);
    let unmounted = Command::new("umount").arg(&small).status().expect("umount");
    assert!(unmounted.success(), "the store's file system is busy after the failed import");
}

#[test]
fn a_blob_larger_than_its_descriptor() {
    let err = check_rejected(|dir| {
        layout_with(dir, vec![(busybox_layer(), Comp::Gzip)], |layout, w| {
            let path = layout.join("blobs/sha256").join(w.layers[0].hex());
            let mut data = fs::read(&path).expect("read");
            data.extend_from_slice(&[0; 4096]);
            fs::write(&path, data).expect("write");
        })
    });
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("layer sha256:"), "{err}");
}

/// A decompression bomb, and a layer of too many entries, stop at the store's limits with one
/// error naming the layer, and nothing of them stays.
#[test]
fn layers_above_the_store_limits() {
    let (tmp, store) = store();
    let store = store.with_layer_limits(layerstore::LayerLimits { max_bytes: 1 << 20, max_entries: 20 });
    Image::new(vec![(Layer::new().file("good", b"good").tar(), Comp::Gzip)])
        .write_layout(&tmp.path().join("good"), "good");
    store.import(&tmp.path().join("good"), None).expect("good import");
    let before = contents(&store);

    // 8 MiB of zeros: a few KiB of gzip, 8 times the limit
    let bomb = Layer::new().file("zeros", &vec![0u8; 8 << 20]).tar();
    let layout = tmp.path().join("bomb");
    let w = Image::new(vec![(bomb, Comp::Gzip)]).write_layout(&layout, "bomb");
    let err = store.import(&layout, None).expect_err("bomb imported");
    assert!(matches!(&err, Error::LayerLimit { what: "bytes", limit, .. } if *limit == 1 << 20), "{err}");
    assert!(err.to_string().contains(&w.layers[0].to_string()), "{err}");
    assert_eq!(contents(&store), before, "the bomb left something in the store");

    let mut many = Layer::new();
    for i in 0..30 {
        many.file(&format!("f{i}"), b"x");
    }
    let layout = tmp.path().join("many");
    Image::new(vec![(many.tar(), Comp::Gzip)]).write_layout(&layout, "many");
    let err = store.import(&layout, None).expect_err("30 entries imported");
    assert!(matches!(&err, Error::LayerLimit { what: "entries", limit: 20, .. }), "{err}");
    assert_eq!(contents(&store), before, "the layer left something in the store");
    assert!(store.fsck(false).expect("fsck").is_clean());
}
