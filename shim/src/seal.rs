//! Protection of the runtime binary from the container (the CVE-2019-5736 class).
//!
//! Every process the runtime puts into a container is a fork of the runtime, so its
//! `/proc/<pid>/exe` is the runtime's binary until it executes the user's program. A process
//! in the container could open that link and, once the runtime exits, write through it to
//! replace the host's binary. To rule this out, commands that make container processes first
//! re-execute the runtime through a path no one can write:
//!
//! 1. If the binary already lives on a read-only mount, nothing is needed.
//! 2. Otherwise the runtime makes a detached bind mount of its binary (`open_tree` with
//!    `OPEN_TREE_CLONE`), makes it read-only (`mount_setattr`), opens the file through it and
//!    executes that descriptor: the new `/proc/<pid>/exe` refers to the file through a
//!    detached read-only mount, so opening it for writing fails with EROFS. This costs three
//!    system calls instead of a copy, and touches no mount namespace. On kernels without the
//!    new mount API (before 5.12) the same is done with `mount(2)` in a private mount
//!    namespace, entered for the moment it takes (its copy of the mount table costs more).
//! 3. Where mounting is not allowed, it executes a sealed memfd copy (F_SEAL_WRITE,
//!    F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_SEAL), which no one can write either.

use crate::error::{Error, Result, SysContext};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const MEMFD_NAME: &str = "strata-sealed";
/// Set in the environment of the re-executed runtime.
const REEXEC_MARK: &str = "_STRATA_REEXEC";

/// Whether the running binary is already the sealed copy.
pub fn is_sealed() -> bool {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().starts_with(&format!("/memfd:{MEMFD_NAME}")))
        .unwrap_or(false)
}

/// Whether the running binary cannot be written through `/proc/self/exe`: a sealed copy, or a
/// file on a read-only mount.
pub fn is_protected() -> bool {
    if is_sealed() {
        return true;
    }
    std::fs::File::open("/proc/self/exe")
        .ok()
        .and_then(|f| nix::sys::statvfs::fstatvfs(&f).ok())
        .is_some_and(|st| st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Opens the running binary through a read-only bind mount of it, made in a private mount
/// namespace and detached at once (the descriptor keeps it alive for exec).
pub fn read_only_view() -> Result<OwnedFd> {
    let exe = std::fs::read_link("/proc/self/exe").ctx(|| "reading /proc/self/exe".into())?;
    read_only_view_of(&exe)
}

/// Opens `exe` through a read-only bind mount of it, as [`read_only_view`] does for the running
/// binary: a process executed from the descriptor is protected from the start (the shim
/// daemon runs its helper so, and spares it the re-execution). The calling process must be
/// single-threaded (without the new mount API it enters a mount namespace of its own for a
/// moment).
pub fn read_only_view_of(exe: &std::path::Path) -> Result<OwnedFd> {
    match detached_read_only_view(exe) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            tracing::debug!("detached read-only view of {} failed ({e}): using a mount namespace", exe.display());
            namespace_read_only_view(exe)
        }
    }
}

/// The view of [`read_only_view_of`] with the new mount API: a detached bind of the file, made
/// read-only, opened through `/proc/self/fd`. The mount goes with the last descriptor of it
/// (the one returned, or the program executed from it).
fn detached_read_only_view(exe: &std::path::Path) -> Result<OwnedFd> {
    use crate::sys::{MountAttr, mount_attr};
    let tree = crate::sys::open_tree(libc::AT_FDCWD, exe, libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as u32)
        .map_err(|e| Error::sys(format!("open_tree({})", exe.display()), e))?;
    let attr =
        MountAttr { attr_set: mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV, ..Default::default() };
    crate::sys::mount_setattr(&tree, 0, &attr)
        .map_err(|e| Error::sys(format!("mount_setattr(read-only) on a bind of {}", exe.display()), e))?;
    let view = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", tree.as_raw_fd()))
        .ctx(|| format!("opening {} through its read-only bind", exe.display()))?;
    let st = nix::sys::statvfs::fstatvfs(&view).ctx(|| format!("statvfs of {}", exe.display()))?;
    if !st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(Error::Invalid(format!("the bind of {} is not read-only", exe.display())));
    }
    Ok(view.into())
}

