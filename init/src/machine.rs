//! The supervisor's core: a state machine over its units, with no
//! syscalls, no descriptors and no clock of its own.
//!
//! Inputs are method calls, each with an explicit `now`: [`Machine::step`]
//! (start what is ready, advance a shutdown), [`Machine::settle`] (a
//! starting unit's report pipe said something, or its init exited),
//! [`Machine::exited`] (a running or stopping unit's init was reaped),
//! [`Machine::fire`] (timers that are due), [`Machine::request_shutdown`]
//! and [`Machine::answer`] (a control request). Outputs go through
//! [`Effects`]: spawn a unit, signal a pid, kill a cgroup, emit an event.
//! The executor (`supervisor.rs`) implements [`Effects`] with the real
//! syscalls; the host tests below with a recorder.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use cairn_runtime::spawn::SETUP_FAILED;
use cairn_runtime::sys::SysError;
use cairn_runtime::Exit;

use crate::control::{self, Caller, Permissions, PsRow, Request};
use crate::event::{event, Event};
use crate::health::{self, Check, Form, Health, Tick};
use crate::policy::{self, Decision, Restart};

/// A host pid.
pub type Pid = i32;

/// How long to wait after `cgroup.kill` before giving up on a container.
pub const KILL_WAIT: Duration = Duration::from_secs(3);
/// Space between the signals of one `signal` list: a stop signal discards
/// a pending SIGCONT, so each must be delivered before the next is sent.
pub const SIGNAL_SPACING: Duration = Duration::from_millis(20);
/// Most signals waiting to be sent at once (a request that would pass it
/// is refused whole).
pub const MAX_PENDING_SIGNALS: usize = 256;
/// First wait between looks at `cgroup.events` while a pause or resume
/// takes effect; doubled up to [`FREEZE_POLL_MAX`].
pub const FREEZE_POLL: Duration = Duration::from_millis(10);
/// Longest wait between those looks.
pub const FREEZE_POLL_MAX: Duration = Duration::from_secs(1);

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

/// What the core knows of a container, built once at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDesc {
    /// Its name.
    pub name: String,
    /// Units (indexes) that must have started before it starts.
    pub deps: Vec<usize>,
    /// The unit (index) whose network namespace it joins.
    pub join: Option<usize>,
    /// Its restart policy.
    pub restart: Restart,
    /// Signal sent first to stop it.
    pub stop_signal: i32,
    /// Time between the stop signal and killing its cgroup.
    pub grace_ms: u32,
    /// What it may ask over the control socket.
    pub permissions: Permissions,
    /// A failure of it fails a trial (see [`Machine::health`]).
    pub critical: bool,
    /// Its health check's timing, if it has one.
    pub health: Option<health::Config>,
}

/// Where a container is with the cgroup freezer (`pause`/`resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Not frozen.
    Thawed,
    /// `cgroup.freeze` 1 written at `since`; `cgroup.events` is looked at
    /// again at `poll`, `wait` after the last look.
    Freezing {
        /// When it was asked.
        since: Instant,
        /// Next look.
        poll: Instant,
        /// Wait before the look after it.
        wait: Duration,
    },
    /// `cgroup.events` says frozen.
    Frozen,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for its dependencies to start.
    Waiting,
    /// Cloned; its init sets up until the entrypoint is executed. Killed
    /// at `deadline`.
    Starting {
        /// Its namespace init.
        pid: Pid,
        /// When the set-up is cut short.
        deadline: Instant,
    },
    /// Running; `pid` is its namespace init.
    Running {
        /// Its namespace init.
        pid: Pid,
    },
    /// Waiting out a restart delay.
    Backoff {
        /// When it is started again.
        until: Instant,
    },
    /// Stop signal sent; the cgroup is killed at `deadline`.
    Stopping {
        /// Its namespace init.
        pid: Pid,
        /// When the grace period (or the wait after the kill) ends.
        deadline: Instant,
        /// Its cgroup was killed already.
        killed: bool,
    },
    /// Not running and not coming back.
    Stopped,
}

