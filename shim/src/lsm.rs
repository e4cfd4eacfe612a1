//! Linux security modules and keys: AppArmor profiles (`process.apparmorProfile`), SELinux
//! labels (`process.selinuxLabel`, `linux.mountLabel`) and the container's session keyring.
//!
//! A label is applied where the host runs its module and refused, by name, where it does not:
//! a profile that silently did nothing would leave the container unconfined. Labels are
//! written through the verified procfs handle ([`crate::procfs`]).

use crate::error::{Error, Result};
use crate::procfs::ProcFs;
use oci_spec::runtime::Spec;
use std::path::Path;

/// Whether the host enforces AppArmor profiles.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

/// Whether the host runs SELinux.
pub fn selinux_enabled() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\tselinuxfs")))
        && (Path::new("/sys/fs/selinux/enforce").exists() || Path::new("/selinux/enforce").exists())
}

/// Refuses a label of a module the host does not run; returns the field and the reason.
pub fn check_labels(
    apparmor: Option<&str>,
    selinux: Option<&str>,
    mount: Option<&str>,
) -> std::result::Result<(), (String, String)> {
    if apparmor.is_some_and(|p| !p.is_empty()) && !apparmor_enabled() {
        return Err((
            "apparmorProfile".into(),
            "the host does not run AppArmor: the profile cannot be applied (leave it empty)".into(),
        ));
    }
    // The mount label goes into mount options between quotes: a quote (or a NUL) in it would
    // end them early and pass the rest as options of their own.
    if mount.is_some_and(|l| l.contains(['"', '\0'])) {
        return Err(("mountLabel".into(), "a label cannot contain '\"' or NUL".into()));
    }
    for (field, label) in [("selinuxLabel", selinux), ("mountLabel", mount)] {
        if label.is_some_and(|l| !l.is_empty()) && !selinux_enabled() {
            return Err((
                field.into(),
                "the host does not run SELinux: the label cannot be applied (leave it empty)".into(),
            ));
        }
    }
    Ok(())
}

/// Checks a config's labels (see [`check_labels`]).
pub fn check(spec: &Spec) -> std::result::Result<(), (String, String)> {
    let p = spec.process().as_ref();
    check_labels(p.and_then(|p| p.apparmor_profile().as_deref()), p.and_then(|p| p.selinux_label().as_deref()), None)
        .map_err(|(f, m)| (format!("process.{f}"), m))?;
    check_labels(None, None, spec.linux().as_ref().and_then(|l| l.mount_label().as_deref()))
        .map_err(|(f, m)| (format!("linux.{f}"), m))
}

/// Sets the labels the program gets when it is executed: the AppArmor profile and the SELinux
/// process label.
pub fn apply_exec_labels(apparmor: Option<&str>, selinux: Option<&str>) -> Result<()> {
    let apparmor = apparmor.filter(|p| !p.is_empty());
    let selinux = selinux.filter(|l| !l.is_empty());
    if apparmor.is_none() && selinux.is_none() {
        return Ok(());
    }
    let proc = ProcFs::open()?;
    let pid = nix::unistd::getpid();
    if let Some(profile) = apparmor {
        let modern = Path::new(&format!("{pid}/attr/apparmor/exec")).to_path_buf();
        let data = format!("exec {profile}");
        proc.write(&modern, data.as_bytes())
            .or_else(|_| proc.write(Path::new(&format!("{pid}/attr/exec")), data.as_bytes()))
            .map_err(|e| Error::Init(format!("process.apparmorProfile: applying {profile:?}: {e}")))?;
    }
    if let Some(label) = selinux {
        proc.write(Path::new(&format!("{pid}/attr/exec")), label.as_bytes())
            .map_err(|e| Error::Init(format!("process.selinuxLabel: applying {label:?}: {e}")))?;
    }
    Ok(())
}

/// The mount option that labels a new file system with `linux.mountLabel`, for mount(2)'s
/// data: quoted, as runc formats it, because an MLS range holds commas (`s0:c1,c2`) and the
/// kernel splits the data at commas outside quotes (it strips the quotes).
pub fn mount_label_option(label: &str) -> String {
    format!("context=\"{label}\"")
}

/// `linux.mountLabel` as the runtime applies it: the label where the host runs SELinux, else
/// `None`, as runc's label package does nothing without SELinux (and strata refuses such a
/// label when it loads the bundle, see [`check_labels`]).
pub fn mount_label(spec: &Spec) -> Option<&str> {
    spec.linux().as_ref()?.mount_label().as_deref().filter(|l| !l.is_empty() && selinux_enabled())
}

/// Whether a new mount of file system `typ` gets the `context=` option of `linux.mountLabel`,
/// as runc gives it: not proc or sysfs (SELinux kernels cannot label them by mount option),
/// not mqueue (whose root is labelled as a file once mounted, [`label_file`]), not cgroup
/// (runc mounts it apart, without a label); bind mounts take no file-system options at all.
pub fn labels_new_mount(typ: &str) -> bool {
    !matches!(typ, "proc" | "sysfs" | "mqueue" | "cgroup" | "cgroup2" | "bind")
}

