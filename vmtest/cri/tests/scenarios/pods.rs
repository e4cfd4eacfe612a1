//! Pods: a sandbox's life (a), the namespaces a pod's containers share (b), and 20 pods of 3
//! containers at once (j).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use cri::containerd::SUBNET_PREFIX;
use cri::pod::{ContainerSpec, Namespaces, SCENARIO_LABEL, sandbox_config};
use k8s_cri::v1 as api;
use k8s_cri::v1::{NamespaceMode, PodSandboxState};

use super::{Ctx, STATE_LIMIT, eventually, remove_pod_cgroup};

/// a: RunPodSandbox gives a READY sandbox with an address on the pods' network (another pod
/// gets another); StopPodSandbox makes it NOTREADY (twice is fine); RemovePodSandbox removes
/// it (twice is fine), after which its status is NotFound.
pub fn sandbox_lifecycle(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "lifecycle", Namespaces::default())?;
    let other = ctx.pod(scenario, "lifecycle-other", Namespaces::default())?;
    let st = ctx.cri.pod_status(&pod.id)?;
    ensure!(st.state == PodSandboxState::SandboxReady as i32, "a new pod is not READY: {st:?}");
    ensure!(
        st.runtime_handler.is_empty() || st.runtime_handler == ctx.handler,
        "runtime handler {:?}",
        st.runtime_handler
    );
    let ip = st.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default();
    ensure!(ip.starts_with(SUBNET_PREFIX), "pod address {ip:?} is not on the pods' network {SUBNET_PREFIX}0/24");
    let other_ip = ctx.cri.pod_status(&other.id)?.network.map(|n| n.ip).unwrap_or_default();
    ensure!(other_ip.starts_with(SUBNET_PREFIX) && other_ip != ip, "two pods got addresses {ip:?} and {other_ip:?}");
    let listed = ctx.cri.list_pods(None)?;
    ensure!(listed.iter().any(|p| p.id == pod.id), "ListPodSandbox does not list the pod");

    ctx.cri.stop_pod(&pod.id)?;
    let st = ctx.cri.pod_status(&pod.id)?;
    ensure!(st.state == PodSandboxState::SandboxNotready as i32, "a stopped pod is not NOTREADY: {st:?}");
    ctx.cri.stop_pod(&pod.id).context("stopping a stopped pod again")?;
    ctx.cri.remove_pod(&pod.id)?;
    match ctx.cri.pod_status(&pod.id) {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
        other => bail!("PodSandboxStatus of a removed pod: {other:?}, not NotFound"),
    }
    ctx.cri.remove_pod(&pod.id).context("removing a removed pod again")?;
    remove_pod_cgroup(&pod)
}

/// What a container sees of its namespaces and host name.
#[derive(Debug, PartialEq)]
struct Seen {
    ns: HashMap<String, String>,
    hostname: String,
    pid1: String,
    /// pid 1's name (`comm`): `pause` for the pause program and for strata's sandbox process
    /// (the `strata-sandbox` handler, which runs no pause image).
    pid1_name: String,
}

fn seen(ctx: &Ctx<'_>, id: &str) -> Result<Seen> {
    let out = ctx.sh(
        id,
        "for n in net ipc uts pid; do echo $n=$(readlink /proc/self/ns/$n); done; \
         echo hostname=$(hostname); echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); echo pid1_name=$(cat /proc/1/comm)",
    )?;
    let kv: HashMap<String, String> =
        out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
    Ok(Seen {
        ns: ["net", "ipc", "uts", "pid"].iter().map(|k| (k.to_string(), get(k))).collect(),
        hostname: get("hostname"),
        pid1: get("pid1"),
        pid1_name: get("pid1_name"),
    })
}

fn own_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).map(|p| p.display().to_string()).unwrap_or_default()
}

