//! `exec`: run another process in a running container. It joins all of the init's namespaces at
//! once through a pidfd, joins the cgroup, and takes its defaults (environment, capabilities,
//! no_new_privs, seccomp) from the container's config, as runc does.

use crate::bundle::Bundle;
use crate::container::{self, CreateOptions};
use crate::error::{Error, Result, SysContext};
use crate::launch::{self, Never};
use crate::namespaces;
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
    /// The process description (from [`merge_process`] or [`process_from_config`]).
    pub process: Process,
    /// Return after starting it (`--detach`).
    pub detach: bool,
    /// Options shared with create (console socket, pid file, preserved fds).
    pub opts: CreateOptions,
    /// A cgroup below the container's to run the process in (`--cgroup`); it must exist.
    pub sub_cgroup: Option<String>,
    /// Exec into a paused container too (`--ignore-paused`).
    pub ignore_paused: bool,
}

/// The fields an exec's process description inherits from the container's `process` when it
/// leaves them out, as runc's shim and `runc exec --process` do. Everything else (user, env,
/// cwd, terminal) is the exec's own. `noNewPrivileges` is inherited too: runc reads an absent
/// value as false, which would let an exec of a container that asked for it gain privileges.
const INHERITED: [&str; 8] = [
    "capabilities",
    "apparmorProfile",
    "selinuxLabel",
    "rlimits",
    "ioPriority",
    "scheduler",
    "execCPUAffinity",
    "noNewPrivileges",
];

fn absent(v: Option<&serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Builds an exec's process from its JSON description (`exec --process FILE`, containerd's
/// `Exec`), filling the [`INHERITED`] fields it leaves out from the container's `process`.
/// `source` names the description in errors.
pub fn merge_process(json: &[u8], config: Option<&Process>, source: &str) -> Result<Process> {
    let mut v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| Error::Invalid(format!("{source}: not a JSON process description: {e}")))?;
    let obj = v.as_object_mut().ok_or_else(|| Error::Invalid(format!("{source}: not a JSON object")))?;
    let base = config.map(serde_json::to_value).transpose().map_err(|e| Error::Invalid(e.to_string()))?;
    // runc's default: a description without a user runs as root.
    obj.entry("user").or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
    for key in INHERITED {
        if absent(obj.get(key))
            && let Some(inherited) = base.as_ref().and_then(|b| b.get(key)).filter(|x| !x.is_null())
        {
            obj.insert(key.to_string(), inherited.clone());
        }
    }
    to_process(v, source)
}

/// How `exec` without `--process` changes the container's `process`, flag by flag (runc's).
#[derive(Debug, Default, Clone)]
pub struct ExecOverrides {
    /// The program and its arguments.
    pub args: Vec<String>,
    /// `--cwd` (else the config's).
    pub cwd: Option<String>,
    /// `-e KEY=VALUE`, over the config's variables.
    pub env: Vec<String>,
    /// `-t`.
    pub tty: bool,
    /// `-u UID[:GID]`: the gid stays the config's unless given.
    pub user: Option<(u32, Option<u32>)>,
    /// `-g`: added to the config's additional groups.
    pub additional_gids: Vec<u32>,
    /// `--cap`: added to the bounding, effective and permitted sets.
    pub caps: Vec<String>,
    /// `--no-new-privs` when given.
    pub no_new_privs: Option<bool>,
    /// `--apparmor`.
    pub apparmor: Option<String>,
    /// `--process-label`.
    pub process_label: Option<String>,
}

/// Builds an exec's process from the container's `process` and the command line, as runc does.
pub fn process_from_config(config: &Process, o: &ExecOverrides) -> Result<Process> {
    use serde_json::{Value, json};
    let mut v = serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?;
    if o.args.is_empty() {
        return Err(Error::Invalid("exec: give a command (or --process)".into()));
    }
    v["args"] = json!(o.args);
    v["terminal"] = json!(o.tty);
    if let Some(cwd) = &o.cwd {
        v["cwd"] = json!(cwd);
    }
    let mut env: Vec<Value> = v["env"].as_array().cloned().unwrap_or_default();
    env.extend(o.env.iter().map(|e| json!(e)));
    v["env"] = Value::Array(env);
    if let Some((uid, gid)) = o.user {
        v["user"]["uid"] = json!(uid);
        if let Some(g) = gid {
            v["user"]["gid"] = json!(g);
        }
    }
    if !o.additional_gids.is_empty() {
        let mut gids: Vec<Value> = v["user"]["additionalGids"].as_array().cloned().unwrap_or_default();
        gids.extend(o.additional_gids.iter().map(|g| json!(g)));
        v["user"]["additionalGids"] = Value::Array(gids);
    }
    for c in &o.caps {
        let name =
            if c.starts_with("CAP_") { c.to_ascii_uppercase() } else { format!("CAP_{}", c.to_ascii_uppercase()) };
        if v["capabilities"].is_null() {
            v["capabilities"] = json!({});
        }
        // Never the inheritable set (runc's GHSA-f3fp-gc8g-vw66): a process must not pass
        // capabilities on through execve of files with capabilities.
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut v["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            if let Some(a) = list.as_array_mut()
                && !a.iter().any(|x| x == &json!(name))
            {
                a.push(json!(name));
            }
        }
    }
    if let Some(n) = o.no_new_privs {
        v["noNewPrivileges"] = json!(n);
    }
    if let Some(a) = o.apparmor.as_ref().filter(|a| !a.is_empty()) {
        v["apparmorProfile"] = json!(a);
    }
    if let Some(l) = o.process_label.as_ref().filter(|l| !l.is_empty()) {
        v["selinuxLabel"] = json!(l);
    }
    to_process(v, "exec")
}

