//! The task service's state: each container is a `Task` with its init and exec processes; the
//! reaper's exit notifications drive their exits and the events containerd expects, in order:
//! TaskCreate → TaskStart → TaskExit → TaskDelete, and ExecAdded → ExecStarted → TaskExit for
//! execs. The calls themselves are in `task_api`.

use super::helper::{self, HelperRequest};
use super::stdio::{StdioOwner, StdioPaths, StdioRelay};
use crate::error::Error;
use crate::state::StateRoot;
use cgroups::Cgroup;
use containerd_shim::monitor::{ExitEvent, Subject, Topic, monitor_subscribe};
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcResult};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The status of a process as the task API names it.
pub(super) type ApiStatus = containerd_shim::api::Status;

/// Exits of pids no process claims yet (helpers, and execs that exit before their helper) are
/// kept this long at most, so stray orphans cannot grow the table without bound.
const MAX_UNCLAIMED: usize = 4096;

/// How long a helper may take to create a container or start an exec.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// One process of a task: the init (empty `exec_id`) or an exec.
#[derive(Debug, Default)]
pub(super) struct Proc {
    pub(super) exec_id: String,
    pub(super) pid: i32,
    pub(super) paths: StdioPaths,
    /// The OCI process of an exec, until it starts.
    pub(super) spec: Option<serde_json::Value>,
    pub(super) started: bool,
    /// `Start` is between starting the program and publishing TaskStart: an exit waits for it.
    pub(super) starting: bool,
    /// An exit seen by the reaper, not yet reported (waits for `starting` and the pty relay).
    pub(super) pending_exit: Option<(u32, Timestamp)>,
    /// The pty relay of the pending exit has drained.
    pub(super) exit_ready: bool,
    /// The reported exit: what `Wait`, `State` and `Delete` see.
    pub(super) exit: Option<(u32, Timestamp)>,
    pub(super) relay: StdioRelay,
    /// The pty relay, joined before the exit is reported so its output is not cut off.
    pub(super) pty_done: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub(super) struct Task {
    /// The engine's state root for this task (the runtime options may name one).
    pub(super) root: StateRoot,
    pub(super) bundle: PathBuf,
    /// How many of containerd's rootfs mounts the shim stacked on `bundle/rootfs`.
    pub(super) rootfs_mounts: usize,
    pub(super) cgroup: PathBuf,
    pub(super) init: Proc,
    pub(super) execs: HashMap<String, Proc>,
    pub(super) oom_stop: Arc<AtomicBool>,
    /// The stdio owner from the runtime options, for the init and every exec.
    pub(super) io_owner: Option<(u32, u32)>,
}

impl Task {
    pub(super) fn proc_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs.get_mut(exec_id).ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) tasks: HashMap<String, Task>,
    pub(super) unclaimed: HashMap<i32, i32>,
}

type Event = (&'static str, Box<dyn MessageDyn>);

pub(super) struct Inner {
    pub(super) namespace: String,
    pub(super) root: StateRoot,
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    pub(super) events: Mutex<Sender<Event>>,
    /// Tells, once the event queue is closed, that everything queued was published.
    published: Mutex<Option<Receiver<()>>>,
    pub(super) exit_signal: Arc<ExitSignal>,
}

/// The task service of one shim daemon; it serves every container grouped into this shim.
#[derive(Clone)]
pub struct Service {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

pub(super) fn engine_err(e: Error) -> ttrpc::Error {
    let code = match &e {
        Error::NotFound(_) => Code::NOT_FOUND,
        Error::Exists(_) => Code::ALREADY_EXISTS,
        Error::WrongState { .. } => Code::FAILED_PRECONDITION,
        Error::Invalid(_) | Error::InvalidId(_) => Code::INVALID_ARGUMENT,
        _ => Code::UNKNOWN,
    };
    status(code, e)
}

pub(super) fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// The engine's state root for a containerd namespace (as runc's `/run/containerd/runc/<ns>`).
pub fn state_root(namespace: &str) -> PathBuf {
    Path::new("/run/containerd/strata").join(namespace)
}

/// The file in a bundle that records a state root given by the runtime options, so that
/// `delete` finds the container after its shim died.
pub const ROOT_FILE: &str = "strata-root";

/// The state root of the task in `bundle`: the one its runtime options named, or the default.
pub fn task_state_root(bundle: &Path, namespace: &str) -> PathBuf {
    match std::fs::read_to_string(bundle.join(ROOT_FILE)) {
        Ok(root) if !root.trim().is_empty() => PathBuf::from(root.trim()),
        _ => state_root(namespace),
    }
}

/// Receives a pty master that the container's init or exec sent to the console socket.
fn receive_master(listener: &UnixListener) -> crate::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd};
    listener.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
    let (conn, _) = listener.accept().map_err(|e| Error::io("the container's terminal was not received", e))?;
    conn.set_nonblocking(false).map_err(|e| Error::io("console socket", e))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| Error::sys("receiving the pty master", e))?;
    for c in msg.cmsgs().map_err(|e| Error::sys("receiving the pty master", e))? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS installed this descriptor in our table; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(Error::Init("the console socket carried no pty master".into()))
}

