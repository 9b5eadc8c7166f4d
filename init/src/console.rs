//! The development console: `cairn.console=ctl` on the kernel command line
//! of a development build (its initramfs holds
//! `cairn_format::trust::DEVELOPMENT_PATH`) gives the serial console a
//! `cairn-ctl shell` session: one control request per line (`ps`, `logs
//! NAME`, `exec NAME -- CMD`, ...), as the host, with every permission.
//! A device has no shell; this is the way to look inside one on the bench.
//!
//! A production image refuses the switch (`console.refused`): its
//! initramfs has no development marker, and with Secure Boot neither its
//! command line nor its initramfs can change without the vendor's
//! signature. The session is a forked child in its own session with the
//! console as its controlling terminal; PID 1 never reads the console
//! itself, and starts the session again a second after it ends.

use std::ffi::CString;
use std::time::{Duration, Instant};

use cairn_format::trust::DEVELOPMENT_PATH;
use cairn_runtime::sys::{self, SysError};

use crate::event::event;

/// The client the session runs, from the initramfs.
const CLIENT: &str = crate::control::CLIENT;
/// Wait before a session that ended is started again.
pub const RESPAWN: Duration = Duration::from_secs(1);

/// The console session PID 1 keeps.
#[derive(Debug, Default)]
pub struct Session {
    /// The running session's pid.
    pub pid: Option<libc::pid_t>,
    /// When to start it (again).
    pub due: Option<Instant>,
}

/// Whether this boot opens a console session: asked for on the command
/// line, and a development build. A refusal is an event.
pub fn allowed(asked: bool) -> bool {
    if !asked {
        return false;
    }
    if !std::path::Path::new(DEVELOPMENT_PATH).exists() {
        event("console.refused")
            .kv("switch", "cairn.console=ctl")
            .kv("reason", format!("not a development build (no {DEVELOPMENT_PATH})"))
            .emit();
        return false;
    }
    if !std::path::Path::new(CLIENT).exists() {
        event("console.refused").kv("switch", "cairn.console=ctl").kv("reason", format!("no {CLIENT}")).emit();
        return false;
    }
    true
}

impl Session {
    /// A session to start now.
    pub fn new() -> Session {
        Session { pid: None, due: Some(Instant::now()) }
    }

    /// Start the session if it is due.
    pub fn tend(&mut self, now: Instant) {
        if self.pid.is_some() || self.due.is_none_or(|d| d > now) {
            return;
        }
        self.due = None;
        match spawn() {
            Ok(pid) => {
                event("console.session").kv("pid", pid).kv("client", CLIENT).emit();
                self.pid = Some(pid);
            }
            Err(e) => {
                event("console.unavailable").kv("error", e).emit();
                self.due = Some(now + RESPAWN);
            }
        }
    }

    /// `pid` was reaped: whether it was the session (started again later).
    pub fn reaped(&mut self, pid: libc::pid_t, now: Instant) -> bool {
        if self.pid != Some(pid) {
            return false;
        }
        self.pid = None;
        self.due = Some(now + RESPAWN);
        event("console.session-ended").kv("pid", pid).kv("again_in_ms", RESPAWN.as_millis()).emit();
        true
    }
}

/// Fork the session: a new session with the console as its controlling
/// terminal on fds 0-2, signals unblocked and defaulted, then exec
/// `cairn-ctl shell`.
fn spawn() -> Result<libc::pid_t, SysError> {
    let argv = [CString::new(CLIENT), CString::new("shell")];
    let [Ok(path), Ok(shell)] = argv else {
        return Err(SysError { op: "exec", arg: CLIENT.into(), errno: libc::EINVAL });
    };
    let env = [CString::new("TERM=vt100").unwrap_or_default()];
    // SAFETY: PID 1 is single-threaded, so the child is a consistent copy;
    // the child only makes syscalls, then execs or exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
        Ok(nix::unistd::ForkResult::Child) => {
            let code = match session_child(&path, &[path.clone(), shell], &env) {
                Ok(never) => match never {},
                Err(_) => 127,
            };
            sys::exit_now(code)
        }
        Err(e) => Err(sys::err("fork", "console session")(e)),
    }
}

/// In the child: become a session leader on the console, then exec.
fn session_child(path: &CString, argv: &[CString], env: &[CString]) -> Result<std::convert::Infallible, SysError> {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    nix::unistd::setsid().map_err(sys::err("setsid", "console session"))?;
    let tty = sys::open("/dev/console", libc::O_RDWR)?;
    // SAFETY: TIOCSCTTY takes an int argument; the descriptor is open.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&tty), libc::TIOCSCTTY, 1) } != 0 {
        return Err(sys::err("ioctl TIOCSCTTY", "/dev/console")(nix::errno::Errno::last()));
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this child.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&tty), fd) } < 0 {
            return Err(sys::err("dup2", "/dev/console")(nix::errno::Errno::last()));
        }
    }
    for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE, libc::SIGCHLD] {
        // SAFETY: resetting a disposition to its default is always sound.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    nix::unistd::execve(path, argv, env).map_err(sys::err("execve", CLIENT))
}