fn to_process(v: serde_json::Value, source: &str) -> Result<Process> {
    let p: Process = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Error::Invalid(format!("{source}: {path}: {}", e.into_inner()))
    })?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Invalid(format!("{source}: args: must name the program to run")));
    }
    if !p.cwd().is_absolute() {
        return Err(Error::Invalid(format!("{source}: cwd: {} is not an absolute path", p.cwd().display())));
    }
    Ok(p)
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
    match s {
        Status::Running | Status::Created => {}
        Status::Paused if req.ignore_paused => {}
        Status::Paused => {
            return Err(Error::WrongState {
                id: id.into(),
                status: s.to_string(),
                action: "exec in it (resume it first, or use --ignore-paused)",
            });
        }
        _ => {
            return Err(Error::WrongState { id: id.into(), status: s.to_string(), action: "exec in it" });
        }
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
    let cgroup = Cgroup::open(exec_cgroup(&st.cgroup_path, req.sub_cgroup.as_deref())?);
    // execCPUAffinity.initial: where the process starts, before it is in the container's
    // cgroup (this runtime process is short-lived; its children inherit the affinity).
    if let Some(initial) =
        req.process.exec_cpu_affinity().as_ref().and_then(|a| a.initial().as_deref()).filter(|l| !l.is_empty())
    {
        crate::scheduling::apply_cpu_affinity(Some(initial), "execCPUAffinity.initial")?;
    }
    crate::lsm::check_labels(req.process.apparmor_profile().as_deref(), req.process.selinux_label().as_deref(), None)
        .map_err(|(field, reason)| Error::Invalid(format!("exec: {field}: {reason}")))?;
    crate::scheduling::check_process(&req.process)
        .map_err(|(field, reason)| Error::Invalid(format!("exec: {field}: {reason}")))?;
    let (forked, born_in_cgroup) = container::fork_in(&cgroup)?;
    let stage1 = match forked {
        Fork::Child => {
            drop(parent_end);
            let enter = |chan: &Channel| -> Result<()> {
                chan.expect(&Msg::Go)?;
                if ns_flags != 0 {
                    sys::setns(&pidfd, ns_flags).ctx(|| "joining the container's namespaces".into())?;
                }
                Ok(())
            };
            let keyring = if st.no_new_keyring { launch::Keyring::Keep } else { launch::Keyring::Join };
            let linux = bundle.spec.linux().as_ref();
            let ctx = launch::Context {
                container_id: id,
                keyring,
                personality: linux.and_then(|l| l.personality().as_ref()),
                memory_policy: linux.and_then(|l| l.memory_policy().as_ref()),
                process: &req.process,
                seccomp: seccomp_filter.as_ref(),
                preserve_fds: req.opts.preserve_fds,
                field_prefix: "",
            };
            launch::stage1(&child_end, enter, |chan, ()| exec_process(chan, &ctx, &console))
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
    if let Some(sock) = &req.opts.pidfd_socket {
        container::send_pidfd(sock, pid)?;
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

/// The cgroup an exec'd process joins: the container's, or an existing one below it
/// (`--cgroup`, which may not climb out of it).
fn exec_cgroup(container: &std::path::Path, sub: Option<&str>) -> Result<std::path::PathBuf> {
    let Some(sub) = sub else { return Ok(container.to_path_buf()) };
    let sub = sub.strip_prefix(':').unwrap_or(sub);
    if sub.contains(':') {
        return Err(Error::Invalid(format!("--cgroup {sub:?}: cgroup v2 takes one path, without a controller prefix")));
    }
    let rel = crate::bundle::normalize_in_root(std::path::Path::new(sub))
        .ok_or_else(|| Error::Invalid(format!("--cgroup {sub:?} is not a sub-cgroup of the container's")))?;
    let dir = container.join(rel);
    if !dir.join("cgroup.procs").exists() {
        return Err(Error::Invalid(format!("--cgroup {sub:?}: {} does not exist", dir.display())));
    }
    Ok(dir)
}

/// An error the process reported after `Start` (its exec failed), if any.
pub fn exec_failure(chan: &Channel) -> Option<Error> {
    let _ = nix::fcntl::fcntl(chan, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    match chan.recv() {
        Ok((Msg::Error(e), _)) => Some(Error::Init(e)),
        _ => None,
    }
}

fn exec_process(chan: &Channel, ctx: &launch::Context<'_>, console: &launch::Console) -> Result<Never> {
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    launch::attach_terminal(ctx.process, console, chan, false)?;
    let prepared = launch::prepare(ctx, chan)?;
    chan.expect(&Msg::Start)?;
    Err(launch::finish(ctx, prepared))
}
