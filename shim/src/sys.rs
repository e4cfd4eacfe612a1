//! Thin, safe wrappers around the system calls the engine needs and neither `nix` nor `std`
//! offers in the form required (fork without atfork handlers, openat2, close_range, capset).

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Outcome of [`fork`].
#[derive(Debug)]
pub enum Fork {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks with the raw `clone` system call and `flags` (plus SIGCHLD as exit signal).
///
/// The engine forks only while single-threaded, so the child may allocate; the raw call skips
/// libc's atfork handlers, which a container process has no use for.
pub fn fork(flags: libc::c_int) -> nix::Result<Fork> {
    // SAFETY: clone without CLONE_VM and with a null stack behaves like fork(2): the child gets
    // a copy-on-write copy of the address space and continues on its copy of the stack. The
    // process is single-threaded when the engine calls this, so no lock can be held by a thread
    // that does not exist in the child.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize)
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid as i32)),
    }
}

/// Forks like [`fork`] (no flags) with the child born in the cgroup v2 directory `cgroup`
/// (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7). Being born there spares the migration a
/// write to `cgroup.procs` costs: it takes the cgroup threadgroup lock for writing, which waits
/// for an RCU grace period (15 ms on the development VM, most of a container's creation).
/// `Ok(None)` when the kernel cannot (no clone3, or not a cgroup v2 directory): the caller then
/// forks with [`fork`] and moves the child itself, which reports any real error clearly.
pub fn fork_into_cgroup(cgroup: std::os::fd::BorrowedFd<'_>) -> nix::Result<Option<Fork>> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.as_raw_fd() as u64,
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork(2) (see `fork`);
    // `args` is a valid clone_args of the size passed and lives across the call. The engine is
    // single-threaded when it forks.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        -1 => match Errno::last() {
            Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL | Errno::EBADF | Errno::EOPNOTSUPP => Ok(None),
            e => Err(e),
        },
        0 => Ok(Some(Fork::Child)),
        pid => Ok(Some(Fork::Parent(pid as i32))),
    }
}

