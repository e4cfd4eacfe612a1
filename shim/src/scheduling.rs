//! How the kernel runs a container process: its scheduler (`process.scheduler`), I/O priority
//! (`process.ioPriority`), CPU affinity (`process.execCPUAffinity`), NUMA memory policy
//! (`linux.memoryPolicy`) and personality (`linux.personality`). Each is checked when the
//! bundle is read ([`check`]) and applied by the process itself before it executes the program.

use crate::error::{Error, Result};
use oci_spec::runtime::{
    IOPriorityClass, LinuxIOPriority, LinuxMemoryPolicy, LinuxPersonality, LinuxPersonalityDomain, LinuxSchedulerFlag,
    LinuxSchedulerPolicy, MemoryPolicyFlagType, MemoryPolicyModeType, Process, Scheduler, Spec,
};

/// Parses a CPU or node list such as `0-3,7` into its members.
pub fn parse_list(s: &str) -> std::result::Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.trim().parse().map_err(|_| format!("{part:?} is not a number or range"))?;
        let b: usize = b.trim().parse().map_err(|_| format!("{part:?} is not a number or range"))?;
        if a > b || b >= 8192 {
            return Err(format!("{part:?} is not a valid range"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

fn policy_number(p: LinuxSchedulerPolicy) -> u32 {
    match p {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    }
}

fn flag_bits(f: LinuxSchedulerFlag) -> u64 {
    match f {
        LinuxSchedulerFlag::SchedResetOnFork => 0x01,
        LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
        LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
        LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
        LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
        LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
        LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
    }
}

fn check_scheduler(s: &Scheduler) -> std::result::Result<(), (&'static str, String)> {
    let p = *s.policy();
    let realtime = matches!(p, LinuxSchedulerPolicy::SchedFifo | LinuxSchedulerPolicy::SchedRr);
    if let Some(n) = s.nice()
        && !(-20..=19).contains(n)
    {
        return Err(("nice", format!("{n} is outside -20..19")));
    }
    match s.priority() {
        Some(pr) if realtime && !(1..=99).contains(pr) => {
            return Err(("priority", format!("{pr} is outside 1..99 for {p}")));
        }
        Some(pr) if !realtime && *pr != 0 => {
            return Err(("priority", format!("only SCHED_FIFO and SCHED_RR take a priority (policy {p})")));
        }
        _ => {}
    }
    let deadline_fields = s.runtime().is_some() || s.deadline().is_some() || s.period().is_some();
    if deadline_fields && p != LinuxSchedulerPolicy::SchedDeadline {
        return Err(("runtime", format!("runtime, deadline and period are for SCHED_DEADLINE (policy {p})")));
    }
    if p == LinuxSchedulerPolicy::SchedIso {
        return Err(("policy", "SCHED_ISO does not exist in Linux".into()));
    }
    // A utilization clamp flag tells sched_setattr to read a clamp value, and the runtime-spec
    // has no field for one: any value would be made up (runc passes 0, which for the maximum
    // holds the process at the lowest utilization). Refused, rather than invented.
    for f in s.flags().iter().flatten() {
        let name = match f {
            LinuxSchedulerFlag::SchedFlagUtilClampMin => "SCHED_FLAG_UTIL_CLAMP_MIN",
            LinuxSchedulerFlag::SchedFlagUtilClampMax => "SCHED_FLAG_UTIL_CLAMP_MAX",
            _ => continue,
        };
        return Err((
            "flags",
            format!(
                "{name} asks for a utilization clamp, whose value the runtime-spec has no field for (leave it out)"
            ),
        ));
    }
    Ok(())
}

fn check_io_priority(io: &LinuxIOPriority) -> std::result::Result<(), (&'static str, String)> {
    if !(0..=7).contains(&io.priority()) {
        return Err(("priority", format!("{} is outside 0..7", io.priority())));
    }
    Ok(())
}

fn mempolicy_mode(m: MemoryPolicyModeType) -> i32 {
    match m {
        MemoryPolicyModeType::MpolDefault => 0,
        MemoryPolicyModeType::MpolPreferred => 1,
        MemoryPolicyModeType::MpolBind => 2,
        MemoryPolicyModeType::MpolInterleave => 3,
        MemoryPolicyModeType::MpolLocal => 4,
        MemoryPolicyModeType::MpolPreferredMany => 5,
        MemoryPolicyModeType::MpolWeightedInterleave => 6,
    }
}

fn check_memory_policy(m: &LinuxMemoryPolicy) -> std::result::Result<Vec<usize>, (&'static str, String)> {
    let nodes = parse_list(m.nodes().as_deref().unwrap_or("")).map_err(|e| ("nodes", e))?;
    let needs_nodes = matches!(
        m.mode(),
        MemoryPolicyModeType::MpolBind
            | MemoryPolicyModeType::MpolInterleave
            | MemoryPolicyModeType::MpolPreferredMany
            | MemoryPolicyModeType::MpolWeightedInterleave
    );
    let takes_no_nodes = matches!(m.mode(), MemoryPolicyModeType::MpolDefault | MemoryPolicyModeType::MpolLocal);
    if needs_nodes && nodes.is_empty() {
        return Err(("nodes", format!("{} needs at least one node", m.mode())));
    }
    if takes_no_nodes && !nodes.is_empty() {
        return Err(("nodes", format!("{} takes no nodes", m.mode())));
    }
    Ok(nodes)
}

/// Checks the scheduler and I/O priority of a process (the container's, or an exec's);
/// returns the field below the process and the reason.
pub fn check_process(p: &Process) -> std::result::Result<(), (String, String)> {
    if let Some(s) = p.scheduler() {
        check_scheduler(s).map_err(|(f, m)| (format!("scheduler.{f}"), m))?;
    }
    if let Some(io) = p.io_priority() {
        check_io_priority(io).map_err(|(f, m)| (format!("ioPriority.{f}"), m))?;
    }
    Ok(())
}

/// Checks the fields of this module in a config; returns the field and the reason.
pub fn check(spec: &Spec) -> std::result::Result<(), (String, String)> {
    if let Some(p) = spec.process() {
        check_process(p).map_err(|(f, m)| (format!("process.{f}"), m))?;
    }
    if let Some(l) = spec.linux() {
        if let Some(m) = l.memory_policy() {
            check_memory_policy(m).map_err(|(f, m)| (format!("linux.memoryPolicy.{f}"), m))?;
        }
        if let Some(p) = l.personality()
            && p.flags().as_ref().is_some_and(|f| !f.is_empty())
        {
            return Err((
                "linux.personality.flags".into(),
                "no personality flags are defined by the runtime-spec".into(),
            ));
        }
    }
    Ok(())
}

/// Applies `process.scheduler` with `sched_setattr(2)`.
pub fn apply_scheduler(s: &Scheduler) -> Result<()> {
    // The first version of `struct sched_attr` (48 bytes): it has no utilization clamp values,
    // which is why [`check`] refuses the clamp flags (the kernel would want the larger one).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy_number(*s.policy()),
        flags: s.flags().iter().flatten().map(|f| flag_bits(*f)).fold(0, |a, b| a | b),
        nice: s.nice().unwrap_or(0),
        priority: s.priority().unwrap_or(0).max(0) as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
    };
    // SAFETY: `attr` is a sched_attr of the size it declares, living across the call.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } < 0 {
        return Err(Error::sys("process.scheduler: sched_setattr", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Applies `process.ioPriority` with `ioprio_set(2)`.
pub fn apply_io_priority(io: &LinuxIOPriority) -> Result<()> {
    let class = match io.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let value = (class << 13) | io.priority() as libc::c_int;
    // SAFETY: ioprio_set takes integers only (IOPRIO_WHO_PROCESS 1, this process 0).
    if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) } < 0 {
        return Err(Error::sys("process.ioPriority: ioprio_set", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Sets the calling process's CPU affinity to `list` (`0-3,7`), or to every CPU with `None`
/// (the kernel keeps it within the cgroup's cpuset either way).
pub fn apply_cpu_affinity(list: Option<&str>, field: &str) -> Result<()> {
    let cpus = match list {
        Some(l) => parse_list(l).map_err(|e| Error::Invalid(format!("{field}: {e}")))?,
        None => (0..libc::CPU_SETSIZE as usize).collect(),
    };
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus.into_iter().filter(|c| *c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below CPU_SETSIZE, so the bit lies within `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        let e = nix::errno::Errno::last();
        // Resetting to "every CPU" is a best effort; a configured list must hold.
        if list.is_some() {
            return Err(Error::sys(format!("{field}: sched_setaffinity({})", list.unwrap_or_default()), e));
        }
    }
    Ok(())
}

/// Applies `linux.memoryPolicy` with `set_mempolicy(2)`.
pub fn apply_memory_policy(m: &LinuxMemoryPolicy) -> Result<()> {
    let nodes = check_memory_policy(m).map_err(|(f, e)| Error::Invalid(format!("linux.memoryPolicy.{f}: {e}")))?;
    let mut flags = 0;
    for f in m.flags().iter().flatten() {
        flags |= match f {
            MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
            MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
            MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
        };
    }
    let max = nodes.iter().max().map_or(0, |n| n + 1);
    let mut mask = vec![0u64; max.div_ceil(64).max(1)];
    for n in &nodes {
        mask[n / 64] |= 1 << (n % 64);
    }
    let (ptr, maxnode) = if nodes.is_empty() { (std::ptr::null(), 0) } else { (mask.as_ptr(), max as u64 + 1) };
    // SAFETY: `mask` holds at least `maxnode` bits and lives across the call (or is null).
    if unsafe { libc::syscall(libc::SYS_set_mempolicy, mempolicy_mode(m.mode()) | flags, ptr, maxnode) } < 0 {
        return Err(Error::sys(format!("linux.memoryPolicy: set_mempolicy({})", m.mode()), nix::errno::Errno::last()));
    }
    Ok(())
}

/// Applies `linux.personality` with `personality(2)`.
pub fn apply_personality(p: &LinuxPersonality) -> Result<()> {
    let value: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality takes an integer only.
    if unsafe { libc::personality(value) } < 0 {
        return Err(Error::sys("linux.personality", nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_checks() {
        assert_eq!(parse_list("0-2,7").unwrap(), vec![0, 1, 2, 7]);
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("x").is_err());
        let bad: Spec = serde_json::from_str(
            r#"{"process":{"cwd":"/","user":{"uid":0,"gid":0},"scheduler":{"policy":"SCHED_OTHER","priority":5}}}"#,
        )
        .unwrap();
        assert_eq!(check(&bad).unwrap_err().0, "process.scheduler.priority");
        // Utilization clamps need values the runtime-spec does not carry: refused by name.
        for flag in ["SCHED_FLAG_UTIL_CLAMP_MIN", "SCHED_FLAG_UTIL_CLAMP_MAX"] {
            let bad: Spec = serde_json::from_str(&format!(
                r#"{{"process":{{"cwd":"/","user":{{"uid":0,"gid":0}},
                    "scheduler":{{"policy":"SCHED_OTHER","flags":["SCHED_RESET_ON_FORK","{flag}"]}}}}}}"#
            ))
            .unwrap();
            let (field, reason) = check(&bad).unwrap_err();
            assert_eq!(field, "process.scheduler.flags");
            assert!(reason.contains(flag), "{reason}");
        }
        let ok: Spec = serde_json::from_str(
            r#"{"process":{"cwd":"/","user":{"uid":0,"gid":0},
                "scheduler":{"policy":"SCHED_OTHER","flags":["SCHED_RESET_ON_FORK"]}}}"#,
        )
        .unwrap();
        assert_eq!(check(&ok), Ok(()));
        let bad: Spec = serde_json::from_str(r#"{"linux":{"memoryPolicy":{"mode":"MPOL_BIND"}}}"#).unwrap();
        assert_eq!(check(&bad).unwrap_err().0, "linux.memoryPolicy.nodes");
        let ok: Spec = serde_json::from_str(
            r#"{"process":{"cwd":"/","user":{"uid":0,"gid":0},"scheduler":{"policy":"SCHED_FIFO","priority":5},
                "ioPriority":{"class":"IOPRIO_CLASS_IDLE","priority":0}},
                "linux":{"memoryPolicy":{"mode":"MPOL_BIND","nodes":"0"},"personality":{"domain":"LINUX32"}}}"#,
        )
        .unwrap();
        assert_eq!(check(&ok), Ok(()));
    }
}
