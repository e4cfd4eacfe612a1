//! A task's stdio: the FIFOs containerd passes (or `file://` paths), given to the container
//! directly where possible and relayed by the daemon's event loop where the shim must stay in
//! between (stdin, so that `CloseIO` can end it, and a terminal's pty master). A `binary://`
//! stdout starts a logger program that reads both output streams (see [`super::binary_log`]).

use super::binary_log::{BinaryLogger, StartedLogger};
use crate::error::{Error, Result};
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

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

/// Whose process the stdio belongs to, as a `binary://` logger is told.
#[derive(Debug, Clone, Copy)]
pub struct StdioOwner<'a> {
    /// The container's id.
    pub container_id: &'a str,
    /// Its containerd namespace.
    pub namespace: &'a str,
}

/// The copies the daemon's loop must run for a process: (source, destination) pairs.
#[derive(Debug, Default)]
pub struct Copies {
    /// stdin FIFO → the process's stdin pipe or pty master.
    pub stdin: Option<(OwnedFd, OwnedFd)>,
    /// pty master → stdout FIFO.
    pub pty_out: Option<(OwnedFd, OwnedFd)>,
}

/// What the daemon keeps of a process's stdio besides the copies.
#[derive(Debug, Default)]
pub struct Kept {
    /// The pty master, for `ResizePty`.
    pub pty_master: Option<OwnedFd>,
    /// The `binary://` logger reading the output; retired when the process is deleted.
    pub logger: Option<BinaryLogger>,
    /// A read end of each output FIFO, held until the process is deleted, so that a writer
    /// never meets EPIPE (SIGPIPE) while containerd's reader is away (a containerd restart, a
    /// client that detached): its output waits in the FIFO instead, as with runc's shim.
    pub fifo_readers: Vec<OwnedFd>,
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

/// Opens an output FIFO (or file) for writing; for a FIFO, also a read end the daemon keeps
/// (see [`Kept::fifo_readers`]). With that reader there, the open never waits for
/// containerd's, and what the process writes before containerd's reader comes waits in the
/// FIFO rather than being lost when the writer closes.
fn open_output(uri: &str) -> Result<(OwnedFd, Option<OwnedFd>)> {
    if uri.is_empty() {
        return Ok((dev_null(true)?, None));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(|f| (OwnedFd::from(f), None))
            .map_err(|e| Error::io(format!("opening log file {path}"), e));
    }
    if uri.starts_with("binary://") {
        return Err(Error::Invalid(format!("log URI {uri}: a binary logger must be the stdout URI too")));
    }
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening {path}"), e))?;
    let writer = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("opening {path}"), e))?;
    // The process gets ordinary blocking writes.
    set_nonblocking(&writer, false)?;
    Ok((writer.into(), Some(reader.into())))
}

/// Opens the stdin FIFO for reading. Non-blocking, so the open does not wait for containerd's
/// writer; the FIFO reports nothing until a writer came, and hangs up when the last one left.
fn open_stdin(path: &str) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("opening {path}"), e))
}

/// Sets or clears O_NONBLOCK on `fd`'s open file description.
pub fn set_nonblocking(fd: &impl AsFd, on: bool) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::sys("fcntl", e))?);
    let flags = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| Error::sys("fcntl", e))?;
    Ok(())
}

/// Prepares the stdio of a process without a terminal: the three descriptors to give it, the
/// copies to run and what to keep.
pub fn plain(paths: &StdioPaths, owner: StdioOwner) -> Result<([OwnedFd; 3], Copies, Kept)> {
    let mut kept = Kept::default();
    let (stdout, stderr) = match start_logger(paths, owner)? {
        Some(started) => {
            kept.logger = Some(started.logger);
            (started.stdout, started.stderr)
        }
        None => {
            let (stdout, r1) = open_output(&paths.stdout)?;
            let (stderr, r2) =
                if paths.stderr.is_empty() { (dev_null(true)?, None) } else { open_output(&paths.stderr)? };
            kept.fifo_readers.extend(r1.into_iter().chain(r2));
            (stdout, stderr)
        }
    };
    let mut copies = Copies::default();
    let stdin = if paths.stdin.is_empty() {
        dev_null(false)?
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        set_nonblocking(&w, true)?;
        copies.stdin = Some((open_stdin(&paths.stdin)?, w));
        r
    };
    Ok(([stdin, stdout, stderr], copies, kept))
}

