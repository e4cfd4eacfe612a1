//! The container's root file system: propagation, the bind of the rootfs onto itself, every
//! configured mount, `/dev`, `pivot_root`, masked and read-only paths, the read-only root.
//!
//! Before `pivot_root` every destination is resolved with `openat2(RESOLVE_IN_ROOT)` against
//! the rootfs and mounted through `/proc/self/fd/N`, so a symlink inside the image can never
//! send a mount outside it. After `pivot_root` the root is the container's own, and plain paths
//! cannot leave it.

use crate::bundle::normalize_in_root;
use crate::error::{Error, Result, SysContext};
use crate::sys;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

/// The mount options strata knows (for `strata features`); any other option is handed to the
/// file system as data (which a bind mount refuses).
pub const KNOWN_MOUNT_OPTIONS: [&str; 62] = [
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "ridmap",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// Flags and file-system data parsed from a mount's `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Flags cleared by an option such as `rw` or `suid`.
    pub cleared: MsFlags,
    /// Propagation flags, applied in a separate call.
    pub propagation: MsFlags,
    /// Whether the mount is a bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// Attributes set on the mount and every mount below it (`rro`, `rnosuid`, ...).
    pub rec_set: u64,
    /// Attributes cleared on the mount and every mount below it (`rrw`, `rsuid`, ...).
    pub rec_clear: u64,
    /// `tmpcopyup`: a tmpfs starts with a copy of what the directory held.
    pub tmpcopyup: bool,
    /// `idmap` (false) or `ridmap` (true): an idmapped bind mount.
    pub idmap: Option<bool>,
    /// Options passed to the file system.
    pub data: Vec<String>,
}

