//! `pause` (pause/resume through the cgroup v2 freezer): a counter paused
//! over the control socket prints nothing between `container.paused` and
//! `container.resumed` (its lines carry CLOCK_BOOTTIME, the clock of the
//! events), then goes on counting from where it was; `ps` shows it
//! paused; a second pause is refused; paused again, `stop` thaws it first
//! so its SIGTERM ends it at once (no kill after its 8 s grace period).

use anyhow::{ensure, Result};

use super::health::t_ms;
use crate::Ctx;

/// How long before `container.resumed`'s time the thawed counter may print.
const THAW_SLACK_MS: i64 = 100;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "pause")?;
    let c = &run.console;
    let reply = |request: &str| {
        c.all("ctl", &[("name", "admin"), ("request", request)])
            .iter()
            .map(|l| l.get("reply").unwrap_or(""))
            .collect::<Vec<_>>()
    };
    ensure!(reply("pause_counter") == ["ok", "error_counter_is_paused", "ok"], "pause: {:?}", reply("pause_counter"));
    ensure!(reply("resume_counter") == ["ok", "error_counter_is_not_paused"], "resume: {:?}", reply("resume_counter"));
    let paused = c.all("container.paused", &[("name", "counter")]);
    let resumed = c.expect("container.resumed", &[("name", "counter"), ("reason", "control")])?;
    ensure!(paused.len() == 2, "{} container.paused", paused.len());
    let (p, r) = (t_ms(paused[0]), t_ms(resumed));
    let counts = c.all("count", &[("name", "counter")]);
    let at = |l: &&crate::console::Line| l.num("t_ms").unwrap_or(-1);
    // The thaw is written just before `container.resumed` takes its time:
    // the counter may print a line a few ms before that.
    let thaw = r - THAW_SLACK_MS;
    let during: Vec<i64> = counts.iter().map(at).filter(|t| *t > p && *t < thaw).collect();
    ensure!(during.is_empty(), "counted while paused ({p}..{thaw} ms): {during:?}");
    let before = counts.iter().rfind(|l| at(l) <= p).ok_or_else(|| anyhow::anyhow!("no count before the pause"))?;
    let after = counts.iter().find(|l| at(l) > p).ok_or_else(|| anyhow::anyhow!("no count after the resume"))?;
    ensure!(at(after) >= thaw, "counted at {} ms, paused {p}..{r} ms", at(after));
    ensure!(
        after.num("n") == before.num("n").map(|n| n + 1),
        "not continued: n={:?} before, n={:?} after",
        before.get("n"),
        after.get("n")
    );
    ensure!(r - p >= 1500, "paused only {} ms", r - p);
    let rows: Vec<&str> =
        c.all("ctl-line", &[("name", "admin"), ("request", "ps")]).iter().filter_map(|l| l.get("line")).collect();
    ensure!(rows.iter().any(|r| r.starts_with("name=counter_state=paused_")), "ps: {rows:?}");
    // stop while paused: thawed, then its stop signal ends it.
    let thawed = c.expect("container.resumed", &[("name", "counter"), ("reason", "stop")])?;
    let stopping = c.expect("container.stopping", &[("name", "counter"), ("reason", "control")])?;
    let exited = c.expect("container.exited", &[("name", "counter")])?;
    ensure!(thawed.index > paused[1].index && stopping.index > thawed.index, "stop did not thaw first");
    // The namespace init reports its child's death by SIGTERM as 128 + 15.
    ensure!(
        exited.get("signal") == Some("15") || exited.get("code") == Some("143"),
        "not ended by its stop signal: {:?}",
        exited.fields
    );
    ensure!(t_ms(exited) - t_ms(stopping) < 2000, "ended {} ms after its stop signal", t_ms(exited) - t_ms(stopping));
    ensure!(c.first("container.killed", &[("name", "counter")]).is_none(), "killed after the grace period");
    eprintln!("pause: paused {} ms (frozen after {:?} ms)", r - p, paused[0].get("waited_ms"));
    Ok(())
}
