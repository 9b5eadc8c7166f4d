//! The control socket: a SOCK_SEQPACKET unix socket at
//! `/run/cairn/control/control`, protocol `cairn/1` (docs/control.md).
//! Containers granted any permission see it at `/run/cairn/control`.
//!
//! One request per connection: `cairn/1 VERB ARGS...`. The reply is one
//! message `cairn/1 ok[ BODY]` or `cairn/1 error REASON` (a body of
//! several lines follows the first line after `\n`); a follow request
//! (`events`, `logs --follow`) gets `cairn/1 ok` and then one message per
//! line until either side hangs up.
//!
//! PID 1 never waits for a client: accepted connections are non-blocking
//! and served from the supervisor's event loop. At most
//! [`MAX_CONNECTIONS`] are open at once (while the table is full the
//! listener is not polled; new clients wait in the kernel's backlog), and
//! one that has not sent its request within [`REQUEST_DEADLINE`] is closed.
//! A follower whose unsent lines pass [`FOLLOW_QUEUE_MAX`] bytes is
//! dropped. The caller is identified by `SO_PEERCRED` when it connects: its
//! pid's cgroup (`/proc/PID/cgroup`) names the container (`/cairn/<name>/...`);
//! a process outside every container cgroup is the host.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as sock, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

pub use cairn_format::manifest::Permission;
use cairn_runtime::spec::CONTROL_DIR;
use cairn_runtime::sys::{self, SysError, SysResult};

/// The protocol word every request and reply starts with.
pub const VERSION: &str = "cairn/1";

/// Socket path on the host.
pub fn socket_path() -> String {
    format!("{CONTROL_DIR}/control")
}

/// ms since boot (CLOCK_BOOTTIME, the clock of the events' `t=`).
pub fn now_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000
    })
}

/// Bytes of recent events kept for `events --follow` streams.
pub const EVENTS_SIZE: usize = 16 * 1024;

/// The recent events (PID 1's threads that load modules at boot emit
/// events too; PID 1 is single-threaded otherwise).
static EVENTS: std::sync::Mutex<Option<crate::ring::LogRing>> = std::sync::Mutex::new(None);

/// Keep an event line (without its newline) for the event streams.
pub fn record_event(line: &str) {
    let mut guard = EVENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    guard.get_or_insert_with(|| crate::ring::LogRing::new(EVENTS_SIZE)).push(now_ms(), line.as_bytes());
}

/// Look at the recent events (never emit an event inside `f`).
pub fn with_events<T>(f: impl FnOnce(&crate::ring::LogRing) -> T) -> T {
    let mut guard = EVENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(|| crate::ring::LogRing::new(EVENTS_SIZE)))
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// List containers and their states (one line).
    Status,
    /// One line per container: state, pid, uptime, restarts, last exit and
    /// its cgroup's counters.
    Ps,
    /// Start a stopped container.
    Start(String),
    /// Stop a container (its stop signal, then the kill); it stays stopped.
    Stop(String),
    /// Stop it and start it again.
    Restart(String),
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
    /// A container's log lines.
    Logs {
        /// Container name.
        name: String,
        /// Only lines read at or after this many ms since boot.
        since_ms: u64,
        /// Keep the connection and send new lines as they come.
        follow: bool,
    },
    /// Every event from now on, one message each.
    Events,
    /// Run a command in a running container (`exec NAME [--tty] [--env
    /// KEY=VALUE]... [--user UID[:GID]] -- ARG...`, each argument and
    /// environment entry percent-encoded; see [`crate::exec`]).
    Exec {
        /// Container name.
        name: String,
        /// The command and its arguments, decoded.
        argv: Vec<Vec<u8>>,
        /// `--tty`, `--env`, `--user`.
        opts: crate::exec::Options,
    },
    /// Install the bundle the request carries (its descriptor, passed with
    /// `SCM_RIGHTS`): the installer is forked and reports on the
    /// connection itself.
    Update,
    /// The caller's own health check succeeds (needs no permission, only
    /// a health check; see [`crate::health`]).
    Heartbeat,
    /// Freeze a container's cgroup.
    Pause(String),
    /// Thaw it.
    Resume(String),
    /// Delete the data of every persistent volume on the data partition
    /// that the manifest does not name (a forked helper does it and
    /// answers on the connection; see [`crate::volumes::prunable`]).
    VolumePrune,
    /// Set the name servers of the containers on networks with egress
    /// (`dns [--search DOMAIN]... [ADDR]...`; see [`crate::dns`]).
    Dns(crate::dns::Servers),
}

