//! Image size of one application set, stored four ways: strata's layer store (layer dedup, and
//! layer and file dedup), containerd's content store, one qcow2 disk per application, and qcow2
//! overlays on one shared backing file.
//!
//! The set: a base layer — Debian bookworm minbase from debootstrap (cached under
//! `<repo>/.cache/bench/`) in a full run, busybox-static and its applet links in a short run or
//! where debootstrap cannot run —, a runtime layer shared by every application (a pseudo-random
//! "library"), and per application a layer with its script, its own data and a helper file that
//! is byte-identical across applications (only file dedup shares it). Contents are pseudo-random
//! so compression cannot hide their size.
//!
//! A second set puts each application on its own rebuild of the base (the same files; new mtimes
//! on its directories and on the files a rebuild regenerates, so every base layer has a digest of
//! its own), stored in strata's store and in containerd with either snapshotter.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use layerstore::{Algorithm, Digest, Store};
use serde_json::json;

use super::{ImageFigure, ImageRow, Options, Outcome, progress};

/// The systems of the image table, as the report names them.
pub const SYSTEMS: [&str; 6] = [
    "strata store, layer dedup",
    "strata store, layer + file dedup",
    "containerd content store + snapshots",
    "containerd + strata's snapshotter",
    "qcow2 disk per app",
    "qcow2 overlays on a shared backing file",
];

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Writes the trees of the layers under `work`: `base`, `runtime` and `app<i>`. Returns what the
/// base is.
fn write_layer_trees(work: &Path, apps: usize, short: bool) -> Result<String, String> {
    let base = work.join("base");
    let mut what = "busybox-static and its applet links".to_string();
    if !short {
        match crate::images::debian_rootfs_tar().and_then(|tar| crate::images::extract_rootfs(&tar, &base)) {
            Ok(()) => what = "Debian bookworm minbase (debootstrap --variant=minbase)".into(),
            Err(e) => {
                progress(format_args!("images: no Debian base ({e}); using busybox"));
                let _ = std::fs::remove_dir_all(&base);
                what = format!("busybox-static (Debian minbase unavailable: {e})");
            }
        }
    }
    if base.exists() {
        write_app_trees(work, apps, short)?;
        return Ok(what);
    }
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        io("mkdir", std::fs::create_dir_all(base.join(d)))?;
    }
    io("/bin/busybox", std::fs::copy("/bin/busybox", base.join("bin/busybox")))?;
    for applet in ["sh", "true", "sleep", "echo", "cat", "ls", "httpd", "wget"] {
        io("symlink", std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)))?;
    }
    io("etc", std::fs::write(base.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n"))?;
    write_app_trees(work, apps, short)?;
    Ok(what)
}

/// The runtime and application trees (`runtime`, `app<i>`) under `work`.
fn write_app_trees(work: &Path, apps: usize, short: bool) -> Result<(), String> {
    let kib = |n: usize| n * 1024;
    let (runtime_len, data_len, helper_len) =
        if short { (kib(1024), kib(256), kib(256)) } else { (kib(4096), kib(1024), kib(1024)) };
    let runtime = work.join("runtime/usr/lib/runtime");
    io("mkdir", std::fs::create_dir_all(&runtime))?;
    io("runtime", std::fs::write(runtime.join("libruntime.so"), pseudo_random(1, runtime_len)))?;
    for i in 0..apps {
        let app = work.join(format!("app{i}/app"));
        io("mkdir", std::fs::create_dir_all(&app))?;
        io("app", std::fs::write(app.join("run.sh"), format!("#!/bin/sh\necho app {i}\nexec sleep 100000\n")))?;
        io("app", std::fs::write(app.join("data.bin"), pseudo_random(100 + i as u64, data_len)))?;
        io("app", std::fs::write(app.join("helper.bin"), pseudo_random(2, helper_len)))?;
    }
    Ok(())
}

/// A gzip-compressed layer tar of `dir`: (compressed bytes, diff id).
fn layer_blob(dir: &Path) -> Result<(Vec<u8>, Digest), String> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    io("tar", tar.append_dir_all(".", dir))?;
    let raw = io("tar", tar.into_inner())?;
    let diff_id = Digest::of(Algorithm::Sha256, &raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    io("gzip", gz.write_all(&raw))?;
    Ok((io("gzip", gz.finish())?, diff_id))
}

struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = Digest::of(Algorithm::Sha256, &bytes);
        Blob { bytes, digest }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({ "mediaType": media_type, "digest": self.digest.to_string(), "size": self.bytes.len() })
    }
}

