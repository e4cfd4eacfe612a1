//! A verified handle on procfs, for every write strata makes there: sysctls, `oom_score_adj`,
//! id maps, LSM attributes (the CVE-2025-52881 class). A container's `/proc` may be anything
//! its config or image put there — another file system, a bind mount over
//! `/proc/sys/kernel/core_pattern`, a symlink — so strata never writes through a path in it.
//!
//! The handle is a private procfs instance (`fsopen("proc")` + `fsmount`, detached, with no
//! mounts over it), or where the kernel refuses one, a detached copy of `/proc`
//! (`open_tree(OPEN_TREE_CLONE)`), or as a last resort `/proc` itself; its root is checked to be
//! procfs. Each file is opened below it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` — no symlink, no other mount — and checked
//! again to be on procfs before a byte is written.

use crate::error::{Error, Result};
use crate::sys;
use nix::errno::Errno;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const PROC_ROOT_INO: u64 = 1;
use crate::sys::{RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_NO_XDEV};

/// A verified procfs root.
#[derive(Debug)]
pub struct ProcFs {
    root: OwnedFd,
}

fn is_procfs(fd: &impl AsRawFd) -> bool {
    sys::fs_magic(fd) == Ok(PROC_SUPER_MAGIC)
}

/// A new, detached procfs instance (mounted nosuid, nodev, noexec).
fn private_instance() -> nix::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    let name = c"proc";
    // SAFETY: a valid C string; fsopen returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let attrs = sys::mount_attr::NOSUID | sys::mount_attr::NODEV | sys::mount_attr::NOEXEC;
    // SAFETY: fsmount takes a configured context descriptor and integer flags.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if m < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

impl ProcFs {
    /// Opens the best handle the kernel allows and verifies its root.
    pub fn open() -> Result<ProcFs> {
        let root = private_instance()
            .or_else(|_| sys::open_tree(libc::AT_FDCWD, Path::new("/proc"), 0x1 | libc::O_CLOEXEC as u32))
            .or_else(|_| sys::openat2(libc::AT_FDCWD, Path::new("/proc"), libc::O_PATH | libc::O_DIRECTORY, 0, 0))
            .map_err(|e| Error::sys("opening procfs", e))?;
        let st = nix::sys::stat::fstat(&root).map_err(|e| Error::sys("stat procfs", e))?;
        if !is_procfs(&root) || st.st_ino != PROC_ROOT_INO {
            return Err(Error::Invalid("unsafe procfs: its root is not the root of a proc file system".into()));
        }
        Ok(ProcFs { root })
    }

    /// Opens `rel` (below the procfs root) with `flags`, refusing symlinks, magic links and
    /// other mounts on the way, and a file that is not on procfs.
    pub fn open_file(&self, rel: &Path, flags: i32) -> Result<std::fs::File> {
        let resolve = RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
        let fd = sys::openat2(self.root.as_raw_fd(), rel, flags | libc::O_NOFOLLOW, 0, resolve)
            .map_err(|e| Error::sys(format!("opening /proc/{} safely", rel.display()), e))?;
        if !is_procfs(&fd) {
            return Err(Error::Invalid(format!("unsafe procfs: /proc/{} is not on procfs", rel.display())));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Reopens an open descriptor of this process with new `flags`, through the magic link in
    /// this procfs's `<pid>/fd` (whose directory is opened with the checks above): the way to
    /// turn an `O_PATH` descriptor into a usable one without a path the container controls.
    pub fn reopen(&self, fd: &impl AsRawFd, flags: i32) -> Result<std::fs::File> {
        let dir =
            self.open_file(Path::new(&format!("{}/fd", nix::unistd::getpid())), libc::O_PATH | libc::O_DIRECTORY)?;
        let name = fd.as_raw_fd().to_string();
        let f = nix::fcntl::openat(
            &dir,
            name.as_str(),
            nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC),
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("reopening descriptor {name}"), e))?;
        Ok(std::fs::File::from(f))
    }

    /// Writes `data` to `rel` in one write, as procfs files want.
    pub fn write(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let mut f = self.open_file(rel, libc::O_WRONLY | libc::O_CLOEXEC)?;
        f.write_all(data).map_err(|e| Error::io(format!("writing /proc/{}", rel.display()), e))
    }

    /// Reads `rel` to a string.
    pub fn read(&self, rel: &Path) -> Result<String> {
        let mut f = self.open_file(rel, libc::O_RDONLY | libc::O_CLOEXEC)?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s)
            .map_err(|e| Error::io(format!("reading /proc/{}", rel.display()), e))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_a_verified_handle_and_refuses_symlinks() {
        let p = ProcFs::open().unwrap();
        let cap = p.read(Path::new("sys/kernel/cap_last_cap")).unwrap();
        assert!(cap.trim().parse::<u8>().is_ok(), "{cap}");
        // /proc/self is a symlink: refused.
        assert!(p.read(Path::new("self/status")).is_err());
        // thread-self too; a pid path is fine.
        assert!(p.read(Path::new(&format!("{}/status", std::process::id()))).unwrap().contains("Pid:"));
        assert!(p.read(Path::new("../etc/passwd")).is_err());
    }
}
