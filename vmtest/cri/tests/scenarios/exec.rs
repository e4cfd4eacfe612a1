//! e: ExecSync, as kubelet's probes use it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use cri::pod::{ContainerSpec, Namespaces, wait_state};
use k8s_cri::v1::ContainerState;

use super::{Ctx, STATE_LIMIT, eventually};

/// e: ExecSync returns the command's stdout, stderr and exit code; a command that outlives its
/// timeout is refused once the timeout passes and is killed; 10 probes at once, while another
/// container of the pod is being created, all answer rightly.
pub fn exec_sync(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "exec", Namespaces::default())?;
    let id = ctx.running(&pod, &ContainerSpec::sh("main", "exec sleep 3600"))?;

    let r = ctx.cri.exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"], 0)?;
    let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    ensure!(
        r.exit_code == 7 && out == "out\n" && err == "err\n",
        "ExecSync: exit {} stdout {out:?} stderr {err:?}",
        r.exit_code
    );

    let t = Instant::now();
    let timed = ctx.cri.exec_sync(&id, &["sleep", "30"], 2);
    let took = t.elapsed();
    match &timed {
        Err(e) if e.code() == Some(tonic::Code::DeadlineExceeded) || e.to_string().contains("timeout") => {}
        other => bail!("ExecSync of `sleep 30` with a 2 s timeout: {other:?} after {took:?}, not a timeout error"),
    }
    ensure!(took < Duration::from_secs(20), "ExecSync with a 2 s timeout answered after {took:?}");
    eventually(Duration::from_secs(15), "the timed-out exec killed", || {
        let ps = ctx.sh(&id, "ps -o args")?;
        Ok((!ps.lines().any(|l| l.trim() == "sleep 30")).then_some(()))
    })?;

    // Ten probes at once while a second container is created and started.
    let client = ctx.cri.client();
    let spec = ContainerSpec::sh("second", "exec sleep 3600");
    pod.log_path("second");
    let (config, sandbox, pod_id) = (spec.config(&pod.config), pod.config.clone(), pod.id.clone());
    let (probes, second) = ctx.cri.block_on(async {
        let creator = {
            let c = client.clone();
            tokio::spawn(async move {
                let id = c.create_container(&pod_id, &config, &sandbox).await?;
                c.start_container(&id).await?;
                Ok::<_, cri::Error>(id)
            })
        };
        let mut set = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (c, id) = (client.clone(), id.clone());
            set.spawn(async move {
                let word = format!("probe-{i}");
                let r = c.exec_sync(&id, &["echo", &word], 30).await;
                (word, r)
            });
        }
        let mut probes = Vec::new();
        while let Some(r) = set.join_next().await {
            probes.push(r);
        }
        (probes, creator.await)
    });
    for p in probes {
        let (word, r) = p?;
        let r = r?;
        ensure!(
            r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == format!("{word}\n"),
            "probe {word}: exit {} stdout {:?} stderr {:?}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let second = second??;
    wait_state(&ctx.cri, &second, ContainerState::ContainerRunning, STATE_LIMIT)?;
    Ok(())
}