/// Writes an OCI image layout per application under `work/oci/app<i>`; returns the layouts and
/// the bytes of the distinct blobs (what a pull of the whole set transfers).
fn write_layouts(work: &Path, apps: usize) -> Result<(Vec<PathBuf>, u64), String> {
    let (base, base_id) = layer_blob(&work.join("base"))?;
    write_layouts_on(work, "oci", apps, &[(Blob::new(base), base_id)])
}

/// [`write_layouts`] for the second set: application i on its own rebuild of the base (the
/// same files; its directories, and the files a rebuild regenerates, with a new mtime), under
/// `work/oci-rebuilt/app<i>`. Changes the base tree's mtimes.
fn write_rebuilt_layouts(work: &Path, apps: usize) -> Result<(Vec<PathBuf>, u64), String> {
    let mut bases = Vec::new();
    for i in 0..apps {
        let tar = work.join(format!("rebuilt-base{i}.tar"));
        crate::images::rebuilt_base_tar(&work.join("base"), i as u32 + 1, &tar)?;
        let raw = io("rebuilt base", std::fs::read(&tar))?;
        io("rebuilt base", std::fs::remove_file(&tar))?;
        let diff_id = Digest::of(Algorithm::Sha256, &raw);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io("gzip", gz.write_all(&raw))?;
        bases.push((Blob::new(io("gzip", gz.finish())?), diff_id));
    }
    write_layouts_on(work, "oci-rebuilt", apps, &bases)
}

/// The layouts of one set under `work/<dir>/app<i>`: application i on `bases[i]` (or the one
/// base), the shared runtime and its own layer.
fn write_layouts_on(
    work: &Path,
    dir: &str,
    apps: usize,
    bases: &[(Blob, Digest)],
) -> Result<(Vec<PathBuf>, u64), String> {
    let (runtime, runtime_id) = layer_blob(&work.join("runtime"))?;
    let runtime = (Blob::new(runtime), runtime_id);
    let mut distinct = std::collections::BTreeMap::new();
    let mut layouts = Vec::new();
    for i in 0..apps {
        let (app, app_id) = layer_blob(&work.join(format!("app{i}")))?;
        let app = (Blob::new(app), app_id);
        let base = &bases[i.min(bases.len() - 1)];
        let layers: Vec<&(Blob, Digest)> = [base, &runtime, &app].into_iter().collect();
        let config = Blob::new(
            json!({
                "architecture": layerstore::host_arch(), "os": "linux",
                "config": { "Cmd": ["/app/run.sh"] },
                "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>() },
            })
            .to_string()
            .into_bytes(),
        );
        let manifest = Blob::new(
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config.descriptor("application/vnd.oci.image.config.v1+json"),
                "layers": layers.iter().map(|(b, _)| b.descriptor("application/vnd.oci.image.layer.v1.tar+gzip")).collect::<Vec<_>>(),
            })
            .to_string()
            .into_bytes(),
        );
        let dir = work.join(format!("{dir}/app{i}"));
        let blobs = dir.join("blobs/sha256");
        io("mkdir", std::fs::create_dir_all(&blobs))?;
        for b in layers.iter().map(|(b, _)| b).chain([&config, &manifest]) {
            io("blob", std::fs::write(blobs.join(b.digest.hex()), &b.bytes))?;
            distinct.insert(b.digest.to_string(), b.bytes.len() as u64);
        }
        io("oci-layout", std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#))?;
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest.digest.to_string(),
                "size": manifest.bytes.len(),
                "annotations": { "org.opencontainers.image.ref.name": format!("strata-report/app{i}:latest") },
            }],
        });
        io("index.json", std::fs::write(dir.join("index.json"), index.to_string()))?;
        layouts.push(dir);
    }
    Ok((layouts, distinct.values().sum()))
}