/// Prepares the copies of a terminal: stdin FIFO → master, master → stdout FIFO. The output
/// copy ends when the terminal's last slave closes, which is when the exit may be reported.
pub fn terminal(paths: &StdioPaths, owner: StdioOwner, master: OwnedFd) -> Result<(Copies, Kept)> {
    // A terminal has one stream: the logger's stderr pipe closes at once.
    let mut fifo_readers = Vec::new();
    let (out, logger) = match start_logger(paths, owner)? {
        Some(started) => (started.stdout, Some(started.logger)),
        None => {
            let (out, reader) = open_output(&paths.stdout)?;
            fifo_readers.extend(reader);
            (out, None)
        }
    };
    set_nonblocking(&out, true)?;
    set_nonblocking(&master, true)?;
    let dup = || master.as_fd().try_clone_to_owned().map_err(|e| Error::io("dup pty master", e));
    let mut copies = Copies { stdin: None, pty_out: Some((dup()?, out)) };
    if !paths.stdin.is_empty() {
        copies.stdin = Some((open_stdin(&paths.stdin)?, dup()?));
    }
    Ok((copies, Kept { pty_master: Some(master), logger, fifo_readers }))
}

/// A copy from one descriptor to another, moved on by the event loop without ever blocking.
/// What the destination does not take yet waits in a buffer; the source is not read meanwhile.
#[derive(Debug)]
pub struct Pump {
    /// Where bytes come from (non-blocking).
    pub src: OwnedFd,
    /// Where they go (non-blocking). Kept open until the pump is dropped, also after a failed
    /// write, so that the loop can always take it out of its epoll set first.
    pub dst: OwnedFd,
    /// A write failed (the reader is gone): the rest is read and dropped.
    dst_failed: bool,
    /// `CloseIO`: the source ends at its first "nothing more now" instead of at EOF.
    closing: bool,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    src_open: bool,
}

/// Bytes a pump holds at most.
const PUMP_BUFFER: usize = 16 * 1024;
/// Bytes a pump moves per turn of the loop at most, so that one busy stream cannot hold the
/// daemon's only thread (epoll is level-triggered: the rest comes next turn).
const PUMP_TURN: usize = 256 * 1024;

impl Pump {
    /// A pump from `src` to `dst`, both non-blocking.
    pub fn new(src: OwnedFd, dst: OwnedFd) -> Pump {
        Pump { src, dst, dst_failed: false, closing: false, buf: Vec::new(), pos: 0, len: 0, src_open: true }
    }

    /// Ends the copy once what the source holds now has been delivered (`CloseIO` after the
    /// client wrote its last bytes: they are not lost).
    pub fn close_soon(&mut self) {
        self.closing = true;
    }

    /// Moves what can move now. Returns true once the source is at its end (EOF, or EIO from a
    /// pty master whose slaves are all closed) and everything read was written or dropped.
    pub fn run(&mut self) -> bool {
        use nix::errno::Errno;
        let mut moved = 0;
        loop {
            if self.pos < self.len {
                if self.dst_failed {
                    self.pos = self.len;
                    continue;
                }
                match nix::unistd::write(&self.dst, &self.buf[self.pos..self.len]) {
                    Ok(n) => self.pos += n,
                    Err(Errno::EAGAIN) => return false,
                    Err(Errno::EINTR) => {}
                    Err(_) => self.dst_failed = true,
                }
                continue;
            }
            if !self.src_open {
                return true;
            }
            if moved >= PUMP_TURN {
                return false;
            }
            if self.buf.is_empty() {
                self.buf = vec![0; PUMP_BUFFER];
            }
            match nix::unistd::read(&self.src, &mut self.buf) {
                Ok(0) => self.src_open = false,
                Ok(n) => {
                    (self.pos, self.len) = (0, n);
                    moved += n;
                }
                Err(Errno::EAGAIN) if self.closing => self.src_open = false,
                Err(Errno::EAGAIN) => return false,
                Err(Errno::EINTR) => {}
                Err(_) => self.src_open = false,
            }
        }
    }

