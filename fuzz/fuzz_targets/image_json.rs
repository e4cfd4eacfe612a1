//! Any bytes as the index, the manifest or the image config of an otherwise valid OCI layout
//! (the first byte picks which): the import succeeds, or fails leaving no image, blob or
//! snapshot, and `fsck` is clean. The check is `layerstore::fuzzing::check_image_json`; the
//! checked-in corpus is replayed on stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    layerstore::fuzzing::check_image_json(data, tmp.path());
});