/// Imports every layout into a fresh store and reads its disk usage.
fn strata_store(
    store_dir: &Path,
    layouts: &[PathBuf],
    transfer: u64,
) -> Result<(ImageFigure, ImageFigure, String), String> {
    let store = Store::open(store_dir).map_err(|e| e.to_string())?;
    // as `strata image import` stores images by default: layer blobs dropped, tar splits kept
    let lean = layerstore::ImportOptions { drop_layer_blobs: true };
    for (i, l) in layouts.iter().enumerate() {
        store
            .import_with(l, Some(&format!("strata-report/app{i}:latest")), lean)
            .map_err(|e| format!("layerstore import: {e}"))?;
    }
    let du = store.du().map_err(|e| format!("layerstore du: {e}"))?;
    let layer_only =
        ImageFigure { on_disk: du.on_disk_bytes + du.saved_by_file_dedup, transfer, logical: du.logical_bytes };
    let both = ImageFigure { on_disk: du.on_disk_bytes, transfer, logical: du.logical_bytes };
    let note = format!(
        "`layerstore::Store::import_with` as `strata image import` does by default (layer blobs dropped once unpacked, \
         tar splits kept so export rebuilds each layer) + `du`: {} images, {} snapshots; layer dedup saves {}, file dedup {} \
         more; tar splits {}, blobs kept {} (manifests, configs)",
        du.images,
        du.snapshots,
        super::markdown::mib(du.saved_by_layer_dedup),
        super::markdown::mib(du.saved_by_file_dedup),
        super::markdown::mib(du.split_bytes),
        super::markdown::mib(du.blob_bytes),
    );
    Ok((layer_only, both, note))
}

fn allocated(path: &Path) -> Result<u64, String> {
    Ok(io("stat", std::fs::metadata(path))?.blocks() * 512)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed: {}", cmd.get_program(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Copies the trees `parts` (under `work`) into `dest` with the kernel at /boot/vmlinuz.
fn flatten(work: &Path, parts: &[String], dest: &Path, kernel: &Path) -> Result<(), String> {
    io("mkdir", std::fs::create_dir_all(dest.join("boot")))?;
    for p in parts {
        run(Command::new("cp").arg("-a").arg(work.join(p).join(".")).arg(dest))?;
    }
    io("kernel", std::fs::copy(kernel, dest.join("boot/vmlinuz")))?;
    Ok(())
}

/// An ext4 image of `dir` (fixed UUID, hash seed and time so images of similar trees share blocks).
fn mkfs(dir: &Path, raw: &Path, size_mib: u64) -> Result<(), String> {
    const UUID: &str = "5a7a7a00-0000-4000-8000-000000000001";
    run(Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", "1")
        .args(["-q", "-F", "-t", "ext4", "-U", UUID, "-E"])
        .arg(format!("hash_seed={UUID}"))
        .arg("-d")
        .arg(dir)
        .arg(raw)
        .arg(format!("{size_mib}M")))
}

/// Writes the tree `tree` into the root of the ext4 image `raw` with `debugfs -w` (directories,
/// regular files and symlinks), then checks the file system with `e2fsck -fn` and reads one file
/// back, so a silently failed write cannot shrink the figures.
fn install_tree(raw: &Path, tree: &Path) -> Result<(), String> {
    fn walk(dir: &Path, rel: &str, cmds: &mut String, files: &mut Vec<(String, PathBuf)>) -> Result<(), String> {
        let mut entries: Vec<_> = io("read_dir", std::fs::read_dir(dir))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(['"', ' ', '\n']) {
                return Err(format!(
                    "{}: names with quotes or spaces are not written by debugfs here",
                    e.path().display()
                ));
            }
            let target = format!("{rel}/{name}");
            let ft = io("stat", e.file_type())?;
            if ft.is_dir() {
                cmds.push_str(&format!("mkdir {target}\n"));
                walk(&e.path(), &target, cmds, files)?;
            } else if ft.is_symlink() {
                let link = io("readlink", std::fs::read_link(e.path()))?;
                cmds.push_str(&format!("symlink {target} {}\n", link.display()));
            } else {
                cmds.push_str(&format!("write {} {target}\n", e.path().display()));
                files.push((target, e.path()));
            }
        }
        Ok(())
    }
    let mut cmds = String::new();
    let mut files = Vec::new();
    walk(tree, "", &mut cmds, &mut files)?;
    let script = raw.with_extension("debugfs");
    io("debugfs script", std::fs::write(&script, cmds))?;
    run(Command::new("debugfs").env("E2FSPROGS_FAKE_TIME", "1").args(["-w", "-f"]).arg(&script).arg(raw))?;
    let _ = std::fs::remove_file(&script);
    run(Command::new("e2fsck").args(["-fn"]).arg(raw))?;
    if let Some((inside, host)) = files.first() {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {inside}")])
            .arg(raw)
            .output()
            .map_err(|e| format!("debugfs: {e}"))?;
        if out.stdout != io("read", std::fs::read(host))? {
            return Err(format!("debugfs did not write {inside} into {}", raw.display()));
        }
    }
    Ok(())
}

