//! Pseudo-terminals for containers with `console = true`.
//!
//! PID 1 allocates the pair on its own devpts (`/dev/ptmx`) and keeps the
//! master; the slave becomes the container init's stdin, stdout and stderr.
//! The namespace init makes it the controlling terminal of its session and,
//! like tini, puts the entrypoint's process group in the foreground, so
//! `isatty`, job control and ^C (SIGINT from the line discipline) work.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, SysError, SysResult};

/// A pseudo-terminal pair.
#[derive(Debug)]
pub struct Pty {
    /// The master side (non-blocking, close-on-exec), kept by PID 1.
    pub master: OwnedFd,
    /// The slave side, handed to the container.
    pub slave: OwnedFd,
    /// Path of the slave on PID 1's devpts, for logs.
    pub path: String,
}

fn ioctl_err(op: &'static str, arg: impl Into<String>) -> SysError {
    SysError { op, arg: arg.into(), errno: sys::errno() }
}

/// Allocate a pair: open the multiplexer, unlock the slave (TIOCSPTLCK),
/// find its number (TIOCGPTN) and open it.
pub fn open() -> SysResult<Pty> {
    let master = sys::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer given.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK as _, &unlock) } != 0 {
        return Err(ioctl_err("TIOCSPTLCK", "/dev/ptmx"));
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to the valid pointer given.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN as _, &mut n) } != 0 {
        return Err(ioctl_err("TIOCGPTN", "/dev/ptmx"));
    }
    let path = format!("/dev/pts/{n}");
    let slave = sys::open(&path, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
    Ok(Pty { master, slave, path })
}

/// In the container's init, before anything else: the slave becomes fds 0,
/// 1 and 2 (the originals are closed with every other inherited fd later).
pub fn attach_stdio(slave: &OwnedFd) -> SysResult<()> {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
    let dups: [fn(&OwnedFd) -> nix::Result<()>; 3] = [|f| dup2_stdin(f), |f| dup2_stdout(f), |f| dup2_stderr(f)];
    for (fd, dup) in dups.into_iter().enumerate() {
        dup(slave).map_err(|e| SysError { op: "dup2 console", arg: format!("fd {fd}"), errno: e as i32 })?;
    }
    Ok(())
}

/// In the container's init: a new session whose controlling terminal is
/// the pty on fd 0.
pub fn take_controlling_terminal() -> SysResult<()> {
    nix::unistd::setsid().map_err(sys::err("setsid", "console"))?;
    // SAFETY: ioctl(TIOCSCTTY, 0) on fd 0 takes no pointer (nix has no
    // wrapper for it).
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } != 0 {
        return Err(ioctl_err("TIOCSCTTY", "console"));
    }
    Ok(())
}

/// In the entrypoint, before exec: its own process group, made the
/// terminal's foreground group. The caller has SIGTTOU blocked (every
/// signal is, until just before exec), so tcsetpgrp from what is still a
/// background group is not stopped.
pub fn become_foreground() -> SysResult<()> {
    use nix::unistd::{getpid, setpgid, Pid};
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(sys::err("setpgid", "entrypoint"))?;
    // SAFETY: tcsetpgrp takes no pointer. Raw libc: nix's takes an owner of
    // fd 0, and std's stdin() would set up its buffer just before exec.
    if unsafe { libc::tcsetpgrp(0, getpid().as_raw()) } != 0 {
        return Err(ioctl_err("tcsetpgrp", "console"));
    }
    Ok(())
}
