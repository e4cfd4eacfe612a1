//! Adopting a tree written by someone else (containerd's diff applier, through the snapshotter)
//! into the content pool: each regular file is hashed and hardlinked to the pool's inode of its
//! (sha256, mode, uid, gid, mtime), the key [`crate::unpack_layer`] uses, so files of layers that
//! containerd unpacked share inodes with each other and with the store's own snapshots.
//!
//! The tree is walked by descriptors (`openat2` beneath its root without symlinks, files with
//! `O_NOFOLLOW`): a symlink is never followed, wherever it points. Files with xattrs (the key
//! does not cover them) or with other hardlinks (linking one name would split the set) keep
//! their own inode. The tree must not be written while it is adopted, and never after: a pooled
//! inode is shared by every tree that holds it, so it must only be read (overlayfs lower layers
//! and read-only views are). Files and directories are read with `O_NOATIME` where this process
//! may ask for it (it owns them or has `CAP_FOWNER`): hashing then leaves the access times the
//! image gave alone, and writes no inode.
//!
//! A file whose content is pooled under other metadata (a rebuilt layer's file with a new mtime,
//! mode or owner) cannot share that inode. Given a [`DataLayer`], such a file of at least
//! [`STUB_MIN`] bytes becomes a metadata-only file instead: an empty (sparse) file with its own
//! mode, owner, times and size whose overlayfs xattrs (`trusted.overlay.metacopy`, and
//! `trusted.overlay.redirect` = `/<sha256>`) send reads to `<sha256>` in the data layer, a
//! directory holding a hardlink to the pooled inode. Mounted with that directory as a data-only
//! lower layer (`lowerdir=TREE::DATA`, Linux 6.16 and later without `metacopy=on`), the file reads
//! as the original; the kernel follows such redirects only into data-only layers, so a crafted
//! xattr reaches nothing but the content those layers already hold.
//!
//! The hashing can start while the tree is still being written ([`Prehashed`]): a file is hashed
//! early only under a read lease (`F_SETLEASE`: nobody holds it open for writing, and whoever
//! opens it for writing waits until the hash is done, up to the kernel's lease-break time) and
//! only once its last change is older than the clock's granularity, so any later change gives it
//! another ctime; a second stat after the hash must show the file as before. Adoption uses such a
//! hash only for a file whose inode, size, mtime and ctime are still the ones seen then, and
//! hashes every other file itself.
//!
//! A file whose key is new to the pool needs nothing done to the tree: it becomes the pool's file
//! by one `linkat` into the pool. [`Store::adopt_tree_deferring`] leaves those links for
//! [`Store::link_deferred`], which the snapshotter runs once the tree may be mounted; every change
//! to the tree itself is made before. Given a [`DataLayer`], a file of at least [`DEFER_MIN`]
//! bytes that was not hashed early is not even hashed by the adoption when no pooled content has
//! its size (the content index knows the sizes) and no other file of the tree does: its content
//! is new, so only its pool link is left, and the hash is taken with it, under a read lease and
//! only while the file is as it was at the adoption.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, fstat, openat, renameat};
use rustix::io::Errno;

use crate::fsutil::{read_open, unique_name};
use crate::{Algorithm, Error, Hasher, Result, Store};

/// What adopting a tree did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdoptStats {
    /// Regular files hashed.
    pub files: u64,
    /// Files that now share an inode that was already in the pool.
    pub shared: u64,
    /// Their bytes (what file dedup saved).
    pub shared_bytes: u64,
    /// Files that now read their data from the data layer (metadata-only files).
    pub stubbed: u64,
    /// Their bytes (what sharing data under other metadata saved).
    pub stubbed_bytes: u64,
}

/// The smallest file made metadata-only: its xattrs may not fit in the inode (ext4 with 256-byte
/// inodes gives them a 4 KiB block), so smaller files would save little or nothing.
pub const STUB_MIN: u64 = 8192;

/// The smallest file whose hash an adoption may leave for its deferred links (see the module
/// documentation): below it, sizes say little about content, and hashing costs little.
pub const DEFER_MIN: u64 = 1 << 20;

/// Pooled files of at least [`STUB_MIN`] bytes by content hash (the first key seen for each): how
/// a file that differs from a pooled one only in its metadata finds it; and the sizes of pooled
/// content of at least [`DEFER_MIN`] bytes. Filled from the pool at first use, then by each
/// adoption; a stale entry (its pool file gone) is dropped when met, a stale size kept (it only
/// makes a file be hashed by the adoption itself).
#[derive(Debug, Default)]
pub struct ContentIndex {
    loaded: Mutex<Option<Indexed>>,
}

#[derive(Debug, Default)]
struct Indexed {
    by_hash: HashMap<String, String>,
    sizes: HashSet<u64>,
}

impl ContentIndex {
    /// An index, empty until first used.
    pub fn new() -> ContentIndex {
        ContentIndex::default()
    }

    /// Runs `f` on the index, loaded from `pool` first if this is its first use.
    fn with<T>(&self, pool: &OwnedFd, f: impl FnOnce(&mut Indexed) -> T) -> rustix::io::Result<T> {
        let mut guard = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(load_index(pool)?);
        }
        Ok(f(guard.get_or_insert_with(Indexed::default)))
    }

    /// The pool key of other pooled content with this hash, or None after recording `key` (of
    /// `size` bytes) as it.
    fn other_or_insert(&self, pool: &OwnedFd, hash: &str, key: &str, size: u64) -> rustix::io::Result<Option<String>> {
        self.with(pool, |ix| match ix.by_hash.get(hash) {
            Some(k) if k != key => Some(k.clone()),
            Some(_) => None,
            None => {
                ix.by_hash.insert(hash.to_string(), key.to_string());
                if size >= DEFER_MIN {
                    ix.sizes.insert(size);
                }
                None
            }
        })
    }

    /// Whether pooled content may have `size` bytes (always true below [`DEFER_MIN`]).
    fn may_hold_size(&self, pool: &OwnedFd, size: u64) -> rustix::io::Result<bool> {
        if size < DEFER_MIN {
            return Ok(true);
        }
        self.with(pool, |ix| ix.sizes.contains(&size))
    }

    /// Forgets `hash` if it still names `key` (whose pool file is gone).
    fn forget(&self, hash: &str, key: &str) {
        let mut guard = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ix) = guard.as_mut()
            && ix.by_hash.get(hash).is_some_and(|k| k == key)
        {
            ix.by_hash.remove(hash);
        }
    }
}

/// The pool's files of at least [`STUB_MIN`] bytes by hash (the key's first 64 characters), and
/// the sizes of those of at least [`DEFER_MIN`].
fn load_index(pool: &OwnedFd) -> rustix::io::Result<Indexed> {
    let mut ix = Indexed::default();
    for (name, ty) in read_names(pool)? {
        let Ok(key) = name.into_string() else { continue };
        if key.len() < 65 || key.as_bytes()[64] != b'-' || !matches!(ty, FileType::RegularFile) {
            continue;
        }
        let st = rustix::fs::statat(pool, key.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        let size = st.st_size as u64;
        if size >= STUB_MIN {
            ix.by_hash.entry(key[..64].to_string()).or_insert(key);
        }
        if size >= DEFER_MIN {
            ix.sizes.insert(size);
        }
    }
    Ok(ix)
}

/// Where adopting a tree may leave metadata-only files: the tree's data layer (created at the
/// first) and the index that finds pooled content by hash.
#[derive(Debug)]
pub struct DataLayer<'a> {
    /// The data-only lower layer of the tree's mounts: `<sha256>` hardlinks to pooled inodes.
    pub dir: &'a Path,
    /// Pooled content by hash.
    pub index: &'a Arc<ContentIndex>,
}

