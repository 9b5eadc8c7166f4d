//! Host tests of the supervisor's core: a recorder stands in for the
//! executor, and time is whatever the test says it is.

use std::collections::BTreeMap;

use super::*;
use crate::control::Permission;
use crate::policy::RestartPolicy;

/// What the core asked for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Act {
    Spawn {
        unit: usize,
        restarts: u32,
        join: Option<Pid>,
    },
    Signal {
        pid: Pid,
        signal: i32,
    },
    KillCgroup {
        unit: usize,
        pid: Pid,
    },
    /// The event line from `event=` on.
    Event(String),
    Freeze {
        unit: usize,
        frozen: bool,
    },
    StartProbe {
        unit: usize,
        pid: Pid,
    },
    KillProbe {
        unit: usize,
        helper_too: bool,
    },
}

#[derive(Default)]
struct Recorder {
    acts: Vec<Act>,
    /// What spawning a unit gives (default: a new pid).
    outcome: BTreeMap<usize, Spawned>,
    next_pid: Pid,
    /// How long each spawn takes.
    spawn_takes: Duration,
    /// Units whose cgroup.events says frozen.
    frozen_units: Vec<usize>,
    /// Starting a probe fails.
    probe_fails: bool,
}

impl Recorder {
    fn new() -> Self {
        Self { next_pid: 100, ..Self::default() }
    }

    /// The acts since the last call.
    fn take(&mut self) -> Vec<Act> {
        std::mem::take(&mut self.acts)
    }

