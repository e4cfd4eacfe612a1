//! Differential test: strata's compiler against libseccomp (2.6 or later: Debian trixie's,
//! linked statically by .ci/run).
//!
//! proptest generates random profiles (default action, architectures, rules with several names,
//! actions, errno values and up to three argument conditions with every operator, often several
//! on one argument) and, for each, random syscall inputs aimed at the profile's own numbers and
//! values. Both programs run in the interpreter of `common` and must return the same action and
//! data for every input; a profile one refuses must be refused by the other, and the test prints
//! how many profiles and inputs it compared.
//!
//! A rule may hold several conditions on one argument: runc then gives libseccomp (which refuses
//! that) one rule per condition, and the libseccomp side here does the same.
//!
//! libseccomp merges the rules of one syscall into a decision tree, and some merges lose a match
//! that each rule alone makes. Where the whole filter disagrees with strata, the test compiles
//! each of the syscall's rules alone with libseccomp: strata must decide as those do (so
//! libseccomp contradicts itself there), and the count of such inputs is printed.
//!
//! The generator stays inside what libseccomp defines: no syscall with conditional rules of
//! different actions (libseccomp orders those by its internal tree, or refuses them with
//! EEXIST). The x86 socketcall/ipc multiplexed names are left out: libseccomp rewrites rules on
//! them for x86, strata filters the direct syscall only.

mod common;

use common::{SeccompData, parse_program, run, run_traced};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use proptest::prelude::*;
use seccomp::Arch;
use std::io::{Read, Seek};

/// Candidate names; the ones the two tables disagree on are dropped by `name_pool`.
const NAMES: &[&str] = &[
    "read",
    "write",
    "open",
    "close",
    "fstat",
    "mmap",
    "mprotect",
    "brk",
    "ioctl",
    "getpid",
    "getppid",
    "clone",
    "clone3",
    "personality",
    "kill",
    "prctl",
    "futex",
    "openat",
    "dup",
    "dup2",
    "pipe",
    "uname",
    "fcntl",
    "chdir",
    "mkdir",
    "unlink",
    "getuid",
    "setuid",
    "ptrace",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "reboot",
    "chroot",
    "bpf",
    "getrandom",
    "memfd_create",
    "statx",
    "exit_group",
    "execve",
    "waitpid",
    "time",
    "seccomp",
    "io_uring_setup",
    "set_thread_area",
];

/// Names whose number agrees between the two tables on every x86 architecture.
///
/// Our tables are generated from newer kernel headers than libseccomp 2.5.4's, so a candidate
/// must also be one libseccomp resolves (seccomp_syscall_resolve_name_arch) on each of them;
/// add post-6.1 syscalls to `NAMES` only if it does.
fn name_pool() -> Vec<&'static str> {
    let arches = [(Arch::X86_64, ScmpArch::X8664), (Arch::X86, ScmpArch::X86), (Arch::X32, ScmpArch::X32)];
    NAMES
        .iter()
        .copied()
        .filter(|name| {
            arches.iter().all(|(ours, theirs)| {
                let lib = ScmpSyscall::from_name_by_arch(name, *theirs)
                    .ok()
                    .map(i32::from)
                    .filter(|nr| *nr >= 0)
                    .map(|nr| nr as u32);
                lib == ours.syscall_number(name)
            }) && Arch::X86_64.syscall_number(name).is_some()
                // libseccomp 2.5.4 bug: when x32 is listed and a rule's name has no x32 number,
                // its merged x86_64/x32 block compares the syscall number without loading it
                // (`jeq nr` on the arch word), so the rule never fires; leave such names out
                && Arch::X32.syscall_number(name).is_some()
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Allow,
    Errno(u16),
    Kill,
    KillProcess,
    Trap,
    Trace(u16),
    Log,
    Notify,
}

impl Act {
    fn json(self) -> serde_json::Value {
        let (name, data) = match self {
            Act::Allow => ("SCMP_ACT_ALLOW", None),
            Act::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
            Act::Kill => ("SCMP_ACT_KILL", None),
            Act::KillProcess => ("SCMP_ACT_KILL_PROCESS", None),
            Act::Trap => ("SCMP_ACT_TRAP", None),
            Act::Trace(e) => ("SCMP_ACT_TRACE", Some(e)),
            Act::Log => ("SCMP_ACT_LOG", None),
            Act::Notify => ("SCMP_ACT_NOTIFY", None),
        };
        serde_json::json!([name, data])
    }

    fn scmp(self) -> ScmpAction {
        match self {
            Act::Allow => ScmpAction::Allow,
            Act::Errno(e) => ScmpAction::Errno(i32::from(e)),
            Act::Kill => ScmpAction::KillThread,
            Act::KillProcess => ScmpAction::KillProcess,
            Act::Trap => ScmpAction::Trap,
            Act::Trace(e) => ScmpAction::Trace(e),
            Act::Log => ScmpAction::Log,
            Act::Notify => ScmpAction::Notify,
        }
    }

    /// The kernel return value, to compare actions the way libseccomp does.
    fn value(self) -> u32 {
        match self {
            Act::Allow => 0x7fff_0000,
            Act::Errno(e) => 0x0005_0000 | u32::from(e),
            Act::Kill => 0,
            Act::KillProcess => 0x8000_0000,
            Act::Trap => 0x0003_0000,
            Act::Trace(e) => 0x7ff0_0000 | u32::from(e),
            Act::Log => 0x7ffc_0000,
            Act::Notify => 0x7fc0_0000,
        }
    }
}

fn act(notify: bool) -> impl Strategy<Value = Act> {
    let base = prop_oneof![
        4 => Just(Act::Allow),
        3 => (0u16..4096).prop_map(Act::Errno),
        1 => Just(Act::Kill),
        1 => Just(Act::KillProcess),
        1 => Just(Act::Trap),
        1 => (0u16..4096).prop_map(Act::Trace),
        1 => Just(Act::Log),
    ];
    if notify { prop_oneof![6 => base, 1 => Just(Act::Notify)].boxed() } else { base.boxed() }
}

#[derive(Debug, Clone)]
struct Cond {
    index: usize,
    op: usize,
    value: u64,
    value_two: u64,
}

const OPS: [&str; 7] =
    ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"];

fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        0u64..64,
        Just(0xffff_ffff),
        Just(1 << 32),
        Just(u64::MAX),
        (0u64..4, 0u64..8).prop_map(|(h, l)| h << 32 | l),
        (0u64..4).prop_map(|h| h << 32 | 0xffff_fff0),
        any::<u64>(),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    // Indexes 0-2 most of the time, so that rules often hold several conditions on one argument.
    let index = prop_oneof![3 => 0usize..3, 1 => 3usize..6];
    (index, 0usize..7, interesting(), interesting()).prop_map(|(index, op, value, value_two)| Cond {
        index,
        op,
        value,
        value_two,
    })
}

