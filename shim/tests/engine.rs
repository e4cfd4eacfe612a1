//! Real containers, run as root with the `strata` binary, observed from inside and outside.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::os::fd::AsRawFd;
use std::process::Stdio;

fn host_ns(name: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{name}")).unwrap().display().to_string()
}

#[test]
fn namespaces_differ_from_the_host() {
    let c =
        TestContainer::new("ns", "for n in pid net ipc uts mnt cgroup; do echo $n $(readlink /proc/self/ns/$n); done");
    let out = c.run_ok();
    for line in out.lines() {
        let (name, inside) = line.split_once(' ').unwrap();
        assert_ne!(inside, host_ns(name), "{name} namespace is the host's");
    }
    assert_eq!(out.lines().count(), 6);
    c.assert_gone(None);
}

#[test]
fn hostname_pid1_env_args_cwd() {
    let mut c = TestContainer::new("basic", "");
    c.config["hostname"] = json!("box1");
    c.config["process"]["args"] =
        json!(["sh", "-c", "echo host=$(hostname) pid=$$ foo=$FOO cwd=$(pwd) args=$0,$1", "first", "second"]);
    c.config["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    c.config["process"]["cwd"] = json!("/tmp/work");
    let out = c.run_ok();
    assert_eq!(out.trim(), "host=box1 pid=1 foo=bar baz cwd=/tmp/work args=first,second");
}

#[test]
fn user_groups_and_umask() {
    let mut c = TestContainer::new("user", "id; umask; echo HOME=$HOME");
    c.config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63});
    let out = c.run_ok();
    let mut lines = out.lines();
    let id = lines.next().unwrap();
    assert!(id.starts_with("uid=1000(user) gid=1000(user) groups="), "{id}");
    assert!(id.contains("10") && id.contains("20"), "{id}");
    assert_eq!(lines.next().unwrap(), "0077");
    assert_eq!(lines.next().unwrap(), "HOME=/home/user");
}

#[test]
fn capabilities_and_no_new_privs() {
    let c = TestContainer::new("caps", "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status");
    let out = c.run_ok();
    // The 14 default capabilities.
    let want = "00000000a80425fb";
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(out.lines().any(|l| l.starts_with(set) && l.ends_with(want)), "{set} != {want}:\n{out}");
    }
    assert!(out.contains("CapInh:\t0000000000000000") && out.contains("CapAmb:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");

    let mut c = TestContainer::new("caps2", "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status");
    c.config["process"]["noNewPrivileges"] = json!(false);
    c.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let kill = ["CAP_KILL"];
    c.config["process"]["capabilities"] =
        json!({"bounding": kill, "effective": kill, "permitted": kill, "inheritable": kill, "ambient": kill});
    let out = c.run_ok();
    // A non-root user keeps CAP_KILL (bit 5) through exec only via the ambient set.
    for set in ["CapEff", "CapBnd", "CapAmb"] {
        assert!(out.lines().any(|l| l.starts_with(set) && l.ends_with("0000000000000020")), "{set}:\n{out}");
    }
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
}

