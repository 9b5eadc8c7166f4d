//! A container's standard descriptors. A container never gets PID 1's
//! console (nor any description PID 1 writes to): with `console = true`
//! its stdio is a pseudo-terminal whose master PID 1 keeps (see
//! [`crate::console`]); otherwise stdin is `/dev/null` and stdout and
//! stderr are the write end of a pipe whose read end PID 1 keeps
//! (non-blocking, close-on-exec) and copies to the console line by line.
//! So a container can stop, flood or make non-blocking only its own pipe
//! or terminal, never the device console.

use std::os::fd::OwnedFd;

use crate::console::Pty;
use crate::sys::{self, SysError, SysResult};

/// The child's side and PID 1's side, made before clone.
#[derive(Debug)]
pub enum Stdio {
    /// `console = true`.
    Pty(Pty),
    /// Everything else.
    Pipe {
        /// `/dev/null`, read-only: stdin.
        null: OwnedFd,
        /// Read end, kept by PID 1 (non-blocking, close-on-exec).
        read: OwnedFd,
        /// Write end: stdout and stderr.
        write: OwnedFd,
    },
}

/// What PID 1 keeps once the child is started.
#[derive(Debug)]
pub enum Kept {
    /// The pty's master and the slave's path.
    Pty(OwnedFd, String),
    /// The pipe's read end.
    Pipe(OwnedFd),
}

/// Make the descriptors for a container (`console`: a pty, else a pipe).
pub fn prepare(console: bool) -> SysResult<Stdio> {
    if console {
        return crate::console::open().map(Stdio::Pty);
    }
    let null = sys::open("/dev/null", libc::O_RDONLY)?;
    let (read, write) = sys::pipe()?;
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys::err("fcntl O_NONBLOCK", "output pipe"))?;
    Ok(Stdio::Pipe { null, read, write })
}

impl Stdio {
    /// In the child, before anything else: its side becomes fds 0, 1 and
    /// 2. PID 1's side is closed here (and every other inherited fd later).
    pub fn attach(self) -> SysResult<()> {
        match self {
            Stdio::Pty(pty) => {
                drop(pty.master);
                crate::console::attach_stdio(&pty.slave)
            }
            Stdio::Pipe { null, read, write } => {
                drop(read);
                use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
                let dup = |r: nix::Result<()>, to: i32| {
                    r.map_err(|e| SysError { op: "dup2 stdio", arg: format!("fd {to}"), errno: e as i32 })
                };
                dup(dup2_stdin(&null), 0)?;
                dup(dup2_stdout(&write), 1)?;
                dup(dup2_stderr(&write), 2)
            }
        }
    }

    /// In PID 1 after clone: the child holds its side now; keep ours.
    pub fn keep(self) -> Kept {
        match self {
            Stdio::Pty(p) => Kept::Pty(p.master, p.path),
            Stdio::Pipe { read, .. } => Kept::Pipe(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_end_of_a_pipe_is_non_blocking_and_close_on_exec() {
        let stdio = prepare(false);
        assert!(stdio.is_ok(), "{stdio:?}");
        let Ok(Stdio::Pipe { read, write, .. }) = stdio else { return };
        use nix::fcntl::{fcntl, FcntlArg};
        let (fl, fd) = (fcntl(&read, FcntlArg::F_GETFL), fcntl(&read, FcntlArg::F_GETFD));
        assert_ne!(fl.unwrap() & libc::O_NONBLOCK, 0);
        assert_ne!(fd.unwrap() & libc::FD_CLOEXEC, 0);
        // The write end blocks as usual (the container's own business).
        let wfl = fcntl(&write, FcntlArg::F_GETFL);
        assert_eq!(wfl.unwrap() & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&read, &mut buf), Err(nix::errno::Errno::EAGAIN));
    }
}
