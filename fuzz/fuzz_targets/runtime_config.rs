//! Any bytes as a bundle's config.json: loading the bundle (parsing and every check made before a
//! container is created) fails with an error that names config.json, or succeeds, and never
//! panics. The checked-in corpus is replayed on stable by `shim/tests/bad_input.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    if std::fs::write(tmp.path().join("config.json"), data).is_err()
        || std::fs::create_dir(tmp.path().join("rootfs")).is_err()
    {
        return;
    }
    if let Err(e) = engine::bundle::Bundle::load(tmp.path()) {
        assert!(e.to_string().contains("config.json"), "error does not name the file: {e}");
    }
});
