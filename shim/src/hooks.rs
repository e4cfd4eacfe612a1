//! runtime-spec hooks: programs the runtime runs at fixed points of a container's life, each given
//! the container's state (JSON) on its stdin.
//!
//! | hook | when | run by, where |
//! |---|---|---|
//! | `prestart` (deprecated), `createRuntime` | `create`, once the namespaces and mounts exist, before `pivot_root` | the runtime, in its own namespaces |
//! | `createContainer` | right after those, still before `pivot_root` | the init, in the container's namespaces (the path resolves in the runtime's file system) |
//! | `startContainer` | `start`, before the program is executed | the init, in the container (after `pivot_root`) |
//! | `poststart` | `start`, once the program runs, before `start` returns | the runtime |
//! | `poststop` | `delete`, once the container is gone, before `delete` returns | the runtime |
//!
//! A failing hook of the first four kinds fails the operation (and the container is removed);
//! a failing `poststart` or `poststop` hook is logged as a warning and the life cycle goes on, as
//! the specification requires.

use crate::error::{Error, Result};
use oci_spec::runtime::{Hook, Hooks};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The points at which hooks run, with their names in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `hooks.prestart`.
    Prestart,
    /// `hooks.createRuntime`.
    CreateRuntime,
    /// `hooks.createContainer`.
    CreateContainer,
    /// `hooks.startContainer`.
    StartContainer,
    /// `hooks.poststart`.
    Poststart,
    /// `hooks.poststop`.
    Poststop,
}

impl Kind {
    /// The field name in config.json.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        }
    }

    /// Every kind, in config.json's order.
    pub const ALL: [Kind; 6] = [
        Kind::Prestart,
        Kind::CreateRuntime,
        Kind::CreateContainer,
        Kind::StartContainer,
        Kind::Poststart,
        Kind::Poststop,
    ];

    fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            Kind::Prestart => hooks.prestart(),
            Kind::CreateRuntime => hooks.create_runtime(),
            Kind::CreateContainer => hooks.create_container(),
            Kind::StartContainer => hooks.start_container(),
            Kind::Poststart => hooks.poststart(),
            Kind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// The hooks of `kind` (none when there are no hooks at all).
pub fn of(hooks: Option<&Hooks>, kind: Kind) -> &[Hook] {
    hooks.map(|h| kind.of(h)).unwrap_or_default()
}

/// Whether there are hooks that run while the container is created or started (those for which
/// the init needs the container's state).
pub fn any_before_start(hooks: Option<&Hooks>) -> bool {
    [Kind::Prestart, Kind::CreateRuntime, Kind::CreateContainer, Kind::StartContainer]
        .iter()
        .any(|k| !of(hooks, *k).is_empty())
}

/// Checks what the specification requires of every hook: an absolute path, a positive timeout.
/// Returns the field and the reason of the first violation.
pub fn check(hooks: Option<&Hooks>) -> std::result::Result<(), (String, String)> {
    for kind in Kind::ALL {
        for (i, h) in of(hooks, kind).iter().enumerate() {
            let field = format!("hooks.{}[{i}]", kind.field());
            if !h.path().is_absolute() {
                return Err((format!("{field}.path"), format!("{} is not an absolute path", h.path().display())));
            }
            if h.timeout().is_some_and(|t| t <= 0) {
                return Err((format!("{field}.timeout"), "must be a positive number of seconds".into()));
            }
        }
    }
    Ok(())
}

/// Runs the hooks of `kind` one after another, each with `state` on its stdin; stops at the
/// first failure, which names the hook and carries the end of its output.
pub fn run(hooks: Option<&Hooks>, kind: Kind, state: &[u8]) -> Result<()> {
    for (i, h) in of(hooks, kind).iter().enumerate() {
        run_one(h, state)
            .map_err(|e| Error::Init(format!("hooks.{}[{i}] ({}): {e}", kind.field(), h.path().display())))?;
    }
    Ok(())
}

/// Runs the hooks of `kind` and reports a failure as a warning instead of returning it
/// (`poststart`, `poststop`). `state` is made only when there is a hook to give it to.
pub fn run_or_warn(hooks: Option<&Hooks>, kind: Kind, state: impl FnOnce() -> Vec<u8>) {
    if of(hooks, kind).is_empty() {
        return;
    }
    if let Err(e) = run(hooks, kind, &state()) {
        tracing::warn!("{e}");
        eprintln!("strata: warning: {e}");
    }
}

fn run_one(h: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args().as_ref().filter(|a| !a.is_empty()) {
        cmd.arg0(&args[0]).args(&args[1..]);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Output goes to a file, not a pipe: a hook that leaves a child behind holding it must not
    // keep the runtime waiting for end-of-file.
    let mut out = output_file().map_err(|e| format!("a file for its output: {e}"))?;
    let out_for_child = out.try_clone().map_err(|e| e.to_string())?;
    let err_for_child = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::piped()).stdout(out_for_child).stderr(err_for_child);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook need not read its stdin: a closed pipe is not its failure.
        let _ = stdin.write_all(state);
    }
    let deadline = h.timeout().map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            // A process whose reaper waits for every child (a subreaper reaping in a thread of
            // its own) took the status: the hook has ended.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                tracing::debug!("hook {}: its exit status was collected by the reaper", h.path().display());
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", h.timeout().unwrap_or_default()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    };
    if status.success() {
        return Ok(());
    }
    use std::io::Seek;
    let mut text = String::new();
    let _ = out.seek(std::io::SeekFrom::Start(0)).and_then(|_| out.take(4096).read_to_string(&mut text));
    let text = text.trim();
    Err(if text.is_empty() { format!("{status}") } else { format!("{status}: {text}") })
}

/// An anonymous in-memory file (no file system needed: the init may already be in a read-only
/// root when it runs startContainer hooks).
fn output_file() -> std::io::Result<std::fs::File> {
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"strata-hook-output".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The runtime-spec state document a hook reads on its stdin.
pub fn state_document(
    oci_version: &str,
    id: &str,
    status: &str,
    pid: i32,
    bundle: &std::path::Path,
    annotations: &std::collections::HashMap<String, String>,
) -> Vec<u8> {
    let doc = serde_json::json!({
        "ociVersion": oci_version,
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// `state` (a runtime-spec state document) with `status` set for the point reached, as bytes.
pub fn with_status(state: &[u8], status: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(state) {
        Ok(mut v) => {
            v["status"] = serde_json::Value::String(status.to_string());
            serde_json::to_vec(&v).unwrap_or_else(|_| state.to_vec())
        }
        Err(_) => state.to_vec(),
    }
}
