//! Terminals: the container side allocates a pty from its own devpts and hands the master over
//! (to a `--console-socket`, as runc does, or to the runtime, which then relays it).

use crate::error::{Error, Result, SysContext};
use nix::fcntl::OFlag;
use nix::pty::{PtyMaster, grantpt, posix_openpt, unlockpt};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

/// Window size to set on a new pty.
#[derive(Debug, Clone, Copy, Default)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A pty pair opened inside the container.
#[derive(Debug)]
pub struct Pty {
    /// The master side, sent away.
    pub master: OwnedFd,
    /// The slave side, which becomes stdio.
    pub slave: OwnedFd,
}

/// Opens a pty through the container's /dev/ptmx (so it belongs to the container's devpts).
pub fn open_pty(size: Option<WinSize>, owner: u32) -> Result<Pty> {
    let master: PtyMaster = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "process.terminal: opening /dev/ptmx".into())?;
    grantpt(&master).ctx(|| "process.terminal: grantpt".into())?;
    unlockpt(&master).ctx(|| "process.terminal: unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).ctx(|| "process.terminal: ptsname".into())?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .ctx(|| format!("process.terminal: opening {name}"))?
        .into();
    // SAFETY: the master descriptor came from posix_openpt and is owned by `master`; into_raw_fd
    // hands that ownership to the OwnedFd.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    if let Some(ws) = size {
        set_winsize(&master, ws)?;
    }
    // The user the container runs as must own its terminal.
    let _ = nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(owner)), None);
    Ok(Pty { master, slave })
}

use std::os::unix::fs::OpenOptionsExt;

/// Sets a terminal's window size.
pub fn set_winsize(fd: &impl AsRawFd, ws: WinSize) -> Result<()> {
    let w = libc::winsize { ws_row: ws.rows, ws_col: ws.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) } < 0 {
        return Err(Error::sys("TIOCSWINSZ", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Reads a terminal's window size.
pub fn get_winsize(fd: &impl AsRawFd) -> Option<WinSize> {
    let mut w = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize struct owned by this frame.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
    (r == 0).then_some(WinSize { rows: w.ws_row, cols: w.ws_col })
}

/// Makes the slave the controlling terminal and stdin, stdout and stderr.
pub fn become_stdio(slave: &OwnedFd) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; the process is a session leader.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::sys("process.terminal: TIOCSCTTY", nix::errno::Errno::last()));
    }
    for target in 0..3 {
        crate::sys::dup_to(slave.as_raw_fd(), target).ctx(|| format!("process.terminal: dup to fd {target}"))?;
    }
    Ok(())
}

/// Connects to a console socket (before the container's root replaces the host's).
pub fn connect_console_socket(path: &Path) -> Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .ctx(|| "console socket: socket".into())?;
    let addr = UnixAddr::new(path).ctx(|| format!("console socket {}", path.display()))?;
    connect(fd.as_raw_fd(), &addr).ctx(|| format!("connecting to console socket {}", path.display()))?;
    Ok(fd)
}

/// Sends the pty master over a console socket with SCM_RIGHTS, naming it as runc does.
pub fn send_master(socket: &OwnedFd, master: &OwnedFd) -> Result<()> {
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
        .ctx(|| "sending the pty master to the console socket".into())?;
    Ok(())
}

/// Puts the runtime's own terminal in raw mode while it relays a container's pty; restores it
/// when dropped.
pub struct RawMode {
    fd: i32,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Enters raw mode on `fd` if it is a terminal.
    pub fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: `fd` is one of the process's standard descriptors, open for its lifetime.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let saved = nix::sys::termios::tcgetattr(bfd).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(bfd, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: see `enter`.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::sys::termios::tcsetattr(bfd, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
