//! Every field of the runtime-spec (1.2, as the `oci-spec` crate knows it) and what strata
//! does with it: applies it, or refuses it by name when a config sets it. Nothing is dropped
//! without a word: [`check`] walks a `config.json` before anything is made, refuses what the
//! table refuses, and reports the properties the specification does not define, which a
//! runtime must ignore (the specification's "Extensibility" rule) and strata logs.
//!
//! The table is complete: a test traces every field of `oci_spec::runtime::Spec` and fails
//! for one the table does not name, so a field added to the specification (with a newer
//! `oci-spec`) is refused or implemented before it can be ignored.

use serde_json::Value;

/// What strata does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Applied as the specification says (its value is checked where it is used).
    Applied,
    /// Refused when set (to anything but null, false or empty), for this reason. Its
    /// sub-fields are refused with it.
    Refused(&'static str),
}

use Support::{Applied, Refused};

/// Every field, as a path: `.` between fields, `[]` for the elements of a list, `{}` for the
/// values of a map whose values are objects.
pub const FIELDS: &[(&str, Support)] = &[
    ("ociVersion", Applied),
    ("root", Applied),
    ("root.path", Applied),
    ("root.readonly", Applied),
    ("mounts", Applied),
    ("mounts[].destination", Applied),
    ("mounts[].type", Applied),
    ("mounts[].source", Applied),
    ("mounts[].options", Applied),
    ("mounts[].uidMappings", Applied),
    ("mounts[].uidMappings[].hostID", Applied),
    ("mounts[].uidMappings[].containerID", Applied),
    ("mounts[].uidMappings[].size", Applied),
    ("mounts[].gidMappings", Applied),
    ("mounts[].gidMappings[].hostID", Applied),
    ("mounts[].gidMappings[].containerID", Applied),
    ("mounts[].gidMappings[].size", Applied),
    ("process", Applied),
    ("process.terminal", Applied),
    ("process.consoleSize", Applied),
    ("process.consoleSize.height", Applied),
    ("process.consoleSize.width", Applied),
    ("process.user", Applied),
    ("process.user.uid", Applied),
    ("process.user.gid", Applied),
    ("process.user.umask", Applied),
    ("process.user.additionalGids", Applied),
    ("process.user.username", Refused("a Windows field: use process.user.uid and gid")),
    ("process.args", Applied),
    ("process.commandLine", Refused("a Windows field: use process.args")),
    ("process.env", Applied),
    ("process.cwd", Applied),
    ("process.capabilities", Applied),
    ("process.capabilities.bounding", Applied),
    ("process.capabilities.effective", Applied),
    ("process.capabilities.inheritable", Applied),
    ("process.capabilities.permitted", Applied),
    ("process.capabilities.ambient", Applied),
    ("process.rlimits", Applied),
    ("process.rlimits[].type", Applied),
    ("process.rlimits[].hard", Applied),
    ("process.rlimits[].soft", Applied),
    ("process.noNewPrivileges", Applied),
    ("process.apparmorProfile", Applied),
    ("process.oomScoreAdj", Applied),
    ("process.selinuxLabel", Applied),
    ("process.ioPriority", Applied),
    ("process.ioPriority.class", Applied),
    ("process.ioPriority.priority", Applied),
    ("process.scheduler", Applied),
    ("process.scheduler.policy", Applied),
    ("process.scheduler.nice", Applied),
    ("process.scheduler.priority", Applied),
    ("process.scheduler.flags", Applied),
    ("process.scheduler.runtime", Applied),
    ("process.scheduler.deadline", Applied),
    ("process.scheduler.period", Applied),
    ("process.execCPUAffinity", Applied),
    ("process.execCPUAffinity.initial", Applied),
    ("process.execCPUAffinity.final", Applied),
    ("hostname", Applied),
    ("domainname", Applied),
    ("hooks", Applied),
    ("hooks.prestart", Applied),
    ("hooks.prestart[].path", Applied),
    ("hooks.prestart[].args", Applied),
    ("hooks.prestart[].env", Applied),
    ("hooks.prestart[].timeout", Applied),
    ("hooks.createRuntime", Applied),
    ("hooks.createRuntime[].path", Applied),
    ("hooks.createRuntime[].args", Applied),
    ("hooks.createRuntime[].env", Applied),
    ("hooks.createRuntime[].timeout", Applied),
    ("hooks.createContainer", Applied),
    ("hooks.createContainer[].path", Applied),
    ("hooks.createContainer[].args", Applied),
    ("hooks.createContainer[].env", Applied),
    ("hooks.createContainer[].timeout", Applied),
    ("hooks.startContainer", Applied),
    ("hooks.startContainer[].path", Applied),
    ("hooks.startContainer[].args", Applied),
    ("hooks.startContainer[].env", Applied),
    ("hooks.startContainer[].timeout", Applied),
    ("hooks.poststart", Applied),
    ("hooks.poststart[].path", Applied),
    ("hooks.poststart[].args", Applied),
    ("hooks.poststart[].env", Applied),
    ("hooks.poststart[].timeout", Applied),
    ("hooks.poststop", Applied),
    ("hooks.poststop[].path", Applied),
    ("hooks.poststop[].args", Applied),
    ("hooks.poststop[].env", Applied),
    ("hooks.poststop[].timeout", Applied),
    ("annotations", Applied),
    ("linux", Applied),
    ("linux.netDevices", Applied),
    ("linux.netDevices{}.name", Applied),
    ("linux.uidMappings", Applied),
    ("linux.uidMappings[].hostID", Applied),
    ("linux.uidMappings[].containerID", Applied),
    ("linux.uidMappings[].size", Applied),
    ("linux.gidMappings", Applied),
    ("linux.gidMappings[].hostID", Applied),
    ("linux.gidMappings[].containerID", Applied),
    ("linux.gidMappings[].size", Applied),
    ("linux.sysctl", Applied),
    ("linux.resources", Applied),
    ("linux.resources.devices", Applied),
    ("linux.resources.devices[].allow", Applied),
    ("linux.resources.devices[].type", Applied),
    ("linux.resources.devices[].major", Applied),
    ("linux.resources.devices[].minor", Applied),
    ("linux.resources.devices[].access", Applied),
    ("linux.resources.memory", Applied),
    ("linux.resources.memory.limit", Applied),
    ("linux.resources.memory.reservation", Applied),
    ("linux.resources.memory.swap", Applied),
    ("linux.resources.memory.kernel", Refused("kernel memory limits do not exist in cgroup v2")),
    ("linux.resources.memory.kernelTCP", Refused("kernel memory limits do not exist in cgroup v2")),
    ("linux.resources.memory.swappiness", Refused("memory.swappiness exists only in cgroup v1")),
    ("linux.resources.memory.disableOOMKiller", Refused("memory.oom_control exists only in cgroup v1")),
    (
        "linux.resources.memory.useHierarchy",
        Refused("cgroup v2 is always hierarchical; use_hierarchy exists only in cgroup v1"),
    ),
    ("linux.resources.memory.checkBeforeUpdate", Applied),
    ("linux.resources.cpu", Applied),
    ("linux.resources.cpu.shares", Applied),
    ("linux.resources.cpu.quota", Applied),
    ("linux.resources.cpu.idle", Applied),
    ("linux.resources.cpu.burst", Applied),
    ("linux.resources.cpu.period", Applied),
    ("linux.resources.cpu.realtimeRuntime", Applied),
    ("linux.resources.cpu.realtimePeriod", Applied),
    ("linux.resources.cpu.cpus", Applied),
    ("linux.resources.cpu.mems", Applied),
    ("linux.resources.pids", Applied),
    ("linux.resources.pids.limit", Applied),
    ("linux.resources.blockIO", Applied),
    ("linux.resources.blockIO.weight", Applied),
    ("linux.resources.blockIO.leafWeight", Refused("blkio leaf weights exist only in cgroup v1")),
    ("linux.resources.blockIO.weightDevice", Applied),
    ("linux.resources.blockIO.weightDevice[].major", Applied),
    ("linux.resources.blockIO.weightDevice[].minor", Applied),
    ("linux.resources.blockIO.weightDevice[].weight", Applied),
    ("linux.resources.blockIO.weightDevice[].leafWeight", Refused("blkio leaf weights exist only in cgroup v1")),
    ("linux.resources.blockIO.throttleReadBpsDevice", Applied),
    ("linux.resources.blockIO.throttleReadBpsDevice[].major", Applied),
    ("linux.resources.blockIO.throttleReadBpsDevice[].minor", Applied),
    ("linux.resources.blockIO.throttleReadBpsDevice[].rate", Applied),
    ("linux.resources.blockIO.throttleWriteBpsDevice", Applied),
    ("linux.resources.blockIO.throttleWriteBpsDevice[].major", Applied),
    ("linux.resources.blockIO.throttleWriteBpsDevice[].minor", Applied),
    ("linux.resources.blockIO.throttleWriteBpsDevice[].rate", Applied),
    ("linux.resources.blockIO.throttleReadIOPSDevice", Applied),
    ("linux.resources.blockIO.throttleReadIOPSDevice[].major", Applied),
    ("linux.resources.blockIO.throttleReadIOPSDevice[].minor", Applied),
    ("linux.resources.blockIO.throttleReadIOPSDevice[].rate", Applied),
    ("linux.resources.blockIO.throttleWriteIOPSDevice", Applied),
    ("linux.resources.blockIO.throttleWriteIOPSDevice[].major", Applied),
    ("linux.resources.blockIO.throttleWriteIOPSDevice[].minor", Applied),
    ("linux.resources.blockIO.throttleWriteIOPSDevice[].rate", Applied),
    ("linux.resources.hugepageLimits", Applied),
    ("linux.resources.hugepageLimits[].pageSize", Applied),
    ("linux.resources.hugepageLimits[].limit", Applied),
    ("linux.resources.network", Refused("net_cls and net_prio exist only in cgroup v1")),
    ("linux.resources.rdma", Applied),
    ("linux.resources.rdma{}.hcaHandles", Applied),
    ("linux.resources.rdma{}.hcaObjects", Applied),
    ("linux.resources.unified", Applied),
    ("linux.cgroupsPath", Applied),
    ("linux.namespaces", Applied),
    ("linux.namespaces[].type", Applied),
    ("linux.namespaces[].path", Applied),
    ("linux.devices", Applied),
    ("linux.devices[].path", Applied),
    ("linux.devices[].type", Applied),
    ("linux.devices[].major", Applied),
    ("linux.devices[].minor", Applied),
    ("linux.devices[].fileMode", Applied),
    ("linux.devices[].uid", Applied),
    ("linux.devices[].gid", Applied),
    ("linux.seccomp", Applied),
    ("linux.seccomp.defaultAction", Applied),
    ("linux.seccomp.defaultErrnoRet", Applied),
    ("linux.seccomp.architectures", Applied),
    ("linux.seccomp.flags", Applied),
    ("linux.seccomp.listenerPath", Applied),
    ("linux.seccomp.listenerMetadata", Applied),
    ("linux.seccomp.syscalls", Applied),
    ("linux.seccomp.syscalls[].names", Applied),
    ("linux.seccomp.syscalls[].action", Applied),
    ("linux.seccomp.syscalls[].errnoRet", Applied),
    ("linux.seccomp.syscalls[].args", Applied),
    ("linux.seccomp.syscalls[].args[].index", Applied),
    ("linux.seccomp.syscalls[].args[].value", Applied),
    ("linux.seccomp.syscalls[].args[].valueTwo", Applied),
    ("linux.seccomp.syscalls[].args[].op", Applied),
    ("linux.rootfsPropagation", Applied),
    ("linux.maskedPaths", Applied),
    ("linux.readonlyPaths", Applied),
    ("linux.mountLabel", Applied),
    ("linux.intelRdt", Refused("Intel RDT (resctrl classes and monitoring) is not implemented")),
    ("linux.memoryPolicy", Applied),
    ("linux.memoryPolicy.mode", Applied),
    ("linux.memoryPolicy.nodes", Applied),
    ("linux.memoryPolicy.flags", Applied),
    ("linux.personality", Applied),
    ("linux.personality.domain", Applied),
    ("linux.personality.flags", Applied),
    ("linux.timeOffsets", Applied),
    ("linux.timeOffsets{}.secs", Applied),
    ("linux.timeOffsets{}.nanosecs", Applied),
    ("windows", Refused("a Windows section: strata runs Linux containers")),
    ("solaris", Refused("a Solaris section: strata runs Linux containers")),
    ("vm", Refused("a section for virtual-machine runtimes: strata runs containers")),
    ("zos", Refused("a z/OS section: strata runs Linux containers")),
];

