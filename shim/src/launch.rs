//! The steps every process strata puts into a container goes through, the container's init and
//! an exec'd process alike, written once so that each hardening lands in one place:
//!
//! 1. **Stage 1** ([`stage1`]): a fork of the runtime that becomes non-dumpable at once (no
//!    process in the container may read its memory or descriptors, the CVE-2016-9962 class),
//!    enters the container's namespaces (the caller says how: unshare for `create`, `setns` for
//!    `exec`) and forks the container process with `CLONE_PARENT`, so it is the runtime's own
//!    child and, in a new pid namespace, its first process.
//! 2. **The terminal** ([`attach_terminal`]), when the process has one.
//! 3. **Preparation** ([`prepare`]): rlimits, scheduling, the program lookup, the working
//!    directory (resolved inside the root, never through a magic link: the CVE-2024-21626
//!    class), seccomp where it must come early, the user, groups and capabilities; then `Ready`.
//! 4. After the start gate, **the exec** ([`finish`]): no_new_privs and seccomp, default signal
//!    handling, every descriptor of the runtime closed on exec, `execve`.

use crate::error::{Error, Result, SysContext};
use crate::process;
use crate::sync::{Channel, Msg};
use crate::sys::{self, Fork};
use crate::tty;
use oci_spec::runtime::Process;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A value that cannot exist: what a function that only returns on failure returns on success.
pub enum Never {}

/// Where a terminal's master goes.
#[derive(Debug)]
pub enum Console {
    /// No terminal: the process inherits the runtime's stdio.
    None,
    /// Send the master to this connected console socket.
    Socket(OwnedFd),
    /// Send the master to the runtime over the channel, which relays it.
    Relay,
}

/// Runs stage 1 in a forked child and never returns. `enter` waits for the runtime's `Go` and
/// puts the process into the container's namespaces (it may talk to the runtime over the
/// channel); what it returns goes to `body`, the container process, which reports its own
/// failures.
pub fn stage1<T>(
    chan: &Channel,
    enter: impl FnOnce(&Channel) -> Result<T>,
    body: impl FnOnce(&Channel, T) -> Result<Never>,
) -> ! {
    let run = || -> Result<()> {
        // First of all: nothing in the container may ptrace this process or open its
        // /proc/<pid>/fd, whose entries are the runtime's. The flag is inherited by the fork
        // below and reset by the kernel when the program is executed.
        sys::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;
        sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
        let entered = enter(chan)?;
        match sys::fork(libc::CLONE_PARENT).ctx(|| "forking the container's process".into())? {
            Fork::Parent(pid) => chan.send(&Msg::Pid(pid), None),
            Fork::Child => {
                let e = match sys::set_parent_death_signal(libc::SIGKILL)
                    .ctx(|| "prctl(PR_SET_PDEATHSIG)".into())
                    .and_then(|()| body(chan, entered))
                {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                let _ = chan.send(&Msg::Error(e.to_string()), None);
                // SAFETY: _exit ends the forked child without running the runtime's atexit
                // handlers or flushing buffers the runtime also holds.
                unsafe { libc::_exit(1) }
            }
        }
    };
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.to_string()), None);
            1
        }
    };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Gives the process its terminal when `process.terminal` is set: a pty from the container's
/// devpts, whose master goes to `console`, and whose slave becomes stdio and the controlling
/// terminal (and, for the init, `/dev/console`). The slave is obtained from the master
/// (`TIOCGPTPEER`), never by a path the container could redirect.
pub fn attach_terminal(p: &Process, console: &Console, chan: &Channel, bind_console: bool) -> Result<Option<OwnedFd>> {
    if !p.terminal().unwrap_or(false) {
        return Ok(None);
    }
    let size = p.console_size().map(|b| tty::WinSize { rows: b.height() as u16, cols: b.width() as u16 });
    let pty = tty::open_pty(size, p.user().uid())?;
    match console {
        Console::Socket(sock) => tty::send_master(sock, &pty.master)?,
        Console::Relay => chan.send(&Msg::Pty, Some(pty.master.as_raw_fd()))?,
        Console::None => {
            return Err(Error::Invalid(
                "process.terminal is true but no --console-socket was given (use -d with --console-socket, or run in the foreground)".into(),
            ));
        }
    }
    drop(pty.master);
    if bind_console {
        tty::bind_console(&pty.slave)?;
    }
    tty::become_stdio(&pty.slave)?;
    Ok(Some(pty.slave))
}

