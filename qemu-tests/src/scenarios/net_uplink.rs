//! `net-uplink` (issue 16 item 4): the device's interface is configured by
//! a container, not by cairn: busybox udhcpc with `network = "host"` and
//! CAP_NET_ADMIN takes QEMU's DHCP lease (10.0.2.15/24, router 10.0.2.2)
//! and its script sets the address and the default route. PID 1 sees the
//! address appear in its own namespace and says so (`net.address`).

use anyhow::{ensure, Result};

use super::powered_off;
use crate::qemu::BootOptions;
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("net-uplink")?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let opts = BootOptions { net: true, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "console.log", super::BOOT_TIMEOUT, &super::until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let added = c.expect("net.address", &[("action", "added"), ("iface", "eth0"), ("addr", "10.0.2.15/24")])?;
    let started = c.expect("container.started", &[("name", "dhcp")])?;
    ensure!(started.index < added.index, "the address came before the DHCP client ran");
    let raw = run.console.raw_lines();
    ensure!(
        raw.iter().any(|l| l.starts_with("[dhcp] ") && l.contains("lease of 10.0.2.15 obtained")),
        "udhcpc did not report its lease"
    );
    ensure!(
        raw.iter().any(|l| l.starts_with("[route] default via 10.0.2.2 dev eth0")),
        "the device has no default route through the lease's router"
    );
    // The client stays for renewals: it was still running at power-off.
    let stopping = c.expect("container.stopping", &[("name", "dhcp")])?;
    ensure!(stopping.index > added.index, "the DHCP client did not stay");
    Ok(())
}