/// Hashes taken while a tree was still being written (see the module documentation), by the
/// file's path below the tree's root.
#[derive(Debug, Default)]
pub struct Prehashed {
    files: HashMap<PathBuf, Seen>,
    /// Files seen with xattrs or other links: adoption leaves them alone, so no pass hashes them.
    passed_over: std::collections::HashSet<PathBuf>,
    /// Directories whose every file was hashed or passed over, with their ctime then and their
    /// subdirectories: a pass reads them again only once their ctime changes (which no writer
    /// can set back, as it can an mtime).
    settled: HashMap<PathBuf, ((i64, i64), Vec<PathBuf>)>,
}

/// A file as it was while it was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    hash: String,
}

impl Seen {
    fn matches(&self, st: &rustix::fs::Stat) -> bool {
        self.ino == st.st_ino
            && self.size == st.st_size as u64
            && self.mtime == (st.st_mtime, st.st_mtime_nsec as i64)
            && self.ctime == (st.st_ctime, st.st_ctime_nsec as i64)
    }
}

/// How long a file's last change must lie in the past before it is hashed early: more than the
/// coarsest clock tick file systems with nanosecond timestamps stamp changes with, so a later
/// change cannot carry the same ctime.
const QUIET: Duration = Duration::from_millis(50);
/// The same for a time without nanoseconds, as file systems that stamp whole seconds give (ext4
/// with 128-byte inodes, for one): more than a second.
const QUIET_WHOLE_SECONDS: Duration = Duration::from_millis(2100);

/// A digest of `path` that stays the same within this process.
fn path_digest(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// What one [`Prehashed::pass`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Files hashed in this pass.
    pub hashed: u64,
    /// Regular files left for a later pass (changed too recently, or open for writing).
    pub pending: u64,
    /// Which files those were (a digest of their paths, whatever their order): the same files
    /// left pass after pass, as a download that stalled in the middle of a file leaves one, tell
    /// a stall from progress.
    pub pending_set: u64,
}

impl Prehashed {
    /// No hashes yet.
    pub fn new() -> Prehashed {
        Prehashed::default()
    }

