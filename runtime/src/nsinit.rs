//! The namespace init: PID 1 inside every container, a forked copy of cairn.
//!
//! It forks the entrypoint's process before it builds the container's
//! filesystem, so that the two work side by side ([`Entry`]), lets it
//! execute once the filesystem is ready, forwards every signal it receives
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

/// The entrypoint's process, forked before the init builds the container's
/// filesystem. It makes itself ready for exec (signals, rlimits, bounding
/// set, seccomp, identity, capabilities, no_new_privs: nothing of it needs
/// the container's files) while the init mounts, then waits for
/// [`Entry::go`]; only then does it change into the working directory and
/// execute. The init's `pivot_root` moves its root along (the kernel moves
/// every process whose root is the old one), and it holds no descriptor of
/// the old root. If the init fails instead, it exits, and the kernel kills
/// the entrypoint's process with the rest of the pid namespace.
#[derive(Debug)]
pub struct Entry {
    /// Its pid (in the container's pid namespace).
    pid: libc::pid_t,
    /// The write end of the pipe it waits on.
    go: OwnedFd,
}

/// Fork the entrypoint's process (see [`Entry`]). Call it once the init is
/// in every namespace the entrypoint needs (the network namespace is
/// entered with `setns`, which a forked process does not follow) and
/// before it builds the filesystem. Every signal is blocked from here on:
/// they queue for the init's `sigtimedwait` instead of being ignored by a
/// namespace init. A failure is reported on `sync` and the init exits.
pub fn fork_entry(spec: &ContainerSpec, sync: &OwnedFd, filter: Option<&Filter>) -> Entry {
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    if spec.console {
        if let Err(e) = crate::console::take_controlling_terminal() {
            report_and_exit(sync, Stage::ControllingTerminal, e.errno, SETUP_FAILED);
        }
    }
    let (go_rd, go_wr) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => report_and_exit(sync, Stage::Fork, e.errno, SETUP_FAILED),
    };
    // SAFETY: this process is single-threaded; fork is safe to call.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Entry { pid: child.as_raw(), go: go_wr },
        Ok(ForkResult::Child) => {
            drop(go_wr);
            entry_process(spec, sync, filter, go_rd)
        }
        Err(e) => report_and_exit(sync, Stage::Fork, e as i32, SETUP_FAILED),
    }
}

impl Entry {
    /// The filesystem is ready: let the entrypoint execute, then forward
    /// signals to it and reap until it exits. Never returns.
    ///
    /// `exits` is the container's exec directory (see `crate::exec`): the
    /// status of every other child it reaps is offered there.
    pub fn go(self, spec: &ContainerSpec, sync: OwnedFd, exits: Option<OwnedFd>) -> ! {
        // Should the entrypoint have failed already (it reported why), the
        // write fails with EPIPE (SIGPIPE is blocked) and its exit is reaped below.
        let _ = sys::write_all(&self.go, b"1");
        drop(self.go);
        drop(sync);
        let target = if spec.signal_group { -self.pid } else { self.pid };
        supervise(self.pid, target, spec, &SigSet::all(), exits.as_ref())
    }
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

/// The entrypoint's process (see [`Entry`]): its session, everything that
/// needs no files, then the wait for the init's go-ahead, then exec. An
/// empty read means the init gave up (it reported why): nothing runs.
fn entry_process(spec: &ContainerSpec, sync: &OwnedFd, filter: Option<&Filter>, go: OwnedFd) -> ! {
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
    prepare(spec, sync, filter);
    if sys::read_to_end(&go, 1).map_or(true, |b| b.is_empty()) {
        sys::exit_now(SETUP_FAILED);
    }
    drop(go);
    exec_prepared(spec, &spec.argv, false, sync)
}

/// Shared by the entrypoint and `cairn-ctl exec` (crate::exec): [`prepare`],
/// then [`exec_prepared`].
pub(crate) fn setup_and_exec(
    spec: &ContainerSpec,
    argv: &[CString],
    search: bool,
    sync: &OwnedFd,
    filter: Option<&Filter>,
) -> ! {
    prepare(spec, sync, filter);
    exec_prepared(spec, argv, search, sync)
}

/// Everything before exec that needs none of the container's files: signal
/// dispositions, rlimits, bounding set, seccomp, identity, capabilities,
/// no_new_privs. Signals stay blocked. A failure is written to `sync` and
/// the process exits.
fn prepare(spec: &ContainerSpec, sync: &OwnedFd, filter: Option<&Filter>) {
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler. Raw libc: nix's `Signal`
            // has no realtime signals.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
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
}

/// The working directory (as the container's user, in its root), the
/// signal mask cleared, then execve of `argv` (`argv[0]` as given, or with
/// `search` looked up in the spec's `PATH` when it has no `/`). A failure
/// is written to `sync` and the process exits (127 not found, 126 not
/// executable).
fn exec_prepared(spec: &ContainerSpec, argv: &[CString], search: bool, sync: &OwnedFd) -> ! {
    if let Err(e) = sys::chdir(&spec.cwd) {
        report_and_exit(sync, Stage::Cwd, e.errno, SETUP_FAILED);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
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
