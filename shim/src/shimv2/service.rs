//! The shim daemon: one thread, one epoll loop. It serves the task API over ttrpc on the
//! socket containerd gave it, reaps children through a signalfd (it is their subreaper), moves
//! stdin and terminal output between containerd's FIFOs and the processes, watches each
//! container's memory events for OOM kills, and publishes events to containerd in the order they
//! happened: TaskCreate → TaskStart → TaskExit → TaskDelete, ExecAdded → ExecStarted → TaskExit.
//!
//! Why one thread: the daemon sits beside every container for its whole life, so what it holds
//! resident is paid per container. A thread per connection, per copy and per watcher (what the
//! containerd-shim crate's server does) costs stacks, allocator arenas and code; a loop costs
//! none of that. A call that must wait (`Wait`) is answered when the exit arrives; a call that
//! runs the helper (`Create`, an exec's `Start`) holds the loop for as long as the helper runs,
//! as one runc invocation would hold runc's shim's call.

use super::binary_log::RetiringLogger;
use super::helper::{self, HelperRequest};
use super::stdio::{self, Copies, Kept, Pump, StdioOwner, StdioPaths};
use super::ttrpc::{self as wire, RpcError, RpcResult, status};
use crate::error::Error;
use crate::state::StateRoot;
use cgroups::MemoryEventStream;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The status of a process as the task API names it.
pub(super) type ApiStatus = containerd_shim::api::Status;

/// How long a helper may take to create a container or start an exec.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one event may take to reach containerd (the loop waits meanwhile; containerd
/// answers in well under a millisecond, and a refused connection fails at once).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a terminal's exit waits for its output to drain: a background process may hold
/// the terminal open for ever (containerd's runc shim waits as long for its copies).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Attempts to publish one event before it is dropped (containerd restarting takes a while).
const PUBLISH_ATTEMPTS: u32 = 20;
/// How long the daemon waits, when asked to shut down, for its last events to be published.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// One process of a task: the init (empty `exec_id`) or an exec.
#[derive(Debug, Default)]
pub(super) struct Proc {
    pub(super) exec_id: String,
    pub(super) pid: i32,
    pub(super) paths: StdioPaths,
    /// The OCI process of an exec (JSON), until it starts.
    pub(super) spec: Option<String>,
    pub(super) started: bool,
    /// An exit seen by the reaper, not yet reported (waits for the terminal output to drain).
    pub(super) pending_exit: Option<(u32, Timestamp)>,
    /// The reported exit: what `Wait`, `State` and `Delete` see.
    pub(super) exit: Option<(u32, Timestamp)>,
    /// The pump copying stdin in, until EOF or `CloseIO`.
    pub(super) stdin_pump: Option<u64>,
    /// The pump copying the terminal's output out; the exit waits until it ends.
    pub(super) pty_pump: Option<u64>,
    pub(super) kept: Kept,
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
    /// The memory-event watcher's token, if the host has the memory controller.
    pub(super) oom_watch: Option<u64>,
    /// The stdio owner from the runtime options, for the init and every exec.
    pub(super) io_owner: Option<(u32, u32)>,
}

impl Task {
    pub(super) fn proc_mut(&mut self, exec_id: &str) -> RpcResult<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs.get_mut(exec_id).ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }
}

/// A `Wait` call to answer when its process exits.
#[derive(Debug)]
struct Waiter {
    conn: u64,
    stream: u32,
    id: String,
    exec_id: String,
}

/// A client connection (containerd, or `strata shim run`).
#[derive(Debug)]
struct Conn {
    sock: UnixStream,
    frames: wire::FrameReader,
}

/// A queued event: topic and the packed message.
#[derive(Debug)]
struct Event {
    topic: &'static str,
    event: Any,
}

/// The events on their way to containerd: one connection to its ttrpc address, re-made after
/// containerd restarts; failures back off, and the queue keeps the order.
#[derive(Debug)]
struct Publisher {
    address: String,
    namespace: String,
    conn: Option<UnixStream>,
    queue: VecDeque<Event>,
    stream: u32,
    retry_at: Option<Instant>,
    delay: Duration,
    attempts: u32,
}

