//! Mounting the rootfs mounts containerd passes with `Create` (an overlay of the image's
//! snapshots, or a bind of one) onto `bundle/rootfs`, in the daemon's own process: it has one
//! thread, so changing directory for a long overlay mount disturbs nobody.

use nix::mount::MsFlags;
use std::path::Path;

/// What a mount option that is a flag does: set (or clear) MS_* bits.
fn flag(option: &str) -> Option<(bool, MsFlags)> {
    Some(match option {
        "defaults" | "rw" => (false, MsFlags::MS_RDONLY),
        "ro" => (true, MsFlags::MS_RDONLY),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "atime" => (false, MsFlags::MS_NOATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "private" => (true, MsFlags::MS_PRIVATE),
        "rprivate" => (true, MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        "slave" => (true, MsFlags::MS_SLAVE),
        "rslave" => (true, MsFlags::MS_SLAVE | MsFlags::MS_REC),
        "shared" => (true, MsFlags::MS_SHARED),
        "rshared" => (true, MsFlags::MS_SHARED | MsFlags::MS_REC),
        "unbindable" => (true, MsFlags::MS_UNBINDABLE),
        "runbindable" => (true, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
        _ => return None,
    })
}

const PROPAGATION: MsFlags =
    MsFlags::MS_SHARED.union(MsFlags::MS_PRIVATE).union(MsFlags::MS_SLAVE).union(MsFlags::MS_UNBINDABLE);

/// Splits options into flags and the data string.
fn parse(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((true, f)) => flags |= f,
            Some((false, f)) => flags -= f,
            None => data.push(o.clone()),
        }
    }
    (flags, data)
}

/// Room the kernel gives mount data: one page.
const DATA_LIMIT: usize = 4096;

/// For an overlay whose data would not fit in a page: the directory all lower layers share,
/// and the data with lowerdirs relative to it (the mount then runs from that directory). Data-only
/// layers (after `::`) keep their separators.
fn compact_lowerdirs(data: &[String]) -> Option<(String, Vec<String>)> {
    let lower = data.iter().find_map(|o| o.strip_prefix("lowerdir="))?;
    // (`a::b` splits into `a`, ``, `b`: the empty piece is the second colon)
    let pieces: Vec<&str> = lower.split(':').collect();
    let dirs: Vec<&str> = pieces.iter().copied().filter(|d| !d.is_empty()).collect();
    let first = dirs.first()?;
    let mut common = first.rsplit_once('/').map(|(d, _)| d.to_string())?;
    while !dirs.iter().all(|d| d.starts_with(&format!("{common}/"))) {
        common = common.rsplit_once('/').map(|(d, _)| d.to_string())?;
    }
    if common.is_empty() {
        return None;
    }
    let relative: Vec<&str> = pieces.iter().map(|d| if d.is_empty() { "" } else { &d[common.len() + 1..] }).collect();
    let out = data
        .iter()
        .map(|o| if o.starts_with("lowerdir=") { format!("lowerdir={}", relative.join(":")) } else { o.clone() })
        .collect();
    Some((common, out))
}

/// Mounts one of containerd's rootfs mounts on `target`.
pub fn mount(fs_type: &str, source: &str, options: &[String], target: &Path) -> Result<(), String> {
    let (flags, mut data) = parse(options);
    let mut chdir = None;
    if fs_type == "overlay" && data.join(",").len() >= DATA_LIMIT - 512 {
        let (dir, compact) = compact_lowerdirs(&data)
            .ok_or_else(|| "overlay options too long and lowerdirs share no directory".to_string())?;
        chdir = Some(dir);
        data = compact;
    }
    let data = data.join(",");
    if data.len() >= DATA_LIMIT {
        return Err(format!("mount options of {} bytes do not fit in a page", data.len()));
    }
    // The way back is held open: the daemon's directory (a bundle) may have been removed.
    let old_cwd = match &chdir {
        Some(dir) => {
            let old = std::fs::File::open(".").ok();
            std::env::set_current_dir(dir).map_err(|e| format!("chdir {dir}: {e}"))?;
            Some(old)
        }
        None => None,
    };
    // Propagation is set by a second call; MS_REC belongs to it unless this is an rbind.
    let mut base = flags - PROPAGATION;
    if !flags.contains(MsFlags::MS_BIND) {
        base -= MsFlags::MS_REC;
    }
    let source = (!source.is_empty()).then_some(source);
    let fstype = (!fs_type.is_empty()).then_some(fs_type);
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    let mut result = Ok(());
    if !flags.contains(MsFlags::MS_REMOUNT) || data_opt.is_some() {
        result = nix::mount::mount(source, target, fstype, base, data_opt)
            .map_err(|e| format!("mount {} on {}: {e}", source.unwrap_or(fs_type), target.display()));
    }
    match old_cwd {
        Some(Some(old)) => {
            let _ = nix::unistd::fchdir(&old);
        }
        Some(None) => {
            let _ = std::env::set_current_dir("/");
        }
        None => {}
    }
    result?;
    if flags.intersects(PROPAGATION) {
        let prop = flags & (PROPAGATION | MsFlags::MS_REC);
        nix::mount::mount(None::<&str>, target, None::<&str>, prop, None::<&str>)
            .map_err(|e| format!("setting the propagation of {}: {e}", target.display()))?;
    }
    if base.contains(MsFlags::MS_BIND) && base.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(None::<&str>, target, None::<&str>, base | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(|e| format!("making {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_told_apart() {
        let (f, d) = parse(&["rbind".into(), "ro".into(), "index=off".into()]);
        assert!(f.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(d, ["index=off"]);
    }

    #[test]
    fn long_lowerdirs_become_relative_to_their_common_directory() {
        let lower: Vec<String> = (0..3).map(|i| format!("/var/lib/snap/{i}/fs")).collect();
        let data = vec!["workdir=/w".to_string(), format!("lowerdir={}", lower.join(":"))];
        let (dir, out) = compact_lowerdirs(&data).unwrap();
        assert_eq!(dir, "/var/lib/snap");
        assert_eq!(out[1], "lowerdir=0/fs:1/fs:2/fs");
        assert_eq!(out[0], "workdir=/w");
        // data-only layers keep their double colons
        let data = vec![format!("lowerdir={}::/var/lib/snap/9/data::/var/lib/snap/8/data", lower.join(":"))];
        let (dir, out) = compact_lowerdirs(&data).unwrap();
        assert_eq!(dir, "/var/lib/snap");
        assert_eq!(out[0], "lowerdir=0/fs:1/fs:2/fs::9/data::8/data");
    }
}
