//! A task's stdio: the FIFOs containerd passes (or `file://` paths), given to the container
//! directly where possible and relayed by threads where the shim must stay in between (stdin,
//! so that `CloseIO` can end it, and a terminal's pty master). A `binary://` stdout starts a
//! logger program that reads both output streams (see [`super::binary_log`]).

use super::binary_log::{BinaryLogger, StartedLogger};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

/// The stdio paths of a process as containerd gives them.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// stdin FIFO, or empty.
    pub stdin: String,
    /// stdout FIFO or URI, or empty.
    pub stdout: String,
    /// stderr FIFO or URI, or empty.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// The shim's end of a process's stdio, kept while the process lives.
#[derive(Debug, Default)]
pub struct StdioRelay {
    /// Where stdin is written: a pipe to the process or its pty master. `CloseIO` drops it.
    stdin: Arc<Mutex<Option<File>>>,
    /// The pty master, for `ResizePty`.
    pub pty_master: Option<Arc<OwnedFd>>,
    /// The `binary://` logger reading the output; ended when the process is deleted.
    logger: Option<BinaryLogger>,
}

/// Whose process the stdio belongs to, as a `binary://` logger is told.
#[derive(Debug, Clone, Copy)]
pub struct StdioOwner<'a> {
    /// The container's id.
    pub container_id: &'a str,
    /// Its containerd namespace.
    pub namespace: &'a str,
}

/// Starts the logger when stdout is a `binary://` URI (containerd's rule: stdout's URI decides,
/// and the logger gets both streams).
fn start_logger(paths: &StdioPaths, owner: StdioOwner) -> Result<Option<StartedLogger>> {
    if !paths.stdout.starts_with("binary://") {
        return Ok(None);
    }
    BinaryLogger::start(&paths.stdout, owner.container_id, owner.namespace).map(Some)
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("opening /dev/null", e))
}

/// Opens an output FIFO or file for writing without blocking when no reader is there yet.
fn open_output(uri: &str) -> Result<OwnedFd> {
    if uri.is_empty() {
        return dev_null(true);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| Error::io(format!("opening log file {path}"), e));
    }
    if uri.starts_with("binary://") {
        return Err(Error::Invalid(format!("log URI {uri}: a binary logger must be the stdout URI too")));
    }
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    // containerd opens its reading end before it calls the shim, so a non-blocking open finds a
    // reader; if not, O_RDWR opens without one (the shim then holds a writer, which only delays
    // the reader's EOF until the process is deleted).
    let file = match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(format!("opening {path}"), e))?
        }
        Err(e) => return Err(Error::io(format!("opening {path}"), e)),
    };
    // The process gets ordinary blocking writes.
    let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
    Ok(file.into())
}

/// Copies `from` into the shared writer until EOF or until the writer is dropped by `CloseIO`.
fn spawn_stdin_copy(stdin_path: String, sink: Arc<Mutex<Option<File>>>) {
    std::thread::spawn(move || {
        // Blocks until containerd opens its writing end.
        let Ok(mut fifo) = File::open(&stdin_path) else { return };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match fifo.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = sink.lock().unwrap_or_else(|p| p.into_inner());
            let written = guard.as_mut().is_some_and(|w| w.write_all(&buf[..n]).is_ok());
            if !written {
                break;
            }
        }
        // EOF: the process's stdin closes (for a pty, the master stays for output).
        sink.lock().unwrap_or_else(|p| p.into_inner()).take();
    });
}

impl StdioRelay {
    /// Prepares the stdio for a process without a terminal: the three descriptors to give it.
    pub fn plain(paths: &StdioPaths, owner: StdioOwner) -> Result<(StdioRelay, [OwnedFd; 3])> {
        let mut relay = StdioRelay::default();
        let (stdout, stderr) = match start_logger(paths, owner)? {
            Some(started) => {
                relay.logger = Some(started.logger);
                (started.stdout, started.stderr)
            }
            None => {
                let stdout = open_output(&paths.stdout)?;
                let stderr = if paths.stderr.is_empty() { dev_null(true)? } else { open_output(&paths.stderr)? };
                (stdout, stderr)
            }
        };
        let stdin = if paths.stdin.is_empty() {
            dev_null(false)?
        } else {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
            *relay.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(File::from(w));
            spawn_stdin_copy(paths.stdin.clone(), relay.stdin.clone());
            r
        };
        Ok((relay, [stdin, stdout, stderr]))
    }

    /// Relays a pty master: stdin FIFO → master, master → stdout FIFO. The returned handle
    /// finishes when the terminal's last slave closes, so waiters can let the output drain.
    pub fn terminal(
        paths: &StdioPaths,
        owner: StdioOwner,
        master: OwnedFd,
    ) -> Result<(StdioRelay, std::thread::JoinHandle<()>)> {
        let master = Arc::new(master);
        // A terminal has one stream: the logger's stderr pipe closes at once.
        let (out, logger) = match start_logger(paths, owner)? {
            Some(started) => (started.stdout, Some(started.logger)),
            None => (open_output(&paths.stdout)?, None),
        };
        let mut out = File::from(out);
        let relay = StdioRelay { stdin: Arc::new(Mutex::new(None)), pty_master: Some(master.clone()), logger };
        if !paths.stdin.is_empty() {
            let w = master.as_fd().try_clone_to_owned().map_err(|e| Error::io("dup pty master", e))?;
            *relay.stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(File::from(w));
            spawn_stdin_copy(paths.stdin.clone(), relay.stdin.clone());
        }
        let reader = master.as_fd().try_clone_to_owned().map_err(|e| Error::io("dup pty master", e))?;
        let handle = std::thread::spawn(move || {
            let mut reader = File::from(reader);
            let mut buf = vec![0u8; 32 * 1024];
            // EIO once every slave is closed: the process and its children are gone.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Ok((relay, handle))
    }

    /// Ends the process's stdin (`CloseIO`).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