#[derive(Debug, Clone)]
struct RuleSpec {
    names: Vec<usize>,
    action: Act,
    conds: Vec<Cond>,
}

fn rule(pool: usize) -> impl Strategy<Value = RuleSpec> {
    (
        prop::collection::vec(0..pool, 1..4),
        act(true),
        prop_oneof![2 => Just(vec![]), 3 => prop::collection::vec(cond(), 1..4)],
    )
        .prop_map(|(names, action, conds)| RuleSpec { names, action, conds })
}

#[derive(Debug, Clone)]
struct ProfileSpec {
    default: Act,
    x86: bool,
    x32: bool,
    list_native: bool,
    rules: Vec<RuleSpec>,
}

fn profile(pool: usize) -> impl Strategy<Value = ProfileSpec> {
    (act(false), any::<bool>(), any::<bool>(), any::<bool>(), prop::collection::vec(rule(pool), 0..10)).prop_map(
        |(default, x86, x32, list_native, rules)| {
            let mut spec = ProfileSpec { default, x86, x32, list_native, rules };
            make_unambiguous(&mut spec);
            spec
        },
    )
}

/// Drops names from conditional rules whose syscall already has a conditional rule with another
/// action (see the module docs); rules with the default action do not count, both sides drop them.
fn make_unambiguous(spec: &mut ProfileSpec) {
    let mut action_of: std::collections::HashMap<usize, u32> = Default::default();
    let default = spec.default.value();
    for rule in &mut spec.rules {
        if rule.conds.is_empty() || rule.action.value() == default {
            continue;
        }
        let value = rule.action.value();
        rule.names.retain(|n| *action_of.entry(*n).or_insert(value) == value);
    }
    spec.rules.retain(|r| !r.names.is_empty());
}

fn to_json(spec: &ProfileSpec, pool: &[&str]) -> serde_json::Value {
    let (default_action, default_errno) = match spec.default.json().as_array() {
        Some(a) => (a[0].clone(), a[1].clone()),
        None => unreachable!(),
    };
    let mut arches = vec![];
    if spec.list_native {
        arches.push("SCMP_ARCH_X86_64");
    }
    if spec.x86 {
        arches.push("SCMP_ARCH_X86");
    }
    if spec.x32 {
        arches.push("SCMP_ARCH_X32");
    }
    let syscalls: Vec<serde_json::Value> = spec
        .rules
        .iter()
        .map(|r| {
            let a = r.action.json();
            let args: Vec<serde_json::Value> = r
                .conds
                .iter()
                .map(|c| {
                    let mut v = serde_json::json!({"index": c.index, "value": c.value, "op": OPS[c.op]});
                    if c.op == 6 {
                        v["valueTwo"] = c.value_two.into();
                    }
                    v
                })
                .collect();
            let mut v = serde_json::json!({
                "names": r.names.iter().map(|n| pool[*n]).collect::<Vec<_>>(),
                "action": a[0],
                "args": args,
            });
            if !a[1].is_null() {
                v["errnoRet"] = a[1].clone();
            }
            v
        })
        .collect();
    let mut v = serde_json::json!({
        "defaultAction": default_action,
        "architectures": arches,
        "syscalls": syscalls,
    });
    if !default_errno.is_null() {
        v["defaultErrnoRet"] = default_errno;
    }
    v
}