/// Parses OCI mount options the way `mount(8)` (and runc) understand them.
pub fn parse_options(options: &[String]) -> MountOptions {
    use crate::sys::mount_attr as A;
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        cleared: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        rec_set: 0,
        rec_clear: 0,
        tmpcopyup: false,
        idmap: None,
        data: Vec::new(),
    };
    let none = MsFlags::empty();
    let nosymfollow = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);
    for opt in options {
        // Recursive attributes: (set, clear), the access-time ones clearing the whole field.
        let rec = match opt.as_str() {
            "rro" => Some((A::RDONLY, 0)),
            "rrw" => Some((0, A::RDONLY)),
            "rnosuid" => Some((A::NOSUID, 0)),
            "rsuid" => Some((0, A::NOSUID)),
            "rnodev" => Some((A::NODEV, 0)),
            "rdev" => Some((0, A::NODEV)),
            "rnoexec" => Some((A::NOEXEC, 0)),
            "rexec" => Some((0, A::NOEXEC)),
            "rnodiratime" => Some((A::NODIRATIME, 0)),
            "rdiratime" => Some((0, A::NODIRATIME)),
            "rrelatime" => Some((A::RELATIME, A::ATIME)),
            "rnorelatime" | "ratime" | "rnostrictatime" => Some((0, A::ATIME)),
            "rnoatime" => Some((A::NOATIME, A::ATIME)),
            "rstrictatime" => Some((A::STRICTATIME, A::ATIME)),
            "rnosymfollow" => Some((A::NOSYMFOLLOW, 0)),
            "rsymfollow" => Some((0, A::NOSYMFOLLOW)),
            _ => None,
        };
        if let Some((set, clear)) = rec {
            o.rec_set = (o.rec_set & !clear) | set;
            o.rec_clear = (o.rec_clear | clear) & !set | (clear & A::ATIME);
            continue;
        }
        let (set, clear, prop) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, none, none),
            "rw" => (none, MsFlags::MS_RDONLY, none),
            "nosuid" => (MsFlags::MS_NOSUID, none, none),
            "suid" => (none, MsFlags::MS_NOSUID, none),
            "nodev" => (MsFlags::MS_NODEV, none, none),
            "dev" => (none, MsFlags::MS_NODEV, none),
            "noexec" => (MsFlags::MS_NOEXEC, none, none),
            "exec" => (none, MsFlags::MS_NOEXEC, none),
            "sync" => (MsFlags::MS_SYNCHRONOUS, none, none),
            "async" => (none, MsFlags::MS_SYNCHRONOUS, none),
            "dirsync" => (MsFlags::MS_DIRSYNC, none, none),
            "mand" => (MsFlags::MS_MANDLOCK, none, none),
            "nomand" => (none, MsFlags::MS_MANDLOCK, none),
            "atime" => (none, MsFlags::MS_NOATIME, none),
            "noatime" => (MsFlags::MS_NOATIME, none, none),
            "diratime" => (none, MsFlags::MS_NODIRATIME, none),
            "nodiratime" => (MsFlags::MS_NODIRATIME, none, none),
            "relatime" => (MsFlags::MS_RELATIME, none, none),
            "norelatime" => (none, MsFlags::MS_RELATIME, none),
            "strictatime" => (MsFlags::MS_STRICTATIME, none, none),
            "nostrictatime" => (none, MsFlags::MS_STRICTATIME, none),
            "iversion" => (MsFlags::MS_I_VERSION, none, none),
            "noiversion" => (none, MsFlags::MS_I_VERSION, none),
            "lazytime" => (MsFlags::MS_LAZYTIME, none, none),
            "nolazytime" => (none, MsFlags::MS_LAZYTIME, none),
            "silent" => (MsFlags::MS_SILENT, none, none),
            "loud" => (none, MsFlags::MS_SILENT, none),
            "nosymfollow" => (nosymfollow, none, none),
            "symfollow" => (none, nosymfollow, none),
            "remount" => (MsFlags::MS_REMOUNT, none, none),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, none, none)
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, none, none)
            }
            "private" => (none, none, MsFlags::MS_PRIVATE),
            "rprivate" => (none, none, MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => (none, none, MsFlags::MS_SHARED),
            "rshared" => (none, none, MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (none, none, MsFlags::MS_SLAVE),
            "rslave" => (none, none, MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (none, none, MsFlags::MS_UNBINDABLE),
            "runbindable" => (none, none, MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            "tmpcopyup" => {
                o.tmpcopyup = true;
                continue;
            }
            "idmap" => {
                o.idmap = Some(o.idmap.unwrap_or(false));
                continue;
            }
            "ridmap" => {
                o.idmap = Some(true);
                continue;
            }
            "defaults" => continue,
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags = (o.flags | set) - clear;
        o.cleared = (o.cleared | clear) - set;
        o.propagation |= prop;
    }
    o
}

/// Checks a mount's options before anything is made: a bind mount takes no file-system
/// options (a misspelt option would be silently dropped), `tmpcopyup` is for tmpfs, and an
/// idmapped mount is a bind mount. Returns the reason for the first problem.
pub fn check_mount(m: &Mount) -> std::result::Result<(), String> {
    let o = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or(if o.bind { "bind" } else { "none" });
    let bind = o.bind || typ == "bind";
    if bind && let Some(opt) = o.data.first() {
        return Err(format!(
            "{opt:?} is not an option strata knows, and a bind mount passes no options to a file system"
        ));
    }
    if o.tmpcopyup && typ != "tmpfs" {
        return Err(format!("tmpcopyup is for tmpfs mounts, not {typ}"));
    }
    let mapped = o.idmap.is_some() || m.uid_mappings().is_some() || m.gid_mappings().is_some();
    if mapped && !bind {
        return Err("idmapped mounts are bind mounts (add \"bind\" or \"rbind\")".into());
    }
    Ok(())
}

/// The propagation flags of `rootfsPropagation` (default: recursive slave, as runc).
pub fn root_propagation(value: Option<&str>) -> Result<MsFlags> {
    Ok(match value.unwrap_or("rslave") {
        "shared" | "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" | "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" | "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(Error::Invalid(format!("linux.rootfsPropagation: unknown value {other:?}"))),
    })
}

use crate::sys::{RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens `rel` inside `root` with O_PATH, resolving symlinks as if `root` were `/`.
fn open_in_root(root: &OwnedFd, rel: &Path) -> nix::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    sys::openat2(root.as_raw_fd(), rel, libc::O_PATH, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
}

/// Creates `rel` (and its missing parents) inside `root` without following any symlink out of
/// it, as a directory or an empty file, and returns an O_PATH descriptor of it. A dangling
/// symlink on the way is followed the way the kernel would inside the root: its target is
/// created within the root.
pub fn create_in_root(root: &OwnedFd, rel: &Path, dir: bool) -> Result<OwnedFd> {
    create_in_root_depth(root, rel, dir, 0)
}

fn create_in_root_depth(root: &OwnedFd, rel: &Path, dir: bool, depth: u32) -> Result<OwnedFd> {
    if depth > 40 {
        return Err(Error::sys(format!("creating {} in the rootfs", rel.display()), nix::errno::Errno::ELOOP));
    }
    let comps: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let mut prefix = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        let parent_prefix = prefix.clone();
        prefix.push(c);
        match open_in_root(root, &prefix) {
            Ok(_) => continue,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Error::sys(format!("resolving {} in the rootfs", prefix.display()), e)),
        }
        let parent_dir = sys::openat2(
            root.as_raw_fd(),
            &dot_if_empty(&parent_prefix),
            libc::O_DIRECTORY | libc::O_RDONLY,
            0,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )
        .ctx(|| format!("opening {} in the rootfs", parent_prefix.display()))?;
        let name = c.as_os_str();
        if let Ok(target) = nix::fcntl::readlinkat(&parent_dir, name) {
            // A dangling symlink: create what it points to, inside the root.
            let parent_in_root = path_in_root(root, &parent_dir)?;
            let target = Path::new(&target);
            let mut next = if target.is_absolute() { PathBuf::from("/") } else { parent_in_root };
            next.push(target);
            for rest in &comps[i + 1..] {
                next.push(rest);
            }
            return create_in_root_depth(root, &clamp_in_root(&next), dir, depth + 1);
        }
        let last = i + 1 == comps.len();
        let r = if last && !dir {
            nix::fcntl::openat(
                &parent_dir,
                name,
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            nix::sys::stat::mkdirat(&parent_dir, name, Mode::from_bits_truncate(0o755))
        };
        match r {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::sys(format!("creating {} in the rootfs", prefix.display()), e)),
        }
    }
    open_in_root(root, rel).ctx(|| format!("resolving {} in the rootfs", rel.display()))
}

fn dot_if_empty(p: &Path) -> PathBuf {
    if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() }
}

