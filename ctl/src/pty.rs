//! `exec -t`: a pseudo-terminal for the command. `cairn-ctl` opens it in
//! its own container (`/dev/ptmx`), passes the slave as the command's
//! stdin, stdout and stderr (it becomes the command's controlling
//! terminal) and relays between its own stdio and the master, with its own
//! terminal in raw mode meanwhile. PID 1 relays nothing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A new pseudo-terminal: (master, slave), the slave with our terminal's
/// window size when stdin is one.
pub fn open() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt takes flags and returns a new fd or -1.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(last_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt take the master fd; ptsname_r writes at most
    // `name.len()` bytes, NUL included.
    unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(last_error());
        }
        let e = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if e != 0 {
            return Err(std::io::Error::from_raw_os_error(e));
        }
    }
    // SAFETY: `name` is NUL-terminated by ptsname_r.
    let s = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if s < 0 {
        return Err(last_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: winsize is plain data; the ioctls read or write one.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(s, libc::TIOCSWINSZ, &ws);
        }
    }
    Ok((master, slave))
}

/// Our stdin in raw mode while it lives (when it is a terminal).
pub struct Raw(Option<libc::termios>);

impl Raw {
    /// Put stdin in raw mode if it is a terminal.
    pub fn stdin() -> Self {
        // SAFETY: termios is plain data filled by tcgetattr before use.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                return Raw(None);
            }
            let mut raw = t;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            Raw(Some(t))
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings tcgetattr gave.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice of its length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 && last_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return false;
        }
        buf = buf.get(n.unsigned_abs()..).unwrap_or(&[]);
    }
    true
}

/// Copy what `from` has now to `to`. False at its end (or an error).
fn pump(from: i32, to: i32, buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 && matches!(last_error().raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
        return true;
    }
    n > 0 && write_all(to, buf.get(..n.unsigned_abs()).unwrap_or(&[]))
}

/// Relay stdin to `master` and `master` to stdout until `sock` is readable
/// (the command's end: its output is all in the master by then, and is
/// drained first). At the end of stdin the terminal gets ^D (end of input
/// for a reader in canonical mode).
pub fn relay(master: &OwnedFd, sock: &OwnedFd) {
    let m = master.as_raw_fd();
    let mut buf = [0u8; 4096];
    let (mut stdin_open, mut master_open) = (true, true);
    loop {
        let none = libc::pollfd { fd: -1, events: 0, revents: 0 };
        let mut fds = [
            if stdin_open { libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 } } else { none },
            if master_open { libc::pollfd { fd: m, events: libc::POLLIN, revents: 0 } } else { none },
            libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: three valid pollfds (fd -1 is ignored).
        if unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) } < 0 {
            if last_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        let [i, o, s] = fds.map(|p| p.revents != 0);
        if i && !pump(0, m, &mut buf) {
            stdin_open = false;
            write_all(m, &[0x04]);
        }
        if o && !pump(m, 1, &mut buf) {
            master_open = false;
        }
        if s {
            // SAFETY: fcntl on our own descriptor.
            unsafe { libc::fcntl(m, libc::F_SETFL, libc::fcntl(m, libc::F_GETFL) | libc::O_NONBLOCK) };
            while master_open && pump(m, 1, &mut buf) {
                // pump returns true on EAGAIN: stop when nothing is left.
                let mut p = libc::pollfd { fd: m, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
                    break;
                }
            }
            return;
        }
    }
}
