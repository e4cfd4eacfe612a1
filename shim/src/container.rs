//! Container lifecycle: create, start, state, kill, pause/resume, delete, and the foreground
//! `run` that relays signals and the terminal until the container exits.

use crate::bundle::Bundle;
use crate::error::{Error, Result, SysContext};
use crate::init::{self, Console, Gate, InitArgs};
use crate::namespaces::Plan;
use crate::state::{self, ContainerState, OciState, StateRoot, Status};
use crate::sync::{self, Channel, Msg};
use crate::sys::{self, Fork};
use cgroups::{Cgroup, Hierarchy};
use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const START_SOCKET: &str = "start.sock";

/// Options of `create` and `run`.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    /// Where a terminal's master is sent (`--console-socket`).
    pub console_socket: Option<PathBuf>,
    /// Extra descriptors passed to the program (`--preserve-fds`).
    pub preserve_fds: u32,
    /// Where to write the init's pid (`--pid-file`).
    pub pid_file: Option<PathBuf>,
    /// Keep the runtime's session keyring instead of a new one (`--no-new-keyring`).
    pub no_new_keyring: bool,
    /// Where a pidfd of the process is sent (`--pidfd-socket`).
    pub pidfd_socket: Option<PathBuf>,
    /// The systemd cgroup driver (`--systemd-cgroup`): the cgroup is a transient scope.
    pub systemd_cgroup: bool,
}

/// A container that has been created: its state and, in the process that created it, the
/// channel to its init (for `run`) and the terminal master to relay.
#[derive(Debug)]
pub struct Created {
    /// The recorded state.
    pub state: ContainerState,
    /// The setup channel (open only in the creating process).
    pub channel: Option<Channel>,
    /// The pty master, when the runtime relays the terminal.
    pub pty_master: Option<OwnedFd>,
}

/// Times the steps of a container's start for `--debug`: where strata's time goes, each step's
/// share against the whole (`strata --debug run`). Costs one clock read per step, and nothing
/// is formatted unless debug logging is on.
pub(crate) struct Steps {
    first: Instant,
    last: Instant,
    on: bool,
}

impl Steps {
    pub(crate) fn new() -> Steps {
        let now = Instant::now();
        Steps { first: now, last: now, on: tracing::enabled!(tracing::Level::DEBUG) }
    }

    pub(crate) fn done(&mut self, step: &str) {
        if self.on {
            let now = Instant::now();
            tracing::debug!(
                "step {step}: {:.3} ms (at {:.3} ms)",
                (now - self.last).as_secs_f64() * 1e3,
                (now - self.first).as_secs_f64() * 1e3
            );
            self.last = now;
        }
    }
}

/// Removes what a failed `create` made, in reverse order, unless disarmed.
struct CreateGuard<'a> {
    root: &'a StateRoot,
    id: String,
    cgroup: Option<Cgroup>,
    /// The scope unit started for the cgroup (systemd driver).
    unit: Option<String>,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            // SAFETY: kill(2) takes integers only.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(*pid), None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill_all();
            if let Some(unit) = &self.unit {
                let _ = cgroups::systemd::Manager::connect().and_then(|mut m| m.stop_unit(unit));
            }
            let _ = cg.delete();
            if let Some(parent) = cg.path().parent().filter(|p| p.file_name().is_some_and(|n| n == "strata")) {
                let _ = std::fs::remove_dir(parent);
            }
        }
        let _ = self.root.remove(&self.id);
    }
}

