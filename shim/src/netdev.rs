//! `linux.netDevices`: host network interfaces moved into the container's network namespace
//! (renamed when asked), with their permanent global addresses and their link state, as runc
//! does. The runtime does it over rtnetlink once the container's network namespace exists and
//! before its program starts; a device goes back to the host only as the kernel decides when
//! the namespace ends (physical devices return, virtual ones are destroyed).

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, LinuxNetDevice, Spec};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_PERMANENT: u32 = 0x80;
const RT_SCOPE_UNIVERSE: u8 = 0;
const IFF_UP: u32 = 0x1;

/// Checks `linux.netDevices`: a network namespace of the container's own to move them into,
/// names the kernel accepts, a runtime with the privilege. Returns the field and the reason.
pub fn check(spec: &Spec) -> std::result::Result<(), (String, String)> {
    let Some(linux) = spec.linux() else { return Ok(()) };
    let Some(devices) = linux.net_devices().as_ref().filter(|d| !d.is_empty()) else { return Ok(()) };
    let own_netns = linux.namespaces().iter().flatten().any(|n| n.typ() == LinuxNamespaceType::Network);
    if !own_netns {
        return Err(("linux.netDevices".into(), "needs a network namespace of the container's own".into()));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(("linux.netDevices".into(), "moving host interfaces needs a runtime running as root".into()));
    }
    for (host, dev) in devices {
        let field = format!("linux.netDevices[{host:?}]");
        valid_name(host).map_err(|m| (field.clone(), m))?;
        if let Some(n) = dev.name() {
            valid_name(n).map_err(|m| (format!("{field}.name"), m))?;
        }
    }
    Ok(())
}

fn valid_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty()
        || n.len() > 15
        || n == "."
        || n == ".."
        || n.contains(['/', ':'])
        || n.contains(char::is_whitespace)
    {
        return Err(format!("{n:?} is not an interface name (1 to 15 characters, no '/', ':' or space)"));
    }
    Ok(())
}

/// A netlink route socket in the calling thread's network namespace.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A permanent global address of an interface: family, prefix length, address bytes.
#[derive(Debug, Clone)]
struct Address {
    family: u8,
    prefix: u8,
    bytes: Vec<u8>,
}

fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
    let len = 4 + data.len();
    let mut v = Vec::with_capacity(len.next_multiple_of(4));
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(len.next_multiple_of(4), 0);
    v
}

/// `struct ifinfomsg` for interface `index`, with `flags` among the bits of `change`.
fn ifinfo(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    v[0] = libc::AF_UNSPEC as u8;
    v[4..8].copy_from_slice(&index.to_ne_bytes());
    v[8..12].copy_from_slice(&flags.to_ne_bytes());
    v[12..16].copy_from_slice(&change.to_ne_bytes());
    v
}

