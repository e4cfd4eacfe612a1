//! From an OCI profile to a BPF program.
//!
//! Compilation runs in two steps. First the profile becomes, for each architecture, a map from
//! syscall number to [`Outcome`], merging rules the way libseccomp (and so runc) does:
//!
//! * a rule whose action equals the default action is dropped (libseccomp refuses it, runc skips it);
//! * the first unconditional rule for a syscall wins over every other rule for it;
//! * conditional rules are tried in profile order and the first whose conditions all hold decides
//!   (when their actions agree this is libseccomp's OR; libseccomp has no defined order otherwise);
//! * a rule with several conditions on one argument becomes one rule per condition, ORed, as runc
//!   hands it to libseccomp (which refuses two conditions on one argument in a rule); conditions
//!   on distinct arguments are ANDed.
//!
//! Then the number space of each audit token is cut into segments of equal outcome, and the
//! program does a binary search over the segments, so a syscall costs a handful of comparisons
//! however long the allow list is.
//!
//! A syscall newer than the profile gets `ENOSYS`, as runc does (its "ENOSYS stub"): when the
//! default action denies (anything but allow, log or trace, and not already `ENOSYS`), numbers
//! above the highest one the profile names on an architecture (whatever that rule's action)
//! return `ENOSYS` instead of the default action, so that libc falls back to an older call (the
//! `clone3`/`faccessat2` class of breakage) instead of failing with `EPERM`. Only the syscall
//! number and architecture decide it, so the kernel's per-number cache still applies. On the
//! x86-64 audit token runc tells the ABIs apart by bit 30 alone: a number without it above the
//! x86-64 maximum, and a number with it above the x32 maximum when x32 is listed, get `ENOSYS`;
//! so does what [`segments`] would otherwise give the bad-arch action in those ranges.

use std::collections::BTreeMap;

use libc::{
    SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, c_ulong,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

use crate::Error;
use crate::arch::Arch;
use crate::bpf::{self, Assembler, Label, op};

/// The action for a syscall from an architecture the profile does not list (libseccomp's
/// default "bad arch" action, `SCMP_ACT_KILL`).
pub const BAD_ARCH_ACTION: u32 = libc::SECCOMP_RET_KILL_THREAD;

/// Offset of `seccomp_data.nr`.
const NR_OFFSET: u32 = 0;
/// Offset of `seccomp_data.arch`.
const ARCH_OFFSET: u32 = 4;

/// Offset of the low (`hi == false`) or high half of argument `index` (little endian).
fn arg_offset(index: u8, hi: bool) -> u32 {
    16 + 8 * u32::from(index) + if hi { 4 } else { 0 }
}

/// One comparison of a rule, already normalised for its architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub index: u8,
    pub op: LinuxSeccompOperator,
    /// The value compared against; for `MASKED_EQ` already masked, as libseccomp does.
    pub value: u64,
    /// The mask, for `MASKED_EQ` only.
    pub mask: u64,
}

/// A conditional rule: all conditions hold → `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub conditions: Vec<Condition>,
    pub action: u32,
}

/// What happens to one syscall number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Always this action.
    Return(u32),
    /// The first rule that matches decides; if none does, the default action.
    Rules(Vec<Rule>),
}

/// The kernel's `MAX_ERRNO`: libseccomp refuses an errno action at or above it, so runc and crun
/// refuse such profiles, and so does strata.
const MAX_ERRNO: u32 = 4095;

/// The return value of an OCI action, with its errno or trace data.
pub(crate) fn action_value(action: LinuxSeccompAction, data: Option<u32>, field: &str) -> Result<u32, Error> {
    use LinuxSeccompAction as A;
    let data = match data {
        Some(v) if v > 0xffff => {
            return Err(Error::ReturnData { field: field.to_string(), value: v });
        }
        // EPERM, as runc does when errnoRet is absent
        Some(v) => v,
        None => 1,
    };
    if action == A::ScmpActErrno && data >= MAX_ERRNO {
        return Err(Error::ErrnoRange { field: field.to_string(), value: data });
    }
    Ok(match action {
        A::ScmpActKill | A::ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
        A::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        A::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        A::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data,
        A::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
        A::ScmpActTrace => libc::SECCOMP_RET_TRACE | data,
        A::ScmpActLog => libc::SECCOMP_RET_LOG,
        A::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
    })
}

