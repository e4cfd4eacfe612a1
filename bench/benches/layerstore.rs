//! The image store on real images: a Debian bookworm minbase rootfs (debootstrap, cached under
//! `<repo>/.cache/bench/`) as a gzip layer, plus five ~30 MB application layers.
//!
//! Protects three figures, each measured against containerd in the same run:
//! - import + unpack of the base image: strata ≤ 1.0× `ctr images import` (containerd unpacks into
//!   its overlayfs snapshotter on import); plain `tar -xzf` of the layer is printed as the floor;
//! - bytes on disk for five applications on one shared base: strata ≤ 0.75× containerd's root
//!   (content store + snapshots + metadata);
//! - the same for five images whose bases were rebuilt separately (same files, new digests):
//!   strata ≤ 0.5× containerd's.
//!
//! containerd with strata's snapshotter (`[proxy_plugins.strata]`, its differ unpacking the layers
//! as `[proxy_plugins.strata-diff]`; `STRATA_BENCH_DIFFER=containerd` leaves that to containerd's
//! own) is measured beside containerd with its overlayfs snapshotter: import time (target ≤ 1.0×) and bytes on disk (containerd's
//! root plus the snapshotter's store; target on rebuilt bases ≤ 0.4×). An import is timed until
//! `ctr` returns; strata's snapshotter then finishes what follows its answers (the adoption of the
//! last layer into the pool, the pool links) and stops before the next measurement.
//!
//! The bytes on disk are printed for strata's default (compressed layer blobs removed once
//! unpacked, tar splits kept so `export` rebuilds each layer; targets ≤ 0.7× and ≤ 0.35×) and for
//! `image import --keep-blobs` (the blobs kept, so `export` reproduces every digest).
//!
//! Each round uses a fresh store and a fresh private containerd (own root, state and socket, CRI
//! disabled; `$STRATA_CONTAINERD` picks another binary). Everything is written on a fresh ext4
//! with a journal, loop-mounted for the run ([`strata_bench::scratch`]: the VMs' own disk is ext4
//! without one, where files created after a large deletion cost 20 times more). Rounds: env STRATA_BENCH_ROUNDS
//! (default 9: the import times' rounds); `STRATA_BENCH_IMPORT_ONLY=1` measures the import times alone. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use layerstore::{ImportOptions, Store};
use strata_bench::containerd::Containerd;
use strata_bench::images::{
    LayerBlob, app_layer_tar, debian_rootfs_tar, disk_usage, extract_rootfs, gzip_layer, rebuilt_base_tar,
    write_oci_archive,
};
use strata_bench::{median, scratch};

const APPS: u32 = 5;
/// gzip level of every layer (what docker and buildkit use).
const GZIP_LEVEL: u32 = 6;

/// The images every measurement reads, built once per run under a temp directory.
struct Images {
    _work: tempfile::TempDir,
    /// The base layer's blob (for `tar -xzf`).
    base: LayerBlob,
    /// The base alone.
    base_archive: PathBuf,
    /// Set (a): application i on the shared base.
    shared: Vec<PathBuf>,
    /// Set (b): application i on its own rebuild of the base.
    rebuilt: Vec<PathBuf>,
}

