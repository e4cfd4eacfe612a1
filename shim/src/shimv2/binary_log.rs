//! `binary://` log URIs, as containerd's runc shim runs them: `binary:///path/to/logger?k=v`
//! starts `/path/to/logger k v` with only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its
//! environment, the read ends of the process's stdout and stderr pipes as fds 3 and 4, and the
//! write end of a "ready" pipe as fd 5, which it closes (or writes to) once it reads. The
//! daemon does not wait for that (its loop never waits): the process may start first, and its
//! output waits in the pipes until the logger reads it, so nothing is lost.
//!
//! The shim forks the logger itself rather than with `std::process::Command`: the daemon's
//! reaper waits for every child, and std's `spawn` panics when an exec failure's child was
//! reaped by someone else. A pidfd follows the logger after the reaper has taken its exit.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// How long a logger may take to finish on its own once its process is deleted, before SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long a logger may take to exit after SIGTERM, before SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// The program and arguments a `binary://` URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerCommand {
    /// The absolute path of the logger.
    pub path: String,
    /// Its arguments: each query parameter as `key value` (containerd's order is random; this
    /// keeps the URI's).
    pub args: Vec<String>,
}

/// Decodes `%XX` escapes and `+` as a space, as a URL query is written.
fn decode_query_part(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte =
                    hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| format!("bad escape in {s:?}"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Parses `binary:///abs/path?k=v&k2=v2`.
pub fn parse(uri: &str) -> Result<LoggerCommand> {
    let invalid = |why: String| Error::Invalid(format!("log URI {uri}: {why}"));
    let rest = uri.strip_prefix("binary://").ok_or_else(|| invalid("not a binary:// URI".into()))?;
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(invalid("name the logger by an absolute path, as binary:///path/to/logger".into()));
    }
    let path = decode_query_part(&path.replace('+', "%2B")).map_err(invalid)?;
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(decode_query_part(k).map_err(invalid)?);
        args.push(decode_query_part(v).map_err(invalid)?);
    }
    if path.contains('\0') || args.iter().any(|a| a.contains('\0')) {
        return Err(invalid("a NUL byte in the path or the arguments".into()));
    }
    Ok(LoggerCommand { path, args })
}

/// A running logger; dropping it (when its process is deleted) ends it: it gets a moment to
/// finish on EOF, then SIGTERM, then SIGKILL. The daemon's reaper reaps it.
#[derive(Debug)]
pub struct BinaryLogger {
    pidfd: Option<OwnedFd>,
    /// The read end of the "ready" pipe, held so the logger's signal never meets EPIPE.
    _ready: Option<OwnedFd>,
}

/// The write ends a process's stdout and stderr go to, and the logger reading them.
#[derive(Debug)]
pub struct StartedLogger {
    pub logger: BinaryLogger,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A close-on-exec copy of `fd` numbered 10 or above, so that the child's `dup2` onto 0–5
/// cannot overwrite a source it has yet to copy.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| Error::sys("duplicating a logger pipe", e))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Waits until `fd` is readable (or hung up) for at most `timeout`; false on timeout.
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
            Err(_) => return false,
        }
    }
}

