//! Garbage collection, fsck and disk usage.
//!
//! Liveness is counted from two kinds of roots: image records (their manifest, config, layer blobs
//! and snapshot chain) and container claims (their snapshot chain). A pool entry is live while any
//! snapshot links to it, i.e. while its link count is above one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::fsutil::{read_open, remove_any};
use crate::store::{SPLIT_FILE, SnapshotInfo};
use crate::{Algorithm, Digest, Error, Hasher, Result, Store};

/// What unpacking a snapshot again takes.
struct UnpackPlan {
    layer: Digest,
    diff_id: Digest,
    chain: Digest,
    compression: crate::import::Compression,
    lowers: Vec<std::path::PathBuf>,
}

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
    /// A file of a snapshot that is no longer what its layer unpacked: its content (through its
    /// pool file) or its metadata changed.
    SnapshotFile {
        /// The snapshot's chain ID.
        snapshot: String,
        /// The file, inside the snapshot's tree.
        path: String,
        /// What differs.
        reason: &'static str,
    },
    /// A snapshot whose tar split no longer rebuilds its layer's tar (its tree or the split changed).
    BadSplit {
        /// The snapshot's chain ID.
        snapshot: String,
        /// What failed.
        reason: String,
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
            FsckProblem::SnapshotFile { snapshot, path, reason } => {
                write!(f, "snapshot {snapshot}: /{path}: {reason}")
            }
            FsckProblem::BadSplit { reason, .. } => write!(f, "{reason}"),
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
    /// Regular files of snapshots verified through their pool file (content re-hashed there,
    /// metadata compared with the pool key).
    pub files_checked: usize,
    /// Tar splits checked (each layer's tar rebuilt from its snapshot and hashed).
    pub splits_checked: usize,
    /// Committed snapshots of strata's containerd snapshotter (`containerd/`) whose files were
    /// checked against the pool like the store's own.
    pub containerd_snapshots_checked: usize,
    /// Regular files of snapshots outside the pool (files with xattrs, or a pool on another
    /// file system), whose content fsck cannot verify.
    pub files_unverified: usize,
    /// Problems, in the order found.
    pub problems: Vec<FsckProblem>,
    /// Problems fixed (with `repair`): corrupt blobs and stray temp files removed; corrupt pool
    /// files removed and every snapshot with a damaged file, or without its info record,
    /// unpacked again from its kept layer blob.
    pub repaired: usize,
    /// What `repair` could not fix, and why (a snapshot whose layer blob was not kept, or that a
    /// container uses).
    pub unrepaired: Vec<String>,
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
    /// Bytes of the snapshots' tar splits (what rebuilds a layer whose blob was dropped).
    pub split_bytes: u64,
    /// Saved by storing and unpacking a layer shared by several images once.
    pub saved_by_layer_dedup: u64,
    /// Saved by sharing identical files of different layers through the pool.
    pub saved_by_file_dedup: u64,
    /// Bytes of strata's containerd snapshotter (`containerd/`) outside the pool: its records,
    /// directories and the files it could not pool (counted in `on_disk_bytes` too).
    pub containerd_bytes: u64,
    /// Snapshots of strata's containerd snapshotter.
    pub containerd_snapshots: usize,
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
        let mut blobs = self.needed_layer_blobs()?;
        let mut snaps = HashSet::new();
        for image in self.images()? {
            blobs.insert(image.manifest);
            blobs.insert(image.config);
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
        // snapshots to unpack again (with `repair`)
        let mut damaged = BTreeSet::new();
        for entry in fs::read_dir(&snaps).map_err(Error::io("read directory", &snaps))? {
            let entry = entry.map_err(Error::io("read directory", &snaps))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            r.snapshots_checked += 1;
            let info: Option<SnapshotInfo> =
                fs::read(entry.path().join("info.json")).ok().and_then(|d| serde_json::from_slice(&d).ok());
            if info.is_some_and(|i| i.chain_id.hex() == name) && entry.path().join("fs").is_dir() {
                present.insert(name);
            } else {
                r.problems.push(FsckProblem::BadSnapshot { name: name.clone() });
                damaged.insert(name);
            }
        }
        let pool = self.root.join("pool");
        let mut corrupt_pool = Vec::new();
        // (device, inode) of each pool file: its key, and whether its content matches it
        let mut pooled: HashMap<(u64, u64), (String, bool)> = HashMap::new();
        for entry in fs::read_dir(&pool).map_err(Error::io("read directory", &pool))? {
            let entry = entry.map_err(Error::io("read directory", &pool))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            r.pool_checked += 1;
            let want = key.split('-').next().unwrap_or_default().to_string();
            let mut hasher = Hasher::new(Algorithm::Sha256);
            let mut f = read_open(|flags| rustix::fs::open(entry.path(), flags, Mode::empty()), OFlags::empty())
                .map(fs::File::from)
                .map_err(|e| Error::io("open", entry.path())(e.into()))?;
            io::copy(&mut f, &mut hasher).map_err(Error::io("read", entry.path()))?;
            let good = hasher.finish().hex() == want;
            if !good {
                r.problems.push(FsckProblem::CorruptPoolFile { key: key.clone() });
                corrupt_pool.push(entry.path());
            }
            let meta = f.metadata().map_err(Error::io("stat", entry.path()))?;
            pooled.insert((meta.dev(), meta.ino()), (key, good));
        }
        self.check_containerd_snapshots(&pooled, repair, &mut r)?;
        for name in &present {
            let files_damaged = self.check_snapshot_files(name, &pooled, &mut r)?;
            let split_damaged = self.check_split(name, &mut r);
            if files_damaged || split_damaged {
                damaged.insert(name.clone());
            }
        }
        if repair {
            let mut plans = Vec::new();
            for name in &damaged {
                match self.unpack_plan(name) {
                    Ok(plan) => plans.push(plan),
                    Err(why) => r.unrepaired.push(format!("snapshot {name}: {why}")),
                }
            }
            if !corrupt_pool.is_empty() && !r.unrepaired.is_empty() {
                // A corrupt pool file must go before snapshots are unpacked again (they would link
                // to it), but a snapshot that cannot be unpacked again still links to it: keep
                // everything as it is, so that fsck goes on reporting it.
                r.unrepaired.push(format!(
                    "{} corrupt pool files and {} other snapshots are left as they are until every snapshot \
                     can be unpacked again",
                    corrupt_pool.len(),
                    plans.len()
                ));
            } else {
                for path in &corrupt_pool {
                    remove_any(path)?;
                    r.repaired += 1;
                }
                for plan in plans {
                    let name = plan.chain.hex().to_string();
                    match self.unpack_from_plan(plan) {
                        Ok(()) => {
                            r.repaired += 1;
                            present.insert(name);
                        }
                        Err(e) => r.unrepaired.push(format!("snapshot {name}: unpacking it again failed: {e}")),
                    }
                }
            }
        }
        let needed = self.needed_layer_blobs()?;
        for image in self.images()? {
            let owner = format!("image {}", image.name);
            let layers = image.layers.iter().filter(|l| needed.contains(*l));
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
                // A `.lease` is the lock of a pull's download of one blob.
                if !name.ends_with(".lock") && !name.ends_with(".partial") && !name.ends_with(".lease") {
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

    /// Checks every regular file of snapshot `name` against the pool file it is linked to: its
    /// content through the pool's hash, its mode, owner and mtime against the pool key (which the
    /// unpacker wrote from the layer's entry). Returns whether a file was damaged.
    fn check_snapshot_files(
        &self,
        name: &str,
        pooled: &HashMap<(u64, u64), (String, bool)>,
        r: &mut FsckReport,
    ) -> Result<bool> {
        check_tree_files(&self.root.join("snapshots").join(name).join("fs"), name, pooled, r)
    }

    /// Checks the committed snapshots strata's containerd snapshotter keeps in `containerd/`
    /// (their files against the pool, as the store's own). containerd owns them, so `repair`
    /// leaves them: a damaged one is named, and goes when its image is removed from containerd
    /// and pulled again. Snapshots that go while fsck reads (the snapshotter runs on) are skipped.
    fn check_containerd_snapshots(
        &self,
        pooled: &HashMap<(u64, u64), (String, bool)>,
        repair: bool,
        r: &mut FsckReport,
    ) -> Result<()> {
        let dir = self.root.join("containerd").join("snapshots");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("read directory", &dir))?;
            let Ok(record) = fs::read(entry.path().join("info.json")) else { continue };
            let info: serde_json::Value = serde_json::from_slice(&record).unwrap_or_default();
            if info["kind"] != "committed" {
                continue;
            }
            let label = format!(
                "{} (containerd snapshot {})",
                info["key"].as_str().unwrap_or("?"),
                entry.file_name().to_string_lossy()
            );
            let checked = check_tree_files(&entry.path().join("fs"), &label, pooled, r)
                .and_then(|damaged| Ok(check_data_layer(&entry.path().join("data"), &label, pooled, r)? || damaged));
            match checked {
                Ok(damaged) => {
                    r.containerd_snapshots_checked += 1;
                    if damaged && repair {
                        r.unrepaired.push(format!(
                            "{label}: containerd owns it; remove its image from containerd and import or pull it again"
                        ));
                    }
                }
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Checks the data layer of a containerd snapshot (see [`crate::DataLayer`]): each `<sha256>` in
/// it must be the pool's inode of that content, which its metadata-only files read. Returns
/// whether one was not.
fn check_data_layer(
    dir: &Path,
    name: &str,
    pooled: &HashMap<(u64, u64), (String, bool)>,
    r: &mut FsckReport,
) -> Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("read directory", dir)(e)),
    };
    let problems_before = r.problems.len();
    for entry in entries {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
        let hash = entry.file_name().to_string_lossy().into_owned();
        let problem =
            |reason| FsckProblem::SnapshotFile { snapshot: name.to_string(), path: format!("data/{hash}"), reason };
        match pooled.get(&(meta.dev(), meta.ino())) {
            Some((key, good)) if key.strip_prefix(hash.as_str()).is_some_and(|rest| rest.starts_with('-')) => {
                r.files_checked += 1;
                if !good {
                    r.problems.push(problem(
                        "its content no longer matches its name: the metadata-only files that read it read other data",
                    ));
                }
            }
            _ => r.problems.push(problem("it is not the pool's file of that content")),
        }
    }
    Ok(r.problems.len() > problems_before)
}

/// Checks every regular file under `root` against the pool file it is linked to (see
/// [`Store::check_snapshot_files`]); `name` names the snapshot in problems. Returns whether a
/// file was damaged.
fn check_tree_files(
    root: &Path,
    name: &str,
    pooled: &HashMap<(u64, u64), (String, bool)>,
    r: &mut FsckReport,
) -> Result<bool> {
    let problems_before = r.problems.len();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(Error::io("read directory", &dir))? {
            let entry = entry.map_err(Error::io("read directory", &dir))?;
            let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
            if meta.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let Some((key, good)) = pooled.get(&(meta.dev(), meta.ino())) else {
                r.files_unverified += 1;
                continue;
            };
            r.files_checked += 1;
            let path = entry.path().strip_prefix(root).unwrap_or(&entry.path()).display().to_string();
            let problem = |reason| FsckProblem::SnapshotFile { snapshot: name.to_string(), path: path.clone(), reason };
            if !good {
                r.problems.push(problem("its content no longer matches what the layer held"));
            }
            let hash = key.split_once('-').map_or("", |(hash, _)| hash);
            let actual = crate::adopt::pool_key(
                hash,
                meta.mode(),
                meta.uid().into(),
                meta.gid().into(),
                meta.mtime(),
                meta.mtime_nsec(),
            );
            if *key != actual {
                r.problems.push(problem("its mode, owner or mtime changed"));
            }
        }
    }
    Ok(r.problems.len() > problems_before)
}

impl Store {
    /// Rebuilds snapshot `name`'s layer tar from its tar split, if it has one, and checks it
    /// against the layer's diff ID. Returns whether it failed.
    fn check_split(&self, name: &str, r: &mut FsckReport) -> bool {
        let dir = self.root.join("snapshots").join(name);
        if !dir.join(SPLIT_FILE).is_file() {
            return false;
        }
        let info: Option<SnapshotInfo> =
            fs::read(dir.join("info.json")).ok().and_then(|d| serde_json::from_slice(&d).ok());
        let Some(info) = info else { return false };
        r.splits_checked += 1;
        match self.rebuild_layer(&info.chain_id, &info.diff_id, &mut io::sink()) {
            Ok(_) => false,
            Err(e) => {
                r.problems.push(FsckProblem::BadSplit { snapshot: name.to_string(), reason: e.to_string() });
                true
            }
        }
    }

    /// How snapshot `name` can be unpacked again from its layer blob (an image holding it), or
    /// why it cannot.
    fn unpack_plan(&self, name: &str) -> std::result::Result<UnpackPlan, String> {
        let containers = self.containers().map_err(|e| e.to_string())?;
        if let Some(c) = containers.iter().find(|c| c.chain.iter().any(|s| s.hex() == name)) {
            return Err(format!("container {} uses it; remove the container, then run fsck --repair again", c.id));
        }
        let images = self.images().map_err(|e| e.to_string())?;
        let users: Vec<(&crate::ImageRecord, usize)> =
            images.iter().filter_map(|im| im.chain.iter().position(|c| c.hex() == name).map(|i| (im, i))).collect();
        // an image whose layer blob is there, else the first (to say what is missing)
        let Some(&(image, i)) =
            users.iter().find(|(im, i)| self.blobs.contains(&im.layers[*i])).or_else(|| users.first())
        else {
            return Err("no image uses it (`strata gc` removes it)".into());
        };
        if !self.blobs.contains(&image.layers[i]) {
            return Err(format!(
                "image {}'s layer blob {} was not kept: pull or import the image again keeping its layer blobs \
                 (`--keep-blobs`), then repair again",
                image.name, image.layers[i]
            ));
        }
        let manifest = self.blobs.read(&image.manifest).map_err(|e| e.to_string())?;
        let parsed: oci_spec::image::ImageManifest =
            serde_json::from_slice(&manifest).map_err(|e| format!("manifest {}: {e}", image.manifest))?;
        let media_type = parsed.layers().get(i).map(|l| l.media_type().to_string()).unwrap_or_default();
        let compression =
            crate::import::Compression::of_media_type(&media_type, &image.layers[i]).map_err(|e| e.to_string())?;
        Ok(UnpackPlan {
            layer: image.layers[i].clone(),
            diff_id: image.diff_ids[i].clone(),
            chain: image.chain[i].clone(),
            compression,
            lowers: image.chain[..i].iter().rev().map(|c| self.snapshot_path(c).join("fs")).collect(),
        })
    }

    /// Replaces a snapshot with a fresh unpack of its layer blob.
    fn unpack_from_plan(&self, plan: UnpackPlan) -> Result<()> {
        remove_any(&self.snapshot_path(&plan.chain))?;
        self.unpack_snapshot(&plan.layer, &plan.diff_id, &plan.chain, plan.compression, plan.lowers).map(|_| ())
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
        let containerd = self.root.join("containerd");
        u.containerd_snapshots = fs::read_dir(containerd.join("snapshots")).map_or(0, |d| d.count());
        // (the pool before containerd/: a pooled file counts as the pool's)
        for dir in ["blobs", "snapshots", "pool", "containerd"] {
            walk(&self.root.join(dir), &mut |path, meta| {
                if seen.insert((meta.dev(), meta.ino())) {
                    u.on_disk_bytes += meta.blocks() * 512;
                    if dir == "containerd" {
                        u.containerd_bytes += meta.blocks() * 512;
                    }
                    // a snapshot's own records sit beside its tree
                    let record = path.parent().and_then(Path::parent) == Some(snaps.as_path());
                    if meta.is_file() && dir == "snapshots" && !record {
                        unique_file_bytes += meta.len();
                    }
                    if meta.is_file() && record && path.ends_with(SPLIT_FILE) {
                        u.split_bytes += meta.len();
                    }
                }
            })?;
        }
        // Files only reached through the pool were counted above as pool inodes linked from snapshots.
        u.saved_by_file_dedup = snapshot_file_bytes.saturating_sub(unique_file_bytes);
        Ok(u)
    }
}

/// Calls `f` on `dir` and everything below it. What vanishes meanwhile (strata's containerd
/// snapshotter removes snapshots while `du` reads) is skipped.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if gone(&e) => return Ok(()),
        other => other.map_err(Error::io("stat", dir))?,
    };
    f(dir, &meta);
    if meta.is_dir() {
        let entries = match fs::read_dir(dir) {
            Err(e) if gone(&e) => return Ok(()),
            other => other.map_err(Error::io("read directory", dir))?,
        };
        for entry in entries {
            walk(&entry.map_err(Error::io("read directory", dir))?.path(), f)?;
        }
    }
    Ok(())
}
