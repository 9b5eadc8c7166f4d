//! `net-uplink` (issue 16 item 4): the device's interface is configured by
//! a container, not by cairn: busybox udhcpc with `network = "host"` and
//! CAP_NET_ADMIN takes QEMU's DHCP lease (10.0.2.15/24, router 10.0.2.2)
//! and its script sets the address and the default route. PID 1 sees the
//! address appear in its own namespace and says so (`net.address`).
//!
//! Name servers (issue 16 item 1): the lease script, granted `network`,
//! hands the lease's server (QEMU's 10.0.2.3) to cairn with `cairn-ctl
//! dns`; a container on a network with egress sees it appear in its
//! `/etc/resolv.conf` while it runs (the file is rewritten in place). Then
//! another container sets a server inside the guest (`dnsd`, answering
//! every A query with 192.0.2.7) and a search domain: through the C
//! library's resolver a container name comes from `/etc/hosts` (no query),
//! a short name is asked with the search domain, a full one as it is.
//! Nothing ever queries 10.0.2.3: no lookup leaves the guest.

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
    // The lease's name server, handed over by the lease script.
    let lease_dns = c.expect("network.dns", &[("caller", "dhcp"), ("servers", "10.0.2.3")])?;
    let seen = c.expect("file-holds", &[("name", "watcher"), ("text", "nameserver_10.0.2.3")])?;
    ensure!(lease_dns.index < seen.index, "watcher saw the server before it was set");
    let set = c.expect("network.dns", &[("caller", "setter"), ("servers", "10.89.7.53"), ("search", "test.lan")])?;
    let resolved = |host: &str| c.first("resolved", &[("name", "client"), ("host", host)]);
    for (host, addr) in [("dnsd", "10.89.7.53"), ("peer", "192.0.2.7"), ("other.example", "192.0.2.7")] {
        match resolved(host) {
            Some(l)
                if l.get("addrs") == Some(addr) && l.get("servers") == Some("10.89.7.53") && l.index > set.index => {}
            other => anyhow::bail!("client's lookup of {host}: {:?}", other.map(|l| &l.fields)),
        }
    }
    let asked: Vec<&str> = c.all("dns-query", &[("name", "dnsd")]).iter().filter_map(|l| l.get("qname")).collect();
    ensure!(
        asked.contains(&"peer.test.lan")
            && asked.contains(&"other.example")
            && !asked.iter().any(|q| q.starts_with("dnsd")),
        "dnsd was asked {asked:?} (want peer.test.lan and other.example, never a container name)"
    );
    // The client stays for renewals: it was still running at power-off.
    let stopping = c.expect("container.stopping", &[("name", "dhcp")])?;
    ensure!(stopping.index > added.index, "the DHCP client did not stay");
    Ok(())
}
