//! `tty-check`: what the entrypoint of a `console = true` container sees of
//! its terminal, and whether ^C typed on it reaches its process group.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::say;
use crate::sys::{self, Errno};

static SIGINTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, Ordering::SeqCst);
}

/// Prints
/// `event=tty stdio=<isatty 0,1,2 as 3 digits> tty_nr=N pid=P pgrp=G fg=F sid=S`
/// (F = tcgetpgrp(0), tty_nr from /proc/self/stat), then a child in the same
/// process group (SIGINT ignored) pushes `\x03` into the terminal's input
/// with TIOCSTI, so the line discipline sends SIGINT to the foreground
/// group; after 500 ms `event=tty-sigint sti=<ok|ENAME> sigints=N`
/// (deliveries to this process). Exit 0.
pub fn check() -> i32 {
    // SAFETY: isatty, getpid, getpgrp, getsid and tcgetpgrp take integers only.
    let (stdio, pid, pgrp, fg, sid) = unsafe {
        let t = |fd| if libc::isatty(fd) == 1 { '1' } else { '0' };
        (format!("{}{}{}", t(0), t(1), t(2)), libc::getpid(), libc::getpgrp(), libc::tcgetpgrp(0), libc::getsid(0))
    };
    say!("event=tty stdio={stdio} tty_nr={} pid={pid} pgrp={pgrp} fg={fg} sid={sid}", tty_nr());

    // SAFETY: the handler only touches an atomic; sigaction is zeroed plain
    // data with its mask emptied before use.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    let child = sys::fork_child(|| {
        let _ = sys::ignore(libc::SIGINT);
        let c: libc::c_char = 0x03;
        // SAFETY: TIOCSTI reads one byte from the valid pointer given.
        if unsafe { libc::ioctl(0, libc::TIOCSTI as _, &c) } == 0 {
            0
        } else {
            sys::errno()
        }
    });
    let sti = match child {
        Err(e) => format!("fork:{}", Errno(e)),
        Ok(pid) => match sys::wait_code(pid) {
            Ok(0) => "ok".to_owned(),
            Ok(e) => Errno(e).to_string(),
            Err(s) => format!("wait:{s}"),
        },
    };
    sys::sleep_ms(500);
    say!("event=tty-sigint sti={sti} sigints={}", SIGINTS.load(Ordering::SeqCst));
    0
}

/// Field 7 of /proc/self/stat (after the parenthesised comm).
fn tty_nr() -> String {
    let stat = sys::read_trim("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    after.split_whitespace().nth(4).unwrap_or("-").to_owned()
}