/// Compiles the profile with libseccomp as runc does, or says which libseccomp call refused it.
/// libseccomp 2.5.4 loops forever inside `seccomp_rule_add` on some rule sets (seen in CI: a
/// random profile spun for minutes), so the compile runs in a forked child that is killed after
/// 10 s; a hang is reported like a refusal.
fn libseccomp_program(spec: &ProfileSpec, pool: &[&str]) -> Result<Vec<libc::sock_filter>, String> {
    let mut file = tempfile::tempfile().map_err(|e| format!("(test) tempfile: {e}"))?;
    // SAFETY: fork(2) duplicates this process; the child only runs libseccomp into `file` (glibc's
    // fork handlers keep malloc usable in it) and leaves with _exit, touching nothing shared.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(format!("(test) fork: {}", std::io::Error::last_os_error())),
        0 => {
            let code = match libseccomp_export(spec, pool, &file) {
                Ok(()) => 0,
                Err(step) => step as i32,
            };
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        _ => {}
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 || std::time::Instant::now() > deadline {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err("did not finish compiling in 10 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if !libc::WIFEXITED(status) {
        return Err(format!("died compiling (wait status {status:#x})"));
    }
    if let Some(step) = LibseccompCall::ALL.iter().find(|s| **s as i32 == libc::WEXITSTATUS(status)) {
        return Err(format!("refused it in {}", step.function()));
    }
    file.rewind().map_err(|e| format!("(test) rewind: {e}"))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| format!("(test) read: {e}"))?;
    Ok(parse_program(&bytes))
}

/// The libseccomp call that refused a profile (the forked compile's exit status).
#[derive(Debug, Clone, Copy)]
enum LibseccompCall {
    Init = 10,
    ArchAdd,
    SyscallResolveName,
    RuleAdd,
    ExportBpf,
}

impl LibseccompCall {
    /// The C function that failed.
    fn function(self) -> &'static str {
        match self {
            LibseccompCall::Init => "seccomp_init",
            LibseccompCall::ArchAdd => "seccomp_arch_add",
            LibseccompCall::SyscallResolveName => "seccomp_syscall_resolve_name",
            LibseccompCall::RuleAdd => "seccomp_rule_add",
            LibseccompCall::ExportBpf => "seccomp_export_bpf",
        }
    }

    const ALL: [LibseccompCall; 5] = [
        LibseccompCall::Init,
        LibseccompCall::ArchAdd,
        LibseccompCall::SyscallResolveName,
        LibseccompCall::RuleAdd,
        LibseccompCall::ExportBpf,
    ];
}

/// The libseccomp compile itself, its BPF written to `file`.
fn libseccomp_export(spec: &ProfileSpec, pool: &[&str], file: &std::fs::File) -> Result<(), LibseccompCall> {
    use LibseccompCall::*;
    let mut ctx = ScmpFilterContext::new(spec.default.scmp()).map_err(|_| Init)?;
    if spec.x86 {
        ctx.add_arch(ScmpArch::X86).map_err(|_| ArchAdd)?;
    }
    if spec.x32 {
        ctx.add_arch(ScmpArch::X32).map_err(|_| ArchAdd)?;
    }
    for rule in &spec.rules {
        if rule.action.value() == spec.default.value() {
            continue; // libseccomp refuses these with EACCES; runc skips them
        }
        let conds: Vec<ScmpArgCompare> = rule
            .conds
            .iter()
            .map(|c| {
                let (op, datum) = match c.op {
                    0 => (ScmpCompareOp::NotEqual, c.value),
                    1 => (ScmpCompareOp::Less, c.value),
                    2 => (ScmpCompareOp::LessOrEqual, c.value),
                    3 => (ScmpCompareOp::Equal, c.value),
                    4 => (ScmpCompareOp::GreaterEqual, c.value),
                    5 => (ScmpCompareOp::Greater, c.value),
                    _ => (ScmpCompareOp::MaskedEqual(c.value), c.value_two),
                };
                ScmpArgCompare::new(c.index as u32, op, datum)
            })
            .collect();
        // runc: with several conditions on one argument, one rule per condition
        let split = repeats_an_argument(&rule.conds);
        let sets: Vec<Vec<ScmpArgCompare>> = if split { conds.iter().map(|c| vec![*c]).collect() } else { vec![conds] };
        for name in &rule.names {
            let sys = ScmpSyscall::from_name(pool[*name]).map_err(|_| SyscallResolveName)?;
            for set in &sets {
                ctx.add_rule_conditional(rule.action.scmp(), sys, set).map_err(|_| RuleAdd)?;
            }
        }
    }
    ctx.export_bpf(file).map_err(|_| ExportBpf)
}

