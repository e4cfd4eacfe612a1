//! The runtime-spec fields beyond namespaces and mounts, each seen from inside a real
//! container: personality, time namespace offsets, scheduler, I/O priority, CPU affinity,
//! memory policy, network devices, the session keyring; and the ones this host cannot honour
//! (LSM labels without the module, Intel RDT) refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

#[test]
fn personality_and_time_offsets() {
    let mut c = TestContainer::new("personality", "uname -m");
    c.config["linux"]["personality"] = json!({"domain": "LINUX32"});
    assert_eq!(c.run_ok().trim(), "i686");

    // A year of boot time in the container's own time namespace.
    let mut c = TestContainer::new("timens", "cut -d. -f1 /proc/uptime");
    c.config["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    c.config["linux"]["timeOffsets"] = json!({"boottime": {"secs": 31_536_000}, "monotonic": {"secs": 5}});
    let uptime: u64 = c.run_ok().trim().parse().unwrap();
    assert!(uptime >= 31_536_000, "uptime {uptime}");
    // Offsets need a time namespace of the container's own.
    let mut c = TestContainer::new("notimens", "true");
    c.config["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1}});
    let out = c.run();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("linux.timeOffsets: needs a time namespace"));
}

#[test]
fn scheduler_io_priority_and_memory_policy() {
    let script = "grep -E '^policy' /proc/self/sched | tr -s ' '; cut -d' ' -f19 /proc/self/stat; ionice; grep -c ' bind:0 ' /proc/self/numa_maps";
    let mut c = TestContainer::new("sched", script);
    c.config["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    c.config["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    c.config["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"});
    let out = c.run_ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "policy : 3", "{out}");
    assert_eq!(lines[1], "7", "{out}");
    assert_eq!(lines[2], "idle", "{out}");
    assert!(lines[3].parse::<u32>().unwrap() > 0, "no mapping bound to node 0: {out}");
    // Bad values are refused by field before anything exists.
    let mut c = TestContainer::new("badsched", "true");
    c.config["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "priority": 10});
    let out = c.run();
    assert!(String::from_utf8_lossy(&out.stderr).contains("process.scheduler.priority"));
    c.assert_gone(None);
    // A utilization clamp without a value to clamp to (the runtime-spec has none).
    let mut c = TestContainer::new("uclamp", "true");
    c.config["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_UTIL_CLAMP_MAX"]});
    let out = c.run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("process.scheduler.flags") && err.contains("SCHED_FLAG_UTIL_CLAMP_MAX"), "{err}");
    c.assert_gone(None);
}

#[test]
fn cpu_affinity_is_reset_for_the_init_and_set_for_an_exec() {
    // The runtime runs pinned to CPU 0; the container's init gets every CPU back.
    let c = TestContainer::new("affinity", "grep Cpus_allowed_list /proc/self/status; exec sleep 100");
    c.write_config();
    let all = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap().trim().to_string();
    let status = Command::new("taskset")
        .args(["-c", "0", &strata_bin(), "--root"])
        .arg(&c.root)
        .args(["run", "-d", &c.id])
        .current_dir(&c.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = c.state()["pid"].as_i64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.lines().any(|l| l == format!("Cpus_allowed_list:\t{all}")), "{st}");
    if all == "0" {
        return;
    }
    let process = json!({"args": ["grep", "Cpus_allowed_list", "/proc/self/status"], "cwd": "/", "env": ["PATH=/bin"],
                         "execCPUAffinity": {"initial": "0", "final": "1"}});
    let pfile = c.dir.join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    assert_eq!(c.ok(&["exec", "--process", pfile.to_str().unwrap(), &c.id]).trim(), "Cpus_allowed_list:\t1");
}

/// Removes a host interface left by a failed test.
struct Veth(&'static str);

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).stderr(Stdio::null()).status();
    }
}

