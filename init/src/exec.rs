//! `exec NAME -- ARG...` on the control socket (docs/control.md).
//!
//! PID 1 only checks the request (permission, a running container), forks
//! a helper and replies `ok`; everything else happens in the helper, which
//! may wait as long as the command runs: it receives the client's stdin,
//! stdout and stderr (one message with `SCM_RIGHTS`, within
//! [`STDIO_DEADLINE`]), starts the command inside the container
//! ([`cairn_runtime::exec`]), and sends `cairn/1 exit CODE` when the
//! container's init has reaped it. The command writes to the client's
//! descriptors itself: PID 1 relays nothing. The helper keeps none of PID
//! 1's descriptors but the connection and the events channel: its events
//! reach the console and `events --follow` through PID 1
//! ([`crate::helper_events`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use cairn_runtime::exec::{self, Waited};
use cairn_runtime::seccomp::Filter;
use cairn_runtime::sys;
use cairn_runtime::{Cgroup, ContainerSpec};

use crate::control::{framed_reply, Conn};
use crate::event::event;
use crate::supervisor::ExitFields;

/// How long the helper waits for the client's descriptors.
pub const STDIO_DEADLINE: Duration = Duration::from_secs(5);

/// Most helpers alive at once (they live outside every container's
/// cgroup, as long as their command runs): past it `error busy`.
pub const MAX_HELPERS: usize = 8;

/// The helpers alive (PID 1 is single-threaded; the lock only makes the
/// static sound).
static HELPERS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());

fn helpers<T>(f: impl FnOnce(&mut Vec<libc::pid_t>) -> T) -> T {
    f(&mut HELPERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// In PID 1, for every child it reaps: whether it was a helper (now gone).
pub fn reaped(pid: libc::pid_t) -> bool {
    helpers(|h| {
        let before = h.len();
        h.retain(|p| *p != pid);
        h.len() != before
    })
}

/// One request argument: bytes with `%XX` for any byte outside `!`..`~`
/// and for `%` itself. None if malformed or it holds a NUL.
pub fn decode_arg(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        let b = if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
        } else {
            b
        };
        if b == 0 {
            return None;
        }
        out.push(b);
    }
    Some(out)
}

/// Most `--env` entries of one exec.
pub const MAX_ENV: usize = 64;

/// An `exec` request's options beyond its command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `--tty`: the client passes a pseudo-terminal's slave, which becomes
    /// the command's controlling terminal.
    pub tty: bool,
    /// `--env KEY=VALUE` entries, decoded, in order: each replaces the
    /// entrypoint's (or an earlier) entry of the same KEY, or is added.
    pub env: Vec<Vec<u8>>,
    /// `--user UID[:GID]`: run as these ids (in the container's user
    /// namespace) instead of the entrypoint's, with no supplementary
    /// groups; GID defaults to the entrypoint's gid.
    pub user: Option<(u32, Option<u32>)>,
}

/// Why an exec's options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// Not `KEY=VALUE` with a KEY.
    #[error("bad environment entry {0:?} (KEY=VALUE)")]
    Env(String),
    /// Past [`MAX_ENV`].
    #[error("more than {MAX_ENV} environment entries")]
    TooManyEnv,
    /// A uid the container's user namespace does not map (or -1).
    #[error("uid {0} is not mapped in the container's user namespace")]
    Uid(u32),
    /// A gid the container's user namespace does not map (or -1).
    #[error("gid {0} is not mapped in the container's user namespace")]
    Gid(u32),
}

/// `UID` or `UID:GID`, numbers only (PID 1 reads no passwd file).
pub fn parse_user(text: &str) -> Option<(u32, Option<u32>)> {
    let num = |t: &str| if t.bytes().all(|b| b.is_ascii_digit()) { t.parse::<u32>().ok() } else { None };
    match text.split_once(':') {
        None => Some((num(text)?, None)),
        Some((u, g)) => Some((num(u)?, Some(num(g)?))),
    }
}