fn du_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// qcow2 disks: one per app, and overlays on a shared backing file.
fn qcow2_disks(work: &Path, apps: usize, kernel: &Path) -> Result<(ImageFigure, ImageFigure, u64), String> {
    for tool in ["mke2fs", "qemu-img"] {
        if Command::new(tool).arg("--help").output().is_err() {
            return Err(format!("`{tool}` is not installed (apt-get install e2fsprogs qemu-utils)"));
        }
    }
    let disks = work.join("disks");
    io("mkdir", std::fs::create_dir_all(&disks))?;
    let base_parts = vec!["base".to_string(), "runtime".to_string()];
    let base_root = disks.join("root-base");
    flatten(work, &base_parts, &base_root, kernel)?;
    // One size for every disk (the base plus the largest app plus room).
    let largest_app = (0..apps).map(|i| du_bytes(&work.join(format!("app{i}")))).max().unwrap_or(0);
    let size_mib = (du_bytes(&base_root) + largest_app) * 3 / 2 / (1024 * 1024) + 16;
    let base_raw = disks.join("base.raw");
    let base_qcow = disks.join("base.qcow2");
    mkfs(&base_root, &base_raw, size_mib)?;
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&base_raw).arg(&base_qcow))?;
    let mut per_app = ImageFigure::default();
    let mut shared = ImageFigure {
        on_disk: allocated(&base_qcow)?,
        transfer: io("stat", std::fs::metadata(&base_qcow))?.len(),
        logical: 0,
    };
    for i in 0..apps {
        progress(format_args!("images: qcow2 disks for app {}/{apps}", i + 1));
        // The app is installed into a clone of the base disk, as a VM image is derived from a
        // base image: its disk differs from the base only where the app went.
        let raw = disks.join(format!("app{i}.raw"));
        run(Command::new("cp").arg("--sparse=always").arg(&base_raw).arg(&raw))?;
        install_tree(&raw, &work.join(format!("app{i}")))?;
        let qcow = disks.join(format!("app{i}.qcow2"));
        run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow))?;
        let overlay = disks.join(format!("app{i}-overlay.qcow2"));
        // An empty overlay on the app's own disk, rebased onto the shared base: `rebase` copies
        // into the overlay exactly the clusters where the app's disk differs from the base.
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&raw).arg(&overlay))?;
        run(Command::new("qemu-img")
            .args(["rebase", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base_qcow)
            .arg(&overlay))?;
        io("remove", std::fs::remove_file(&raw))?;
        per_app.on_disk += allocated(&qcow)?;
        per_app.transfer += io("stat", std::fs::metadata(&qcow))?.len();
        shared.on_disk += allocated(&overlay)?;
        shared.transfer += io("stat", std::fs::metadata(&overlay))?.len();
    }
    per_app.logical = per_app.on_disk;
    shared.logical = per_app.on_disk;
    Ok((per_app, shared, size_mib))
}

/// The systems of the rebuilt-bases table: the ones file dedup can differ in.
pub const REBUILT_SYSTEMS: [&str; 3] = [SYSTEMS[1], SYSTEMS[2], SYSTEMS[3]];

