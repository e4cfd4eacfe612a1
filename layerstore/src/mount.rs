//! Mounting a container's overlay root file system with the new mount API.
//!
//! Each lower directory is passed as its own `lowerdir+` parameter (Linux 6.8+), so the page-sized
//! limit of the classic `lowerdir=a:b:c` option never applies and an image with hundreds of layers
//! mounts. On older kernels the classic option string is used, which fits about 50 layers at the
//! store's path lengths.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
};

use crate::{Error, Result};

/// Mounts overlayfs at `target`; `lowers` are top-most first.
pub(crate) fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let err = |step: &'static str| {
        let target = target.to_path_buf();
        move |e: Errno| Error::Mount { target, step, source: io::Error::from(e) }
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen"))?;
    let mut plus = true;
    for lower in lowers {
        match fsconfig_set_string(&fs, "lowerdir+", lower) {
            Ok(()) => {}
            Err(Errno::INVAL) if plus && lower == &lowers[0] => {
                plus = false;
                break;
            }
            Err(e) => return Err(err("fsconfig lowerdir+")(e)),
        }
    }
    if !plus {
        return mount_classic(lowers, upper, work, target);
    }
    fsconfig_set_string(&fs, "upperdir", upper).map_err(err("fsconfig upperdir"))?;
    fsconfig_set_string(&fs, "workdir", work).map_err(err("fsconfig workdir"))?;
    fsconfig_create(&fs).map_err(err("fsconfig create"))?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(err("fsmount"))?;
    move_mount(&mnt, "", CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH).map_err(err("move_mount"))
}

fn mount_classic(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let lower = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
    let data = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
    let data = std::ffi::CString::new(data).map_err(|e| Error::Mount {
        target: target.to_path_buf(),
        step: "mount options",
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    rustix::mount::mount("overlay", target, "overlay", MountFlags::empty(), Some(data.as_c_str()))
        .map_err(|e| Error::Mount { target: target.to_path_buf(), step: "mount(2)", source: e.into() })
}

/// Unmounts `target` (lazily, so a busy mount does not block removal); not mounted is fine.
pub(crate) fn unmount_overlay(target: &Path) -> Result<()> {
    match unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::Mount { target: target.to_path_buf(), step: "umount", source: e.into() }),
    }
}
