//! `strata shim run`: the containerd shim without containerd, to use and debug it on its own.
//!
//! strata plays containerd's part for one bundle. It serves the Events service on a private
//! ttrpc socket (the shim's `TTRPC_ADDRESS`; containerd-shim 0.11 publishes by calling `Forward`
//! there, so strata, named as `-publish-binary` too, is the event sink) and prints each event it
//! receives as one line. It runs `containerd-shim-strata-v1 ... start` with the bundle as working
//! directory, as containerd does, and drives the daemon over the address `start` prints: Create
//! (stdout and stderr through FIFOs it relays), Start, an optional Exec, Kill, Wait, Delete and
//! Shutdown. strata becomes a child subreaper first, so the daemon, orphaned when `start`
//! exits, is its child and is reaped before strata exits with the container's status. SIGINT,
//! SIGTERM, SIGHUP and SIGQUIT sent to strata are passed on to the container with Kill.

use anyhow::{Context, Result, bail};
use containerd_shim_protos::api::{
    ConnectRequest, CreateTaskRequest, DeleteRequest, Empty, ExecProcessRequest, ForwardRequest, KillRequest,
    ShutdownRequest, StartRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageField, MessageFull, text_format};
use containerd_shim_protos::ttrpc::context::{self, Context as TtrpcCtx};
use containerd_shim_protos::ttrpc::{self, Server, TtrpcContext};
use containerd_shim_protos::{Client, Events, TaskClient, create_events, topics};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shim binary's name, looked up next to strata's own binary, then on PATH.
const SHIM_BINARY: &str = "containerd-shim-strata-v1";

/// How long strata waits for the last event, the output relays and the daemon's exit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `strata shim`: the containerd shim driven without containerd.
#[derive(Debug, clap::Args)]
pub struct ShimArgs {
    #[command(subcommand)]
    pub command: ShimCommand,
}

/// The `strata shim` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ShimCommand {
    /// Start the shim for a bundle as containerd does, run the container (and an exec) through
    /// the task API, print the events the shim publishes and exit with the container's status
    /// (the exec's when one is given; the container is then killed once the exec exits).
    Run(ShimRunArgs),
}

/// Flags of `strata shim run`.
#[derive(Debug, clap::Args)]
pub struct ShimRunArgs {
    /// The container id.
    pub id: String,
    /// The bundle directory (holding config.json; the shim's working directory).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// The containerd namespace the shim is started in.
    #[arg(long, default_value = "strata")]
    pub namespace: String,
    /// The shim binary (default: containerd-shim-strata-v1 next to strata, else on PATH).
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// Run this command in the container once it started, then kill the container.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub exec: Vec<String>,
    /// Pass runc's `IoUid` runtime option: the uid that owns the processes' stdio pipes.
    #[arg(long, value_name = "UID")]
    pub io_uid: Option<u32>,
    /// Pass runc's `IoGid` runtime option: the gid that owns the processes' stdio pipes.
    #[arg(long, value_name = "GID")]
    pub io_gid: Option<u32>,
    /// Once the container started, change its resources with `Update`: FILE holds OCI
    /// `linux.resources` (JSON), as `strata update --resources` takes them.
    #[arg(long, value_name = "FILE")]
    pub update: Option<PathBuf>,
}

/// Runs `strata shim` commands; returns the exit code.
pub fn shim(args: &ShimArgs, debug: bool) -> Result<i32> {
    match &args.command {
        ShimCommand::Run(a) => run(a, debug),
    }
}

/// The Events service: prints each event and passes its topic on.
struct EventSink {
    topics: Mutex<Sender<String>>,
}

impl Events for EventSink {
    fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let envelope = req.envelope.into_option().unwrap_or_default();
        let line = format!("event {} {{{}}}", envelope.topic, describe(&envelope.topic, &envelope.event));
        print_line(&line);
        let _ = self.topics.lock().unwrap_or_else(|p| p.into_inner()).send(envelope.topic);
        Ok(Empty::new())
    }
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// An event's fields in protobuf text format, decoded by its topic.
fn describe(topic: &str, event: &MessageField<Any>) -> String {
    fn text<M: MessageFull>(bytes: &[u8]) -> Option<String> {
        M::parse_from_bytes(bytes).ok().map(|m| text_format::print_to_string(&m))
    }
    let Some(any) = event.as_ref() else { return String::new() };
    let decoded = match topic {
        topics::TASK_CREATE_EVENT_TOPIC => text::<TaskCreate>(&any.value),
        topics::TASK_START_EVENT_TOPIC => text::<TaskStart>(&any.value),
        topics::TASK_EXIT_EVENT_TOPIC => text::<TaskExit>(&any.value),
        topics::TASK_DELETE_EVENT_TOPIC => text::<TaskDelete>(&any.value),
        topics::TASK_EXEC_ADDED_EVENT_TOPIC => text::<TaskExecAdded>(&any.value),
        topics::TASK_EXEC_STARTED_EVENT_TOPIC => text::<TaskExecStarted>(&any.value),
        topics::TASK_OOM_EVENT_TOPIC => text::<TaskOOM>(&any.value),
        topics::TASK_PAUSED_EVENT_TOPIC => text::<TaskPaused>(&any.value),
        topics::TASK_RESUMED_EVENT_TOPIC => text::<TaskResumed>(&any.value),
        _ => None,
    };
    decoded.unwrap_or_else(|| format!("type_url: {:?} bytes: {}", any.type_url, any.value.len()))
}

