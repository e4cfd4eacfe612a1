//! The task API's calls on the [`Daemon`]: each maps a containerd request onto the engine, a
//! helper or the daemon's process table. [`Daemon::dispatch`] decodes a request by method name
//! and encodes the answer. Calls that wait are answered later, while the loop goes on: `Wait`
//! when its process exits, `Create` and an exec's `Start` when their helper is done, the init's
//! `Start` when its program runs (and its `poststart` hooks ran), `Delete` after its
//! `poststop` hooks.

use super::helper::HelperRequest;
use super::metrics;
use super::options;
use super::process::{Life, Proc, Task};
use super::service::{
    ApiStatus, Caller, CgroupGoal, ConsoleSocket, Daemon, Pending, PendingCreate, PendingWhat, ROOT_FILE, engine_err,
    give_pipe, now, receive_master, unmount_rootfs,
};
use super::stdio::{self, Copies, Kept, StdioOwner, StdioPaths};
use super::ttrpc::{RpcError, RpcResult, status};
use crate::container;
use crate::error::Error;
use crate::state::{StateRoot, Status};
use cgroups::Cgroup;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{Code, Request};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The task service's name on the wire (task API v2).
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";

/// The type URL of the details `Pids` gives for an exec's process (runc's shim's).
const PROCESS_DETAILS_TYPE_URL: &str = "containerd.runc.v1.ProcessDetails";

fn decode<M: Message>(payload: &[u8]) -> RpcResult<M> {
    M::parse_from_bytes(payload).map_err(|e| status(Code::INVALID_ARGUMENT, format!("a malformed request: {e}")))
}

fn encode<M: Message>(m: RpcResult<M>) -> RpcResult<Vec<u8>> {
    m.and_then(|m| m.write_to_bytes().map_err(|e| status(Code::INTERNAL, e)))
}

fn task_not_found(id: &str) -> RpcError {
    status(Code::NOT_FOUND, format!("task {id} not found"))
}

fn paths_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal }
}

/// Moves the shim daemon into cgroup `path` (below the cgroup2 mount; made if missing), as the
/// `ShimCgroup` runtime option asks.
fn move_into_cgroup(path: &str) -> crate::Result<()> {
    let h = cgroups::Hierarchy::detect()?;
    let rel = h.resolve(path)?;
    let dir = h.mount().join(rel);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Cgroup::open(dir).add_process(std::process::id() as i32)?;
    Ok(())
}

/// An answer given now, or later.
fn later(r: RpcResult<()>) -> Option<RpcResult<Vec<u8>>> {
    r.err().map(Err)
}

