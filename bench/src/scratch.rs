//! Where measurements write: a fresh ext4 file system of their own, when a benchmark asks for one.
//!
//! These VMs' root file system is ext4 without a journal, where the inode allocator passes over
//! (and reads the inode table block of) every inode freed in the last minutes: right after a
//! large deletion, creating files costs a millisecond each instead of a few microseconds
//! (`tar -x` of the Debian base: 8 s instead of 0.4 s, seen with `perf` in `recently_deleted`).
//! A measurement that creates thousands of files would pay for whatever was deleted before it.
//! [`ScratchFs`] is a freshly made ext4 with a journal (what a host's disk has), loop-mounted for
//! the length of the benchmark; [`dir`] is where scratch directories go (`/tmp` without one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory scratch directories go in: the mounted [`ScratchFs`], else `/tmp`.
pub fn dir() -> PathBuf {
    SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// A fresh ext4 file system on a sparse file, loop-mounted until dropped; scratch directories
/// ([`dir`]) go in it meanwhile.
#[derive(Debug)]
pub struct ScratchFs {
    mount: Option<tempfile::TempDir>,
    device: Option<PathBuf>,
    image: PathBuf,
}

impl ScratchFs {
    /// Makes and mounts one of `gib` GiB (sparse: only what is written takes space) on a loop
    /// device with direct I/O. Needs root, `losetup`, `mkfs.ext4` and a free loop device.
    pub fn new(gib: u64) -> Result<ScratchFs, String> {
        let mount =
            tempfile::Builder::new().prefix("strata-bench-fs-").tempdir_in("/tmp").map_err(|e| e.to_string())?;
        let image = mount.path().with_extension("img");
        let mut fs = ScratchFs { mount: None, device: None, image };
        std::fs::File::create(&fs.image)
            .and_then(|f| f.set_len(gib << 30))
            .map_err(|e| format!("{}: {e}", fs.image.display()))?;
        // Direct I/O: the loop device writes through to the disk, so an fsync on it costs what it
        // costs on a disk (with the backing file's page cache in between, every fsync would also
        // write out whatever else the measurements left dirty there).
        let out = Command::new("losetup")
            .args(["--direct-io=on", "--find", "--show"])
            .arg(&fs.image)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        fs.device = Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        let device = fs.device.clone().unwrap_or_default();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&device))?;
        run(Command::new("mount").arg(&device).arg(mount.path()))?;
        *SCRATCH.lock().unwrap_or_else(|p| p.into_inner()) = Some(mount.path().to_path_buf());
        fs.mount = Some(mount);
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount.as_ref().map_or(Path::new("/tmp"), |m| m.path())
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take() {
            *SCRATCH.lock().unwrap_or_else(|p| p.into_inner()) = None;
            // (lazily, should a process of a failed measurement still hold a file there)
            if run(Command::new("umount").arg(mount.path())).is_err() {
                let _ = run(Command::new("umount").arg("-l").arg(mount.path()));
            }
            drop(mount);
        }
        if let Some(device) = self.device.take() {
            let _ = run(Command::new("losetup").arg("-d").arg(device));
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}
