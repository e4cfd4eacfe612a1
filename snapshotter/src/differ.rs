//! containerd's diff service, served as a proxy diff plugin beside the snapshots: strata unpacks
//! the layers containerd applies into its snapshots itself.
//!
//! containerd applies a layer by calling a differ's Apply with the layer blob's descriptor and
//! the mounts of the active snapshot it unpacks into; its own (`walking`) differ mounts them and
//! writes the tar through them. When those mounts are an empty active snapshot of this store,
//! strata's differ reads the blob from containerd's content store (the file
//! `<containerd root>/io.containerd.content.v1.content/blobs/<algorithm>/<hex>`: containerd does
//! not pass a proxy differ the caller's namespace, which its content service would want), checks
//! its digest and size, and unpacks it straight into the snapshot's tree with the layer store's
//! unpacker ([`layerstore::unpack_layer`]: decompression on a thread of its own, every path
//! resolved beneath the tree without following symlinks, whiteouts as overlayfs reads them, a
//! bound on the uncompressed size). It answers the uncompressed tar's digest, which containerd
//! checks against the image's diff ID before it commits. What follows is as for a layer
//! containerd wrote: the early hashing of the tree and its adoption into the pool at the commit.
//!
//! Anything else — mounts of another snapshotter, a tree that already holds files, a media type
//! the store does not read, a blob not in that content store, payloads (an encrypted layer's
//! decryption configuration) — is answered "unimplemented", which containerd's diff service takes
//! as "ask the next differ" (`default = ["strata-diff", "walking"]`). A failed apply leaves a
//! partial tree containerd removes with the snapshot, as after its own differ's failures.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use layerstore::{Algorithm, Digest, Hasher, UnpackOptions};
use tonic::{Request, Response, Status};

use crate::api::diff::diff_server;
use crate::api::diff::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use crate::api::types::Descriptor;
use crate::snapshots::{ApplyTarget, Snapshots};

/// What the applied tar is, as containerd's own differ answers it.
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The service containerd's proxy diff plugin calls.
#[derive(Debug, Clone)]
pub struct Differ {
    snapshots: Arc<Mutex<Snapshots>>,
    /// containerd's content store's blobs directory.
    blobs: PathBuf,
}

impl Differ {
    /// Applies layers into `snapshots`, reading blobs from the content store of the containerd
    /// whose root directory is `containerd_root`.
    pub fn new(snapshots: Arc<Mutex<Snapshots>>, containerd_root: &Path) -> Differ {
        Differ { snapshots, blobs: containerd_root.join("io.containerd.content.v1.content/blobs") }
    }

    /// The blob `digest` in containerd's content store (a regular file, not reached through a
    /// symlink; opened without blocking on a FIFO), or why not.
    fn open_blob(&self, digest: &Digest) -> Result<File, String> {
        let path = self.blobs.join(digest.algorithm().name()).join(digest.hex());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| format!("layer {digest}: {}: {e}", path.display()))?;
        let meta = file.metadata().map_err(|e| format!("layer {digest}: {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("layer {digest}: {} is not a regular file", path.display()));
        }
        Ok(file)
    }
}

/// The media type to read `blob` as: Docker's `…rootfs.diff.tar` types say nothing of the
/// compression (containerd reads the magic bytes), so neither does strata.
fn media_type_of(blob: &File, media_type: &str) -> io::Result<String> {
    if !(media_type.starts_with("application/vnd.docker.image.rootfs.") && media_type.ends_with(".tar")) {
        return Ok(media_type.to_string());
    }
    let mut magic = [0u8; 4];
    let n = std::os::unix::fs::FileExt::read_at(blob, &mut magic, 0)?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    }
    .to_string())
}

/// Unpacks `blob`, the layer `desc` describes, into `target` (with `sync_fs`, its file system
/// synced after); returns the diff ID and the tar's size.
fn unpack(
    blob: File,
    desc: &Descriptor,
    digest: Digest,
    target: &ApplyTarget,
    sync_fs: bool,
) -> Result<(Digest, u64), String> {
    let size = u64::try_from(desc.size).map_err(|_| format!("layer {digest}: negative size {}", desc.size))?;
    let media_type = media_type_of(&blob, &desc.media_type).map_err(|e| format!("layer {digest}: {e}"))?;
    let blob = Verified {
        blob,
        hasher: Some(Hasher::new(digest.algorithm())),
        read: 0,
        digest: digest.clone(),
        size,
        stop: target.stop.clone(),
    };
    let tar = layerstore::layer_stream(&media_type, &digest, blob).map_err(|e| e.to_string())?;
    let mut tar = Counted { inner: tar, n: 0, stop: target.stop.clone() };
    let opts = UnpackOptions {
        pool: None,
        lowers: Some(target.lowers.clone()),
        diff_id_algorithm: Algorithm::Sha256,
        limits: Default::default(),
        split: None,
    };
    let stats = layerstore::unpack_layer(&mut tar, &target.tree, &digest, &opts).map_err(|e| e.to_string())?;
    let diff_id = stats.diff_id.ok_or_else(|| format!("layer {digest}: no diff ID was computed"))?;
    if sync_fs {
        let tree = File::open(&target.tree).map_err(|e| format!("{}: {e}", target.tree.display()))?;
        rustix_syncfs(&tree).map_err(|e| format!("syncfs {}: {e}", target.tree.display()))?;
    }
    Ok((diff_id, tar.n))
}

