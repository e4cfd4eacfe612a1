//! Any bytes as an image archive (an OCI archive or a `docker save` tar), imported into a fresh
//! store: the import fails with an error or succeeds, but never panics, and a failed import
//! leaves the store as it found it (no image, blob or snapshot; `fsck` clean). The checked-in
//! corpus is replayed on stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let archive = tmp.path().join("image.tar");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    let Ok(store) = layerstore::Store::open(&tmp.path().join("store")) else { return };
    let imported = store.import(&archive, None);
    let report = store.fsck(false).expect("fsck of the store");
    assert!(report.problems.is_empty(), "import left a damaged store: {:?}", report.problems);
    if imported.is_err() {
        assert!(store.images().expect("listing images").is_empty(), "a failed import left an image");
        assert_eq!((report.blobs_checked, report.snapshots_checked), (0, 0), "a failed import left data");
    }
});
