//! `net-bridge` (issue 16 items 1 and 2): networks from the appliance file
//! become bridges on the device, each container on one gets a veth pair
//! (`eth0` inside, at the address the build planned) and an `/etc/hosts`
//! naming the containers it shares a network with. Two containers on
//! `backend` talk TCP by name; one on `frontend` cannot reach backend's
//! addresses (no route: ENETUNREACH, pinned); one with no network has
//! loopback only; one on both sees `eth0` and `eth1`; one under a user
//! namespace configures its own `eth0`.

use anyhow::{ensure, Result};

use super::boot_until_poweroff;
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = boot_until_poweroff(ctx, "net-bridge")?;
    let c = &run.console;
    for (name, bridge) in [("backend", "cairn-br0"), ("frontend", "cairn-br1")] {
        c.expect("network.ready", &[("name", name), ("bridge", bridge)])?;
    }
    c.expect("network.attach", &[("container", "db"), ("iface", "eth0"), ("addr", "10.89.1.2/24")])?;
    c.expect("network.attach", &[("container", "app"), ("iface", "eth0"), ("addr", "10.89.1.3/24")])?;
    c.expect("network.attach", &[("container", "web"), ("iface", "eth0"), ("addr", "10.89.2.10/24")])?;

    // app reached db by its name.
    let conn = c.expect("net-connect", &[("name", "app")])?;
    ensure!(conn.get("result") == Some("ok") && conn.get("reply") == Some("pong"), "app -> db: {:?}", conn.fields);
    c.expect("net-accepted", &[("name", "db"), ("msg", "ping")])?;

    // web, on the other network, never reached db's address.
    let probe = c.expect("net-probe", &[("name", "web")])?;
    ensure!(
        probe.num("attempts").unwrap_or(0) > 0
            && probe.num("connected") == Some(0)
            && probe.get("last") == Some("ENETUNREACH"),
        "web reached backend (or failed otherwise): {:?}",
        probe.fields
    );
    let listening = c.expect("net-listening", &[("name", "db")])?;
    let done = c.expect("net-serve-done", &[("name", "db")])?;
    ensure!(listening.index < probe.index && probe.index < done.index, "web did not probe while db listened");

    // The device has no address on a container network (not even IPv6
    // link-local): no container reaches the device's services through it.
    let device_side = c
        .all("net.address", &[])
        .into_iter()
        .find(|l| l.get("iface").is_some_and(|i| i.starts_with("cairn-br") || i.starts_with("cv")));
    ensure!(
        device_side.is_none(),
        "the device got an address on a container network: {:?}",
        device_side.map(|l| &l.fields)
    );
    // The bridge modules: loaded on demand, after the boot modules.
    let done = c.expect("modules.done", &[])?;
    for m in ["bridge.ko", "veth.ko"] {
        let l = c.expect("module.loaded", &[("name", m)])?;
        ensure!(l.index > done.index, "{m} loaded with the boot modules, not on demand");
    }
    // Internal networks only: no firewall, and its modules stay unloaded.
    ensure!(c.first("network.firewall", &[]).is_none(), "a firewall for internal networks");
    ensure!(c.first("module.loaded", &[("name", "nf_tables.ko")]).is_none(), "nf_tables loaded without a firewall");
    let iso = c.expect("net-info", &[("name", "iso")])?;
    ensure!(iso.get("ifaces") == Some("lo"), "network = none sees {:?}", iso.get("ifaces"));
    let both = c.expect("net-info", &[("name", "netinfo")])?;
    let mut ifaces: Vec<&str> = both.get("ifaces").unwrap_or("").split(',').collect();
    ifaces.sort_unstable();
    ensure!(ifaces == ["eth0", "eth1", "lo"], "a container on two networks sees {ifaces:?}");
    let jailed = c.expect("net-info", &[("name", "jailed")])?;
    ensure!(jailed.get("ifaces") == Some("lo,eth0"), "under a user namespace: {:?}", jailed.get("ifaces"));
    for name in ["db", "app", "web", "iso", "netinfo", "jailed"] {
        let e = c.expect("container.exited", &[("name", name)])?;
        ensure!(e.get("code") == Some("0"), "{name} exited {:?}", e.fields);
    }
    Ok(())
}