/// Where the directory behind `fd` is, relative to `root`.
fn path_in_root(root: &OwnedFd, fd: &impl AsRawFd) -> Result<PathBuf> {
    let root_path = std::fs::read_link(fd_path(root)).ctx(|| "reading the rootfs path".into())?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ctx(|| "reading a path".into())?;
    path.strip_prefix(&root_path)
        .map(Path::to_path_buf)
        .map_err(|_| Error::Invalid(format!("{} is outside the rootfs", path.display())))
}

/// Normalizes a path the way the kernel does inside a root: `..` at the top stays at the top.
pub fn clamp_in_root(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Everything about the root file system the init needs before `pivot_root`.
pub struct RootfsSetup<'a> {
    /// The configuration.
    pub spec: &'a Spec,
    /// The rootfs on the host.
    pub rootfs: &'a Path,
    /// The bundle directory, against which relative bind sources resolve.
    pub bundle: &'a Path,
    /// Detached idmapped mounts made by the runtime, by index in `mounts`.
    pub idmapped: std::collections::HashMap<usize, OwnedFd>,
    /// The container's cgroup directory on the host, for a cgroup mount without a cgroup ns.
    pub cgroup_dir: Option<&'a Path>,
    /// Whether the container has its own user namespace (mknod is then not allowed).
    pub in_user_ns: bool,
    /// Runs once everything is mounted, before `pivot_root` (the `create` hooks).
    pub before_pivot: Option<&'a dyn Fn() -> Result<()>>,
}