    /// Files hashed so far.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is hashed yet.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// One pass over the tree at `dir` (which another process may be writing): hashes each
    /// regular file not hashed yet whose last change is older than [`QUIET`] and that a read lease
    /// can be taken on. Returns at the next file once `stop` is set. Fails with `EINVAL` where the
    /// file system or the caller cannot take leases (nothing can be hashed early there).
    pub fn pass(&mut self, dir: &Path, stop: &AtomicBool) -> std::io::Result<PassStats> {
        let root = read_open(|f| rustix::fs::open(dir, f, Mode::empty()), OFlags::DIRECTORY)?;
        let mut stats = PassStats::default();
        let mut buf = vec![0u8; 128 << 10];
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            // A settled directory is only looked at (a stat through an `O_PATH` descriptor,
            // resolved like any other beneath the root without symlinks), not read.
            if let Some((seen, subdirs)) = self.settled.get(&rel)
                && let Ok(st) = stat_beneath(&root, &rel)
                && *seen == changed(&st)
                && quiet(*seen, now())
            {
                todo.extend(subdirs.iter().cloned());
                continue;
            }
            // (a directory removed or replaced meanwhile is met again in a later pass, or not)
            let Ok(fd) = open_beneath(&root, &rel) else { continue };
            let Ok(st) = fstat(&fd) else { continue };
            let ctime = changed(&st);
            let Ok(names) = read_names(&fd) else { continue };
            let (mut subdirs, mut pending) = (Vec::new(), false);
            for (name, ty) in names {
                if stop.load(Ordering::Relaxed) {
                    return Ok(stats);
                }
                let path = rel.join(OsStr::from_bytes(name.to_bytes()));
                match ty {
                    FileType::Directory => subdirs.push(path),
                    FileType::RegularFile if !self.files.contains_key(&path) && !self.passed_over.contains(&path) => {
                        match hash_leased(&fd, &name, &mut buf, stop)? {
                            Early::Hashed(seen) => {
                                stats.hashed += 1;
                                self.files.insert(path, seen);
                            }
                            Early::Never => {
                                self.passed_over.insert(path);
                            }
                            Early::Later => {
                                stats.pending += 1;
                                stats.pending_set = stats.pending_set.wrapping_add(path_digest(&path));
                                pending = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            todo.extend(subdirs.iter().cloned());
            // Settled only when its ctime is old enough that a later entry would change it.
            if !pending && quiet(ctime, now()) {
                self.settled.insert(rel, (ctime, subdirs));
            } else {
                self.settled.remove(&rel);
            }
        }
        Ok(stats)
    }

    /// The hash seen for `rel` if the file is still as it was then.
    fn hash_of(&self, rel: &Path, st: &rustix::fs::Stat) -> Option<&str> {
        self.files.get(rel).filter(|seen| seen.matches(st)).map(|seen| seen.hash.as_str())
    }
}

/// What [`hash_leased`] made of a file.
enum Early {
    Hashed(Seen),
    /// Changed too recently, open for writing, or gone: perhaps in a later pass.
    Later,
    /// Adoption will leave it alone (xattrs, other links).
    Never,
}

/// When `st`'s inode last changed (its ctime).
fn changed(st: &rustix::fs::Stat) -> (i64, i64) {
    (st.st_ctime, st.st_ctime_nsec as i64)
}

fn now() -> (i64, i64) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

/// Whether a ctime lies more than [`QUIET`] before `now` ([`QUIET_WHOLE_SECONDS`] for one without
/// nanoseconds).
fn quiet(ctime: (i64, i64), now: (i64, i64)) -> bool {
    let ns = |(s, n): (i64, i64)| i128::from(s) * 1_000_000_000 + i128::from(n);
    let quiet = if ctime.1 == 0 { QUIET_WHOLE_SECONDS } else { QUIET };
    ns(now) - ns(ctime) > quiet.as_nanos() as i128
}

/// Hashes `name` in `dir` under a read lease once its last change is quiet (waiting a little for
/// that); None if it cannot be hashed so (open for writing, xattrs, other links, gone).
///
/// Where no lease can be taken (leases disabled, a file system without them, a file of another
/// owner without `CAP_LEASE`), the file, which is in a committed tree and so never written, is
/// hashed without one, and only if a stat after the hash shows it as before.
fn hash_when_quiet(dir: &OwnedFd, name: &CStr, buf: &mut [u8]) -> Option<Seen> {
    let stop = AtomicBool::new(false);
    let give_up = std::time::Instant::now() + QUIET_WHOLE_SECONDS + QUIET;
    let mut leases = true;
    while std::time::Instant::now() < give_up {
        let hashed = if leases { hash_leased(dir, name, buf, &stop) } else { hash_unleased(dir, name, buf, &stop) };
        match hashed {
            Ok(Early::Hashed(seen)) => return Some(seen),
            Ok(Early::Later) => std::thread::sleep(QUIET),
            Err(_) if leases => leases = false,
            Ok(Early::Never) | Err(_) => return None,
        }
    }
    None
}

/// Opens `name` in `dir` to hash it (None: gone, or not openable now).
fn open_to_hash(dir: &OwnedFd, name: &CStr) -> Option<OwnedFd> {
    read_open(|f| openat(dir, name, f, Mode::empty()), OFlags::NOFOLLOW | OFlags::NONBLOCK).ok()
}

/// Hashes `name` in `dir` without a lease: as [`hash_leased`], the second stat alone showing
/// that the file did not change.
fn hash_unleased(dir: &OwnedFd, name: &CStr, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<Early> {
    let Some(fd) = open_to_hash(dir, name) else { return Ok(Early::Later) };
    hash_then_stat(&fd, buf, stop)
}

/// [`hash_open`], then a second stat must show the file as it was before the hash (any write
/// since gave it another ctime).
fn hash_then_stat(fd: &OwnedFd, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<Early> {
    match hash_open(fd, buf, stop)? {
        Early::Hashed(seen) if !seen.matches(&fstat(fd)?) => Ok(Early::Later),
        early => Ok(early),
    }
}

/// Hashes `name` in `dir` under a read lease (see [`Prehashed::pass`]).
fn hash_leased(dir: &OwnedFd, name: &CStr, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<Early> {
    let Some(fd) = open_to_hash(dir, name) else { return Ok(Early::Later) };
    // SAFETY: fcntl on a descriptor this function owns; F_SETLEASE takes an int argument.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // open for writing (by the writer, or mapped writable)
            Some(libc::EAGAIN) => Ok(Early::Later),
            _ => Err(e),
        };
    }
    // From here until the lease goes with the descriptor (closing the only one releases it, and
    // lets a waiting writer go on), an open for writing waits, up to the kernel's lease-break
    // time (`/proc/sys/fs/lease-break-time`); a write after that shows in the second stat.
    hash_then_stat(&fd, buf, stop)
}

/// Hashes the open regular file `fd` if it has one link, no xattrs and a quiet ctime.
fn hash_open(fd: &OwnedFd, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<Early> {
    let st = fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
        return Ok(Early::Never);
    }
    let ctime = (st.st_ctime, st.st_ctime_nsec as i64);
    if !quiet(ctime, now()) {
        return Ok(Early::Later);
    }
    match rustix::fs::flistxattr(fd, &mut [0u8; 1][..0]) {
        Ok(0) | Err(Errno::NOTSUP) => {}
        Ok(_) => return Ok(Early::Never),
        Err(e) => return Err(e.into()),
    }
    // Read up to the size seen, no further: the caller's second stat finds a file that grew or
    // changed meanwhile.
    let size = st.st_size as u64;
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut done = 0u64;
    while done < size {
        if stop.load(Ordering::Relaxed) {
            return Ok(Early::Later);
        }
        let want = buf.len().min(usize::try_from(size - done).unwrap_or(usize::MAX));
        let n = match rustix::io::read(fd, &mut buf[..want]) {
            // shrunk meanwhile
            Ok(0) => return Ok(Early::Later),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(Early::Hashed(Seen {
        ino: st.st_ino,
        size,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime,
        hash: hasher.finish().hex().to_string(),
    }))
}

/// The temporary names an adoption gives, in the tree, a pool inode's link (renamed over the
/// file it replaces) and a metadata-only file being made (see [`clear_adoption_leftovers`]).
const POOL_TMP: &str = ".strata-pool-";
const STUB_TMP: &str = ".strata-stub-";

/// Removes from `tree` what an adoption by process `pid` left when it was cut short (a crash
/// between giving a temporary name and renaming it over the file it replaces): links of pool
/// inodes named `.strata-pool-<pid>-…` and metadata-only files named `.strata-stub-<pid>-…`. The
/// file each was to replace is still there, whole. The tree is walked by descriptors, no symlink
/// followed; other names, those of other processes included, are left alone. Returns how many
/// were removed.
pub fn clear_adoption_leftovers(tree: &Path, pid: u32) -> Result<u64> {
    let root = read_open(|f| rustix::fs::open(tree, f, Mode::empty()), OFlags::DIRECTORY)
        .map_err(|e| Error::io("open", tree)(e.into()))?;
    let marks = [POOL_TMP, STUB_TMP].map(|prefix| format!("{prefix}{pid}-"));
    let ours = |name: &[u8]| {
        marks.iter().any(|mark| {
            name.strip_prefix(mark.as_bytes()).is_some_and(|rest| {
                let mut parts = rest.split(|&b| b == b'-');
                let digits = |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
                digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
            })
        })
    };
    let mut removed = 0;
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let fd = open_beneath(&root, &rel).map_err(|e| Error::io("open", tree.join(&rel))(e.into()))?;
        for (name, ty) in read_names(&fd).map_err(|e| Error::io("read directory", tree.join(&rel))(e.into()))? {
            let path = rel.join(OsStr::from_bytes(name.to_bytes()));
            match ty {
                FileType::Directory => todo.push(path),
                FileType::RegularFile if ours(name.to_bytes()) => {
                    rustix::fs::unlinkat(&fd, name.as_c_str(), AtFlags::empty())
                        .map_err(|e| Error::io("remove", tree.join(&path))(e.into()))?;
                    removed += 1;
                }
                _ => {}
            }
        }
    }
    Ok(removed)
}

/// How [`link_new`] left a file.
enum Linked {
    /// It is the pool's file for its key now (the key was new).
    New,
    /// It was replaced by the pool's inode for its key.
    Shared,
    /// It keeps its own inode, out of the pool (another file system, too many links).
    Own,
}

/// Hardlinks `name` in `dir` to the pool's inode for `key`, or adds it to the pool under `key`.
/// Returns whether it now shares an inode that was already pooled; `Ok(false)` also when the pool
/// cannot hold it (another file system, too many links), where it keeps its own inode.
pub(crate) fn link_pooled(pool: &OwnedFd, dir: &OwnedFd, name: &OsStr, key: &str) -> rustix::io::Result<bool> {
    Ok(matches!(link_new(pool, dir, name, key)?, Linked::Shared))
}

/// [`link_pooled`], saying whether the key was new.
fn link_new(pool: &OwnedFd, dir: &OwnedFd, name: &OsStr, key: &str) -> rustix::io::Result<Linked> {
    match rustix::fs::linkat(dir, name, pool, key, AtFlags::empty()) {
        Ok(()) => return Ok(Linked::New),
        Err(Errno::EXIST) => {}
        Err(Errno::XDEV) | Err(Errno::PERM) | Err(Errno::MLINK) => return Ok(Linked::Own),
        Err(e) => return Err(e),
    }
    let tmp = unique_name(POOL_TMP);
    match rustix::fs::linkat(pool, key, dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::MLINK) => return Ok(Linked::Own),
        Err(e) => return Err(e),
    }
    if let Err(e) = renameat(dir, tmp.as_str(), dir, name) {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    Ok(Linked::Shared)
}

/// The pool key of a file: content hash, permission bits, owner, mtime (nanoseconds only when
/// not zero, so keys of unpacked layers, whose mtimes are whole seconds, stay as they are).
pub(crate) fn pool_key(
    sha256_hex: &str,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: impl std::fmt::Display,
    mtime_nsec: i64,
) -> String {
    if mtime_nsec == 0 {
        format!("{sha256_hex}-{:o}-{uid}-{gid}-{mtime}", mode & 0o7777)
    } else {
        format!("{sha256_hex}-{:o}-{uid}-{gid}-{mtime}.{mtime_nsec:09}", mode & 0o7777)
    }
}

impl Store {
    /// Adopts the tree at `dir` into the content pool (see the module documentation). Holds the
    /// store lock shared, so a `gc` never sweeps a pool file between its link and its use.
    ///
    /// One pass lists the directories and their regular files (each directory opened from the
    /// root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no descriptor is held per
    /// pending directory); then the machine's cores hash and link them, a directory at a time.
    pub fn adopt_tree(&self, dir: &Path) -> Result<AdoptStats> {
        self.adopt_tree_with(dir, None, None)
    }

    /// [`Store::adopt_tree`], making files whose content is pooled under other metadata
    /// metadata-only files that read it from `data`, and taking the hashes in `early` of files
    /// that did not change since (see the module documentation).
    pub fn adopt_tree_with(
        &self,
        dir: &Path,
        data: Option<&DataLayer<'_>>,
        early: Option<&Prehashed>,
    ) -> Result<AdoptStats> {
        let (stats, later) = self.adopt_tree_deferring(dir, data, early)?;
        self.link_deferred(later)?;
        Ok(stats)
    }

    /// [`Store::adopt_tree_with`], leaving out what can wait: the pool links of files whose key
    /// is new to the pool. Such a link (`linkat` of the file into the pool) changes nothing in the
    /// tree, so it may follow once the tree is in use as a read-only layer; [`Store::link_deferred`]
    /// makes them. Everything that changes the tree happens here: files whose key is pooled are
    /// replaced by the pool's inode, metadata-only files are made, and a key or (for metadata-only
    /// files) a content that appears twice in the tree is linked at once so the second copy can
    /// share the first. Until the links are made, the content index may name a key that is not
    /// in the pool yet: the caller adopts the next tree only after them (a metadata-only file
    /// made from such a name in between would fail, and its file would keep its own data).
    pub fn adopt_tree_deferring(
        &self,
        dir: &Path,
        data: Option<&DataLayer<'_>>,
        early: Option<&Prehashed>,
    ) -> Result<(AdoptStats, DeferredLinks)> {
        let _lock = self.lock(false)?;
        // The data layer's directory, opened (created) at the first metadata-only file.
        let data_dir: OnceLock<rustix::io::Result<OwnedFd>> = OnceLock::new();
        let stubs = data.map(|d| Stubs { layer: d, dir: &data_dir });
        let open = |p: &Path| {
            read_open(|f| rustix::fs::open(p, f, Mode::empty()), OFlags::DIRECTORY)
                .map_err(|e| Error::io("open", p)(e.into()))
        };
        let pool = open(&self.root.join("pool"))?;
        let root = open(dir)?;
        // The tree's directories, read by the workers as they find them.
        let walk = Walk::new();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
        type Done = Result<(AdoptStats, Vec<Unpooled>, Vec<Unhashed>)>;
        let results: Vec<Done> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        // (a worker that panics must not leave the others waiting for its directories)
                        let _guard = FailOnPanic(&walk);
                        let mut stats = AdoptStats::default();
                        let mut unpooled = Vec::new();
                        let mut unhashed = Vec::new();
                        let mut buf = vec![0u8; 128 << 10];
                        let worked = (|| -> Result<()> {
                            while let Some((at, rel)) = walk.next() {
                                let fd = open_beneath(&root, &rel)
                                    .map_err(|e| Error::io("open", dir.join(&rel))(e.into()))?;
                                let names = read_names(&fd)
                                    .map_err(|e| Error::io("read directory", dir.join(&rel))(e.into()))?;
                                let mut files = Vec::new();
                                let mut subdirs = Vec::new();
                                for (name, ty) in names {
                                    match ty {
                                        FileType::Directory => {
                                            subdirs.push(rel.join(OsStr::from_bytes(name.to_bytes())))
                                        }
                                        FileType::RegularFile => files.push(name),
                                        _ => {}
                                    }
                                }
                                walk.found(subdirs);
                                for name in &files {
                                    let path = || rel.join(OsStr::from_bytes(name.to_bytes()));
                                    let early_path = early.map(|_| path());
                                    let early = early.zip(early_path.as_deref());
                                    let file = InTree { fd: &fd, at, name: name.as_c_str() };
                                    let out = Adopted {
                                        stats: &mut stats,
                                        unpooled: &mut unpooled,
                                        unhashed: Some(&mut unhashed),
                                    };
                                    if adopt_file(&pool, &file, &mut buf, stubs.as_ref(), early, out)
                                        .map_err(|e| Error::io("pool", dir.join(path()))(e))?
                                    {
                                        stats.files += 1;
                                    }
                                }
                                walk.done();
                            }
                            Ok(())
                        })();
                        // (the others stop at their next directory)
                        worked.inspect_err(|_| walk.fail())?;
                        Ok((stats, unpooled, unhashed))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let work = walk.into_dirs();
        let mut total = AdoptStats::default();
        let (mut unpooled, mut unhashed) = (Vec::new(), Vec::new());
        for r in results {
            let (r, u, h) = r?;
            total.files += r.files;
            total.shared += r.shared;
            total.shared_bytes += r.shared_bytes;
            total.stubbed += r.stubbed;
            total.stubbed_bytes += r.stubbed_bytes;
            unpooled.extend(u);
            unhashed.extend(h);
        }
        let mut fds: HashMap<usize, OwnedFd> = HashMap::new();
        // The directory `work[at]`, opened once.
        fn dir_fd<'m>(
            fds: &'m mut HashMap<usize, OwnedFd>,
            root: &OwnedFd,
            tree: &Path,
            rel: &Path,
            at: usize,
        ) -> Result<&'m OwnedFd> {
            Ok(match fds.entry(at) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(open_beneath(root, rel).map_err(|e| Error::io("open", tree.join(rel))(e.into()))?)
                }
            })
        }
        // An unhashed file whose size another file of the tree has may share it: hashed now.
        if !unhashed.is_empty() {
            let mut sizes = HashMap::<u64, u32>::new();
            let big = unpooled.iter().map(|u| u.size).filter(|&n| n >= DEFER_MIN);
            for n in big.chain(unhashed.iter().map(|u| u.st.st_size as u64)) {
                *sizes.entry(n).or_default() += 1;
            }
            let (now, wait): (Vec<Unhashed>, Vec<Unhashed>) =
                unhashed.into_iter().partition(|u| sizes[&(u.st.st_size as u64)] > 1);
            unhashed = wait;
            let mut buf = vec![0u8; 128 << 10];
            for u in now {
                let fd = dir_fd(&mut fds, &root, dir, &work[u.dir], u.dir)?;
                let file = InTree { fd, at: u.dir, name: u.name.as_c_str() };
                let out = Adopted { stats: &mut total, unpooled: &mut unpooled, unhashed: None };
                adopt_file(&pool, &file, &mut buf, stubs.as_ref(), None, out).map_err(|e| {
                    Error::io("pool", dir.join(&work[u.dir]).join(OsStr::from_bytes(u.name.to_bytes())))(e)
                })?;
            }
        }
        // New keys: linked now where a file of this tree is to share them, else left for later.
        let stubbable = |u: &Unpooled| stubs.is_some() && u.size >= STUB_MIN;
        let (mut keys, mut hashes) = (HashMap::<&str, u32>::new(), HashMap::<&str, u32>::new());
        for u in &unpooled {
            *keys.entry(&u.key).or_default() += 1;
            if stubbable(u) {
                *hashes.entry(&u.hash).or_default() += 1;
            }
        }
        let now: Vec<bool> = unpooled
            .iter()
            .map(|u| -> Result<bool> {
                if keys[u.key.as_str()] > 1 || (stubbable(u) && hashes[u.hash.as_str()] > 1) {
                    return Ok(true);
                }
                match &stubs {
                    // content pooled under other metadata: a metadata-only file now
                    Some(stubs) if stubbable(u) => Ok(stubs
                        .layer
                        .index
                        .other_or_insert(&pool, &u.hash, &u.key, u.size)
                        .map_err(|e| Error::io("read", self.root.join("pool"))(e.into()))?
                        .is_some()),
                    _ => Ok(false),
                }
            })
            .collect::<Result<_>>()?;
        let mut later = Vec::new();
        for (u, now) in unpooled.into_iter().zip(now) {
            if !now {
                later.push(u);
                continue;
            }
            let rel = &work[u.dir];
            let path = || dir.join(rel).join(OsStr::from_bytes(u.name.to_bytes()));
            let fd = dir_fd(&mut fds, &root, dir, rel, u.dir)?;
            let name = OsStr::from_bytes(u.name.to_bytes());
            link_hashed(&pool, fd, name, &u.st, &u.hash, &u.key, u.size, &mut total, stubs.as_ref())
                .map_err(|e| Error::io("pool", path())(e))?;
        }
        let index = data.filter(|_| !unhashed.is_empty()).map(|d| d.index.clone());
        Ok((total, DeferredLinks { tree: dir.to_path_buf(), dirs: work, files: later, unhashed, index }))
    }

    /// Makes the pool links [`Store::adopt_tree_deferring`] left for later: each file still as it
    /// was hashed (same inode, size, times, one link) becomes the pool's file of its key, unless
    /// the key was pooled meanwhile (the file then keeps its own inode: the tree is not changed
    /// any more). A tree or file removed meanwhile is passed over. Returns the files linked.
    ///
    /// A file left unhashed is hashed first, under a read lease, and linked only if it is still
    /// as it was at the adoption (its content is then recorded in the content index).
    pub fn link_deferred(&self, later: DeferredLinks) -> Result<u64> {
        if later.is_empty() {
            return Ok(0);
        }
        let _lock = self.lock(false)?;
        let open = |p: &Path| read_open(|f| rustix::fs::open(p, f, Mode::empty()), OFlags::DIRECTORY);
        let pool = open(&self.root.join("pool")).map_err(|e| Error::io("open", self.root.join("pool"))(e.into()))?;
        let root = match open(&later.tree) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(0),
            Err(e) => return Err(Error::io("open", &later.tree)(e.into())),
        };
        let mut linked = 0;
        // The directory of the files at hand (they come a directory at a time); None if gone.
        let mut open_dir: Option<(usize, Option<OwnedFd>)> = None;
        fn dir_fd<'s>(
            open_dir: &'s mut Option<(usize, Option<OwnedFd>)>,
            root: &OwnedFd,
            dirs: &[PathBuf],
            at: usize,
        ) -> Option<&'s OwnedFd> {
            if open_dir.as_ref().is_none_or(|d| d.0 != at) {
                *open_dir = Some((at, open_beneath(root, &dirs[at]).ok()));
            }
            open_dir.as_ref().and_then(|d| d.1.as_ref())
        }
        // Links `name` in `fd` as `key` if it is still as `was`; whether it did.
        let link = |fd: &OwnedFd, at: usize, name: &CStr, was: &rustix::fs::Stat, key: &str| -> Result<bool> {
            let Ok(st) = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) else { return Ok(false) };
            let same = |s: &rustix::fs::Stat| {
                let times = (s.st_mtime, s.st_mtime_nsec, s.st_ctime, s.st_ctime_nsec);
                (s.st_dev, s.st_ino, s.st_nlink, s.st_size, s.st_mode, s.st_uid, s.st_gid, times)
            };
            if same(&st) != same(was) {
                return Ok(false);
            }
            match rustix::fs::linkat(fd, name, &pool, key, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST | Errno::NOENT | Errno::XDEV | Errno::PERM | Errno::MLINK) => Ok(false),
                Err(e) => {
                    let path = later.tree.join(&later.dirs[at]).join(OsStr::from_bytes(name.to_bytes()));
                    Err(Error::io("pool", path)(e.into()))
                }
            }
        };
        for f in &later.files {
            let Some(fd) = dir_fd(&mut open_dir, &root, &later.dirs, f.dir) else { continue };
            linked += u64::from(link(fd, f.dir, f.name.as_c_str(), &f.st, f.key.as_str())?);
        }
        let mut buf = vec![0u8; 128 << 10];
        for f in &later.unhashed {
            let Some(fd) = dir_fd(&mut open_dir, &root, &later.dirs, f.dir) else { continue };
            let Some(seen) = hash_when_quiet(fd, f.name.as_c_str(), &mut buf) else { continue };
            let st = &f.st;
            if !seen.matches(st) {
                continue;
            }
            let key = pool_key(
                &seen.hash,
                st.st_mode,
                st.st_uid.into(),
                st.st_gid.into(),
                st.st_mtime,
                st.st_mtime_nsec as i64,
            );
            let now = link(fd, f.dir, f.name.as_c_str(), st, &key)?;
            linked += u64::from(now);
            // (pooled meanwhile, perhaps by another process: recorded too, so a later copy of it is
            // hashed in its adoption and shares it)
            let pooled = now || rustix::fs::statat(&pool, key.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok();
            if let Some(index) = later.index.as_ref().filter(|_| pooled) {
                let _ = index.other_or_insert(&pool, &seen.hash, &key, seen.size);
            }
        }
        Ok(linked)
    }
}