/// A private directory for the event socket and the stdio FIFOs; removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("strata-shim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files the shim needs in the bundle (the `log` FIFO strata makes, the `address` and
/// `strata-root` files the shim writes), removed when dropped as containerd removes its bundles.
struct BundleFiles(PathBuf);

impl Drop for BundleFiles {
    fn drop(&mut self) {
        for name in ["log", "address", engine::shimv2::service::ROOT_FILE] {
            let _ = std::fs::remove_file(self.0.join(name));
        }
    }
}

/// A FIFO relayed to strata's stdout or stderr. strata holds a writer until the process has
/// its own, so the relay does not see end-of-file before the process starts.
struct Relay {
    path: PathBuf,
    writer: Option<File>,
    done: Receiver<()>,
}

impl Relay {
    fn new(path: PathBuf, to_stderr: bool) -> Result<Relay> {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("making the FIFO {}", path.display()))?;
        let open = || format!("opening {}", path.display());
        let mut reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).with_context(open)?;
        let writer = OpenOptions::new().write(true).open(&path).with_context(open)?;
        nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty())).with_context(open)?;
        let (tx, done) = channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = if to_stderr {
                    std::io::stderr().lock().write_all(&buf[..n])
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&buf[..n]).and_then(|()| out.flush())
                };
            }
            let _ = tx.send(());
        });
        Ok(Relay { path, writer: Some(writer), done })
    }

    fn uri(&self) -> String {
        self.path.display().to_string()
    }

    /// The process has its own writer now.
    fn release(&mut self) {
        self.writer = None;
    }

    /// Waits until everything the process wrote was relayed.
    fn drain(mut self) {
        self.release();
        let _ = self.done.recv_timeout(SETTLE_TIMEOUT);
    }
}

/// Relays the shim's `log` FIFO in the bundle to stderr, as containerd logs it: warnings and
/// errors always, everything with `--debug`.
fn relay_shim_log(bundle: &Path, debug: bool) -> Result<()> {
    let path = bundle.join("log");
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("making the shim's log FIFO {}", path.display()))?;
    // Read and write: the shim's open never blocks and the relay never sees end-of-file.
    let fifo =
        OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(fifo);
        for line in std::io::BufRead::lines(reader).map_while(std::result::Result::ok) {
            let routine = line.contains("level=info") || line.contains("level=debug");
            if !line.trim().is_empty() && (debug || !routine) {
                eprintln!("shim: {line}");
            }
        }
    });
    Ok(())
}

fn find_shim(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(SHIM_BINARY)));
    beside.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(SHIM_BINARY))
}

/// The exec's process: the container's, with `args` and no terminal.
fn exec_spec(bundle: &Path, args: &[String]) -> Result<Any> {
    let config = bundle.join("config.json");
    let data = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&data).with_context(|| format!("{}: invalid JSON", config.display()))?;
    let mut process = spec.get("process").cloned().context("config.json: process: missing")?;
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(false);
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&process)?;
    Ok(any)
}

/// Refuses a terminal: strata relays FIFOs, not a pty.
fn check_no_terminal(bundle: &Path) -> Result<()> {
    let config = bundle.join("config.json");
    let data = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&data).with_context(|| format!("{}: invalid JSON", config.display()))?;
    if spec.pointer("/process/terminal").and_then(serde_json::Value::as_bool) == Some(true) {
        bail!("{}: process.terminal is true: `strata shim run` relays FIFOs only; set it to false", config.display());
    }
    Ok(())
}

