//! `control-permissions` (issue 14 item 5): every request from a container
//! without its permission is refused, with a `control.refused` event naming
//! the container, the request and the permission it lacks, and has no
//! effect; a container under a user namespace reaches the socket and is
//! served what it is granted; a granted admin lists (`ps` with the
//! cgroup's counters), restarts, stops and starts a container and powers
//! the device off.
//! `cairn-ctl`, which PID 1 offers at `/run/cairn/cairn-ctl` to granted
//! containers, prints `ps` as JSON and as a table and reports a refusal.

use anyhow::{ensure, Result};

use crate::Ctx;

/// Request verb sent by `limited`, and the permission it lacks.
const REFUSED: [(&str, &str, &str); 12] = [
    ("ps", "ps", "status"),
    ("status", "status", "status"),
    ("events --follow", "events", "status"),
    ("start target", "start", "lifecycle"),
    ("stop target", "stop", "lifecycle"),
    ("restart target", "restart", "lifecycle"),
    ("signal target 10", "signal", "lifecycle"),
    ("poweroff", "poweroff", "power"),
    ("reboot", "reboot", "power"),
    ("exec target -- true", "exec", "exec"),
    ("update", "update", "update"),
    ("dns 10.0.2.3", "dns", "network"),
];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "control-permissions")?;
    let c = &run.console;
    let mut failures = Vec::new();
    for (request, verb, needs) in REFUSED {
        let refused = c.all("control.refused", &[("caller", "limited"), ("request", verb), ("needs", needs)]);
        if refused.len() != 1 {
            failures.push(format!("{request}: {} control.refused events", refused.len()));
        }
        match c.first("ctl", &[("name", "limited"), ("request", &request.replace(' ', "_"))]) {
            Some(l) if l.get("reply") == Some("error_not_permitted") => {}
            other => failures.push(format!("{request}: reply {:?}", other.map(|l| &l.fields))),
        }
    }
    // Granted: logs.
    match c.first("ctl", &[("name", "limited"), ("request", "logs_target")]) {
        Some(l) if l.get("reply") == Some("ok") => {}
        other => failures.push(format!("logs target: {:?}", other.map(|l| &l.fields))),
    }
    // Refusals had no effect: target ran until the admin restarted it.
    let first_stop = c.first("container.stopping", &[("name", "target")]);
    let admin_restart = c.first("ctl", &[("name", "admin"), ("request", "restart_target")]);
    ensure!(admin_restart.is_some_and(|l| l.get("reply") == Some("ok")), "admin restart: {admin_restart:?}");
    ensure!(c.all("container.signalled", &[("name", "target")]).is_empty(), "a refused signal request was carried out");
    if let (Some(stop), Some(last_refusal)) = (first_stop, c.all("control.refused", &[("caller", "limited")]).last()) {
        ensure!(stop.get("reason") == Some("control"), "target stopped other than by control: {:?}", stop.fields);
        ensure!(stop.index > last_refusal.index, "target stopped before the refusals were over");
    }
    // Under a user namespace: connected (socket 0666) and served.
    match c.first("ctl", &[("name", "jailed"), ("request", "status")]) {
        Some(l) if l.get("reply").is_some_and(|r| r.starts_with("ok_")) => {}
        other => failures.push(format!("jailed status: {:?}", other.map(|l| &l.fields))),
    }
    if c.first("control.refused", &[("caller", "jailed"), ("request", "stop"), ("needs", "lifecycle")]).is_none() {
        failures.push("jailed stop: not refused".into());
    }
    // The admin: ps with cgroup counters, a restart, the power-off.
    let ps = c.expect("ctl", &[("name", "admin"), ("request", "ps")])?;
    ensure!(ps.get("reply") == Some("ok"), "admin ps: {:?}", ps.fields);
    let rows: Vec<&str> =
        c.all("ctl-line", &[("name", "admin"), ("request", "ps")]).iter().filter_map(|l| l.get("line")).collect();
    let reply = rows.join(" | ");
    let target = rows.iter().find(|r| r.starts_with("name=target_")).copied().unwrap_or("");
    let num = |k: &str| value(target, k).and_then(|v| v.parse::<u64>().ok());
    ensure!(
        value(target, "state") == Some("running")
            && num("memory").is_some_and(|m| m > 0)
            && num("memory_peak").is_some_and(|m| m >= num("memory").unwrap_or(u64::MAX))
            && num("pids").is_some_and(|p| p >= 2)
            && num("oom_kills") == Some(0)
            && num("cpu_us").is_some()
            && num("restarts") == Some(0)
            && num("uptime_ms").is_some(),
        "admin ps row of target: {target:?} (reply {reply:?})"
    );
    ensure!(
        rows.first().is_some_and(|r| r.starts_with("name=cairn-init_state=running_pid=1_")),
        "no cairn-init row first: {reply:?}"
    );
    let stopping = c.all("container.stopping", &[("name", "target"), ("reason", "control")]);
    let started = c.all("container.started", &[("name", "target")]);
    ensure!(
        stopping.len() == 2 && started.len() == 3 && started.get(1).is_some_and(|s| s.index > stopping[0].index),
        "target not started again after the restart: {} starts, {} stops",
        started.len(),
        stopping.len()
    );
    // stop: it stays stopped (its policy is never anyway, but the event
    // says why), then start brings it back.
    let stopped = c.expect("container.stopped", &[("name", "target"), ("reason", "control")])?;
    ensure!(
        stopped.index > stopping[1].index && started.get(2).is_some_and(|s| s.index > stopped.index),
        "stop then start of target out of order"
    );
    for req in ["stop_target", "start_target"] {
        match c.first("ctl", &[("name", "admin"), ("request", req)]) {
            Some(l) if l.get("reply") == Some("ok") => {}
            other => failures.push(format!("admin {req}: {:?}", other.map(|l| &l.fields))),
        }
    }
    // cairn-ctl from /run/cairn, in containers whose image lacks it.
    let raw = |prefix: &str| c.raw.iter().find(|l| l.starts_with(prefix)).cloned();
    match raw("[cli-json] [{") {
        Some(l)
            if l.contains(r#"{"name":"cairn-init","state":"running","pid":1,"#)
                && l.contains(r#"{"name":"target","state":"running","#) => {}
        other => failures.push(format!("cairn-ctl --json ps: {other:?}")),
    }
    let table_init =
        raw("[cli-table] cairn-init ").map(|l| l.split_whitespace().skip(1).take(3).collect::<Vec<_>>().join(" "));
    if raw("[cli-table] NAME ").is_none() || table_init.as_deref() != Some("cairn-init running 1") {
        failures.push("cairn-ctl ps: no table".into());
    }
    if raw("[cli-refused] cairn-ctl: not permitted").is_none()
        || c.first("container.exited", &[("name", "cli-refused"), ("code", "1")]).is_none()
        || c.first("control.refused", &[("caller", "cli-refused"), ("request", "reboot"), ("needs", "power")]).is_none()
    {
        failures.push("cairn-ctl reboot: not refused as expected".into());
    }
    // events --follow: the restart's events reached the follower.
    let followed = |event: &str| c.raw.iter().any(|l| l.starts_with("[cli-events] cairn: t=") && l.contains(event));
    for e in ["event=container.stopping name=target signal=15", "event=control.refused caller=limited request=poweroff"]
    {
        if !followed(e) {
            failures.push(format!("events --follow: no {e:?}"));
        }
    }
    c.expect("shutdown.start", &[("kind", "poweroff"), ("reason", "control")])?;
    let power = c.expect("control.request", &[("caller", "admin"), ("request", "poweroff")])?;
    ensure!(power.get("reply") == Some("ok"), "admin poweroff: {:?}", power.fields);
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// The value of `key=` in a payload field whose spaces became `_`.
fn value<'a>(row: &'a str, key: &str) -> Option<&'a str> {
    let at =
        row.match_indices(&format!("{key}=")).find(|(i, _)| *i == 0 || row.as_bytes().get(i - 1) == Some(&b'_'))?.0;
    let v = row.get(at + key.len() + 1..)?;
    Some(v.split('_').next().unwrap_or(v))
}
