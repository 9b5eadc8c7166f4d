//! `oom-live` (issue 14 item 5, live OOM events): a child of the
//! entrypoint allocates past memory.max and is OOM-killed while the
//! entrypoint keeps running; `container.oom` (from an inotify watch on the
//! cgroup's `memory.events`) arrives within a second of the kill, before
//! the entrypoint's exit, and is not repeated at the exit.

use anyhow::{ensure, Result};

use super::health::t_ms;
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "oom-live")?;
    let c = &run.console;
    let ended = c.expect("oom-child-ended", &[("name", "hog")])?;
    ensure!(ended.get("signal") == Some("9"), "the child was not killed by SIGKILL: {:?}", ended.fields);
    let oom = c.expect("container.oom", &[("name", "hog")])?;
    ensure!(oom.get("kills") == Some("1") && oom.get("new") == Some("1"), "{:?}", oom.fields);
    // The kernel's own line says it was a memory cgroup OOM kill.
    let kernel = c.raw.iter().find_map(|l| kernel_kill_ms(l));
    ensure!(kernel.is_some(), "no memory cgroup OOM kill line from the kernel");
    // Within a second of the kill, timed against the entrypoint's reaping
    // of the child (same clock as the events, CLOCK_BOOTTIME; the reap
    // follows the kill at once). Not against the kernel line: its printk
    // time is local_clock, which under TCG runs ahead of CLOCK_BOOTTIME by
    // up to 150 ms on aarch64 (seen). The kernel counts the kill in
    // memory.events before the child is reaped, so the event may come
    // first (seen: -22 to -41 ms).
    let reaped = ended.num("t_ms").unwrap_or(i64::MIN);
    let late = t_ms(oom) - reaped;
    ensure!((-500..=1000).contains(&late), "container.oom {late} ms after the child's reaping");
    // While the entrypoint runs: before it says it survived, and before its exit.
    let survived = c.expect("oom-survived", &[("name", "hog")])?;
    let exited = c.expect("container.exited", &[("name", "hog")])?;
    ensure!(oom.index < survived.index && t_ms(oom) < survived.num("t_ms").unwrap_or(0), "oom event not live");
    ensure!(exited.get("code") == Some("0") && exited.get("oom_kills") == Some("1"), "{:?}", exited.fields);
    ensure!(c.all("container.oom", &[("name", "hog")]).len() == 1, "container.oom repeated");
    let from = if kernel.is_some() { "the kernel's OOM kill line" } else { "the child's reaping" };
    eprintln!("oom-live: container.oom {late} ms after {from}");
    Ok(())
}

/// The time (ms) of the kernel's `Memory cgroup out of memory: Killed
/// process` console line.
fn kernel_kill_ms(line: &str) -> Option<i64> {
    let at = line.find("Memory cgroup out of memory: Killed process")?;
    let stamp = line.get(..at)?;
    let open = stamp.rfind('[')?;
    let close = stamp.get(open..)?.find(']')? + open;
    let secs: f64 = stamp.get(open + 1..close)?.trim().parse().ok()?;
    Some((secs * 1000.0).round() as i64)
}
