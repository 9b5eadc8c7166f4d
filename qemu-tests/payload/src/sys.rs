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

/// An errno value shown by its symbolic name (`-` for 0, `E<n>` if unknown).
#[derive(Debug, Clone, Copy)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            0 => "-",
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::ESRCH => "ESRCH",
            libc::EINTR => "EINTR",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::ENOEXEC => "ENOEXEC",
            libc::EBADF => "EBADF",
            libc::ECHILD => "ECHILD",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EFAULT => "EFAULT",
            libc::ENOTBLK => "ENOTBLK",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENFILE => "ENFILE",
            libc::EMFILE => "EMFILE",
            libc::ENOTTY => "ENOTTY",
            libc::ETXTBSY => "ETXTBSY",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::ESPIPE => "ESPIPE",
            libc::EROFS => "EROFS",
            libc::EMLINK => "EMLINK",
            libc::EPIPE => "EPIPE",
            libc::ERANGE => "ERANGE",
            libc::EDEADLK => "EDEADLK",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENODATA => "ENODATA",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ENETUNREACH => "ENETUNREACH",
            libc::EHOSTUNREACH => "EHOSTUNREACH",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::EDQUOT => "EDQUOT",
            libc::ENOKEY => "ENOKEY",
            libc::EKEYREVOKED => "EKEYREVOKED",
            libc::EKEYREJECTED => "EKEYREJECTED",
            libc::ENOMEDIUM => "ENOMEDIUM",
            libc::EBADMSG => "EBADMSG",
            libc::EPROTO => "EPROTO",
            n => return write!(f, "E{n}"),
        };
        f.write_str(name)
    }
}

/// `Err(errno)` if a raw syscall returned -1, else its value.
pub fn check(rc: libc::c_long) -> Result<libc::c_long, i32> {
    if rc == -1 {
        Err(errno())
    } else {
        Ok(rc)
    }
}

/// A path as a C string; a path holding a NUL byte is EINVAL.
pub fn cpath(path: &str) -> Result<std::ffi::CString, i32> {
    std::ffi::CString::new(path).map_err(|_| libc::EINVAL)
}

/// open(2) with O_CLOEXEC added (mode 0644 if O_CREAT); the owned fd, or errno.
pub fn open(path: &std::ffi::CStr, flags: i32) -> Result<std::os::fd::OwnedFd, i32> {
    use std::os::fd::FromRawFd;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the mode
    // argument is only read with O_CREAT and is passed as the promoted c_uint.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` was just returned by open and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// [`open`] for a Rust string path.
pub fn open_str(path: &str, flags: i32) -> Result<std::os::fd::OwnedFd, i32> {
    open(&cpath(path)?, flags)
}

/// One write(2), retried on EINTR; bytes written or errno.
pub fn write_once(fd: i32, buf: &[u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: `buf` is a live slice; write reads at most `buf.len()` bytes from it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Wait for a child forked with [`fork_child`]: its exit code, or
/// `Err(signal)` if a signal ended it, or `Err(-errno)` if waiting failed.
pub fn wait_code(pid: i32) -> Result<i32, i32> {
    let status = wait_pid(pid).map_err(|e| -e)?;
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(libc::WTERMSIG(status))
    }
}

/// getrlimit(2): (soft, hard), or errno.
pub fn getrlimit(resource: libc::c_int) -> Result<(libc::rlim_t, libc::rlim_t), i32> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(resource as _, &mut r) } != 0 {
        return Err(errno());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// An rlimit value, `inf` for RLIM_INFINITY.
pub fn rlim_str(v: libc::rlim_t) -> String {
    if v == libc::RLIM_INFINITY {
        "inf".into()
    } else {
        v.to_string()
    }
}

/// A field of /proc/self/status (`Name:\tvalue`), trimmed.
pub fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}
