//! `net-churn` (issue 16): a container on a bridge fails 200 times in a
//! row, each start a new veth pair; once it has stopped, a census in the
//! device's namespace lists the device's interfaces: the bridge is there
//! and no pair is left behind (the kernel deletes a pair with its
//! namespace; this checks that nothing of cairn's keeps one alive).

use anyhow::{ensure, Result};

use super::boot_until_poweroff;
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = boot_until_poweroff(ctx, "net-churn")?;
    let c = &run.console;
    let starts = c.all("container.starting", &[("name", "crasher")]).len();
    let exits = c.all("container.exited", &[("name", "crasher")]).len();
    ensure!(starts == 201 && exits == 201, "crasher started {starts} and exited {exits} times, not 201");
    c.expect("exit-seq-past-end", &[("name", "crasher")])?;
    let census = c.expect("net-info", &[("name", "census")])?;
    let ifaces: Vec<&str> = census.get("ifaces").unwrap_or("").split(',').collect();
    ensure!(ifaces.contains(&"cairn-br0"), "the bridge is gone: {ifaces:?}");
    let left: Vec<&&str> = ifaces.iter().filter(|i| i.starts_with("cv")).collect();
    ensure!(left.is_empty(), "veth pairs left after 201 starts: {left:?}");
    Ok(())
}
