//! Start time: `run` (create + start + wait + delete) of `/bin/true` in a busybox bundle with
//! the default namespaces (network included), for strata and, in the same run, crun and runc.
//!
//! Protects the figure "strata's median ≤ crun's". Besides criterion's own report, the bench
//! times interleaved rounds (one run of each runtime per round, so drift hits all alike) and
//! prints each median and the ratio strata/peer. With `STRATA_BENCH_BASELINE=PATH` (a `strata`
//! built from an earlier commit) that build runs in the same rounds as peer `baseline`, so that
//! the ratio strata/baseline says what the changes since cost the start path.
//!
//! The floor runs in the same rounds: the bare kernel work of a start without a runtime —
//! util-linux's `unshare` of the bundle's namespaces, `chroot` into its root file system and
//! exec of `/bin/true` — so that strata/floor says how much of strata's time is its own.

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strata_bench::{BusyboxBundle, Runtime, floor_command, median, run_once, runtimes, unshare_flags};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(rt: &Runtime) -> String {
    format!("bench-{}-{}-{}", rt.name, std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn startup(c: &mut Criterion) {
    let rts = runtimes().unwrap_or_else(|e| panic!("{e}"));
    let bundle = BusyboxBundle::new(&["/bin/true"]).unwrap_or_else(|e| panic!("{e}"));
    let state = tempfile::tempdir().expect("state root");
    // Rounds: env STRATA_BENCH_ROUNDS (default 40).
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let mut usable = Vec::new();
    for rt in &rts {
        match run_once(rt, bundle.path(), state.path(), &next_id(rt)) {
            Ok(_) => usable.push(rt.clone()),
            Err(e) => eprintln!("startup: {} unavailable: {e}", rt.name),
        }
    }
    let flags = unshare_flags(bundle.path());
    let rootfs = bundle.path().join("rootfs");
    let floor_once = || -> Result<Duration, String> {
        let t = Instant::now();
        let status = floor_command(&flags, &rootfs, &["/bin/true"])
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("unshare: {e}"))?;
        if !status.success() {
            return Err(format!("unshare ... chroot ... /bin/true: {status}"));
        }
        Ok(t.elapsed())
    };
    let floor_works = match floor_once() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("startup: floor unavailable: {e}");
            false
        }
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); usable.len()];
    let mut floor = Vec::new();
    for _ in 0..rounds {
        for (i, rt) in usable.iter().enumerate() {
            let t = run_once(rt, bundle.path(), state.path(), &next_id(rt)).unwrap_or_else(|e| panic!("{e}"));
            times[i].push(t);
        }
        if floor_works {
            floor.push(floor_once().unwrap_or_else(|e| panic!("{e}")));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    println!("\nstartup: run /bin/true, busybox bundle, default namespaces; {rounds} interleaved rounds");
    for (rt, m) in usable.iter().zip(&medians) {
        println!("startup: {:<6} median {:>8.2} ms", rt.name, m.as_secs_f64() * 1e3);
    }
    for (rt, m) in usable.iter().zip(&medians).skip(1) {
        println!("startup: ratio strata/{} = {:.2}", rt.name, medians[0].as_secs_f64() / m.as_secs_f64());
    }
    if floor_works {
        let f = median(&mut floor);
        println!(
            "startup: floor (unshare {} --fork chroot rootfs /bin/true) median {:>8.2} ms",
            flags.join(" "),
            f.as_secs_f64() * 1e3
        );
        println!("startup: ratio strata/floor = {:.2} (target ≤ 1.5)", medians[0].as_secs_f64() / f.as_secs_f64());
    }

    let mut group = c.benchmark_group("startup");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_millis(500));
    for rt in &usable {
        group.bench_function(rt.name, |b| {
            b.iter(|| run_once(rt, bundle.path(), state.path(), &next_id(rt)).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