/// Creates the container's cgroup. The shared `strata/` parent is removed by the `delete` of
/// the last container in it, which can race with a `create` next to it: a parent that vanished
/// between two steps is simply made again.
fn create_cgroup(h: &Hierarchy, rel: &Path, r: Option<&oci_spec::runtime::LinuxResources>) -> Result<Cgroup> {
    let mut attempt = 0;
    loop {
        match Cgroup::create(h, rel, r) {
            Err(cgroups::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound && attempt < 5 => {
                attempt += 1;
            }
            other => return Ok(other?),
        }
    }
}

/// Splits `linux.resources` into everything but the device rules, and the device rules: the
/// config's followed by the standard list every container gets ([`crate::spec::standard_device_rules`]),
/// as runc does — a config that only denies everything (CRI's) still has /dev/null, the
/// terminals and the other standard devices.
fn split_device_rules(
    r: Option<&oci_spec::runtime::LinuxResources>,
) -> (Option<oci_spec::runtime::LinuxResources>, oci_spec::runtime::LinuxResources) {
    let mut rules: Vec<_> = r.and_then(|r| r.devices().clone()).unwrap_or_default();
    if rules.is_empty() {
        // No rules is runc's "deny by default".
        rules = serde_json::from_value(crate::spec::default_device_rules()).unwrap_or_default();
    }
    rules.extend(crate::spec::standard_device_rules());
    let rest = r.map(|r| {
        let mut rest = r.clone();
        rest.set_devices(None);
        rest
    });
    let mut only = oci_spec::runtime::LinuxResources::default();
    only.set_devices(Some(rules));
    (rest, only)
}

/// Forks the stage-1 process of a container (or of an exec) into `cgroup`: born there with
/// `CLONE_INTO_CGROUP` where the kernel allows it (`true`), else forked where the runtime is
/// (`false`), for the caller to move it with [`Cgroup::add_process`].
pub(crate) fn fork_in(cgroup: &Cgroup) -> Result<(Fork, bool)> {
    let dir = std::fs::File::open(cgroup.path());
    if let Ok(dir) = &dir
        && let Some(f) = sys::fork_into_cgroup(std::os::fd::AsFd::as_fd(dir)).ctx(|| "clone3".into())?
    {
        return Ok((f, true));
    }
    Ok((sys::fork(0).ctx(|| "fork".into())?, false))
}

/// Where the cgroup of container `id` is, from `linux.cgroupsPath` (`None`: absent).
fn cgroup_location_of(h: &Hierarchy, cgroups_path: Option<&str>, id: &str) -> Result<PathBuf> {
    match cgroups_path {
        Some(p) => Ok(h.resolve(p)?),
        None => Ok(h.resolve(&format!("strata/{id}"))?),
    }
}

/// `linux.cgroupsPath` of the bundle's config, read without the whole config: the shim daemon
/// calls this, and parsing a full config would link (and map) the config reader into it.
fn bundle_cgroups_path(bundle_dir: &Path) -> Option<Option<String>> {
    #[derive(serde::Deserialize)]
    struct Config {
        linux: Option<Linux>,
    }
    #[derive(serde::Deserialize)]
    struct Linux {
        #[serde(rename = "cgroupsPath")]
        cgroups_path: Option<String>,
    }
    let bytes = std::fs::read(bundle_dir.join("config.json")).ok()?;
    let config: Config = serde_json::from_slice(&bytes).ok()?;
    Some(config.linux.and_then(|l| l.cgroups_path))
}

/// Creates container `id` from `bundle`. Returns when the init waits for `start` (with
/// `gate_channel`, for `run`, the init waits on the returned channel instead).
pub fn create(
    root: &StateRoot,
    id: &str,
    bundle: &Bundle,
    opts: &CreateOptions,
    gate_channel: bool,
) -> Result<Created> {
    let mut steps = Steps::new();
    state::validate_id(id)?;
    let spec = &bundle.spec;
    let linux = spec.linux().as_ref().ok_or_else(|| Error::Invalid("linux: missing".into()))?;
    let hierarchy = Hierarchy::detect()?;
    if let Some(r) = linux.resources() {
        hierarchy.check_resources(r)?;
    }
    let missing = crate::process::ungrantable(spec.process().as_ref().and_then(|p| p.capabilities().as_ref()));
    if !missing.is_empty() {
        tracing::warn!("process.capabilities: this runtime cannot grant {}: skipped", missing.join(", "));
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(path), true) => Console::Socket(crate::tty::connect_console_socket(path)?),
        (None, true) if gate_channel => Console::Relay,
        (None, true) => {
            return Err(Error::Invalid(
                "process.terminal is true: --console-socket is required (or run in the foreground)".into(),
            ));
        }
        (_, false) => Console::None,
    };

    let cgroups_path = linux.cgroups_path().as_ref().map(|p| p.to_string_lossy().into_owned());
    // Device rules are applied once the init has made /dev (as runc does): the program also
    // governs mknod, and the init creates the default nodes inside the cgroup.
    let (resources, device_rules) = split_device_rules(linux.resources().as_ref());
    // The systemd driver's scope is started once stage 1 exists (systemd moves it in); the
    // cgroupfs driver's cgroup is made first, so that stage 1 is born in it.
    let scope = if opts.systemd_cgroup {
        let default = format!("system.slice:strata:{id}");
        Some(cgroups::systemd::SystemdPath::parse(cgroups_path.as_deref().unwrap_or(&default))?)
    } else {
        None
    };
    let cg_path = match &scope {
        Some(path) => hierarchy.mount().join(path.cgroup_rel()),
        None => hierarchy.mount().join(cgroup_location_of(&hierarchy, cgroups_path.as_deref(), id)?),
    };
    // The record of this creation goes in with the state directory, before anything is made:
    // what a create killed half-way leaves is found from it and removed.
    let record = state::Creating::by_this_process(cg_path.clone(), scope.as_ref().map(|p| p.unit.clone()));
    let dir = match root.create_dir(id, &record) {
        Err(Error::Exists(_)) if remove_abandoned(root, id)? => root.create_dir(id, &record)?,
        other => other?,
    };
    let mut guard = CreateGuard { root, id: id.to_string(), cgroup: None, unit: None, pids: Vec::new(), armed: true };
    let cgroup = match &scope {
        Some(_) => Cgroup::open(cg_path),
        None => {
            let rel = cg_path.strip_prefix(hierarchy.mount()).unwrap_or(&cg_path).to_path_buf();
            let cgroup = create_cgroup(&hierarchy, &rel, resources.as_ref())?;
            guard.cgroup = Some(cgroup.clone());
            cgroup
        }
    };

    steps.done("checks, state directory, cgroup");
    crate::fault::point("cli", "cgroup");
    let gate = if gate_channel { Gate::Channel } else { Gate::Socket(listen_start_socket(&dir)?) };
    let (parent_end, child_end) = sync::pair()?;
    let args = InitArgs {
        bundle,
        cgroup_dir: cgroup.path().to_path_buf(),
        gate,
        console,
        preserve_fds: opts.preserve_fds,
        seccomp: bundle.seccomp.clone(),
        id,
        no_new_keyring: opts.no_new_keyring,
    };
    let (forked, born_in_cgroup) =
        if scope.is_some() { (sys::fork(0).ctx(|| "fork".into())?, true) } else { fork_in(&cgroup)? };
    let stage1 = match forked {
        Fork::Child => {
            drop(parent_end);
            init::stage1(args, child_end)
        }
        Fork::Parent(pid) => pid,
    };
    drop(child_end);
    drop(args);
    guard.pids.push(stage1);
    steps.done("fork of stage 1");
    crate::fault::point("cli", "forked");
    if let Some(path) = scope {
        // connected only now, so that no process of the container inherits the connection
        let mut manager = cgroups::systemd::Manager::connect()?;
        let properties = match &resources {
            Some(r) => cgroups::systemd::resource_properties(r)?,
            None => Vec::new(),
        };
        guard.unit = Some(path.unit.clone());
        guard.cgroup = Some(cgroup.clone());
        manager.start_scope(&path, stage1, &format!("strata container {id}"), properties)?;
        if let Some(r) = &resources {
            cgroup.apply(r)?;
        }
    }

    if !born_in_cgroup {
        cgroup.add_process(stage1)?;
    }
    if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        crate::procfs::ProcFs::open()?
            .write(Path::new(&format!("{stage1}/oom_score_adj")), adj.to_string().as_bytes())
            .map_err(|e| Error::Init(format!("process.oomScoreAdj: writing {adj}: {e}")))?;
    }
    let plan = Plan::from_spec(linux.namespaces().as_deref().unwrap_or_default());
    // Idmapped mounts are made here, where the privilege is (see `crate::idmap`): before the
    // first `Go`, or, when they take the container's new user namespace, once it has its maps.
    let idmapped = crate::idmap::plan(spec, &bundle.dir);
    let send_mounts = |mounts: Vec<(usize, OwnedFd)>| -> Result<()> {
        for (i, fd) in mounts {
            parent_end.send(&Msg::MountFd(i), Some(fd.as_raw_fd()))?;
        }
        Ok(())
    };
    if !plan.new_user && !idmapped.is_empty() {
        let joined = plan
            .join
            .iter()
            .find(|(t, _)| *t == oci_spec::runtime::LinuxNamespaceType::User)
            .map(|(_, p)| std::fs::File::open(p).map(OwnedFd::from).ctx(|| format!("opening {}", p.display())))
            .transpose()?;
        send_mounts(crate::idmap::make(&idmapped, joined.as_ref())?)?;
    }
    parent_end.send(&Msg::Go, None)?;
    if plan.new_user {
        parent_end.expect(&Msg::UsernsReady)?;
        write_id_maps(stage1, bundle)?;
        if !idmapped.is_empty() {
            let ns: OwnedFd = std::fs::File::open(format!("/proc/{stage1}/ns/user"))
                .ctx(|| "opening the container's user namespace".into())?
                .into();
            send_mounts(crate::idmap::make(&idmapped, Some(&ns))?)?;
        }
        parent_end.send(&Msg::Go, None)?;
    }
    steps.done("namespaces entered (id maps, idmapped mounts)");
    crate::fault::point("cli", "namespaces");
    let hooks = spec.hooks().as_ref();
    // prestart and createRuntime, when the init has mounted everything: in the runtime's
    // namespaces, with the state the init then uses for its own hooks.
    let run_create_hooks = |pid: i32| -> Result<String> {
        let annotations = spec.annotations().clone().unwrap_or_default();
        let bytes = crate::hooks::state_document(spec.version(), id, "creating", pid, &bundle.dir, &annotations);
        crate::hooks::run(hooks, crate::hooks::Kind::Prestart, &bytes)?;
        crate::hooks::run(hooks, crate::hooks::Kind::CreateRuntime, &bytes)?;
        String::from_utf8(bytes).map_err(|e| Error::Invalid(format!("hook state: {e}")))
    };
    let report = sync::receive_setup(
        &parent_end,
        |pid| {
            guard.pids.insert(0, pid);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(stage1), None);
            guard.pids.retain(|p| *p != stage1);
        },
        run_create_hooks,
        |_| {},
    )?;
    let (init_pid, pty_master, seccomp_listener) = (report.pid, report.pty, report.seccomp_listener);
    steps.done("init set up in the container (mounts, devices, pivot_root, hooks)");
    crate::fault::point("cli", "init-ready");
    if let Some(devices) = linux.net_devices().as_ref().filter(|d| !d.is_empty()) {
        let netns: OwnedFd = std::fs::File::open(format!("/proc/{init_pid}/ns/net"))
            .ctx(|| "opening the container's network namespace".into())?
            .into();
        crate::netdev::move_devices(devices, &netns)?;
    }
    cgroup.apply(&device_rules)?;
    steps.done("device program");
    crate::fault::point("cli", "devices");
    let state = ContainerState {
        oci_version: spec.version().clone(),
        id: id.to_string(),
        pid: init_pid,
        pid_start_time: state::process_start_time(init_pid)
            .ok_or_else(|| Error::Init("the container's init exited during setup".into()))?,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        cgroup_path: cgroup.path().to_path_buf(),
        created: state::now_rfc3339(),
        owner: owner_name(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        started: false,
        hooks: spec.hooks().clone(),
        no_new_keyring: opts.no_new_keyring,
        resources: resources.clone(),
        systemd_unit: guard.unit.clone(),
    };
    root.save(&state)?;
    if let Some(fd) = seccomp_listener {
        send_seccomp_listener(linux.seccomp().as_ref(), &fd, &state, init_pid)?;
    }
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, init_pid)?;
    }
    if let Some(sock) = &opts.pidfd_socket {
        send_pidfd(sock, init_pid)?;
    }
    guard.armed = false;
    steps.done("state saved");
    crate::fault::point("cli", "saved");
    Ok(Created { state, channel: Some(parent_end), pty_master })
}

