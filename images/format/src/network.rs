//! Container networks (`[[network]]` in the appliance file): each is a
//! bridge on the device that containers join with a veth pair, at an IPv4
//! address the build fixed. What a network is, the rules a manifest must
//! keep (shared by the build and the device), the build's address plan,
//! and each container's `/etc/hosts`.
//!
//! A network is internal by default: the bridge has no address on the
//! device, so a container on it reaches the other containers on it and
//! nothing else (not the device's own services, not another network, not
//! outside). A network with `egress` has the first host address of its
//! subnet (`.1`, kept on every network) on the device's side: its
//! containers route through it and the device masquerades them; ports a
//! container publishes are forwarded to it from the device's own addresses.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

use crate::manifest::{is_valid_name, Container, Manifest, Name, Network as Mode};

/// Most networks in a manifest.
pub const MAX_NETWORKS: usize = 8;
/// Most networks one container joins.
pub const MAX_ATTACHMENTS: usize = 4;
/// Shortest and longest prefix of a subnet.
pub const PREFIX_RANGE: (u8, u8) = (8, 29);
/// Most ports one container publishes.
pub const MAX_PUBLISH: usize = 16;

/// An IPv4 subnet: its first address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    /// Network address.
    pub addr: [u8; 4],
    /// Prefix length.
    pub prefix: u8,
}

impl Subnet {
    /// Parse `A.B.C.D/N`.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (addr, prefix) = s.split_once('/')?;
        Some(Subnet { addr: parse_addr(addr)?, prefix: prefix.parse().ok().filter(|p| *p <= 32)? })
    }

    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0)
    }

    fn base(self) -> u32 {
        u32::from_be_bytes(self.addr)
    }

    /// Whether `a` is in it.
    pub fn contains(self, a: [u8; 4]) -> bool {
        u32::from_be_bytes(a) & self.mask() == self.base() & self.mask()
    }

    /// Whether the two share an address.
    pub fn overlaps(self, o: Subnet) -> bool {
        let m = self.mask() & o.mask();
        self.base() & m == o.base() & m
    }

    /// The address `n` hosts in (`n` = 1 is the first host address).
    pub fn host(self, n: u32) -> Option<[u8; 4]> {
        let size = (!self.mask()).checked_add(1)?;
        (n < size).then(|| (self.base().wrapping_add(n)).to_be_bytes())
    }

    /// The device's side of a network with egress (`.1`), the containers'
    /// default gateway.
    pub fn gateway(self) -> [u8; 4] {
        self.base().wrapping_add(1).to_be_bytes()
    }

    /// The addresses a container may have: not the network or broadcast
    /// address, not the first host address (the device's side).
    pub fn is_container_address(self, a: [u8; 4]) -> bool {
        let off = u32::from_be_bytes(a).wrapping_sub(self.base());
        self.contains(a) && off >= 2 && off < !self.mask()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "{a}.{b}.{c}.{d}/{}", self.prefix)
    }
}

/// Parse a dotted IPv4 address (no leading zeros, no shorthand).
pub fn parse_addr(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.starts_with('0')) || !p.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A dotted address.
pub fn addr_text(a: [u8; 4]) -> String {
    let [a, b, c, d] = a;
    format!("{a}.{b}.{c}.{d}")
}

/// A network (`[[network]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    /// Its name (containers join it by name; `/etc/hosts` is per network).
    pub name: Name,
    /// Its subnet.
    pub subnet: Subnet,
    /// Egress through the device: `.1` on the bridge, a default route in
    /// each container, masquerade out of the device's other interfaces.
    pub egress: bool,
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// Its name in the appliance file.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port (`publish = ["8080:80/tcp"]`): traffic to the
/// device's own addresses on `host_port` goes to the container's `port`
/// (on its first network with egress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The port on the device.
    pub host_port: u16,
    /// The port in the container.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
}

