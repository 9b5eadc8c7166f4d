//! `shutdown`: power-off stops containers in reverse dependency order; one
//! that ignores SIGTERM is killed after its grace period; QEMU exits.

use anyhow::{ensure, Context, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "shutdown")?;
    let c = &run.console;
    c.expect("shutdown.start", &[("kind", "poweroff")])?;
    let at = |name: &str| -> Result<usize> { Ok(c.expect("container.stopping", &[("name", name)])?.index) };
    let (third, second, first) = (at("third")?, at("second")?, at("first")?);
    ensure!(third < second && second < first, "stop order is not third, second, first");
    let stubborn = at("stubborn")?;
    ensure!(stubborn < first, "stubborn (depends on first) was stopped after first");
    for label in ["first", "second", "third"] {
        let s = c.expect("stopping", &[("label", label)]).with_context(|| format!("{label} never saw SIGTERM"))?;
        let e = c.expect("container.exited", &[("name", label)])?;
        ensure!(s.index < e.index && e.get("code") == Some("0"), "{label} did not exit cleanly on SIGTERM");
    }
    let killed = c.expect("container.killed", &[("name", "stubborn")])?;
    ensure!(killed.index > stubborn, "stubborn killed before it was asked to stop");
    let e = c.expect("container.exited", &[("name", "stubborn")])?;
    ensure!(e.get("code") == Some("137"), "stubborn exit {:?}, want 137", e.fields);
    let grace = c.expect("container.stopping", &[("name", "stubborn")])?;
    let t0: f64 = grace.get("t").unwrap_or("0").parse().unwrap_or(0.0);
    let t1: f64 = killed.get("t").unwrap_or("0").parse().unwrap_or(0.0);
    ensure!(t1 - t0 >= 1.4, "stubborn killed {:.3}s after the stop signal, grace is 1.5s", t1 - t0);
    Ok(())
}