impl Options {
    /// The spec the command runs with: the entrypoint's, with these
    /// options applied (`None`: none given, the entrypoint's as it is).
    pub fn apply(&self, spec: &ContainerSpec) -> Result<Option<ContainerSpec>, OptionError> {
        if self.env.is_empty() && self.user.is_none() {
            return Ok(None);
        }
        if self.env.len() > MAX_ENV {
            return Err(OptionError::TooManyEnv);
        }
        let mut out = spec.clone();
        for e in &self.env {
            let key_len = e.iter().position(|b| *b == b'=').filter(|k| *k > 0);
            let (Some(k), Ok(entry)) = (key_len, CString::new(e.as_slice())) else {
                return Err(OptionError::Env(String::from_utf8_lossy(e).into_owned()));
            };
            let key = e.get(..=k).unwrap_or_default();
            out.env.retain(|have| !have.as_bytes().starts_with(key));
            out.env.push(entry);
        }
        if let Some((uid, gid)) = self.user {
            let gid = gid.unwrap_or(spec.gid);
            // -1 is "unchanged" to setresuid: never an id to run as.
            let mapped = |map: Option<&[cairn_runtime::spec::IdRange]>, id: u32| {
                id != u32::MAX && map.is_none_or(|m| cairn_runtime::spec::map_id(m, id).is_some())
            };
            let userns = spec.userns.as_ref();
            if !mapped(userns.map(|u| u.uid_map.as_slice()), uid) {
                return Err(OptionError::Uid(uid));
            }
            if !mapped(userns.map(|u| u.gid_map.as_slice()), gid) {
                return Err(OptionError::Gid(gid));
            }
            out.uid = uid;
            out.gid = gid;
            out.groups.clear();
        }
        Ok(Some(out))
    }
}

/// What the helper needs of the container.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its spec (what its entrypoint runs as).
    pub spec: &'a ContainerSpec,
    /// Its seccomp filter.
    pub filter: Option<&'a Filter>,
    /// Its cgroup.
    pub cgroup: &'a Cgroup,
    /// Its namespace init (host pid).
    pub pid: libc::pid_t,
}

/// In PID 1: fork the helper for `conn`. Returns the reply's body for PID 1
/// to send (`ok`, then the helper takes over the connection), or the error.
pub fn fork_helper(conn: &Conn, caller: &str, target: &Target<'_>, argv: &[Vec<u8>], opts: &Options) -> String {
    let Ok(argv) = argv.iter().map(|a| CString::new(a.as_slice())).collect::<Result<Vec<_>, _>>() else {
        return "error bad argument".into();
    };
    let changed = match opts.apply(target.spec) {
        Ok(s) => s,
        Err(e) => return format!("error {e}"),
    };
    let target = &Target { spec: changed.as_ref().unwrap_or(target.spec), ..*target };
    let tty = opts.tty;
    if helpers(|h| h.len()) >= MAX_HELPERS {
        return format!("error busy: {MAX_HELPERS} execs running");
    }
    // SAFETY: PID 1 is single-threaded; the child only runs `helper` and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            helpers(|h| h.push(child.as_raw()));
            "ok".into()
        }
        Ok(nix::unistd::ForkResult::Child) => sys::exit_now(helper(conn.raw(), caller, target, &argv, tty)),
        Err(e) => format!("error fork: {}", sys::errno_name(e as i32)),
    }
}

