//! The supervisor: one single-threaded event loop over a signalfd and the
//! control socket, with timers for restart backoff and stop grace periods.
//! It starts containers in dependency order, restarts them by policy, and
//! on a shutdown request stops them in reverse order.
//!
//! Starting never blocks the loop: `spawn` returns once the container's
//! init exists, and its set-up (which runs under the container's own
//! limits) is followed by polling the report pipe. A container is
//! `Starting` until the pipe reaches EOF (the entrypoint was executed:
//! `container.started`), a report arrives (`container.failed`), its init
//! exits, or the start timeout ([`START_TIMEOUT`] by default) passes
//! (`container.start-timeout`: the cgroup is killed and it counts as a
//! set-up failure). Once a shutdown began nothing is started: units
//! waiting or in backoff are stopped, set-ups under way are killed.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cairn_format::manifest::{Restart, Stop, MAX_CONTAINERS};
use cairn_runtime::seccomp::Filter;
use cairn_runtime::spawn::{self as spawning, Setup};
use cairn_runtime::{spawn, Cgroup, ContainerSpec, Exit};

use crate::control::{self, Caller, Conn, Listener, Received, Request, MAX_CONNECTIONS};
use crate::event::event;
use crate::policy::{self, Decision};
use crate::tap::Tap;

/// How long to wait after `cgroup.kill` before giving up on a container.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// Space between the signals of one `signal` list: a stop signal discards
/// a pending SIGCONT, so each must be delivered before the next is sent.
const SIGNAL_SPACING: Duration = Duration::from_millis(20);
/// Most signals waiting to be sent at once (a request that would pass it
/// is refused whole).
const MAX_PENDING_SIGNALS: usize = 256;

/// How long a container may take from clone to executing its entrypoint
/// before its cgroup is killed, unless the kernel command line says
/// otherwise (`cairn.start_timeout_ms`). Generous: set-up under a small
/// `cpus` limit is slow, and mounting is slower still on a loaded device.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the device does once everything is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// reboot(RB_POWER_OFF).
    PowerOff,
    /// reboot(RB_AUTOBOOT).
    Reboot,
}

impl ShutdownKind {
    fn name(self) -> &'static str {
        match self {
            ShutdownKind::PowerOff => "poweroff",
            ShutdownKind::Reboot => "reboot",
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its dependencies to start.
    Waiting,
    /// Cloned; its init sets up until the entrypoint is executed. Killed
    /// at `deadline`.
    Starting { pid: libc::pid_t, deadline: Instant },
    /// Running; `pid` is its namespace init.
    Running { pid: libc::pid_t },
    /// Waiting out a restart delay.
    Backoff { until: Instant },
    /// Stop signal sent; the cgroup is killed at `deadline`.
    Stopping { pid: libc::pid_t, deadline: Instant, killed: bool },
    /// Not running and not coming back.
    Stopped,
}

/// One supervised container.
pub struct Unit {
    name: String,
    spec: Result<ContainerSpec, String>,
    deps: Vec<usize>,
    restart: Restart,
    stop: Stop,
    cgroup: Cgroup,
    state: State,
    restarts: u32,
    ever_started: bool,
    oom_baseline: u64,
    /// Its output being copied to the console: the pty's master with
    /// `console`, else the read end of its stdout/stderr pipe.
    console: Option<Tap>,
    /// `control = true`: it may use the control socket.
    control: bool,
    /// Its seccomp filter, compiled once for every start.
    filter: Option<Filter>,
    /// While starting: the read end of its report pipe (non-blocking).
    report: Option<OwnedFd>,
    /// When the current run began (its entrypoint was executed).
    run_started: Option<Instant>,
}

impl Unit {
    /// A unit; `spec` is `Err(reason)` when it can never start.
    pub fn new(
        name: &str,
        spec: Result<ContainerSpec, String>,
        deps: Vec<usize>,
        restart: Restart,
        stop: Stop,
    ) -> Self {
        let compiled = spec.and_then(|s| match spawn::seccomp_filter(&s) {
            Ok(f) => Ok((s, f)),
            Err(e) => Err(e.to_string()),
        });
        let (spec, filter) = match compiled {
            Ok((s, f)) => (Ok(s), f),
            Err(e) => (Err(e), None),
        };
        let control = spec.as_ref().is_ok_and(|s| s.control);
        Self {
            control,
            name: name.into(),
            spec,
            filter,
            deps,
            restart,
            stop,
            cgroup: Cgroup::for_container(name),
            state: State::Waiting,
            restarts: 0,
            ever_started: false,
            oom_baseline: 0,
            console: None,
            report: None,
            run_started: None,
        }
    }

