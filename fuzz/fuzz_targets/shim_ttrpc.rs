//! Any bytes as what a client sends the shim daemon's socket: cutting them into ttrpc frames
//! gives the same frames whatever sizes the reads come in, a frame over the limit stops the
//! connection with an error, and every request body decodes or is refused without a panic. The
//! checked-in corpus is replayed on stable by `shim/tests/bad_input.rs`.

#![no_main]

use engine::shimv2::ttrpc::{MAX_BODY, TYPE_REQUEST, frames_of, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let whole = frames_of(rest, rest.len());
    let chunked = frames_of(rest, usize::from(first % 17) + 1);
    assert_eq!(whole, chunked, "frames depend on how the bytes arrive");
    for f in whole.0.iter().filter(|f| f.kind == TYPE_REQUEST) {
        assert!(f.body.len() <= MAX_BODY);
        let _ = parse_request(&f.body);
    }
});
