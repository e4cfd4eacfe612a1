//! The scenarios, in the order they run, and what they share: the containerd, the CRI client,
//! the handler, and helpers to run pods and containers and to look inside them.

mod containers;
mod exec;
mod logs;
mod pods;
mod resources;
mod snapshots;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri::pod::{ContainerSpec, Namespaces, Pod, sandbox_config, wait_state};
use cri::{Containerd, Cri};
use k8s_cri::v1::ContainerState;

/// The node: its containerd (locked by the scenario that restarts it and by the leak check)
/// and where pods' logs go.
pub struct Node {
    pub ctd: Mutex<Containerd>,
    pub log_root: PathBuf,
}

impl Node {
    pub fn new(ctd: Containerd) -> Node {
        let log_root = ctd.log_root();
        Node { ctd: Mutex::new(ctd), log_root }
    }

    /// The containerd (a scenario that panicked holding it does not make it unusable).
    pub fn containerd(&self) -> MutexGuard<'_, Containerd> {
        self.ctd.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a scenario works with: the node, a CRI client of its own, the handler.
pub struct Ctx<'n> {
    pub node: &'n Node,
    pub cri: Cri,
    pub handler: String,
}

/// One scenario: its name (also the label its pods carry) and body.
pub struct Scenario {
    pub name: &'static str,
    /// Left out when `STRATA_CRI_SLOW=0`.
    pub slow: bool,
    /// Runs with nothing else running (it counts or changes what the whole node has); the
    /// others run at once.
    pub alone: bool,
    /// Chosen only when CRI's snapshotter is strata's (`STRATA_CRI_SNAPSHOTTER=strata`).
    pub strata_snapshotter: bool,
    pub run: fn(&mut Ctx<'_>, &'static str) -> Result<()>,
}

const fn with_others(name: &'static str, run: fn(&mut Ctx<'_>, &'static str) -> Result<()>) -> Scenario {
    Scenario { name, slow: false, alone: false, strata_snapshotter: false, run }
}

/// Every scenario; those that run alone run after the others, in this order (the leak check
/// last).
pub const SCENARIOS: &[Scenario] = &[
    with_others("a_sandbox_lifecycle", pods::sandbox_lifecycle),
    with_others("b_shared_namespaces", pods::shared_namespaces),
    with_others("c_exit_codes", containers::exit_codes),
    with_others("d_oom_killed", containers::oom_killed),
    with_others("e_exec_sync", exec::exec_sync),
    with_others("f_logs", logs::cri_logs),
    with_others("g_stats", resources::stats),
    with_others("h_update_resources", resources::update_resources),
    with_others("i_stop_grace", containers::stop_grace),
    with_others("j_exec_attach", exec::exec_attach),
    Scenario {
        name: "n_strata_snapshotter",
        slow: false,
        alone: false,
        strata_snapshotter: true,
        run: snapshots::strata_snapshotter,
    },
    Scenario { name: "k_many_pods", slow: true, alone: true, strata_snapshotter: false, run: pods::many_pods },
    Scenario {
        name: "l_containerd_restart",
        slow: true,
        alone: true,
        strata_snapshotter: false,
        run: logs::containerd_restart,
    },
    Scenario { name: "m_no_leaks", slow: false, alone: true, strata_snapshotter: false, run: no_leaks },
];

/// How long a container may take to reach a state (the VM runs under TCG).
pub const STATE_LIMIT: Duration = Duration::from_secs(60);

impl Ctx<'_> {
    /// Runs pod `name` of `scenario` with this handler.
    pub fn pod(&self, scenario: &str, name: &str, ns: Namespaces) -> Result<Pod> {
        let config = sandbox_config(&self.node.log_root, scenario, name, ns)?;
        Pod::run(&self.cri, &self.handler, config).with_context(|| format!("running pod {name}"))
    }

    /// Creates and starts `spec` in `pod`, then waits until it runs.
    pub fn running(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = pod.start(&self.cri, spec).with_context(|| format!("starting container {}", spec.name))?;
        wait_state(&self.cri, &id, ContainerState::ContainerRunning, STATE_LIMIT)?;
        Ok(id)
    }

    /// `sh -c SCRIPT` in container `id` through ExecSync; its stdout, which must succeed.
    pub fn sh(&self, id: &str, script: &str) -> Result<String> {
        let r = self.cri.exec_sync(id, &["sh", "-c", script], 60).with_context(|| format!("ExecSync {script:?}"))?;
        ensure!(
            r.exit_code == 0,
            "ExecSync {script:?} exited {}: stdout {:?} stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        Ok(String::from_utf8_lossy(&r.stdout).to_string())
    }
}

/// Removes the cgroup of a pod CRI has removed, as kubelet does once the pod is gone: nothing
/// may be left in it.
pub fn remove_pod_cgroup(pod: &Pod) -> Result<()> {
    let uid = pod.config.metadata.as_ref().map(|m| m.uid.as_str()).unwrap_or_default();
    let cgroup = cri::pod::pod_cgroup(uid);
    if cgroup.exists() {
        std::fs::remove_dir(&cgroup)
            .with_context(|| format!("removing the removed pod's cgroup {}", cgroup.display()))?;
    }
    Ok(())
}

/// Calls `f` until it returns `Some` or `limit` passes; the last error otherwise.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("not yet"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {limit:?} (last: {last})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// m: once every pod is removed, nothing is left: mounts, cgroups, network namespaces,
/// processes, state directories, active snapshots, allocated addresses (shims may take a
/// moment to exit).
fn no_leaks(ctx: &mut Ctx<'_>, _: &'static str) -> Result<()> {
    let pods = ctx.cri.list_pods(None)?;
    let containers = ctx.cri.list_containers(None)?;
    ensure!(
        pods.is_empty() && containers.is_empty(),
        "{} pods and {} containers are still listed after every scenario's sweep",
        pods.len(),
        containers.len()
    );
    let mut leaks = Vec::new();
    let found = eventually(Duration::from_secs(20), "nothing left", || {
        leaks = cri::leaks::find(&ctx.node.containerd());
        Ok(leaks.is_empty().then_some(()))
    });
    if found.is_err() {
        bail!("left behind: {}", leaks.join("; "));
    }
    Ok(())
}
