//! `network`: the three network modes under a real kernel. `none` is a
//! namespace of its own with only loopback (up); `host` is PID 1's own
//! namespace; `container:NAME` joins NAME's namespace, so the two talk over
//! 127.0.0.1 while a third container with `none` is refused. The first
//! `none` container enters the namespace PID 1 made ahead (`boot.ahead`):
//! loopback up, and shared with no other container; a restart enters the
//! one PID 1 made once idle after that (`ahead.made`).

use anyhow::{ensure, Context, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "network")?;
    let c = &run.console;
    let host = c.expect("boot.netns", &[])?.get("net").unwrap_or("").to_owned();
    ensure!(host.starts_with("net:["), "PID 1's net namespace is {host:?}");

    let iso = c.expect("net-info", &[("name", "isolated")])?;
    let iso_ns = iso.get("netns").unwrap_or("");
    ensure!(iso.get("ifaces") == Some("lo"), "network=none sees interfaces {:?}", iso.get("ifaces"));
    ensure!(iso.get("lo_up") == Some("1"), "network=none: loopback not up: {:?}", iso.fields);
    ensure!(iso_ns.starts_with("net:[") && iso_ns != host, "network=none is in {iso_ns}, PID 1 in {host}");
    // The first container with a namespace of its own (in start order)
    // enters the one PID 1 made ahead; it is no one else's.
    let ahead = c.expect("boot.ahead", &[])?;
    ensure!(ahead.get("net") == Some(iso_ns), "isolated is in {iso_ns}, the one made ahead is {:?}", ahead.fields);
    // Once idle after the first starts, PID 1 makes the next one; the
    // restart of `again` (after its back-off) enters it, and it was not
    // in it before.
    let runs: Vec<&str> = c.all("net-info", &[("name", "again")]).iter().filter_map(|l| l.get("netns")).collect();
    ensure!(runs.len() == 2, "again ran {} times, not 2: {runs:?}", runs.len());
    let made: Vec<&str> = c.all("ahead.made", &[]).iter().filter_map(|l| l.get("net")).collect();
    ensure!(
        made.contains(&runs[1]) && !made.contains(&runs[0]) && runs[0] != runs[1],
        "again ran in {runs:?}; PID 1 made {made:?} once idle"
    );

    let h = c.expect("net-info", &[("name", "hostnet")])?;
    ensure!(h.get("netns") == Some(host.as_str()), "network=host is in {:?}, PID 1 in {host}", h.get("netns"));

    let listening = c.expect("net-listening", &[("name", "srv")])?;
    let srv_ns = listening.get("netns").unwrap_or("").to_owned();
    ensure!(srv_ns != host && srv_ns != iso_ns, "srv is not in a namespace of its own: {srv_ns}");
    let conn = c.expect("net-connect", &[("name", "cli")])?;
    ensure!(conn.get("result") == Some("ok") && conn.get("reply") == Some("pong"), "cli: {:?}", conn.fields);
    ensure!(conn.get("netns") == Some(srv_ns.as_str()), "cli is in {:?}, srv in {srv_ns}", conn.get("netns"));
    c.expect("net-accepted", &[("name", "srv"), ("msg", "ping")])?;

    let probe = c.expect("net-probe", &[("name", "probe")])?;
    let attempts = probe.num("attempts").unwrap_or(0);
    ensure!(
        attempts > 0 && probe.num("connected") == Some(0) && probe.num("refused") == Some(attempts),
        "a container in its own namespace reached srv: {:?}",
        probe.fields
    );
    ensure!(probe.get("netns").is_some_and(|n| n != srv_ns && n != host), "probe shares a namespace");
    // Its last attempt was made while srv was listening.
    let done = c.expect("net-serve-done", &[("name", "srv")])?;
    ensure!(
        listening.index < probe.index && probe.index < done.index,
        "probe did not try while srv listened (lines {} {} {})",
        listening.index,
        probe.index,
        done.index
    );
    for name in ["isolated", "hostnet", "srv", "cli", "probe"] {
        let e = c.expect("container.exited", &[("name", name)]).with_context(|| format!("{name} never exited"))?;
        ensure!(e.get("code") == Some("0"), "{name} exited {:?}", e.fields);
    }
    Ok(())
}