    /// Whether the loop should wait for the destination to take bytes (else for the source).
    pub fn blocked_on_dst(&self) -> bool {
        self.pos < self.len && !self.dst_failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pump_waits_for_a_full_destination_and_drains_after_eof() {
        let (src_r, src_w) = nix::unistd::pipe().unwrap();
        let (dst_r, dst_w) = nix::unistd::pipe().unwrap();
        set_nonblocking(&src_r, true).unwrap();
        set_nonblocking(&dst_w, true).unwrap();
        // Make the destination nearly full: one page.
        nix::fcntl::fcntl(&dst_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        let mut p = Pump::new(src_r, dst_w);
        let data = vec![7u8; 10_000];
        nix::unistd::write(&src_w, &data).unwrap();
        drop(src_w);
        assert!(!p.run(), "the destination takes only 4096 bytes");
        assert!(p.blocked_on_dst());
        let mut got = Vec::new();
        set_nonblocking(&dst_r, true).unwrap();
        // What the destination holds now (it never ends: the pump keeps its writer).
        let take = |got: &mut Vec<u8>| {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = nix::unistd::read(&dst_r, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        };
        while !p.run() {
            take(&mut got);
        }
        take(&mut got);
        assert_eq!(got, data);
    }

    #[test]
    fn a_closed_destination_drops_the_rest_without_blocking() {
        let (src_r, src_w) = nix::unistd::pipe().unwrap();
        let (dst_r, dst_w) = nix::unistd::pipe().unwrap();
        set_nonblocking(&src_r, true).unwrap();
        drop(dst_r);
        let mut p = Pump::new(src_r, dst_w);
        nix::unistd::write(&src_w, b"lost").unwrap();
        drop(src_w);
        assert!(p.run());
        assert!(!p.blocked_on_dst());
    }

    #[test]
    fn an_output_fifo_keeps_what_is_written_before_containerds_reader_comes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader yet: the open does not wait (a blocking open would wait for a reader that
        // never comes: the bound only tells that from returning), and what is written waits in
        // the FIFO.
        let t = std::time::Instant::now();
        let (out, kept_reader) = open_output(path.to_str().unwrap()).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "the open waited for a reader");
        nix::unistd::write(&out, b"first words").unwrap();
        drop(out);
        // containerd's reader comes late and gets it all.
        let late = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&late, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"first words");
        drop(kept_reader);
    }

    #[test]
    fn a_writer_never_meets_epipe_while_the_daemon_holds_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let containerd = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let (out, kept_reader) = open_output(path.to_str().unwrap()).unwrap();
        // containerd goes away (a restart): the write still succeeds.
        drop(containerd);
        assert_eq!(nix::unistd::write(&out, b"still here").unwrap(), 10);
        drop(kept_reader);
        // Without the daemon's reader the same write fails with EPIPE.
        let e = nix::unistd::write(&out, b"gone").unwrap_err();
        assert_eq!(e, nix::errno::Errno::EPIPE);
    }

    #[test]
    fn closing_delivers_what_was_written_then_ends() {
        let (src_r, src_w) = nix::unistd::pipe().unwrap();
        let (dst_r, dst_w) = nix::unistd::pipe().unwrap();
        set_nonblocking(&src_r, true).unwrap();
        set_nonblocking(&dst_r, true).unwrap();
        let mut p = Pump::new(src_r, dst_w);
        nix::unistd::write(&src_w, b"last words").unwrap();
        // The writer is still open: without close_soon the pump would wait for more.
        p.close_soon();
        assert!(p.run());
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&dst_r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"last words");
        drop(src_w);
    }
}