#[test]
fn rlimits_are_applied() {
    let mut c = TestContainer::new("rlim", "ulimit -n; ulimit -Hn; ulimit -c");
    c.config["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 4242, "hard": 5000},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    ]);
    assert_eq!(c.run_ok(), "4242\n5000\n0\n");
}

#[test]
fn mounts_masked_and_readonly_paths() {
    let script = r#"
        grep -E ' /(proc|dev|dev/pts|dev/shm|dev/mqueue|sys|sys/fs/cgroup) ' /proc/self/mounts | cut -d' ' -f2,3 | sort
        echo keys=$(wc -c < /proc/keys) timer_list=$(wc -c < /proc/timer_list)
        echo firmware=$(ls /sys/firmware | wc -l)
        echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sys-writable || echo sys-readonly
        touch /newfile 2>/dev/null && echo root-writable || echo root-readonly
        ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | cut -c1
        for l in fd stdin ptmx; do readlink /dev/$l; done
    "#;
    let c = TestContainer::new("mounts", script);
    let out = c.run_ok();
    for m in [
        "/dev tmpfs",
        "/dev/mqueue mqueue",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/proc proc",
        "/sys sysfs",
        "/sys/fs/cgroup cgroup2",
    ] {
        assert!(out.lines().any(|l| l == m), "mount {m} missing:\n{out}");
    }
    // Both exist on the host with content; masked, they read as empty.
    assert!(out.contains("keys=0 timer_list=0"), "{out}");
    assert!(out.contains("firmware=0"), "{out}");
    assert!(out.contains("sys-readonly"), "{out}");
    assert!(out.contains("root-readonly"), "{out}");
    assert_eq!(out.lines().filter(|l| *l == "c").count(), 6, "{out}");
    assert!(out.contains("/proc/self/fd\n/proc/self/fd/0\npts/ptmx"), "{out}");
}

#[test]
fn writable_root_and_bind_mount_options() {
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("hello"), "from the host").unwrap();
    let mut c = TestContainer::new(
        "bind",
        "cat /data/hello; touch /data/x 2>/dev/null && echo data-rw || echo data-ro; grep ' /data ' /proc/self/mounts | cut -d' ' -f4",
    );
    c.config["root"]["readonly"] = json!(false);
    let mounts = c.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host_dir.path(), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    let out = c.run_ok();
    assert!(out.starts_with("from the host"), "{out}");
    assert!(out.contains("data-ro"), "{out}");
    let opts = out.lines().last().unwrap();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} not in {opts}");
    }
}