    /// Just the events since the last call.
    fn events(&mut self) -> Vec<String> {
        self.take()
            .into_iter()
            .filter_map(|a| match a {
                Act::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

impl Effects for Recorder {
    fn spawn(&mut self, i: usize, restarts: u32, join: Option<Pid>, now: Instant) -> Spawned {
        self.acts.push(Act::Spawn { unit: i, restarts, join });
        match self.outcome.get(&i) {
            Some(o) => *o,
            None => {
                self.next_pid += 1;
                Spawned::Started { pid: self.next_pid, at: now + self.spawn_takes }
            }
        }
    }
    fn attach_output(&mut self, _: usize) {}
    fn close_report(&mut self, _: usize) {}
    fn signal(&mut self, pid: Pid, signal: i32) -> Result<(), SysError> {
        self.acts.push(Act::Signal { pid, signal });
        Ok(())
    }
    fn kill_cgroup(&mut self, i: usize, pid: Pid) {
        self.acts.push(Act::KillCgroup { unit: i, pid });
    }
    fn freeze(&mut self, i: usize, frozen: bool) -> Result<(), SysError> {
        self.acts.push(Act::Freeze { unit: i, frozen });
        Ok(())
    }
    fn frozen(&mut self, i: usize) -> Option<bool> {
        Some(self.frozen_units.contains(&i))
    }
    fn emit(&mut self, e: Event) {
        let line = e.line();
        let from = line.find("event=").expect("an event line");
        self.acts.push(Act::Event(line[from..].to_owned()));
    }
    fn hostname(&mut self) -> String {
        "box\n".into()
    }
    fn start_probe(&mut self, i: usize, pid: Pid) -> bool {
        self.acts.push(Act::StartProbe { unit: i, pid });
        !self.probe_fails
    }
    fn kill_probe(&mut self, i: usize, helper_too: bool) {
        self.acts.push(Act::KillProbe { unit: i, helper_too });
    }
}

const T_OUT: Duration = Duration::from_secs(10);

fn unit(name: &str, policy: RestartPolicy, deps: &[usize]) -> UnitDesc {
    UnitDesc {
        critical: true,
        name: name.into(),
        deps: deps.to_vec(),
        join: None,
        restart: Restart { policy, backoff_initial_ms: 100, backoff_max_ms: 400 },
        stop_signal: 15,
        grace_ms: 500,
        permissions: Permissions(0),
        health: None,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn machine(units: Vec<UnitDesc>, order: &[usize]) -> Machine {
    Machine::new(units, order.to_vec(), T_OUT)
}

fn pid(m: &Machine, i: usize) -> Pid {
    m.state(i).and_then(State::pid).expect("unit has a pid")
}

/// Start every unit and let each report a done set-up.
fn all_running(m: &mut Machine, fx: &mut Recorder, t0: Instant) {
    m.step(t0, fx);
    for i in 0..m.units.len() {
        assert!(!m.settle(i, Report::Done { exec_failed: None }, None, t0, fx));
        assert!(matches!(m.state(i), Some(State::Running { .. })), "{i}: {:?}", m.state(i));
    }
    fx.take();
}

#[test]
fn units_start_in_the_given_order_and_boot_is_announced_once_all_settled() {
    let mut m = machine(
        vec![
            unit("a", RestartPolicy::Never, &[]),
            unit("b", RestartPolicy::Never, &[]),
            unit("c", RestartPolicy::Never, &[]),
        ],
        &[2, 0, 1],
    );
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    let spawned: Vec<usize> = fx
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Act::Spawn { unit, .. } => Some(unit),
            _ => None,
        })
        .collect();
    assert_eq!(spawned, [2, 0, 1]);
    m.step(t0, &mut fx);
    assert!(fx.take().is_empty(), "nothing new while set-ups are under way");
    for i in [2, 0] {
        m.settle(i, Report::Done { exec_failed: None }, None, t0, &mut fx);
    }
    m.step(t0, &mut fx);
    assert!(!fx.events().iter().any(|e| e.starts_with("event=boot.containers-started")));
    m.settle(1, Report::Done { exec_failed: None }, None, t0, &mut fx);
    m.step(t0, &mut fx);
    assert_eq!(fx.events().last().map(String::as_str), Some("event=boot.containers-started running=3 total=3"));
    m.step(t0, &mut fx);
    assert!(fx.take().is_empty(), "announced once");
}

#[test]
fn a_dependent_waits_for_its_dependency_to_start() {
    let mut m = machine(vec![unit("db", RestartPolicy::Never, &[]), unit("app", RestartPolicy::Never, &[0])], &[0, 1]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    assert_eq!(fx.take().first(), Some(&Act::Spawn { unit: 0, restarts: 0, join: None }));
    assert_eq!(m.state(1), Some(State::Waiting), "db is only starting");
    m.step(t0 + ms(5), &mut fx);
    assert_eq!(m.state(1), Some(State::Waiting));
    m.settle(0, Report::Done { exec_failed: None }, None, t0 + ms(10), &mut fx);
    fx.take();
    m.step(t0 + ms(10), &mut fx);
    assert_eq!(fx.take().first(), Some(&Act::Spawn { unit: 1, restarts: 0, join: None }));
}

#[test]
fn a_dependency_that_never_started_blocks_its_dependents() {
    let mut m = machine(
        vec![
            unit("db", RestartPolicy::Never, &[]),
            unit("app", RestartPolicy::Never, &[0]),
            unit("ui", RestartPolicy::Never, &[1]),
        ],
        &[0, 1, 2],
    );
    let mut fx = Recorder::new();
    fx.outcome.insert(0, Spawned::Unstartable);
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    let events = fx.events();
    assert_eq!(
        events,
        [
            "event=container.blocked name=app dependency=db reason=\"dependency never started\"",
            "event=container.blocked name=ui dependency=app reason=\"dependency never started\"",
            "event=boot.containers-started running=0 total=3",
        ]
    );
    assert_eq!(m.state(1), Some(State::Stopped));
    assert_eq!(m.state(2), Some(State::Stopped));
}

#[test]
fn a_dependency_that_started_once_does_not_block_after_it_stopped() {
    let mut m = machine(vec![unit("db", RestartPolicy::Never, &[]), unit("app", RestartPolicy::Never, &[0])], &[0, 1]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    let db = pid(&m, 0);
    m.settle(0, Report::Done { exec_failed: None }, None, t0, &mut fx);
    m.exited(0, Exit::Code(0), t0, &mut fx);
    fx.take();
    m.step(t0, &mut fx);
    assert_eq!(fx.take().first(), Some(&Act::Spawn { unit: 1, restarts: 0, join: None }), "db ({db}) ran");
}

#[test]
fn a_joined_network_is_the_running_pid_of_the_unit_named() {
    let mut net = unit("app", RestartPolicy::Never, &[0]);
    net.join = Some(0);
    let mut m = machine(vec![unit("net", RestartPolicy::Never, &[]), net], &[0, 1]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    let p = pid(&m, 0);
    m.settle(0, Report::Done { exec_failed: None }, None, t0, &mut fx);
    fx.take();
    m.step(t0, &mut fx);
    assert_eq!(fx.take().first(), Some(&Act::Spawn { unit: 1, restarts: 0, join: Some(p) }));
}

/// Run unit 0 from its start to an exit with `code` at `t`.
fn run_and_exit(m: &mut Machine, fx: &mut Recorder, start: Instant, t: Instant, code: i32) {
    m.settle(0, Report::Done { exec_failed: None }, None, start, fx);
    m.exited(0, Exit::Code(code), t, fx);
}

#[test]
fn restart_backoff_doubles_up_to_its_cap() {
    let mut m = machine(vec![unit("a", RestartPolicy::Always, &[])], &[0]);
    let mut fx = Recorder::new();
    let mut t = Instant::now();
    m.step(t, &mut fx);
    let mut delays = Vec::new();
    for n in 0..5u32 {
        run_and_exit(&mut m, &mut fx, t, t + ms(1), 1);
        t += ms(1);
        let Some(State::Backoff { until }) = m.state(0) else { panic!("{:?}", m.state(0)) };
        let delay = until - t;
        delays.push(delay.as_millis());
        let events = fx.events();
        assert_eq!(
            events.last().map(String::as_str),
            Some(
                format!("event=container.restart-scheduled name=a attempt={} delay_ms={}", n + 1, delay.as_millis())
                    .as_str()
            )
        );
        // Not a millisecond early.
        m.fire(until - ms(1), &mut fx);
        assert!(fx.take().is_empty());
        t = until;
        m.fire(t, &mut fx);
        assert_eq!(fx.take().first(), Some(&Act::Spawn { unit: 0, restarts: n + 1, join: None }));
    }
    assert_eq!(delays, [100, 200, 400, 400, 400]);
}

#[test]
fn on_failure_gives_up_and_a_clean_exit_stays_stopped() {
    let mut r = unit("a", RestartPolicy::OnFailure { max_restarts: 1 }, &[]);
    r.restart.backoff_initial_ms = 10;
    let mut m = machine(vec![r], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    run_and_exit(&mut m, &mut fx, t, t, 3);
    m.fire(t + ms(10), &mut fx);
    run_and_exit(&mut m, &mut fx, t + ms(10), t + ms(20), 3);
    assert_eq!(m.state(0), Some(State::Stopped));
    assert_eq!(fx.events().last().map(String::as_str), Some("event=container.gave-up name=a restarts=1"));

    let mut m = machine(vec![unit("b", RestartPolicy::OnFailure { max_restarts: 1 }, &[])], &[0]);
    m.step(t, &mut fx);
    run_and_exit(&mut m, &mut fx, t, t, 0);
    assert_eq!(m.state(0), Some(State::Stopped));
    assert_eq!(fx.events().last().map(String::as_str), Some("event=container.stopped name=b reason=policy"));
}

#[test]
fn a_long_run_resets_the_restart_count() {
    let mut m = machine(vec![unit("a", RestartPolicy::OnFailure { max_restarts: 2 }, &[])], &[0]);
    let mut fx = Recorder::new();
    let mut t = Instant::now();
    m.step(t, &mut fx);
    // Two quick crashes: restarts 1 and 2.
    for _ in 0..2 {
        run_and_exit(&mut m, &mut fx, t, t + ms(1), 1);
        t += ms(1000);
        m.fire(t, &mut fx);
    }
    assert_eq!(m.restarts(0), 2);
    fx.take();
    // A run longer than the reset floor (10 s) forgives them: attempt 1 again.
    run_and_exit(&mut m, &mut fx, t, t + ms(10_001), 1);
    assert_eq!(
        fx.events().last().map(String::as_str),
        Some("event=container.restart-scheduled name=a attempt=1 delay_ms=100")
    );
    assert_eq!(m.restarts(0), 0);
    // Exactly the floor is not longer than it: a third quick crash gives up.
    let mut m = machine(vec![unit("b", RestartPolicy::OnFailure { max_restarts: 2 }, &[])], &[0]);
    let mut t = Instant::now();
    m.step(t, &mut fx);
    for _ in 0..2 {
        run_and_exit(&mut m, &mut fx, t, t + ms(1), 1);
        t += ms(1000);
        m.fire(t, &mut fx);
    }
    fx.take();
    run_and_exit(&mut m, &mut fx, t, t + ms(10_000), 1);
    assert_eq!(fx.events().last().map(String::as_str), Some("event=container.gave-up name=b restarts=2"));
}

#[test]
fn a_spawn_failure_is_a_setup_failure_under_the_policy() {
    let mut m = machine(vec![unit("a", RestartPolicy::OnFailure { max_restarts: 1 }, &[])], &[0]);
    let mut fx = Recorder::new();
    fx.outcome.insert(0, Spawned::Failed);
    let t = Instant::now();
    m.step(t, &mut fx);
    assert!(matches!(m.state(0), Some(State::Backoff { .. })), "{:?}", m.state(0));
}

#[test]
fn a_setup_report_fails_the_start_and_kills_the_cgroup() {
    let mut m = machine(vec![unit("a", RestartPolicy::Never, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    let p = pid(&m, 0);
    fx.take();
    let fields = vec![("stage", "mount".to_owned()), ("error", "EPERM".to_owned())];
    assert!(m.settle(0, Report::Failed(fields), None, t, &mut fx));
    assert_eq!(
        fx.take(),
        [
            Act::Event(format!("event=container.failed name=a pid={p} stage=mount error=EPERM")),
            Act::KillCgroup { unit: 0, pid: p },
            Act::Event("event=container.stopped name=a reason=policy".into()),
        ]
    );
    // An exit during set-up without a report says so.
    let mut m = machine(vec![unit("b", RestartPolicy::Never, &[])], &[0]);
    m.step(t, &mut fx);
    let p = pid(&m, 0);
    fx.take();
    assert!(!m.settle(0, Report::Pending, None, t, &mut fx), "pending without an exit is no news");
    assert!(m.settle(0, Report::Pending, Some(Exit::Code(125)), t, &mut fx));
    assert_eq!(
        fx.events().first().map(String::as_str),
        Some(format!("event=container.failed name=b pid={p} error=\"exited during set-up without a report\"").as_str())
    );
}

#[test]
fn an_exec_failure_is_a_start_then_an_exit() {
    let mut m = machine(vec![unit("a", RestartPolicy::Never, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    let p = pid(&m, 0);
    fx.take();
    let report = Report::Done { exec_failed: Some(("/bin/x".into(), "ENOENT".into())) };
    assert!(!m.settle(0, report, Some(Exit::Code(127)), t, &mut fx));
    assert_eq!(
        fx.events(),
        [
            format!("event=container.started name=a pid={p} restarts=0"),
            "event=container.exec-failed name=a path=/bin/x error=ENOENT".into()
        ]
    );
    assert_eq!(m.state(0), Some(State::Running { pid: p }), "the exit is handled by `exited` next");
}

#[test]
fn a_start_timeout_kills_the_cgroup_and_counts_as_a_setup_failure() {
    let mut m = machine(vec![unit("slow", RestartPolicy::OnFailure { max_restarts: 1 }, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    let p = pid(&m, 0);
    fx.take();
    m.fire(t + T_OUT - ms(1), &mut fx);
    assert!(fx.take().is_empty(), "not before the timeout");
    m.fire(t + T_OUT, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Act::Event(format!("event=container.start-timeout name=slow pid={p} timeout_ms=10000")),
            Act::KillCgroup { unit: 0, pid: p },
            Act::Event("event=container.restart-scheduled name=slow attempt=1 delay_ms=100".into()),
        ]
    );
    // The late exit of the killed init is no longer this unit's.
    assert_eq!(m.unit_of(p), None);
}

#[test]
fn the_start_timeout_counts_from_when_the_spawn_returned() {
    // Two units started in one step, each spawn taking 1.2 s (a clone into
    // a cgroup with a tiny cpu share): the second's timeout counts from
    // its own spawn, not from the step.
    let mut m = Machine::new(
        vec![unit("slow", RestartPolicy::Never, &[]), unit("driver", RestartPolicy::Never, &[])],
        vec![0, 1],
        ms(1000),
    );
    let mut fx = Recorder::new();
    fx.spawn_takes = ms(1200);
    let t = Instant::now();
    m.step(t, &mut fx);
    fx.take();
    m.fire(t + ms(2199), &mut fx);
    assert!(fx.take().is_empty(), "timed out before 1 s after its spawn returned");
    m.fire(t + ms(2200), &mut fx);
    assert!(matches!(m.state(0), Some(State::Stopped)));
    assert!(matches!(m.state(1), Some(State::Stopped)));
}

#[test]
fn shutdown_stops_in_reverse_start_order_one_at_a_time() {
    let mut m = machine(
        vec![
            unit("a", RestartPolicy::Always, &[]),
            unit("b", RestartPolicy::Always, &[0]),
            unit("c", RestartPolicy::Always, &[]),
        ],
        &[2, 0, 1],
    );
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    for i in [2, 0] {
        m.settle(i, Report::Done { exec_failed: None }, None, t, &mut fx);
    }
    m.step(t, &mut fx);
    m.settle(1, Report::Done { exec_failed: None }, None, t, &mut fx);
    fx.take();
    m.request_shutdown(ShutdownKind::Reboot, "test", t, &mut fx);
    assert_eq!(fx.events(), ["event=shutdown.start kind=reboot reason=test hostname=box"]);
    let mut stopped = Vec::new();
    for _ in 0..3 {
        assert_eq!(m.step(t, &mut fx), None);
        let acts = fx.take();
        let Some(Act::Signal { pid, signal: 15 }) = acts.get(1).cloned() else { panic!("{acts:?}") };
        let i = m.unit_of(pid).expect("a unit");
        stopped.push(i);
        assert_eq!(m.step(t, &mut fx), None);
        assert!(fx.take().is_empty(), "the next waits for this one's exit");
        // It exits: not restarted, although its policy is Always.
        m.exited(i, Exit::Signal(15), t, &mut fx);
        assert_eq!(m.state(i), Some(State::Stopped));
    }
    assert_eq!(stopped, [1, 0, 2]);
    assert_eq!(m.step(t, &mut fx), Some(ShutdownKind::Reboot));
}

#[test]
fn a_container_that_never_stops_gets_grace_then_kill_then_stop_timeout() {
    let mut m =
        machine(vec![unit("a", RestartPolicy::Always, &[]), unit("stubborn", RestartPolicy::Always, &[])], &[0, 1]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    all_running(&mut m, &mut fx, t);
    let p = pid(&m, 1);
    m.request_shutdown(ShutdownKind::PowerOff, "signal", t, &mut fx);
    fx.take();
    assert_eq!(m.step(t, &mut fx), None);
    assert_eq!(
        fx.take(),
        [
            Act::Event("event=container.stopping name=stubborn signal=15 grace_ms=500".into()),
            Act::Signal { pid: p, signal: 15 }
        ]
    );
    m.fire(t + ms(499), &mut fx);
    assert!(fx.take().is_empty(), "not killed before the grace period is over");
    let grace = t + ms(500);
    m.fire(grace, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Act::Event("event=container.killed name=stubborn reason=\"grace period over\"".into()),
            Act::KillCgroup { unit: 1, pid: p }
        ]
    );
    m.fire(grace + KILL_WAIT - ms(1), &mut fx);
    assert!(fx.take().is_empty());
    m.fire(grace + KILL_WAIT, &mut fx);
    assert_eq!(fx.take(), [Act::Event(format!("event=container.stop-timeout name=stubborn pid={p}"))]);
    assert_eq!(m.state(1), Some(State::Stopped));
    // The shutdown goes on with the next one.
    assert_eq!(m.step(grace + KILL_WAIT, &mut fx), None);
    assert!(matches!(fx.take().get(1), Some(Act::Signal { signal: 15, .. })));
}

#[test]
fn nothing_starts_once_a_shutdown_began() {
    let mut m = machine(
        vec![
            unit("a", RestartPolicy::Always, &[]),
            unit("b", RestartPolicy::Always, &[0]),
            unit("c", RestartPolicy::Always, &[]),
        ],
        &[0, 1, 2],
    );
    let mut fx = Recorder::new();
    fx.outcome.insert(2, Spawned::Failed);
    let t = Instant::now();
    m.step(t, &mut fx);
    // a starting, b waiting for it, c in backoff after a failed spawn.
    let a = pid(&m, 0);
    assert!(matches!(m.state(2), Some(State::Backoff { .. })));
    fx.take();
    m.request_shutdown(ShutdownKind::PowerOff, "control", t, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Act::Event("event=shutdown.start kind=poweroff reason=control hostname=box".into()),
            Act::Event("event=container.killed name=a reason=\"shutdown during set-up\"".into()),
            Act::KillCgroup { unit: 0, pid: a },
            Act::Event("event=container.stopped name=b reason=shutdown was=waiting".into()),
            Act::Event("event=container.stopped name=c reason=shutdown was=backoff".into()),
        ]
    );
    // The killed set-up reporting success afterwards is not a start.
    assert!(!m.settle(0, Report::Done { exec_failed: None }, None, t, &mut fx));
    for dt in [0, 100, 1000, 5000] {
        m.step(t + ms(dt), &mut fx);
        m.fire(t + ms(dt), &mut fx);
    }
    assert!(!fx.take().iter().any(|a| matches!(a, Act::Spawn { .. })), "a spawn during the shutdown");
    // A second request changes nothing.
    m.request_shutdown(ShutdownKind::Reboot, "signal", t, &mut fx);
    assert!(fx.take().is_empty());
}

#[test]
fn a_unit_killed_at_shutdown_during_setup_is_waited_for_then_given_up_on() {
    let mut m = machine(vec![unit("a", RestartPolicy::Always, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.step(t, &mut fx);
    let a = pid(&m, 0);
    m.request_shutdown(ShutdownKind::PowerOff, "control", t, &mut fx);
    assert_eq!(m.step(t, &mut fx), None, "waits for the killed set-up");
    m.fire(t + KILL_WAIT, &mut fx);
    assert_eq!(fx.events().last(), Some(&format!("event=container.stop-timeout name=a pid={a}")));
    assert_eq!(m.step(t + KILL_WAIT, &mut fx), Some(ShutdownKind::PowerOff));
}

#[test]
fn control_requests_are_checked_and_signals_spaced() {
    let mut ctl = unit("ctl", RestartPolicy::Never, &[]);
    ctl.permissions = Permissions::of(&[Permission::Status, Permission::Lifecycle, Permission::Power]);
    let mut m = machine(vec![ctl, unit("x", RestartPolicy::Never, &[])], &[0, 1]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    all_running(&mut m, &mut fx, t);
    let x = pid(&m, 1);
    let other = Caller::Container("x".into());
    assert_eq!(reply(m.answer(&other, "cairn/1 status", t, &mut fx)), "error not permitted");
    assert_eq!(reply(m.answer(&Caller::Unknown, "cairn/1 status", t, &mut fx)), "error not permitted");
    fx.take();
    let ctl = Caller::Container("ctl".into());
    assert_eq!(reply(m.answer(&ctl, "cairn/1 status", t, &mut fx)), "ok ctl=running x=running");
    assert_eq!(reply(m.answer(&ctl, "cairn/1 signal ghost 15", t, &mut fx)), "error no container ghost");
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 signal x 19,18", t, &mut fx)), "ok");
    assert_eq!(m.next_deadline(), Some(t));
    assert!(m.fire_signals(t, &mut fx));
    assert_eq!(
        fx.take(),
        [Act::Signal { pid: x, signal: 19 }, Act::Event("event=container.signalled name=x signal=19".into())]
    );
    // The next one a full spacing after the kill was done (3 ms late here),
    // even if the loop comes early.
    let sent = t + ms(3);
    m.signal_sent(sent);
    assert_eq!(m.next_deadline(), Some(sent + SIGNAL_SPACING));
    assert!(!m.fire_signals(sent + SIGNAL_SPACING - ms(1), &mut fx));
    assert!(fx.take().is_empty());
    assert!(m.fire_signals(sent + SIGNAL_SPACING, &mut fx));
    assert_eq!(fx.take().first(), Some(&Act::Signal { pid: x, signal: 18 }));
    let many = vec!["9"; MAX_PENDING_SIGNALS + 1].join(",");
    assert_eq!(
        reply(m.answer(&Caller::Host, &format!("cairn/1 signal x {many}"), t, &mut fx)),
        "error busy: too many signals pending"
    );
    m.exited(1, Exit::Code(0), t, &mut fx);
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 signal x 15", t, &mut fx)), "error x is not running");
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 poweroff", t, &mut fx)), "ok");
    assert!(fx.events().iter().any(|e| e == "event=shutdown.start kind=poweroff reason=control hostname=box"));
}

#[test]
fn a_due_backoff_during_a_shutdown_is_not_a_start() {
    let mut m = machine(vec![unit("a", RestartPolicy::Always, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    m.request_shutdown(ShutdownKind::Reboot, "test", t, &mut fx);
    // However it got there: a backoff that is due is not a start.
    m.units[0].state = State::Backoff { until: t };
    fx.take();
    m.fire(t, &mut fx);
    assert!(fx.take().is_empty());
    assert_eq!(m.restarts(0), 0);
    assert_eq!(m.state(0), Some(State::Stopped));
}

fn reply(a: Answer) -> String {
    match a {
        Answer::Reply(r) => r,
        other => panic!("not a plain reply: {other:?}"),
    }
}

/// Units `web` (granted `perms`) and `x`, both running; `web` as a caller.
fn web_granted(perms: &[Permission]) -> (Machine, Recorder, Instant, Caller) {
    let mut web = unit("web", RestartPolicy::Never, &[]);
    web.permissions = Permissions::of(perms);
    let mut m = machine(vec![web, unit("x", RestartPolicy::Never, &[])], &[0, 1]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    all_running(&mut m, &mut fx, t);
    (m, fx, t, Caller::Container("web".into()))
}

#[test]
fn every_request_needs_its_permission_and_a_refusal_names_the_caller() {
    let (mut m, mut fx, t, web) = web_granted(&[Permission::Status]);
    let none = Caller::Container("x".into());
    let cases = [
        ("ps", "status"),
        ("status", "status"),
        ("events --follow", "status"),
        ("logs web", "logs"),
        ("start x", "lifecycle"),
        ("stop x", "lifecycle"),
        ("restart x", "lifecycle"),
        ("signal x 15", "lifecycle"),
        ("poweroff", "power"),
        ("reboot", "power"),
        ("exec x -- sh", "exec"),
        ("update", "update"),
    ];
    for (req, needs) in cases {
        let verb = req.split(' ').next().unwrap();
        for caller in [&none, &Caller::Unknown] {
            assert_eq!(reply(m.answer(caller, &format!("cairn/1 {req}"), t, &mut fx)), "error not permitted", "{req}");
            assert_eq!(
                fx.events(),
                [format!("event=control.refused caller={} request={verb} needs={needs}", caller.name())]
            );
        }
        let granted = m.answer(&web, &format!("cairn/1 {req}"), t, &mut fx);
        assert_eq!(granted != Answer::Reply("error not permitted".into()), needs == "status", "{req}: {granted:?}");
        fx.take();
    }
    assert!(matches!(m.answer(&web, "cairn/1 ps", t, &mut fx), Answer::Ps(rows) if rows.len() == 2));
    assert_eq!(m.answer(&web, "cairn/1 events", t, &mut fx), Answer::Events);
    // No version word: refused as a protocol error, before any permission.
    assert_eq!(reply(m.answer(&none, "status", t, &mut fx)), "error unsupported protocol (this is cairn/1)");
    assert!(fx.events().is_empty());
    assert_eq!(m.state(1).map(State::name), Some("running"), "nothing refused had an effect");
    assert!(!m.shutting_down());
    // Deleting volumes' data needs `volumes`, which nothing else grants.
    for caller in [&none, &web] {
        assert_eq!(reply(m.answer(caller, "cairn/1 volume prune", t, &mut fx)), "error not permitted");
        let refused = format!("event=control.refused caller={} request=volume-prune needs=volumes", caller.name());
        assert_eq!(fx.events(), [refused]);
    }
    let (mut m, mut fx, t, web) =
        web_granted(&[Permission::Status, Permission::Logs, Permission::Lifecycle, Permission::Volumes]);
    assert_eq!(m.answer(&web, "cairn/1 volume prune", t, &mut fx), Answer::VolumePrune);
    assert_eq!(m.answer(&Caller::Host, "cairn/1 volume prune", t, &mut fx), Answer::VolumePrune);
    m.request_shutdown(ShutdownKind::PowerOff, "test", t, &mut fx);
    assert_eq!(reply(m.answer(&web, "cairn/1 volume prune", t, &mut fx)), "error shutting down");
}

#[test]
fn stop_start_and_restart_override_the_policy_once() {
    let mut m = machine(vec![unit("a", RestartPolicy::Always, &[])], &[0]);
    let mut fx = Recorder::new();
    let t = Instant::now();
    all_running(&mut m, &mut fx, t);
    let a = pid(&m, 0);
    let host = Caller::Host;
    assert_eq!(reply(m.answer(&host, "cairn/1 stop a", t, &mut fx)), "ok");
    assert_eq!(
        fx.take(),
        [
            Act::Event("event=container.stopping name=a signal=15 grace_ms=500 reason=control".into()),
            Act::Signal { pid: a, signal: 15 }
        ]
    );
    m.exited(0, Exit::Signal(15), t + ms(10), &mut fx);
    assert_eq!(fx.events(), ["event=container.stopped name=a reason=control"]);
    assert_eq!(m.state(0), Some(State::Stopped), "always, yet stopped: the operator asked");
    assert_eq!(reply(m.answer(&host, "cairn/1 stop a", t, &mut fx)), "ok");
    assert_eq!(reply(m.answer(&host, "cairn/1 start a", t, &mut fx)), "ok");
    m.step(t + ms(20), &mut fx);
    assert!(matches!(m.state(0), Some(State::Starting { .. })));
    assert_eq!(reply(m.answer(&host, "cairn/1 start a", t, &mut fx)), "error a is starting");
    assert!(!m.settle(0, Report::Done { exec_failed: None }, None, t + ms(30), &mut fx));
    let a = pid(&m, 0);
    fx.take();
    assert_eq!(reply(m.answer(&host, "cairn/1 restart a", t + ms(40), &mut fx)), "ok");
    m.exited(0, Exit::Signal(15), t + ms(50), &mut fx);
    assert_eq!(m.state(0), Some(State::Waiting));
    fx.take();
    m.step(t + ms(50), &mut fx);
    assert!(matches!(fx.take().first(), Some(Act::Spawn { unit: 0, .. })), "started again at once");
    assert_ne!(m.state(0).and_then(State::pid), Some(a));
    let rows = m.ps(t + ms(60));
    assert_eq!(rows.first().map(|r| (r.state, r.last_exit.clone())), Some(("starting", Some("signal=15".into()))));
    assert_eq!(reply(m.answer(&host, "cairn/1 stop ghost", t, &mut fx)), "error no container ghost");
    assert_eq!(m.answer(&host, "cairn/1 logs @kernel --since 1.5", t, &mut fx), Answer::KernelLog { since_ms: 1500 });
    assert_eq!(
        reply(m.answer(&host, "cairn/1 logs @kernel --follow", t, &mut fx)),
        "error --follow is not served for @kernel"
    );
    assert_eq!(
        m.answer(&host, "cairn/1 logs a --follow", t, &mut fx),
        Answer::Logs { unit: 0, since_ms: 0, follow: true }
    );
}

fn checked(name: &str, policy: RestartPolicy, interval: u64, retries: u32) -> UnitDesc {
    UnitDesc {
        health: Some(health::Config {
            interval: ms(interval),
            timeout: ms(0),
            retries,
            start_period: ms(0),
            form: health::Form::Heartbeat,
        }),
        ..unit(name, policy, &[])
    }
}

fn health_events(fx: &mut Recorder) -> Vec<String> {
    fx.events().into_iter().filter(|e| e.starts_with("event=container.health ")).collect()
}

#[test]
fn an_unhealthy_container_is_restarted_as_if_it_had_failed() {
    let mut m = machine(vec![checked("web", RestartPolicy::OnFailure { max_restarts: 3 }, 1000, 2)], &[0]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    m.step(t0, &mut fx);
    m.settle(0, Report::Done { exec_failed: None }, None, t0, &mut fx);
    assert_eq!(health_events(&mut fx), ["event=container.health name=web from=none to=starting failures=0"]);
    let web = Caller::Container("web".into());
    assert_eq!(reply(m.answer(&web, "cairn/1 heartbeat", t0 + ms(100), &mut fx)), "ok");
    assert_eq!(health_events(&mut fx), ["event=container.health name=web from=starting to=healthy failures=0"]);
    assert_eq!(m.ps(t0)[0].health, Some("healthy"));
    assert_eq!(m.all_healthy(), Ok(()));
    // Beats keep it healthy; then silence.
    let mut t = t0 + ms(100);
    for _ in 0..5 {
        t += ms(900);
        m.fire(t, &mut fx);
        assert_eq!(reply(m.answer(&web, "cairn/1 heartbeat", t, &mut fx)), "ok");
    }
    assert!(fx.events().is_empty());
    assert_eq!(m.next_deadline(), Some(t + ms(1000)));
    m.fire(t + ms(1000), &mut fx);
    assert!(fx.events().is_empty(), "one failure of two");
    m.fire(t + ms(2000), &mut fx);
    let pid0 = pid(&m, 0);
    assert_eq!(
        fx.take(),
        [
            Act::Event("event=container.health name=web from=healthy to=unhealthy failures=2".into()),
            Act::Event("event=container.stopping name=web signal=15 grace_ms=500 reason=unhealthy".into()),
            Act::Signal { pid: pid0, signal: 15 },
        ]
    );
    assert_eq!(m.health(), Err("web unhealthy".into()));
    assert_eq!(m.all_healthy(), Err("web is unhealthy".into()));
    // It exits with 0 on its stop signal: on-failure restarts it anyway.
    m.exited(0, Exit::Code(0), t + ms(2100), &mut fx);
    assert_eq!(fx.events(), ["event=container.restart-scheduled name=web attempt=1 delay_ms=100"]);
    m.fire(t + ms(2200), &mut fx);
    m.settle(0, Report::Done { exec_failed: None }, None, t + ms(2300), &mut fx);
    assert_eq!(health_events(&mut fx), ["event=container.health name=web from=unhealthy to=starting failures=0"]);
    assert_eq!(m.restarts(0), 1);
}

fn probed(name: &str, policy: RestartPolicy, interval: u64, retries: u32) -> UnitDesc {
    UnitDesc {
        health: Some(health::Config {
            interval: ms(interval),
            timeout: ms(500),
            retries,
            start_period: ms(0),
            form: health::Form::Command,
        }),
        ..unit(name, policy, &[])
    }
}

#[test]
fn a_command_check_starts_one_probe_per_interval_and_its_failures_restart_the_container() {
    let mut m = machine(vec![probed("web", RestartPolicy::OnFailure { max_restarts: 1 }, 1000, 2)], &[0]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    all_running(&mut m, &mut fx, t0);
    let web = pid(&m, 0);
    // Not a heartbeat check: a heartbeat from it is refused.
    let caller = Caller::Container("web".into());
    assert_eq!(reply(m.answer(&caller, "cairn/1 heartbeat", t0, &mut fx)), "error not permitted");
    fx.take();
    assert_eq!(m.next_deadline(), Some(t0 + ms(1000)));
    m.fire(t0 + ms(1000), &mut fx);
    assert_eq!(fx.take(), [Act::StartProbe { unit: 0, pid: web }]);
    // In flight: the loop may wake as often as it likes, no second probe.
    for k in [1001, 1200, 1499, 2000] {
        m.fire(t0 + ms(k), &mut fx);
    }
    assert!(fx.take().is_empty());
    m.probe_ended(0, true, t0 + ms(1100), &mut fx);
    assert_eq!(health_events(&mut fx), ["event=container.health name=web from=starting to=healthy failures=0"]);
    // Passing probes change nothing; the next is an interval after each.
    m.fire(t0 + ms(2100), &mut fx);
    assert_eq!(fx.take(), [Act::StartProbe { unit: 0, pid: web }]);
    m.probe_ended(0, true, t0 + ms(2150), &mut fx);
    assert!(fx.take().is_empty());
    // Two failures in a row: unhealthy, stopped (nothing in flight to kill).
    m.fire(t0 + ms(3150), &mut fx);
    m.probe_ended(0, false, t0 + ms(3200), &mut fx);
    m.fire(t0 + ms(4200), &mut fx);
    m.probe_ended(0, false, t0 + ms(4300), &mut fx);
    assert_eq!(
        fx.take(),
        [
            Act::StartProbe { unit: 0, pid: web },
            Act::StartProbe { unit: 0, pid: web },
            Act::Event("event=container.health name=web from=healthy to=unhealthy failures=2".into()),
            Act::Event("event=container.stopping name=web signal=15 grace_ms=500 reason=unhealthy".into()),
            Act::Signal { pid: web, signal: 15 },
        ]
    );
    // While it stops no probe starts; it is restarted by its policy.
    m.fire(t0 + ms(4400), &mut fx);
    assert!(fx.take().is_empty());
    m.exited(0, Exit::Code(0), t0 + ms(4500), &mut fx);
    assert_eq!(fx.events(), ["event=container.restart-scheduled name=web attempt=1 delay_ms=100"]);
}

#[test]
fn a_probe_in_flight_is_killed_when_its_container_stops_pauses_or_is_overdue() {
    let mut d = probed("web", RestartPolicy::Never, 1000, 1);
    d.permissions = Permissions::of(&[Permission::Lifecycle]);
    let mut m = machine(vec![d], &[0]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    all_running(&mut m, &mut fx, t0);
    let web = pid(&m, 0);
    // Paused: killed, not counted; the next a full interval after the resume.
    m.fire(t0 + ms(1000), &mut fx);
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 pause web", t0 + ms(1100), &mut fx)), "ok");
    let acts = fx.take();
    assert_eq!(
        acts.get(..2),
        Some(&[Act::StartProbe { unit: 0, pid: web }, Act::Freeze { unit: 0, frozen: true }][..])
    );
    assert!(acts.contains(&Act::KillProbe { unit: 0, helper_too: false }), "{acts:?}");
    m.probe_ended(0, false, t0 + ms(1200), &mut fx);
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 resume web", t0 + ms(5000), &mut fx)), "ok");
    fx.take();
    assert_eq!(m.ps(t0)[0].health, Some("starting"));
    assert_eq!(m.next_deadline(), Some(t0 + ms(6000)));
    // Overdue (the helper never reported): its helper killed too, a failure.
    m.fire(t0 + ms(6000), &mut fx);
    let overdue = t0 + ms(6500) + health::PROBE_GRACE;
    assert_eq!(m.next_deadline(), Some(overdue));
    m.fire(overdue, &mut fx);
    assert_eq!(
        fx.take(),
        [
            Act::StartProbe { unit: 0, pid: web },
            Act::Event("event=container.probe-failed name=web reason=overdue after_ms=2500".into()),
            Act::KillProbe { unit: 0, helper_too: true },
            Act::Event("event=container.health name=web from=starting to=unhealthy failures=1".into()),
            Act::Event("event=container.stopping name=web signal=15 grace_ms=500 reason=unhealthy".into()),
            Act::Signal { pid: web, signal: 15 },
        ]
    );
    // Its late outcome counts for nothing.
    m.probe_ended(0, true, overdue + ms(1), &mut fx);
    assert!(fx.take().is_empty());
    // Stopped with a probe in flight: killed at the stop.
    let mut d = probed("web", RestartPolicy::Never, 1000, 3);
    d.permissions = Permissions::of(&[Permission::Lifecycle]);
    let mut m = machine(vec![d], &[0]);
    all_running(&mut m, &mut fx, t0);
    m.fire(t0 + ms(1000), &mut fx);
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 stop web", t0 + ms(1100), &mut fx)), "ok");
    let acts = fx.take();
    assert_eq!(acts.get(1), Some(&Act::KillProbe { unit: 0, helper_too: false }), "{acts:?}");
    // So is one in flight when its init exits, and one at a shutdown.
    for shutdown in [false, true] {
        let mut m = machine(vec![probed("web", RestartPolicy::Never, 1000, 3)], &[0]);
        all_running(&mut m, &mut fx, t0);
        m.fire(t0 + ms(1000), &mut fx);
        fx.take();
        if shutdown {
            m.request_shutdown(ShutdownKind::PowerOff, "test", t0 + ms(1100), &mut fx);
            assert_eq!(m.next_deadline(), None, "no probe timer while shutting down");
        } else {
            m.exited(0, Exit::Code(0), t0 + ms(1100), &mut fx);
        }
        assert!(fx.take().contains(&Act::KillProbe { unit: 0, helper_too: false }));
    }
    // A probe that cannot start is a failed check at once.
    let mut m = machine(vec![probed("web", RestartPolicy::Never, 1000, 1)], &[0]);
    all_running(&mut m, &mut fx, t0);
    fx.probe_fails = true;
    m.fire(t0 + ms(1000), &mut fx);
    assert_eq!(health_events(&mut fx), ["event=container.health name=web from=starting to=unhealthy failures=1"]);
}

#[test]
fn only_a_container_with_a_health_check_may_heartbeat_and_only_for_itself() {
    let mut m =
        machine(vec![checked("web", RestartPolicy::Never, 1000, 1), unit("plain", RestartPolicy::Never, &[])], &[0, 1]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    all_running(&mut m, &mut fx, t0);
    for caller in [Caller::Container("plain".into()), Caller::Host, Caller::Unknown] {
        assert_eq!(reply(m.answer(&caller, "cairn/1 heartbeat", t0, &mut fx)), "error not permitted");
        assert_eq!(
            fx.events(),
            [format!("event=control.refused caller={} request=heartbeat needs=health", caller.name())]
        );
    }
    // A heartbeat names nobody: no way to beat for another.
    let web = Caller::Container("web".into());
    assert_eq!(
        reply(m.answer(&web, "cairn/1 heartbeat plain", t0, &mut fx)),
        "error unknown request \"heartbeat plain\""
    );
    assert_eq!(m.all_healthy(), Err("web is starting".into()));
    assert_eq!(m.ps(t0)[1].health, None);
}

#[test]
fn pause_freezes_resume_thaws_and_stop_thaws_first() {
    let mut d = checked("web", RestartPolicy::Never, 1000, 1);
    d.permissions = Permissions::of(&[Permission::Lifecycle]);
    let mut m = machine(vec![d], &[0]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    all_running(&mut m, &mut fx, t0);
    let web = Caller::Container("web".into());
    assert_eq!(
        reply(m.answer(&Caller::Container("x".into()), "cairn/1 pause web", t0, &mut fx)),
        "error not permitted"
    );
    fx.take();
    // Not frozen at once: polled until cgroup.events says so.
    assert_eq!(reply(m.answer(&web, "cairn/1 pause web", t0, &mut fx)), "ok");
    assert_eq!(fx.take(), [Act::Freeze { unit: 0, frozen: true }]);
    assert_eq!(m.ps(t0)[0].state, "paused");
    assert_eq!(reply(m.answer(&web, "cairn/1 pause web", t0, &mut fx)), "error web is paused");
    let poll = m.next_deadline().unwrap();
    assert!(poll <= t0 + FREEZE_POLL);
    fx.frozen_units.push(0);
    m.fire(poll, &mut fx);
    let waited = poll.duration_since(t0).as_millis();
    assert_eq!(fx.events(), [format!("event=container.paused name=web pid={} waited_ms={waited}", pid(&m, 0))]);
    // Frozen: no heartbeat can come, none is missed.
    assert_eq!(m.next_deadline(), None);
    m.fire(t0 + ms(60_000), &mut fx);
    assert!(fx.take().is_empty());
    assert_eq!(reply(m.answer(&web, "cairn/1 resume web", t0 + ms(60_000), &mut fx)), "ok");
    assert_eq!(
        fx.take(),
        [Act::Freeze { unit: 0, frozen: false }, Act::Event("event=container.resumed name=web reason=control".into())]
    );
    assert_eq!(m.next_deadline(), Some(t0 + ms(61_000)));
    assert_eq!(reply(m.answer(&web, "cairn/1 resume web", t0, &mut fx)), "error web is not paused");
    // Paused again, then stopped: thawed before its stop signal.
    m.answer(&web, "cairn/1 pause web", t0 + ms(60_100), &mut fx);
    fx.take();
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 stop web", t0 + ms(60_200), &mut fx)), "ok");
    let p = pid(&m, 0);
    assert_eq!(
        fx.take(),
        [
            Act::Freeze { unit: 0, frozen: false },
            Act::Event("event=container.resumed name=web reason=stop".into()),
            Act::Event("event=container.stopping name=web signal=15 grace_ms=500 reason=control".into()),
            Act::Signal { pid: p, signal: 15 },
        ]
    );
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 pause web", t0, &mut fx)), "error web is stopping");
}

#[test]
fn a_container_that_dies_frozen_is_thawed_before_it_can_start_again() {
    let mut m = machine(vec![unit("web", RestartPolicy::Always, &[])], &[0]);
    let mut fx = Recorder::new();
    let t0 = Instant::now();
    all_running(&mut m, &mut fx, t0);
    fx.frozen_units.push(0);
    assert_eq!(reply(m.answer(&Caller::Host, "cairn/1 pause web", t0, &mut fx)), "ok");
    assert!(fx.events().iter().any(|e| e.starts_with("event=container.paused name=web")));
    // Its cgroup killed (an OOM kill of the group, say) while frozen.
    m.exited(0, Exit::Signal(9), t0 + ms(10), &mut fx);
    let acts = fx.take();
    assert_eq!(acts.first(), Some(&Act::Freeze { unit: 0, frozen: false }), "{acts:?}");
    assert_eq!(m.ps(t0)[0].state, "backoff");
    m.fire(t0 + ms(200), &mut fx);
    m.settle(0, Report::Done { exec_failed: None }, None, t0 + ms(210), &mut fx);
    assert_eq!(m.ps(t0 + ms(210))[0].state, "running");
}

#[test]
fn exec_goes_to_a_running_container_only() {
    let (mut m, mut fx, t, web) = web_granted(&[Permission::Exec]);
    let x = pid(&m, 1);
    assert_eq!(
        m.answer(&web, "cairn/1 exec x -- /bin/echo a%20b", t, &mut fx),
        Answer::Exec { unit: 1, pid: x, argv: vec![b"/bin/echo".to_vec(), b"a b".to_vec()], opts: Default::default() }
    );
    assert!(matches!(
        m.answer(&web, "cairn/1 exec x --tty -- sh", t, &mut fx),
        Answer::Exec { opts: crate::exec::Options { tty: true, .. }, .. }
    ));
    assert_eq!(reply(m.answer(&web, "cairn/1 exec ghost -- sh", t, &mut fx)), "error no container ghost");
    assert_eq!(
        reply(m.answer(&web, "cairn/1 exec x -- a%00", t, &mut fx)),
        "error bad exec argument (percent-encoded bytes, no NUL)"
    );
    m.exited(1, Exit::Code(0), t, &mut fx);
    assert_eq!(reply(m.answer(&web, "cairn/1 exec x -- sh", t, &mut fx)), "error x is not running");
    // `exec` grants nothing else.
    assert_eq!(reply(m.answer(&web, "cairn/1 status", t, &mut fx)), "error not permitted");
}
