//! The CRI suite: containerd's CRI (v1) driven as kubelet drives it, with one runtime handler
//! (`STRATA_CRI_HANDLER`: `strata` or `runc`) on one containerd (`STRATA_CRI_CONTAINERD`).
//! It needs a pure cgroup v2 machine and root, so it runs only with `STRATA_CRI=1`
//! (`vmtest/cri.sh` runs it in the VM); otherwise it reports every scenario ignored.
//!
//! Its own runner (not libtest): one containerd serves every scenario; the independent
//! scenarios run at once (`STRATA_CRI_JOBS` at a time, default 8: the VM's time goes to
//! waiting as much as to work), then those that need the node to themselves, in order, the leak
//! check last; each scenario's pods are swept after it whatever happened, and each prints
//! `CRI-RESULT <scenario> ok|FAILED <seconds>s [error]`.
//!
//!     cri [FILTER...] [--skip FILTER] [--list]
//!
//! `STRATA_CRI_SLOW=0` leaves out the slow scenarios (20 pods × 3 containers, the containerd
//! restart); the scenario of strata's snapshotter runs only with `STRATA_CRI_SNAPSHOTTER=strata`.
//! The other settings are read by `cri::Settings::from_env`.

mod scenarios;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use cri::{Containerd, Settings};
use scenarios::{Ctx, Node, SCENARIOS, Scenario};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => {
                for s in SCENARIOS {
                    println!("{}: test", s.name);
                }
                return ExitCode::SUCCESS;
            }
            "--skip" => skips.extend(it.next().cloned()),
            // libtest's flags, which `cargo test` may pass on: nothing to do here.
            f if f.starts_with('-') => {}
            f => filters.push(f.to_string()),
        }
    }
    let slow = std::env::var("STRATA_CRI_SLOW").as_deref() != Ok("0");
    let strata_snapshotter = std::env::var("STRATA_CRI_SNAPSHOTTER").as_deref() == Ok("strata");
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|s| strata_snapshotter || !s.strata_snapshotter)
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .filter(|s| !skips.iter().any(|f| s.name.contains(f.as_str())))
        .filter(|s| slow || !s.slow)
        .collect();
    if std::env::var("STRATA_CRI").as_deref() != Ok("1") {
        println!("cri: needs STRATA_CRI=1, root and a pure cgroup v2 machine: `vmtest/cri.sh` runs it in the VM");
        println!("test result: ok. 0 passed; 0 failed; {} ignored; 0 measured; 0 filtered out", SCENARIOS.len());
        return ExitCode::SUCCESS;
    }
    match run(&chosen) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("cri: cannot run the suite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(chosen: &[&Scenario]) -> cri::Result<bool> {
    let settings = Settings::from_env()?;
    let jobs: usize = std::env::var("STRATA_CRI_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(8).max(1);
    let started = Instant::now();
    let ctd = Containerd::start(&settings)?;
    let version = ctd.client()?.version()?;
    println!(
        "cri: {} {} (CRI {}), handler {}, containerd up in {:.1}s",
        version.runtime_name,
        version.runtime_version,
        version.runtime_api_version,
        settings.handler,
        started.elapsed().as_secs_f64()
    );
    let node = Node::new(ctd);
    let (together, alone): (Vec<&Scenario>, Vec<&Scenario>) = chosen.iter().partition(|s| !s.alone);
    let queue = Mutex::new(together.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(s) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
                    let ok = run_one(&node, &settings.handler, s);
                    outcomes.lock().unwrap_or_else(|e| e.into_inner()).push(ok);
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    for s in alone {
        outcomes.push(run_one(&node, &settings.handler, s));
    }
    println!("cri: containerd's log: {}", settings.log.display());
    drop(node);
    let passed = outcomes.iter().filter(|ok| **ok).count();
    println!("cri: the suite took {:.0}s", started.elapsed().as_secs_f64());
    println!("cri: {passed} passed, {} failed", outcomes.len() - passed);
    Ok(passed == outcomes.len())
}

/// Runs one scenario with a client of its own, sweeps its pods whatever happened, prints its
/// result line; whether it passed.
fn run_one(node: &Node, handler: &str, s: &Scenario) -> bool {
    let t = Instant::now();
    let cri = match node.containerd().client() {
        Ok(c) => c,
        Err(e) => {
            println!("CRI-RESULT {} FAILED 0.0s no CRI client: {e}", s.name);
            return false;
        }
    };
    let mut ctx = Ctx { node, cri, handler: handler.to_string() };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (s.run)(&mut ctx, s.name)));
    let mut error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => Some(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    // A scenario that passed but whose pods cannot be removed fails.
    let problems = cri::pod::sweep(&ctx.cri, s.name);
    if !problems.is_empty() {
        let text = format!("cleanup: {}", problems.join("; "));
        error = Some(error.map_or(text.clone(), |e| format!("{e}; {text}")));
    }
    let secs = t.elapsed().as_secs_f64();
    match &error {
        None => println!("CRI-RESULT {} ok {secs:.1}s", s.name),
        Some(e) => println!("CRI-RESULT {} FAILED {secs:.1}s {}", s.name, e.replace('\n', " | ")),
    }
    error.is_none()
}