impl State {
    /// The name `status` shows.
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Backoff { .. } => "backoff",
            State::Stopping { .. } => "stopping",
            State::Stopped => "stopped",
        }
    }

    fn pid(self) -> Option<Pid> {
        match self {
            State::Starting { pid, .. } | State::Running { pid } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// What a spawn attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawned {
    /// Its init exists (set-up under way) since `at`, when the spawn
    /// returned: a spawn can take long (a clone into a cgroup with a tiny
    /// `cpus` share), and the start timeout counts from `at`.
    Started {
        /// Its namespace init.
        pid: Pid,
        /// When the spawn returned.
        at: Instant,
    },
    /// Cloning failed (the executor emitted `container.failed`): a set-up
    /// failure under the restart policy.
    Failed,
    /// It can never start (the executor emitted `container.failed`).
    Unstartable,
}

/// What a starting unit's report pipe said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Nothing yet.
    Pending,
    /// EOF: the entrypoint was executed, or it could not be (then `path`
    /// and errno name of the failed `execve`).
    Done {
        /// `(argv[0], errno name)` when `execve` failed.
        exec_failed: Option<(String, String)>,
    },
    /// A set-up step failed: the fields `container.failed` carries after
    /// its name and pid (stage, path, error).
    Failed(Vec<(&'static str, String)>),
}

/// Effects of the core on the world.
pub trait Effects {
    /// Spawn unit `i` with `restarts` restarts so far, joining the network
    /// namespace of `join` if given; `now` is the instant the core decided.
    fn spawn(&mut self, i: usize, restarts: u32, join: Option<Pid>, now: Instant) -> Spawned;
    /// Unit `i` was announced as starting: copy its output from now on.
    fn attach_output(&mut self, i: usize);
    /// Unit `i`'s report pipe is of no further interest.
    fn close_report(&mut self, i: usize);
    /// Send `signal` to `pid`.
    fn signal(&mut self, pid: Pid, signal: i32) -> Result<(), SysError>;
    /// Kill every process of unit `i`'s cgroup (`pid` directly if that fails).
    fn kill_cgroup(&mut self, i: usize, pid: Pid);
    /// Write unit `i`'s `cgroup.freeze` (1: freeze, 0: thaw).
    fn freeze(&mut self, i: usize, frozen: bool) -> Result<(), SysError>;
    /// Whether unit `i`'s cgroup is frozen (`cgroup.events` frozen; `None`: unreadable).
    fn frozen(&mut self, i: usize) -> Option<bool>;
    /// Start unit `i`'s health probe (the command form) in the container
    /// whose init is `pid`, without waiting for it: its outcome comes
    /// later through [`Machine::probe_ended`]. False if it could not be
    /// started (the executor emitted why): a failed check.
    fn start_probe(&mut self, i: usize, pid: Pid) -> bool;
    /// Kill unit `i`'s probe in flight and forget it (its outcome, if one
    /// still comes, is not reported); `helper_too`: its helper as well,
    /// which did not report in time.
    fn kill_probe(&mut self, i: usize, helper_too: bool);
    /// Emit an event.
    fn emit(&mut self, e: Event);
    /// The device's hostname (for `shutdown.start`).
    fn hostname(&mut self) -> String;
}

struct Unit {
    desc: UnitDesc,
    state: State,
    restarts: u32,
    ever_started: bool,
    /// When the current run began (its entrypoint was executed).
    run_started: Option<Instant>,
    /// How its last run ended.
    last_exit: Option<Exit>,
    /// What a control request asked of its next exit.
    want: Want,
    /// Its health check.
    health: Option<Check>,
    /// The freezer.
    freeze: Freeze,
}

/// What a control request asked of a unit's next exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The restart policy decides.
    Policy,
    /// `stop`: it stays stopped.
    Stop,
    /// `restart`: it starts again at once.
    Restart,
    /// Stopped for being unhealthy: the restart policy decides as after a
    /// failure.
    Unhealthy,
}

/// What the executor does with a control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Reply with this body (`ok ...` or `error ...`) and close.
    Reply(String),
    /// Reply with these `ps` rows (the executor adds the cgroup counters).
    Ps(Vec<PsRow>),
    /// Stream unit `.0`'s log lines read at or after `since_ms`.
    Logs {
        /// The unit.
        unit: usize,
        /// ms since boot.
        since_ms: u64,
        /// Keep following.
        follow: bool,
    },
    /// Stream the events from now on.
    Events,
    /// Stream the kernel's log from `since_ms` (not followed).
    KernelLog {
        /// ms since boot.
        since_ms: u64,
    },
    /// Run `argv` in unit `unit`, whose init is `pid` (crate::exec).
    Exec {
        /// The unit.
        unit: usize,
        /// Its namespace init.
        pid: Pid,
        /// The command.
        argv: Vec<Vec<u8>>,
        /// `--tty`, `--env`, `--user`.
        opts: crate::exec::Options,
    },
    /// Fork the installer on the bundle the request carries; it answers on
    /// the connection itself.
    Update,
    /// Fork the helper that deletes the volumes the manifest does not name
    /// (crate::volumes::prune); it answers on the connection itself.
    VolumePrune,
    /// Set the name servers of containers on networks with egress.
    Dns(crate::dns::Servers),
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
    unit: usize,
    signal: i32,
}

/// The supervisor's state.
pub struct Machine {
    units: Vec<Unit>,
    order: Vec<usize>,
    shutdown: Option<ShutdownPlan>,
    pending: VecDeque<PendingSignal>,
    announced_started: bool,
    start_timeout: Duration,
    /// The first thing that went wrong with a container this boot (a
    /// failed set-up, an exit other than 0, a blocked start): a slot on
    /// trial is not blessed after it.
    first_failure: Option<String>,
}

impl Machine {
    /// `order` is the start order (indexes into `units`).
    pub fn new(units: Vec<UnitDesc>, order: Vec<usize>, start_timeout: Duration) -> Self {
        let units = units
            .into_iter()
            .map(|desc| Unit {
                state: State::Waiting,
                restarts: 0,
                ever_started: false,
                run_started: None,
                last_exit: None,
                want: Want::Policy,
                health: desc.health.map(Check::new),
                freeze: Freeze::Thawed,
                desc,
            })
            .collect();
        Self {
            units,
            order,
            shutdown: None,
            pending: VecDeque::new(),
            announced_started: false,
            start_timeout,
            first_failure: None,
        }
    }

    /// Whether the containers are healthy: every one has settled after its
    /// first start (`boot.containers-started`) and no critical one has
    /// failed to set up, exited other than with 0, exited to be restarted,
    /// or been blocked since boot.
    pub fn health(&self) -> Result<(), String> {
        if let Some(f) = &self.first_failure {
            return Err(f.clone());
        }
        if !self.announced_started {
            return Err("the containers have not all started".into());
        }
        Ok(())
    }

