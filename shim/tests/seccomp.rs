//! Seccomp in real containers: the filter the engine installs, observed from inside busybox.
//!
//! Each denial is checked against a control where the kernel itself would allow the call (the
//! needed capability is held, or none is needed), so the `EPERM` seen is the filter's doing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// A shell function: `try CMD ARGS...` runs the command and prints `CMD rc=<exit> <stderr>` on one
/// line, so a test can assert on the exit code and the error text of each call.
const TRY: &str = r#"try() { out=$("$@" 2>&1 >/dev/null); echo "$1 rc=$? $out"; }"#;

/// The line `try` printed for the command whose first word is `name`.
fn tried<'a>(out: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name} rc=");
    out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no result for {name}:\n{out}"))
}

/// Adds capabilities to every set the default config lists, leaving the seccomp profile as it was
/// resolved for the default capabilities.
fn add_caps(c: &mut TestContainer, extra: &[&str]) {
    for set in ["bounding", "effective", "permitted"] {
        let list = c.config["process"]["capabilities"][set].as_array_mut().unwrap();
        list.extend(extra.iter().map(|cap| json!(cap)));
    }
}

/// No core files from the SIGSYS tests, whatever the host's core_pattern is.
fn no_core_dumps(c: &mut TestContainer) {
    c.config["process"]["rlimits"].as_array_mut().unwrap().push(json!({"type": "RLIMIT_CORE", "soft": 0, "hard": 0}));
}

/// A profile that allows everything but `rules`.
fn allow_all_but(rules: Value) -> Value {
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
           "syscalls": rules})
}

/// Privileged calls busybox can make, each denied by Docker's default profile to a container
/// without CAP_SYS_ADMIN / CAP_SYSLOG.
const PRIVILEGED: &str = "
    try unshare -n true
    try nsenter -t 1 -n true
    try mount -t tmpfs none /tmp
    try umount /dev/mqueue
    try hostname other
    try dmesg
    try swapoff /dev/null
";

#[test]
fn default_profile_denies_with_eperm_even_when_the_capability_is_held() {
    // The profile in the config is the one resolved for the 14 default capabilities; the process
    // gets CAP_SYS_ADMIN and CAP_SYSLOG on top, so the kernel would allow every call below.
    let script = format!("{TRY}\n{PRIVILEGED}\ngrep -E '^Seccomp' /proc/self/status");
    let mut c = TestContainer::new("sc-deny", &script);
    add_caps(&mut c, &["CAP_SYS_ADMIN", "CAP_SYSLOG"]);
    let out = c.run_ok();
    for (name, error) in [
        ("unshare", "unshare: unshare(0x40000000): Operation not permitted"),
        ("nsenter", "nsenter: setns(): can't reassociate to namespace 'net': Operation not permitted"),
        // busybox's own wording for EPERM from mount(2)
        ("mount", "mount: permission denied (are you root?)"),
        ("umount", "umount: can't unmount /dev/mqueue: Operation not permitted"),
        ("hostname", "hostname: sethostname: Operation not permitted"),
        ("dmesg", "dmesg: klogctl: Operation not permitted"),
        ("swapoff", "swapoff: /dev/null: Operation not permitted"),
    ] {
        assert_eq!(tried(&out, name), format!("{name} rc=1 {error}"), "{out}");
    }
    // seccomp mode 2 (filter), exactly the one filter the engine installed
    assert!(out.contains("Seccomp:\t2\n") && out.contains("Seccomp_filters:\t1\n"), "{out}");
}

#[test]
fn without_the_profile_the_same_calls_pass_the_kernel() {
    // The control for the test above: same capabilities, no `linux.seccomp`.
    let script = format!("{TRY}\n{PRIVILEGED}\ngrep -E '^Seccomp' /proc/self/status");
    let mut c = TestContainer::new("sc-ctl", &script);
    add_caps(&mut c, &["CAP_SYS_ADMIN", "CAP_SYSLOG"]);
    c.config["linux"].as_object_mut().unwrap().remove("seccomp");
    let out = c.run_ok();
    for name in ["unshare", "nsenter", "mount", "umount", "hostname", "dmesg"] {
        assert!(tried(&out, name).contains(" rc=0 "), "{name} failed without seccomp:\n{out}");
    }
    // /dev/null is no swap area: the kernel's own answer once the capability check passed
    assert!(tried(&out, "swapoff").ends_with("Invalid argument"), "{out}");
    assert!(out.contains("Seccomp:\t0\n"), "{out}");
}

