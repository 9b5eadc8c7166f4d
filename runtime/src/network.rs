//! Network namespace setup: loopback up in a new namespace, or joining
//! another container's namespace.

use std::os::fd::AsRawFd;

use crate::sys::{self, SysError, SysResult};

/// Bring `lo` up in the current network namespace.
pub fn loopback_up() -> SysResult<()> {
    set_up(&inet_socket("lo")?, "lo")
}

/// A socket to ask interface ioctls of.
fn inet_socket(iface: &str) -> SysResult<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(sys::err("socket", iface))
}

/// An `ifreq` naming `iface` (cut to IFNAMSIZ - 1 bytes).
fn ifreq(iface: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { core::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    req
}

/// Set IFF_UP on `iface`.
fn set_up(fd: &std::os::fd::OwnedFd, iface: &str) -> SysResult<()> {
    let mut req = ifreq(iface);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq;
    // the union field used is ifru_flags for both (nix has no wrapper).
    let rc = unsafe {
        let mut rc = libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req);
        }
        rc
    };
    if rc != 0 {
        return Err(SysError { op: "SIOCSIFFLAGS up", arg: iface.into(), errno: sys::errno() });
    }
    Ok(())
}

/// Join the network namespace of process `pid`.
pub fn join(pid: libc::pid_t) -> SysResult<()> {
    let path = format!("/proc/{pid}/ns/net");
    let fd = sys::open(&path, libc::O_RDONLY)?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(sys::err("setns net", path))
}

/// Enter the network namespace `fd` refers to (one made ahead), and close
/// it.
pub fn enter(fd: std::os::fd::OwnedFd) -> SysResult<()> {
    let raw = fd.as_raw_fd();
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(sys::err("setns net", raw))
}

/// Give `iface` (in the current network namespace) `address/prefix` and
/// bring it up.
pub fn configure(iface: &str, address: [u8; 4], prefix: u8) -> SysResult<()> {
    let fd = inet_socket(iface)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0).to_be_bytes();
    for (op, code, a) in [("SIOCSIFADDR", libc::SIOCSIFADDR, address), ("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, mask)] {
        let mut req = ifreq(iface);
        // SAFETY: sockaddr_in is plain data; zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { core::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes(a);
        // SAFETY: the union's sockaddr member is at least as large as a
        // sockaddr_in; the kernel reads `req` for these requests.
        let rc = unsafe {
            core::ptr::copy_nonoverlapping(
                (&raw const sin).cast::<u8>(),
                (&raw mut req.ifr_ifru.ifru_addr).cast::<u8>(),
                core::mem::size_of::<libc::sockaddr_in>(),
            );
            libc::ioctl(fd.as_raw_fd(), code as _, &mut req)
        };
        if rc != 0 {
            return Err(SysError { op, arg: iface.into(), errno: sys::errno() });
        }
    }
    set_up(&fd, iface)
}

/// The default route through the attachment that has a gateway (a
/// network with egress), if any: rtnetlink in the container's own
/// namespace, with its own CAP_NET_ADMIN (before it is dropped).
pub fn default_route(networks: &[crate::spec::NetAttach]) -> SysResult<()> {
    let Some((iface, gw)) = networks.iter().find_map(|a| Some((a.iface.as_str(), a.gateway?))) else {
        return Ok(());
    };
    let rtnl = crate::netlink::Rtnl::open()?;
    rtnl.call(iface, &crate::netlink::new_default_route(gw, crate::netlink::index(iface)?))
}
