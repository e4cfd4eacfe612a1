//! Any bytes as an OCI seccomp profile: parsing and compiling either fail with an error or give a
//! program that passes the kernel verifier's rules (length, opcodes, jumps in range, ends in a
//! return). The checked-in corpus is replayed on stable by `seccomp/tests/fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = serde_json::from_slice::<oci_spec::runtime::LinuxSeccomp>(data) else {
        return;
    };
    if let Ok(filter) = seccomp::compile(&profile)
        && let Err(e) = seccomp::verify(filter.instructions())
    {
        panic!("compiled program fails verification: {e}");
    }
});