/// Fails the read at the end of the blob unless its bytes have the descriptor's digest and size,
/// and at once once the snapshot is removed under the unpack.
struct Verified {
    blob: File,
    hasher: Option<Hasher>,
    read: u64,
    digest: Digest,
    size: u64,
    stop: Arc<AtomicBool>,
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the snapshot was removed during the apply"));
        }
        let n = self.blob.read(buf)?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("layer {}: containerd's content store holds more than its {} bytes", self.digest, self.size),
            ));
        }
        match self.hasher.as_mut() {
            Some(h) if n > 0 => h.update(&buf[..n]),
            Some(_) => {
                let actual = self.hasher.take().map(Hasher::finish);
                if self.read != self.size || actual.as_ref() != Some(&self.digest) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "layer {}: containerd's content store holds {} bytes hashing to {}, not the descriptor's {} bytes",
                            self.digest,
                            self.read,
                            actual.map_or_else(|| "?".to_string(), |d| d.to_string()),
                            self.size
                        ),
                    ));
                }
            }
            None => {}
        }
        Ok(n)
    }
}

/// The mark of a snapshot being applied into ([`Snapshots::apply_target`]), taken off when
/// dropped: when the unpack ends, also by a panic, or with the call if it is given up before.
struct Applying {
    snapshots: Arc<Mutex<Snapshots>>,
    id: u64,
}

impl Drop for Applying {
    fn drop(&mut self) {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner()).applied(self.id);
    }
}