    fn pid(&self) -> Option<libc::pid_t> {
        match self.state {
            State::Starting { pid, .. } | State::Running { pid } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Waiting => "waiting",
            State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Backoff { .. } => "backoff",
            State::Stopping { .. } => "stopping",
            State::Stopped => "stopped",
        }
    }
}

struct ShutdownPlan {
    kind: ShutdownKind,
    /// Units still to stop, next last.
    queue: Vec<usize>,
    current: Option<usize>,
}

/// A signal a `signal` request queued.
struct PendingSignal {
    due: Instant,
    name: String,
    signal: i32,
}

/// The supervisor.
pub struct Supervisor {
    units: Vec<Unit>,
    order: Vec<usize>,
    shutdown: Option<ShutdownPlan>,
    signals: OwnedFd,
    control: Option<Listener>,
    /// Control connections waiting for their request.
    conns: Vec<Conn>,
    /// Signals of `signal` requests, in due order.
    pending_signals: VecDeque<PendingSignal>,
    announced_started: bool,
    start_timeout: Duration,
}

impl Supervisor {
    /// `order` is the start order (indexes into `units`).
    pub fn new(units: Vec<Unit>, order: Vec<usize>, signals: OwnedFd, control: Option<Listener>) -> Self {
        Self {
            units,
            order,
            shutdown: None,
            signals,
            control,
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            pending_signals: VecDeque::new(),
            announced_started: false,
            start_timeout: START_TIMEOUT,
        }
    }

    /// How long a container may take to set up before it is killed.
    pub fn set_start_timeout(&mut self, timeout: Duration) {
        self.start_timeout = timeout;
    }

    /// Run until a shutdown has stopped every container.
    pub fn run(&mut self) -> ShutdownKind {
        loop {
            if self.shutdown.is_none() {
                self.start_ready();
            } else if let Some(kind) = self.drive_shutdown() {
                for u in &mut self.units {
                    if let Some(mut tap) = u.console.take() {
                        tap.pump(&u.name);
                        tap.flush(&u.name);
                    }
                }
                return kind;
            }
            let timeout = earliest(self.next_timeout(), self.control_timeout());
            self.wait(timeout);
            self.fire_timers();
            self.fire_control_timers();
        }
    }

    fn start_ready(&mut self) {
        for k in 0..self.order.len() {
            let Some(&i) = self.order.get(k) else {
                continue;
            };
            let Some(u) = self.units.get(i) else { continue };
            if u.state != State::Waiting {
                continue;
            }
            let deps_started = u.deps.iter().all(|d| self.units.get(*d).is_some_and(|d| d.ever_started));
            let dep_dead = u.deps.iter().find_map(|d| {
                self.units.get(*d).filter(|d| d.state == State::Stopped && !d.ever_started).map(|d| d.name.clone())
            });
            if let Some(dep) = dep_dead {
                event("container.blocked")
                    .kv("name", &u.name)
                    .kv("dependency", &dep)
                    .kv("reason", "dependency never started")
                    .emit();
                if let Some(u) = self.units.get_mut(i) {
                    u.state = State::Stopped;
                }
            } else if deps_started {
                self.start(i);
            }
        }
        let settled = |u: &Unit| !matches!(u.state, State::Waiting | State::Starting { .. });
        if !self.announced_started && self.units.iter().all(settled) {
            self.announced_started = true;
            let running = self.units.iter().filter(|u| matches!(u.state, State::Running { .. })).count();
            event("boot.containers-started").kv("running", running).kv("total", self.units.len()).emit();
        }
    }

