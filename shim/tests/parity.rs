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