impl Publish {
    /// Parse `HOST:PORT/tcp`, `HOST:PORT/udp` or `HOST:PORT` (TCP). Ports
    /// are 1 to 65535, decimal, no sign or leading zeros.
    pub fn parse(s: &str) -> Option<Publish> {
        let (ports, proto) = match s.split_once('/') {
            None => (s, Proto::Tcp),
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return None,
        };
        let (host, inner) = ports.split_once(':')?;
        Some(Publish { host_port: parse_port(host)?, port: parse_port(inner)?, proto })
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto.as_str())
    }
}

/// Where `c`'s published ports go: its address on its first network with
/// egress (and that network's index), `None` without one.
pub fn publish_target(m: &Manifest, c: &Container) -> Option<(usize, [u8; 4])> {
    c.networks.iter().find_map(|a| {
        let i = m.networks.iter().position(|n| n.name == a.network && n.egress)?;
        Some((i, a.address))
    })
}

/// Whether `c` is on a network with egress (it gets a default route, and
/// the device's name servers at `/etc/resolv.conf`).
pub fn has_egress(m: &Manifest, c: &Container) -> bool {
    publish_target(m, c).is_some()
}

/// Whether the device needs netfilter for this manifest: a network with
/// egress or a published port (internal networks need none).
pub fn needs_firewall(m: &Manifest) -> bool {
    m.networks.iter().any(|n| n.egress) || m.containers.iter().any(|c| !c.publish.is_empty())
}

/// A container on a network, at an address the build fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name.
    pub network: Name,
    /// The container's address on it.
    pub address: [u8; 4],
}

/// The bridge of network number `i` (manifest order) on the device.
pub fn bridge_name(i: usize) -> String {
    format!("cairn-br{i}")
}

