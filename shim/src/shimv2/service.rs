//! The shim daemon: one thread, one epoll loop, and nothing in it ever waits. It serves the
//! task API over ttrpc on the socket containerd gave it, reaps children through a signalfd (it
//! is their subreaper), runs the helpers that create containers and start execs while it goes
//! on serving ([`super::runner`]), moves stdin and terminal output between containerd's FIFOs
//! and the processes, watches each container's memory events for OOM kills, writes answers to
//! slow clients as they read, and publishes events to containerd in the order they happened
//! ([`super::publisher`]): TaskCreate → TaskStart → TaskExit → TaskDelete, ExecAdded →
//! ExecStarted → TaskExit.
//!
//! Why one thread: the daemon sits beside every container for its whole life, so what it holds
//! resident is paid per container. A thread per connection, per copy and per watcher (what the
//! containerd-shim crate's server does) costs stacks, allocator arenas and code; a loop costs
//! none of that. A call that must wait (`Wait`, and `Create` or an exec's `Start` while their
//! helper runs) is answered when what it waits for arrives; every other container of the pod
//! is served meanwhile (Kubernetes runs its probes as execs, several a second).

use super::binary_log::RetiringLogger;
use super::process::{Life, Task};
use super::publisher::Publisher;
use super::runner::{HELPER_TIMEOUT, Runner};
use super::stdio::{Copies, Kept, Pump, StdioPaths};
use super::ttrpc::{self as wire, RpcError, status};
use crate::error::Error;
use crate::state::StateRoot;
use cgroups::{Cgroup, MemoryEventStream};
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The status of a process as the task API names it.
pub(super) type ApiStatus = containerd_shim::api::Status;

/// How long a terminal's exit waits for its output to drain: a background process may hold
/// the terminal open for ever (containerd's runc shim waits as long for its copies).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the daemon waits, when asked to shut down, for its last events to be published.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// Answers a client may leave unread before the daemon drops its connection.
const MAX_CONN_BACKLOG: usize = 16 << 20;
/// How long the daemon waits for a cgroup to empty after SIGKILL, or to freeze or thaw.
const CGROUP_LIMIT: Duration = Duration::from_secs(10);
/// How long the listener rests when a connection cannot be accepted (out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A `Wait` call to answer when its process exits.
#[derive(Debug)]
struct Waiter {
    conn: u64,
    stream: u32,
    id: String,
    exec_id: String,
}

/// A client connection (containerd, or `strata shim run`), with the answers it has not read.
#[derive(Debug)]
struct Conn {
    sock: UnixStream,
    frames: wire::FrameReader,
    out: Vec<u8>,
    /// Whether epoll watches it for writability (while `out` holds bytes).
    out_watched: bool,
}

/// A call answered later: its connection and stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caller {
    /// The connection.
    pub conn: u64,
    /// The call's stream.
    pub stream: u32,
}

/// What a call waiting for its helper needs to finish.
#[derive(Debug)]
pub(super) struct Pending {
    /// Who to answer.
    pub caller: Caller,
    /// The task.
    pub id: String,
    /// `Create` or an exec's `Start`.
    pub what: PendingWhat,
    /// The process's stdio as containerd gave it.
    pub paths: StdioPaths,
    /// The copies of plain stdio (a terminal's are made once its master arrives).
    pub copies: Copies,
    /// What the daemon keeps of the stdio.
    pub kept: Kept,
    /// Where a terminal's master arrives.
    pub console: Option<ConsoleSocket>,
}

/// Which call waits on a helper.
#[derive(Debug)]
pub(super) enum PendingWhat {
    /// The task's `Create`.
    Create(Box<PendingCreate>),
    /// An exec's `Start`; its process description goes back to it if the start fails.
    ExecStart {
        /// The exec.
        exec_id: String,
        /// Its OCI process (JSON).
        spec: String,
    },
    /// A call answered once the container's `poststart` or `poststop` hooks ran.
    Hooks {
        /// The answer.
        response: super::ttrpc::RpcResult<Vec<u8>>,
    },
}

/// An init's `Start` waiting for its program to run: the gate connection answers.
#[derive(Debug)]
struct Gate {
    fd: OwnedFd,
    caller: Caller,
    id: String,
}

