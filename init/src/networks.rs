//! Container networks on the device (`[[network]]`, see
//! `cairn_format::network`): PID 1 loads the bridge and veth modules (only
//! for a manifest with networks) and creates one bridge per network at boot
//! (`cairn-br0`, ... in manifest order), up and without an address (an
//! internal network: its containers reach each other, not the device), and
//! gives each container's spec its attachments and its `/etc/hosts`. The
//! runtime makes the veth pairs at each start (`cairn_runtime::bridge`).
//! IPv6 is off on the bridges and the pairs' outer ends, so the device has
//! not even a link-local address there.
//!
//! A manifest with a network with egress or a published port also gets the
//! firewall, before any bridge: the netfilter modules (only then), table
//! `cairn` (`cairn_runtime::nftables::ruleset`) and IPv4 forwarding. Only
//! then does a network with egress get its `.1` address; if the firewall
//! cannot be made, those networks are `network.failed` and their
//! containers do not start (closed, never open without the drops).

use std::collections::BTreeSet;

use cairn_format::manifest::{Container, Manifest};
use cairn_format::network::{self, addr_text};
use cairn_runtime::netlink::{self, Rtnl};
use cairn_runtime::nftables::{self, Nft};
use cairn_runtime::spec::{ContainerSpec, NetAttach};
use cairn_runtime::sys::{SysError, SysResult};

use crate::event::event;
use crate::resolve::SpecError;

/// The networks whose bridge is up.
pub type Ready = BTreeSet<String>;

/// Create and bring up every network's bridge (and the firewall first, if
/// the manifest needs one). One that fails is `network.failed` (its
/// containers do not start: `network ... is not available`); the others go
/// on.
pub fn prepare(m: &Manifest) -> Ready {
    let mut ready = Ready::new();
    if m.networks.is_empty() {
        return ready;
    }
    // Bridges and veth pairs: loaded only now (they are not boot modules).
    let failed = crate::modules::load_list(crate::modules::NETWORKS_ORDER);
    if failed > 0 {
        let error = format!("{failed} network modules did not load");
        event("network.failed").kv("name", "*").kv("error", error).emit();
        return ready;
    }
    let firewall = match network::needs_firewall(m) {
        false => Ok(()),
        true => {
            let r = firewall(m);
            if let Err(e) = &r {
                event("network.firewall-failed").kv("error", e).emit();
            }
            r
        }
    };
    let rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => {
            event("network.failed").kv("name", "*").kv("error", e).emit();
            return ready;
        }
    };
    for (i, n) in m.networks.iter().enumerate() {
        let bridge = network::bridge_name(i);
        let mac = network::bridge_mac(n.subnet);
        let made = match (&firewall, n.egress) {
            (Err(e), true) => Err(format!("no firewall: {e}")),
            _ => bridge_up(&rtnl, &bridge, mac, n.egress.then(|| (n.subnet.gateway(), n.subnet.prefix)))
                .map_err(|e| e.to_string()),
        };
        match made {
            Ok(()) => {
                let mut e = event("network.ready")
                    .kv("name", &n.name)
                    .kv("bridge", &bridge)
                    .kv("mac", network::mac_text(mac))
                    .kv("subnet", n.subnet);
                if n.egress {
                    e = e.kv("egress", format!("{}/{}", addr_text(n.subnet.gateway()), n.subnet.prefix));
                }
                e.emit();
                ready.insert(n.name.clone());
            }
            Err(e) => event("network.failed").kv("name", &n.name).kv("bridge", &bridge).kv("error", e).emit(),
        }
    }
    // The name servers' file, for the containers that reach out (without
    // it their start fails at its bind, naming it).
    if m.containers.iter().any(|c| network::has_egress(m, c)) {
        if let Err(e) = crate::dns::install() {
            event("network.dns-failed").kv("path", crate::dns::RESOLV_CONF).kv("error", e).emit();
        }
    }
    ready
}

/// What failed while making the firewall.
#[derive(Debug)]
pub enum FirewallError {
    /// Netfilter modules that did not load (each was `module.failed`).
    Modules(usize),
    /// The nf_tables batch (the message is named by its number).
    Rules(SysError),
    /// Turning IPv4 forwarding on.
    Forwarding(SysError),
}

impl std::fmt::Display for FirewallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FirewallError::Modules(n) => write!(f, "{n} netfilter modules did not load"),
            FirewallError::Rules(e) => write!(f, "rules: {e}"),
            FirewallError::Forwarding(e) => write!(f, "forwarding: {e}"),
        }
    }
}

