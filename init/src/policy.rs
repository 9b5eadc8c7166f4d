//! Restart decisions and backoff: pure functions of the policy and history.

use cairn_runtime::Exit;

/// When a container is restarted (the manifest's `restart.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restarted.
    Never,
    /// Restarted after a non-zero exit or a signal, at most `max_restarts` times.
    OnFailure {
        /// Restarts allowed before it is left stopped.
        max_restarts: u32,
    },
    /// Always restarted.
    Always,
}

/// Restart policy and backoff (the manifest's `restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubled after each one.
    pub backoff_initial_ms: u32,
    /// Upper bound of the delay.
    pub backoff_max_ms: u32,
}

/// What to do after a container exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this many milliseconds.
    Restart {
        /// Delay before the restart.
        delay_ms: u32,
    },
    /// The policy does not restart it: it stays stopped.
    Stay,
    /// It failed and used up its restarts: it stays stopped.
    GiveUp,
}

/// Delay before restart number `n` (0-based): initial × 2ⁿ, capped.
pub fn backoff(r: &Restart, n: u32) -> u32 {
    let factor = 1u64.checked_shl(n.min(32)).unwrap_or(u64::MAX);
    let d = u64::from(r.backoff_initial_ms).saturating_mul(factor);
    d.min(u64::from(r.backoff_max_ms)) as u32
}

/// A run must last longer than this (and than the backoff cap) to reset
/// the restart count, so a small or zero cap cannot turn `max_restarts`
/// off for a crash loop (systemd's default start-limit interval).
pub const RESET_FLOOR_MS: u64 = 10_000;

/// The restart count to decide with after a run that lasted `ran_ms`
/// (`None`: it never got to run, e.g. its set-up failed). A run longer
/// than the backoff cap (and [`RESET_FLOOR_MS`]) shows the container
/// works: its history is forgiven, so a daemon that crashes once a week
/// restarts after the initial delay every time and is never given up on.
pub fn restarts_after_run(r: &Restart, restarts: u32, ran_ms: Option<u64>) -> u32 {
    match ran_ms {
        Some(ms) if ms > u64::from(r.backoff_max_ms).max(RESET_FLOOR_MS) => 0,
        _ => restarts,
    }
}

/// Decide after an exit, given how many restarts already happened.
pub fn after_exit(r: &Restart, exit: Exit, restarts: u32) -> Decision {
    match r.policy {
        RestartPolicy::Never => Decision::Stay,
        RestartPolicy::Always => Decision::Restart { delay_ms: backoff(r, restarts) },
        RestartPolicy::OnFailure { .. } if exit.success() => Decision::Stay,
        RestartPolicy::OnFailure { max_restarts } if restarts >= max_restarts => Decision::GiveUp,
        RestartPolicy::OnFailure { .. } => Decision::Restart { delay_ms: backoff(r, restarts) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(policy: RestartPolicy) -> Restart {
        Restart { policy, backoff_initial_ms: 100, backoff_max_ms: 1000 }
    }

    #[test]
    fn backoff_doubles_then_caps_and_never_overflows() {
        let x = r(RestartPolicy::Always);
        let delays: Vec<u32> = (0..6).map(|n| backoff(&x, n)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&x, u32::MAX), 1000);
        let big = Restart { policy: RestartPolicy::Always, backoff_initial_ms: u32::MAX, backoff_max_ms: u32::MAX };
        assert_eq!(backoff(&big, 40), u32::MAX);
    }

    #[test]
    fn on_failure_restarts_up_to_its_maximum() {
        let x = r(RestartPolicy::OnFailure { max_restarts: 2 });
        assert_eq!(after_exit(&x, Exit::Code(1), 0), Decision::Restart { delay_ms: 100 });
        assert_eq!(after_exit(&x, Exit::Signal(9), 1), Decision::Restart { delay_ms: 200 });
        assert_eq!(after_exit(&x, Exit::Code(1), 2), Decision::GiveUp);
        assert_eq!(after_exit(&x, Exit::Code(0), 0), Decision::Stay);
    }

    #[test]
    fn a_long_run_resets_the_count() {
        let x = r(RestartPolicy::OnFailure { max_restarts: 2 });
        assert_eq!(restarts_after_run(&x, 5, Some(10_001)), 0);
        assert_eq!(restarts_after_run(&x, 5, Some(10_000)), 5, "the floor applies to a cap below it");
        assert_eq!(restarts_after_run(&x, 5, Some(1001)), 5);
        assert_eq!(restarts_after_run(&x, 5, None), 5, "a failed set-up is not a run");
        let long = Restart { backoff_max_ms: 60_000, ..x };
        assert_eq!(restarts_after_run(&long, 5, Some(60_001)), 0);
        assert_eq!(restarts_after_run(&long, 5, Some(60_000)), 5, "exactly the cap is not longer than it");
        // A zero cap does not forgive a crash loop.
        let zero = Restart { backoff_initial_ms: 0, backoff_max_ms: 0, ..x };
        assert_eq!(restarts_after_run(&zero, 5, Some(50)), 5);
    }

    #[test]
    fn a_weekly_crash_is_never_given_up() {
        let x = r(RestartPolicy::OnFailure { max_restarts: 2 });
        let week_ms = 7 * 24 * 3600 * 1000;
        let mut restarts = 0;
        for _ in 0..100 {
            restarts = restarts_after_run(&x, restarts, Some(week_ms));
            assert_eq!(after_exit(&x, Exit::Code(1), restarts), Decision::Restart { delay_ms: 100 });
            restarts += 1;
        }
        // Quick crashes still use up the restarts (counted since the last
        // long run, whose restart was the first).
        restarts = restarts_after_run(&x, restarts, Some(5));
        assert_eq!(after_exit(&x, Exit::Code(1), restarts), Decision::Restart { delay_ms: 200 });
        restarts += 1;
        restarts = restarts_after_run(&x, restarts, Some(5));
        assert_eq!(after_exit(&x, Exit::Code(1), restarts), Decision::GiveUp);
    }

    #[test]
    fn never_and_always() {
        assert_eq!(after_exit(&r(RestartPolicy::Never), Exit::Code(3), 0), Decision::Stay);
        assert_eq!(after_exit(&r(RestartPolicy::Always), Exit::Code(0), 3), Decision::Restart { delay_ms: 800 });
    }
}
