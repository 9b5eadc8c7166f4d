//! Health checks (issue 14 item 2): a pure, timer-driven state machine per
//! container, with Docker's HEALTHCHECK timing. No clock of its own: every
//! input carries `now`.
//!
//! A check is due every `interval`; a check that has not succeeded
//! `timeout` after it was due is a failure; `retries` failures in a row
//! make the container `unhealthy`; failures within `start_period` of the
//! start do not count, and a success there makes it `healthy` at once.
//!
//! The heartbeat form: a success is a `heartbeat` request on the control
//! socket from the container itself. So a container is healthy while a
//! heartbeat comes at least every `interval + timeout`; the first
//! heartbeat due is `interval` after the start.
//!
//! The command form: when a check is due PID 1 starts the probe inside
//! the container ([`Tick::StartProbe`]; `crate::probe` runs it in a
//! forked helper, so PID 1 never waits for it) and hears its outcome
//! later ([`Check::probe_ended`]): exit 0 is a success, anything else a
//! failure; the helper kills a probe still running `timeout` after it
//! started and reports that as a failure. The next check is due
//! `interval` after the outcome (Docker's timing), and at most one probe
//! is in flight. Should the helper itself not report by `timeout` +
//! [`PROBE_GRACE`] (stuck joining a frozen cgroup, say), the probe is
//! overdue ([`Tick::Overdue`]): killed, and counted as a failure.

use std::time::{Duration, Instant};

/// A container's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Started, not yet proved healthy.
    Starting,
    /// Its last check succeeded.
    Healthy,
    /// `retries` checks failed in a row.
    Unhealthy,
}

impl Health {
    /// The name events and `ps` show.
    pub fn name(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// How long after a probe's timeout its helper may still report before
/// the probe counts as overdue (the helper kills the probe at the
/// timeout itself and waits briefly for its status).
pub const PROBE_GRACE: Duration = Duration::from_secs(2);

/// What proves a container healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `heartbeat` requests from the container.
    Heartbeat,
    /// A command PID 1 runs inside the container (the executor keeps its argv).
    Command,
}

/// What the timer asks of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing.
    Idle,
    /// The heartbeat form: a missed heartbeat changed the health.
    Changed(Change),
    /// The command form: a check is due; start the probe (then
    /// [`Check::probe_started`]).
    StartProbe,
    /// The command form: the probe in flight did not report in time. Kill
    /// it; it counted as a failure (with the change that made, if any).
    Overdue(Option<Change>),
}

/// Timing of a check (the manifest's `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Time between checks.
    pub interval: Duration,
    /// How late a check may be before it is a failure.
    pub timeout: Duration,
    /// Failures in a row that make the container unhealthy (at least 1).
    pub retries: u32,
    /// Failures this soon after a start do not count.
    pub start_period: Duration,
    /// Heartbeat or command.
    pub form: Form,
}

impl Config {
    /// From the manifest entry.
    pub fn of(h: &cairn_format::manifest::HealthCheck) -> Self {
        let ms = |v: u32| Duration::from_millis(v.into());
        Self {
            interval: ms(h.interval_ms),
            timeout: ms(h.timeout_ms),
            retries: h.retries.max(1),
            start_period: ms(h.start_period_ms),
            form: match h.probe {
                cairn_format::manifest::HealthProbe::Heartbeat => Form::Heartbeat,
                cairn_format::manifest::HealthProbe::Command(_) => Form::Command,
            },
        }
    }

    /// The longest a started container can stay `starting` before its
    /// check gives a verdict either way (the OTA gate's bound).
    pub fn verdict_within(&self) -> Duration {
        let missed = self.interval.saturating_mul(self.retries);
        let late = match self.form {
            Form::Heartbeat => self.timeout,
            // Each failed probe may take its timeout (and the grace, if
            // overdue), and the next is due an interval after it; one more
            // for a probe that started in the start period and ended after it.
            Form::Command => self.timeout.saturating_add(PROBE_GRACE).saturating_mul(self.retries.saturating_add(1)),
        };
        self.start_period.saturating_add(missed).saturating_add(late).saturating_add(self.interval)
    }
}