impl BinaryLogger {
    /// Starts the logger `uri` names for a process of container `id` in `namespace` (it has
    /// executed when this returns; a logger that cannot be executed is an error).
    pub fn start(uri: &str, id: &str, namespace: &str) -> Result<StartedLogger> {
        let cmd = parse(uri)?;
        let cstr = |s: &str| CString::new(s).map_err(|_| Error::Invalid(format!("log URI {uri}: a NUL byte")));
        let path = cstr(&cmd.path)?;
        let mut argv_owned = vec![path.clone()];
        for a in &cmd.args {
            argv_owned.push(cstr(a)?);
        }
        let env_owned = [cstr(&format!("CONTAINER_ID={id}"))?, cstr(&format!("CONTAINER_NAMESPACE={namespace}"))?];
        let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());

        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("opening /dev/null", e))
            .and_then(above_stdio)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        // Carries the errno of a failed exec; closed by a successful one.
        let (exec_r, exec_w) = pipe()?;
        let mut unblocked = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        unsafe { libc::sigemptyset(unblocked.as_mut_ptr()) };
        // SAFETY: initialised just above.
        let unblocked = unsafe { unblocked.assume_init() };

        // SAFETY: the child calls only async-signal-safe functions (dup2, sigprocmask, signal,
        // execve, write, _exit) on memory prepared before the fork, then execs or exits.
        let pid = match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("forking the logger", e))? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: see the fork above; every descriptor and pointer is valid in the child.
                unsafe {
                    let moves = [
                        (null.as_raw_fd(), 0),
                        (null.as_raw_fd(), 1),
                        (null.as_raw_fd(), 2),
                        (out_r.as_raw_fd(), 3),
                        (err_r.as_raw_fd(), 4),
                        (ready_w.as_raw_fd(), 5),
                    ];
                    for (from, to) in moves {
                        if libc::dup2(from, to) < 0 {
                            libc::_exit(126);
                        }
                    }
                    libc::sigprocmask(libc::SIG_SETMASK, &unblocked, std::ptr::null_mut());
                    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    let errno = *libc::__errno_location();
                    libc::write(exec_w.as_raw_fd(), (&raw const errno).cast(), std::mem::size_of::<libc::c_int>());
                    libc::_exit(127);
                }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let logger = BinaryLogger { pidfd: crate::sys::pidfd_open(pid.as_raw()).ok(), _ready: Some(ready_r) };
        drop((null, out_r, err_r, ready_w, exec_w));

        let mut errno = [0u8; 4];
        let mut exec_r = File::from(exec_r);
        if exec_r.read_exact(&mut errno).is_ok() {
            let e = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
            return Err(Error::io(format!("starting the logger {} (log URI {uri})", cmd.path), e));
        }
        Ok(StartedLogger { logger, stdout: out_w, stderr: err_w })
    }
}

impl BinaryLogger {
    /// Lets the logger finish once its process is deleted: it gets [`EXIT_GRACE`] to exit on
    /// its own (its pipes are at EOF), then SIGTERM, then after [`TERM_TIMEOUT`] SIGKILL. The
    /// daemon calls [`RetiringLogger::step`] when the returned deadline passes.
    pub fn retire(mut self) -> Option<RetiringLogger> {
        let pidfd = self.pidfd.take()?;
        Some(RetiringLogger { pidfd, deadline: std::time::Instant::now() + EXIT_GRACE, termed: false })
    }
}

/// A logger on its way out (see [`BinaryLogger::retire`]).
#[derive(Debug)]
pub struct RetiringLogger {
    pidfd: OwnedFd,
    /// When the next step is due.
    pub deadline: std::time::Instant,
    termed: bool,
}

impl RetiringLogger {
    /// Whether the logger has exited (its pidfd is readable).
    pub fn exited(&self) -> bool {
        wait_readable(&self.pidfd, Duration::ZERO)
    }

    /// The next step once the deadline passed: SIGTERM, then SIGKILL. Returns false when done.
    pub fn step(&mut self) -> bool {
        if self.exited() {
            return false;
        }
        if self.termed {
            log::warn!("a binary logger ignored SIGTERM for {TERM_TIMEOUT:?}: killing it");
            let _ = crate::sys::pidfd_send_signal(&self.pidfd, libc::SIGKILL);
            return false;
        }
        let _ = crate::sys::pidfd_send_signal(&self.pidfd, libc::SIGTERM);
        self.termed = true;
        self.deadline = std::time::Instant::now() + TERM_TIMEOUT;
        true
    }
}

impl Drop for BinaryLogger {
    /// A logger dropped without being retired (its process never started) is terminated.
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = crate::sys::pidfd_send_signal(&pidfd, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_key_value_arguments() {
        let c = parse("binary:///usr/bin/log%20ger?--log-driver=awslogs&-v&a+b=c%3Dd").unwrap();
        assert_eq!(c.path, "/usr/bin/log ger");
        assert_eq!(c.args, ["--log-driver", "awslogs", "-v", "", "a b", "c=d"]);
        assert_eq!(parse("binary:///bin/x").unwrap(), LoggerCommand { path: "/bin/x".into(), args: vec![] });
    }

    #[test]
    fn relative_paths_and_bad_escapes_are_refused() {
        assert!(parse("binary://host/bin/x").is_err());
        assert!(parse("binary://x").is_err());
        assert!(parse("binary:///bin/x?a=%zz").is_err());
        assert!(parse("binary:///bin/x?a=%00").is_err());
    }

    #[test]
    fn a_missing_logger_fails_clearly() {
        let e = BinaryLogger::start("binary:///nonexistent/logger", "c1", "ns").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/logger"), "{e}");
    }
}
