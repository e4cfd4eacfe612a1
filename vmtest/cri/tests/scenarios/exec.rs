//! e: ExecSync, as kubelet's probes use it; j: Exec and Attach through the streaming server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cri::client::StreamsWanted;
use cri::pod::{ContainerSpec, Namespaces, wait_state};
use cri::stream::{Ending, Session};
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

/// The longest a stream may take to deliver what a step waits for (TCG).
const STREAM_LIMIT: Duration = Duration::from_secs(30);

/// j: Exec and Attach through containerd's streaming server, as `kubectl exec` and `kubectl
/// attach` use them: an exec's stdin, stdout, stderr and exit code; an exec with a terminal
/// that follows a resize; a container's own stdin and output reached by Attach, twice (a
/// client that detaches leaves the container running and its stdin open).
pub fn exec_attach(ctx: &mut Ctx<'_>, scenario: &'static str) -> Result<()> {
    let pod = ctx.pod(scenario, "streams", Namespaces::default())?;
    let echo = "while read l; do echo \"got:$l\"; echo \"err:$l\" >&2; done; echo eof";
    let id = ctx.running(&pod, &ContainerSpec::sh("main", echo).interactive(false))?;
    let all = StreamsWanted { tty: false, stdin: true, stdout: true, stderr: true };

    let url = ctx.cri.exec(&id, &["sh", "-c", "read l; echo \"in:$l\"; echo oops >&2; exit 3"], all)?;
    let mut s = Session::open(&url)?;
    s.stdin(b"hello\n")?;
    let ending = s.wait(STREAM_LIMIT)?;
    ensure!(
        ending == Ending::Exit(3) && s.output.stdout_text() == "in:hello\n" && s.output.stderr_text() == "oops\n",
        "Exec: {ending:?}, stdout {:?}, stderr {:?}",
        s.output.stdout_text(),
        s.output.stderr_text()
    );
    s.close();

    let url = ctx.cri.exec(&id, &["true"], StreamsWanted { stdout: true, ..Default::default() })?;
    let mut s = Session::open(&url)?;
    let ending = s.wait(STREAM_LIMIT)?;
    ensure!(ending == Ending::Success, "Exec of `true`: {ending:?}");
    s.close();

    // A terminal: the resize reaches it (stty reads it back); stdin and stdout are the tty.
    let tty = StreamsWanted { tty: true, stdin: true, stdout: true, stderr: false };
    let url =
        ctx.cri.exec(&id, &["sh", "-c", "while read l; do [ \"$l\" = q ] && exit 0; stty size; tty; done"], tty)?;
    let mut s = Session::open(&url)?;
    s.resize(111, 37)?;
    let deadline = Instant::now() + STREAM_LIMIT;
    while !s.output.stdout_text().contains("37 111") {
        ensure!(Instant::now() < deadline, "the terminal never took the size 111x37: {:?}", s.output.stdout_text());
        s.stdin(b"x\n")?;
        let seen = s.output.stdout.len();
        let _ = s.read_until(Duration::from_secs(2), |o| o.stdout.len() > seen && o.stdout.ends_with(b"\n"));
    }
    // `tty` answers on the line after `stty size`; it may come in a later message.
    s.read_until(STREAM_LIMIT, |o| String::from_utf8_lossy(&o.stdout).contains("/dev/pts/"))
        .context("`tty` in an exec with a terminal")?;
    s.stdin(b"q\n")?;
    let ending = s.wait(STREAM_LIMIT)?;
    ensure!(ending == Ending::Success, "the terminal exec's ending: {ending:?}");
    s.close();

    // Attach to the container's own stdin and output, detach, attach again.
    for word in ["one", "two"] {
        let url = ctx.cri.attach(&id, all)?;
        let mut s = Session::open(&url)?;
        s.stdin(format!("{word}\n").as_bytes())?;
        let (out, err) = (format!("got:{word}\n"), format!("err:{word}\n"));
        s.read_until(STREAM_LIMIT, |o| o.stdout.ends_with(out.as_bytes()) && o.stderr.ends_with(err.as_bytes()))?;
        s.close();
        let st = ctx.cri.container_status(&id)?;
        ensure!(
            st.state == ContainerState::ContainerRunning as i32,
            "after detaching from attach {word}, the container is {:?}",
            st.state
        );
    }
    let log = std::fs::read_to_string(pod.log_path("main"))?;
    ensure!(
        log.contains("stdout F got:one") && log.contains("stderr F err:two"),
        "attached output not in the log: {log:?}"
    );
    Ok(())
}