impl RootfsSetup<'_> {
    /// Mounts everything and pivots into the new root. Runs inside the new mount namespace.
    pub fn run(&self) -> Result<()> {
        let linux = self.spec.linux().as_ref();
        let prop = root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
        // The whole tree gets the asked-for propagation (default rslave: the host's mounts
        // reach the container, nothing goes back). With rshared, the copies of the host's
        // shared mounts stay in their peer groups, so that a bind of one (a Bidirectional
        // mount) passes mounts made inside back to the host, as runc does.
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
            .ctx(|| format!("linux.rootfsPropagation: setting {prop:?} on /"))?;
        // pivot_root refuses a new root whose parent mount is shared, and the mounts made
        // below must not travel through it: make the mount holding the rootfs private.
        if prop.contains(MsFlags::MS_SHARED) {
            make_parent_mount_private(self.rootfs)?;
        }
        mount(Some(self.rootfs), self.rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .ctx(|| format!("bind-mounting the rootfs {}", self.rootfs.display()))?;
        let root: OwnedFd =
            std::fs::File::open(self.rootfs).ctx(|| format!("opening {}", self.rootfs.display()))?.into();
        let mut dev_is_tmpfs = false;
        let label = crate::lsm::mount_label(self.spec);
        for (i, m) in self.spec.mounts().iter().flatten().enumerate() {
            self.mount_one(&root, i, m, label)
                .map_err(|e| Error::Init(format!("mounts[{i}] ({}): {e}", m.destination().display())))?;
            let opts = parse_options(m.options().as_deref().unwrap_or_default());
            if normalize_in_root(m.destination()).is_some_and(|d| d == Path::new("dev")) && !opts.bind {
                dev_is_tmpfs = true;
            }
        }
        if dev_is_tmpfs {
            self.populate_dev(&root)?;
        }
        if let Some(p) = self.spec.process() {
            let cwd = normalize_in_root(p.cwd()).unwrap_or_default();
            create_in_root(&root, &cwd, true).map_err(|e| Error::Init(format!("process.cwd: {e}")))?;
        }
        drop(root);
        if let Some(f) = self.before_pivot {
            f()?;
        }
        pivot(self.rootfs)?;
        if prop.contains(MsFlags::MS_SHARED) {
            mount(None::<&str>, "/", None::<&str>, prop, None::<&str>).ctx(|| "linux.rootfsPropagation".into())?;
        }
        Ok(())
    }

    /// Makes `mounts[index]`; a new file system is labelled with `label` where runc labels it
    /// ([`crate::lsm::new_mount_data`]).
    fn mount_one(&self, root: &OwnedFd, index: usize, m: &Mount, label: Option<&str>) -> Result<()> {
        let rel = normalize_in_root(m.destination())
            .ok_or_else(|| Error::Invalid(format!("{} escapes the root file system", m.destination().display())))?;
        let opts = parse_options(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().as_deref().unwrap_or(if opts.bind { "bind" } else { "none" });
        let bind = opts.bind || typ == "bind";
        if typ == "cgroup" || typ == "cgroup2" {
            return self.mount_cgroup(root, &rel, &opts);
        }
        let mut source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        if bind && source.is_relative() {
            // The runtime-spec: a relative bind source is relative to the bundle.
            source = self.bundle.join(source);
        }
        let target_is_dir = if bind {
            std::fs::metadata(&source).ctx(|| format!("bind source {}", source.display()))?.is_dir()
        } else {
            true
        };
        let target = create_in_root(root, &rel, target_is_dir)?;
        let reopen = || open_in_root(root, &rel).ctx(|| format!("reopening {}", rel.display()));
        if let Some(tree) = self.idmapped.get(&index) {
            sys::move_mount(tree, &target).ctx(|| format!("attaching the idmapped {}", source.display()))?;
            let set = opts.flags - MsFlags::MS_BIND - MsFlags::MS_REC - MsFlags::MS_REMOUNT;
            if !set.is_empty() || !opts.cleared.is_empty() {
                remount_with(&fd_path(&reopen()?), set, opts.cleared)?;
            }
        } else if bind {
            let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
            mount(Some(&source), &fd_path(&target), None::<&str>, flags, None::<&str>)
                .ctx(|| format!("bind-mounting {}", source.display()))?;
            let set = opts.flags - MsFlags::MS_BIND - MsFlags::MS_REC - MsFlags::MS_REMOUNT;
            if !set.is_empty() || !opts.cleared.is_empty() {
                // Remount through a descriptor of the new mount, not of the dentry beneath it.
                remount_with(&fd_path(&reopen()?), set, opts.cleared)?;
            }
        } else {
            let flags = opts.flags - MsFlags::MS_REMOUNT;
            // tmpcopyup: what the directory holds now is copied into the new tmpfs, read
            // through a descriptor taken before the tmpfs covers it.
            let before = if opts.tmpcopyup {
                Some(
                    sys::openat2(
                        target.as_raw_fd(),
                        Path::new("."),
                        libc::O_RDONLY | libc::O_DIRECTORY,
                        0,
                        RESOLVE_NO_MAGICLINKS,
                    )
                    .ctx(|| format!("tmpcopyup: opening {}", rel.display()))?,
                )
            } else {
                None
            };
            let data = crate::lsm::new_mount_data(typ, &opts.data, label);
            let joined = data.join(",");
            let r = mount(Some(&source), &fd_path(&target), Some(typ), flags, (!data.is_empty()).then_some(&*joined));
            match (r, typ) {
                (Err(nix::errno::Errno::EPERM), "sysfs") => {
                    // Without a network namespace of its own the kernel refuses a new sysfs;
                    // give a read-only view of the host's instead, as runc does.
                    mount(
                        Some("/sys"),
                        &fd_path(&target),
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .ctx(|| "bind-mounting /sys".into())?;
                    remount(&fd_path(&reopen()?), flags | MsFlags::MS_RDONLY)?;
                }
                (Err(nix::errno::Errno::EINVAL), _) if !data.is_empty() => {
                    // Only the config's own options are tried one by one: the label's would
                    // need its quotes taken off for fsconfig. The message shows them all.
                    return Err(match sys::refused_fs_option(typ, &opts.data) {
                        Some(opt) => Error::Invalid(format!("options: {typ} does not take {opt:?}")),
                        None => Error::sys(format!("mounting {typ} with {joined:?}"), nix::errno::Errno::EINVAL),
                    });
                }
                (r, _) => r.ctx(|| format!("mounting {typ}"))?,
            }
            // runc labels an mqueue's root as a file rather than by mount option.
            if typ == "mqueue"
                && let Some(l) = label
            {
                crate::lsm::label_file(&fd_path(&reopen()?), l)?;
            }
            if let Some(before) = before {
                let after = sys::openat2(
                    root.as_raw_fd(),
                    &dot_if_empty(&rel),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                    RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
                )
                .ctx(|| format!("tmpcopyup: opening the new {}", rel.display()))?;
                crate::copy::copy_tree(&before, &after)
                    .map_err(|e| Error::Init(format!("tmpcopyup: copying {}: {e}", rel.display())))?;
            }
        }
        if opts.rec_set != 0 || opts.rec_clear != 0 {
            let attr = sys::MountAttr { attr_set: opts.rec_set, attr_clr: opts.rec_clear, ..Default::default() };
            sys::mount_setattr(&reopen()?, sys::AT_RECURSIVE, &attr)
                .ctx(|| "setting recursive mount attributes (mount_setattr)".into())?;
        }
        if !opts.propagation.is_empty() {
            mount(None::<&str>, &fd_path(&reopen()?), None::<&str>, opts.propagation, None::<&str>)
                .ctx(|| "setting propagation".into())?;
        }
        Ok(())
    }

    fn mount_cgroup(&self, root: &OwnedFd, rel: &Path, opts: &MountOptions) -> Result<()> {
        let target = create_in_root(root, rel, true)?;
        let flags = opts.flags - MsFlags::MS_REMOUNT - MsFlags::MS_BIND - MsFlags::MS_REC;
        match mount(Some("cgroup2"), &fd_path(&target), Some("cgroup2"), flags, None::<&str>) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Without a cgroup namespace the kernel shows the whole tree: bind the
                // container's own cgroup instead so it sees nothing above itself.
                let Some(dir) = self.cgroup_dir else {
                    return Err(Error::sys("mounting cgroup2", e));
                };
                mount(Some(dir), &fd_path(&target), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .ctx(|| format!("bind-mounting {}", dir.display()))?;
                let mounted = open_in_root(root, rel).ctx(|| format!("reopening {}", rel.display()))?;
                remount(&fd_path(&mounted), flags)
            }
        }
    }

    fn populate_dev(&self, root: &OwnedFd) -> Result<()> {
        let defaults: [(&str, u64, u64); 6] =
            [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
        for (name, major, minor) in defaults {
            self.make_device(root, Path::new("dev").join(name).as_path(), SFlag::S_IFCHR, major, minor, 0o666, 0, 0)?;
        }
        for d in self.spec.linux().as_ref().and_then(|l| l.devices().as_ref()).into_iter().flatten() {
            self.config_device(root, d)?;
        }
        let links = [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ];
        let dev = open_in_root(root, Path::new("dev")).ctx(|| "opening /dev in the rootfs".into())?;
        for (name, target) in links {
            let link = fd_path(&dev).join(name);
            match symlink(target, &link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("creating /dev/{name}"), e)),
            }
        }
        if Path::new("/proc/kcore").exists() {
            let _ = symlink("/proc/kcore", fd_path(&dev).join("core"));
        }
        Ok(())
    }

    fn config_device(&self, root: &OwnedFd, d: &LinuxDevice) -> Result<()> {
        let rel = normalize_in_root(d.path()).ok_or_else(|| {
            Error::Invalid(format!("linux.devices: {} escapes the root file system", d.path().display()))
        })?;
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::Invalid(format!(
                    "linux.devices: {}: type \"a\" is not a device",
                    d.path().display()
                )));
            }
        };
        let mode = d.file_mode().unwrap_or(0o666);
        self.make_device(
            root,
            &rel,
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make_device(
        &self,
        root: &OwnedFd,
        rel: &Path,
        kind: SFlag,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name =
            rel.file_name().ok_or_else(|| Error::Invalid(format!("device path {} has no name", rel.display())))?;
        let dir = create_in_root(root, parent, true)?;
        let path = fd_path(&dir).join(name);
        if self.in_user_ns {
            // mknod is not allowed in a user namespace: bind the host's node instead.
            let host = Path::new("/").join(rel);
            let target = create_in_root(root, rel, false)?;
            return mount(Some(&host), &fd_path(&target), None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .ctx(|| format!("bind-mounting device {}", host.display()));
        }
        match mknod(&path, kind, Mode::from_bits_truncate(mode), makedev(major, minor)) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => return Ok(()),
            Err(e) => return Err(Error::sys(format!("creating device /{}", rel.display()), e)),
        }
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).ctx(|| format!("chown /{}", rel.display()))?;
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .ctx(|| format!("chmod /{}", rel.display()))
    }
}

