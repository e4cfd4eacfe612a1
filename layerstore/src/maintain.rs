//! Garbage collection, fsck and disk usage.
//!
//! Liveness is counted from two kinds of roots: image records (their manifest, config, layer blobs
//! and snapshot chain) and container claims (their snapshot chain). A pool entry is live while any
//! snapshot links to it, i.e. while its link count is above one.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsutil::remove_any;
use crate::store::SnapshotInfo;
use crate::{Algorithm, Digest, Error, Hasher, Result, Store};

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: usize,
    /// Snapshots removed.
    pub snapshots: usize,
    /// Pool files removed.
    pub pool_files: usize,
    /// Temp files and directories of crashed or failed writers removed.
    pub temps: usize,
}

/// One thing fsck found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsckProblem {
    /// A blob whose content no longer hashes to its name.
    CorruptBlob {
        /// The blob.
        digest: Digest,
        /// What it hashes to now.
        actual: Digest,
    },
    /// A blob or snapshot an image or container needs that is not there.
    Missing {
        /// The image or container.
        owner: String,
        /// What is missing.
        what: String,
    },
    /// A pool file whose content does not match its content hash (a deduplicated file was changed).
    CorruptPoolFile {
        /// The pool key.
        key: String,
    },
    /// A snapshot directory without its info record, or with one naming another chain.
    BadSnapshot {
        /// The directory name.
        name: String,
    },
    /// Temp files left by a crashed writer.
    Stray {
        /// The path.
        path: String,
    },
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsckProblem::CorruptBlob { digest, actual } => write!(f, "blob {digest} is corrupt: content is {actual}"),
            FsckProblem::Missing { owner, what } => write!(f, "{owner}: {what} is missing"),
            FsckProblem::CorruptPoolFile { key } => write!(f, "pool file {key} does not match its content hash"),
            FsckProblem::BadSnapshot { name } => write!(f, "snapshot {name} has no valid info.json"),
            FsckProblem::Stray { path } => write!(f, "stray temp file {path}"),
        }
    }
}

/// What [`Store::fsck`] checked and found.
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Snapshots checked.
    pub snapshots_checked: usize,
    /// Pool files re-hashed.
    pub pool_checked: usize,
    /// Problems, in the order found.
    pub problems: Vec<FsckProblem>,
    /// Problems fixed (with `repair`): corrupt blobs and pool files and stray temp files removed, and bad snapshots.
    pub repaired: usize,
}

impl FsckReport {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Disk usage of the store, and what each kind of dedup saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Images.
    pub images: usize,
    /// Snapshots (unpacked layers).
    pub snapshots: usize,
    /// What the images would take with nothing shared: every image's blobs plus every file of its layers.
    pub logical_bytes: u64,
    /// Bytes actually allocated by blobs, snapshots and the pool (each inode once).
    pub on_disk_bytes: u64,
    /// Bytes of compressed blobs kept (for export with the original digests).
    pub blob_bytes: u64,
    /// Saved by storing and unpacking a layer shared by several images once.
    pub saved_by_layer_dedup: u64,
    /// Saved by sharing identical files of different layers through the pool.
    pub saved_by_file_dedup: u64,
}

