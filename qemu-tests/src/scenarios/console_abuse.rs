//! `console-abuse`: no container can stall PID 1 through the console or the
//! control socket. One container cannot open `/dev/console`, finds its
//! stdout is a pipe (TCOOFF: ENOTTY), forges event lines, makes its stdout
//! non-blocking and floods 2 MiB; another holds silent connections beyond
//! the table's bound and sends a 100-signal list; a container without
//! `control = true` is refused. Meanwhile a crashing container keeps being
//! reaped and restarted, and the device powers off in order on a
//! legitimate request.

use anyhow::{ensure, Context, Result};

use crate::console::Line;
use crate::Ctx;

fn t(l: &Line) -> f64 {
    l.get("t").and_then(|t| t.parse().ok()).unwrap_or(-1.0)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "console-abuse")?;
    let c = &run.console;

    // The console is out of reach; stdout is a pipe, not a terminal.
    let open = c.expect("console-open", &[("name", "flooder")])?;
    ensure!(open.get("err") == Some("ENOENT"), "opening /dev/console in a container: {:?}", open.fields);
    let tcooff = c.expect("console-tcooff", &[("name", "flooder")])?;
    ensure!(tcooff.get("err") == Some("ENOTTY"), "TCOOFF on stdout: {:?}", tcooff.fields);
    c.expect("console-nonblock", &[("name", "flooder"), ("rc", "0")])?;
    let flood = c.expect("console-flood-done", &[("name", "flooder")]).context("the flood never finished")?;
    // Forged events stay container output.
    ensure!(
        c.first("forged-event", &[]).is_none() && c.first("forged-cr", &[]).is_none(),
        "a forged event was accepted"
    );
    ensure!(
        c.raw.iter().any(|l| l.starts_with("[flooder] cairn: t=0.001 event=forged-event")),
        "forged line not prefixed"
    );
    // Every flood line reached the console or was counted as dropped (the
    // serial console under QEMU is often fast enough to take them all:
    // the dropping itself is pinned by the ring's unit tests).
    let dropped: i64 = c.all("console.dropped", &[]).iter().filter_map(|l| l.num("lines")).sum();
    let shown = c.raw.iter().filter(|l| l.starts_with("[flooder] flood ")).count() as i64;
    let total = flood.num("lines").unwrap_or(0);
    ensure!(total > 20_000 && shown <= total, "flood: {shown} of {total} lines shown");
    ensure!(shown + dropped >= total, "flood: {shown} shown + {dropped} dropped < {total} written");
    ensure!(flood.num("eagain").is_some_and(|n| n > 0), "the flooder never waited on its own pipe: {:?}", flood.fields);

    // The control socket: silent connections closed after the deadline, the
    // signal list accepted at once and spaced by timers.
    let idle = c.expect("control-idle", &[("name", "hammer")])?;
    ensure!(idle.num("connected").is_some_and(|n| n > 0), "no idle connection: {:?}", idle.fields);
    let closed = c.expect("control-idle-closed", &[("name", "hammer")])?;
    ensure!(closed.num("closed").is_some_and(|n| n > 0), "PID 1 closed no silent connection: {:?}", closed.fields);
    ensure!(!c.all("control.timeout", &[("caller", "hammer")]).is_empty(), "no control.timeout event");
    let sig = c.expect("control-signal", &[("name", "hammer")])?;
    ensure!(sig.get("reply") == Some("ok"), "signal list: {:?}", sig.fields);
    ensure!(
        sig.num("elapsed_ms").is_some_and(|ms| ms < 1000),
        "the signal list reply took {:?} ms",
        sig.get("elapsed_ms")
    );
    let req = c.expect("control.request", &[("caller", "hammer")])?;
    ensure!(req.num("pid").is_some_and(|p| p > 1) && req.get("uid") == Some("0"), "request event: {:?}", req.fields);
    let signalled = c.all("container.signalled", &[("name", "ticker"), ("signal", "28")]);
    ensure!(signalled.len() == 100, "{} of 100 signals sent", signalled.len());
    let (first, last) = (signalled.first().map_or(0.0, |l| t(l)), signalled.last().map_or(0.0, |l| t(l)));
    ensure!(last - first >= 1.9, "100 signals sent within {:.3}s: not spaced 20 ms", last - first);
    let gaps: Vec<f64> =
        signalled.windows(2).map(|w| w.get(1).map_or(0.0, |b| t(b)) - w.first().map_or(0.0, |a| t(a))).collect();
    ensure!(
        gaps.iter().all(|&g| g >= 0.015),
        "signals closer than 20 ms (event stamps: ms, taken just after each kill): {gaps:?}"
    );

    // Not permitted without control = true.
    let refused = c.expect("control.request", &[("caller", "nocontrol"), ("request", "poweroff")])?;
    ensure!(refused.get("reply") == Some("error not permitted"), "nocontrol: {:?}", refused.fields);
    c.expect("control-borrow", &[("name", "nocontrol"), ("reply", "error_not_permitted")])?;

    // PID 1 kept reaping and restarting throughout, with sane timestamps.
    let restarts = c.all("container.restart-scheduled", &[("name", "crasher")]);
    ensure!(restarts.len() >= 10, "only {} restarts of crasher", restarts.len());
    let times: Vec<f64> = restarts.iter().map(|l| t(l)).collect();
    ensure!(times.windows(2).all(|w| w[1] >= w[0] && w[1] - w[0] < 5.0), "restart times not steady: {times:?}");
    let stop = c.expect("shutdown.start", &[("kind", "poweroff"), ("reason", "control")])?;
    let after = |index: usize| restarts.iter().any(|l| l.index > index);
    let last_signal = signalled.last().map_or(usize::MAX, |l| l.index);
    ensure!(after(flood.index) && after(last_signal) && after(refused.index), "no restart after the abuse: {times:?}");
    let power = c.expect("control.request", &[("caller", "driver"), ("request", "poweroff")])?;
    // The driver's request is the one that began the shutdown: its event
    // follows `shutdown.start`, with only what that shutdown did at once in
    // between (units waiting or in backoff stopped, one in set-up killed),
    // never another control request.
    let between: Vec<&str> = c
        .lines
        .iter()
        .filter(|l| l.source == "cairn" && l.index > stop.index && l.index < power.index)
        .map(|l| l.event.as_str())
        .collect();
    ensure!(
        power.get("reply") == Some("ok")
            && power.index > stop.index
            && between.iter().all(|e| matches!(*e, "container.stopped" | "container.killed")),
        "poweroff request: {:?} (events between: {between:?})",
        power.fields
    );
    ensure!(
        c.all("shutdown.start", &[]).len() == 1 && c.all("shutdown.complete", &[]).len() == 1,
        "more than one shutdown"
    );
    Ok(())
}