/// Flags of the mount holding `path`, as MS_* bits, so a remount keeps the locked ones.
fn current_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else { return MsFlags::empty() };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        // ST_RELATIME (the kernel's value; not every libc names it).
        (FsFlags::from_bits_retain(0x1000), MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Remounts a bind mount with `set` added to and `clear` taken from its current flags. A flag
/// the kernel locked (one the mount's source had in another user namespace) cannot be
/// cleared: the error says so.
fn remount_with(path: &Path, set: MsFlags, clear: MsFlags) -> Result<()> {
    let current = current_flags(path);
    let all = ((current | set) - clear) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    match mount(None::<&str>, path, None::<&str>, all, None::<&str>) {
        Err(nix::errno::Errno::EPERM) if !(current & clear).is_empty() => Err(Error::Invalid(format!(
            "cannot clear {:?} on {}: the source mount has it locked",
            current & clear,
            path.display()
        ))),
        r => r.ctx(|| format!("remounting {} with {set:?}", path.display())),
    }
}

/// Makes the mount holding `path` private: `path` itself if it is a mount point, else the
/// nearest one above it (MS_PRIVATE on a path that is no mount point fails with EINVAL).
fn make_parent_mount_private(path: &Path) -> Result<()> {
    let mut p = path.to_path_buf();
    loop {
        match mount(None::<&str>, &p, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) if p.pop() => {}
            Err(e) => return Err(Error::sys(format!("making the mount of {} private", path.display()), e)),
        }
    }
}