/// Removes what a `create` that was killed half-way left of container `id` (its state was never
/// saved): whatever runs in its cgroup is killed, and the cgroup, the scope unit and the state
/// directory go. Returns whether there was such a leftover; a creation whose process still
/// runs is left alone (`false`), as is a container whose state was saved.
pub fn remove_abandoned(root: &StateRoot, id: &str) -> Result<bool> {
    let dir = root.container_dir(id)?;
    if !dir.is_dir() || root.load(id).is_ok() {
        return Ok(false);
    }
    let record = root.load_creating(id)?;
    if let Some(record) = &record {
        if record.creator_alive() {
            return Ok(false);
        }
        tracing::debug!("container {id}: removing what its killed create (pid {}) left", record.pid);
        let cg = Cgroup::open(record.cgroup_path.clone());
        if cg.path().exists() {
            cg.kill_all()?;
            wait_empty(&cg, Duration::from_secs(10))?;
        }
        if let Some(unit) = &record.systemd_unit {
            // The scope may never have started: nothing to stop then.
            let _ = cgroups::systemd::Manager::connect().and_then(|mut m| m.stop_unit(unit));
        }
        if cg.path().exists() {
            cg.delete()?;
        }
        if let Some(parent) = cg.path().parent().filter(|p| p.file_name().is_some_and(|n| n == "strata")) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    // Without a record (a directory no create of this version makes) there is nothing else to find.
    root.remove(id)?;
    Ok(true)
}

/// The caller's user name from /etc/passwd (read directly: NSS modules are slow to load and
/// the runtime's state needs only the name), or the uid.
fn owner_name() -> String {
    let uid = nix::unistd::geteuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Passes a seccomp user-notification listener to `linux.seccomp.listenerPath` with the
/// runtime-spec "container process state" document, as runc and crun do.
pub fn send_seccomp_listener(
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    listener: &OwnedFd,
    st: &ContainerState,
    pid: i32,
) -> Result<()> {
    let path = seccomp
        .and_then(|s| s.listener_path().clone())
        .ok_or_else(|| Error::Invalid("linux.seccomp.listenerPath: SCMP_ACT_NOTIFY needs a listener path".into()))?;
    let doc = serde_json::json!({
        "ociVersion": st.oci_version,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": seccomp.and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
        "state": {
            "ociVersion": st.oci_version,
            "id": st.id,
            "status": "creating",
            "pid": st.pid,
            "bundle": st.bundle,
            "annotations": st.annotations,
        }
    });
    let sock = std::os::unix::net::UnixStream::connect(&path)
        .ctx(|| format!("linux.seccomp.listenerPath: connecting to {}", path.display()))?;
    let data = doc.to_string();
    let iov = [std::io::IoSlice::new(data.as_bytes())];
    let fds = [listener.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .ctx(|| format!("linux.seccomp.listenerPath: sending to {}", path.display()))?;
    Ok(())
}

/// Sends a pidfd of `pid` to the Unix socket at `path` (`--pidfd-socket`), as runc does.
pub fn send_pidfd(path: &Path, pid: i32) -> Result<()> {
    let pidfd = sys::pidfd_open(pid).ctx(|| format!("pidfd_open({pid})"))?;
    let sock = std::os::unix::net::UnixStream::connect(path)
        .ctx(|| format!("--pidfd-socket: connecting to {}", path.display()))?;
    let iov = [std::io::IoSlice::new(b"pidfd")];
    let fds = [pidfd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .ctx(|| format!("--pidfd-socket: sending to {}", path.display()))?;
    Ok(())
}

/// Writes a pid file atomically, as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("strata-tmp");
    std::fs::write(&tmp, pid.to_string()).ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("writing {}", path.display()))
}

fn write_id_maps(pid: i32, bundle: &Bundle) -> Result<()> {
    let linux = bundle.spec.linux().as_ref().ok_or_else(|| Error::Invalid("linux: missing".into()))?;
    let fmt = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let proc = crate::procfs::ProcFs::open()?;
    let file = |name: &str| PathBuf::from(format!("{pid}/{name}"));
    if !nix::unistd::geteuid().is_root() {
        // Without privilege the kernel only accepts a gid map after setgroups is denied.
        proc.write(&file("setgroups"), b"deny")?;
    }
    proc.write(&file("uid_map"), fmt(linux.uid_mappings()).as_bytes())
        .map_err(|e| Error::Init(format!("linux.uidMappings: {e}")))?;
    proc.write(&file("gid_map"), fmt(linux.gid_mappings()).as_bytes())
        .map_err(|e| Error::Init(format!("linux.gidMappings: {e}")))?;
    Ok(())
}

/// Binds the start gate socket in the container's state directory. The path is bound relative
/// to the directory so that long ids do not hit the 108-byte socket path limit.
fn listen_start_socket(dir: &Path) -> Result<OwnedFd> {
    let fd = nix::sys::socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
        .ctx(|| "start socket".into())?;
    with_gate_addr(dir, |addr| {
        nix::sys::socket::bind(fd.as_raw_fd(), addr).ctx(|| format!("binding {}/{START_SOCKET}", dir.display()))
    })?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(4).unwrap_or(nix::sys::socket::Backlog::MAXCONN))
        .ctx(|| "listening on the start socket".into())?;
    Ok(fd)
}

/// Runs `f` with the address of the start gate socket in directory `dir`, named through a
/// descriptor of the directory (`/proc/self/fd/N/start.sock`): long ids do not hit the
/// 108-byte socket path limit, and the process's working directory (which may be gone, as a
/// shim daemon's bundle may be) is neither needed nor changed.
fn with_gate_addr<T>(dir: &Path, f: impl FnOnce(&UnixAddr) -> Result<T>) -> Result<T> {
    let dirfd = nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("opening {}", dir.display()))?;
    let addr = UnixAddr::new(format!("/proc/self/fd/{}/{START_SOCKET}", dirfd.as_raw_fd()).as_str())
        .ctx(|| "start socket address".into())?;
    f(&addr)
}

