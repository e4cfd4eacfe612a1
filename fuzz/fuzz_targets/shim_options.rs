//! Any bytes as the runtime options of a shim `Create` (the first byte picks runc's message,
//! CRI's runtimeoptions or another type): options or an `INVALID_ARGUMENT` error, never a panic.
//! The check is `engine::shimv2::options::check_fuzz_input`; the checked-in corpus is replayed
//! on stable by `shim/tests/bad_input.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| engine::shimv2::options::check_fuzz_input(data));