/// Where [`adopt_file`] puts what it did and left.
struct Adopted<'a> {
    stats: &'a mut AdoptStats,
    unpooled: &'a mut Vec<Unpooled>,
    /// Files whose hash waits for their pool link, if it may.
    unhashed: Option<&'a mut Vec<Unhashed>>,
}

/// A file of new content whose hash waits for its pool link (see the module documentation).
struct Unhashed {
    /// Its directory: an index into the adoption's list of directories.
    dir: usize,
    name: CString,
    /// As it was at the adoption.
    st: rustix::fs::Stat,
}

/// A hashed file whose pool key was not in the pool when it was hashed.
struct Unpooled {
    /// Its directory: an index into the adoption's list of directories.
    dir: usize,
    name: CString,
    st: rustix::fs::Stat,
    hash: String,
    key: String,
    size: u64,
}

/// The pool links an adoption left for later ([`Store::adopt_tree_deferring`]).
#[must_use = "the files stay out of the pool unless Store::link_deferred links them"]
pub struct DeferredLinks {
    tree: PathBuf,
    /// The tree's directories, relative to it.
    dirs: Vec<PathBuf>,
    files: Vec<Unpooled>,
    /// Files to hash first, and the index to record their content in.
    unhashed: Vec<Unhashed>,
    index: Option<Arc<ContentIndex>>,
}

