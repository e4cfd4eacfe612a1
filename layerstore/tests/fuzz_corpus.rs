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

/// The corpus of `fuzz/fuzz_targets/image_archive.rs`, with its checks: every archive imports or
/// fails, and a failed import leaves no image, blob or snapshot behind and `fsck` clean.
#[test]
fn image_archive_corpus_imports_or_leaves_the_store_untouched() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/image_archive");
    let (mut imported, mut refused) = (0, 0);
    for entry in fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = layerstore::Store::open(&tmp.path().join("store")).expect("store");
        let result = store.import(&path, None);
        eprintln!("{}: {:?}", path.display(), result.as_ref().map(Vec::len).map_err(ToString::to_string));
        let report = store.fsck(false).expect("fsck");
        assert!(report.problems.is_empty(), "{}: {:?}", path.display(), report.problems);
        match result {
            Ok(images) => {
                assert_eq!(store.images().expect("images").len(), images.len(), "{}", path.display());
                imported += 1;
            }
            Err(_) => {
                assert!(store.images().expect("images").is_empty(), "{}", path.display());
                assert_eq!((report.blobs_checked, report.snapshots_checked), (0, 0), "{}", path.display());
                refused += 1;
            }
        }
    }
    // The seeds hold good images and bad ones: both paths are taken.
    assert!(imported >= 3 && refused >= 5, "{imported} imported, {refused} refused in {}", dir.display());
}

/// The corpus of `fuzz/fuzz_targets/registry_challenge.rs`: challenges and references parse or
/// fail without panicking, and the well-formed Bearer challenge yields its parameters.
#[test]
fn registry_challenge_corpus_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/registry_challenge");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let text = fs::read_to_string(&path).expect("utf-8 corpus file");
        let (scheme, params) = layerstore::parse_challenge(&text);
        if path.file_name().is_some_and(|n| n == "bearer") {
            assert_eq!(scheme, "Bearer");
            assert!(params.iter().any(|(k, v)| k == "service" && v == "registry"), "{params:?}");
        }
        let _ = layerstore::Reference::parse(&text);
        replayed += 1;
    }
    assert!(replayed >= 5, "only {replayed} corpus files in {}", dir.display());
}

/// The corpus of `fuzz/fuzz_targets/registry_hosts.rs`: every `hosts.toml` parses or fails
/// without panicking; the mirror file gives its mirror then the server, and a setting strata does
/// not implement is refused by name.
#[test]
fn registry_hosts_corpus_parses_or_refuses_by_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/registry_hosts");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("corpus entry").path();
        let text = fs::read_to_string(&path).expect("utf-8 corpus file");
        let parsed = layerstore::hosts::parse(&text, &path, "https://registry.lan");
        match path.file_name().and_then(|n| n.to_str()) {
            Some("mirror") => {
                let hosts = parsed.expect("the mirror file");
                let urls: Vec<&str> = hosts.iter().map(|h| h.url.as_str()).collect();
                assert_eq!(urls, ["https://mirror.lan:5000", "https://registry-1.docker.io"]);
                assert_eq!(hosts[0].ca.len(), 2);
            }
            Some("header") => assert!(parsed.expect_err("header").to_string().contains("header")),
            Some("empty") => assert_eq!(parsed.expect("empty").len(), 1, "the upstream alone"),
            _ => {}
        }
        replayed += 1;
    }
    assert!(replayed >= 7, "only {replayed} corpus files in {}", dir.display());
}

/// The files of one corpus directory, with their names.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("corpus directory exists")
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            (name, fs::read(&path).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    files
}

/// The corpus of `fuzz/fuzz_targets/layer_stream.rs` with its check: gzip and zstd layers,
/// whole, truncated and not compressed at all, unpack or fail inside their root.
#[test]
fn layer_stream_corpus_unpacks_or_fails_inside_its_root() {
    let files = corpus("layer_stream");
    for (name, data) in &files {
        eprintln!("{name}");
        let tmp = tempfile::tempdir().expect("tempdir");
        layerstore::fuzzing::check_layer_stream(data, tmp.path());
        if name == "plain.tar.gz" || name == "plain.tar.zst" {
            assert!(tmp.path().join("root").read_dir().expect("root").count() > 0, "{name} unpacked nothing");
        }
    }
    assert!(files.len() >= 8, "only {} corpus files", files.len());
}

/// The corpus of `fuzz/fuzz_targets/image_json.rs` with its check (import or leave nothing), and
/// the seeds' outcomes: the valid documents import, the broken ones are refused.
#[test]
fn image_json_corpus_imports_or_leaves_the_store_untouched() {
    for (name, data) in layerstore::fuzzing::image_json_seeds() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let imported = layerstore::fuzzing::check_image_json(&data, tmp.path());
        assert_eq!(imported, name.starts_with("valid-"), "seed {name}");
    }
    let files = corpus("image_json");
    for (name, data) in &files {
        eprintln!("{name}");
        let tmp = tempfile::tempdir().expect("tempdir");
        layerstore::fuzzing::check_image_json(data, tmp.path());
    }
    assert!(files.len() >= 7, "only {} corpus files", files.len());
}

/// The corpus of `fuzz/fuzz_targets/registry_token.rs`: JWTs and OAuth tokens are taken, a token
/// that could end the header or is not ASCII is refused, and nothing panics.
#[test]
fn registry_token_corpus_gives_header_safe_tokens() {
    let files = corpus("registry_token");
    for (name, data) in &files {
        layerstore::fuzzing::check_token_reply(data);
        let parsed = layerstore::parse_token_reply(data);
        match name.as_str() {
            "jwt" | "oauth" | "empty-then-access" => assert!(parsed.is_ok(), "{name}: {parsed:?}"),
            "header-injection" | "non-ascii" => {
                assert!(parsed.as_ref().is_err_and(|e| e.contains("header")), "{name}: {parsed:?}")
            }
            _ => assert!(parsed.is_err(), "{name}: {parsed:?}"),
        }
    }
    assert!(files.len() >= 8, "only {} corpus files", files.len());
}
