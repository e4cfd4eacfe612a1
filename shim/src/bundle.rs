//! Reading and validating a bundle: `config.json` and the root file system it names.
//!
//! Everything that can be checked before a process exists is checked here, so that bad input
//! fails before any state directory, cgroup or mount is made. Errors name the file and the JSON
//! path of the field.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// A loaded and validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The parsed configuration.
    pub spec: Spec,
    /// The root file system, absolute and canonical.
    pub rootfs: PathBuf,
    /// `linux.seccomp`, compiled.
    pub seccomp: Option<seccomp::Filter>,
}

impl Bundle {
    /// Loads `dir/config.json` and validates it.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = std::path::absolute(dir).map_err(|e| Error::io(format!("bundle {}", dir.display()), e))?;
        let file = dir.join("config.json");
        let mut steps = crate::container::Steps::new();
        let spec = parse_config(&file)?;
        let rootfs = validate(&file, &dir, &spec)?;
        steps.done("config.json read and checked");
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(sc) => {
                let filter = seccomp::compile(sc).map_err(|e| config_error(&file, "linux.seccomp", e.to_string()))?;
                steps.done("seccomp filter compiled");
                if filter.uses_notify() && sc.listener_path().is_none() {
                    return Err(config_error(
                        &file,
                        "linux.seccomp.listenerPath",
                        "SCMP_ACT_NOTIFY is used but no listener path is given",
                    ));
                }
                Some(filter)
            }
            None => None,
        };
        Ok(Bundle { dir, spec, rootfs, seccomp })
    }

    /// The path of `config.json`, for error messages.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

fn config_error(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config { file: file.to_path_buf(), field: field.into(), message: message.into() }
}

/// Parses a `config.json`, reporting the JSON path of the first invalid field.
pub fn parse_config(file: &Path) -> Result<Spec> {
    let bytes = std::fs::read(file).map_err(|e| config_error(file, ".", format!("cannot read the file: {e}")))?;
    parse_config_bytes(file, &bytes)
}

/// Parses configuration bytes; `file` is only used in messages. A field of the specification
/// that strata does not implement is refused here, by name (see [`crate::fields`]); a
/// property the specification does not define is logged and ignored, as it requires.
pub fn parse_config_bytes(file: &Path, bytes: &[u8]) -> Result<Spec> {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) {
        match crate::fields::check(&doc) {
            Ok(unknown) => {
                for u in unknown {
                    tracing::warn!("{}: {u}: not a runtime-spec property; ignored", file.display());
                }
            }
            Err(r) => {
                let mut reason = format!("not supported by strata: {}", r.reason);
                if r.field.starts_with("linux.intelRdt") {
                    reason.push_str(if Path::new("/sys/fs/resctrl/schemata").exists() {
                        " (this host has resctrl mounted at /sys/fs/resctrl)"
                    } else {
                        " (and this host has no resctrl file system at /sys/fs/resctrl)"
                    });
                }
                return Err(config_error(file, r.field, reason));
            }
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, Spec>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde_json appends " at line L column C"; keep it, it helps find the spot.
        config_error(file, if path.is_empty() { ".".into() } else { path }, message)
    })
}

