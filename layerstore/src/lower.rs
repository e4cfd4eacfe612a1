//! Looking a path up through the lower snapshots of a layer, as overlayfs would.
//!
//! Overlayfs shows a whiteout as a broken entry when its directory is not merged with a lower one (a
//! directory new in this layer, or opaque): readdir lists it but lookup fails. A whiteout that hides
//! nothing is a no-op anyway, so the unpacker only creates whiteouts for names visible below.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Whether the path made of `components` is visible in the stack `lowers` (top-most first).
pub(crate) fn visible_below(lowers: &[PathBuf], components: &[Vec<u8>]) -> bool {
    for lower in lowers {
        let mut path = lower.clone();
        for (i, comp) in components.iter().enumerate() {
            path.push(OsStr::from_bytes(comp));
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                // Not in this layer: look further down, unless an opaque directory above hides it.
                if i > 0 && is_opaque(path.parent().unwrap_or(Path::new("/"))) {
                    return false;
                }
                break;
            };
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                return false;
            }
            if i + 1 == components.len() {
                return true;
            }
            if !meta.is_dir() {
                return false;
            }
        }
    }
    false
}

/// Whether a directory carries overlayfs' opaque marker.
pub(crate) fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut buf), Ok(1) if buf[0] == b'y')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &str) -> Vec<Vec<u8>> {
        p.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn finds_names_in_any_lower_and_stops_at_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(upper.join("d")).unwrap();
        std::fs::create_dir_all(lower.join("d")).unwrap();
        std::fs::write(lower.join("d/f"), "").unwrap();
        std::fs::write(upper.join("file"), "").unwrap();
        std::fs::create_dir_all(lower.join("file")).unwrap();
        std::fs::write(lower.join("file/under"), "").unwrap();
        let lowers = [upper, lower];
        assert!(visible_below(&lowers, &parts("d/f")));
        assert!(visible_below(&lowers, &parts("d")));
        assert!(!visible_below(&lowers, &parts("d/missing")));
        // A file in a higher layer hides the directory of the same name below it.
        assert!(!visible_below(&lowers, &parts("file/under")));
        assert!(!visible_below(&[], &parts("d")));
    }
}
