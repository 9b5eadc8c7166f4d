//! Health checks by command (the command form of [`crate::health`]).
//!
//! When a check is due, PID 1 forks a helper and goes on: the helper runs
//! the probe inside the container exactly as `cairn-ctl exec` runs a
//! command ([`cairn_runtime::exec`]: the container's namespaces, root,
//! ids, capabilities, no_new_privs and seccomp filter; stdin, stdout and
//! stderr on /dev/null), waits for its exit status or its timeout, and
//! writes one line, the [`Outcome`], to a pipe PID 1 holds; then it
//! exits. PID 1 reads the line (non-blocking) when it reaps the helper:
//! it never waits for a probe.
//!
//! The probe runs in a child cgroup of the container's, `probe/` (no
//! controllers of its own: it is charged to the container's limits, and
//! the container's device filter and freezer apply to it). So a probe
//! and everything it forked is killed with one write to that cgroup's
//! `cgroup.kill`: by the helper at the timeout, by PID 1 when the
//! container stops or pauses, and nothing of it outlives the check.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cairn_runtime::exec::{self, Waited};
use cairn_runtime::sys::{self, SysError};
use cairn_runtime::{Cgroup, Exit};

use crate::exec::Target;

/// How long the helper waits for a probe it killed at its timeout to be
/// reaped by the container's init (so its status FIFO is removed cleanly).
const KILL_WAIT: Duration = Duration::from_millis(500);

/// Longest outcome line read from a helper.
const OUTCOME_MAX: usize = 512;

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited (`Code(0)`: the check passed).
    Exited(Exit),
    /// Still running at its timeout: killed.
    TimedOut,
    /// The container's init ended first.
    ContainerGone,
    /// It could not be started (what failed).
    NotStarted(String),
}

impl Outcome {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        *self == Outcome::Exited(Exit::Code(0))
    }

    /// The line the helper writes.
    pub fn line(&self) -> String {
        match self {
            Outcome::Exited(Exit::Code(c)) => format!("exit {c}"),
            Outcome::Exited(Exit::Signal(s)) => format!("signal {s}"),
            Outcome::TimedOut => "timeout".into(),
            Outcome::ContainerGone => "gone".into(),
            Outcome::NotStarted(why) => format!("error {}", why.replace('\n', " ")),
        }
    }

    /// What PID 1 read from the helper's pipe. Nothing, or anything it
    /// cannot read: the helper died without an outcome.
    pub fn parse(bytes: &[u8]) -> Outcome {
        let died = || Outcome::NotStarted("the probe's helper ended without an outcome".into());
        let Ok(text) = std::str::from_utf8(bytes) else { return died() };
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match (word, rest.parse::<i32>()) {
            ("exit", Ok(c)) => Outcome::Exited(Exit::Code(c)),
            ("signal", Ok(s)) => Outcome::Exited(Exit::Signal(s)),
            ("timeout", _) if rest.is_empty() => Outcome::TimedOut,
            ("gone", _) if rest.is_empty() => Outcome::ContainerGone,
            ("error", _) if !rest.is_empty() => Outcome::NotStarted(rest.into()),
            _ => died(),
        }
    }

    /// The fields of its `container.probe-failed` event (after `name`).
    pub fn fields(&self, timeout: Duration) -> Vec<(&'static str, String)> {
        match self {
            Outcome::Exited(Exit::Code(c)) => vec![("reason", "exit".into()), ("code", c.to_string())],
            Outcome::Exited(Exit::Signal(s)) => vec![("reason", "signal".into()), ("signal", s.to_string())],
            Outcome::TimedOut => vec![("reason", "timeout".into()), ("timeout_ms", timeout.as_millis().to_string())],
            Outcome::ContainerGone => vec![("reason", "container gone".into())],
            Outcome::NotStarted(why) => vec![("reason", "not started".into()), ("error", why.clone())],
        }
    }
}

/// The cgroup a container's probes run in.
pub fn cgroup_of(container: &Cgroup) -> Cgroup {
    Cgroup::at(&format!("{}/probe", container.path))
}

/// A probe in flight, as PID 1 sees it.
#[derive(Debug)]
pub struct Running {
    /// Its helper (a child of PID 1).
    pub helper: libc::pid_t,
    /// The read end of the helper's outcome pipe (non-blocking). Closing
    /// it tells a helper still waiting that nobody wants the outcome.
    outcome: OwnedFd,
}

impl Running {
    /// The outcome, once the helper was reaped (it wrote it before exiting).
    pub fn outcome(self) -> Outcome {
        let mut buf = [0u8; OUTCOME_MAX];
        match nix::unistd::read(&self.outcome, &mut buf) {
            Ok(n) => Outcome::parse(buf.get(..n).unwrap_or(&[])),
            Err(_) => Outcome::parse(&[]),
        }
    }
}

