//! `limits`: memory.max OOM-kills the hog (and the event says so) while the
//! neighbour keeps running; pids.max stops a fork bomb; cpu.max throttles.

use anyhow::{ensure, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "limits")?;
    let c = &run.console;

    let oom = c.expect("container.oom", &[("name", "hog")])?;
    let exit = c.expect("container.exited", &[("name", "hog")])?;
    ensure!(exit.get("code") == Some("137"), "hog exit {:?}, want 137 (SIGKILL by the OOM killer)", exit.get("code"));
    ensure!(exit.num("oom_kills").unwrap_or(0) >= 1, "hog exit does not count the OOM kill");
    ensure!(c.first("alloc-survived", &[("name", "hog")]).is_none(), "hog allocated past memory.max");
    let ticks_after = c.all("tick", &[("name", "neighbour")]).into_iter().filter(|t| t.index > oom.index).count();
    ensure!(ticks_after >= 2, "neighbour stopped ticking after the OOM kill ({ticks_after} ticks after)");
    ensure!(
        c.first("container.exited", &[("name", "neighbour")]).is_none_or(|e| e.index > oom.index),
        "neighbour died"
    );

    let bomb = c.expect("forkbomb", &[("name", "bomb")])?;
    let forked = bomb.num("forked").unwrap_or(-1);
    ensure!((1..20).contains(&forked), "fork bomb forked {forked} children under pids.max=20");
    ensure!(
        bomb.get("failed_errno") == Some("11"),
        "fork failed with errno {:?}, want EAGAIN (11)",
        bomb.get("failed_errno")
    );

    let spin = c.expect("spin", &[("name", "spinner")])?;
    ensure!(spin.num("nr_throttled").unwrap_or(0) > 0, "no throttling under cpu.max: {:?}", spin.fields);
    ensure!(spin.num("throttled_usec").unwrap_or(0) > 0, "no throttled time under cpu.max: {:?}", spin.fields);
    Ok(())
}
