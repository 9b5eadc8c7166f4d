//! The control socket: a SOCK_SEQPACKET unix socket at
//! `/run/cairn/control/control`. One request per connection, one reply.
//! Containers with `control = true` see it at `/run/cairn/control`.
//!
//! Requests: `status`, `poweroff`, `reboot`, `signal NAME SIGNUM[,SIGNUM...]`.
//! Replies start with `ok` or `error`.
//!
//! PID 1 never waits for a client: accepted connections are non-blocking
//! and served from the supervisor's event loop. At most
//! [`MAX_CONNECTIONS`] are open at once (while the table is full the
//! listener is not polled; new clients wait in the kernel's backlog), and
//! one that has not sent its request within [`REQUEST_DEADLINE`] is closed.
//! The caller is identified by `SO_PEERCRED` when it connects: its pid's
//! cgroup (`/proc/PID/cgroup`) names the container (`/cairn/<name>/...`);
//! a process outside every container cgroup is the host.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// Why a request line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// `signal NAME LIST` with a list that is not numbers in 1..=64.
    #[error("bad signal list {0:?}")]
    SignalList(String),
    /// Not a request.
    #[error("unknown request {0:?}")]
    Unknown(String),
}

/// Parse a request line.
pub fn parse(text: &str) -> Result<Request, ParseError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["poweroff"] => Ok(Request::PowerOff),
        ["reboot"] => Ok(Request::Reboot),
        ["signal", name, list] => {
            let signals: Vec<i32> =
                list.split(',').filter_map(|s| s.parse().ok()).filter(|s| (1..=64).contains(s)).collect();
            if signals.is_empty() || signals.len() != list.split(',').count() {
                Err(ParseError::SignalList((*list).into()))
            } else {
                Ok(Request::Signal { name: (*name).into(), signals })
            }
        }
        _ => Err(ParseError::Unknown(text.into())),
    }
}

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a connection may take to send its request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(1);
/// Longest request accepted (a longer one is refused whole, never cut).
pub const REQUEST_MAX: usize = 1024;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process outside every container cgroup.
    Host,
    /// A process of this container.
    Container(String),
    /// Its cgroup could not be read (it is gone, or it is odd): refused.
    Unknown,
}

impl Caller {
    /// For events.
    pub fn name(&self) -> &str {
        match self {
            Caller::Host => "host",
            Caller::Container(n) => n,
            Caller::Unknown => "unknown",
        }
    }
}