/// Checks what parsing cannot: versions, the root, namespaces, mounts, the process.
fn validate(file: &Path, dir: &Path, spec: &Spec) -> Result<PathBuf> {
    let version = spec.version();
    if !version.starts_with("1.") {
        return Err(config_error(file, "ociVersion", format!("{version:?} is not a runtime-spec 1.x version")));
    }
    let root = spec.root().as_ref().ok_or_else(|| config_error(file, "root", "missing"))?;
    let rootfs = dir.join(root.path());
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| config_error(file, "root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(config_error(file, "root.path", format!("{} is not a directory", rootfs.display())));
    }
    let process = spec.process().as_ref().ok_or_else(|| config_error(file, "process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(config_error(file, "process.args", "must name the program to run"));
    }
    if !process.cwd().is_absolute() {
        return Err(config_error(file, "process.cwd", format!("{} is not an absolute path", process.cwd().display())));
    }
    let linux = spec.linux().as_ref().ok_or_else(|| config_error(file, "linux", "missing"))?;
    let mut seen = HashSet::new();
    let mut has_mount_ns = false;
    let mut new_user_ns = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(config_error(
                file,
                format!("linux.namespaces[{i}].type"),
                format!("{} is listed twice", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Mount {
            has_mount_ns = true;
            if ns.path().is_some() {
                return Err(config_error(
                    file,
                    format!("linux.namespaces[{i}].path"),
                    "joining an existing mount namespace is not supported",
                ));
            }
        }
        if ns.typ() == LinuxNamespaceType::User && ns.path().is_none() {
            new_user_ns = true;
        }
        if let Some(p) = ns.path()
            && !p.exists()
        {
            return Err(config_error(
                file,
                format!("linux.namespaces[{i}].path"),
                format!("{} does not exist", p.display()),
            ));
        }
    }
    if !has_mount_ns {
        return Err(config_error(
            file,
            "linux.namespaces",
            "a mount namespace is required (strata never mounts in the host's namespace)",
        ));
    }
    if new_user_ns && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(config_error(file, "linux.uidMappings", "a new user namespace needs uid mappings"));
    }
    if new_user_ns && linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(config_error(file, "linux.gidMappings", "a new user namespace needs gid mappings"));
    }
    let has_ns = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    for (field, value) in [("hostname", spec.hostname()), ("domainname", spec.domainname())] {
        if value.as_deref().is_some_and(|v| !v.is_empty()) && !has_ns(LinuxNamespaceType::Uts) {
            return Err(config_error(file, field, "needs a uts namespace of the container's own (linux.namespaces)"));
        }
    }
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        check_sysctl(key, linux.namespaces().as_deref().unwrap_or_default())
            .map_err(|m| config_error(file, format!("linux.sysctl[{key:?}]"), m))?;
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if normalize_in_root(m.destination()).is_none() {
            return Err(config_error(
                file,
                format!("mounts[{i}].destination"),
                format!("{} escapes the root file system", m.destination().display()),
            ));
        }
        crate::rootfs::check_mount(m).map_err(|reason| config_error(file, format!("mounts[{i}].options"), reason))?;
        let container_userns = has_ns(LinuxNamespaceType::User);
        crate::idmap::check(m, container_userns)
            .map_err(|(field, reason)| config_error(file, format!("mounts[{i}].{field}"), reason))?;
    }
    crate::hooks::check(spec.hooks().as_ref()).map_err(|(field, reason)| config_error(file, field, reason))?;
    crate::scheduling::check(spec).map_err(|(field, reason)| config_error(file, field, reason))?;
    crate::lsm::check(spec).map_err(|(field, reason)| config_error(file, field, reason))?;
    crate::netdev::check(spec).map_err(|(field, reason)| config_error(file, field, reason))?;
    if linux.time_offsets().as_ref().is_some_and(|o| !o.is_empty()) {
        let time = linux.namespaces().iter().flatten().find(|n| n.typ() == LinuxNamespaceType::Time);
        match time {
            None => return Err(config_error(file, "linux.timeOffsets", "needs a time namespace (linux.namespaces)")),
            Some(ns) if ns.path().is_some() => {
                return Err(config_error(
                    file,
                    "linux.timeOffsets",
                    "offsets are set for a new time namespace, not one joined by path",
                ));
            }
            _ => {}
        }
        for clock in linux.time_offsets().iter().flat_map(|o| o.keys()) {
            if clock != "monotonic" && clock != "boottime" {
                return Err(config_error(
                    file,
                    format!("linux.timeOffsets[{clock:?}]"),
                    "only the monotonic and boottime clocks have offsets",
                ));
            }
        }
    }
    if let Some(caps) = process.capabilities() {
        for (set, list) in [
            ("bounding", caps.bounding()),
            ("effective", caps.effective()),
            ("permitted", caps.permitted()),
            ("inheritable", caps.inheritable()),
            ("ambient", caps.ambient()),
        ] {
            for c in list.iter().flatten() {
                crate::process::cap_index(c)
                    .map_err(|m| config_error(file, format!("process.capabilities.{set}"), m))?;
            }
        }
    }
    Ok(rootfs)
}

/// A sysctl key in dotted form (`net/ipv4/ip_forward` becomes `net.ipv4.ip_forward`, as runc
/// reads a key whose first separator is a slash).
pub fn sysctl_key(key: &str) -> String {
    match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => key
            .chars()
            .map(|c| {
                if c == '/' {
                    '.'
                } else if c == '.' {
                    '/'
                } else {
                    c
                }
            })
            .collect(),
        _ => key.to_string(),
    }
}