impl Daemon {
    /// Runs one call. `None`: the answer comes later.
    pub(super) fn dispatch(&mut self, conn: u64, stream: u32, req: &Request) -> Option<RpcResult<Vec<u8>>> {
        crate::fault::point("shim", &req.method);
        if req.service == super::sandbox::SANDBOX_SERVICE {
            return self.dispatch_sandbox(conn, stream, req);
        }
        if req.service != TASK_SERVICE {
            return Some(Err(status(Code::UNIMPLEMENTED, format!("service {} is not served here", req.service))));
        }
        let p = &req.payload;
        Some(match req.method.as_str() {
            "Create" => match decode(p) {
                Ok(r) => return later(self.create(Caller { conn, stream }, r)),
                Err(e) => Err(e),
            },
            "Start" => match decode(p) {
                Ok(r) => return later(self.start(Caller { conn, stream }, r)),
                Err(e) => Err(e),
            },
            "Delete" => match decode(p) {
                Ok(r) => return self.delete(Caller { conn, stream }, r).unwrap_or_else(|e| Some(Err(e))),
                Err(e) => Err(e),
            },
            "State" => decode(p).and_then(|r| encode(self.state(r))),
            "Kill" => decode(p).and_then(|r| encode(self.kill(r))),
            "Pids" => decode(p).and_then(|r| encode(self.pids(r))),
            "Pause" => match decode::<PauseRequest>(p) {
                Ok(r) => return later(self.freeze(Caller { conn, stream }, &r.id, true)),
                Err(e) => Err(e),
            },
            "Resume" => match decode::<ResumeRequest>(p) {
                Ok(r) => return later(self.freeze(Caller { conn, stream }, &r.id, false)),
                Err(e) => Err(e),
            },
            "Exec" => decode(p).and_then(|r| encode(self.exec(r))),
            "ResizePty" => decode(p).and_then(|r| encode(self.resize_pty(r))),
            "CloseIO" => decode(p).and_then(|r| encode(self.close_io(r))),
            "Update" => decode(p).and_then(|r| encode(self.update(r))),
            "Stats" => decode(p).and_then(|r| encode(self.stats(r))),
            "Connect" => decode(p).and_then(|r| encode(self.connect(r))),
            "Shutdown" => decode(p).and_then(|r| encode(self.shutdown(r))),
            "Wait" => match decode::<WaitRequest>(p) {
                Ok(r) => match self.exit_of(&r.id, &r.exec_id) {
                    Ok(Some(resp)) => encode(Ok(resp)),
                    Ok(None) => {
                        self.defer_wait(conn, stream, &r.id, &r.exec_id);
                        return None;
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            "Checkpoint" => {
                Err(status(Code::UNIMPLEMENTED, "checkpoint is not implemented by strata (no CRIU support)"))
            }
            m => Err(status(Code::UNIMPLEMENTED, format!("method {m} is not implemented by strata"))),
        })
    }

    fn task(&mut self, id: &str) -> RpcResult<&mut Task> {
        self.tasks.get_mut(id).ok_or_else(|| task_not_found(id))
    }

    fn root_of(&self, id: &str) -> StateRoot {
        self.tasks.get(id).map(|t| t.root.clone()).unwrap_or_else(|| self.root.clone())
    }

    /// The reported exit of a process, if it has one.
    fn exit_of(&mut self, id: &str, exec_id: &str) -> RpcResult<Option<WaitResponse>> {
        let p = self.task(id)?.proc_mut(exec_id)?;
        Ok(p.life.exit().map(|(code, at)| WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        }))
    }

    /// Whether a `Create` for `id` waits on its helper.
    fn creating(&self, id: &str) -> bool {
        self.runner.payloads().any(|p| p.id == id && matches!(p.what, PendingWhat::Create(_)))
    }

    /// Prepares the stdio of a process of container `id` and starts its helper; the call is
    /// answered when the helper is done ([`Daemon::finish_launch`]).
    fn launch(
        &mut self,
        caller: Caller,
        id: &str,
        paths: &StdioPaths,
        io_owner: Option<(u32, u32)>,
        what: PendingWhat,
        make: impl FnOnce(Option<PathBuf>) -> HelperRequest,
    ) -> RpcResult<()> {
        let namespace = self.namespace.clone();
        let owner = StdioOwner { container_id: id, namespace: &namespace };
        let (stdio, copies, kept, console) = if paths.terminal {
            let n = self.token();
            let console = ConsoleSocket::bind(&self.root, n).map_err(engine_err)?;
            let null = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| status(Code::INTERNAL, e))
            };
            ([null()?, null()?, null()?], Copies::default(), Kept::default(), Some(console))
        } else {
            let (fds, copies, kept) = stdio::plain(paths, owner).map_err(engine_err)?;
            if let Some((uid, gid)) = io_owner {
                for fd in &fds {
                    give_pipe(fd, uid, gid).map_err(|e| status(Code::INTERNAL, format!("IoUid/IoGid: {e}")))?;
                }
            }
            (fds, copies, kept, None)
        };
        let req = make(console.as_ref().map(|c| c.path.clone()));
        let pending = Pending { caller, id: id.to_string(), what, paths: paths.clone(), copies, kept, console };
        // A failed start drops `pending` (and with it the copies and FIFO ends).
        self.runner.start(&req, stdio, pending).map(drop)
    }

    /// A helper is done: finishes the call that waited for it.
    pub(super) fn finish_launch(&mut self, mut p: Pending, result: RpcResult<i32>) {
        let what = std::mem::replace(&mut p.what, PendingWhat::Hooks { response: Ok(Vec::new()) });
        match what {
            PendingWhat::Create(c) => self.finish_create(p, *c, result),
            PendingWhat::ExecStart { exec_id, spec } => self.finish_exec_start(p, exec_id, spec, result),
            PendingWhat::Hooks { response } => self.answer(p.caller, response),
        }
        self.shutdown_if_asked();
    }

    /// Honours a `Shutdown` (or `ShutdownSandbox`) that had to wait, once nothing is left: no
    /// create in flight, no task, no live sandbox.
    pub(super) fn shutdown_if_asked(&mut self) {
        if self.shutdown_asked && self.runner.is_empty() {
            // A `Shutdown` that came while creates ran: honoured if none of them made a task
            // (containerd sends another after deleting one that did).
            self.shutdown_asked = false;
            if self.tasks.is_empty() && !self.sandbox_alive() {
                log::info!("no task left in namespace {} after the creates in flight: shutting down", self.namespace);
                self.exit_soon();
            }
        }
    }

