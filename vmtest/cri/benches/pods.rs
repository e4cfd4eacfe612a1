//! Pod start and teardown through containerd's CRI, strata's handler against runc's on the same
//! containerd, in interleaved rounds.
//!
//! - start: RunPodSandbox, CreateContainer, StartContainer of a one-container pod, until
//!   ContainerStatus says it runs (what kubelet waits for before a pod's probes begin);
//! - teardown: StopPodSandbox (which kills the container) and RemovePodSandbox.
//!
//! CRI needs a pure cgroup v2 machine, so on the development machines `cargo bench -p
//! strata-cri-tests --bench pods` runs `vmtest/cri.sh --bench`, which builds this bench static
//! and runs it in the VM (`STRATA_CRI=1`) against containerd 1.7 and 2.1; each run prints the
//! medians and the ratio strata/runc. Rounds: `STRATA_BENCH_ROUNDS` (default 15, after one
//! warm-up round each); handlers: `STRATA_CRI_BENCH_HANDLERS` (default `strata runc`, the
//! first is compared with the others). The other settings are the suite's (`cri::Settings`).

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cri::pod::{ContainerSpec, Namespaces, Pod, pod_cgroup, sandbox_config, wait_state};
use cri::{Containerd, Cri, Settings};
use k8s_cri::v1::ContainerState;

fn main() -> ExitCode {
    // libtest-style arguments (`--bench`) from cargo are of no use here.
    if std::env::var("STRATA_CRI").as_deref() != Ok("1") {
        return on_the_host();
    }
    match measure() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("pods: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Boots the VM through `vmtest/cri.sh --bench`, which runs this bench inside it.
fn on_the_host() -> ExitCode {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    println!("pods: CRI needs a pure cgroup v2 machine: running this bench in the VM (vmtest/cri.sh --bench)");
    match Command::new("bash").arg(repo.join("vmtest/cri.sh")).arg("--bench").status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            println!("pods: vmtest/cri.sh --bench failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("pods: cannot run vmtest/cri.sh: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One round's figures for one handler.
struct Round {
    start: Duration,
    teardown: Duration,
}

fn one_pod(cri: &Cri, settings: &Settings, handler: &str, n: usize) -> Result<Round> {
    let config =
        sandbox_config(&settings.dir.join("logs"), "bench", &format!("bench-{handler}-{n}"), Namespaces::default())?;
    let uid = config.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
    let spec = ContainerSpec::sh("main", "exec sleep 3600");
    let t = Instant::now();
    let pod = Pod::run(cri, handler, config).with_context(|| format!("RunPodSandbox ({handler})"))?;
    let measured = (|| -> Result<Round> {
        let id = pod.start(cri, &spec).with_context(|| format!("Create/StartContainer ({handler})"))?;
        wait_state(cri, &id, ContainerState::ContainerRunning, Duration::from_secs(60))?;
        let start = t.elapsed();
        let t = Instant::now();
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
        Ok(Round { start, teardown: t.elapsed() })
    })();
    if measured.is_err() {
        let _ = cri.stop_pod(&pod.id);
        let _ = cri.remove_pod(&pod.id);
    }
    // kubelet removes the pod's cgroup once the pod is gone (not part of the figure).
    let _ = std::fs::remove_dir(pod_cgroup(&uid));
    measured
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn measure() -> Result<()> {
    let settings = Settings::from_env()?;
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15).max(1);
    let handlers: Vec<String> = std::env::var("STRATA_CRI_BENCH_HANDLERS")
        .unwrap_or_else(|_| "strata runc".into())
        .split_whitespace()
        .map(String::from)
        .collect();
    if handlers.is_empty() {
        bail!("STRATA_CRI_BENCH_HANDLERS names no handler");
    }
    let ctd = Containerd::start(&settings)?;
    let cri = ctd.client()?;
    let version = cri.version()?;
    println!(
        "pods: {} {}, handlers {}, {rounds} interleaved rounds after one warm-up each",
        version.runtime_name,
        version.runtime_version,
        handlers.join(" ")
    );
    let mut start: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    let mut teardown: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    for (i, h) in handlers.iter().enumerate() {
        one_pod(&cri, &settings, h, i).with_context(|| format!("warm-up pod with {h}"))?;
    }
    for r in 0..rounds {
        // Alternate which handler goes first, so neither always follows the other's teardown.
        let mut order: Vec<usize> = (0..handlers.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let round = one_pod(&cri, &settings, &handlers[i], 100 + r)?;
            start[i].push(round.start);
            teardown[i].push(round.teardown);
        }
    }
    let start_m: Vec<Duration> = start.iter_mut().map(|v| median(v)).collect();
    let teardown_m: Vec<Duration> = teardown.iter_mut().map(|v| median(v)).collect();
    for (i, h) in handlers.iter().enumerate() {
        println!(
            "pods: {h:<7} start median {:>8.1} ms (min {:>7.1}, max {:>7.1})  teardown median {:>8.1} ms (min {:>7.1}, max {:>7.1})",
            ms(start_m[i]),
            ms(start[i][0]),
            ms(start[i][start[i].len() - 1]),
            ms(teardown_m[i]),
            ms(teardown[i][0]),
            ms(teardown[i][teardown[i].len() - 1]),
        );
    }
    for (i, h) in handlers.iter().enumerate().skip(1) {
        println!(
            "pods: ratio {}/{h}: start {:.2}, teardown {:.2}",
            handlers[0],
            start_m[0].as_secs_f64() / start_m[i].as_secs_f64(),
            teardown_m[0].as_secs_f64() / teardown_m[i].as_secs_f64(),
        );
    }
    // Machine-readable, for the report.
    for (i, h) in handlers.iter().enumerate() {
        println!(
            "POD-BENCH {} {h} start_ms={:.1} teardown_ms={:.1} rounds={rounds}",
            version.runtime_version,
            ms(start_m[i]),
            ms(teardown_m[i])
        );
    }
    Ok(())
}
