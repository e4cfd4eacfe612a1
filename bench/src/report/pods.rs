//! Pods through containerd's CRI, as kubelet starts and removes them: RunPodSandbox,
//! CreateContainer and StartContainer of a one-container pod until it runs, then StopPodSandbox
//! and RemovePodSandbox; strata's handler against runc's on one containerd per version. CRI
//! needs a pure cgroup v2 machine, so the figures come from `vmtest/cri.sh --bench` (the bench
//! `vmtest/cri/benches/pods.rs`, in the project's TCG VM), whose `POD-BENCH` lines are read
//! here. The short run leaves it out: the VM and its release builds take minutes.

use std::process::Command;

use super::{Options, Outcome, progress};

/// The containerd versions and handlers measured, as row labels.
pub const SYSTEMS: [&str; 4] = [
    "strata (CRI, containerd 1.7",
    "runc (CRI, containerd 1.7",
    "strata (CRI, containerd 2.1",
    "runc (CRI, containerd 2.1",
];

/// One handler on one containerd.
#[derive(Debug, Clone)]
pub struct PodRow {
    /// `strata (CRI, containerd 2.1)`.
    pub system: String,
    pub outcome: Outcome<PodFigure>,
}

/// Medians over the rounds, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodFigure {
    pub start_ms: f64,
    pub teardown_ms: f64,
    pub rounds: usize,
}

fn label(handler: &str, version: &str) -> String {
    format!("{handler} (CRI, containerd {version})")
}

fn unavailable(why: &str) -> Vec<PodRow> {
    SYSTEMS.iter().map(|s| PodRow { system: format!("{s})"), outcome: Outcome::Unavailable(why.to_string()) }).collect()
}

/// Reads `POD-BENCH <containerd version> <handler> start_ms=X teardown_ms=Y rounds=N` lines.
pub fn parse(out: &str) -> Vec<PodRow> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "POD-BENCH" {
                return None;
            }
            let version: String = w.next()?.split('.').take(2).collect::<Vec<_>>().join(".");
            let handler = w.next()?;
            let mut f = PodFigure::default();
            for kv in w {
                let (k, v) = kv.split_once('=')?;
                match k {
                    "start_ms" => f.start_ms = v.parse().ok()?,
                    "teardown_ms" => f.teardown_ms = v.parse().ok()?,
                    "rounds" => f.rounds = v.parse().ok()?,
                    _ => {}
                }
            }
            Some(PodRow { system: label(handler, &version), outcome: Outcome::Measured(f) })
        })
        .collect()
}

/// Runs the bench in the VM (full runs only); every expected row is there, measured or with
/// the reason it is not.
pub fn rows(opts: &Options) -> Vec<PodRow> {
    if opts.short {
        return unavailable(
            "left out of the short run (the CRI VM and its release builds take minutes): \
             `cargo bench -p strata-cri-tests --bench pods`",
        );
    }
    progress("pods through CRI (vmtest/cri.sh --bench)");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmtest/cri.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--bench")
        .arg("--quiet")
        .env("STRATA_BENCH_ROUNDS", opts.pod_rounds().to_string())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return unavailable(&format!("running {}: {e}", script.display())),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = parse(&text);
    for s in SYSTEMS {
        if !rows.iter().any(|r| r.system.starts_with(s)) {
            let why = if out.status.success() {
                "the bench printed no figure for it".to_string()
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                format!("vmtest/cri.sh --bench failed ({}): {}", out.status, err.lines().last().unwrap_or_default())
            };
            rows.push(PodRow { system: format!("{s})"), outcome: Outcome::Unavailable(why) });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_become_rows() {
        let out = "pods: noise\nPOD-BENCH 2.1.9+unknown strata start_ms=812.5 teardown_ms=300.0 rounds=10\n\
                   POD-BENCH 1.7.24~ds1 runc start_ms=1500.0 teardown_ms=420.5 rounds=10\nPOD-BENCH broken\n";
        let rows = parse(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].system, "strata (CRI, containerd 2.1)");
        assert_eq!(rows[0].outcome.measured(), Some(&PodFigure { start_ms: 812.5, teardown_ms: 300.0, rounds: 10 }));
        assert_eq!(rows[1].system, "runc (CRI, containerd 1.7)");
    }

    #[test]
    fn the_short_run_names_every_row_with_its_reason() {
        let rows = rows(&Options { short: true, out: "/tmp".into() });
        assert_eq!(rows.len(), SYSTEMS.len());
        assert!(rows.iter().all(|r| matches!(&r.outcome, Outcome::Unavailable(w) if w.contains("cargo bench"))));
    }
}