/// The hardware address of the bridge of a network on `subnet`: locally
/// administered (`02:ca`), then the subnet's `.1` (subnets never overlap,
/// so no two bridges share one). Set when the bridge is made, it never
/// changes: a bridge left to the kernel takes the lowest of its ports'
/// addresses, which changes whenever that port's container stops or a
/// lower one joins, and every container that learned the old address for
/// its gateway then sends into nothing until its neighbour entry times
/// out (half a minute or more).
pub fn bridge_mac(subnet: Subnet) -> [u8; 6] {
    let [a, b, c, d] = subnet.gateway();
    [0x02, 0xca, a, b, c, d]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The interface of a container's attachment number `k` inside it.
pub fn container_iface(k: usize) -> String {
    format!("eth{k}")
}

/// The network rules: names, subnets (aligned, no overlap), and each
/// container's attachments (known network, once each, an address of the
/// subnet that is not reserved and no other container's, in its own
/// network namespace). `bad` gets one sentence per problem.
pub fn check(m: &Manifest, mut bad: impl FnMut(String)) {
    let nets = &m.networks;
    if nets.len() > MAX_NETWORKS {
        bad(format!("networks has {} entries, the most is {MAX_NETWORKS}", nets.len()));
    }
    for (i, n) in nets.iter().enumerate() {
        if !is_valid_name(&n.name) {
            bad(format!("network {:?}: not a valid name", n.name));
        }
        if nets.iter().take(i).any(|o| o.name == n.name) {
            bad(format!("network {:?} is defined twice", n.name));
        }
        let s = n.subnet;
        if s.prefix < PREFIX_RANGE.0 || s.prefix > PREFIX_RANGE.1 {
            bad(format!(
                "network {:?}: subnet {s}: the prefix must be {} to {}",
                n.name, PREFIX_RANGE.0, PREFIX_RANGE.1
            ));
        } else if u32::from_be_bytes(s.addr) & !s.mask() != 0 {
            bad(format!("network {:?}: subnet {s} has host bits set", n.name));
        }
        if let Some(o) = nets.iter().take(i).find(|o| o.subnet.overlaps(s)) {
            bad(format!("network {:?}: subnet {s} overlaps network {:?} ({})", n.name, o.name, o.subnet));
        }
    }
    for (ci, c) in m.containers.iter().enumerate() {
        if c.networks.len() > MAX_ATTACHMENTS {
            bad(format!("container {:?}: joins {} networks, the most is {MAX_ATTACHMENTS}", c.name, c.networks.len()));
        }
        if !c.networks.is_empty() && c.network != Mode::None {
            bad(format!("container {:?}: networks need a network namespace of its own (network = \"none\")", c.name));
        }
        for (k, a) in c.networks.iter().enumerate() {
            let Some(n) = nets.iter().find(|n| n.name == a.network) else {
                bad(format!("container {:?}: network {:?} is not defined", c.name, a.network));
                continue;
            };
            if c.networks.iter().take(k).any(|o| o.network == a.network) {
                bad(format!("container {:?}: joins network {:?} twice", c.name, a.network));
            }
            if !n.subnet.is_container_address(a.address) {
                bad(format!(
                    "container {:?}: address {} is not a container address of network {:?} ({}: not its first, \
                     network or broadcast address)",
                    c.name,
                    addr_text(a.address),
                    n.name,
                    n.subnet
                ));
            }
            let taken = m.containers.iter().take(ci).find(|o| o.networks.iter().any(|oa| oa == a));
            if let Some(o) = taken {
                bad(format!(
                    "container {:?}: address {} on network {:?} is container {:?}'s",
                    c.name,
                    addr_text(a.address),
                    n.name,
                    o.name
                ));
            }
        }
        check_publish(m, ci, c, &mut bad);
    }
}

/// A container's published ports: at most [`MAX_PUBLISH`], a network with
/// egress to reach it through, each host port (per protocol) once on the
/// device.
fn check_publish(m: &Manifest, ci: usize, c: &Container, bad: &mut impl FnMut(String)) {
    if c.publish.is_empty() {
        return;
    }
    if c.publish.len() > MAX_PUBLISH {
        bad(format!("container {:?}: publishes {} ports, the most is {MAX_PUBLISH}", c.name, c.publish.len()));
    }
    if publish_target(m, c).is_none() {
        bad(format!(
            "container {:?}: publishes ports but is on no network with egress (the device forwards published ports \
             only to containers it routes for)",
            c.name
        ));
    }
    for (k, p) in c.publish.iter().enumerate() {
        if p.host_port == 0 || p.port == 0 {
            bad(format!("container {:?}: publish {p}: ports are 1 to 65535", c.name));
        }
        let same = |o: &Publish| o.host_port == p.host_port && o.proto == p.proto;
        if c.publish.iter().take(k).any(same) {
            bad(format!("container {:?}: publishes {} port {} twice", c.name, p.proto.as_str(), p.host_port));
        }
        if let Some(o) = m.containers.iter().take(ci).find(|o| o.publish.iter().any(same)) {
            bad(format!(
                "container {:?}: {} port {} of the device is published by container {:?} already",
                c.name,
                p.proto.as_str(),
                p.host_port,
                o.name
            ));
        }
    }
}

/// What a container asks of a network in the appliance file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The network.
    pub network: Name,
    /// A pinned address, if any.
    pub address: Option<[u8; 4]>,
}

/// The build's address plan: pinned addresses as asked, then each other
/// container (in manifest order) the lowest free container address of the
/// network. `requests[i]` are container `i`'s, in its order. Unknown
/// networks are passed through at 0.0.0.0 for [`check`] to name; a full
/// subnet is an error naming the container.
pub fn assign(networks: &[NetworkDef], requests: &[(Name, Vec<Request>)]) -> Result<Vec<Vec<Attachment>>, String> {
    let pinned: Vec<(&str, [u8; 4])> =
        requests.iter().flat_map(|(_, r)| r.iter()).filter_map(|r| Some((r.network.as_str(), r.address?))).collect();
    let mut used: Vec<(Name, [u8; 4])> = Vec::new();
    let mut out = Vec::with_capacity(requests.len());
    for (name, reqs) in requests {
        let mut mine = Vec::with_capacity(reqs.len());
        for r in reqs {
            let address = match (r.address, networks.iter().find(|n| n.name == r.network)) {
                (Some(a), _) => a,
                (None, None) => [0; 4],
                (None, Some(n)) => {
                    let free = (2u32..)
                        .map_while(|i| n.subnet.host(i))
                        .filter(|a| n.subnet.is_container_address(*a))
                        .find(|a| {
                            !pinned.contains(&(n.name.as_str(), *a))
                                && !used.iter().any(|(u, ua)| *u == n.name && ua == a)
                        });
                    free.ok_or_else(|| {
                        format!("container {name:?}: network {:?} ({}) has no address left", n.name, n.subnet)
                    })?
                }
            };
            used.push((r.network.clone(), address));
            mine.push(Attachment { network: r.network.clone(), address });
        }
        out.push(mine);
    }
    Ok(out)
}