impl Publisher {
    /// Sends what is queued until the queue is empty or a send fails (then a retry is due).
    fn pump(&mut self) {
        while let Some(ev) = self.queue.pop_front() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                self.queue.push_front(ev);
                return;
            }
            match self.send(&ev) {
                Ok(()) => {
                    self.attempts = 0;
                    self.delay = Duration::from_millis(50);
                    self.retry_at = None;
                }
                Err(e) => {
                    self.conn = None;
                    self.attempts += 1;
                    log::warn!("publishing {} (attempt {}): {e}", ev.topic, self.attempts);
                    if self.attempts >= PUBLISH_ATTEMPTS {
                        log::error!("dropping event {} after {} attempts", ev.topic, self.attempts);
                        self.attempts = 0;
                    } else {
                        self.queue.push_front(ev);
                    }
                    self.retry_at = Some(Instant::now() + self.delay);
                    self.delay = (self.delay * 2).min(Duration::from_secs(2));
                    return;
                }
            }
        }
    }

    fn send(&mut self, ev: &Event) -> Result<(), String> {
        if self.conn.is_none() {
            let path = self.address.strip_prefix("unix://").unwrap_or(&self.address);
            self.conn = Some(UnixStream::connect(path).map_err(|e| format!("connecting to {path}: {e}"))?);
        }
        let Some(conn) = self.conn.as_mut() else { return Err("no connection".into()) };
        let envelope = Envelope {
            timestamp: MessageField::some(now()),
            namespace: self.namespace.clone(),
            topic: ev.topic.to_string(),
            event: MessageField::some(ev.event.clone()),
            ..Default::default()
        };
        let req = ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() };
        let payload = req.write_to_bytes().map_err(|e| e.to_string())?;
        // Client streams are odd.
        self.stream = self.stream.wrapping_add(2) | 1;
        wire::call(conn, self.stream, "containerd.services.events.ttrpc.v1.Events", "Forward", payload, PUBLISH_TIMEOUT)
            .map(drop)
    }

    /// When the next retry is due, if one is.
    fn due(&self) -> Option<Instant> {
        if self.queue.is_empty() { None } else { self.retry_at }
    }
}

/// Token kinds: the high byte of an epoll token says what it is, the rest which one.
const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const KIND_CONN: u64 = 1 << 56;
const KIND_PUMP_SRC: u64 = 2 << 56;
const KIND_PUMP_DST: u64 = 3 << 56;
const KIND_OOM: u64 = 4 << 56;
const KIND_MASK: u64 = 0xff << 56;

/// A pump and where it belongs.
#[derive(Debug)]
struct PumpEntry {
    pump: Pump,
    id: String,
    exec_id: String,
    /// Whether it copies a terminal's output (its end lets the exit be reported).
    pty_out: bool,
    /// The side registered with epoll now: None, Some(false) the source, Some(true) the destination.
    watching: Option<bool>,
}

/// The shim daemon.
pub struct Daemon {
    pub(super) namespace: String,
    pub(super) root: StateRoot,
    /// The `strata` binary that runs the helper.
    helper_bin: PathBuf,
    epoll: OwnedFd,
    listener: UnixListener,
    signals: nix::sys::signalfd::SignalFd,
    conns: HashMap<u64, Conn>,
    pumps: HashMap<u64, PumpEntry>,
    ooms: HashMap<u64, (String, MemoryEventStream)>,
    retiring: Vec<RetiringLogger>,
    waiters: Vec<Waiter>,
    /// Terminal exits waiting for their output to drain, reported anyway at the deadline.
    drains: Vec<(Instant, String, String)>,
    publisher: Publisher,
    pub(super) tasks: HashMap<String, Task>,
    next_token: u64,
    /// Set by `Shutdown` with no task left: the loop ends once the events are out or by then.
    exiting: Option<Instant>,
}

