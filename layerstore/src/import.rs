//! Reading image sources: OCI image layouts (directories), OCI archives and `docker save` archives.
//!
//! An archive is first extracted into the store's `tmp/`; every file of a source is then opened with
//! `openat2(RESOLVE_IN_ROOT)`, so a symlink in an archive (docker save links repeated layers) cannot make
//! the importer read a file outside the source. What comes out is a list of [`SourceImage`]s: a
//! manifest, a config and layer descriptors, with blobs still to be verified as they are ingested.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};
use serde::Deserialize;

use crate::{Digest, Error, Result};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names, or [`Error::UnknownMediaType`].
    pub(crate) fn of_media_type(media_type: &str, digest: &Digest) -> Result<Compression> {
        let known_layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        if known_layer {
            if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
                return Ok(Compression::Gzip);
            }
            if media_type.ends_with("tar+zstd") {
                return Ok(Compression::Zstd);
            }
            if media_type.ends_with(".tar") || media_type.ends_with("v1.tar") {
                return Ok(Compression::None);
            }
        }
        Err(Error::UnknownMediaType { digest: digest.clone(), media_type: media_type.to_string() })
    }

    /// Wraps `reader` in the matching decompressor.
    pub(crate) fn reader<'a>(self, reader: impl Read + 'a) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        })
    }
}

/// Bytes decompressed per chunk handed from the decompressing thread to the unpacker.
const CHUNK: usize = 256 << 10;
/// Chunks in flight between the two threads.
const CHUNKS_IN_FLIGHT: usize = 8;

impl Compression {
    /// Decompresses `input` on a thread of its own and returns the uncompressed stream: unpacking
    /// (parsing, hashing and writing files) then runs beside decompression instead of after it,
    /// on another core. A decompression error reaches the reader as a read error; when the
    /// reader is dropped early, the thread stops at its next chunk.
    pub(crate) fn threaded_reader(self, input: impl Read + Send + 'static) -> Box<dyn Read> {
        if self == Compression::None {
            return Box::new(input);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let thread = std::thread::spawn(move || {
            let mut dec = match self.reader(std::io::BufReader::with_capacity(CHUNK, input)) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match dec.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let end = filled < CHUNK;
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                    return;
                }
                if end {
                    return;
                }
            }
        });
        Box::new(ChunkReader { rx, chunk: Vec::new(), pos: 0, thread: Some(thread) })
    }
}

/// The receiving end of [`Compression::threaded_reader`].
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ChunkReader {
    /// Hangs up, so that the thread stops at its next chunk, and waits for it: once the reader
    /// is gone, so is the thread and the blob it read (a failed import leaves nothing of the
    /// store open, and the store's file system can be unmounted at once).
    fn drop(&mut self) {
        let (_, hung_up) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.rx, hung_up));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread is done: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The uncompressed stream of a layer blob of `media_type` (tar, tar+gzip or tar+zstd),
/// decompressed on a thread of its own as imports and pulls do; [`Error::UnknownMediaType`] for
/// any other media type.
pub fn layer_stream(media_type: &str, digest: &Digest, blob: impl Read + Send + 'static) -> Result<Box<dyn Read>> {
    Ok(Compression::of_media_type(media_type, digest)?.threaded_reader(blob))
}

/// Whether [`layer_stream`] reads layer blobs of `media_type`: [`Error::UnknownMediaType`] if not.
pub fn check_layer_media_type(media_type: &str, digest: &Digest) -> Result<()> {
    Compression::of_media_type(media_type, digest).map(drop)
}

/// The OCI spelling of this host's architecture (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A layer as a manifest describes it.
#[derive(Debug, Clone)]
pub(crate) struct LayerDesc {
    pub digest: Digest,
    pub media_type: String,
    /// The descriptor's size.
    pub size: u64,
}

