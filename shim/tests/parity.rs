//! runc parity, seen from inside real containers: what a config leaves out, what `exec` takes
//! from the container and from its flags.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

/// The capability lines of /proc/self/status as `(set, mask)`.
fn caps_of(status: &str) -> std::collections::HashMap<String, u64> {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap").then(|| (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap()))
        })
        .collect()
}

const CAP_SYS_ADMIN: u64 = 1 << 21;
const DEFAULT_CAPS: u64 = 0xa80425fb;

#[test]
fn a_process_without_capabilities_gets_none() {
    let mut c = TestContainer::new("nocaps", "grep -E '^Cap' /proc/self/status");
    c.config["process"].as_object_mut().unwrap().remove("capabilities");
    let caps = caps_of(&c.run_ok());
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(caps[set], 0, "{set} of a process without capabilities: {caps:?}");
    }
}

#[test]
fn exec_takes_what_its_process_leaves_out_from_the_container() {
    let c = TestContainer::new("execinh", "while :; do sleep 0.05; done");
    c.create();
    c.ok(&["start", &c.id]);
    // No capabilities, no noNewPrivileges: both come from the container (14 caps, nnp on).
    let process = json!({"args": ["sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"], "cwd": "/",
                         "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let pfile = c.dir.join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let out = c.ok(&["exec", "--process", pfile.to_str().unwrap(), &c.id]);
    let caps = caps_of(&out);
    assert_eq!(caps["CapBnd"], DEFAULT_CAPS, "{out}");
    assert_eq!(caps["CapEff"], DEFAULT_CAPS, "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // An explicit empty set is kept empty.
    let process = json!({"args": ["sh", "-c", "grep -E '^CapBnd' /proc/self/status"], "cwd": "/",
                         "env": ["PATH=/bin"], "capabilities": {"bounding": []}});
    std::fs::write(&pfile, process.to_string()).unwrap();
    assert_eq!(caps_of(&c.ok(&["exec", "--process", pfile.to_str().unwrap(), &c.id]))["CapBnd"], 0);
    // A process description without a working directory is refused by name.
    std::fs::write(&pfile, json!({"args": ["true"]}).to_string()).unwrap();
    let out = c.strata(&["exec", "--process", pfile.to_str().unwrap(), &c.id]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cwd"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn exec_flags_change_the_containers_process_like_runc() {
    let mut c = TestContainer::new("execflags", "while :; do sleep 0.05; done");
    c.config["process"]["user"] = json!({"uid": 0, "gid": 1000});
    c.config["process"]["cwd"] = json!("/tmp");
    c.config["process"]["env"] = json!(["PATH=/bin", "X=from-config", "Y=kept"]);
    c.create();
    c.ok(&["start", &c.id]);
    // -u UID keeps the config's gid; the working directory is the config's; -e replaces.
    let out = c.ok(&["exec", "-u", "1000", "-e", "X=from-flag", &c.id, "sh", "-c", "id -u; id -g; pwd; echo $X $Y"]);
    assert_eq!(out, "1000\n1000\n/tmp\nfrom-flag kept\n");
    let out = c.ok(&["exec", "-u", "0:20", "--cwd", "/", &c.id, "sh", "-c", "id -g; pwd"]);
    assert_eq!(out, "20\n/\n");
    // --cap adds to the bounding, effective and permitted sets, never to the inheritable one.
    let caps = caps_of(&c.ok(&["exec", "--cap", "CAP_SYS_ADMIN", &c.id, "grep", "^Cap", "/proc/self/status"]));
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(caps[set], DEFAULT_CAPS | CAP_SYS_ADMIN, "{set}: {caps:?}");
    }
    assert_eq!(caps["CapInh"], 0);
    // --no-new-privs=false clears the container's no_new_privs for this process.
    let out = c.ok(&["exec", "--no-new-privs=false", &c.id, "grep", "NoNewPrivs", "/proc/self/status"]);
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    // A paused container takes an exec only with --ignore-paused.
    c.ok(&["pause", &c.id]);
    let refused = c.strata(&["exec", &c.id, "true"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--ignore-paused"));
    // With it, the process is made in the frozen cgroup and runs once the container resumes.
    let waiting = c
        .strata(&["exec", "--ignore-paused", &c.id, "echo", "ran"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.ok(&["resume", &c.id]);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
}

#[test]
fn sysctls_outside_the_containers_namespaces_are_refused_and_the_host_is_untouched() {
    let host = std::fs::read_to_string("/proc/sys/kernel/printk_ratelimit").unwrap();
    let mut c = TestContainer::new("sysctlhost", "true");
    c.config["linux"]["sysctl"] = json!({"kernel.printk_ratelimit": "17"});
    let out = c.run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.sysctl[\"kernel.printk_ratelimit\"]"), "{err}");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/printk_ratelimit").unwrap(), host);
    c.assert_gone(None);
    // Namespaced ones are written inside: the ipc and net namespaces are the container's.
    let mut c = TestContainer::new("sysctlns", "cat /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_forward");
    c.config["linux"]["sysctl"] = json!({"kernel.shmmni": "1234", "net/ipv4/ip_forward": "1"});
    c.config["linux"]["readonlyPaths"] = json!([]);
    assert_eq!(c.run_ok(), "1234\n1\n");
    // A hostname without a uts namespace of its own would be the host's.
    let mut c = TestContainer::new("nouts", "hostname");
    c.config["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}]);
    c.config["hostname"] = json!("box");
    let out = c.run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostname: needs a uts namespace"));
}

#[test]
fn fields_strata_does_not_implement_are_refused_by_name_before_anything_exists() {
    let mut c = TestContainer::new("refused", "true");
    c.config["linux"]["resources"]["memory"] = json!({"swappiness": 10});
    let out = c.run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.resources.memory.swappiness") && err.contains("cgroup v1"), "{err}");
    c.assert_gone(None);
    // A property the specification does not define is ignored, with a warning.
    let mut c = TestContainer::new("unknownprop", "echo ran");
    c.config["org.example.extension"] = json!({"x": 1});
    let out = c.run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("org.example.extension"));
}

/// `strata features` claims only what works: a container runs with each advertised mount
/// option, namespace and capability.
#[test]
fn every_advertised_feature_works() {
    let c = TestContainer::new("features", "true");
    let doc: serde_json::Value = serde_json::from_str(&c.ok(&["features"])).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    for opt in doc["mountOptions"].as_array().unwrap() {
        let opt = opt.as_str().unwrap();
        let bind_only = ["bind", "rbind", "idmap", "ridmap"].contains(&opt);
        let mut m = if bind_only {
            json!({"destination": "/m", "type": "bind", "source": scratch.path(), "options": ["rbind", opt]})
        } else {
            json!({"destination": "/m", "type": "tmpfs", "source": "tmpfs", "options": [opt]})
        };
        if opt.ends_with("idmap") {
            m["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
            m["gidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        }
        let mut c = TestContainer::new("mountopt", "true");
        c.config["mounts"].as_array_mut().unwrap().push(m);
        let out = c.run();
        assert!(out.status.success(), "mount option {opt}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for ns in doc["linux"]["namespaces"].as_array().unwrap() {
        let mut c = TestContainer::new("ns", "true");
        let list = c.config["linux"]["namespaces"].as_array_mut().unwrap();
        if !list.iter().any(|n| n["type"] == *ns) {
            list.push(json!({"type": ns}));
        }
        if ns == "user" {
            c.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 65536}]);
            c.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 65536}]);
        }
        let out = c.run();
        assert!(out.status.success(), "namespace {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let all: Vec<serde_json::Value> = doc["linux"]["capabilities"].as_array().unwrap().clone();
    let mut c = TestContainer::new("allcaps", "grep CapBnd /proc/self/status");
    c.config["process"]["capabilities"] = json!({"bounding": all, "effective": all, "permitted": all});
    assert!(c.run().status.success());
}

#[test]
fn events_print_runcs_json_until_the_container_ends() {
    let c = TestContainer::new("events", "i=0; while [ $i -lt 10 ]; do i=$((i+1)); sleep 0.1; done");
    c.create();
    c.ok(&["start", &c.id]);
    let one: serde_json::Value = serde_json::from_str(c.ok(&["events", "--stats", &c.id]).trim()).unwrap();
    assert_eq!(one["type"], "stats");
    assert_eq!(one["id"], c.id.as_str());
    assert!(one["data"]["cpu"]["usage"]["total"].as_u64().is_some(), "{one}");
    // The stream goes on at the interval and ends with the container.
    let out = c.ok(&["events", "--interval", "200ms", &c.id]);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 2 && lines.iter().all(|l| l["type"] == "stats"), "{out}");
    let bad = c.strata(&["events", "--interval", "0s", &c.id]).output().unwrap();
    assert!(!bad.status.success());
}

#[test]
fn runc_flags_strata_does_not_implement_are_refused_and_the_rest_work() {
    // run without a config.json says so (no image of that name either).
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(strata_bin())
        .args(["--root", "/run/strata-test-nothing", "run", "no-such-thing"])
        .current_dir(empty.path())
        .env("STRATA_STORE", empty.path().join("store"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no config.json in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = TestContainer::new("flags", "exit 3");
    c.write_config();
    for args in [vec!["run", "--no-pivot", &c.id], vec!["checkpoint", &c.id]] {
        let out = c.strata(&args).stdin(std::process::Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!out.stderr.is_empty());
    }
    // The systemd cgroup driver wants a slice:prefix:name path (as runc does), and systemd:
    // on a host without it (this one) the driver says so; neither leaves anything behind.
    let with_path = |path: Option<&str>| {
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.dir.join("config.json")).unwrap()).unwrap();
        config["linux"]["cgroupsPath"] = path.map_or(serde_json::Value::Null, Into::into);
        std::fs::write(c.dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        let out = c.strata(&["--systemd-cgroup", "run", &c.id]).stdin(std::process::Stdio::null()).output().unwrap();
        assert!(!out.status.success());
        c.assert_gone(None);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = with_path(Some("/strata-test/flags"));
    assert!(err.contains("slice:prefix:name"), "{err}");
    if !std::path::Path::new("/run/systemd/private").exists() {
        let err = with_path(None); // system.slice:strata:<id>
        assert!(err.contains("connecting to systemd") && err.contains("/run/systemd/private"), "{err}");
    }
    c.write_config();
    // --keep leaves the stopped container for `delete`.
    let out = c.strata(&["run", "--keep", &c.id]).stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(c.state()["status"], "stopped");
    c.ok(&["delete", &c.id]);
    c.assert_gone(None);
}

#[test]
fn a_pidfd_of_the_init_goes_to_the_pidfd_socket() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let c = TestContainer::new("pidfd", "exec sleep 100");
    let sock_path = c.dir.join("pidfd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    c.write_config();
    let st = c
        .strata(&["create", "--pidfd-socket", sock_path.to_str().unwrap(), &c.id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 16];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
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
        .unwrap();
    // SAFETY: SCM_RIGHTS gave this process the descriptor.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(&pidfd))).unwrap();
    let pid = c.state()["pid"].as_i64().unwrap();
    assert!(info.lines().any(|l| l == format!("Pid:\t{pid}")), "{info}");
}