    /// Kills a process a helper started that no table entry will own (its call failed or
    /// its task went meanwhile) unless it is reaped already: reaped, its pid could be another
    /// process's by now.
    fn kill_unowned(&mut self, pid: i32) {
        if self.claim_orphan(pid).is_none() {
            // SAFETY: kill(2) takes plain integers; the process is our unreaped child (the
            // helper that forked it has exited and the daemon is the subreaper).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// A terminal's copies once its master arrived (plain stdio's were made at launch).
    fn stdio_after_launch(&mut self, p: &mut Pending) -> RpcResult<(Copies, Kept)> {
        let Some(console) = p.console.take() else {
            return Ok((std::mem::take(&mut p.copies), std::mem::take(&mut p.kept)));
        };
        let master = receive_master(&console.listener).map_err(engine_err)?;
        let namespace = self.namespace.clone();
        let owner = StdioOwner { container_id: &p.id, namespace: &namespace };
        stdio::terminal(&p.paths, owner, master).map_err(engine_err)
    }

    fn create(&mut self, caller: Caller, req: CreateTaskRequest) -> RpcResult<()> {
        if !req.checkpoint.is_empty() {
            return Err(status(Code::UNIMPLEMENTED, "strata cannot restore from a checkpoint"));
        }
        if self.tasks.contains_key(&req.id) || self.creating(&req.id) {
            return Err(status(Code::ALREADY_EXISTS, format!("task {} already exists", req.id)));
        }
        // A Create after a `Shutdown` (a pod's next container): the daemon stays.
        self.cancel_exit();
        let bundle = PathBuf::from(&req.bundle);
        let options = options::parse(&req.options)?;
        if let Some(cg) = &options.shim_cgroup {
            move_into_cgroup(cg)
                .map_err(|e| status(Code::INVALID_ARGUMENT, format!("runtime options: ShimCgroup {cg}: {e}")))?;
        }
        let root = match options.root {
            Some(dir) => {
                let dir = dir.join(&self.namespace);
                // Recorded in the bundle for `delete` after a dead shim.
                std::fs::write(bundle.join(ROOT_FILE), dir.as_os_str().as_encoded_bytes())
                    .map_err(|e| status(Code::INTERNAL, format!("recording the state root: {e}")))?;
                StateRoot::new(dir).map_err(engine_err)?
            }
            None => self.root.clone(),
        };
        let rootfs = bundle.join("rootfs");
        let mut mounted = 0;
        for m in &req.rootfs {
            if let Err(e) = super::rootfs_mount::mount(&m.type_, &m.source, &m.options, &rootfs) {
                unmount_rootfs(&bundle);
                return Err(status(Code::INTERNAL, format!("mounting the rootfs ({} {}): {e}", m.type_, m.source)));
            }
            mounted += 1;
        }
        let paths = paths_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let (id, state_dir, io_owner) = (req.id.clone(), root.path().to_path_buf(), options.io_owner);
        let (no_new_keyring, systemd_cgroup) = (options.no_new_keyring, options.systemd_cgroup);
        let what = PendingWhat::Create(Box::new(PendingCreate { req, root, rootfs_mounts: mounted, io_owner }));
        let launched = self.launch(caller, &id, &paths, io_owner, what, |console_socket| HelperRequest::Create {
            root: state_dir,
            id: id.clone(),
            bundle: bundle.clone(),
            console_socket,
            no_new_keyring,
            systemd_cgroup,
        });
        if launched.is_err() && mounted > 0 {
            unmount_rootfs(&bundle);
        }
        launched
    }

    fn finish_create(&mut self, mut p: Pending, c: PendingCreate, result: RpcResult<i32>) {
        let req = &c.req;
        let bundle = PathBuf::from(&req.bundle);
        let made = result.and_then(|pid| self.stdio_after_launch(&mut p).map(|io| (pid, io)));
        let (pid, (copies, kept)) = match made {
            Ok(v) => v,
            Err(e) => {
                // Nothing of it stays: a helper that failed (or was killed) may have left the
                // container, its cgroup or its state; the rootfs goes too.
                if let Err(leftover) = container::remove_leftovers(&c.root, &req.id, &bundle) {
                    log::warn!("cleaning up after the failed create of {}: {leftover}", req.id);
                }
                if c.rootfs_mounts > 0 {
                    unmount_rootfs(&bundle);
                }
                let _ = std::fs::remove_file(bundle.join(ROOT_FILE));
                let mut kept = std::mem::take(&mut p.kept);
                self.retire_logger(&mut kept);
                self.answer(p.caller, Err(e));
                if let Some(deleter) = self.cancelled_creates.remove(&req.id) {
                    // Nothing ran: as a created task's delete, the kill's status.
                    let response =
                        DeleteResponse { exit_status: 137, exited_at: MessageField::some(now()), ..Default::default() };
                    self.answer(deleter, encode(Ok(response)));
                }
                return;
            }
        };
        let cgroup = c.root.load(&req.id).map(|s| s.cgroup_path).unwrap_or_default();
        let oom_watch = self.watch_oom(&req.id, &cgroup);
        let mut init = Proc::new("", p.paths.clone(), Life::Created { spec: None });
        init.pid = pid;
        init.kept = kept;
        let task = Task {
            root: c.root,
            bundle,
            rootfs_mounts: c.rootfs_mounts,
            cgroup,
            init,
            execs: HashMap::new(),
            oom_watch,
            io_owner: c.io_owner,
            deleting: false,
        };
        self.tasks.insert(req.id.clone(), task);
        let (stdin_pump, pty_pump) = self.add_copies(&req.id, "", copies);
        if let Ok(t) = self.task(&req.id) {
            (t.init.stdin_pump, t.init.pty_pump) = (stdin_pump, pty_pump);
        }
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: pid as u32,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, "TaskCreate", &ev);
        crate::fault::point("shim", "Create-answer");
        self.answer(p.caller, encode(Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })));
        // Killed at the gate before its helper was done.
        if let Some((code, at)) = self.claim_orphan(pid) {
            self.on_exit(pid, code, at);
        }
    }

    fn start(&mut self, caller: Caller, req: StartRequest) -> RpcResult<()> {
        if !req.exec_id.is_empty() {
            return self.start_exec(caller, &req.id, &req.exec_id);
        }
        let root = self.root_of(&req.id);
        let t = self.task(&req.id)?;
        if !matches!(t.init.life, Life::Created { .. }) {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {} was started already", req.id)));
        }
        let gate = container::open_gate(&root, &req.id).map_err(engine_err)?;
        // Until the program runs, an exit is held, so that TaskStart comes before TaskExit.
        t.init.life = Life::Starting;
        self.watch_gate(gate, caller, &req.id);
        Ok(())
    }

    /// The init's answer arrived on its start gate (see [`container::close_gate`]).
    pub(super) fn finish_start(&mut self, gate: OwnedFd, caller: Caller, id: &str) {
        let root = self.root_of(id);
        let result = container::close_gate(&root, id, &gate);
        let Ok(t) = self.task(id) else {
            self.answer(caller, Err(task_not_found(id)));
            return;
        };
        let pid = t.init.pid;
        let st = match result {
            Ok(st) => st,
            Err(e) => {
                // The init exits: its exit is taken as the task's.
                t.init.life = Life::Running;
                self.answer(caller, Err(engine_err(e)));
                if let Some((code, at)) = self.claim_orphan(pid) {
                    self.on_exit(pid, code, at);
                }
                return;
            }
        };
        t.init.life = Life::Running;
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            "TaskStart",
            &TaskStart { container_id: id.to_string(), pid: pid as u32, ..Default::default() },
        );
        let response = encode(Ok(StartResponse { pid: pid as u32, ..Default::default() }));
        crate::fault::point("shim", "Start-answer");
        self.after_hooks(caller, id, &st, crate::hooks::Kind::Poststart, response);
        if let Some((code, at)) = self.claim_orphan(pid) {
            self.on_exit(pid, code, at);
        }
    }

    /// Answers `response` once the container's `kind` hooks ran (in a helper, so the loop
    /// goes on), or at once when it has none.
    fn after_hooks(
        &mut self,
        caller: Caller,
        id: &str,
        st: &crate::state::ContainerState,
        kind: crate::hooks::Kind,
        response: RpcResult<Vec<u8>>,
    ) {
        let Some(hooks) = st.hooks.as_ref().filter(|h| !crate::hooks::of(Some(h), kind).is_empty()) else {
            self.answer(caller, response);
            return;
        };
        let status_name = if kind == crate::hooks::Kind::Poststart { "running" } else { "stopped" };
        let req = HelperRequest::Hooks {
            kind: kind.field().to_string(),
            hooks: serde_json::to_string(hooks).unwrap_or_default(),
            state: String::from_utf8_lossy(&st.hook_state(status_name)).into_owned(),
        };
        let null = || std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map(OwnedFd::from);
        let stdio = match (null(), null(), null()) {
            (Ok(a), Ok(b), Ok(c)) => [a, b, c],
            _ => {
                self.answer(caller, response);
                return;
            }
        };
        let pending = Pending {
            caller,
            id: id.to_string(),
            what: PendingWhat::Hooks { response: response.clone() },
            paths: StdioPaths::default(),
            copies: Copies::default(),
            kept: Kept::default(),
            console: None,
        };
        if let Err(e) = self.runner.start(&req, stdio, pending) {
            log::warn!("running the {} hooks of {id}: {}", kind.field(), e.message);
            self.answer(caller, response);
        }
    }

    fn start_exec(&mut self, caller: Caller, id: &str, exec_id: &str) -> RpcResult<()> {
        let root = self.root_of(id);
        let t = self.task(id)?;
        if t.init.life.is_gone() {
            return Err(status(Code::FAILED_PRECONDITION, format!("container {id} init process is not running")));
        }
        let io_owner = t.io_owner;
        let p = t.proc_mut(exec_id)?;
        let spec = match std::mem::replace(&mut p.life, Life::Starting) {
            Life::Created { spec: Some(spec) } => spec,
            other => {
                let state = match &other {
                    Life::Starting => "is starting",
                    Life::Running | Life::Draining { .. } => "is running",
                    _ => "has exited",
                };
                p.life = other;
                return Err(status(Code::FAILED_PRECONDITION, format!("exec {exec_id} {state}")));
            }
        };
        let paths = p.paths.clone();
        let what = PendingWhat::ExecStart { exec_id: exec_id.to_string(), spec: spec.clone() };
        let state_dir = root.path().to_path_buf();
        let launched = self.launch(caller, id, &paths, io_owner, what, |console_socket| HelperRequest::Exec {
            root: state_dir,
            id: id.to_string(),
            process: spec.clone(),
            console_socket,
        });
        if launched.is_err()
            && let Ok(p) = self.task(id).and_then(|t| t.proc_mut(exec_id))
        {
            // Startable again: a retry may succeed.
            p.life = Life::Created { spec: Some(spec) };
        }
        launched
    }

    fn finish_exec_start(&mut self, mut p: Pending, exec_id: String, spec: String, result: RpcResult<i32>) {
        let id = p.id.clone();
        let made = result.and_then(|pid| match self.stdio_after_launch(&mut p) {
            Ok(io) => Ok((pid, io)),
            Err(e) => {
                // It runs, but without its terminal nobody could reach it: it goes.
                self.kill_unowned(pid);
                Err(e)
            }
        });
        let (pid, (copies, kept)) = match made {
            Ok(v) => v,
            Err(e) => {
                if let Ok(proc_) = self.task(&id).and_then(|t| t.proc_mut(&exec_id)) {
                    proc_.life = Life::Created { spec: Some(spec) };
                }
                let mut kept = std::mem::take(&mut p.kept);
                self.retire_logger(&mut kept);
                self.answer(p.caller, Err(e));
                return;
            }
        };
        let Ok(proc_) = self.task(&id).and_then(|t| t.proc_mut(&exec_id)) else {
            // Deleted meanwhile: the process has nothing to report to.
            self.kill_unowned(pid);
            self.answer(p.caller, Err(status(Code::NOT_FOUND, format!("exec {exec_id} not found"))));
            return;
        };
        (proc_.pid, proc_.life, proc_.kept) = (pid, Life::Running, kept);
        let (stdin_pump, pty_pump) = self.add_copies(&id, &exec_id, copies);
        if let Ok(proc_) = self.task(&id).and_then(|t| t.proc_mut(&exec_id)) {
            (proc_.stdin_pump, proc_.pty_pump) = (stdin_pump, pty_pump);
        }
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            "TaskExecStarted",
            &TaskExecStarted {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        self.answer(p.caller, encode(Ok(StartResponse { pid: pid as u32, ..Default::default() })));
        // A fast process that exited before its helper was done.
        if let Some((code, at)) = self.claim_orphan(pid) {
            self.on_exit(pid, code, at);
        }
    }

    fn state(&mut self, req: StateRequest) -> RpcResult<StateResponse> {
        let t = self.task(&req.id)?;
        let bundle = t.bundle.display().to_string();
        let root = t.root.clone();
        let is_init = req.exec_id.is_empty();
        let p = t.proc_mut(&req.exec_id)?;
        let api_status = match &p.life {
            Life::Created { .. } | Life::Starting => ApiStatus::CREATED,
            Life::Exited { .. } => ApiStatus::STOPPED,
            Life::Running | Life::Draining { .. } if !is_init => ApiStatus::RUNNING,
            Life::Running | Life::Draining { .. } => match container::oci_state(&root, &req.id).map(|s| s.status) {
                Ok(Status::Paused) => ApiStatus::PAUSED,
                _ => ApiStatus::RUNNING,
            },
        };
        let exit = p.life.exit();
        let (code, at) = exit.clone().unwrap_or_default();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid as u32,
            status: api_status.into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: code,
            exited_at: if exit.is_some() { MessageField::some(at) } else { MessageField::none() },
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&mut self, req: KillRequest) -> RpcResult<Empty> {
        let root = self.root_of(&req.id);
        let p = self.task(&req.id)?.proc_mut(&req.exec_id)?;
        // A reaped process's pid may belong to another process by now.
        let (pid, gone) = (p.pid, p.life.is_gone());
        if gone && !req.all {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() {
            container::kill(&root, &req.id, req.signal as i32, req.all).map_err(|e| match e {
                Error::WrongState { .. } => status(Code::NOT_FOUND, "process already finished"),
                e => engine_err(e),
            })?;
        } else {
            if pid == 0 {
                return Err(status(Code::FAILED_PRECONDITION, format!("exec {} was not started", req.exec_id)));
            }
            // Not nix's kill: its Signal cannot name real-time signals. The process is not
            // reaped (else `gone`), so its pid is still its own.
            // SAFETY: kill(2) takes plain integers.
            if unsafe { libc::kill(pid, req.signal as i32) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EINVAL) => status(Code::INVALID_ARGUMENT, format!("signal {}: {e}", req.signal)),
                    _ => status(Code::NOT_FOUND, format!("process already finished: {e}")),
                });
            }
        }
        Ok(Empty::new())
    }

    /// `Delete`: the answer now, or `None` when it comes after the `poststop` hooks.
    fn delete(&mut self, caller: Caller, req: DeleteRequest) -> RpcResult<Option<RpcResult<Vec<u8>>>> {
        if req.exec_id.is_empty() {
            return self.delete_task(caller, &req.id);
        }
        let t = self.task(&req.id)?;
        let p = t.proc_mut(&req.exec_id)?;
        if matches!(p.life, Life::Starting | Life::Running | Life::Draining { .. }) {
            return Err(status(Code::FAILED_PRECONDITION, format!("exec {} is running", req.exec_id)));
        }
        let Some(mut p) = t.execs.remove(&req.exec_id) else { return Err(task_not_found(&req.id)) };
        self.release(&mut p);
        let (code, at) = p.life.exit().unwrap_or_else(|| (0, now()));
        self.answer_waiters(&req.id, Some(&req.exec_id), code, &at);
        Ok(Some(encode(Ok(DeleteResponse {
            pid: p.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        }))))
    }

    /// Ends what the daemon runs for a deleted process: its copies, its logger and its FIFO
    /// ends.
    fn release(&mut self, p: &mut Proc) {
        if let Some(n) = p.pty_pump {
            // What the terminal still holds goes out before its copy ends.
            self.flush_pump(n);
        }
        for n in [p.stdin_pump.take(), p.pty_pump.take()].into_iter().flatten() {
            self.remove_pump(n, false);
        }
        self.retire_logger(&mut p.kept);
        p.kept.fifo_readers.clear();
    }

    fn delete_task(&mut self, caller: Caller, id: &str) -> RpcResult<Option<RpcResult<Vec<u8>>>> {
        if !self.tasks.contains_key(id) && self.creating(id) {
            // containerd gave up on the Create (its caller went): the helper is killed, and
            // this call answered once what it made is gone (`finish_create`).
            if self.cancelled_creates.contains_key(id) {
                return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is being deleted")));
            }
            let cancelled = id.to_string();
            self.runner.cancel(|p| p.id == cancelled && matches!(p.what, PendingWhat::Create(_)));
            self.cancelled_creates.insert(id.to_string(), caller);
            return Ok(None);
        }
        let t = self.task(id)?;
        if matches!(t.init.life, Life::Starting) {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is starting")));
        }
        if t.deleting {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is being deleted")));
        }
        let live = container::oci_state(&t.root, id).map(|s| s.status);
        if !t.init.life.is_gone() && matches!(live, Ok(Status::Running | Status::Paused)) {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is running: kill it first")));
        }
        let root = t.root.clone();
        match container::delete_begin(&root, id, true) {
            Ok(container::Deletion::Ready(st)) => {
                container::delete_end(&root, &st).map_err(engine_err)?;
                self.finish_delete(caller, id, Some(st))
            }
            Ok(container::Deletion::Emptying { st, cgroup }) => {
                // Processes are dying: the answer comes once the cgroup is empty, and the loop
                // goes on meanwhile.
                t.deleting = true;
                let id = id.to_string();
                self.when_cgroup(
                    cgroup,
                    CgroupGoal::Empty,
                    Box::new(move |d: &mut Daemon, _| {
                        let ended = container::delete_end(&root, &st).map_err(engine_err);
                        let answer = ended.and_then(|()| d.finish_delete(caller, &id, Some(st)));
                        if let Ok(t) = d.task(&id) {
                            t.deleting = false;
                        }
                        match answer {
                            Ok(Some(r)) => d.answer(caller, r),
                            Ok(None) => {}
                            Err(e) => d.answer(caller, Err(e)),
                        }
                    }),
                );
                Ok(None)
            }
            Err(Error::NotFound(_)) => {
                // A create whose helper was killed half-way leaves its cgroup and state directory.
                container::remove_abandoned(&root, id).map_err(engine_err)?;
                self.finish_delete(caller, id, None)
            }
            Err(e) => Err(engine_err(e)),
        }
    }

    /// The rest of `Delete` once the engine's container is gone (`deleted`; `None` when it
    /// was gone before): every exit not reported yet is, the process table forgets the task,
    /// the rootfs is unmounted, TaskDelete goes out; the answer now, or after the `poststop`
    /// hooks (`None`).
    fn finish_delete(
        &mut self,
        caller: Caller,
        id: &str,
        deleted: Option<crate::state::ContainerState>,
    ) -> RpcResult<Option<RpcResult<Vec<u8>>>> {
        // An exit still draining its terminal's output is reported before the task goes:
        // CRI learns a container's end from TaskExit, not from TaskDelete.
        let draining: Vec<String> = self
            .task(id)?
            .procs_mut()
            .filter(|p| matches!(p.life, Life::Draining { .. }))
            .map(|p| p.exec_id.clone())
            .collect();
        for exec_id in draining {
            self.report_exit(id, &exec_id);
        }
        let Some(mut t) = self.tasks.remove(id) else { return Err(task_not_found(id)) };
        if let Some(token) = t.oom_watch.take() {
            self.unwatch_oom(token);
        }
        self.release(&mut t.init);
        for mut p in std::mem::take(&mut t.execs).into_values() {
            self.release(&mut p);
            let (code, at) = p.life.any_exit().unwrap_or_else(|| (137, now()));
            self.answer_waiters(id, Some(&p.exec_id), code, &at);
        }
        if t.rootfs_mounts > 0 {
            unmount_rootfs(&t.bundle);
        }
        // Without an exit, the delete killed it: 128 + SIGKILL. A `Wait` still open on the
        // task (its exit never came: `delete` reaped a created init itself) gets this.
        let (code, at) = t.init.life.any_exit().unwrap_or_else(|| (137, now()));
        self.answer_waiters(id, None, code, &at);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            "TaskDelete",
            &TaskDelete {
                container_id: id.to_string(),
                pid: t.init.pid as u32,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                id: id.to_string(),
                ..Default::default()
            },
        );
        let response = encode(Ok(DeleteResponse {
            pid: t.init.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        }));
        match deleted {
            Some(st) => {
                self.after_hooks(caller, id, &st, crate::hooks::Kind::Poststop, response);
                Ok(None)
            }
            None => Ok(Some(response)),
        }
    }

    fn pids(&mut self, req: PidsRequest) -> RpcResult<PidsResponse> {
        let root = self.root_of(&req.id);
        let t = self.task(&req.id)?;
        let execs: HashMap<i32, String> =
            t.execs.values().filter(|p| p.pid > 0 && !p.life.is_gone()).map(|p| (p.pid, p.exec_id.clone())).collect();
        let pids = container::pids(&root, &req.id).map_err(engine_err)?;
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info =
                    containerd_shim::protos::types::task::ProcessInfo { pid: pid as u32, ..Default::default() };
                if let Some(exec_id) = execs.get(&pid) {
                    let details = containerd_shim::protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    let mut any = Any::new();
                    any.type_url = PROCESS_DETAILS_TYPE_URL.to_string();
                    any.value = details.write_to_bytes().unwrap_or_default();
                    info.info = MessageField::some(any);
                }
                info
            })
            .collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    /// `Pause` (`freeze`) or `Resume`: answered once the cgroup is frozen or thawed.
    fn freeze(&mut self, caller: Caller, id: &str, freeze: bool) -> RpcResult<()> {
        if self.task(id)?.deleting {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is being deleted")));
        }
        let cgroup = container::request_freeze(&self.root_of(id), id, freeze).map_err(engine_err)?;
        let id = id.to_string();
        self.when_cgroup(
            cgroup,
            CgroupGoal::Frozen(freeze),
            Box::new(move |d: &mut Daemon, done| {
                if !done {
                    let what = if freeze { "freeze" } else { "thaw" };
                    d.answer(caller, Err(status(Code::DEADLINE_EXCEEDED, format!("{id} did not {what} in time"))));
                    return;
                }
                if freeze {
                    d.publish(
                        topics::TASK_PAUSED_EVENT_TOPIC,
                        "TaskPaused",
                        &TaskPaused { container_id: id.clone(), ..Default::default() },
                    );
                } else {
                    d.publish(
                        topics::TASK_RESUMED_EVENT_TOPIC,
                        "TaskResumed",
                        &TaskResumed { container_id: id.clone(), ..Default::default() },
                    );
                }
                d.answer(caller, encode(Ok(Empty::new())));
            }),
        );
        Ok(())
    }

    fn exec(&mut self, req: ExecProcessRequest) -> RpcResult<Empty> {
        // Checked here so that a bad spec fails `Exec`, not the later `Start`; the helper
        // decodes it into the OCI process.
        serde_json::from_slice::<serde::de::IgnoredAny>(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let spec = String::from_utf8(req.spec.value.clone())
            .map_err(|_| status(Code::INVALID_ARGUMENT, "exec process spec: not UTF-8"))?;
        let t = self.task(&req.id)?;
        if t.init.life.is_gone() {
            return Err(status(Code::FAILED_PRECONDITION, format!("cannot exec in a stopped container {}", req.id)));
        }
        if t.execs.contains_key(&req.exec_id) {
            return Err(status(Code::ALREADY_EXISTS, format!("id {}: already exists", req.exec_id)));
        }
        let paths = paths_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        t.execs.insert(req.exec_id.clone(), Proc::new(&req.exec_id, paths, Life::Created { spec: Some(spec) }));
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            "TaskExecAdded",
            &TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() },
        );
        Ok(Empty::new())
    }

    fn resize_pty(&mut self, req: ResizePtyRequest) -> RpcResult<Empty> {
        let p = self.task(&req.id)?.proc_mut(&req.exec_id)?;
        let master = p
            .kept
            .pty_master
            .as_ref()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the process has no terminal"))?;
        crate::tty::set_winsize(master, crate::tty::WinSize { rows: req.height as u16, cols: req.width as u16 })
            .map_err(engine_err)?;
        Ok(Empty::new())
    }

    fn close_io(&mut self, req: CloseIORequest) -> RpcResult<Empty> {
        let p = self.task(&req.id)?.proc_mut(&req.exec_id)?;
        if req.stdin
            && let Some(n) = p.stdin_pump
        {
            self.close_pump(n);
        }
        Ok(Empty::new())
    }

    fn update(&mut self, req: UpdateTaskRequest) -> RpcResult<Empty> {
        self.task(&req.id)?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("update: resources: {e}")))?;
        // As `strata update`: refused for a stopped task, and nothing changes unless the host
        // offers every controller asked for.
        container::update(&self.root_of(&req.id), &req.id, &resources).map_err(engine_err)?;
        Ok(Empty::new())
    }

    fn stats(&mut self, req: StatsRequest) -> RpcResult<StatsResponse> {
        let cgroup = self.task(&req.id)?.cgroup.clone();
        let stats = Cgroup::open(cgroup).stats().map_err(|e| engine_err(e.into()))?;
        let value = metrics::to_metrics(&stats).write_to_bytes().map_err(|e| status(Code::INTERNAL, e))?;
        let mut any = Any::new();
        any.type_url = metrics::METRICS_TYPE_URL.to_string();
        any.value = value;
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn connect(&mut self, req: ConnectRequest) -> RpcResult<ConnectResponse> {
        let task_pid = self.tasks.get(&req.id).map(|t| t.init.pid as u32).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("strata {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&mut self, _req: ShutdownRequest) -> RpcResult<Empty> {
        if self.sandbox_alive() {
            // A pod's shim serves its sandbox until `ShutdownSandbox`.
            return Ok(Empty::new());
        }
        if self.tasks.is_empty() && self.runner.is_empty() {
            log::info!("no task left in namespace {}: shutting down", self.namespace);
            self.exit_soon();
        } else if self.tasks.is_empty() {
            // Only creates in flight: decided once they are done (`finish_launch`).
            self.shutdown_asked = true;
        }
        Ok(Empty::new())
    }
}
