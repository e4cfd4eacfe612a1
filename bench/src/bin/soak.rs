//! The long soak: `cargo run --release -p strata-bench --bin soak` (1000 lifecycles through the
//! CLI, 1000 through containerd with strata's shim, 1000 execs into one container, 250 pods of a
//! sandbox and 3 containers), or shorter with `--cli N --containerd N --execs N --clients N --pods N`. Exits 1 when a lifecycle failed or
//! anything was left behind. Needs root, `cargo build --release -p strata-shim` and containerd.

use strata_bench::soak::{SoakOptions, soak};

fn main() {
    let mut opts = SoakOptions { cli: 1000, containerd: 1000, clients: 4, execs: 1000, pods: 250 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        let slot = match pair[0].as_str() {
            "--cli" => &mut opts.cli,
            "--containerd" => &mut opts.containerd,
            "--clients" => &mut opts.clients,
            "--execs" => &mut opts.execs,
            "--pods" => &mut opts.pods,
            other => {
                eprintln!("soak: unknown option {other:?} (--cli N, --containerd N, --clients N, --execs N, --pods N)");
                std::process::exit(2);
            }
        };
        match value {
            Some(v) => *slot = v,
            None => {
                eprintln!("soak: {} needs a number", pair[0]);
                std::process::exit(2);
            }
        }
    }
    match soak(opts) {
        Ok(report) => {
            for line in report.lines() {
                println!("{line}");
            }
            if !report.failures.is_empty() || !report.leaks.is_empty() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}
