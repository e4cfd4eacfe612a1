//! A container's life: exit codes and reasons (c), the OOM killer (d), stopping with a grace
//! period (i).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri::pod::{ContainerSpec, Namespaces, wait_state};
use k8s_cri::v1::ContainerState;

use super::{Ctx, STATE_LIMIT, eventually};

/// c: a created container is CREATED; one that exits 3 is EXITED with exit code 3 and reason
/// Error, one that exits 0 with reason Completed, both with start and finish times; a removed
/// container is NotFound.
pub fn exit_codes(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "exits", Namespaces::default())?;
    let created = pod.create(&ctx.cri, &ContainerSpec::sh("created", "exit 0"))?;
    let st = ctx.cri.container_status(&created)?;
    ensure!(st.state == ContainerState::ContainerCreated as i32, "a created container is {st:?}");
    ctx.cri.remove_container(&created).context("removing a created container")?;

    for (name, script, code, reason) in [("fails", "exit 3", 3, "Error"), ("succeeds", "exit 0", 0, "Completed")] {
        let id = pod.start(&ctx.cri, &ContainerSpec::sh(name, script))?;
        let st = wait_state(&ctx.cri, &id, ContainerState::ContainerExited, STATE_LIMIT)?;
        ensure!(
            st.exit_code == code && st.reason == reason,
            "{name} ({script}): exit code {} reason {:?} (message {:?}), expected {code} {reason:?}",
            st.exit_code,
            st.reason,
            st.message
        );
        // containerd takes started_at when the start call returns and finished_at from the
        // exit event, so a command that exits at once can finish "before" it started: both are
        // only checked to be there, after the creation.
        ensure!(
            st.started_at >= st.created_at && st.finished_at >= st.created_at && st.created_at > 0,
            "{name}: created at {} started at {} finished at {}",
            st.created_at,
            st.started_at,
            st.finished_at
        );
        ctx.cri.remove_container(&id)?;
        match ctx.cri.container_status(&id) {
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {}
            other => bail!("ContainerStatus of a removed container: {other:?}, not NotFound"),
        }
    }
    Ok(())
}

/// d: a container limited to 32 MiB that allocates 100 MiB is OOM-killed: exit code 137,
/// reason OOMKilled.
pub fn oom_killed(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "oom", Namespaces::default())?;
    // tail keeps a line that never ends: it grows until the OOM killer takes it.
    let spec = ContainerSpec::sh("hog", "head -c 100m /dev/zero | tail").memory(32 << 20);
    let id = pod.start(&ctx.cri, &spec)?;
    let st = wait_state(&ctx.cri, &id, ContainerState::ContainerExited, Duration::from_secs(120))?;
    ensure!(
        st.exit_code == 137 && st.reason == "OOMKilled",
        "exit code {} reason {:?} (message {:?}), expected 137 \"OOMKilled\"",
        st.exit_code,
        st.reason,
        st.message
    );
    Ok(())
}

/// i: StopContainer with a grace period: a container that traps TERM exits by it at once
/// (exit 0, Completed, its trap's output in the log); one that ignores TERM is killed when the
/// grace period ends (exit 137, Error), not before.
pub fn stop_grace(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "stop", Namespaces::default())?;
    let polite =
        ContainerSpec::sh("polite", "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.2; done");
    let stubborn = ContainerSpec::sh("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.2; done");
    let a = ctx.running(&pod, &polite)?;
    let b = ctx.running(&pod, &stubborn)?;
    // Both have set their traps once they said so.
    for name in ["polite", "stubborn"] {
        let log = pod.log_path(name);
        eventually(Duration::from_secs(30), &format!("{name} ready"), || {
            Ok(cri::logs::read(&log)?.iter().any(|e| e.content == "ready").then_some(()))
        })?;
    }

    let t = Instant::now();
    ctx.cri.stop_container(&a, 30)?;
    let polite_took = t.elapsed();
    let st = wait_state(&ctx.cri, &a, ContainerState::ContainerExited, STATE_LIMIT)?;
    ensure!(st.exit_code == 0 && st.reason == "Completed", "polite: exit code {} reason {:?}", st.exit_code, st.reason);
    ensure!(
        polite_took < Duration::from_secs(20),
        "polite: StopContainer took {polite_took:?} though it exits on TERM"
    );
    let log = pod.log_path("polite");
    eventually(Duration::from_secs(10), "got-term in polite's log", || {
        Ok(cri::logs::read(&log)?.iter().any(|e| e.content == "got-term").then_some(()))
    })?;

    let grace = 3;
    let t = Instant::now();
    ctx.cri.stop_container(&b, grace)?;
    let took = t.elapsed();
    let st = wait_state(&ctx.cri, &b, ContainerState::ContainerExited, STATE_LIMIT)?;
    ensure!(st.exit_code == 137 && st.reason == "Error", "stubborn: exit code {} reason {:?}", st.exit_code, st.reason);
    ensure!(
        took >= Duration::from_secs(grace as u64) && took < Duration::from_secs(grace as u64 + 30),
        "stubborn: StopContainer took {took:?} with a grace period of {grace}s"
    );
    println!(
        "  TERM honoured in {:.1}s; TERM ignored: killed after {:.1}s (grace {grace}s)",
        polite_took.as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}
