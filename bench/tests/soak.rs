//! The soak in short mode (CI): 40 lifecycles through the CLI, 40 through containerd with
//! strata's shim, 40 execs into one container, 10 pods of a sandbox and 3 containers; nothing may fail and nothing may be left
//! behind. The long soak is `cargo run --release -p strata-bench --bin soak`.

use strata_bench::soak::{SoakOptions, soak};

#[test]
fn short_soak_fails_nothing_and_leaves_nothing() {
    assert!(nix::unistd::geteuid().is_root(), "the soak creates real containers: run it as root");
    let report = soak(SoakOptions { cli: 40, containerd: 40, clients: 4, execs: 40, pods: 10 })
        .unwrap_or_else(|e| panic!("{e}"));
    for line in report.lines() {
        println!("{line}");
    }
    assert_eq!(
        (report.cli, report.containerd, report.execs, report.pods, report.pod_containers),
        (40, 40, 40, 10, 10 * strata_bench::soak::POD_CONTAINERS),
        "{:?}",
        report.failures
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.leaks.is_empty(), "{:?}", report.leaks);
}
