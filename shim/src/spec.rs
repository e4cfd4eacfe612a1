//! The default `config.json` written by `strata spec`: the runtime-spec defaults runc users know,
//! with Docker's 14 default capabilities.

use serde_json::{Value, json};

/// The 14 capabilities a container gets by default (Docker's and containerd's list).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the container.
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths the container sees read-only.
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The device rules of the default configuration: deny everything (the engine adds its
/// standard list, [`standard_device_rules`], after any config's rules, as runc does).
pub fn default_device_rules() -> Value {
    json!([{"allow": false, "access": "rwm"}])
}

/// The devices every container may use whatever its config says, appended after the
/// config's rules (a later rule wins): creating any node (`m`; opening one still needs a
/// rule), the six the engine creates in /dev, the pty devices (`/dev/ptmx`, `/dev/pts/*`) and
/// `/dev/net/tun` — runc's list.
pub fn standard_device_rules() -> Vec<oci_spec::runtime::LinuxDeviceCgroup> {
    let allow = |typ: &str, major: Option<i64>, minor: Option<i64>, access: &str| json!({"allow": true, "type": typ, "major": major, "minor": minor, "access": access});
    let rules = json!([
        allow("c", None, None, "m"),
        allow("b", None, None, "m"),
        allow("c", Some(1), Some(3), "rwm"),
        allow("c", Some(1), Some(8), "rwm"),
        allow("c", Some(1), Some(7), "rwm"),
        allow("c", Some(5), Some(0), "rwm"),
        allow("c", Some(1), Some(5), "rwm"),
        allow("c", Some(1), Some(9), "rwm"),
        allow("c", Some(136), None, "rwm"),
        allow("c", Some(5), Some(2), "rwm"),
        allow("c", Some(10), Some(200), "rwm")
    ]);
    serde_json::from_value(rules).unwrap_or_default()
}

/// The default configuration. `terminal` is runc's default (true); `args` the program. The
/// seccomp profile is Docker's default, resolved against the default capabilities.
pub fn default_config(args: &[String], terminal: bool) -> Value {
    let caps = json!(DEFAULT_CAPABILITIES);
    let cap_names: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let profile = serde_json::to_value(seccomp::default_profile(&cap_names)).unwrap_or(Value::Null);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "strata",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "resources": {"devices": default_device_rules()},
            "seccomp": profile,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}

/// Turns a configuration into a rootless one: a user namespace mapping the caller to root.
pub fn make_rootless(config: &mut Value, uid: u32, gid: u32) {
    if let Some(linux) = config.get_mut("linux") {
        if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            ns.retain(|n| n["type"] != "network" && n["type"] != "cgroup");
            ns.push(json!({"type": "user"}));
        }
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    }
    if let Some(mounts) = config.get_mut("mounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| m["type"] != "cgroup" && m["type"] != "mqueue");
        for m in mounts.iter_mut() {
            if m["type"] == "sysfs" {
                *m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
            if m["type"] == "devpts"
                && let Some(opts) = m["options"].as_array_mut()
            {
                opts.retain(|o| o != "gid=5");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_as_a_spec() {
        let v = default_config(&["sh".into()], true);
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        assert_eq!(spec.linux().as_ref().unwrap().namespaces().as_ref().unwrap().len(), 6);
    }

    #[test]
    fn the_standard_device_list_parses_whole() {
        assert_eq!(standard_device_rules().len(), 11);
    }

    #[test]
    fn rootless_adds_user_namespace() {
        let mut v = default_config(&["sh".into()], false);
        make_rootless(&mut v, 1000, 1000);
        let spec: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux.namespaces().as_ref().unwrap().iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        );
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), 1000);
    }
}