/// One image found in a source.
#[derive(Debug, Clone)]
pub(crate) struct SourceImage {
    /// The name the source gives it, if any.
    pub name: Option<String>,
    /// The manifest bytes and digest (synthesized for `docker save`).
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub config: Digest,
    /// The config descriptor's size.
    pub config_size: u64,
    pub layers: Vec<LayerDesc>,
    /// For `docker save`: where each blob is, since it is not under `blobs/`.
    pub files: Vec<(Digest, PathBuf)>,
}

/// A source directory (a layout, or an extracted archive).
#[derive(Debug)]
pub(crate) struct Source {
    pub dir: PathBuf,
    fd: OwnedFd,
}

impl Source {
    pub(crate) fn open(dir: &Path) -> Result<Source> {
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open", dir)(e.into()))?;
        Ok(Source { dir: dir.to_path_buf(), fd })
    }

    /// Opens `rel` as if the source directory were `/`.
    pub(crate) fn open_file(&self, rel: &str) -> std::io::Result<File> {
        let fd = openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(File::from(fd))
    }

    fn read_small(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        let file = self.open_file(rel).map_err(Error::io("open", self.dir.join(rel)))?;
        file.take(limit).read_to_end(&mut data).map_err(Error::io("read", self.dir.join(rel)))?;
        Ok(data)
    }

    fn blob_rel(digest: &Digest) -> String {
        format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
    }