/// `/etc/hosts` for container `c`: localhost, then every container on each
/// of its networks (itself included) by name, in manifest order. A name on
/// two shared networks gets the first one's address.
pub fn hosts(m: &Manifest, c: &Container) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut named: Vec<&str> = Vec::new();
    for a in &c.networks {
        for o in &m.containers {
            if named.contains(&o.name.as_str()) {
                continue;
            }
            if let Some(oa) = o.networks.iter().find(|oa| oa.network == a.network) {
                out.push_str(&format!("{}\t{}\n", addr_text(oa.address), o.name));
                named.push(&o.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::{container, manifest, s};
    use crate::manifest::ValidationError;

    fn net(name: &str, subnet: &str) -> NetworkDef {
        NetworkDef { name: s(name), subnet: Subnet::parse(subnet).unwrap(), egress: false }
    }

    fn on(c: &mut Container, network: &str, a: &str) {
        c.networks.push(Attachment { network: s(network), address: parse_addr(a).unwrap() });
    }

    fn problems(m: &Manifest) -> Vec<String> {
        let mut v = Vec::new();
        m.for_each_problem(|e| {
            if let ValidationError::BadNetwork(t) = e {
                v.push(t);
            }
        });
        v
    }

    #[test]
    fn subnets_and_addresses() {
        let n = Subnet::parse("10.89.1.0/24").unwrap();
        assert_eq!(n.to_string(), "10.89.1.0/24");
        assert!(n.contains([10, 89, 1, 200]) && !n.contains([10, 89, 2, 1]));
        assert_eq!(n.host(1), Some([10, 89, 1, 1]));
        assert_eq!(n.host(256), None);
        assert!(!n.is_container_address([10, 89, 1, 0]));
        assert!(!n.is_container_address([10, 89, 1, 1]), "the device's side");
        assert!(n.is_container_address([10, 89, 1, 2]) && n.is_container_address([10, 89, 1, 254]));
        assert!(!n.is_container_address([10, 89, 1, 255]), "broadcast");
        assert!(n.overlaps(Subnet::parse("10.89.0.0/16").unwrap()));
        assert!(!n.overlaps(Subnet::parse("10.89.2.0/24").unwrap()));
        for bad in
            ["10.89.1.0", "10.89.1.0/33", "10.89.1/24", "10.089.1.0/24", "10.89.1.0.0/24", "a.b.c.d/8", "256.0.0.0/8"]
        {
            assert_eq!(Subnet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_rules_name_each_problem() {
        let mut a = container("a", &[]);
        let mut b = container("b", &[]);
        on(&mut a, "back", "10.89.1.2");
        on(&mut b, "back", "10.89.1.3");
        let mut m = manifest(&[a.clone(), b.clone()]);
        m.networks = vec![net("back", "10.89.1.0/24"), net("front", "10.89.2.0/24")];
        assert_eq!(problems(&m), Vec::<String>::new());
        assert_eq!(m.validate(), Ok(()));

        let with = |f: &dyn Fn(&mut Manifest)| {
            let mut m = m.clone();
            f(&mut m);
            problems(&m)
        };
        let one = |f: &dyn Fn(&mut Manifest), want: &str| {
            let got = with(f);
            assert!(got.len() == 1 && got[0].contains(want), "want {want:?}, got {got:?}");
        };
        one(&|m| m.networks.push(net("back", "10.89.3.0/24")), "defined twice");
        one(&|m| m.networks.push(net("wide", "10.89.0.0/16")), "overlaps network \"back\"");
        one(&|m| m.networks[1].subnet = Subnet::parse("10.89.2.1/24").unwrap(), "host bits set");
        one(&|m| m.networks[1].subnet = Subnet::parse("10.89.2.0/30").unwrap(), "prefix must be 8 to 29");
        one(&|m| m.networks[1].name = s("Front"), "not a valid name");
        one(&|m| m.containers[1].networks[0].address = [10, 89, 1, 2], "is container \"a\"'s");
        one(&|m| m.containers[1].networks[0].address = [10, 89, 1, 1], "not a container address");
        one(&|m| m.containers[1].networks[0].address = [10, 89, 2, 5], "not a container address");
        one(&|m| m.containers[1].networks[0].network = s("nowhere"), "not defined");
        one(&|m| m.containers[1].network = Mode::Host, "network namespace of its own");
        one(
            &|m| {
                let again = m.containers[1].networks[0].clone();
                m.containers[1].networks.push(Attachment { address: [10, 89, 1, 9], ..again });
            },
            "twice",
        );
        one(
            &|m| {
                m.networks = (0..9)
                    .map(|i| net(&format!("n{i}"), &format!("10.{i}.0.0/16")))
                    .chain([net("back", "10.89.1.0/24")])
                    .collect()
            },
            "the most is 8",
        );
    }

    #[test]
    fn published_ports_parse_and_are_checked() {
        let p = Publish::parse("8443:443/tcp").unwrap();
        assert_eq!((p.host_port, p.port, p.proto), (8443, 443, Proto::Tcp));
        assert_eq!(p.to_string(), "8443:443/tcp");
        assert_eq!(Publish::parse("53:5353/udp").map(|p| p.proto), Some(Proto::Udp));
        assert_eq!(Publish::parse("80:8080"), Some(Publish { host_port: 80, port: 8080, proto: Proto::Tcp }));
        assert_eq!(Publish::parse("65535:1/udp").map(|p| (p.host_port, p.port)), Some((65535, 1)));
        for bad in ["0:80", "80:0", "65536:80", "80", "80:80/sctp", "080:80", "+80:80", ":80", "80:", "80:80/", "a:b"] {
            assert_eq!(Publish::parse(bad), None, "{bad}");
        }

        let mut a = container("a", &[]);
        let mut b = container("b", &[]);
        on(&mut a, "out", "10.89.3.2");
        on(&mut b, "back", "10.89.1.3");
        on(&mut b, "out", "10.89.3.3");
        a.publish = vec![Publish::parse("8080:80").unwrap(), Publish::parse("8080:80/udp").unwrap()];
        b.publish = vec![Publish::parse("9000:9000").unwrap()];
        let mut m = manifest(&[a, b]);
        m.networks = vec![net("back", "10.89.1.0/24"), net("out", "10.89.3.0/24")];
        m.networks[1].egress = true;
        assert_eq!(problems(&m), Vec::<String>::new());
        assert!(needs_firewall(&m));
        // b's first network is internal: its ports go to its address on `out`.
        assert_eq!(publish_target(&m, &m.containers[1]), Some((1, [10, 89, 3, 3])));

        let one = |f: &dyn Fn(&mut Manifest), want: &str| {
            let mut m = m.clone();
            f(&mut m);
            let got = problems(&m);
            assert!(got.len() == 1 && got[0].contains(want), "want {want:?}, got {got:?}");
        };
        one(&|m| m.containers[1].publish[0].host_port = 8080, "published by container \"a\" already");
        one(&|m| m.containers[0].publish[1].proto = Proto::Tcp, "publishes tcp port 8080 twice");
        one(&|m| m.containers[1].publish[0].port = 0, "ports are 1 to 65535");
        one(
            &|m| {
                m.networks[1].egress = false;
                m.containers[1].publish.clear();
            },
            "no network with egress",
        );
        one(&|m| m.containers[0].networks.clear(), "no network with egress");
        one(
            &|m| {
                m.containers[1].publish =
                    (1..=17).map(|p| Publish { host_port: p, port: p, proto: Proto::Tcp }).collect()
            },
            "the most is 16",
        );
        // The same port of the device over the other protocol is another port.
        let mut udp = m.clone();
        udp.containers[1].publish[0] = Publish::parse("8080:80/udp").unwrap();
        assert_eq!(problems(&udp).len(), 1, "udp 8080 is a's");
        udp.containers[1].publish[0] = Publish::parse("8081:80/udp").unwrap();
        assert_eq!(problems(&udp), Vec::<String>::new());

        // Internal networks alone need no netfilter.
        let mut internal = m.clone();
        internal.networks[1].egress = false;
        internal.containers.iter_mut().for_each(|c| c.publish.clear());
        assert!(!needs_firewall(&internal));
        assert_eq!(Subnet::parse("10.89.3.0/24").unwrap().gateway(), [10, 89, 3, 1]);
    }

    /// A bridge's address is its own (locally administered, unicast) and
    /// differs between any two networks a manifest may have.
    #[test]
    fn each_network_s_bridge_has_an_address_of_its_own() {
        let a = bridge_mac(Subnet::parse("10.89.3.0/24").unwrap());
        assert_eq!(mac_text(a), "02:ca:0a:59:03:01");
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, not multicast");
        let b = bridge_mac(Subnet::parse("10.89.4.0/24").unwrap());
        let c = bridge_mac(Subnet::parse("10.89.4.128/25").unwrap());
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn addresses_are_planned_in_order_around_the_pinned_ones() {
        let nets = vec![net("back", "10.89.1.0/29")];
        let r = |a: Option<&str>| vec![Request { network: s("back"), address: a.map(|a| parse_addr(a).unwrap()) }];
        let reqs = vec![(s("a"), r(None)), (s("b"), r(Some("10.89.1.2"))), (s("c"), r(None)), (s("d"), r(None))];
        let plan = assign(&nets, &reqs).unwrap();
        let got: Vec<String> = plan.iter().map(|v| addr_text(v[0].address)).collect();
        assert_eq!(got, ["10.89.1.3", "10.89.1.2", "10.89.1.4", "10.89.1.5"]);
        // A /29 has five container addresses (.2 to .6).
        let many: Vec<_> = (0..6).map(|i| (format!("c{i}"), r(None))).collect();
        let e = assign(&nets, &many).unwrap_err();
        assert!(e.contains("\"c5\"") && e.contains("no address left"), "{e}");
    }

    #[test]
    fn hosts_name_the_containers_of_each_shared_network() {
        let mut a = container("a", &[]);
        let mut b = container("b", &[]);
        let mut c = container("c", &[]);
        on(&mut a, "back", "10.89.1.2");
        on(&mut b, "back", "10.89.1.3");
        on(&mut b, "front", "10.89.2.2");
        on(&mut c, "front", "10.89.2.3");
        let mut m = manifest(&[a.clone(), b.clone(), c.clone()]);
        m.networks = vec![net("back", "10.89.1.0/24"), net("front", "10.89.2.0/24")];
        let local = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
        assert_eq!(hosts(&m, &a), format!("{local}10.89.1.2\ta\n10.89.1.3\tb\n"));
        assert_eq!(hosts(&m, &b), format!("{local}10.89.1.2\ta\n10.89.1.3\tb\n10.89.2.3\tc\n"));
        assert_eq!(hosts(&m, &c), format!("{local}10.89.2.2\tb\n10.89.2.3\tc\n"), "c does not see a");
    }
}
