//! The two processes that turn a fork of the runtime into a container.
//!
//! * **Stage 1** joins the namespaces named by path, makes the user namespace (and waits for the
//!   runtime to write its id maps), unshares the other namespaces and forks the init as a
//!   sibling (`CLONE_PARENT`), so the init is the first process of the new pid namespace and the
//!   runtime's own child. Stage 1 then exits.
//! * **The init** builds the root file system, the terminal, the limits and the identity, says
//!   `Ready`, waits at the start gate, then installs seccomp and executes the program.
//!
//! Both report a failure as an `Error` message on the channel and exit; the runtime then
//! removes everything it made.

use crate::bundle::Bundle;
use crate::error::{Error, Result, SysContext};
use crate::namespaces::{self, Plan};
use crate::process;
use crate::rootfs::{self, RootfsSetup};
use crate::sync::{Channel, Msg};
use crate::sys::{self, Fork};
use crate::tty;
use oci_spec::runtime::LinuxNamespaceType;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// Where the init waits for `start`.
#[derive(Debug)]
pub enum Gate {
    /// A listening socket in the state directory; `strata start` connects to it.
    Socket(OwnedFd),
    /// The setup channel; the runtime sends `Start` (used by `run`).
    Channel,
}

/// Where a terminal's master goes.
#[derive(Debug)]
pub enum Console {
    /// No terminal: the container inherits the runtime's stdio.
    None,
    /// Send the master to this connected console socket.
    Socket(OwnedFd),
    /// Send the master to the runtime over the channel, which relays it.
    Relay,
}

/// Everything the container's processes need, prepared by the runtime before forking.
#[derive(Debug)]
pub struct InitArgs<'a> {
    /// The validated bundle.
    pub bundle: &'a Bundle,
    /// The container's cgroup directory.
    pub cgroup_dir: PathBuf,
    /// The start gate.
    pub gate: Gate,
    /// The terminal's destination.
    pub console: Console,
    /// How many descriptors after stdio are passed to the program.
    pub preserve_fds: u32,
    /// The compiled seccomp filter, if the config has one.
    pub seccomp: Option<seccomp::Filter>,
}

/// Runs stage 1 in the forked child; never returns.
pub fn stage1(args: InitArgs<'_>, chan: Channel) -> ! {
    let code = match stage1_inner(args, &chan) {
        Ok(()) => 0,
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.to_string()), None);
            1
        }
    };
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // flushing buffers the parent also holds.
    unsafe { libc::_exit(code) }
}

fn stage1_inner(args: InitArgs<'_>, chan: &Channel) -> Result<()> {
    sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    chan.expect(&Msg::Go)?;
    let spec = &args.bundle.spec;
    let linux = spec.linux().as_ref().ok_or_else(|| Error::Invalid("linux: missing".into()))?;
    let plan = Plan::from_spec(linux.namespaces().as_deref().unwrap_or_default());
    let joins = plan.open_joins()?;
    namespaces::join_all(&joins)?;
    drop(joins);
    if plan.new_user {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).ctx(|| "unshare(user namespace)".into())?;
        chan.send(&Msg::UsernsReady, None)?;
        chan.expect(&Msg::Go)?;
        let root_uid = nix::unistd::Uid::from_raw(0);
        let root_gid = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid).ctx(|| "setresgid(0) in the user namespace".into())?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid).ctx(|| "setresuid(0) in the user namespace".into())?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(plan.unshare))
        .ctx(|| format!("unshare(namespaces {:#x})", plan.unshare))?;
    match sys::fork(libc::CLONE_PARENT).ctx(|| "forking the container's init".into())? {
        Fork::Parent(pid) => chan.send(&Msg::Pid(pid), None),
        Fork::Child => {
            let code = match init(&args, &plan, chan) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = chan.send(&Msg::Error(e.to_string()), None);
                    1
                }
            };
            // SAFETY: see stage1.
            unsafe { libc::_exit(code) }
        }
    }
}

enum Never {}