    /// Opens a blob of an OCI layout, or of a `docker save` archive by its file.
    pub(crate) fn open_blob(&self, image: &SourceImage, digest: &Digest, referenced_by: &str) -> Result<File> {
        let rel = image
            .files
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, p)| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| Self::blob_rel(digest));
        self.open_file(&rel).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingBlob { digest: digest.clone(), referenced_by: referenced_by.to_string() }
            } else {
                Error::io("open", self.dir.join(&rel))(e)
            }
        })
    }

    /// Reads a small blob (manifest, index) and checks its digest.
    fn read_verified(&self, digest: &Digest, referenced_by: &str) -> Result<Vec<u8>> {
        let rel = Self::blob_rel(digest);
        if self.open_file(&rel).is_err() {
            return Err(Error::MissingBlob { digest: digest.clone(), referenced_by: referenced_by.to_string() });
        }
        let data = self.read_small(&rel, 16 << 20)?;
        let actual = Digest::of(digest.algorithm(), &data);
        if actual != *digest {
            return Err(Error::DigestMismatch { what: format!("blob {digest}"), expected: digest.clone(), actual });
        }
        Ok(data)
    }

    /// Finds the images of the source.
    pub(crate) fn images(&self) -> Result<Vec<SourceImage>> {
        if self.open_file("index.json").is_ok() {
            self.oci_images()
        } else if self.open_file("manifest.json").is_ok() {
            self.docker_images()
        } else {
            Err(Error::NotAnImage {
                path: self.dir.clone(),
                reason: "neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
            })
        }
    }

    fn oci_images(&self) -> Result<Vec<SourceImage>> {
        let data = self.read_small("index.json", 16 << 20)?;
        let index: ImageIndex = serde_json::from_slice(&data).map_err(Error::json("index.json"))?;
        let mut out = Vec::new();
        for desc in index.manifests() {
            let annotations = desc.annotations().clone().unwrap_or_default();
            let name = annotations
                .get("io.containerd.image.name")
                .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
                .cloned();
            let digest: Digest = desc.digest().to_string().parse()?;
            let media_type = desc.media_type().to_string();
            let manifest_digest = if is_index(&media_type) {
                let data = self.read_verified(&digest, "index.json")?;
                let sub: ImageIndex = serde_json::from_slice(&data).map_err(Error::json(format!("index {digest}")))?;
                pick_platform(&sub, &format!("index {digest}"))?
            } else if is_manifest(&media_type) {
                digest
            } else {
                return Err(Error::UnknownMediaType { digest, media_type });
            };
            out.push(self.oci_image(name, manifest_digest)?);
        }
        if out.is_empty() {
            return Err(Error::NotAnImage { path: self.dir.clone(), reason: "index.json lists no manifest".into() });
        }
        Ok(out)
    }

    fn oci_image(&self, name: Option<String>, manifest_digest: Digest) -> Result<SourceImage> {
        let manifest = self.read_verified(&manifest_digest, "index.json")?;
        let what = format!("manifest {manifest_digest}");
        let parsed: ImageManifest = serde_json::from_slice(&manifest).map_err(Error::json(&what))?;
        let config: Digest = parsed.config().digest().to_string().parse()?;
        let config_size = parsed.config().size();
        let mut layers = Vec::new();
        for l in parsed.layers() {
            layers.push(LayerDesc {
                digest: l.digest().to_string().parse()?,
                media_type: l.media_type().to_string(),
                size: l.size(),
            });
        }
        Ok(SourceImage { name, manifest, manifest_digest, config, config_size, layers, files: Vec::new() })
    }

    fn docker_images(&self) -> Result<Vec<SourceImage>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let data = self.read_small("manifest.json", 16 << 20)?;
        let entries: Vec<Entry> = serde_json::from_slice(&data).map_err(Error::json("manifest.json"))?;
        let mut out = Vec::new();
        for e in entries {
            let mut files = Vec::new();
            let config = self.hash_file(&e.config)?;
            files.push((config.clone(), PathBuf::from(&e.config)));
            let mut layers = Vec::new();
            let mut descs = Vec::new();
            for rel in &e.layers {
                let digest = self.hash_file(rel)?;
                let (media_type, size) = self.sniff_layer(rel, &digest)?;
                descs.push(serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
                layers.push(LayerDesc { digest: digest.clone(), media_type: media_type.to_string(), size });
                files.push((digest, PathBuf::from(rel)));
            }
            let config_size = self.open_file(&e.config).and_then(|f| f.metadata()).map(|m| m.len()).unwrap_or(0);
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
                "layers": descs,
            }))
            .map_err(Error::json("synthesized manifest"))?;
            let manifest_digest = Digest::of(crate::Algorithm::Sha256, &manifest);
            let name = e.repo_tags.and_then(|t| t.into_iter().next());
            out.push(SourceImage { name, manifest, manifest_digest, config, config_size, layers, files });
        }
        Ok(out)
    }

    fn hash_file(&self, rel: &str) -> Result<Digest> {
        let mut file = self.open_file(rel).map_err(Error::io("open", self.dir.join(rel)))?;
        let mut hasher = crate::Hasher::new(crate::Algorithm::Sha256);
        std::io::copy(&mut file, &mut hasher).map_err(Error::io("read", self.dir.join(rel)))?;
        Ok(hasher.finish())
    }

    /// `docker save` names no media types: the magic bytes tell.
    fn sniff_layer(&self, rel: &str, digest: &Digest) -> Result<(&'static str, u64)> {
        let mut file = self.open_file(rel).map_err(Error::io("open", self.dir.join(rel)))?;
        let size = file.metadata().map_err(Error::io("stat", self.dir.join(rel)))?.len();
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(Error::io("read", self.dir.join(rel)))?;
        let media_type = match &magic[..n] {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ if size % 512 == 0 => "application/vnd.oci.image.layer.v1.tar",
            _ => {
                return Err(Error::UnknownMediaType { digest: digest.clone(), media_type: format!("file {rel}") });
            }
        };
        Ok((media_type, size))
    }
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

pub(crate) fn is_manifest(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.manifest.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.v2+json"
}

/// The manifest for linux/<host arch> in an index.
pub(crate) fn pick_platform(index: &ImageIndex, what: &str) -> Result<Digest> {
    let arch = host_arch();
    let level = amd64_level();
    let mut offered = Vec::new();
    let mut best: Option<(u8, Digest)> = None;
    for desc in index.manifests() {
        let Some(p) = desc.platform() else { continue };
        let (os, a) = (p.os().to_string(), p.architecture().to_string());
        let variant = p.variant().clone().unwrap_or_default();
        offered.push(if variant.is_empty() { format!("{os}/{a}") } else { format!("{os}/{a}/{variant}") });
        if os != "linux" || a != arch || !is_manifest(desc.media_type().as_ref()) {
            continue;
        }
        let Some(score) = variant_score(arch, &variant, level) else { continue };
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, desc.digest().to_string().parse()?));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| Error::NoPlatform {
        index: what.to_string(),
        arch: arch.to_string(),
        offered: offered.join(", "),
    })
}

