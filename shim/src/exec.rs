//! `exec`: run another process in a running container. It joins all of the init's namespaces at
//! once through a pidfd, joins the cgroup, and takes its defaults (environment, capabilities,
//! no_new_privs, seccomp) from the container's config, as runc does.

use crate::bundle::Bundle;
use crate::container::{self, CreateOptions};
use crate::error::{Error, Result, SysContext};
use crate::namespaces;
use crate::launch::{self, Never};
use crate::state::{self, StateRoot, Status};
use crate::sync::{self, Channel, Msg};
use crate::sys::{self, Fork};
use crate::tty;
use cgroups::Cgroup;
use oci_spec::runtime::{LinuxNamespaceType, Process};
use std::os::fd::OwnedFd;

/// What to run and how.
#[derive(Debug)]
pub struct ExecRequest {
    /// The process description (from `--process` or built from the arguments).
    pub process: Process,
    /// Return after starting it (`--detach`).
    pub detach: bool,
    /// Options shared with create (console socket, pid file, preserved fds).
    pub opts: CreateOptions,
}

/// Namespaces of the init that differ from the caller's, as setns flags.
fn differing_namespaces(pid: i32) -> libc::c_int {
    use LinuxNamespaceType::*;
    let mut flags = 0;
    for t in [User, Mount, Pid, Network, Ipc, Uts, Cgroup, Time] {
        let name = namespaces::proc_name(t);
        let theirs = std::fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"));
        if let (Ok(a), Ok(b)) = (theirs, ours) {
            use std::os::unix::fs::MetadataExt;
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                flags |= namespaces::flag(t);
            }
        }
    }
    flags
}

/// Runs `req` in container `id`. Returns the exit code (foreground) or 0 (detached).
pub fn exec(root: &StateRoot, id: &str, req: &ExecRequest) -> Result<i32> {
    let st = root.load(id)?;
    let s = container::status(&st);
    if s != Status::Running {
        return Err(Error::WrongState {
            id: id.into(),
            status: s.to_string(),
            action: "exec in it (it must be running)",
        });
    }
    let bundle = Bundle::load(&st.bundle)?;
    let seccomp_filter = bundle.seccomp.clone();
    let pidfd = sys::pidfd_open(st.pid).ctx(|| format!("pidfd_open({})", st.pid))?;
    if state::process_start_time(st.pid) != Some(st.pid_start_time) {
        return Err(Error::WrongState { id: id.into(), status: "stopped".into(), action: "exec in it" });
    }
    let ns_flags = differing_namespaces(st.pid);
    let terminal = req.process.terminal().unwrap_or(false);
    let console = match (&req.opts.console_socket, terminal) {
        (Some(p), true) => launch::Console::Socket(tty::connect_console_socket(p)?),
        (None, true) if req.detach => {
            return Err(Error::Invalid("exec --tty --detach needs --console-socket".into()));
        }
        (None, true) => launch::Console::Relay,
        (_, false) => launch::Console::None,
    };
    let sigfd = if req.detach { None } else { Some(container::block_signals()?) };
    let (parent_end, child_end) = sync::pair()?;
    let cgroup = Cgroup::open(st.cgroup_path.clone());
    let (forked, born_in_cgroup) = container::fork_in(&cgroup)?;
    let stage1 = match forked {
        Fork::Child => {
            drop(parent_end);
            let enter = |_: &Channel| -> Result<()> {
                if ns_flags != 0 {
                    sys::setns(&pidfd, ns_flags).ctx(|| "joining the container's namespaces".into())?;
                }
                Ok(())
            };
            launch::stage1(&child_end, enter, |chan| {
                exec_process(chan, req, &console, seccomp_filter.as_ref())
            })
        }
        Fork::Parent(pid) => pid,
    };
    drop(child_end);
    let reap = |pid: i32| {
        // SAFETY: kill(2) takes integers only.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    };
    let setup = (|| -> Result<(i32, Option<OwnedFd>)> {
        if !born_in_cgroup {
            cgroup.add_process(stage1)?;
        }
        parent_end.send(&Msg::Go, None)?;
        let report = sync::receive_setup(
            &parent_end,
            |_| {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
            },
            // An exec'd process runs no hooks and never asks.
            |_| Err(Error::Init("an exec'd process asked for hooks".into())),
            reap,
        )?;
        let (pid, pty, seccomp_listener) = (report.pid, report.pty, report.seccomp_listener);
        if let Some(fd) = seccomp_listener {
            let sc = bundle.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
            if let Err(e) = container::send_seccomp_listener(sc, &fd, &st, pid) {
                reap(pid);
                return Err(e);
            }
        }
        Ok((pid, pty))
    })();
    let (pid, pty) = match setup {
        Ok(v) => v,
        Err(e) => {
            reap(stage1);
            return Err(e);
        }
    };
    if let Some(p) = &req.opts.pid_file {
        container::write_pid_file(p, pid)?;
    }
    parent_end.send(&Msg::Start, None)?;
    match sigfd {
        None => Ok(0),
        Some(sigfd) => {
            let code = container::supervise(pid, &sigfd, pty.as_ref())?;
            if let Some(e) = exec_failure(&parent_end) {
                return Err(e);
            }
            Ok(code)
        }
    }
}

/// An error the process reported after `Start` (its exec failed), if any.
pub fn exec_failure(chan: &Channel) -> Option<Error> {
    let _ = nix::fcntl::fcntl(chan, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    match chan.recv() {
        Ok((Msg::Error(e), _)) => Some(Error::Init(e)),
        _ => None,
    }
}

fn exec_process(
    chan: &Channel,
    req: &ExecRequest,
    console: &launch::Console,
    filter: Option<&seccomp::Filter>,
) -> Result<Never> {
    let p = &req.process;
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    launch::attach_terminal(p, console, chan)?;
    let ctx = launch::Context { process: p, seccomp: filter, preserve_fds: req.opts.preserve_fds, field_prefix: "" };
    let prepared = launch::prepare(&ctx, chan)?;
    chan.expect(&Msg::Start)?;
    Err(launch::finish(&ctx, prepared))
}
