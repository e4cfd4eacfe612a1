//! Any bytes as a message from systemd's D-Bus socket (the systemd cgroup driver reads replies
//! and signals there): decoding one never panics and never reads past the bytes. The checked-in
//! corpus is replayed on stable by `cgroups/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cgroups::systemd::dbus::parse_message(data);
});
