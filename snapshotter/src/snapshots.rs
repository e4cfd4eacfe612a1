//! The snapshots themselves: records, directories and mounts, without the wire.
//!
//! Layout under `<store root>/containerd/`:
//!
//! ```text
//! lock                    flock held by the one daemon that serves this root
//! snapshots/<id>/info.json  key, parent, kind, labels, times, usage once counted (by rename)
//! snapshots/<id>/fs       the snapshot's tree (an overlay upper layer, or a plain tree)
//! snapshots/<id>/work     overlayfs' work directory of an active snapshot
//! snapshots/<id>/data     a committed snapshot's data layer: hardlinks to pooled inodes its
//!                         metadata-only files read (see below)
//! snapshots/<id>/adopting-<pid>  a committed tree that process <pid> may still be adopting
//! tmp/<id>                snapshots being made or removed; cleared at start and by Cleanup
//! ```
//!
//! A snapshot appears by the rename of a complete directory from `tmp/` and goes by the rename
//! back into `tmp/`, so a crash at any moment leaves either the whole snapshot or none (the
//! leftovers in `tmp/` go at the next start). A commit marks the tree as being adopted and
//! rewrites `info.json` by rename; only then are its files adopted into the layer store's content
//! pool (shared inodes are never written: committed snapshots are mounted as overlay lower layers
//! or read-only views), after the commit answers, while every call that would mount or read that
//! tree waits ([`Snapshots::adopting`]). An adoption replaces each file by a rename; what one cut
//! short by a crash left under temporary names goes at the next start, in the trees still marked.
//!
//! Where the kernel follows redirects into data-only lower layers without `metacopy=on` (Linux
//! 6.16 and later; probed at start), a committed file whose content is pooled under other
//! metadata (a rebuilt layer's file with a new mtime) becomes a metadata-only file reading the
//! pooled inode through the snapshot's `data` directory ([`layerstore::DataLayer`]); every mount
//! of a chain holding such a directory lists it as a data-only lower layer (`lowerdir=…::DATA`).
//! Copy-ups from such files are whole (no `metacopy=on`), so an active snapshot's tree never holds
//! one the kernel made.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use layerstore::{ContentIndex, Store};
use serde::{Deserialize, Serialize};

/// The kind of a snapshot, as containerd names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View,
    /// A writable snapshot (an unpack in progress, or a container's root file system).
    Active,
    /// A committed, immutable snapshot: a layer.
    Committed,
}

/// A time as containerd carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: i32,
}

impl Time {
    fn now() -> Time {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Time { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
    }
}

/// Bytes and inodes a snapshot's own tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Allocated bytes (each inode once).
    pub size: u64,
    /// Inodes.
    pub inodes: u64,
}

/// What `info.json` holds: one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Its directory under `snapshots/`.
    pub id: u64,
    /// The key (active and view snapshots) or name (committed ones) containerd knows it by.
    pub key: String,
    /// The committed snapshot below it; empty for none.
    pub parent: String,
    /// View, active or committed.
    pub kind: Kind,
    /// containerd's labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made.
    pub created: Time,
    /// When it last changed.
    pub updated: Time,
    /// What its tree holds, once counted (committed snapshots only: at the first Usage call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One mount of a snapshot, as containerd's `Mount` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: &'static str,
    /// What is mounted.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Errors, each naming the snapshot, field or file; the service maps them to gRPC codes
