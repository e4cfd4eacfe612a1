//! The checks of the fuzz targets that feed the store untrusted bytes (`fuzz/fuzz_targets/`),
//! kept here so that each target and the stable replay of its corpus
//! (`tests/fuzz_corpus.rs`) run one and the same check. Not part of the store's API: every
//! function panics when the property it checks fails, which is how a fuzzer learns of it.

use std::fs;
use std::path::Path;

use serde_json::json;

use crate::{Algorithm, Digest, Store, UnpackOptions, layer_stream, parse_token_reply, unpack_layer};

/// Entries directly in `dir` (0 when it cannot be read).
fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Keeps a copy of what passes through, up to 64 MiB (a bomb may expand further).
struct Tee<R> {
    inner: R,
    seen: Vec<u8>,
    overflowed: bool,
}

impl<R: std::io::Read> std::io::Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.seen.len() + n <= 64 << 20 {
            self.seen.extend_from_slice(&buf[..n]);
        } else {
            self.overflowed = true;
        }
        Ok(n)
    }
}

/// Any bytes as a compressed layer blob: the first byte picks gzip or zstd, the rest is the
/// blob, decompressed on its own thread as an import does and unpacked into `scratch/root` with
/// a tar split in `scratch/split`. It unpacks or fails; it never panics and never writes beside
/// the root; when it unpacks with an exact split, the split rebuilds the tar byte for byte.
pub fn check_layer_stream(data: &[u8], scratch: &Path) {
    let Some((&pick, blob)) = data.split_first() else { return };
    let media_type = if pick % 2 == 0 {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    };
    let (root, outside, split) = (scratch.join("root"), scratch.join("outside"), scratch.join("split"));
    if fs::create_dir_all(&root).is_err()
        || fs::create_dir_all(&outside).is_err()
        || fs::create_dir_all(&split).is_err()
    {
        return;
    }
    let digest = Digest::of(Algorithm::Sha256, blob);
    let stream = match layer_stream(media_type, &digest, std::io::Cursor::new(blob.to_vec())) {
        Ok(stream) => stream,
        Err(e) => panic!("{media_type} is a layer media type: {e}"),
    };
    let mut tee = Tee { inner: stream, seen: Vec::new(), overflowed: false };
    let split = split.join("tar-split.zst");
    let opts = UnpackOptions { split: Some(split.clone()), ..UnpackOptions::default() };
    let unpacked = unpack_layer(&mut tee, &root, &digest, &opts);
    assert_eq!((entries(scratch), entries(&outside)), (3, 0), "unpacking wrote outside the root");
    if let Ok(stats) = unpacked
        && stats.split
        && !tee.overflowed
    {
        let mut rebuilt = Vec::new();
        if let Err(e) = crate::split::rebuild(&root, &split, &mut rebuilt) {
            panic!("the exact split of an unpacked layer does not rebuild it: {e}");
        }
        assert!(rebuilt == tee.seen, "the rebuilt tar differs ({} bytes, {} read)", rebuilt.len(), tee.seen.len());
    }
}

/// A valid image config for the one layer.
fn valid_config(layer: &[u8]) -> Vec<u8> {
    let diff_id = Digest::of(Algorithm::Sha256, layer);
    json!({
        "architecture": crate::host_arch(), "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    })
    .to_string()
    .into_bytes()
}

fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
    json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(Algorithm::Sha256, config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::of(Algorithm::Sha256, layer).to_string(), "size": layer.len()}],
    })
    .to_string()
    .into_bytes()
}

fn index_for(manifest: &[u8]) -> Vec<u8> {
    json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": Digest::of(Algorithm::Sha256, manifest).to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "fuzz"}}]})
    .to_string()
    .into_bytes()
}

/// A one-file layer tar.
fn small_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let appended = tar.append_data(&mut header, "hello", &b"hello\n"[..]);
    assert!(appended.is_ok(), "a tar in memory: {appended:?}");
    tar.into_inner().unwrap_or_default()
}

