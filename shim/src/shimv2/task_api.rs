//! The task API's calls (`containerd_shim::Task`) on the [`Service`]: each maps a containerd
//! request onto the engine, the helper or the service's process table.

use super::helper::HelperRequest;
use super::metrics;
use super::options;
use super::service::{ApiStatus, Proc, ROOT_FILE, Service, Task, engine_err, now, status, unmount_rootfs};
use super::stdio::StdioPaths;
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
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

impl Service {
    fn delete_task(&self, id: &str) -> TtrpcResult<DeleteResponse> {
        let root = {
            let st = self.lock();
            let t = st.tasks.get(id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))?;
            let live = container::oci_state(&t.root, id).map(|s| s.status);
            if t.init.exit.is_none() && matches!(live, Ok(Status::Running | Status::Paused)) {
                return Err(status(Code::FAILED_PRECONDITION, format!("task {id} is running: kill it first")));
            }
            t.root.clone()
        };
        container::delete(&root, id, true).or_else(|e| match e {
            Error::NotFound(_) => Ok(()),
            e => Err(engine_err(e)),
        })?;
        let mut st = self.lock();
        let Some(t) = st.tasks.remove(id) else {
            return Err(status(Code::NOT_FOUND, format!("task {id} not found")));
        };
        drop(st);
        t.oom_stop.store(true, Ordering::Relaxed);
        t.init.relay.close_stdin();
        for _ in 0..t.rootfs_mounts {
            unmount_rootfs(&t.bundle);
        }
        // Without a reported exit, the delete killed it: 128 + SIGKILL.
        let (code, at) = t.init.exit.clone().or(t.init.pending_exit.clone()).unwrap_or_else(|| (137, now()));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.to_string(),
                pid: t.init.pid as u32,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                id: id.to_string(),
                ..Default::default()
            }),
        );
        Ok(DeleteResponse {
            pid: t.init.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<StartResponse> {
        let (paths, spec, io_owner) = {
            let mut st = self.lock();
            let t = st.tasks.get_mut(id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))?;
            let io_owner = t.io_owner;
            let p = t.proc_mut(exec_id)?;
            let spec = p
                .spec
                .take()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, format!("exec {exec_id} was already started")))?;
            (p.paths.clone(), spec, io_owner)
        };
        let root = self.root_of(id).path().to_path_buf();
        let (pid, relay, pty_done) = self.launch(id, &paths, io_owner, |console_socket| HelperRequest::Exec {
            root,
            id: id.to_string(),
            process: spec,
            console_socket,
        })?;
        let mut st = self.lock();
        let early_exit = st.unclaimed.remove(&pid);
        let t = st.tasks.get_mut(id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))?;
        let p = t.proc_mut(exec_id)?;
        p.pid = pid;
        p.started = true;
        p.relay = relay;
        p.pty_done = pty_done;
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        if let Some(code) = early_exit {
            // It exited before its helper did: report it now, after ExecStarted.
            p.pending_exit = Some((code as u32, now()));
            let done = p.pty_done.take();
            drop(st);
            self.finish_exit(id, exec_id, done);
        }
        Ok(StartResponse { pid: pid as u32, ..Default::default() })
    }
}

fn paths_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal }
}

