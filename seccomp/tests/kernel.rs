//! Real-kernel tests: a forked child installs a filter and reports what its syscalls did.
//!
//! They need no container, only a kernel with seccomp. The child sets `no_new_privs` itself
//! (the crate never does), so they also run unprivileged.

use std::os::fd::AsRawFd;

use oci_spec::runtime::LinuxSeccomp;

/// Runs `body` in a forked child after installing `profile`; returns the child's wait status.
fn in_child(profile: &str, body: fn() -> i32) -> libc::c_int {
    let profile: LinuxSeccomp = serde_json::from_str(profile).expect("test profile parses");
    let filter = seccomp::compile(&profile).expect("test profile compiles");
    // SAFETY: the test binary may have other threads, so the child only calls async-signal-safe
    // functions (prctl, seccomp, raw syscalls, _exit) before it exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain prctl on the calling (child) process.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(100) };
        }
        let code = match filter.install() {
            Ok(_) => body(),
            Err(_) => 101,
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    status
}

fn exit_code(status: libc::c_int) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// errno of the last failed libc call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn denied_syscall_returns_configured_errno_and_allowed_one_works() {
    let profile = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]
    }"#;
    let status = in_child(profile, || {
        // SAFETY: raw getppid/getpid take no arguments.
        let denied = unsafe { libc::syscall(libc::SYS_getppid) };
        let denied_errno = errno();
        // SAFETY: as above.
        let allowed = unsafe { libc::syscall(libc::SYS_getpid) };
        if denied == -1 && denied_errno == 42 && allowed > 0 { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn default_errno_applies_to_unlisted_syscalls() {
    let profile = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 7,
        "syscalls": [{"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    }"#;
    let status = in_child(profile, || {
        // SAFETY: raw getppid/getpid take no arguments.
        let denied = unsafe { libc::syscall(libc::SYS_getppid) };
        let denied_errno = errno();
        // SAFETY: as above.
        let allowed = unsafe { libc::syscall(libc::SYS_getpid) };
        if denied == -1 && denied_errno == 7 && allowed > 0 { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn kill_ends_the_child_with_sigsys() {
    for action in ["SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP"] {
        let profile = format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{{"names": ["getppid"], "action": "{action}"}}]}}"#
        );
        let status = in_child(&profile, || {
            // SAFETY: raw getppid takes no arguments.
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(libc::WIFSIGNALED(status), "{action}: status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{action}");
    }
}

#[test]
fn argument_conditions_behave_as_written() {
    // personality(0xffffffff) only queries; anything else is denied, like the default profile
    let profile = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_NE"}]},
            {"names": ["dup3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9,
             "args": [{"index": 2, "value": 524288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]
    }"#;
    let status = in_child(profile, || {
        // SAFETY: personality with the query value changes nothing.
        let query = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
        // SAFETY: this call is denied by the filter before the kernel acts on it.
        let change = unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000u64) };
        let change_errno = errno();
        // dup3 without O_CLOEXEC is denied (mask matches 0), with O_CLOEXEC it runs
        let stderr = std::io::stderr().as_raw_fd();
        // SAFETY: dup3 onto fd 200, which the child owns and never uses otherwise.
        let plain = unsafe { libc::syscall(libc::SYS_dup3, stderr, 200, 0) };
        let plain_errno = errno();
        // SAFETY: as above.
        let cloexec = unsafe { libc::syscall(libc::SYS_dup3, stderr, 200, libc::O_CLOEXEC) };
        let ok = query >= 0 && change == -1 && change_errno == 1 && plain == -1 && plain_errno == 9 && cloexec == 200;
        if ok { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn default_profile_denies_namespaces_without_cap_sys_admin() {
    let profile = seccomp::default_profile(&[]);
    let json = serde_json::to_string(&profile).expect("profile serialises");
    let status = in_child(&json, || {
        // SAFETY: unshare is denied by the filter before the kernel acts on it.
        let unshare = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
        let unshare_errno = errno();
        // SAFETY: raw getppid takes no arguments.
        let getppid = unsafe { libc::syscall(libc::SYS_getppid) };
        // SAFETY: clone3 with a null argument is denied before the kernel reads it.
        let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        let clone3_errno = errno();
        let ok = unshare == -1
            && unshare_errno == libc::EPERM
            && getppid > 0
            && clone3 == -1
            && clone3_errno == libc::ENOSYS;
        if ok { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn notify_returns_a_listener() {
    let profile = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]
    }"#;
    let profile: LinuxSeccomp = serde_json::from_str(profile).expect("parses");
    let filter = seccomp::compile(&profile).expect("compiles");
    assert!(filter.uses_notify());
    // SAFETY: see in_child; the child only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: prctl and _exit on the child itself.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let code = match filter.install() {
                Ok(Some(fd)) if fd.as_raw_fd() >= 0 => 0,
                _ => 1,
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn a_syscall_newer_than_the_profile_fails_with_enosys() {
    // exit_group is the highest call named; statx (332 on x86-64) comes after it, getppid before.
    let profile = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 7,
        "syscalls": [{"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    }"#;
    let status = in_child(profile, || {
        // SAFETY: getppid takes no arguments.
        let older = unsafe { libc::syscall(libc::SYS_getppid) };
        let older_errno = errno();
        // SAFETY: statx with null pointers; the filter answers before the kernel reads them.
        let newer = unsafe { libc::syscall(libc::SYS_statx, -1, 0usize, 0, 0, 0usize) };
        let newer_errno = errno();
        if older == -1 && older_errno == 7 && newer == -1 && newer_errno == libc::ENOSYS { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn the_default_profile_answers_an_unknown_future_syscall_with_enosys() {
    let profile = serde_json::to_string(&seccomp::default_profile(&[])).expect("profile serialises");
    let status = in_child(&profile, || {
        // SAFETY: number 1000 is no syscall yet; the filter answers without the kernel acting.
        let r = unsafe { libc::syscall(1000) };
        let e = errno();
        // SAFETY: kexec_load takes integers and pointers; the filter denies it before use.
        let denied = unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, 0usize, 0) };
        let denied_errno = errno();
        if r == -1 && e == libc::ENOSYS && denied == -1 && denied_errno == libc::EPERM { 0 } else { 1 }
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn default_profile_follows_dockers_current_rules() {
    let profile = serde_json::to_string(&seccomp::default_profile(&[])).expect("profile serialises");
    let status = in_child(&profile, || {
        let mut failed = 0;
        // io_uring is denied (EPERM from the filter, before the kernel reads the null params).
        // SAFETY: io_uring_setup with a null params pointer; the filter answers first.
        let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0usize) };
        if !(r == -1 && errno() == libc::EPERM) {
            failed |= 1;
        }
        // AF_ALG and AF_VSOCK sockets are denied, AF_UNIX and AF_NETLINK ones are not.
        for (family, denied, bit) in [
            (libc::AF_ALG, true, 2),
            (libc::AF_VSOCK, true, 4),
            (libc::AF_UNIX, false, 8),
            (libc::AF_NETLINK, false, 16),
        ] {
            // SAFETY: socket takes integers; a descriptor it returns is closed below.
            let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            let e = errno();
            if fd >= 0 {
                // SAFETY: closing the descriptor socket just returned.
                unsafe { libc::close(fd) };
            }
            if (fd == -1 && e == libc::EPERM) != denied {
                failed |= bit;
            }
        }
        // mseal (Linux 6.10) is allowed: whatever the kernel answers, it is not the filter's EPERM.
        // SAFETY: mseal of an empty range at 0 changes nothing.
        let r = unsafe { libc::syscall(462, 0usize, 0usize, 0usize) };
        if r == -1 && errno() == libc::EPERM {
            failed |= 32;
        }
        failed
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x} (exit code bits: which check failed)");
}