/// A `Create` in flight.
#[derive(Debug)]
pub(super) struct PendingCreate {
    /// The request.
    pub req: CreateTaskRequest,
    /// Its state root.
    pub root: StateRoot,
    /// How many rootfs mounts the daemon stacked for it.
    pub rootfs_mounts: usize,
    /// The stdio owner from the runtime options.
    pub io_owner: Option<(u32, u32)>,
}

/// Token kinds: the high byte of an epoll token says what it is, the rest which one.
const LISTENER: u64 = 0;
const SIGNALS: u64 = 1;
const PUBLISHER: u64 = 2;
const KIND_CONN: u64 = 1 << 56;
const KIND_PUMP_SRC: u64 = 2 << 56;
const KIND_PUMP_DST: u64 = 3 << 56;
const KIND_OOM: u64 = 4 << 56;
const KIND_GATE: u64 = 5 << 56;
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
    epoll: OwnedFd,
    listener: UnixListener,
    signals: nix::sys::signalfd::SignalFd,
    conns: HashMap<u64, Conn>,
    pumps: HashMap<u64, PumpEntry>,
    ooms: HashMap<u64, (String, MemoryEventStream)>,
    retiring: Vec<RetiringLogger>,
    waiters: Vec<Waiter>,
    publisher: Publisher,
    /// What epoll watches of the publisher's connection now.
    publisher_watch: Option<(RawFd, u32, u64)>,
    pub(super) tasks: HashMap<String, Task>,
    /// The helpers in flight, with the calls they finish.
    pub(super) runner: Runner<Pending>,
    /// The inits whose `Start` waits for their program to run.
    gates: HashMap<u64, Gate>,
    /// Exits held until their process is known or started: reaped before their helper
    /// reported them (a fast exec), or while their `Start` waited at the gate.
    orphans: Vec<(i32, u32, Timestamp)>,
    next_token: u64,
    /// Set by `Shutdown` with no task left: the loop ends once the events are out or by then.
    exiting: Option<Instant>,
    /// Out of descriptors, the listener is left unwatched until then (it would stay readable
    /// and spin the loop).
    listener_resumes: Option<Instant>,
    /// Cgroups the loop waits on (to empty, to freeze or thaw) without sleeping.
    cgroup_waits: Vec<CgroupWait>,
    /// Tasks deleted while their `Create` ran: the `Delete` calls to answer once the helper,
    /// killed, is gone and what it made is removed.
    pub(super) cancelled_creates: HashMap<String, Caller>,
    /// `Shutdown` came while creates ran and no task was left: decided once they are done.
    pub(super) shutdown_asked: bool,
    /// The pod sandbox, when containerd's sandbox API made one here.
    pub(super) sandbox: Option<super::sandbox::Sandbox>,
}

/// What a [`CgroupWait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CgroupGoal {
    /// No process left.
    Empty,
    /// Frozen (`true`) or thawed.
    Frozen(bool),
}

/// What to do once a cgroup reached its goal (`true`) or the wait's limit passed (`false`).
pub(super) type AfterCgroup = Box<dyn FnOnce(&mut Daemon, bool)>;

/// A cgroup the loop checks at growing intervals (1 ms to 20 ms) until it reaches its goal.
struct CgroupWait {
    cgroup: Cgroup,
    goal: CgroupGoal,
    next: Instant,
    step: Duration,
    deadline: Instant,
    then: AfterCgroup,
}