#[test]
fn a_host_interface_moves_into_the_container_with_its_address() {
    let _guard = Veth("strata-nd0");
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["link", "add", "strata-nd0", "type", "veth", "peer", "name", "strata-nd1"]);
    ip(&["addr", "add", "10.231.7.1/24", "dev", "strata-nd0"]);
    let mut c = TestContainer::new(
        "netdev",
        "ip -o addr show dev eth7 | grep -o '10.231.7.1/24'; cat /sys/class/net/eth7/operstate",
    );
    c.config["linux"]["netDevices"] = json!({"strata-nd0": {"name": "eth7"}});
    let out = c.run_ok();
    assert!(out.starts_with("10.231.7.1/24\n"), "{out}");
    // Gone from the host while inside; a veth ends with the namespace.
    assert!(!std::path::Path::new("/sys/class/net/strata-nd0").exists());
    // Without a network namespace of its own there is nowhere to move it.
    let mut c = TestContainer::new("netdevhost", "true");
    c.config["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "network");
    c.config["linux"]["netDevices"] = json!({"lo": {}});
    let out = c.run();
    assert!(String::from_utf8_lossy(&out.stderr).contains("linux.netDevices: needs a network namespace"));
}

/// The host's view of an interface: whether it is up (IFF_UP) and its addresses.
fn host_link(name: &str) -> (bool, String) {
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    let addrs = Command::new("ip").args(["-o", "addr", "show", "dev", name]).output().unwrap();
    (flags & 1 != 0, String::from_utf8_lossy(&addrs.stdout).into_owned())
}

#[test]
fn a_failed_move_leaves_the_host_interface_as_it_was() {
    let _guard = Veth("strata-nf0");
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    // The kernel refuses to move a bridge to another network namespace (its netns is
    // immutable), and checks that before it closes the device.
    ip(&["link", "add", "strata-nf0", "type", "bridge"]);
    ip(&["addr", "add", "10.231.8.1/24", "dev", "strata-nf0"]);
    // An IPv6 address is flushed when its interface goes down: it shows whether it ever did.
    ip(&["addr", "add", "fd00:231:8::1/64", "dev", "strata-nf0", "nodad"]);
    ip(&["link", "set", "strata-nf0", "up"]);
    let (up, addrs) = host_link("strata-nf0");
    assert!(up && addrs.contains("fd00:231:8::1/64"), "{addrs}");
    let mut c = TestContainer::new("netdevfail", "true");
    c.config["linux"]["netDevices"] = json!({"strata-nf0": {"name": "eth7"}});
    let out = c.run();
    assert!(!out.status.success(), "a bridge was moved into the container");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.netDevices[\"strata-nf0\"]"), "{err}");
    c.assert_gone(None);
    let (up, addrs) = host_link("strata-nf0");
    assert!(up, "the interface was left down on the host");
    assert!(addrs.contains("10.231.8.1/24") && addrs.contains("fd00:231:8::1/64"), "addresses lost: {addrs}");
}

#[test]
fn the_container_gets_a_session_keyring_of_its_own() {
    let keyrings = || std::fs::read_to_string("/proc/keys").unwrap();
    let c = TestContainer::new("keyring", "exec sleep 100");
    c.create();
    let name = format!("_ses.{}", c.id);
    assert!(keyrings().contains(&name), "no {name} in /proc/keys");
    c.ok(&["delete", "--force", &c.id]);
    let c = TestContainer::new("nokeyring", "exec sleep 100");
    c.write_config();
    let st =
        c.strata(&["create", "--no-new-keyring", &c.id]).stdin(Stdio::null()).stdout(Stdio::null()).status().unwrap();
    assert!(st.success());
    assert!(!keyrings().contains(&format!("_ses.{}", c.id)));
}

#[test]
fn what_this_host_cannot_honour_is_refused_by_name() {
    let cases = [
        ("process", "apparmorProfile", json!("docker-default"), "process.apparmorProfile"),
        ("process", "selinuxLabel", json!("system_u:system_r:container_t:s0"), "process.selinuxLabel"),
        ("linux", "mountLabel", json!("system_u:object_r:container_file_t:s0"), "linux.mountLabel"),
        ("linux", "intelRdt", json!({"closID": "x", "l3CacheSchema": "L3:0=f"}), "linux.intelRdt"),
    ];
    for (section, key, value, field) in cases {
        if key == "apparmorProfile" && std::path::Path::new("/sys/module/apparmor").exists() {
            continue;
        }
        if key.ends_with("Label") && std::path::Path::new("/sys/fs/selinux").exists() {
            continue;
        }
        let mut c = TestContainer::new("refused", "true");
        c.config[section][key] = value;
        let out = c.run();
        assert!(!out.status.success(), "{field} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
        c.assert_gone(None);
    }
}
