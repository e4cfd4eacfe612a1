//! The channel between the runtime and the processes it forks: a SOCK_SEQPACKET pair carrying
//! small JSON messages and, when needed, one file descriptor (the pty master).

use crate::error::{Error, Result};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The messages exchanged while a container or exec process is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// The first child has unshared its user namespace: write the id maps.
    UsernsReady,
    /// The runtime has done its part (cgroup, id maps): go on.
    Go,
    /// A detached idmapped mount for `mounts[N]` follows as the attached descriptor.
    MountFd(usize),
    /// The pid of the process that will run the user's program, in the runtime's pid namespace.
    Pid(i32),
    /// A pty master follows as the attached descriptor.
    Pty,
    /// A seccomp user-notification listener follows as the attached descriptor.
    SeccompListener,
    /// The process is set up and waits at the start gate.
    Ready,
    /// Start the user's program.
    Start,
    /// The init reached the hooks of `create` (its mounts exist, `pivot_root` is next): the
    /// runtime runs `prestart` and `createRuntime` and answers with `State`.
    Hooks,
    /// The container's state for the init's own hooks (`createContainer`, `startContainer`).
    State(String),
    /// Setup failed; the text says what and where.
    Error(String),
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// Makes a connected pair of channels (both close-on-exec).
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::sys("socketpair", e))?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Wraps a connected SOCK_SEQPACKET socket.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// The raw descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends a message, with an optional descriptor.
    pub fn send(&self, msg: &Msg, fd: Option<RawFd>) -> Result<()> {
        let data = serde_json::to_vec(msg).map_err(|e| Error::Invalid(e.to_string()))?;
        let iov = [IoSlice::new(&data)];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(f) => {
                fds = [f];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("sending to the container process", e)),
            }
        }
    }

    /// Receives a message and the descriptor attached to it, if any. A closed peer is an error
    /// that says the process ended during setup.
    pub fn recv(&self) -> Result<(Msg, Option<OwnedFd>)> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(r) => {
                    let mut fd = None;
                    for c in r.cmsgs().map_err(|e| Error::sys("reading control message", e))? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for f in fds {
                                // SAFETY: SCM_RIGHTS gave this process a new descriptor it owns.
                                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                                if fd.is_none() {
                                    fd = Some(owned);
                                }
                            }
                        }
                    }
                    break (r.bytes, fd);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("receiving from the container process", e)),
            }
        };
        if n == 0 {
            return Err(Error::Init("the container process exited during setup".into()));
        }
        let msg = serde_json::from_slice(&buf[..n])
            .map_err(|e| Error::Init(format!("malformed message from the container process: {e}")))?;
        Ok((msg, fd))
    }

    /// Receives the detached mounts the runtime sends (`MountFd`) until its `Go`.
    pub fn receive_until_go(&self) -> Result<Vec<(usize, OwnedFd)>> {
        let mut fds = Vec::new();
        loop {
            match self.recv()? {
                (Msg::Go, _) => return Ok(fds),
                (Msg::MountFd(i), Some(fd)) => fds.push((i, fd)),
                (Msg::Error(e), _) => return Err(Error::Init(e)),
                (m, _) => return Err(Error::Init(format!("unexpected message {m:?} while waiting for Go"))),
            }
        }
    }

    /// Receives and expects `want`; an `Error` message becomes [`Error::Init`].
    pub fn expect(&self, want: &Msg) -> Result<Option<OwnedFd>> {
        match self.recv()? {
            (m, fd) if &m == want => Ok(fd),
            (Msg::Error(e), _) => Err(Error::Init(e)),
            (m, _) => Err(Error::Init(format!("unexpected message {m:?} while waiting for {want:?}"))),
        }
    }
}

impl std::os::fd::AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What a container process reported while it was set up.
#[derive(Debug)]
pub struct SetupReport {
    /// The process's pid in the runtime's pid namespace (from stage 1).
    pub pid: i32,
    /// The pty master, when the runtime relays the terminal.
    pub pty: Option<OwnedFd>,
    /// A seccomp user-notification listener to pass on.
    pub seccomp_listener: Option<OwnedFd>,
}

