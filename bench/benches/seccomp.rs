//! Filter cost: a cheap syscall under no filter, under Docker's default profile compiled by strata,
//! and under the same profile compiled by libseccomp (as runc builds it), in the same run.
//!
//! Protects the figure "strata's per-syscall overhead ≤ libseccomp's" (ratio ≤ 1.0). Every
//! measurement runs in a forked child that sets no_new_privs, installs its filter with
//! `seccomp(2)` (flags 0 for both programs, so the kernel treats them alike), times N calls and
//! sends the elapsed time back over a pipe; in the interleaved rounds that print the ratio, the
//! child also times N calls before installing, and the overhead is that paired difference, which
//! other load on the machine disturbs far less than a comparison across processes. Two probes:
//!
//! * `getppid`: the figure. The profile allows it whatever its arguments, so a kernel with
//!   the seccomp action cache (5.11+) may skip the filter for it altogether; the figure then shows
//!   whether each program stays simple enough for the kernel to prove that;
//! * `personality(0xffffffff)` (a query): allowed only by an argument condition, so the program
//!   runs on every call; this is the figure that shows the cost of the program itself.
//!
//! libseccomp is also measured with `SCMP_FLTATR_CTL_OPTIMIZE` 2 (its binary tree, off by
//! default) for reference. Rounds: env STRATA_BENCH_ROUNDS (default 21).

use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

/// Calls per measurement in the interleaved rounds (before and after installing).
const CALLS: u64 = 100_000;
/// Calls before the clock starts, in each child.
const WARM_UP_CALLS: u64 = 5_000;

/// The syscall timed.
#[derive(Clone, Copy)]
enum Probe {
    Getppid,
    PersonalityQuery,
}

impl Probe {
    const ALL: [Probe; 2] = [Probe::Getppid, Probe::PersonalityQuery];

    fn name(self) -> &'static str {
        match self {
            Probe::Getppid => "getppid",
            Probe::PersonalityQuery => "personality(0xffffffff)",
        }
    }

    #[inline(always)]
    fn call(self) {
        match self {
            // SAFETY: getppid has no arguments and cannot fail.
            Probe::Getppid => std::hint::black_box(unsafe { libc::getppid() }),
            // SAFETY: 0xffffffff only queries the persona; nothing changes and no memory is passed.
            Probe::PersonalityQuery => std::hint::black_box(unsafe { libc::personality(0xffff_ffff) }),
        };
    }
}

/// What a child installs before timing.
enum Setup {
    Unfiltered,
    Strata(seccomp::Filter),
    /// A program exported by libseccomp, installed as it would be (`seccomp_load` with default
    /// attributes calls `seccomp(SECCOMP_SET_MODE_FILTER, 0, ...)`).
    Exported(Vec<libc::sock_filter>),
}

struct Config {
    name: &'static str,
    setup: Setup,
}

