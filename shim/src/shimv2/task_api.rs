//! The task API's calls on the [`Daemon`]: each maps a containerd request onto the engine, the
//! helper or the daemon's process table. [`Daemon::dispatch`] decodes a request by method name
//! and encodes the answer; `Wait` on a live process is answered later, when it exits.

use super::helper::HelperRequest;
use super::metrics;
use super::options;
use super::service::{ApiStatus, Daemon, Proc, ROOT_FILE, Task, engine_err, now, unmount_rootfs};
use super::stdio::StdioPaths;
use super::ttrpc::{RpcResult, status};
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
use std::path::PathBuf;

/// The task service's name on the wire (task API v2).
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";

fn decode<M: Message>(payload: &[u8]) -> RpcResult<M> {
    M::parse_from_bytes(payload).map_err(|e| status(Code::INVALID_ARGUMENT, format!("a malformed request: {e}")))
}

fn encode<M: Message>(m: RpcResult<M>) -> RpcResult<Vec<u8>> {
    m.and_then(|m| m.write_to_bytes().map_err(|e| status(Code::INTERNAL, e)))
}

fn task_not_found(id: &str) -> super::ttrpc::RpcError {
    status(Code::NOT_FOUND, format!("task {id} not found"))
}

fn paths_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal }
}

impl Daemon {
    /// Runs one call. `None`: the answer comes later (a `Wait` on a live process).
    pub(super) fn dispatch(&mut self, conn: u64, stream: u32, req: &Request) -> Option<RpcResult<Vec<u8>>> {
        if req.service != TASK_SERVICE {
            return Some(Err(status(Code::UNIMPLEMENTED, format!("service {} is not served here", req.service))));
        }
        let p = &req.payload;
        Some(match req.method.as_str() {
            "Create" => decode(p).and_then(|r| encode(self.create(r))),
            "Start" => decode(p).and_then(|r| encode(self.start(r))),
            "State" => decode(p).and_then(|r| encode(self.state(r))),
            "Kill" => decode(p).and_then(|r| encode(self.kill(r))),
            "Delete" => decode(p).and_then(|r| encode(self.delete(r))),
            "Pids" => decode(p).and_then(|r| encode(self.pids(r))),
            "Pause" => decode(p).and_then(|r| encode(self.pause(r))),
            "Resume" => decode(p).and_then(|r| encode(self.resume(r))),
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
        Ok(p.exit.clone().map(|(code, at)| WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        }))
    }

    fn create(&mut self, req: CreateTaskRequest) -> RpcResult<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(Code::UNIMPLEMENTED, "strata cannot restore from a checkpoint"));
        }
        if self.tasks.contains_key(&req.id) {
            return Err(status(Code::ALREADY_EXISTS, format!("task {} already exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let options = options::parse(&req.options)?;
        let state_root = match options.root {
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
                for _ in 0..mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(status(Code::INTERNAL, format!("mounting the rootfs ({} {}): {e}", m.type_, m.source)));
            }
            mounted += 1;
        }
        let paths = paths_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let root = state_root.path().to_path_buf();
        let launched = self.launch(&req.id, &paths, options.io_owner, |console_socket| HelperRequest::Create {
            root,
            id: req.id.clone(),
            bundle: bundle.clone(),
            console_socket,
        });
        let (pid, copies, kept) = match launched {
            Ok(v) => v,
            Err(e) => {
                for _ in 0..mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(e);
            }
        };
        let cgroup = state_root.load(&req.id).map(|s| s.cgroup_path).unwrap_or_default();
        let oom_watch = self.watch_oom(&req.id, &cgroup);
        let task = Task {
            root: state_root,
            bundle: bundle.clone(),
            rootfs_mounts: mounted,
            cgroup,
            init: Proc { pid, paths, started: true, kept, ..Default::default() },
            execs: HashMap::new(),
            oom_watch,
            io_owner: options.io_owner,
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
        Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    fn start(&mut self, req: StartRequest) -> RpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(&req.id, &req.exec_id);
        }
        let pid = self.task(&req.id)?.init.pid;
        container::start(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        // An exit that came meanwhile is reaped after this call: TaskStart comes first.
        self.publish(
            topics::TASK_START_EVENT_TOPIC,
            "TaskStart",
            &TaskStart { container_id: req.id.clone(), pid: pid as u32, ..Default::default() },
        );
        Ok(StartResponse { pid: pid as u32, ..Default::default() })
    }

    fn start_exec(&mut self, id: &str, exec_id: &str) -> RpcResult<StartResponse> {
        let t = self.task(id)?;
        let io_owner = t.io_owner;
        let root = t.root.path().to_path_buf();
        let p = t.proc_mut(exec_id)?;
        let spec = p
            .spec
            .take()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, format!("exec {exec_id} was already started")))?;
        let paths = p.paths.clone();
        let (pid, copies, kept) = self.launch(id, &paths, io_owner, |console_socket| HelperRequest::Exec {
            root,
            id: id.to_string(),
            process: spec,
            console_socket,
        })?;
        let p = self.task(id)?.proc_mut(exec_id)?;
        (p.pid, p.started, p.kept) = (pid, true, kept);
        let (stdin_pump, pty_pump) = self.add_copies(id, exec_id, copies);
        if let Ok(p) = self.task(id).and_then(|t| t.proc_mut(exec_id)) {
            (p.stdin_pump, p.pty_pump) = (stdin_pump, pty_pump);
        }
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            "TaskExecStarted",
            &TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        Ok(StartResponse { pid: pid as u32, ..Default::default() })
    }

    fn state(&mut self, req: StateRequest) -> RpcResult<StateResponse> {
        let t = self.task(&req.id)?;
        let bundle = t.bundle.display().to_string();
        let root = t.root.clone();
        let is_init = req.exec_id.is_empty();
        let p = t.proc_mut(&req.exec_id)?;
        let api_status = match (&p.exit, is_init, p.started) {
            (Some(_), _, _) => ApiStatus::STOPPED,
            (None, false, false) => ApiStatus::CREATED,
            (None, false, true) => ApiStatus::RUNNING,
            (None, true, _) => match container::oci_state(&root, &req.id).map(|s| s.status) {
                Ok(Status::Created | Status::Creating) => ApiStatus::CREATED,
                Ok(Status::Running) => ApiStatus::RUNNING,
                Ok(Status::Paused) => ApiStatus::PAUSED,
                Ok(Status::Stopped) | Err(_) => ApiStatus::STOPPED,
            },
        };
        let (code, at) = p.exit.clone().unwrap_or_default();
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
            exited_at: if p.exit.is_some() { MessageField::some(at) } else { MessageField::none() },
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn kill(&mut self, req: KillRequest) -> RpcResult<Empty> {
        let p = self.task(&req.id)?.proc_mut(&req.exec_id)?;
        // A pending exit was reaped already: its pid may belong to another process by now.
        let (pid, exited) = (p.pid, p.exit.is_some() || p.pending_exit.is_some());
        if exited && !req.all {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() {
            container::kill(&self.root_of(&req.id), &req.id, req.signal as i32, req.all).map_err(|e| match e {
                Error::WrongState { .. } => status(Code::NOT_FOUND, "process already finished"),
                e => engine_err(e),
            })?;
        } else {
            let sig =
                nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| status(Code::NOT_FOUND, format!("process already finished: {e}")))?;
        }
        Ok(Empty::new())
    }

    fn delete(&mut self, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        if req.exec_id.is_empty() {
            return self.delete_task(&req.id);
        }
        let t = self.task(&req.id)?;
        let p = t.proc_mut(&req.exec_id)?;
        if p.started && p.exit.is_none() {
            return Err(status(Code::FAILED_PRECONDITION, format!("exec {} is running", req.exec_id)));
        }
        let mut p = t.execs.remove(&req.exec_id).unwrap_or_default();
        self.release(&mut p);
        let (code, at) = p.exit.unwrap_or_else(|| (0, now()));
        self.answer_waiters(&req.id, Some(&req.exec_id), code, &at);
        Ok(DeleteResponse {
            pid: p.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    /// Ends what the daemon runs for a deleted process: its copies and its logger.
    fn release(&mut self, p: &mut Proc) {
        if let Some(n) = p.pty_pump {
            // What the terminal still holds goes out before its copy ends.
            self.flush_pump(n);
        }
        for n in [p.stdin_pump.take(), p.pty_pump.take()].into_iter().flatten() {
            self.remove_pump(n, false);
        }
        self.retire_logger(&mut p.kept);
    }

    fn delete_task(&mut self, id: &str) -> RpcResult<DeleteResponse> {
        let t = self.task(id)?;
        let live = container::oci_state(&t.root, id).map(|s| s.status);
        if t.init.exit.is_none() && matches!(live, Ok(Status::Running | Status::Paused)) {
            return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is running: kill it first")));
        }
        let root = t.root.clone();
        container::delete(&root, id, true).or_else(|e| match e {
            Error::NotFound(_) => Ok(()),
            e => Err(engine_err(e)),
        })?;
        let Some(mut t) = self.tasks.remove(id) else { return Err(task_not_found(id)) };
        if let Some(token) = t.oom_watch.take() {
            self.unwatch_oom(token);
        }
        self.release(&mut t.init);
        for mut p in std::mem::take(&mut t.execs).into_values() {
            self.release(&mut p);
            let (code, at) = p.exit.clone().or(p.pending_exit.clone()).unwrap_or_else(|| (137, now()));
            self.answer_waiters(id, Some(&p.exec_id), code, &at);
        }
        for _ in 0..t.rootfs_mounts {
            unmount_rootfs(&t.bundle);
        }
        // Without a reported exit, the delete killed it: 128 + SIGKILL. A `Wait` still open on
        // the task (its exit never came: `delete` reaped a created init itself) gets this.
        let (code, at) = t.init.exit.clone().or(t.init.pending_exit.clone()).unwrap_or_else(|| (137, now()));
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
        Ok(DeleteResponse {
            pid: t.init.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn pids(&mut self, req: PidsRequest) -> RpcResult<PidsResponse> {
        self.task(&req.id)?;
        let pids = container::pids(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|p| containerd_shim::protos::types::task::ProcessInfo { pid: p as u32, ..Default::default() })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&mut self, req: PauseRequest) -> RpcResult<Empty> {
        self.task(&req.id)?;
        container::pause(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            "TaskPaused",
            &TaskPaused { container_id: req.id.clone(), ..Default::default() },
        );
        Ok(Empty::new())
    }

    fn resume(&mut self, req: ResumeRequest) -> RpcResult<Empty> {
        self.task(&req.id)?;
        container::resume(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            "TaskResumed",
            &TaskResumed { container_id: req.id.clone(), ..Default::default() },
        );
        Ok(Empty::new())
    }

    fn exec(&mut self, req: ExecProcessRequest) -> RpcResult<Empty> {
        // Checked here so that a bad spec fails `Exec`, not the later `Start`; the helper
        // decodes it into the OCI process.
        serde_json::from_slice::<serde::de::IgnoredAny>(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let spec = String::from_utf8(req.spec.value.clone())
            .map_err(|_| status(Code::INVALID_ARGUMENT, "exec process spec: not UTF-8"))?;
        let t = self.task(&req.id)?;
        if t.execs.contains_key(&req.exec_id) {
            return Err(status(Code::ALREADY_EXISTS, format!("exec {} already exists", req.exec_id)));
        }
        t.execs.insert(
            req.exec_id.clone(),
            Proc {
                exec_id: req.exec_id.clone(),
                paths: paths_of(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                spec: Some(spec),
                ..Default::default()
            },
        );
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
        if self.tasks.is_empty() {
            log::info!("no task left in namespace {}: shutting down", self.namespace);
            self.exit_soon();
        }
        Ok(Empty::new())
    }
}
