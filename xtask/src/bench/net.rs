//! `net`: TCP throughput through cairn's container networks against host
//! networking, in the bench guest (`cairn.bench.mode=net`, see
//! `bench/src/net.rs`): loopback in the device's namespace, container to
//! container over a bridge, container to the device through the bridge.

use std::time::Duration;

use anyhow::Result;

use super::report::{Group, Row};
use super::stats;

/// MiB per transfer.
pub const MIB: u64 = 64;
/// Transfers per path at most (each takes about a second under TCG).
pub const MAX_SAMPLES: usize = 20;

/// Boot the bench guest in net mode; the throughput group.
pub fn run(guest: &super::start::Guest<'_>, n: usize) -> Result<Group> {
    let n = n.clamp(1, MAX_SAMPLES);
    eprintln!("xtask: bench net: {n} transfers of {MIB} MiB per path");
    let cmdline = format!("cairn.bench.mode=net cairn.bench.n={n} cairn.bench.mib={MIB}");
    let raw = guest.boot(&cmdline, "net.log", Duration::from_secs(180 + 3 * 30 * n as u64))?;
    Ok(group(&stats::parse_samples(raw.iter().map(String::as_str)), n))
}

/// The group from the guest's `bench-sample PATH mibps V` lines.
pub fn group(samples: &stats::Samples, n: usize) -> Group {
    let get = |who: &str| samples.get(&(who.to_owned(), "mibps".to_owned())).cloned().unwrap_or_default();
    Group {
        name: "net-throughput".into(),
        title: format!("TCP throughput of one connection, {MIB} MiB, between two containers started by cairn's runtime"),
        unit: "MiB/s".into(),
        rows: vec![
            Row::new("bridge (container to container)", get("bridge")),
            Row::new("host (both network = host, loopback)", get("host")),
            Row::new("to-device (container to the device's .1)", get("to-device")),
        ],
        subject: Some("bridge (container to container)".into()),
        notes: vec![
            format!("{n} transfers per path, interleaved, after one unmeasured transfer each; the sink times accept to end of stream"),
            "bridge: two veth pairs into cairn-br0 (10.89.3.2 <- 10.89.3.3); to-device: a veth pair to a listener in the device's namespace at the bridge's 10.89.3.1".into(),
            "no firewall in the bench guest: cairn-init's table has no per-packet rule on these paths, only conntrack for the forward and input chains".into(),
            "higher is better: the ratio column is the bridge's p50 over each row's".into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_rows_per_path() {
        let lines = ["bench-sample bridge mibps 100.5", "bench-sample host mibps 300", "bench-sample bridge mibps 90"];
        let g = group(&stats::parse_samples(lines), 2);
        assert_eq!(g.rows[0].samples, [100.5, 90.0]);
        assert_eq!(g.rows[1].samples, [300.0]);
        assert!(g.rows[2].samples.is_empty());
    }
}
