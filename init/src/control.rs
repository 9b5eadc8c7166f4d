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

use nix::errno::Errno;
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

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
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd =
            sock::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).map_err(sys::err("socket", &path))?;
        let addr = sockaddr(&path)?;
        sock::bind(fd.as_raw_fd(), &addr).map_err(sys::err("bind", &path))?;
        let backlog = sock::Backlog::new(8).map_err(sys::err("listen", &path))?;
        sock::listen(&fd, backlog).map_err(sys::err("listen", &path))?;
        Ok(Self { fd })
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Accept one waiting connection (non-blocking) and identify its caller.
    pub fn accept(&self, now: Instant) -> Option<Conn> {
        let c = sock::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK).ok()?;
        // SAFETY: `c` is a fresh descriptor that we own (nix's accept4
        // returns it raw).
        let fd = unsafe { OwnedFd::from_raw_fd(c) };
        let (pid, uid) = match sock::getsockopt(&fd, sock::sockopt::PeerCredentials) {
            Ok(cred) => (cred.pid(), cred.uid()),
            Err(_) => (0, u32::MAX),
        };
        let caller = if pid > 0 {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_or(Caller::Unknown, |t| caller_from_cgroup(&t))
        } else {
            Caller::Unknown
        };
        Some(Conn { fd, deadline: now + REQUEST_DEADLINE, pid, uid, caller })
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
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        match sock::recv(self.fd.as_raw_fd(), &mut buf, flags) {
            Ok(n) if n > REQUEST_MAX => Received::TooLong(n),
            Ok(n) if n > 0 => Received::Request(String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned()),
            Err(Errno::EAGAIN | Errno::EINTR) => Received::Nothing,
            _ => Received::Closed,
        }
    }

    /// Send the reply (best effort, never waits) and close.
    pub fn reply(self, text: &str) {
        let _ = sock::send(self.fd.as_raw_fd(), text.as_bytes(), MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
    }
}

/// The socket's address; a path that does not fit with its NUL is refused
/// (ENAMETOOLONG). A socket left from an earlier boot is removed.
fn sockaddr(path: &str) -> SysResult<UnixAddr> {
    let too_long = SysError { op: "socket path", arg: path.into(), errno: libc::ENAMETOOLONG };
    // sun_path's size, NUL included.
    if path.len() >= 108 {
        return Err(too_long);
    }
    let addr = UnixAddr::new(path).map_err(|_| too_long)?;
    let _ = std::fs::remove_file(path);
    Ok(addr)
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
        let (a, b) = sock::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let conn = Conn { fd: a, deadline: Instant::now(), pid: 0, uid: 0, caller: Caller::Host };
        Some((conn, b))
    }

    fn send(fd: &OwnedFd, msg: &[u8]) {
        assert_eq!(sock::send(fd.as_raw_fd(), msg, MsgFlags::empty()), Ok(msg.len()));
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