/// What runc's ENOSYS stub (prepended to libseccomp's filter) decides, if it decides: written
/// from its description (highest named number per listed architecture, bit 30 telling x86-64 from
/// x32), independently of the compiler's ranges.
fn runc_stub(spec: &ProfileSpec, pool: &[&str], data: &SeccompData) -> Option<u32> {
    if matches!(spec.default, Act::Allow | Act::Log | Act::Trace(_)) || spec.default == Act::Errno(ENOSYS) {
        return None;
    }
    let last = |arch: Arch| {
        spec.rules.iter().flat_map(|r| &r.names).filter_map(|n| arch.syscall_number(pool[*n])).max().filter(|m| *m != 0)
    };
    let above = |arch: Arch| last(arch).is_some_and(|l| data.nr > l);
    let newer = if data.arch == Arch::X86_64.audit_token() {
        if data.nr & (1 << 30) == 0 { above(Arch::X86_64) } else { spec.x32 && above(Arch::X32) }
    } else if data.arch == Arch::X86.audit_token() && spec.x86 {
        above(Arch::X86)
    } else {
        false
    };
    newer.then_some(Act::Errno(ENOSYS).value())
}

const ENOSYS: u16 = libc::ENOSYS as u16;

/// Whether conditions test one argument more than once: runc then splits the rule (one rule per
/// condition, ORed).
fn repeats_an_argument(conds: &[Cond]) -> bool {
    conds.iter().enumerate().any(|(i, c)| conds[..i].iter().any(|d| d.index == c.index))
}

/// How many conditional rules libseccomp is given for `spec` (after runc's split).
fn conditional_rules(spec: &ProfileSpec) -> usize {
    spec.rules
        .iter()
        .map(|r| {
            let split = repeats_an_argument(&r.conds);
            if split { r.conds.len() } else { usize::from(!r.conds.is_empty()) }
        })
        .sum()
}

/// The documented semantics (see `seccomp`'s `compile` module), evaluated directly.
fn reference(spec: &ProfileSpec, pool: &[&str], data: &SeccompData) -> u32 {
    if let Some(action) = runc_stub(spec, pool, data) {
        return action;
    }
    let default = spec.default.value();
    let bad_arch = seccomp::BAD_ARCH_ACTION;
    let arch = if data.arch == Arch::X86_64.audit_token() {
        if data.nr < 0x4000_0000 {
            Arch::X86_64
        } else if spec.x32 {
            Arch::X32
        } else if data.nr == u32::MAX {
            return default;
        } else {
            return bad_arch;
        }
    } else if data.arch == Arch::X86.audit_token() && spec.x86 {
        Arch::X86
    } else {
        return bad_arch;
    };
    let width = if matches!(arch, Arch::X86 | Arch::X32) { u64::from(u32::MAX) } else { u64::MAX };
    let mut conditional = None;
    for rule in &spec.rules {
        if rule.action.value() == default || !rule.names.iter().any(|n| arch.syscall_number(pool[*n]) == Some(data.nr))
        {
            continue;
        }
        // runc's split (see the module docs): several conditions on one argument are ORed rules
        let split = repeats_an_argument(&rule.conds);
        let sets: Vec<&[Cond]> =
            if split { rule.conds.iter().map(std::slice::from_ref).collect() } else { vec![&rule.conds[..]] };
        for conds in sets {
            let mut unconditional = true;
            let mut holds = true;
            for c in conds {
                let arg = data.args[c.index] & width;
                let ok = if c.op == 6 {
                    let mask = c.value & width;
                    if mask == 0 {
                        continue;
                    }
                    arg & mask == c.value_two & mask
                } else {
                    let v = c.value & width;
                    match c.op {
                        0 => arg != v,
                        1 => arg < v,
                        2 => arg <= v,
                        3 => arg == v,
                        4 => arg >= v,
                        _ => arg > v,
                    }
                };
                unconditional = false;
                holds &= ok;
            }
            if unconditional {
                return rule.action.value();
            }
            if holds && conditional.is_none() {
                conditional = Some(rule.action.value());
            }
        }
    }
    conditional.unwrap_or(default)
}

