//! Unpacking one layer tar into an empty snapshot directory, in overlayfs form.
//!
//! Every entry is created relative to a directory descriptor whose path was resolved component by
//! component with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: an absolute name, a `..`, a symlink
//! among the parents or a hardlink whose target lies outside is rejected with [`Error::Escape`] before
//! anything is written for it. Whiteouts become what overlayfs reads: `.wh.<name>` a character device 0:0,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. Owners, modes (after chown, which
//! clears set-id bits), xattrs, mtimes (of directories at the end, since their children change them),
//! hardlinks and device nodes are kept.
//!
//! With a content pool, a regular file without xattrs is hardlinked to the pool's inode for its
//! (sha256, mode, uid, gid, mtime), so identical files of different layers and images share one inode.
//! That is safe under overlayfs because lower layers are never written (a write copies the file up).
//! mtime is part of the key so a deduplicated tree is byte-for-byte and stat-for-stat the tree of the tar.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, chmodat, chownat, fchmod, fchown, fsetxattr,
    futimens, linkat, makedev, mkdirat, mknodat, openat2, symlinkat, unlinkat, utimensat,
};
use rustix::fs::{Gid, Uid, XattrFlags};
use rustix::io::Errno;

use crate::split::{Recorder, Recording};
use crate::{Algorithm, Digest, Error, Hasher, HashingReader, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// How to unpack.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// The content pool directory for file dedup; `None` unpacks plain files.
    pub pool: Option<PathBuf>,
    /// The snapshots below this layer (top-most first). With them, whiteouts of names that nothing below
    /// shows are dropped, since overlayfs would list them as broken entries; without, all are kept.
    pub lowers: Option<Vec<PathBuf>>,
    /// The algorithm of the diff ID computed (the config's: sha512 diff IDs are valid).
    pub diff_id_algorithm: Algorithm,
    /// Bounds on what one layer may hold.
    pub limits: LayerLimits,
    /// Where to record the layer's tar split (what rebuilds its tar from the unpacked tree, see
    /// [`crate::Store::export`]); `None` records none.
    pub split: Option<PathBuf>,
}

/// Bounds on one layer, so that a decompression bomb stops with an error instead of filling the
/// disk: its uncompressed tar stream and its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// The most bytes of uncompressed tar.
    pub max_bytes: u64,
    /// The most tar entries.
    pub max_entries: u64,
}

impl Default for LayerLimits {
    /// 64 GiB and 4 million entries: far above real layers (a full Debian is 0.2 GiB and 20 000
    /// entries; the largest CUDA layers are near 10 GiB), far below a bomb's expansion.
    fn default() -> Self {
        LayerLimits { max_bytes: 64 << 30, max_entries: 4_000_000 }
    }
}

/// Counts what passes and fails the read once more than `max` bytes did, marking `tripped`.
struct Bounded<'a, R> {
    inner: R,
    read: u64,
    max: u64,
    tripped: &'a std::cell::Cell<bool>,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            self.tripped.set(true);
            return Err(io::Error::other("layer size limit"));
        }
        Ok(n)
    }
}

/// What unpacking one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// SHA-256 of the uncompressed tar (the layer's diff ID).
    pub diff_id: Option<Digest>,
    /// Entries in the tar.
    pub entries: u64,
    /// Bytes of regular file content.
    pub file_bytes: u64,
    /// Regular files that became links to an inode already in the pool.
    pub pooled_files: u64,
    /// Their bytes (what file dedup saved for this layer).
    pub pooled_bytes: u64,
    /// An exact tar split was recorded at [`UnpackOptions::split`] (none is left when the layer
    /// replaced an entry of its own).
    pub split: bool,
}

