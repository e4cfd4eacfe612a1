//! The containerd shim (runtime v2, task API v2 over ttrpc) on the engine: what
//! `containerd-shim-strata-v1` runs ([`main`]).
//!
//! - `start` spawns the daemon (the crate's `spawn`: the same binary with `-socket`) and prints
//!   its address; `delete` cleans up after a dead daemon; the daemon is [`service::Daemon`], one
//!   thread and one epoll loop (its process table, reaper, copies and events in `service`, the
//!   task API's calls in `task_api`, the ttrpc wire in [`ttrpc`]).
//! - The daemon never forks a container itself: [`helper`] explains why and how the `strata`
//!   binary does it in a process of its own; [`runner`] keeps the helpers in flight while the
//!   loop goes on; [`publisher`] sends the events; [`process`] is the table of tasks;
//!   [`sandbox`] serves containerd 2.x's sandbox API (a pod sandbox without a pause image).
//! - [`stdio`] connects a process to containerd's FIFOs (or a [`binary_log`] logger program);
//!   [`metrics`] converts cgroup statistics.

pub mod binary_log;
pub mod helper;
pub mod metrics;
pub mod options;
pub mod process;
pub mod publisher;
mod rootfs_mount;
pub mod runner;
pub mod sandbox;
pub mod service;
pub mod stdio;
mod task_api;
pub mod ttrpc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::{Flags, StartOpts};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The runtime name containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.strata.v1";

/// The annotation that groups a pod's containers into one shim.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The directory of shim sockets, `/run/containerd/s`, made root-only: a path socket there
/// cannot be reached from a container's network namespace (unlike an abstract socket, the
/// CVE-2020-15257 class) nor by other users of the host.
fn secure_socket_dir() -> containerd_shim::Result<()> {
    let dir = PathBuf::from(containerd_shim::SOCKET_ROOT).join("s");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| containerd_shim::Error::Other(format!("creating {}: {e}", dir.display())))?;
    let md = std::fs::metadata(&dir).map_err(|e| containerd_shim::Error::Other(format!("{}: {e}", dir.display())))?;
    if md.uid() != 0 || md.mode() & 0o077 != 0 {
        std::os::unix::fs::chown(&dir, Some(0), Some(0))
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| containerd_shim::Error::Other(format!("making {} root-only: {e}", dir.display())))?;
    }
    Ok(())
}

/// The shim group of a container: its pod's sandbox id when it has one, else its own id.
fn grouping(id: &str) -> String {
    let spec = std::fs::read("config.json").ok().and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
    spec.as_ref()
        .and_then(|s| s.pointer(&format!("/annotations/{}", SANDBOX_ANNOTATION.replace('/', "~1"))))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string())
}

/// Cleans up after a shim containerd takes for dead (`delete`): kills what is left of
/// container `id`, removes its cgroup and state, and unmounts its rootfs. A daemon that still
/// answers (containerd may give up on a live one, after a restart) is told to forget the task
/// and to exit if it has no other (a pod's shim may serve more containers); the socket of a
/// daemon that does not answer is removed. Returns the exit status containerd records.
pub fn cleanup(namespace: &str, id: &str, bundle: &std::path::Path) -> DeleteResponse {
    if let Ok(root) = crate::state::StateRoot::new(service::task_state_root(bundle, namespace)) {
        let _ = crate::container::delete(&root, id, true);
    }
    // Every mount the daemon stacked there (containerd may pass several).
    service::unmount_rootfs(bundle);
    runner::remove_orphaned_reports(&service::state_root(namespace));
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = PathBuf::from(address.trim().trim_start_matches("unix://"));
        let is_socket = path.starts_with(containerd_shim::SOCKET_ROOT)
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        if is_socket && !dismiss_live_daemon(&path, id) {
            let _ = std::fs::remove_file(&path);
        }
    }
    DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(containerd_shim::util::timestamp().unwrap_or_default()),
        ..Default::default()
    }
}

