//! `health` (issue 14 item 2): a container heartbeats on the control
//! socket for 4 s, then stops; its health check (1 s interval, 0.5 s
//! timeout, 2 retries) reports `starting` → `healthy` → `unhealthy`, and
//! it is stopped and restarted by its on-failure policy although it exits
//! with 0 (unhealthy counts as a failure); the second run goes the same
//! way and is given up on. A container without a health check is refused
//! its heartbeat; `cairn-ctl heartbeat` works for a container with a
//! health check and no permissions; `ps` shows the health.
//!
//! Checks by command: `probed-ok`'s probe always exits 0 (healthy, never a
//! failure); `probed-sick`'s passes while a file exists (4 s), then exits
//! 1: unhealthy, restarted by its policy, the same again, given up on;
//! `probed-hang`'s sleeps past its 1.5 s timeout three times in a row:
//! each is killed (`reason=timeout`; a census of the container's pid
//! namespace falls back to its count before the probe every time, so
//! nothing is left behind), then the container is unhealthy and stopped.

use anyhow::{ensure, Result};

use crate::console::{Console, Line};
use crate::Ctx;

/// An event's `t=` in ms since boot.
pub fn t_ms(l: &Line) -> i64 {
    l.get("t").and_then(|t| t.parse::<f64>().ok()).map_or(-1, |t| (t * 1000.0).round() as i64)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "health")?;
    let c = &run.console;
    // The whole story, in order.
    let want: [(&str, &[(&str, &str)]); 14] = [
        ("container.started", &[("restarts", "0")]),
        ("container.health", &[("from", "none"), ("to", "starting")]),
        ("container.health", &[("from", "starting"), ("to", "healthy")]),
        ("container.health", &[("from", "healthy"), ("to", "unhealthy"), ("failures", "2")]),
        ("container.stopping", &[("reason", "unhealthy")]),
        ("container.exited", &[("code", "0")]),
        ("container.restart-scheduled", &[("attempt", "1")]),
        ("container.started", &[("restarts", "1")]),
        ("container.health", &[("from", "unhealthy"), ("to", "starting")]),
        ("container.health", &[("from", "starting"), ("to", "healthy")]),
        ("container.health", &[("from", "healthy"), ("to", "unhealthy"), ("failures", "2")]),
        ("container.stopping", &[("reason", "unhealthy")]),
        ("container.exited", &[("code", "0")]),
        ("container.gave-up", &[]),
    ];
    let mut at = 0;
    let mut seen = Vec::new();
    for (event, with) in want {
        let mut fields = vec![("name", "beater")];
        fields.extend_from_slice(with);
        let next = c.all(event, &fields).into_iter().find(|l| l.index > at);
        let Some(l) = next else {
            anyhow::bail!("after {seen:?}: no {event} {with:?}");
        };
        at = l.index;
        seen.push(format!("{event}@{}", t_ms(l)));
    }
    // Nothing else changed its health (no flapping).
    let changes = c.all("container.health", &[("name", "beater")]);
    ensure!(changes.len() == 6, "{} health changes: {seen:?}", changes.len());
    // Unhealthy only after the heartbeats stopped: two missed checks
    // (1.5 s and 2.5 s after the last beat, which is at most 0.3 s
    // before `heartbeat-stopped`), with slack for a slow TCG guest.
    let stopped = c.all("heartbeat-stopped", &[("name", "beater")]);
    let unhealthy = c.all("container.health", &[("name", "beater"), ("to", "unhealthy")]);
    ensure!(stopped.len() == 2 && unhealthy.len() == 2, "{} stops, {} unhealthy", stopped.len(), unhealthy.len());
    for (s, u) in stopped.iter().zip(&unhealthy) {
        let after = t_ms(u) - s.num("t_ms").unwrap_or(i64::MAX);
        ensure!((1500..=4000).contains(&after), "unhealthy {after} ms after the heartbeats stopped");
        ensure!(s.get("failed") == Some("0") && s.num("beats").is_some_and(|b| b >= 5), "heartbeats: {:?}", s.fields);
    }
    // No permission needed, but a health check: plain is refused.
    let refused = c.expect("control.refused", &[("caller", "plain"), ("request", "heartbeat")])?;
    ensure!(refused.get("needs") == Some("health"), "{:?}", refused.fields);
    let ctl = c.expect("ctl", &[("name", "plain"), ("request", "heartbeat")])?;
    ensure!(ctl.get("reply") == Some("error_not_permitted"), "{:?}", ctl.fields);
    // Accepted heartbeats are not logged one by one.
    ensure!(
        c.first("control.request", &[("caller", "beater"), ("request", "heartbeat")]).is_none(),
        "an accepted heartbeat was logged"
    );
    // cairn-ctl, offered for a health check alone (no permissions).
    c.expect("container.health", &[("name", "cli-beat"), ("from", "starting"), ("to", "healthy")])?;
    let exited = c.expect("container.exited", &[("name", "cli-beat")])?;
    ensure!(exited.get("code") == Some("0"), "cairn-ctl heartbeat: {:?}", exited.fields);
    // ps shows the health (and `-` for a container without a check).
    let rows: Vec<&str> =
        c.all("ctl-line", &[("name", "watcher"), ("request", "ps")]).iter().filter_map(|l| l.get("line")).collect();
    let row = |name: &str| rows.iter().find(|r| r.starts_with(&format!("name={name}_"))).copied().unwrap_or("");
    ensure!(row("beater").ends_with("_health=healthy"), "ps: {rows:?}");
    ensure!(row("plain").ends_with("_health=-"), "ps: {rows:?}");
    eprintln!("health: {}", seen.join(" "));
    commands(c, &rows)?;
    Ok(())
}