pub(super) fn engine_err(e: Error) -> RpcError {
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
    use std::os::fd::FromRawFd;
    listener.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
    let (conn, _) = listener.accept().map_err(|e| Error::io("the container's terminal was not received", e))?;
    conn.set_nonblocking(false).map_err(|e| Error::io("console socket", e))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
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
    fn bind(root: &StateRoot, n: u64) -> crate::Result<ConsoleSocket> {
        // Short: a socket path must fit in 108 bytes, and CRI's ids alone are 64.
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

/// The `strata` binary that runs the helper: next to the shim (how both are installed), else
/// on the PATH.
pub(super) fn find_helper() -> crate::Result<PathBuf> {
    let beside = std::fs::read_link("/proc/self/exe").ok().and_then(|p| p.parent().map(|d| d.join("strata")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("strata"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Init("the `strata` binary is neither next to the shim nor on the PATH".into()))
}

fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call; both descriptors are open.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn watch(epoll: &OwnedFd, fd: &impl AsFd, events: u32, token: u64) -> std::io::Result<()> {
    epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd.as_fd().as_raw_fd(), events, token)
}

fn unwatch(epoll: &OwnedFd, fd: &impl AsFd) {
    let _ = epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd.as_fd().as_raw_fd(), 0, 0);
}

/// Writes all of `data` to a non-blocking socket, waiting (at most 10 s per stall) when full.
fn write_all(sock: &UnixStream, mut data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = sock;
    while !data.is_empty() {
        match w.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd that lives across the call.
                if unsafe { libc::poll(&mut pfd, 1, 10_000) } == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Daemon {
    /// A daemon for `namespace` serving `listener`, publishing to containerd's ttrpc address.
    /// SIGCHLD must already be blocked (see [`crate::shimv2::serve`]).
    pub fn new(
        namespace: &str,
        listener: UnixListener,
        ttrpc_address: String,
        signals: nix::sys::signalfd::SignalFd,
    ) -> crate::Result<Daemon> {
        let root = StateRoot::new(state_root(namespace))?;
        // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("epoll_create1", std::io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor nothing else owns.
        let epoll = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        listener.set_nonblocking(true).map_err(|e| Error::io("shim socket", e))?;
        watch(&epoll, &listener, libc::EPOLLIN as u32, LISTENER).map_err(|e| Error::io("epoll", e))?;
        watch(&epoll, &signals, libc::EPOLLIN as u32, SIGNALS).map_err(|e| Error::io("epoll", e))?;
        Ok(Daemon {
            namespace: namespace.to_string(),
            root,
            helper_bin: find_helper()?,
            epoll,
            listener,
            signals,
            conns: HashMap::new(),
            pumps: HashMap::new(),
            ooms: HashMap::new(),
            retiring: Vec::new(),
            waiters: Vec::new(),
            drains: Vec::new(),
            publisher: Publisher {
                address: ttrpc_address,
                namespace: namespace.to_string(),
                conn: None,
                queue: VecDeque::new(),
                stream: 1,
                retry_at: None,
                delay: Duration::from_millis(50),
                attempts: 0,
            },
            tasks: HashMap::new(),
            next_token: 1,
            exiting: None,
        })
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Runs until `Shutdown` with no task left (and the last events are out).
    pub fn run(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        loop {
            self.publisher.pump();
            if let Some(limit) = self.exiting
                && (self.publisher.queue.is_empty() || Instant::now() >= limit)
            {
                if !self.publisher.queue.is_empty() {
                    log::warn!("events still unpublished after {FLUSH_LIMIT:?}: exiting without them");
                }
                return;
            }
            self.step_loggers();
            self.end_drains();
            let deadline = [
                self.publisher.due(),
                self.exiting,
                self.retiring.iter().map(|r| r.deadline).min(),
                self.drains.iter().map(|d| d.0).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map_or(-1, |d| {
                d.saturating_duration_since(Instant::now()).as_millis().clamp(1, i32::MAX as u128) as i32
            });
            // SAFETY: `events` is writable for its length; the epoll descriptor is open.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("epoll_wait: {e}");
                    return;
                }
                continue;
            }
            for ev in &events[..n as usize] {
                let token = ev.u64;
                match (token & KIND_MASK, token) {
                    (0, LISTENER) => self.accept(),
                    (0, SIGNALS) => self.reap(),
                    (KIND_CONN, _) => self.serve(token),
                    (KIND_PUMP_SRC | KIND_PUMP_DST, _) => self.run_pump(token & !KIND_MASK),
                    (KIND_OOM, _) => self.check_oom(token),
                    _ => {}
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors: the listener stays readable, so do not spin on it.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let token = KIND_CONN | self.token();
            if watch(&self.epoll, &sock, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, token).is_ok() {
                self.conns.insert(token, Conn { sock, frames: wire::FrameReader::default() });
            }
        }
    }

    fn close_conn(&mut self, token: u64) {
        if let Some(c) = self.conns.remove(&token) {
            unwatch(&self.epoll, &c.sock);
        }
        self.waiters.retain(|w| w.conn != token);
    }

    /// Reads what a connection sent and answers each complete request.
    fn serve(&mut self, token: u64) {
        use std::io::Read;
        let mut buf = [0u8; 8192];
        let mut closed = false;
        loop {
            let Some(c) = self.conns.get_mut(&token) else { return };
            match (&c.sock).read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => c.frames.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&token) else { return };
            let frame = match c.frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("closing a connection: {e}");
                    closed = true;
                    break;
                }
            };
            if frame.kind != wire::TYPE_REQUEST {
                continue;
            }
            let answer = match wire::parse_request(&frame.body) {
                Ok(req) => self.dispatch(token, frame.stream, &req),
                Err(e) => Some(Err(e)),
            };
            if let Some(result) = answer {
                self.respond(token, frame.stream, result);
            }
        }
        if closed {
            self.close_conn(token);
        }
    }

    pub(super) fn respond(&mut self, conn: u64, stream: u32, result: RpcResult<Vec<u8>>) {
        let Some(c) = self.conns.get(&conn) else { return };
        if let Err(e) = write_all(&c.sock, &wire::response(stream, result)) {
            log::warn!("answering a call: {e}");
            self.close_conn(conn);
        }
    }

    /// Queues `Wait` for `id`/`exec_id` until the process's exit is reported.
    pub(super) fn defer_wait(&mut self, conn: u64, stream: u32, id: &str, exec_id: &str) {
        self.waiters.push(Waiter { conn, stream, id: id.to_string(), exec_id: exec_id.to_string() });
    }

    /// Queues an event for containerd.
    pub(super) fn publish(&mut self, topic: &'static str, type_name: &str, msg: &impl Message) {
        let mut event = Any::new();
        event.type_url = format!("containerd.events.{type_name}");
        event.value = msg.write_to_bytes().unwrap_or_default();
        self.publisher.queue.push_back(Event { topic, event });
    }

    /// Asks the loop to end once the queued events are out.
    pub(super) fn exit_soon(&mut self) {
        self.exiting = Some(Instant::now() + FLUSH_LIMIT);
    }

    /// Reaps every child that exited and records the exits of the tasks' processes.
    fn reap(&mut self) {
        use nix::sys::wait::{WaitPidFlag, waitpid};
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if let (Some(pid), Some(code)) = (ws.pid(), crate::signals::exit_code(ws)) {
                        self.on_exit(pid.as_raw(), code);
                    }
                }
            }
        }
    }

    fn on_exit(&mut self, pid: i32, code: i32) {
        let mut found = None;
        for (id, task) in self.tasks.iter_mut() {
            for p in std::iter::once(&mut task.init).chain(task.execs.values_mut()) {
                if p.pid == pid && p.started && p.exit.is_none() && p.pending_exit.is_none() {
                    p.pending_exit = Some((code as u32, now()));
                    found = Some((id.clone(), p.exec_id.clone()));
                }
            }
        }
        if let Some((id, exec_id)) = found {
            self.report_exit_when_drained(&id, &exec_id);
            if self.tasks.get_mut(&id).and_then(|t| t.proc_mut(&exec_id).ok()).is_some_and(|p| p.pending_exit.is_some())
            {
                self.drains.push((Instant::now() + DRAIN_LIMIT, id, exec_id));
            }
        }
    }

    /// Reports the terminal exits whose output did not drain in time (the copy goes on until
    /// the process is deleted).
    fn end_drains(&mut self) {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.drains).into_iter().partition(|d| d.0 <= now);
        self.drains = rest;
        for (_, id, exec_id) in due {
            log::warn!("the terminal of {id} {exec_id} is still open {DRAIN_LIMIT:?} after its exit: reporting it");
            self.report_exit(&id, &exec_id);
        }
    }

    /// Reports a pending exit unless the terminal output is still draining (its pump's end
    /// reports it then).
    pub(super) fn report_exit_when_drained(&mut self, id: &str, exec_id: &str) {
        let Some(p) = self.tasks.get_mut(id).and_then(|t| t.proc_mut(exec_id).ok()) else { return };
        if p.pty_pump.is_none() {
            self.report_exit(id, exec_id);
        }
    }

    /// Makes a pending exit the process's exit: publishes TaskExit and answers its waiters.
    fn report_exit(&mut self, id: &str, exec_id: &str) {
        let Some(p) = self.tasks.get_mut(id).and_then(|t| t.proc_mut(exec_id).ok()) else { return };
        let Some((code, at)) = p.pending_exit.take() else { return };
        p.exit = Some((code, at.clone()));
        let ev = TaskExit {
            container_id: id.to_string(),
            id: if exec_id.is_empty() { id.to_string() } else { exec_id.to_string() },
            pid: p.pid as u32,
            exit_status: code,
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, "TaskExit", &ev);
        self.answer_waiters(id, Some(exec_id), code, &at);
    }

    /// Answers the `Wait` calls on process `exec_id` of task `id` (every process of it with
    /// `None`) with this exit.
    pub(super) fn answer_waiters(&mut self, id: &str, exec_id: Option<&str>, code: u32, at: &Timestamp) {
        let (done, rest): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.id == id && exec_id.is_none_or(|e| w.exec_id == e));
        self.waiters = rest;
        for w in done {
            let resp = containerd_shim::api::WaitResponse {
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            };
            self.respond(w.conn, w.stream, resp.write_to_bytes().map_err(|e| status(Code::INTERNAL, e)));
        }
    }

    /// Starts the copies of a process.
    pub(super) fn add_copies(&mut self, id: &str, exec_id: &str, copies: Copies) -> (Option<u64>, Option<u64>) {
        let add = |me: &mut Daemon, pair: Option<(OwnedFd, OwnedFd)>, pty_out: bool| {
            let (src, dst) = pair?;
            let n = me.token();
            me.pumps.insert(
                n,
                PumpEntry {
                    pump: Pump::new(src, dst),
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pty_out,
                    watching: None,
                },
            );
            // Nothing is read before epoll reports the source: a FIFO read before containerd
            // opened its writer would look like an immediate end of input.
            me.watch_pump(n);
            Some(n)
        };
        let stdin = add(self, copies.stdin, false);
        let out = add(self, copies.pty_out, true);
        // A copy that already ended is gone.
        (stdin.filter(|n| self.pumps.contains_key(n)), out.filter(|n| self.pumps.contains_key(n)))
    }

    /// Moves a pump on; at its end, removes it (and lets a terminal's exit be reported).
    fn run_pump(&mut self, n: u64) {
        let Some(e) = self.pumps.get_mut(&n) else { return };
        if e.pump.run() {
            self.remove_pump(n, true);
        } else {
            self.watch_pump(n);
        }
    }

    /// Waits on the side pump `n` needs: the destination while it holds bytes, else the source.
    fn watch_pump(&mut self, n: u64) {
        let Some(e) = self.pumps.get_mut(&n) else { return };
        let want_dst = e.pump.blocked_on_dst();
        if e.watching == Some(want_dst) {
            return;
        }
        match e.watching {
            Some(true) => unwatch(&self.epoll, &e.pump.dst),
            Some(false) => unwatch(&self.epoll, &e.pump.src),
            None => {}
        }
        let ok = if want_dst {
            watch(&self.epoll, &e.pump.dst, libc::EPOLLOUT as u32, KIND_PUMP_DST | n).is_ok()
        } else {
            watch(&self.epoll, &e.pump.src, libc::EPOLLIN as u32, KIND_PUMP_SRC | n).is_ok()
        };
        e.watching = ok.then_some(want_dst);
        if !ok {
            log::warn!("a stdio copy of {} cannot be watched: ending it", e.id);
            self.remove_pump(n, true);
        }
    }

    /// Moves what pump `n`'s source holds now, without waiting for more (before it is removed).
    pub(super) fn flush_pump(&mut self, n: u64) {
        if let Some(e) = self.pumps.get_mut(&n) {
            e.pump.close_soon();
            let _ = e.pump.run();
        }
    }

    /// `CloseIO`: pump `n` ends once what its source holds now is delivered.
    pub(super) fn close_pump(&mut self, n: u64) {
        if let Some(e) = self.pumps.get_mut(&n) {
            e.pump.close_soon();
            self.run_pump(n);
        }
    }

    /// Removes pump `n`; with `ended`, a terminal's pending exit is reported.
    pub(super) fn remove_pump(&mut self, n: u64, ended: bool) {
        let Some(e) = self.pumps.remove(&n) else { return };
        match e.watching {
            Some(true) => unwatch(&self.epoll, &e.pump.dst),
            Some(false) => unwatch(&self.epoll, &e.pump.src),
            None => {}
        }
        let Some(p) = self.tasks.get_mut(&e.id).and_then(|t| t.proc_mut(&e.exec_id).ok()) else { return };
        if e.pty_out {
            p.pty_pump = None;
            if ended {
                self.report_exit_when_drained(&e.id, &e.exec_id);
            }
        } else if p.stdin_pump == Some(n) {
            p.stdin_pump = None;
        }
    }

    /// Watches the memory events of task `id`'s cgroup for OOM kills.
    pub(super) fn watch_oom(&mut self, id: &str, cgroup: &Path) -> Option<u64> {
        let stream = MemoryEventStream::open(cgroup).ok()?;
        let token = KIND_OOM | self.token();
        watch(&self.epoll, &stream, libc::EPOLLIN as u32, token).ok()?;
        self.ooms.insert(token, (id.to_string(), stream));
        Some(token)
    }

    pub(super) fn unwatch_oom(&mut self, token: u64) {
        if let Some((_, stream)) = self.ooms.remove(&token) {
            unwatch(&self.epoll, &stream);
        }
    }

    fn check_oom(&mut self, token: u64) {
        let Some((id, stream)) = self.ooms.get_mut(&token) else { return };
        let id = id.clone();
        match stream.wait(Some(Duration::ZERO)) {
            Ok(Some(u)) if u.new_oom_kills() > 0 || u.new_ooms() > 0 => {
                self.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    "TaskOOM",
                    &TaskOOM { container_id: id, ..Default::default() },
                );
            }
            Ok(_) if !stream.gone() => {}
            _ => self.unwatch_oom(token),
        }
    }

    /// Lets loggers of deleted processes finish (see [`RetiringLogger`]).
    pub(super) fn retire_logger(&mut self, kept: &mut Kept) {
        if let Some(r) = kept.logger.take().and_then(|l| l.retire()) {
            self.retiring.push(r);
        }
    }

    fn step_loggers(&mut self) {
        let now = Instant::now();
        self.retiring.retain_mut(|r| !r.exited() && (r.deadline > now || r.step()));
    }

    /// Runs the helper for `req` with the process's stdio and returns the pid it reports. A
    /// helper stuck past [`HELPER_TIMEOUT`] is killed, so a call cannot hang forever.
    fn run_helper(&mut self, req: &HelperRequest, stdio: [OwnedFd; 3]) -> RpcResult<i32> {
        let n = self.token();
        let report = self.root.path().join(format!(".report-{}-{n}", std::process::id()));
        let pid = helper::spawn(&self.helper_bin, req, &report, stdio).map_err(engine_err)? as i32;
        let pidfd = crate::sys::pidfd_open(pid).map_err(|e| status(Code::INTERNAL, format!("pidfd_open: {e}")))?;
        let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let deadline = Instant::now() + HELPER_TIMEOUT;
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd that lives across the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.max(1)) };
            if rc > 0 {
                break;
            }
            if rc == 0 && !killed {
                log::error!("the shim helper {pid} took longer than {HELPER_TIMEOUT:?}: killing it");
                let _ = crate::sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
                killed = true;
            }
        }
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        if killed {
            let _ = std::fs::remove_file(&report);
            return Err(status(
                Code::DEADLINE_EXCEEDED,
                format!("the shim helper took longer than {HELPER_TIMEOUT:?}"),
            ));
        }
        let rep = helper::read_report(&report);
        match (rep.pid, rep.error) {
            (_, Some(e)) => Err(status(Code::UNKNOWN, e)),
            (Some(p), None) => Ok(p),
            (None, None) => Err(status(Code::UNKNOWN, "the shim helper reported no pid")),
        }
    }

    /// Prepares stdio for a process of container `id` and runs a helper; returns the pid, the
    /// copies to run and what to keep.
    pub(super) fn launch(
        &mut self,
        id: &str,
        paths: &StdioPaths,
        io_owner: Option<(u32, u32)>,
        make: impl FnOnce(Option<PathBuf>) -> HelperRequest,
    ) -> RpcResult<(i32, Copies, Kept)> {
        let namespace = self.namespace.clone();
        let owner = StdioOwner { container_id: id, namespace: &namespace };
        if paths.terminal {
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
            let pid = self.run_helper(&make(Some(console.path.clone())), [null()?, null()?, null()?])?;
            let master = receive_master(&console.listener).map_err(engine_err)?;
            let (copies, kept) = stdio::terminal(paths, owner, master).map_err(engine_err)?;
            Ok((pid, copies, kept))
        } else {
            let (fds, copies, kept) = stdio::plain(paths, owner).map_err(engine_err)?;
            if let Some((uid, gid)) = io_owner {
                for fd in &fds {
                    give_pipe(fd, uid, gid).map_err(|e| status(Code::INTERNAL, format!("IoUid/IoGid: {e}")))?;
                }
            }
            let pid = self.run_helper(&make(None), fds)?;
            Ok((pid, copies, kept))
        }
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
