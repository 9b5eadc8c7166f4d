//! A container's standard descriptors. A container never gets PID 1's
//! console (nor any description PID 1 writes to): with `console = true`
//! its stdio is a pseudo-terminal whose master PID 1 keeps (see
//! [`crate::console`]); otherwise stdin is `/dev/null` and stdout and
//! stderr are the write end of a pipe whose read end PID 1 keeps
//! (non-blocking, close-on-exec) and copies to the console line by line.
//! So a container can stop, flood or make non-blocking only its own pipe
//! or terminal, never the device console.

use std::os::fd::{AsRawFd, OwnedFd};

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
    // SAFETY: fcntl on a descriptor we own; F_SETFL takes an int.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(SysError { op: "fcntl O_NONBLOCK", arg: "output pipe".into(), errno: sys::errno() });
    }
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
                for (from, to) in [(&null, 0), (&write, 1), (&write, 2)] {
                    // SAFETY: dup2 onto a standard descriptor; `from` is open.
                    if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
                        return Err(SysError { op: "dup2 stdio", arg: format!("fd {to}"), errno: sys::errno() });
                    }
                }
                Ok(())
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
        // SAFETY: fcntl queries on descriptors we own.
        let (fl, fd) =
            unsafe { (libc::fcntl(read.as_raw_fd(), libc::F_GETFL), libc::fcntl(read.as_raw_fd(), libc::F_GETFD)) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd & libc::FD_CLOEXEC, 0);
        // The write end blocks as usual (the container's own business).
        // SAFETY: as above.
        let wfl = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(wfl & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 4];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!((n, sys::errno()), (-1, libc::EAGAIN));
    }
}
