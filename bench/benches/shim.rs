//! The containerd shim: `ctr run --rm IMAGE id /bin/true` through strata's shim
//! (`io.containerd.strata.v1`) against containerd's runc v2 shim (runc, and crun through it when
//! installed), and the resident memory of each shim per running container, in one run.
//!
//! Protects two figures: strata's `ctr run` median ≤ 0.6× runc's, and strata's shim RSS ≤ 2 MiB
//! per container (published: Go shim ≈ 11 MB, rust-extensions' Rust runc shim ≈ 3.45 MB).
//! A private containerd ([`strata_bench::containerd`]: own root, state and socket, CRI disabled)
//! is started with the shim next to the strata binary (`$STRATA_BIN`, default
//! `target/release/strata`; or `$STRATA_SHIM_BIN`) first on its PATH; `$STRATA_CONTAINERD` picks
//! another containerd. Rounds: env STRATA_BENCH_ROUNDS (default 20).

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use strata_bench::containerd::{Containerd, Peer, peers, shim_binary, shim_pid};
use strata_bench::median;

/// Running containers per runtime for the memory figure.
const RESIDENT: usize = 3;

fn start_containerd() -> Containerd {
    let shim = shim_binary().unwrap_or_else(|e| panic!("{e}"));
    println!("shim: strata's shim is {}", shim.display());
    let shim_dir = shim.parent().unwrap_or_else(|| panic!("{} has no directory", shim.display()));
    let ctd = Containerd::start(Some(shim_dir)).unwrap_or_else(|e| panic!("{e}"));
    ctd.import_busybox().unwrap_or_else(|e| panic!("{e}"));
    ctd
}

/// `ctr run` that must succeed.
fn run(ctd: &Containerd, peer: &Peer, extra: &[&str], id: &str, cmd: &[&str]) -> Duration {
    ctd.run(peer, extra, id, cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// (RSS, PSS) in KiB from procfs.
fn memory_kib(pid: i32) -> (u64, u64) {
    let field = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(peer: &Peer) -> String {
    format!("b-{}-{}", peer.name, SEQ.fetch_add(1, Ordering::Relaxed))
}

fn shim(c: &mut Criterion) {
    let ctd = start_containerd();
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut peers = peers();
    // A peer that cannot run here (crun refuses hybrid cgroups through the runc shim) is
    // reported and left out; strata must run.
    peers.retain(|p| match ctd.run(p, &["--rm"], &next_id(p), &["/bin/true"]) {
        Ok(_) => true,
        Err(e) if p.name != "strata" => {
            eprintln!("shim: {} unavailable: {e}", p.name);
            false
        }
        Err(e) => panic!("{e}"),
    });
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for _ in 0..rounds {
        for (i, p) in peers.iter().enumerate() {
            times[i].push(run(&ctd, p, &["--rm"], &next_id(p), &["/bin/true"]));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!("\nshim: ctr run --rm IMAGE id /bin/true; {rounds} interleaved rounds");
    for (p, m) in peers.iter().zip(&medians) {
        println!("shim: {:<6} median {:>8.2} ms", p.name, m.as_secs_f64() * 1e3);
    }
    for (p, m) in peers.iter().zip(&medians).skip(1) {
        println!(
            "shim: ratio strata/{} = {:.2} (target ≤ 0.60 against runc)",
            p.name,
            medians[0].as_secs_f64() / m.as_secs_f64()
        );
    }

    println!("\nshim: resident memory of the shim per running container ({RESIDENT} containers each)");
    for p in &peers {
        let mut rss = Vec::new();
        let mut pss = Vec::new();
        for _ in 0..RESIDENT {
            let id = next_id(p);
            run(&ctd, p, &["-d"], &id, &["sleep", "1000"]);
            let pid = shim_pid(p.shim, &id).unwrap_or_else(|| panic!("no {} shim for {id}", p.name));
            let (r, s) = memory_kib(pid);
            rss.push(r);
            pss.push(s);
        }
        let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
        println!("shim: {:<6} RSS {:>6.2} MiB  PSS {:>6.2} MiB", p.name, avg(&rss), avg(&pss));
        if p.name == "strata" {
            println!("shim: strata RSS target ≤ 2.00 MiB: {}", if avg(&rss) <= 2.0 { "met" } else { "NOT met" });
        }
    }

    let mut group = c.benchmark_group("shim");
    group.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    for p in &peers {
        group.bench_function(p.name, |b| b.iter(|| run(&ctd, p, &["--rm"], &next_id(p), &["/bin/true"])));
    }
    group.finish();
}

criterion_group!(benches, shim);
criterion_main!(benches);