/// The live status of a recorded container.
pub fn status(st: &ContainerState) -> Status {
    if state::process_start_time(st.pid) != Some(st.pid_start_time) {
        return Status::Stopped;
    }
    if !st.started {
        return Status::Created;
    }
    if Cgroup::open(st.cgroup_path.clone()).is_frozen().unwrap_or(false) {
        return Status::Paused;
    }
    Status::Running
}

/// The runtime-spec state document of container `id`.
pub fn oci_state(root: &StateRoot, id: &str) -> Result<OciState> {
    let st = root.load(id)?;
    let status = status(&st);
    Ok(OciState {
        oci_version: st.oci_version,
        id: st.id,
        status,
        pid: if status == Status::Stopped { 0 } else { st.pid },
        bundle: st.bundle,
        rootfs: st.rootfs,
        created: st.created,
        owner: st.owner,
        annotations: st.annotations,
    })
}

/// Starts a created container: connects to its gate and waits until the program is executed,
/// then runs the `poststart` hooks.
pub fn start(root: &StateRoot, id: &str) -> Result<()> {
    let gate = open_gate(root, id)?;
    let st = close_gate(root, id, &gate)?;
    crate::hooks::run_or_warn(st.hooks.as_ref(), crate::hooks::Kind::Poststart, || st.hook_state("running"));
    Ok(())
}