/// A profile after validation, before code generation.
#[derive(Debug)]
pub(crate) struct Plan {
    pub default_action: u32,
    /// Architectures covered, native first.
    pub arches: Vec<Arch>,
    /// Per architecture, the outcome of each syscall that has rules.
    pub outcomes: BTreeMap<Arch, BTreeMap<u32, Outcome>>,
    pub flags: c_ulong,
    pub uses_notify: bool,
    /// Per architecture, the highest syscall number the profile names, when numbers above it
    /// return `ENOSYS` (see the module docs); empty when the default action allows.
    pub last_named: BTreeMap<Arch, u32>,
}

/// `SECCOMP_RET_ERRNO` with `ENOSYS`.
pub const ENOSYS_ACTION: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// The x32 ABI's bit in a syscall number on the x86-64 audit token.
const X32_BIT: u64 = 1 << 30;

/// A validated condition before it is narrowed to an architecture.
struct RawCondition {
    index: u8,
    op: LinuxSeccompOperator,
    value: u64,
    mask: u64,
}

impl RawCondition {
    /// The condition as libseccomp evaluates it on `arch`, or `None` when it always holds.
    fn for_arch(&self, arch: Arch) -> Option<Condition> {
        let width = if arch.has_32bit_args() { u64::from(u32::MAX) } else { u64::MAX };
        let (value, mask) = if self.op == LinuxSeccompOperator::ScmpCmpMaskedEq {
            let mask = self.mask & width;
            if mask == 0 {
                return None;
            }
            (self.value & mask, mask)
        } else {
            (self.value & width, width)
        };
        Some(Condition { index: self.index, op: self.op, value, mask })
    }
}

/// Validates the profile and resolves it into per-architecture outcomes.
pub(crate) fn plan(profile: &LinuxSeccomp) -> Result<Plan, Error> {
    let default_action = action_value(profile.default_action(), profile.default_errno_ret(), "defaultErrnoRet")?;
    if profile.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(Error::NotifyDefault);
    }

    let mut arches = vec![Arch::NATIVE];
    for (i, oci) in profile.architectures().iter().flatten().enumerate() {
        match Arch::from_oci(*oci) {
            Some(arch) if !arches.contains(&arch) => arches.push(arch),
            Some(_) => {}
            None => tracing::warn!(
                architecture = %oci,
                "seccomp: architectures[{i}] has no syscall table here; its syscalls get the bad-arch action (kill)"
            ),
        }
    }

    let mut flags: c_ulong = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
        };
    }

    let mut outcomes: BTreeMap<Arch, BTreeMap<u32, Outcome>> = arches.iter().map(|a| (*a, BTreeMap::new())).collect();
    let mut uses_notify = false;

    let permissive = matches!(
        profile.default_action(),
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog | LinuxSeccompAction::ScmpActTrace
    );
    // Each name of each rule on each architecture, looked up once: both passes below need them,
    // and the lookups (a binary search over strings each) were most of a compile's time.
    let numbers: Vec<Vec<Vec<Option<u32>>>> = profile
        .syscalls()
        .iter()
        .flatten()
        .map(|r| r.names().iter().map(|name| arches.iter().map(|a| a.syscall_number(name)).collect()).collect())
        .collect();
    let mut last_named: BTreeMap<Arch, u32> = BTreeMap::new();
    if !permissive && default_action != ENOSYS_ACTION {
        for per_arch in numbers.iter().flatten() {
            for (arch, nr) in arches.iter().zip(per_arch) {
                if let Some(nr) = nr.filter(|nr| *nr != 0) {
                    let last = last_named.entry(*arch).or_insert(nr);
                    *last = (*last).max(nr);
                }
            }
        }
    }

    for (r, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let action = action_value(syscall.action(), syscall.errno_ret(), &format!("syscalls[{r}].errnoRet"))?;
        let mut conditions = Vec::new();
        for (a, arg) in syscall.args().iter().flatten().enumerate() {
            let index = u8::try_from(arg.index()).ok().filter(|i| *i < 6).ok_or(Error::ArgIndex {
                rule: r,
                arg: a,
                index: arg.index(),
            })?;
            let (value, mask) = match arg.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => (arg.value_two().unwrap_or(0), arg.value()),
                _ if arg.value_two().is_some_and(|v| v != 0) => {
                    return Err(Error::ValueTwo { rule: r, arg: a });
                }
                _ => (arg.value(), u64::MAX),
            };
            conditions.push(RawCondition { index, op: arg.op(), value, mask });
        }
        if action == default_action {
            tracing::debug!(rule = r, "seccomp: rule has the default action, skipped");
            continue;
        }
        let split = conditions.iter().enumerate().any(|(i, c)| conditions[..i].iter().any(|d| d.index == c.index));
        let mut any_known = false;
        for (name, per_arch) in syscall.names().iter().zip(&numbers[r]) {
            let mut known = false;
            for (arch, nr) in arches.iter().zip(per_arch) {
                let Some(nr) = *nr else {
                    continue;
                };
                known = true;
                let map = outcomes.entry(*arch).or_default();
                if split {
                    for c in &conditions {
                        add_rule(map, nr, c.for_arch(*arch).into_iter().collect(), action);
                    }
                } else {
                    let narrowed: Vec<Condition> = conditions.iter().filter_map(|c| c.for_arch(*arch)).collect();
                    add_rule(map, nr, narrowed, action);
                }
            }
            if !known {
                tracing::warn!(syscall = %name, "seccomp: unknown syscall name in the profile, skipped");
            }
            any_known |= known;
        }
        if any_known && syscall.action() == LinuxSeccompAction::ScmpActNotify {
            uses_notify = true;
        }
    }

    Ok(Plan { default_action, arches, outcomes, flags, uses_notify, last_named })
}

