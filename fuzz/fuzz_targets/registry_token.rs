//! Any bytes as a registry token service's reply: a token fit for an `Authorization` header, or
//! an error, never a panic. The check is `layerstore::fuzzing::check_token_reply`; the
//! checked-in corpus is replayed on stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| layerstore::fuzzing::check_token_reply(data));