/// Unpacks the uncompressed layer tar `tar` into the empty directory `root`. `layer` names the blob in errors.
/// On error, `root` holds a partial tree that the caller must remove.
pub fn unpack_layer(tar: impl Read, root: &Path, layer: &Digest, opts: &UnpackOptions) -> Result<UnpackStats> {
    // The root and the pool are the caller's trusted paths; only what lies beneath comes from the tar.
    let open_trusted = |p: &Path| {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open", p)(e.into()))
    };
    let root_fd = open_trusted(root)?;
    let pool = opts.pool.as_deref().map(open_trusted).transpose()?;
    let recorder = RefCell::new(opts.split.as_deref().map(Recorder::create).transpose()?);
    let mut u = Unpacker {
        root,
        root_fd,
        pool,
        layer,
        lowers: opts.lowers.as_deref(),
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
        whiteouts: Vec::new(),
        split: &recorder,
    };
    let tripped = std::cell::Cell::new(false);
    let limits = opts.limits;
    let too_many = |what, limit| Error::LayerLimit {
        layer: layer.clone(),
        what,
        limit,
        option: "--max-layer-bytes/--max-layer-entries",
    };
    let bounded = Bounded { inner: tar, read: 0, max: limits.max_bytes, tripped: &tripped };
    // The split sees what the diff ID hashes, trailing bytes included.
    let recording = Recording { inner: bounded, recorder: &recorder };
    let mut reader = HashingReader::new(recording, opts.diff_id_algorithm);
    let read = (|| {
        {
            let mut archive = tar::Archive::new(&mut reader);
            let entries = archive.entries().map_err(|e| u.bad(None, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| u.bad(None, e))?;
                u.stats.entries += 1;
                if u.stats.entries > limits.max_entries {
                    return Err(too_many("entries", limits.max_entries));
                }
                u.entry(entry)?;
            }
        }
        u.finish_whiteouts()?;
        u.finish_dirs()?;
        reader.finish().map_err(|e| u.bad(None, e))
    })();
    // an error the size bound caused, however the tar reader reported it
    if tripped.get() {
        return Err(too_many("bytes", limits.max_bytes));
    }
    let (diff_id, _) = read?;
    let mut stats = u.stats;
    stats.diff_id = Some(diff_id);
    stats.split = recorder.take().map(Recorder::finish).transpose()?.unwrap_or(false);
    Ok(stats)
}

struct Unpacker<'a> {
    root: &'a Path,
    root_fd: OwnedFd,
    pool: Option<OwnedFd>,
    layer: &'a Digest,
    stats: UnpackStats,
    lowers: Option<&'a [PathBuf]>,
    /// Directories whose mtime is set once all their children exist.
    dir_times: Vec<(Vec<Vec<u8>>, u64)>,
    /// Whiteouts, made once the whole layer is read (so an opaque marker later in the tar is known).
    whiteouts: Vec<(Vec<Vec<u8>>, String)>,
    /// The tar split being recorded, if any.
    split: &'a RefCell<Option<Recorder>>,
}

/// A tar entry name split into checked components.
struct EntryPath {
    parents: Vec<Vec<u8>>,
    name: Option<Vec<u8>>,
}

