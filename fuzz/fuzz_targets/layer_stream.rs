//! Any bytes as a compressed layer blob (the first byte picks gzip or zstd), decompressed on the
//! import's own thread and unpacked: it unpacks or fails, never panics, never writes outside its
//! root. The check is `layerstore::fuzzing::check_layer_stream`; the checked-in corpus is
//! replayed on stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    layerstore::fuzzing::check_layer_stream(data, tmp.path());
});
