//! A Docker-compatible default profile.
//!
//! Same shape as Docker's: deny with `EPERM` by default, allow the ordinary syscalls, allow
//! `clone` only without namespace flags and `clone3` not at all (`ENOSYS`, so libc falls back to
//! `clone`) unless `CAP_SYS_ADMIN` is held, restrict `personality` to the harmless personas and
//! `socket` to families other than `AF_ALG` and `AF_VSOCK`, and open the groups that a capability
//! already guards in the kernel when the container holds that capability. It follows Docker's
//! current profile (moby 28): the `io_uring` calls are denied (Docker and containerd removed them
//! after a run of kernel escapes through them), the calls up to Linux 6.13 (`mseal`, `statmount`,
//! `listmount`, the `*xattrat` family, `uretprobe`) are allowed, the `lsm_*` calls need
//! `CAP_SYS_ADMIN`, and `ptrace` without `CAP_SYS_PTRACE` only from Linux 4.8 (`minKernel`).

use oci_spec::runtime::{
    Arch as OciArch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Allowed for every container.
///
/// Every name is in the x86_64 or i386 table (the `tests` below check it), so compiling the
/// profile on x86_64 warns about no unknown name. Docker's `recv` and `send`, direct syscalls on
/// 32-bit Arm only, are in [`ARM_ONLY`].
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // x86 only: harmless, needed by some runtimes (Docker allows them on amd64/x32/x86)
    "arch_prctl",
    "modify_ldt",
];

/// Allowed on aarch64 hosts, whose filters also cover 32-bit Arm: Docker's Arm-only calls (its
/// `includes.arches` arm/arm64) and the socket calls that only 32-bit Arm has as syscalls.
const ARM_ONLY: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "recv",
    "send",
    "set_tls",
    "sync_file_range2",
];

/// Syscalls that only make sense with a capability the kernel checks anyway.
const CAPABILITY_GROUPS: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Docker allows these without CAP_SYS_PTRACE on kernels >= 4.8 (its `minKernel`), where ptrace
/// can no longer bypass seccomp; on older kernels only with CAP_SYS_PTRACE.
const PTRACE_FAMILY: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];
const PTRACE_MIN_KERNEL: (u32, u32) = (4, 8);

/// Namespace flags of `clone` (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID |
/// NEWNET): creating namespaces needs CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `AF_ALG` (the kernel's crypto API, a frequent source of kernel bugs) and `AF_VSOCK`
/// (host-guest sockets): the families `socket(2)` may not create, as in Docker.
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
/// Personas `personality(2)` may switch to: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (query).
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn syscall(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| (*n).to_string()).collect());
    rule.set_action(action);
    rule.set_errno_ret(errno);
    rule.set_args(if args.is_empty() { None } else { Some(args) });
    rule
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    let builder = match value_two {
        Some(v) => builder.value_two(v),
        None => builder,
    };
    // Every field of LinuxSeccompArg has a default, so the builder has nothing to reject;
    // these arguments are constants of this module, not input.
    builder.build().expect("LinuxSeccompArgBuilder with all fields set")
}

/// The default profile for a container holding `capabilities` (names like `"CAP_SYS_ADMIN"`).
pub fn default_profile(capabilities: &[String]) -> LinuxSeccomp {
    let has = |cap: &str| capabilities.iter().any(|c| c.eq_ignore_ascii_case(cap));
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut rules = vec![syscall(ALLOWED, allow, None, vec![])];
    if cfg!(target_arch = "aarch64") {
        rules.push(syscall(ARM_ONLY, allow, None, vec![]));
    }
    if kernel_at_least(PTRACE_MIN_KERNEL) {
        rules.push(syscall(PTRACE_FAMILY, allow, None, vec![]));
    }

    for persona in PERSONAS {
        rules.push(syscall(
            &["personality"],
            allow,
            None,
            vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, *persona, None)],
        ));
    }
    // Three rules, ORed: every family below AF_ALG, between the two, and above AF_VSOCK.
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpGt, ScmpCmpLt};
    for (op, family) in [(ScmpCmpLt, AF_ALG), (ScmpCmpEq, AF_ALG + 1), (ScmpCmpGt, AF_VSOCK)] {
        rules.push(syscall(&["socket"], allow, None, vec![arg(0, op, family, None)]));
    }

    for (cap, names) in CAPABILITY_GROUPS {
        if has(cap) {
            rules.push(syscall(names, allow, None, vec![]));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        rules.push(syscall(
            &["clone"],
            allow,
            None,
            vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0))],
        ));
        // ENOSYS rather than EPERM, so that glibc falls back to clone(2), which is filtered
        rules.push(syscall(&["clone3"], LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32), vec![]));
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(native_architectures()));
    profile.set_syscalls(Some(rules));
    profile
}