/// Whether the process joins a session keyring of the container's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyring {
    /// Keep the runtime's (`--no-new-keyring`).
    Keep,
    /// Join `_ses.<id>` (an exec).
    Join,
    /// Join `_ses.<id>` and let the container's user search it (the init; `true` in a user
    /// namespace).
    JoinAndShare(bool),
}

/// What the process needs at the start gate and after it.
#[derive(Debug)]
pub struct Context<'a> {
    /// The container's id (it names the session keyring).
    pub container_id: &'a str,
    /// The session keyring.
    pub keyring: Keyring,
    /// `linux.personality`.
    pub personality: Option<&'a oci_spec::runtime::LinuxPersonality>,
    /// `linux.memoryPolicy`.
    pub memory_policy: Option<&'a oci_spec::runtime::LinuxMemoryPolicy>,
    /// The OCI process (the config's, or an exec's merged with it).
    pub process: &'a Process,
    /// The compiled seccomp filter, if any.
    pub seccomp: Option<&'a seccomp::Filter>,
    /// How many descriptors after stdio the program keeps (`--preserve-fds`).
    pub preserve_fds: u32,
    /// The field names errors use: `process.` for the init, empty for an exec.
    pub field_prefix: &'static str,
}

/// The program, ready to be executed once the gate opens.
#[derive(Debug)]
pub struct Prepared {
    program: PathBuf,
    args: Vec<CString>,
    env: Vec<CString>,
    /// no_new_privs and seccomp are still to be set at the gate.
    late_seccomp: bool,
}

/// Everything between the terminal and `Ready`: limits, the program, the working directory,
/// the identity (and seccomp, where it must come before the identity switch). Sends `Ready`.
pub fn prepare(ctx: &Context<'_>, chan: &Channel) -> Result<Prepared> {
    let p = ctx.process;
    let field = |name: &str| format!("{}{name}", ctx.field_prefix);
    // CPU affinity: an exec's `final` list, else every CPU of the container's cpuset (so a
    // runtime pinned to one CPU does not pin the container).
    let affinity =
        p.exec_cpu_affinity().as_ref().and_then(|a| a.cpu_affinity_final().as_deref()).filter(|l| !l.is_empty());
    crate::scheduling::apply_cpu_affinity(affinity, &field("execCPUAffinity.final"))?;
    process::apply_rlimits(p.rlimits().as_deref().unwrap_or_default())?;
    // What needs privilege comes before the identity switch.
    match ctx.keyring {
        Keyring::Keep => {}
        Keyring::Join => crate::lsm::join_session_keyring(ctx.container_id, None)?,
        Keyring::JoinAndShare(user_ns) => crate::lsm::join_session_keyring(ctx.container_id, Some(user_ns))?,
    }
    if let Some(per) = ctx.personality {
        crate::scheduling::apply_personality(per)?;
    }
    if let Some(m) = ctx.memory_policy {
        crate::scheduling::apply_memory_policy(m)?;
    }
    if let Some(s) = p.scheduler() {
        crate::scheduling::apply_scheduler(s)?;
    }
    if let Some(io) = p.io_priority() {
        crate::scheduling::apply_io_priority(io)?;
    }
    crate::lsm::apply_exec_labels(p.apparmor_profile().as_deref(), p.selinux_label().as_deref())?;
    let env = process::environment(p.env().as_deref().unwrap_or_default(), p.user().uid(), &field("env"))?;
    let argv = p.args().clone().unwrap_or_default();
    let first = argv.first().ok_or_else(|| Error::Invalid(format!("{}: no program given", field("args"))))?;
    chdir_in_root(p.cwd()).map_err(|e| Error::Init(format!("{}: {e}", field("cwd"))))?;
    let program = process::find_program(first, &env)?;
    let args = process::cstrings(&argv, &field("args"))?;
    let env = process::cstrings(&env, &field("env"))?;

    let nnp = p.no_new_privileges().unwrap_or(false);
    let notify = ctx.seccomp.is_some_and(|f| f.uses_notify());
    // Without no_new_privs the kernel accepts a filter only while CAP_SYS_ADMIN is held, so it
    // is installed before the identity switch; with it, as late as possible — except that a
    // filter with a user-notification listener must be in place before `Ready`, so that the
    // runtime can hand the listener to linux.seccomp.listenerPath.
    if !nnp && let Some(f) = ctx.seccomp {
        send_listener(chan, f.install()?)?;
    }
    process::switch_user_and_caps(p.user(), p.capabilities().as_ref())?;
    if nnp
        && notify
        && let Some(f) = ctx.seccomp
    {
        sys::set_no_new_privs().ctx(|| format!("{}: prctl", field("noNewPrivileges")))?;
        send_listener(chan, f.install()?)?;
    }
    sys::set_parent_death_signal(0).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    chan.send(&Msg::Ready, None)?;
    Ok(Prepared { program, args, env, late_seccomp: nnp && !notify })
}