/// Merges one rule for one syscall number, following libseccomp's precedence.
fn add_rule(map: &mut BTreeMap<u32, Outcome>, nr: u32, conditions: Vec<Condition>, action: u32) {
    match map.get_mut(&nr) {
        // an unconditional rule already covers everything
        Some(Outcome::Return(_)) => {}
        Some(Outcome::Rules(rules)) => {
            if conditions.is_empty() {
                map.insert(nr, Outcome::Return(action));
            } else {
                rules.push(Rule { conditions, action });
            }
        }
        None => {
            let outcome = if conditions.is_empty() {
                Outcome::Return(action)
            } else {
                Outcome::Rules(vec![Rule { conditions, action }])
            };
            map.insert(nr, outcome);
        }
    }
}

/// A half-open range of syscall numbers with one outcome.
struct Segment<'a> {
    start: u64,
    outcome: SegmentOutcome<'a>,
}

#[derive(Clone, Copy, PartialEq)]
enum SegmentOutcome<'a> {
    Return(u32),
    Rules(&'a [Rule], Arch),
}

/// Generates the program for a plan.
pub(crate) fn generate(plan: &Plan) -> Result<Vec<libc::sock_filter>, Error> {
    let mut asm = Assembler::default();
    // Group architectures by audit token, keeping the native one first.
    let mut tokens: Vec<(u32, Vec<Arch>)> = Vec::new();
    for arch in &plan.arches {
        match tokens.iter_mut().find(|(t, _)| *t == arch.audit_token()) {
            Some((_, members)) => members.push(*arch),
            None => tokens.push((arch.audit_token(), vec![*arch])),
        }
    }

    asm.load(ARCH_OFFSET);
    let bodies: Vec<Label> = tokens.iter().map(|_| asm.label()).collect();
    for ((token, _), body) in tokens.iter().zip(&bodies) {
        let next = asm.label();
        asm.cond(op::JEQ, *token, *body, next);
        asm.bind(next);
    }
    asm.ret(BAD_ARCH_ACTION);

    for ((_, members), body) in tokens.iter().zip(&bodies) {
        asm.bind(*body);
        asm.load(NR_OFFSET);
        let segments = segments(plan, members);
        emit_tree(&mut asm, &segments, plan.default_action);
    }

    let program = asm.finish().map_err(Error::InvalidProgram)?;
    if program.len() > bpf::MAX_INSNS {
        return Err(Error::TooLong { len: program.len(), max: bpf::MAX_INSNS });
    }
    bpf::verify(&program).map_err(Error::InvalidProgram)?;
    Ok(program)
}

