//! The runc CVE classes, each attacked for real. A test here fails on a runtime without the
//! corresponding fix (each says which runc release first had it).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::process::Stdio;

/// CVE-2024-21626 (fixed in runc 1.1.12): a working directory given as `/proc/self/fd/N` would
/// be a directory the runtime held open — on the host. strata resolves it inside the root
/// without magic links, so every such path is refused, for the init and for exec.
#[test]
fn a_working_directory_through_a_descriptor_of_the_runtime_is_refused() {
    for n in 3..10 {
        let mut c = TestContainer::new("cwdfd", "pwd; ls");
        c.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let out = c.run();
        assert!(!out.status.success(), "cwd /proc/self/fd/{n} was accepted: {}", String::from_utf8_lossy(&out.stdout));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("process.cwd"), "{err}");
        c.assert_gone(None);
    }
    let c = TestContainer::new("execcwdfd", "while :; do sleep 0.05; done");
    c.create();
    c.ok(&["start", &c.id]);
    for cwd in ["/proc/self/fd/3", "/proc/self/fd/5", "/proc/self/cwd", "/proc/1/root/.."] {
        let out = c.strata(&["exec", "--cwd", cwd, &c.id, "pwd"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Either refused, or (for a path the kernel resolves inside the root) inside it.
        assert!(
            !out.status.success() || stdout.trim() == "/",
            "exec --cwd {cwd} ran in {stdout:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// CVE-2016-9962 (fixed in runc 1.0.0-rc3): a process of the runtime inside the container
/// must not be dumpable until it executes the program, or another process in the container
/// could ptrace it or open its descriptors. The created container's init waits at the start
/// gate; a host process that has everything but CAP_SYS_PTRACE (so only dumpability stands
/// in its way) cannot read it, and can once the program runs.
#[test]
fn the_init_is_not_dumpable_until_it_executes_the_program() {
    let c = TestContainer::new("dumpable", "while :; do sleep 0.05; done");
    c.create();
    let pid = c.state()["pid"].as_i64().unwrap() as i32;
    // Reading the target of one of its descriptors is the attack itself.
    let read_fd = || {
        let mut cmd = std::process::Command::new("readlink");
        cmd.arg(format!("/proc/{pid}/fd/0")).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, 19 /* CAP_SYS_PTRACE */, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.status().unwrap().success()
    };
    assert!(!read_fd(), "the waiting init of a created container was readable");
    c.ok(&["start", &c.id]);
    wait_until_true(|| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("busybox")));
    assert!(read_fd(), "the running program should be dumpable again (the probe itself is broken)");
}

fn wait_until_true(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