impl Request {
    /// The permission a container needs for it.
    pub fn needs(&self) -> Permission {
        match self {
            Request::Status | Request::Ps | Request::Events => Permission::Status,
            Request::Logs { .. } => Permission::Logs,
            Request::Start(_) | Request::Stop(_) | Request::Restart(_) | Request::Signal { .. } => {
                Permission::Lifecycle
            }
            Request::PowerOff | Request::Reboot => Permission::Power,
            Request::Exec { .. } => Permission::Exec,
            Request::Update => Permission::Update,
            Request::Pause(_) | Request::Resume(_) => Permission::Lifecycle,
            Request::VolumePrune => Permission::Volumes,
            Request::Dns(_) => Permission::Network,
            // Never looked up: `Machine::answer` serves a heartbeat before
            // permissions (it needs a health check, not a permission).
            Request::Heartbeat => Permission::Status,
        }
    }

    /// Its verb, for events.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Ps => "ps",
            Request::Start(_) => "start",
            Request::Stop(_) => "stop",
            Request::Restart(_) => "restart",
            Request::PowerOff => "poweroff",
            Request::Reboot => "reboot",
            Request::Signal { .. } => "signal",
            Request::Logs { .. } => "logs",
            Request::Events => "events",
            Request::Exec { .. } => "exec",
            Request::Update => "update",
            Request::Heartbeat => "heartbeat",
            Request::Pause(_) => "pause",
            Request::Resume(_) => "resume",
            Request::VolumePrune => "volume-prune",
            Request::Dns(_) => "dns",
        }
    }
}

/// Why a request line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// It does not start with [`VERSION`].
    #[error("unsupported protocol (this is {VERSION})")]
    Version,
    /// `signal NAME LIST` with a list that is not numbers in 1..=64.
    #[error("bad signal list {0:?}")]
    SignalList(String),
    /// `--since` not seconds since boot (`12` or `12.345`).
    #[error("bad time {0:?} (seconds since boot, e.g. 12.345)")]
    Time(String),
    /// An `exec` argument that is not percent-encoded bytes (or holds a NUL).
    #[error("bad exec argument (percent-encoded bytes, no NUL)")]
    Argument,
    /// `exec --user` not `UID` or `UID:GID` (numbers).
    #[error("bad user {0:?} (UID or UID:GID, numbers)")]
    User(String),
    /// `dns` with arguments that are not servers and search domains.
    #[error("{0}")]
    Dns(#[from] crate::dns::DnsError),
    /// Not a request.
    #[error("unknown request {0:?}")]
    Unknown(String),
}

/// Seconds since boot as the events print them (`12`, `12.3`, `12.345`), in ms.
pub fn parse_time(text: &str) -> Option<u64> {
    let (s, frac) = text.split_once('.').unwrap_or((text, ""));
    if s.is_empty() || frac.len() > 3 || !s.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0, |ms, b| ms * 10 + u64::from(b - b'0'));
    s.parse::<u64>().ok()?.checked_mul(1000)?.checked_add(ms)
}

