//! The scenarios, in the order they run, and what they share: the containerd, the CRI client,
//! the handler, and helpers to run pods and containers and to look inside them.

mod containers;
mod exec;
mod logs;
mod pods;
mod resources;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri::pod::{ContainerSpec, Namespaces, Pod, sandbox_config, wait_state};
use cri::{Containerd, Cri};
use k8s_cri::v1::ContainerState;

/// What every scenario works with.
pub struct Ctx {
    pub ctd: Containerd,
    pub cri: Cri,
    pub handler: String,
}

/// One scenario: its name (also the label its pods carry) and body.
pub struct Scenario {
    pub name: &'static str,
    /// Left out when `STRATA_CRI_SLOW=0`.
    pub slow: bool,
    pub run: fn(&mut Ctx, &'static str) -> Result<()>,
}

/// Every scenario, in order; the leak check comes last.
pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "a_sandbox_lifecycle", slow: false, run: pods::sandbox_lifecycle },
    Scenario { name: "b_shared_namespaces", slow: false, run: pods::shared_namespaces },
    Scenario { name: "c_exit_codes", slow: false, run: containers::exit_codes },
    Scenario { name: "d_oom_killed", slow: false, run: containers::oom_killed },
    Scenario { name: "e_exec_sync", slow: false, run: exec::exec_sync },
    Scenario { name: "f_logs", slow: false, run: logs::cri_logs },
    Scenario { name: "g_stats", slow: false, run: resources::stats },
    Scenario { name: "h_update_resources", slow: false, run: resources::update_resources },
    Scenario { name: "i_stop_grace", slow: false, run: containers::stop_grace },
    Scenario { name: "j_many_pods", slow: true, run: pods::many_pods },
    Scenario { name: "k_containerd_restart", slow: true, run: logs::containerd_restart },
    Scenario { name: "l_no_leaks", slow: false, run: no_leaks },
];

/// How long a container may take to reach a state (the VM runs under TCG).
pub const STATE_LIMIT: Duration = Duration::from_secs(60);

impl Ctx {
    /// Runs pod `name` of `scenario` with this handler.
    pub fn pod(&self, scenario: &str, name: &str, ns: Namespaces) -> Result<Pod> {
        let config = sandbox_config(&self.ctd.log_root(), scenario, name, ns)?;
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

/// l: once every pod is removed, nothing is left: mounts, cgroups, network namespaces,
/// processes, state directories, active snapshots, allocated addresses (shims may take a
/// moment to exit).
fn no_leaks(ctx: &mut Ctx, _: &'static str) -> Result<()> {
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
        leaks = cri::leaks::find(&ctx.ctd);
        Ok(leaks.is_empty().then_some(()))
    });
    if found.is_err() {
        bail!("left behind: {}", leaks.join("; "));
    }
    Ok(())
}
