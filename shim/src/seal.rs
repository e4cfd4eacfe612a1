//! Protection of the runtime binary from the container (the CVE-2019-5736 class).
//!
//! Every process the runtime puts into a container is a fork of the runtime, so its
//! `/proc/<pid>/exe` is the runtime's binary until it executes the user's program. A process
//! in the container could open that link and, once the runtime exits, write through it to
//! replace the host's binary. To rule this out, commands that make container processes first
//! re-execute the runtime from a sealed memfd copy: `/proc/<pid>/exe` then names an anonymous
//! file that no one can write (F_SEAL_WRITE, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_SEAL).

use crate::error::{Error, Result, SysContext};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const MEMFD_NAME: &str = "strata-sealed";

/// Whether the running binary is already the sealed copy.
pub fn is_sealed() -> bool {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().starts_with(&format!("/memfd:{MEMFD_NAME}")))
        .unwrap_or(false)
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

/// Re-executes the runtime from a sealed copy unless it already runs from one. Returns only on
/// failure.
pub fn reexec_sealed() -> Result<()> {
    if is_sealed() {
        return Ok(());
    }
    let memfd = sealed_copy()?;
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
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("environment contains a NUL byte".into()))?;
    let e = nix::unistd::fexecve(&memfd, &args, &env).err().unwrap_or(nix::errno::Errno::EINVAL);
    Err(Error::sys("executing the sealed runtime copy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
