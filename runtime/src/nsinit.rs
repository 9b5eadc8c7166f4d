//! The namespace init: PID 1 inside every container, a forked copy of cairn.
//!
//! It starts the entrypoint as its child, forwards every signal it receives
//! to it (or to its process group), and reaps every process reparented to
//! it. When the entrypoint exits, the processes left in the container get
//! the stop signal, then SIGKILL after the grace period; then it exits with
//! the entrypoint's status (its code, or 128 + the signal that killed it).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::ForkResult;

use crate::exit::{Exit, SETUP_FAILED};
use crate::identity;
use crate::report::{self, Stage};
use crate::seccomp::Filter;
use crate::spec::ContainerSpec;
use crate::sys;

/// Exit code when the entrypoint does not exist.
pub const NOT_FOUND: i32 = 127;
/// Exit code when the entrypoint exists but cannot be executed.
pub const NOT_EXECUTABLE: i32 = 126;

/// Fork the entrypoint and supervise it. Never returns.
///
/// `exits` is the container's exec directory (see `crate::exec`): the
/// status of every other child it reaps is offered there.
pub fn run(spec: &ContainerSpec, sync: OwnedFd, filter: Option<&Filter>, exits: Option<OwnedFd>) -> ! {
    // Blocking every signal means they queue for sigtimedwait instead of
    // being ignored by a namespace init.
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    if spec.console {
        if let Err(e) = crate::console::take_controlling_terminal() {
            report_and_exit(&sync, Stage::ControllingTerminal, e.errno, SETUP_FAILED);
        }
    }
    // SAFETY: this process is single-threaded; fork is safe to call.
    let entry = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => child.as_raw(),
        Ok(ForkResult::Child) => exec_entrypoint(spec, &sync, filter),
        Err(e) => report_and_exit(&sync, Stage::Fork, e as i32, SETUP_FAILED),
    };
    drop(sync);
    let target = if spec.signal_group { -entry } else { entry };
    supervise(entry, target, spec, &all, exits.as_ref())
}

/// Wait for a signal, at most `timeout` (forever with `None`). Raw libc:
/// nix has neither sigwaitinfo nor sigtimedwait, and its `Signal` has no
/// realtime signals, which are forwarded too.
fn next_signal(all: &SigSet, timeout: Option<Duration>) -> Option<i32> {
    let sig = match timeout {
        None => {
            // SAFETY: `all` is a valid, initialised signal set.
            unsafe { libc::sigwaitinfo(all.as_ref(), core::ptr::null_mut()) }
        }
        Some(t) => {
            let ts = libc::timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ };
            // SAFETY: `all` and `ts` are valid for the call.
            unsafe { libc::sigtimedwait(all.as_ref(), core::ptr::null_mut(), &ts) }
        }
    };
    (sig > 0).then_some(sig)
}

fn supervise(
    entry: libc::pid_t,
    target: libc::pid_t,
    spec: &ContainerSpec,
    all: &SigSet,
    exits: Option<&OwnedFd>,
) -> ! {
    let mut status = None;
    // Phase 1: the entrypoint runs; forward signals, reap orphans.
    while status.is_none() {
        match next_signal(all, None) {
            Some(libc::SIGCHLD) => status = reap(entry, exits).0,
            Some(sig) => {
                let _ = sys::kill(target, sig);
            }
            None => {}
        }
    }
    let exit = status.unwrap_or(Exit::Code(0));
    // Phase 2: the entrypoint is gone; stop what is left.
    if reap(entry, exits).1 {
        // kill(-1) from a pid namespace's init signals every other process
        // of the namespace.
        let _ = sys::kill(-1, spec.stop_signal);
        let deadline = Instant::now() + Duration::from_millis(spec.stop_grace_ms.into());
        loop {
            if !reap(entry, exits).1 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = sys::kill(-1, libc::SIGKILL);
                // SAFETY: blocking waits with a valid (null) status pointer,
                // until no child is left. Raw libc: nix's waitpid fails with
                // EINVAL after reaping a child a realtime signal killed.
                while unsafe { libc::waitpid(-1, core::ptr::null_mut(), 0) } > 0 {}
                break;
            }
            let _ = next_signal(all, Some(left));
        }
    }
    sys::exit_now(exit.code())
}

/// Reap every child that has exited. Returns the entrypoint's end if it was
/// among them, and whether any child is still running.
fn reap(entry: libc::pid_t, exits: Option<&OwnedFd>) -> (Option<Exit>, bool) {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer. Raw libc: PID 1 needs the
        // raw status, and nix's waitpid fails with EINVAL (the child reaped,
        // its status lost) when a realtime signal killed it.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return (result, true);
        }
        if pid < 0 {
            return (result, false);
        }
        if pid == entry {
            result = Exit::from_wait_status(status);
        } else if let Some(dir) = exits {
            crate::exec::offer_status(dir, pid, status);
        }
    }
}