/// b: a pod's containers share its network, IPC and UTS namespaces (and see its address and
/// host name); with pid mode POD they share a pid namespace whose pid 1 is the pause program
/// (or strata's sandbox process, also named `pause`),
/// with CONTAINER each has its own (its command is pid 1), with NODE they are in the node's.
pub fn shared_namespaces(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    // The three pid modes are three pods, checked at once, each with a client of its own.
    let modes =
        [(NamespaceMode::Pod, "ns-pod"), (NamespaceMode::Container, "ns-container"), (NamespaceMode::Node, "ns-node")];
    let (node, handler) = (ctx.node, ctx.handler.clone());
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = modes
            .iter()
            .map(|&(mode, name)| {
                let handler = handler.clone();
                scope.spawn(move || -> Result<()> {
                    let cri = node.containerd().client()?;
                    let ctx = Ctx { node, cri, handler };
                    pid_mode(&ctx, scenario, mode, name)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a pid mode's check panicked"))))
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(())
}

fn pid_mode(ctx: &Ctx<'_>, scenario: &'static str, mode: NamespaceMode, name: &str) -> Result<()> {
    let ns = Namespaces { pid: mode, ..Namespaces::default() };
    let pod = ctx.pod(scenario, name, ns)?;
    let ip = ctx.cri.pod_status(&pod.id)?.network.map(|n| n.ip).unwrap_or_default();
    let a = ctx.running(&pod, &ContainerSpec::sh("a", "exec sleep 3600"))?;
    let b = ctx.running(&pod, &ContainerSpec::sh("b", "exec sleep 3601"))?;
    let (sa, sb) = (seen(ctx, &a)?, seen(ctx, &b)?);
    for kind in ["net", "ipc", "uts"] {
        ensure!(
            !sa.ns[kind].is_empty() && sa.ns[kind] == sb.ns[kind],
            "{name}: {kind} namespaces differ: {sa:?} / {sb:?}"
        );
        ensure!(sa.ns[kind] != own_ns(kind), "{name}: the containers are in the node's {kind} namespace");
    }
    ensure!(sa.hostname == name && sb.hostname == name, "{name}: host names {:?}, {:?}", sa.hostname, sb.hostname);
    let addrs = ctx.sh(&a, "ip -4 addr show")?;
    ensure!(addrs.contains(&format!("inet {ip}/")), "{name}: the pod address {ip} is not in the container:\n{addrs}");
    match mode {
        NamespaceMode::Pod => {
            ensure!(sa.ns["pid"] == sb.ns["pid"], "{name}: pid namespaces differ: {sa:?} / {sb:?}");
            ensure!(
                sa.pid1_name == "pause" && sb.pid1_name == "pause",
                "{name}: pid 1 is {:?} ({:?}), not the pause program",
                sa.pid1_name,
                sa.pid1
            );
            let ps = ctx.sh(&a, "ps -o args")?;
            ensure!(ps.contains("sleep 3601"), "{name}: container a does not see b's process:\n{ps}");
        }
        NamespaceMode::Container => {
            ensure!(sa.ns["pid"] != sb.ns["pid"], "{name}: the containers share a pid namespace: {sa:?}");
            ensure!(
                sa.pid1 == "sleep 3600" && sb.pid1 == "sleep 3601",
                "{name}: pid 1 is {:?} and {:?}",
                sa.pid1,
                sb.pid1
            );
            ensure!(sa.ns["pid"] != own_ns("pid"), "{name}: the container is in the node's pid namespace");
        }
        _ => {
            ensure!(
                sa.ns["pid"] == own_ns("pid") && sb.ns["pid"] == own_ns("pid"),
                "{name}: not in the node's pid namespace: {sa:?} / {sb:?}"
            );
        }
    }
    Ok(())
}

/// k: 20 pods of 3 containers, created 5 at a time, all run, then are all removed.
pub fn many_pods(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    const PODS: usize = 20;
    const PER_POD: usize = 3;
    // In flight at once. The guest's one emulated CPU does the same work whatever the number;
    // with all 20 at once each call waits for all the others, and on a slower host every call
    // outlived the client's deadline together (seen: 20 of 20 RunPodSandbox after 60 s).
    const AT_ONCE: usize = 5;
    let configs = (0..PODS)
        .map(|i| sandbox_config(&ctx.node.log_root, scenario, &format!("many-{i}"), Namespaces::default()))
        .collect::<cri::Result<Vec<_>>>()?;
    let client = ctx.cri.client();
    let handler = ctx.handler.clone();
    let t = Instant::now();
    let results: Vec<Result<(), String>> = ctx.cri.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
        for config in configs {
            let (c, handler, slots) = (client.clone(), handler.clone(), slots.clone());
            set.spawn(async move {
                let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
                let pod = c.run_pod(&config, &handler).await.map_err(|e| e.to_string())?;
                for k in 0..PER_POD {
                    let spec = ContainerSpec::sh(&format!("c{k}"), "exec sleep 3600");
                    let dir = std::path::Path::new(&config.log_directory).join(&spec.name);
                    let _ = std::fs::create_dir_all(dir);
                    let id =
                        c.create_container(&pod, &spec.config(&config), &config).await.map_err(|e| e.to_string())?;
                    c.start_container(&id).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap_or_else(|e| Err(e.to_string())));
        }
        all
    });
    let started = t.elapsed();
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    ensure!(errors.is_empty(), "{} of {PODS} pods failed: {}", errors.len(), errors.join("; "));
    let label: HashMap<String, String> = [(SCENARIO_LABEL.to_string(), scenario.to_string())].into();
    let running = eventually(STATE_LIMIT, "every container running", || {
        let filter = api::ContainerFilter {
            state: Some(api::ContainerStateValue { state: api::ContainerState::ContainerRunning as i32 }),
            label_selector: label.clone(),
            ..Default::default()
        };
        let n = ctx.cri.list_containers(Some(filter))?.len();
        Ok((n == PODS * PER_POD).then_some(n))
    })?;
    let ready = ctx
        .cri
        .list_pods(Some(api::PodSandboxFilter {
            state: Some(api::PodSandboxStateValue { state: PodSandboxState::SandboxReady as i32 }),
            label_selector: label.clone(),
            ..Default::default()
        }))?
        .len();
    ensure!(ready == PODS, "{ready} of {PODS} pods are READY");
    let t = Instant::now();
    let problems = cri::pod::sweep(&ctx.cri, scenario);
    ensure!(problems.is_empty(), "removing the pods: {}", problems.join("; "));
    let removed = t.elapsed();
    let left = ctx.cri.list_pods(None)?.len() + ctx.cri.list_containers(None)?.len();
    ensure!(left == 0, "{left} pods and containers are still listed after removing them all");
    println!(
        "  {PODS} pods x {PER_POD} containers: {running} running {:.1}s after the first request, all removed in {:.1}s",
        started.as_secs_f64(),
        removed.as_secs_f64()
    );
    Ok(())
}