/// Waits for `topic` among the events, so that nothing the shim publishes is lost at shutdown.
fn await_event(events: &Receiver<String>, topic: &str) -> bool {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(t) if t == topic => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// Reaps the shim daemon (strata's child as subreaper); kills it if it does not exit.
fn reap_daemon(pid: Pid) -> bool {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(WaitStatus::StillAlive) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return false;
            }
            _ => return true,
        }
    }
}

/// The signals strata passes on to the container's init, as containerd's `ctr run` does.
fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        set.add(sig);
    }
    set
}

/// Forwards each signal of `set` that strata receives to the container's init with Kill.
fn forward_signals(set: SigSet, task: TaskClient, id: String) {
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let kill = KillRequest { id: id.clone(), signal: sig as u32, ..Default::default() };
            if let Err(e) = call("Kill", task.kill(ctx(), &kill)) {
                eprintln!("strata: forwarding {sig}: {e:#}");
            }
        }
    });
}

fn ctx() -> TtrpcCtx {
    context::with_timeout(0)
}

/// A task API call's result, its error named after the call.
fn call<T>(name: &str, result: ttrpc::Result<T>) -> Result<T> {
    result.map_err(|e| match e {
        ttrpc::Error::RpcStatus(s) => anyhow::anyhow!("{name}: {:?}: {}", s.code(), s.message()),
        e => anyhow::anyhow!("{name}: {e}"),
    })
}

fn run(a: &ShimRunArgs, debug: bool) -> Result<i32> {
    let bundle = std::fs::canonicalize(&a.bundle).with_context(|| format!("bundle {}", a.bundle.display()))?;
    check_no_terminal(&bundle)?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    // Blocked before any thread exists, so only the forwarding thread takes them (the children
    // strata spawns start with an empty mask).
    let forwarded = forwarded_signals();
    forwarded.thread_block().context("blocking the signals strata forwards")?;
    let work = WorkDir::create()?;
    let _bundle_files = BundleFiles(bundle.clone());

    // The event sink, up before the daemon connects to it.
    let events_path = work.0.join("events.sock");
    let listener = UnixListener::bind(&events_path).with_context(|| format!("binding {}", events_path.display()))?;
    listener.set_nonblocking(true).context("event socket")?;
    let (tx, events) = channel();
    let sink: Arc<dyn Events + Send + Sync> = Arc::new(EventSink { topics: Mutex::new(tx) });
    let mut server = Server::new().add_listener(listener.into_raw_fd())?.register_service(create_events(sink));
    server.start().context("serving the event socket")?;
    relay_shim_log(&bundle, debug)?;

    // `start`, exactly as containerd runs it.
    let shim = find_shim(a.shim.as_deref());
    let strata = std::env::current_exe().context("locating strata's binary")?;
    let mut start = Command::new(&shim);
    start
        .args(["-namespace", &a.namespace, "-address"])
        .arg(work.0.join("containerd.sock"))
        .arg("-publish-binary")
        .arg(&strata)
        .args(["-id", &a.id]);
    if debug {
        start.arg("-debug");
    }
    let out = start
        .arg("start")
        .current_dir(&bundle)
        .env("TTRPC_ADDRESS", &events_path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} start", shim.display()))?;
    if !out.status.success() {
        bail!("{} start failed ({}): see its messages above", shim.display(), out.status);
    }
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if debug {
        eprintln!("strata: shim address {address}");
    }
    let task =
        TaskClient::new(Client::connect(&address).with_context(|| format!("connecting to the shim at {address}"))?);
    let connected = call("Connect", task.connect(ctx(), &ConnectRequest { id: a.id.clone(), ..Default::default() }))?;
    let daemon = Pid::from_raw(connected.shim_pid as i32);
    forward_signals(forwarded, task.clone(), a.id.clone());

    let driven = drive(&task, a, &bundle, &work.0, &events);
    if driven.is_err() {
        // Leave nothing behind: what is left of the container goes with it.
        let id = a.id.clone();
        let bounded = || context::with_duration(SETTLE_TIMEOUT);
        let kill = KillRequest { id: id.clone(), signal: libc::SIGKILL as u32, all: true, ..Default::default() };
        let _ = task.kill(bounded(), &kill);
        let _ = task.wait(bounded(), &WaitRequest { id: id.clone(), ..Default::default() });
        let _ = task.delete(bounded(), &DeleteRequest { id, ..Default::default() });
    }
    let _ = task.shutdown(ctx(), &ShutdownRequest { id: a.id.clone(), ..Default::default() });
    drop(task);
    if !reap_daemon(daemon) {
        eprintln!("strata: the shim did not exit after Shutdown: killed it");
        let _ = Command::new(&shim)
            .args(["-namespace", &a.namespace, "-id", &a.id, "-bundle"])
            .arg(&bundle)
            .arg("delete")
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", &events_path)
            .stdout(Stdio::null())
            .status();
    }
    server.shutdown();
    let code = driven?;
    print_line(&format!("exit status {code}"));
    Ok(code)
}

