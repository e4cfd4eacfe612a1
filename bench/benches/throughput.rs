//! Creation throughput through containerd: `tasks` containers of `/bin/true` (`ctr run --rm`)
//! started by N concurrent clients, N = 1, 2, 8 and 32, strata's shim against containerd's runc
//! v2 shim in the same run and the same containerd; tasks per second, p50 and p99 latency, and
//! failures. The target (issue #17): strata ≥ 4× runc's shim in tasks/s at N = 8, and no failure
//! at N = 32.
//!
//! env: STRATA_BENCH_TASKS (default 120 per peer and N; the figure is 1000),
//! STRATA_BENCH_CLIENTS (default "1,2,8,32"), and those of [`strata_bench::containerd`]
//! (`$STRATA_BIN`, `$STRATA_SHIM_BIN`, `$STRATA_CONTAINERD`).

use strata_bench::containerd::{Containerd, peers, shim_binary};
use strata_bench::load::{Load, run_load};

fn main() {
    let tasks: usize = std::env::var("STRATA_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
    let clients: Vec<usize> = std::env::var("STRATA_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,2,8,32".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let shim = shim_binary().unwrap_or_else(|e| panic!("{e}"));
    println!("throughput: strata's shim is {}", shim.display());
    let shim_dir = shim.parent().unwrap_or_else(|| panic!("{} has no directory", shim.display()));
    let ctd = Containerd::start(Some(shim_dir)).unwrap_or_else(|e| panic!("{e}"));
    ctd.import_busybox().unwrap_or_else(|e| panic!("{e}"));
    let peers: Vec<_> = peers().into_iter().filter(|p| p.name != "crun").collect();
    println!("throughput: {tasks} × `ctr run --rm IMAGE id /bin/true` per runtime and N; runtimes alternate");
    println!("throughput: {:<6} {:>3} {:>9} {:>9} {:>9} {:>8}", "shim", "N", "tasks/s", "p50 ms", "p99 ms", "failed");
    for (round, &n) in clients.iter().enumerate() {
        let mut results: Vec<(&str, Load)> = Vec::new();
        // Alternate which runtime goes first, so that neither always meets a warm machine.
        let mut order: Vec<_> = peers.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for p in order {
            let load = run_load(&ctd, p, tasks, n, &format!("tp-{}-{n}", p.name));
            println!(
                "throughput: {:<6} {:>3} {:>9.1} {:>9.1} {:>9.1} {:>8}",
                p.name,
                n,
                load.per_second(),
                load.quantile(0.5).as_secs_f64() * 1e3,
                load.quantile(0.99).as_secs_f64() * 1e3,
                load.failures.len()
            );
            let per_task = |d: std::time::Duration| d.as_secs_f64() * 1e3 / load.tasks.max(1) as f64;
            println!(
                "throughput:   CPU per task: ctr {:.1} ms, containerd {:.1} ms, shim + runtime + kernel {:.1} ms",
                per_task(load.cpu.clients),
                per_task(load.cpu.containerd),
                per_task(load.cpu.rest())
            );
            for f in load.failures.iter().take(3) {
                println!("throughput:   {f}");
            }
            results.push((p.name, load));
        }
        let get = |name: &str| results.iter().find(|(p, _)| *p == name).map(|(_, l)| l);
        if let (Some(s), Some(r)) = (get("strata"), get("runc")) {
            let ratio = s.per_second() / r.per_second().max(1e-9);
            let target = if n == 8 { " (target ≥ 4.0)" } else { "" };
            println!("throughput: N = {n}: strata/runc tasks/s = {ratio:.2}{target}");
            // What the runtimes themselves cost, and what the same client and containerd allow.
            let own = |l: &Load| l.cpu.rest().as_secs_f64() / l.tasks.max(1) as f64;
            let common = |l: &Load| (l.cpu.clients + l.cpu.containerd).as_secs_f64() / l.tasks.max(1) as f64;
            println!(
                "throughput: N = {n}: CPU per task of shim + runtime + kernel, strata/runc = {:.2}; with that at zero, \
                 ctr and containerd alone would allow strata/runc ≤ {:.2}",
                own(s) / own(r).max(1e-9),
                (common(r) + own(r)) / common(s).max(1e-9)
            );
        }
    }
}
