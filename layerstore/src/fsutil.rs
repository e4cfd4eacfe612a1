//! Small file-system helpers: unique temp names, durable atomic writes, file locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use std::os::fd::OwnedFd;

use rustix::fs::{FlockOperation, OFlags, flock};

use crate::{Error, Result};

/// A name no other process or thread of this machine will pick at the same time.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}{}-{n}-{nanos}", std::process::id())
}

/// Opens for reading (close-on-exec, with `flags`) through `open`, without updating access
/// times where this process may ask so (it owns the file or has `CAP_FOWNER`): reading a file or
/// directory an image gave would otherwise write its inode, and change its access time.
pub(crate) fn read_open(
    open: impl Fn(OFlags) -> rustix::io::Result<OwnedFd>,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::RDONLY | OFlags::CLOEXEC;
    match open(flags | OFlags::NOATIME) {
        Err(rustix::io::Errno::PERM) => open(flags),
        opened => opened,
    }
}

/// Makes a directory's entries durable (after a rename into it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync", dir))
}

/// Writes `data` to `path` through a temp file, fsync and rename, so readers see the old or the new content.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(unique_name(".tmp-"));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp)(e));
    }
    fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    sync_dir(dir)
}

/// Creates `path` and its parents.
pub(crate) fn mkdir_p(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(Error::io("create directory", path))
}

/// Removes a file or a tree; a missing one is not an error.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(Error::io("remove", path))
}

/// A held `flock(2)` lock, released when dropped (the kernel releases it when the file closes).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
    pub(crate) path: PathBuf,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing), waiting for other holders.
    pub(crate) fn acquire(path: &Path, exclusive: bool) -> Result<FileLock> {
        let file =
            match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path) {
                // On a read-only mount the lock file is taken as it is (flock needs no write access);
                // what then writes to the store fails with the mount's error.
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                    OpenOptions::new().read(true).open(path).map_err(|_| e)
                }
                other => other,
            }
            .map_err(Error::io("open lock", path))?;
        let op = if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared };
        flock(&file, op).map_err(|e| Error::io("flock", path)(e.into()))?;
        Ok(FileLock { _file: file, path: path.to_path_buf() })
    }
}
