//! Replays the fuzz corpus (`fuzz/corpus/layer_unpack/`) on stable Rust with the fuzz target's check:
//! each archive unpacks or fails, without panicking and without writing outside its root.

use std::fs;
use std::path::Path;

use layerstore::{Algorithm, Digest, UnpackOptions, unpack_layer};

#[test]
fn corpus_unpacks_or_fails_inside_its_root() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/layer_unpack");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).expect("readable corpus file");
        let tmp = tempfile::tempdir().expect("tempdir");
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        fs::create_dir(&root).expect("mkdir");
        fs::create_dir(&outside).expect("mkdir");
        let result =
            unpack_layer(data.as_slice(), &root, &Digest::of(Algorithm::Sha256, &data), &UnpackOptions::default());
        eprintln!("{}: {:?}", path.display(), result.as_ref().map(|s| s.entries).map_err(ToString::to_string));
        assert_eq!(fs::read_dir(&outside).expect("read").count(), 0, "{}", path.display());
        assert_eq!(fs::read_dir(tmp.path()).expect("read").count(), 2, "{}", path.display());
        assert!(!Path::new("/tmp/strata-fuzz-evil").exists(), "{}", path.display());
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} corpus files in {}", dir.display());
}