fn report_and_exit(sync: &OwnedFd, stage: Stage, errno: i32, code: i32) -> ! {
    report::write(sync, stage, errno);
    sys::exit_now(code)
}

/// In the entrypoint's process: clean signal state, rlimits, capabilities,
/// identity, no_new_privs, seccomp, cwd, exec.
fn exec_entrypoint(spec: &ContainerSpec, sync: &OwnedFd, filter: Option<&Filter>) -> ! {
    // With a console the entrypoint stays in the init's session (the
    // terminal's) as the foreground process group, like under tini; every
    // signal, SIGTTOU included, is still blocked here. Otherwise it gets a
    // session of its own.
    if spec.console {
        if let Err(e) = crate::console::become_foreground() {
            report_and_exit(sync, Stage::Foreground, e.errno, SETUP_FAILED);
        }
    } else {
        let _ = nix::unistd::setsid();
    }
    setup_and_exec(spec, &spec.argv, false, sync, filter)
}

/// Shared by the entrypoint and `cairn-ctl exec` (crate::exec): clean
/// signal state, rlimits, bounding set, seccomp, identity, capabilities,
/// cwd, no_new_privs, then execve of `argv` (`argv[0]` as given, or with
/// `search` looked up in the spec's `PATH` when it has no `/`). A failure is written to
/// `sync` and the process exits (127 not found, 126 not executable).
pub(crate) fn setup_and_exec(
    spec: &ContainerSpec,
    argv: &[CString],
    search: bool,
    sync: &OwnedFd,
    filter: Option<&Filter>,
) -> ! {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler. Raw libc: nix's `Signal`
            // has no realtime signals.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let at = |stage: Stage| move |e: sys::SysError| (stage, e.errno);
    let setup =
        identity::set_rlimits(&spec.rlimits)
            .map_err(at(Stage::Rlimits))
            .and_then(|()| identity::drop_bounding(spec.capabilities).map_err(at(Stage::Bounding)))
            .and_then(|()| match filter {
                // Installed while still privileged, so it needs no no_new_privs.
                Some(f) => f.install().map_err(|e| (Stage::Seccomp, seccomp_errno(&e))),
                None => Ok(()),
            })
            .and_then(|()| identity::set_ids(spec.uid, spec.gid, &spec.groups).map_err(at(Stage::Identity)))
            .and_then(|()| identity::set_capabilities(spec.capabilities).map_err(at(Stage::Capabilities)))
            .and_then(|()| sys::chdir(&spec.cwd).map_err(at(Stage::Cwd)))
            .and_then(|()| {
                if spec.no_new_privs {
                    identity::set_no_new_privs().map_err(at(Stage::NoNewPrivs))
                } else {
                    Ok(())
                }
            });
    if let Err((stage, errno)) = setup {
        report_and_exit(sync, stage, errno, SETUP_FAILED);
    }
    let mut errno = libc::ENOENT;
    let name = argv.first().map(CString::as_bytes).unwrap_or_default();
    let paths = if search { candidates(name, &spec.env) } else { CString::new(name).into_iter().collect() };
    for path in paths {
        let Err(e) = nix::unistd::execve(&path, argv, &spec.env);
        // Like execvp: a later directory may have it; EACCES is kept.
        if errno != libc::EACCES || e == nix::errno::Errno::EACCES {
            errno = e as i32;
        }
    }
    let code = if errno == libc::ENOENT || errno == libc::ENOTDIR { NOT_FOUND } else { NOT_EXECUTABLE };
    report_and_exit(sync, Stage::Exec, errno, code)
}

/// The paths to try for `name`: itself when it has a `/` (or is empty),
/// else each directory of `PATH` in `env` (a default without one).
fn candidates(name: &[u8], env: &[CString]) -> Vec<CString> {
    if name.is_empty() || name.contains(&b'/') {
        return CString::new(name).into_iter().collect();
    }
    let path = env
        .iter()
        .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(|b| *b == b':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| CString::new([d, b"/", name].concat()).ok())
        .collect()
}

/// The errno a failed seccomp install reports.
fn seccomp_errno(e: &crate::seccomp::SeccompError) -> i32 {
    match e {
        crate::seccomp::SeccompError::Install(io) => io.raw_os_error().unwrap_or(libc::EINVAL),
        _ => libc::EINVAL,
    }
}