/// A change of health, for the `container.health` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Before (`None`: it had no state yet, the first start).
    pub from: Option<Health>,
    /// After.
    pub to: Health,
    /// Failures in a row at the change.
    pub failures: u32,
}

/// One container's check.
#[derive(Debug, Clone)]
pub struct Check {
    config: Config,
    state: Option<Health>,
    failures: u32,
    /// When the current run started (`start_period` counts from it).
    started: Option<Instant>,
    /// When the next check is due (a failure if no success by then plus
    /// the timeout); `None` while not running (or paused).
    due: Option<Instant>,
    /// The command form: when the probe in flight started.
    probe: Option<Instant>,
}

impl Check {
    /// A check that has not started.
    pub fn new(config: Config) -> Self {
        Self { config, state: None, failures: 0, started: None, due: None, probe: None }
    }

    /// Its state (`None` before the first start).
    pub fn state(&self) -> Option<Health> {
        self.state
    }

    /// Its timing.
    pub fn config(&self) -> Config {
        self.config
    }

    fn set(&mut self, to: Health) -> Option<Change> {
        let from = self.state;
        self.state = Some(to);
        (from != Some(to)).then_some(Change { from, to, failures: self.failures })
    }

    /// The container's entrypoint was executed: it is `starting` again.
    pub fn start(&mut self, now: Instant) -> Option<Change> {
        self.failures = 0;
        self.probe = None;
        self.started = Some(now);
        self.due = Some(now + self.config.interval);
        self.set(Health::Starting)
    }

    /// The container stopped running: no timer until its next start (its
    /// state stays what it was, for `ps` and the OTA gate).
    pub fn stop(&mut self) {
        self.due = None;
        self.started = None;
        self.probe = None;
    }

    /// Paused (frozen): nothing can come, so nothing is counted (a probe
    /// in flight is forgotten: the caller kills it, see
    /// [`Check::probing`]).
    pub fn pause(&mut self) {
        self.due = None;
        self.probe = None;
    }