    /// Whether a shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Whether every container has settled after its first start.
    pub fn containers_started(&self) -> bool {
        self.announced_started
    }

    /// Unit `i`'s state.
    pub fn state(&self, i: usize) -> Option<State> {
        self.units.get(i).map(|u| u.state)
    }

    /// The unit whose namespace init is `pid`.
    pub fn unit_of(&self, pid: Pid) -> Option<usize> {
        self.units.iter().position(|u| u.state.pid() == Some(pid))
    }

    /// Restarts of unit `i` so far.
    #[cfg(test)]
    pub fn restarts(&self, i: usize) -> u32 {
        self.units.get(i).map_or(0, |u| u.restarts)
    }

    /// Start what is ready, or advance the shutdown; returns the kind once
    /// a shutdown stopped everything.
    pub fn step(&mut self, now: Instant, fx: &mut impl Effects) -> Option<ShutdownKind> {
        if self.shutdown.is_none() {
            self.start_ready(now, fx);
            None
        } else {
            self.drive_shutdown(now, fx)
        }
    }

    fn start_ready(&mut self, now: Instant, fx: &mut impl Effects) {
        for k in 0..self.order.len() {
            let Some(&i) = self.order.get(k) else { continue };
            let Some(u) = self.units.get(i) else { continue };
            if u.state != State::Waiting {
                continue;
            }
            let deps_started = u.desc.deps.iter().all(|d| self.units.get(*d).is_some_and(|d| d.ever_started));
            let dep_dead = u.desc.deps.iter().find_map(|d| {
                self.units.get(*d).filter(|d| d.state == State::Stopped && !d.ever_started).map(|d| &d.desc.name)
            });
            if let Some(dep) = dep_dead {
                if self.first_failure.is_none() && u.desc.critical {
                    self.first_failure = Some(format!("{} blocked: dependency {dep} never started", u.desc.name));
                }
                fx.emit(
                    event("container.blocked")
                        .kv("name", &u.desc.name)
                        .kv("dependency", dep)
                        .kv("reason", "dependency never started"),
                );
                if let Some(u) = self.units.get_mut(i) {
                    u.state = State::Stopped;
                }
            } else if deps_started {
                self.start(i, now, fx);
            }
        }
        let settled = |u: &Unit| !matches!(u.state, State::Waiting | State::Starting { .. });
        if !self.announced_started && self.units.iter().all(settled) {
            self.announced_started = true;
            let running = self.units.iter().filter(|u| matches!(u.state, State::Running { .. })).count();
            fx.emit(event("boot.containers-started").kv("running", running).kv("total", self.units.len()));
        }
    }

    fn start(&mut self, i: usize, now: Instant, fx: &mut impl Effects) {
        let join =
            self.units.get(i).and_then(|u| u.desc.join).and_then(|j| self.units.get(j)).and_then(|j| j.state.pid());
        let Some(u) = self.units.get_mut(i) else { return };
        match fx.spawn(i, u.restarts, join, now) {
            Spawned::Started { pid, at } => {
                u.state = State::Starting { pid, deadline: at.max(now) + self.start_timeout };
                fx.emit(event("container.starting").kv("name", &u.desc.name).kv("pid", pid).kv("restarts", u.restarts));
                fx.attach_output(i);
            }
            Spawned::Failed => self.after_exit(i, Exit::Code(SETUP_FAILED), now, fx),
            Spawned::Unstartable => u.state = State::Stopped,
        }
    }

    /// Unit `i`'s report pipe said `report`; with `exit`, its init has
    /// exited. Returns true if that settled the unit for good (its set-up
    /// failed and the failure was handled), false if it is still starting
    /// or now runs (its exit, if any, is still to be handled by [`Machine::exited`]).
    pub fn settle(
        &mut self,
        i: usize,
        report: Report,
        exit: Option<Exit>,
        now: Instant,
        fx: &mut impl Effects,
    ) -> bool {
        let Some(u) = self.units.get_mut(i) else { return false };
        let State::Starting { pid, .. } = u.state else { return false };
        let fields = match report {
            Report::Pending if exit.is_none() => return false,
            Report::Pending => None,
            Report::Done { exec_failed } => {
                fx.close_report(i);
                u.state = State::Running { pid };
                u.ever_started = true;
                u.run_started = Some(now);
                fx.emit(event("container.started").kv("name", &u.desc.name).kv("pid", pid).kv("restarts", u.restarts));
                if let Some((path, error)) = exec_failed {
                    fx.emit(
                        event("container.exec-failed").kv("name", &u.desc.name).kv("path", path).kv("error", error),
                    );
                }
                if let Some(change) = u.health.as_mut().and_then(|h| h.start(now)) {
                    fx.emit(health_event(&u.desc.name, change));
                }
                return false;
            }
            Report::Failed(fields) => Some(fields),
        };
        fx.close_report(i);
        let mut failed = event("container.failed").kv("name", &u.desc.name).kv("pid", pid);
        match fields {
            Some(fields) => {
                for (k, v) in fields {
                    failed = failed.kv(k, v);
                }
            }
            None => failed = failed.kv("error", "exited during set-up without a report"),
        }
        fx.emit(failed);
        let exit = match exit {
            Some(exit) => exit,
            None => {
                // The init exits by itself after a report; make sure
                // nothing it started outlives it.
                fx.kill_cgroup(i, pid);
                Exit::Code(SETUP_FAILED)
            }
        };
        self.after_exit(i, exit, now, fx);
        true
    }

