//! Thin wrappers over the few syscalls the payload needs. The program never
//! starts a thread, which is what makes `fork` followed by ordinary Rust code
//! in the child sound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// errno of the last failed call on this thread.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Write all of `buf` to `fd`, retrying on EINTR and short writes; errors are
/// dropped (there is nowhere else to report them).
pub fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice; write reads at most `buf.len()` bytes from it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        buf = buf.get(n.unsigned_abs()..).unwrap_or(&[]);
    }
}

/// The UTS hostname, or `unknown` if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length; one byte is kept back so
    // the result is always NUL terminated.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or(&[])).into_owned()
}

/// getpid(2).
pub fn pid() -> i32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// getppid(2).
pub fn ppid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// getuid(2).
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// getgid(2).
pub fn gid() -> u32 {
    // SAFETY: getgid has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// Sleep; nanosleep is restarted after signal handlers run.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Fork; the child runs `child` and `_exit`s with its result, never returning
/// into the caller. Returns the child's pid, or errno.
pub fn fork_child(child: impl FnOnce() -> i32) -> Result<i32, i32> {
    // SAFETY: the process is single-threaded (no thread is ever spawned), so the
    // child's copy of every lock and allocator state is consistent.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(errno()),
        0 => {
            let code = child();
            // SAFETY: _exit ends the child at once without running the parent's
            // atexit handlers or flushing state it shares with the parent.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

/// Wait for one child, retrying on EINTR; the raw wait status, or errno.
pub fn wait_pid(pid: i32) -> Result<i32, i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 {
            return Ok(status);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// kill(2); errors ignored (the target may be gone already).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes plain integers; callers pass pids of their own children.
    let _ = unsafe { libc::kill(pid, sig) };
}

/// raise(3); returns its result if the signal did not end the process.
pub fn raise(sig: i32) -> i32 {
    // SAFETY: raise takes a plain integer and touches no memory of ours.
    unsafe { libc::raise(sig) }
}

/// Sleep until killed.
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause has no preconditions; it only returns after a handler ran.
        unsafe { libc::pause() };
    }
}

/// Set the disposition of `sig` to ignore.
pub fn ignore(sig: i32) -> Result<(), i32> {
    // SAFETY: SIG_IGN is a valid disposition for any catchable signal.
    let old = unsafe { libc::signal(sig, libc::SIG_IGN) };
    if old == libc::SIG_ERR {
        Err(errno())
    } else {
        Ok(())
    }
}

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// SIGTERM is blocked and caught; [`wait_term`] sleeps until it arrives.
#[derive(Debug)]
pub struct TermWait {
    /// Mask to sleep with: the mask from before, with SIGTERM unblocked.
    sleep_mask: libc::sigset_t,
}

/// Block SIGTERM and install a handler that sets a flag. Blocking first means
/// a SIGTERM sent at any moment after this call is kept pending, never lost.
pub fn catch_term() -> Result<TermWait, i32> {
    // SAFETY: every sigset_t and sigaction passed below is a local, initialised
    // by sigemptyset / sigprocmask before it is read; the handler only stores
    // to an atomic, which is async-signal-safe.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTERM);
        if libc::sigprocmask(libc::SIG_BLOCK, &block, &mut old) != 0 {
            return Err(errno());
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            return Err(errno());
        }
        libc::sigdelset(&mut old, libc::SIGTERM);
        Ok(TermWait { sleep_mask: old })
    }
}

/// Sleep (sigsuspend: the race-free pause) until SIGTERM has been caught.
pub fn wait_term(w: &TermWait) {
    while !TERM.load(Ordering::SeqCst) {
        // SAFETY: `sleep_mask` is a fully initialised sigset_t; sigsuspend only
        // reads it and returns after a handler has run.
        unsafe { libc::sigsuspend(&w.sleep_mask) };
    }
}

/// Read a small text file and trim it; `None` if it cannot be read.
pub fn read_trim(path: &str) -> Option<String> {
    std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b).trim().to_owned())
}