    fn start(&mut self, i: usize) {
        let join_net = self.network_to_join(i);
        let start_timeout = self.start_timeout;
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let spec = match &u.spec {
            Ok(s) => s,
            Err(reason) => {
                event("container.failed").kv("name", &u.name).kv("reason", reason).emit();
                u.state = State::Stopped;
                return;
            }
        };
        u.oom_baseline = u.cgroup.oom_kills();
        let spec = with_restart_count(spec, u.restarts);
        match spawn(&spec, u.filter.as_ref(), &u.cgroup, join_net) {
            Ok(started) => {
                u.state = State::Starting { pid: started.pid, deadline: Instant::now() + start_timeout };
                u.report = Some(started.report);
                event("container.starting")
                    .kv("name", &u.name)
                    .kv("pid", started.pid)
                    .kv("restarts", u.restarts)
                    .emit();
                if let Some(mut old) = u.console.take() {
                    old.pump(&u.name);
                    old.flush(&u.name);
                }
                if let Some((master, pty)) = started.console {
                    event("container.console").kv("name", &u.name).kv("pty", pty).emit();
                    u.console = Some(Tap::new(master, i));
                } else if let Some(output) = started.output {
                    u.console = Some(Tap::new(output, i));
                }
            }
            Err(e) => {
                event("container.failed").kv("name", &u.name).kv("error", &e).emit();
                self.after_exit(i, Exit::Code(cairn_runtime::spawn::SETUP_FAILED));
            }
        }
    }
    /// Read unit `i`'s report pipe if it is starting; with `exit`, its init
    /// has exited. Returns true if that settled the unit for good (its
    /// set-up failed and the failure was handled), false if it is still
    /// starting or now runs (its exit, if any, is still to be handled).
    fn settle_start(&mut self, i: usize, exit: Option<Exit>) -> bool {
        let Some(u) = self.units.get_mut(i) else {
            return false;
        };
        let State::Starting { pid, .. } = u.state else {
            return false;
        };
        let setup = u.report.as_ref().map_or(Setup::Pending, spawning::poll_report);
        let exec_errno = if let Setup::ExecFailed(errno) = setup { Some(errno) } else { None };
        let failure = match setup {
            Setup::Pending if exit.is_none() => return false,
            Setup::Pending => Some(None),
            Setup::Done | Setup::ExecFailed(_) => None,
            Setup::Failed(e) => Some(Some(e)),
        };
        u.report = None;
        let Some(failure) = failure else {
            u.state = State::Running { pid };
            u.ever_started = true;
            u.run_started = Some(Instant::now());
            event("container.started").kv("name", &u.name).kv("pid", pid).kv("restarts", u.restarts).emit();
            if let Some(errno) = exec_errno {
                let path = u.spec.as_ref().ok().and_then(|s| s.argv.first()).map(|p| p.to_string_lossy().into_owned());
                event("container.exec-failed")
                    .kv("name", &u.name)
                    .kv("path", path.unwrap_or_default())
                    .kv("error", cairn_runtime::report::ErrnoName(errno))
                    .emit();
            }
            return false;
        };
        let failed = event("container.failed").kv("name", &u.name).kv("pid", pid);
        match &failure {
            Some(spawning::SpawnError::Setup(r)) => {
                // A rootfs step is named by the path it works on: the
                // plan is a pure function of the spec, the same the child ran.
                let path = r.step.and_then(|i| {
                    let plan = cairn_runtime::rootfs::plan(u.spec.as_ref().ok()?).ok()?;
                    plan.get(usize::from(i)).map(|s| s.path().to_owned())
                });
                let failed = failed.kv("stage", r.stage.name());
                let failed = match path {
                    Some(p) => failed.kv("path", p),
                    None => failed,
                };
                failed.kv("error", cairn_runtime::report::ErrnoName(r.errno)).emit()
            }
            Some(e) => failed.kv("error", e).emit(),
            None => failed.kv("error", "exited during set-up without a report").emit(),
        }
        let exit = match exit {
            Some(exit) => exit,
            None => {
                // The init exits by itself after a report; make sure
                // nothing it started outlives it.
                kill_cgroup(u, pid);
                Exit::Code(spawning::SETUP_FAILED)
            }
        };
        self.after_exit(i, exit);
        true
    }

    /// Host pid of the container whose network namespace unit `i` joins.
    fn network_to_join(&self, i: usize) -> Option<libc::pid_t> {
        let spec = self.units.get(i)?.spec.as_ref().ok()?;
        match &spec.network {
            cairn_runtime::spec::Network::Join(name) => self.units.iter().find(|u| u.name == name.as_str())?.pid(),
            _ => None,
        }
    }