#[test]
fn exit_codes_and_signals() {
    let c = TestContainer::new("exit3", "exit 3");
    assert_eq!(c.run().status.code(), Some(3));

    // pid 1 gets the signal from `strata kill` and its handler runs.
    let c = TestContainer::new("trap", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done");
    c.write_config();
    let mut child = c.strata(&["run", &c.id]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    wait_running(&c, &mut child);
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.ok(&["kill", &c.id, "TERM"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\ngot-term\n");

    // SIGKILL from outside: 128 + 9.
    let c = TestContainer::new("sigkill", "echo ready; exec sleep 100");
    c.write_config();
    let mut child = c.strata(&["run", &c.id]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    wait_running(&c, &mut child);
    c.ok(&["kill", &c.id, "KILL"]);
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(137));
    c.assert_gone(None);
}

/// Waits until a container started by `strata run` (child) is running; fails at once if the
/// runtime exited first.
fn wait_running(c: &TestContainer, child: &mut std::process::Child) {
    wait_until(|| {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("strata run exited early with {status}");
        }
        c.strata(&["state", &c.id])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("running"))
            .unwrap_or(false)
    });
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The descriptors of a process, seen from the host.
fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

#[test]
fn no_file_descriptor_leaks() {
    // An extra descriptor without close-on-exec in the runtime's parent must not reach the
    // container; with --preserve-fds 1 exactly fd 3 does.
    let file = std::fs::File::open("/etc/hostname").unwrap();
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    for (preserve, want) in [(0, vec![0, 1, 2]), (1, vec![0, 1, 2, 3])] {
        let c = TestContainer::new("fds", "exec sleep 100");
        c.write_config();
        let mut cmd = c.strata(&["create", "--preserve-fds", &preserve.to_string(), &c.id]);
        let raw = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls dup2, which
        // is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(status.success());
        c.ok(&["start", &c.id]);
        let pid = c.state()["pid"].as_i64().unwrap() as i32;
        wait_until(|| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("busybox")));
        assert_eq!(open_fds(pid), want, "descriptors of the container's process (preserve-fds {preserve})");
    }
}

#[test]
fn lifecycle_create_start_exec_pause_kill_delete() {
    let c = TestContainer::new("life", "echo started; while :; do sleep 0.05; done");
    c.create();
    let st = c.state();
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().unwrap() as i32;
    // The process waiting in the container is the runtime, seen through a read-only mount
    // (or a sealed copy): /proc/<pid>/exe cannot be opened for writing, while the binary on
    // the host stays writable for its owner.
    {
        use std::os::unix::fs::MetadataExt;
        let seen = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
        let binary = std::fs::metadata(strata_bin()).unwrap();
        // Same file (read-only view), or a copy of the same size (sealed memfd).
        assert!((seen.dev(), seen.ino()) == (binary.dev(), binary.ino()) || seen.size() == binary.size());
    }
    match std::fs::OpenOptions::new().write(true).open(format!("/proc/{pid}/exe")) {
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY) | Some(libc::EPERM)),
            "unexpected error {e}"
        ),
        Ok(mut f) => {
            use std::io::Write;
            assert!(f.write_all(b"x").is_err(), "the runtime binary was writable through /proc/pid/exe");
        }
    }
    c.ok(&["start", &c.id]);
    assert_eq!(c.state()["status"], "running");
    let list = c.ok(&["list", "--format", "json"]);
    assert!(list.contains(&c.id));

    let out = c.ok(&["exec", &c.id, "sh", "-c", "echo $(hostname) $$"]);
    let mut words = out.split_whitespace();
    assert_eq!(words.next(), Some("strata"));
    let exec_pid: i32 = words.next().unwrap().parse().unwrap();
    assert!(exec_pid > 1, "exec ran as pid {exec_pid}, not inside the container's pid namespace");
    let pids: Vec<i32> = serde_json::from_str(&c.ok(&["ps", "--format", "json", &c.id])).unwrap();
    assert!(pids.contains(&pid));
    // The exec'd process is born in the container's cgroup: the root of its cgroup namespace.
    let cg = c.ok(&["exec", &c.id, "cat", "/proc/self/cgroup"]);
    assert!(cg.lines().any(|l| l == "0::/"), "exec outside the container's cgroup: {cg}");

    c.ok(&["pause", &c.id]);
    assert_eq!(c.state()["status"], "paused");
    assert_eq!(std::fs::read_to_string(c.cgroup_dir().join("cgroup.freeze")).unwrap().trim(), "1");
    c.ok(&["resume", &c.id]);
    assert_eq!(c.state()["status"], "running");

    let refused = c.strata(&["delete", &c.id]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("running"));
    c.ok(&["delete", "--force", &c.id]);
    c.assert_gone(Some(pid));
}

#[test]
fn exec_with_process_json_user_and_env() {
    let c = TestContainer::new("execp", "while :; do sleep 0.05; done");
    c.create();
    c.ok(&["start", &c.id]);
    let process = json!({"args": ["sh", "-c", "id -u; echo $X; pwd"], "cwd": "/tmp", "env": ["PATH=/bin", "X=y"],
                         "user": {"uid": 1000, "gid": 1000}});
    let pfile = c.dir.join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let out = c.ok(&["exec", "--process", pfile.to_str().unwrap(), &c.id]);
    assert_eq!(out, "1000\ny\n/tmp\n");
    let status = c.strata(&["exec", &c.id, "sh", "-c", "exit 5"]).status().unwrap();
    assert_eq!(status.code(), Some(5));
    c.ok(&["kill", &c.id, "KILL"]);
    wait_until(|| c.state()["status"] == "stopped");
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}

