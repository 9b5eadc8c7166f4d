//! `cairn-ctl exec`: run a command inside a running container.
//!
//! Called in a helper process PID 1 forked for the request (never in PID 1
//! itself). The helper forks a joiner, which moves itself into the
//! container's cgroup, then `setns`es into the namespaces of the
//! container's init in nsenter's order (user first, so the others are
//! joined with its capabilities; mount last). The joiner stays in the
//! host's pid namespace (`setns` moves only its children), and an orphan
//! goes to the init of its dead parent's pid namespace: so it forks a
//! middle process, in the container's, which forks the command's process
//! and exits. The command's process is reparented to the container's init,
//! which reaps it like any orphan. The command's process waits for the helper's go-ahead, takes the
//! container's root (the init's `/proc/PID/root`, as `nsenter --root`),
//! its stdio (the client's descriptors), then does exactly what the
//! entrypoint does before execve ([`crate::nsinit::setup_and_exec`]):
//! rlimits, bounding set, the container's seccomp filter, uid/gid/groups,
//! capabilities, cwd, no_new_privs.
//!
//! The exit status: only the parent can wait for a process, and that is
//! the container's init. So the init offers the status of every child it
//! reaps other than the entrypoint: it opens `<pid>` (its pid in the
//! container) in the container's exec directory (a descriptor it has kept
//! since it was created) write-only and non-blocking, and writes the
//! 4-byte wait status. No such name (nobody waits): ENOENT, nothing more.
//! The helper makes that name a FIFO and opens it for reading before the
//! command may run, so the status is there when it ends. The init never
//! blocks on it (O_NONBLOCK open and write; a FIFO without a reader is
//! ENXIO).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::exit::{Exit, SETUP_FAILED};
use crate::report::{self, Report, Stage};
use crate::seccomp::Filter;
use crate::spec::ContainerSpec;
use crate::sys::{self, SysError, SysResult};
use crate::Cgroup;

/// The namespaces joined, in this order (nsenter's: the user namespace
/// first, the mount namespace last). One that is the helper's own (e.g.
/// the host's network) is not joined.
pub const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// [`Stage::Join`]'s step for the cgroup (the namespaces are 0..=6).
pub const STEP_CGROUP: u16 = 7;
/// [`Stage::Join`]'s step for the root.
pub const STEP_ROOT: u16 = 8;
/// [`Stage::Join`]'s step for the stdio descriptors.
pub const STEP_STDIO: u16 = 9;
/// [`Stage::Join`]'s step for taking the terminal (`--tty`).
pub const STEP_TTY: u16 = 10;

/// Why an exec did not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Opening what is joined, pipes, the FIFO, the fork.
    #[error("{0}")]
    Sys(SysError),
    /// The joiner or the command's process failed at a step.
    #[error("{0}")]
    Setup(Report),
}

/// The container's exec directory on the host (`<state dir>/exec`, mode
/// 0711: a user namespace's root may reach a FIFO in it through its init's
/// descriptor, nobody may list it) and a descriptor of it, for its init.
pub fn exits_dir(spec: &ContainerSpec) -> SysResult<OwnedFd> {
    let path = format!("{}/exec", spec.state_dir());
    sys::mkdir_all(&path, 0o711)?;
    let c = sys::cstr(&path)?;
    // SAFETY: `c` is a valid C string; chmod changes only the mode.
    if unsafe { libc::chmod(c.as_ptr(), 0o711) } != 0 {
        return Err(SysError { op: "chmod", arg: path, errno: sys::errno() });
    }
    sys::open(&path, libc::O_PATH | libc::O_DIRECTORY)
}

/// In the container's init, after reaping `pid` (its pid there) that is
/// not the entrypoint: give its wait status to whoever waits for it.
pub fn offer_status(dir: &OwnedFd, pid: libc::pid_t, status: i32) {
    let Ok(name) = CString::new(pid.to_string()) else { return };
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `dir` is an open directory descriptor and `name` a C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::unistd::write(&fd, &status.to_ne_bytes());
}

