//! Network namespace setup: loopback up in a new namespace, or joining
//! another container's namespace.

use std::os::fd::AsRawFd;

use crate::sys::{self, SysError, SysResult};

/// Bring `lo` up in the current network namespace.
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(SysError { op: "socket", arg: "lo".into(), errno: sys::errno() });
    }
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { core::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq;
    // the union field used is ifru_flags for both.
    let rc = unsafe {
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req);
        }
        libc::close(fd);
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
    // SAFETY: setns on a namespace descriptor we own.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(SysError { op: "setns net", arg: path, errno: sys::errno() });
    }
    Ok(())
}
