//! The store: images imported into blobs and snapshots, and containers' overlay root file systems.
//!
//! Import holds the store's lock exclusively (imports run one at a time, and gc cannot run under them),
//! so when an import fails, everything it created — blobs, snapshots, pool entries — is removed again and
//! the store is as before. Each snapshot keeps a tar split beside its tree (see [`crate::split`]), which
//! rebuilds the layer's uncompressed tar bit for bit: an image imported with
//! [`ImportOptions::drop_layer_blobs`] (the CLI's default) keeps no compressed layer blob, which
//! would cost about a third of the store, and `export` rebuilds and compresses each layer again
//! (the diff IDs and the config are the original ones; the layer and manifest digests are new).
//! Images that keep their blobs export with every original digest, and fsck re-verifies each
//! snapshot against its blob.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::blobs::Ingested;
use crate::fsutil::{FileLock, mkdir_p, remove_any, unique_name, write_atomic};
use crate::import::{Compression, Source, SourceImage, extract_archive};
use crate::mount::{mount_overlay, unmount_overlay};
use crate::{BlobStore, Digest, Error, Result, UnpackOptions, unpack_layer};

/// An image in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Its name (`busybox:latest`), or its manifest digest when the source gave none.
    pub name: String,
    /// The manifest blob.
    pub manifest: Digest,
    /// The config blob.
    pub config: Digest,
    /// The layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// The layers' diff IDs (digests of the uncompressed tars).
    pub diff_ids: Vec<Digest>,
    /// The chain IDs that key the layers' snapshots.
    pub chain: Vec<Digest>,
    /// Seconds since the epoch when it was imported.
    pub imported: u64,
    /// Its compressed layer blobs were removed once its snapshots were verified
    /// ([`ImportOptions::drop_layer_blobs`]): export rebuilds its layers from their tar splits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer_blobs_dropped: bool,
}

/// How [`Store::import_with`] stores images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Remove each image's compressed layer blobs once its snapshots are unpacked and verified
    /// against their diff IDs, keeping only what running needs and the tar splits that rebuild each
    /// layer for `export` (the `strata` CLI's default). Here the default keeps them (containerd's
    /// choice), so that `export` reproduces every original digest. A blob another image keeps stays,
    /// and so does the blob of a layer without a tar split (one that replaced its own entries).
    pub drop_layer_blobs: bool,
}

/// A container's claim on an image's snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRef {
    /// The container id.
    pub id: String,
    /// The image it was made from.
    pub image: String,
    /// The snapshots its root file system stacks, bottom first.
    pub chain: Vec<Digest>,
    /// Who made the claim (the CLI records the engine's state root), so a tool can tell whose it is.
    #[serde(default)]
    pub owner: String,
}

/// What a snapshot came from, kept beside its tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotInfo {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub layer: Digest,
    pub file_bytes: u64,
    pub pooled_bytes: u64,
}

/// The chain IDs of a stack of layers with these diff IDs, bottom first.
pub(crate) fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut parent: Option<Digest> = None;
    diff_ids
        .iter()
        .map(|d| {
            let c = Digest::chain(parent.as_ref(), d);
            parent = Some(c.clone());
            c
        })
        .collect()
}

/// The name of a snapshot's tar split, beside its tree (see [`crate::split`]).
pub(crate) const SPLIT_FILE: &str = "tar-split.zst";

/// The image store rooted at one directory (`/var/lib/strata` for the CLI).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) blobs: BlobStore,
    /// Bounds on each layer unpacked (see [`LayerLimits`]).
    pub(crate) limits: crate::LayerLimits,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName { what: "container id", value: id.into(), reason: "use 1-128 of [A-Za-z0-9_.-]" })
    }
}

impl Store {
    /// Opens the store at `root`, creating it if needed. The root and the pool are private to
    /// their owner (0700, as containerd's and Docker's trees are): every image's files are in
    /// the store, and the pool's names list every setuid binary of every image. Containers do not
    /// need the way in: their root file systems are mounted by the runtime.
    pub fn open(root: &Path) -> Result<Store> {
        use std::os::unix::fs::PermissionsExt;
        mkdir_p(root)?;
        for dir in ["snapshots", "pool", "images", "containers", "tmp"] {
            mkdir_p(&root.join(dir))?;
        }
        for dir in [root.to_path_buf(), root.join("pool")] {
            // Tightened where needed only: a store on a read-only mount can still be read.
            let mode = fs::metadata(&dir).map_err(Error::io("stat", &dir))?.permissions().mode();
            if mode & 0o7777 != 0o700 {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(Error::io("chmod 0700", &dir))?;
            }
        }
        let blobs = BlobStore::open(root)?;
        Ok(Store { root: root.to_path_buf(), blobs, limits: crate::LayerLimits::default() })
    }