/// Parse a request line (`cairn/1 VERB ARGS...`).
pub fn parse(text: &str) -> Result<Request, ParseError> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.first() != Some(&VERSION) {
        return Err(ParseError::Version);
    }
    words.remove(0);
    let rest = words.join(" ");
    let rest_line = || rest.clone();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["ps"] => Ok(Request::Ps),
        ["start", name] => Ok(Request::Start((*name).into())),
        ["stop", name] => Ok(Request::Stop((*name).into())),
        ["restart", name] => Ok(Request::Restart((*name).into())),
        ["poweroff"] => Ok(Request::PowerOff),
        ["reboot"] => Ok(Request::Reboot),
        ["events"] | ["events", "--follow"] => Ok(Request::Events),
        ["exec", name, rest @ ..] => {
            let split = rest.iter().position(|w| *w == "--").ok_or_else(|| ParseError::Unknown(rest_line()))?;
            let (opts, args) = (rest.get(..split).unwrap_or_default(), rest.get(split + 1..).unwrap_or_default());
            if args.is_empty() {
                return Err(ParseError::Unknown(rest_line()));
            }
            let decode = |a: &&str| crate::exec::decode_arg(a);
            let mut o = crate::exec::Options::default();
            let mut k = 0;
            while let Some(w) = opts.get(k) {
                let value = opts.get(k + 1);
                k += match (*w, value) {
                    ("--tty", _) if !o.tty => {
                        o.tty = true;
                        1
                    }
                    ("--env", Some(e)) => {
                        o.env.push(decode(e).ok_or(ParseError::Argument)?);
                        2
                    }
                    ("--user", Some(u)) if o.user.is_none() => {
                        o.user = Some(crate::exec::parse_user(u).ok_or_else(|| ParseError::User((*u).into()))?);
                        2
                    }
                    _ => return Err(ParseError::Unknown(rest_line())),
                };
            }
            let argv = args.iter().map(decode).collect::<Option<_>>().ok_or(ParseError::Argument)?;
            Ok(Request::Exec { name: (*name).into(), argv, opts: o })
        }
        ["update"] => Ok(Request::Update),
        ["heartbeat"] => Ok(Request::Heartbeat),
        ["pause", name] => Ok(Request::Pause((*name).into())),
        ["resume", name] => Ok(Request::Resume((*name).into())),
        ["volume", "prune"] => Ok(Request::VolumePrune),
        ["dns", args @ ..] => Ok(Request::Dns(crate::dns::Servers::parse(args)?)),
        ["logs", name, opts @ ..] => {
            let (mut since_ms, mut follow) = (0, false);
            let mut it = opts.iter();
            while let Some(o) = it.next() {
                match *o {
                    "--follow" | "-f" => follow = true,
                    "--since" => {
                        let t = it.next().copied().unwrap_or_default();
                        since_ms = parse_time(t).ok_or_else(|| ParseError::Time(t.into()))?;
                    }
                    _ => return Err(ParseError::Unknown(rest)),
                }
            }
            Ok(Request::Logs { name: (*name).into(), since_ms, follow })
        }
        ["signal", name, list] => {
            let signals: Vec<i32> =
                list.split(',').filter_map(|s| s.parse().ok()).filter(|s| (1..=64).contains(s)).collect();
            if signals.is_empty() || signals.len() != list.split(',').count() {
                Err(ParseError::SignalList((*list).into()))
            } else {
                Ok(Request::Signal { name: (*name).into(), signals })
            }
        }
        _ => Err(ParseError::Unknown(rest)),
    }
}

/// A set of permissions (bit [`Permission::bit`] each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(pub u8);

impl Permissions {
    /// Everything (the host).
    pub const ALL: Permissions = Permissions(u8::MAX);

    /// The set of a manifest list.
    pub fn of(list: &[Permission]) -> Self {
        Self(list.iter().fold(0, |m, p| m | p.bit()))
    }

    /// Whether it holds `p`.
    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
}

/// What a container's cgroup says, for `ps` (absent files: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// memory.current, bytes.
    pub memory: Option<u64>,
    /// memory.peak, bytes.
    pub memory_peak: Option<u64>,
    /// cpu.stat usage_usec.
    pub cpu_us: Option<u64>,
    /// pids.current.
    pub pids: Option<u64>,
    /// memory.events oom_kill.
    pub oom_kills: Option<u64>,
}

impl CgroupStats {
    /// From the files' contents (`read(file)`).
    pub fn read(mut read: impl FnMut(&str) -> Option<String>) -> Self {
        let num = |t: Option<String>| t.and_then(|t| t.trim().parse().ok());
        Self {
            memory: num(read("memory.current")),
            memory_peak: num(read("memory.peak")),
            cpu_us: read("cpu.stat").and_then(|t| cairn_runtime::cgroup::flat_key(&t, "usage_usec")),
            pids: num(read("pids.current")),
            oom_kills: read("memory.events").and_then(|t| cairn_runtime::cgroup::flat_key(&t, "oom_kill")),
        }
    }
}

/// PID 1's own `ps` row: its resident memory now and at its peak
/// (`VmRSS`, `VmHWM` of `/proc/self/status`, in bytes).
pub fn init_stats(status: &str) -> CgroupStats {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    CgroupStats {
        memory: kib("VmRSS").map(|k| k * 1024),
        memory_peak: kib("VmHWM").map(|k| k * 1024),
        ..CgroupStats::default()
    }
}

/// One `ps` line as the core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsRow {
    /// Container name.
    pub name: String,
    /// State name.
    pub state: &'static str,
    /// Its namespace init (host pid), while it has one.
    pub pid: Option<i32>,
    /// ms since the entrypoint was executed, while running.
    pub uptime_ms: Option<u64>,
    /// Restarts since boot.
    pub restarts: u32,
    /// How the last run ended: `code=N` or `signal=N`.
    pub last_exit: Option<String>,
    /// Its health check's state (`None`: it has no health check).
    pub health: Option<&'static str>,
}