/// Cuts `[0, 2^32)` into segments of equal outcome for the architectures sharing one token,
/// then lays the `ENOSYS` ranges over them.
fn segments<'a>(plan: &'a Plan, members: &[Arch]) -> Vec<Segment<'a>> {
    let base = rule_segments(plan, members);
    let mut out: Vec<Segment<'a>> = Vec::with_capacity(base.len() + 4);
    let mut push = |start: u64, outcome: SegmentOutcome<'a>| {
        if out.last().is_some_and(|s| s.outcome == outcome) {
            return;
        }
        out.push(Segment { start, outcome });
    };
    let enosys = enosys_ranges(plan, members);
    let ends: Vec<u64> = base.iter().skip(1).map(|s| s.start).chain([1 << 32]).collect();
    for (seg, end) in base.iter().zip(ends) {
        let mut at = seg.start;
        for &(lo, hi) in &enosys {
            if hi <= at || lo >= end {
                continue;
            }
            if lo > at {
                push(at, seg.outcome);
            }
            push(lo.max(at), SegmentOutcome::Return(ENOSYS_ACTION));
            at = hi.min(end);
        }
        if at < end {
            push(at, seg.outcome);
        }
    }
    out
}

/// The sorted, disjoint ranges of numbers that get `ENOSYS` on the token these architectures
/// share (see the module docs), following runc's stub bit for bit on the x86-64 token.
fn enosys_ranges(plan: &Plan, members: &[Arch]) -> Vec<(u64, u64)> {
    let last = |arch: Arch| plan.last_named.get(&arch).map(|n| u64::from(*n));
    let mut ranges = Vec::new();
    if members.contains(&Arch::X86_64) {
        let x32 = if members.contains(&Arch::X32) { last(Arch::X32) } else { None };
        // Bit 30 clear: [0, 2^30) and [2^31, 2^31 + 2^30) compare with the x86-64 maximum.
        if let Some(l) = last(Arch::X86_64) {
            ranges.push((l + 1, X32_BIT));
            ranges.push((2 * X32_BIT, 3 * X32_BIT));
        }
        // Bit 30 set: [2^30, 2^31) and [3 * 2^30, 2^32) compare with the x32 maximum.
        if let Some(l) = x32 {
            ranges.push(((l + 1).max(X32_BIT), 2 * X32_BIT));
            ranges.push(((l + 1).max(3 * X32_BIT), 1 << 32));
        }
    } else {
        for arch in members {
            if let Some(l) = last(*arch) {
                ranges.push((l + 1, arch.number_range().1));
            }
        }
    }
    ranges.retain(|(lo, hi)| lo < hi);
    ranges.sort_unstable();
    ranges
}

/// Cuts `[0, 2^32)` into segments of equal outcome from the rules alone.
fn rule_segments<'a>(plan: &'a Plan, members: &[Arch]) -> Vec<Segment<'a>> {
    let mut ranges: Vec<(u64, u64, Arch)> =
        members.iter().map(|a| (a.number_range().0, a.number_range().1, *a)).collect();
    ranges.sort();
    let mut out: Vec<Segment<'a>> = Vec::new();
    let mut push = |start: u64, outcome: SegmentOutcome<'a>| {
        if out.last().is_some_and(|s| s.outcome == outcome) {
            return;
        }
        out.push(Segment { start, outcome });
    };
    let mut pos = 0u64;
    for (lo, hi, arch) in ranges {
        if lo > pos {
            push(pos, SegmentOutcome::Return(BAD_ARCH_ACTION));
        }
        let mut at = lo.max(pos);
        if let Some(map) = plan.outcomes.get(&arch) {
            for (nr, outcome) in map.range(lo as u32..) {
                let nr = u64::from(*nr);
                if nr >= hi {
                    break;
                }
                if nr > at {
                    push(at, SegmentOutcome::Return(plan.default_action));
                }
                let seg = match outcome {
                    Outcome::Return(action) => SegmentOutcome::Return(*action),
                    Outcome::Rules(rules) => SegmentOutcome::Rules(rules, arch),
                };
                push(nr, seg);
                at = nr + 1;
            }
        }
        if at < hi {
            push(at, SegmentOutcome::Return(plan.default_action));
        }
        pos = hi;
    }
    if pos < 1 << 32 {
        push(pos, SegmentOutcome::Return(BAD_ARCH_ACTION));
        if members == [Arch::X86_64] {
            // Syscall -1 is what a tracer uses to skip a syscall; since Linux 4.8 the filter
            // sees it again afterwards, so libseccomp lets it reach the default action
            // instead of treating it as an x32 call.
            push(u64::from(u32::MAX), SegmentOutcome::Return(plan.default_action));
        }
    }
    out
}