/// A small deterministic generator for the inputs of one profile.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn inputs_for(spec: &ProfileSpec, pool: &[&str], seed: u64, count: usize) -> Vec<SeccompData> {
    let mut rng = SplitMix(seed);
    let mut values: Vec<u64> = vec![0, 1, u64::MAX, 0xffff_ffff, 1 << 32];
    for c in spec.rules.iter().flat_map(|r| &r.conds) {
        for v in [c.value, c.value_two, c.value & c.value_two] {
            values.extend([v, v.wrapping_add(1), v.wrapping_sub(1), v ^ (1 << 32), v ^ 1, v & 0xffff_ffff]);
        }
    }
    let arches = [
        (Arch::X86_64.audit_token(), Arch::X86_64),
        (Arch::X86.audit_token(), Arch::X86),
        (Arch::X32.audit_token(), Arch::X32),
        (Arch::Aarch64.audit_token(), Arch::Aarch64),
    ];
    (0..count)
        .map(|_| {
            let (token, arch) = rng.pick(&arches);
            let arch_token = if rng.next().is_multiple_of(20) { rng.next() as u32 } else { token };
            let nr = match rng.next() % 10 {
                0 => rng.pick(&[0u32, 1, 0x4000_0000, 0x3fff_ffff, 0xffff_ffff, 0x4000_0001]),
                1 => rng.next() as u32 % 600,
                _ => {
                    let name = pool[(rng.next() % pool.len() as u64) as usize];
                    arch.syscall_number(name).unwrap_or(0)
                }
            };
            let mut args = [0u64; 6];
            for a in &mut args {
                *a = if rng.next().is_multiple_of(8) { rng.next() } else { rng.pick(&values) };
            }
            SeccompData { nr, arch: arch_token, ip: rng.next(), args }
        })
        .collect()
}

/// Random profiles compared per run (the proptest default is 256).
const PROFILES: u32 = 1500;
/// Inputs per profile.
const INPUTS_PER_PROFILE: usize = 300;

#[test]
fn same_decisions_as_libseccomp() {
    // libseccomp 2.5.4 (bookworm) refuses valid profiles (an errno of 4095) and hangs on others,
    // which would leave whole classes of profiles uncompared; .ci/run links Debian trixie's 2.6.0.
    let version = libseccomp::ScmpVersion::current().expect("libseccomp version");
    println!("libseccomp {version}");
    assert!(
        (version.major, version.minor) >= (2, 6),
        "the differential test needs libseccomp 2.6 or later, linked in is {version}: run it as .ci/run does \
         (LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=<trixie's libseccomp-dev>, see .ci/run)"
    );
    let pool = name_pool();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: PROFILES,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    });
    let profiles = std::cell::Cell::new(0u64);
    let inputs = std::cell::Cell::new(0u64);
    let split = std::cell::Cell::new(0u64);
    let merged = std::cell::Cell::new(0u64);
    let merge_losses = std::cell::Cell::new(0u64);
    let refused = std::cell::Cell::new(0u64);
    let outcome = runner.run(&(profile(pool.len()), any::<u64>()), |(spec, seed)| {
        let json = to_json(&spec, &pool);
        let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(json.clone())
            .map_err(|e| TestCaseError::fail(format!("bad test profile {json}: {e}")))?;
        // a profile one side refuses must be refused by the other (runc fails to create such a
        // container); a hang counts as a refusal strata does not share
        let (theirs, ours) = match (libseccomp_program(&spec, &pool), seccomp::compile(&profile)) {
            (Ok(theirs), Ok(ours)) => (theirs, ours),
            (Err(_), Err(_)) => {
                refused.set(refused.get() + 1);
                return Ok(());
            }
            (Err(e), Ok(_)) => {
                return Err(TestCaseError::fail(format!("libseccomp {e} on a profile strata compiles: {json}")));
            }
            (Ok(_), Err(e)) => return Err(TestCaseError::fail(format!("strata refused {json}: {e}"))),
        };
        seccomp::verify(ours.instructions()).map_err(TestCaseError::fail)?;
        for data in inputs_for(&spec, &pool, seed, INPUTS_PER_PROFILE) {
            // runc: its ENOSYS stub, then libseccomp's filter
            let libseccomp = match runc_stub(&spec, &pool, &data) {
                Some(action) => action,
                None => run(&theirs, &data).map_err(TestCaseError::fail)?,
            };
            let got = run(ours.instructions(), &data).map_err(TestCaseError::fail)?;
            let model = reference(&spec, &pool, &data);
            prop_assert_eq!(got, model, "strata differs from the model: input {:x?}\nprofile {}", data, json);
            if got != libseccomp {
                // libseccomp merges the rules of one syscall into a tree, and some merges lose a
                // match (2.5.4 and 2.6.0 alike). Such a disagreement passes only if libseccomp
                // contradicts itself: compiled one rule at a time, it must decide as strata did.
                let by_rule = libseccomp_rule_by_rule(&spec, &pool, &data).map_err(TestCaseError::fail)?;
                prop_assert_eq!(
                    got,
                    by_rule,
                    "strata differs from libseccomp, whole profile and rule by rule: input {:x?}\nprofile {}",
                    data,
                    json
                );
                merge_losses.set(merge_losses.get() + 1);
            }
        }
        profiles.set(profiles.get() + 1);
        inputs.set(inputs.get() + INPUTS_PER_PROFILE as u64);
        split.set(split.get() + u64::from(spec.rules.iter().any(|r| repeats_an_argument(&r.conds))));
        merged.set(merged.get() + u64::from(conditional_rules(&spec) > 1));
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("after {} profiles agreed: {e}", profiles.get());
    }
    println!(
        "{} profiles refused by both (an errno above 4094); compared {} profiles ({} with a rule split on a \
         repeated argument, {} with several conditional rules) on {} inputs: strata and the model agree on \
         all; libseccomp's whole filter agrees on all but {} inputs, where it loses a match its own \
         rule-by-rule filters make (strata agrees with those)",
        refused.get(),
        profiles.get(),
        split.get(),
        merged.get(),
        inputs.get(),
        merge_losses.get()
    );
    assert_eq!(profiles.get() + refused.get(), u64::from(PROFILES), "every generated profile was compared");
}