fn helper(conn_fd: i32, caller: &str, target: &Target<'_>, argv: &[CString], tty: bool) -> i32 {
    // Nothing of PID 1's but the connection and the events channel: a
    // stream PID 1 closes must reach its end, and the command must not
    // inherit the rest.
    let events = crate::helper_events::become_helper();
    if sys::close_all_but(&[conn_fd, events]).is_err() {
        return 1;
    }
    // SAFETY: `conn_fd` is the connection's descriptor, open in this copy
    // of PID 1 and closed only when the helper exits.
    let conn = unsafe { BorrowedFd::borrow_raw(conn_fd) };
    let reply = |body: &str| {
        let msg = framed_reply(body);
        // SAFETY: `msg` is a live buffer of its length.
        unsafe { libc::send(conn_fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
    };
    let argv0 = argv.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    let Some(stdio) = receive_stdio(conn) else {
        event("control.exec-failed").kv("caller", caller).kv("target", target.name).kv("why", "no stdio").emit();
        reply("error no stdio descriptors");
        return 1;
    };
    let started = match exec::start(target.spec, target.filter, target.cgroup, target.pid, argv, &stdio, tty) {
        Ok(s) => s,
        Err(e) => {
            event("control.exec-failed").kv("caller", caller).kv("target", target.name).kv("error", &e).emit();
            reply(&format!("error {e}"));
            return 1;
        }
    };
    drop(stdio);
    let mut e = event("control.exec")
        .kv("caller", caller)
        .kv("target", target.name)
        .kv("argv0", &argv0)
        .kv("tty", u8::from(tty))
        .kv("pid", started.ns_pid);
    if let Some(r) = started.failed {
        e = e.kv("failed", r);
    }
    e.emit();
    let end = started.wait(conn);
    let e = event("container.exec-exited").kv("target", target.name).kv("pid", started.ns_pid);
    match end {
        Waited::Exited(x) => {
            e.kv_exit(x).emit();
            let failed = started.failed.map(|r| format!(" {r}")).unwrap_or_default();
            reply(&format!("exit {}{failed}", x.code()));
        }
        Waited::ContainerGone => {
            e.kv("lost", "container stopped").emit();
            reply("error container stopped");
        }
        // The command goes on; its status is the container init's alone.
        // (No deadline was given: a timeout cannot come.)
        Waited::Hangup | Waited::TimedOut => e.kv("lost", "client gone").emit(),
    }
    0
}

/// The client's stdin, stdout, stderr: one message `stdio` with three
/// descriptors, within [`STDIO_DEADLINE`].
fn receive_stdio(conn: BorrowedFd<'_>) -> Option<[OwnedFd; 3]> {
    // The connection is non-blocking (PID 1 accepted it): wait with poll.
    let mut p = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(STDIO_DEADLINE.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    while unsafe { libc::poll(&mut p, 1, ms) } < 0 {
        if sys::errno() != libc::EINTR {
            return None;
        }
    }
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let msg = loop {
        match nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.ok()?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: descriptors the kernel just installed in this process.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    if msg.bytes != 5 || buf.get(..5) != Some(b"stdio".as_slice()) {
        return None;
    }
    <[OwnedFd; 3]>::try_from(fds).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_forgotten_when_reaped() {
        helpers(|h| h.push(4242));
        assert!(reaped(4242));
        assert!(!reaped(4242));
    }

    fn spec(userns: bool) -> ContainerSpec {
        let mut s = crate::resolve::container_spec(
            &crate::resolve::tests::container(),
            |l| Some(format!("/layers/{l}")),
            |_| Some("/dev/x".into()),
        )
        .unwrap();
        s.env = vec![CString::new("PATH=/bin").unwrap(), CString::new("MODE=a").unwrap()];
        s.uid = 1000;
        s.gid = 1000;
        s.groups = vec![20];
        s.userns = userns.then(|| cairn_runtime::spec::UserNamespace {
            uid_map: vec![cairn_runtime::spec::IdRange { inside: 0, outside: 100_000, count: 65536 }],
            gid_map: vec![cairn_runtime::spec::IdRange { inside: 0, outside: 100_000, count: 1000 }],
        });
        s
    }

    #[test]
    fn options_change_only_what_they_name_and_ids_must_be_mapped() {
        let s = spec(false);
        assert!(matches!(Options { tty: true, ..Options::default() }.apply(&s), Ok(None)));
        let env = |e: &[&str]| Options { env: e.iter().map(|e| e.as_bytes().to_vec()).collect(), ..Options::default() };
        let got = env(&["MODE=b", "NEW=x y", "MODE=c"]).apply(&s).unwrap().unwrap();
        let names: Vec<&str> = got.env.iter().map(|e| e.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH=/bin", "NEW=x y", "MODE=c"]);
        assert_eq!((got.uid, got.gid, got.groups.as_slice()), (1000, 1000, &[20][..]));
        for bad in ["NOEQUALS", "=x"] {
            assert_eq!(env(&[bad]).apply(&s).err(), Some(OptionError::Env(bad.into())));
        }
        let many: Vec<String> = (0..=MAX_ENV).map(|k| format!("K{k}=v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(env(&many).apply(&s).err(), Some(OptionError::TooManyEnv));
        // A user: its ids, no supplementary groups; GID defaults to the entrypoint's.
        let user = |u: u32, g: Option<u32>| Options { user: Some((u, g)), ..Options::default() };
        let got = user(0, None).apply(&s).unwrap().unwrap();
        assert_eq!((got.uid, got.gid, got.groups.len()), (0, 1000, 0));
        assert_eq!(user(u32::MAX, None).apply(&s).err(), Some(OptionError::Uid(u32::MAX)));
        // Under a user namespace: only mapped ids.
        let s = spec(true);
        assert_eq!(user(65535, Some(999)).apply(&s).unwrap().map(|x| (x.uid, x.gid)), Some((65535, 999)));
        assert_eq!(user(65536, None).apply(&s).err(), Some(OptionError::Uid(65536)));
        // The entrypoint's gid 1000 is past the gid map's 1000 ids.
        assert_eq!(user(5, None).apply(&s).err(), Some(OptionError::Gid(1000)));
        assert_eq!(user(5, Some(1000)).apply(&s).err(), Some(OptionError::Gid(1000)));
    }

    #[test]
    fn users_are_numbers() {
        assert_eq!(parse_user("1000"), Some((1000, None)));
        assert_eq!(parse_user("0:0"), Some((0, Some(0))));
        for bad in ["", ":", "1:", ":1", "root", "-1", "+1", "1:2:3", "4294967296"] {
            assert_eq!(parse_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn arguments_are_percent_decoded() {
        assert_eq!(decode_arg("a%20b"), Some(b"a b".to_vec()));
        assert_eq!(decode_arg("%ff%25"), Some(vec![0xff, b'%']));
        assert_eq!(decode_arg("plain"), Some(b"plain".to_vec()));
        for bad in ["%", "%2", "%zz", "%00", "a%0"] {
            assert_eq!(decode_arg(bad), None, "{bad}");
        }
    }
}