/// `want`'s events for container `name`, in this order; their names and
/// times.
fn story(c: &Console, name: &str, want: &[(&str, &[(&str, &str)])]) -> Result<Vec<String>> {
    let mut at = 0;
    let mut seen = Vec::new();
    for (event, with) in want {
        let mut fields = vec![("name", name)];
        fields.extend_from_slice(with);
        let Some(l) = c.all(event, &fields).into_iter().find(|l| l.index > at) else {
            anyhow::bail!("{name}: after {seen:?}: no {event} {with:?}");
        };
        at = l.index;
        seen.push(format!("{event}@{}", t_ms(l)));
    }
    Ok(seen)
}

/// Health checks by command.
fn commands(c: &Console, rows: &[&str]) -> Result<()> {
    // The second `ps` (the rows of the first come first).
    let row = |name: &str| rows.iter().rfind(|r| r.starts_with(&format!("name={name}_"))).copied().unwrap_or("");
    ensure!(rows.iter().filter(|r| r.starts_with("name=probed-ok_")).count() == 2, "ps: {rows:?}");
    ensure!(row("probed-hang").ends_with("_health=starting"), "ps: {rows:?}");
    // Passes every time: healthy, and nothing failed.
    c.expect("container.health", &[("name", "probed-ok"), ("from", "starting"), ("to", "healthy")])?;
    ensure!(c.all("container.health", &[("name", "probed-ok")]).len() == 2, "probed-ok flapped");
    ensure!(c.first("container.probe-failed", &[("name", "probed-ok")]).is_none(), "a passing probe failed");
    ensure!(row("probed-ok").ends_with("_health=healthy"), "ps: {}", row("probed-ok"));
    // Passes while its file exists, then fails with exit 1: unhealthy,
    // restarted by its policy, the same again, given up on.
    let sick: [(&str, &[(&str, &str)]); 16] = [
        ("container.started", &[("restarts", "0")]),
        ("container.health", &[("from", "none"), ("to", "starting")]),
        ("container.health", &[("from", "starting"), ("to", "healthy")]),
        ("health-file", &[("state", "removed")]),
        ("container.probe-failed", &[("reason", "exit"), ("code", "1")]),
        ("container.health", &[("from", "healthy"), ("to", "unhealthy"), ("failures", "2")]),
        ("container.stopping", &[("reason", "unhealthy")]),
        ("container.exited", &[("code", "0")]),
        ("container.restart-scheduled", &[("attempt", "1")]),
        ("container.started", &[("restarts", "1")]),
        ("container.health", &[("from", "unhealthy"), ("to", "starting")]),
        ("container.health", &[("from", "starting"), ("to", "healthy")]),
        ("health-file", &[("state", "removed")]),
        ("container.health", &[("from", "healthy"), ("to", "unhealthy"), ("failures", "2")]),
        ("container.stopping", &[("reason", "unhealthy")]),
        ("container.gave-up", &[]),
    ];
    let seen = story(c, "probed-sick", &sick)?;
    ensure!(c.all("container.health", &[("name", "probed-sick")]).len() == 6, "probed-sick: {seen:?}");
    // Not before its file was gone: the first failure comes at most an
    // interval (1 s) after, the second another interval later.
    let removed = c.all("health-file", &[("name", "probed-sick"), ("state", "removed")]);
    let unhealthy = c.all("container.health", &[("name", "probed-sick"), ("to", "unhealthy")]);
    for (r, u) in removed.iter().zip(&unhealthy) {
        let after = t_ms(u) - r.num("t_ms").unwrap_or(i64::MAX);
        // (Slack for a slow emulated board, where a probe takes a while.)
        ensure!((1000..=8000).contains(&after), "probed-sick unhealthy {after} ms after its file went");
    }
    eprintln!("health: probed-sick {}", seen.join(" "));
    // Hangs: killed at the timeout, three times in a row, then unhealthy
    // and stopped (policy never).
    let hang: [(&str, &[(&str, &str)]); 8] = [
        ("container.health", &[("from", "none"), ("to", "starting")]),
        ("container.probe-failed", &[("reason", "timeout"), ("timeout_ms", "1500")]),
        ("container.probe-failed", &[("reason", "timeout")]),
        ("container.probe-failed", &[("reason", "timeout")]),
        ("container.health", &[("from", "starting"), ("to", "unhealthy"), ("failures", "3")]),
        ("container.stopping", &[("reason", "unhealthy")]),
        ("container.exited", &[]),
        ("container.stopped", &[("reason", "policy")]),
    ];
    let seen = story(c, "probed-hang", &hang)?;
    ensure!(c.first("container.probe-failed", &[("name", "probed-hang"), ("reason", "overdue")]).is_none(), "overdue");
    // The census inside it: every probe showed up as one more process
    // and was gone before the next (none left behind by a kill).
    let counts: Vec<i64> =
        c.all("census", &[("name", "probed-hang"), ("label", "hang")]).iter().filter_map(|l| l.num("n")).collect();
    let base = counts.first().copied().unwrap_or(0);
    let mut rises = 0;
    let mut up = false;
    for n in &counts {
        if *n > base && !up {
            rises += 1;
        }
        up = *n > base;
    }
    let back = counts.iter().skip(1).filter(|n| **n == base).count();
    ensure!(rises >= 2 && back + 1 >= rises, "probed-hang census {counts:?}");
    // The first two kills are seen in full (the third may be cut short by
    // the stop): the count fell back to where it was each time.
    ensure!(back >= 2, "probed-hang census: a probe left behind: {counts:?}");
    eprintln!("health: probed-hang {} census {counts:?}", seen.join(" "));
    Ok(())
}
