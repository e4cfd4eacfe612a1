//! Terminals: the container side allocates a pty from its own devpts and hands the master over
//! (to a `--console-socket`, as runc does, or to the runtime, which then relays it).

use crate::error::{Error, Result, SysContext};
use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, connect, sendmsg, socket,
};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// Opens a pty from the container's devpts: `/dev/pts/ptmx` is opened without following a
/// symlink and checked to be the ptmx of a devpts instance (magic, inode 2, device 5:2) before
/// it is reopened for use; the slave is the master's peer (`TIOCGPTPEER`), never a path the
/// container could redirect (the CVE-2025-52565 class).
pub fn open_pty(size: Option<WinSize>, owner: u32) -> Result<Pty> {
    const DEVPTS_SUPER_MAGIC: u64 = 0x1cd1;
    let handle = crate::sys::openat2(
        libc::AT_FDCWD,
        std::path::Path::new("/dev/pts/ptmx"),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        0x02 | 0x04, // RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS
    )
    .ctx(|| "process.terminal: opening /dev/pts/ptmx (a devpts mount is needed at /dev/pts)".into())?;
    let st = nix::sys::stat::fstat(&handle).ctx(|| "process.terminal: stat /dev/pts/ptmx".into())?;
    let ok = crate::sys::fs_magic(&handle) == Ok(DEVPTS_SUPER_MAGIC);
    if !ok
        || st.st_ino != 2
        || st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || st.st_rdev != nix::sys::stat::makedev(5, 2)
    {
        return Err(Error::Invalid("process.terminal: /dev/pts/ptmx is not the ptmx of a devpts file system".into()));
    }
    let master: OwnedFd = crate::procfs::ProcFs::open()?.reopen(&handle, libc::O_RDWR | libc::O_NOCTTY)?.into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(Error::sys("process.terminal: unlocking the pty", nix::errno::Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor of the peer or -1.
    let peer =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if peer < 0 {
        return Err(Error::sys("process.terminal: TIOCGPTPEER", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(peer) };
    if let Some(ws) = size {
        set_winsize(&master, ws)?;
    }
    // The user the container runs as must own its terminal.
    let _ = nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(owner)), None);
    Ok(Pty { master, slave })
}

/// Binds the terminal `slave` onto `/dev/console` of the container (after `pivot_root`):
/// `/dev/console` is opened as a mount point only ([`console_mount_point`]), and the bind is
/// made from descriptor to descriptor (`open_tree` + `move_mount`), so no path decides what is
/// mounted where.
pub fn bind_console(slave: &OwnedFd) -> Result<()> {
    let dev = crate::sys::openat2(
        libc::AT_FDCWD,
        std::path::Path::new("/dev"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0x02 | 0x04, // RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS
    )
    .ctx(|| "/dev/console: opening /dev".into())?;
    let console = console_mount_point(&dev, "console")?;
    let tree = crate::sys::open_tree_fd(slave, 0x1 | libc::O_CLOEXEC as u32)
        .ctx(|| "/dev/console: cloning the terminal".into())?;
    crate::sys::move_mount(&tree, &console).ctx(|| "/dev/console: binding the terminal onto it".into())
}

/// The file `name` in `dev` to bind the terminal onto, never opened for I/O: an existing one is
/// opened `O_PATH` (an image's `/dev/console` can be a device node, and opening that for real
/// would reach its driver before the container's device rules apply: the host's console, or a
/// serial line that blocks the open); a missing one is created empty, `O_EXCL` so that nothing
/// put there meanwhile is opened instead. A symlink is refused either way.
fn console_mount_point(dev: &OwnedFd, name: &str) -> Result<OwnedFd> {
    let existing = || -> Result<Option<OwnedFd>> {
        match nix::fcntl::openat(
            dev,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            // O_PATH | O_NOFOLLOW opens a symlink itself rather than failing.
            Ok(fd) => match nix::sys::stat::fstat(&fd) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    Err(Error::Invalid("/dev/console: it is a symlink, which it must not be".into()))
                }
                Ok(_) => Ok(Some(fd)),
                Err(e) => Err(Error::sys("/dev/console: stat", e)),
            },
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::sys("/dev/console: opening it", e)),
        }
    };
    if let Some(fd) = existing()? {
        return Ok(fd);
    }
    match nix::fcntl::openat(
        dev,
        name,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    ) {
        Ok(fd) => Ok(fd),
        // Made by someone else since: that one is opened as any existing one.
        Err(nix::errno::Errno::EEXIST) => {
            existing()?.ok_or_else(|| Error::Invalid("/dev/console: it came and went while being created".into()))
        }
        Err(e) => Err(Error::sys("/dev/console: creating it", e)),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(p: &Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    fn is_o_path(fd: &OwnedFd) -> bool {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap() & libc::O_PATH != 0
    }

    #[test]
    fn a_missing_console_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let fd = console_mount_point(&dir_fd(dir.path()), "console").unwrap();
        let st = nix::sys::stat::fstat(&fd).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(st.st_size, 0);
    }

    #[test]
    fn an_existing_console_is_not_opened_for_io() {
        // A FIFO stands for a device whose open blocks (a serial line): opening it for reading
        // waits for a writer, opening it O_PATH does not.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let dev = dir_fd(dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = std::thread::spawn(move || tx.send(console_mount_point(&dev, "console").map(|fd| is_o_path(&fd))));
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        if got.is_err() {
            // Let the blocked open through, so that the test ends rather than hangs.
            let _ = std::fs::OpenOptions::new().write(true).open(&path);
        }
        let _ = opener.join();
        assert!(got.expect("the existing console was opened for reading and blocked").unwrap(), "not O_PATH");
    }

    #[test]
    fn a_symlinked_console_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/tty", dir.path().join("console")).unwrap();
        let err = console_mount_point(&dir_fd(dir.path()), "console").unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        // Dangling: O_EXCL does not create through it either.
        std::fs::remove_file(dir.path().join("console")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("console")).unwrap();
        assert!(console_mount_point(&dir_fd(dir.path()), "console").is_err());
        assert!(!dir.path().join("target").exists());
    }
}