/// The first half of [`start`]: checks that the container is created, connects to its start
/// gate and sends the start byte. The init answers on the returned connection: it closes it
/// when it executes the program, or writes why it could not (a `startContainer` hook failed).
/// A caller that must not wait (the shim's loop) watches it for readability.
pub fn open_gate(root: &StateRoot, id: &str) -> Result<OwnedFd> {
    let st = root.load(id)?;
    let s = status(&st);
    if s != Status::Created {
        return Err(Error::WrongState {
            id: id.into(),
            status: s.to_string(),
            action: "start it (only a created container starts)",
        });
    }
    let dir = root.container_dir(id)?;
    let fd = nix::sys::socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
        .ctx(|| "start socket".into())?;
    with_gate_addr(&dir, |addr| {
        nix::sys::socket::connect(fd.as_raw_fd(), addr)
            .ctx(|| format!("connecting to {}/{START_SOCKET}", dir.display()))
    })?;
    nix::unistd::write(&fd, b"s").ctx(|| "sending start".into())?;
    Ok(fd)
}

/// The second half of [`start`]: reads the init's answer on the gate connection (waiting for
/// it unless the caller saw it readable) and records the container as started. Returns its
/// state, for the `poststart` hooks.
pub fn close_gate(root: &StateRoot, id: &str, gate: &OwnedFd) -> Result<ContainerState> {
    let mut why = [0u8; 4096];
    let n = loop {
        match nix::unistd::read(gate, &mut why) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.unwrap_or(0),
        }
    };
    let mut st = root.load(id)?;
    st.started = true;
    root.save(&st)?;
    let _ = std::fs::remove_file(root.container_dir(id)?.join(START_SOCKET));
    if n > 0 {
        return Err(Error::Init(String::from_utf8_lossy(&why[..n]).into_owned()));
    }
    Ok(st)
}

/// Sends `signal` to the init, or with `all` to every process in the container's cgroup.
pub fn kill(root: &StateRoot, id: &str, signal: i32, all: bool) -> Result<()> {
    let st = root.load(id)?;
    let s = status(&st);
    if s == Status::Stopped && !all {
        return Err(Error::WrongState { id: id.into(), status: s.to_string(), action: "send a signal" });
    }
    if all {
        let cg = Cgroup::open(st.cgroup_path.clone());
        if signal == libc::SIGKILL {
            // As runc: the kill is sent, not waited for (`delete` waits for the cgroup).
            return Ok(cg.kill_all_nowait()?);
        }
        for pid in cg.pids()? {
            // SAFETY: kill(2) takes plain integers (nix's Signal cannot name real-time
            // signals, which must reach the processes all the same).
            unsafe { libc::kill(pid, signal) };
        }
        return Ok(());
    }
    let pidfd = sys::pidfd_open(st.pid).ctx(|| format!("pidfd_open({})", st.pid))?;
    // The pidfd pins the process: re-check that it is still the container's init.
    if state::process_start_time(st.pid) != Some(st.pid_start_time) {
        return Err(Error::WrongState { id: id.into(), status: "stopped".into(), action: "send a signal" });
    }
    sys::pidfd_send_signal(&pidfd, signal).ctx(|| format!("sending signal {signal} to {}", st.pid))
}