/// One `ps` line: `name=.. state=.. pid=.. ...`; `-` for an unknown value.
pub fn format_ps(row: &PsRow, st: &CgroupStats) -> String {
    let mut out = String::with_capacity(160);
    let mut kv = |k: &str, v: Option<String>| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v.as_deref().unwrap_or("-"));
    };
    let n = |v: Option<u64>| v.map(|v| v.to_string());
    kv("name", Some(row.name.clone()));
    kv("state", Some(row.state.into()));
    kv("pid", row.pid.map(|p| p.to_string()));
    kv("uptime_ms", n(row.uptime_ms));
    kv("restarts", Some(row.restarts.to_string()));
    kv("last_exit", row.last_exit.clone());
    kv("memory", n(st.memory));
    kv("memory_peak", n(st.memory_peak));
    kv("cpu_us", n(st.cpu_us));
    kv("pids", n(st.pids));
    kv("oom_kills", n(st.oom_kills));
    kv("health", row.health.map(str::to_owned));
    out
}

/// One log line in a reply: `T TEXT` with T seconds since boot (`12.345`),
/// TEXT as the container wrote it (invalid UTF-8 replaced).
pub fn format_log_line(t_ms: u64, text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&(t_ms / 1000).to_string());
    out.push('.');
    let ms = t_ms % 1000;
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push(' ');
    out.push_str(&text);
    out
}

/// A whole reply message from a body (`ok ...` or `error ...`).
pub fn framed_reply(body: &str) -> String {
    let mut out = String::with_capacity(VERSION.len() + 1 + body.len());
    out.push_str(VERSION);
    out.push(' ');
    out.push_str(body);
    out
}

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Most of them following a stream (the rest stay for requests).
pub const MAX_FOLLOWERS: usize = 4;
/// A streaming connection that took nothing for this long while lines
/// wait for it is dropped (its slot is worth more than its stream).
pub const FOLLOW_STALL: Duration = Duration::from_secs(10);

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
    /// Create and bind the socket. Mode 0666 in a 0755 directory: any uid
    /// of a container that has the directory bound in may connect (under a
    /// user namespace too); what it may ask is decided per request from
    /// its cgroup, never from its uid.
    /// With `offer_ctl`, `cairn-ctl` is put beside it (see [`offer_client`]).
    pub fn bind(offer_ctl: bool) -> SysResult<Self> {
        sys::mkdir_all(CONTROL_DIR, 0o755)?;
        std::fs::set_permissions(CONTROL_DIR, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| SysError { op: "chmod", arg: CONTROL_DIR.into(), errno: e.raw_os_error().unwrap_or(0) })?;
        let path = socket_path();
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd =
            sock::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).map_err(sys::err("socket", &path))?;
        let addr = sockaddr(&path)?;
        sock::bind(fd.as_raw_fd(), &addr).map_err(sys::err("bind", &path))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).map_err(|e| SysError {
            op: "chmod",
            arg: path.clone(),
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        if offer_ctl {
            offer_client();
        }
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
        Some(Conn {
            fd,
            deadline: now + REQUEST_DEADLINE,
            pid,
            uid,
            caller,
            stream: None,
            kmsg: None,
            pending: None,
            fds: Vec::new(),
        })
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
    /// What it follows, once its request made it a stream.
    pub stream: Option<Stream>,
    /// Its own reader of the kernel's log (`logs @kernel`).
    pub kmsg: Option<OwnedFd>,
    /// A kernel log line read but not yet taken by the client.
    pub pending: Option<String>,
    /// Descriptors the request carried (`SCM_RIGHTS`, at most
    /// [`REQUEST_FDS`]): `update`'s bundle.
    pub fds: Vec<OwnedFd>,
}

/// Most descriptors a request may carry; a request with more is refused
/// (the kernel closes those that did not fit).
pub const REQUEST_FDS: usize = 3;

/// What a streaming connection follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A unit's log.
    Log(usize),
    /// PID 1's events.
    Events,
    /// The kernel's log (`/dev/kmsg`, the connection's own descriptor;
    /// `next` is the `--since` time in ms).
    Kernel,
}

/// The name `logs` takes for the kernel's log (not a container name:
/// those have no `@`).
pub const KERNEL: &str = "@kernel";

