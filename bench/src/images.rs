//! Real images for the layerstore bench: a Debian rootfs from `debootstrap --variant=minbase
//! bookworm` (cached as a tar under `<repo>/.cache/bench/`), packed as gzip layers, application
//! layers on top, OCI archives that both strata and `ctr images import` read, and `du -sb`-style
//! counting of the bytes they take on disk.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use layerstore::{Algorithm, Digest, Hasher, HashingWriter};
use serde_json::json;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// mtime of the files the bench generates (a fixed time, so rebuilt layers keep their digests).
const GENERATED_MTIME: u64 = 1_700_000_000;
/// Paths a rebuild of the same Dockerfile rewrites with new mtimes (apt lists, dpkg state, logs,
/// caches); files installed from packages keep the packages' mtimes.
const VOLATILE: [&str; 7] =
    ["var/log", "var/cache", "var/lib/apt", "var/lib/dpkg", "etc/ld.so.cache", "etc/machine-id", "etc/hostname"];

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| err(format!("{cmd:?}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The Debian minbase rootfs as an uncompressed tar, made once with debootstrap and cached under
/// `<repo>/.cache/bench/` (about a minute the first time).
pub fn debian_rootfs_tar() -> Result<PathBuf, String> {
    let cache = repo_root().join(".cache/bench");
    let tar = cache.join("debian-bookworm-minbase.tar");
    if tar.exists() {
        return Ok(tar);
    }
    fs::create_dir_all(&cache).map_err(|e| err(cache.display(), e))?;
    let work = tempfile::Builder::new().prefix("strata-debootstrap-").tempdir().map_err(|e| err("tempdir", e))?;
    let rootfs = work.path().join("rootfs");
    eprintln!("layerstore: debootstrap --variant=minbase bookworm (cached after this run)");
    run(Command::new("debootstrap").args(["--variant=minbase", "bookworm"]).arg(&rootfs))
        .map_err(|e| format!("{e} (apt-get install debootstrap; needs root and network)"))?;
    let partial = cache.join("debian-bookworm-minbase.tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--xattrs", "--sort=name", "-cf"])
        .arg(&partial)
        .arg("."))?;
    fs::rename(&partial, &tar).map_err(|e| err(tar.display(), e))?;
    Ok(tar)
}

/// A layer blob written to a file.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The compressed blob.
    pub path: PathBuf,
    /// Its digest.
    pub digest: Digest,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Gzips the tar `tar` at `level` into `out`, hashing both sides.
pub fn gzip_layer(tar: &Path, out: &Path, level: u32) -> Result<LayerBlob, String> {
    let file = fs::File::create(out).map_err(|e| err(out.display(), e))?;
    let sink = HashingWriter::new(io::BufWriter::new(file), Algorithm::Sha256);
    let mut gz = flate2::write::GzEncoder::new(sink, flate2::Compression::new(level));
    let mut input = fs::File::open(tar).map_err(|e| err(tar.display(), e))?;
    let mut diff = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(|e| err(tar.display(), e))?;
        if n == 0 {
            break;
        }
        diff.update(&buf[..n]);
        gz.write_all(&buf[..n]).map_err(|e| err(out.display(), e))?;
    }
    let mut sink = gz.finish().map_err(|e| err(out.display(), e))?;
    sink.flush().map_err(|e| err(out.display(), e))?;
    let (digest, size, _) = sink.finish();
    Ok(LayerBlob { path: out.to_path_buf(), digest, diff_id: diff.finish(), size })
}

/// Extracts the rootfs tar into `dir` (owners, modes, xattrs and device nodes kept; needs root).
pub fn extract_rootfs(tar: &Path, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| err(dir.display(), e))?;
    run(Command::new("tar").arg("-C").arg(dir).args(["--numeric-owner", "--xattrs", "-xpf"]).arg(tar))
}

fn set_mtime(path: &Path, secs: i64) -> Result<(), String> {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| err(path.display(), e))
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), String>) -> Result<(), String> {
    for entry in fs::read_dir(dir).map_err(|e| err(dir.display(), e))? {
        let path = entry.map_err(|e| err(dir.display(), e))?.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| err(path.display(), e))?;
        if meta.is_dir() {
            walk(&path, f)?;
        }
        f(&path, &meta)?;
    }
    Ok(())
}

/// Re-packs the extracted rootfs `rootfs` as a rebuild of the same Dockerfile would: the same files,
/// but every directory and every file under [`VOLATILE`] gets a new mtime (`build` seconds apart), so
/// the layer has a digest and diff ID of its own. Returns the uncompressed tar.
pub fn rebuilt_base_tar(rootfs: &Path, build: u32, out: &Path) -> Result<PathBuf, String> {
    let stamp = 1_710_000_000 + i64::from(build) * 86_400;
    walk(rootfs, &mut |path, meta| {
        let rel = path.strip_prefix(rootfs).unwrap_or(path);
        if meta.is_dir() || VOLATILE.iter().any(|v| rel.starts_with(v)) {
            set_mtime(path, stamp)?;
        }
        Ok(())
    })?;
    set_mtime(rootfs, stamp)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "--xattrs", "--sort=name", "-cf"])
        .arg(out)
        .arg("."))?;
    Ok(out.to_path_buf())
}

/// Deterministic incompressible bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn generated_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(GENERATED_MTIME);
    h.set_size(size);
    h
}

