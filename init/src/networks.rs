//! Container networks on the device (`[[network]]`, see
//! `cairn_format::network`): PID 1 creates one bridge per network at boot
//! (`cairn-br0`, ... in manifest order), up and without an address (an
//! internal network: its containers reach each other, not the device), and
//! gives each container's spec its attachments and its `/etc/hosts`. The
//! runtime makes the veth pairs at each start (`cairn_runtime::bridge`).
//! IPv6 is off on the bridges and the pairs' outer ends, so the device has
//! not even a link-local address there.

use std::collections::BTreeSet;

use cairn_format::manifest::{Container, Manifest};
use cairn_format::network::{self, addr_text};
use cairn_runtime::netlink::{self, Rtnl};
use cairn_runtime::spec::{ContainerSpec, NetAttach};
use cairn_runtime::sys::SysResult;

use crate::event::event;
use crate::resolve::SpecError;

/// The networks whose bridge is up.
pub type Ready = BTreeSet<String>;

/// Create and bring up every network's bridge. One that fails is
/// `network.failed` (its containers do not start: `network ... is not
/// available`); the others go on.
pub fn prepare(m: &Manifest) -> Ready {
    let mut ready = Ready::new();
    if m.networks.is_empty() {
        return ready;
    }
    let rtnl = match Rtnl::open() {
        Ok(r) => r,
        Err(e) => {
            event("network.failed").kv("name", "*").kv("error", e).emit();
            return ready;
        }
    };
    for (i, n) in m.networks.iter().enumerate() {
        let bridge = network::bridge_name(i);
        match bridge_up(&rtnl, &bridge) {
            Ok(()) => {
                event("network.ready").kv("name", &n.name).kv("bridge", &bridge).kv("subnet", n.subnet).emit();
                ready.insert(n.name.clone());
            }
            Err(e) => event("network.failed").kv("name", &n.name).kv("bridge", &bridge).kv("error", e).emit(),
        }
    }
    ready
}

fn bridge_up(rtnl: &Rtnl, bridge: &str) -> SysResult<()> {
    rtnl.call(bridge, &netlink::new_bridge(bridge))?;
    netlink::disable_ipv6(bridge)?;
    rtnl.call(bridge, &netlink::set_up(netlink::index(bridge)?))
}

/// Add `c`'s networks to its spec: `eth0`, `eth1`, ... on their bridges at
/// the manifest's addresses, and its `/etc/hosts`.
pub fn attach(mut spec: ContainerSpec, m: &Manifest, c: &Container, ready: &Ready) -> Result<ContainerSpec, SpecError> {
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
    Ok(spec)
}