/// Asks a daemon still listening at `socket` to delete task `id` (already gone from the
/// engine) and to shut down if it has no other task left (it then removes its socket itself).
/// False when no daemon answers.
fn dismiss_live_daemon(socket: &Path, id: &str) -> bool {
    use containerd_shim::api::{DeleteRequest, ShutdownRequest};
    let timeout = std::time::Duration::from_secs(2);
    let Ok(mut conn) = UnixStream::connect(socket) else { return false };
    let delete = DeleteRequest { id: id.to_string(), ..Default::default() };
    let call = |conn: &mut UnixStream, stream: u32, method: &str, payload: Vec<u8>| {
        ttrpc::call(conn, stream, task_api::TASK_SERVICE, method, payload, timeout)
    };
    // The task may be unknown to it already: only that it answers matters.
    match call(&mut conn, 1, "Delete", delete.write_to_bytes().unwrap_or_default()) {
        Ok(_) => {}
        Err(e) if e.contains("code") => {}
        Err(_) => return false,
    }
    let shutdown = ShutdownRequest { id: id.to_string(), ..Default::default() };
    call(&mut conn, 3, "Shutdown", shutdown.write_to_bytes().unwrap_or_default()).is_ok()
}

/// The shim's main: `-v`, `start`, `delete` or the daemon. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    if args.iter().skip(1).any(|a| matches!(a.as_str(), "-v" | "--v" | "-version" | "--version")) {
        println!("containerd-shim-strata-v1:");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Runtime:  {RUNTIME_ID}");
        return 0;
    }
    let result = containerd_shim::parse(&args[1..])
        .map_err(|e| e.to_string())
        .and_then(|flags| if flags.namespace.is_empty() { Err("-namespace is required".into()) } else { Ok(flags) })
        .and_then(|flags| match flags.action.as_str() {
            "start" => start(flags),
            "delete" => delete(&flags),
            _ => serve(&flags),
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            eprintln!("containerd-shim-strata-v1: {e}");
            1
        }
    }
}

/// `start`: spawns the daemon of this container's group (or finds it running) and prints its
/// address.
fn start(flags: Flags) -> Result<(), String> {
    // Fail here, where containerd shows the message, rather than in the daemon.
    service::find_helper().map_err(|e| e.to_string())?;
    secure_socket_dir().map_err(|e| e.to_string())?;
    let group = grouping(&flags.id);
    let opts = StartOpts {
        id: flags.id,
        publish_binary: flags.publish_binary,
        address: flags.address,
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace,
        debug: flags.debug,
    };
    let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new()).map_err(|e| e.to_string())?;
    containerd_shim::util::write_address(&address).map_err(|e| e.to_string())?;
    print!("{address}");
    std::io::stdout().flush().map_err(|e| e.to_string())
}

/// `delete`: cleans up after a dead daemon and prints the exit containerd records.
fn delete(flags: &Flags) -> Result<(), String> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        PathBuf::from(&flags.bundle)
    };
    let resp = cleanup(&flags.namespace, &flags.id, &bundle);
    let bytes = resp.write_to_bytes().map_err(|e| e.to_string())?;
    std::io::stdout().write_all(&bytes).map_err(|e| e.to_string())
}

/// Binds the daemon's socket. When it is in use by a live daemon (a pod's shim started by
/// another container of the pod), returns `None`: that daemon serves.
fn listen(address: &str) -> Result<Option<UnixListener>, String> {
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            for _ in 0..200 {
                if UnixStream::connect(path).is_ok() {
                    return Ok(None);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map(Some).map_err(|e| format!("binding {}: {e}", path.display()))
        }
        Err(e) => Err(format!("binding {}: {e}", path.display())),
    }
}

/// The daemon: binds the socket, tells `start` it serves (by closing the stdout pipe it reads),
/// and runs the loop until `Shutdown`.
fn serve(flags: &Flags) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    if flags.socket.is_empty() {
        return Err("-socket is required for the daemon".into());
    }
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set".to_string())?;
    // Exits come through a signalfd; SIGTERM and SIGINT are containerd's business, not ours
    // (it ends the daemon with Shutdown, or kills it).
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    mask.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &SigSet::from(Signal::SIGCHLD),
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|e| format!("signalfd: {e}"))?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("becoming a child subreaper: {}", std::io::Error::last_os_error()));
    }
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id).map_err(|e| e.to_string())?;
    let Some(listener) = listen(&flags.socket)? else {
        containerd_shim::util::write_address(&flags.socket).map_err(|e| e.to_string())?;
        server_started();
        return Ok(());
    };
    let mut daemon =
        service::Daemon::new(&flags.namespace, listener, ttrpc_address, signals).map_err(|e| e.to_string())?;
    server_started();
    log::info!("strata shim serving {} in namespace {}", flags.socket, flags.namespace);
    daemon.run();
    let path = flags.socket.strip_prefix("unix://").unwrap_or(&flags.socket);
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Tells `start` (reading our stdout until EOF) that the socket is served: stdout becomes a
/// copy of stderr (/dev/null), closing the pipe.
fn server_started() {
    // SAFETY: dup2 on two standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
}