/// The task API calls of one run; returns the exit status strata reports.
fn drive(task: &TaskClient, a: &ShimRunArgs, bundle: &Path, work: &Path, events: &Receiver<String>) -> Result<i32> {
    let id = a.id.clone();
    let mut stdout = Relay::new(work.join("stdout"), false)?;
    let mut stderr = Relay::new(work.join("stderr"), true)?;
    let options = if a.io_uid.is_some() || a.io_gid.is_some() {
        let o = containerd_shim_protos::shim::oci::Options {
            io_uid: a.io_uid.unwrap_or(0),
            io_gid: a.io_gid.unwrap_or(0),
            ..Default::default()
        };
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = containerd_shim_protos::protobuf::Message::write_to_bytes(&o).context("encoding the options")?;
        MessageField::some(any)
    } else {
        MessageField::none()
    };
    let create = CreateTaskRequest {
        id: id.clone(),
        bundle: bundle.display().to_string(),
        stdout: stdout.uri(),
        stderr: stderr.uri(),
        options,
        ..Default::default()
    };
    call("Create", task.create(ctx(), &create))?;
    stdout.release();
    stderr.release();
    call("Start", task.start(ctx(), &StartRequest { id: id.clone(), ..Default::default() }))?;
    if let Some(file) = &a.update {
        let mut resources = Any::new();
        resources.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        resources.value = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let update =
            UpdateTaskRequest { id: id.clone(), resources: MessageField::some(resources), ..Default::default() };
        call("Update", task.update(ctx(), &update))?;
        print_line("updated");
    }

    let mut exec_status = None;
    if !a.exec.is_empty() {
        let exec_id = format!("exec-{}", std::process::id());
        let mut exec_out = Relay::new(work.join("exec-stdout"), false)?;
        let mut exec_err = Relay::new(work.join("exec-stderr"), true)?;
        let exec = ExecProcessRequest {
            id: id.clone(),
            exec_id: exec_id.clone(),
            stdout: exec_out.uri(),
            stderr: exec_err.uri(),
            spec: MessageField::some(exec_spec(bundle, &a.exec)?),
            ..Default::default()
        };
        call("Exec", task.exec(ctx(), &exec))?;
        let started =
            task.start(ctx(), &StartRequest { id: id.clone(), exec_id: exec_id.clone(), ..Default::default() });
        exec_out.release();
        exec_err.release();
        call("Start (exec)", started)?;
        let waited = task.wait(ctx(), &WaitRequest { id: id.clone(), exec_id: exec_id.clone(), ..Default::default() });
        let status = call("Wait (exec)", waited)?.exit_status;
        exec_out.drain();
        exec_err.drain();
        let deleted = task.delete(ctx(), &DeleteRequest { id: id.clone(), exec_id, ..Default::default() });
        call("Delete (exec)", deleted)?;
        print_line(&format!("exec exit status {status}"));
        exec_status = Some(status as i32);
        // The container's work is done: end it as `ctr task kill -s KILL` would.
        match task.kill(ctx(), &KillRequest { id: id.clone(), signal: libc::SIGKILL as u32, ..Default::default() }) {
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => {}
            r => {
                call("Kill", r)?;
            }
        }
    }

    let status = call("Wait", task.wait(ctx(), &WaitRequest { id: id.clone(), ..Default::default() }))?.exit_status;
    stdout.drain();
    stderr.drain();
    call("Delete", task.delete(ctx(), &DeleteRequest { id, ..Default::default() }))?;
    if !await_event(events, topics::TASK_DELETE_EVENT_TOPIC) {
        eprintln!("strata: the shim published no {} event", topics::TASK_DELETE_EVENT_TOPIC);
    }
    Ok(exec_status.unwrap_or(status as i32))
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn run_with_an_exec_parses() {
        let c = Cli::try_parse_from(["strata", "shim", "run", "--bundle", "/b", "c1", "--exec", "sh", "-c", "echo hi"])
            .unwrap();
        let Command::Shim(s) = c.command else { panic!("not shim: {:?}", c.command) };
        let super::ShimCommand::Run(r) = s.command;
        assert_eq!(r.id, "c1");
        assert_eq!(r.exec, ["sh", "-c", "echo hi"]);
        assert_eq!(r.bundle.as_os_str(), "/b");
    }
}
