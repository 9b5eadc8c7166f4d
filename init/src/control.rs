//! The control socket: a SOCK_SEQPACKET unix socket at
//! `/run/cairn/control/control`. One request per connection, one reply.
//! Containers with `control = true` see it at `/run/cairn/control`.
//!
//! Requests: `status`, `poweroff`, `reboot`, `signal NAME SIGNUM`.
//! Replies start with `ok` or `error`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use cairn_runtime::spec::CONTROL_DIR;
use cairn_runtime::sys::{self, SysError, SysResult};

/// Socket path on the host.
pub fn socket_path() -> String {
    format!("{CONTROL_DIR}/control")
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// List containers and their states.
    Status,
    /// Orderly power off.
    PowerOff,
    /// Orderly reboot.
    Reboot,
    /// Send a signal to a container (its namespace init forwards it).
    Signal {
        /// Container name.
        name: String,
        /// Signal numbers, sent in this order.
        signals: Vec<i32>,
    },
}

/// Parse a request line.
pub fn parse(text: &str) -> Result<Request, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["poweroff"] => Ok(Request::PowerOff),
        ["reboot"] => Ok(Request::Reboot),
        ["signal", name, list] => {
            let signals: Vec<i32> =
                list.split(',').filter_map(|s| s.parse().ok()).filter(|s| (1..=64).contains(s)).collect();
            if signals.is_empty() || signals.len() != list.split(',').count() {
                Err(format!("bad signal list {list:?}"))
            } else {
                Ok(Request::Signal { name: (*name).into(), signals })
            }
        }
        _ => Err(format!("unknown request {text:?}")),
    }
}

/// The listening socket.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Create and bind the socket (mode 0600, owner root).
    pub fn bind() -> SysResult<Self> {
        sys::mkdir_all(CONTROL_DIR, 0o700)?;
        let path = socket_path();
        // SAFETY: plain socket(2) call.
        let fd =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
        if fd < 0 {
            return Err(SysError { op: "socket", arg: path, errno: sys::errno() });
        }
        // SAFETY: `fd` is a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = sockaddr(&path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
            return Err(SysError { op: "bind", arg: path, errno: sys::errno() });
        }
        // SAFETY: `fd` is a bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 8) } != 0 {
            return Err(SysError { op: "listen", arg: path, errno: sys::errno() });
        }
        Ok(Self { fd })
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Accept one connection and read its request (waits at most 200 ms for
    /// the request, so a silent client cannot stall PID 1 for long).
    pub fn accept(&self) -> Option<(OwnedFd, String)> {
        // SAFETY: accept4 on our listening socket; null address is allowed.
        let c = unsafe {
            libc::accept4(self.fd.as_raw_fd(), core::ptr::null_mut(), core::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if c < 0 {
            return None;
        }
        // SAFETY: `c` is a fresh descriptor that we own.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: `tv` is a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                c,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                core::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(c, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let text = if n > 0 {
            String::from_utf8_lossy(buf.get(..n as usize).unwrap_or(&[])).into_owned()
        } else {
            String::new()
        };
        Some((conn, text))
    }
}

/// Send a reply on a connection (best effort) and close it.
pub fn reply(conn: OwnedFd, text: &str) {
    // SAFETY: the pointer and length describe `text`.
    unsafe { libc::send(conn.as_raw_fd(), text.as_ptr().cast(), text.len(), libc::MSG_NOSIGNAL) };
}

fn sockaddr(path: &str) -> SysResult<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; zero is a valid starting value.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        return Err(SysError { op: "socket path", arg: path.into(), errno: libc::ENAMETOOLONG });
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(path.bytes()) {
        *dst = src as libc::c_char;
    }
    let _ = std::fs::remove_file(path);
    Ok((addr, core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse("status"), Ok(Request::Status));
        assert_eq!(parse(" poweroff\n"), Ok(Request::PowerOff));
        assert_eq!(parse("signal web 15"), Ok(Request::Signal { name: "web".into(), signals: vec![15] }));
        assert_eq!(parse("signal web 1,2,31"), Ok(Request::Signal { name: "web".into(), signals: vec![1, 2, 31] }));
        assert!(parse("signal web 1,x").is_err());
        assert!(parse("signal web 0").is_err());
        assert!(parse("signal web x").is_err());
        assert!(parse("rm -rf /").is_err());
        assert!(parse("").is_err());
    }
}
