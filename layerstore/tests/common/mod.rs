//! Builders for the layers and images the tests import: tars written in Rust, compressed with gzip or
//! zstd, laid out as OCI layouts, OCI archives or `docker save` archives.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use layerstore::{Algorithm, Digest, Store};
use serde_json::json;

/// A layer tar built entry by entry.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

pub const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// Writes `name` into the header without the tar crate's checks, so tests can build hostile archives.
fn raw_name(h: &mut tar::Header, name: &[u8]) {
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
}

fn raw_link(h: &mut tar::Header, target: &[u8]) {
    let old = h.as_old_mut();
    old.linkname = [0; 100];
    old.linkname[..target.len()].copy_from_slice(target);
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer { builder: tar::Builder::new(Vec::new()) }
    }

    fn append(&mut self, mut h: tar::Header, name: &str, data: &[u8]) -> &mut Self {
        raw_name(&mut h, name.as_bytes());
        h.set_cksum();
        self.builder.append(&h, data).expect("append to in-memory tar");
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.append(header(tar::EntryType::Directory, 0o755, 0), name, &[])
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_with(name, data, 0o644, 0, 0)
    }

    pub fn file_with(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, name, data)
    }

    /// A file with an xattr, written as a PAX `SCHILY.xattr.` record.
    pub fn file_with_xattr(&mut self, name: &str, data: &[u8], key: &str, value: &[u8]) -> &mut Self {
        self.builder.append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value)]).expect("append pax");
        self.file(name, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        raw_link(&mut h, target.as_bytes());
        self.append(h, name, &[])
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        raw_link(&mut h, target.as_bytes());
        self.append(h, name, &[])
    }

    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, name, &[])
    }

    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.append(header(tar::EntryType::Fifo, 0o600, 0), name, &[])
    }

    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
        self.file(&path, b"")
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finish tar")
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => tar.to_vec(),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).expect("gzip");
                e.finish().expect("gzip")
            }
            Comp::Zstd => zstd::encode_all(tar, 1).expect("zstd"),
        }
    }
}

pub fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

/// An image written as an OCI layout.
pub struct Image {
    pub layers: Vec<(Vec<u8>, Comp)>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    /// Diff IDs to write instead of the layers' own (for truncated-layer tests).
    pub diff_ids: Option<Vec<Digest>>,
    /// Applied to each compressed blob before it is hashed (for corrupt-stream tests).
    pub damage: Option<fn(&mut Vec<u8>)>,
}

/// What an image turned into on disk: its blobs by digest.
pub struct Written {
    pub manifest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Digest,
    pub layers: Vec<Digest>,
    pub blobs: BTreeMap<Digest, Vec<u8>>,
    pub media_types: Vec<String>,
}

impl Image {
    pub fn new(layers: Vec<(Vec<u8>, Comp)>) -> Image {
        Image {
            layers,
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            entrypoint: vec![],
            diff_ids: None,
            damage: None,
        }
    }

    /// The image's blobs, with `media_type` overriding the layers' media type (for bad-input tests).
    pub fn blobs(&self, media_type: Option<&str>) -> Written {
        let mut blobs = BTreeMap::new();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        let mut media_types = Vec::new();
        for (tar, comp) in &self.layers {
            let mut blob = comp.compress(tar);
            if let Some(damage) = self.damage {
                damage(&mut blob);
            }
            let d = sha256(&blob);
            let mt = media_type.unwrap_or(comp.media_type()).to_string();
            descs.push(json!({"mediaType": mt, "digest": d.to_string(), "size": blob.len()}));
            diff_ids.push(sha256(tar).to_string());
            layers.push(d.clone());
            media_types.push(mt);
            blobs.insert(d, blob);
        }
        let config = serde_json::to_vec(&json!({
            "architecture": layerstore::host_arch(),
            "os": "linux",
            "config": {"Cmd": self.cmd, "Env": self.env, "Entrypoint": self.entrypoint, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids.as_ref().map_or(diff_ids, |d| d.iter().map(Digest::to_string).collect())},
        }))
        .expect("config json");
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": descs,
        }))
        .expect("manifest json");
        let manifest_digest = sha256(&manifest);
        blobs.insert(config_digest.clone(), config);
        blobs.insert(manifest_digest.clone(), manifest.clone());
        Written {
            manifest: manifest_digest,
            manifest_bytes: manifest,
            config: config_digest,
            layers,
            blobs,
            media_types,
        }
    }

    /// Writes an OCI layout directory holding this image as `name`.
    pub fn write_layout(&self, dir: &Path, name: &str) -> Written {
        let w = self.blobs(None);
        write_layout_blobs(dir, name, &w);
        w
    }
}

pub fn write_layout_blobs(dir: &Path, name: &str, w: &Written) {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
    for (d, data) in &w.blobs {
        fs::write(dir.join("blobs/sha256").join(d.hex()), data).expect("write blob");
    }
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest.to_string(),
            "size": w.manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("json")).expect("write index");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
}

/// Packs a directory into a tar file (an OCI archive when `dir` is a layout).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).expect("create archive"));
    b.append_dir_all(".", dir).expect("pack");
    b.finish().expect("finish");
}

/// A base layer: busybox (static) with its applet links, /etc and a few directories.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static) is needed");
    let mut l = Layer::new();
    l.dir("bin").dir("etc").dir("tmp").dir("root").dir("dev");
    l.file_with("bin/busybox", &busybox, 0o755, 0, 0);
    for applet in ["sh", "ls", "cat", "echo", "true", "id", "env", "pwd", "sleep", "wc"] {
        l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n");
    l.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n");
    l.tar()
}

/// A fresh store in a temp directory.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("open store");
    (dir, store)
}

/// Everything under the store that an import may create, for "nothing stored" checks.
pub fn contents(store: &Store) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "blobs/sha512", "snapshots", "pool", "images", "tmp"] {
        for e in fs::read_dir(store.root().join(sub)).expect("read store dir") {
            out.push(e.expect("entry").path());
        }
    }
    for e in fs::read_dir(store.root().join("ingest")).expect("read ingest") {
        let p = e.expect("entry").path();
        // lock files: a blob's ingest lock and a pull's lease on a blob, empty, kept (see blobs.rs)
        if !p.to_string_lossy().ends_with(".lock") && !p.to_string_lossy().ends_with(".lease") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A comparable view of a tree: path -> (kind, mode, uid, gid, content or link target or device).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).expect("read dir").map(|e| e.expect("entry").path()).collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(root).expect("prefix").to_string_lossy().into_owned();
            let ft = m.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", fs::read_link(&p).expect("readlink").display())
            } else if ft.is_file() {
                format!("file {}", sha256(&fs::read(&p).expect("read")))
            } else {
                format!("special {:x}", m.rdev())
            };
            let mode = if ft.is_symlink() { 0 } else { m.mode() & 0o7777 };
            out.insert(rel, format!("{what} {mode:o} {}:{}", m.uid(), m.gid()));
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Unmounts on drop, so a failing test does not leave a mount behind.
pub struct Rootfs<'a> {
    pub store: &'a Store,
    pub id: String,
    pub path: PathBuf,
}

impl<'a> Rootfs<'a> {
    pub fn new(store: &'a Store, id: &str, image: &str) -> Rootfs<'a> {
        let path = store.create_rootfs(id, image, "test").expect("create rootfs");
        Rootfs { store, id: id.into(), path }
    }
}

impl Drop for Rootfs<'_> {
    fn drop(&mut self) {
        let _ = self.store.remove_rootfs(&self.id);
    }
}