/// The table indexed for the walk: each pattern's support, and the patterns below which the
/// table names more (objects to walk into), and those whose values are a map of objects.
struct Index {
    support: std::collections::HashMap<&'static str, Support>,
    parents: std::collections::HashSet<&'static str>,
    maps: std::collections::HashSet<&'static str>,
}

fn index() -> &'static Index {
    static INDEX: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx = Index {
            support: FIELDS.iter().copied().collect(),
            parents: std::collections::HashSet::new(),
            maps: std::collections::HashSet::new(),
        };
        for (p, _) in FIELDS {
            // Every proper prefix ending before a separator has children.
            for (i, _) in p.match_indices('.') {
                let parent = &p[..i];
                if let Some(map) = parent.strip_suffix("{}") {
                    idx.maps.insert(map);
                    idx.parents.insert(map);
                } else if let Some(list) = parent.strip_suffix("[]") {
                    idx.parents.insert(list);
                }
                idx.parents.insert(parent);
            }
        }
        idx
    })
}

/// What strata does with the field at `pattern` (a path as [`FIELDS`] writes it).
pub fn support(pattern: &str) -> Option<Support> {
    index().support.get(pattern).copied()
}

/// Whether a value asks for something: null, false and empty strings, lists and objects do
/// not.
pub fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// A refused field that a config sets: the field (with its indexes) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field, e.g. `mounts[2].uidMappings`.
    pub field: String,
    /// Why strata refuses it.
    pub reason: &'static str,
}