/// Asks the kernel to freeze (`freeze`) or thaw the container, without waiting: the returned
/// cgroup's [`Cgroup::is_frozen`] tells when it is done.
pub fn request_freeze(root: &StateRoot, id: &str, freeze: bool) -> Result<Cgroup> {
    let st = root.load(id)?;
    let s = status(&st);
    let (want, action) = if freeze { (Status::Running, "pause it") } else { (Status::Paused, "resume it") };
    if s != want {
        return Err(Error::WrongState { id: id.into(), status: s.to_string(), action });
    }
    let cg = Cgroup::open(st.cgroup_path);
    cg.request_freeze(freeze)?;
    Ok(cg)
}

/// Freezes the container.
pub fn pause(root: &StateRoot, id: &str) -> Result<()> {
    let st = root.load(id)?;
    let s = status(&st);
    if s != Status::Running {
        return Err(Error::WrongState { id: id.into(), status: s.to_string(), action: "pause it" });
    }
    Ok(Cgroup::open(st.cgroup_path).freeze()?)
}

/// Thaws the container.
pub fn resume(root: &StateRoot, id: &str) -> Result<()> {
    let st = root.load(id)?;
    let s = status(&st);
    if s != Status::Paused {
        return Err(Error::WrongState { id: id.into(), status: s.to_string(), action: "resume it" });
    }
    Ok(Cgroup::open(st.cgroup_path).thaw()?)
}

/// Merges a resources update into the container's current resources: what the update sets
/// replaces what was there, what it leaves out stays (a period-only update keeps the quota, a
/// swap-only one keeps the memory limit it is computed against). Block I/O device lists are
/// merged by device; device rules never change (as with runc).
pub fn merge_resources(
    current: Option<&oci_spec::runtime::LinuxResources>,
    update: &oci_spec::runtime::LinuxResources,
) -> Result<oci_spec::runtime::LinuxResources> {
    fn merge(base: &mut serde_json::Value, change: &serde_json::Value, key: &str) {
        use serde_json::Value;
        match (base, change) {
            (_, Value::Null) => {}
            (Value::Object(b), Value::Object(c)) => {
                for (k, v) in c {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v, k);
                }
            }
            (Value::Array(b), Value::Array(c)) if key.ends_with("Device") => {
                for entry in c {
                    let same = |e: &Value| e.get("major") == entry.get("major") && e.get("minor") == entry.get("minor");
                    match b.iter_mut().find(|e| same(e)) {
                        Some(existing) => merge(existing, entry, ""),
                        None => b.push(entry.clone()),
                    }
                }
            }
            (b, c) => *b = c.clone(),
        }
    }
    let mut base = match current {
        Some(c) => serde_json::to_value(c).map_err(|e| Error::Invalid(e.to_string()))?,
        None => serde_json::json!({}),
    };
    let mut change = serde_json::to_value(update).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(o) = change.as_object_mut() {
        o.remove("devices");
    }
    merge(&mut base, &change, "");
    serde_json::from_value(base).map_err(|e| Error::Invalid(format!("merged resources: {e}")))
}

/// Changes the resources of a live container (`strata update`, the shim's `Update`), merged
/// with its current ones (see [`merge_resources`]). The host must offer every controller asked
/// for; nothing is changed otherwise.
pub fn update(root: &StateRoot, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let mut st = root.load(id)?;
    let s = status(&st);
    if s == Status::Stopped {
        return Err(Error::WrongState { id: id.into(), status: s.to_string(), action: "update it" });
    }
    let mut merged = merge_resources(st.resources.as_ref(), resources)?;
    Hierarchy::detect()?.check_resources(&merged)?;
    // Device rules stay as the container was created with them.
    merged.set_devices(None);
    if let Some(unit) = &st.systemd_unit {
        // systemd re-applies its properties on reload: they must hold the new values too
        cgroups::systemd::Manager::connect()?.set_properties(unit, cgroups::systemd::resource_properties(&merged)?)?;
    }
    Cgroup::open(st.cgroup_path.clone()).update(&merged)?;
    st.resources = Some(merged);
    root.save(&st)
}

/// The pids in the container's cgroup.
pub fn pids(root: &StateRoot, id: &str) -> Result<Vec<i32>> {
    let st = root.load(id)?;
    Ok(Cgroup::open(st.cgroup_path).pids()?)
}

/// Deletes a container: refuses a running one unless `force`, which kills it first. Leaves no
/// process, cgroup or state behind. Runs the `poststop` hooks.
pub fn delete(root: &StateRoot, id: &str, force: bool) -> Result<()> {
    let st = match delete_quietly(root, id, force) {
        Err(Error::NotFound(_)) if remove_abandoned(root, id)? => return Ok(()),
        other => other?,
    };
    crate::hooks::run_or_warn(st.hooks.as_ref(), crate::hooks::Kind::Poststop, || st.hook_state("stopped"));
    Ok(())
}

/// [`delete`] without the `poststop` hooks, for a caller that runs them itself (the shim,
/// which must not wait for them); returns the deleted container's state.
pub fn delete_quietly(root: &StateRoot, id: &str, force: bool) -> Result<ContainerState> {
    let st = match delete_begin(root, id, force)? {
        Deletion::Ready(st) => st,
        Deletion::Emptying { st, cgroup } => {
            wait_empty(&cgroup, Duration::from_secs(10))?;
            wait_gone(&st, Duration::from_secs(10));
            st
        }
    };
    delete_end(root, &st)?;
    Ok(st)
}