/// What table `cairn` holds for manifest `m`: its networks and, for each
/// container's published ports, its address on its first network with
/// egress.
pub fn plan(m: &Manifest) -> (Vec<nftables::Net>, Vec<nftables::Published>) {
    let nets = m
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| nftables::Net {
            bridge: network::bridge_name(i),
            subnet: n.subnet.addr,
            prefix: n.subnet.prefix,
            egress: n.egress,
        })
        .collect();
    let published = m
        .containers
        .iter()
        .filter_map(|c| Some((c, network::publish_target(m, c)?.1)))
        .flat_map(|(c, addr)| {
            c.publish.iter().map(move |p| nftables::Published {
                proto: p.proto.number(),
                host_port: p.host_port,
                addr,
                port: p.port,
            })
        })
        .collect();
    (nets, published)
}

/// Load the netfilter modules, make table `cairn`, turn on forwarding.
fn firewall(m: &Manifest) -> Result<(), FirewallError> {
    let start = std::time::Instant::now();
    let failed = crate::modules::load_list(crate::modules::NETFILTER_ORDER);
    if failed > 0 {
        return Err(FirewallError::Modules(failed));
    }
    let modules_ms = start.elapsed().as_millis();
    let (nets, published) = plan(m);
    let batch = nftables::ruleset(&nets, &published);
    let messages = batch.len();
    let nft = Nft::open().map_err(FirewallError::Rules)?;
    nft.apply(batch).map_err(FirewallError::Rules)?;
    // The table is owned by this socket (nobody else may change it) and
    // would go with it: it stays open.
    nft.keep_forever();
    // Forwarding only once the forward chain drops what is not allowed.
    let path = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(path, b"1").map_err(|e| {
        FirewallError::Forwarding(SysError { op: "write", arg: path.into(), errno: e.raw_os_error().unwrap_or(0) })
    })?;
    event("network.firewall")
        .kv("table", nftables::TABLE)
        .kv("messages", messages)
        .kv("published", published.len())
        .kv("modules_ms", modules_ms)
        .kv("ms", start.elapsed().as_millis())
        .emit();
    for c in &m.containers {
        if let Some((_, addr)) = network::publish_target(m, c) {
            for p in &c.publish {
                event("network.publish")
                    .kv("container", &c.name)
                    .kv("port", format!("{}/{}", p.host_port, p.proto.as_str()))
                    .kv("to", format!("{}:{}", addr_text(addr), p.port))
                    .emit();
            }
        }
    }
    Ok(())
}

/// A bridge with hardware address `mac` (fixed: see
/// `network::bridge_mac`), IPv6 off, and for a network with egress the
/// device's address on it (which also brings it up), else just up.
fn bridge_up(rtnl: &Rtnl, bridge: &str, mac: [u8; 6], gateway: Option<([u8; 4], u8)>) -> SysResult<()> {
    rtnl.call(bridge, &netlink::new_bridge(bridge, mac))?;
    netlink::disable_ipv6(bridge)?;
    match gateway {
        Some((addr, prefix)) => cairn_runtime::network::configure(bridge, addr, prefix),
        None => rtnl.call(bridge, &netlink::set_up(netlink::index(bridge)?)),
    }
}