/// In PID 1: fork the helper that runs `argv` in `target`, killing it
/// `timeout` after the start.
pub fn start(target: &Target<'_>, argv: &[CString], timeout: Duration) -> Result<Running, SysError> {
    let cgroup = cgroup_of(target.cgroup);
    sys::mkdir(&cgroup.path, 0o755)?;
    let (rd, wr) = sys::pipe()?;
    let flags = nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&rd, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(sys::err("fcntl O_NONBLOCK", "probe outcome pipe"))?;
    // SAFETY: PID 1 is single-threaded; the child only runs `helper` and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Running { helper: child.as_raw(), outcome: rd }),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            sys::exit_now(helper(&wr, target, argv, &cgroup, Instant::now() + timeout))
        }
        Err(e) => Err(sys::err("fork", "probe helper")(e)),
    }
}

/// In PID 1: kill what runs in the container's probe cgroup (the probe
/// and whatever it forked). The helper notices the closed pipe and exits.
pub fn kill(container: &Cgroup, running: Running, helper_too: bool) -> Result<(), SysError> {
    if helper_too {
        // Stuck before the probe ran (say, joining a frozen cgroup).
        let _ = sys::kill(running.helper, libc::SIGKILL);
    }
    drop(running);
    cgroup_of(container).kill_all()
}

/// The helper: run the probe, write its outcome, exit.
fn helper(wr: &OwnedFd, target: &Target<'_>, argv: &[CString], cgroup: &Cgroup, deadline: Instant) -> i32 {
    // Nothing of PID 1's but the pipe: the probe must not inherit the rest.
    if sys::close_all_but(&[wr.as_raw_fd()]).is_err() {
        return 1;
    }
    let outcome = run(wr, target, argv, cgroup, deadline);
    // The outcome, or nothing if PID 1 stopped listening (it reads
    // non-blocking after reaping this process, so a short line is whole).
    if let Some(o) = outcome {
        let _ = sys::write_all(wr, o.line().as_bytes());
    }
    0
}

fn run(wr: &OwnedFd, target: &Target<'_>, argv: &[CString], cgroup: &Cgroup, deadline: Instant) -> Option<Outcome> {
    let null = || sys::open("/dev/null", libc::O_RDWR);
    let stdio = match (null(), null(), null()) {
        (Ok(a), Ok(b), Ok(c)) => [a, b, c],
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Some(Outcome::NotStarted(e.to_string())),
    };
    let started = match exec::start(target.spec, target.filter, cgroup, target.pid, argv, &stdio, false) {
        Ok(s) => s,
        Err(e) => return Some(Outcome::NotStarted(e.to_string())),
    };
    drop(stdio);
    if let Some(r) = started.failed {
        // Its status comes too (126, 127 or the set-up failure code), but
        // the report says more.
        return Some(Outcome::NotStarted(r.to_string()));
    }
    // The pipe's write end: readable never, in error once PID 1 closed
    // the read end (the container stopped: nobody wants the outcome).
    match started.wait_until(wr.as_fd(), Some(deadline)) {
        Waited::Exited(x) => Some(Outcome::Exited(x)),
        Waited::ContainerGone => Some(Outcome::ContainerGone),
        Waited::Hangup => None,
        Waited::TimedOut => {
            let _ = cgroup.kill_all();
            // Its status (SIGKILL) comes once the container's init reaped
            // it; waited for only so its FIFO goes away with `started`.
            let _ = started.wait_until(wr.as_fd(), Some(Instant::now() + KILL_WAIT));
            Some(Outcome::TimedOut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_pipe() {
        for o in [
            Outcome::Exited(Exit::Code(0)),
            Outcome::Exited(Exit::Code(3)),
            Outcome::Exited(Exit::Signal(9)),
            Outcome::TimedOut,
            Outcome::ContainerGone,
            Outcome::NotStarted("setns user: EPERM".into()),
        ] {
            assert_eq!(Outcome::parse(o.line().as_bytes()), o, "{}", o.line());
        }
        assert!(Outcome::Exited(Exit::Code(0)).passed());
        for o in [Outcome::Exited(Exit::Code(1)), Outcome::Exited(Exit::Signal(15)), Outcome::TimedOut] {
            assert!(!o.passed(), "{o:?}");
        }
    }

    #[test]
    fn a_helper_that_said_nothing_or_nonsense_failed_the_check() {
        for bad in [&b""[..], b"exit", b"exit x", b"timeout 3", b"gone now", b"error", b"\xff\xfe", b"pass"] {
            let o = Outcome::parse(bad);
            assert!(matches!(o, Outcome::NotStarted(_)) && !o.passed(), "{bad:?}: {o:?}");
        }
    }

    #[test]
    fn a_probe_runs_in_a_child_cgroup_of_its_container() {
        let c = Cgroup::for_container("web");
        assert_eq!(cgroup_of(&c).path, format!("{}/probe", c.path));
    }

    #[test]
    fn failure_fields_name_the_reason() {
        let t = Duration::from_millis(500);
        assert_eq!(
            Outcome::Exited(Exit::Code(3)).fields(t),
            vec![("reason", "exit".to_string()), ("code", "3".to_string())]
        );
        assert_eq!(Outcome::TimedOut.fields(t), vec![("reason", "timeout".to_string()), ("timeout_ms", "500".into())]);
    }
}