/// Whether a sysctl may be set: only keys that a namespace of the container's own isolates
/// (runc's rule), so that no write reaches the host's kernel settings.
pub fn check_sysctl(key: &str, namespaces: &[oci_spec::runtime::LinuxNamespace]) -> std::result::Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let key = sysctl_key(key);
    if sysctl_path(&key).is_none() {
        return Err("is not a sysctl name".into());
    }
    let find = |t: LinuxNamespaceType| namespaces.iter().find(|n| n.typ() == t);
    if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        return match find(LinuxNamespaceType::Ipc) {
            Some(_) => Ok(()),
            None => Err("an ipc sysctl needs an ipc namespace of the container's own".into()),
        };
    }
    if key.starts_with("net.") {
        return match find(LinuxNamespaceType::Network) {
            None => Err("a net sysctl needs a network namespace of the container's own".into()),
            Some(ns) => match ns.path() {
                Some(p) if same_file(p, Path::new("/proc/self/ns/net")) => {
                    Err(format!("a net sysctl may not change the host's network namespace ({})", p.display()))
                }
                _ => Ok(()),
            },
        };
    }
    if key == "kernel.domainname" {
        return match find(LinuxNamespaceType::Uts) {
            Some(_) => Ok(()),
            None => Err("kernel.domainname needs a uts namespace of the container's own".into()),
        };
    }
    if key == "kernel.hostname" {
        return Err("set the hostname with the \"hostname\" field".into());
    }
    Err("is not isolated by any namespace of the container: it would change the host".into())
}

/// The path of a dotted sysctl key below /proc/sys (a `/` in the key stands for a `.` in a
/// name, as in `net.ipv4.conf.eth0/100.forwarding`), or `None` for a key that is no name.
pub fn sysctl_path(dotted: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for part in dotted.split('.') {
        let name = part.replace('/', ".");
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return None;
        }
        path.push(name);
    }
    Some(path)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

/// Normalizes a mount destination to a path relative to the container's root, or `None` if `..`
/// components would climb above the root.
pub fn normalize_in_root(dest: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in dest.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_inside_and_refuses_escape() {
        assert_eq!(normalize_in_root(Path::new("/a/./b/../c")), Some(PathBuf::from("a/c")));
        assert_eq!(normalize_in_root(Path::new("/")), Some(PathBuf::new()));
        assert_eq!(normalize_in_root(Path::new("/a/../../etc")), None);
        assert_eq!(normalize_in_root(Path::new("../x")), None);
    }

    #[test]
    fn invalid_field_is_named() {
        let bad = br#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"]},
            "linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}}"#;
        let err = parse_config_bytes(Path::new("/b/config.json"), bad).unwrap_err().to_string();
        assert!(err.starts_with("/b/config.json: linux.namespaces[1].type: "), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_capability_is_named() {
        let bad = br#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":["sh"],
            "capabilities":{"bounding":["CAP_CHOWN","CAP_FLY"]}}}"#;
        let err = parse_config_bytes(Path::new("c.json"), bad).unwrap_err().to_string();
        assert!(err.contains("process.capabilities.bounding"), "{err}");
        assert!(err.contains("CAP_FLY") || err.contains("FLY"), "{err}");
    }

    #[test]
    fn sysctls_only_where_a_namespace_isolates_them() {
        let ns: Vec<oci_spec::runtime::LinuxNamespace> =
            serde_json::from_str(r#"[{"type":"ipc"},{"type":"network"},{"type":"uts"},{"type":"mount"}]"#).unwrap();
        for ok in
            ["kernel.shmmax", "fs.mqueue.msg_max", "net.ipv4.ip_forward", "net/ipv4/ip_forward", "kernel.domainname"]
        {
            assert_eq!(check_sysctl(ok, &ns), Ok(()), "{ok}");
        }
        for bad in ["kernel.printk_ratelimit", "vm.swappiness", "kernel.hostname", "net..x", "kernel"] {
            assert!(check_sysctl(bad, &ns).is_err(), "{bad}");
        }
        let host_net: Vec<oci_spec::runtime::LinuxNamespace> =
            serde_json::from_str(r#"[{"type":"network","path":"/proc/self/ns/net"}]"#).unwrap();
        assert!(check_sysctl("net.ipv4.ip_forward", &host_net).unwrap_err().contains("host"));
        assert!(check_sysctl("net.ipv4.ip_forward", &[]).is_err());
        assert!(check_sysctl("kernel.sem", &[]).is_err());
        assert_eq!(sysctl_key("net/ipv4/conf/eth0.100/forwarding"), "net.ipv4.conf.eth0/100.forwarding");
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.forwarding"),
            Some(PathBuf::from("net/ipv4/conf/eth0.100/forwarding"))
        );
        assert_eq!(check_sysctl("net.ipv4.conf.eth0/100.forwarding", &ns), Ok(()));
        for bad in ["net.//.x", "net./.x", "net"] {
            assert!(sysctl_path(bad).is_none() || check_sysctl(bad, &ns).is_err(), "{bad}");
        }
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_config_bytes(Path::new("c.json"), b"{\"ociVersion\": ").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