fn remount(path: &Path, flags: MsFlags) -> Result<()> {
    let all = current_flags(path) | flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    mount(None::<&str>, path, None::<&str>, all, None::<&str>)
        .ctx(|| format!("remounting {} with {flags:?}", path.display()))
}

/// `pivot_root` into `rootfs` and detach the old root.
fn pivot(rootfs: &Path) -> Result<()> {
    // A descriptor of the old root: after pivot_root(".", ".") it is stacked on top of the new
    // one, and only through this descriptor is "." the old root rather than the new one.
    let old_root: OwnedFd = sys::openat2(libc::AT_FDCWD, Path::new("/"), libc::O_DIRECTORY | libc::O_RDONLY, 0, 0)
        .ctx(|| "opening the old root".into())?;
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    sys::pivot_root(Path::new("."), Path::new(".")).ctx(|| "pivot_root".into())?;
    nix::unistd::fchdir(&old_root).ctx(|| "fchdir to the old root".into())?;
    // Make the old root a slave first, so that detaching it does not propagate to the host's
    // peers (with rootfsPropagation rshared its mounts share peer groups with the host's).
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .ctx(|| "making the old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    nix::unistd::chdir("/").ctx(|| "chdir /".into())
}

/// Opens `path` of the container (after `pivot_root`) as an `O_PATH` descriptor without
/// following a symlink or magic link anywhere; `None` when it does not exist.
fn open_target(path: &str) -> Result<Option<OwnedFd>> {
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    match sys::openat2(
        libc::AT_FDCWD,
        Path::new(path),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::sys(format!("opening {path}"), e)),
    }
}