/// Receives stage 1's `Pid` and the process's own messages up to `Ready`. Both processes write
/// to the same channel, so the process's messages may come before its pid. `on_pid` runs as
/// soon as the pid is known (to reap stage 1, or to remember whom to kill); `on_hooks` runs
/// the runtime's hooks when the process asks (once its pid is known) and returns the state the
/// process gets back; `cleanup` runs with the pid when a later message reports a failure.
pub fn receive_setup(
    chan: &Channel,
    mut on_pid: impl FnMut(i32),
    mut on_hooks: impl FnMut(i32) -> Result<String>,
    cleanup: impl Fn(i32),
) -> Result<SetupReport> {
    let (mut pid, mut pty, mut seccomp_listener, mut ready) = (None, None, None, false);
    let mut hooks_asked = false;
    while pid.is_none() || !ready {
        if let (true, Some(p)) = (hooks_asked, pid) {
            hooks_asked = false;
            match on_hooks(p) {
                Ok(state) => chan.send(&Msg::State(state), None)?,
                Err(e) => {
                    let _ = chan.send(&Msg::Error(e.to_string()), None);
                    cleanup(p);
                    return Err(e);
                }
            }
            continue;
        }
        let msg = chan.recv();
        let failure = match msg {
            Ok((Msg::Pid(p), _)) if pid.is_none() => {
                pid = Some(p);
                on_pid(p);
                continue;
            }
            Ok((Msg::Hooks, _)) => {
                hooks_asked = true;
                continue;
            }
            Ok((Msg::Pty, fd)) => {
                pty = fd;
                continue;
            }
            Ok((Msg::SeccompListener, fd)) => {
                seccomp_listener = fd;
                continue;
            }
            Ok((Msg::Ready, _)) => {
                ready = true;
                continue;
            }
            Ok((Msg::Error(e), _)) => Error::Init(e),
            Ok((m, _)) => Error::Init(format!("unexpected {m:?} while the process was set up")),
            Err(e) => e,
        };
        if let Some(p) = pid {
            cleanup(p);
        }
        return Err(failure);
    }
    Ok(SetupReport { pid: pid.unwrap_or_default(), pty, seccomp_listener })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross() {
        let (a, b) = pair().unwrap();
        a.send(&Msg::Pid(7), None).unwrap();
        assert_eq!(b.recv().unwrap().0, Msg::Pid(7));
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send(&Msg::Pty, Some(file.as_raw_fd())).unwrap();
        let (m, fd) = b.recv().unwrap();
        assert_eq!(m, Msg::Pty);
        assert!(fd.is_some());
        a.send(&Msg::Error("boom".into()), None).unwrap();
        assert!(matches!(b.expect(&Msg::Ready), Err(Error::Init(e)) if e == "boom"));
        drop(a);
        assert!(b.recv().is_err());
    }

    #[test]
    fn setup_messages_may_come_before_the_pid() {
        let (a, b) = pair().unwrap();
        a.send(&Msg::Ready, None).unwrap();
        a.send(&Msg::Pid(42), None).unwrap();
        let mut seen = None;
        let r = receive_setup(&b, |p| seen = Some(p), |_| Ok(String::new()), |_| panic!("no failure")).unwrap();
        assert_eq!((r.pid, seen), (42, Some(42)));
        a.send(&Msg::Pid(7), None).unwrap();
        a.send(&Msg::Error("mount failed".into()), None).unwrap();
        let cleaned = std::cell::Cell::new(0);
        let err = receive_setup(&b, |_| {}, |_| Ok(String::new()), |p| cleaned.set(p)).unwrap_err().to_string();
        assert_eq!((err.as_str(), cleaned.get()), ("mount failed", 7));
    }

    #[test]
    fn hooks_asked_before_the_pid_run_once_it_is_known() {
        let (a, b) = pair().unwrap();
        a.send(&Msg::Hooks, None).unwrap();
        a.send(&Msg::Pid(9), None).unwrap();
        let asked = std::cell::Cell::new(0);
        let replier = std::thread::spawn(move || {
            let (m, _) = a.recv().unwrap();
            a.send(&Msg::Ready, None).unwrap();
            m
        });
        let hooks = |p: i32| {
            asked.set(p);
            Ok(format!("state of {p}"))
        };
        let r = receive_setup(&b, |_| {}, hooks, |_| panic!("no failure")).unwrap();
        assert_eq!((r.pid, asked.get()), (9, 9));
        assert_eq!(replier.join().unwrap(), Msg::State("state of 9".into()));
    }
}