impl CgroupGoal {
    fn reached(self, cg: &Cgroup) -> bool {
        match self {
            // A removed cgroup holds nobody.
            CgroupGoal::Empty => !cg.path().exists() || !cg.is_populated().unwrap_or(true),
            CgroupGoal::Frozen(want) => cg.is_frozen().is_ok_and(|f| f == want),
        }
    }
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

/// Takes a pty master that a container process sent to the console socket. The process sends
/// it before it reports ready, so by the time its helper has exited it waits in the socket:
/// nothing here blocks.
pub(super) fn receive_master(listener: &UnixListener) -> crate::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    listener.set_nonblocking(true).map_err(|e| Error::io("console socket", e))?;
    let (conn, _) = listener.accept().map_err(|e| Error::io("the container's terminal was not received", e))?;
    let mut name = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
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
#[derive(Debug)]
pub(super) struct ConsoleSocket {
    /// Its path, given to the helper.
    pub path: PathBuf,
    /// The listener.
    pub listener: UnixListener,
}

impl ConsoleSocket {
    pub(super) fn bind(root: &StateRoot, n: u64) -> crate::Result<ConsoleSocket> {
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

/// Unmounts every mount stacked on `bundle/rootfs` (containerd may pass several, and a dead
/// shim leaves them all).
pub fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    for _ in 0..64 {
        if nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
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

const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;

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
        let runner = Runner::new(find_helper()?, root.path().to_path_buf(), HELPER_TIMEOUT);
        Ok(Daemon {
            namespace: namespace.to_string(),
            root,
            epoll,
            listener,
            signals,
            conns: HashMap::new(),
            pumps: HashMap::new(),
            ooms: HashMap::new(),
            retiring: Vec::new(),
            waiters: Vec::new(),
            publisher: Publisher::new(ttrpc_address, namespace.to_string()),
            publisher_watch: None,
            tasks: HashMap::new(),
            runner,
            gates: HashMap::new(),
            orphans: Vec::new(),
            next_token: 1,
            exiting: None,
            listener_resumes: None,
            cgroup_waits: Vec::new(),
            cancelled_creates: HashMap::new(),
            shutdown_asked: false,
            sandbox: None,
        })
    }

    pub(super) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Runs until `Shutdown` with no task left (and the last events are out).
    pub fn run(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        loop {
            let now = Instant::now();
            self.publisher.drive(now);
            self.rewatch_publisher();
            if let Some(limit) = self.exiting
                && (self.publisher.is_empty() || now >= limit)
            {
                if !self.publisher.is_empty() {
                    log::warn!("events still unpublished after {FLUSH_LIMIT:?}: exiting without them");
                }
                return;
            }
            self.step_loggers();
            self.end_drains(now);
            self.runner.kill_overdue(now);
            self.resume_listener(now);
            self.check_cgroups(now);
            self.sandbox_kill_due(now);
            let deadline = [
                self.publisher.deadline(),
                self.exiting,
                self.listener_resumes,
                self.cgroup_waits.iter().map(|w| w.next).min(),
                self.sandbox_deadline(),
                self.retiring.iter().map(|r| r.deadline).min(),
                self.drain_deadline(),
                self.runner.deadline(),
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
                    // Driven at the top of the loop.
                    (0, PUBLISHER) => {}
                    (KIND_CONN, _) => {
                        if ev.events & libc::EPOLLOUT as u32 != 0 {
                            self.flush_conn(token);
                        }
                        if ev.events & !(libc::EPOLLOUT as u32) != 0 {
                            self.serve(token);
                        }
                    }
                    (KIND_PUMP_SRC | KIND_PUMP_DST, _) => self.run_pump(token & !KIND_MASK),
                    (KIND_OOM, _) => self.check_oom(token),
                    (KIND_GATE, _) => self.gate_ready(token),
                    _ => {}
                }
            }
        }
    }