    fn after_exit(&mut self, i: usize, exit: Exit) {
        let shutting_down = self.shutdown.is_some();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        u.report = None;
        let ran_ms = u.run_started.take().map(|t| t.elapsed().as_millis().min(u128::from(u64::MAX)) as u64);
        if shutting_down {
            u.state = State::Stopped;
            return;
        }
        u.restarts = policy::restarts_after_run(&u.restart, u.restarts, ran_ms);
        match policy::after_exit(&u.restart, exit, u.restarts) {
            Decision::Restart { delay_ms } => {
                u.state = State::Backoff { until: Instant::now() + Duration::from_millis(delay_ms.into()) };
                event("container.restart-scheduled")
                    .kv("name", &u.name)
                    .kv("attempt", u.restarts + 1)
                    .kv("delay_ms", delay_ms)
                    .emit();
            }
            Decision::Stay => {
                u.state = State::Stopped;
                event("container.stopped").kv("name", &u.name).kv("reason", "policy").emit();
            }
            Decision::GiveUp => {
                u.state = State::Stopped;
                event("container.gave-up").kv("name", &u.name).kv("restarts", u.restarts).emit();
            }
        }
    }

    fn on_exit(&mut self, pid: libc::pid_t, status: i32) {
        let Some(i) = self.units.iter().position(|u| u.pid() == Some(pid)) else {
            return;
        };
        let Some(exit) = Exit::from_wait_status(status) else {
            return;
        };
        // Exited while starting: what its report pipe says comes first.
        if self.settle_start(i, Some(exit)) {
            return;
        }
        if let Some(u) = self.units.get_mut(i) {
            // Its last lines before its exit event (it may have exited after
            // this loop's poll, so they were not read yet).
            if let Some(tap) = u.console.as_mut() {
                tap.pump(&u.name);
            }
            let ooms = u.cgroup.oom_kills().saturating_sub(u.oom_baseline);
            event("container.exited").kv("name", &u.name).kv("pid", pid).kv_exit(exit).kv("oom_kills", ooms).emit();
            if ooms > 0 {
                event("container.oom")
                    .kv("name", &u.name)
                    .kv("kills", ooms)
                    .kv("memory_max", u.cgroup.read("memory.max").unwrap_or_default().trim())
                    .emit();
            }
        }
        if let Some(plan) = &mut self.shutdown {
            if plan.current == Some(i) {
                plan.current = None;
            }
        }
        self.after_exit(i, exit);
    }

