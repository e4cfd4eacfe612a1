//! containerd's rows: start time of strata (its shim), runc (containerd's runc v2 shim) and crun
//! (the runc shim with `--runc-binary crun`) as `ctr run --rm` drives them, and the bytes
//! containerd's content store and snapshots take for the image-size application set, with its
//! overlayfs snapshotter and with strata's. Each uses a
//! private containerd ([`crate::containerd::Containerd`]) that is stopped, and its mounts undone,
//! when the measurement ends, also on error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ImageFigure, MemRow, Options, Outcome, StartRow, StartStats, procmem, progress};
use crate::containerd::{Containerd, Peer, disk_usage, peers, shim_binary, shim_pid};

/// The systems of this family, as the report names them.
pub const SYSTEMS: [&str; 3] = ["strata via containerd", "runc via containerd", "crun via containerd"];

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(peer: &Peer) -> String {
    format!("report-{}-{}-{}", peer.name, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn system_name(peer: &Peer) -> String {
    format!("{} via containerd", peer.name)
}

fn mode_of(peer: &Peer) -> String {
    let shim = match peer.name {
        "strata" => "strata's shim (`io.containerd.strata.v1`)",
        "crun" => "runc v2 shim, `--runc-binary crun`",
        _ => "runc v2 shim (`io.containerd.runc.v2`)",
    };
    format!("`ctr run --rm --cpu-shares 0`, {shim}")
}

/// A private containerd with strata's shim first on its PATH.
fn start_containerd() -> Result<Containerd, String> {
    let shim = shim_binary()?;
    let dir = shim.parent().ok_or_else(|| format!("{} has no directory", shim.display()))?;
    Containerd::start(Some(dir))
}

/// One round for one peer: `/bin/true` start to exit, `echo ready` first byte and exit, and
/// the HTTP server's first answer, ms.
fn one_round(ctd: &Containerd, peer: &Peer) -> Result<(f64, f64, f64, f64), String> {
    let t = ctd.run(peer, &["--rm"], &next_id(peer), &["/bin/true"])?;
    let (first, exit) = ctd.run_first_byte(peer, &next_id(peer), &["echo", "ready"])?;
    let http = ctd.run_http(peer, &next_id(peer))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    Ok((ms(t), ms(first), ms(exit), ms(http)))
}

/// The containerd rows of the start-time table; strata, runc and crun interleaved round by round.
pub fn start_rows(opts: &Options) -> Vec<StartRow> {
    let peers = peers();
    let unavailable = |reason: &str| -> Vec<StartRow> {
        peers
            .iter()
            .map(|p| StartRow {
                system: system_name(p),
                mode: mode_of(p),
                outcome: Outcome::Unavailable(reason.to_string()),
            })
            .collect()
    };
    progress("start: private containerd");
    let ctd = match start_containerd().and_then(|c| c.import_busybox().map(|()| c)) {
        Ok(c) => c,
        Err(e) => return unavailable(&e),
    };
    // A warm-up run that also tells whether the runtime works here (crun refuses hybrid cgroups).
    let mut stats: Vec<Result<StartStats, String>> =
        peers.iter().map(|p| one_round(&ctd, p).map(|_| StartStats::default())).collect();
    let rounds = opts.containerd_rounds();
    for round in 0..rounds {
        progress(format_args!("start: containerd round {}/{rounds}", round + 1));
        for (peer, st) in peers.iter().zip(stats.iter_mut()) {
            let Ok(s) = st else { continue };
            match one_round(&ctd, peer) {
                Ok(round) => s.record(round),
                Err(e) => *st = Err(format!("failed in round {}: {e}", round + 1)),
            }
        }
    }
    drop(ctd);
    peers
        .iter()
        .zip(stats)
        .map(|(p, s)| StartRow { system: system_name(p), mode: mode_of(p), outcome: s.into() })
        .collect()
}

/// Memory of one sleeping busybox container per shim: the shim process plus the container's
/// processes under it (`ctr run --detach`), as containerd leaves them running.
pub fn memory_rows() -> Vec<MemRow> {
    let peers = peers();
    progress("memory: private containerd");
    let ctd = start_containerd().and_then(|c| c.import_busybox().map(|()| c));
    peers
        .iter()
        .map(|peer| {
            progress(format_args!("memory: {} via containerd", peer.name));
            let r = ctd.as_ref().map_err(Clone::clone).and_then(|ctd| {
                let id = next_id(peer);
                ctd.run(peer, &["--detach"], &id, &["sleep", "100000"])?;
                std::thread::sleep(std::time::Duration::from_millis(300));
                let shim = shim_pid(peer.shim, &id).ok_or_else(|| format!("no {} process for {id}", peer.shim))?;
                let pids = procmem::tree(shim as u32);
                let shim_mem = procmem::process_memory(shim as u32)?;
                let total = procmem::sum_memory(&pids)?;
                let _ = ctd.ctr(&["task", "delete", "--force", &id]);
                let _ = ctd.ctr(&["containers", "rm", &id]);
                let note = format!(
                    "`{}` ({} RSS, {} PSS alone) and the {} container process(es) under it",
                    peer.shim,
                    super::markdown::kib_as_mib(shim_mem.rss_kib),
                    super::markdown::kib_as_mib(shim_mem.pss_kib),
                    pids.len() - 1
                );
                Ok::<_, String>((total, note))
            });
            match r {
                Ok((total, note)) => MemRow { system: system_name(peer), note, outcome: Outcome::Measured(total) },
                Err(e) => MemRow { system: system_name(peer), note: "-".into(), outcome: Outcome::Unavailable(e) },
            }
        })
        .collect()
}

/// Packs an OCI image layout into the archive `ctr images import` reads.
fn archive(layout: &Path, out: &Path) -> Result<(), String> {
    let st = Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if st.success() { Ok(()) } else { Err(format!("tar of {} failed: {st}", layout.display())) }
}

/// Imports every OCI layout with `ctr images import` into a fresh containerd and returns the bytes
/// it takes on disk, each inode counted once: with its overlayfs snapshotter (`strata_snapshotter`
/// false) its root (blobs, unpacked snapshots, metadata.db); with strata's snapshotter (true) its
/// root and the snapshotter's store. `transfer` and `logical` are the set's figures, the same as
/// for strata's store.
pub fn content_store(
    layouts: &[PathBuf],
    transfer: u64,
    logical: u64,
    strata_snapshotter: bool,
) -> Result<(ImageFigure, String), String> {
    let (mut ctd, snapshotter) = if strata_snapshotter {
        let bin = crate::containerd::snapshotter_binary()?;
        (Containerd::start_with_snapshotter(&bin)?, "strata")
    } else {
        (start_containerd()?, "overlayfs")
    };
    let on_disk = |ctd: &Containerd| -> Result<u64, String> {
        let store = if strata_snapshotter { disk_usage(&ctd.snapshotter_store())? } else { 0 };
        Ok(disk_usage(&ctd.root())? + store)
    };
    let empty = on_disk(&ctd)?;
    for (i, layout) in layouts.iter().enumerate() {
        progress(format_args!("images: ctr images import --snapshotter {snapshotter} app {}/{}", i + 1, layouts.len()));
        let tar = ctd.scratch().join(format!("app{i}.tar"));
        archive(layout, &tar)?;
        ctd.import_into(&tar, snapshotter)?;
        std::fs::remove_file(&tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    }
    let images = ctd.ctr(&["images", "ls", "-q"])?;
    let names = String::from_utf8_lossy(&images.stdout).lines().count();
    let snapshots = ctd.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"])?;
    let snaps = String::from_utf8_lossy(&snapshots.stdout).lines().skip(1).count();
    // (strata's snapshotter pools a layer's files after its commit answers: stopped, it has
    // finished)
    ctd.stop_snapshotter()?;
    let total = on_disk(&ctd)?;
    drop(ctd);
    let what = if strata_snapshotter {
        "strata's snapshotter (`strata snapshotter`, files pooled after each commit); on disk = its root (blobs, metadata.db) \
         and the snapshotter's store (snapshots, the file pool)"
    } else {
        "overlayfs snapshotter; on disk = its root (blobs, unpacked snapshots, metadata.db)"
    };
    let note = format!(
        "`ctr images import --snapshotter {snapshotter}` of the same OCI archives into a private containerd, {what}: \
         {names} images, {snaps} snapshots; hardlinked inodes counted once, minus the {} an empty one takes",
        super::markdown::mib(empty)
    );
    Ok((ImageFigure { on_disk: total.saturating_sub(empty), transfer, logical }, note))
}
