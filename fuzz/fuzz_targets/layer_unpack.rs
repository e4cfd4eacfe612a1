//! Any bytes as a layer tar, unpacked into a temporary root: unpacking fails with an error or
//! succeeds, but never panics and never creates or changes anything outside the root. The
//! checked-in corpus is replayed on stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
    if std::fs::create_dir(&root).is_err() || std::fs::create_dir(&outside).is_err() {
        return;
    }
    let layer = layerstore::Digest::of(layerstore::Algorithm::Sha256, data);
    let _ = layerstore::unpack_layer(data, &root, &layer, &layerstore::UnpackOptions::default());
    let beside = std::fs::read_dir(tmp.path()).map(|d| d.count()).unwrap_or(0);
    let inside_outside = std::fs::read_dir(&outside).map(|d| d.count()).unwrap_or(0);
    assert_eq!((beside, inside_outside), (2, 0), "unpacking wrote outside the root");
    assert!(!std::path::Path::new("/tmp/strata-fuzz-evil").exists(), "unpacking wrote to /tmp");
});
