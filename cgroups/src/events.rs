//! Memory events (OOM kills, hitting memory.max/high) as a stream.
//!
//! The kernel signals a change of memory.events with an inotify `IN_MODIFY` event on the file.
//! The stream waits on inotify and also re-reads the file at least once a second, so a lost
//! notification only delays an event. When the cgroup is removed the watch disappears
//! (`IN_IGNORED`) and the stream ends.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io_err};
use crate::stats::MemoryEvents;

/// A change seen on memory.events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEventUpdate {
    /// The counters now.
    pub current: MemoryEvents,
    /// The counters when the previous update (or the stream) began.
    pub previous: MemoryEvents,
}

impl MemoryEventUpdate {
    /// Processes killed by the OOM killer since the previous update.
    pub fn new_oom_kills(&self) -> u64 {
        self.current.oom_kill.saturating_sub(self.previous.oom_kill)
    }

    /// Times the OOM killer was invoked since the previous update.
    pub fn new_ooms(&self) -> u64 {
        self.current.oom.saturating_sub(self.previous.oom)
    }
}

/// A stream of memory.events changes of one cgroup. Also an [`Iterator`] that blocks until the
/// next change and ends when the cgroup is removed.
#[derive(Debug)]
pub struct MemoryEventStream {
    inotify: OwnedFd,
    file: PathBuf,
    last: MemoryEvents,
    gone: bool,
}

fn syscall_err<'a>(syscall: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Syscall { syscall, path: path.to_path_buf(), source }
}

impl MemoryEventStream {
    /// Watches memory.events in the cgroup directory `dir`.
    pub fn open(dir: &Path) -> Result<MemoryEventStream> {
        let file = dir.join("memory.events");
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(syscall_err("inotify_init1", &file)(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut cpath = file.as_os_str().as_bytes().to_vec();
        cpath.push(0);
        // SAFETY: `cpath` is NUL-terminated and outlives the call; `inotify` is a valid fd.
        let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), cpath.as_ptr().cast(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(syscall_err("inotify_add_watch", &file)(io::Error::last_os_error()));
        }
        let last = MemoryEvents::parse(&fs::read_to_string(&file).map_err(io_err(&file))?);
        Ok(MemoryEventStream { inotify, file, last, gone: false })
    }

    /// Whether the cgroup is gone (the stream has ended).
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// The counters as last seen.
    pub fn last(&self) -> MemoryEvents {
        self.last
    }

    /// Waits up to `timeout` (forever with `None`) for the counters to change. Returns `None` on
    /// timeout or once the cgroup is gone.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<MemoryEventUpdate>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while !self.gone {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            self.wait_readable(slice)?;
            self.drain()?;
            let text = match fs::read_to_string(&self.file) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.gone = true;
                    return Ok(None);
                }
                Err(e) => return Err(io_err(&self.file)(e)),
            };
            let now = MemoryEvents::parse(&text);
            if now != self.last {
                let update = MemoryEventUpdate { current: now, previous: self.last };
                self.last = now;
                return Ok(Some(update));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
        Ok(None)
    }

    fn wait_readable(&self, timeout: Duration) -> Result<()> {
        let mut pfd = libc::pollfd { fd: self.inotify.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is one valid pollfd that lives across the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(syscall_err("poll", &self.file)(e));
            }
        }
        Ok(())
    }

    /// Reads all pending inotify events; notes when the watch was removed with the cgroup.
    fn drain(&mut self) -> Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is writable for its full length; the fd is valid and non-blocking.
            let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return Ok(());
            }
            let mut off = 0usize;
            let header = size_of::<libc::inotify_event>();
            while off + header <= n as usize {
                // SAFETY: the kernel wrote a whole inotify_event header at `off` (checked bound);
                // read_unaligned copes with the byte buffer's alignment.
                let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off).cast()) };
                if ev.mask & libc::IN_IGNORED != 0 {
                    self.gone = true;
                }
                off += header + ev.len as usize;
            }
        }
    }
}

/// The inotify descriptor, readable when memory.events may have changed: an event loop waits on
/// it and then calls `wait(Some(Duration::ZERO))`.
impl std::os::fd::AsFd for MemoryEventStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.inotify)
    }
}

impl Iterator for MemoryEventStream {
    type Item = Result<MemoryEventUpdate>;

    fn next(&mut self) -> Option<Self::Item> {
        self.wait(None).transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BEFORE: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n";
    const AFTER: &str = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn a_change_is_reported_once_and_removal_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg");
        fs::create_dir(&cg).unwrap();
        fs::write(cg.join("memory.events"), BEFORE).unwrap();
        let mut stream = MemoryEventStream::open(&cg).unwrap();
        assert_eq!(stream.wait(Some(Duration::from_millis(50))).unwrap(), None);
        let writer = {
            let file = cg.join("memory.events");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                fs::write(file, AFTER).unwrap();
            })
        };
        let update = stream.wait(Some(Duration::from_secs(10))).unwrap().unwrap();
        writer.join().unwrap();
        assert_eq!((update.new_oom_kills(), update.new_ooms()), (1, 1));
        assert_eq!(update.current.max, 5);
        assert_eq!(stream.wait(Some(Duration::from_millis(50))).unwrap(), None);
        fs::remove_dir_all(&cg).unwrap();
        assert!(stream.next().is_none());
    }

    #[test]
    fn opening_without_memory_events_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = MemoryEventStream::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("memory.events"), "{err}");
    }
}
