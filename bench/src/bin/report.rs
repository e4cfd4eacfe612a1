//! `report`: runs the containers-against-VMs suite and writes REPORT.md and SVG charts.
//!
//!     cargo run --release -p strata-bench --bin report -- [--short] [--out DIR]
//!
//! Needs root (containers, VMs). Progress goes to stderr; the report to DIR (default
//! bench/report). Exits non-zero if the report fails its own consistency check.

use std::path::PathBuf;

use anyhow::{Context, bail};
use strata_bench::report::{Options, charts, check, markdown, run_suite};

fn main() -> anyhow::Result<()> {
    let mut short = false;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/report"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--short" => short = true,
            "--out" => out = PathBuf::from(args.next().context("--out needs a directory")?),
            "-h" | "--help" => {
                println!("usage: report [--short] [--out DIR]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (usage: report [--short] [--out DIR])"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the report runs containers and VMs: run it as root");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = Options { short, out: out.clone() };
    let report = run_suite(&opts);
    let command = format!("cargo run --release -p strata-bench --bin report --{}", if short { " --short" } else { "" });
    let md = markdown::render(&report, &command);
    let path = out.join("REPORT.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    charts::write_all(&out, &report).map_err(anyhow::Error::msg).context("drawing the charts")?;
    eprintln!("report: wrote {} and its charts in {:.0} s", path.display(), report.elapsed_s);
    let problems = check::check_report(&md);
    if !problems.is_empty() {
        bail!("the report is inconsistent:\n{}", problems.join("\n"));
    }
    Ok(())
}