/// Where a deletion stands after [`delete_begin`]: finish it with [`delete_end`].
#[derive(Debug)]
pub enum Deletion {
    /// Nothing runs any more.
    Ready(ContainerState),
    /// Every process was sent SIGKILL; `cgroup` empties once they are dead.
    Emptying { st: ContainerState, cgroup: Cgroup },
}

/// The first half of a deletion, which never waits: checks the state and kills whatever still
/// runs in the container's cgroup (a created or, with `force`, running container; processes
/// a stopped init left behind).
pub fn delete_begin(root: &StateRoot, id: &str, force: bool) -> Result<Deletion> {
    let st = root.load(id)?;
    let s = status(&st);
    match s {
        Status::Stopped | Status::Created => {}
        _ if force => {}
        _ => {
            return Err(Error::WrongState {
                id: id.into(),
                status: s.to_string(),
                action: "delete it (stop it first, or use --force)",
            });
        }
    }
    let cg = Cgroup::open(st.cgroup_path.clone());
    if s == Status::Paused {
        // A frozen process takes its SIGKILL at once, but thawing lets the rest go on too.
        let _ = cg.request_freeze(false);
    }
    if s != Status::Stopped || (cg.path().exists() && cg.is_populated().unwrap_or(false)) {
        cg.kill_all_nowait()?;
        return Ok(Deletion::Emptying { st, cgroup: cg });
    }
    Ok(Deletion::Ready(st))
}

/// The second half: removes the cgroup (and the default `strata/` parent once it is empty)
/// and the state.
pub fn delete_end(root: &StateRoot, st: &ContainerState) -> Result<()> {
    let cg = Cgroup::open(st.cgroup_path.clone());
    if let Some(unit) = &st.systemd_unit {
        cgroups::systemd::Manager::connect()?.stop_unit(unit)?;
    }
    if cg.path().exists() {
        cg.delete()?;
    }
    if let Some(parent) = cg.path().parent().filter(|p| p.file_name().is_some_and(|n| n == "strata")) {
        let _ = std::fs::remove_dir(parent);
    }
    root.remove(&st.id)?;
    Ok(())
}

/// Waits until `cgroup` has no process left (SIGKILLing stragglers that raced in).
fn wait_empty(cgroup: &Cgroup, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut sleep = Duration::from_micros(200);
    while cgroup.path().exists() && cgroup.is_populated()? {
        if Instant::now() > deadline {
            return Err(cgroups::Error::KillTimeout {
                path: cgroup.path().to_path_buf(),
                remaining: cgroup.pids()?.len(),
            }
            .into());
        }
        cgroup.kill_all_nowait()?;
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(10));
    }
    Ok(())
}

/// Removes what a `create` stopped part-way left (its helper failed or was killed): the
/// container as [`delete`] would when its state was saved, else its state directory and the
/// cgroup `create` made for it (found from the bundle, as `create` finds it), with whatever
/// runs in it killed.
pub fn remove_leftovers(root: &StateRoot, id: &str, bundle_dir: &Path) -> Result<()> {
    match delete_quietly(root, id, true) {
        Ok(_) => return Ok(()),
        Err(Error::NotFound(_)) if remove_abandoned(root, id)? => return Ok(()),
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    if let Some(cgroups_path) = bundle_cgroups_path(bundle_dir)
        && let Ok(h) = Hierarchy::detect()
        && let Ok(rel) = cgroup_location_of(&h, cgroups_path.as_deref(), id)
    {
        let cg = Cgroup::open(h.mount().join(rel));
        if cg.path().exists() {
            let _ = cg.kill_all();
            let _ = cg.delete();
        }
    }
    if root.container_dir(id).is_ok_and(|d| d.exists()) {
        root.remove(id)?;
    }
    Ok(())
}

fn wait_gone(st: &ContainerState, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut sleep = Duration::from_micros(200);
    while state::process_start_time(st.pid) == Some(st.pid_start_time) && Instant::now() < deadline {
        // Reap it if it is our own child (run, or a test that created it in process).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(st.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    }
}

/// The signals `run` and `exec` pass on to the container's process.
pub const FORWARDED: [nix::sys::signal::Signal; 8] = {
    use nix::sys::signal::Signal::*;
    [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT]
};

/// Blocks SIGCHLD and the forwarded signals so that a signalfd receives them; call before
/// forking so none is lost. The container's processes unblock everything before exec.
pub fn block_signals() -> Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block().ctx(|| "blocking signals".into())?;
    nix::sys::signalfd::SignalFd::with_flags(&set, nix::sys::signalfd::SfdFlags::SFD_CLOEXEC).ctx(|| "signalfd".into())
}

/// Supervises a foreground process (`run`, `exec` without `-d`): forwards signals to it,
/// relays the pty if there is one, reaps children, and returns its exit code.
pub fn supervise(pid: i32, sigfd: &nix::sys::signalfd::SignalFd, pty: Option<&OwnedFd>) -> Result<i32> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::BorrowedFd;
    let _raw = if pty.is_some() { crate::tty::RawMode::enter(0) } else { None };
    if let Some(m) = pty
        && let Some(ws) = crate::tty::get_winsize(&std::io::stdin())
    {
        let _ = crate::tty::set_winsize(m, ws);
    }
    let mut exit: Option<i32> = None;
    let mut stdin_open = pty.is_some();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: fd 0 is the process's stdin, open for its whole life.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if let Some(m) = pty {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll", e)),
        }
        let sig_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let pty_ready = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        let stdin_ready = fds.get(2).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        drop(fds);
        if let Some(m) = pty {
            if pty_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                match nix::unistd::read(m, &mut buf) {
                    Ok(n) if n > 0 => write_all(1, &buf[..n]),
                    // EIO: every slave is closed, the program and its children are gone.
                    _ => {
                        if let Some(code) = exit {
                            return Ok(code);
                        }
                    }
                }
            }
            if stdin_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match nix::unistd::read(stdin, &mut buf) {
                    Ok(n) if n > 0 => write_all(m.as_raw_fd(), &buf[..n]),
                    _ => stdin_open = false,
                }
            }
        }
        if sig_ready && let Ok(Some(info)) = sigfd.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGCHLD {
                while let Some((reaped, code)) = crate::signals::reap_any() {
                    if reaped == pid {
                        exit = Some(code);
                    }
                }
                if let Some(code) = exit {
                    if pty.is_none() {
                        return Ok(code);
                    }
                    // Drain what the program wrote before it exited.
                    if let Some(m) = pty {
                        drain(m, &mut buf);
                    }
                    return Ok(code);
                }
            } else if sig == libc::SIGWINCH {
                if let (Some(m), Some(ws)) = (pty, crate::tty::get_winsize(&std::io::stdin())) {
                    let _ = crate::tty::set_winsize(m, ws);
                }
            } else {
                // SAFETY: kill(2) takes integers only.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
}

