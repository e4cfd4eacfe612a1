//! Fault injection for the report's reliability section: processes killed with SIGKILL at each
//! step of creating a container, through the strata CLI and through containerd with strata's
//! shim (the shim at each call it serves, its helper, stage 1 and the init at each step of the
//! create), by the runtime's test hook `STRATA_FAULT` (see the engine's `fault` module). After
//! each fault the user's own commands clean up (`strata delete --force`; `ctr task delete -f`,
//! `ctr containers rm`), and whatever they cannot remove is counted as lost: state directories,
//! containerd tasks and containers, processes, cgroups and mounts (the soak's census).
//!
//! The tests hold the detailed checks of the same faults (`shim/tests/faults.rs`, and the
//! containerd suite's `kill_9_of_the_shim_at_each_call_...`); this module counts them for the
//! report, in the same run as its other figures.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, NAMESPACE, Peer, peers, shim_binary};
use crate::soak::{census, entries, left_since};
use crate::{BusyboxBundle, strata_binary};
use engine::fault::{CREATE_STEPS, SHIM_CALLS};

/// One kind of fault: how many were injected and what each left that cleanup could not remove.
#[derive(Debug, Clone, Default)]
pub struct FaultRow {
    /// What was killed, and where.
    pub kind: String,
    /// Faults injected.
    pub injected: usize,
    /// What was left behind or broken afterwards, each named with its fault (the goal: none).
    pub lost: Vec<String>,
}

/// The short run's points: four of each kind, across the CLI, stage 1, the init and the shim.
const SHORT_CREATE_STEPS: [&str; 4] = ["cli:cgroup", "cli:init-ready", "stage1:namespaces", "init:gate"];
const SHORT_SHIM_POINTS: [&str; 4] = ["shim:Create-answer", "shim:Start", "shim:Kill", "cli:namespaces"];

/// Runs both kinds; `short` takes four points of each instead of all.
pub fn campaign(short: bool) -> Result<Vec<FaultRow>, String> {
    let (create, shim): (Vec<&str>, Vec<&str>) = if short {
        (SHORT_CREATE_STEPS.to_vec(), SHORT_SHIM_POINTS.to_vec())
    } else {
        // Through containerd: each call of the shim, then each step of the create its helper runs.
        (CREATE_STEPS.to_vec(), SHIM_CALLS.iter().chain(&CREATE_STEPS).copied().collect())
    };
    Ok(vec![create_faults(&create)?, containerd_faults(&shim)?])
}

/// `strata create` killed at each of `steps`; then `delete --force`, and the same id runs.
fn create_faults(steps: &[&str]) -> Result<FaultRow, String> {
    let strata = strata_binary()?;
    let work = tempfile::Builder::new().prefix("strata-faults-").tempdir().map_err(|e| e.to_string())?;
    let root = work.path().join("state");
    let sleeper = BusyboxBundle::new(&["sleep", "100000"])?;
    let quick = BusyboxBundle::new(&["true"])?;
    let mut row = FaultRow {
        kind: "kill -9 at a step of `strata create` (the CLI, stage 1, the init)".into(),
        ..Default::default()
    };
    let before = census();
    for (n, step) in steps.iter().enumerate() {
        let id = format!("fault-{n}");
        let strata_at = |args: &[&str], bundle: &Path| {
            let mut c = Command::new(&strata);
            c.arg("--root").arg(&root).args(args).arg("--bundle").arg(bundle).arg(&id);
            c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            c
        };
        let _ = strata_at(&["create"], sleeper.path()).env("STRATA_FAULT", step).status();
        row.injected += 1;
        let _ = Command::new(&strata).arg("--root").arg(&root).args(["delete", "--force", &id]).output();
        for e in entries(&root) {
            row.lost.push(format!("{step}: state {e} after delete --force"));
        }
        match strata_at(&["run"], quick.path()).status() {
            Ok(st) if st.success() => {}
            other => row.lost.push(format!("{step}: the id did not run again ({other:?})")),
        }
    }
    row.lost.extend(left_since(&before));
    Ok(row)
}

/// A containerd whose shims die at each of `points`: a lifecycle is tried, then removed as a
/// user would; containerd, the engine's state and the host must hold nothing of it.
fn containerd_faults(points: &[&str]) -> Result<FaultRow, String> {
    let shim = shim_binary()?;
    let shim_dir = shim.parent().ok_or_else(|| format!("{} has no directory", shim.display()))?;
    let peer: Peer = peers().into_iter().find(|p| p.name == "strata").ok_or("no strata peer")?;
    let mut row = FaultRow {
        kind: "kill -9 of strata's shim at a call, or of its helper, stage 1 or the init at a step of the create, \
               through containerd"
            .into(),
        ..Default::default()
    };
    let before = census();
    for (n, point) in points.iter().enumerate() {
        let ctd = Containerd::start_with_env(Some(shim_dir), &[("STRATA_FAULT", point)])?;
        ctd.import_busybox()?;
        let id = format!("fault-{n}");
        let _ = ctd.run(&peer, &["--detach"], &id, &["sleep", "100000"]);
        for args in [
            vec!["task", "exec", "--exec-id", "probe", &id, "true"],
            vec!["task", "kill", "-s", "SIGKILL", &id],
            vec!["task", "delete", &id],
            vec!["task", "delete", "-f", &id],
            vec!["containers", "rm", &id],
        ] {
            let _ = ctd.ctr(&args);
        }
        row.injected += 1;
        if ctd.lines(&["task", "ls", "-q"]).contains(&id) {
            row.lost.push(format!("{point}: containerd kept the task"));
        }
        if ctd.lines(&["containers", "ls", "-q"]).contains(&id) {
            row.lost.push(format!("{point}: containerd kept the container"));
        }
        // A shim exits with its last task; give it a moment before the census.
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::containerd::shim_pid(peer.shim, &id).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if crate::containerd::shim_pid(peer.shim, &id).is_some() {
            row.lost.push(format!("{point}: the shim outlived its task"));
        }
        // containerd cleans up after a dead shim (`containerd-shim-strata-v1 delete`, which also
        // removes the report of a helper that outlived it) on its own time: a moment for it.
        let state = engine::shimv2::service::state_root(NAMESPACE);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !entries(&state).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for e in entries(&state) {
            row.lost.push(format!("{point}: engine state {e}"));
        }
        // containerd's namespace cgroup (the parent of each container's `/<namespace>/<id>`)
        // is containerd's to remove, as it is with runc.
        let namespace_cgroup = format!("/{NAMESPACE}");
        let left = left_since(&before).into_iter().filter(|l| !l.ends_with(&namespace_cgroup));
        row.lost.extend(left.map(|l| format!("{point}: {l}")));
        // What is left is now counted: containerd's guard removes it before the next point.
        drop(ctd);
    }
    Ok(row)
}