    /// Keeps epoll watching the publisher's connection for what it waits on.
    fn rewatch_publisher(&mut self) {
        let want = self.publisher.interest();
        if want == self.publisher_watch {
            return;
        }
        if let Some((fd, _, _)) = self.publisher_watch.take() {
            // The old descriptor may be closed already (then the kernel dropped it itself, and
            // a new connection may have its number: the generation tells them apart).
            let _ = epoll_ctl(&self.epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
        if let Some((fd, events, _)) = want
            && epoll_ctl(&self.epoll, libc::EPOLL_CTL_ADD, fd, events, PUBLISHER).is_ok()
        {
            self.publisher_watch = want;
        }
    }

    /// Calls `then` once `cgroup` reached `goal` (with `true`), or after [`CGROUP_LIMIT`]
    /// (`false`); at once when it is there already. The loop checks, it never sleeps on it.
    pub(super) fn when_cgroup(&mut self, cgroup: Cgroup, goal: CgroupGoal, then: AfterCgroup) {
        if goal.reached(&cgroup) {
            then(self, true);
            return;
        }
        let now = Instant::now();
        let step = Duration::from_millis(1);
        self.cgroup_waits.push(CgroupWait { cgroup, goal, next: now + step, step, deadline: now + CGROUP_LIMIT, then });
    }

    fn check_cgroups(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.cgroup_waits.len() {
            let w = &mut self.cgroup_waits[i];
            if now < w.next {
                i += 1;
                continue;
            }
            let reached = w.goal.reached(&w.cgroup);
            if reached || now >= w.deadline {
                let w = self.cgroup_waits.swap_remove(i);
                if !reached {
                    log::warn!("{} did not become {:?} within {CGROUP_LIMIT:?}", w.cgroup.path().display(), w.goal);
                }
                (w.then)(self, reached);
                continue;
            }
            if w.goal == CgroupGoal::Empty {
                // Processes that raced into the cgroup get their SIGKILL too.
                let _ = w.cgroup.kill_all_nowait();
            }
            w.step = (w.step * 2).min(Duration::from_millis(20));
            w.next = now + w.step;
            i += 1;
        }
    }

    fn resume_listener(&mut self, now: Instant) {
        if self.listener_resumes.is_some_and(|t| now >= t) {
            self.listener_resumes = None;
            if let Err(e) = watch(&self.epoll, &self.listener, libc::EPOLLIN as u32, LISTENER) {
                log::warn!("watching the listener again: {e}");
                self.listener_resumes = Some(now + ACCEPT_PAUSE);
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
                    // Out of descriptors (or memory): the connection stays queued and the
                    // listener readable, so it is unwatched for a while rather than spin.
                    log::warn!("accepting a connection: {e}; trying again in {ACCEPT_PAUSE:?}");
                    unwatch(&self.epoll, &self.listener);
                    self.listener_resumes = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let token = KIND_CONN | self.token();
            if watch(&self.epoll, &sock, CONN_EVENTS, token).is_ok() {
                self.conns.insert(
                    token,
                    Conn { sock, frames: wire::FrameReader::default(), out: Vec::new(), out_watched: false },
                );
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

    /// Answers call `stream` on connection `conn`. The answer is written as far as the client
    /// reads; the rest waits (epoll says when it can go on).
    pub(super) fn respond(&mut self, conn: u64, stream: u32, result: super::ttrpc::RpcResult<Vec<u8>>) {
        self.answer(Caller { conn, stream }, result);
    }

    /// Answers a call that waited.
    pub(super) fn answer(&mut self, caller: Caller, result: super::ttrpc::RpcResult<Vec<u8>>) {
        let Caller { conn, stream } = caller;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.out.extend_from_slice(&wire::response(stream, result));
        self.flush_conn(conn);
    }

    fn flush_conn(&mut self, token: u64) {
        use std::io::Write;
        let Some(c) = self.conns.get_mut(&token) else { return };
        let mut failed = false;
        while !c.out.is_empty() {
            match (&c.sock).write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("answering a call: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if failed || c.out.len() > MAX_CONN_BACKLOG {
            if !failed {
                log::warn!("a client left {} bytes of answers unread: closing its connection", c.out.len());
            }
            self.close_conn(token);
            return;
        }
        let want_out = !c.out.is_empty();
        if want_out != c.out_watched {
            let events = if want_out { CONN_EVENTS | libc::EPOLLOUT as u32 } else { CONN_EVENTS };
            if epoll_ctl(&self.epoll, libc::EPOLL_CTL_MOD, c.sock.as_raw_fd(), events, token).is_ok() {
                c.out_watched = want_out;
            }
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
        self.publisher.push(topic, event);
    }

    /// Asks the loop to end once the queued events are out.
    pub(super) fn exit_soon(&mut self) {
        self.exiting = Some(Instant::now() + FLUSH_LIMIT);
    }

    /// Calls off an exit asked for (new work came before the loop ended).
    pub(super) fn cancel_exit(&mut self) {
        self.exiting = None;
        self.shutdown_asked = false;
    }

    /// Reaps every child that exited: a helper finishes its call; a task's process records its
    /// exit.
    fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        while let Some((pid, code)) = crate::signals::reap_any() {
            if let Some((pending, result)) = self.runner.on_exit(pid, code) {
                self.finish_launch(pending, result);
            } else {
                self.on_exit(pid, code as u32, now());
            }
        }
        if self.runner.is_empty() && self.gates.is_empty() {
            // Nothing can claim them any more: they were nobody's (a logger, a stray child).
            self.orphans.clear();
        }
    }

    /// Watches an init's start gate (see [`crate::container::open_gate`]); its answer finishes
    /// the `Start` call.
    pub(super) fn watch_gate(&mut self, fd: OwnedFd, caller: Caller, id: &str) {
        let token = KIND_GATE | self.token();
        if let Err(e) = watch(&self.epoll, &fd, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, token) {
            // Cannot wait for it without blocking: take the answer now.
            log::warn!("watching the start gate of {id}: {e}");
            self.finish_start(fd, caller, id);
            return;
        }
        self.gates.insert(token, Gate { fd, caller, id: id.to_string() });
    }

    fn gate_ready(&mut self, token: u64) {
        let Some(g) = self.gates.remove(&token) else { return };
        unwatch(&self.epoll, &g.fd);
        self.finish_start(g.fd, g.caller, &g.id);
    }

    /// A reaped process: its task's process is done (reported once its terminal output
    /// drained). One no task knows yet may belong to a helper still running: kept for it.
    pub(super) fn on_exit(&mut self, pid: i32, code: u32, at: Timestamp) {
        if self.sandbox_exited(pid, code, &at) {
            return;
        }
        let mut found = None;
        let mut starting = false;
        for (id, task) in self.tasks.iter_mut() {
            for p in task.procs_mut() {
                if p.pid != pid || p.life.is_gone() {
                    continue;
                }
                if matches!(p.life, Life::Starting) {
                    starting = true;
                } else {
                    p.life = Life::Draining { code, at: at.clone(), until: Instant::now() + DRAIN_LIMIT };
                    found = Some((id.clone(), p.exec_id.clone()));
                }
            }
        }
        match found {
            Some((id, exec_id)) => self.report_exit_when_drained(&id, &exec_id),
            None if starting || !self.runner.is_empty() => self.orphans.push((pid, code, at)),
            None => {}
        }
    }

    /// The exit of `pid` if it was reaped before its helper reported it.
    pub(super) fn claim_orphan(&mut self, pid: i32) -> Option<(u32, Timestamp)> {
        let i = self.orphans.iter().position(|o| o.0 == pid)?;
        let (_, code, at) = self.orphans.swap_remove(i);
        Some((code, at))
    }

    fn drain_deadline(&self) -> Option<Instant> {
        self.tasks
            .values()
            .flat_map(|t| std::iter::once(&t.init).chain(t.execs.values()))
            .filter_map(|p| match p.life {
                Life::Draining { until, .. } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Reports the terminal exits whose output did not drain in time (the copy goes on until
    /// the process is deleted).
    fn end_drains(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (id, t) in &self.tasks {
            for p in std::iter::once(&t.init).chain(t.execs.values()) {
                if matches!(p.life, Life::Draining { until, .. } if until <= now) {
                    due.push((id.clone(), p.exec_id.clone()));
                }
            }
        }
        for (id, exec_id) in due {
            log::warn!("the terminal of {id} {exec_id} is still open {DRAIN_LIMIT:?} after its exit: reporting it");
            self.report_exit(&id, &exec_id);
        }
    }

    /// Reports a draining exit unless the terminal output is still going out (its pump's end
    /// reports it then).
    pub(super) fn report_exit_when_drained(&mut self, id: &str, exec_id: &str) {
        let Some(p) = self.tasks.get_mut(id).and_then(|t| t.proc_mut(exec_id).ok()) else { return };
        if p.pty_pump.is_none() {
            self.report_exit(id, exec_id);
        }
    }

    /// Makes a draining exit the process's exit: publishes TaskExit and answers its waiters.
    pub(super) fn report_exit(&mut self, id: &str, exec_id: &str) {
        let Some(p) = self.tasks.get_mut(id).and_then(|t| t.proc_mut(exec_id).ok()) else { return };
        let Life::Draining { code, at, .. } = p.life.clone() else { return };
        p.life = Life::Exited { code, at: at.clone() };
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

    /// Removes pump `n`; with `ended`, a terminal's draining exit is reported.
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
}

/// Makes `uid`:`gid` the owner of `fd` when it is a pipe or a FIFO (what containerd's stdio
/// are); `/dev/null` and log files are left alone.
pub(super) fn give_pipe(fd: &OwnedFd, uid: u32, gid: u32) -> nix::Result<()> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Ok(());
    }
    nix::unistd::fchown(fd, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
}