fn drain(m: &OwnedFd, buf: &mut [u8]) {
    let _ = nix::fcntl::fcntl(m, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    while let Ok(n) = nix::unistd::read(m, buf) {
        if n == 0 {
            break;
        }
        write_all(1, &buf[..n]);
    }
}

fn write_all(fd: i32, mut data: &[u8]) {
    // SAFETY: `fd` is stdout or a pty master owned by the caller, open during the call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    while !data.is_empty() {
        match nix::unistd::write(b, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// `run`: create, start and supervise in one process, then delete (unless `keep`: the
/// stopped container stays for `delete`). Returns the exit code.
pub fn run(root: &StateRoot, id: &str, bundle: &Bundle, opts: &CreateOptions, keep: bool) -> Result<i32> {
    let sigfd = block_signals()?;
    let created = create(root, id, bundle, opts, true)?;
    let mut steps = Steps::new();
    let pid = created.state.pid;
    let result = (|| {
        let chan = created.channel.as_ref().ok_or_else(|| Error::Init("no channel to the init".into()))?;
        let mut st = created.state.clone();
        st.started = true;
        root.save(&st)?;
        chan.send(&Msg::Start, None)?;
        if !crate::hooks::of(st.hooks.as_ref(), crate::hooks::Kind::Poststart).is_empty() && program_started(chan) {
            crate::hooks::run_or_warn(st.hooks.as_ref(), crate::hooks::Kind::Poststart, || st.hook_state("running"));
        }
        steps.done("state saved as started, start sent");
        let code = supervise(pid, &sigfd, created.pty_master.as_ref())?;
        steps.done("the program ran and exited");
        match crate::exec::exec_failure(chan) {
            Some(e) => Err(e),
            None => Ok(code),
        }
    })();
    if keep && result.is_ok() {
        return result;
    }
    let cleanup = delete(root, id, true);
    steps.done("delete");
    let code = result?;
    cleanup?;
    Ok(code)
}

/// After `Start`: waits until the init has executed the program (its end of the channel closes
/// on exec) or reported a failure (a message is waiting, left for the caller). True when the
/// program runs.
fn program_started(chan: &Channel) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(chan.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
            Ok(_) => {
                let ev = fds[0].revents().unwrap_or(PollFlags::empty());
                return !ev.contains(PollFlags::POLLIN) && ev.contains(PollFlags::POLLHUP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> oci_spec::runtime::LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out() {
        let current = res(r#"{"cpu":{"quota":50000,"period":100000,"shares":512},"memory":{"limit":1048576},
            "blockIO":{"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":100},{"major":8,"minor":16,"rate":200}]},
            "devices":[{"allow":false,"access":"rwm"}]}"#);
        // A period-only update keeps the quota and the shares.
        let m = merge_resources(Some(&current), &res(r#"{"cpu":{"period":200000}}"#)).unwrap();
        let cpu = m.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period(), cpu.shares()), (Some(50000), Some(200000), Some(512)));
        // A swap-only update keeps the memory limit it is computed against.
        let m = merge_resources(Some(&current), &res(r#"{"memory":{"swap":4194304}}"#)).unwrap();
        assert_eq!(m.memory().as_ref().unwrap().limit(), Some(1048576));
        // Devices are merged by number.
        let m = merge_resources(
            Some(&current),
            &res(r#"{"blockIO":{"throttleReadBpsDevice":[{"major":8,"minor":16,"rate":999},{"major":9,"minor":0,"rate":1}]}}"#),
        )
        .unwrap();
        let rates: Vec<u64> = m
            .block_io()
            .as_ref()
            .unwrap()
            .throttle_read_bps_device()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.rate())
            .collect();
        assert_eq!(rates, [100, 999, 1]);
        // Device rules are never changed by an update.
        let m = merge_resources(Some(&current), &res(r#"{"devices":[{"allow":true,"access":"rwm"}]}"#)).unwrap();
        assert!(!m.devices().as_ref().unwrap()[0].allow());
    }
}