/// `syncfs(2)` of the file system holding `f`.
fn rustix_syncfs(f: &File) -> io::Result<()> {
    // SAFETY: syncfs reads only the descriptor, which `f` keeps open for the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(f)) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the stop flag of an unpack when dropped before [`StopUnlessDone::done`]: the call that
/// waits for the unpack was given up.
struct StopUnlessDone(Option<Arc<AtomicBool>>);

impl StopUnlessDone {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for StopUnlessDone {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Counts the uncompressed tar's bytes; fails once the snapshot is removed under the unpack.
struct Counted<R> {
    inner: R,
    n: u64,
    stop: Arc<AtomicBool>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the snapshot was removed during the apply"));
        }
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Why a request goes to the next differ.
fn next_differ(why: String) -> Status {
    Status::unimplemented(format!("strata's differ: {why}"))
}

#[tonic::async_trait]
impl diff_server::Diff for Differ {
    async fn apply(&self, r: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let r = r.into_inner();
        let desc = r.diff.ok_or_else(|| Status::invalid_argument("apply: the request names no layer (diff)"))?;
        if !r.payloads.is_empty() {
            let names: Vec<&str> = r.payloads.keys().map(String::as_str).collect();
            return Err(next_differ(format!("layer {}: payloads {names:?} are not supported", desc.digest)));
        }
        let [m] = r.mounts.as_slice() else {
            return Err(next_differ(format!("{} mounts are not one snapshot of strata's", r.mounts.len())));
        };
        // (all checked before the snapshot is marked: a layer strata cannot read goes to the next
        // differ)
        let digest = desc
            .digest
            .parse::<Digest>()
            .and_then(|d| layerstore::check_layer_media_type(&desc.media_type, &d).map(|()| d))
            .map_err(|e| next_differ(e.to_string()))?;
        let (kind, source, options) = (m.r#type.clone(), m.source.clone(), m.options.clone());
        let (differ, layer) = (self.clone(), digest.clone());
        let found = tokio::task::spawn_blocking(move || {
            // (the blob is opened first, outside the lock: a target is marked only for an apply
            // that goes ahead)
            let Ok(blob) = differ.open_blob(&layer).inspect_err(|e| eprintln!("strata-snapshotter: {e}")) else {
                return Ok(None);
            };
            let target =
                differ.snapshots.lock().unwrap_or_else(|p| p.into_inner()).apply_target(&kind, &source, &options)?;
            Ok(target.map(|t| {
                let applying = Applying { snapshots: differ.snapshots.clone(), id: t.id };
                (blob, t, applying)
            }))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e: crate::snapshots::Error| Status::internal(e.to_string()))?;
        let Some((blob, target, applying)) = found else {
            return Err(next_differ(format!(
                "layer {digest} onto the {} mount of {}: not an empty active snapshot of strata's, or the blob is \
                 not in containerd's content store",
                m.r#type, m.source
            )));
        };
        let started = Instant::now();
        let (d, t, sync_fs) = (desc.clone(), target.clone(), r.sync_fs);
        // (the apply ends with the unpack, not with this call; a call containerd gives up stops
        // the unpack at its next read, and the snapshot stays marked until nothing writes into it)
        let cancelled = StopUnlessDone(Some(target.stop.clone()));
        let unpacked = tokio::task::spawn_blocking(move || {
            let _applying = applying;
            unpack(blob, &d, digest, &t, sync_fs)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the unpack ended: {e}")));
        cancelled.done();
        let (diff_id, size) = unpacked.map_err(|e| {
            eprintln!("strata-snapshotter: apply of layer {} into {:?} failed: {e}", desc.digest, target.key);
            Status::internal(e)
        })?;
        eprintln!(
            "strata-snapshotter: applied layer {} into {:?}: diff ID {diff_id}, {size} bytes of tar, {} ms",
            desc.digest,
            target.key,
            started.elapsed().as_millis()
        );
        Ok(Response::new(ApplyResponse {
            applied: Some(Descriptor {
                media_type: TAR.into(),
                digest: diff_id.to_string(),
                size: i64::try_from(size).unwrap_or(i64::MAX),
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, _r: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(next_differ("it applies layers only; containerd's walking differ makes diffs".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::api::snapshots_server::Snapshots as _;
    use crate::api::types::Mount;
    use crate::api::{PrepareSnapshotRequest, RemoveSnapshotRequest};
    use crate::service::Service;

    /// A layer tar holding `etc/hello`.
    fn layer_tar() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let header = |kind, mode, size| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(86_400);
            h
        };
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), "etc/", io::empty())?;
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, 3), "etc/hello", &b"hi\n"[..])?;
        Ok(b.into_inner()?)
    }

    fn apply(
        rt: &tokio::runtime::Runtime,
        differ: &Differ,
        desc: &Descriptor,
        mounts: &[Mount],
    ) -> Result<Descriptor, Status> {
        let r = ApplyRequest { diff: Some(desc.clone()), mounts: mounts.to_vec(), ..Default::default() };
        let answer = rt.block_on(diff_server::Diff::apply(differ, Request::new(r)))?;
        answer.into_inner().applied.ok_or_else(|| Status::internal("no descriptor answered"))
    }

    /// A gzip blob whose Docker media type names no compression is unpacked into an empty active
    /// snapshot and answered by the tar's digest; a snapshot that holds files, mounts that are no
    /// snapshot of strata's and a blob that is not its descriptor's size are not unpacked, and
    /// the last leaves the snapshot removable.
    #[test]
    fn a_layer_is_unpacked_into_an_empty_active_snapshot_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let service = Service::new(Snapshots::open(&dir.path().join("store"))?);
        let containerd = dir.path().join("containerd");
        let differ = Differ::new(service.snapshots(), &containerd);
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let prepare = |key: &str| -> Result<Vec<Mount>, Status> {
            let r = PrepareSnapshotRequest { key: key.into(), ..Default::default() };
            Ok(rt.block_on(service.prepare(Request::new(r)))?.into_inner().mounts)
        };

        let tar = layer_tar()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar)?;
        let blob = gz.finish()?;
        let digest = Digest::of(Algorithm::Sha256, &blob);
        let blobs = containerd.join("io.containerd.content.v1.content/blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        std::fs::write(blobs.join(digest.hex()), &blob)?;
        let desc = Descriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            digest: digest.to_string(),
            size: i64::try_from(blob.len())?,
            annotations: Default::default(),
        };

        let mounts = prepare("extract-1 a")?;
        let applied = apply(&rt, &differ, &desc, &mounts)?;
        assert_eq!(applied.digest, Digest::of(Algorithm::Sha256, &tar).to_string());
        assert_eq!((applied.size, applied.media_type.as_str()), (i64::try_from(tar.len())?, TAR));
        let tree = PathBuf::from(&mounts[0].source);
        assert_eq!(std::fs::read(tree.join("etc/hello"))?, b"hi\n");

        let again = apply(&rt, &differ, &desc, &mounts).expect_err("a tree holding files");
        assert_eq!(again.code(), tonic::Code::Unimplemented, "{again:?}");
        let elsewhere = Mount { r#type: "bind".into(), source: dir.path().display().to_string(), ..Default::default() };
        let other = apply(&rt, &differ, &desc, &[elsewhere]).expect_err("mounts of no snapshot of strata's");
        assert_eq!(other.code(), tonic::Code::Unimplemented, "{other:?}");

        let mounts = prepare("extract-2 b")?;
        let short = Descriptor { size: desc.size + 1, ..desc.clone() };
        let bad = apply(&rt, &differ, &short, &mounts).expect_err("a blob shorter than its descriptor");
        assert!(bad.message().contains("not the descriptor's"), "{bad:?}");
        let remove = RemoveSnapshotRequest { key: "extract-2 b".into(), ..Default::default() };
        rt.block_on(service.remove(Request::new(remove)))?;
        Ok(())
    }
}