/// Emits a balanced binary search over `segments` (the accumulator holds the syscall number).
fn emit_tree(asm: &mut Assembler, segments: &[Segment<'_>], default_action: u32) {
    match segments {
        [] => asm.ret(default_action),
        [only] => emit_leaf(asm, only.outcome, default_action),
        _ => {
            let mid = segments.len() / 2;
            let (left, right) = (asm.label(), asm.label());
            // segment starts are < 2^32 by construction
            asm.cond(op::JGE, segments[mid].start as u32, right, left);
            asm.bind(left);
            emit_tree(asm, &segments[..mid], default_action);
            asm.bind(right);
            emit_tree(asm, &segments[mid..], default_action);
        }
    }
}

fn emit_leaf(asm: &mut Assembler, outcome: SegmentOutcome<'_>, default_action: u32) {
    let (rules, arch) = match outcome {
        SegmentOutcome::Return(action) => return asm.ret(action),
        SegmentOutcome::Rules(rules, arch) => (rules, arch),
    };
    for rule in rules {
        let fail = asm.label();
        for condition in &rule.conditions {
            let pass = asm.label();
            emit_condition(asm, condition, arch.has_32bit_args(), pass, fail);
            asm.bind(pass);
        }
        asm.ret(rule.action);
        asm.bind(fail);
    }
    asm.ret(default_action);
}

/// Emits one comparison: jumps to `pass` if it holds, to `fail` if not.
///
/// 64-bit values are compared as high and low 32-bit halves; on 32-bit architectures only the
/// low half exists.
fn emit_condition(asm: &mut Assembler, c: &Condition, narrow: bool, pass: Label, fail: Label) {
    use LinuxSeccompOperator as Op;
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let (mask_hi, mask_lo) = ((c.mask >> 32) as u32, c.mask as u32);
    // For the ordered comparisons: (jump-op on the low half, result when it holds).
    let (cmp_lo, negate) = match c.op {
        Op::ScmpCmpGt => (op::JGT, false),
        Op::ScmpCmpGe => (op::JGE, false),
        Op::ScmpCmpLe => (op::JGT, true),
        Op::ScmpCmpLt => (op::JGE, true),
        Op::ScmpCmpEq | Op::ScmpCmpMaskedEq => (op::JEQ, false),
        Op::ScmpCmpNe => (op::JEQ, true),
    };
    let (yes, no) = if negate { (fail, pass) } else { (pass, fail) };
    match c.op {
        Op::ScmpCmpMaskedEq => {
            if !narrow && mask_hi != 0 {
                let next = asm.label();
                asm.load(arg_offset(c.index, true));
                if mask_hi != u32::MAX {
                    asm.stmt(op::ALU | op::AND | op::K, mask_hi);
                }
                asm.cond(op::JEQ, hi, next, fail);
                asm.bind(next);
            }
            if mask_lo != 0 {
                asm.load(arg_offset(c.index, false));
                if mask_lo != u32::MAX {
                    asm.stmt(op::ALU | op::AND | op::K, mask_lo);
                }
                asm.cond(op::JEQ, lo, pass, fail);
            } else {
                asm.ja(pass);
            }
        }
        Op::ScmpCmpEq | Op::ScmpCmpNe => {
            if !narrow {
                let next = asm.label();
                asm.load(arg_offset(c.index, true));
                asm.cond(op::JEQ, hi, next, no);
                asm.bind(next);
            }
            asm.load(arg_offset(c.index, false));
            asm.cond(op::JEQ, lo, yes, no);
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe | Op::ScmpCmpLt | Op::ScmpCmpLe => {
            if !narrow {
                let (equal, next) = (asm.label(), asm.label());
                asm.load(arg_offset(c.index, true));
                // "> value" or ">= value" holds outright when the high half is greater
                asm.cond(op::JGT, hi, yes, equal);
                asm.bind(equal);
                asm.cond(op::JEQ, hi, next, no);
                asm.bind(next);
            }
            asm.load(arg_offset(c.index, false));
            asm.cond(cmp_lo, lo, yes, no);
        }
    }
}