impl Store {
    pub(crate) fn sweep_tmp(&self) -> Result<usize> {
        let mut n = self.blobs.clear_ingest()?;
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(Error::io("read directory", &tmp))? {
            remove_any(&entry.map_err(Error::io("read directory", &tmp))?.path())?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes pool files no snapshot links to.
    pub(crate) fn sweep_pool(&self) -> Result<usize> {
        let pool = self.root.join("pool");
        let mut n = 0;
        for entry in fs::read_dir(&pool).map_err(Error::io("read directory", &pool))? {
            let entry = entry.map_err(Error::io("read directory", &pool))?;
            let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
            if meta.nlink() <= 1 {
                fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes every blob, snapshot and pool file that no image and no container references, and the
    /// temp files of crashed writers. Holds the store lock exclusively, so it never runs under an import.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let mut report = GcReport { temps: self.sweep_tmp()?, ..GcReport::default() };
        let (live_blobs, live_snaps) = self.live()?;
        for d in self.blobs.list()? {
            if !live_blobs.contains(&d) {
                self.blobs.remove(&d)?;
                report.blobs += 1;
            }
        }
        let snaps = self.root.join("snapshots");
        for entry in fs::read_dir(&snaps).map_err(Error::io("read directory", &snaps))? {
            let entry = entry.map_err(Error::io("read directory", &snaps))?;
            if !live_snaps.contains(&entry.file_name().to_string_lossy().into_owned()) {
                remove_any(&entry.path())?;
                report.snapshots += 1;
            }
        }
        report.pool_files = self.sweep_pool()?;
        Ok(report)
    }

    /// Live blobs and snapshot names (chain ID hex).
    fn live(&self) -> Result<(HashSet<Digest>, HashSet<String>)> {
        let mut blobs = HashSet::new();
        let mut snaps = HashSet::new();
        for image in self.images()? {
            blobs.insert(image.manifest);
            blobs.insert(image.config);
            if !image.layer_blobs_dropped {
                blobs.extend(image.layers);
            }
            snaps.extend(image.chain.iter().map(|c| c.hex().to_string()));
        }
        for c in self.containers()? {
            snaps.extend(c.chain.iter().map(|c| c.hex().to_string()));
        }
        Ok((blobs, snaps))
    }

    /// Verifies every blob and pool file against its digest, every snapshot's record, and that every
    /// image and container has what it needs. With `repair`, removes corrupt blobs and pool files (a
    /// corrupt blob can then be imported again) and temp files; what cannot be repaired is reported.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let _lock = self.lock(true)?;
        let mut r = FsckReport::default();
        for d in self.blobs.list()? {
            r.blobs_checked += 1;
            if let Some(actual) = self.blobs.verify(&d)? {
                r.problems.push(FsckProblem::CorruptBlob { digest: d.clone(), actual });
                if repair {
                    self.blobs.remove(&d)?;
                    r.repaired += 1;
                }
            }
        }
        let snaps = self.root.join("snapshots");
        let mut present = HashSet::new();
        for entry in fs::read_dir(&snaps).map_err(Error::io("read directory", &snaps))? {
            let entry = entry.map_err(Error::io("read directory", &snaps))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            r.snapshots_checked += 1;
            let info: Option<SnapshotInfo> =
                fs::read(entry.path().join("info.json")).ok().and_then(|d| serde_json::from_slice(&d).ok());
            if info.is_some_and(|i| i.chain_id.hex() == name) && entry.path().join("fs").is_dir() {
                present.insert(name);
            } else {
                r.problems.push(FsckProblem::BadSnapshot { name });
                if repair {
                    remove_any(&entry.path())?;
                    r.repaired += 1;
                }
            }
        }
        let pool = self.root.join("pool");
        for entry in fs::read_dir(&pool).map_err(Error::io("read directory", &pool))? {
            let entry = entry.map_err(Error::io("read directory", &pool))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            r.pool_checked += 1;
            let want = key.split('-').next().unwrap_or_default().to_string();
            let mut hasher = Hasher::new(Algorithm::Sha256);
            let mut f = fs::File::open(entry.path()).map_err(Error::io("open", entry.path()))?;
            io::copy(&mut f, &mut hasher).map_err(Error::io("read", entry.path()))?;
            if hasher.finish().hex() != want {
                r.problems.push(FsckProblem::CorruptPoolFile { key });
            }
        }
        for image in self.images()? {
            let owner = format!("image {}", image.name);
            let layers = if image.layer_blobs_dropped { &[][..] } else { &image.layers[..] };
            for d in [&image.manifest, &image.config].into_iter().chain(layers) {
                if !self.blobs.contains(d) {
                    r.problems.push(FsckProblem::Missing { owner: owner.clone(), what: format!("blob {d}") });
                }
            }
            for c in &image.chain {
                if !present.contains(c.hex()) {
                    r.problems.push(FsckProblem::Missing { owner: owner.clone(), what: format!("snapshot {c}") });
                }
            }
        }
        for c in self.containers()? {
            for s in &c.chain {
                if !present.contains(s.hex()) {
                    let owner = format!("container {}", c.id);
                    r.problems.push(FsckProblem::Missing { owner, what: format!("snapshot {s}") });
                }
            }
        }
        let mut strays = Vec::new();
        for dir in [self.root.join("tmp"), self.root.join("ingest")] {
            for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
                let path = entry.map_err(Error::io("read directory", &dir))?.path();
                // A `.partial` file is an interrupted pull's download, kept so the next pull resumes it.
                let name = path.to_string_lossy();
                if !name.ends_with(".lock") && !name.ends_with(".partial") {
                    strays.push(path);
                }
            }
        }
        for path in strays {
            r.problems.push(FsckProblem::Stray { path: path.display().to_string() });
            if repair {
                remove_any(&path)?;
                r.repaired += 1;
            }
        }
        Ok(r)
    }

    /// Logical size, bytes on disk and what each kind of dedup saved.
    pub fn du(&self) -> Result<DiskUsage> {
        let _lock = self.lock(false)?;
        let images = self.images()?;
        let mut u = DiskUsage { images: images.len(), ..DiskUsage::default() };
        let mut seen = BTreeSet::new();
        let blob_size = |d: &Digest| fs::metadata(self.blobs.path(d)).map(|m| m.len()).unwrap_or(0);
        let snap_logical = |c: &Digest| -> u64 {
            fs::read(self.snapshot_path(c).join("info.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<SnapshotInfo>(&d).ok())
                .map_or(0, |i| i.file_bytes)
        };
        let mut unique_logical = 0;
        let mut counted_blobs = HashSet::new();
        let mut counted_snaps = HashSet::new();
        for image in &images {
            for d in [&image.manifest, &image.config].into_iter().chain(&image.layers) {
                let size = blob_size(d);
                u.logical_bytes += size;
                if counted_blobs.insert(d.clone()) {
                    unique_logical += size;
                }
            }
            for c in &image.chain {
                let size = snap_logical(c);
                u.logical_bytes += size;
                if counted_snaps.insert(c.clone()) {
                    unique_logical += size;
                }
            }
        }
        u.saved_by_layer_dedup = u.logical_bytes - unique_logical;
        u.blob_bytes = self.blobs.list()?.iter().map(blob_size).sum();
        let mut snapshot_file_bytes = 0;
        let snaps = self.root.join("snapshots");
        for entry in fs::read_dir(&snaps).map_err(Error::io("read directory", &snaps))? {
            let entry = entry.map_err(Error::io("read directory", &snaps))?;
            u.snapshots += 1;
            if let Ok(c) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>() {
                snapshot_file_bytes += snap_logical(&c);
            }
        }
        let mut unique_file_bytes = 0;
        for dir in ["blobs", "snapshots", "pool"] {
            walk(&self.root.join(dir), &mut |path, meta| {
                if seen.insert((meta.dev(), meta.ino())) {
                    u.on_disk_bytes += meta.blocks() * 512;
                    if meta.is_file() && dir == "snapshots" && !path.ends_with("info.json") {
                        unique_file_bytes += meta.len();
                    }
                }
            })?;
        }
        // Files only reached through the pool were counted above as pool inodes linked from snapshots.
        u.saved_by_file_dedup = snapshot_file_bytes.saturating_sub(unique_file_bytes);
        Ok(u)
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let meta = fs::symlink_metadata(dir).map_err(Error::io("stat", dir))?;
    f(dir, &meta);
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
            walk(&entry.map_err(Error::io("read directory", dir))?.path(), f)?;
        }
    }
    Ok(())
}