impl Netlink {
    fn open() -> Result<Netlink> {
        // SAFETY: socket(2) takes integers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE) };
        if fd < 0 {
            return Err(Error::sys("netlink socket", nix::errno::Errno::last()));
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(Netlink { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 0 })
    }

    /// Sends one request and returns the payloads of the answers (for a dump), or an error
    /// carrying the kernel's errno.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> std::result::Result<Vec<(u16, Vec<u8>)>, nix::errno::Errno> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: `msg` is readable for its length.
        if unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(nix::errno::Errno::last());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(nix::errno::Errno::last());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                if mlen < 16 || mlen > rest.len() {
                    return Err(nix::errno::Errno::EBADMSG);
                }
                let payload = &rest[16..mlen];
                match mtype {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = payload.get(..4).map_or(-1, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return if code == 0 { Ok(out) } else { Err(nix::errno::Errno::from_raw(-code)) };
                    }
                    _ => out.push((mtype, payload.to_vec())),
                }
                rest = &rest[mlen.next_multiple_of(4).min(rest.len())..];
            }
            if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                return Ok(out);
            }
        }
    }

    /// The permanent, global addresses of interface `index`.
    fn addresses(&mut self, index: i32) -> Result<Vec<Address>> {
        let body = vec![0u8; 8];
        let answers = self.request(RTM_GETADDR, NLM_F_DUMP, &body).map_err(|e| Error::sys("listing addresses", e))?;
        let mut out = Vec::new();
        for (_, p) in answers {
            if p.len() < 8 || i32::from_ne_bytes([p[4], p[5], p[6], p[7]]) != index {
                continue;
            }
            let (family, prefix, mut flags, scope) = (p[0], p[1], u32::from(p[2]), p[3]);
            let mut local = None;
            let mut address = None;
            let mut attrs = &p[8..];
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                let data = attrs[4..alen].to_vec();
                match akind {
                    IFA_LOCAL => local = Some(data),
                    IFA_ADDRESS => address = Some(data),
                    IFA_FLAGS if data.len() >= 4 => flags = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]),
                    _ => {}
                }
                attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
            }
            if flags & IFA_F_PERMANENT != 0
                && scope == RT_SCOPE_UNIVERSE
                && let Some(bytes) = local.or(address)
            {
                out.push(Address { family, prefix, bytes });
            }
        }
        Ok(out)
    }

    fn set_up(&mut self, index: i32, up: bool) -> std::result::Result<(), nix::errno::Errno> {
        self.request(RTM_NEWLINK, NLM_F_ACK, &ifinfo(index, if up { IFF_UP } else { 0 }, IFF_UP)).map(drop)
    }

    fn move_to(&mut self, index: i32, netns: &OwnedFd, name: &str) -> std::result::Result<(), nix::errno::Errno> {
        let mut body = ifinfo(index, 0, 0);
        body.extend(attr(IFLA_NET_NS_FD, &(netns.as_raw_fd() as u32).to_ne_bytes()));
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        body.extend(attr(IFLA_IFNAME, &cname));
        self.request(RTM_NEWLINK, NLM_F_ACK, &body).map(drop)
    }

    fn add_address(&mut self, index: i32, a: &Address) -> std::result::Result<(), nix::errno::Errno> {
        let mut body = vec![a.family, a.prefix, 0, RT_SCOPE_UNIVERSE];
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend(attr(IFA_LOCAL, &a.bytes));
        body.extend(attr(IFA_ADDRESS, &a.bytes));
        self.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &body).map(drop)
    }
}

fn index_of(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string living across the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i as i32)
}

/// Runs `f` with the calling thread in the network namespace `netns`, then returns it to its
/// own. The runtime is single-threaded when it calls this.
fn in_netns<T>(netns: &OwnedFd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let home: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("opening the runtime's network namespace", e))?
        .into();
    crate::sys::setns(netns, libc::CLONE_NEWNET)
        .map_err(|e| Error::sys("entering the container's network namespace", e))?;
    let r = f();
    crate::sys::setns(&home, libc::CLONE_NEWNET)
        .map_err(|e| Error::sys("returning to the runtime's network namespace", e))?;
    r
}

/// Moves each `linux.netDevices` interface into `netns` under its new name, with its
/// permanent global addresses, and brings it up there.
pub fn move_devices(devices: &HashMap<String, LinuxNetDevice>, netns: &OwnedFd) -> Result<()> {
    let mut names: Vec<_> = devices.iter().collect();
    names.sort_by_key(|(n, _)| n.as_str());
    let mut host = Netlink::open()?;
    for (name, dev) in names {
        let field = format!("linux.netDevices[{name:?}]");
        let index =
            index_of(name).ok_or_else(|| Error::Invalid(format!("{field}: the host has no interface {name:?}")))?;
        let addresses = host.addresses(index).map_err(|e| Error::Init(format!("{field}: {e}")))?;
        let new_name = dev.name().as_deref().filter(|n| !n.is_empty()).unwrap_or(name);
        // No "down" first: the kernel closes the device itself once it has checked that it can
        // move it, so a move it refuses (an immutable device, a name taken in the container)
        // leaves the interface up on the host, with its IPv6 addresses, which going down
        // would have flushed.
        host.move_to(index, netns, new_name)
            .map_err(|e| Error::sys(format!("{field}: moving it into the container as {new_name:?}"), e))?;
        in_netns(netns, || {
            let mut inside = Netlink::open()?;
            let index = index_of(new_name)
                .ok_or_else(|| Error::Init(format!("{field}: {new_name:?} is not in the container after the move")))?;
            for a in &addresses {
                inside.add_address(index, a).map_err(|e| Error::sys(format!("{field}: restoring an address"), e))?;
            }
            inside.set_up(index, true).map_err(|e| Error::sys(format!("{field}: setting it up"), e))
        })?;
    }
    Ok(())
}