/// Installs `program` with `seccomp(2)` and no flags.
fn install_exported(program: &[libc::sock_filter]) -> std::io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `program`, alive for the call; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog)
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Times `calls` calls of `probe`.
fn time_calls(probe: Probe, calls: u64) -> u64 {
    for _ in 0..WARM_UP_CALLS {
        probe.call();
    }
    let start = Instant::now();
    for _ in 0..calls {
        probe.call();
    }
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs in the forked child: nothing here allocates, and the child leaves with `_exit`.
fn child_measure(setup: &Setup, probe: Probe, baseline_calls: u64, calls: u64, out: &OwnedFd) -> ! {
    // the same calls before the filter, in the same process, for a paired difference
    let before = if baseline_calls > 0 { time_calls(probe, baseline_calls) } else { 0 };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let installed = nnp == 0
        && match setup {
            Setup::Unfiltered => true,
            Setup::Strata(filter) => filter.install().is_ok(),
            Setup::Exported(program) => install_exported(program).is_ok(),
        };
    if !installed {
        // SAFETY: _exit ends the child without running the parent's destructors or atexit hooks.
        unsafe { libc::_exit(2) };
    }
    let after = time_calls(probe, calls);
    let mut report = [0u8; 16];
    report[..8].copy_from_slice(&before.to_ne_bytes());
    report[8..].copy_from_slice(&after.to_ne_bytes());
    // SAFETY: `report` is a live 16-byte buffer and `out` an open pipe end owned by this process.
    let written = unsafe { libc::write(out.as_raw_fd(), report.as_ptr().cast(), report.len()) };
    // SAFETY: as above.
    unsafe { libc::_exit(if written == 16 { 0 } else { 3 }) }
}

/// Forks a child that makes `baseline_calls` calls of `probe`, installs `setup` and makes `calls`
/// more; returns the time of both batches.
fn measure(setup: &Setup, probe: Probe, baseline_calls: u64, calls: u64) -> (Duration, Duration) {
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child runs only `child_measure`, which makes raw syscalls, reads the clock and
    // exits with _exit: no allocation, no lock another thread of the parent might hold.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            child_measure(setup, probe, baseline_calls, calls, &write_end)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            let mut buf = [0u8; 16];
            let n = nix::unistd::read(read_end.as_fd(), &mut buf).expect("read from the measuring child");
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert!(
                n == 16 && status == nix::sys::wait::WaitStatus::Exited(child, 0),
                "measuring child failed ({status:?}): run the bench as root on a kernel with seccomp"
            );
            let nanos = |b: &[u8]| Duration::from_nanos(u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])));
            (nanos(&buf[..8]), nanos(&buf[8..]))
        }
    }
}

/// The profile `strata spec` writes: Docker's default, resolved for the default capabilities.
fn profile() -> LinuxSeccomp {
    let caps: Vec<String> = engine::spec::DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_string()).collect();
    seccomp::default_profile(&caps)
}

/// Compiles `profile` with libseccomp the way runc does: the listed architectures, every rule
/// whose names libseccomp resolves, conditions as given; `optimize` 2 asks for its binary tree.
fn libseccomp_program(profile: &LinuxSeccomp, optimize: Option<u32>) -> Vec<libc::sock_filter> {
    let errno = |e: Option<u32>| ScmpAction::Errno(e.map_or(libc::EPERM, |e| e as i32));
    let action = |a: LinuxSeccompAction, e: Option<u32>| match a {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => errno(e),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        _ => ScmpAction::KillThread,
    };
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).expect("libseccomp context");
    if let Some(level) = optimize {
        ctx.set_ctl_optimize(level).expect("libseccomp optimize attribute");
    }
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch).expect("arch serializes");
        let arch = ScmpArch::from_str(name.as_str().unwrap_or_default()).expect("libseccomp knows the arch");
        // the native arch is already in the context: libseccomp refuses it again (runc's
        // libseccomp-golang checks first)
        if !ctx.is_arch_present(arch).unwrap_or(false) {
            ctx.add_arch(arch).expect("add arch");
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let (op, datum) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
                    LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
                    LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
                    LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        (ScmpCompareOp::MaskedEqual(a.value()), a.value_two().unwrap_or(0))
                    }
                };
                ScmpArgCompare::new(a.index() as u32, op, datum)
            })
            .collect();
        for name in rule.names() {
            // runc skips names its libseccomp does not know
            if let Ok(sys) = ScmpSyscall::from_name(name) {
                ctx.add_rule_conditional(act, sys, &conds).expect("libseccomp rule");
            }
        }
    }
    // export_bpf_mem needs libseccomp 2.6; Debian 12 has 2.5
    let mut file = tempfile::tempfile().expect("tempfile");
    ctx.export_bpf(&file).expect("seccomp_export_bpf");
    file.rewind().expect("rewind");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read the exported program");
    bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

