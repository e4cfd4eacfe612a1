//! Containers' output: the CRI log format and ReopenContainerLog (f), and output that goes on
//! while containerd restarts (k).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cri::logs::{Entry, lines, read};
use cri::pod::{ContainerSpec, Namespaces, wait_state};
use k8s_cri::v1::{ContainerState, PodSandboxState};

use super::{Ctx, STATE_LIMIT, eventually};

/// containerd's default `max_container_log_line_size`.
const MAX_LINE: usize = 16 * 1024;

fn numbered(entries: &[Entry]) -> Vec<u64> {
    entries.iter().filter_map(|e| e.content.strip_prefix("n-")).filter_map(|n| n.parse().ok()).collect()
}

/// f: a container's stdout and stderr land in its log path in the CRI format: a line as one F
/// entry per stream, a line longer than containerd's maximum as P entries then an F, the
/// unterminated end as a P. ReopenContainerLog makes a running container's output go on in a
/// new file at the path once the old one was moved away; for an exited container it fails.
pub fn cri_logs(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "logs", Namespaces::default())?;
    let script = "echo out-1; echo err-1 >&2; head -c 20000 /dev/zero | tr '\\0' x; echo; printf tail-no-newline";
    let id = pod.start(&ctx.cri, &ContainerSpec::sh("writer", script))?;
    let st = wait_state(&ctx.cri, &id, ContainerState::ContainerExited, STATE_LIMIT)?;
    ensure!(st.exit_code == 0, "the writer exited {}", st.exit_code);
    let path = pod.log_path("writer");
    ensure!(
        st.log_path.is_empty() || path.ends_with(&st.log_path) || st.log_path == path.display().to_string(),
        "ContainerStatus log path {:?}",
        st.log_path
    );
    let entries = eventually(Duration::from_secs(10), "the writer's whole log", || {
        let e = read(&path)?;
        Ok(e.iter().any(|e| e.content == "tail-no-newline").then_some(e))
    })?;
    let long = "x".repeat(20000);
    let out = lines(&entries, "stdout");
    ensure!(
        out == ["out-1", long.as_str(), "tail-no-newline"],
        "stdout lines: {:?}",
        out.iter().map(|l| l.chars().take(40).collect::<String>()).collect::<Vec<_>>()
    );
    ensure!(lines(&entries, "stderr") == ["err-1"], "stderr lines: {:?}", lines(&entries, "stderr"));
    let stdout: Vec<&Entry> = entries.iter().filter(|e| e.stream == "stdout").collect();
    let shape: Vec<(bool, usize)> = stdout.iter().map(|e| (e.partial, e.content.len())).collect();
    ensure!(
        shape == [(false, 5), (true, MAX_LINE), (false, 20000 - MAX_LINE), (true, 15)],
        "stdout entries (partial, length): {shape:?}, expected F 5, P {MAX_LINE}, F {}, P 15",
        20000 - MAX_LINE
    );
    match ctx.cri.reopen_log(&id) {
        Err(_) => {}
        Ok(()) => bail!("ReopenContainerLog of an exited container succeeded"),
    }

    // Reopen: move the log away, ask for a new one, see the numbering go on in it.
    let counter = "i=0; while :; do echo n-$i; i=$((i+1)); sleep 0.2; done";
    let id = ctx.running(&pod, &ContainerSpec::sh("counter", counter))?;
    let path = pod.log_path("counter");
    eventually(Duration::from_secs(30), "3 lines in the counter's log", || {
        Ok((numbered(&read(&path)?).len() >= 3).then_some(()))
    })?;
    let moved = path.with_extension("log.1");
    std::fs::rename(&path, &moved).context("moving the log away")?;
    ctx.cri.reopen_log(&id)?;
    let new = eventually(Duration::from_secs(30), "3 lines in the reopened log", || {
        let n = numbered(&read(&path)?);
        Ok((n.len() >= 3).then_some(n))
    })?;
    let old = numbered(&read(&moved)?);
    let (last_old, first_new) = (old.last().copied().unwrap_or(0), new[0]);
    ensure!(first_new > last_old, "the reopened log starts at n-{first_new}, the old one ended at n-{last_old}");
    ensure!(new.windows(2).all(|w| w[1] == w[0] + 1), "the reopened log skips lines: {new:?}");
    std::thread::sleep(Duration::from_millis(600));
    let again = numbered(&read(&moved)?);
    ensure!(again.len() == old.len(), "the moved log still grows after ReopenContainerLog");
    Ok(())
}

/// l: containerd restarts while a pod's container writes (from a process that is not its pid
/// 1, so a broken pipe would kill it): the writer lives on, the container and pod stay up, and
/// its log goes on after the restart.
pub fn containerd_restart(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "restart", Namespaces::default())?;
    let script = "while :; do echo tick; sleep 0.2; done & echo writer=$!; wait";
    let id = ctx.running(&pod, &ContainerSpec::sh("ticker", script))?;
    let path = pod.log_path("ticker");
    let writer = eventually(Duration::from_secs(30), "the writer's pid and 3 ticks", || {
        let e = read(&path)?;
        let ticks = e.iter().filter(|e| e.content == "tick").count();
        Ok(e.iter().find_map(|e| e.content.strip_prefix("writer=").map(str::to_string)).filter(|_| ticks >= 3))
    })?;
    let alive = |ctx: &Ctx<'_>| -> Result<bool> {
        let ps = ctx.sh(&id, "ps -o pid,args")?;
        Ok(ps.lines().any(|l| l.split_whitespace().next() == Some(writer.as_str())))
    };
    ensure!(alive(ctx)?, "the writer {writer} is not running before the restart");

    {
        let mut ctd = ctx.node.containerd();
        ctd.restart(Duration::from_secs(2)).context("restarting containerd")?;
        ctx.cri = ctd.client()?;
    }
    let before = read(&path)?.iter().filter(|e| e.content == "tick").count();
    // Give the writer time to write across the restart before judging.
    std::thread::sleep(Duration::from_secs(2));
    let st = ctx.cri.container_status(&id)?;
    let pst = ctx.cri.pod_status(&pod.id)?;
    ensure!(
        st.state == ContainerState::ContainerRunning as i32 && pst.state == PodSandboxState::SandboxReady as i32,
        "after the restart the container is {:?} (exit code {}, reason {:?}, message {:?}) and the pod {:?}",
        ContainerState::try_from(st.state).unwrap_or(ContainerState::ContainerUnknown),
        st.exit_code,
        st.reason,
        st.message,
        PodSandboxState::try_from(pst.state).unwrap_or(PodSandboxState::SandboxNotready)
    );
    ensure!(alive(ctx)?, "the writer {writer} died across the restart");
    let after = eventually(Duration::from_secs(30), "ticks after the restart", || {
        let n = read(&path)?.iter().filter(|e| e.content == "tick").count();
        Ok((n >= before + 5).then_some(n))
    })?;
    println!("  {before} ticks when containerd was back, {after} a moment later; writer {writer} alive");
    Ok(())
}