/// A command started in a container.
#[derive(Debug)]
pub struct Started {
    /// Its pid in the container (the middle process that forked it knows
    /// no other).
    pub ns_pid: libc::pid_t,
    /// Read end of its FIFO (non-blocking).
    fifo: OwnedFd,
    /// Its FIFO's path.
    fifo_path: String,
    /// The container's init (to notice it is gone).
    init: OwnedFd,
    /// Set when its setup failed before execve (it exits with 126, 127 or
    /// [`SETUP_FAILED`] and its status comes all the same).
    pub failed: Option<Report>,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// Its status, from the container's init.
    Exited(Exit),
    /// The container's init is gone: its status is lost.
    ContainerGone,
    /// `hangup` became readable (the client is gone or spoke).
    Hangup,
    /// The deadline given to [`Started::wait_until`] passed first.
    TimedOut,
}

/// One open namespace to join.
struct Ns {
    index: u16,
    fd: OwnedFd,
}

fn same_ns(a: &str, b: &str) -> bool {
    match (nix::sys::stat::stat(a), nix::sys::stat::stat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// Run `argv` in the container whose init is `init_pid` (host pid), with
/// `stdio` as its descriptors 0, 1, 2. Returns once it has executed its
/// command, or failed to (its status comes in both cases: see
/// [`Started::failed`]). With `tty`, its stdin (a pseudo-terminal's slave)
/// becomes its controlling terminal. Must be called from a single-threaded
/// process.
#[allow(clippy::too_many_arguments)]
pub fn start(
    spec: &ContainerSpec,
    filter: Option<&Filter>,
    cgroup: &Cgroup,
    init_pid: libc::pid_t,
    argv: &[CString],
    stdio: &[OwnedFd; 3],
    tty: bool,
) -> Result<Started, ExecError> {
    let sysfail = ExecError::Sys;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, init_pid, 0) };
    if raw < 0 {
        return Err(sysfail(SysError { op: "pidfd_open", arg: init_pid.to_string(), errno: sys::errno() }));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let init = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut namespaces = Vec::new();
    for (index, (name, _)) in (0u16..).zip(NAMESPACES) {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        if same_ns(&theirs, &format!("/proc/self/ns/{name}")) {
            continue;
        }
        namespaces.push(Ns { index, fd: sys::open(&theirs, libc::O_RDONLY).map_err(sysfail)? });
    }
    let root = sys::open(&format!("/proc/{init_pid}/root"), libc::O_RDONLY | libc::O_DIRECTORY).map_err(sysfail)?;
    let procs = sys::open(&format!("{}/cgroup.procs", cgroup.path), libc::O_WRONLY).map_err(sysfail)?;
    // An init that has ended already (not yet reaped by PID 1): give up now.
    if poll_one(init.as_fd(), 0) {
        return Err(sysfail(SysError { op: "container init", arg: init_pid.to_string(), errno: libc::ESRCH }));
    }
    let (report_rd, report_wr) = sys::pipe().map_err(sysfail)?;
    let (go_rd, go_wr) = sys::pipe().map_err(sysfail)?;
    let (pid_rd, pid_wr) = sys::pipe().map_err(sysfail)?;
    let dir = format!("{}/exec", spec.state_dir());

    // SAFETY: the caller is single-threaded; the child only makes syscalls
    // and exits.
    let joiner = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(sysfail(sys::err("fork", "exec joiner")(e))),
        Ok(nix::unistd::ForkResult::Child) => {
            drop((report_rd, go_wr, pid_rd));
            join(&procs, &namespaces, &report_wr);
            let cmd = ForkedCommand { root: &root, stdio, tty, go: go_rd, report: report_wr };
            fork_command(spec, filter, argv, cmd, pid_wr)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
    };
    drop((report_wr, go_rd, pid_wr, root, procs, namespaces));
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    while unsafe { libc::waitpid(joiner, &mut status, 0) } < 0 && sys::errno() == libc::EINTR {}
    let pid_bytes = sys::read_to_end(&pid_rd, 4).map_err(sysfail)?;
    let Ok(pid_bytes) = <[u8; 4]>::try_from(pid_bytes.as_slice()) else {
        // The joiner failed: its report says where.
        let bytes = sys::read_to_end(&report_rd, 64).map_err(sysfail)?;
        return Err(match report::decode(&bytes) {
            Ok(r) => ExecError::Setup(r),
            Err(_) => sysfail(SysError { op: "exec joiner", arg: format!("status {status:#x}"), errno: libc::ECHILD }),
        });
    };
    let ns_pid = i32::from_ne_bytes(pid_bytes);
    let fifo_path = format!("{dir}/{ns_pid}");
    let _ = std::fs::remove_file(&fifo_path);
    nix::unistd::mkfifo(fifo_path.as_str(), nix::sys::stat::Mode::from_bits_retain(0o600))
        .map_err(|e| sysfail(sys::err("mkfifo", &fifo_path)(e)))?;
    // Writable by the container's init whoever it is mapped to; only it
    // reaches the directory (through its descriptor) besides the host.
    let c = sys::cstr(&fifo_path).map_err(sysfail)?;
    // SAFETY: `c` is a valid C string; chmod changes only the mode.
    unsafe { libc::chmod(c.as_ptr(), 0o622) };
    let fifo = sys::open(&fifo_path, libc::O_RDONLY | libc::O_NONBLOCK).map_err(sysfail)?;
    let mut started = Started { ns_pid, fifo, fifo_path, init, failed: None };
    // The go-ahead: it may run (and end) from now on.
    sys::write_all(&go_wr, b"1").map_err(sysfail)?;
    drop(go_wr);
    // EOF when it executed its command; a record when a step failed.
    let bytes = sys::read_to_end(&report_rd, 64).map_err(sysfail)?;
    started.failed = report::decode(&bytes).ok();
    Ok(started)
}

/// In the joiner: the container's cgroup, then its namespaces. Exits on failure.
fn join(procs: &OwnedFd, namespaces: &[Ns], report_wr: &OwnedFd) {
    let fail = |step: u16, errno: i32| -> ! {
        report::write_report(report_wr, Report { stage: Stage::Join, step: Some(step), errno });
        sys::exit_now(SETUP_FAILED)
    };
    // "0": the writer itself; before the namespaces, with the host's view.
    if let Err(e) = sys::write_all(procs, b"0") {
        fail(STEP_CGROUP, e.errno);
    }
    for ns in namespaces {
        let flag = NAMESPACES.get(usize::from(ns.index)).map_or(0, |n| n.1);
        // SAFETY: setns with an open namespace descriptor and its type.
        if unsafe { libc::setns(ns.fd.as_raw_fd(), flag) } != 0 {
            fail(ns.index, sys::errno());
        }
    }
}

/// What the command's process needs from the joiner.
struct ForkedCommand<'a> {
    root: &'a OwnedFd,
    stdio: &'a [OwnedFd; 3],
    tty: bool,
    go: OwnedFd,
    report: OwnedFd,
}