/// A console socket in the state root for one helper run; removed when dropped.
struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn bind(root: &StateRoot) -> crate::Result<ConsoleSocket> {
        // Short: a socket path must fit in 108 bytes, and CRI's ids alone are 64.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = root.path().join(format!(".c{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        Ok(ConsoleSocket { path, listener })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
}

impl Service {
    /// A service for `namespace` that publishes through `publisher` and signals `exit_signal`
    /// on shutdown.
    pub fn new(namespace: &str, publisher: RemotePublisher, exit_signal: Arc<ExitSignal>) -> crate::Result<Service> {
        let root = StateRoot::new(state_root(namespace))?;
        let (tx, rx) = channel::<Event>();
        let ns = namespace.to_string();
        // One publisher thread keeps events in the order they happened. When containerd
        // restarts, the connection breaks: reconnect to its ttrpc address and send again.
        let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let (done_tx, done_rx) = channel::<()>();
        std::thread::spawn(move || {
            let mut publisher = publisher;
            for (topic, event) in rx {
                let mut delay = Duration::from_millis(50);
                for attempt in 0..20 {
                    match publisher.publish(Context::default(), topic, &ns, event.clone_box()) {
                        Ok(()) => break,
                        Err(e) => {
                            log::warn!("publishing {topic} (attempt {attempt}): {e}");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(2));
                            if let Ok(p) = RemotePublisher::new(&ttrpc_address) {
                                publisher = p;
                            }
                        }
                    }
                }
            }
            let _ = done_tx.send(());
        });
        let inner = Arc::new(Inner {
            namespace: namespace.to_string(),
            root,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            events: Mutex::new(tx),
            published: Mutex::new(Some(done_rx)),
            exit_signal,
        });
        // Subscribe before any child exists so that no exit is missed.
        match monitor_subscribe(Topic::Pid) {
            Ok(sub) => {
                let weak = Arc::downgrade(&inner);
                std::thread::spawn(move || {
                    while let Ok(ExitEvent { subject, exit_code }) = sub.rx.recv() {
                        let Some(inner) = weak.upgrade() else { break };
                        if let Subject::Pid(pid) = subject {
                            Service { inner }.on_exit(pid, exit_code);
                        }
                    }
                });
            }
            Err(e) => return Err(Error::Init(format!("subscribing to exits: {e}"))),
        }
        Ok(Service { inner })
    }

    /// The state root of task `id` (the service's default for an unknown id). Takes the state
    /// lock: never call it while holding that lock.
    pub(super) fn root_of(&self, id: &str) -> StateRoot {
        self.lock().tasks.get(id).map(|t| t.root.clone()).unwrap_or_else(|| self.inner.root.clone())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let _ = self.inner.events.lock().unwrap_or_else(|p| p.into_inner()).send((topic, event));
    }

    /// Before the daemon exits: closes the event queue and waits (at most `limit`) until what
    /// was queued reached containerd, so that the last `/tasks/delete` is not lost with the
    /// process. Events published afterwards are dropped.
    pub(super) fn flush_events(&self, limit: Duration) {
        let (closed, _) = channel::<Event>();
        drop(std::mem::replace(&mut *self.inner.events.lock().unwrap_or_else(|p| p.into_inner()), closed));
        let done = self.inner.published.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done
            && done.recv_timeout(limit).is_err()
        {
            log::warn!("events still unpublished after {limit:?}: exiting without them");
        }
    }

    /// Records the exit of `pid`: a task's process, or a helper (kept until claimed).
    fn on_exit(&self, pid: i32, code: i32) {
        let mut st = self.lock();
        let mut found = None;
        for (id, task) in st.tasks.iter_mut() {
            for p in std::iter::once(&mut task.init).chain(task.execs.values_mut()) {
                if p.pid == pid && p.started && p.exit.is_none() && p.pending_exit.is_none() {
                    p.pending_exit = Some((code as u32, now()));
                    found = Some((id.clone(), p.exec_id.clone(), p.pty_done.take()));
                }
            }
        }
        match found {
            Some((id, exec_id, pty_done)) => {
                drop(st);
                self.finish_exit(&id, &exec_id, pty_done);
            }
            None => {
                if st.unclaimed.len() >= MAX_UNCLAIMED {
                    st.unclaimed.clear();
                }
                st.unclaimed.insert(pid, code);
                drop(st);
                self.inner.changed.notify_all();
            }
        }
    }

    /// Lets a pending exit's terminal output drain, then reports it unless `Start` has yet to
    /// publish TaskStart (it reports the exit itself right after).
    pub(super) fn finish_exit(&self, id: &str, exec_id: &str, pty_done: Option<JoinHandle<()>>) {
        if let Some(h) = pty_done {
            let _ = h.join();
        }
        let mut st = self.lock();
        if let Some(p) = st.tasks.get_mut(id).and_then(|t| t.proc_mut(exec_id).ok()) {
            p.exit_ready = true;
            if !p.starting {
                self.report_exit(id, p);
            }
        }
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Makes a pending exit the process's exit and publishes TaskExit (under the state lock, so
    /// events keep their order).
    pub(super) fn report_exit(&self, id: &str, p: &mut Proc) {
        let Some((code, at)) = p.pending_exit.take() else { return };
        p.exit = Some((code, at.clone()));
        let ev = TaskExit {
            container_id: id.to_string(),
            id: if p.exec_id.is_empty() { id.to_string() } else { p.exec_id.clone() },
            pid: p.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    }

    /// Waits until the helper `pid` has exited and reads its report. A helper stuck past
    /// [`HELPER_TIMEOUT`] is killed, so a call cannot hang forever.
    fn wait_helper(&self, pid: i32, report: &Path) -> TtrpcResult<i32> {
        let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
        let mut killed = false;
        let mut st = self.lock();
        while st.unclaimed.remove(&pid).is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() && !killed {
                log::error!("the shim helper {pid} took longer than {HELPER_TIMEOUT:?}: killing it");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                killed = true;
            }
            let wait = if killed { Duration::from_secs(1) } else { left };
            st = self.inner.changed.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        drop(st);
        if killed {
            let _ = std::fs::remove_file(report);
            return Err(status(
                Code::DEADLINE_EXCEEDED,
                format!("the shim helper took longer than {HELPER_TIMEOUT:?}"),
            ));
        }
        let rep = helper::read_report(report);
        match (rep.pid, rep.error) {
            (_, Some(e)) => Err(status(Code::UNKNOWN, e)),
            (Some(p), None) => Ok(p),
            (None, None) => Err(status(Code::UNKNOWN, "the shim helper reported no pid")),
        }
    }

    fn run_helper(&self, req: &HelperRequest, stdio: [OwnedFd; 3]) -> TtrpcResult<i32> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let report = self.inner.root.path().join(format!(".report-{}-{n}", std::process::id()));
        let pid = helper::spawn(req, &report, stdio).map_err(engine_err)?;
        self.wait_helper(pid as i32, &report)
    }

    /// Prepares stdio for a process of container `id` and runs a helper; for a terminal, relays
    /// the pty master it sends back.
    pub(super) fn launch(
        &self,
        id: &str,
        paths: &StdioPaths,
        io_owner: Option<(u32, u32)>,
        make: impl FnOnce(Option<PathBuf>) -> HelperRequest,
    ) -> TtrpcResult<(i32, StdioRelay, Option<JoinHandle<()>>)> {
        let owner = StdioOwner { container_id: id, namespace: &self.inner.namespace };
        if paths.terminal {
            let console = ConsoleSocket::bind(&self.inner.root).map_err(engine_err)?;
            let null = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| status(Code::INTERNAL, e))
            };
            let pid = self.run_helper(&make(Some(console.path.clone())), [null()?, null()?, null()?])?;
            let master = receive_master(&console.listener).map_err(engine_err)?;
            let (relay, done) = StdioRelay::terminal(paths, owner, master).map_err(engine_err)?;
            Ok((pid, relay, Some(done)))
        } else {
            let (relay, fds) = StdioRelay::plain(paths, owner).map_err(engine_err)?;
            if let Some((uid, gid)) = io_owner {
                for fd in &fds {
                    give_pipe(fd, uid, gid).map_err(|e| status(Code::INTERNAL, format!("IoUid/IoGid: {e}")))?;
                }
            }
            let pid = self.run_helper(&make(None), fds)?;
            Ok((pid, relay, None))
        }
    }

    pub(super) fn spawn_oom_watcher(&self, id: String, cgroup: PathBuf, stop: Arc<AtomicBool>) {
        let me = self.clone();
        std::thread::spawn(move || {
            let Ok(mut stream) = Cgroup::open(cgroup.clone()).memory_events() else { return };
            while !stop.load(Ordering::Relaxed) && cgroup.join("memory.events").exists() {
                match stream.wait(Some(Duration::from_secs(1))) {
                    Ok(Some(u)) if u.new_oom_kills() > 0 || u.new_ooms() > 0 => {
                        me.publish(
                            topics::TASK_OOM_EVENT_TOPIC,
                            Box::new(TaskOOM { container_id: id.clone(), ..Default::default() }),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
}

/// Makes `uid`:`gid` the owner of `fd` when it is a pipe or a FIFO (what containerd's stdio
/// are); `/dev/null` and log files are left alone.
fn give_pipe(fd: &OwnedFd, uid: u32, gid: u32) -> nix::Result<()> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Ok(());
    }
    nix::unistd::fchown(fd, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
}
