//! The namespace init: PID 1 inside every container, a forked copy of cairn.
//!
//! It starts the entrypoint as its child, forwards every signal it receives
//! to it, reaps every process that is reparented to it, and exits with the
//! entrypoint's status (its code, or 128 + the signal that killed it). When
//! it exits the kernel kills whatever is left in the pid namespace.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use crate::exit::Exit;
use crate::spec::ContainerSpec;
use crate::sys;

/// Exit code when the entrypoint does not exist.
pub const NOT_FOUND: i32 = 127;
/// Exit code when the entrypoint exists but cannot be executed.
pub const NOT_EXECUTABLE: i32 = 126;

/// Fork the entrypoint and supervise it. Never returns.
pub fn run(spec: &ContainerSpec, sync: OwnedFd) -> ! {
    let mut all = empty_sigset();
    // SAFETY: `all` is a valid sigset_t; blocking every signal means they
    // queue for sigwaitinfo instead of being ignored by a namespace init.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
    }
    // SAFETY: this process is single-threaded; fork is safe to call.
    let entry = unsafe { libc::fork() };
    if entry < 0 {
        let _ = sys::write_all(
            &sync,
            format!("setup fork entrypoint: {}", sys::errno_name(sys::errno())).as_bytes(),
        );
        // SAFETY: ends the process.
        unsafe { libc::_exit(crate::spawn::SETUP_FAILED) };
    }
    if entry == 0 {
        exec_entrypoint(spec, &sync);
    }
    drop(sync);
    supervise(entry, &all)
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all-zero is a valid (empty) value that
    // sigemptyset/sigfillset then initialise properly.
    unsafe { core::mem::zeroed() }
}

fn supervise(entry: libc::pid_t, all: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: `all` is a valid, initialised signal set.
        let sig = unsafe { libc::sigwaitinfo(all, core::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            if let Some(exit) = reap(entry) {
                // SAFETY: ends the process; the kernel then kills the rest of
                // the pid namespace.
                unsafe { libc::_exit(exit.code()) };
            }
        } else {
            let _ = sys::kill(entry, sig);
        }
    }
}

/// Reap every child that has exited; return the entrypoint's end if it was
/// among them.
fn reap(entry: libc::pid_t) -> Option<Exit> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == entry {
            result = Exit::from_wait_status(status);
        }
    }
}

/// In the entrypoint's process: clean signal state, identity, cwd, exec.
fn exec_entrypoint(spec: &ContainerSpec, sync: &OwnedFd) -> ! {
    // SAFETY: plain syscalls on this process's own state; the sigset is
    // initialised by sigemptyset before use.
    unsafe {
        libc::setsid();
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none = empty_sigset();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, core::ptr::null_mut());
    }
    if let Err(e) = set_identity(spec.uid, spec.gid).and_then(|()| sys::chdir(&spec.cwd)) {
        let _ = sys::write_all(sync, format!("setup {e}").as_bytes());
        // SAFETY: ends the process.
        unsafe { libc::_exit(crate::spawn::SETUP_FAILED) };
    }
    let argv = null_terminated(&spec.argv);
    let envp = null_terminated(&spec.env);
    let path = spec.argv.first().map(CString::as_c_str);
    let errno = match path {
        Some(p) => {
            // SAFETY: argv and envp are NULL-terminated arrays of pointers to
            // C strings owned by `spec`, alive for the call.
            unsafe { libc::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            sys::errno()
        }
        None => libc::ENOENT,
    };
    let shown = path
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = sys::write_all(sync, format!("exec {errno} {shown}").as_bytes());
    let code = if errno == libc::ENOENT || errno == libc::ENOTDIR {
        NOT_FOUND
    } else {
        NOT_EXECUTABLE
    };
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

fn set_identity(uid: u32, gid: u32) -> sys::SysResult<()> {
    // SAFETY: setgroups with an empty list, then setgid/setuid: plain syscalls.
    unsafe {
        if libc::setgroups(0, core::ptr::null()) != 0 {
            return Err(sys::SysError {
                op: "setgroups",
                arg: "[]".into(),
                errno: sys::errno(),
            });
        }
        if libc::setgid(gid) != 0 {
            return Err(sys::SysError {
                op: "setgid",
                arg: gid.to_string(),
                errno: sys::errno(),
            });
        }
        if libc::setuid(uid) != 0 {
            return Err(sys::SysError {
                op: "setuid",
                arg: uid.to_string(),
                errno: sys::errno(),
            });
        }
    }
    Ok(())
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(core::iter::once(core::ptr::null()))
        .collect()
}