/// The data of a new mount of `typ`: the config's file-system options, and the mount label's
/// `context=` option where runc adds it.
pub fn new_mount_data(typ: &str, data: &[String], label: Option<&str>) -> Vec<String> {
    let mut out = data.to_vec();
    if let Some(l) = label.filter(|_| labels_new_mount(typ)) {
        out.push(mount_label_option(l));
    }
    out
}

/// The `fsconfig` options of the empty tmpfs that masks a directory of `maskedPaths`, labelled
/// as runc labels it. fsconfig hands a value whole to SELinux, which strips no quotes there:
/// the label goes unquoted.
pub fn masking_tmpfs_options(label: Option<&str>) -> Vec<String> {
    let mut out = vec!["nr_blocks=1".to_string(), "nr_inodes=1".to_string()];
    if let Some(l) = label {
        out.push(format!("context={l}"));
    }
    out
}

/// Labels the file at `path` (its `security.selinux` attribute), as runc labels the root of an
/// mqueue mount with the mount label.
pub fn label_file(path: &Path, label: &str) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{} contains NUL", path.display())))?;
    // SAFETY: a valid C string for the path and the name, and `label` readable for its length,
    // all living across the call.
    let r = unsafe { libc::setxattr(p.as_ptr(), c"security.selinux".as_ptr(), label.as_ptr().cast(), label.len(), 0) };
    if r < 0 {
        return Err(Error::sys(format!("linux.mountLabel: labelling {}", path.display()), nix::errno::Errno::last()));
    }
    Ok(())
}

/// Joins a new session keyring `_ses.<id>`, so that the container does not share the
/// runtime's (and the host's) keys. With `grant_search`, the keyring is also made searchable
/// by the container's user (or by everyone in a user namespace, whose ids differ), as runc
/// does for the init.
pub fn join_session_keyring(id: &str, grant_search: Option<bool>) -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    const KEYCTL_SETPERM: libc::c_long = 5;
    const KEYCTL_DESCRIBE: libc::c_long = 6;
    let name = std::ffi::CString::new(format!("_ses.{id}")).map_err(|_| Error::Invalid("container id".into()))?;
    // SAFETY: a valid C string living across the call.
    let key = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if key < 0 {
        let e = nix::errno::Errno::last();
        // A kernel without keys has nothing to share.
        if e == nix::errno::Errno::ENOSYS {
            return Ok(());
        }
        return Err(Error::sys("joining a new session keyring", e));
    }
    let Some(user_ns) = grant_search else { return Ok(()) };
    let mut buf = vec![0u8; 512];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_DESCRIBE, key, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(Error::sys("describing the session keyring", nix::errno::Errno::last()));
    }
    // "type;uid;gid;perm;description"
    let text = String::from_utf8_lossy(&buf[..(n as usize).min(buf.len())]).into_owned();
    let perm = text
        .split(';')
        .nth(3)
        .and_then(|p| u32::from_str_radix(p.trim_end_matches('\0'), 16).ok())
        .ok_or_else(|| Error::Init(format!("unexpected keyring description {text:?}")))?;
    let search = if user_ns { 0x0000_0008 } else { 0x0008_0000 };
    // SAFETY: integer arguments only.
    if unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, key, perm | search) } < 0 {
        return Err(Error::sys("setting the session keyring's permissions", nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_mount_label_goes_where_runc_puts_it() {
        let label = "system_u:object_r:container_file_t:s0:c1,c2";
        let ctx = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;
        assert_eq!(mount_label_option(label), ctx);
        // New file systems get it after their own options.
        assert_eq!(new_mount_data("tmpfs", &data(&["mode=755"]), Some(label)), data(&["mode=755", ctx]));
        assert_eq!(new_mount_data("devpts", &[], Some(label)), data(&[ctx]));
        assert_eq!(new_mount_data("none", &[], Some(label)), data(&[ctx]));
        // Not those runc leaves unlabelled (or labels otherwise), nor any without a label.
        for typ in ["proc", "sysfs", "mqueue", "cgroup", "cgroup2", "bind"] {
            assert_eq!(new_mount_data(typ, &data(&["x=1"]), Some(label)), data(&["x=1"]), "{typ}");
        }
        assert_eq!(new_mount_data("tmpfs", &data(&["mode=755"]), None), data(&["mode=755"]));
        // The masking tmpfs takes it through fsconfig, unquoted.
        assert_eq!(
            masking_tmpfs_options(Some(label)),
            data(&["nr_blocks=1", "nr_inodes=1", "context=system_u:object_r:container_file_t:s0:c1,c2"])
        );
        assert_eq!(masking_tmpfs_options(None), data(&["nr_blocks=1", "nr_inodes=1"]));
    }

    #[test]
    fn the_mount_label_is_applied_only_where_selinux_runs() {
        let spec: Spec =
            serde_json::from_str(r#"{"linux":{"mountLabel":"system_u:object_r:container_file_t:s0"}}"#).unwrap();
        assert_eq!(mount_label(&spec).is_some(), selinux_enabled());
        let spec: Spec = serde_json::from_str(r#"{"linux":{"mountLabel":""}}"#).unwrap();
        assert_eq!(mount_label(&spec), None);
        // A quote would end the option early, whatever the host.
        let (field, reason) = check_labels(None, None, Some(r#"a",size=1"#)).unwrap_err();
        assert_eq!(field, "mountLabel");
        assert!(reason.contains("cannot contain"), "{reason}");
    }
}