/// One `/dev/kmsg` record as a log line: its time (ms since boot, from the
/// record's CLOCK_MONOTONIC µs) and its text (the first line; the
/// continuation lines of key=value pairs are left out).
pub fn parse_kmsg(record: &[u8]) -> Option<(u64, String)> {
    let text = String::from_utf8_lossy(record);
    let (header, msg) = text.split_once(';')?;
    let us: u64 = header.split(',').nth(2)?.parse().ok()?;
    Some((us / 1000, msg.split('\n').next().unwrap_or("").to_owned()))
}

/// A connection streaming lines out of a ring, by sequence number: PID 1
/// keeps nothing for it but this cursor, so a client that does not read
/// costs no memory; lines evicted before it took them are counted as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The ring.
    pub source: Source,
    /// The next line to send.
    pub next: u64,
    /// Keep going at the end (else `cairn/1 end` and close).
    pub follow: bool,
    /// When it last took a message (or started).
    pub progress: Instant,
}

/// What sending to a stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Taken.
    Taken,
    /// Its socket is full: try again when it is writable.
    Full,
    /// It is gone (or broken).
    Gone,
}

/// What a readable connection had.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Its request.
    Request(String),
    /// A request longer than [`REQUEST_MAX`] bytes (its length).
    TooLong(usize),
    /// A request carrying more than [`REQUEST_FDS`] descriptors.
    TooManyFds,
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

    /// Read the request if it is there (never waits). Descriptors it
    /// carries are kept in [`Conn::fds`] (close-on-exec).
    pub fn receive(&mut self) -> Received {
        let mut buf = [0u8; REQUEST_MAX];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; REQUEST_FDS]);
        // MSG_TRUNC: the message's whole length, so a cut one is noticed.
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC;
        let (n, fds, cut) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match sock::recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    for c in m.cmsgs().into_iter().flatten() {
                        if let sock::ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel installed these descriptors
                            // in this process for this message; nothing
                            // else owns them.
                            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                        }
                    }
                    (m.bytes, fds, m.flags.contains(MsgFlags::MSG_CTRUNC))
                }
                Err(Errno::EAGAIN | Errno::EINTR) => return Received::Nothing,
                Err(_) => return Received::Closed,
            }
        };
        // The buffer is rounded up to its alignment: it may hold more than
        // asked, so the count is checked too (extra ones close here).
        if cut || fds.len() > REQUEST_FDS {
            return Received::TooManyFds;
        }
        self.fds = fds;
        match n {
            n if n > REQUEST_MAX => Received::TooLong(n),
            n if n > 0 => Received::Request(String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned()),
            _ => Received::Closed,
        }
    }

    /// A second descriptor of the connection (the forked installer reports
    /// on it; PID 1 closes its own).
    pub fn try_clone_fd(&self) -> SysResult<OwnedFd> {
        self.fd.try_clone().map_err(|e| SysError {
            op: "dup",
            arg: "control connection".into(),
            errno: e.raw_os_error().unwrap_or(0),
        })
    }

    /// Send the reply (best effort, never waits) and close.
    pub fn reply(self, text: &str) {
        let _ = self.send(text.as_bytes());
    }

    /// Send what waits of the kernel's log, at most `budget` lines (the
    /// kernel keeps the lines: PID 1 holds one at most). Returns how it
    /// ended: `None` while it goes on, `Some(Taken)` when the end was sent.
    pub fn pump_kernel(&mut self, s: &mut Stream, now: Instant, budget: usize) -> Option<Sent> {
        let mut buf = [0u8; 1024];
        for _ in 0..budget {
            let line = match self.pending.take() {
                Some(l) => l,
                None => {
                    let fd = self.kmsg.as_ref()?;
                    match nix::unistd::read(fd, &mut buf) {
                        Ok(n) => match parse_kmsg(buf.get(..n).unwrap_or(&[])) {
                            Some((t, _)) if t < s.next => continue,
                            Some((t, text)) => format_log_line(t, text.as_bytes()),
                            None => continue,
                        },
                        // Overwritten before it was read: go on with the next.
                        Err(Errno::EPIPE | Errno::EINTR | Errno::EINVAL) => continue,
                        Err(_) => {
                            // EAGAIN: the end of what the kernel has.
                            return match self.send(framed_reply("end").as_bytes()) {
                                Sent::Full => None,
                                other => Some(other),
                            };
                        }
                    }
                }
            };
            match self.send(line.as_bytes()) {
                Sent::Taken => s.progress = now,
                Sent::Full => {
                    self.pending = Some(line);
                    return None;
                }
                Sent::Gone => return Some(Sent::Gone),
            }
        }
        None
    }

    /// Send one message (never waits).
    pub fn send(&self, msg: &[u8]) -> Sent {
        match sock::send(self.fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
            Ok(_) => Sent::Taken,
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOBUFS) => Sent::Full,
            Err(_) => Sent::Gone,
        }
    }
}

