//! `watchdog` (issue 12 item 5). QEMU runs with resets allowed (no
//! `-no-reboot`), so a watchdog reset shows as a second `boot.start` in
//! the same console:
//!
//! - a normal boot arms the board's watchdog with the board's timeout,
//!   runs longer than that timeout (only PID 1's pets keep it alive), and
//!   powers off: the watchdog is disarmed first, QEMU exits, no reset;
//! - a boot of the `test-hooks` cairn-init with `cairn.test.hang=supervisor`
//!   (and `cairn.watchdog=8`, an override) hangs in its event loop and is
//!   reset by the watchdog within the timeout plus a margin: the firmware
//!   boots the disk again.

use std::cell::Cell;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cairn_build::bootkit::BootKit;

use super::{no_panic, BOOT_TIMEOUT};
use crate::console::{Console, Line};
use crate::qemu::BootOptions;
use crate::{Ctx, Ending};

/// The hang boot's timeout (a command line override of the board's).
const HANG_TIMEOUT_S: u32 = 8;
/// How late after its timeout the reset may come (guest clock).
const MARGIN_S: f64 = 3.0;
/// What the kernel's softdog prints when it fires.
const SOFTDOG_FIRES: &str = "softdog: Initiating system reboot";

fn t(l: &Line) -> f64 {
    l.get("t").and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

fn boots(c: &Console) -> usize {
    c.all("boot.start", &[]).len()
}

/// The kernel timestamp of the first raw line containing `text`
/// (`[   45.123456] softdog: ...`).
fn kernel_time(c: &Console, text: &str) -> Option<f64> {
    let line = c.raw.iter().find(|l| l.contains(text))?;
    // The timestamp just before the text (the line may start with an
    // event the kernel's message cut into).
    let before = line.get(..line.find(text)?)?;
    let inner = before.get(before.rfind('[')? + 1..before.rfind(']')?)?;
    inner.trim().parse().ok()
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let w = ctx.board.watchdog.context("the board names no watchdog")?;
    let softdog = w.module == Some("softdog");
    let app = ctx.build("watchdog")?;
    let opts = BootOptions { allow_reset: true, ..BootOptions::default() };

    // A normal boot: armed, petted past its timeout, disarmed at power-off.
    let (disk, _) = ctx.disk(&app, "normal.img")?;
    let run = ctx.boot_with(&disk, &opts, "normal.log", BOOT_TIMEOUT, &|c| boots(c) >= 2)?;
    no_panic(&run)?;
    let c = &run.console;
    ensure!(boots(c) == 1, "the machine reset during a normal boot: {} boot.start lines", boots(c));
    ensure!(run.ending == Ending::Exited, "QEMU did not exit by itself: {:?} after {:?}", run.ending, run.elapsed);
    let timeout = w.timeout_s.to_string();
    let armed = c.expect("watchdog.armed", &[("device", w.device), ("timeout_s", &timeout)])?;
    if softdog {
        ensure!(armed.get("identity") == Some("Software Watchdog"), "identity: {:?}", armed.fields);
        ensure!(armed.get("last_reset") == Some("unreported"), "softdog reports no reset reason: {:?}", armed.fields);
    }
    let modules = c.expect("modules.done", &[])?;
    ensure!(armed.index > modules.index, "armed before the modules were loaded");
    let disarmed = c.expect("watchdog.disarmed", &[("device", w.device), ("state", "inactive")])?;
    let done = c.expect("shutdown.complete", &[("kind", "poweroff")])?;
    ensure!(disarmed.index < done.index, "disarmed after shutdown.complete");
    let armed_for = t(disarmed) - t(armed);
    ensure!(
        armed_for > f64::from(w.timeout_s) + MARGIN_S,
        "armed for only {armed_for:.1} s: too short to show that the pets keep the machine up"
    );
    ensure!(!c.contains(SOFTDOG_FIRES), "the watchdog fired during a normal boot");

    // The test-hooks init hangs in its loop: the watchdog resets the machine.
    let kit = ctx.art.test_hooks_kit.as_ref().context("no test-hooks boot kit (xtask builds it for this scenario)")?;
    let words = format!("cairn.test.hang=supervisor cairn.watchdog={HANG_TIMEOUT_S}");
    let kit = BootKit { cmdline: format!("{} {words}", kit.cmdline), ..kit.clone() };
    let esp = kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    let (disk, _) = ctx.disk_with_esp(&app, "hang.img", &esp)?;
    let (hung_at, fired_at) = (Cell::new(None), Cell::new(None));
    let stop = |c: &Console| {
        if hung_at.get().is_none() && c.first("test.hang", &[]).is_some() {
            hung_at.set(Some(Instant::now()));
        }
        if fired_at.get().is_none() && c.contains("Initiating system reboot") {
            fired_at.set(Some(Instant::now()));
        }
        boots(c) >= 2
    };
    let run = ctx.boot_with(&disk, &opts, "hang.log", BOOT_TIMEOUT * 2, &stop)?;
    no_panic(&run)?;
    let c = &run.console;
    ensure!(
        run.ending == Ending::Stopped,
        "no second boot after the hang: QEMU {:?} after {:?}",
        run.ending,
        run.elapsed
    );
    let hang_timeout = HANG_TIMEOUT_S.to_string();
    let armed = c.expect("watchdog.armed", &[("device", w.device), ("timeout_s", &hang_timeout)])?;
    let hang = c.expect("test.hang", &[("where", "supervisor")])?;
    ensure!(armed.index < hang.index, "hung before the watchdog was armed");
    ensure!(c.first("shutdown.start", &[]).is_none(), "PID 1 shut down instead of hanging");
    let second = c.all("boot.start", &[]).get(1).map(|l| l.index).unwrap_or(0);
    ensure!(c.all("watchdog.armed", &[]).first().is_some_and(|a| a.index < second), "order of boots");
    if softdog {
        let fired = kernel_time(c, SOFTDOG_FIRES).context("softdog never said it fired")?;
        let after = fired - t(hang);
        let limit = f64::from(HANG_TIMEOUT_S);
        ensure!(
            (limit - 1.0..=limit + MARGIN_S).contains(&after),
            "the watchdog fired {after:.1} s after PID 1 hung (timeout {limit} s, margin {MARGIN_S} s)"
        );
        // Host clock too: the console arrives late at most by a few seconds.
        let host = fired_at.get().zip(hung_at.get()).map(|(f, h)| f.saturating_duration_since(h));
        ensure!(
            host.is_some_and(|d| d <= Duration::from_secs(u64::from(HANG_TIMEOUT_S) + 10)),
            "host clock: the reset came {host:?} after the hang"
        );
    }
    Ok(())
}