    /// Unit `i`'s init exited (after `container.exited` was emitted).
    pub fn exited(&mut self, i: usize, exit: Exit, now: Instant, fx: &mut impl Effects) {
        if let Some(plan) = &mut self.shutdown {
            if plan.current == Some(i) {
                plan.current = None;
            }
        }
        self.after_exit(i, exit, now, fx);
    }

    fn after_exit(&mut self, i: usize, exit: Exit, now: Instant, fx: &mut impl Effects) {
        let shutting_down = self.shutdown.is_some();
        let Some(u) = self.units.get_mut(i) else { return };
        fx.close_report(i);
        let ran_ms =
            u.run_started.take().map(|t| now.saturating_duration_since(t).as_millis().min(u128::from(u64::MAX)) as u64);
        u.last_exit = Some(exit);
        kill_probe(i, u, fx);
        if let Some(h) = u.health.as_mut() {
            h.stop();
        }
        if u.freeze != Freeze::Thawed {
            // Killed while frozen (cgroup.kill and SIGKILL act on frozen
            // tasks): its next run must not start frozen.
            u.freeze = Freeze::Thawed;
            if let Err(e) = fx.freeze(i, false) {
                fx.emit(event("container.resume-failed").kv("name", &u.desc.name).kv("error", e));
            }
        }
        if shutting_down {
            u.state = State::Stopped;
            return;
        }
        let mut decide_exit = exit;
        match std::mem::replace(&mut u.want, Want::Policy) {
            Want::Policy => {}
            // Unhealthy counts as a failure even if its stop signal made it
            // exit with 0.
            Want::Unhealthy if exit.success() => decide_exit = Exit::Signal(u.desc.stop_signal),
            Want::Unhealthy => {}
            Want::Stop => {
                u.state = State::Stopped;
                fx.emit(event("container.stopped").kv("name", &u.desc.name).kv("reason", "control"));
                return;
            }
            Want::Restart => {
                // Started by the next step, as at boot.
                u.state = State::Waiting;
                return;
            }
        }
        // A critical container fails the trial by failing, or by exiting at
        // all when its policy restarts it (a restart is a failure too).
        let restarts = u.desc.restart.policy == policy::RestartPolicy::Always;
        if u.desc.critical && (exit != Exit::Code(0) || restarts) {
            let what = match exit {
                Exit::Code(SETUP_FAILED) => format!("{} failed to set up", u.desc.name),
                Exit::Code(c) => format!("{} exited with {c}", u.desc.name),
                Exit::Signal(s) => format!("{} killed by signal {s}", u.desc.name),
            };
            if self.first_failure.is_none() {
                self.first_failure = Some(what);
            }
        }
        let Some(u) = self.units.get_mut(i) else { return };
        u.restarts = policy::restarts_after_run(&u.desc.restart, u.restarts, ran_ms);
        match policy::after_exit(&u.desc.restart, decide_exit, u.restarts) {
            Decision::Restart { delay_ms } => {
                u.state = State::Backoff { until: now + Duration::from_millis(delay_ms.into()) };
                fx.emit(
                    event("container.restart-scheduled")
                        .kv("name", &u.desc.name)
                        .kv("attempt", u.restarts + 1)
                        .kv("delay_ms", delay_ms),
                );
            }
            Decision::Stay => {
                u.state = State::Stopped;
                fx.emit(event("container.stopped").kv("name", &u.desc.name).kv("reason", "policy"));
            }
            Decision::GiveUp => {
                u.state = State::Stopped;
                fx.emit(event("container.gave-up").kv("name", &u.desc.name).kv("restarts", u.restarts));
            }
        }
    }

    /// Begin an orderly shutdown (idempotent).
    pub fn request_shutdown(&mut self, kind: ShutdownKind, why: &str, now: Instant, fx: &mut impl Effects) {
        if self.shutdown.is_some() {
            return;
        }
        let host = fx.hostname();
        fx.emit(event("shutdown.start").kv("kind", kind.name()).kv("reason", why).kv("hostname", host.trim()));
        // Nothing starts any more: units waiting to start or to restart stay
        // stopped, and set-ups under way are cut short.
        for (i, u) in self.units.iter_mut().enumerate() {
            match u.state {
                State::Waiting | State::Backoff { .. } => {
                    fx.emit(
                        event("container.stopped")
                            .kv("name", &u.desc.name)
                            .kv("reason", "shutdown")
                            .kv("was", u.state.name()),
                    );
                    u.state = State::Stopped;
                }
                State::Starting { pid, .. } => {
                    fx.emit(event("container.killed").kv("name", &u.desc.name).kv("reason", "shutdown during set-up"));
                    fx.kill_cgroup(i, pid);
                    fx.close_report(i);
                    u.state = State::Stopping { pid, deadline: now + KILL_WAIT, killed: true };
                }
                State::Running { .. } => {
                    // No probe starts once the shutdown began (and a check
                    // paused is one whose timer never fires).
                    kill_probe(i, u, fx);
                    if let Some(h) = u.health.as_mut() {
                        h.pause();
                    }
                }
                _ => {}
            }
        }
        // Popped from the end: the last container started is stopped first.
        let queue = self.order.clone();
        self.shutdown = Some(ShutdownPlan { kind, queue, current: None });
    }

