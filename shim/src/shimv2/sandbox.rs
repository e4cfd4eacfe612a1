//! containerd's sandbox API (`containerd.runtime.sandbox.v1.Sandbox`), which containerd 2.x's
//! CRI uses for a runtime whose `sandboxer` is `shim`: the shim itself makes the pod sandbox
//! instead of CRI running a pause container through the task API.
//!
//! strata's sandbox is one small process forked by the daemon (no image, no rootfs, no
//! helper): it joins the pod's network namespace (the `netns_path` CRI made), gets IPC and UTS
//! namespaces of its own (and a pid namespace whose init it is, for `pid: POD`) unless the pod
//! shares the node's, sets the pod's host name and sysctls there, drops every capability and
//! then only reaps (as pid 1) until told to stop. CRI builds each container's namespace paths
//! from its pid (`/proc/<pid>/ns/...`), as with a pause container. It lives in the cgroup
//! `<cgroup_parent>/<sandbox id>`, as the pause container would, and dies with the daemon
//! (parent-death signal), which containerd then takes for the sandbox's end.
//!
//! The CRI pod configuration comes as `runtime.v1.PodSandboxConfig` in the request's options;
//! the few fields read are decoded from the protobuf wire by hand ([`PodConfig::decode`]) rather
//! than pulling the whole CRI API into the shim. What the sandbox cannot honour is refused by
//! name: a pod user namespace, a `TARGET` pid namespace, a rootfs, Windows settings.

use super::service::{Caller, Daemon, engine_err, now};
use super::ttrpc::{RpcResult, status};
use crate::error::Error;
use cgroups::{Cgroup, Hierarchy};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{CodedInputStream, Message, MessageField};
use containerd_shim::protos::sandbox_api::{
    CreateSandboxRequest, CreateSandboxResponse, PingRequest, PingResponse, PlatformRequest, PlatformResponse,
    SandboxMetricsRequest, SandboxMetricsResponse, SandboxStatusRequest, SandboxStatusResponse, ShutdownSandboxRequest,
    ShutdownSandboxResponse, StartSandboxRequest, StartSandboxResponse, StopSandboxRequest, StopSandboxResponse,
    WaitSandboxRequest, WaitSandboxResponse,
};
use containerd_shim::protos::ttrpc::{Code, Request};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The sandbox service's name on the wire.
pub const SANDBOX_SERVICE: &str = "containerd.runtime.sandbox.v1.Sandbox";

/// How a pod shares a namespace (CRI's `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The pod's own (0).
    #[default]
    Pod,
    /// Each container's own (1): for the sandbox, the same as `Pod`.
    Container,
    /// The node's (2).
    Node,
    /// Another container's (3).
    Target,
}

impl Mode {
    fn from_wire(v: u64) -> Result<Mode, String> {
        Ok(match v {
            0 => Mode::Pod,
            1 => Mode::Container,
            2 => Mode::Node,
            3 => Mode::Target,
            other => return Err(format!("unknown namespace mode {other}")),
        })
    }
}

/// What strata's sandbox takes from CRI's `PodSandboxConfig`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodConfig {
    /// `metadata.namespace/name`, for messages.
    pub name: String,
    pub hostname: String,
    pub cgroup_parent: String,
    pub sysctls: Vec<(String, String)>,
    pub network: Mode,
    pub pid: Mode,
    pub ipc: Mode,
    /// `userns_options.mode` is `POD`: a user namespace for the pod.
    pub pod_userns: bool,
    /// A `windows` section was given.
    pub windows: bool,
}

/// Reads the next field of a message: its number and wire type.
fn tag(is: &mut CodedInputStream<'_>) -> Result<Option<(u32, u32)>, String> {
    if is.eof().map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let t = is.read_raw_varint32().map_err(|e| e.to_string())?;
    Ok(Some((t >> 3, t & 7)))
}

/// A length-delimited field's bytes.
fn bytes(is: &mut CodedInputStream<'_>) -> Result<Vec<u8>, String> {
    is.read_bytes().map_err(|e| e.to_string())
}