fn build_images() -> Result<Images, String> {
    let rootfs_tar = debian_rootfs_tar()?;
    let work = tempfile::Builder::new()
        .prefix("strata-bench-images-")
        .tempdir_in(scratch::dir())
        .map_err(|e| format!("tempdir: {e}"))?;
    let w = work.path();
    let rootfs = w.join("rootfs");
    extract_rootfs(&rootfs_tar, &rootfs)?;
    // App layers read the base's files; build their tars before the rebuilds touch mtimes.
    let mut tars = vec![(rootfs_tar.clone(), w.join("base.gz"))];
    for app in 1..=APPS {
        tars.push((app_layer_tar(&rootfs, app, &w.join(format!("app{app}.tar")))?, w.join(format!("app{app}.gz"))));
    }
    for build in 1..=APPS {
        let tar = rebuilt_base_tar(&rootfs, build, &w.join(format!("base{build}.tar")))?;
        tars.push((tar, w.join(format!("base{build}.gz"))));
    }
    // Compress on every core: gzip is most of the setup time.
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut blobs: Vec<Option<LayerBlob>> = vec![None; tars.len()];
    for chunk in tars.iter().zip(blobs.iter_mut()).collect::<Vec<_>>().chunks_mut(jobs) {
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = chunk
                .iter_mut()
                .map(|((tar, gz), slot)| s.spawn(move || gzip_layer(tar, gz, GZIP_LEVEL).map(|b| **slot = Some(b))))
                .collect();
            for h in handles {
                h.join().map_err(|_| "gzip thread panicked".to_string())??;
            }
            Ok(())
        })?;
    }
    let blobs: Vec<LayerBlob> = blobs.into_iter().map(|b| b.ok_or("missing layer")).collect::<Result<_, _>>()?;
    let (base, rest) = blobs.split_first().ok_or("no layers")?;
    let (apps, bases) = rest.split_at(APPS as usize);
    let archive = |name: &str, layers: &[&LayerBlob]| -> Result<PathBuf, String> {
        let out = w.join(format!("{name}.oci.tar"));
        write_oci_archive(&w.join(format!("{name}.layout")), &format!("docker.io/library/{name}:bench"), layers, &out)?;
        Ok(out)
    };
    let base_archive = archive("debian", &[base])?;
    let mut shared = Vec::new();
    let mut rebuilt = Vec::new();
    for (i, (app, own_base)) in apps.iter().zip(bases).enumerate() {
        shared.push(archive(&format!("app{}", i + 1), &[base, app])?);
        rebuilt.push(archive(&format!("rebuilt{}", i + 1), &[own_base, app])?);
    }
    // The uncompressed tars and the extracted rootfs are not needed any more.
    let _ = std::process::Command::new("rm").arg("-rf").arg(&rootfs).status();
    for (tar, _) in tars.iter().skip(1) {
        let _ = std::fs::remove_file(tar);
    }
    Ok(Images { base: base.clone(), base_archive, shared, rebuilt, _work: work })
}

fn fresh_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new().prefix(prefix).tempdir_in(scratch::dir()).map_err(|e| format!("tempdir: {e}"))
}

/// Imports `archive` into a fresh store; returns the time and the store's directory.
fn strata_import(archive: &Path) -> Result<(Duration, tempfile::TempDir), String> {
    let dir = fresh_dir("strata-bench-store-")?;
    let t = Instant::now();
    let store = Store::open(&dir.path().join("store")).map_err(|e| e.to_string())?;
    store.import(archive, None).map_err(|e| format!("strata import {}: {e}", archive.display()))?;
    Ok((t.elapsed(), dir))
}