fn init(args: &InitArgs<'_>, plan: &Plan, chan: &Channel) -> Result<Never> {
    sys::set_parent_death_signal(libc::SIGKILL).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    let spec = &args.bundle.spec;
    let linux = spec.linux().as_ref().ok_or_else(|| Error::Invalid("linux: missing".into()))?;
    let proc_ = spec.process().as_ref().ok_or_else(|| Error::Invalid("process: missing".into()))?;
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    // The `create` hooks, once everything is mounted and before pivot_root: the runtime runs
    // its own (prestart, createRuntime) and hands back the state for the init's.
    let hooks = spec.hooks().as_ref();
    let hook_state: std::cell::RefCell<Option<Vec<u8>>> = std::cell::RefCell::new(None);
    let before_pivot = || -> Result<()> {
        if !crate::hooks::any_before_start(hooks) {
            return Ok(());
        }
        chan.send(&Msg::Hooks, None)?;
        let state = match chan.recv()? {
            (Msg::State(s), _) => s.into_bytes(),
            (Msg::Error(e), _) => return Err(Error::Init(e)),
            (m, _) => return Err(Error::Init(format!("unexpected {m:?} while waiting for the container's state"))),
        };
        // The runtime's state says "creating", which is where the container is.
        crate::hooks::run(hooks, crate::hooks::Kind::CreateContainer, &state)?;
        *hook_state.borrow_mut() = Some(state);
        Ok(())
    };
    RootfsSetup {
        spec,
        rootfs: &args.bundle.rootfs,
        cgroup_dir: Some(&args.cgroup_dir),
        in_user_ns: plan.has(LinuxNamespaceType::User),
        before_pivot: Some(&before_pivot),
    }
    .run()?;

    if let Some(h) = spec.hostname() {
        if !plan.has(LinuxNamespaceType::Uts) {
            return Err(Error::Invalid("hostname: needs a uts namespace".into()));
        }
        nix::unistd::sethostname(h).ctx(|| format!("hostname: sethostname({h:?})"))?;
    }
    if let Some(d) = spec.domainname() {
        let c = CString::new(d.as_bytes()).map_err(|_| Error::Invalid("domainname: contains NUL".into()))?;
        // SAFETY: setdomainname reads `len` bytes of a valid buffer.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(Error::sys(format!("domainname: setdomainname({d:?})"), nix::errno::Errno::last()));
        }
    }
    if let Some(s) = linux.sysctl() {
        rootfs::apply_sysctl(s)?;
    }
    rootfs::mask_paths(linux.masked_paths().as_deref().unwrap_or_default())?;
    rootfs::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        rootfs::readonly_root()?;
    }

    if proc_.terminal().unwrap_or(false) {
        let size = proc_.console_size().map(|b| tty::WinSize { rows: b.height() as u16, cols: b.width() as u16 });
        let pty = tty::open_pty(size, proc_.user().uid())?;
        match &args.console {
            Console::Socket(sock) => tty::send_master(sock, &pty.master)?,
            Console::Relay => chan.send(&Msg::Pty, Some(pty.master.as_raw_fd()))?,
            Console::None => {
                return Err(Error::Invalid(
                    "process.terminal is true but no --console-socket was given (use -d with --console-socket, or run in the foreground)".into(),
                ));
            }
        }
        drop(pty.master);
        tty::become_stdio(&pty.slave)?;
    }

    process::apply_rlimits(proc_.rlimits().as_deref().unwrap_or_default())?;
    let env = process::environment(proc_.env().as_deref().unwrap_or_default(), proc_.user().uid());
    let argv = proc_.args().clone().unwrap_or_default();
    let program = process::find_program(&argv[0], &env)?;
    let c_args = process::cstrings(&argv, "process.args")?;
    let c_env = process::cstrings(&env, "process.env")?;
    nix::unistd::chdir(proc_.cwd()).ctx(|| format!("process.cwd: chdir {}", proc_.cwd().display()))?;

    let nnp = proc_.no_new_privileges().unwrap_or(false);
    let notify = args.seccomp.as_ref().is_some_and(|f| f.uses_notify());
    // Without no_new_privs the kernel accepts a filter only while CAP_SYS_ADMIN is held, so it
    // is installed before the identity switch; with it, as late as possible — except that a
    // filter with a user-notification listener must be in place before `Ready`, so that the
    // runtime can hand the listener to linux.seccomp.listenerPath.
    if !nnp && let Some(f) = &args.seccomp {
        send_listener(chan, f.install()?)?;
    }
    process::switch_user_and_caps(proc_.user(), proc_.capabilities().as_ref())?;
    if nnp
        && notify
        && let Some(f) = &args.seccomp
    {
        sys::set_no_new_privs().ctx(|| "process.noNewPrivileges: prctl".into())?;
        send_listener(chan, f.install()?)?;
    }

    sys::set_parent_death_signal(0).ctx(|| "prctl(PR_SET_PDEATHSIG)".into())?;
    chan.send(&Msg::Ready, None)?;
    let gate = match &args.gate {
        Gate::Channel => {
            chan.expect(&Msg::Start)?;
            None
        }
        Gate::Socket(listener) => Some(wait_for_start(listener)?),
    };
    // startContainer hooks: in the container, before its program. A failure is told to `start`
    // through the gate connection (or to `run` through the channel) before the init exits.
    if let Some(state) = hook_state.borrow().as_ref()
        && let Err(e) =
            crate::hooks::run(hooks, crate::hooks::Kind::StartContainer, &crate::hooks::with_status(state, "created"))
    {
        if let Some(conn) = &gate {
            let _ = nix::unistd::write(conn, e.to_string().as_bytes());
        }
        return Err(e);
    }
    // The gate connection closes on exec (close-on-exec): that tells `start` the program runs.
    std::mem::forget(gate);
    if nnp && !notify {
        sys::set_no_new_privs().ctx(|| "process.noNewPrivileges: prctl".into())?;
        if let Some(f) = &args.seccomp {
            f.install()?;
        }
    }
    sys::reset_signals();
    sys::cloexec_from(3 + args.preserve_fds).ctx(|| "close_range".into())?;
    Err(process::exec(&program, &c_args, &c_env))
}

/// Hands a seccomp user-notification listener to the runtime, which passes it on.
pub fn send_listener(chan: &Channel, listener: Option<OwnedFd>) -> Result<()> {
    match listener {
        Some(fd) => chan.send(&Msg::SeccompListener, Some(fd.as_raw_fd())),
        None => Ok(()),
    }
}

/// Blocks until `strata start` connects to the gate socket and sends its byte; returns the
/// connection, which `start` keeps open until the program runs.
fn wait_for_start(listener: &OwnedFd) -> Result<OwnedFd> {
    loop {
        match nix::sys::socket::accept4(listener.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => {
                // SAFETY: accept4 returned a new descriptor owned by nothing else.
                let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let mut b = [0u8; 1];
                match nix::unistd::read(&conn, &mut b) {
                    Ok(1) => return Ok(conn),
                    _ => continue,
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("waiting for start", e)),
        }
    }
}