/// In the joiner, inside the namespaces. A process is reparented to the
/// init of the pid namespace of the parent that died, so the joiner (still
/// in the host's) forks a middle process (in the container's), which forks
/// the command's process, tells the helper its pid there and exits: the
/// container's init adopts it.
fn fork_command(
    spec: &ContainerSpec,
    filter: Option<&Filter>,
    argv: &[CString],
    cmd: ForkedCommand<'_>,
    pid_wr: OwnedFd,
) -> ! {
    let fork_or_exit = |report: &OwnedFd| {
        // SAFETY: single-threaded (a fork of a single-threaded process).
        match unsafe { nix::unistd::fork() } {
            Ok(r) => r,
            Err(e) => {
                report::write_report(report, Report { stage: Stage::Fork, step: None, errno: e as i32 });
                sys::exit_now(SETUP_FAILED)
            }
        }
    };
    if let nix::unistd::ForkResult::Parent { .. } = fork_or_exit(&cmd.report) {
        // The joiner: the middle process goes on alone.
        sys::exit_now(0)
    }
    match fork_or_exit(&cmd.report) {
        nix::unistd::ForkResult::Parent { child } => {
            let _ = sys::write_all(&pid_wr, &child.as_raw().to_ne_bytes());
            sys::exit_now(0)
        }
        nix::unistd::ForkResult::Child => {
            drop(pid_wr);
            command(spec, filter, argv, cmd)
        }
    }
}

