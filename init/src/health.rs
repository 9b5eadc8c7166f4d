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
//! heartbeat due is `interval` after the start. The command form (a
//! command run inside the container every interval, its exit status the
//! result) is not built yet (the exec path it needs, `cairn_runtime::exec`, is): it would call
//! [`Check::success`] / [`Check::failure`] from the command's exit instead
//! of the timer counting a missed heartbeat as a failure.

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
        }
    }

    /// The longest a started container can stay `starting` before its
    /// check gives a verdict either way (the OTA gate's bound).
    pub fn verdict_within(&self) -> Duration {
        let missed = self.interval.saturating_mul(self.retries);
        self.start_period.saturating_add(missed).saturating_add(self.timeout).saturating_add(self.interval)
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
}

impl Check {
    /// A check that has not started.
    pub fn new(config: Config) -> Self {
        Self { config, state: None, failures: 0, started: None, due: None }
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
        self.started = Some(now);
        self.due = Some(now + self.config.interval);
        self.set(Health::Starting)
    }

    /// The container stopped running: no timer until its next start (its
    /// state stays what it was, for `ps` and the OTA gate).
    pub fn stop(&mut self) {
        self.due = None;
        self.started = None;
    }

    /// Paused (frozen): nothing can come, so nothing is counted.
    pub fn pause(&mut self) {
        self.due = None;
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

    /// A check failed at `now` (the command form's failed command; the
    /// heartbeat form's missed heartbeat, from [`Check::fire`]).
    pub fn failure(&mut self, now: Instant) -> Option<Change> {
        let started = self.started?;
        if self.state == Some(Health::Unhealthy) {
            return None;
        }
        self.due = Some(now + self.config.interval);
        if now.saturating_duration_since(started) < self.config.start_period {
            return None;
        }
        self.failures += 1;
        if self.failures >= self.config.retries {
            self.due = None;
            return self.set(Health::Unhealthy);
        }
        None
    }

    /// When [`Check::fire`] must next be called.
    pub fn deadline(&self) -> Option<Instant> {
        self.due.map(|d| d + self.config.timeout)
    }

    /// The timer: a heartbeat that did not come by its deadline is a
    /// failure (at most one per call; the next is an interval later).
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
        Config { interval: ms(interval), timeout: ms(timeout), retries, start_period: ms(start_period) }
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