/// Walks a config document. Returns the first refused field that is set, or the properties
/// the specification does not define (to be logged and ignored).
pub fn check(doc: &Value) -> Result<Vec<String>, Refusal> {
    let mut unknown = Vec::new();
    let (mut pattern, mut concrete) = (String::with_capacity(64), String::with_capacity(64));
    walk(index(), doc, &mut pattern, &mut concrete, &mut unknown)?;
    Ok(unknown)
}

/// Walks `v`, found at `pattern` (`concrete` with its indexes); both are restored on return.
fn walk(
    idx: &Index,
    v: &Value,
    pattern: &mut String,
    concrete: &mut String,
    unknown: &mut Vec<String>,
) -> Result<(), Refusal> {
    let top = pattern.is_empty();
    match v {
        Value::Object(o) if top || idx.parents.contains(pattern.as_str()) => {
            let is_map = !top && idx.maps.contains(pattern.as_str());
            let (plen, clen) = (pattern.len(), concrete.len());
            for (k, child) in o {
                if is_map {
                    pattern.push_str("{}");
                    concrete.push('[');
                    concrete.push_str(&format!("{k:?}"));
                    concrete.push(']');
                } else {
                    if !top {
                        pattern.push('.');
                        concrete.push('.');
                    }
                    pattern.push_str(k);
                    concrete.push_str(k);
                    match idx.support.get(pattern.as_str()) {
                        None => {
                            unknown.push(concrete.clone());
                            pattern.truncate(plen);
                            concrete.truncate(clen);
                            continue;
                        }
                        Some(Refused(reason)) => {
                            if is_set(child) {
                                return Err(Refusal { field: concrete.clone(), reason });
                            }
                            pattern.truncate(plen);
                            concrete.truncate(clen);
                            continue;
                        }
                        Some(Applied) => {}
                    }
                }
                walk(idx, child, pattern, concrete, unknown)?;
                pattern.truncate(plen);
                concrete.truncate(clen);
            }
            Ok(())
        }
        Value::Array(a) if idx.parents.contains(pattern.as_str()) => {
            let (plen, clen) = (pattern.len(), concrete.len());
            pattern.push_str("[]");
            for (i, item) in a.iter().enumerate() {
                concrete.truncate(clen);
                concrete.push_str(&format!("[{i}]"));
                walk(idx, item, pattern, concrete, unknown)?;
            }
            pattern.truncate(plen);
            concrete.truncate(clen);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refused_fields_are_named_with_their_indexes() {
        let doc = json!({"ociVersion": "1.2.0", "mounts": [{"destination": "/a"}, {"destination": "/b",
            "options": ["bind"], "uidMappings": []}],
            "process": {"user": {"uid": 0, "gid": 0, "username": "Administrator"}}});
        let r = check(&doc).unwrap_err();
        assert_eq!(r.field, "process.user.username");
        let doc = json!({"linux": {"resources": {"memory": {"limit": 1, "kernel": 5}}}});
        assert_eq!(check(&doc).unwrap_err().field, "linux.resources.memory.kernel");
        let doc = json!({"windows": {"layerFolders": ["C:\\x"]}});
        assert_eq!(check(&doc).unwrap_err().field, "windows");
    }

    #[test]
    fn unset_values_of_refused_fields_pass() {
        let doc = json!({"process": {"user": {"uid": 0, "gid": 0, "username": ""}, "commandLine": null},
            "linux": {"resources": {"memory": {"disableOOMKiller": false}}}});
        assert_eq!(check(&doc).unwrap(), Vec::<String>::new());
    }

    /// Every field of the specification as `oci-spec` defines it, traced from its types.
    fn spec_fields() -> Vec<String> {
        use oci_spec::runtime::{ExecCPUAffinity, Spec, Windows};
        use serde_reflection::{ContainerFormat, Format, Registry, Samples, Tracer, TracerConfig};
        fn walk(reg: &Registry, f: &Format, path: &str, out: &mut Vec<String>) {
            match f {
                Format::Option(x) => walk(reg, x, path, out),
                Format::Seq(x) => walk(reg, x, &format!("{path}[]"), out),
                Format::Map { value, .. } => walk(reg, value, &format!("{path}{{}}"), out),
                Format::TypeName(n) => match reg.get(n) {
                    Some(ContainerFormat::Struct(fields)) => {
                        for f in fields {
                            let p = if path.is_empty() { f.name.clone() } else { format!("{path}.{}", f.name) };
                            out.push(p.clone());
                            walk(reg, &f.value, &p, out);
                        }
                    }
                    Some(ContainerFormat::NewTypeStruct(x)) => walk(reg, x, path, out),
                    _ => {}
                },
                _ => {}
            }
        }
        // Strings that parse as every string-typed field that validates (a capability name);
        // samples for the two types whose deserializers accept no such string.
        let config = TracerConfig::default()
            .is_human_readable(true)
            .record_samples_for_structs(true)
            .default_string_value("CAP_CHOWN".into())
            .default_borrowed_str_value("CAP_CHOWN");
        let mut tracer = Tracer::new(config);
        let mut samples = Samples::new();
        let affinity: ExecCPUAffinity = serde_json::from_str(r#"{"initial":"0","final":"0"}"#).unwrap();
        tracer.trace_value(&mut samples, &affinity).unwrap();
        let windows: Windows = serde_json::from_str(r#"{"layerFolders":[]}"#).unwrap();
        tracer.trace_value(&mut samples, &windows).unwrap();
        tracer.trace_type::<Spec>(&samples).unwrap();
        let reg = tracer.registry_unchecked();
        let mut out = Vec::new();
        walk(&reg, &Format::TypeName("Spec".into()), "", &mut out);
        out
    }

    #[test]
    fn every_field_of_the_specification_is_applied_or_refused() {
        let fields = spec_fields();
        assert!(fields.len() > 150, "tracing found only {} fields", fields.len());
        let mut missing = Vec::new();
        for f in &fields {
            // oci-spec's deprecated top-level id mappings are not runtime-spec fields.
            if f.starts_with("uidMappings") || f.starts_with("gidMappings") {
                continue;
            }
            // A refused section covers its sub-fields.
            let covered = FIELDS.iter().any(|(p, s)| {
                matches!(s, Refused(_))
                    && (f.starts_with(&format!("{p}."))
                        || f.starts_with(&format!("{p}["))
                        || f.starts_with(&format!("{p}{{")))
            });
            if !covered && support(f).is_none() {
                missing.push(f.clone());
            }
        }
        assert!(missing.is_empty(), "fields of the specification neither applied nor refused: {missing:?}");
        // And the table names nothing the specification does not have.
        for (p, _) in FIELDS {
            assert!(fields.iter().any(|f| f == p), "{p} is not a field of the specification");
        }
    }

    #[test]
    fn unknown_properties_are_reported_not_refused() {
        let doc = json!({"ociVersion": "1.2.0", "org.example.extension": {"x": 1},
            "process": {"args": ["sh"], "colour": "blue"}, "annotations": {"anything": "goes"},
            "linux": {"sysctl": {"net.ipv4.ip_forward": "1"}, "resources": {"unified": {"memory.high": "1"}}}});
        assert_eq!(check(&doc).unwrap(), vec!["org.example.extension".to_string(), "process.colour".to_string()]);
    }
}
