//! The device's addresses as they change: PID 1 listens on a non-blocking
//! `NETLINK_ROUTE` socket for `RTM_NEWADDR`/`RTM_DELADDR` in its own network
//! namespace and reports each as an event, e.g.
//! `net.address action=added iface=eth0 addr=10.0.2.15/24`. cairn configures
//! no interface itself: a container with `network = "host"` and
//! CAP_NET_ADMIN does (a DHCP client, docs/appliance.md "The device's
//! uplink"), and these events say what it did. Loopback is left out.

use std::os::fd::{AsRawFd, OwnedFd};

use cairn_runtime::sys::{self, SysResult};

use crate::event::event;

/// `RTM_NEWADDR` (linux/rtnetlink.h).
const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR`.
const RTM_DELADDR: u16 = 21;
/// `IFA_ADDRESS`: the peer address on point-to-point links, else the same
/// as `IFA_LOCAL`.
const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`: the interface's own address (IPv4).
const IFA_LOCAL: u16 = 2;
/// `IFA_LABEL`: the interface name (IPv4).
const IFA_LABEL: u16 = 3;
/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`.
const GROUPS: u32 = 0x10 | 0x100;
/// Datagrams read per wake of the loop (the rest on the next turn).
const DRAIN_BATCH: usize = 16;

/// One address change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrChange {
    /// Added (else removed).
    pub added: bool,
    /// Interface index.
    pub index: u32,
    /// Interface name, when the message names it (IPv4 does).
    pub label: Option<String>,
    /// The address.
    pub addr: std::net::IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The address changes in one netlink datagram (other messages skipped; a
/// malformed one ends the parse).
pub fn parse(buf: &[u8]) -> Vec<AddrChange> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        let Some(msg) = buf.get(at..at.saturating_add(len)).filter(|_| len >= 16) else { break };
        if kind == RTM_NEWADDR || kind == RTM_DELADDR {
            if let Some(c) = parse_addr(msg.get(16..).unwrap_or(&[]), kind == RTM_NEWADDR) {
                out.push(c);
            }
        }
        at = at.saturating_add((len + 3) & !3);
    }
    out
}

/// An `ifaddrmsg` and its attributes.
fn parse_addr(body: &[u8], added: bool) -> Option<AddrChange> {
    let (family, prefix) = (*body.first()?, *body.get(1)?);
    let index = u32_at(body, 4)?;
    let (mut local, mut address, mut label) = (None, None, None);
    let mut at = 8usize;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        let Some(data) = body.get(at + 4..at + len).filter(|_| len >= 4) else { break };
        let ip = match (family, data.len()) {
            (2, 4) => <[u8; 4]>::try_from(data).ok().map(std::net::IpAddr::from),
            (10, 16) => <[u8; 16]>::try_from(data).ok().map(std::net::IpAddr::from),
            _ => None,
        };
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            IFA_LABEL => {
                label = Some(String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(&[])).into_owned())
            }
            _ => {}
        }
        at = at.saturating_add((len + 3) & !3);
    }
    Some(AddrChange { added, index, label, addr: local.or(address)?, prefix })
}

/// The watch.
pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// Subscribe to the address groups of PID 1's network namespace.
    pub fn open() -> SysResult<Self> {
        use nix::sys::socket::{self as so, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
        let fd = so::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(sys::err("socket", "NETLINK_ROUTE"))?;
        so::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, GROUPS)).map_err(sys::err("bind", "rtnetlink address groups"))?;
        Ok(Watch { fd })
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Report what waits (never blocks), at most [`DRAIN_BATCH`] datagrams.
    pub fn drain(&self) {
        let mut buf = [0u8; 8192];
        for _ in 0..DRAIN_BATCH {
            match nix::sys::socket::recvfrom::<nix::sys::socket::NetlinkAddr>(self.fd.as_raw_fd(), &mut buf) {
                // Only the kernel (port 0) speaks for the kernel.
                Ok((n, Some(from))) if from.pid() == 0 => {
                    for c in parse(buf.get(..n).unwrap_or(&[])) {
                        report(&c);
                    }
                }
                Ok(_) => {}
                // ENOBUFS: the kernel dropped some; the rest still come.
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

fn report(c: &AddrChange) {
    let iface = c.label.clone().or_else(|| iface_name(c.index)).unwrap_or_else(|| c.index.to_string());
    if iface == "lo" || c.addr.is_loopback() {
        return;
    }
    event("net.address")
        .kv("action", if c.added { "added" } else { "removed" })
        .kv("iface", iface)
        .kv("addr", format!("{}/{}", c.addr, c.prefix))
        .emit();
}

/// An interface's name from its index (`/sys/class/net/*/ifindex`).
fn iface_name(index: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net").ok()?.flatten().find_map(|e| {
        let i = std::fs::read_to_string(e.path().join("ifindex")).ok()?;
        (i.trim().parse::<u32>().ok()? == index).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message: header (len, type) then `body`.
    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn ifaddr(family: u8, prefix: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, prefix, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    #[test]
    fn addresses_parse_from_a_datagram() {
        let v4 = ifaddr(
            2,
            24,
            2,
            &[attr(IFA_ADDRESS, &[10, 0, 2, 15]), attr(IFA_LOCAL, &[10, 0, 2, 15]), attr(IFA_LABEL, b"eth0\0")],
        );
        let mut six = [0u8; 16];
        six[0] = 0xfe;
        six[1] = 0x80;
        six[15] = 1;
        let v6 = ifaddr(10, 64, 2, &[attr(IFA_ADDRESS, &six)]);
        let link = msg(16, &[0; 16]); // RTM_NEWLINK: skipped
        let buf = [msg(RTM_NEWADDR, &v4), link, msg(RTM_DELADDR, &v6)].concat();
        let got = parse(&buf);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            AddrChange { added: true, index: 2, label: Some("eth0".into()), addr: [10, 0, 2, 15].into(), prefix: 24 }
        );
        assert_eq!((got[1].added, got[1].addr, got[1].prefix, got[1].label.clone()), (false, six.into(), 64, None));
    }

    #[test]
    fn truncated_and_hostile_datagrams_end_the_parse() {
        let v4 = msg(RTM_NEWADDR, &ifaddr(2, 24, 2, &[attr(IFA_LOCAL, &[10, 0, 2, 15])]));
        for cut in 0..v4.len() {
            let _ = parse(&v4[..cut]);
        }
        // A length that claims more than the datagram, or less than a header.
        let mut lying = v4.clone();
        lying[..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse(&lying).is_empty());
        lying[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse(&lying).is_empty());
        // An attribute of the wrong size for its family gives no address.
        let odd = msg(RTM_NEWADDR, &ifaddr(2, 24, 2, &[attr(IFA_LOCAL, &[10, 0, 2])]));
        assert!(parse(&odd).is_empty());
    }
}