#[test]
fn default_profile_allows_ordinary_work() {
    // Pipes, fork (clone without namespace flags), exec, files, sockets, chroot with
    // CAP_SYS_CHROOT, permitted personas, signals and timers.
    let script = format!(
        "{TRY}
        try chroot / true
        try touch /dev/shm/f
        try mknod /dev/shm/n p
        try kill -0 $$
        try sleep 0.01
        try nc 127.0.0.1 1
        try nproc
        try linux64 true
        echo pipe | cat | wc -l
        id -u"
    );
    let c = TestContainer::new("sc-allow", &script);
    let out = c.run_ok();
    for name in ["chroot", "touch", "mknod", "kill", "sleep", "nproc", "linux64"] {
        assert!(tried(&out, name).contains(" rc=0 "), "{name} failed under the default profile:\n{out}");
    }
    // socket(AF_INET) is allowed (only AF_ALG and AF_VSOCK are not): the connection fails, but not with EPERM
    assert!(!tried(&out, "nc").contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("1\n0\n"), "{out}");
}

#[test]
fn errno_action_returns_errno_ret() {
    // errnoRet 18 (EXDEV) for mkdir, 122 (EDQUOT) for symlink; no errnoRet means EPERM.
    let script = format!(
        "{TRY}
        try mkdir /dev/shm/d
        test -d /dev/shm/d && echo created || echo absent
        try rmdir /dev/shm
        try ln -s x /dev/shm/l"
    );
    let mut c = TestContainer::new("sc-errno", &script);
    c.config["linux"]["seccomp"] = allow_all_but(json!([
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18},
        {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["symlink", "symlinkat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}
    ]));
    let out = c.run_ok();
    assert!(tried(&out, "mkdir").ends_with("Invalid cross-device link"), "{out}");
    assert!(out.contains("absent"), "{out}");
    assert!(tried(&out, "rmdir").ends_with("Operation not permitted"), "{out}");
    assert!(tried(&out, "ln").ends_with("Disk quota exceeded"), "{out}");
}

#[test]
fn default_errno_ret_applies_to_unlisted_syscalls() {
    // Docker's default profile with defaultErrnoRet EACCES instead of EPERM.
    let script = format!("{TRY}\ntry unshare -n true\ntry hostname other\necho done");
    let mut c = TestContainer::new("sc-deferrno", &script);
    c.config["linux"]["seccomp"]["defaultErrnoRet"] = json!(libc::EACCES);
    let out = c.run_ok();
    assert!(tried(&out, "unshare").ends_with("Permission denied"), "{out}");
    assert!(tried(&out, "hostname").ends_with("Permission denied"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
}

#[test]
fn kill_ends_the_process_with_sigsys() {
    // Inside: the shell sees its child die of signal 31 (128 + 31). `sync` is a syscall only
    // that applet makes.
    for action in ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"] {
        let mut c = TestContainer::new("sc-kill", "sync; echo child=$?; echo after");
        c.config["linux"]["seccomp"] = allow_all_but(json!([{"names": ["sync"], "action": action}]));
        no_core_dumps(&mut c);
        assert_eq!(c.run_ok(), "child=159\nafter\n", "{action}");
    }
    // Outside: the container's own process is killed and `strata run` exits 128 + SIGSYS.
    let mut c = TestContainer::new("sc-kill1", "");
    c.config["process"]["args"] = json!(["sync"]);
    c.config["linux"]["seccomp"] = allow_all_but(json!([{"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"}]));
    no_core_dumps(&mut c);
    let out = c.run();
    assert_eq!(out.status.code(), Some(128 + libc::SIGSYS), "{out:?}");
    c.assert_gone(None);
}

#[test]
fn personality_conditions_of_the_default_profile() {
    // personality(2) needs no capability, so any refusal is the profile's: PER_LINUX32 (0x8) and
    // PER_LINUX (0x0) are allowed personas, PER_LINUX32|ADDR_NO_RANDOMIZE (0x40008) is not.
    let script = format!("{TRY}\nlinux32 uname -m\nlinux64 uname -m\ntry linux32 -R true\ntry linux64 -R true");
    let c = TestContainer::new("sc-pers", &script);
    let out = c.run_ok();
    assert!(out.starts_with("i686\nx86_64\n"), "{out}");
    let line = tried(&out, "linux32");
    assert!(line.contains("personality(0x40008)") && line.ends_with("Operation not permitted"), "{out}");
    assert!(tried(&out, "linux64").ends_with("Operation not permitted"), "{out}");

    // The control: without the profile the kernel accepts the same persona.
    let script = format!("{TRY}\ntry linux32 -R true");
    let mut c = TestContainer::new("sc-pers-ctl", &script);
    c.config["linux"].as_object_mut().unwrap().remove("seccomp");
    assert!(tried(&c.run_ok(), "linux32").contains(" rc=0 "));
}

#[test]
fn masked_and_combined_argument_conditions() {
    const NEWUTS: u64 = libc::CLONE_NEWUTS as u64;
    const NEWNET: u64 = libc::CLONE_NEWNET as u64;
    const NEWIPC: u64 = libc::CLONE_NEWIPC as u64;
    let script = format!(
        "{TRY}
        try unshare -u true
        try unshare -n true
        try unshare -un true
        try unshare -i true
        try unshare -iu true
        try unshare -m true"
    );
    let mut c = TestContainer::new("sc-args", &script);
    add_caps(&mut c, &["CAP_SYS_ADMIN"]);
    // Rule 1 (one condition): deny EXDEV when CLONE_NEWNET is among the flags.
    // Rule 2 (two conditions on the same argument): as runc gives them to libseccomp, each is a
    // rule of its own, ORed: deny EDQUOT for NEWIPC or NEWUTS. Rule 1 comes first in the
    // profile, so it decides when both match.
    c.config["linux"]["seccomp"] = allow_all_but(json!([
        {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18,
         "args": [{"index": 0, "value": NEWNET, "valueTwo": NEWNET, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122,
         "args": [{"index": 0, "value": NEWIPC, "valueTwo": NEWIPC, "op": "SCMP_CMP_MASKED_EQ"},
                  {"index": 0, "value": NEWUTS, "valueTwo": NEWUTS, "op": "SCMP_CMP_MASKED_EQ"}]}
    ]));
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].ends_with("Disk quota exceeded"), "-u hits rule 2's second condition: {out}");
    assert!(lines[1].ends_with("Invalid cross-device link"), "-n hits rule 1: {out}");
    assert!(lines[2].ends_with("Invalid cross-device link"), "-un hits rule 1 first: {out}");
    assert!(lines[3].ends_with("Disk quota exceeded"), "-i hits rule 2's first condition: {out}");
    assert!(lines[4].ends_with("Disk quota exceeded"), "-iu hits rule 2: {out}");
    assert!(lines[5].starts_with("unshare rc=0 "), "-m matches no rule: {out}");
}

#[test]
fn no_new_privileges_false_still_installs_the_filter() {
    // Without no_new_privs the kernel takes a filter only from a CAP_SYS_ADMIN holder, so the
    // engine installs it before dropping to uid 1000 and the default capabilities.
    let script = format!("{TRY}\nid -u\ngrep -E '^(NoNewPrivs|Seccomp)' /proc/self/status\ntry linux32 -R true");
    for (uid, name) in [(0, "sc-nnp-root"), (1000, "sc-nnp-user")] {
        let mut c = TestContainer::new(name, &script);
        c.config["process"]["noNewPrivileges"] = json!(false);
        c.config["process"]["user"] = json!({"uid": uid, "gid": uid});
        let out = c.run_ok();
        assert!(out.starts_with(&format!("{uid}\n")), "{out}");
        assert!(out.contains("NoNewPrivs:\t0\n"), "{out}");
        assert!(out.contains("Seccomp:\t2\n") && out.contains("Seccomp_filters:\t1\n"), "{out}");
        assert!(tried(&out, "linux32").ends_with("Operation not permitted"), "{out}");
    }
}

#[test]
fn exec_processes_get_the_filter_too() {
    let c = TestContainer::new("sc-exec", "while :; do sleep 0.05; done");
    c.create();
    c.ok(&["start", &c.id]);
    let script = format!("{TRY}\ngrep -E '^Seccomp' /proc/self/status\ntry linux32 -R true");
    let out = c.ok(&["exec", &c.id, "sh", "-c", &script]);
    assert!(out.contains("Seccomp:\t2\n") && out.contains("Seccomp_filters:\t1\n"), "{out}");
    assert!(tried(&out, "linux32").ends_with("Operation not permitted"), "{out}");
    c.ok(&["delete", "--force", &c.id]);
}

#[test]
fn notify_listener_is_sent_to_the_listener_path() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut c = TestContainer::new("notify", "mkdir /tmp/made && echo made || echo refused");
    c.config["root"]["readonly"] = json!(false);
    let sock_path = c.dir.join("notify.sock");
    c.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock_path,
        "listenerMetadata": "test-metadata",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let agent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(f) => f.first().copied(),
                _ => None,
            })
            .expect("no listener fd");
        let n = msg.bytes;
        // SAFETY: the descriptor was just received and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let doc: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        // Closing the listener makes the kernel fail the waiting syscall (ENOSYS): the agent
        // here refuses everything, which must never turn into a silent allow.
        drop(fd);
        doc
    });
    let out = c.run_ok();
    let doc = agent.join().unwrap();
    assert_eq!(doc["fds"], json!(["seccompFd"]));
    assert_eq!(doc["metadata"], "test-metadata");
    assert_eq!(doc["state"]["id"], c.id);
    assert!(doc["pid"].as_i64().unwrap() > 0);
    assert_eq!(out, "refused\n");
}

#[test]
fn notify_without_listener_path_is_refused_at_create() {
    let mut c = TestContainer::new("notify-nopath", "true");
    c.config["linux"]["seccomp"] =
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
    c.write_config();
    let out = c.strata(&["create", &c.id]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.seccomp.listenerPath"), "{err}");
    assert!(!c.root.join(&c.id).exists());
}
