//! A small rtnetlink client for container networks: create a bridge,
//! create a veth pair whose peer is born in a container's network
//! namespace, enslave an interface to a bridge, bring an interface up.
//! The messages are built by pure functions (tested byte for byte on the
//! host); [`Rtnl`] sends one at a time and reads its acknowledgement.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, SysError, SysResult};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_PID: u16 = 19;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
/// NLA_F_NESTED.
pub(crate) const NESTED: u16 = 0x8000;
const IFF_UP: u32 = 1;

/// A message being built: attributes are appended, nests closed with
/// their length patched.
/// Netlink attributes (`struct nlattr`: length, type, data, padded to 4
/// bytes) appended to a message being built; rtnetlink's and nf_tables'
/// builders share them.
pub(crate) trait Attrs {
    /// The message's bytes so far.
    fn bytes(&mut self) -> &mut Vec<u8>;

    /// Pad to the next 4-byte boundary.
    fn pad(&mut self) {
        let b = self.bytes();
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    }

    /// One attribute.
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let b = self.bytes();
        b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    fn name(&mut self, kind: u16, s: &str) {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d);
    }

    /// Open a nest; returns where its length goes.
    fn open(&mut self, kind: u16) -> usize {
        let b = self.bytes();
        let at = b.len();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(kind | NESTED).to_ne_bytes());
        at
    }

    /// Close the nest opened at `at`: its length.
    fn close(&mut self, at: usize) {
        let b = self.bytes();
        let len = (b.len() - at) as u16;
        if let Some(slot) = b.get_mut(at..at + 2) {
            slot.copy_from_slice(&len.to_ne_bytes());
        }
    }
}

struct Msg(Vec<u8>);

impl Attrs for Msg {
    fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Msg {
    /// The header (length patched by [`Msg::done`]) and an `ifinfomsg`.
    fn new(flags: u16, index: i32, ifflags: u32, change: u32) -> Msg {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes()); // seq
        b.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
        let mut m = Msg(b);
        m.ifinfo(index, ifflags, change);
        m
    }

    /// A header of `kind` with no family header yet.
    fn bare(kind: u16, flags: u16) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes()); // seq
        b.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
        Msg(b)
    }

    fn ifinfo(&mut self, index: i32, ifflags: u32, change: u32) {
        self.0.extend_from_slice(&[0, 0, 0, 0]); // AF_UNSPEC, pad, type
        self.0.extend_from_slice(&index.to_ne_bytes());
        self.0.extend_from_slice(&ifflags.to_ne_bytes());
        self.0.extend_from_slice(&change.to_ne_bytes());
    }

    fn done(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        if let Some(slot) = self.0.get_mut(..4) {
            slot.copy_from_slice(&len.to_ne_bytes());
        }
        self.0
    }
}

/// `ip link add NAME address MAC type bridge`: a bridge whose address is
/// set keeps it as ports come and go (see
/// `cairn_format::network::bridge_mac`).
pub fn new_bridge(name: &str, mac: [u8; 6]) -> Vec<u8> {
    let mut m = Msg::new(NLM_F_CREATE | NLM_F_EXCL, 0, 0, 0);
    m.name(IFLA_IFNAME, name);
    m.attr(IFLA_ADDRESS, &mac);
    let info = m.open(IFLA_LINKINFO);
    m.name(IFLA_INFO_KIND, "bridge");
    m.close(info);
    m.done()
}

/// `ip link add HOST type veth peer name PEER netns PID`: the peer is
/// created inside the network namespace of process `pid`.
pub fn new_veth(host: &str, peer: &str, pid: i32) -> Vec<u8> {
    let mut m = Msg::new(NLM_F_CREATE | NLM_F_EXCL, 0, 0, 0);
    m.name(IFLA_IFNAME, host);
    let info = m.open(IFLA_LINKINFO);
    m.name(IFLA_INFO_KIND, "veth");
    let data = m.open(IFLA_INFO_DATA);
    let p = m.open(VETH_INFO_PEER);
    m.ifinfo(0, 0, 0);
    m.name(IFLA_IFNAME, peer);
    m.attr(IFLA_NET_NS_PID, &pid.to_ne_bytes());
    m.close(p);
    m.close(data);
    m.close(info);
    m.done()
}

/// `ip link set INDEX master MASTER up`.
pub fn enslave_up(index: i32, master: i32) -> Vec<u8> {
    let mut m = Msg::new(0, index, IFF_UP, IFF_UP);
    m.attr(IFLA_MASTER, &master.to_ne_bytes());
    m.done()
}

/// `ip route add default via GATEWAY dev INDEX`: an `rtmsg` (IPv4, no
/// destination prefix: the default route; main table, static, universe
/// scope, unicast) with the gateway and the output interface.
pub fn new_default_route(gateway: [u8; 4], index: i32) -> Vec<u8> {
    let mut m = Msg::bare(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    // family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    m.0.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST]);
    m.0.extend_from_slice(&0u32.to_ne_bytes());
    m.attr(RTA_GATEWAY, &gateway);
    m.attr(RTA_OIF, &index.to_ne_bytes());
    m.done()
}

/// `ip link set INDEX up`.
pub fn set_up(index: i32) -> Vec<u8> {
    Msg::new(0, index, IFF_UP, IFF_UP).done()
}

/// The errno of an acknowledgement (`NLMSG_ERROR`: 0 is success), `None`
/// if `buf` is not one.
pub fn ack_errno(buf: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    let err = i32::from_ne_bytes(buf.get(16..20)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then_some(-err)
}

/// An rtnetlink socket in the caller's network namespace.
pub struct Rtnl {
    fd: OwnedFd,
}

impl Rtnl {
    /// Open one.
    pub fn open() -> SysResult<Rtnl> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
            .map_err(sys::err("socket", "NETLINK_ROUTE"))?;
        Ok(Rtnl { fd })
    }

    /// Send `msg` and wait for its acknowledgement (the kernel answers at
    /// once: this never waits on a container). `what` names it in errors.
    pub fn call(&self, what: &str, msg: &[u8]) -> SysResult<()> {
        let fail = |errno| SysError { op: "rtnetlink", arg: what.into(), errno };
        nix::sys::socket::send(self.fd.as_raw_fd(), msg, nix::sys::socket::MsgFlags::empty())
            .map_err(|e| fail(e as i32))?;
        let mut buf = [0u8; 1024];
        let n = nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty())
            .map_err(|e| fail(e as i32))?;
        match ack_errno(buf.get(..n).unwrap_or(&[])) {
            Some(0) => Ok(()),
            Some(e) => Err(fail(e)),
            None => Err(fail(libc::EPROTO)),
        }
    }
}