/// Any bytes as one JSON document of an OCI layout whose other parts are valid: the first byte
/// picks the index, the manifest or the image config, the rest replaces it (the documents that
/// name it are rewritten to its digest and size). The import into a new store at `scratch`
/// succeeds, or fails leaving no image, blob or snapshot; `fsck` is clean either way. Returns
/// whether the image was imported.
pub fn check_image_json(data: &[u8], scratch: &Path) -> bool {
    let Some((&pick, doc)) = data.split_first() else { return false };
    let layer = small_layer();
    let (index, manifest, config) = match pick % 3 {
        0 => {
            let config = valid_config(&layer);
            (doc.to_vec(), manifest_for(&config, &layer), config)
        }
        1 => (index_for(doc), doc.to_vec(), valid_config(&layer)),
        _ => {
            let manifest = manifest_for(doc, &layer);
            (index_for(&manifest), manifest, doc.to_vec())
        }
    };
    let layout = scratch.join("layout");
    let blobs = layout.join("blobs/sha256");
    if fs::create_dir_all(&blobs).is_err() {
        return false;
    }
    for blob in [&layer, &manifest, &config] {
        if fs::write(blobs.join(Digest::of(Algorithm::Sha256, blob).hex()), blob).is_err() {
            return false;
        }
    }
    if fs::write(layout.join("index.json"), &index).is_err()
        || fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).is_err()
    {
        return false;
    }
    let store = match Store::open(&scratch.join("store")) {
        Ok(store) => store,
        Err(e) => panic!("a new store: {e}"),
    };
    let result = store.import(&layout, None);
    let report = match store.fsck(false) {
        Ok(report) => report,
        Err(e) => panic!("fsck after {result:?}: {e}"),
    };
    assert!(report.problems.is_empty(), "fsck after {result:?}: {:?}", report.problems);
    let images = store.images().map(|i| i.len()).unwrap_or(usize::MAX);
    match result {
        Ok(imported) => {
            assert_eq!(images, imported.len(), "imported images are listed");
            true
        }
        Err(_) => {
            assert_eq!(images, 0, "a failed import left an image");
            assert_eq!((report.blobs_checked, report.snapshots_checked), (0, 0), "a failed import left data");
            false
        }
    }
}

/// Seeds for `check_image_json`: each valid document behind its selector byte, and broken ones
/// (a config whose diff ID is not the layer's, a manifest naming an unknown layer type, an
/// index without a manifest, a document that is not JSON).
pub fn image_json_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let layer = small_layer();
    let config = valid_config(&layer);
    let manifest = manifest_for(&config, &layer);
    let index = index_for(&manifest);
    let with = |pick: u8, doc: &[u8]| [&[pick][..], doc].concat();
    let text = |doc: &[u8]| String::from_utf8_lossy(doc).into_owned();
    let wrong_diff_id = text(&config).replace(Digest::of(Algorithm::Sha256, &layer).hex(), &"0".repeat(64));
    let unknown_type = text(&manifest).replace("layer.v1.tar", "layer.v1.tar+lz4");
    vec![
        ("valid-index", with(0, &index)),
        ("valid-manifest", with(1, &manifest)),
        ("valid-config", with(2, &config)),
        ("config-wrong-diff-id", with(2, wrong_diff_id.as_bytes())),
        ("manifest-unknown-layer-type", with(1, unknown_type.as_bytes())),
        ("index-empty", with(0, br#"{"schemaVersion":2,"manifests":[]}"#)),
        ("not-json", with(1, b"{\"schemaVersion\":")),
    ]
}

/// Any bytes as a token service's reply: it gives a token fit for an `Authorization` header
/// (visible ASCII, nothing that could end the header) or an error, never a panic.
pub fn check_token_reply(data: &[u8]) {
    if let Ok(token) = parse_token_reply(data) {
        assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()), "token {token:?} taken");
    }
}
