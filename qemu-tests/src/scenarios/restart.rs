//! `restart`: an on-failure container is restarted with growing delays up to
//! its maximum, then left stopped; a never container is not restarted.

use anyhow::{ensure, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "restart")?;
    let c = &run.console;
    let starts = c.all("container.started", &[("name", "flaky")]).len();
    ensure!(starts == 4, "flaky started {starts} times, want 1 + 3 restarts");
    let delays: Vec<i64> =
        c.all("container.restart-scheduled", &[("name", "flaky")]).iter().filter_map(|l| l.num("delay_ms")).collect();
    ensure!(delays == [200, 400, 800], "restart delays {delays:?}, want [200, 400, 800]");
    c.expect("container.gave-up", &[("name", "flaky"), ("restarts", "3")])?;
    for e in c.all("container.exited", &[("name", "flaky")]) {
        ensure!(e.get("code") == Some("3"), "flaky exit {:?}", e.fields);
    }
    // The real delays between exits and restarts grow too.
    let t = |l: &&crate::console::Line| l.get("t").and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    let exits: Vec<f64> = c.all("container.exited", &[("name", "flaky")]).iter().map(t).collect();
    let restarts: Vec<f64> = c.all("container.started", &[("name", "flaky")]).iter().skip(1).map(t).collect();
    for (i, (e, s)) in exits.iter().zip(&restarts).enumerate() {
        let want = 0.2 * f64::from(1u32 << i);
        ensure!(s - e >= want * 0.9, "restart {} came {:.3}s after the exit, want >= {want}s", i + 1, s - e);
    }
    let once = c.all("container.started", &[("name", "once")]).len();
    ensure!(once == 1, "the never container started {once} times");
    c.expect("container.stopped", &[("name", "once"), ("reason", "policy")])?;
    Ok(())
}
