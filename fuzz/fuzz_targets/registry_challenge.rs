//! Any text as what a registry or a user hands the puller: a `WWW-Authenticate` challenge and an
//! image reference. Parsing either never panics. The checked-in corpus is replayed on stable by
//! `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (scheme, params) = layerstore::parse_challenge(text);
    assert!(scheme.len() <= text.len() && params.len() <= text.len());
    let _ = layerstore::Reference::parse(text);
});
