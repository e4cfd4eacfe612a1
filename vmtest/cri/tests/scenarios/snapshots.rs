//! n: CRI on strata's snapshotter (chosen only with `STRATA_CRI_SNAPSHOTTER=strata`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri::containerd::run_bounded;
use cri::pod::{ContainerSpec, Namespaces};

use super::{Ctx, eventually, remove_pod_cgroup};

/// The snapshot keys `ctr snapshots --snapshotter strata ls` lists, each with its kind.
fn strata_snapshots(ctx: &Ctx<'_>) -> Result<Vec<(String, String)>> {
    let mut cmd = ctx.node.containerd().ctr();
    cmd.args(["snapshots", "--snapshotter", "strata", "ls"]);
    let out = run_bounded(&mut cmd, Duration::from_secs(60))?;
    ensure!(out.status.success(), "ctr snapshots ls: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.last()?.to_string()))
        })
        .collect())
}

/// n: the images were unpacked by strata's differ (its log names each layer it applied); a
/// container's root is an overlay whose lower layer is a committed snapshot in strata's store
/// (seen from inside, in its mountinfo), writable above it; its active snapshot is keyed by the
/// container's id; the image's files are in the store's pool (more than one link); once the pod
/// is removed its snapshot is gone and the image's committed one stays.
pub fn strata_snapshotter(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let store = ctx.node.containerd().snapshotter_store();
    let log = ctx.node.containerd().snapshotter_log();
    ensure!(log.contains("applied layer sha256:"), "strata's differ applied no layer; the snapshotter's log: {log}");
    let pod = ctx.pod(scenario, "snapshots", Namespaces::default())?;
    let id = ctx.running(&pod, &ContainerSpec::sh("main", "echo written > /tmp/mine; exec sleep 3600"))?;

    let info = ctx.sh(&id, "cat /proc/self/mountinfo")?;
    let root = info.lines().find(|l| l.split(' ').nth(4) == Some("/")).context("no / in the container's mountinfo")?;
    let lower = format!("lowerdir={}/containerd/snapshots/", store.display());
    ensure!(
        root.contains(" - overlay ") && root.contains(&lower),
        "the container's root is not an overlay above strata's store ({lower}…): {root}"
    );
    ensure!(ctx.sh(&id, "cat /tmp/mine")? == "written\n", "the container's own write is not there");

    let snaps = strata_snapshots(ctx)?;
    ensure!(
        snaps.iter().any(|(key, kind)| key == &id && kind == "Active"),
        "no active snapshot {id} in strata's snapshotter: {snaps:?}"
    );
    let committed = std::fs::read_dir(store.join("containerd/snapshots"))
        .with_context(|| format!("reading {}", store.display()))?
        .flatten()
        .map(|e| e.path().join("fs/bin/busybox"))
        .filter_map(|p| std::fs::symlink_metadata(&p).ok().map(|m| (p, m)))
        .filter(|(_, m)| m.is_file())
        .collect::<Vec<_>>();
    ensure!(!committed.is_empty(), "no committed snapshot in {} holds bin/busybox", store.display());
    for (p, m) in &committed {
        ensure!(m.nlink() >= 2, "{} has {} link: not in the store's pool", p.display(), m.nlink());
    }

    ctx.cri.stop_pod(&pod.id)?;
    ctx.cri.remove_pod(&pod.id)?;
    remove_pod_cgroup(&pod)?;
    eventually(Duration::from_secs(30), "the container's snapshot removed", || {
        let snaps = strata_snapshots(ctx)?;
        Ok((!snaps.iter().any(|(key, _)| key == &id)).then_some(()))
    })?;
    ensure!(committed.iter().all(|(p, _)| Path::new(p).is_file()), "the image's committed snapshot went with the pod");
    Ok(())
}
