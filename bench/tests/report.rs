//! The report end to end in short mode: runs the `report` binary into a temporary directory and
//! checks that REPORT.md and every chart exist and that the report is consistent (no NaN or
//! infinity, every system present or marked unavailable with a reason). Needs root, as CI runs
//! it; it uses `$STRATA_BIN` or strata's release binary (`cargo build --release -p strata-shim`), and
//! for the containerd rows `containerd-shim-strata-v1` next to it (or `$STRATA_SHIM_BIN`).
//! How long it takes is not asserted: timings belong to the report itself, not to a test.

use std::process::Command;

use strata_bench::report::check::check_report;

#[test]
fn short_report_is_complete_and_consistent() {
    assert!(nix::unistd::geteuid().is_root(), "the report runs containers and VMs: run this test as root");
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
    let status = Command::new(env!("CARGO_BIN_EXE_report"))
        .args(["--short", "--out"])
        .arg(out.path())
        .status()
        .unwrap_or_else(|e| panic!("running report: {e}"));
    let md = std::fs::read_to_string(out.path().join("REPORT.md")).unwrap_or_else(|e| panic!("REPORT.md: {e}"));
    let problems = check_report(&md);
    assert!(problems.is_empty(), "inconsistent report:\n{}\n\n{md}", problems.join("\n"));
    assert!(status.success(), "report exited with {status}");
    for chart in ["start.svg", "memory.svg", "density.svg", "images.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(svg.contains("<svg"), "{chart} is not an SVG");
    }
}
