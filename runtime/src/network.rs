//! Network namespace setup: loopback up in a new namespace, or joining
//! another container's namespace.

use std::os::fd::AsRawFd;

use crate::sys::{self, SysError, SysResult};

/// Bring `lo` up in the current network namespace.
pub fn loopback_up() -> SysResult<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(sys::err("socket", "lo"))?;
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { core::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq;
    // the union field used is ifru_flags for both (nix has no wrapper). `fd`
    // is closed when dropped.
    let rc = unsafe {
        let mut rc = libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req);
        }
        rc
    };
    if rc != 0 {
        return Err(SysError { op: "SIOCSIFFLAGS up", arg: "lo".into(), errno: sys::errno() });
    }
    Ok(())
}

/// Join the network namespace of process `pid`.
pub fn join(pid: libc::pid_t) -> SysResult<()> {
    let path = format!("/proc/{pid}/ns/net");
    let fd = sys::open(&path, libc::O_RDONLY)?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(sys::err("setns net", path))
}
