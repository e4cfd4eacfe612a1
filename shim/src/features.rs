//! `strata features`: the runtime-spec features document, derived from what the code does —
//! the mount options the parser knows, the hooks it runs, the seccomp actions, operators,
//! architectures and flags the compiler takes, the security modules this host runs — so that
//! it cannot claim what strata does not do (a test checks each claim against behaviour).

use oci_spec::runtime::{Arch, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};
use serde_json::{Value, json};

/// Every seccomp action of the specification (the compiler takes each).
pub const SECCOMP_ACTIONS: [LinuxSeccompAction; 9] = [
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActNotify,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];

/// Every comparison of the specification.
pub const SECCOMP_OPERATORS: [LinuxSeccompOperator; 7] = [
    LinuxSeccompOperator::ScmpCmpEq,
    LinuxSeccompOperator::ScmpCmpGe,
    LinuxSeccompOperator::ScmpCmpGt,
    LinuxSeccompOperator::ScmpCmpLe,
    LinuxSeccompOperator::ScmpCmpLt,
    LinuxSeccompOperator::ScmpCmpMaskedEq,
    LinuxSeccompOperator::ScmpCmpNe,
];

/// Every filter flag of the specification.
pub const SECCOMP_FLAGS: [LinuxSeccompFilterFlag; 4] = [
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

/// Every architecture of the specification; [`document`] lists those with a syscall table.
const ARCHES: [Arch; 19] = [
    Arch::ScmpArchAarch64,
    Arch::ScmpArchArm,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchNative,
    Arch::ScmpArchParisc,
    Arch::ScmpArchParisc64,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchX32,
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
];

/// The seccomp architectures the compiler has a syscall table for (the native one aside).
pub fn seccomp_arches() -> Vec<Arch> {
    ARCHES.into_iter().filter(|a| *a != Arch::ScmpArchNative && seccomp::Arch::from_oci(*a).is_some()).collect()
}

fn names<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items.into_iter().filter_map(|i| serde_json::to_value(i).ok()).collect()
}

/// The features document.
pub fn document() -> Value {
    let caps: std::collections::BTreeSet<String> = caps::all().iter().map(|c| c.to_string()).collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.3.0",
        "hooks": crate::hooks::Kind::ALL.iter().map(|k| k.field()).collect::<Vec<_>>(),
        "mountOptions": crate::rootfs::KNOWN_MOUNT_OPTIONS.to_vec(),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": true, "systemdUser": false, "rdma": true},
            "seccomp": {
                "enabled": true,
                "actions": names(SECCOMP_ACTIONS),
                "operators": names(SECCOMP_OPERATORS),
                "archs": names(seccomp_arches()),
                "knownFlags": names(SECCOMP_FLAGS),
                "supportedFlags": names(SECCOMP_FLAGS),
            },
            "apparmor": {"enabled": crate::lsm::apparmor_enabled()},
            "selinux": {"enabled": crate::lsm::selinux_enabled()},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}},
            "netDevices": {"enabled": true},
            "memoryPolicy": {
                "modes": ["MPOL_BIND", "MPOL_DEFAULT", "MPOL_INTERLEAVE", "MPOL_LOCAL", "MPOL_PREFERRED",
                          "MPOL_PREFERRED_MANY", "MPOL_WEIGHTED_INTERLEAVE"],
                "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"]
            }
        },
        "potentiallyUnsafeConfigAnnotations": [],
        "annotations": {
            "io.github.strata.version": env!("CARGO_PKG_VERSION")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_seccomp_feature_compiles() {
        let doc = document();
        let sc = &doc["linux"]["seccomp"];
        for action in sc["actions"].as_array().unwrap() {
            if action == "SCMP_ACT_NOTIFY" {
                continue; // needs a listener path; the notify tests cover it
            }
            let p: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(json!({
                "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getppid"], "action": action, "errnoRet": 1}]
            }))
            .unwrap();
            assert!(seccomp::compile(&p).is_ok(), "{action}");
        }
        for op in sc["operators"].as_array().unwrap() {
            let p: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(json!({
                "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 8, "op": op}]}]
            }))
            .unwrap();
            assert!(seccomp::compile(&p).is_ok(), "{op}");
        }
        for arch in sc["archs"].as_array().unwrap() {
            let p: oci_spec::runtime::LinuxSeccomp =
                serde_json::from_value(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]})).unwrap();
            assert!(seccomp::compile(&p).is_ok(), "{arch}");
        }
        for flag in sc["supportedFlags"].as_array().unwrap() {
            let p: oci_spec::runtime::LinuxSeccomp =
                serde_json::from_value(json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]})).unwrap();
            assert!(seccomp::compile(&p).is_ok(), "{flag}");
        }
    }

    #[test]
    fn every_advertised_mount_option_is_understood() {
        for o in crate::rootfs::KNOWN_MOUNT_OPTIONS {
            let parsed = crate::rootfs::parse_options(&[o.to_string()]);
            assert!(parsed.data.is_empty(), "{o} would be handed to the file system as data");
        }
    }
}