/// The caller named by `/proc/PID/cgroup` as PID 1 reads it (cgroup v2:
/// the `0::<path>` line, the path from the root of the hierarchy).
pub fn caller_from_cgroup(text: &str) -> Caller {
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Caller::Unknown;
    };
    let path = path.trim_end().trim_end_matches(" (deleted)");
    match path.strip_prefix("/cairn/") {
        Some(rest) => match rest.split('/').next() {
            Some(name) if !name.is_empty() => Caller::Container(name.to_owned()),
            _ => Caller::Unknown,
        },
        None if path == "/cairn" => Caller::Unknown,
        None if path.starts_with('/') => Caller::Host,
        None => Caller::Unknown,
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

    /// Accept one waiting connection (non-blocking) and identify its caller.
    pub fn accept(&self, now: Instant) -> Option<Conn> {
        // SAFETY: accept4 on our listening socket; null address is allowed.
        let c = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if c < 0 {
            return None;
        }
        // SAFETY: `c` is a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(c) };
        let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
        let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` is a valid ucred and `len` its size.
        let ok = unsafe {
            libc::getsockopt(c, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
        } == 0;
        let caller = if ok && cred.pid > 0 {
            std::fs::read_to_string(format!("/proc/{}/cgroup", cred.pid))
                .map_or(Caller::Unknown, |t| caller_from_cgroup(&t))
        } else {
            Caller::Unknown
        };
        Some(Conn { fd, deadline: now + REQUEST_DEADLINE, pid: cred.pid, uid: cred.uid, caller })
    }
}

/// An accepted connection waiting for its request.
pub struct Conn {
    fd: OwnedFd,
    /// When it is closed if no request has come.
    pub deadline: Instant,
    /// The peer's pid (in PID 1's namespace) when it connected.
    pub pid: libc::pid_t,
    /// The peer's uid.
    pub uid: libc::uid_t,
    /// Who that is.
    pub caller: Caller,
}

/// What a readable connection had.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Its request.
    Request(String),
    /// A request longer than [`REQUEST_MAX`] bytes (its length).
    TooLong(usize),
    /// Nothing yet.
    Nothing,
    /// It hung up (or failed) without a request.
    Closed,
}

impl Conn {
    /// The descriptor to poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Read the request if it is there (never waits).
    pub fn receive(&self) -> Received {
        let mut buf = [0u8; REQUEST_MAX];
        // MSG_TRUNC: the message's whole length, so a cut one is noticed.
        let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n > REQUEST_MAX as isize {
            return Received::TooLong(n as usize);
        }
        if n > 0 {
            return Received::Request(String::from_utf8_lossy(buf.get(..n as usize).unwrap_or(&[])).into_owned());
        }
        let errno = sys::errno();
        if n < 0 && (errno == libc::EAGAIN || errno == libc::EINTR) {
            Received::Nothing
        } else {
            Received::Closed
        }
    }

    /// Send the reply (best effort, never waits) and close.
    pub fn reply(self, text: &str) {
        // SAFETY: the pointer and length describe `text`.
        unsafe {
            libc::send(self.fd.as_raw_fd(), text.as_ptr().cast(), text.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        };
    }
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
        assert_eq!(parse("signal web 1,x"), Err(ParseError::SignalList("1,x".into())));
        assert_eq!(parse("signal web 0"), Err(ParseError::SignalList("0".into())));
        assert_eq!(parse("signal web x"), Err(ParseError::SignalList("x".into())));
        assert_eq!(parse("rm -rf /"), Err(ParseError::Unknown("rm -rf /".into())));
        assert_eq!(parse(""), Err(ParseError::Unknown("".into())));
        assert_eq!(parse("signal web 1,2 extra"), Err(ParseError::Unknown("signal web 1,2 extra".into())));
        assert_eq!(parse("signal web 65"), Err(ParseError::SignalList("65".into())));
        assert_eq!(parse("signal web 1,,2"), Err(ParseError::SignalList("1,,2".into())));
    }

    fn conn_pair() -> Option<(Conn, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors.
        let rc =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let [a, b] = fds;
        // SAFETY: both are fresh descriptors we own.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) };
        let conn = Conn { fd: a, deadline: Instant::now(), pid: 0, uid: 0, caller: Caller::Host };
        Some((conn, b))
    }

    fn send(fd: &OwnedFd, msg: &[u8]) {
        // SAFETY: the pointer and length describe `msg`.
        let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        assert_eq!(n, msg.len() as isize);
    }

    #[test]
    fn requests_are_read_without_waiting_and_long_ones_are_not_cut() {
        let Some((conn, peer)) = conn_pair() else { return };
        assert_eq!(conn.receive(), Received::Nothing);
        send(&peer, b"status");
        assert_eq!(conn.receive(), Received::Request("status".into()));
        let long = vec![b'1'; REQUEST_MAX + 1];
        send(&peer, &long);
        assert_eq!(conn.receive(), Received::TooLong(REQUEST_MAX + 1));
        let mut fits = b"signal web ".to_vec();
        fits.resize(REQUEST_MAX, b'1');
        send(&peer, &fits);
        assert!(matches!(conn.receive(), Received::Request(t) if t.len() == REQUEST_MAX));
        drop(peer);
        assert_eq!(conn.receive(), Received::Closed);
    }

    #[test]
    fn a_hundred_signals_fit_in_a_request() {
        let list = vec!["28"; 100].join(",");
        let text = format!("signal ticker {list}");
        assert!(text.len() <= REQUEST_MAX);
        assert!(matches!(parse(&text), Ok(Request::Signal { signals, .. }) if signals.len() == 100));
    }

    #[test]
    fn callers_come_from_the_cgroup_path() {
        assert_eq!(caller_from_cgroup("0::/cairn/web\n"), Caller::Container("web".into()));
        assert_eq!(caller_from_cgroup("0::/cairn/web/inner/deeper\n"), Caller::Container("web".into()));
        assert_eq!(caller_from_cgroup("0::/cairn/web (deleted)\n"), Caller::Container("web".into()));
        assert_eq!(caller_from_cgroup("0::/\n"), Caller::Host);
        assert_eq!(caller_from_cgroup("0::/init.scope\n"), Caller::Host);
        // The parent itself, a hybrid v1 file, garbage: nobody we know.
        assert_eq!(caller_from_cgroup("0::/cairn\n"), Caller::Unknown);
        assert_eq!(caller_from_cgroup("0::/cairn/\n"), Caller::Unknown);
        assert_eq!(caller_from_cgroup("12:pids:/\n"), Caller::Unknown);
        assert_eq!(caller_from_cgroup(""), Caller::Unknown);
        assert_eq!(caller_from_cgroup("0::relative\n"), Caller::Unknown);
        // A v1 line that mentions /cairn does not count; only the v2 line does.
        assert_eq!(caller_from_cgroup("1:name=x:/cairn/evil\n0::/\n"), Caller::Host);
    }
}