    /// Whether a probe is in flight.
    #[cfg(test)]
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Forget the probe in flight (the caller kills it: its container
    /// stops or pauses); whether there was one. Its outcome, should it
    /// still come, counts for nothing.
    pub fn forget_probe(&mut self) -> bool {
        self.probe.take().is_some()
    }

    /// Thawed: the next check is a full interval away.
    pub fn resume(&mut self, now: Instant) {
        if self.started.is_some() && self.state != Some(Health::Unhealthy) {
            self.due = Some(now + self.config.interval);
        }
    }

    /// A check succeeded (a heartbeat came). An unhealthy container stays
    /// unhealthy (it is being restarted); its next start begins anew.
    pub fn success(&mut self, now: Instant) -> Option<Change> {
        if self.started.is_none() || self.state == Some(Health::Unhealthy) {
            return None;
        }
        self.failures = 0;
        self.due = Some(now + self.config.interval);
        self.set(Health::Healthy)
    }

    /// A check failed at `now` (the heartbeat form's missed heartbeat,
    /// from [`Check::fire`]; the command form's, from [`Check::probe_ended`]).
    pub fn failure(&mut self, now: Instant) -> Option<Change> {
        self.failure_at(now, now)
    }

    /// A check that was due at `at` failed, as known at `now`: the start
    /// period is judged by `at` (a probe started within it does not count
    /// even if it ends after it), the next check is due an interval after
    /// `now`.
    fn failure_at(&mut self, at: Instant, now: Instant) -> Option<Change> {
        let started = self.started?;
        if self.state == Some(Health::Unhealthy) {
            return None;
        }
        self.due = Some(now + self.config.interval);
        if at.saturating_duration_since(started) < self.config.start_period {
            return None;
        }
        self.failures += 1;
        if self.failures >= self.config.retries {
            self.due = None;
            return self.set(Health::Unhealthy);
        }
        None
    }

    /// When [`Check::tick`] must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.config.form, self.probe) {
            (Form::Heartbeat, _) => self.due.map(|d| d + self.config.timeout),
            (Form::Command, None) => self.due,
            (Form::Command, Some(p)) => Some(p + self.config.timeout + PROBE_GRACE),
        }
    }

    /// The timer, either form.
    pub fn tick(&mut self, now: Instant) -> Tick {
        match (self.config.form, self.probe, self.due) {
            (Form::Heartbeat, _, _) => self.fire(now).map_or(Tick::Idle, Tick::Changed),
            (Form::Command, Some(p), _) if p + self.config.timeout + PROBE_GRACE <= now => {
                self.probe = None;
                Tick::Overdue(self.failure_at(p, now))
            }
            (Form::Command, None, Some(due)) if due <= now && self.started.is_some() => Tick::StartProbe,
            _ => Tick::Idle,
        }
    }

    /// The command form: the probe [`Tick::StartProbe`] asked for started
    /// at `now` (or could not start: then [`Check::probe_ended`] at once).
    pub fn probe_started(&mut self, now: Instant) {
        if self.started.is_some() && self.config.form == Form::Command {
            self.probe = Some(now);
        }
    }

    /// The command form: the probe in flight ended at `now`, `passed` (exit
    /// status 0) or not. An outcome with no probe in flight (one killed
    /// when the container stopped or paused) counts for nothing.
    pub fn probe_ended(&mut self, passed: bool, now: Instant) -> Option<Change> {
        let at = self.probe.take()?;
        if passed {
            self.success(now)
        } else {
            self.failure_at(at, now)
        }
    }

    /// The heartbeat form's timer: a heartbeat that did not come by its
    /// deadline is a failure (at most one per call; the next is an interval later).
    pub fn fire(&mut self, now: Instant) -> Option<Change> {
        match self.due {
            // Counted at the instant the check was due.
            Some(due) if due + self.config.timeout <= now => self.failure(due),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn cfg(interval: u64, timeout: u64, retries: u32, start_period: u64) -> Config {
        Config {
            interval: ms(interval),
            timeout: ms(timeout),
            retries,
            start_period: ms(start_period),
            form: Form::Heartbeat,
        }
    }

    /// Fire the timer at every deadline up to `until`; the changes seen.
    fn run(c: &mut Check, until: Instant) -> Vec<(Health, Instant)> {
        let mut out = Vec::new();
        while let Some(d) = c.deadline().filter(|d| *d <= until) {
            if let Some(ch) = c.fire(d) {
                out.push((ch.to, d));
            }
        }
        out
    }

    #[test]
    fn heartbeats_make_it_healthy_and_their_absence_unhealthy_after_retries() {
        let t0 = Instant::now();
        let mut c = Check::new(cfg(1000, 500, 3, 0));
        assert_eq!(c.state(), None);
        assert_eq!(c.start(t0), Some(Change { from: None, to: Health::Starting, failures: 0 }));
        assert_eq!(c.deadline(), Some(t0 + ms(1500)));
        assert_eq!(
            c.success(t0 + ms(200)),
            Some(Change { from: Some(Health::Starting), to: Health::Healthy, failures: 0 })
        );
        // Beats in time: nothing changes.
        for k in 1..10 {
            assert_eq!(c.success(t0 + ms(200 + 1400 * k)), None);
            assert_eq!(c.fire(t0 + ms(200 + 1400 * k + 1)), None);
        }
        let last = t0 + ms(200 + 1400 * 9);
        assert_eq!(c.deadline(), Some(last + ms(1500)));
        // Silence: a failure at +1.5 s, +2.5 s, unhealthy at +3.5 s.
        let changes = run(&mut c, last + ms(10_000));
        assert_eq!(changes, vec![(Health::Unhealthy, last + ms(3500))]);
        assert_eq!(c.state(), Some(Health::Unhealthy));
        assert_eq!(c.deadline(), None);
        // Too late: it stays unhealthy until it is started again.
        assert_eq!(c.success(last + ms(4000)), None);
        c.stop();
        assert_eq!(c.success(last + ms(4100)), None);
        assert_eq!(
            c.start(last + ms(5000)),
            Some(Change { from: Some(Health::Unhealthy), to: Health::Starting, failures: 0 })
        );
    }

    #[test]
    fn one_missed_beat_is_forgiven_by_the_next() {
        let t0 = Instant::now();
        let mut c = Check::new(cfg(1000, 0, 2, 0));
        c.start(t0);
        c.success(t0 + ms(100));
        assert_eq!(c.fire(t0 + ms(1100)), None); // one failure
        assert_eq!(c.success(t0 + ms(1500)), None); // healthy still, count reset
        assert_eq!(c.fire(t0 + ms(2500)), None);
        assert_eq!(c.fire(t0 + ms(3500)).map(|c| (c.to, c.failures)), Some((Health::Unhealthy, 2)));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut c = Check::new(cfg(1000, 0, 1, 5000));
        c.start(t0);
        // Nothing for 4.9 s: no verdict.
        assert!(run(&mut c, t0 + ms(4900)).is_empty());
        assert_eq!(c.state(), Some(Health::Starting));
        // A heartbeat within it: healthy at once.
        assert_eq!(c.success(t0 + ms(4950)).map(|c| c.to), Some(Health::Healthy));
        let mut c = Check::new(cfg(1000, 0, 1, 5000));
        c.start(t0);
        // Never a heartbeat: the first check past the period fails it.
        assert_eq!(run(&mut c, t0 + ms(60_000)), vec![(Health::Unhealthy, t0 + ms(5000))]);
        assert!(ms(5000) <= c.config().verdict_within());
    }

    #[test]
    fn a_pause_stops_the_clock() {
        let t0 = Instant::now();
        let mut c = Check::new(cfg(1000, 0, 1, 0));
        c.start(t0);
        c.success(t0 + ms(10));
        c.pause();
        assert_eq!(c.deadline(), None);
        assert!(run(&mut c, t0 + ms(60_000)).is_empty());
        c.resume(t0 + ms(60_000));
        assert_eq!(c.deadline(), Some(t0 + ms(61_000)));
        assert_eq!(c.fire(t0 + ms(61_000)).map(|c| c.to), Some(Health::Unhealthy));
        // Not running: neither a success nor a timer counts.
        let mut c = Check::new(cfg(1000, 0, 1, 0));
        assert_eq!(c.success(t0), None);
        assert_eq!(c.failure(t0), None);
        assert_eq!(c.deadline(), None);
    }

    fn command(interval: u64, timeout: u64, retries: u32, start_period: u64) -> Check {
        Check::new(Config { form: Form::Command, ..cfg(interval, timeout, retries, start_period) })
    }

    #[test]
    fn a_probe_is_due_every_interval_after_the_last_outcome_and_one_at_a_time() {
        let t0 = Instant::now();
        let mut c = command(1000, 500, 2, 0);
        // Not started: nothing is due.
        assert_eq!(c.tick(t0 + ms(5000)), Tick::Idle);
        assert_eq!(c.deadline(), None);
        c.start(t0);
        assert_eq!(c.deadline(), Some(t0 + ms(1000)));
        assert_eq!(c.tick(t0 + ms(999)), Tick::Idle);
        assert_eq!(c.tick(t0 + ms(1000)), Tick::StartProbe);
        c.probe_started(t0 + ms(1000));
        assert!(c.probing());
        // In flight: no second probe, however late; the deadline is the
        // overdue backstop, not the timeout (the helper keeps that).
        assert_eq!(c.deadline(), Some(t0 + ms(1500) + PROBE_GRACE));
        assert_eq!(c.tick(t0 + ms(1400)), Tick::Idle);
        // Passed: healthy, the next an interval after the outcome.
        assert_eq!(c.probe_ended(true, t0 + ms(1100)).map(|c| c.to), Some(Health::Healthy));
        assert!(!c.probing());
        assert_eq!(c.deadline(), Some(t0 + ms(2100)));
        // An outcome with nothing in flight counts for nothing.
        assert_eq!(c.probe_ended(false, t0 + ms(1200)), None);
        assert_eq!(c.state(), Some(Health::Healthy));
        // Two failures in a row: unhealthy; no probe after that.
        for (k, end) in [(2100, 2600), (3600, 4100)] {
            assert_eq!(c.tick(t0 + ms(k)), Tick::StartProbe, "{k}");
            c.probe_started(t0 + ms(k));
            let change = c.probe_ended(false, t0 + ms(end));
            if k == 3600 {
                assert_eq!(change.map(|c| (c.to, c.failures)), Some((Health::Unhealthy, 2)));
            } else {
                assert_eq!(change, None);
                assert_eq!(c.deadline(), Some(t0 + ms(end + 1000)));
            }
        }
        assert_eq!(c.deadline(), None);
        assert_eq!(c.tick(t0 + ms(60_000)), Tick::Idle);
        // A heartbeat-style timer never counts for the command form.
        let mut c = command(1000, 0, 1, 0);
        c.start(t0);
        assert_eq!(c.fire(t0 + ms(500)), None);
        assert_eq!(c.state(), Some(Health::Starting));
    }

    #[test]
    fn an_overdue_probe_is_a_failure_and_its_late_outcome_is_ignored() {
        let t0 = Instant::now();
        let mut c = command(1000, 500, 1, 0);
        c.start(t0);
        assert_eq!(c.tick(t0 + ms(1000)), Tick::StartProbe);
        c.probe_started(t0 + ms(1000));
        let overdue = t0 + ms(1500) + PROBE_GRACE;
        assert_eq!(c.tick(overdue - ms(1)), Tick::Idle);
        assert_eq!(
            c.tick(overdue),
            Tick::Overdue(Some(Change { from: Some(Health::Starting), to: Health::Unhealthy, failures: 1 }))
        );
        assert_eq!(c.probe_ended(true, overdue + ms(1)), None);
        assert_eq!(c.state(), Some(Health::Unhealthy));
    }

    #[test]
    fn probes_that_started_in_the_start_period_do_not_count_and_stop_forgets_them() {
        let t0 = Instant::now();
        let mut c = command(1000, 3000, 1, 2000);
        c.start(t0);
        c.tick(t0 + ms(1000));
        c.probe_started(t0 + ms(1000));
        // Ends (failed) after the period, started within it: not counted.
        assert_eq!(c.probe_ended(false, t0 + ms(3500)), None);
        assert_eq!(c.state(), Some(Health::Starting));
        assert_eq!(c.tick(t0 + ms(4500)), Tick::StartProbe);
        c.probe_started(t0 + ms(4500));
        // Stopped (or paused) with a probe in flight: forgotten, so its
        // outcome counts for nothing and the next start begins anew.
        assert!(c.probing());
        c.stop();
        assert!(!c.probing());
        assert_eq!(c.probe_ended(false, t0 + ms(4600)), None);
        c.start(t0 + ms(10_000));
        assert_eq!(c.tick(t0 + ms(10_999)), Tick::Idle);
        assert_eq!(c.tick(t0 + ms(11_000)), Tick::StartProbe);
        c.probe_started(t0 + ms(11_000));
        c.pause();
        assert!(!c.probing());
        assert_eq!(c.deadline(), None);
        c.resume(t0 + ms(20_000));
        assert_eq!(c.deadline(), Some(t0 + ms(21_000)));
    }

    #[test]
    fn the_verdict_bound_covers_the_slowest_probe() {
        let t0 = Instant::now();
        for (i, t, r, s) in [(1000, 500, 3, 0), (100, 100, 1, 0), (2000, 2000, 5, 7000)] {
            let mut c = command(i, t, r, s);
            let config = c.config();
            c.start(t0);
            // Every probe hangs until it is overdue.
            let (verdict, now) = loop {
                let Some(now) = c.deadline() else { panic!("no verdict") };
                match c.tick(now) {
                    Tick::StartProbe => c.probe_started(now),
                    Tick::Overdue(Some(ch)) => break (ch, now),
                    _ => {}
                }
            };
            assert_eq!(verdict.to, Health::Unhealthy);
            assert!(now <= t0 + config.verdict_within(), "{config:?}: {:?}", now - t0);
        }
    }

    #[test]
    fn the_verdict_bound_covers_the_slowest_path() {
        let t0 = Instant::now();
        for (i, t, r, s) in [(1000, 500, 3, 0), (100, 0, 1, 0), (2000, 2000, 5, 7000)] {
            let config = cfg(i, t, r, s);
            let mut c = Check::new(config);
            c.start(t0);
            let changes = run(&mut c, t0 + ms(1_000_000));
            let (to, at) = changes.first().copied().unwrap();
            assert_eq!(to, Health::Unhealthy);
            assert!(at <= t0 + config.verdict_within(), "{config:?}: {:?}", at - t0);
        }
    }
}