/// The view of [`read_only_view_of`] with `mount(2)`, in a mount namespace entered for the
/// moment it takes.
fn namespace_read_only_view(exe: &std::path::Path) -> Result<OwnedFd> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let exe = exe.to_path_buf();
    // The view is made in a mount namespace of its own, then the runtime goes back to the one
    // it came from: containers are made from the host's mounts (a Bidirectional mount must
    // reach the host's peer groups), not from a slave copy of them.
    let home: OwnedFd = std::fs::File::open("/proc/self/ns/mnt").ctx(|| "opening /proc/self/ns/mnt".into())?.into();
    // setns moves the working directory to the namespace's root: come back to this one.
    let cwd: OwnedFd = std::fs::File::open(".").ctx(|| "opening the working directory".into())?.into();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ctx(|| "unshare(mount namespace)".into())?;
    // Nothing mounted from here on may propagate back to the host's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .ctx(|| "making / a slave mount".into())?;
    mount(Some(&exe), &exe, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .ctx(|| format!("bind-mounting {}", exe.display()))?;
    let result = mount(
        None::<&str>,
        &exe,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .ctx(|| format!("remounting {} read-only", exe.display()))
    .and_then(|()| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&exe)
            .ctx(|| format!("opening {}", exe.display()))?;
        Ok(OwnedFd::from(f))
    });
    umount2(&exe, MntFlags::MNT_DETACH).ctx(|| format!("detaching {}", exe.display()))?;
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNS)
        .ctx(|| "returning to the runtime's mount namespace".into())?;
    nix::unistd::fchdir(&cwd).ctx(|| "returning to the working directory".into())?;
    result
}

/// Makes a sealed memfd copy of the running binary.
pub fn sealed_copy() -> Result<OwnedFd> {
    let name = CString::new(MEMFD_NAME).map_err(|_| Error::Invalid("memfd name".into()))?;
    // SAFETY: memfd_create takes a valid C string and flags and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::sys("memfd_create", nix::errno::Errno::last()));
    }
    // SAFETY: the descriptor was just created and is owned by nothing else.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let exe = std::fs::File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    let len = exe.metadata().ctx(|| "stat /proc/self/exe".into())?.len() as usize;
    let mut copied = 0usize;
    while copied < len {
        // SAFETY: both descriptors are open; null offsets use and advance the file positions.
        let n = unsafe {
            libc::copy_file_range(
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                memfd.as_raw_fd(),
                std::ptr::null_mut(),
                len - copied,
                0,
            )
        };
        if n < 0 {
            // Fall back to sendfile where copy_file_range cannot cross file systems.
            // SAFETY: as above; sendfile reads from `exe` at its position.
            let m = unsafe { libc::sendfile(memfd.as_raw_fd(), exe.as_raw_fd(), std::ptr::null_mut(), len - copied) };
            if m <= 0 {
                return Err(Error::sys("copying the runtime binary", nix::errno::Errno::last()));
            }
            copied += m as usize;
        } else if n == 0 {
            break;
        } else {
            copied += n as usize;
        }
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on a memfd created with MFD_ALLOW_SEALING.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::sys("sealing the runtime copy", nix::errno::Errno::last()));
    }
    Ok(memfd)
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `t`, which outlives the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// How long ago the process that re-executed this one did so (`--debug`'s first step), or
/// `None` when this process was not re-executed.
pub fn since_reexec() -> Option<std::time::Duration> {
    let then: u64 = std::env::var(REEXEC_MARK).ok()?.parse().ok()?;
    monotonic_ns().checked_sub(then).map(std::time::Duration::from_nanos)
}

/// Re-executes the runtime through a read-only view of its binary (or a sealed copy) unless it
/// already runs from one. Returns only on failure.
pub fn reexec_sealed() -> Result<()> {
    if is_protected() {
        return Ok(());
    }
    if std::env::var_os(REEXEC_MARK).is_some() {
        // Already re-executed once; never loop.
        return Err(Error::Invalid("the runtime binary could not be protected from writes".into()));
    }
    let memfd = match read_only_view() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("read-only view of the runtime binary failed ({e}); using a sealed copy");
            sealed_copy()?
        }
    };
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("argument contains a NUL byte".into()))?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b)
        })
        .chain(std::iter::once(CString::new(format!("{REEXEC_MARK}={}", monotonic_ns()))))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("environment contains a NUL byte".into()))?;
    let e = nix::unistd::fexecve(&memfd, &args, &env).err().unwrap_or(nix::errno::Errno::EINVAL);
    Err(Error::sys("executing the sealed runtime copy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_view_is_read_only_and_mounted_nowhere() {
        assert!(nix::unistd::geteuid().is_root(), "open_tree needs root: run the tests as root, as CI does");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runtime");
        std::fs::write(&file, b"the runtime").unwrap();
        let view = detached_read_only_view(&file).unwrap();
        let through = format!("/proc/self/fd/{}", view.as_raw_fd());
        let err = std::fs::OpenOptions::new().write(true).open(&through).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert_eq!(std::fs::read(&through).unwrap(), b"the runtime");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "the view is mounted somewhere:\n{mounts}");
        // the file itself stays writable for its owner
        std::fs::write(&file, b"updated").unwrap();
    }

    #[test]
    fn copy_is_sealed_against_writes() {
        let fd = sealed_copy().unwrap();
        // SAFETY: F_GET_SEALS reads the seals of an open memfd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
            use std::io::Write;
            assert!(f.write_all(b"overwritten").is_err(), "a sealed copy was written");
        }
        assert!(!is_sealed());
    }
}