/// `RESOLVE_NO_XDEV`: no crossing into another mount while resolving.
pub const RESOLVE_NO_XDEV: u64 = 0x01;
/// `RESOLVE_NO_MAGICLINKS`: no `/proc/*/fd`-style links while resolving.
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_NO_SYMLINKS`: no symlink at all while resolving.
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// `RESOLVE_BENEATH`: the path must stay below the directory (no absolute paths, no `..` above).
pub const RESOLVE_BENEATH: u64 = 0x08;
/// `RESOLVE_IN_ROOT`: resolve as if the directory were `/` (`..` and absolute links stay in it).
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// Reads the regular file `rel` inside the directory `root` as if `root` were `/` (a symlink,
/// even an absolute one or one through `..`, never leaves it; no magic links), refusing
/// anything but a regular file (a FIFO, a device, a directory) and a file over `limit` bytes:
/// for files of an untrusted tree, such as an image's `/etc/passwd`.
pub fn read_in_root(root: &Path, rel: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let dir = openat2(libc::AT_FDCWD, root, libc::O_PATH | libc::O_DIRECTORY, 0, 0)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer
    let fd = openat2(
        dir.as_raw_fd(),
        rel,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid(format!("/{} is not a regular file", rel.display())));
    }
    if meta.len() > limit {
        return Err(invalid(format!("/{} is larger than {limit} bytes", rel.display())));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(format!("/{} is larger than {limit} bytes", rel.display())));
    }
    Ok(bytes)
}

/// `openat2(dirfd, path, flags, mode, resolve)`.
pub fn openat2(dirfd: RawFd, path: &Path, flags: i32, mode: u32, resolve: u64) -> nix::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: u64::from(mode), resolve };
    // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how that lives across
    // the call; the size argument is the struct's size.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dirfd, c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    };
    if fd < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Marks every descriptor from `first` upwards close-on-exec.
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> nix::Result<()> {
    nix::unistd::pivot_root(new_root, put_old)
}

/// The three capability sets as 64-bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable sets in one `capset(2)`.
pub fn capset(sets: CapSets) -> nix::Result<()> {
    let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData { effective: e0, permitted: p0, inheritable: i0 },
        CapData { effective: e1, permitted: p1, inheritable: i1 },
    ];
    // SAFETY: header and data are valid for the duration of the call and laid out as the
    // kernel's v3 structures (two data elements).
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Puts `fd` number `target` in place of `fd` (dup3 with close-on-exec cleared).
pub fn dup_to(fd: RawFd, target: RawFd) -> nix::Result<()> {
    if fd == target {
        // Clear close-on-exec, which dup2 would have done.
        // SAFETY: fcntl(F_SETFD) only changes descriptor flags.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        return if r < 0 { Err(Errno::last()) } else { Ok(()) };
    }
    // SAFETY: dup2 on descriptors owned by this process; `target` is replaced on purpose.
    let r = unsafe { libc::dup2(fd, target) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Sets the calling process's `no_new_privs` bit.
pub fn set_no_new_privs() -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Sets or clears PR_SET_KEEPCAPS.
pub fn set_keep_caps(keep: bool) -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_KEEPCAPS) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Makes the calling process a child subreaper.
pub fn set_child_subreaper() -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Asks for `signal` when the parent dies.
pub fn set_parent_death_signal(signal: i32) -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Raises a capability in the ambient set.
pub fn ambient_raise(cap: u8) -> nix::Result<()> {
    // SAFETY: prctl(PR_CAP_AMBIENT) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, libc::c_ulong::from(cap), 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Whether a capability is in the calling thread's bounding set.
pub fn bounding_has(cap: u8) -> bool {
    // SAFETY: prctl(PR_CAPBSET_READ) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) == 1 }
}

/// Drops a capability from the bounding set.
pub fn bounding_drop(cap: u8) -> nix::Result<()> {
    // SAFETY: prctl(PR_CAPBSET_DROP) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The highest capability number this kernel knows.
/// Read once per process: a container start asks for it for every capability set.
pub fn last_cap() -> u8 {
    static LAST: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
    })
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Joins the namespaces `nstype` of the process behind the pidfd or namespace fd `fd`.
pub fn setns(fd: &impl AsRawFd, nstype: i32) -> nix::Result<()> {
    // SAFETY: setns takes a descriptor and flags; the descriptor is borrowed for the call.
    let r = unsafe { libc::setns(fd.as_raw_fd(), nstype) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Sends `signal` to the process behind a pidfd.
pub fn pidfd_send_signal(fd: &impl AsRawFd, signal: i32) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with a null siginfo sends a plain signal.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Resets every signal to its default disposition and unblocks all signals, as a freshly
/// executed program expects (Rust's runtime ignores SIGPIPE, and ignored signals survive exec).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMIN() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring SIG_DFL installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Sets or clears the calling process's dumpable flag (who may ptrace it or open its
/// `/proc/<pid>` entries; the kernel sets it again when a program is executed).
pub fn set_dumpable(dumpable: bool) -> nix::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, libc::c_ulong::from(dumpable), 0, 0, 0) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The working directory as the kernel reports it: a path that does not start with `/` (the
/// kernel prefixes `(unreachable)`) names a directory outside the process's root.
pub fn getcwd_raw() -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the raw getcwd system call writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate((n as usize).saturating_sub(1));
    Ok(buf)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MountAttr {
    /// Attributes to set (`MOUNT_ATTR_*`).
    pub attr_set: u64,
    /// Attributes to clear.
    pub attr_clr: u64,
    /// Propagation (`MS_SHARED`, ...), or 0.
    pub propagation: u64,
    /// The user namespace of an idmapped mount (with `MOUNT_ATTR_IDMAP`).
    pub userns_fd: u64,
}

/// `MOUNT_ATTR_*` values of the kernel's uapi.
pub mod mount_attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// Ignore suid and sgid bits.
    pub const NOSUID: u64 = 0x2;
    /// No access to device nodes.
    pub const NODEV: u64 = 0x4;
    /// No program execution.
    pub const NOEXEC: u64 = 0x8;
    /// The access-time field (clear it to set one of the three below).
    pub const ATIME: u64 = 0x70;
    /// Relative access times.
    pub const RELATIME: u64 = 0x0;
    /// No access times.
    pub const NOATIME: u64 = 0x10;
    /// Every access time.
    pub const STRICTATIME: u64 = 0x20;
    /// No directory access times.
    pub const NODIRATIME: u64 = 0x80;
    /// An idmapped mount.
    pub const IDMAP: u64 = 0x10_0000;
    /// No symlinks followed.
    pub const NOSYMFOLLOW: u64 = 0x20_0000;
}

/// `AT_RECURSIVE`: a mount and all mounts below it.
pub const AT_RECURSIVE: u32 = 0x8000;

/// `mount_setattr(fd, "", AT_EMPTY_PATH | flags, attr)` on the mount behind `fd`.
pub fn mount_setattr(fd: &impl AsRawFd, flags: u32, attr: &MountAttr) -> nix::Result<()> {
    let empty = c"";
    // SAFETY: `empty` is a valid C string and `attr` a valid mount_attr of the size passed,
    // both living across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH as u32 | flags) as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// `open_tree(dirfd, path, flags)`: with `OPEN_TREE_CLONE`, a detached copy of a mount tree.
pub fn open_tree(dirfd: RawFd, path: &Path, flags: u32) -> nix::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string living across the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, c.as_ptr(), flags as libc::c_uint) };
    if fd < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// `open_tree(fd, "", AT_EMPTY_PATH | flags)`: with `OPEN_TREE_CLONE`, a detached bind of the
/// file or directory behind `fd`.
pub fn open_tree_fd(fd: &impl AsRawFd, flags: u32) -> nix::Result<OwnedFd> {
    let empty = c"";
    // SAFETY: `empty` is a valid C string living across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (flags | libc::AT_EMPTY_PATH as u32) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        // SAFETY: a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }
}

/// `move_mount(from, "", to, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`: attaches
/// the detached mount behind `from` on the directory or file behind `to`.
pub fn move_mount(from: &impl AsRawFd, to: &impl AsRawFd) -> nix::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: the empty path is a valid C string living across the call; both descriptors are
    // open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// A new detached mount of file system `fstype` (`fsopen`, `fsconfig`, `fsmount`) with the
/// given options (`key` or `key=value`) and `MOUNT_ATTR_*` attributes, for `move_mount`.
pub fn detached_mount(fstype: &str, options: &[&str], attrs: u64) -> nix::Result<OwnedFd> {
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    let fs = CString::new(fstype).map_err(|_| Errno::EINVAL)?;
    // SAFETY: a valid C string; fsopen returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), 0x1 as libc::c_uint) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    for opt in options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (*opt, None),
        };
        let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
        let value = value.map(CString::new).transpose().map_err(|_| Errno::EINVAL)?;
        let (cmd, vptr) = match &value {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: valid C strings (or null for a flag) living across the call.
        if unsafe { libc::syscall(libc::SYS_fsconfig, ctx.as_raw_fd(), cmd, key.as_ptr(), vptr, 0) } < 0 {
            return Err(Errno::last());
        }
    }
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fsmount takes a configured context and integer flags (FSMOUNT_CLOEXEC).
    let m = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), 0x1 as libc::c_uint, attrs) };
    if m < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// Which option of a mount's `data` the file system `fstype` refuses, found by handing each
/// to a new file-system context (`fsopen`/`fsconfig`); `None` when none is refused alone.
pub fn refused_fs_option(fstype: &str, options: &[String]) -> Option<String> {
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    let fs = CString::new(fstype).ok()?;
    // SAFETY: `fs` is a valid C string; fsopen returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), 0x1 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor nothing else owns.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    for opt in options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        let Ok(key_c) = CString::new(key) else { return Some(opt.clone()) };
        let value_c = value.and_then(|v| CString::new(v).ok());
        let (cmd, vptr) = match &value_c {
            Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
            None => (FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: the strings are valid C strings (or null for a flag) living across the call.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, ctx.as_raw_fd(), cmd, key_c.as_ptr(), vptr, 0) };
        if r < 0 {
            return Some(opt.clone());
        }
    }
    None
}

/// The magic number of the file system behind `fd` (`statfs.f_type`).
pub fn fs_magic(fd: &impl AsRawFd) -> nix::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes a statfs struct into the buffer, which lives across the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstatfs succeeded, so it initialised the struct. f_type is signed in glibc and
    // unsigned in musl: compared as u64.
    Ok(unsafe { st.assume_init() }.f_type as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image's file is read inside its root: a link out of it (absolute or through `..`)
    /// lands inside, and a FIFO, a device, a directory or an oversized file is refused at once.
    #[test]
    fn read_in_root_stays_in_the_root_and_reads_only_small_regular_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
        assert_eq!(read_in_root(r, Path::new("etc/group"), 100).unwrap(), b"root:x:0:\n");

        // a host file the link names is looked for inside the root instead
        std::os::unix::fs::symlink("/etc/hostname", r.join("etc/passwd")).unwrap();
        let e = read_in_root(r, Path::new("etc/passwd"), 100).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/group", r.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(r, Path::new("etc/passwd"), 100).unwrap(), b"root:x:0:\n", "`..` stops at the root");

        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(&r.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_in_root(r, Path::new("etc/passwd"), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", r.join("etc/passwd")).unwrap();
        assert!(read_in_root(r, Path::new("etc/passwd"), 100).is_err(), "/dev/zero of the host");

        std::fs::write(r.join("etc/big"), vec![b'x'; 101]).unwrap();
        let e = read_in_root(r, Path::new("etc/big"), 100).unwrap_err();
        assert!(e.to_string().contains("larger than 100 bytes"), "{e}");
        assert!(read_in_root(r, Path::new("etc"), 100).unwrap_err().to_string().contains("not a regular file"));
    }
}