/// Whether the running kernel is at least `major.minor` (an unreadable release counts as new:
/// every kernel strata runs on is far above the versions asked about).
fn kernel_at_least((major, minor): (u32, u32)) -> bool {
    // SAFETY: utsname is plain bytes, valid when zeroed; uname fills it or fails.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return true;
    }
    let release: String = uts.release.iter().take_while(|c| **c != 0).map(|c| char::from(*c as u8)).collect();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => true,
    }
}

fn native_architectures() -> Vec<OciArch> {
    if cfg!(target_arch = "aarch64") {
        vec![OciArch::ScmpArchAarch64, OciArch::ScmpArchArm]
    } else {
        vec![OciArch::ScmpArchX86_64, OciArch::ScmpArchX86, OciArch::ScmpArchX32]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    /// Every name of the profile with every capability group opened.
    fn all_names() -> Vec<String> {
        let caps: Vec<String> = CAPABILITY_GROUPS.iter().map(|(cap, _)| (*cap).to_string()).collect();
        let mut names: Vec<String> = [default_profile(&caps), default_profile(&[])]
            .iter()
            .flat_map(|p| p.syscalls().clone().unwrap_or_default())
            .flat_map(|rule| rule.names().clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The x86_64 host's filter covers x86_64, i386 and x32: a name none of their tables knows is
    /// skipped with a warning on every container creation. Names outside the x86_64 table must be
    /// i386 compat names (`chown32`, `*_time64`, ...).
    #[test]
    fn every_name_is_known_on_x86_64_hosts() {
        let unknown: Vec<String> = all_names()
            .into_iter()
            .filter(|n| Arch::X86_64.syscall_number(n).is_none() && Arch::X86.syscall_number(n).is_none())
            .collect();
        assert!(unknown.is_empty(), "names neither x86_64 nor i386 knows: {unknown:?}");
    }

    /// Syscalls newer than Linux 6.1 that the profile allows resolve on x86_64 itself (the tables
    /// once came from 6.1 headers, which silently denied these).
    #[test]
    fn post_6_1_names_are_in_the_x86_64_table() {
        let names = all_names();
        for name in [
            "cachestat",
            "fchmodat2",
            "futex_wake",
            "futex_wait",
            "futex_requeue",
            "map_shadow_stack",
            "mseal",
            "statmount",
            "listmount",
            "getxattrat",
            "setxattrat",
            "listxattrat",
            "removexattrat",
            "lsm_get_self_attr",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} is in the profile");
            assert!(Arch::X86_64.syscall_number(name).is_some(), "{name} is in the x86_64 table");
        }
        assert_eq!(Arch::X86_64.syscall_number("cachestat"), Some(451));
        assert_eq!(Arch::X86_64.syscall_number("map_shadow_stack"), Some(453));
    }

    #[test]
    fn io_uring_is_denied_and_lsm_calls_need_cap_sys_admin() {
        let names = |caps: &[String]| -> Vec<String> {
            default_profile(caps).syscalls().iter().flatten().flat_map(|r| r.names().clone()).collect()
        };
        let plain = names(&[]);
        assert!(!plain.iter().any(|n| n.starts_with("io_uring")), "io_uring allowed");
        assert!(!plain.iter().any(|n| n.starts_with("lsm_")), "lsm_* allowed without CAP_SYS_ADMIN");
        let admin = names(&["CAP_SYS_ADMIN".to_string()]);
        assert!(admin.iter().any(|n| n == "lsm_set_self_attr"));
        assert!(!admin.iter().any(|n| n.starts_with("io_uring")), "io_uring allowed with CAP_SYS_ADMIN");
    }

    /// Docker's Arm-only names resolve on 32-bit Arm, the compat ABI aarch64 filters cover.
    #[test]
    fn arm_only_names_are_in_the_arm_table() {
        for name in ARM_ONLY {
            assert!(Arch::Arm.syscall_number(name).is_some(), "{name} is in the 32-bit Arm table");
        }
    }

    #[test]
    fn kernel_versions_compare_by_major_then_minor() {
        assert!(kernel_at_least((4, 8)));
        assert!(!kernel_at_least((999, 0)));
    }
}