/// Add `c`'s networks to its spec: `eth0`, `eth1`, ... on their bridges at
/// the manifest's addresses, its `/etc/hosts`, and with egress the
/// device's name servers (crate::dns).
pub fn attach(mut spec: ContainerSpec, m: &Manifest, c: &Container, ready: &Ready) -> Result<ContainerSpec, SpecError> {
    let mut routed = false;
    for (k, a) in c.networks.iter().enumerate() {
        let (i, n) = m
            .networks
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == a.network)
            .filter(|(_, n)| ready.contains(&n.name))
            .ok_or_else(|| SpecError::NetworkUnavailable(a.network.clone()))?;
        spec.networks.push(NetAttach {
            bridge: network::bridge_name(i),
            iface: network::container_iface(k),
            address: a.address,
            prefix: n.subnet.prefix,
            // One default route: through the first network with egress.
            gateway: (n.egress && !std::mem::replace(&mut routed, true)).then(|| n.subnet.gateway()),
        });
        event("network.attach")
            .kv("container", &c.name)
            .kv("network", &n.name)
            .kv("iface", network::container_iface(k))
            .kv("addr", format!("{}/{}", addr_text(a.address), n.subnet.prefix))
            .emit();
    }
    if !c.networks.is_empty() {
        spec.hosts = Some(network::hosts(m, c));
    }
    if network::has_egress(m, c) {
        spec.resolv_conf = Some(crate::dns::RESOLV_CONF.into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_format::manifest as m;
    use cairn_format::network::{Attachment, NetworkDef, Publish, Subnet};

    fn manifest() -> Manifest {
        let net = |name: &str, subnet: &str, egress| NetworkDef {
            name: name.into(),
            subnet: Subnet::parse(subnet).unwrap_or_else(|| panic!("{subnet}")),
            egress,
        };
        let mut c = crate::resolve::tests::container();
        c.network = m::Network::None;
        c.networks = vec![
            Attachment { network: "inner".into(), address: [10, 89, 1, 2] },
            Attachment { network: "out".into(), address: [10, 89, 3, 5] },
            Attachment { network: "out2".into(), address: [10, 89, 4, 6] },
        ];
        c.publish = vec![Publish::parse("8443:443/tcp").unwrap(), Publish::parse("53:5353/udp").unwrap()];
        m::Manifest {
            appliance: "t".into(),
            version: 1,
            compatible: "t".into(),
            layer_check: Default::default(),
            layers: Vec::new(),
            containers: vec![c],
            update: m::UpdatePolicy::for_version(1),
            volumes: Vec::new(),
            networks: vec![
                net("inner", "10.89.1.0/24", false),
                net("out", "10.89.3.0/24", true),
                net("out2", "10.89.4.0/24", true),
            ],
        }
    }

    #[test]
    fn published_ports_and_the_default_route_go_through_the_first_network_with_egress() {
        let m = manifest();
        network::check(&m, |p| panic!("{p}"));
        let (nets, published) = plan(&m);
        let bridges: Vec<(&str, bool)> = nets.iter().map(|n| (n.bridge.as_str(), n.egress)).collect();
        assert_eq!(bridges, [("cairn-br0", false), ("cairn-br1", true), ("cairn-br2", true)]);
        assert_eq!((nets[1].subnet, nets[1].prefix), ([10, 89, 3, 0], 24));
        assert_eq!(
            published,
            [
                nftables::Published { proto: 6, host_port: 8443, addr: [10, 89, 3, 5], port: 443 },
                nftables::Published { proto: 17, host_port: 53, addr: [10, 89, 3, 5], port: 5353 },
            ]
        );

        let c = &m.containers[0];
        let spec =
            crate::resolve::container_spec(c, |l| Some(format!("/l/{l}")), |_| Some("/dev/null".into())).unwrap();
        let ready: Ready = m.networks.iter().map(|n| n.name.clone()).collect();
        let spec = attach(spec, &m, c, &ready).unwrap();
        let got: Vec<(&str, &str, Option<[u8; 4]>)> =
            spec.networks.iter().map(|a| (a.bridge.as_str(), a.iface.as_str(), a.gateway)).collect();
        assert_eq!(
            got,
            [("cairn-br0", "eth0", None), ("cairn-br1", "eth1", Some([10, 89, 3, 1])), ("cairn-br2", "eth2", None)],
            "one default route, through the first network with egress"
        );
        assert_eq!(spec.resolv_conf.as_deref(), Some(crate::dns::RESOLV_CONF), "egress: the device's name servers");
        // On internal networks only: its image's resolv.conf.
        let mut inner = m.clone();
        inner.containers[0].networks.truncate(1);
        inner.containers[0].publish.clear();
        let c = &inner.containers[0];
        let spec =
            crate::resolve::container_spec(c, |l| Some(format!("/l/{l}")), |_| Some("/dev/null".into())).unwrap();
        let spec = attach(spec, &inner, c, &ready).unwrap();
        assert!(spec.hosts.is_some() && spec.resolv_conf.is_none());
        let c = &m.containers[0];
        // A network whose bridge (or firewall) failed keeps the container out.
        let mut partial = ready.clone();
        partial.remove("out");
        let spec =
            crate::resolve::container_spec(c, |l| Some(format!("/l/{l}")), |_| Some("/dev/null".into())).unwrap();
        assert_eq!(attach(spec, &m, c, &partial).err(), Some(SpecError::NetworkUnavailable("out".into())));
    }
}