    /// The store with other bounds on each layer it unpacks.
    pub fn with_layer_limits(mut self, limits: crate::LayerLimits) -> Store {
        self.limits = limits;
        self
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<FileLock> {
        FileLock::acquire(&self.root.join("lock"), exclusive)
    }

    /// The directory of the snapshot with chain ID `chain` (the tree is its `fs/`).
    pub fn snapshot_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain.hex())
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root.join("images").join(format!("{}.json", hex::encode(name)))
    }

    /// Imports every image of an OCI layout directory, OCI archive or `docker save` archive. `name`
    /// renames the image (only for a source holding one). Nothing is left behind when it fails.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<Vec<ImageRecord>> {
        self.import_with(source, name, ImportOptions::default())
    }

    /// [`Store::import`] with options.
    pub fn import_with(&self, source: &Path, name: Option<&str>, opts: ImportOptions) -> Result<Vec<ImageRecord>> {
        let _lock = self.lock(true)?;
        let meta = fs::metadata(source).map_err(Error::io("stat", source))?;
        let staging = if meta.is_dir() {
            None
        } else {
            let dir = self.root.join("tmp").join(unique_name("archive-"));
            mkdir_p(&dir)?;
            if let Err(e) = extract_archive(source, &dir) {
                remove_any(&dir)?;
                return Err(e);
            }
            Some(dir)
        };
        let mut created = Created::default();
        let result = (|| {
            let src = Source::open(staging.as_deref().unwrap_or(source))?;
            let images = src.images()?;
            if name.is_some() && images.len() != 1 {
                return Err(Error::InvalidName {
                    what: "image name",
                    value: name.unwrap_or_default().into(),
                    reason: "the source holds several images; import it without a name",
                });
            }
            let mut records = Vec::new();
            for image in &images {
                records.push(self.import_image(Some(&src), image, name, opts.drop_layer_blobs, &mut created)?);
            }
            Ok(records)
        })();
        if let Some(dir) = &staging {
            remove_any(dir)?;
        }
        match result {
            Ok(mut records) => {
                for r in records.iter_mut() {
                    r.layer_blobs_dropped = opts.drop_layer_blobs;
                    self.write_record(r)?;
                }
                if opts.drop_layer_blobs {
                    // The records say so before a blob goes: a crash in between leaves blobs
                    // that gc removes, never a record that claims blobs it lacks.
                    self.drop_unkept_layer_blobs(&records)?;
                }
                Ok(records)
            }
            Err(e) => {
                self.roll_back(created);
                Err(e)
            }
        }
    }

    /// Removes the layer blobs of `records` that no image keeping its blobs references, and
    /// whose snapshot's tar split rebuilds the layer (a layer without one keeps its blob).
    pub(crate) fn drop_unkept_layer_blobs(&self, records: &[ImageRecord]) -> Result<()> {
        let kept = self.needed_layer_blobs()?;
        for d in records.iter().flat_map(|r| &r.layers) {
            if !kept.contains(d) {
                self.blobs.remove(d)?;
            }
        }
        Ok(())
    }

    /// The layer blobs the images need: every layer blob of an image that keeps them, and of the
    /// others those whose snapshot has no tar split.
    pub(crate) fn needed_layer_blobs(&self) -> Result<std::collections::HashSet<Digest>> {
        let mut needed = std::collections::HashSet::new();
        for image in self.images()? {
            for (layer, chain) in image.layers.iter().zip(&image.chain) {
                if !image.layer_blobs_dropped || !self.has_split(chain) {
                    needed.insert(layer.clone());
                }
            }
        }
        Ok(needed)
    }

    /// Whether the snapshot `chain` has a tar split that rebuilds its layer.
    pub(crate) fn has_split(&self, chain: &Digest) -> bool {
        self.snapshot_path(chain).join(SPLIT_FILE).is_file()
    }

    /// Writes the uncompressed tar of the layer that snapshot `chain` unpacked, rebuilt from its tree
    /// and tar split, to `out`, and checks it against `diff_id`. Returns its length.
    pub(crate) fn rebuild_layer(&self, chain: &Digest, diff_id: &Digest, out: &mut dyn std::io::Write) -> Result<u64> {
        let dir = self.snapshot_path(chain);
        let mut hashing = crate::HashingWriter::new(out, diff_id.algorithm());
        crate::split::rebuild(&dir.join("fs"), &dir.join(SPLIT_FILE), &mut hashing)?;
        let (actual, len, _) = hashing.finish();
        if actual != *diff_id {
            return Err(Error::BadSplit {
                split: dir.join(SPLIT_FILE),
                reason: format!("the tar rebuilt is {actual}, not the layer's diff ID {diff_id}: its tree changed"),
            });
        }
        Ok(len)
    }

    /// Writes an image's record, which makes it visible.
    pub(crate) fn write_record(&self, record: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(Error::json("image record"))?;
        write_atomic(&self.image_path(&record.name), &json)
    }

    /// Removes what a failed import or pull created.
    pub(crate) fn roll_back(&self, created: Created) {
        for dir in created.snapshots {
            let _ = remove_any(&dir);
        }
        for d in created.blobs {
            let _ = self.blobs.remove(&d);
        }
        let _ = self.sweep_tmp();
        let _ = self.sweep_pool();
    }

    /// Stores one image: its blobs from `src` unless present (a pull has fetched them already, and
    /// passes no source), then its snapshots. With `lean` (its layer blobs are to be dropped), a
    /// layer whose snapshot exists with a tar split needs no blob.
    pub(crate) fn import_image(
        &self,
        src: Option<&Source>,
        image: &SourceImage,
        name: Option<&str>,
        lean: bool,
        created: &mut Created,
    ) -> Result<ImageRecord> {
        let manifest_what = format!("manifest {}", image.manifest_digest);
        // Everything that can be checked before writing is checked first.
        let mut compressions = Vec::new();
        for layer in &image.layers {
            compressions.push(Compression::of_media_type(&layer.media_type, &layer.digest)?);
        }
        let mut ingest = |reader: &mut dyn Read, digest: &Digest, what: &str| -> Result<()> {
            let (_, how) = self.blobs.ingest(reader, Some(digest), what)?;
            if how == Ingested::Created {
                created.blobs.push(digest.clone());
            }
            Ok(())
        };
        // A source blob must have its descriptor's size, checked before a byte is stored; the
        // read is bounded by it too.
        let open = |digest: &Digest, size: u64, what: &str| -> Result<std::io::Take<fs::File>> {
            let f = match src {
                Some(src) => src.open_blob(image, digest, &manifest_what)?,
                None => {
                    return Err(Error::MissingBlob { digest: digest.clone(), referenced_by: manifest_what.clone() });
                }
            };
            let actual = f.metadata().map_err(Error::io("stat", what))?.len();
            if actual != size {
                return Err(Error::SizeMismatch { what: what.to_string(), expected: size, actual });
            }
            Ok(f.take(size))
        };
        ingest(&mut image.manifest.as_slice(), &image.manifest_digest, &manifest_what)?;
        if !self.blobs.contains(&image.config) {
            let what = format!("config {}", image.config);
            let mut f = open(&image.config, image.config_size, &what)?;
            ingest(&mut f, &image.config, &what)?;
        }
        let config_bytes = self.blobs.read(&image.config)?;
        // Only the diff IDs are needed here; the rest of the config is read (strictly) when a container runs.
        #[derive(Deserialize)]
        struct RootFs {
            diff_ids: Vec<Digest>,
        }
        #[derive(Deserialize)]
        struct ConfigLayers {
            rootfs: RootFs,
        }
        let config: ConfigLayers =
            serde_json::from_slice(&config_bytes).map_err(Error::json(format!("config {}", image.config)))?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != image.layers.len() {
            return Err(Error::BadField {
                what: format!("config {}", image.config),
                field: "rootfs.diff_ids".into(),
                reason: format!("{} diff IDs for {} layers in {manifest_what}", diff_ids.len(), image.layers.len()),
            });
        }
        let chains = chain_ids(&diff_ids);
        for (layer, chain_id) in image.layers.iter().zip(&chains) {
            let unneeded = lean && self.has_split(chain_id);
            if !self.blobs.contains(&layer.digest) && !unneeded {
                let what = format!("layer {}", layer.digest);
                let mut f = open(&layer.digest, layer.size, &what)?;
                ingest(&mut f, &layer.digest, &what)?;
            }
        }
        let mut chain = Vec::new();
        for (((layer, chain_id), diff_id), compression) in
            image.layers.iter().zip(chains).zip(&diff_ids).zip(compressions)
        {
            if !self.snapshot_path(&chain_id).join("info.json").exists() {
                let lowers = chain.iter().rev().map(|c| self.snapshot_path(c).join("fs")).collect();
                let dir = self.unpack_snapshot(&layer.digest, diff_id, &chain_id, compression, lowers)?;
                created.snapshots.push(dir);
            }
            chain.push(chain_id);
        }
        Ok(ImageRecord {
            name: name
                .map(str::to_string)
                .or_else(|| image.name.clone())
                .unwrap_or_else(|| image.manifest_digest.to_string()),
            manifest: image.manifest_digest.clone(),
            config: image.config.clone(),
            layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids,
            chain,
            imported: now(),
            layer_blobs_dropped: false,
        })
    }

    /// Unpacks a layer blob into `tmp/`, checks its diff ID, and renames it to its snapshot directory.
    pub(crate) fn unpack_snapshot(
        &self,
        layer: &Digest,
        diff_id: &Digest,
        chain_id: &Digest,
        c: Compression,
        lowers: Vec<PathBuf>,
    ) -> Result<PathBuf> {
        let tmp = self.root.join("tmp").join(unique_name("snap-"));
        let result = (|| {
            mkdir_p(&tmp.join("fs"))?;
            let blob = self.blobs.open_blob(layer)?;
            let reader = c.threaded_reader(blob);
            let opts = UnpackOptions {
                pool: Some(self.root.join("pool")),
                lowers: Some(lowers),
                diff_id_algorithm: diff_id.algorithm(),
                limits: self.limits,
                split: Some(tmp.join(SPLIT_FILE)),
            };
            let stats = unpack_layer(reader, &tmp.join("fs"), layer, &opts)?;
            let actual = stats.diff_id.clone().unwrap_or_else(|| diff_id.clone());
            if actual != *diff_id {
                return Err(Error::DigestMismatch {
                    what: format!("layer {layer} uncompressed (its diff ID in the config)"),
                    expected: diff_id.clone(),
                    actual,
                });
            }
            let info = SnapshotInfo {
                chain_id: chain_id.clone(),
                diff_id: diff_id.clone(),
                layer: layer.clone(),
                file_bytes: stats.file_bytes,
                pooled_bytes: stats.pooled_bytes,
            };
            let json = serde_json::to_vec_pretty(&info).map_err(Error::json("snapshot info"))?;
            fs::write(tmp.join("info.json"), json).map_err(Error::io("write", tmp.join("info.json")))?;
            // One syncfs makes the whole tree durable before it becomes visible.
            let dir = fs::File::open(&tmp).map_err(Error::io("open", &tmp))?;
            rustix::fs::syncfs(&dir).map_err(|e| Error::io("syncfs", &tmp)(e.into()))?;
            let dest = self.snapshot_path(chain_id);
            fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))?;
            crate::fsutil::sync_dir(&self.root.join("snapshots"))?;
            Ok(dest)
        })();
        if result.is_err() {
            let _ = remove_any(&tmp);
        }
        result
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
            let path = entry.map_err(Error::io("read directory", &dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = fs::read(&path).map_err(Error::io("read", &path))?;
                out.push(serde_json::from_slice(&data).map_err(Error::json(path.display().to_string()))?);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The image called `name` (or `name:latest`).
    pub fn image(&self, name: &str) -> Result<ImageRecord> {
        for candidate in [name.to_string(), format!("{name}:latest")] {
            let path = self.image_path(&candidate);
            if let Ok(data) = fs::read(&path) {
                return serde_json::from_slice(&data).map_err(Error::json(path.display().to_string()));
            }
        }
        Err(Error::ImageNotFound(name.to_string()))
    }

    /// The image's OCI config (entrypoint, cmd, env, ...).
    pub fn image_config(&self, name: &str) -> Result<ImageConfiguration> {
        let image = self.image(name)?;
        let data = self.blobs.read(&image.config)?;
        serde_json::from_slice(&data).map_err(Error::json(format!("config {}", image.config)))
    }

    /// Removes the image's name; its blobs and snapshots go at the next [`Store::gc`] if nothing else uses them.
    pub fn remove_image(&self, name: &str) -> Result<ImageRecord> {
        let _lock = self.lock(true)?;
        let image = self.image(name)?;
        fs::remove_file(self.image_path(&image.name)).map_err(Error::io("remove", self.image_path(&image.name)))?;
        Ok(image)
    }

    /// Writes the image as an OCI layout directory `dest`. Kept blobs are written as they are, so an
    /// image that kept its layer blobs gets every digest it was imported with. A layer whose blob
    /// was dropped is rebuilt from its snapshot's tar split (checked against its diff ID, so the
    /// config and its digest are the original ones) and compressed again with gzip; the manifest
    /// then names the new layer blobs, and has a new digest.
    /// A destination that did not exist is removed again when the export fails.
    pub fn export(&self, name: &str, dest: &Path) -> Result<()> {
        let _lock = self.lock(false)?;
        let image = self.image(name)?;
        let fresh = !dest.exists();
        let result = self.export_image(&image, dest);
        if result.is_err() && fresh {
            let _ = remove_any(dest);
        }
        result
    }

    fn export_image(&self, image: &ImageRecord, dest: &Path) -> Result<()> {
        for (layer, chain) in image.layers.iter().zip(&image.chain) {
            if !self.blobs.contains(layer) && !self.has_split(chain) {
                return Err(Error::CannotExport {
                    image: image.name.clone(),
                    reason: format!(
                        "its layer blob {layer} was dropped and snapshot {chain} has no tar split to rebuild it \
                         from; pull or import it again"
                    ),
                });
            }
        }
        let blobs_dir = dest.join("blobs").join("sha256");
        mkdir_p(&blobs_dir)?;
        mkdir_p(&dest.join("blobs").join("sha512"))?;
        let link = |d: &Digest| -> Result<()> {
            let from = self.blobs.path(d);
            let to = dest.join("blobs").join(d.algorithm().name()).join(d.hex());
            if !to.exists() && fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(Error::io("copy", &to))?;
            }
            Ok(())
        };
        let mut manifest = self.blobs.read(&image.manifest)?;
        let mut manifest_digest = image.manifest.clone();
        let mut rebuilt = Vec::new();
        for (i, ((layer, chain), diff_id)) in image.layers.iter().zip(&image.chain).zip(&image.diff_ids).enumerate() {
            if self.blobs.contains(layer) {
                link(layer)?;
            } else {
                rebuilt.push((i, self.export_rebuilt_layer(chain, diff_id, &blobs_dir)?));
            }
        }
        link(&image.config)?;
        let mut value: serde_json::Value =
            serde_json::from_slice(&manifest).map_err(Error::json(format!("manifest {}", image.manifest)))?;
        let media_type = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_string();
        if rebuilt.is_empty() {
            link(&image.manifest)?;
        } else {
            let gzip = if media_type.contains("docker") {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            };
            let bad = |reason: &str| Error::BadField {
                what: format!("manifest {}", image.manifest),
                field: "layers".into(),
                reason: reason.into(),
            };
            let layers = value.get_mut("layers").and_then(|l| l.as_array_mut()).ok_or_else(|| bad("not a list"))?;
            for (i, (digest, size)) in rebuilt {
                let l =
                    layers.get_mut(i).and_then(|l| l.as_object_mut()).ok_or_else(|| bad("fewer than the image's"))?;
                l.insert("mediaType".into(), gzip.into());
                l.insert("digest".into(), digest.to_string().into());
                l.insert("size".into(), size.into());
            }
            manifest = serde_json::to_vec(&value).map_err(Error::json("manifest"))?;
            manifest_digest = Digest::of(crate::Algorithm::Sha256, &manifest);
            write_atomic(&blobs_dir.join(manifest_digest.hex()), &manifest)?;
        }
        let tag = match image.name.rsplit_once(':') {
            Some((_, tag)) if !tag.contains('/') => tag.to_string(),
            _ => image.name.clone(),
        };
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": media_type,
                "digest": manifest_digest.to_string(),
                "size": manifest.len(),
                "annotations": {
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": image.name,
                },
            }],
        });
        let index = serde_json::to_vec_pretty(&index).map_err(Error::json("index.json"))?;
        write_atomic(&dest.join("index.json"), &index)?;
        write_atomic(&dest.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
    }

    /// Rebuilds the layer of snapshot `chain` from its tar split into a gzip blob in `blobs_dir`
    /// (sha256). Returns the blob's digest and size.
    fn export_rebuilt_layer(&self, chain: &Digest, diff_id: &Digest, blobs_dir: &Path) -> Result<(Digest, u64)> {
        let tmp = blobs_dir.join(unique_name(".rebuilt-"));
        let result = (|| {
            let file = fs::File::create_new(&tmp).map_err(Error::io("create", &tmp))?;
            let compressed = crate::HashingWriter::new(std::io::BufWriter::new(file), crate::Algorithm::Sha256);
            let mut gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
            self.rebuild_layer(chain, diff_id, &mut gz)?;
            let compressed = gz.finish().map_err(Error::io("write", &tmp))?;
            let (digest, size, file) = compressed.finish();
            file.into_inner().map_err(|e| Error::io("write", &tmp)(e.into_error()))?;
            let to = blobs_dir.join(digest.hex());
            fs::rename(&tmp, &to).map_err(Error::io("rename", &to))?;
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Mounts a root file system for container `id`: the image's snapshots under a fresh upper directory.
    /// The claim is recorded before the mount, so gc never removes a snapshot a container stands on.
    /// `owner` is kept in the claim for the caller's own bookkeeping.
    pub fn create_rootfs(&self, id: &str, image: &str, owner: &str) -> Result<PathBuf> {
        check_id(id)?;
        let _lock = self.lock(false)?;
        let image = self.image(image)?;
        if image.chain.is_empty() {
            return Err(Error::BadField {
                what: format!("image {}", image.name),
                field: "layers".into(),
                reason: "an image without layers has no root file system".into(),
            });
        }
        let dir = self.root.join("containers").join(id);
        fs::create_dir(&dir).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists(format!("container {id:?}"))
            } else {
                Error::io("create directory", &dir)(e)
            }
        })?;
        let result = (|| {
            let claim = ContainerRef {
                id: id.into(),
                image: image.name.clone(),
                chain: image.chain.clone(),
                owner: owner.into(),
            };
            write_atomic(&dir.join("ref.json"), &serde_json::to_vec_pretty(&claim).map_err(Error::json("ref.json"))?)?;
            for sub in ["upper", "work", "rootfs"] {
                mkdir_p(&dir.join(sub))?;
            }
            let lowers: Vec<PathBuf> = image.chain.iter().rev().map(|c| self.snapshot_path(c).join("fs")).collect();
            mount_overlay(&lowers, &dir.join("upper"), &dir.join("work"), &dir.join("rootfs"))?;
            Ok(dir.join("rootfs"))
        })();
        if result.is_err() {
            let _ = remove_any(&dir);
        }
        result
    }

    /// Unmounts and removes container `id`'s root file system and its claim.
    pub fn remove_rootfs(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let dir = self.root.join("containers").join(id);
        if !dir.exists() {
            return Err(Error::ContainerNotFound(id.into()));
        }
        unmount_overlay(&dir.join("rootfs"))?;
        remove_any(&dir)
    }

    /// Every container claim.
    pub fn containers(&self) -> Result<Vec<ContainerRef>> {
        let dir = self.root.join("containers");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
            let path = entry.map_err(Error::io("read directory", &dir))?.path().join("ref.json");
            // A container directory without its claim is one whose creation failed half-way.
            if let Ok(data) = fs::read(&path) {
                out.push(serde_json::from_slice(&data).map_err(Error::json(path.display().to_string()))?);
            }
        }
        out.sort_by(|a: &ContainerRef, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// What a failing import must remove again.
#[derive(Default)]
pub(crate) struct Created {
    pub(crate) blobs: Vec<Digest>,
    pub(crate) snapshots: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_plain_file_names() {
        for ok in ["c1", "my-app_2.0", &"x".repeat(128)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
