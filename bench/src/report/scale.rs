//! Creation throughput through containerd and the soak, for the report: `ctr run --rm` of
//! `/bin/true` by N concurrent clients with strata's shim and runc's, and many container
//! lifecycles through the CLI and containerd with a census of what they left, faults injected
//! by kind, and the fuzz targets run for a bounded time.

use super::{Options, Outcome, progress};
use crate::containerd::{Containerd, peers, shim_binary};
use crate::load::{Load, run_load};
use crate::soak::{SoakOptions, SoakReport, soak};

/// The row labels of the throughput table (the prefixes the check looks for).
pub const THROUGHPUT_SYSTEMS: [&str; 2] = ["strata via containerd", "runc via containerd"];
/// The row labels of the reliability tables: the soak, the two kinds of faults, fuzzing.
pub const RELIABILITY_SYSTEMS: [&str; 4] =
    ["strata soak", "strata faults, CLI", "strata faults, containerd", "strata fuzzing"];

/// One runtime at one concurrency.
#[derive(Debug, Clone)]
pub struct ThroughputRow {
    /// `strata via containerd, N = 8`.
    pub system: String,
    /// The runtime (`strata`, `runc`) and N.
    pub peer: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    pub outcome: Outcome<ThroughputFigure>,
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThroughputFigure {
    pub tasks: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: usize,
    /// CPU ms per task: the ctr clients, containerd, and the rest (shim, runtime, kernel).
    pub cpu_ms: (f64, f64, f64),
}

impl From<&Load> for ThroughputFigure {
    fn from(l: &Load) -> Self {
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / l.tasks.max(1) as f64;
        ThroughputFigure {
            tasks: l.tasks,
            per_second: l.per_second(),
            p50_ms: l.quantile(0.5).as_secs_f64() * 1e3,
            p99_ms: l.quantile(0.99).as_secs_f64() * 1e3,
            failed: l.failures.len(),
            cpu_ms: (per(l.cpu.clients), per(l.cpu.containerd), per(l.cpu.rest())),
        }
    }
}

/// Concurrencies and tasks per runtime and concurrency.
fn plan(opts: &Options) -> (Vec<usize>, usize) {
    if opts.short { (vec![1, 8], 16) } else { (vec![1, 2, 8, 32], 300) }
}

/// The throughput rows: for each N, both runtimes, alternating which goes first.
pub fn throughput_rows(opts: &Options) -> Vec<ThroughputRow> {
    let (clients, tasks) = plan(opts);
    let runtimes: Vec<_> = peers().into_iter().filter(|p| p.name != "crun").collect();
    let label = |peer: &str, n: usize| format!("{peer} via containerd, N = {n}");
    let started = shim_binary().and_then(|shim| {
        let dir = shim.parent().ok_or_else(|| format!("{} has no directory", shim.display()))?.to_path_buf();
        let ctd = Containerd::start(Some(&dir))?;
        ctd.import_busybox()?;
        Ok(ctd)
    });
    let mut rows = Vec::new();
    let ctd = match started {
        Ok(ctd) => ctd,
        Err(e) => {
            for &n in &clients {
                for p in &runtimes {
                    rows.push(ThroughputRow {
                        system: label(p.name, n),
                        peer: p.name,
                        clients: n,
                        outcome: Outcome::Unavailable(e.clone()),
                    });
                }
            }
            return rows;
        }
    };
    for (round, &n) in clients.iter().enumerate() {
        let mut order: Vec<_> = runtimes.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for p in order {
            progress(format!("throughput: {} × ctr run --rm, {} at a time, {}", tasks, n, p.name));
            let load = run_load(&ctd, p, tasks, n, &format!("report-tp-{}-{n}", p.name));
            rows.push(ThroughputRow {
                system: label(p.name, n),
                peer: p.name,
                clients: n,
                outcome: Outcome::Measured(ThroughputFigure::from(&load)),
            });
        }
    }
    rows.sort_by_key(|r| (r.clients, r.peer != "strata"));
    rows
}

/// The soak, as the report runs it.
pub fn soak_row(opts: &Options) -> Outcome<SoakReport> {
    let n = if opts.short { 10 } else { 1000 };
    progress(format!("soak: {n} lifecycles through the CLI, {n} through containerd, {n} execs"));
    soak(SoakOptions { cli: n, containerd: n, clients: 4, execs: n, pods: n / 4 }).into()
}

/// The fault campaign, as the report runs it (four points of each kind in the short run).
pub fn fault_rows(opts: &Options) -> Outcome<Vec<crate::faults::FaultRow>> {
    progress("faults: kill -9 at each step of create, through the CLI and through containerd");
    crate::faults::campaign(opts.short).into()
}

/// What `fuzz/run.sh` reported.
#[derive(Debug, Clone, Default)]
pub struct FuzzSummary {
    /// Targets run, seconds each, inputs run in all, and the targets that failed.
    pub targets: usize,
    pub seconds: u32,
    pub inputs: u64,
    pub failed: Vec<String>,
}

/// Seconds per fuzz target in the full report.
const FUZZ_SECONDS: u32 = 15;

/// Every fuzz target for [`FUZZ_SECONDS`] (`fuzz/run.sh`, with rustup's nightly); left out of
/// the short run, whose CI runs the same script itself.
pub fn fuzz_row(opts: &Options) -> Outcome<FuzzSummary> {
    if opts.short {
        return Outcome::Unavailable(
            "left out of the short run (its build takes minutes): CI runs `bash fuzz/run.sh 5` as its last step".into(),
        );
    }
    progress(format!("fuzzing: every target for {FUZZ_SECONDS} s (fuzz/run.sh)"));
    let script = crate::images::repo_root().join("fuzz/run.sh");
    let out = match std::process::Command::new("bash").arg(&script).arg(FUZZ_SECONDS.to_string()).output() {
        Ok(o) => o,
        Err(e) => return Outcome::Unavailable(format!("{}: {e}", script.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_fuzz_summary(&stdout) {
        Some(mut s) => {
            s.seconds = FUZZ_SECONDS;
            Outcome::Measured(s)
        }
        None => Outcome::Unavailable(format!(
            "fuzz/run.sh printed no summary ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )),
    }
}

/// Reads fuzz/run.sh's last line: `fuzz: 12 targets, 2300000 inputs in all, 0 failed[: a b]`.
pub fn parse_fuzz_summary(stdout: &str) -> Option<FuzzSummary> {
    let line = stdout.lines().rev().find(|l| l.starts_with("fuzz: "))?;
    let rest = line.strip_prefix("fuzz: ")?;
    let (targets, rest) = rest.split_once(" targets, ")?;
    let (inputs, rest) = rest.split_once(" inputs in all, ")?;
    let failed = rest.split_once(": ").map(|(_, names)| names.split(' ').map(str::to_string).collect());
    Some(FuzzSummary {
        targets: targets.parse().ok()?,
        seconds: 0,
        inputs: inputs.parse().ok()?,
        failed: failed.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_summary_line_is_read() {
        let s = parse_fuzz_summary("fuzz a 1 runs\nfuzz: 12 targets, 2300000 inputs in all, 0 failed\n").unwrap();
        assert_eq!((s.targets, s.inputs, s.failed.len()), (12, 2_300_000, 0));
        let s = parse_fuzz_summary("fuzz: 3 targets, 10 inputs in all, 2 failed: a b\n").unwrap();
        assert_eq!(s.failed, ["a", "b"]);
        assert!(parse_fuzz_summary("nothing").is_none());
    }
}