/// Whether the kernel's seccomp action cache (5.11+) allows syscall `nr` of `arch` without running
/// `program`: the result of `seccomp_is_const_allow` in kernel/seccomp.c, which follows the program
/// with only the number and the architecture known and gives up at anything else.
fn kernel_caches_allow(program: &[libc::sock_filter], nr: u32, arch: u32) -> bool {
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    let mut reg = 0u32;
    let mut pc = 0usize;
    while let Some(insn) = program.get(pc) {
        let (code, k) = (insn.code, insn.k);
        match code {
            LD_ABS_W => match k {
                0 => reg = nr,
                4 => reg = arch,
                _ => return false,
            },
            RET_K => return k == libc::SECCOMP_RET_ALLOW,
            JA => pc += k as usize,
            ALU_AND_K => reg &= k,
            _ if code & 0x07 == libc::BPF_JMP as u16 && code & 0x08 == libc::BPF_K as u16 => {
                let taken = match code & 0xf0 {
                    0x10 => reg == k,
                    0x20 => reg > k,
                    0x30 => reg >= k,
                    0x40 => reg & k != 0,
                    _ => return false,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            _ => return false,
        }
        pc += 1;
    }
    false
}

fn configs() -> Vec<Config> {
    let profile = profile();
    let strata = seccomp::compile(&profile).expect("the default profile compiles");
    vec![
        Config { name: "unfiltered", setup: Setup::Unfiltered },
        Config { name: "strata", setup: Setup::Strata(strata) },
        Config { name: "libseccomp", setup: Setup::Exported(libseccomp_program(&profile, None)) },
        Config { name: "libseccomp-O2", setup: Setup::Exported(libseccomp_program(&profile, Some(2))) },
    ]
}

fn ns_per_call(d: Duration, calls: u64) -> f64 {
    d.as_secs_f64() * 1e9 / calls as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn filter_cost(c: &mut Criterion) {
    let configs = configs();
    let rounds: usize = std::env::var("STRATA_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(21);

    println!("\nseccomp: Docker's default profile, default capabilities");
    let x86_64 = 0xc000_003e; // AUDIT_ARCH_X86_64
    for cfg in &configs {
        let program = match &cfg.setup {
            Setup::Unfiltered => continue,
            Setup::Strata(f) => f.instructions(),
            Setup::Exported(p) => p.as_slice(),
        };
        // x86_64 numbers 0..=470: which ones the kernel's action cache lets through unfiltered
        let cached = (0..=470).filter(|nr| kernel_caches_allow(program, *nr, x86_64)).count();
        let getppid = kernel_caches_allow(program, libc::SYS_getppid as u32, x86_64);
        println!(
            "seccomp: {:<14} {:>5} instructions; kernel action cache: {cached} x86_64 syscalls, getppid {}",
            cfg.name,
            program.len(),
            if getppid { "cached" } else { "filtered" }
        );
    }
    println!("seccomp: a cached syscall pays only the seccomp entry path, the same under every program");

    for probe in Probe::ALL {
        // interleaved: one child per configuration per round, so drift hits all alike; each child
        // times the probe before and after installing, and the overhead is the paired difference
        let mut filtered: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        let mut overhead: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
        for _ in 0..rounds {
            for (i, cfg) in configs.iter().enumerate() {
                let (before, after) = measure(&cfg.setup, probe, CALLS, CALLS);
                let (before, after) = (ns_per_call(before, CALLS), ns_per_call(after, CALLS));
                filtered[i].push(after);
                overhead[i].push(after - before);
            }
        }
        let filtered: Vec<f64> = filtered.iter_mut().map(|v| median(v)).collect();
        let overhead: Vec<f64> = overhead.iter_mut().map(|v| median(v)).collect();
        println!("seccomp: {} x {CALLS} before and after installing, {rounds} interleaved rounds", probe.name());
        for (i, cfg) in configs.iter().enumerate() {
            // the unfiltered row's "overhead" is the noise floor of the paired difference
            println!(
                "seccomp:   {:<14} median {:>7.1} ns/call, overhead {:+6.1} ns/call",
                cfg.name, filtered[i], overhead[i]
            );
        }
        for (i, peer) in [(2, "libseccomp"), (3, "libseccomp-O2")] {
            println!("seccomp:   {} overhead strata/{peer} = {:.2}", probe.name(), overhead[1] / overhead[i]);
        }
    }

    for probe in Probe::ALL {
        let mut group = c.benchmark_group(format!("seccomp/{}", probe.name()));
        group.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
        for cfg in &configs {
            group.bench_function(cfg.name, |b| b.iter_custom(|iters| measure(&cfg.setup, probe, 0, iters).1));
        }
        group.finish();
    }
}

criterion_group!(benches, filter_cost);
criterion_main!(benches);
