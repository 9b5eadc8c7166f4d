//! `ota-network` (issue 12 item 6): the update agent (`agent/`, a
//! container image of this repository) fetches a thin bundle with a 5 MiB
//! changed layer from an HTTP server in the harness (the host's loopback,
//! 10.0.2.2 to the guest) that drops the connection three times mid-body;
//! the agent resumes each time with a Range request, keeps the file on a
//! persistent volume, and passes it to cairn-init with `update`. The device
//! stages, reboots into the trial and commits. The bytes served stay within
//! one chunk per drop of the bundle's size.
//!
//! The device's uplink is configured by a `network = "host"` container with
//! CAP_NET_ADMIN (the payload's `net-up`, static 10.0.2.15/24 on QEMU's
//! user network): cairn itself configures no interface.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use cairn_build::assemble::BuiltAppliance;
use cairn_format::bootstate::Slot;

use super::ota::{big_v2, bundle_disk, only_staging_written, rebooted, state, system_digests};
use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::http::Server;
use crate::qemu::BootOptions;
use crate::Ctx;

/// The install's chunk: the most a drop may cost in bytes served again.
const CHUNK: u64 = 1 << 20;

/// ota-v1 plus the uplink container and the agent, fetching from `port`.
fn v1_with_agent(ctx: &Ctx, port: u16) -> Result<BuiltAppliance> {
    let apps = crate::appliances_dir();
    let abs = |rel: &str| format!("{:?}", apps.join(rel));
    let mut toml = std::fs::read_to_string(apps.join("ota-v1.toml"))?
        .replace("\"../../images/examples/base\"", &abs("../../images/examples/base"))
        .replace("\"../../images/examples/app\"", &abs("../../images/examples/app"));
    toml.push_str(&format!(
        r#"
[[layer]]
name = "agent"
source = "build:agent"

[[volume]]
name = "updates"
size = "16M"

# The device's uplink: a host-network container with CAP_NET_ADMIN.
[[container]]
name = "uplink"
layers = ["base", "tools"]
argv = ["/bin/cairn-payload", "net-up", "eth0", "10.0.2.15", "24"]
network = "host"
security = {{ cap_add = ["NET_ADMIN"] }}
restart = {{ policy = "never" }}

# The update agent: the bundle goes to its volume, then to cairn-init.
[[container]]
name = "agent"
layers = ["base", "agent"]
argv = ["/bin/cairn-agent", "http://10.0.2.2:{port}/v2.bundle", "/var/lib/cairn-agent", "--max-backoff", "2"]
network = "host"
permissions = ["update"]
mounts = [{{ volume = "updates", path = "/var/lib/cairn-agent" }}]
restart = {{ policy = "never" }}
"#
    ));
    let path = ctx.dir.join("ota-network-v1.toml");
    std::fs::write(&path, toml)?;
    cairn_build::assemble::build_appliance(
        &path,
        &ctx.art.build_sources(),
        &ctx.art.key,
        &ctx.layers_dir("ota-network-v1"),
    )
    .with_context(|| format!("building {}", path.display()))
}

fn boot_net(ctx: &Ctx, disk: &Path, log: &str) -> Result<crate::Run> {
    let opts = BootOptions { net: true, ..BootOptions::default() };
    ctx.boot_with(disk, &opts, log, BOOT_TIMEOUT, &until_exit)
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let v2 = big_v2(ctx)?;
    // The server's port is in v1's manifest: bind first, serve the bundle
    // once it is written (the file is read when the server starts).
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = probe.local_addr()?.port();
    drop(probe);
    let v1 = v1_with_agent(ctx, port)?;
    let (bundle, carried) = bundle_disk(ctx, &v2, &v1, "v2.bundle")?;
    ensure!(carried == 1, "the thin bundle carries {carried} layers, not the one that changed");
    let size = std::fs::metadata(&bundle)?.len();
    let drops = vec![size / 5, size * 2 / 5, size * 3 / 5];
    let server = Server::start_on(port, bundle.clone(), drops.clone())?;
    let (disk, layout) = ctx.disk(&v1, "disk.img")?;
    let before = system_digests(&disk, &layout)?;

    let run = boot_net(ctx, &disk, "fetch.log")?;
    rebooted(&run)?;
    let c = &run.console;
    c.expect("net-up", &[("iface", "eth0")])?;
    let served = server.served();
    eprintln!("ota-network: bundle {size} bytes, served {served:?}");
    ensure!(served.len() == 4, "{} requests served, not 3 dropped and 1 whole: {served:?}", served.len());
    for (k, s) in served.iter().enumerate() {
        ensure!(s.dropped == (k < 3), "request {k}: {s:?}");
    }
    // Each resumed request starts where the last one was cut, less what
    // was in flight (never from zero).
    for (k, pair) in served.windows(2).enumerate() {
        let (cut, next) = (pair[0].from + pair[0].sent, pair[1].from);
        ensure!(next <= cut && cut - next < CHUNK, "request {} resumed at {next}, the last was cut at {cut}", k + 1);
    }
    let sent: u64 = served.iter().map(|s| s.sent).sum();
    ensure!(sent <= size + 3 * CHUNK, "{sent} bytes served for a {size}-byte bundle and 3 drops");
    let raw = run.console.raw_lines();
    let agent = |what: &str| raw.iter().filter(|l| l.starts_with("[agent] cairn-agent ") && l.contains(what)).count();
    ensure!(agent("event=fetch-dropped ") == 3, "the agent did not see 3 drops");
    ensure!(agent("event=fetched ") == 1, "the agent never had the whole bundle");
    c.expect("control.request", &[("caller", "agent"), ("request", "update")])?;
    c.expect("update.verified", &[("version", "2"), ("slot", "b"), ("write", "1")])?;
    c.expect("update.staged", &[("slot", "b"), ("version", "2")])?;
    ensure!(agent("event=update-end staged slot=b") == 1, "the agent was not told the update was staged");
    // v1 has four layers (the agent's too): the first spare is the fifth.
    only_staging_written(&before, &system_digests(&disk, &layout)?, "cairn-layer-05")?;

    let run = boot_net(ctx, &disk, "trial.log")?;
    powered_off(&run)?;
    run.console.expect("update.committed", &[("slot", "b"), ("version", "2"), ("rollback_floor", "2")])?;
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::B && s.trial.is_none() && s.rollback_floor == 2, "not committed: {s:?}");
    Ok(())
}