/// Turn IPv6 off on a device-side interface (a bridge, a veth's outer end)
/// before it goes up, so the kernel gives it no link-local address: the
/// device has no address on a container network, so no container reaches
/// the device's own services through it. Without IPv6 in the kernel there
/// is nothing to turn off.
pub fn disable_ipv6(iface: &str) -> SysResult<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    match std::fs::write(&path, b"1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new("/proc/sys/net/ipv6").exists() => {
            Ok(())
        }
        Err(e) => Err(SysError { op: "write", arg: path, errno: e.raw_os_error().unwrap_or(0) }),
    }
}

/// An interface's index by name (`if_nametoindex`).
pub fn index(name: &str) -> SysResult<i32> {
    let c = std::ffi::CString::new(name).map_err(|_| SysError {
        op: "if_nametoindex",
        arg: name.into(),
        errno: libc::EINVAL,
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(SysError { op: "if_nametoindex", arg: name.into(), errno: sys::errno() });
    }
    i32::try_from(i).map_err(|_| SysError { op: "if_nametoindex", arg: name.into(), errno: libc::EOVERFLOW })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn a_bridge_request_is_what_ip_link_sends() {
        let m = new_bridge("cairn-br0", [0x02, 0xca, 10, 89, 3, 1]);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        // ifinfomsg (16 bytes) after the 16-byte header, then IFLA_IFNAME.
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (4 + 10, IFLA_IFNAME));
        assert_eq!(&m[36..46], b"cairn-br0\0");
        // Padded to 4: the address at 48, six bytes.
        assert_eq!((u16_at(&m, 48), u16_at(&m, 50)), (4 + 6, IFLA_ADDRESS));
        assert_eq!(&m[52..58], &[0x02, 0xca, 10, 89, 3, 1]);
        // Padded to 4: the nest starts at 60 and holds the kind "bridge".
        assert_eq!((u16_at(&m, 60), u16_at(&m, 62)), (4 + 4 + 7 + 1, IFLA_LINKINFO | NESTED));
        assert_eq!((u16_at(&m, 64), u16_at(&m, 66)), (4 + 7, IFLA_INFO_KIND));
        assert_eq!(&m[68..75], b"bridge\0");
        assert_eq!(m.len(), 76);
    }

    #[test]
    fn a_veth_peer_is_born_in_the_containers_namespace() {
        let m = new_veth("cv42-0", "eth0", 42);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        // Nests close at the end of the message, each length its span.
        let info = m.windows(2).position(|w| w == (IFLA_LINKINFO | NESTED).to_ne_bytes()).unwrap() - 2;
        assert_eq!(info + u16_at(&m, info) as usize, m.len());
        let peer = m.windows(2).position(|w| w == (VETH_INFO_PEER | NESTED).to_ne_bytes()).unwrap() - 2;
        assert_eq!(peer + u16_at(&m, peer) as usize, m.len());
        // The peer: an ifinfomsg, its name, the pid of its namespace.
        let tail = &m[peer + 4 + 16..];
        assert_eq!((u16_at(tail, 0), u16_at(tail, 2), &tail[4..9]), (9, IFLA_IFNAME, &b"eth0\0"[..]));
        assert_eq!((u16_at(tail, 12), u16_at(tail, 14)), (8, IFLA_NET_NS_PID));
        assert_eq!(i32::from_ne_bytes([tail[16], tail[17], tail[18], tail[19]]), 42);
    }

    #[test]
    fn a_default_route_names_its_gateway_and_interface() {
        let m = new_default_route([10, 89, 3, 1], 5);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        // rtmsg: AF_INET, /0, main table, RTPROT_BOOT, universe, unicast, no flags.
        assert_eq!(&m[16..28], &[2, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]);
        assert_eq!((u16_at(&m, 28), u16_at(&m, 30)), (8, RTA_GATEWAY));
        assert_eq!(&m[32..36], &[10, 89, 3, 1]);
        assert_eq!((u16_at(&m, 36), u16_at(&m, 38)), (8, RTA_OIF));
        assert_eq!(i32::from_ne_bytes([m[40], m[41], m[42], m[43]]), 5);
    }

    #[test]
    fn links_go_up_under_their_master_and_acks_read() {
        let m = enslave_up(7, 3);
        assert_eq!(i32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 7);
        assert_eq!(
            (u32::from_ne_bytes([m[24], m[25], m[26], m[27]]), u32::from_ne_bytes([m[28], m[29], m[30], m[31]])),
            (IFF_UP, IFF_UP)
        );
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (8, IFLA_MASTER));
        assert_eq!(set_up(7).len(), 32);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack[..10]), None);
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
    }
}
