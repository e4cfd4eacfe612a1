//! Copying a directory tree between two open directories, every step relative to a descriptor
//! and without following symlinks: what `tmpcopyup` puts into a new tmpfs. Owners, modes and
//! modification times are kept; symlinks are copied as symlinks, device nodes and FIFOs as
//! nodes.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, fchmodat, fstatat, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};
use std::os::fd::{AsFd, OwnedFd};

/// How deep a tree may nest (a loop guard; directories cannot loop, but keep it bounded).
const MAX_DEPTH: u32 = 256;

/// Copies everything in directory `src` into directory `dst`.
pub fn copy_tree(src: &OwnedFd, dst: &OwnedFd) -> Result<(), String> {
    copy_dir(src, dst, 0)
}

fn copy_dir(src: &OwnedFd, dst: &OwnedFd, depth: u32) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("the tree nests too deep".into());
    }
    let dir_fd = src.try_clone().map_err(|e| e.to_string())?;
    let mut dir = nix::dir::Dir::from_fd(dir_fd).map_err(|e| format!("reading a directory: {e}"))?;
    for entry in dir.iter() {
        let entry = entry.map_err(|e| format!("reading a directory: {e}"))?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let shown = String::from_utf8_lossy(name.to_bytes()).into_owned();
        let st = fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| format!("{shown}: {e}"))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match kind {
            SFlag::S_IFDIR => {
                mkdirat(dst, name, Mode::from_bits_truncate(0o700)).map_err(|e| format!("{shown}: {e}"))?;
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let s = openat(src, name, flags, Mode::empty()).map_err(|e| format!("{shown}: {e}"))?;
                let d = openat(dst, name, flags, Mode::empty()).map_err(|e| format!("{shown}: {e}"))?;
                copy_dir(&s, &d, depth + 1).map_err(|e| format!("{shown}/{e}"))?;
            }
            SFlag::S_IFREG => {
                let s = openat(src, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| format!("{shown}: {e}"))?;
                let d = openat(
                    dst,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| format!("{shown}: {e}"))?;
                let mut reader = std::fs::File::from(s);
                let mut writer = std::fs::File::from(d);
                std::io::copy(&mut reader, &mut writer).map_err(|e| format!("{shown}: {e}"))?;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(src, name).map_err(|e| format!("{shown}: {e}"))?;
                nix::unistd::symlinkat(target.as_os_str(), dst, name).map_err(|e| format!("{shown}: {e}"))?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                mknodat(dst, name, kind, Mode::from_bits_truncate(0o600), st.st_rdev)
                    .map_err(|e| format!("{shown}: {e}"))?;
            }
            // A socket belongs to the process that bound it; a copy would be meaningless.
            _ => continue,
        }
        fchownat(
            dst,
            name,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| format!("{shown}: chown: {e}"))?;
        if kind != SFlag::S_IFLNK {
            // After chown, which clears the set-id bits.
            fchmodat(dst, name, mode, FchmodatFlags::NoFollowSymlink)
                .or_else(|e| {
                    if e == Errno::EOPNOTSUPP {
                        fchmodat(dst, name, mode, FchmodatFlags::FollowSymlink)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("{shown}: chmod: {e}"))?;
        }
        let times = [TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec)];
        nix::sys::stat::utimensat(dst, name, &times[0], &times[1], nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .map_err(|e| format!("{shown}: times: {e}"))?;
    }
    // The directory itself: its mode, owner and times follow those of the source.
    let st = nix::sys::stat::fstat(src).map_err(|e| e.to_string())?;
    nix::unistd::fchown(dst.as_fd(), Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))
        .map_err(|e| format!("chown: {e}"))?;
    nix::sys::stat::fchmod(dst.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))
        .map_err(|e| format!("chmod: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    #[test]
    fn a_tree_is_copied_with_links_modes_and_contents() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("sub/deeper")).unwrap();
        std::fs::write(a.path().join("sub/deeper/file"), b"contents").unwrap();
        std::fs::set_permissions(a.path().join("sub/deeper/file"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", a.path().join("sub/link")).unwrap();
        nix::unistd::mkfifo(&a.path().join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let src: OwnedFd = std::fs::File::open(a.path()).unwrap().into();
        let dst: OwnedFd = std::fs::File::open(b.path()).unwrap().into();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read(b.path().join("sub/deeper/file")).unwrap(), b"contents");
        let m = std::fs::metadata(b.path().join("sub/deeper/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!(
            m.mtime(),
            std::fs::metadata(a.path().join("sub/deeper/file")).unwrap().mtime(),
            "modification time kept"
        );
        assert_eq!(std::fs::read_link(b.path().join("sub/link")).unwrap().to_str(), Some("../../etc/passwd"));
        assert!(std::fs::symlink_metadata(b.path().join("fifo")).unwrap().file_type().is_fifo());
    }
}