    fn drive_shutdown(&mut self, now: Instant, fx: &mut impl Effects) -> Option<ShutdownKind> {
        loop {
            let plan = self.shutdown.as_mut()?;
            if plan.current.is_some() {
                return None;
            }
            let Some(i) = plan.queue.pop() else {
                return Some(plan.kind);
            };
            let Some(u) = self.units.get_mut(i) else { continue };
            match u.state {
                State::Running { pid } => {
                    thaw_to_stop(i, u, fx);
                    let sig = u.desc.stop_signal;
                    fx.emit(
                        event("container.stopping")
                            .kv("name", &u.desc.name)
                            .kv("signal", sig)
                            .kv("grace_ms", u.desc.grace_ms),
                    );
                    let _ = fx.signal(pid, sig);
                    u.state = State::Stopping {
                        pid,
                        deadline: now + Duration::from_millis(u.desc.grace_ms.into()),
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

    /// The next instant a timer (backoff, start timeout, grace, kill wait,
    /// queued signal) is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.units
            .iter()
            .filter_map(|u| match u.state {
                State::Backoff { until } => Some(until),
                State::Starting { deadline, .. } | State::Stopping { deadline, .. } => Some(deadline),
                _ => None,
            })
            .chain(self.pending.front().map(|p| p.due))
            .chain(self.units.iter().filter_map(|u| match (u.state, u.freeze) {
                (State::Running { .. }, Freeze::Freezing { poll, .. }) => Some(poll),
                (State::Running { .. }, _) => u.health.as_ref().and_then(Check::deadline),
                _ => None,
            }))
            .min()
    }

    /// Fire the unit timers due at `now` (backoff, start timeout, grace,
    /// kill wait).
    pub fn fire(&mut self, now: Instant, fx: &mut impl Effects) {
        let shutting_down = self.shutdown.is_some();
        let start_timeout = self.start_timeout;
        for i in 0..self.units.len() {
            let Some(u) = self.units.get_mut(i) else { continue };
            match u.state {
                // request_shutdown stopped every unit in backoff; never
                // start one once the shutdown began, whatever its state.
                State::Backoff { until } if until <= now && shutting_down => u.state = State::Stopped,
                State::Backoff { until } if until <= now => {
                    u.restarts += 1;
                    self.start(i, now, fx);
                }
                State::Starting { pid, deadline } if deadline <= now => {
                    fx.emit(
                        event("container.start-timeout")
                            .kv("name", &u.desc.name)
                            .kv("pid", pid)
                            .kv("timeout_ms", start_timeout.as_millis()),
                    );
                    fx.kill_cgroup(i, pid);
                    // A set-up failure: the restart policy decides.
                    self.after_exit(i, Exit::Code(SETUP_FAILED), now, fx);
                }
                State::Running { pid } => {
                    self.fire_running(i, pid, now, fx);
                }
                State::Stopping { pid, deadline, killed } if deadline <= now => {
                    if killed {
                        fx.emit(event("container.stop-timeout").kv("name", &u.desc.name).kv("pid", pid));
                        let again = std::mem::replace(&mut u.want, Want::Policy) == Want::Restart;
                        u.state = if again && !shutting_down { State::Waiting } else { State::Stopped };
                        if let Some(plan) = &mut self.shutdown {
                            plan.current = None;
                        }
                    } else {
                        fx.emit(event("container.killed").kv("name", &u.desc.name).kv("reason", "grace period over"));
                        fx.kill_cgroup(i, pid);
                        u.state = State::Stopping { pid, deadline: now + KILL_WAIT, killed: true };
                    }
                }
                _ => {}
            }
        }
    }

    /// Send the queued signal that is due at `now`; true if one was sent
    /// (then the executor calls [`Machine::signal_sent`] with the instant
    /// after the kill and its event).
    pub fn fire_signals(&mut self, now: Instant, fx: &mut impl Effects) -> bool {
        if self.pending.front().is_none_or(|p| p.due > now) {
            return false;
        }
        if let Some(p) = self.pending.pop_front() {
            self.send_pending(p, fx);
        }
        true
    }

    /// A queued signal was sent; `sent` is taken after the kill. One signal
    /// per expiry: if the loop was late, the next still waits a full
    /// spacing after this one, counted from `sent` however late it was.
    pub fn signal_sent(&mut self, sent: Instant) {
        if let Some(next) = self.pending.front_mut() {
            next.due = next.due.max(sent + SIGNAL_SPACING);
        }
    }

    fn send_pending(&self, p: PendingSignal, fx: &mut impl Effects) {
        let Some(u) = self.units.get(p.unit) else { return };
        let name = &u.desc.name;
        match u.state.pid() {
            Some(pid) => match fx.signal(pid, p.signal) {
                Ok(()) => fx.emit(event("container.signalled").kv("name", name).kv("signal", p.signal)),
                Err(e) => {
                    fx.emit(event("container.signal-failed").kv("name", name).kv("signal", p.signal).kv("error", e))
                }
            },
            None => fx.emit(
                event("container.signal-failed").kv("name", name).kv("signal", p.signal).kv("error", "not running"),
            ),
        }
    }

    /// What this caller may ask: the host everything, a container what its
    /// manifest entry grants, anyone else nothing.
    pub fn permissions(&self, caller: &Caller) -> Permissions {
        match caller {
            Caller::Host => Permissions::ALL,
            Caller::Container(name) => {
                self.units.iter().find(|u| u.desc.name == *name).map_or(Permissions(0), |u| u.desc.permissions)
            }
            Caller::Unknown => Permissions(0),
        }
    }

    /// The `ps` rows at `now`.
    pub fn ps(&self, now: Instant) -> Vec<PsRow> {
        self.units
            .iter()
            .map(|u| PsRow {
                name: u.desc.name.clone(),
                state: match (u.state, u.freeze) {
                    (State::Running { .. }, Freeze::Freezing { .. } | Freeze::Frozen) => "paused",
                    (state, _) => state.name(),
                },
                health: u.health.as_ref().map(|h| h.state().map_or("none", Health::name)),
                pid: u.state.pid(),
                uptime_ms: match u.state {
                    State::Running { .. } => u
                        .run_started
                        .map(|t| now.saturating_duration_since(t).as_millis().min(u128::from(u64::MAX)) as u64),
                    _ => None,
                },
                restarts: u.restarts,
                last_exit: u.last_exit.map(|e| match e {
                    Exit::Code(c) => format!("code={c}"),
                    Exit::Signal(s) => format!("signal={s}"),
                }),
            })
            .collect()
    }

    /// The answer to a control request `text` from `caller`. A request the
    /// caller has no permission for is refused (`control.refused`).
    pub fn answer(&mut self, caller: &Caller, text: &str, now: Instant, fx: &mut impl Effects) -> Answer {
        let request = match control::parse(text) {
            Ok(r) => r,
            Err(e) => return Answer::Reply(format!("error {e}")),
        };
        if request == Request::Heartbeat {
            return self.heartbeat(caller, now, fx);
        }
        let needs = request.needs();
        if !self.permissions(caller).has(needs) {
            fx.emit(
                event("control.refused")
                    .kv("caller", caller.name())
                    .kv("request", request.verb())
                    .kv("needs", needs.name()),
            );
            return Answer::Reply("error not permitted".into());
        }
        let unit = |name: &str| self.units.iter().position(|u| u.desc.name == name);
        let reply = |t: &str| Answer::Reply(t.into());
        match request {
            Request::Status => {
                let mut s = String::from("ok");
                for u in &self.units {
                    s.push(' ');
                    s.push_str(&u.desc.name);
                    s.push('=');
                    s.push_str(u.state.name());
                }
                Answer::Reply(s)
            }
            Request::Ps => Answer::Ps(self.ps(now)),
            Request::Events => Answer::Events,
            Request::Update => Answer::Update,
            Request::Exec { name, argv, opts } => match unit(&name) {
                None => Answer::Reply(format!("error no container {name}")),
                Some(unit) => match self.units.get(unit).map(|u| u.state) {
                    Some(State::Running { pid }) => Answer::Exec { unit, pid, argv, opts },
                    _ => Answer::Reply(format!("error {name} is not running")),
                },
            },
            Request::Logs { name, follow: true, .. } if name == control::KERNEL => {
                Answer::Reply(format!("error --follow is not served for {name}"))
            }
            Request::Logs { name, since_ms, .. } if name == control::KERNEL => Answer::KernelLog { since_ms },
            Request::Logs { name, since_ms, follow } => match unit(&name) {
                Some(unit) => Answer::Logs { unit, since_ms, follow },
                None => Answer::Reply(format!("error no container {name}")),
            },
            Request::PowerOff => {
                self.request_shutdown(ShutdownKind::PowerOff, "control", now, fx);
                reply("ok")
            }
            Request::Reboot => {
                self.request_shutdown(ShutdownKind::Reboot, "control", now, fx);
                reply("ok")
            }
            _ if self.shutdown.is_some() => reply("error shutting down"),
            Request::Start(name) | Request::Stop(name) | Request::Restart(name) if unit(&name).is_none() => {
                Answer::Reply(format!("error no container {name}"))
            }
            Request::Start(name) => {
                let Some(u) = unit(&name).and_then(|i| self.units.get_mut(i)) else { return reply("error") };
                if u.state != State::Stopped {
                    return Answer::Reply(format!("error {name} is {}", u.state.name()));
                }
                u.state = State::Waiting;
                u.want = Want::Policy;
                reply("ok")
            }
            Request::Stop(name) => self.stop_unit(&name, Want::Stop, now, fx),
            Request::Restart(name) => self.stop_unit(&name, Want::Restart, now, fx),
            Request::Pause(name) => self.pause(&name, now, fx),
            Request::VolumePrune => Answer::VolumePrune,
            Request::Dns(servers) => Answer::Dns(servers),
            Request::Resume(name) => self.resume(&name, now, fx),
            Request::Heartbeat => reply("error"),
            Request::Signal { name, signals } => match unit(&name) {
                None => Answer::Reply(format!("error no container {name}")),
                Some(i) if self.units.get(i).and_then(|u| u.state.pid()).is_none() => {
                    Answer::Reply(format!("error {name} is not running"))
                }
                Some(_) if self.pending.len() + signals.len() > MAX_PENDING_SIGNALS => {
                    reply("error busy: too many signals pending")
                }
                Some(unit) => {
                    // Spaced with timers after whatever is already queued.
                    let mut due = self.pending.back().map_or(now, |p| p.due + SIGNAL_SPACING).max(now);
                    for signal in signals {
                        self.pending.push_back(PendingSignal { due, unit, signal });
                        due += SIGNAL_SPACING;
                    }
                    reply("ok")
                }
            },
        }
    }

    /// A running unit's timers: its health check, its pause taking effect.
    fn fire_running(&mut self, i: usize, pid: Pid, now: Instant, fx: &mut impl Effects) {
        let Some(u) = self.units.get_mut(i) else { return };
        if let Freeze::Freezing { since, poll, wait } = u.freeze {
            if poll <= now {
                if fx.frozen(i) == Some(true) {
                    u.freeze = Freeze::Frozen;
                    let waited = now.saturating_duration_since(since).as_millis();
                    fx.emit(event("container.paused").kv("name", &u.desc.name).kv("pid", pid).kv("waited_ms", waited));
                } else {
                    let wait = (wait * 2).min(FREEZE_POLL_MAX);
                    u.freeze = Freeze::Freezing { since, poll: now + wait, wait };
                }
            }
        }
        if u.freeze != Freeze::Thawed {
            return;
        }
        let Some(h) = u.health.as_mut() else { return };
        let change = match h.tick(now) {
            Tick::Idle => None,
            Tick::Changed(change) => Some(change),
            Tick::StartProbe => {
                let started = fx.start_probe(i, pid);
                h.probe_started(now);
                // Could not start: a failed check at once.
                if started {
                    None
                } else {
                    h.probe_ended(false, now)
                }
            }
            Tick::Overdue(change) => {
                fx.emit(
                    event("container.probe-failed")
                        .kv("name", &u.desc.name)
                        .kv("reason", "overdue")
                        .kv("after_ms", (h.config().timeout + health::PROBE_GRACE).as_millis()),
                );
                fx.kill_probe(i, true);
                change
            }
        };
        if let Some(change) = change {
            self.health_changed(i, change, now, fx);
        }
    }

    /// Unit `i`'s health probe ended (`passed`: exit status 0), as the
    /// executor heard from its helper (which emitted `container.probe-failed`
    /// if it did not pass). Nothing if it was killed meanwhile.
    pub fn probe_ended(&mut self, i: usize, passed: bool, now: Instant, fx: &mut impl Effects) {
        let Some(u) = self.units.get_mut(i) else { return };
        if !matches!(u.state, State::Running { .. }) {
            return;
        }
        if let Some(change) = u.health.as_mut().and_then(|h| h.probe_ended(passed, now)) {
            self.health_changed(i, change, now, fx);
        }
    }

    /// Unit `i`'s health changed: the event; an unhealthy container is
    /// stopped, then its restart policy decides as after a failure.
    fn health_changed(&mut self, i: usize, change: health::Change, now: Instant, fx: &mut impl Effects) {
        let Some(u) = self.units.get_mut(i) else { return };
        fx.emit(health_event(&u.desc.name, change));
        if change.to == Health::Unhealthy {
            if self.first_failure.is_none() {
                self.first_failure = Some(format!("{} unhealthy", u.desc.name));
            }
            let name = u.desc.name.clone();
            // As if it had failed: stopped, then its restart policy decides.
            self.stop_unit(&name, Want::Unhealthy, now, fx);
        }
    }

    /// A `heartbeat` from `caller`: the caller's own health check succeeds.
    /// It needs no permission, only a health check of its own.
    fn heartbeat(&mut self, caller: &Caller, now: Instant, fx: &mut impl Effects) -> Answer {
        let unit = match caller {
            Caller::Container(name) => self.units.iter_mut().find(|u| u.desc.name == *name),
            _ => None,
        };
        // A check by command is proved by its command alone.
        let Some(u) = unit.filter(|u| u.health.as_ref().is_some_and(|h| h.config().form == Form::Heartbeat)) else {
            fx.emit(
                event("control.refused").kv("caller", caller.name()).kv("request", "heartbeat").kv("needs", "health"),
            );
            return Answer::Reply("error not permitted".into());
        };
        if !matches!(u.state, State::Running { .. }) {
            return Answer::Reply(format!("error {} is {}", u.desc.name, u.state.name()));
        }
        if let Some(change) = u.health.as_mut().and_then(|h| h.success(now)) {
            fx.emit(health_event(&u.desc.name, change));
        }
        Answer::Reply("ok".into())
    }

    /// `pause NAME`: freeze its cgroup; `container.paused` once
    /// `cgroup.events` says frozen.
    fn pause(&mut self, name: &str, now: Instant, fx: &mut impl Effects) -> Answer {
        let Some(i) = self.units.iter().position(|u| u.desc.name == name) else {
            return Answer::Reply(format!("error no container {name}"));
        };
        let Some(u) = self.units.get_mut(i) else { return Answer::Reply("error".into()) };
        if !matches!(u.state, State::Running { .. }) {
            return Answer::Reply(format!("error {name} is {}", u.state.name()));
        }
        if u.freeze != Freeze::Thawed {
            return Answer::Reply(format!("error {name} is paused"));
        }
        if let Err(e) = fx.freeze(i, true) {
            fx.emit(event("container.pause-failed").kv("name", name).kv("error", &e));
            return Answer::Reply(format!("error {e}"));
        }
        u.freeze = Freeze::Freezing { since: now, poll: now, wait: FREEZE_POLL / 2 };
        // A probe would freeze with the container and time out: killed,
        // not counted.
        kill_probe(i, u, fx);
        if let Some(h) = u.health.as_mut() {
            h.pause();
        }
        // The first look at once: an idle cgroup is frozen by the write.
        let pid = u.state.pid().unwrap_or(0);
        self.fire_running(i, pid, now, fx);
        Answer::Reply("ok".into())
    }

    /// `resume NAME`: thaw its cgroup (thawing takes effect at once).
    fn resume(&mut self, name: &str, now: Instant, fx: &mut impl Effects) -> Answer {
        let Some(i) = self.units.iter().position(|u| u.desc.name == name) else {
            return Answer::Reply(format!("error no container {name}"));
        };
        let Some(u) = self.units.get_mut(i) else { return Answer::Reply("error".into()) };
        if !matches!(u.state, State::Running { .. }) || u.freeze == Freeze::Thawed {
            return Answer::Reply(format!("error {name} is not paused"));
        }
        if let Err(e) = fx.freeze(i, false) {
            fx.emit(event("container.resume-failed").kv("name", name).kv("error", &e));
            return Answer::Reply(format!("error {e}"));
        }
        u.freeze = Freeze::Thawed;
        if let Some(h) = u.health.as_mut() {
            h.resume(now);
        }
        fx.emit(event("container.resumed").kv("name", name).kv("reason", "control"));
        Answer::Reply("ok".into())
    }

    /// Whether every unit with a health check is healthy (the OTA commit
    /// gate); `Err` names the first that is not, and its health.
    pub fn all_healthy(&self) -> Result<(), String> {
        for u in &self.units {
            if let Some(h) = &u.health {
                let state = h.state();
                if state != Some(Health::Healthy) {
                    let what = state.map_or("not started", Health::name);
                    return Err(format!("{} is {what}", u.desc.name));
                }
            }
        }
        Ok(())
    }

    /// The longest any health check takes to give a verdict after a start.
    pub fn health_verdict_within(&self) -> Duration {
        self.units
            .iter()
            .filter_map(|u| u.health.as_ref())
            .map(|h| h.config().verdict_within())
            .max()
            .unwrap_or_default()
    }

    /// `stop` (want Stop) or `restart` (want Restart) of a unit.
    fn stop_unit(&mut self, name: &str, want: Want, now: Instant, fx: &mut impl Effects) -> Answer {
        let Some(i) = self.units.iter().position(|u| u.desc.name == name) else {
            return Answer::Reply(format!("error no container {name}"));
        };
        let Some(u) = self.units.get_mut(i) else { return Answer::Reply("error".into()) };
        match u.state {
            State::Running { pid } => {
                u.want = want;
                kill_probe(i, u, fx);
                thaw_to_stop(i, u, fx);
                let sig = u.desc.stop_signal;
                let reason = if want == Want::Unhealthy { "unhealthy" } else { "control" };
                fx.emit(
                    event("container.stopping")
                        .kv("name", &u.desc.name)
                        .kv("signal", sig)
                        .kv("grace_ms", u.desc.grace_ms)
                        .kv("reason", reason),
                );
                let _ = fx.signal(pid, sig);
                u.state = State::Stopping {
                    pid,
                    deadline: now + Duration::from_millis(u.desc.grace_ms.into()),
                    killed: false,
                };
            }
            State::Starting { pid, .. } => {
                u.want = want;
                fx.emit(event("container.killed").kv("name", &u.desc.name).kv("reason", "control during set-up"));
                fx.kill_cgroup(i, pid);
                fx.close_report(i);
                u.state = State::Stopping { pid, deadline: now + KILL_WAIT, killed: true };
            }
            State::Stopping { .. } => u.want = want,
            State::Waiting | State::Backoff { .. } | State::Stopped => {
                if want == Want::Restart {
                    u.state = State::Waiting;
                } else if u.state != State::Stopped {
                    u.state = State::Stopped;
                    fx.emit(event("container.stopped").kv("name", &u.desc.name).kv("reason", "control"));
                }
            }
        }
        Answer::Reply("ok".into())
    }
}

/// Kill unit `i`'s health probe if one is in flight: its container stops,
/// pauses or the device shuts down.
fn kill_probe(i: usize, u: &mut Unit, fx: &mut impl Effects) {
    if u.health.as_mut().is_some_and(Check::forget_probe) {
        fx.kill_probe(i, false);
    }
}

/// A paused unit is thawed before its stop signal: a frozen process would
/// only see the signal once thawed (SIGKILL and `cgroup.kill` act on
/// frozen tasks, but the stop signal must be handled).
fn thaw_to_stop(i: usize, u: &mut Unit, fx: &mut impl Effects) {
    if u.freeze == Freeze::Thawed {
        return;
    }
    u.freeze = Freeze::Thawed;
    match fx.freeze(i, false) {
        Ok(()) => fx.emit(event("container.resumed").kv("name", &u.desc.name).kv("reason", "stop")),
        Err(e) => fx.emit(event("container.resume-failed").kv("name", &u.desc.name).kv("error", e)),
    }
}

/// `container.health name= from= to= failures=`.
fn health_event(name: &str, change: health::Change) -> Event {
    event("container.health")
        .kv("name", name)
        .kv("from", change.from.map_or("none", Health::name))
        .kv("to", change.to.name())
        .kv("failures", change.failures)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::indexing_slicing, clippy::unwrap_used)]
mod tests;
