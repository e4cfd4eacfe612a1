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
}