/// After the gate: no_new_privs and seccomp (if not done), default signals, every descriptor
/// above stdio and the preserved ones closed on exec, then the program. Returns only on failure.
pub fn finish(ctx: &Context<'_>, prepared: Prepared) -> Error {
    let run = || -> Result<()> {
        if prepared.late_seccomp {
            sys::set_no_new_privs().ctx(|| format!("{}noNewPrivileges: prctl", ctx.field_prefix))?;
            if let Some(f) = ctx.seccomp {
                f.install()?;
            }
        }
        sys::reset_signals();
        sys::cloexec_from(3 + ctx.preserve_fds).ctx(|| "close_range".into())
    };
    match run() {
        Ok(()) => process::exec(&prepared.program, &prepared.args, &prepared.env),
        Err(e) => e,
    }
}

/// Hands a seccomp user-notification listener to the runtime, which passes it on.
pub fn send_listener(chan: &Channel, listener: Option<OwnedFd>) -> Result<()> {
    match listener {
        Some(fd) => chan.send(&Msg::SeccompListener, Some(fd.as_raw_fd())),
        None => Ok(()),
    }
}

/// Changes to `cwd` resolved inside the process's root without following magic links
/// (`/proc/self/fd/N`, `/proc/self/cwd`): a descriptor of the runtime that the process still
/// holds can never become its working directory. Then checks that the directory is reachable
/// from the root, which the kernel marks otherwise.
pub fn chdir_in_root(cwd: &Path) -> Result<()> {
    use crate::sys::{RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};
    let rel = cwd.strip_prefix("/").unwrap_or(cwd);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let root = sys::openat2(libc::AT_FDCWD, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY, 0, 0)
        .ctx(|| "opening /".into())?;
    let dir = sys::openat2(
        root.as_raw_fd(),
        rel,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    )
    .ctx(|| format!("chdir {}", cwd.display()))?;
    nix::unistd::fchdir(&dir).ctx(|| format!("chdir {}", cwd.display()))?;
    let here = sys::getcwd_raw().ctx(|| "getcwd".into())?;
    if !here.starts_with(b"/") {
        return Err(Error::Invalid(format!(
            "{} is outside the container's root ({})",
            cwd.display(),
            String::from_utf8_lossy(&here)
        )));
    }
    Ok(())
}
