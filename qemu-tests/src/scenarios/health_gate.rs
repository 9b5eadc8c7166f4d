//! `health-gate` (issue 14 item 2, the OTA commit gate): a trial boot
//! (slot `b`'s boot entry counting tries) commits only when every
//! container with a health check is healthy.
//!
//! - Commit: the window (`cairn.bless_after_ms=1000`) ends while the
//!   container is still `starting` (its heartbeats begin 3 s after its
//!   start): `boot.trial-waiting`, then `healthy`, then `boot.blessed`,
//!   never before.
//! - Rollback: a container that is not critical turns `unhealthy` within
//!   the window (8 s): `boot.trial-failed reason="beater unhealthy"`, a
//!   reboot, no blessing; the entry's one try is spent.

use anyhow::{ensure, Result};
use cairn_build::esp::EspContents;

use super::boot_slots::{self, entries};
use super::health::t_ms;
use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::{Ctx, Ending};

/// Slot `a` blessed, slot `b` on trial with `tries` and `cmdline` added.
fn esp(ctx: &Ctx, cmdline: &str, tries: u32) -> Result<EspContents> {
    boot_slots::esp(ctx, &boot_slots::with_cmdline(&ctx.art.kit, cmdline), tries)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    commits_once_healthy(ctx)?;
    rolls_back_when_unhealthy(ctx)
}

fn commits_once_healthy(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("health-gate-ok")?;
    let (disk, layout) = ctx.disk_with_esp(&app, "ok.img", &esp(ctx, "cairn.bless_after_ms=1000", 3)?)?;
    let opts = crate::qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "ok.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.trial", &[("entry", "b"), ("bless_after_ms", "1000")])?;
    let waiting = c.expect("boot.trial-waiting", &[])?;
    ensure!(waiting.get("reason") == Some("beater is starting"), "{:?}", waiting.fields);
    let healthy = c.expect("container.health", &[("name", "beater"), ("to", "healthy")])?;
    let blessed = c.expect("boot.blessed", &[("slot", "b")])?;
    ensure!(
        waiting.index < healthy.index && healthy.index < blessed.index && t_ms(blessed) >= t_ms(healthy),
        "blessed at {} ms, healthy at {} ms, waiting from {} ms",
        t_ms(blessed),
        t_ms(healthy),
        t_ms(waiting)
    );
    ensure!(c.first("boot.trial-failed", &[]).is_none(), "the trial failed");
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b.efi"], "after the healthy trial: {names:?}");
    eprintln!("health-gate: blessed {} ms after healthy", t_ms(blessed) - t_ms(healthy));
    Ok(())
}

fn rolls_back_when_unhealthy(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("health-gate-bad")?;
    let (disk, layout) = ctx.disk_with_esp(&app, "bad.img", &esp(ctx, "cairn.bless_after_ms=8000", 1)?)?;
    let opts = crate::qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "bad.log", BOOT_TIMEOUT, &until_exit)?;
    no_panic(&run)?;
    ensure!(run.ending == Ending::Exited, "the failed trial did not reboot: QEMU {:?}", run.ending);
    let c = &run.console;
    let unhealthy = c.expect("container.health", &[("name", "beater"), ("to", "unhealthy")])?;
    let failed = c.expect("boot.trial-failed", &[("entry", "b"), ("effect", "reboot")])?;
    ensure!(failed.get("reason") == Some("beater unhealthy"), "{:?}", failed.fields);
    ensure!(unhealthy.index < failed.index, "trial failed before the container was unhealthy");
    ensure!(c.first("boot.blessed", &[]).is_none(), "an unhealthy trial was blessed");
    c.expect("shutdown.complete", &[("kind", "reboot")])?;
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+0-1.efi"], "after the failed trial: {names:?}");
    Ok(())
}