/// libseccomp's decision for `data` taken one rule at a time: each rule naming the syscall (after
/// runc's split) compiled alone by libseccomp; the first unconditional rule wins, else the first
/// conditional rule whose filter returns its action, else the default.
fn libseccomp_rule_by_rule(spec: &ProfileSpec, pool: &[&str], data: &SeccompData) -> Result<u32, String> {
    let arch = match (data.arch, data.nr & X32_BIT != 0) {
        (a, false) if a == Arch::X86_64.audit_token() => Arch::X86_64,
        (a, true) if a == Arch::X86_64.audit_token() => Arch::X32,
        _ => Arch::X86,
    };
    let Some(name) = (0..pool.len()).find(|n| arch.syscall_number(pool[*n]) == Some(data.nr)) else {
        return Err(format!("(test) no pool name has number {:#x} on {arch:?}", data.nr));
    };
    let mut conditional = None;
    for rule in spec.rules.iter().filter(|r| r.action.value() != spec.default.value() && r.names.contains(&name)) {
        if rule.conds.is_empty() {
            return Ok(rule.action.value());
        }
        let sets: Vec<Vec<Cond>> = if repeats_an_argument(&rule.conds) {
            rule.conds.iter().map(|c| vec![c.clone()]).collect()
        } else {
            vec![rule.conds.clone()]
        };
        for conds in sets {
            let single =
                ProfileSpec { rules: vec![RuleSpec { names: vec![name], action: rule.action, conds }], ..spec.clone() };
            let program = libseccomp_program(&single, pool)?;
            if conditional.is_none() && run(&program, data)? == rule.action.value() {
                conditional = Some(rule.action.value());
            }
        }
    }
    Ok(conditional.unwrap_or(spec.default.value()))
}

const X32_BIT: u32 = 0x4000_0000;