/// The container's `/dev/null`, checked to be the null character device (1:3) through its
/// descriptor: an image's `/dev/null` can be a symlink or any file, and binding that over a
/// masked path would unmask or expose something else (the CVE-2025-31133 class).
fn verified_dev_null() -> Result<OwnedFd> {
    let fd = open_target("/dev/null")?
        .ok_or_else(|| Error::Invalid("linux.maskedPaths: the container has no /dev/null".into()))?;
    let st = nix::sys::stat::fstat(&fd).ctx(|| "stat /dev/null".into())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != makedev(1, 3) {
        return Err(Error::Invalid(
            "linux.maskedPaths: the container's /dev/null is not the null device (1:3): refusing to mask with it"
                .into(),
        ));
    }
    Ok(fd)
}

/// Hides `maskedPaths`: the verified `/dev/null` over files, an empty read-only tmpfs over
/// directories (labelled with the mount label, as runc); every target opened without following
/// links, every mount made from descriptor to descriptor.
pub fn mask_paths(paths: &[String], label: Option<&str>) -> Result<()> {
    let tmpfs_options = crate::lsm::masking_tmpfs_options(label);
    let tmpfs_options: Vec<&str> = tmpfs_options.iter().map(String::as_str).collect();
    let mut null = None;
    for p in paths {
        let Some(target) = open_target(p).map_err(|e| Error::Init(format!("linux.maskedPaths: {e}")))? else {
            continue;
        };
        let st = nix::sys::stat::fstat(&target).ctx(|| format!("linux.maskedPaths: stat {p}"))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let tmpfs = sys::detached_mount("tmpfs", &tmpfs_options, sys::mount_attr::RDONLY)
                .ctx(|| format!("linux.maskedPaths: an empty tmpfs for {p}"))?;
            sys::move_mount(&tmpfs, &target).ctx(|| format!("linux.maskedPaths: {p}"))?;
        } else {
            if null.is_none() {
                null = Some(verified_dev_null()?);
            }
            let Some(null) = &null else { continue };
            let tree = sys::open_tree_fd(null, 0x1 | libc::O_CLOEXEC as u32).ctx(|| "cloning /dev/null".into())?;
            sys::move_mount(&tree, &target).ctx(|| format!("linux.maskedPaths: {p}"))?;
        }
    }
    Ok(())
}

/// Makes `readonlyPaths` read-only (bind onto itself, remount read-only), each opened without
/// following links.
pub fn readonly_paths(paths: &[String]) -> Result<()> {
    for p in paths {
        let Some(target) = open_target(p).map_err(|e| Error::Init(format!("linux.readonlyPaths: {e}")))? else {
            continue;
        };
        let tree = sys::open_tree_fd(&target, 0x1 | libc::O_CLOEXEC as u32 | sys::AT_RECURSIVE)
            .ctx(|| format!("linux.readonlyPaths: {p}"))?;
        // The copy is made read-only, with every mount below it, before it is attached. Only
        // read-only, as runc: every other flag stays as the mount had it, so a read-only
        // directory of programs still runs them (nosuid, nodev, noexec are for the config's
        // mount options to ask for).
        let attr = sys::MountAttr { attr_set: sys::mount_attr::RDONLY, ..Default::default() };
        sys::mount_setattr(&tree, sys::AT_RECURSIVE, &attr).ctx(|| format!("linux.readonlyPaths: {p}"))?;
        sys::move_mount(&tree, &target).ctx(|| format!("linux.readonlyPaths: {p}"))?;
    }
    Ok(())
}