fn open_dir_beneath(dir: impl AsFd, path: impl AsRef<Path>, path_only: bool) -> rustix::io::Result<OwnedFd> {
    let flags = if path_only { OFlags::PATH } else { OFlags::RDONLY };
    openat2(
        dir,
        path.as_ref(),
        flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

impl Unpacker<'_> {
    fn bad(&self, entry: Option<&str>, e: io::Error) -> Error {
        Error::BadArchive { layer: self.layer.clone(), entry: entry.map(str::to_string), reason: e.to_string() }
    }

    fn escape(&self, entry: &str, reason: &'static str) -> Error {
        Error::Escape { layer: self.layer.clone(), entry: entry.to_string(), reason }
    }

    fn io(&self, op: &'static str, entry: &str, e: impl Into<io::Error>) -> Error {
        Error::Io { op, path: self.root.join(entry.trim_start_matches('/')), source: e.into() }
    }

    fn split(&self, raw: &[u8], shown: &str) -> Result<EntryPath> {
        if raw.first() == Some(&b'/') {
            return Err(self.escape(shown, "absolute path"));
        }
        let mut parts = Vec::new();
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(self.escape(shown, "`..` component")),
                c => parts.push(c.to_vec()),
            }
        }
        let name = parts.pop();
        Ok(EntryPath { parents: parts, name })
    }

    /// Opens the parent directory of an entry, creating missing directories, refusing symlinks.
    fn parent(&self, parents: &[Vec<u8>], shown: &str) -> Result<OwnedFd> {
        let mut dir = open_dir_beneath(&self.root_fd, ".", false).map_err(|e| self.io("open", "", e))?;
        for comp in parents {
            let name = OsStr::from_bytes(comp);
            dir = match open_dir_beneath(&dir, name, false) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    mkdirat(&dir, name, Mode::from_raw_mode(0o755)).map_err(|e| self.io("mkdir", shown, e))?;
                    open_dir_beneath(&dir, name, false).map_err(|e| self.io("open", shown, e))?
                }
                Err(Errno::LOOP) | Err(Errno::XDEV) => {
                    return Err(self.escape(shown, "symlink among its parent directories"));
                }
                Err(Errno::NOTDIR) => {
                    let is_link = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                    let reason =
                        if is_link { "symlink among its parent directories" } else { "a parent is not a directory" };
                    return Err(self.escape(shown, reason));
                }
                Err(e) => return Err(self.io("open", shown, e)),
            };
        }
        Ok(dir)
    }

    /// Removes whatever an earlier entry of this layer put at `name` (tar's last-entry-wins rule).
    fn clear(&self, dir: &OwnedFd, name: &OsStr, parents: &[Vec<u8>], shown: &str) -> Result<()> {
        let result = unlinkat(dir, name, AtFlags::empty());
        if result != Err(Errno::NOENT) {
            // Something unpacked earlier goes (or fails to): a split may name it.
            if let Some(r) = self.split.borrow_mut().as_mut() {
                r.overwritten();
            }
        }
        match result {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                // A directory: its path has no symlinks (every parent was opened with NO_SYMLINKS).
                let mut p = self.root.to_path_buf();
                for c in parents {
                    p.push(OsStr::from_bytes(c));
                }
                p.push(name);
                std::fs::remove_dir_all(&p).map_err(|e| self.io("remove", shown, e))
            }
            Err(e) => Err(self.io("remove", shown, e)),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = self.split(&raw, &shown)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(|e| self.bad(Some(&shown), e))? & 0o7777;
        // A PAX record replaces a header field (which may then be empty or garbage).
        let (mut uid, mut gid, mut mtime) = (header.uid(), header.gid(), header.mtime());
        // The content's size, a PAX `size` record's when there is one (Go's tar, so Docker and
        // buildkit, write files of 8 GiB or more that way, with a raw header size of 0).
        let size = entry.size();
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.bad(Some(&shown), e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.bad(Some(&shown), e))?;
                let number = |what: &str| -> Result<u64> {
                    let v = ext
                        .value()
                        .map_err(|e| self.bad(Some(&shown), io::Error::new(io::ErrorKind::InvalidData, e)))?;
                    // an mtime may have a fraction: whole seconds are what is kept
                    v.split('.').next().unwrap_or("").parse().map_err(|_| {
                        self.bad(Some(&shown), io::Error::new(io::ErrorKind::InvalidData, format!("PAX {what} {v:?}")))
                    })
                };
                match ext.key_bytes() {
                    b"uid" => uid = Ok(number("uid")?),
                    b"gid" => gid = Ok(number("gid")?),
                    b"mtime" => mtime = Ok(number("mtime")?),
                    key => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        let uid = uid.map_err(|e| self.bad(Some(&shown), e))?;
        let gid = gid.map_err(|e| self.bad(Some(&shown), e))?;
        let mtime = mtime.map_err(|e| self.bad(Some(&shown), e))?;
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| {
                self.bad(Some(&shown), io::Error::new(io::ErrorKind::InvalidData, format!("{what} {v} out of range")))
            })
        };
        let owner = (Uid::from_raw(id(uid, "uid")?), Gid::from_raw(id(gid, "gid")?));
        let link = entry.link_name_bytes().map(|l| l.into_owned());

        let Some(name) = path.name.clone() else {
            // The root itself (`./`): keep its metadata.
            if kind.is_dir() {
                chownat(&self.root_fd, ".", Some(owner.0), Some(owner.1), AtFlags::empty())
                    .map_err(|e| self.io("chown", &shown, e))?;
                chmodat(&self.root_fd, ".", Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|e| self.io("chmod", &shown, e))?;
                self.dir_times.push((Vec::new(), mtime));
            }
            return Ok(());
        };
        let dir = self.parent(&path.parents, &shown)?;
        let os_name = OsStr::from_bytes(&name);

        if name == OPAQUE {
            fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                .map_err(|e| self.io("set opaque xattr on", &shown, e))?;
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.escape(&shown, "whiteout of an invalid name"));
            }
            // A whiteout hides what the layers below hold, never an entry of its own layer (the
            // image spec's rule): one made earlier in this layer stays, and finish_whiteouts
            // makes no whiteout where a name exists.
            let mut full = path.parents.clone();
            full.push(hidden.to_vec());
            self.whiteouts.push((full, shown));
            return Ok(());
        }

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match open_dir_beneath(&dir, os_name, true) {
                    Ok(_) => {}
                    Err(Errno::NOENT) => {}
                    Err(Errno::LOOP) | Err(Errno::NOTDIR) => self.clear(&dir, os_name, &path.parents, &shown)?,
                    Err(e) => return Err(self.io("open", &shown, e)),
                }
                match mkdirat(&dir, os_name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(self.io("mkdir", &shown, e)),
                }
                let fd = open_dir_beneath(&dir, os_name, false).map_err(|e| self.io("open", &shown, e))?;
                fchown(&fd, Some(owner.0), Some(owner.1)).map_err(|e| self.io("chown", &shown, e))?;
                fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| self.io("chmod", &shown, e))?;
                self.set_xattrs(&fd, &xattrs, &shown)?;
                let mut full = path.parents.clone();
                full.push(name);
                self.dir_times.push((full, mtime));
            }
            T::Regular | T::Continuous => {
                self.clear(&dir, os_name, &path.parents, &shown)?;
                let fd = openat2(
                    &dir,
                    os_name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(|e| self.io("create", &shown, e))?;
                let mut file = File::from(fd);
                if let Some(r) = self.split.borrow_mut().as_mut() {
                    let mut rel = path.parents.join(&b'/');
                    if !rel.is_empty() {
                        rel.push(b'/');
                    }
                    rel.extend_from_slice(&name);
                    r.file(&rel, size);
                }
                let mut hasher = Hasher::new(Algorithm::Sha256); // the pool's names
                let written = copy_hashing(&mut entry, &mut file, &mut hasher).map_err(|e| match e {
                    CopyError::Read(e) => self.bad(Some(&shown), e),
                    CopyError::Write(e) => self.io("write", &shown, e),
                })?;
                let (size, expected) = (written, size);
                if size != expected {
                    return Err(self.bad(
                        Some(&shown),
                        io::Error::new(io::ErrorKind::UnexpectedEof, format!("{size} of {expected} bytes")),
                    ));
                }
                fchown(&file, Some(owner.0), Some(owner.1)).map_err(|e| self.io("chown", &shown, e))?;
                fchmod(&file, Mode::from_raw_mode(mode)).map_err(|e| self.io("chmod", &shown, e))?;
                self.set_xattrs(&file, &xattrs, &shown)?;
                futimens(&file, &times(mtime)).map_err(|e| self.io("set mtime of", &shown, e))?;
                drop(file);
                self.stats.file_bytes += size;
                if xattrs.is_empty() {
                    let key = crate::adopt::pool_key(hasher.finish().hex(), mode, uid, gid, mtime, 0);
                    if self.pool_link(&dir, os_name, &key, &shown)? {
                        self.stats.pooled_files += 1;
                        self.stats.pooled_bytes += size;
                    }
                }
            }
            T::Symlink => {
                let target = link.ok_or_else(|| self.bad(Some(&shown), io::Error::other("symlink without target")))?;
                self.clear(&dir, os_name, &path.parents, &shown)?;
                symlinkat(OsStr::from_bytes(&target), &dir, os_name).map_err(|e| self.io("symlink", &shown, e))?;
                chownat(&dir, os_name, Some(owner.0), Some(owner.1), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("chown", &shown, e))?;
                utimensat(&dir, os_name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("set mtime of", &shown, e))?;
            }
            T::Link => {
                let target = link.ok_or_else(|| self.bad(Some(&shown), io::Error::other("hardlink without target")))?;
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let tpath =
                    self.split(&target, &shown).map_err(|_| self.escape(&shown, "hardlink target outside the root"))?;
                let Some(tname) = tpath.name else {
                    return Err(self.escape(&shown, "hardlink to the root directory"));
                };
                let tdir = match self.parent_existing(&tpath.parents) {
                    Ok(d) => d,
                    Err(Errno::LOOP) | Err(Errno::XDEV) | Err(Errno::NOTDIR) => {
                        return Err(self.escape(&shown, "hardlink target through a symlink or non-directory"));
                    }
                    Err(e) => return Err(self.io("open hardlink target", &target_shown, e)),
                };
                self.clear(&dir, os_name, &path.parents, &shown)?;
                linkat(&tdir, OsStr::from_bytes(&tname), &dir, os_name, AtFlags::empty()).map_err(|e| {
                    if e == Errno::NOENT {
                        Error::BadArchive {
                            layer: self.layer.clone(),
                            entry: Some(shown.clone()),
                            reason: format!("hardlink target {target_shown:?} is not in this layer"),
                        }
                    } else {
                        self.io("link", &shown, e)
                    }
                })?;
            }
            T::Char | T::Block | T::Fifo => {
                let (major, minor) = if kind == T::Fifo {
                    (0, 0)
                } else {
                    let major = header.device_major().map_err(|e| self.bad(Some(&shown), e))?.unwrap_or(0);
                    (major, header.device_minor().map_err(|e| self.bad(Some(&shown), e))?.unwrap_or(0))
                };
                let ft = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                self.clear(&dir, os_name, &path.parents, &shown)?;
                mknodat(&dir, os_name, ft, Mode::from_raw_mode(0o600), makedev(major, minor))
                    .map_err(|e| self.io("mknod", &shown, e))?;
                chownat(&dir, os_name, Some(owner.0), Some(owner.1), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("chown", &shown, e))?;
                chmodat(&dir, os_name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|e| self.io("chmod", &shown, e))?;
                utimensat(&dir, os_name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("set mtime of", &shown, e))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                return Err(Error::UnsupportedEntry {
                    layer: self.layer.clone(),
                    entry: shown,
                    kind: format!("{other:?}"),
                });
            }
        }
        Ok(())
    }

    fn parent_existing(&self, parents: &[Vec<u8>]) -> rustix::io::Result<OwnedFd> {
        let mut dir = open_dir_beneath(&self.root_fd, ".", true)?;
        for comp in parents {
            dir = open_dir_beneath(&dir, OsStr::from_bytes(comp), true)?;
        }
        Ok(dir)
    }

    fn set_xattrs(&self, fd: impl AsFd, xattrs: &[(Vec<u8>, Vec<u8>)], shown: &str) -> Result<()> {
        for (name, value) in xattrs {
            fsetxattr(&fd, OsStr::from_bytes(name), value, XattrFlags::empty())
                .map_err(|e| self.io("set xattr on", shown, e))?;
        }
        Ok(())
    }

    /// Replaces the file just written with the pool's inode of the same key, or adds it to the pool.
    /// Returns whether the file now shares an inode that was already pooled.
    fn pool_link(&self, dir: &OwnedFd, name: &OsStr, key: &str, shown: &str) -> Result<bool> {
        let Some(pool) = &self.pool else { return Ok(false) };
        crate::adopt::link_pooled(pool, dir, name, key).map_err(|e| self.io("link with pool", shown, e))
    }

    fn finish_whiteouts(&mut self) -> Result<()> {
        for (full, shown) in std::mem::take(&mut self.whiteouts) {
            let Some((name, parents)) = full.split_last() else { continue };
            if let Some(lowers) = self.lowers {
                let mut dir = self.root.to_path_buf();
                let mut hidden_here = false;
                for c in parents {
                    dir.push(OsStr::from_bytes(c));
                    hidden_here |= crate::lower::is_opaque(&dir);
                }
                if hidden_here || !crate::lower::visible_below(lowers, &full) {
                    continue;
                }
            }
            let dir = self.parent(parents, &shown)?;
            let name = OsStr::from_bytes(name);
            // A later entry of the layer that wrote the name wins over the whiteout.
            match mknodat(&dir, name, FileType::CharacterDevice, Mode::empty(), makedev(0, 0)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(self.io("mknod whiteout", &shown, e)),
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        // Deepest first, so setting a child's mtime does not disturb its parent's afterwards.
        let mut dirs = std::mem::take(&mut self.dir_times);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (parts, mtime) in dirs {
            let shown = String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
            let mut fd = Some(open_dir_beneath(&self.root_fd, ".", false).map_err(|e| self.io("open", &shown, e))?);
            for comp in &parts {
                // A directory replaced by a later entry of the layer has no mtime to set.
                fd = fd.and_then(|d| open_dir_beneath(&d, OsStr::from_bytes(comp), false).ok());
            }
            if let Some(fd) = fd {
                futimens(&fd, &times(mtime)).map_err(|e| self.io("set mtime of", &shown, e))?;
            }
        }
        Ok(())
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_hashing(from: &mut impl Read, to: &mut File, hasher: &mut Hasher) -> Result<u64, CopyError> {
    use std::io::Write;
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}