#[test]
fn default_profile_matches_libseccomp() {
    for caps in [vec![], vec!["CAP_SYS_ADMIN".to_string(), "CAP_SYS_PTRACE".to_string()]] {
        let profile = seccomp::default_profile(&caps);
        let ours = seccomp::compile(&profile).expect("default profile compiles");

        let default = ScmpAction::Errno(libc::EPERM);
        let mut ctx = ScmpFilterContext::new(default).expect("libseccomp context");
        ctx.add_arch(ScmpArch::X86).expect("x86");
        ctx.add_arch(ScmpArch::X32).expect("x32");
        let mut names_used = vec![];
        for rule in profile.syscalls().iter().flatten() {
            let action = match rule.action() {
                oci_spec::runtime::LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
                _ => ScmpAction::Errno(rule.errno_ret().map_or(1, |e| e as i32)),
            };
            let conds: Vec<ScmpArgCompare> = rule
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    let (op, datum) = match a.op() {
                        oci_spec::runtime::LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
                        oci_spec::runtime::LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
                        _ => (ScmpCompareOp::MaskedEqual(a.value()), a.value_two().unwrap_or(0)),
                    };
                    ScmpArgCompare::new(a.index() as u32, op, datum)
                })
                .collect();
            for name in rule.names() {
                // skip names unknown to libseccomp (seccomp_syscall_resolve_name fails for calls
                // newer than its tables, e.g. mseal) or multiplexed on x86 (module docs)
                let Ok(sys) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                if i32::from(sys) < 0 || MULTIPLEXED.contains(&name.as_str()) {
                    continue;
                }
                ctx.add_rule_conditional(action, sys, &conds).expect("libseccomp rule");
                names_used.push(name.clone());
            }
        }
        let mut file = tempfile::tempfile().expect("tempfile");
        ctx.export_bpf(&file).expect("export");
        file.rewind().expect("rewind");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read");
        let theirs = parse_program(&bytes);
        println!("default profile: strata {} instructions, libseccomp {}", ours.instructions().len(), theirs.len());

        let mut rng = SplitMix(7);
        for name in &names_used {
            for (arch, scmp_arch) in [(Arch::X86_64, ScmpArch::X8664), (Arch::X32, ScmpArch::X32)] {
                let Some(nr) = arch.syscall_number(name) else {
                    continue;
                };
                // Our tables come from newer headers than libseccomp 2.5.4's: compare only where
                // libseccomp resolves the name on this arch (seccomp_syscall_resolve_name_arch)
                // to the same number. E.g. it has no x32 number for map_shadow_stack, which the
                // kernel's unistd_x32.h lists (like every 64-bit-only call).
                if ScmpSyscall::from_name_by_arch(name, scmp_arch).ok().map(i32::from) != i32::try_from(nr).ok() {
                    continue;
                }
                for _ in 0..20 {
                    let pick = [0u64, 2, 8, 40, 0x20000, 0x20008, 0xffff_ffff, 0x10000, 0x7E02_0000, 0x1_0000_0000];
                    let args = [rng.pick(&pick), rng.next(), 0, 0, 0, 0];
                    let data = SeccompData { nr, arch: arch.audit_token(), ip: 0, args };
                    assert_eq!(
                        run(ours.instructions(), &data),
                        run(&theirs, &data),
                        "{name} on {arch:?} with {args:x?}"
                    );
                }
            }
        }
    }
}

/// Socket and IPC calls that libseccomp rewrites to socketcall/ipc on x86.
const MULTIPLEXED: &[&str] = &[
    "socket",
    "bind",
    "connect",
    "listen",
    "accept",
    "getsockname",
    "getpeername",
    "socketpair",
    "send",
    "recv",
    "sendto",
    "recvfrom",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "sendmsg",
    "recvmsg",
    "accept4",
    "recvmmsg",
    "sendmmsg",
    "semop",
    "semget",
    "semctl",
    "semtimedop",
    "msgsnd",
    "msgrcv",
    "msgget",
    "msgctl",
    "shmat",
    "shmdt",
    "shmget",
    "shmctl",
];

/// runc's ENOSYS rule on fixed cases: a number above the highest one a profile names on an
/// architecture returns ENOSYS when the default action denies, and only then.
#[test]
fn syscalls_newer_than_the_profile_get_enosys() {
    let enosys = Act::Errno(ENOSYS).value();
    let eperm = Act::Errno(1).value();
    let allow = Act::Allow.value();
    let x86_64 = Arch::X86_64.audit_token();
    let x86 = Arch::X86.audit_token();
    let compile = |json: serde_json::Value| {
        let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(json).expect("test profile");
        seccomp::compile(&profile).expect("test profile compiles")
    };
    let decide = |filter: &seccomp::Filter, arch: u32, nr: u32| {
        run(filter.instructions(), &SeccompData { nr, arch, ip: 0, args: [0; 6] }).expect("program runs")
    };
    let exit_group = |arch: Arch| arch.syscall_number("exit_group").expect("exit_group");
    let rules = serde_json::json!([{"names": ["getpid", "exit_group"], "action": "SCMP_ACT_ALLOW"}]);

    let all = compile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]}));
    let x64_last = exit_group(Arch::X86_64);
    assert_eq!(decide(&all, x86_64, x64_last), allow);
    assert_eq!(decide(&all, x86_64, x64_last + 1), enosys);
    assert_eq!(decide(&all, x86_64, 1000), enosys);
    assert_eq!(decide(&all, x86_64, Arch::X86_64.syscall_number("getppid").expect("getppid")), eperm);
    let x32_last = exit_group(Arch::X32);
    assert_eq!(decide(&all, x86_64, x32_last), allow);
    assert_eq!(decide(&all, x86_64, x32_last + 1), enosys);
    assert_eq!(decide(&all, x86_64, 0x4000_0000 | 110), eperm);
    assert_eq!(decide(&all, x86_64, 0x8000_0000), enosys);
    assert_eq!(decide(&all, x86_64, u32::MAX), enosys);
    assert_eq!(decide(&all, x86, exit_group(Arch::X86) + 1), enosys);
    assert_eq!(decide(&all, x86, 20), allow, "getpid on x86");

    // Without x32, its numbers keep the bad-arch action and -1 (a tracer's skip) the default.
    let native = compile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}));
    assert_eq!(decide(&native, x86_64, x64_last + 1), enosys);
    assert_eq!(decide(&native, x86_64, x32_last + 1), seccomp::BAD_ARCH_ACTION);
    assert_eq!(decide(&native, x86_64, u32::MAX), eperm);
    assert_eq!(decide(&native, x86_64, 0x8000_0000), enosys, "bit 30 clear: compared as x86-64, as runc does");
    assert_eq!(decide(&native, x86, 20), seccomp::BAD_ARCH_ACTION);

    // A killing default is replaced too; a permissive one or an ENOSYS default are not.
    let kill = compile(serde_json::json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules}));
    assert_eq!(decide(&kill, x86_64, 1000), enosys);
    assert_eq!(decide(&kill, x86_64, 110), Act::KillProcess.value());
    let deny = serde_json::json!([{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]);
    for permissive in ["SCMP_ACT_ALLOW", "SCMP_ACT_LOG"] {
        let f = compile(serde_json::json!({"defaultAction": permissive, "syscalls": deny}));
        assert_ne!(decide(&f, x86_64, 1000), enosys, "{permissive}");
    }
    let f = compile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": rules}));
    assert_eq!(decide(&f, x86_64, 1000), enosys);
    assert_eq!(decide(&f, x86_64, 110), enosys);

    // The default profile: the first number above its highest call, against a call it denies.
    let default = seccomp::compile(&seccomp::default_profile(&[])).expect("default profile compiles");
    let highest = seccomp::default_profile(&[])
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names())
        .filter_map(|n| Arch::X86_64.syscall_number(n))
        .max()
        .expect("the default profile names calls");
    assert_eq!(decide(&default, x86_64, highest + 1), enosys);
    assert_eq!(decide(&default, x86_64, Arch::X86_64.syscall_number("kexec_load").expect("kexec_load")), eperm);
}

