//! `logs` (issue 14 item 3): a container writes 10 MiB as fast as it can;
//! PID 1 keeps its newest lines in a 64 KiB ring and its own memory
//! (VmHWM, reported in `ps`) stays far below what it was sent; `logs`
//! returns the newest lines, ending with the container's last, and
//! `logs --since T` only lines from T on; `logs @kernel` the kernel's log.
//! A follower that reads nothing is dropped after 10 s without progress.

use anyhow::{ensure, Result};

use crate::Ctx;

/// PID 1's peak resident memory must stay below this (it was sent 10 MiB).
pub const INIT_HWM_MAX: i64 = 4 * 1024 * 1024;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "logs")?;
    let c = &run.console;
    // The flooder's own last line is in its log (the console, flooded, may
    // have dropped it): `flood-done lines=N`, N lines of 100 bytes before it.
    let logs = c.expect("logs", &[("name", "watcher")])?;
    let last = logs.get("last").unwrap_or("");
    let lines: i64 = last
        .strip_prefix("payload_name=flooder_event=flood-done_lines=")
        .and_then(|r| r.split('_').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    ensure!(lines * 100 >= 10 << 20, "the log does not end with flood-done after 10 MiB: {:?}", logs.fields);
    let mem = c.expect("init-memory", &[("name", "watcher")])?;
    let (rss, hwm) = (mem.num("rss").unwrap_or(-1), mem.num("hwm").unwrap_or(-1));
    ensure!(rss > 0 && hwm >= rss && hwm < INIT_HWM_MAX, "PID 1's memory: rss={rss} hwm={hwm} (max {INIT_HWM_MAX})");
    ensure!(logs.get("reply") == Some("cairn/1_ok"), "logs reply: {:?}", logs.fields);
    let kept = logs.num("lines").unwrap_or(0);
    // 64 KiB of 99-byte lines plus 40 bytes each: about 470.
    ensure!((300..=700).contains(&kept), "{kept} lines kept: {:?}", logs.fields);
    ensure!(
        logs.get("before_last") == Some(format!("flood_{:08}_{}", lines - 1, "x".repeat(45)).as_str()),
        "the ring does not end with the newest lines: {:?}",
        logs.fields
    );
    let since = c.expect("logs-since", &[("name", "watcher")])?;
    let n = since.num("lines").unwrap_or(0);
    ensure!(
        since.get("reply") == Some("cairn/1_ok") && since.num("older") == Some(0) && n > 0 && n < kept,
        "logs --since: {:?} ({kept} lines in all)",
        since.fields
    );
    // A follower that reads nothing is dropped, and costs PID 1 no memory
    // meanwhile (the check above ran while it was held or after).
    let held = c.expect("hold", &[("name", "lazy")])?;
    ensure!(held.get("reply") == Some("cairn/1_ok"), "lazy follow: {:?}", held.fields);
    let dropped = c.expect("control.stream-dropped", &[("caller", "lazy")])?;
    ensure!(dropped.get("reason") == Some("client not reading"), "{:?}", dropped.fields);
    let done = c.expect("hold-done", &[("name", "lazy")])?;
    ensure!(done.get("end") == Some("eof"), "the dropped stream did not end: {:?}", done.fields);
    // The kernel's log, read from /dev/kmsg on request.
    let kernel = c.expect("kernel-log", &[("name", "watcher")])?;
    ensure!(
        kernel.get("reply") == Some("cairn/1_ok")
            && kernel.num("lines").is_some_and(|n| n > 10)
            && kernel.get("linux") == Some("1"),
        "logs @kernel: {:?}",
        kernel.fields
    );
    eprintln!("logs: PID 1 rss={rss} hwm={hwm} after {lines} lines; {kept} kept, {n} since {:?}", since.get("since"));
    Ok(())
}