/// How well an image built for `arch`'s `variant` fits this host (higher is better), as
/// containerd's platform matcher reads it; `None` when it cannot run here. amd64's variants are
/// its microarchitecture levels (v1-v4: the best the CPU runs wins); arm64's only variant is v8.
fn variant_score(arch: &str, variant: &str, amd64_level: u8) -> Option<u8> {
    match (arch, variant) {
        (_, "") => Some(1),
        ("amd64", v) => {
            let n: u8 = v.strip_prefix('v')?.parse().ok()?;
            (n >= 1 && n <= amd64_level).then_some(n)
        }
        ("arm64", "v8") => Some(1),
        _ => None,
    }
}

/// The x86-64 microarchitecture level this CPU runs (1-4), from the flags of /proc/cpuinfo.
fn amd64_level() -> u8 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: std::collections::HashSet<&str> = info
        .lines()
        .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split_once(':')).map(|(_, f)| f))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let all = |needed: &[&str]| needed.iter().all(|f| flags.contains(f));
    if !all(&["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"]) {
        1
    } else if !all(&["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"]) {
        2
    } else if !all(&["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]) {
        3
    } else {
        4
    }
}

/// Extracts an archive (OCI archive or `docker save`) into `dest`: directories, files and symlinks only;
/// names with `..` or a leading `/` are refused by the tar crate's `unpack_in`.
pub(crate) fn extract_archive(archive: &Path, dest: &Path) -> Result<()> {
    let file = File::open(archive).map_err(Error::io("open", archive))?;
    let mut tar = tar::Archive::new(file);
    let bad = |e: std::io::Error| Error::NotAnImage { path: archive.to_path_buf(), reason: format!("bad tar: {e}") };
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        use tar::EntryType as T;
        if !matches!(entry.header().entry_type(), T::Regular | T::Directory | T::Symlink | T::Continuous) {
            continue;
        }
        entry.set_preserve_permissions(false);
        entry.set_preserve_mtime(false);
        entry.unpack_in(dest).map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(crate::Algorithm::Sha256, b"layer")
    }

    #[test]
    fn layer_media_types_map_to_their_compression() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Compression::Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Compression::Zstd),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression::Gzip),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression::Gzip),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression::Gzip),
        ];
        for (media_type, want) in cases {
            assert_eq!(Compression::of_media_type(media_type, &digest()).ok(), Some(want), "{media_type}");
        }
    }

    #[test]
    fn unknown_media_types_name_the_blob() {
        for media_type in ["application/vnd.oci.image.layer.v1.tar+bzip2", "text/plain", ""] {
            let err = Compression::of_media_type(media_type, &digest()).expect_err(media_type);
            assert!(err.to_string().contains(&digest().to_string()), "{err}");
        }
    }

    #[test]
    fn variants_are_matched_as_containerd_does() {
        assert_eq!(variant_score("amd64", "", 3), Some(1));
        assert_eq!(variant_score("amd64", "v3", 3), Some(3), "the best level the CPU runs");
        assert_eq!(variant_score("amd64", "v4", 3), None, "a level above the CPU's");
        assert_eq!(variant_score("arm64", "v8", 1), Some(1));
        assert_eq!(variant_score("arm64", "v9", 1), None);
        assert_eq!(variant_score("amd64", "x", 3), None);
        assert!((1..=4).contains(&amd64_level()));
    }

    #[test]
    fn host_arch_uses_oci_spelling() {
        assert!(!["x86_64", "aarch64"].contains(&host_arch()));
    }
}
