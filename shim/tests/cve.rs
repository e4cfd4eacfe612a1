//! The runc CVE classes, each attacked for real. A test here fails on a runtime without the
//! corresponding fix (each says which runc release first had it).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::OpenOptionsExt;
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

/// A busybox root file system of the test's own (removed with the guard), for images that
/// attack the runtime.
struct OwnRootfs(tempfile::TempDir);

impl OwnRootfs {
    fn new() -> OwnRootfs {
        let dir = tempfile::tempdir().unwrap();
        build_busybox_rootfs(dir.path());
        OwnRootfs(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

/// The container's `/dev` is the image's own (no tmpfs on it, as some configs have it).
fn without_dev_tmpfs(c: &mut TestContainer, rootfs: &OwnRootfs) {
    c.config["root"]["path"] = json!(rootfs.path());
    c.config["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/dev");
}

/// The host's core_pattern, restored when dropped (should a regression let a test write it).
struct CorePattern(String);

impl CorePattern {
    fn save() -> CorePattern {
        CorePattern(std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap())
    }
    fn unchanged(&self) -> bool {
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap() == self.0
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        if !self.unchanged() {
            let _ = std::fs::write("/proc/sys/kernel/core_pattern", &self.0);
        }
    }
}

/// CVE-2025-31133 (fixed in runc 1.2.8/1.3.3): masking binds "/dev/null" over a masked file; an
/// image whose /dev/null is a symlink into /proc/sys (or any other file) would turn a masked
/// path into that file, writable. strata masks only with a verified null device.
#[test]
fn masking_with_a_dev_null_that_is_not_the_null_device_is_refused() {
    let saved = CorePattern::save();
    for fake in ["symlink", "file"] {
        let rootfs = OwnRootfs::new();
        let null = rootfs.path().join("dev/null");
        match fake {
            "symlink" => std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", &null).unwrap(),
            _ => std::fs::write(&null, "").unwrap(),
        }
        // Harmless if it ever ran: it only says whether a masked file became writable.
        let mut c = TestContainer::new("devnull", "[ -w /proc/keys ] && echo WRITABLE; true");
        without_dev_tmpfs(&mut c, &rootfs);
        let out = c.run();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a {fake} /dev/null was used to mask: {}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains("/dev/null is not the null device"), "{err}");
        c.assert_gone(None);
    }
    assert!(saved.unchanged());
}

/// CVE-2025-52565 (fixed in runc 1.2.8/1.3.3): /dev/console of a terminal container was made by
/// binding the pty over the path /dev/console, which an image could point anywhere. strata
/// creates it without following links and binds the pty from its descriptor.
#[test]
fn dev_console_is_the_terminal_and_never_a_redirected_path() {
    let mut c = TestContainer::new("console", "stat -c '%t:%T' /dev/console; stat -c '%t:%T' $(tty)");
    c.config["process"]["terminal"] = json!(true);
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0], lines[1], "/dev/console is not the container's terminal: {out:?}");

    let saved = CorePattern::save();
    let rootfs = OwnRootfs::new();
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", rootfs.path().join("dev/console")).unwrap();
    let mut c = TestContainer::new("consolelink", "echo ran");
    c.config["process"]["terminal"] = json!(true);
    without_dev_tmpfs(&mut c, &rootfs);
    let out = c.run();
    assert!(!out.status.success(), "a symlinked /dev/console was bound over");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/dev/console"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(saved.unchanged());
    c.assert_gone(None);

    // An image's /dev/console that is a device node is never opened for I/O before the device
    // rules apply (it could be the host's console, or a serial line whose open blocks). A FIFO
    // stands for the blocking kind: opening it for reading waits for a writer.
    let rootfs = OwnRootfs::new();
    let console = rootfs.path().join("dev/console");
    nix::unistd::mkfifo(&console, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let null = rootfs.path().join("dev/null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let mut c = TestContainer::new("consolefifo", "stat -c '%t:%T' /dev/console; stat -c '%t:%T' $(tty)");
    c.config["process"]["terminal"] = json!(true);
    without_dev_tmpfs(&mut c, &rootfs);
    c.write_config();
    let run = c.strata(&["run", &c.id]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(run.unwrap().wait_with_output()));
    let out = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Release the blocked open so that the container and the runtime can end.
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&console);
            panic!("the container did not start: its /dev/console was opened for reading");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    assert_eq!(lines[0], lines[1], "/dev/console is not the container's terminal: {stdout:?}");
}

/// CVE-2025-52881 (fixed in runc 1.2.8/1.3.3): procfs writes (sysctls, oom_score_adj, LSM
/// labels) went through the container's /proc, which its config or a racing mount can cover
/// with something else. A config that binds a host directory over /proc/sys/kernel makes a
/// path-based sysctl write land in a host file; strata writes through a private procfs.
#[test]
fn sysctls_are_written_to_procfs_not_to_what_covers_it() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("shmmni"), "host file\n").unwrap();
    let mut c = TestContainer::new("procover", "echo ran");
    c.config["linux"]["sysctl"] = json!({"kernel.shmmni": "1234"});
    c.config["linux"]["readonlyPaths"] = json!([]);
    c.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/proc/sys/kernel", "type": "bind", "source": host.path(), "options": ["rbind", "rw"]}));
    assert_eq!(c.run_ok(), "ran\n");
    assert_eq!(std::fs::read_to_string(host.path().join("shmmni")).unwrap(), "host file\n");
}