/// runc's reading of several conditions on one argument: every condition of such a rule becomes
/// a rule of its own (ORed); a rule without a repeated argument keeps its conditions ANDed.
#[test]
fn several_conditions_on_one_argument_are_ored() {
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 0x20000, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW", "args": [
                {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]}
        ]
    }))
    .expect("test profile");
    let filter = seccomp::compile(&profile).expect("compiles");
    let decide = |name: &str, args: [u64; 6]| {
        let nr = Arch::X86_64.syscall_number(name).expect("known call");
        run(filter.instructions(), &SeccompData { nr, arch: Arch::X86_64.audit_token(), ip: 0, args })
            .expect("program runs")
    };
    let allow = Act::Allow.value();
    let eperm = Act::Errno(1).value();
    assert_eq!(decide("personality", [8, 0, 0, 0, 0, 0]), allow);
    assert_eq!(decide("personality", [0x20000, 0, 0, 0, 0, 0]), allow);
    assert_eq!(decide("personality", [9, 0, 0, 0, 0, 0]), eperm);
    // Conditions on distinct arguments stay ANDed.
    assert_eq!(decide("getppid", [1, 2, 0, 0, 0, 0]), allow);
    assert_eq!(decide("getppid", [1, 3, 0, 0, 0, 0]), eperm);
}

/// The kernel caches "always allowed" per syscall number only for calls the filter decides from
/// the number and architecture alone: every call the default profile allows without an argument
/// rule must be decided without reading an argument (or the instruction pointer).
#[test]
fn default_profile_decides_unconditional_calls_from_the_number_alone() {
    for caps in [vec![], vec!["CAP_SYS_ADMIN".to_string()]] {
        let profile = seccomp::default_profile(&caps);
        let filter = seccomp::compile(&profile).expect("default profile compiles");
        let mut checked = 0;
        for arch in [Arch::X86_64, Arch::X86, Arch::X32] {
            for rule in profile.syscalls().iter().flatten() {
                let unconditional = rule.args().as_ref().is_none_or(|a| a.is_empty());
                if !unconditional || rule.action() != oci_spec::runtime::LinuxSeccompAction::ScmpActAllow {
                    continue;
                }
                for name in rule.names() {
                    let Some(nr) = arch.syscall_number(name) else { continue };
                    let mut loads = Vec::new();
                    let data = SeccompData { nr, arch: arch.audit_token(), ip: u64::MAX, args: [u64::MAX; 6] };
                    let action = run_traced(filter.instructions(), &data, &mut loads).expect("program runs");
                    // A call with a conditional rule too (another rule names it) may read its arguments.
                    if action != Act::Allow.value() {
                        continue;
                    }
                    assert!(loads.iter().all(|o| *o < 8), "{name} on {arch:?} reads offsets {loads:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "only {checked} calls checked");
    }
}
