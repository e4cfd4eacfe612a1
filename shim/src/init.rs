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
use crate::launch::{self, Never};
use crate::namespaces::{self, Plan};
use crate::rootfs::{self, RootfsSetup};
use crate::sync::{Channel, Msg};
use crate::sys;
use oci_spec::runtime::LinuxNamespaceType;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where the init waits for `start`.
#[derive(Debug)]
pub enum Gate {
    /// A listening socket in the state directory; `strata start` connects to it.
    Socket(OwnedFd),
    /// The setup channel; the runtime sends `Start` (used by `run`).
    Channel,
}

pub use crate::launch::Console;

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
    /// The container's id.
    pub id: &'a str,
    /// Keep the runtime's session keyring (`--no-new-keyring`).
    pub no_new_keyring: bool,
}

/// Runs stage 1 in the forked child (see [`crate::launch::stage1`]); never returns.
pub fn stage1(args: InitArgs<'_>, chan: Channel) -> ! {
    let linux = args.bundle.spec.linux().as_ref();
    let plan = linux.map(|l| Plan::from_spec(l.namespaces().as_deref().unwrap_or_default())).unwrap_or_default();
    let offsets = linux.and_then(time_offsets);
    launch::stage1(
        &chan,
        |chan| enter_namespaces(&plan, offsets, chan),
        |chan, idmapped| init(&args, &plan, chan, idmapped),
    )
}

/// Waits for the runtime, joins the namespaces given by path, makes the user namespace (the
/// runtime writes its id maps meanwhile) and unshares the others. Returns the idmapped mounts
/// the runtime made meanwhile (see [`crate::idmap`]).
fn enter_namespaces(plan: &Plan, time_offsets: Option<String>, chan: &Channel) -> Result<Vec<(usize, OwnedFd)>> {
    let mut idmapped = chan.receive_until_go()?;
    let joins = plan.open_joins()?;
    namespaces::join_all(&joins)?;
    drop(joins);
    if plan.new_user {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).ctx(|| "unshare(user namespace)".into())?;
        // The runtime writes /proc/<pid>/uid_map: a runtime without privilege can only open
        // it while the process is dumpable. The new user namespace holds nothing else yet.
        sys::set_dumpable(true).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;
        chan.send(&Msg::UsernsReady, None)?;
        idmapped.extend(chan.receive_until_go()?);
        sys::set_dumpable(false).ctx(|| "prctl(PR_SET_DUMPABLE)".into())?;
        let root_uid = nix::unistd::Uid::from_raw(0);
        let root_gid = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid).ctx(|| "setresgid(0) in the user namespace".into())?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid).ctx(|| "setresuid(0) in the user namespace".into())?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(plan.unshare))
        .ctx(|| format!("unshare(namespaces {:#x})", plan.unshare))?;
    // A new time namespace takes its offsets before its first process (the init) exists.
    if let Some(offsets) = time_offsets {
        crate::procfs::ProcFs::open()?
            .write(Path::new(&format!("{}/timens_offsets", nix::unistd::getpid())), offsets.as_bytes())
            .map_err(|e| Error::Init(format!("linux.timeOffsets: {e}")))?;
    }
    crate::fault::point("stage1", "namespaces");
    Ok(idmapped)
}

/// The lines of `/proc/<pid>/timens_offsets` for `linux.timeOffsets` (clock, seconds,
/// nanoseconds), or `None` when there are none.
fn time_offsets(linux: &oci_spec::runtime::Linux) -> Option<String> {
    let offsets = linux.time_offsets().as_ref().filter(|o| !o.is_empty())?;
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by_key(|(k, _)| k.as_str());
    Some(
        clocks
            .into_iter()
            .map(|(clock, o)| format!("{clock} {} {}\n", o.secs().unwrap_or(0), o.nanosecs().unwrap_or(0)))
            .collect(),
    )
}

fn init(args: &InitArgs<'_>, plan: &Plan, chan: &Channel, idmapped: Vec<(usize, OwnedFd)>) -> Result<Never> {
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
        bundle: &args.bundle.dir,
        idmapped: idmapped.into_iter().collect(),
        cgroup_dir: Some(&args.cgroup_dir),
        in_user_ns: plan.has(LinuxNamespaceType::User),
        before_pivot: Some(&before_pivot),
    }
    .run()?;
    crate::fault::point("init", "rootfs");

    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).ctx(|| format!("hostname: sethostname({h:?})"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        let c = CString::new(d.as_bytes()).map_err(|_| Error::Invalid("domainname: contains NUL".into()))?;
        // SAFETY: setdomainname reads `len` bytes of a valid buffer.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(Error::sys(format!("domainname: setdomainname({d:?})"), nix::errno::Errno::last()));
        }
    }
    if let Some(s) = linux.sysctl() {
        rootfs::apply_sysctl(s)?;
    }
    // The terminal before the read-only steps: /dev/console may have to be created.
    launch::attach_terminal(proc_, &args.console, chan, true)?;
    rootfs::readonly_paths(linux.readonly_paths().as_deref().unwrap_or_default())?;
    rootfs::mask_paths(linux.masked_paths().as_deref().unwrap_or_default(), crate::lsm::mount_label(spec))?;
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        rootfs::readonly_root()?;
    }

    let keyring = if args.no_new_keyring {
        launch::Keyring::Keep
    } else {
        launch::Keyring::JoinAndShare(plan.has(LinuxNamespaceType::User))
    };
    let ctx = launch::Context {
        container_id: args.id,
        keyring,
        personality: linux.personality().as_ref(),
        memory_policy: linux.memory_policy().as_ref(),
        process: proc_,
        seccomp: args.seccomp.as_ref(),
        preserve_fds: args.preserve_fds,
        field_prefix: "process.",
    };
    let prepared = launch::prepare(&ctx, chan)?;
    crate::fault::point("init", "gate");
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
    Err(launch::finish(&ctx, prepared))
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