fn string(is: &mut CodedInputStream<'_>) -> Result<String, String> {
    String::from_utf8(bytes(is)?).map_err(|_| "a string that is not UTF-8".to_string())
}

fn skip(is: &mut CodedInputStream<'_>, wire: u32) -> Result<(), String> {
    match wire {
        0 => is.read_raw_varint64().map(drop),
        1 => is.read_raw_little_endian64().map(drop),
        2 => is.read_bytes().map(drop),
        5 => is.read_raw_little_endian32().map(drop),
        w => return Err(format!("unsupported wire type {w}")),
    }
    .map_err(|e| e.to_string())
}

/// Calls `f` for each field of the message in `data`.
fn fields(
    data: &[u8],
    mut f: impl FnMut(u32, u32, &mut CodedInputStream<'_>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut is = CodedInputStream::from_bytes(data);
    while let Some((n, wire)) = tag(&mut is)? {
        if !f(n, wire, &mut is)? {
            skip(&mut is, wire)?;
        }
    }
    Ok(())
}

impl PodConfig {
    /// Decodes the fields strata uses from a `runtime.v1.PodSandboxConfig`.
    pub fn decode(data: &[u8]) -> Result<PodConfig, String> {
        let mut c = PodConfig::default();
        let (mut pod_name, mut pod_ns) = (String::new(), String::new());
        fields(data, |n, wire, is| {
            match (n, wire) {
                (1, 2) => fields(&bytes(is)?, |n, w, is| match (n, w) {
                    (1, 2) => string(is).map(|s| pod_name = s).map(|()| true),
                    (3, 2) => string(is).map(|s| pod_ns = s).map(|()| true),
                    _ => Ok(false),
                })?,
                (2, 2) => c.hostname = string(is)?,
                (8, 2) => c.decode_linux(&bytes(is)?)?,
                (9, 2) => {
                    c.windows = true;
                    return Ok(false);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        c.name = format!("{pod_ns}/{pod_name}");
        Ok(c)
    }

    /// `LinuxPodSandboxConfig`: cgroup_parent 1, security_context 2, sysctls 3.
    fn decode_linux(&mut self, data: &[u8]) -> Result<(), String> {
        fields(data, |n, wire, is| {
            match (n, wire) {
                (1, 2) => self.cgroup_parent = string(is)?,
                (2, 2) => self.decode_security(&bytes(is)?)?,
                (3, 2) => {
                    // A map entry: key 1, value 2.
                    let (mut k, mut v) = (String::new(), String::new());
                    fields(&bytes(is)?, |n, w, is| match (n, w) {
                        (1, 2) => string(is).map(|s| k = s).map(|()| true),
                        (2, 2) => string(is).map(|s| v = s).map(|()| true),
                        _ => Ok(false),
                    })?;
                    self.sysctls.push((k, v));
                }
                _ => return Ok(false),
            }
            Ok(true)
        })
    }

    /// `LinuxSandboxSecurityContext.namespace_options` (1): network 1, pid 2, ipc 3,
    /// userns_options 5 (its mode 1).
    fn decode_security(&mut self, data: &[u8]) -> Result<(), String> {
        fields(data, |n, wire, is| {
            if (n, wire) != (1, 2) {
                return Ok(false);
            }
            fields(&bytes(is)?, |n, w, is| {
                let varint = |is: &mut CodedInputStream<'_>| is.read_raw_varint64().map_err(|e| e.to_string());
                match (n, w) {
                    (1, 0) => self.network = Mode::from_wire(varint(is)?)?,
                    (2, 0) => self.pid = Mode::from_wire(varint(is)?)?,
                    (3, 0) => self.ipc = Mode::from_wire(varint(is)?)?,
                    (5, 2) => fields(&bytes(is)?, |n, w, is| {
                        if (n, w) == (1, 0) {
                            self.pod_userns = Mode::from_wire(varint(is)?)? == Mode::Pod;
                            return Ok(true);
                        }
                        Ok(false)
                    })?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            Ok(true)
        })
    }
}

/// Where the sandbox is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxLife {
    /// `CreateSandbox` took its configuration.
    Created,
    /// Its process runs.
    Running { pid: i32 },
    /// Its process ended (or never ran: stopped before it started).
    Exited { pid: i32, code: u32, at: Timestamp },
}

/// The pod sandbox this daemon serves (one per shim: its id is the shim's).
#[derive(Debug)]
pub(super) struct Sandbox {
    pub id: String,
    pub config: PodConfig,
    pub netns: String,
    pub life: SandboxLife,
    pub created_at: Timestamp,
    /// Its cgroup, once made.
    pub cgroup: Option<PathBuf>,
    /// `WaitSandbox` calls, answered at its exit.
    pub waiters: Vec<Caller>,
    /// `StopSandbox` calls, answered at its exit.
    pub stoppers: Vec<Caller>,
    /// When a stop that asked for TERM sends KILL.
    pub kill_at: Option<Instant>,
}

impl Sandbox {
    /// Whether its process may still run (the daemon must not exit under it).
    pub fn alive(&self) -> bool {
        !matches!(self.life, SandboxLife::Exited { .. })
    }

    fn pid(&self) -> i32 {
        match self.life {
            SandboxLife::Running { pid } | SandboxLife::Exited { pid, .. } => pid,
            SandboxLife::Created => 0,
        }
    }
}

fn decode<M: Message>(payload: &[u8]) -> RpcResult<M> {
    M::parse_from_bytes(payload).map_err(|e| status(Code::INVALID_ARGUMENT, format!("a malformed request: {e}")))
}

fn encode<M: Message>(m: RpcResult<M>) -> RpcResult<Vec<u8>> {
    m.and_then(|m| m.write_to_bytes().map_err(|e| status(Code::INTERNAL, e)))
}

fn invalid(what: impl std::fmt::Display) -> super::ttrpc::RpcError {
    status(Code::INVALID_ARGUMENT, format!("sandbox: {what}"))
}

/// The sysctls of the pod, checked against the namespaces the sandbox has: only namespaced
/// ones, in a namespace of the pod's own. Returns them with their /proc/sys paths.
fn checked_sysctls(c: &PodConfig, netns: &str) -> RpcResult<Vec<(PathBuf, String)>> {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let mut namespaces = Vec::new();
    let add = |typ, path: Option<&str>| {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().map_err(|e| status(Code::INTERNAL, e))
    };
    if c.network != Mode::Node && !netns.is_empty() {
        namespaces.push(add(LinuxNamespaceType::Network, Some(netns))?);
    }
    if c.ipc != Mode::Node {
        namespaces.push(add(LinuxNamespaceType::Ipc, None)?);
    }
    if c.network != Mode::Node {
        namespaces.push(add(LinuxNamespaceType::Uts, None)?);
    }
    c.sysctls
        .iter()
        .map(|(k, v)| {
            crate::bundle::check_sysctl(k, &namespaces)
                .map_err(|why| invalid(format!("linux.sysctls {k:?}: {why}")))?;
            let key = crate::bundle::sysctl_key(k);
            let path = crate::bundle::sysctl_path(&key).ok_or_else(|| invalid(format!("linux.sysctls {k:?}")))?;
            Ok((PathBuf::from("/proc/sys").join(path), v.clone()))
        })
        .collect()
}

impl Daemon {
    /// Whether this daemon holds a sandbox whose process may still run.
    pub(super) fn sandbox_alive(&self) -> bool {
        self.sandbox.as_ref().is_some_and(Sandbox::alive)
    }

    /// Runs one call of the sandbox service. `None`: the answer comes later.
    pub(super) fn dispatch_sandbox(&mut self, conn: u64, stream: u32, req: &Request) -> Option<RpcResult<Vec<u8>>> {
        let p = &req.payload;
        let caller = Caller { conn, stream };
        Some(match req.method.as_str() {
            "CreateSandbox" => decode(p).and_then(|r| encode(self.create_sandbox(r))),
            "StartSandbox" => decode(p).and_then(|r| encode(self.start_sandbox(r))),
            "Platform" => decode::<PlatformRequest>(p).and_then(|r| {
                self.sandbox_of(&r.sandbox_id)?;
                let mut platform = containerd_shim::protos::types::platform::Platform::new();
                platform.os = "linux".into();
                platform.architecture = match std::env::consts::ARCH {
                    "x86_64" => "amd64",
                    "aarch64" => "arm64",
                    other => other,
                }
                .into();
                encode(Ok(PlatformResponse { platform: MessageField::some(platform), ..Default::default() }))
            }),
            "StopSandbox" => match decode::<StopSandboxRequest>(p) {
                Ok(r) => match self.stop_sandbox(caller, &r.sandbox_id, r.timeout_secs) {
                    Ok(true) => encode(Ok(StopSandboxResponse::new())),
                    Ok(false) => return None,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            "WaitSandbox" => match decode::<WaitSandboxRequest>(p) {
                Ok(r) => match self.sandbox_of(&r.sandbox_id) {
                    Ok(sb) => match &sb.life {
                        SandboxLife::Exited { code, at, .. } => encode(Ok(WaitSandboxResponse {
                            exit_status: *code,
                            exited_at: MessageField::some(at.clone()),
                            ..Default::default()
                        })),
                        _ => {
                            sb.waiters.push(caller);
                            return None;
                        }
                    },
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            "SandboxStatus" => decode::<SandboxStatusRequest>(p).and_then(|r| {
                let sb = self.sandbox_of(&r.sandbox_id)?;
                let (state, exited_at) = match &sb.life {
                    SandboxLife::Running { .. } => ("SANDBOX_READY", MessageField::none()),
                    SandboxLife::Exited { at, .. } => ("SANDBOX_NOTREADY", MessageField::some(at.clone())),
                    SandboxLife::Created => ("SANDBOX_NOTREADY", MessageField::none()),
                };
                let mut resp = SandboxStatusResponse {
                    sandbox_id: sb.id.clone(),
                    pid: sb.pid() as u32,
                    state: state.into(),
                    created_at: MessageField::some(sb.created_at.clone()),
                    exited_at,
                    ..Default::default()
                };
                if r.verbose {
                    resp.info.insert("runtime".into(), "strata".into());
                    resp.info.insert("netns".into(), sb.netns.clone());
                    if let Some(cg) = &sb.cgroup {
                        resp.info.insert("cgroup".into(), cg.display().to_string());
                    }
                }
                encode(Ok(resp))
            }),
            "PingSandbox" => decode::<PingRequest>(p).and_then(|r| {
                let sb = self.sandbox_of(&r.sandbox_id)?;
                if !sb.alive() {
                    return Err(status(Code::UNAVAILABLE, format!("sandbox {} has exited", r.sandbox_id)));
                }
                encode(Ok(PingResponse::new()))
            }),
            "ShutdownSandbox" => decode::<ShutdownSandboxRequest>(p).and_then(|r| {
                self.shutdown_sandbox(&r.sandbox_id)?;
                encode(Ok(ShutdownSandboxResponse::new()))
            }),
            "SandboxMetrics" => decode::<SandboxMetricsRequest>(p).and_then(|r| {
                let sb = self.sandbox_of(&r.sandbox_id)?;
                let cg = sb.cgroup.clone().ok_or_else(|| {
                    status(Code::FAILED_PRECONDITION, format!("sandbox {} has no cgroup (not started)", r.sandbox_id))
                })?;
                let stats = Cgroup::open(cg).stats().map_err(|e| engine_err(e.into()))?;
                let data =
                    super::metrics::to_metrics(&stats).write_to_bytes().map_err(|e| status(Code::INTERNAL, e))?;
                let mut resp = SandboxMetricsResponse::new();
                let m = resp.metrics.mut_or_insert_default();
                m.timestamp = MessageField::some(now());
                m.id = r.sandbox_id.clone();
                let any = m.data.mut_or_insert_default();
                any.type_url = super::metrics::METRICS_TYPE_URL.to_string();
                any.value = data;
                encode(Ok(resp))
            }),
            m => Err(status(Code::UNIMPLEMENTED, format!("sandbox method {m} is not implemented by strata"))),
        })
    }

    fn sandbox_of(&mut self, id: &str) -> RpcResult<&mut Sandbox> {
        self.sandbox
            .as_mut()
            .filter(|s| s.id == id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("sandbox {id} not found")))
    }

    fn create_sandbox(&mut self, r: CreateSandboxRequest) -> RpcResult<CreateSandboxResponse> {
        if let Some(sb) = &self.sandbox {
            return Err(status(Code::ALREADY_EXISTS, format!("this shim serves sandbox {} already", sb.id)));
        }
        crate::state::validate_id(&r.sandbox_id).map_err(engine_err)?;
        if !r.rootfs.is_empty() {
            return Err(invalid("rootfs: strata's sandbox is a process without a root file system; none is taken"));
        }
        let config = match r.options.as_ref() {
            None => PodConfig::default(),
            Some(any) if any.value.is_empty() => PodConfig::default(),
            Some(any) if any.type_url.ends_with("PodSandboxConfig") => {
                PodConfig::decode(&any.value).map_err(|e| invalid(format!("options ({}): {e}", any.type_url)))?
            }
            Some(any) => {
                return Err(invalid(format!("options of type {} (a CRI PodSandboxConfig is read)", any.type_url)));
            }
        };
        if config.windows {
            return Err(invalid("windows: a Windows pod configuration on Linux"));
        }
        if config.pod_userns {
            return Err(invalid(
                "linux.security_context.namespace_options.userns_options: a pod user namespace is not implemented by strata's sandbox",
            ));
        }
        if config.pid == Mode::Target {
            return Err(invalid(
                "linux.security_context.namespace_options.pid: TARGET is a container's mode, not a pod's",
            ));
        }
        if config.network != Mode::Node && r.netns_path.is_empty() {
            return Err(invalid("netns_path: a pod with its own network needs the network namespace CRI made"));
        }
        checked_sysctls(&config, &r.netns_path)?;
        if config.cgroup_parent.contains(':') {
            return Err(invalid(format!(
                "linux.cgroup_parent {:?}: the systemd cgroup driver is not implemented by strata (use cgroupfs)",
                config.cgroup_parent
            )));
        }
        log::info!("sandbox {} for pod {}", r.sandbox_id, config.name);
        self.sandbox = Some(Sandbox {
            id: r.sandbox_id.clone(),
            config,
            netns: r.netns_path.clone(),
            life: SandboxLife::Created,
            created_at: now(),
            cgroup: None,
            waiters: Vec::new(),
            stoppers: Vec::new(),
            kill_at: None,
        });
        // A shim told to shut down before (containerd starts it, then creates): it stays.
        self.cancel_exit();
        Ok(CreateSandboxResponse::new())
    }

    fn start_sandbox(&mut self, r: StartSandboxRequest) -> RpcResult<StartSandboxResponse> {
        let sb = self.sandbox_of(&r.sandbox_id)?;
        if sb.life != SandboxLife::Created {
            return Err(status(Code::FAILED_PRECONDITION, format!("sandbox {} was started already", r.sandbox_id)));
        }
        let (config, netns, id) = (sb.config.clone(), sb.netns.clone(), sb.id.clone());
        let sysctls = checked_sysctls(&config, &netns)?;
        let cgroup = sandbox_cgroup(&config, &id).map_err(engine_err)?;
        let pid = match spawn(&config, &netns, &sysctls, cgroup.as_ref()) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = std::fs::remove_dir(cg);
                }
                return Err(engine_err(e));
            }
        };
        let created_at = now();
        let sb = self.sandbox_of(&r.sandbox_id)?;
        sb.life = SandboxLife::Running { pid };
        sb.cgroup = cgroup;
        sb.created_at = created_at.clone();
        log::info!("sandbox {id} runs as pid {pid}");
        Ok(StartSandboxResponse { pid: pid as u32, created_at: MessageField::some(created_at), ..Default::default() })
    }

    /// `StopSandbox`: TERM, then KILL after `timeout` seconds (at once with 0). True when it
    /// is stopped already (answer now); else the answer comes at its exit.
    fn stop_sandbox(&mut self, caller: Caller, id: &str, timeout: u32) -> RpcResult<bool> {
        let sb = self.sandbox_of(id)?;
        match sb.life {
            SandboxLife::Exited { .. } => Ok(true),
            SandboxLife::Created => {
                sb.life = SandboxLife::Exited { pid: 0, code: 0, at: now() };
                Ok(true)
            }
            SandboxLife::Running { pid } => {
                let signal = if timeout == 0 { libc::SIGKILL } else { libc::SIGTERM };
                // SAFETY: kill(2) takes plain integers; the process is our unreaped child.
                unsafe { libc::kill(pid, signal) };
                if timeout > 0 {
                    let at = Instant::now() + Duration::from_secs(timeout.into());
                    sb.kill_at = Some(sb.kill_at.map_or(at, |k| k.min(at)));
                }
                sb.stoppers.push(caller);
                Ok(false)
            }
        }
    }

    fn shutdown_sandbox(&mut self, id: &str) -> RpcResult<()> {
        let sb = self.sandbox_of(id)?;
        if let SandboxLife::Running { pid } = sb.life {
            // SAFETY: as in `stop_sandbox`.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // The daemon exits once the process is reaped and its cgroup removed.
            self.shutdown_asked = true;
        } else if self.tasks.is_empty() && self.runner.is_empty() {
            log::info!("sandbox {id} shut down: exiting");
            self.exit_soon();
        } else {
            // Once the last task goes (containerd deletes them before).
            self.shutdown_asked = true;
        }
        Ok(())
    }

    /// The deadline of a stop's KILL, for the loop.
    pub(super) fn sandbox_deadline(&self) -> Option<Instant> {
        self.sandbox.as_ref().and_then(|s| s.kill_at)
    }

    /// Sends a stop's KILL once its time came.
    pub(super) fn sandbox_kill_due(&mut self, now: Instant) {
        if let Some(sb) = self.sandbox.as_mut()
            && sb.kill_at.is_some_and(|t| t <= now)
        {
            sb.kill_at = None;
            if let SandboxLife::Running { pid } = sb.life {
                log::warn!("sandbox {} ignored TERM: killing it", sb.id);
                // SAFETY: as in `stop_sandbox`.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// A reaped pid: true if it was the sandbox's (its waiters and stoppers are answered and
    /// its cgroup removed).
    pub(super) fn sandbox_exited(&mut self, pid: i32, code: u32, at: &Timestamp) -> bool {
        let Some(sb) = self.sandbox.as_mut() else { return false };
        if sb.life != (SandboxLife::Running { pid }) {
            return false;
        }
        sb.life = SandboxLife::Exited { pid, code, at: at.clone() };
        sb.kill_at = None;
        if let Some(cg) = &sb.cgroup
            && let Err(e) = std::fs::remove_dir(cg)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing the sandbox cgroup {}: {e}", cg.display());
        }
        let waiters = std::mem::take(&mut sb.waiters);
        let stoppers = std::mem::take(&mut sb.stoppers);
        log::info!("sandbox {} exited with {code}", sb.id);
        for w in waiters {
            let resp = WaitSandboxResponse {
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            };
            self.answer(w, encode(Ok(resp)));
        }
        for s in stoppers {
            self.answer(s, encode(Ok(StopSandboxResponse::new())));
        }
        self.shutdown_if_asked();
        true
    }
}

/// The sandbox's cgroup, `<cgroup_parent>/<id>` below the cgroup v2 mount (made here), as
/// CRI places a pause container; `None` without a parent (it stays in the shim's).
fn sandbox_cgroup(c: &PodConfig, id: &str) -> crate::Result<Option<PathBuf>> {
    if c.cgroup_parent.is_empty() {
        return Ok(None);
    }
    let h = Hierarchy::detect()?;
    let rel = h.resolve(&format!("{}/{id}", c.cgroup_parent.trim_end_matches('/')))?;
    let dir = h.mount().join(rel);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Ok(Some(dir))
}

/// Forks the sandbox process (see the module documentation); its pid in the daemon's pid
/// namespace once it holds its namespaces and settings, or why it could not.
fn spawn(c: &PodConfig, netns: &str, sysctls: &[(PathBuf, String)], cgroup: Option<&PathBuf>) -> crate::Result<i32> {
    use crate::sys::{Fork, fork};
    let netns_fd = if c.network == Mode::Node {
        None
    } else {
        Some(
            nix::fcntl::open(
                netns,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::io(format!("opening the pod's network namespace {netns}"), e.into()))?,
        )
    };
    let mut flags = 0;
    if c.ipc != Mode::Node {
        flags |= libc::CLONE_NEWIPC;
    }
    if c.network != Mode::Node {
        // A pod on the node's network has the node's host name too (as CRI gives its pause).
        flags |= libc::CLONE_NEWUTS;
    }
    if c.pid == Mode::Pod {
        flags |= libc::CLONE_NEWPID;
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::io("pipe", e.into()))?;
    match fork(flags).map_err(|e| Error::io("forking the sandbox process", e.into()))? {
        Fork::Child => {
            drop(ready_r);
            let why = prepare(c, netns_fd.as_ref(), sysctls).err().unwrap_or_default();
            let _ = nix::unistd::write(&ready_w, why.as_bytes());
            if !why.is_empty() {
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(1) };
            }
            drop(ready_w);
            pause_forever()
        }
        Fork::Parent(pid) => {
            drop(ready_w);
            if let Some(cg) = cgroup
                && let Err(e) = Cgroup::open(cg.clone()).add_process(pid)
            {
                // SAFETY: kill(2) with integers; the child is ours and unreaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = crate::signals::reap(pid, 0);
                return Err(e.into());
            }
            let mut why = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(ready_r), &mut why);
            if !why.is_empty() {
                let _ = crate::signals::reap(pid, 0);
                return Err(Error::Init(format!("the sandbox process: {}", String::from_utf8_lossy(&why))));
            }
            Ok(pid)
        }
    }
}

/// In the sandbox process: joins the pod's network, sets the host name and sysctls, then lets
/// go of everything it does not need (descriptors, capabilities, the way to gain any).
fn prepare(c: &PodConfig, netns: Option<&OwnedFd>, sysctls: &[(PathBuf, String)]) -> Result<(), String> {
    // It dies with the daemon: containerd takes a dead shim's sandbox for ended.
    crate::sys::set_parent_death_signal(libc::SIGKILL).map_err(|e| format!("parent death signal: {e}"))?;
    if let Some(fd) = netns {
        crate::sys::setns(fd, libc::CLONE_NEWNET).map_err(|e| format!("joining the pod's network namespace: {e}"))?;
    }
    if c.network != Mode::Node && !c.hostname.is_empty() {
        nix::unistd::sethostname(&c.hostname).map_err(|e| format!("hostname {:?}: {e}", c.hostname))?;
    }
    for (path, value) in sysctls {
        std::fs::write(path, value).map_err(|e| format!("sysctl {}: {e}", path.display()))?;
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    // A container sharing its pid namespace sees it as pid 1: nothing of it (its memory, its
    // /proc/1/exe, the shim's binary) may be reached through /proc.
    crate::sys::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"pause".as_ptr() as libc::c_ulong, 0, 0, 0) };
    for cap in 0..=crate::sys::last_cap() {
        if crate::sys::bounding_has(cap) {
            crate::sys::bounding_drop(cap).map_err(|e| format!("dropping capability {cap}: {e}"))?;
        }
    }
    crate::sys::capset(crate::sys::CapSets::default()).map_err(|e| format!("dropping capabilities: {e}"))?;
    crate::sys::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

/// The sandbox process's life: reaps whatever is reparented to it (it is the pid namespace's
/// init with `pid: POD`) until TERM or INT ends it with 0. The daemon blocked these signals
/// before forking (the mask is inherited), so they wait here rather than act: as a pid
/// namespace's init it would not die of them anyway.
fn pause_forever() -> ! {
    // Nothing of the daemon's: its connections, FIFOs and sockets.
    // SAFETY: close_range on descriptors this process owns and no longer uses.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [nix::sys::signal::Signal::SIGCHLD, nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(nix::sys::signal::Signal::SIGCHLD) => while crate::signals::reap_any().is_some() {},
            Ok(_) => {
                // SAFETY: ends the process; nothing to clean up.
                unsafe { libc::_exit(0) }
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf wire writing for the tests: a length-delimited field and a varint field.
    fn ld(n: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, body.len() as u8];
        v.extend_from_slice(body);
        v
    }
    fn var(n: u32, x: u8) -> Vec<u8> {
        vec![(n << 3) as u8, x]
    }

    fn pod(ns: &[u8], sysctl: Option<(&str, &str)>) -> Vec<u8> {
        let meta = [ld(1, b"web"), ld(2, b"uid-1"), ld(3, b"default"), var(4, 0)].concat();
        let security = ld(1, ns);
        let mut linux = [ld(1, b"/kubepods/besteffort/poduid-1"), ld(2, &security)].concat();
        if let Some((k, v)) = sysctl {
            linux.extend(ld(3, &[ld(1, k.as_bytes()), ld(2, v.as_bytes())].concat()));
        }
        // Fields strata does not read (log_directory 3, labels 6) are skipped.
        [
            ld(1, &meta),
            ld(2, b"web-0"),
            ld(3, b"/var/log/pods/x"),
            ld(6, &[ld(1, b"a"), ld(2, b"b")].concat()),
            ld(8, &linux),
        ]
        .concat()
    }

    #[test]
    fn a_cri_pod_configuration_is_read() {
        let c =
            PodConfig::decode(&pod(&[var(1, 0), var(2, 0), var(3, 2)].concat(), Some(("net.ipv4.ip_forward", "1"))))
                .unwrap();
        assert_eq!(c.name, "default/web");
        assert_eq!(c.hostname, "web-0");
        assert_eq!(c.cgroup_parent, "/kubepods/besteffort/poduid-1");
        assert_eq!((c.network, c.pid, c.ipc), (Mode::Pod, Mode::Pod, Mode::Node));
        assert_eq!(c.sysctls, vec![("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        assert!(!c.pod_userns && !c.windows);
        // A pod user namespace (userns_options 5, mode 1 = POD).
        let c = PodConfig::decode(&pod(&ld(5, &var(1, 0)), None)).unwrap();
        assert!(c.pod_userns);
        let c = PodConfig::decode(&pod(&ld(5, &var(1, 2)), None)).unwrap();
        assert!(!c.pod_userns, "NODE user namespace");
    }

    #[test]
    fn malformed_configurations_are_refused() {
        assert!(PodConfig::decode(&[0x12, 0x40, b'x']).is_err(), "a length past the end");
        assert!(PodConfig::decode(&pod(&var(2, 9), None)).is_err(), "an unknown namespace mode");
        assert!(PodConfig::decode(&[0x0f]).is_err(), "wire type 7");
        assert_eq!(PodConfig::decode(&[]).unwrap(), PodConfig { name: "/".into(), ..Default::default() });
    }

    #[test]
    fn sysctls_need_a_namespace_of_the_pods_own() {
        let own = PodConfig { sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())], ..Default::default() };
        let paths = checked_sysctls(&own, "/run/netns/x").unwrap();
        assert_eq!(paths, vec![(PathBuf::from("/proc/sys/net/ipv4/ip_forward"), "1".to_string())]);
        let node = PodConfig { network: Mode::Node, ..own.clone() };
        assert!(checked_sysctls(&node, "").is_err(), "a net sysctl on the node's network");
        let host_wide = PodConfig { sysctls: vec![("vm.swappiness".into(), "1".into())], ..Default::default() };
        assert!(checked_sysctls(&host_wide, "/run/netns/x").is_err(), "a sysctl that is not namespaced");
    }
}