#[test]
fn terminal_through_console_socket() {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut c = TestContainer::new("tty", "");
    c.config["process"]["terminal"] = json!(true);
    c.config["process"]["args"] = json!(["sh", "-c", "tty; test -t 0 && echo stdin-is-tty; exit 4"]);
    let sock_path = c.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    c.write_config();
    let sp = sock_path.to_str().unwrap().to_string();
    let create = c
        .strata(&["create", "--console-socket", &sp, &c.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(create.success());
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
    let fd = msg.cmsgs().unwrap().find_map(|c| match c {
        ControlMessageOwned::ScmRights(f) => f.first().copied(),
        _ => None,
    });
    let master = fd.expect("no pty master received");
    c.ok(&["start", &c.id]);
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        // SAFETY: `master` was received above and stays open until the close below.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(master) };
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("stdin-is-tty"), "{text}");
    nix::unistd::close(master).unwrap();
}

#[test]
fn user_namespace_with_mappings() {
    let mut c =
        TestContainer::new("userns", "cat /proc/self/uid_map /proc/self/gid_map; id -u; readlink /proc/self/ns/user");
    let ns = c.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(json!({"type": "user"}));
    c.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // sysfs needs a network namespace owned by the user namespace; cgroup2 needs the cgroup ns.
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(fields, ["0", "100000", "65536"], "{out}");
    assert_eq!(lines[2], "0");
    assert_ne!(lines[3], host_ns("user"));
}

#[test]
fn joins_an_existing_namespace_by_path() {
    // A network namespace made by `unshare`, held open by a sleeping process.
    let mut holder = std::process::Command::new("unshare").args(["--net", "sleep", "30"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let path = format!("/proc/{}/ns/net", holder.id());
    let want = std::fs::read_link(&path).unwrap().display().to_string();
    let mut c = TestContainer::new("join", "readlink /proc/self/ns/net");
    for ns in c.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(path);
        }
    }
    let out = c.run_ok();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.trim(), want);
}

#[test]
fn spec_then_run() {
    let c = TestContainer::new("spec", "");
    let out = c.strata(&["spec"]).output().unwrap();
    assert!(out.status.success());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["echo", "spec works"]);
    std::os::unix::fs::symlink(busybox_rootfs(), c.dir.join("rootfs")).unwrap();
    std::fs::write(c.dir.join("config.json"), config.to_string()).unwrap();
    let out = c.strata(&["run", &c.id]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "spec works\n", "{}", String::from_utf8_lossy(&out.stderr));
    // A second spec refuses to overwrite.
    assert!(!c.strata(&["spec"]).output().unwrap().status.success());
}

#[test]
fn features_document() {
    let out = std::process::Command::new(strata_bin()).arg("features").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["linux"]["cgroup"]["v2"], true);
    assert!(v["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "user"));
    assert!(v["mountOptions"].as_array().unwrap().iter().any(|n| n == "rbind"));
}

#[test]
fn device_rules_deny_what_is_not_allowed() {
    // /dev/probe (c 42:0, a number no driver takes) is made in /dev but no rule allows it: the
    // cgroup's eBPF device
    // program refuses to open it. The standard devices stay usable even under a config that
    // only denies everything (as CRI's does): the engine appends them, as runc does.
    let script = "cat /dev/probe 2>&1 | grep -q 'not permitted' && echo probe-denied || echo probe-open; echo x > /dev/null && echo null-ok; head -c1 /dev/zero | wc -c";
    let mut c = TestContainer::new("devices", script);
    c.config["linux"]["devices"] = json!([{"path": "/dev/probe", "type": "c", "major": 42, "minor": 0}]);
    c.config["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    assert_eq!(c.run_ok(), "probe-denied\nnull-ok\n1\n");
    // With a rule the open reaches the kernel, which finds no driver (ENXIO, not EPERM).
    let mut c = TestContainer::new(
        "devices2",
        "cat /dev/probe 2>&1 | grep -q 'not permitted' && echo denied || echo not-denied",
    );
    c.config["linux"]["devices"] = json!([{"path": "/dev/probe", "type": "c", "major": 42, "minor": 0}]);
    c.config["linux"]["resources"]["devices"] =
        json!([{"allow": true, "type": "c", "major": 42, "minor": 0, "access": "rwm"}]);
    assert_eq!(c.run_ok(), "not-denied\n");
}

#[test]
fn demo_builds_an_image_and_runs_it() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(strata_bin())
        .arg("--root")
        .arg(root.path())
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("hello from a strata container"), "{text}");
    assert!(text.contains("hostname: strata-demo"), "{text}");
    assert!(text.contains("pid:      1 "), "{text}");
    assert!(text.contains("exited (0) and deleted in"), "{text}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "demo left state behind");
}

/// A hook of `kind` that saves its stdin (the state) as `<dir>/<kind>.json` and appends its
/// kind to `<dir>/order`; `dir` is seen through the path the hook runs in.
fn recording_hook(kind: &str, dir: &str) -> serde_json::Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {dir}/{kind}.json; echo $KIND >> {dir}/order")],
           "env": [format!("KIND={kind}")], "timeout": 20})
}