/// The image-size rows of both sets: five applications on one base, then five on their own
/// rebuilds of it ([`REBUILT_SYSTEMS`]).
pub fn image_rows(opts: &Options, kernel: Option<&Path>) -> (Vec<ImageRow>, Vec<ImageRow>) {
    let apps = opts.apps();
    progress(format_args!("images: building {apps} applications"));
    let prepared = (|| {
        let work = tempfile::Builder::new().prefix("strata-report-images-").tempdir().map_err(|e| e.to_string())?;
        let base = write_layer_trees(work.path(), apps, opts.short)?;
        progress("images: packing the layers");
        let (layouts, transfer) = write_layouts(work.path(), apps)?;
        Ok::<_, String>((work, layouts, transfer, base))
    })();
    let (work, layouts, transfer, base) = match prepared {
        Ok(p) => p,
        Err(e) => return (unavailable(&SYSTEMS, &e), unavailable(&REBUILT_SYSTEMS, &e)),
    };
    let mut rows = Vec::new();
    progress("images: strata's layer store");
    match strata_store(&work.path().join("store"), &layouts, transfer) {
        Ok((layer_only, both, note)) => {
            rows.push(ImageRow {
                system: SYSTEMS[0].into(),
                note: format!("base layer: {base}; on disk = `du` on-disk bytes + what file dedup saved"),
                outcome: Outcome::Measured(layer_only),
            });
            rows.push(ImageRow { system: SYSTEMS[1].into(), note, outcome: Outcome::Measured(both) });
        }
        Err(e) => rows.extend(unavailable(&SYSTEMS[..2], &e)),
    }
    progress("images: containerd's content store");
    let logical = rows.iter().find_map(|r| r.outcome.measured().map(|f| f.logical)).unwrap_or(0);
    for (system, strata_snapshotter) in [(SYSTEMS[2], false), (SYSTEMS[3], true)] {
        rows.push(match super::containerd::content_store(&layouts, transfer, logical, strata_snapshotter) {
            Ok((figure, note)) => ImageRow { system: system.into(), note, outcome: Outcome::Measured(figure) },
            Err(e) => unavailable_row(system, &e),
        });
    }
    progress("images: qcow2 disks");
    let qcow = match kernel {
        Some(k) => qcow2_disks(work.path(), apps, k),
        None => Err("no cached guest kernel to put in /boot".into()),
    };
    match qcow {
        Ok((per_app, shared, size_mib)) => {
            rows.push(ImageRow {
                system: SYSTEMS[4].into(),
                note: format!(
                    "{apps} × ext4 ({size_mib} MiB: the base made with `mke2fs -d`, kernel in /boot, cloned and the app written in with `debugfs`) → `qemu-img convert -O qcow2`"
                ),
                outcome: Outcome::Measured(per_app),
            });
            rows.push(ImageRow {
                system: SYSTEMS[5].into(),
                note: "base.qcow2 (base + runtime + kernel) + per app an overlay holding only the clusters where the app's disk (a clone of the base disk with the app written in by `debugfs`) differs from the base (`qemu-img rebase` onto base.qcow2)".into(),
                outcome: Outcome::Measured(shared),
            });
        }
        Err(e) => rows.extend(unavailable(&SYSTEMS[4..], &e)),
    }
    let rebuilt = rebuilt_rows(work.path(), apps);
    (rows, rebuilt)
}

/// A row saying that `system` could not be measured, and why.
fn unavailable_row(system: &str, why: &str) -> ImageRow {
    ImageRow { system: system.to_string(), note: "-".into(), outcome: Outcome::Unavailable(why.to_string()) }
}

/// [`unavailable_row`] for each of `systems`.
fn unavailable(systems: &[&str], why: &str) -> Vec<ImageRow> {
    systems.iter().map(|s| unavailable_row(s, why)).collect()
}

/// The second set: each application on its own rebuild of the base, in strata's store and in
/// containerd with either snapshotter (packed last: it changes the base tree's mtimes).
fn rebuilt_rows(work: &Path, apps: usize) -> Vec<ImageRow> {
    progress("images: packing the rebuilt bases");
    let (layouts, transfer) = match write_rebuilt_layouts(work, apps) {
        Ok(l) => l,
        Err(e) => return unavailable(&REBUILT_SYSTEMS, &e),
    };
    let mut rows = Vec::new();
    progress("images: rebuilt bases in strata's layer store");
    rows.push(match strata_store(&work.join("store-rebuilt"), &layouts, transfer) {
        Ok((_, both, note)) => ImageRow { system: SYSTEMS[1].into(), note, outcome: Outcome::Measured(both) },
        Err(e) => unavailable_row(SYSTEMS[1], &e),
    });
    let logical = rows[0].outcome.measured().map_or(0, |f| f.logical);
    for (system, strata_snapshotter) in [(SYSTEMS[2], false), (SYSTEMS[3], true)] {
        progress(format_args!("images: rebuilt bases in containerd ({system})"));
        rows.push(match super::containerd::content_store(&layouts, transfer, logical, strata_snapshotter) {
            Ok((figure, note)) => ImageRow { system: system.into(), note, outcome: Outcome::Measured(figure) },
            Err(e) => unavailable_row(system, &e),
        });
    }
    rows
}