    /// Begin an orderly shutdown (idempotent).
    pub fn request_shutdown(&mut self, kind: ShutdownKind, why: &str) {
        if self.shutdown.is_some() {
            return;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        event("shutdown.start").kv("kind", kind.name()).kv("reason", why).kv("hostname", host.trim()).emit();
        // Nothing starts any more: units waiting to start or to restart stay
        // stopped, and set-ups under way are cut short.
        let now = Instant::now();
        for u in &mut self.units {
            match u.state {
                State::Waiting | State::Backoff { .. } => {
                    event("container.stopped")
                        .kv("name", &u.name)
                        .kv("reason", "shutdown")
                        .kv("was", u.state_name())
                        .emit();
                    u.state = State::Stopped;
                }
                State::Starting { pid, .. } => {
                    event("container.killed").kv("name", &u.name).kv("reason", "shutdown during set-up").emit();
                    kill_cgroup(u, pid);
                    u.report = None;
                    u.state = State::Stopping { pid, deadline: now + KILL_WAIT, killed: true };
                }
                _ => {}
            }
        }
        // Popped from the end: the last container started is stopped first.
        let queue = self.order.clone();
        self.shutdown = Some(ShutdownPlan { kind, queue, current: None });
    }

    /// Advance the shutdown; returns the kind when everything is stopped.
    fn drive_shutdown(&mut self) -> Option<ShutdownKind> {
        loop {
            let plan = self.shutdown.as_mut()?;
            if plan.current.is_some() {
                return None;
            }
            let Some(i) = plan.queue.pop() else {
                return Some(plan.kind);
            };
            let Some(u) = self.units.get_mut(i) else {
                continue;
            };
            match u.state {
                State::Running { pid } => {
                    let sig = i32::from(u.stop.signal);
                    event("container.stopping")
                        .kv("name", &u.name)
                        .kv("signal", sig)
                        .kv("grace_ms", u.stop.grace_ms)
                        .emit();
                    let _ = cairn_runtime::sys::kill(pid, sig);
                    u.state = State::Stopping {
                        pid,
                        deadline: Instant::now() + Duration::from_millis(u.stop.grace_ms.into()),
                        killed: false,
                    };
                    plan.current = Some(i);
                }
                // Killed when the shutdown began: wait for its exit.
                State::Stopping { .. } => plan.current = Some(i),
                _ => u.state = State::Stopped,
            }
        }
    }

    fn next_timeout(&self) -> i32 {
        let now = Instant::now();
        let next = self
            .units
            .iter()
            .filter_map(|u| match u.state {
                State::Backoff { until } => Some(until),
                State::Starting { deadline, .. } | State::Stopping { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min();
        match next {
            None => -1,
            Some(t) => t.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let shutting_down = self.shutdown.is_some();
        let start_timeout = self.start_timeout;
        for i in 0..self.units.len() {
            let Some(u) = self.units.get_mut(i) else {
                continue;
            };
            match u.state {
                // request_shutdown stopped every unit in backoff; never
                // start one once the shutdown began, whatever its state.
                State::Backoff { until } if until <= now && shutting_down => u.state = State::Stopped,
                State::Backoff { until } if until <= now => {
                    u.restarts += 1;
                    self.start(i);
                }
                State::Starting { pid, deadline } if deadline <= now => {
                    event("container.start-timeout")
                        .kv("name", &u.name)
                        .kv("pid", pid)
                        .kv("timeout_ms", start_timeout.as_millis())
                        .emit();
                    kill_cgroup(u, pid);
                    // A set-up failure: the restart policy decides.
                    self.after_exit(i, Exit::Code(spawning::SETUP_FAILED));
                }
                State::Stopping { pid, deadline, killed } if deadline <= now => {
                    if killed {
                        event("container.stop-timeout").kv("name", &u.name).kv("pid", pid).emit();
                        u.state = State::Stopped;
                        if let Some(plan) = &mut self.shutdown {
                            plan.current = None;
                        }
                    } else {
                        event("container.killed").kv("name", &u.name).kv("reason", "grace period over").emit();
                        kill_cgroup(u, pid);
                        u.state = State::Stopping { pid, deadline: now + KILL_WAIT, killed: true };
                    }
                }
                _ => {}
            }
        }
    }

    fn wait(&mut self, timeout_ms: i32) {
        const SIGNALS: usize = 0;
        const LISTENER: usize = 1;
        const CONSOLE: usize = 2;
        const CONNS: usize = 3;
        const UNITS: usize = CONNS + MAX_CONNECTIONS;
        const REPORTS: usize = UNITS + MAX_CONTAINERS;
        let idle = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        // Fixed capacity: no allocation in the loop. -1 (ignored by poll)
        // fills unused slots, so unit i's output is always at fds[UNITS + i]
        // and its report pipe (while starting) at fds[REPORTS + i].
        let mut fds = [idle; REPORTS + MAX_CONTAINERS];
        let mut set = |k: usize, fd: i32, events: libc::c_short| {
            if let Some(slot) = fds.get_mut(k) {
                slot.fd = fd;
                slot.events = events;
            }
        };
        set(SIGNALS, self.signals.as_raw_fd(), libc::POLLIN);
        // While the table is full, new clients wait in the backlog.
        if self.conns.len() < MAX_CONNECTIONS {
            set(LISTENER, self.control.as_ref().map_or(-1, Listener::raw), libc::POLLIN);
        }
        set(CONSOLE, crate::event::console_waiting().unwrap_or(-1), libc::POLLOUT);
        for (k, c) in self.conns.iter().enumerate().take(MAX_CONNECTIONS) {
            set(CONNS + k, c.raw(), libc::POLLIN);
        }
        for (i, u) in self.units.iter().enumerate().take(MAX_CONTAINERS) {
            set(UNITS + i, u.console.as_ref().map_or(-1, Tap::raw), libc::POLLIN);
            set(REPORTS + i, u.report.as_ref().map_or(-1, AsRawFd::as_raw_fd), libc::POLLIN);
        }
        // SAFETY: `fds` is a valid array of pollfd of the length passed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n <= 0 {
            return;
        }
        let ready = |k: usize, mask: libc::c_short| fds.get(k).is_some_and(|f| f.fd >= 0 && f.revents & mask != 0);
        let hup = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
        let (signals, listener) = (ready(SIGNALS, libc::POLLIN), ready(LISTENER, libc::POLLIN));
        if ready(CONSOLE, libc::POLLOUT | libc::POLLERR | libc::POLLHUP) {
            crate::event::console_flush();
        }
        // Output first, so a container's last lines come before its exit event.
        for (i, u) in self.units.iter_mut().enumerate() {
            if ready(UNITS + i, hup) {
                if let Some(tap) = u.console.as_mut() {
                    if !tap.pump(&u.name) {
                        u.console = None;
                        if u.spec.as_ref().is_ok_and(|s| s.console) {
                            event("container.console-closed").kv("name", &u.name).emit();
                        }
                    }
                }
            }
        }
        // Reports before exits: a report explains the exit that follows it.
        for i in 0..self.units.len().min(MAX_CONTAINERS) {
            if ready(REPORTS + i, hup) {
                self.settle_start(i, None);
            }
        }
        if signals {
            self.read_signals();
        }
        let mut readable = [false; MAX_CONNECTIONS];
        for (k, r) in readable.iter_mut().enumerate() {
            *r = ready(CONNS + k, hup);
        }
        self.serve_connections(&readable);
        if listener {
            self.accept_connections();
        }
    }

    fn read_signals(&mut self) {
        loop {
            // SAFETY: signalfd_siginfo is plain data; zero is a valid value.
            let mut info: libc::signalfd_siginfo = unsafe { core::mem::zeroed() };
            let size = core::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is valid for writes of `size` bytes.
            let n = unsafe {
                libc::read(self.signals.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size)
            };
            if n != size as isize {
                return;
            }
            match info.ssi_signo as i32 {
                libc::SIGCHLD => self.reap(),
                libc::SIGTERM | libc::SIGUSR2 | libc::SIGPWR => self.request_shutdown(ShutdownKind::PowerOff, "signal"),
                libc::SIGINT => self.request_shutdown(ShutdownKind::Reboot, "signal"),
                other => event("signal.ignored").kv("signal", other).kv("from_pid", info.ssi_pid).emit(),
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.on_exit(pid, status);
        }
    }

    /// Accept what waits, up to the table's bound.
    fn accept_connections(&mut self) {
        let now = Instant::now();
        while self.conns.len() < MAX_CONNECTIONS {
            let Some(conn) = self.control.as_ref().and_then(|l| l.accept(now)) else {
                return;
            };
            self.conns.push(conn);
        }
    }

    /// Answer every connection whose request has come; drop those that hung up.
    fn serve_connections(&mut self, readable: &[bool]) {
        let mut k = self.conns.len();
        while k > 0 {
            k -= 1;
            if !readable.get(k).copied().unwrap_or(false) {
                continue;
            }
            let Some(conn) = self.conns.get(k) else { continue };
            match conn.receive() {
                Received::Nothing => {}
                Received::Closed => {
                    self.conns.swap_remove(k);
                }
                received @ (Received::Request(_) | Received::TooLong(_)) => {
                    let conn = self.conns.swap_remove(k);
                    let (text, answer) = match received {
                        Received::Request(text) => {
                            let answer = self.answer(&conn.caller, &text);
                            (text, answer)
                        }
                        Received::TooLong(n) => {
                            (format!("({n} bytes)"), format!("error request longer than {}", control::REQUEST_MAX))
                        }
                        _ => continue,
                    };
                    event("control.request")
                        .kv("caller", conn.caller.name())
                        .kv("pid", conn.pid)
                        .kv("uid", conn.uid)
                        .kv("request", text.trim())
                        .kv("reply", &answer)
                        .emit();
                    conn.reply(&answer);
                }
            }
        }
    }

    /// May this caller use the control socket? The host may; a container
    /// only with `control = true` in its manifest entry.
    fn permitted(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Host => true,
            Caller::Container(name) => self.units.iter().any(|u| u.name == *name && u.control),
            Caller::Unknown => false,
        }
    }

    fn answer(&mut self, caller: &Caller, text: &str) -> String {
        if !self.permitted(caller) {
            return "error not permitted".into();
        }
        match control::parse(text) {
            Err(e) => format!("error {e}"),
            Ok(Request::Status) => {
                let mut s = String::from("ok");
                for u in &self.units {
                    s.push_str(&format!(" {}={}", u.name, u.state_name()));
                }
                s
            }
            Ok(Request::PowerOff) => {
                self.request_shutdown(ShutdownKind::PowerOff, "control");
                "ok".into()
            }
            Ok(Request::Reboot) => {
                self.request_shutdown(ShutdownKind::Reboot, "control");
                "ok".into()
            }
            Ok(Request::Signal { name, signals }) => match self.units.iter().find(|u| u.name == name) {
                None => format!("error no container {name}"),
                Some(u) if u.pid().is_none() => format!("error {name} is not running"),
                Some(_) if self.pending_signals.len() + signals.len() > MAX_PENDING_SIGNALS => {
                    "error busy: too many signals pending".into()
                }
                Some(_) => {
                    // Spaced with timers after whatever is already queued.
                    let now = Instant::now();
                    let mut due = self.pending_signals.back().map_or(now, |p| p.due + SIGNAL_SPACING).max(now);
                    for signal in signals {
                        self.pending_signals.push_back(PendingSignal { due, name: name.clone(), signal });
                        due += SIGNAL_SPACING;
                    }
                    "ok".into()
                }
            },
        }
    }

    /// When the next control deadline or queued signal is due (poll ms, -1: none).
    fn control_timeout(&self) -> i32 {
        let next = self.conns.iter().map(|c| c.deadline).chain(self.pending_signals.front().map(|p| p.due)).min();
        match next {
            None => -1,
            Some(t) => t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32 + 1,
        }
    }

    fn send_pending(&self, p: PendingSignal) {
        match self.units.iter().find(|u| u.name == p.name).and_then(Unit::pid) {
            Some(pid) => match cairn_runtime::sys::kill(pid, p.signal) {
                Ok(()) => event("container.signalled").kv("name", &p.name).kv("signal", p.signal).emit(),
                Err(e) => {
                    event("container.signal-failed").kv("name", &p.name).kv("signal", p.signal).kv("error", e).emit()
                }
            },
            None => event("container.signal-failed")
                .kv("name", &p.name)
                .kv("signal", p.signal)
                .kv("error", "not running")
                .emit(),
        }
    }

    /// Send the queued signal that is due; close connections past their deadline.
    fn fire_control_timers(&mut self) {
        let now = Instant::now();
        // One signal per expiry: if the loop was late, the next still waits
        // a full spacing after this one.
        if self.pending_signals.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = self.pending_signals.pop_front() {
                self.send_pending(p);
            }
            // Counted from after this kill, however late it was.
            let sent = Instant::now();
            if let Some(next) = self.pending_signals.front_mut() {
                next.due = next.due.max(sent + SIGNAL_SPACING);
            }
        }
        let mut k = self.conns.len();
        while k > 0 {
            k -= 1;
            if self.conns.get(k).is_some_and(|c| c.deadline <= now) {
                let conn = self.conns.swap_remove(k);
                event("control.timeout")
                    .kv("caller", conn.caller.name())
                    .kv("pid", conn.pid)
                    .kv("uid", conn.uid)
                    .kv("waited_ms", control::REQUEST_DEADLINE.as_millis())
                    .emit();
            }
        }
    }
}

/// The earlier of two poll timeouts (-1 is none).
fn earliest(a: i32, b: i32) -> i32 {
    match (a, b) {
        (-1, t) | (t, -1) => t,
        (a, b) => a.min(b),
    }
}

/// The spec with `CAIRN_RESTART_COUNT=<restarts so far>` in its environment
/// (replacing one the manifest may set), so an entrypoint knows how many
/// times it was restarted since boot.
fn with_restart_count(spec: &ContainerSpec, restarts: u32) -> ContainerSpec {
    let mut spec = spec.clone();
    spec.env.retain(|e| !e.as_bytes().starts_with(b"CAIRN_RESTART_COUNT="));
    if let Ok(var) = std::ffi::CString::new(format!("CAIRN_RESTART_COUNT={restarts}")) {
        spec.env.push(var);
    }
    spec
}

/// Kill every process of `u`'s cgroup (its init `pid` directly if
/// `cgroup.kill` fails).
fn kill_cgroup(u: &Unit, pid: libc::pid_t) {
    if let Err(e) = u.cgroup.kill_all() {
        event("container.kill-failed").kv("name", &u.name).kv("error", e).emit();
        let _ = cairn_runtime::sys::kill(pid, libc::SIGKILL);
    }
}

/// Block every signal and return a signalfd that receives them.
pub fn signal_fd() -> Result<OwnedFd, cairn_runtime::sys::SysError> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t; signalfd returns a new descriptor.
    let fd = unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
        libc::signalfd(-1, &all, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(cairn_runtime::sys::SysError {
            op: "signalfd",
            arg: "all".into(),
            errno: cairn_runtime::sys::errno(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

trait ExitFields {
    fn kv_exit(self, exit: Exit) -> Self;
}

impl ExitFields for crate::event::Event {
    fn kv_exit(self, exit: Exit) -> Self {
        match exit {
            Exit::Code(c) => self.kv("code", c),
            Exit::Signal(s) => self.kv("signal", s).kv("code", 128 + s),
        }
    }
}

// A failed test may panic (issue 9 moves this allowance to a clippy.toml).
#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use cairn_format::manifest::RestartPolicy;

    fn unit(name: &str, policy: RestartPolicy) -> Unit {
        let restart = Restart { policy, backoff_initial_ms: 100, backoff_max_ms: 1000 };
        Unit::new(name, Err("host test".into()), Vec::new(), restart, Stop { signal: 15, grace_ms: 100 })
    }

    fn supervisor(units: Vec<Unit>) -> Supervisor {
        let order = (0..units.len()).collect();
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open /dev/null").into();
        Supervisor::new(units, order, fd, None)
    }

    fn state(s: &Supervisor, i: usize) -> State {
        s.units[i].state
    }

    #[test]
    fn shutdown_stops_units_waiting_to_start_or_restart() {
        let mut s = supervisor(vec![unit("a", RestartPolicy::Always), unit("b", RestartPolicy::Always)]);
        s.units[0].state = State::Backoff { until: Instant::now() + Duration::from_secs(60) };
        s.request_shutdown(ShutdownKind::PowerOff, "test");
        assert_eq!(state(&s, 0), State::Stopped);
        assert_eq!(state(&s, 1), State::Stopped, "a waiting unit never starts once the shutdown began");
        assert_eq!(s.drive_shutdown(), Some(ShutdownKind::PowerOff));
    }

    #[test]
    fn no_timer_starts_anything_during_shutdown() {
        let mut s = supervisor(vec![unit("a", RestartPolicy::Always)]);
        s.request_shutdown(ShutdownKind::Reboot, "test");
        // A backoff that is due (however it got there) is not a start.
        s.units[0].state = State::Backoff { until: Instant::now() };
        s.fire_timers();
        assert_eq!(s.units[0].restarts, 0, "fire_timers tried a restart during the shutdown");
        assert_eq!(state(&s, 0), State::Stopped);
    }

    #[test]
    fn an_exit_during_shutdown_is_not_restarted() {
        let mut s = supervisor(vec![unit("a", RestartPolicy::Always)]);
        s.units[0].state = State::Running { pid: 4242 };
        s.request_shutdown(ShutdownKind::PowerOff, "test");
        s.after_exit(0, Exit::Code(1));
        assert_eq!(state(&s, 0), State::Stopped);
    }

    #[test]
    fn a_run_longer_than_the_backoff_cap_resets_the_restarts() {
        let mut s = supervisor(vec![unit("a", RestartPolicy::OnFailure { max_restarts: 2 })]);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(11)).expect("uptime over 11 s");
        s.units[0].restarts = 2;
        s.units[0].run_started = Some(long_ago);
        s.after_exit(0, Exit::Code(1));
        assert!(matches!(state(&s, 0), State::Backoff { .. }), "{:?}", state(&s, 0));
        assert_eq!(s.units[0].restarts, 0);
        // A quick exit with the restarts used up gives up.
        s.units[0].restarts = 2;
        s.units[0].run_started = Some(Instant::now());
        s.after_exit(0, Exit::Code(1));
        assert_eq!(state(&s, 0), State::Stopped);
    }

    #[test]
    fn a_start_timeout_is_a_setup_failure_under_the_restart_policy() {
        let mut s = supervisor(vec![unit("a", RestartPolicy::OnFailure { max_restarts: 1 })]);
        // On the host the cgroup write fails (no such cgroup) and the
        // fallback kill gets ESRCH: i32::MAX is above any pid_max.
        s.units[0].state = State::Starting { pid: i32::MAX, deadline: Instant::now() };
        s.fire_timers();
        assert!(matches!(state(&s, 0), State::Backoff { .. }), "{:?}", state(&s, 0));
        assert!(s.units[0].run_started.is_none());
    }
}