/// Where the client lives in the initramfs.
pub const CLIENT: &str = "/bin/cairn-ctl";

/// Put a copy of `cairn-ctl` (read-only, executable) beside the socket, so
/// every container granted permissions has it at `/run/cairn/cairn-ctl`
/// without its image shipping it (it costs its size in tmpfs memory, so
/// only when some container is granted permissions). Without one in the
/// initramfs: nothing.
fn offer_client() {
    if std::fs::metadata(CLIENT).is_err() {
        return;
    }
    let to = format!("{CONTROL_DIR}/cairn-ctl");
    let copied = std::fs::copy(CLIENT, &to)
        .and_then(|_| std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o555)));
    if let Err(e) = copied {
        crate::event::event("control.client-unavailable")
            .kv("path", &to)
            .kv("errno", e.raw_os_error().unwrap_or(0))
            .emit();
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

    fn p(text: &str) -> Result<Request, ParseError> {
        parse(&format!("cairn/1 {text}"))
    }

    #[test]
    fn requests_parse() {
        assert_eq!(p("status"), Ok(Request::Status));
        assert_eq!(p(" poweroff\n"), Ok(Request::PowerOff));
        assert_eq!(p("signal web 15"), Ok(Request::Signal { name: "web".into(), signals: vec![15] }));
        assert_eq!(p("signal web 1,2,31"), Ok(Request::Signal { name: "web".into(), signals: vec![1, 2, 31] }));
        assert_eq!(p("signal web 1,x"), Err(ParseError::SignalList("1,x".into())));
        assert_eq!(p("signal web 0"), Err(ParseError::SignalList("0".into())));
        assert_eq!(p("signal web x"), Err(ParseError::SignalList("x".into())));
        assert_eq!(p("rm -rf /"), Err(ParseError::Unknown("rm -rf /".into())));
        assert_eq!(p(""), Err(ParseError::Unknown("".into())));
        assert_eq!(p("signal web 1,2 extra"), Err(ParseError::Unknown("signal web 1,2 extra".into())));
        assert_eq!(p("signal web 65"), Err(ParseError::SignalList("65".into())));
        assert_eq!(p("signal web 1,,2"), Err(ParseError::SignalList("1,,2".into())));
        assert_eq!(p("ps"), Ok(Request::Ps));
        assert_eq!(p("restart web"), Ok(Request::Restart("web".into())));
        assert_eq!(p("stop web"), Ok(Request::Stop("web".into())));
        assert_eq!(p("start web"), Ok(Request::Start("web".into())));
        assert_eq!(p("events --follow"), Ok(Request::Events));
        assert_eq!(p("heartbeat"), Ok(Request::Heartbeat));
        assert_eq!(p("heartbeat web"), Err(ParseError::Unknown("heartbeat web".into())));
        assert_eq!(p("pause web"), Ok(Request::Pause("web".into())));
        assert_eq!(p("resume web"), Ok(Request::Resume("web".into())));
        assert_eq!(p("pause"), Err(ParseError::Unknown("pause".into())));
        assert_eq!(p("volume prune"), Ok(Request::VolumePrune));
        assert_eq!(Request::VolumePrune.needs(), Permission::Volumes);
        assert_eq!(p("volume prune db"), Err(ParseError::Unknown("volume prune db".into())));
        assert_eq!(p("volume"), Err(ParseError::Unknown("volume".into())));
        let servers = crate::dns::Servers { servers: vec![[10, 0, 2, 3]], search: vec!["lan".into()] };
        assert_eq!(p("dns --search lan 10.0.2.3"), Ok(Request::Dns(servers)));
        assert_eq!(p("dns"), Ok(Request::Dns(crate::dns::Servers::default())));
        assert_eq!(Request::Dns(crate::dns::Servers::default()).needs(), Permission::Network);
        assert_eq!(p("dns 10.0.2"), Err(ParseError::Dns(crate::dns::DnsError::Server("10.0.2".into()))));
        assert_eq!(Request::Pause("web".into()).needs(), Permission::Lifecycle);
        assert_eq!(Request::Resume("web".into()).needs(), Permission::Lifecycle);
        assert_eq!(p("logs web"), Ok(Request::Logs { name: "web".into(), since_ms: 0, follow: false }));
        assert_eq!(
            p("logs web --since 12.5 --follow"),
            Ok(Request::Logs { name: "web".into(), since_ms: 12_500, follow: true })
        );
        assert_eq!(p("logs web --since x"), Err(ParseError::Time("x".into())));
        assert_eq!(p("logs web --since"), Err(ParseError::Time("".into())));
        assert_eq!(p("logs web --tail"), Err(ParseError::Unknown("logs web --tail".into())));
        assert_eq!(
            p("exec web -- /bin/echo a%20b %25"),
            Ok(Request::Exec {
                name: "web".into(),
                argv: vec![b"/bin/echo".to_vec(), b"a b".to_vec(), b"%".to_vec()],
                opts: Default::default()
            })
        );
        assert_eq!(
            p("exec web --tty -- sh"),
            Ok(Request::Exec {
                name: "web".into(),
                argv: vec![b"sh".to_vec()],
                opts: crate::exec::Options { tty: true, ..Default::default() }
            })
        );
        // Options in any order before `--`; environment entries decoded.
        assert_eq!(
            p("exec web --env A=1 --user 1000:50 --tty --env B=two%20words -- sh"),
            Ok(Request::Exec {
                name: "web".into(),
                argv: vec![b"sh".to_vec()],
                opts: crate::exec::Options {
                    tty: true,
                    env: vec![b"A=1".to_vec(), b"B=two words".to_vec()],
                    user: Some((1000, Some(50)))
                }
            })
        );
        assert_eq!(
            p("exec web --user 7 -- --env"),
            Ok(Request::Exec {
                name: "web".into(),
                argv: vec![b"--env".to_vec()],
                opts: crate::exec::Options { user: Some((7, None)), ..Default::default() }
            })
        );
        assert_eq!(p("exec web --user root -- sh"), Err(ParseError::User("root".into())));
        assert_eq!(p("exec web --user 1: -- sh"), Err(ParseError::User("1:".into())));
        assert_eq!(p("exec web --user -1 -- sh"), Err(ParseError::User("-1".into())));
        assert_eq!(p("exec web --env A=%00 -- sh"), Err(ParseError::Argument));
        for bad in [
            "exec web --env -- sh",
            "exec web --user 1 --user 2 -- sh",
            "exec web --tty --tty -- sh",
            "exec web -x -- sh",
        ] {
            assert_eq!(p(bad), Err(ParseError::Unknown(bad.into())), "{bad}");
        }
        assert_eq!(p("exec web --tty sh"), Err(ParseError::Unknown("exec web --tty sh".into())));
        assert_eq!(p("exec web -- a%00"), Err(ParseError::Argument));
        assert_eq!(p("exec web -- a%2"), Err(ParseError::Argument));
        assert_eq!(p("exec web --"), Err(ParseError::Unknown("exec web --".into())));
        assert_eq!(p("exec web sh"), Err(ParseError::Unknown("exec web sh".into())));
        assert_eq!(parse("status"), Err(ParseError::Version));
        assert_eq!(parse("cairn/2 status"), Err(ParseError::Version));
        assert_eq!(parse(""), Err(ParseError::Version));
    }

    #[test]
    fn times_are_seconds_since_boot() {
        assert_eq!(parse_time("12"), Some(12_000));
        assert_eq!(parse_time("12.3"), Some(12_300));
        assert_eq!(parse_time("0.045"), Some(45));
        for bad in ["", ".5", "1.2345", "-1", "1e3", "1.x", "99999999999999999999"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn ps_and_log_lines_format() {
        let row = PsRow {
            name: "web".into(),
            state: "running",
            pid: Some(42),
            uptime_ms: Some(1500),
            restarts: 2,
            last_exit: Some("code=1".into()),
            health: Some("healthy"),
        };
        let files = |f: &str| match f {
            "memory.current" => Some("4096\n".to_owned()),
            "memory.peak" => Some("8192\n".to_owned()),
            "cpu.stat" => Some("usage_usec 777\nuser_usec 700\n".to_owned()),
            "memory.events" => Some("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n".to_owned()),
            _ => None,
        };
        let st = CgroupStats::read(files);
        assert_eq!(
            format_ps(&row, &st),
            "name=web state=running pid=42 uptime_ms=1500 restarts=2 last_exit=code=1 memory=4096 \
             memory_peak=8192 cpu_us=777 pids=- oom_kills=1 health=healthy"
        );
        assert_eq!(format_log_line(12_045, b"hello"), "12.045 hello");
        let st = init_stats("Name:\tinit\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n");
        assert_eq!((st.memory, st.memory_peak), (Some(1024 * 1024), Some(2048 * 1024)));
        assert_eq!(init_stats("VmRSS: x kB\n"), CgroupStats::default());
        assert_eq!(format_log_line(5, b"\xff"), "0.005 \u{fffd}");
        assert_eq!(framed_reply("ok"), "cairn/1 ok");
        assert_eq!(
            parse_kmsg(b"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n"),
            Some((5140, "NET: Registered protocol family 10".to_owned()))
        );
        assert_eq!(parse_kmsg(b"6,339,x,-;text"), None);
        assert_eq!(parse_kmsg(b"no header"), None);
    }

    #[test]
    fn permission_sets() {
        let s = Permissions::of(&[Permission::Status, Permission::Power]);
        assert!(s.has(Permission::Status) && s.has(Permission::Power));
        assert!(!s.has(Permission::Logs) && !s.has(Permission::Exec) && !s.has(Permission::Lifecycle));
        assert!(Permission::ALL.iter().all(|p| Permissions::ALL.has(*p)));
        assert!(Permission::ALL.iter().all(|p| !Permissions::default().has(*p)));
    }

    fn conn_pair() -> Option<(Conn, OwnedFd)> {
        let (a, b) = sock::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let conn = Conn {
            fd: a,
            deadline: Instant::now(),
            pid: 0,
            uid: 0,
            caller: Caller::Host,
            stream: None,
            kmsg: None,
            pending: None,
            fds: Vec::new(),
        };
        Some((conn, b))
    }

    fn send(fd: &OwnedFd, msg: &[u8]) {
        assert_eq!(sock::send(fd.as_raw_fd(), msg, MsgFlags::empty()), Ok(msg.len()));
    }

    #[test]
    fn requests_are_read_without_waiting_and_long_ones_are_not_cut() {
        let Some((mut conn, peer)) = conn_pair() else { return };
        assert_eq!(conn.receive(), Received::Nothing);
        send(&peer, b"status");
        assert_eq!(conn.receive(), Received::Request("status".into()));
        let long = vec![b'1'; REQUEST_MAX + 1];
        send(&peer, &long);
        assert_eq!(conn.receive(), Received::TooLong(REQUEST_MAX + 1));
        let mut fits = b"cairn/1 signal web ".to_vec();
        fits.resize(REQUEST_MAX, b'1');
        send(&peer, &fits);
        assert!(matches!(conn.receive(), Received::Request(t) if t.len() == REQUEST_MAX));
        drop(peer);
        assert_eq!(conn.receive(), Received::Closed);
    }

    fn send_fds(fd: &OwnedFd, msg: &[u8], fds: &[std::os::fd::RawFd]) {
        let iov = [std::io::IoSlice::new(msg)];
        let cmsg = [sock::ControlMessage::ScmRights(fds)];
        assert_eq!(sock::sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None), Ok(msg.len()));
    }

    #[test]
    fn descriptors_come_with_their_request_and_too_many_refuse_it() {
        let Some((mut conn, peer)) = conn_pair() else { return };
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        send_fds(&peer, b"cairn/1 update", &[file.as_raw_fd()]);
        assert_eq!(conn.receive(), Received::Request("cairn/1 update".into()));
        assert_eq!(conn.fds.len(), 1);
        // The descriptor is the file that was sent, and close-on-exec.
        let passed = conn.fds.first().unwrap();
        let (a, b) = (nix::sys::stat::fstat(passed).unwrap(), nix::sys::stat::fstat(&file).unwrap());
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        let flags = nix::fcntl::fcntl(passed, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let raw = file.as_raw_fd();
        send_fds(&peer, b"cairn/1 update", &[raw; REQUEST_FDS + 1]);
        assert_eq!(conn.receive(), Received::TooManyFds);
        send(&peer, b"status");
        assert_eq!(conn.receive(), Received::Request("status".into()));
        assert!(conn.fds.is_empty(), "a request without descriptors kept the last ones");
    }

    #[test]
    fn a_hundred_signals_fit_in_a_request() {
        let list = vec!["28"; 100].join(",");
        let text = format!("cairn/1 signal ticker {list}");
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