impl DeferredLinks {
    /// Files left to link.
    pub fn len(&self) -> usize {
        self.files.len() + self.unhashed.len()
    }

    /// Whether no file is left to link.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.unhashed.is_empty()
    }

    /// Of those, the files left to hash first.
    pub fn unhashed(&self) -> usize {
        self.unhashed.len()
    }
}

impl std::fmt::Debug for DeferredLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredLinks")
            .field("tree", &self.tree)
            .field("files", &self.files.len())
            .field("unhashed", &self.unhashed.len())
            .finish()
    }
}

/// The directories of a tree being adopted, shared by the workers that read them: each takes one
/// not read yet, adds the subdirectories it finds, and the walk ends once none is left and none
/// is being read (or at the first failure).
struct Walk {
    state: Mutex<WalkState>,
    changed: std::sync::Condvar,
}

struct WalkState {
    /// Every directory found, relative to the root; an index here names it.
    dirs: Vec<PathBuf>,
    /// Indices of those not taken yet.
    todo: Vec<usize>,
    /// Directories taken and not done.
    busy: usize,
    failed: bool,
}

impl Walk {
    fn new() -> Walk {
        let state = WalkState { dirs: vec![PathBuf::new()], todo: vec![0], busy: 0, failed: false };
        Walk { state: Mutex::new(state), changed: std::sync::Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WalkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next directory to read, waiting while others may still find some; None at the end.
    fn next(&self) -> Option<(usize, PathBuf)> {
        let mut s = self.lock();
        loop {
            if s.failed {
                return None;
            }
            if let Some(at) = s.todo.pop() {
                s.busy += 1;
                return Some((at, s.dirs[at].clone()));
            }
            if s.busy == 0 {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Subdirectories found in the directory being read.
    fn found(&self, subdirs: Vec<PathBuf>) {
        if subdirs.is_empty() {
            return;
        }
        let mut s = self.lock();
        for d in subdirs {
            s.dirs.push(d);
            let at = s.dirs.len() - 1;
            s.todo.push(at);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// The directory taken last by this worker is done.
    fn done(&self) {
        let mut s = self.lock();
        s.busy -= 1;
        let end = s.busy == 0 && s.todo.is_empty();
        drop(s);
        if end {
            self.changed.notify_all();
        }
    }

    /// A worker failed: the others stop at their next directory.
    fn fail(&self) {
        self.lock().failed = true;
        self.changed.notify_all();
    }

    fn into_dirs(self) -> Vec<PathBuf> {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner()).dirs
    }
}

/// Ends a [`Walk`] when the worker holding it panics.
struct FailOnPanic<'w>(&'w Walk);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// A file of the tree being adopted: its directory (opened, and its index in the walk) and name.
struct InTree<'a> {
    fd: &'a OwnedFd,
    at: usize,
    name: &'a CStr,
}

/// The directory `rel` below `root`, resolved without leaving it or following a symlink.
fn open_beneath(root: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return rustix::io::dup(root);
    }
    read_open(
        |f| rustix::fs::openat2(root, rel, f, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS),
        OFlags::DIRECTORY | OFlags::NOFOLLOW,
    )
}

/// Stats the directory `rel` below `root` through an `O_PATH` descriptor, resolved as
/// [`open_beneath`] resolves it.
fn stat_beneath(root: &OwnedFd, rel: &Path) -> rustix::io::Result<rustix::fs::Stat> {
    if rel.as_os_str().is_empty() {
        return fstat(root);
    }
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    fstat(&fd)
}

/// The entries of a directory (without `.` and `..`) and their types, read from `lstat` where the
/// directory does not give them.
fn read_names(dir: &OwnedFd) -> rustix::io::Result<Vec<(std::ffi::CString, FileType)>> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let ty = match entry.file_type() {
            FileType::Unknown => {
                FileType::from_raw_mode(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?.st_mode)
            }
            t => t,
        };
        out.push((CStr::to_owned(name), ty));
    }
    Ok(out)
}

/// Hashes one regular file and links it into the pool if its key is there; otherwise adds it to
/// `unpooled`. Returns whether it was hashed (files with xattrs or several links are left alone).
fn adopt_file(
    pool: &OwnedFd,
    file: &InTree<'_>,
    buf: &mut [u8],
    stubs: Option<&Stubs<'_, '_>>,
    early: Option<(&Prehashed, &Path)>,
    out: Adopted<'_>,
) -> std::io::Result<bool> {
    let Adopted { stats, unpooled, unhashed } = out;
    let (dir, name) = (file.fd, file.name);
    // A file hashed early and unchanged since: neither opened nor read again (a change of its
    // xattrs or links would have changed its ctime).
    if let Some((early, rel)) = early {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_nlink == 1
            && let Some(hash) = early.hash_of(rel, &st)
        {
            place(pool, file, st, hash, st.st_size as u64, stats, stubs, unpooled)?;
            return Ok(true);
        }
    }
    let fd = read_open(|f| openat(dir, name, f, Mode::empty()), OFlags::NOFOLLOW | OFlags::NONBLOCK)?;
    let st = fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
        return Ok(false);
    }
    let mut xattrs = [0u8; 1];
    match rustix::fs::flistxattr(&fd, &mut xattrs[..0]) {
        Ok(0) => {}
        Ok(_) => return Ok(false),
        Err(Errno::NOTSUP) => {}
        Err(e) => return Err(e.into()),
    }
    // New content for sure: its hash can wait for its pool link.
    if let (Some(unhashed), Some(stubs)) = (unhashed, stubs)
        && !stubs.layer.index.may_hold_size(pool, st.st_size as u64)?
    {
        unhashed.push(Unhashed { dir: file.at, name: file.name.to_owned(), st });
        return Ok(true);
    }
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut file_r = File::from(fd);
    let mut size = 0u64;
    loop {
        let n = match file_r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hasher.finish();
    drop(file_r);
    place(pool, file, st, digest.hex(), size, stats, stubs, unpooled)?;
    Ok(true)
}

/// Links a hashed file to the pool's inode of its key if the pool has one, else adds it to
/// `unpooled` (see [`Store::adopt_tree_deferring`]).
#[allow(clippy::too_many_arguments)]
fn place(
    pool: &OwnedFd,
    file: &InTree<'_>,
    st: rustix::fs::Stat,
    hash: &str,
    size: u64,
    stats: &mut AdoptStats,
    stubs: Option<&Stubs<'_, '_>>,
    unpooled: &mut Vec<Unpooled>,
) -> std::io::Result<()> {
    let key = pool_key(hash, st.st_mode, st.st_uid.into(), st.st_gid.into(), st.st_mtime, st.st_mtime_nsec as i64);
    match rustix::fs::statat(pool, key.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {
            link_hashed(pool, file.fd, OsStr::from_bytes(file.name.to_bytes()), &st, hash, &key, size, stats, stubs)
        }
        Err(Errno::NOENT) => {
            unpooled.push(Unpooled { dir: file.at, name: file.name.to_owned(), st, hash: hash.to_string(), key, size });
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Links a hashed file into the pool (see [`adopt_file`]).
#[allow(clippy::too_many_arguments)]
fn link_hashed(
    pool: &OwnedFd,
    dir: &OwnedFd,
    name: &OsStr,
    st: &rustix::fs::Stat,
    hash: &str,
    key: &str,
    size: u64,
    stats: &mut AdoptStats,
    stubs: Option<&Stubs<'_, '_>>,
) -> std::io::Result<()> {
    match link_new(pool, dir, name, key)? {
        Linked::Shared => {
            stats.shared += 1;
            stats.shared_bytes += size;
        }
        Linked::New if size >= STUB_MIN => {
            if let Some(stubs) = stubs
                && let Some(other) = stubs.layer.index.other_or_insert(pool, hash, key, size)?
            {
                if stubs.make(pool, dir, name, st, hash, &other)? {
                    // The pool's new key held only this file's old inode.
                    let _ = rustix::fs::unlinkat(pool, key, AtFlags::empty());
                    stats.stubbed += 1;
                    stats.stubbed_bytes += size;
                } else {
                    stubs.layer.index.forget(hash, &other);
                }
            }
        }
        Linked::New | Linked::Own => {}
    }
    Ok(())
}

/// The overlayfs xattrs of a metadata-only file.
const METACOPY: &str = "trusted.overlay.metacopy";
const REDIRECT: &str = "trusted.overlay.redirect";

/// Makes metadata-only files of one tree.
struct Stubs<'l, 'd> {
    layer: &'l DataLayer<'l>,
    dir: &'d OnceLock<rustix::io::Result<OwnedFd>>,
}

impl Stubs<'_, '_> {
    fn data_dir(&self) -> rustix::io::Result<&OwnedFd> {
        self.dir
            .get_or_init(|| {
                match rustix::fs::mkdir(self.layer.dir, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                rustix::fs::open(self.layer.dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            })
            .as_ref()
            .map_err(|e| *e)
    }

    /// Replaces `name` (with metadata `st`, content `hash`) by a metadata-only file reading the
    /// pool's inode `other` through the data layer. Returns false, leaving `name` as it was,
    /// when that pool file is gone or holds no more links.
    fn make(
        &self,
        pool: &OwnedFd,
        dir: &OwnedFd,
        name: &OsStr,
        st: &rustix::fs::Stat,
        hash: &str,
        other: &str,
    ) -> std::io::Result<bool> {
        let data = self.data_dir()?;
        // The reference first: a crash leaves at worst an unused link, never a dangling redirect.
        match rustix::fs::linkat(pool, other, data, hash, AtFlags::empty()) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(Errno::NOENT) | Err(Errno::MLINK) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let tmp = unique_name(STUB_TMP);
        let made = (|| -> rustix::io::Result<()> {
            let fd = openat(
                dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            )?;
            // (after the chown, which clears set-id bits)
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            rustix::fs::ftruncate(&fd, st.st_size as u64)?;
            rustix::fs::fsetxattr(&fd, METACOPY, b"", rustix::fs::XattrFlags::CREATE)?;
            rustix::fs::fsetxattr(&fd, REDIRECT, format!("/{hash}").as_bytes(), rustix::fs::XattrFlags::CREATE)?;
            let ts = |sec: i64, nsec: i64| rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec as _ };
            rustix::fs::futimens(
                &fd,
                &rustix::fs::Timestamps {
                    last_access: ts(st.st_atime, st.st_atime_nsec as i64),
                    last_modification: ts(st.st_mtime, st.st_mtime_nsec as i64),
                },
            )?;
            renameat(dir, tmp.as_str(), dir, name)
        })();
        if let Err(e) = made {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
            return Err(e.into());
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn identical_files_share_one_pool_inode_and_nothing_else_is_touched() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let store = Store::open(&dir.path().join("store"))?;
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        let mut trees = Vec::new();
        for name in ["a", "b"] {
            let t = dir.path().join(name);
            fs::create_dir_all(t.join("sub")).map_err(io(&t))?;
            fs::write(t.join("sub/same"), "the same content").map_err(io(&t))?;
            // The pool key holds the mtime: written a clock tick apart, the two would differ.
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            fs::File::options()
                .write(true)
                .open(t.join("sub/same"))
                .and_then(|f| f.set_modified(when))
                .map_err(io(&t))?;
            fs::write(t.join("own"), name).map_err(io(&t))?;
            std::os::unix::fs::symlink("/etc/passwd", t.join("link")).map_err(io(&t))?;
            trees.push(t);
        }
        // a file with other links keeps them: linking one name into the pool would split them
        fs::hard_link(trees[1].join("own"), trees[1].join("own2")).map_err(io(&trees[1]))?;
        let first = store.adopt_tree(&trees[0])?;
        assert_eq!(first, AdoptStats { files: 2, ..AdoptStats::default() });
        let second = store.adopt_tree(&trees[1])?;
        assert_eq!(second, AdoptStats { files: 1, shared: 1, shared_bytes: 16, ..AdoptStats::default() });
        let meta = |p: PathBuf| fs::symlink_metadata(&p).map_err(io(&p));
        assert_eq!(meta(trees[0].join("sub/same"))?.ino(), meta(trees[1].join("sub/same"))?.ino());
        assert_eq!(meta(trees[1].join("own"))?.nlink(), 2, "the hardlinked pair changed");
        assert!(meta(trees[0].join("link"))?.file_type().is_symlink());
        // the pool holds `same` and a's `own`: no symlink target, no hardlinked file
        let pooled = fs::read_dir(dir.path().join("store/pool")).map_err(io(dir.path()))?.count();
        assert_eq!(pooled, 2);
        assert_eq!(fs::read_to_string(trees[1].join("sub/same")).map_err(io(&trees[1]))?, "the same content");
        Ok(())
    }

    #[test]
    fn deferred_links_change_nothing_in_the_tree_and_take_only_unchanged_files() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let store = Store::open(&dir.path().join("store"))?;
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        let write = |t: &Path, name: &str, content: &str| write_dated(t, name, content.as_bytes());
        let (old, tree) = (dir.path().join("old"), dir.path().join("tree"));
        fs::create_dir_all(&old).map_err(io(&old))?;
        fs::create_dir_all(tree.join("sub")).map_err(io(&tree))?;
        write(&old, "pooled", "pooled before")?;
        store.adopt_tree(&old)?;
        write(&tree, "pooled", "pooled before")?;
        write(&tree, "new", "new content")?;
        write(&tree, "changed", "changed later")?;
        write(&tree, "twice", "twice in the tree")?;
        write(&tree, "sub/twice", "twice in the tree")?;
        let meta = |p: PathBuf| fs::symlink_metadata(&p).map_err(io(&p));
        let pool_len = || fs::read_dir(dir.path().join("store/pool")).map(|d| d.count()).map_err(io(dir.path()));

        let (stats, later) = store.adopt_tree_deferring(&tree, None, None)?;
        // the pooled file and the second copy share at once; the new contents wait
        assert_eq!(stats, AdoptStats { files: 5, shared: 2, shared_bytes: 13 + 17, ..AdoptStats::default() });
        assert_eq!(later.len(), 2, "{later:?}");
        assert_eq!(meta(tree.join("pooled"))?.ino(), meta(old.join("pooled"))?.ino());
        assert_eq!(meta(tree.join("twice"))?.ino(), meta(tree.join("sub/twice"))?.ino());
        assert_eq!(meta(tree.join("new"))?.nlink(), 1, "linked before link_deferred");
        assert_eq!(pool_len()?, 2, "pooled before, and the content twice in the tree");

        // a file changed after its hash is left out; the rest is linked, the tree as it was
        let before = meta(tree.join("new"))?;
        fs::write(tree.join("changed"), "other content").map_err(io(&tree))?;
        assert_eq!(store.link_deferred(later)?, 1);
        let after = meta(tree.join("new"))?;
        assert_eq!((after.ino(), after.nlink(), after.mtime()), (before.ino(), 2, before.mtime()));
        assert_eq!(meta(tree.join("changed"))?.nlink(), 1);
        assert_eq!(pooled_hash(&dir.path().join("store"), &tree.join("new"))?, Some(sha256_hex(b"new content")));
        assert_eq!(pool_len()?, 3);
        // a tree removed before its links are made: nothing to link, no error
        write(&old, "gone", "removed first")?;
        let (_, later) = store.adopt_tree_deferring(&old, None, None)?;
        assert_eq!(later.len(), 1);
        fs::remove_dir_all(&old).map_err(io(&old))?;
        assert_eq!(store.link_deferred(later)?, 0);
        Ok(())
    }

    /// Drops `CAP_LEASE` from the calling thread's effective set (capabilities are per thread).
    fn drop_cap_lease() -> std::io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const CAP_LEASE: u32 = 28;
        let mut header = Header { version: 0x2008_0522, pid: 0 };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset with a version-3 header and the two data words it reads and writes.
        unsafe {
            if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            data[0].effective &= !(1 << CAP_LEASE);
            if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Where no read lease can be taken, a committed file is hashed without one, checked by a
    /// stat before and after.
    #[test]
    fn without_leases_a_committed_file_is_hashed_between_two_stats() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        let file = dir.path().join("f");
        fs::write(&file, b"committed content").map_err(io(&file))?;
        // another owner's file: without CAP_LEASE, F_SETLEASE is refused (EACCES)
        std::os::unix::fs::chown(&file, Some(4321), Some(4321)).map_err(io(&file))?;
        let tree = rustix::fs::open(dir.path(), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open", dir.path())(e.into()))?;
        let hashed = std::thread::spawn(move || -> std::io::Result<(bool, Option<Seen>)> {
            drop_cap_lease()?;
            let stop = AtomicBool::new(false);
            let mut buf = vec![0u8; 4096];
            let leased = hash_leased(&tree, c"f", &mut buf, &stop).is_err();
            Ok((leased, hash_when_quiet(&tree, c"f", &mut buf)))
        })
        .join()
        .map_err(|_| Error::io("hash", &file)(std::io::Error::other("thread panicked")))?
        .map_err(Error::io("hash", &file))?;
        assert!(hashed.0, "a lease was taken without CAP_LEASE on another owner's file");
        let seen = hashed.1.expect("hashed without a lease");
        assert_eq!(seen.hash, sha256_hex(b"committed content"));
        assert_eq!(seen.size, 17);
        Ok(())
    }

    /// A time without nanoseconds may come from a file system that stamps whole seconds, where a
    /// change within the same second keeps the ctime: quiet only after more than a second.
    #[test]
    fn whole_second_times_are_quiet_only_after_more_than_a_second() {
        assert!(!quiet((100, 5), (100, 40_000_005)));
        assert!(quiet((100, 5), (100, 60_000_005)));
        assert!(!quiet((100, 0), (100, 60_000_000)));
        assert!(!quiet((100, 0), (101, 900_000_000)));
        assert!(quiet((100, 0), (102, 200_000_000)));
    }

    #[test]
    fn big_new_content_is_hashed_with_its_pool_link_and_only_while_unchanged() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let store = Store::open(&dir.path().join("store"))?;
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        let big = |n: u64, fill: u8| vec![fill; (DEFER_MIN + n) as usize];
        let write = write_dated;
        let meta = |p: PathBuf| fs::symlink_metadata(&p).map_err(io(&p));
        let index = Arc::new(ContentIndex::new());
        let data_dir = dir.path().join("data");
        let data = DataLayer { dir: &data_dir, index: &index };
        let (old, tree) = (dir.path().join("old"), dir.path().join("tree"));
        fs::create_dir_all(&old).map_err(io(&old))?;
        fs::create_dir_all(tree.join("sub")).map_err(io(&tree))?;
        write(&old, "pooled", &big(1, b'p'))?;
        store.adopt_tree(&old)?;
        write(&tree, "copy", &big(1, b'p'))?; // pooled already
        write(&tree, "pooled-size", &big(1, b'q'))?; // new, but pooled content has its size
        write(&tree, "twin", &big(3, b'a'))?; // new, and the tree has its size twice
        write(&tree, "sub/twin", &big(3, b'b'))?;
        write(&tree, "new", &big(2, b'n'))?; // new for sure

        let (stats, later) = store.adopt_tree_deferring(&tree, Some(&data), None)?;
        assert_eq!((stats.files, stats.shared), (5, 1), "{stats:?}");
        assert_eq!(meta(tree.join("copy"))?.ino(), meta(old.join("pooled"))?.ino());
        assert_eq!((later.len(), later.unhashed()), (4, 1), "{later:?}");
        assert_eq!(meta(tree.join("new"))?.nlink(), 1);
        assert_eq!(store.link_deferred(later)?, 4);
        for (name, content) in [("new", big(2, b'n')), ("twin", big(3, b'a')), ("pooled-size", big(1, b'q'))] {
            assert_eq!(meta(tree.join(name))?.nlink(), 2, "{name}");
            assert_eq!(pooled_hash(&dir.path().join("store"), &tree.join(name))?, Some(sha256_hex(&content)));
        }

        // its size is known now: a file of that size is hashed by the adoption itself
        let (t2, t3) = (dir.path().join("t2"), dir.path().join("t3"));
        fs::create_dir_all(&t2).map_err(io(&t2))?;
        fs::create_dir_all(&t3).map_err(io(&t3))?;
        write(&t2, "same-size", &big(2, b'm'))?;
        let (_, later) = store.adopt_tree_deferring(&t2, Some(&data), None)?;
        assert_eq!((later.len(), later.unhashed()), (1, 0));
        store.link_deferred(later)?;
        // a file changed between the adoption and its link stays out of the pool
        write(&t3, "changed", &big(4, b'c'))?;
        let (_, later) = store.adopt_tree_deferring(&t3, Some(&data), None)?;
        assert_eq!(later.unhashed(), 1);
        write(&t3, "changed", &big(4, b'd'))?;
        assert_eq!(store.link_deferred(later)?, 0);
        assert_eq!(meta(t3.join("changed"))?.nlink(), 1);
        assert_eq!(pooled_hash(&dir.path().join("store"), &t3.join("changed"))?, None);
        Ok(())
    }

    /// Writes `content` to `name` in `dir`, with one fixed mtime (the pool key holds it).
    fn write_dated(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let p = dir.join(name);
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        fs::write(&p, content).map_err(io(&p))?;
        fs::File::options().write(true).open(&p).and_then(|f| f.set_modified(when)).map_err(io(&p))
    }

    /// The pool key's content hash of `path` after adoption (the pool file it is linked to).
    fn pooled_hash(store_dir: &Path, path: &Path) -> Result<Option<String>> {
        let io = |p: &Path| Error::io("stat", p.to_path_buf());
        let ino = fs::symlink_metadata(path).map_err(io(path))?.ino();
        let pool = store_dir.join("pool");
        for entry in fs::read_dir(&pool).map_err(io(&pool))? {
            let entry = entry.map_err(io(&pool))?;
            if entry.metadata().map_err(io(&pool))?.ino() == ino {
                return Ok(entry.file_name().to_str().map(|k| k[..64].to_string()));
            }
        }
        Ok(None)
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(bytes);
        h.finish().hex().to_string()
    }

    /// Reading a file or directory to hash it leaves its access time as the image gave it (an
    /// old one, which `relatime` would otherwise move to now at the first read).
    #[test]
    fn hashing_early_and_adopting_leave_access_times_alone() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let store = Store::open(&dir.path().join("store"))?;
        let tree = dir.path().join("tree");
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        fs::create_dir_all(tree.join("sub")).map_err(io(&tree))?;
        let control = dir.path().join("control");
        let paths = ["early", "sub/late", "sub", ""].map(|p| tree.join(p));
        fs::write(&paths[0], "hashed early").map_err(io(&tree))?;
        fs::write(&paths[1], "hashed by the adoption").map_err(io(&tree))?;
        fs::write(&control, "read plainly").map_err(io(&control))?;
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        for p in paths.iter().chain([&control]) {
            fs::File::open(p)
                .and_then(|f| f.set_times(fs::FileTimes::new().set_accessed(when).set_modified(when)))
                .map_err(io(p))?;
        }
        let atime = |p: &Path| fs::symlink_metadata(p).map(|m| m.atime()).map_err(io(p));
        fs::read(&control).map_err(io(&control))?;
        if atime(&control)? == 1_600_000_000 {
            eprintln!("skipped: this file system does not update access times on a read (noatime)");
            return Ok(());
        }
        // held open for writing: no lease, so the pass leaves it to the adoption
        let writer = fs::OpenOptions::new().append(true).open(&paths[1]).map_err(io(&tree))?;
        std::thread::sleep(QUIET * 2);
        let stop = AtomicBool::new(false);
        let mut early = Prehashed::new();
        let pass = early.pass(&tree, &stop).map_err(io(&tree))?;
        assert_eq!((pass.hashed, pass.pending), (1, 1), "{pass:?}");
        drop(writer);
        let stats = store.adopt_tree_with(&tree, None, Some(&early))?;
        assert_eq!(stats.files, 2, "{stats:?}");
        for p in &paths {
            assert_eq!(atime(p)?, 1_600_000_000, "{} was read with its access time updated", p.display());
        }
        Ok(())
    }

    #[test]
    fn early_hashes_are_taken_only_from_quiet_closed_files_and_only_while_unchanged() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp")(e))?;
        let store = Store::open(&dir.path().join("store"))?;
        let tree = dir.path().join("tree");
        let io = |p: &Path| Error::io("prepare", p.to_path_buf());
        fs::create_dir_all(tree.join("sub")).map_err(io(&tree))?;
        for name in ["kept", "sub/rewritten", "sub/replaced"] {
            fs::write(tree.join(name), format!("first {name}")).map_err(io(&tree))?;
        }
        let stop = AtomicBool::new(false);
        let mut early = Prehashed::new();
        // just written: too recent for an early hash
        let first = early.pass(&tree, &stop).map_err(io(&tree))?;
        assert_eq!((first.hashed, first.pending), (0, 3), "{first:?}");
        std::thread::sleep(QUIET * 2);
        // a file held open for writing takes no lease: left for later
        let writer = fs::OpenOptions::new().append(true).open(tree.join("sub/rewritten")).map_err(io(&tree))?;
        let second = early.pass(&tree, &stop).map_err(io(&tree))?;
        assert_eq!((second.hashed, second.pending), (2, 1), "{second:?}");
        drop(writer);
        std::thread::sleep(QUIET * 2);
        let third = early.pass(&tree, &stop).map_err(io(&tree))?;
        assert_eq!((third.hashed, third.pending, early.len()), (1, 0, 3), "{third:?}");
        // changed after their early hash: in place (same size), and by a new file of that name
        fs::write(tree.join("sub/rewritten"), "FIRST sub/rewritten").map_err(io(&tree))?;
        fs::remove_file(tree.join("sub/replaced")).map_err(io(&tree))?;
        fs::write(tree.join("sub/replaced"), "second").map_err(io(&tree))?;
        let stats = store.adopt_tree_with(&tree, None, Some(&early))?;
        assert_eq!(stats.files, 3, "{stats:?}");
        let store_dir = dir.path().join("store");
        for (name, content) in
            [("kept", "first kept"), ("sub/rewritten", "FIRST sub/rewritten"), ("sub/replaced", "second")]
        {
            assert_eq!(
                pooled_hash(&store_dir, &tree.join(name))?,
                Some(sha256_hex(content.as_bytes())),
                "{name} pooled under a hash of other content"
            );
        }
        // a stopped pass hashes nothing more
        fs::write(tree.join("late"), "late").map_err(io(&tree))?;
        std::thread::sleep(QUIET * 2);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(early.pass(&tree, &stop).map_err(io(&tree))?.hashed, 0);
        Ok(())
    }
}