/// `tar -xzf` of `layer` into a fresh directory; returns the time and the directory.
fn tar_extract(layer: &Path) -> Result<(Duration, tempfile::TempDir), String> {
    let dir = fresh_dir("strata-bench-tar-")?;
    let t = Instant::now();
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["--numeric-owner", "-xzpf"])
        .arg(layer)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return Err(format!("tar -xzf: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok((elapsed, dir))
}

/// Writes every dirty page back, so that one measurement does not pay for the previous one's
/// writeback.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Import + unpack of the base image by strata, containerd and tar, interleaved round by round.
/// Nothing is deleted until every round is done: on ext4 without a journal (these VMs' disks)
/// the inode allocator skips and re-reads inodes deleted in the last minute, so a measurement
/// right after a large deletion pays for it, whichever system it is.
fn import_times(images: &Images, rounds: usize) -> Result<(), String> {
    let snapshotter = strata_bench::containerd::snapshotter_binary()?;
    let mut times: [Vec<Duration>; 4] = Default::default();
    // each containerd import until a view of the layer is answered: overlayfs, strata's snapshotter
    let mut mountable: [Vec<Duration>; 2] = Default::default();
    // (a one-layer image: its chain ID is its diff ID)
    let chain = images.base.diff_id.to_string();
    let mut kept_dirs = Vec::new();
    let mut kept_containerds = Vec::new();
    for round in 0..rounds {
        settle();
        let (t, dir) = strata_import(&images.base_archive)?;
        times[0].push(t);
        kept_dirs.push(dir);
        settle();
        let (t, dir) = tar_extract(&images.base.path)?;
        times[2].push(t);
        kept_dirs.push(dir);
        // containerd with either snapshotter, one after the other, the first in turns
        for with_strata in [round % 2 == 1, round % 2 == 0] {
            settle();
            let (mut ctd, snapshotter, slot) = if with_strata {
                (Containerd::start_with_snapshotter(&snapshotter)?, "strata", 3)
            } else {
                (Containerd::start(None)?, "overlayfs", 1)
            };
            let t = Instant::now();
            ctd.import_into(&images.base_archive, snapshotter)?;
            times[slot].push(t.elapsed());
            // what a container started at once waits for: a view of the layer (strata's
            // snapshotter answers it once the layer's adoption is over)
            let view = ctd.ctr(&["snapshots", "--snapshotter", snapshotter, "view", "probe", &chain])?;
            mountable[usize::from(with_strata)].push(t.elapsed());
            if !view.status.success() {
                return Err(format!("ctr snapshots view: {}", String::from_utf8_lossy(&view.stderr).trim()));
            }
            // What the snapshotter does after its answers (the adoption, the pool links) is over
            // before the next measurement starts, and is not in this one.
            ctd.stop_snapshotter()?;
            kept_containerds.push(ctd);
        }
    }
    drop(kept_containerds);
    drop(kept_dirs);
    for (name, v) in
        ["strata", "ctr images import", "tar -xzf", "ctr images import --snapshotter strata"].iter().zip(&times)
    {
        let v: Vec<String> = v.iter().map(|d| format!("{:.0}", ms(*d))).collect();
        println!("layerstore: {name}, each round (ms): {}", v.join(" "));
    }
    let [s, c, t, cs] = times.clone().map(|mut v| median(&mut v));
    println!(
        "\nlayerstore: import + unpack of debian bookworm minbase ({:.1} MB gzip layer); {rounds} interleaved rounds",
        mb(images.base.size)
    );
    println!("layerstore: strata          median {:>8.1} ms", ms(s));
    println!("layerstore: ctr images import median {:>6.1} ms", ms(c));
    println!("layerstore: tar -xzf          median {:>6.1} ms", ms(t));
    println!("layerstore: ctr images import --snapshotter strata median {:>6.1} ms", ms(cs));
    // Ratios are taken round by round, the middle one reported: the systems of a round run within
    // seconds of each other, on the machine as it is then, while this VM's CPU slows down part way
    // through the rounds, so each median could fall on another side of that change (the ratio of
    // the medians is printed beside).
    let (r, lo, hi) = by_round(&times[0], &times[1]);
    println!(
        "layerstore: ratio strata/containerd = {r:.2} (target ≤ 1.00: {}); round by round {lo:.2}–{hi:.2}; ratio of \
         the medians {:.2}",
        met(r <= 1.0),
        s.as_secs_f64() / c.as_secs_f64()
    );
    let (r, lo, hi) = by_round(&times[0], &times[2]);
    println!(
        "layerstore: ratio strata/tar = {r:.2}; round by round {lo:.2}–{hi:.2}; ratio of the medians {:.2}",
        s.as_secs_f64() / t.as_secs_f64()
    );
    // (the two containerd imports of a round run one right after the other)
    let (r, lo, hi) = by_round(&times[3], &times[1]);
    let (from, to) = middle_interval(&times[3], &times[1]);
    println!(
        "layerstore: ratio containerd with strata's snapshotter / with overlayfs = {r:.3} (target ≤ 1.00: {}); \
         round by round {lo:.2}–{hi:.2}; ratio of the medians {:.3}; 95% interval of the middle ratio (bootstrap \
         over the rounds) {from:.3}–{to:.3}{}",
        met(r <= 1.0),
        cs.as_secs_f64() / c.as_secs_f64(),
        if from <= 1.0 && 1.0 <= to { ", which holds 1.00: parity" } else { "" }
    );
    let (r, lo, hi) = by_round(&mountable[1], &mountable[0]);
    let [o, st] = mountable.map(|mut v| median(&mut v));
    println!(
        "layerstore: the same until a view of the layer is answered (what a container started at once waits for): \
         overlayfs median {:.1} ms, strata's snapshotter {:.1} ms; ratio {r:.3}, round by round {lo:.2}–{hi:.2}",
        ms(o),
        ms(st),
    );
    Ok(())
}

/// Each round's ratio a/b.
fn ratios(a: &[Duration], b: &[Duration]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect()
}

/// The middle of the rounds' ratios a/b, and the lowest and highest.
fn by_round(a: &[Duration], b: &[Duration]) -> (f64, f64, f64) {
    let mut r = ratios(a, b);
    r.sort_by(f64::total_cmp);
    match (r.first(), r.last()) {
        (Some(&lo), Some(&hi)) => (r[r.len() / 2], lo, hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// A 95% interval of the middle of the rounds' ratios a/b: the 2.5th and 97.5th percentiles of
/// that middle over 10,000 resamplings of the rounds (with replacement; a fixed seed, so the same
/// times give the same interval).
fn middle_interval(a: &[Duration], b: &[Duration]) -> (f64, f64) {
    let r = ratios(a, b);
    if r.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    // splitmix64
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const RESAMPLES: usize = 10_000;
    let mut middles: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mut pick: Vec<f64> = (0..r.len()).map(|_| r[(next() % r.len() as u64) as usize]).collect();
            pick.sort_by(f64::total_cmp);
            pick[pick.len() / 2]
        })
        .collect();
    middles.sort_by(f64::total_cmp);
    (middles[RESAMPLES * 25 / 1000], middles[RESAMPLES * 975 / 1000])
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// strata's store after importing every archive of a set: (bytes on disk, its `du`).
fn strata_set(archives: &[PathBuf], opts: ImportOptions) -> Result<(u64, layerstore::DiskUsage), String> {
    let dir = fresh_dir("strata-bench-store-")?;
    let store = Store::open(&dir.path().join("store")).map_err(|e| e.to_string())?;
    for a in archives {
        store.import_with(a, None, opts).map_err(|e| format!("strata import {}: {e}", a.display()))?;
    }
    let bytes = disk_usage(store.root())?;
    Ok((bytes, store.du().map_err(|e| e.to_string())?))
}

/// Bytes on disk of strata's store, with the compressed layer blobs kept (`image import
/// --keep-blobs`) and dropped after unpacking with tar splits kept (the CLI's default), and of
/// containerd's root after importing every archive of a set.
fn disk_set(
    label: &str,
    archives: &[PathBuf],
    target: f64,
    lean_target: f64,
    snapshotter_target: f64,
) -> Result<(), String> {
    let (kept, du) = strata_set(archives, ImportOptions::default())?;
    let (dropped, lean_du) = strata_set(archives, ImportOptions { drop_layer_blobs: true })?;
    // (each containerd's collector has run to its end before its bytes are counted)
    let ctd = Containerd::start(None)?;
    for a in archives {
        ctd.import(a)?;
    }
    ctd.collect_garbage("overlayfs")?;
    let containerd = disk_usage(&ctd.root())?;
    let overlay_snapshots = disk_usage(&ctd.root().join("io.containerd.snapshotter.v1.overlayfs"))?;
    drop(ctd);
    let snapshotter = strata_bench::containerd::snapshotter_binary()?;
    // containerd with each snapshotter: (containerd's root, the snapshotter's store)
    let with_snapshotter = |flags: &[&str]| -> Result<(u64, u64), String> {
        let mut ctd = Containerd::start_with_snapshotter(&snapshotter)?;
        for a in archives {
            ctd.import_with(a, "strata", flags)?;
        }
        ctd.collect_garbage("strata")?;
        // (the snapshotter pools a layer's files after its commit answers: stopped, it has finished)
        ctd.stop_snapshotter()?;
        Ok((disk_usage(&ctd.root())?, disk_usage(&ctd.snapshotter_store())?))
    };
    let (content, snapshots) = with_snapshotter(&[])?;
    let discard = ["--discard-unpacked-layers"];
    let discarded = if Containerd::start(None)?.can_discard_unpacked_layers() {
        let ctd = Containerd::start(None)?;
        for a in archives {
            ctd.import_with(a, "overlayfs", &discard)?;
        }
        ctd.collect_garbage("overlayfs")?;
        let overlay = disk_usage(&ctd.root())?;
        drop(ctd);
        Some((overlay, with_snapshotter(&discard)?))
    } else {
        None
    };
    println!("\nlayerstore: bytes on disk, {label}");
    println!(
        "layerstore: strata     {:>8.1} MB (logical {:.1} MB; blobs {:.1} MB; saved by layer dedup {:.1} MB, by file dedup {:.1} MB)",
        mb(kept),
        mb(du.logical_bytes),
        mb(du.blob_bytes),
        mb(du.saved_by_layer_dedup),
        mb(du.saved_by_file_dedup)
    );
    println!(
        "layerstore: strata, layer blobs dropped after unpacking (the default) {:>8.1} MB (tar splits {:.1} MB)",
        mb(dropped),
        mb(lean_du.split_bytes)
    );
    println!("layerstore: containerd {:>8.1} MB (content store + overlayfs snapshots + metadata)", mb(containerd));
    let (rk, rd) = (kept as f64 / containerd as f64, dropped as f64 / containerd as f64);
    println!(
        "layerstore: ratio strata/containerd = {rk:.2} with blobs kept (--keep-blobs, export with the original digests; \
         target ≤ {target:.2}: {}), {rd:.2} with blobs dropped (the default; target ≤ {lean_target:.2}: {})",
        met(rk <= target),
        met(rd <= lean_target)
    );
    let with = content + snapshots;
    println!(
        "layerstore: containerd with strata's snapshotter {:>8.1} MB (containerd's root {:.1} MB, the snapshotter's store {:.1} MB)",
        mb(with),
        mb(content),
        mb(snapshots)
    );
    let r = with as f64 / containerd as f64;
    println!(
        "layerstore: ratio containerd with strata's snapshotter / with overlayfs = {r:.2} (target ≤ {snapshotter_target:.2}: {})",
        met(r <= snapshotter_target)
    );
    // The snapshotters alone: what each keeps beside the content store both containerds share.
    let r = snapshots as f64 / overlay_snapshots as f64;
    println!(
        "layerstore: the snapshotters' own bytes: strata's store {:.1} MB, overlayfs's {:.1} MB; ratio = {r:.2} \
         (target ≤ {snapshotter_target:.2}: {})",
        mb(snapshots),
        mb(overlay_snapshots),
        met(r <= snapshotter_target)
    );
    match discarded {
        Some((overlay, (content, snapshots))) => {
            let with = content + snapshots;
            println!(
                "layerstore: with --discard-unpacked-layers (CRI's discard_unpacked_layers): overlayfs {:>8.1} MB, \
                 strata's snapshotter {:.1} MB (containerd's root {:.1} MB, the snapshotter's store {:.1} MB)",
                mb(overlay),
                mb(with),
                mb(content),
                mb(snapshots)
            );
            let r = with as f64 / overlay as f64;
            println!(
                "layerstore: ratio strata's snapshotter / overlayfs, both discarding = {r:.2} (target ≤ \
                 {snapshotter_target:.2}: {}); strata's snapshotter discarding / overlayfs keeping them = {:.2}",
                met(r <= snapshotter_target),
                with as f64 / containerd as f64
            );
        }
        None => {
            println!("layerstore: (this ctr has no --discard-unpacked-layers: containerd 1.7 or later measures it)")
        }
    }
    Ok(())
}

fn layerstore(c: &mut Criterion) {
    // Everything is written on an ext4 of its own (see `strata_bench::scratch`).
    let fs = scratch::ScratchFs::new(64);
    match &fs {
        Ok(fs) => eprintln!("layerstore: measuring on a fresh ext4 mounted at {}", fs.path().display()),
        Err(e) => eprintln!("layerstore: measuring in /tmp: no scratch file system ({e})"),
    }
    let t = Instant::now();
    let images = build_images().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("layerstore: images built in {:.1} s", t.elapsed().as_secs_f64());
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    import_times(&images, rounds).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("STRATA_BENCH_IMPORT_ONLY").is_some_and(|v| v == "1") {
        return;
    }
    // (no target for the snapshotter on a shared base: containerd shares that layer already)
    disk_set("(a) five applications on one shared base layer", &images.shared, 0.75, 0.7, 1.0)
        .unwrap_or_else(|e| panic!("{e}"));
    disk_set("(b) five applications, each on its own rebuild of the base", &images.rebuilt, 0.5, 0.35, 0.4)
        .unwrap_or_else(|e| panic!("{e}"));

    let mut group = c.benchmark_group("layerstore");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_millis(1));
    group.bench_function("strata import+unpack debian", |b| {
        b.iter_batched(
            || (),
            |()| strata_import(&images.base_archive).unwrap_or_else(|e| panic!("{e}")).1,
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, layerstore);
criterion_main!(benches);
