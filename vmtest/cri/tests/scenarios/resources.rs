//! A running container's resources: its statistics (g) and a limit raised while it runs (h).

use std::time::Duration;

use anyhow::{Result, ensure};
use cri::pod::{ContainerSpec, Namespaces};
use k8s_cri::v1 as api;

use super::{Ctx, eventually};

fn cpu_and_memory(s: &api::ContainerStats) -> (u64, u64) {
    let cpu = s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
    let mem = s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value);
    (cpu, mem)
}

/// g: ContainerStats and ListContainerStats report CPU time and a memory working set for a
/// running container that has used both.
pub fn stats(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "stats", Namespaces::default())?;
    let script =
        "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; x=$(head -c 2000000 /dev/zero | tr '\\0' a); exec sleep 3600";
    let id = ctx.running(&pod, &ContainerSpec::sh("busy", script))?;
    let mut last = (0, 0);
    let seen = eventually(Duration::from_secs(30), "CPU time and working set in ContainerStats", || {
        last = cpu_and_memory(&ctx.cri.container_stats(&id)?);
        Ok((last.0 > 0 && last.1 > 0).then_some(last))
    });
    let Ok((cpu, mem)) = seen else {
        // What the container's cgroup offers tells why a figure is missing.
        let inside = ctx.sh(&id, "echo controllers: $(cat /sys/fs/cgroup/cgroup.controllers); ls /sys/fs/cgroup | grep -c '^memory\\.' || true")?;
        anyhow::bail!(
            "ContainerStats: CPU {} ns, working set {} bytes after 30 s; inside the container's cgroup: {} memory.* files",
            last.0,
            last.1,
            inside.replace('\n', ", ").trim_end_matches(", ")
        );
    };
    let filter = api::ContainerStatsFilter { pod_sandbox_id: pod.id.clone(), ..Default::default() };
    let listed = ctx.cri.list_container_stats(Some(filter))?;
    let mine = listed.iter().find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id));
    let Some(mine) = mine else {
        anyhow::bail!("ListContainerStats of the pod does not list the container ({} entries)", listed.len());
    };
    let (lcpu, lmem) = cpu_and_memory(mine);
    ensure!(lcpu > 0 && lmem > 0, "ListContainerStats: CPU {lcpu} ns, working set {lmem} bytes");
    println!("  CPU {:.1} ms, working set {} KiB", cpu as f64 / 1e6, mem / 1024);
    Ok(())
}

/// h: UpdateContainerResources raises a running container's memory limit, which the container
/// sees in its own cgroup (and ContainerStatus reports).
pub fn update_resources(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "update", Namespaces::default())?;
    let id = ctx.running(&pod, &ContainerSpec::sh("limited", "exec sleep 3600").memory(64 << 20))?;
    let before = ctx.sh(&id, "cat /sys/fs/cgroup/memory.max")?;
    ensure!(before.trim() == (64u64 << 20).to_string(), "memory.max inside is {:?}, not 64 MiB", before.trim());
    let raised = 128i64 << 20;
    ctx.cri
        .update_resources(&id, api::LinuxContainerResources { memory_limit_in_bytes: raised, ..Default::default() })?;
    let after = ctx.sh(&id, "cat /sys/fs/cgroup/memory.max")?;
    ensure!(
        after.trim() == raised.to_string(),
        "memory.max inside is {:?} after the update, not 128 MiB",
        after.trim()
    );
    let st = ctx.cri.container_status(&id)?;
    if let Some(linux) = st.resources.and_then(|r| r.linux) {
        ensure!(
            linux.memory_limit_in_bytes == raised,
            "ContainerStatus reports a memory limit of {}",
            linux.memory_limit_in_bytes
        );
    }
    Ok(())
}