/// Remounts `/` read-only (`root.readonly`).
pub fn readonly_root() -> Result<()> {
    remount(Path::new("/"), MsFlags::MS_RDONLY)
}

/// Writes `linux.sysctl` through a verified procfs handle (keys were checked at load; see
/// [`crate::procfs`]): a container's `/proc/sys` may be anything its config mounted there.
pub fn apply_sysctl(sysctl: &std::collections::HashMap<String, String>) -> Result<()> {
    if sysctl.is_empty() {
        return Ok(());
    }
    let proc = crate::procfs::ProcFs::open()?;
    for (key, value) in sysctl {
        let rel = crate::bundle::sysctl_path(&crate::bundle::sysctl_key(key))
            .ok_or_else(|| Error::Invalid(format!("linux.sysctl: {key:?} is not a sysctl name")))?;
        proc.write(&Path::new("sys").join(rel), value.as_bytes())
            .map_err(|e| Error::Init(format!("linux.sysctl[{key:?}]: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_become_flags_and_data() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        assert!(!o.bind);
        let o = opts(&["rbind", "ro", "rprivate"]);
        assert!(o.bind);
        assert!(o.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let o = opts(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn recursive_options_become_mount_attributes() {
        use crate::sys::mount_attr as A;
        let o = opts(&["rbind", "rro", "rnosuid", "rnoatime"]);
        assert_eq!(o.rec_set, A::RDONLY | A::NOSUID | A::NOATIME);
        assert_eq!(o.rec_clear, A::ATIME);
        let o = opts(&["rro", "rrw", "rexec"]);
        assert_eq!(o.rec_set, 0);
        assert_eq!(o.rec_clear, A::RDONLY | A::NOEXEC);
        let o = opts(&["nosymfollow", "tmpcopyup", "ridmap"]);
        assert!(o.flags.contains(MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW)));
        assert!(o.tmpcopyup);
        assert_eq!(o.idmap, Some(true));
        assert!(o.data.is_empty());
    }

    #[test]
    fn a_bind_mount_refuses_options_it_would_drop() {
        let m: Mount =
            serde_json::from_str(r#"{"destination":"/x","source":"/y","options":["rbind","rro","nosiud"]}"#).unwrap();
        assert!(check_mount(&m).unwrap_err().contains("nosiud"));
        let m: Mount =
            serde_json::from_str(r#"{"destination":"/x","type":"tmpfs","options":["size=1m","nosiud"]}"#).unwrap();
        assert_eq!(check_mount(&m), Ok(()), "data goes to the file system, which checks it");
        let m: Mount = serde_json::from_str(r#"{"destination":"/x","type":"proc","options":["tmpcopyup"]}"#).unwrap();
        assert!(check_mount(&m).is_err());
    }

    #[test]
    fn propagation_values() {
        assert_eq!(root_propagation(None).unwrap(), MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(root_propagation(Some("private")).unwrap(), MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(root_propagation(Some("sideways")).is_err());
    }

    #[test]
    fn clamp_keeps_dotdot_at_top() {
        assert_eq!(clamp_in_root(Path::new("/../../etc/x")), PathBuf::from("etc/x"));
        assert_eq!(clamp_in_root(Path::new("a/b/../c")), PathBuf::from("a/c"));
    }

    #[test]
    fn create_in_root_confines_relative_escape() {
        let dir = tempfile::tempdir().unwrap();
        symlink("../../../../../../tmp", dir.path().join("up")).unwrap();
        let root: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        create_in_root(&root, Path::new("up/strata-escape-probe"), true).unwrap();
        assert!(dir.path().join("tmp/strata-escape-probe").is_dir());
        assert!(!Path::new("/tmp/strata-escape-probe").exists());
    }

    #[test]
    fn create_in_root_confines_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("escape")).unwrap();
        let root: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        create_in_root(&root, Path::new("escape/sub/file"), false).unwrap();
        // The absolute symlink was resolved inside the root, so the outside dir is untouched.
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(dir.path().join(outside.path().strip_prefix("/").unwrap()).join("sub/file").exists());
    }
}