/// containerd turns back into its own error kinds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// A snapshot already has this key.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The request cannot apply to the snapshot as it is.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The tree of this committed snapshot is still being adopted into the pool: asked again
    /// once that is over (see [`Snapshots::adopting`]).
    #[error("snapshot {0:?} is still being adopted into the content pool")]
    Adopting(String),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A snapshot record that cannot be read.
    #[error("{path}: {reason}; move the snapshot directory away (or remove it) to start")]
    BadRecord {
        /// The `info.json`.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another daemon serves this root.
    #[error("{0}: another strata snapshotter serves this store")]
    Busy(PathBuf),
    /// The layer store failed.
    #[error(transparent)]
    Store(#[from] layerstore::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

/// Every snapshot of one store root, and the lock that makes this process their only writer.
#[derive(Debug)]
pub struct Snapshots {
    store: Store,
    dir: PathBuf,
    by_key: HashMap<String, Info>,
    next_id: u64,
    /// Pooled content by hash, when committed files may become metadata-only.
    index: Option<Arc<ContentIndex>>,
    /// Committed snapshots whose trees an adoption may still change (see [`Snapshots::adopting`]).
    adopting: std::collections::HashSet<u64>,
    /// Active snapshots strata's differ is unpacking a layer into, each with the flag that stops
    /// that unpack (see [`Snapshots::apply_target`]).
    applying: HashMap<u64, Arc<AtomicBool>>,
    _lock: fs::File,
}

/// An active snapshot strata's differ unpacks a layer into.
#[derive(Debug, Clone)]
pub struct ApplyTarget {
    /// Its key.
    pub key: String,
    /// Its id, to end the apply with ([`Snapshots::applied`]).
    pub id: u64,
    /// Its tree: empty, the overlay upper layer above `lowers` or a plain tree.
    pub tree: PathBuf,
    /// The committed trees below it, top first.
    pub lowers: Vec<PathBuf>,
    /// Set when the snapshot is removed while the unpack runs: the unpack stops.
    pub stop: Arc<AtomicBool>,
}

/// What a commit leaves to adopt into the pool (outside the snapshots' lock).
#[derive(Debug)]
pub struct Adopt {
    /// The committed snapshot's id.
    pub id: u64,
    /// The committed tree.
    pub tree: PathBuf,
    /// The mark that an adoption by this process may change the tree: the caller removes it once
    /// the adoption is over (the next start clears what an adoption cut short left, see
    /// [`layerstore::clear_adoption_leftovers`]).
    pub marker: PathBuf,
    /// Its data layer and the content index, when its files may become metadata-only.
    pub data: Option<(PathBuf, Arc<ContentIndex>)>,
}

impl Snapshots {
    /// Opens (creating if needed) the snapshots of the layer store at `root`, takes its lock,
    /// clears what a crash left in `tmp/` and reads every record.
    pub fn open(root: &Path) -> Result<Snapshots> {
        let store = Store::open(root)?;
        let dir = root.join("containerd");
        for d in [dir.clone(), dir.join("snapshots"), dir.join("tmp")] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io_err("create directory", &d))?;
        }
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Busy(lock_path));
        }
        let mut s = Snapshots {
            store,
            dir,
            by_key: HashMap::new(),
            next_id: 1,
            index: None,
            adopting: Default::default(),
            applying: HashMap::new(),
            _lock: lock,
        };
        s.cleanup()?;
        if data_layers_work(&s.dir.join("tmp")) {
            s.index = Some(Arc::new(ContentIndex::new()));
        }
        let snaps = s.dir.join("snapshots");
        for entry in fs::read_dir(&snaps).map_err(io_err("read directory", &snaps))? {
            let entry = entry.map_err(io_err("read directory", &snaps))?;
            let path = entry.path().join("info.json");
            let bad = |reason: String| Error::BadRecord { path: path.clone(), reason };
            let data = fs::read(&path).map_err(|e| bad(e.to_string()))?;
            let info: Info = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
            if entry.file_name().to_str() != Some(info.id.to_string().as_str()) {
                return Err(bad(format!("its id {} is not its directory's name", info.id)));
            }
            s.next_id = s.next_id.max(info.id + 1);
            clear_cut_adoption(&entry.path(), &info)?;
            if let Some(other) = s.by_key.insert(info.key.clone(), info) {
                return Err(bad(format!("snapshot {} has the same key {:?}", other.id, other.key)));
            }
        }
        Ok(s)
    }

    /// The layer store whose pool committed snapshots share.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether committed files may become metadata-only (the kernel passed the probe at open).
    pub fn metadata_only_files(&self) -> bool {
        self.index.is_some()
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join("snapshots").join(id.to_string())
    }

    /// The tree of snapshot `id`.
    pub fn fs_path(&self, id: u64) -> PathBuf {
        self.path(id).join("fs")
    }

    /// The snapshot with this key.
    pub fn get(&self, key: &str) -> Result<&Info> {
        self.by_key.get(key).ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Every snapshot, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Info> {
        self.by_key.values()
    }

    /// A new active (`kind` Active) or view snapshot `key` above `parent`; returns its mounts.
    pub fn prepare(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("the snapshot key is empty".into()));
        }
        if self.by_key.contains_key(key) {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = self.get(parent)?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!("parent {parent:?} is not a committed snapshot")));
            }
            self.check_adopted(parent, true)?;
            self.check_data_layers(parent)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = Time::now();
        let info = Info {
            id,
            key: key.to_string(),
            parent: parent.to_string(),
            kind,
            labels,
            created: now,
            updated: now,
            usage: None,
        };
        let tmp = self.dir.join("tmp").join(id.to_string());
        let made = (|| {
            let mut b = fs::DirBuilder::new();
            b.mode(0o755);
            b.create(&tmp).map_err(io_err("create directory", &tmp))?;
            for sub in ["fs", "work"] {
                let d = tmp.join(sub);
                b.create(&d).map_err(io_err("create directory", &d))?;
            }
            write_info(&tmp, &info)?;
            let dest = self.path(id);
            fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
            sync_dir(&self.dir.join("snapshots"))
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.by_key.insert(key.to_string(), info);
        self.mounts(key)
    }

    /// The data layer of snapshot `id`, if it has one.
    fn data_layer(&self, id: u64) -> Option<String> {
        let d = self.path(id).join("data");
        d.is_dir().then(|| d.display().to_string())
    }

    /// Refuses a chain from `key` down that holds data layers when this kernel cannot mount
    /// them (a store written under Linux 6.16 or later, moved to an older kernel): its
    /// metadata-only files would read as holes.
    fn check_data_layers(&self, key: &str) -> Result<()> {
        if self.index.is_some() {
            return Ok(());
        }
        let mut k = key;
        while !k.is_empty() {
            let info = self.get(k)?;
            if let Some(data) = self.data_layer(info.id) {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {k:?} has metadata-only files whose data is in {data}, a data-only overlay layer \
                     this kernel does not mount without metacopy=on (Linux 6.16 and later do): run it on such a \
                     kernel, or remove its image and import or pull it again"
                )));
            }
            k = info.parent.as_str();
        }
        Ok(())
    }

    /// The mounts of snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.check_adopted(key, true)?;
        self.check_data_layers(key)?;
        let info = self.get(key)?;
        // The committed snapshots it shows, top first, with their data layers.
        let mut lowers = Vec::new();
        let mut data = Vec::new();
        if info.kind == Kind::Committed {
            lowers.push(self.fs_path(info.id).display().to_string());
            data.extend(self.data_layer(info.id));
        }
        let mut p = info.parent.as_str();
        while !p.is_empty() {
            let parent = self.get(p)?;
            lowers.push(self.fs_path(parent.id).display().to_string());
            data.extend(self.data_layer(parent.id));
            p = parent.parent.as_str();
        }
        // `lowerdir=L1:L2::D1::D2`: the data layers only supply metadata-only files' data.
        let lowerdir = || {
            let mut s = format!("lowerdir={}", lowers.join(":"));
            for d in &data {
                s.push_str("::");
                s.push_str(d);
            }
            s
        };
        let bind = |source: &str, mode: &str| Mount {
            kind: "bind",
            source: source.into(),
            options: vec!["rbind".into(), mode.into()],
        };
        let read_only = || Mount { kind: "overlay", source: "overlay".into(), options: vec![lowerdir()] };
        Ok(vec![match info.kind {
            Kind::Active if lowers.is_empty() => bind(&self.fs_path(info.id).display().to_string(), "rw"),
            Kind::Active => Mount {
                kind: "overlay",
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("workdir={}", self.path(info.id).join("work").display()),
                    format!("upperdir={}", self.fs_path(info.id).display()),
                    lowerdir(),
                ],
            },
            // A view, or a committed snapshot seen as one: read-only. One tree without a data
            // layer is a bind mount; the kernel wants two lower layers for an overlay without an
            // upper one, or one and a data layer.
            Kind::View if lowers.is_empty() => bind(&self.fs_path(info.id).display().to_string(), "ro"),
            _ if lowers.len() == 1 && data.is_empty() => bind(&lowers[0], "ro"),
            _ => read_only(),
        }])
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`. Returns the tree to
    /// adopt into the pool (the caller does it without holding these snapshots).
    pub fn commit(&mut self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<Adopt> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("the committed snapshot's name is empty".into()));
        }
        let info = self.get(key)?;
        if info.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active: only an active snapshot commits"
            )));
        }
        if self.by_key.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        if self.applying.contains_key(&info.id) {
            return Err(Error::FailedPrecondition(format!(
                "strata's differ is still unpacking a layer into snapshot {key:?}: commit it once the apply has answered"
            )));
        }
        let fs_path = self.fs_path(info.id);
        // A committed tree's files join the content pool, shared with other layers: one still
        // written through a mounted overlay would change them all.
        if let Some(at) = mounted_upper(&fs_path) {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is the upper layer of the overlay mounted at {at}: unmount it before the commit \
                 (a committed layer's files are shared and must not be written)"
            )));
        }
        // (its usage is counted when first asked for: overlayfs's walk of the tree, off the
        // commit's path)
        let mut info = info.clone();
        info.kind = Kind::Committed;
        info.key = name.to_string();
        info.labels = labels;
        info.updated = Time::now();
        // The mark first, made durable with the record (one fsync of the directory for both).
        let marker = self.path(info.id).join(format!("{ADOPTING}{}", std::process::id()));
        fs::write(&marker, b"").map_err(io_err("write", &marker))?;
        if let Err(e) = write_info(&self.path(info.id), &info) {
            let _ = fs::remove_file(&marker);
            return Err(e);
        }
        let data = self.index.as_ref().map(|index| (self.path(info.id).join("data"), index.clone()));
        self.by_key.remove(key);
        let id = info.id;
        self.by_key.insert(name.to_string(), info);
        Ok(Adopt { id, tree: fs_path, marker, data })
    }

    /// Marks the committed snapshot `id` as being adopted: until [`Snapshots::adopted`], every
    /// call that would hand out mounts of its tree or read it (Prepare and View above it, Mounts
    /// of a snapshot above it, Usage, Remove) fails with [`Error::Adopting`], and the caller asks
    /// again later. Called with the commit, under the same lock, nothing can come between.
    pub fn adopting(&mut self, id: u64) {
        self.adopting.insert(id);
    }

    /// The active snapshot whose mounts `kind`, `source` and `options` describe (as
    /// [`Snapshots::mounts`] gave them: a bind mount of its tree, or an overlay with its tree as
    /// the upper layer), if it is one of these snapshots, its tree is still empty and no other
    /// apply runs into it; marks it as being applied into until [`Snapshots::applied`]. `None`
    /// for anything else: another differ applies such layers.
    pub fn apply_target(&mut self, kind: &str, source: &str, options: &[String]) -> Result<Option<ApplyTarget>> {
        let tree = match kind {
            "bind" => PathBuf::from(source),
            "overlay" => match options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
                Some(upper) => PathBuf::from(upper),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let Some(info) = self.by_key.values().find(|i| i.kind == Kind::Active && self.fs_path(i.id) == tree) else {
            return Ok(None);
        };
        if self.applying.contains_key(&info.id) {
            return Ok(None);
        }
        if fs::read_dir(&tree).map_err(io_err("read directory", &tree))?.next().is_some() {
            return Ok(None);
        }
        let mut lowers = Vec::new();
        let mut p = info.parent.as_str();
        while !p.is_empty() {
            let parent = self.get(p)?;
            lowers.push(self.fs_path(parent.id));
            p = parent.parent.as_str();
        }
        let (key, id) = (info.key.clone(), info.id);
        let stop = Arc::new(AtomicBool::new(false));
        self.applying.insert(id, stop.clone());
        Ok(Some(ApplyTarget { key, id, tree, lowers, stop }))
    }

    /// Tells an unpack by strata's differ into snapshot `key`, if one runs, to stop; whether one
    /// runs (its mark goes once nothing writes into the tree any more).
    pub fn stop_apply(&self, key: &str) -> bool {
        let Some(info) = self.by_key.get(key) else { return false };
        match self.applying.get(&info.id) {
            Some(stop) => {
                stop.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The apply into snapshot `id` is over.
    pub fn applied(&mut self, id: u64) {
        self.applying.remove(&id);
    }

    /// The adoption of snapshot `id` is over.
    pub fn adopted(&mut self, id: u64) {
        self.adopting.remove(&id);
    }

    /// Fails with [`Error::Adopting`] if snapshot `key` (and, with `chain`, any below it) is
    /// being adopted.
    fn check_adopted(&self, key: &str, chain: bool) -> Result<()> {
        let mut k = key;
        while !k.is_empty() {
            let info = self.get(k)?;
            if self.adopting.contains(&info.id) {
                return Err(Error::Adopting(k.to_string()));
            }
            if !chain {
                break;
            }
            k = info.parent.as_str();
        }
        Ok(())
    }

    /// Removes snapshot `key` (refused while a snapshot is above it). Returns the directory the
    /// caller deletes (already out of `snapshots/`).
    pub fn remove(&mut self, key: &str) -> Result<PathBuf> {
        let id = self.get(key)?.id;
        self.check_adopted(key, false)?;
        let children: Vec<&str> = self.by_key.values().filter(|i| i.parent == key).map(|i| i.key.as_str()).collect();
        if !children.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} has {} snapshots above it (e.g. {:?}): remove them first",
                children.len(),
                children[0]
            )));
        }
        // (the service waits for an unpack into it to stop first, see `stop_apply`; should one
        // still run, it stops at its next read, and what it writes after the rename goes with the
        // directory, or at the next Cleanup or start)
        if let Some(stop) = self.applying.remove(&id) {
            stop.store(true, Ordering::Relaxed);
        }
        let gone = self.dir.join("tmp").join(id.to_string());
        fs::rename(self.path(id), &gone).map_err(io_err("move out", &self.path(id)))?;
        sync_dir(&self.dir.join("snapshots"))?;
        self.by_key.remove(key);
        Ok(gone)
    }

    /// Applies containerd's update of `key`: `paths` are the field mask (`labels` replaces every
    /// label, `labels.<name>` sets or removes one; empty means `labels`). Other fields are
    /// refused by name: a snapshot's key, parent, kind and times are not updated.
    pub fn update(&mut self, key: &str, labels: BTreeMap<String, String>, paths: &[String]) -> Result<Info> {
        let mut info = self.get(key)?.clone();
        if paths.is_empty() {
            info.labels = labels;
        } else {
            for path in paths {
                if path == "labels" {
                    info.labels = labels.clone();
                } else if let Some(name) = path.strip_prefix("labels.") {
                    match labels.get(name) {
                        Some(v) => info.labels.insert(name.to_string(), v.clone()),
                        None => info.labels.remove(name),
                    };
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}: only labels are updated"
                    )));
                }
            }
        }
        info.updated = Time::now();
        write_info(&self.path(info.id), &info)?;
        self.by_key.insert(key.to_string(), info.clone());
        Ok(info)
    }

    /// What snapshot `key`'s own tree holds (its parents not counted). Counted at each call for
    /// an active snapshot, once for a committed one (kept in memory; a record written before
    /// this daemon may hold it already).
    pub fn usage(&mut self, key: &str) -> Result<Usage> {
        self.check_adopted(key, false)?;
        let info = self.get(key)?;
        if let Some(u) = info.usage {
            return Ok(u);
        }
        let (committed, counted) = (info.kind == Kind::Committed, usage(&self.fs_path(info.id))?);
        if committed && let Some(info) = self.by_key.get_mut(key) {
            info.usage = Some(counted);
        }
        Ok(counted)
    }

    /// Removes what a crash or a removal left in `tmp/`.
    pub fn cleanup(&self) -> Result<()> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("read directory", &tmp))? {
            let path = entry.map_err(io_err("read directory", &tmp))?.path();
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
        }
        Ok(())
    }
}

/// Whether the kernel reads a metadata-only file's data from a data-only lower layer without
/// `metacopy=on` (Linux 6.16 and later): one file tried in a scratch directory under `tmp`, which
/// goes again whatever happens.
fn data_layers_work(tmp: &Path) -> bool {
    let dir = tmp.join(format!("probe-{}", std::process::id()));
    let merged = dir.join("merged");
    let tried = (|| -> io::Result<bool> {
        for d in ["tree", "data", "merged"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let content = b"strata data layer probe";
        fs::write(dir.join("data/probe"), content)?;
        let stub = fs::File::create(dir.join("tree/file"))?;
        stub.set_len(content.len() as u64)?;
        drop(stub);
        xattr_set(&dir.join("tree/file"), "trusted.overlay.metacopy", b"")?;
        xattr_set(&dir.join("tree/file"), "trusted.overlay.redirect", b"/probe")?;
        let options = format!("lowerdir={}::{}", dir.join("tree").display(), dir.join("data").display());
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .map_err(io::Error::from)?;
        let read = fs::read(merged.join("file"));
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
        Ok(read? == content)
    })();
    let _ = fs::remove_dir_all(&dir);
    match tried {
        Ok(works) => works,
        Err(e) => {
            eprintln!(
                "strata-snapshotter: the kernel does not read data-only overlay layers without metacopy=on ({e}): \
                 committed files share data only as whole inodes"
            );
            false
        }
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (p, n) = (c(path.as_os_str().as_encoded_bytes())?, c(name.as_bytes())?);
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid slice of
    // `value.len()` bytes.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The mount point of an overlay in this mount namespace whose upper layer is `upper`, from
/// `/proc/self/mountinfo` (paths there are octal-escaped).
fn mounted_upper(upper: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = upper.as_os_str().as_encoded_bytes();
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mut rest = rest.split(' ');
        if rest.next()? != "overlay" {
            return None;
        }
        let options = rest.nth(1)?;
        let is_upper = options.split(',').any(|o| o.strip_prefix("upperdir=").is_some_and(|p| unescape(p) == want));
        is_upper.then(|| String::from_utf8_lossy(&unescape(fields.split(' ').nth(4).unwrap_or("?"))).into_owned())
    })
}

/// A mountinfo field with its `\NNN` octal escapes decoded.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The name of a snapshot's adoption mark, before the id of the process adopting it.
const ADOPTING: &str = "adopting-";

/// Clears what an adoption of the snapshot in `dir` left if it was cut short (its mark is still
/// there), then the mark. Where that fails, the mark stays for the next start and the failure is
/// reported: the daemon still serves every other snapshot.
fn clear_cut_adoption(dir: &Path, info: &Info) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(ADOPTING)) else { continue };
        let path = entry.path();
        if info.kind == Kind::Committed
            && let Ok(pid) = pid.parse::<u32>()
        {
            let tree = dir.join("fs");
            match layerstore::clear_adoption_leftovers(&tree, pid) {
                Ok(0) => {}
                Ok(n) => eprintln!(
                    "strata-snapshotter: {}: removed {n} temporary files of an adoption cut short",
                    tree.display()
                ),
                Err(e) => {
                    eprintln!(
                        "strata-snapshotter: {}: an adoption was cut short, and what it left is not cleared: {e}",
                        tree.display()
                    );
                    continue;
                }
            }
        }
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
    }
    Ok(())
}

fn write_info(dir: &Path, info: &Info) -> Result<()> {
    let path = dir.join("info.json");
    let tmp = dir.join("info.json.tmp");
    let data = serde_json::to_vec_pretty(info).map_err(|e| Error::Io {
        op: "encode",
        path: path.clone(),
        source: e.into(),
    })?;
    (|| {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()
    })()
    .map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

/// Allocated bytes and inodes under `dir`, each inode once, symlinks not followed.
fn usage(dir: &Path) -> Result<Usage> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).map_err(io_err("read directory", &d))? {
            let entry = entry.map_err(io_err("read directory", &d))?;
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            if meta.is_dir() {
                todo.push(entry.path());
            }
            if seen.insert((meta.dev(), meta.ino())) {
                u.inodes += 1;
                u.size += meta.blocks() * 512;
            }
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn prepare_commit_stack_update_and_remove_keep_containerd_s_rules() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;

        // an active snapshot without a parent is a writable bind mount of its tree
        let m = s.prepare(Kind::Active, "extract-1", "", labels(&[("containerd.io/snapshot.ref", "l1")]))?;
        let base = s.get("extract-1")?.clone();
        assert_eq!(
            m,
            vec![Mount {
                kind: "bind",
                source: s.fs_path(base.id).display().to_string(),
                options: vec!["rbind".into(), "rw".into()]
            }]
        );
        fs::write(s.fs_path(base.id).join("file"), "content").map_err(io_err("write", Path::new("file")))?;
        assert!(matches!(s.prepare(Kind::Active, "extract-1", "", BTreeMap::new()), Err(Error::AlreadyExists(_))));
        assert!(matches!(s.prepare(Kind::Active, "x", "extract-1", BTreeMap::new()), Err(Error::InvalidArgument(_))));
        assert!(matches!(s.prepare(Kind::Active, "x", "missing", BTreeMap::new()), Err(Error::NotFound(_))));

        s.commit("l1", "extract-1", labels(&[("a", "1")]))?;
        assert!(matches!(s.get("extract-1"), Err(Error::NotFound(_))));
        let l1 = s.get("l1")?.clone();
        assert_eq!((l1.kind, l1.id), (Kind::Committed, base.id));
        let u1 = s.usage("l1")?;
        assert!(u1.inodes == 1 && u1.size > 0, "{u1:?}");
        assert!(matches!(s.commit("l2", "l1", BTreeMap::new()), Err(Error::FailedPrecondition(_))));

        // above it: an overlay with its own upper and work directories; a view: read-only
        let m = s.prepare(Kind::Active, "rootfs", "l1", BTreeMap::new())?;
        let id = s.get("rootfs")?.id;
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].options.contains(&format!("upperdir={}", s.fs_path(id).display())));
        assert!(m[0].options.contains(&format!("lowerdir={}", s.fs_path(l1.id).display())));
        let v = s.prepare(Kind::View, "look", "l1", BTreeMap::new())?;
        assert_eq!(v[0].kind, "bind");
        assert_eq!(v[0].options, vec!["rbind".to_string(), "ro".to_string()]);
        assert!(matches!(s.commit("l2", "look", BTreeMap::new()), Err(Error::FailedPrecondition(_))));
        assert!(matches!(s.commit("l1", "rootfs", BTreeMap::new()), Err(Error::AlreadyExists(_))));

        // labels only, by field mask
        let i = s.update("l1", labels(&[("b", "2")]), &["labels.b".into()])?;
        assert_eq!(i.labels, labels(&[("a", "1"), ("b", "2")]));
        let i = s.update("l1", BTreeMap::new(), &["labels.a".into()])?;
        assert_eq!(i.labels, labels(&[("b", "2")]));
        let refused = s.update("l1", BTreeMap::new(), &["parent".into()]);
        assert!(matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("\"parent\"")), "{refused:?}");

        // a snapshot with others above it stays; removed ones leave nothing behind
        assert!(matches!(s.remove("l1"), Err(Error::FailedPrecondition(_))));
        for key in ["look", "rootfs"] {
            let gone = s.remove(key)?;
            fs::remove_dir_all(&gone).map_err(io_err("remove", &gone))?;
        }
        assert!(matches!(s.remove("rootfs"), Err(Error::NotFound(_))));

        // everything is read back by the next daemon, after this one's lock is gone
        assert!(matches!(Snapshots::open(dir.path()), Err(Error::Busy(_))));
        drop(s);
        let mut s = Snapshots::open(dir.path())?;
        assert_eq!(s.all().count(), 1);
        assert_eq!(s.get("l1")?.labels, labels(&[("b", "2")]));
        assert_eq!(s.usage("l1")?, u1);
        Ok(())
    }

    #[test]
    fn an_active_snapshot_mounted_as_an_overlay_upper_is_not_committed() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(&dir.path().join("store"))?;
        s.prepare(Kind::Active, "extract-1", "", BTreeMap::new())?;
        s.commit("l1", "extract-1", BTreeMap::new())?;
        let m = s.prepare(Kind::Active, "rootfs", "l1", BTreeMap::new())?;
        let target = dir.path().join("a dir, with a comma");
        fs::create_dir(&target).map_err(io_err("mkdir", &target))?;
        let mounted = mount(&m[0], &target);
        let refused = s.commit("image", "rootfs", BTreeMap::new());
        assert!(
            matches!(&refused, Err(Error::FailedPrecondition(msg)) if msg.contains(&target.display().to_string())),
            "{refused:?}"
        );
        assert_eq!(s.get("rootfs")?.kind, Kind::Active, "the refused commit changed the snapshot");
        drop(mounted);
        s.commit("image", "rootfs", BTreeMap::new())?;
        assert_eq!(unescape(r"a\040b\134c\0"), b"a b\\c\\0");
        Ok(())
    }

    /// Unmounts on drop, also when the test fails.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn mount(m: &Mount, target: &Path) -> Mounted {
        let data = m.options.iter().filter(|o| !matches!(o.as_str(), "rbind" | "ro" | "rw")).cloned();
        let data = data.collect::<Vec<_>>().join(",");
        nix::mount::mount(
            Some(m.source.as_str()),
            target,
            Some(m.kind),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount {m:?}: {e}"));
        Mounted(target.to_path_buf())
    }

    /// Linux 6.16 or later (data-only overlay layers without metacopy=on).
    fn kernel_reads_data_layers() -> bool {
        let release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 16)
    }

    #[test]
    fn a_rebuilt_layer_s_file_reads_its_data_through_the_data_layer() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;
        if !kernel_reads_data_layers() {
            eprintln!("skipped: this kernel needs metacopy=on for data-only overlay layers (before 6.16)");
            assert!(!s.metadata_only_files(), "the probe passed on a kernel before 6.16");
            return Ok(());
        }
        assert!(s.metadata_only_files(), "the data layer probe failed on this kernel");
        let content: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut hasher = layerstore::Hasher::new(layerstore::Algorithm::Sha256);
        hasher.update(&content);
        let hash = hasher.finish().hex().to_string();
        // the same files, built twice: another mtime and mode for the big one
        let mut trees = Vec::new();
        for (n, mtime, mode) in [(1, 1_700_000_000u64, 0o644), (2, 1_700_086_400, 0o600)] {
            let key = format!("extract-{n}");
            s.prepare(Kind::Active, &key, "", BTreeMap::new())?;
            let tree = s.fs_path(s.get(&key)?.id);
            let big = tree.join("etc/big");
            fs::create_dir_all(tree.join("etc")).map_err(io_err("mkdir", &tree))?;
            fs::write(&big, &content).map_err(io_err("write", &big))?;
            fs::write(tree.join("small"), "small").map_err(io_err("write", &tree))?;
            fs::set_permissions(&big, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &big))?;
            let when = UNIX_EPOCH + std::time::Duration::from_secs(mtime);
            for f in [big.clone(), tree.join("small")] {
                fs::File::options()
                    .write(true)
                    .open(&f)
                    .and_then(|f| f.set_modified(when))
                    .map_err(io_err("utime", &f))?;
            }
            let adopt = s.commit(&format!("base{n}"), &key, BTreeMap::new())?;
            let data = adopt.data.as_ref().map(|(dir, index)| layerstore::DataLayer { dir, index });
            let stats = s.store().adopt_tree_with(&adopt.tree, data.as_ref(), None)?;
            // the small file keeps its own data; the second big one shares the first's
            assert_eq!((stats.files, stats.stubbed, stats.stubbed_bytes), (2, n - 1, (n - 1) * 20_000), "{stats:?}");
            trees.push(tree);
        }
        let meta = |p: &Path| fs::symlink_metadata(p).map_err(io_err("stat", p));
        // (no data blocks; the file system may give its xattrs a block of their own)
        let stub = meta(&trees[1].join("etc/big"))?;
        assert_eq!((stub.len(), stub.mode() & 0o7777), (20_000, 0o600));
        assert!(stub.blocks() * 512 <= 4096, "{} blocks", stub.blocks());
        assert_eq!(stub.mtime(), 1_700_086_400);
        let data = s.path(s.get("base2")?.id).join("data");
        assert_eq!(meta(&data.join(&hash))?.ino(), meta(&trees[0].join("etc/big"))?.ino());
        assert!(!s.path(s.get("base1")?.id).join("data").exists(), "the first build made a data layer");

        // a view of it lists the data layer; read through it, the file is the original
        let m = s.prepare(Kind::View, "look", "base2", BTreeMap::new())?;
        let want = format!("lowerdir={}::{}", trees[1].display(), data.display());
        assert_eq!((m[0].kind, &m[0].options), ("overlay", &vec![want.clone()]));
        let target = dir.path().join("view");
        fs::create_dir(&target).map_err(io_err("mkdir", &target))?;
        let view = mount(&m[0], &target);
        assert!(
            fs::read(target.join("etc/big")).map_err(io_err("read", &target))? == content,
            "the view reads other data"
        );
        let seen = meta(&target.join("etc/big"))?;
        assert_eq!((seen.len(), seen.mode() & 0o7777, seen.mtime()), (20_000, 0o600, 1_700_086_400));
        drop(view);

        // a container's root above it: a write copies the whole file up and changes nothing below
        let m = s.prepare(Kind::Active, "rootfs", "base2", BTreeMap::new())?;
        assert!(m[0].options.contains(&want), "{:?}", m[0].options);
        let target = dir.path().join("rootfs");
        fs::create_dir(&target).map_err(io_err("mkdir", &target))?;
        let root = mount(&m[0], &target);
        let f = target.join("etc/big");
        fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more"))
            .map_err(io_err("append", &f))?;
        drop(root);
        let upper = fs::read(s.fs_path(s.get("rootfs")?.id).join("etc/big")).map_err(io_err("read", &f))?;
        assert_eq!((upper.len(), &upper[..20_000]), (20_004, &content[..]));
        assert!(fs::read(trees[0].join("etc/big")).map_err(io_err("read", &trees[0]))? == content);
        assert!(meta(&trees[1].join("etc/big"))?.blocks() * 512 <= 4096);

        // removing the rebuilt layer drops its reference: the pool inode has one link less
        let links = meta(&trees[0].join("etc/big"))?.nlink();
        for key in ["rootfs", "look", "base2"] {
            let gone = s.remove(key)?;
            fs::remove_dir_all(&gone).map_err(io_err("remove", &gone))?;
        }
        assert_eq!(meta(&trees[0].join("etc/big"))?.nlink(), links - 1);
        Ok(())
    }

    #[test]
    fn a_data_layer_this_kernel_cannot_mount_is_refused_by_name() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;
        s.prepare(Kind::Active, "extract", "", BTreeMap::new())?;
        s.commit("layer", "extract", BTreeMap::new())?;
        // made where the kernel mounts data layers, opened where it does not
        let data = s.path(s.get("layer")?.id).join("data");
        fs::create_dir(&data).map_err(io_err("mkdir", &data))?;
        s.index = None;
        let before = s.all().count();
        for e in
            [s.prepare(Kind::Active, "rootfs", "layer", BTreeMap::new()).map(|_| ()), s.mounts("layer").map(|_| ())]
        {
            let e = e.expect_err("a data layer this kernel cannot mount was accepted");
            assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains(&data.display().to_string())), "{e}");
        }
        assert_eq!(s.all().count(), before, "the refused prepare left a snapshot");
        Ok(())
    }

    #[test]
    fn a_tree_being_adopted_is_neither_mounted_nor_read_nor_removed_until_adopted() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;
        s.prepare(Kind::Active, "a", "", BTreeMap::new())?;
        s.commit("one", "a", BTreeMap::new())?;
        s.prepare(Kind::Active, "b", "one", BTreeMap::new())?;
        let two = s.commit("two", "b", BTreeMap::new())?.id;
        s.prepare(Kind::View, "above-two", "two", BTreeMap::new())?;
        s.adopting(two);
        let adopting = |r: Result<_>| matches!(r, Err(Error::Adopting(k)) if k == "two");
        assert!(adopting(s.prepare(Kind::Active, "c", "two", BTreeMap::new()).map(drop)));
        assert!(adopting(s.prepare(Kind::View, "v", "two", BTreeMap::new()).map(drop)));
        assert!(adopting(s.mounts("above-two").map(drop)));
        assert!(adopting(s.usage("two").map(drop)));
        assert!(adopting(s.remove("two").map(drop)));
        // refused before anything was made; other snapshots go on
        assert!(matches!(s.get("c"), Err(Error::NotFound(_))) && matches!(s.get("v"), Err(Error::NotFound(_))));
        s.prepare(Kind::View, "on-one", "one", BTreeMap::new())?;
        s.usage("one")?;
        s.remove("above-two")?;

        s.adopted(two);
        s.prepare(Kind::View, "v", "two", BTreeMap::new())?;
        s.usage("two")?;
        s.remove("v")?;
        s.remove("two")?;
        Ok(())
    }

    #[test]
    fn an_adoption_cut_short_leaves_nothing_in_the_tree_after_a_restart() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;
        s.prepare(Kind::Active, "a", "", BTreeMap::new())?;
        let id = s.get("a")?.id;
        let tree = s.fs_path(id);
        let write = |rel: &str, content: &str| {
            let path = tree.join(rel);
            fs::create_dir_all(path.parent().unwrap_or(&tree)).map_err(io_err("mkdir", &path))?;
            fs::write(&path, content).map_err(io_err("write", &path))
        };
        write("usr/bin/tool", "tool")?;
        // names of the image's own, however close to an adoption's
        let pid = std::process::id();
        let kept =
            ["usr/.strata-stub-1-2-3", &format!("usr/.strata-pool-{pid}-x-1"), &format!("usr/.strata-stub-{pid}-1")];
        for name in kept {
            write(name, "image")?;
        }
        let adopt = s.commit("one", "a", BTreeMap::new())?;
        assert!(adopt.marker.exists(), "the commit marks its tree as being adopted");
        // what an adoption of this process leaves when it dies between a link and its rename
        let pool_tmp = tree.join(format!("usr/bin/.strata-pool-{pid}-7-123456789"));
        fs::hard_link(tree.join("usr/bin/tool"), &pool_tmp).map_err(io_err("link", &pool_tmp))?;
        write(&format!(".strata-stub-{pid}-8-5"), "")?;
        drop(s);

        let s = Snapshots::open(dir.path())?;
        assert_eq!(s.get("one")?.kind, Kind::Committed);
        assert!(!pool_tmp.exists() && !tree.join(format!(".strata-stub-{pid}-8-5")).exists());
        for name in kept.iter().chain(&["usr/bin/tool"]) {
            assert!(tree.join(name).exists(), "{name} went");
        }
        assert!(!adopt.marker.exists(), "the mark stayed");
        Ok(())
    }

    #[test]
    fn a_crash_s_leftovers_go_and_a_damaged_record_is_named() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io_err("tempdir", Path::new("/tmp")))?;
        let mut s = Snapshots::open(dir.path())?;
        s.prepare(Kind::Active, "a", "", BTreeMap::new())?;
        let id = s.get("a")?.id;
        drop(s);
        // a snapshot half made, or half removed, when the daemon died
        let half = dir.path().join("containerd/tmp/99/fs");
        fs::create_dir_all(&half).map_err(io_err("mkdir", &half))?;
        let s = Snapshots::open(dir.path())?;
        assert!(!dir.path().join("containerd/tmp/99").exists());
        assert_eq!(s.all().count(), 1);
        drop(s);

        let record = dir.path().join(format!("containerd/snapshots/{id}/info.json"));
        fs::write(&record, "{ not json").map_err(io_err("write", &record))?;
        let e = Snapshots::open(dir.path()).map(|_| ()).expect_err("a damaged record was accepted");
        assert!(e.to_string().contains(&record.display().to_string()), "{e}");
        Ok(())
    }
}
