//! Any text as a `hosts.toml` (registry mirrors, containerd's format): parsing never panics,
//! and what it accepts ends with the upstream server. The checked-in corpus is replayed on
//! stable by `layerstore/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = std::path::Path::new("hosts.toml");
    if let Ok(hosts) = layerstore::hosts::parse(text, file, "https://registry.lan") {
        assert!(!hosts.is_empty());
    }
});