impl containerd_shim::Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(Code::UNIMPLEMENTED, "strata cannot restore from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let options = options::parse(&req.options)?;
        let state_root = match options.root {
            Some(dir) => {
                let dir = dir.join(&self.inner.namespace);
                // Recorded in the bundle for `delete` after a dead shim.
                std::fs::write(bundle.join(ROOT_FILE), dir.as_os_str().as_encoded_bytes())
                    .map_err(|e| status(Code::INTERNAL, format!("recording the state root: {e}")))?;
                StateRoot::new(dir).map_err(engine_err)?
            }
            None => self.inner.root.clone(),
        };
        let rootfs = bundle.join("rootfs");
        let mut mounted = 0;
        for m in &req.rootfs {
            if let Err(e) = containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &rootfs) {
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
        let (pid, relay, pty_done) = match launched {
            Ok(v) => v,
            Err(e) => {
                for _ in 0..mounted {
                    unmount_rootfs(&bundle);
                }
                return Err(e);
            }
        };
        let cgroup = state_root.load(&req.id).map(|s| s.cgroup_path).unwrap_or_default();
        let oom_stop = Arc::new(AtomicBool::new(false));
        let task = Task {
            root: state_root,
            bundle: bundle.clone(),
            rootfs_mounts: mounted,
            cgroup: cgroup.clone(),
            init: Proc { pid, paths, started: true, relay, pty_done, ..Default::default() },
            execs: HashMap::new(),
            oom_stop: oom_stop.clone(),
            io_owner: options.io_owner,
        };
        self.lock().tasks.insert(req.id.clone(), task);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
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
            }),
        );
        self.spawn_oom_watcher(req.id.clone(), cgroup, oom_stop);
        Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(&req.id, &req.exec_id);
        }
        let pid = {
            let mut st = self.lock();
            let t = st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, "task not found"))?;
            t.init.starting = true;
            t.init.pid
        };
        let started = container::start(&self.root_of(&req.id), &req.id).map_err(engine_err);
        let mut st = self.lock();
        let Some(t) = st.tasks.get_mut(&req.id) else { return Err(status(Code::NOT_FOUND, "task not found")) };
        t.init.starting = false;
        if started.is_ok() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart { container_id: req.id.clone(), pid: pid as u32, ..Default::default() }),
            );
        }
        // An exit that came while starting is reported now, after TaskStart.
        if t.init.exit_ready {
            self.report_exit(&req.id, &mut t.init);
        }
        drop(st);
        self.inner.changed.notify_all();
        started?;
        Ok(StartResponse { pid: pid as u32, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let mut st = self.lock();
        let t =
            st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
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

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (pid, exited) = {
            let mut st = self.lock();
            let t = st
                .tasks
                .get_mut(&req.id)
                .ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
            let p = t.proc_mut(&req.exec_id)?;
            (p.pid, p.exit.is_some())
        };
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

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if req.exec_id.is_empty() {
            return self.delete_task(&req.id);
        }
        let mut st = self.lock();
        let t =
            st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        let p = t.proc_mut(&req.exec_id)?;
        if p.started && p.exit.is_none() {
            return Err(status(Code::FAILED_PRECONDITION, format!("exec {} is running", req.exec_id)));
        }
        let p = t.execs.remove(&req.exec_id).unwrap_or_default();
        p.relay.close_stdin();
        let (code, at) = p.exit.unwrap_or_else(|| (0, now()));
        Ok(DeleteResponse {
            pid: p.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = container::pids(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        Ok(PidsResponse {
            processes: pids.into_iter().map(|p| ProcessInfo { pid: p as u32, ..Default::default() }).collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        container::pause(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused { container_id: req.id.clone(), ..Default::default() }),
        );
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        container::resume(&self.root_of(&req.id), &req.id).map_err(engine_err)?;
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed { container_id: req.id.clone(), ..Default::default() }),
        );
        Ok(Empty::new())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: containerd_shim::api::CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(status(Code::UNIMPLEMENTED, "checkpoint is not implemented by strata (no CRIU support)"))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let mut st = self.lock();
        let t =
            st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
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
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let mut st = self.lock();
        let t =
            st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        let p = t.proc_mut(&req.exec_id)?;
        let master = p
            .relay
            .pty_master
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the process has no terminal"))?;
        crate::tty::set_winsize(&*master, crate::tty::WinSize { rows: req.height as u16, cols: req.width as u16 })
            .map_err(engine_err)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut st = self.lock();
        let t =
            st.tasks.get_mut(&req.id).ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
        if req.stdin {
            t.proc_mut(&req.exec_id)?.relay.close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let cgroup = {
            let st = self.lock();
            st.tasks.get(&req.id).map(|t| t.cgroup.clone()).ok_or_else(|| status(Code::NOT_FOUND, "task not found"))?
        };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("update: resources: {e}")))?;
        Cgroup::open(cgroup).update(&resources).map_err(|e| engine_err(e.into()))?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut st = self.lock();
        loop {
            let t = st
                .tasks
                .get_mut(&req.id)
                .ok_or_else(|| status(Code::NOT_FOUND, format!("task {} not found", req.id)))?;
            if let Some((code, at)) = t.proc_mut(&req.exec_id)?.exit.clone() {
                return Ok(WaitResponse { exit_status: code, exited_at: MessageField::some(at), ..Default::default() });
            }
            st = self.inner.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let cgroup = {
            let st = self.lock();
            st.tasks.get(&req.id).map(|t| t.cgroup.clone()).ok_or_else(|| status(Code::NOT_FOUND, "task not found"))?
        };
        let stats = Cgroup::open(cgroup).stats().map_err(|e| engine_err(e.into()))?;
        let value = metrics::to_metrics(&stats).write_to_bytes().map_err(|e| status(Code::INTERNAL, e))?;
        let mut any = Any::new();
        any.type_url = metrics::METRICS_TYPE_URL.to_string();
        any.value = value;
        Ok(StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let st = self.lock();
        let task_pid = st.tasks.get(&req.id).map(|t| t.init.pid as u32).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("strata {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.lock().tasks.is_empty() {
            log::info!("no task left in namespace {}: shutting down", self.inner.namespace);
            self.flush_events(std::time::Duration::from_secs(10));
            self.inner.exit_signal.signal();
        }
        Ok(Empty::new())
    }
}