/// The command's process: wait for the go-ahead, take the root and stdio,
/// then the entrypoint's own setup and execve.
fn command(spec: &ContainerSpec, filter: Option<&Filter>, argv: &[CString], cmd: ForkedCommand<'_>) -> ! {
    let fail = |step: u16, errno: i32| -> ! {
        report::write_report(&cmd.report, Report { stage: Stage::Join, step: Some(step), errno });
        sys::exit_now(SETUP_FAILED)
    };
    if sys::read_to_end(&cmd.go, 1).map_or(true, |b| b.is_empty()) {
        // The helper gave up: nothing runs.
        sys::exit_now(SETUP_FAILED);
    }
    // SAFETY: fchdir to an open directory, then chroot to it (nsenter --root).
    if unsafe { libc::fchdir(cmd.root.as_raw_fd()) } != 0 || unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        fail(STEP_ROOT, sys::errno());
    }
    for (target, fd) in (0..).zip(cmd.stdio) {
        // SAFETY: dup2 onto 0, 1, 2 from an open descriptor.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } != target {
            fail(STEP_STDIO, sys::errno());
        }
    }
    // Nothing of PID 1's (inherited through the helper) may reach the
    // command: every descriptor above stdio closes at execve (the report
    // pipe too, which tells the helper it happened).
    // SAFETY: close_range only sets flags on descriptors.
    if unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) }
        != 0
    {
        fail(STEP_STDIO, sys::errno());
    }
    let _ = nix::unistd::setsid();
    // SAFETY: TIOCSCTTY with 0 takes no pointer; it fails unless fd 0 is a
    // terminal that is nobody's controlling terminal.
    if cmd.tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        fail(STEP_TTY, sys::errno());
    }
    crate::nsinit::setup_and_exec(spec, argv, true, &cmd.report, filter)
}

/// Whether `fd` is readable within `timeout_ms` (-1: forever).
fn poll_one(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 && p.revents != 0 }
}

impl Started {
    /// Wait for its status (blocking: the helper's whole job), the
    /// container's end, or `hangup` becoming readable.
    pub fn wait(&self, hangup: BorrowedFd<'_>) -> Waited {
        self.wait_until(hangup, None)
    }

    /// [`Started::wait`], or [`Waited::TimedOut`] once `deadline` passed
    /// (the command still runs: killing it is the caller's choice).
    pub fn wait_until(&self, hangup: BorrowedFd<'_>, deadline: Option<std::time::Instant>) -> Waited {
        loop {
            if let Some(exit) = self.read_status() {
                return Waited::Exited(exit);
            }
            let mut fds = [
                libc::pollfd { fd: self.fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.init.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: hangup.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    None => return Waited::TimedOut,
                    // Rounded up: never wake just before the deadline.
                    Some(left) => i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX),
                },
            };
            // SAFETY: three valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms) };
            if n == 0 {
                continue;
            }
            if n < 0 && sys::errno() == libc::EINTR {
                continue;
            }
            let [fifo, init, client] = fds.map(|p| p.revents != 0);
            if fifo {
                continue;
            }
            if init {
                // The init offered it before it ended, if it reaped it.
                return self.read_status().map_or(Waited::ContainerGone, Waited::Exited);
            }
            if client || n < 0 {
                return Waited::Hangup;
            }
        }
    }

    fn read_status(&self) -> Option<Exit> {
        let mut buf = [0u8; 4];
        match nix::unistd::read(&self.fifo, &mut buf) {
            Ok(4) => Exit::from_wait_status(i32::from_ne_bytes(buf)),
            _ => None,
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fifo_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_first_mount_last() {
        assert_eq!(NAMESPACES.first().map(|n| n.1), Some(libc::CLONE_NEWUSER));
        assert_eq!(NAMESPACES.last().map(|n| n.1), Some(libc::CLONE_NEWNS));
    }

    #[test]
    fn a_status_is_offered_only_to_a_waiting_fifo() {
        let dir = std::env::temp_dir().join(format!("cairn-exec-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let Ok(d) = sys::open(&dir.to_string_lossy(), libc::O_PATH | libc::O_DIRECTORY) else { return };
        // Nobody waits: nothing is created.
        offer_status(&d, 41, 7 << 8);
        assert!(!dir.join("41").exists());
        let path = dir.join("42");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_retain(0o600)).unwrap();
        // A FIFO nobody reads: ENXIO, no wait.
        offer_status(&d, 42, 7 << 8);
        let rd = sys::open(&path.to_string_lossy(), libc::O_RDONLY | libc::O_NONBLOCK).unwrap();
        offer_status(&d, 42, 7 << 8);
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(&rd, &mut buf), Ok(4));
        assert_eq!(Exit::from_wait_status(i32::from_ne_bytes(buf)), Some(Exit::Code(7)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