#[test]
fn hooks_run_in_order_with_the_state() {
    let mut c = TestContainer::new("hooks", "echo main >> /hooks/order; exec sleep 1000");
    let out = c.dir.join("hooks-out");
    std::fs::create_dir_all(&out).unwrap();
    let host = out.display().to_string();
    c.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/hooks", "type": "bind", "source": host, "options": ["rbind", "rw"]}));
    c.config["hooks"] = json!({
        "prestart": [recording_hook("prestart", &host)],
        "createRuntime": [recording_hook("createRuntime", &host)],
        // Before pivot_root: the path and the file resolve in the runtime's file system.
        "createContainer": [recording_hook("createContainer", &host)],
        // In the container: its /bin/sh, its /hooks.
        "startContainer": [recording_hook("startContainer", "/hooks")],
        "poststart": [recording_hook("poststart", &host)],
        "poststop": [recording_hook("poststop", &host)],
    });
    let read = |kind: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(format!("{kind}.json"))).unwrap()).unwrap()
    };
    let order = || std::fs::read_to_string(out.join("order")).unwrap_or_default();

    c.create();
    let pid = c.state()["pid"].as_i64().unwrap();
    assert_eq!(order(), "prestart\ncreateRuntime\ncreateContainer\n");
    for kind in ["prestart", "createRuntime", "createContainer"] {
        let st = read(kind);
        assert_eq!(
            (st["id"].as_str(), st["status"].as_str(), st["pid"].as_i64()),
            (Some(&*c.id), Some("creating"), Some(pid))
        );
        assert_eq!(st["bundle"].as_str(), Some(&*c.dir.display().to_string()));
    }

    c.ok(&["start", &c.id]);
    wait_until(|| order().contains("main"));
    let lines: Vec<String> = order().lines().map(str::to_string).collect();
    assert_eq!(lines[3], "startContainer", "{lines:?}");
    assert!(lines[4..].contains(&"main".to_string()) && lines[4..].contains(&"poststart".to_string()), "{lines:?}");
    assert_eq!(read("startContainer")["status"], "created");
    assert_eq!(read("poststart")["status"], "running");
    assert!(!out.join("poststop.json").exists());

    c.ok(&["delete", "--force", &c.id]);
    assert_eq!(read("poststop")["status"], "stopped");
    assert_eq!(order().lines().last(), Some("poststop"));
    c.assert_gone(Some(pid as i32));
}

#[test]
fn a_failing_create_hook_fails_create_and_leaves_nothing() {
    let mut c = TestContainer::new("hookfail", "sleep 1000");
    c.config["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 3"]}]});
    c.write_config();
    let out = c.strata(&["create", &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hooks.createRuntime[0] (/bin/sh)") && err.contains("no network for you"), "{err}");
    c.assert_gone(None);

    // A startContainer hook that fails makes `start` fail with its message; the container stops.
    c.config["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo refused; exit 1"]}]});
    c.create();
    let out = c.strata(&["start", &c.id]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hooks.startContainer[0] (/bin/sh): exit status: 1: refused")
    );
    wait_until(|| c.state()["status"] == "stopped");
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}