/// The uncompressed tar of application `app` (1-based), about 30 MB: a 12 MB "runtime" that every
/// application installs in its own layer (the same files in different layers), 8 MB of its own
/// data, and `usr/bin` and `usr/sbin` of the base reinstalled (the same files as the base layer's).
pub fn app_layer_tar(rootfs: &Path, app: u32, out: &Path) -> Result<PathBuf, String> {
    let file = fs::File::create(out).map_err(|e| err(out.display(), e))?;
    let mut b = tar::Builder::new(io::BufWriter::new(file));
    b.follow_symlinks(false);
    let append = |b: &mut tar::Builder<_>, name: &str, kind, mode, data: &[u8]| {
        let mut h = generated_header(kind, mode, data.len() as u64);
        b.append_data(&mut h, name, data).map_err(|e| err(name, e))
    };
    for d in ["opt/", "opt/runtime/", "srv/", &format!("srv/app{app}/")] {
        append(&mut b, d, tar::EntryType::Directory, 0o755, &[])?;
    }
    for k in 0..6 {
        append(&mut b, &format!("opt/runtime/lib{k}.so"), tar::EntryType::Regular, 0o644, &noise(1000 + k, 2 << 20))?;
    }
    for k in 0..4 {
        let data = noise(u64::from(app) * 100 + k, 2 << 20);
        append(&mut b, &format!("srv/app{app}/data{k}.bin"), tar::EntryType::Regular, 0o644, &data)?;
    }
    for dir in ["usr/bin", "usr/sbin"] {
        let mut entries: Vec<PathBuf> = fs::read_dir(rootfs.join(dir))
            .map_err(|e| err(dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| err(dir, e))?;
        entries.sort();
        for path in entries {
            let name = path.strip_prefix(rootfs).unwrap_or(&path);
            b.append_path_with_name(&path, name).map_err(|e| err(path.display(), e))?;
        }
    }
    let mut w = b.into_inner().map_err(|e| err(out.display(), e))?;
    w.flush().map_err(|e| err(out.display(), e))?;
    Ok(out.to_path_buf())
}

fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

/// Writes an OCI archive (a tar of an OCI layout) holding one image named `name` (a full reference
/// such as `docker.io/library/x:tag`) made of `layers`, bottom first. `work` is a scratch directory.
pub fn write_oci_archive(work: &Path, name: &str, layers: &[&LayerBlob], out: &Path) -> Result<(), String> {
    let blobs = work.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| err(blobs.display(), e))?;
    let descs: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": GZIP_LAYER, "digest": l.digest.to_string(), "size": l.size}))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": layerstore::host_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/bash"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    }))
    .map_err(|e| err("config", e))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .map_err(|e| err("manifest", e))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
        }],
    }))
    .map_err(|e| err("index", e))?;
    let file = fs::File::create(out).map_err(|e| err(out.display(), e))?;
    let mut b = tar::Builder::new(io::BufWriter::new(file));
    let add_bytes = |b: &mut tar::Builder<_>, path: &str, data: &[u8]| {
        let mut h = generated_header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data).map_err(|e| err(path, e))
    };
    add_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes(&mut b, "index.json", &index)?;
    add_bytes(&mut b, &format!("blobs/sha256/{}", config_digest.hex()), &config)?;
    add_bytes(&mut b, &format!("blobs/sha256/{}", manifest_digest.hex()), &manifest)?;
    for l in layers {
        let name = format!("blobs/sha256/{}", l.digest.hex());
        b.append_path_with_name(&l.path, &name).map_err(|e| err(l.path.display(), e))?;
    }
    let mut w = b.into_inner().map_err(|e| err(out.display(), e))?;
    w.flush().map_err(|e| err(out.display(), e))
}

/// Bytes allocated under `root`, each inode counted once (`du -sb` counts apparent sizes; this counts
/// `st_blocks * 512`, what the file system actually holds). Symlinks are not followed.
pub fn disk_usage(root: &Path) -> Result<u64, String> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let meta = fs::symlink_metadata(root).map_err(|e| err(root.display(), e))?;
    seen.insert((meta.dev(), meta.ino()));
    total += meta.blocks() * 512;
    walk(root, &mut |_, meta| {
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_seeded() {
        assert_eq!(noise(7, 100), noise(7, 100));
        assert_ne!(noise(7, 100), noise(8, 100));
        assert_eq!(noise(7, 13).len(), 13);
    }

    #[test]
    fn a_gzipped_layer_names_the_digests_and_size_of_what_it_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tar, out) = (dir.path().join("layer.tar"), dir.path().join("layer.tar.gz"));
        let data = noise(3, 100_000);
        fs::write(&tar, &data).expect("write");
        let blob = gzip_layer(&tar, &out, 6).expect("gzip");
        let written = fs::read(&out).expect("read");
        assert_eq!((blob.digest, blob.size), (Digest::of(Algorithm::Sha256, &written), written.len() as u64));
        assert_eq!(blob.diff_id, Digest::of(Algorithm::Sha256, &data));
    }

    #[test]
    fn disk_usage_counts_a_hardlinked_inode_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), vec![1u8; 64 << 10]).expect("write");
        let one = disk_usage(dir.path()).expect("du");
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link");
        assert_eq!(disk_usage(dir.path()).expect("du"), one);
    }
}
