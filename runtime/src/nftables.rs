//! A small nf_tables client for container networks: PID 1 sends one batch
//! at boot that makes table `cairn` (family `ip`) with the chains and
//! rules of [`ruleset`]: masquerade for networks with egress, DNAT for
//! published ports, and the drops that keep networks apart and keep
//! containers off the device's own services. No userspace tool is
//! involved: the messages are built here by pure functions (tested byte
//! for byte on the host, against the layouts of the kernel's
//! `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`), and
//! [`Nft::apply`] sends a batch and reads every answer.
//!
//! Layout facts the builders follow (all from the kernel's uapi and
//! `net/netfilter/nf_tables_api.c`, `nfnetlink.c`):
//! - every message is a netlink header and a `struct nfgenmsg` (family,
//!   version 0, resource id big-endian), type `NFNL_SUBSYS_NFTABLES << 8 |
//!   NFT_MSG_*`; a batch is `NFNL_MSG_BATCH_BEGIN` (resource id = the
//!   subsystem, 10) ... `NFNL_MSG_BATCH_END`, sent in one datagram and
//!   committed whole or not at all;
//! - integer attributes (registers, keys, hook numbers, priorities,
//!   verdicts, NAT types) are 32-bit big-endian;
//! - data compared against registers is in the register's own order:
//!   packet bytes as on the wire, `ct state`/`ct status`/`fib` results as
//!   host-order u32 (what `nft --debug=netlink` prints as `0x00000002`).

use std::os::fd::{AsRawFd, OwnedFd};

use crate::netlink::Attrs;
use crate::sys::{self, SysError, SysResult};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// NFPROTO_IPV4: the `ip` family.
pub const FAMILY_IP: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// NFT_TABLE_F_OWNER: the table belongs to the socket that made it; no
/// other socket may change or delete it, and it goes when that socket
/// closes.
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
// Per expression: the destination (or source) register comes first.
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;

/// NFT_REG_VERDICT.
const REG_VERDICT: u32 = 0;
/// NFT_REG_1 (16 bytes: room for an interface name).
const REG_1: u32 = 1;
/// NFT_REG_2.
const REG_2: u32 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_NAT_DNAT: u32 = 1;
/// RTN_LOCAL: an address of this host.
const RTN_LOCAL: u32 = 2;
/// `ct state established,related`: NF_CT_STATE_BIT(IP_CT_ESTABLISHED) |
/// NF_CT_STATE_BIT(IP_CT_RELATED).
const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// `ct status dnat`: IPS_DST_NAT.
const IPS_DST_NAT: u32 = 1 << 5;
/// IFNAMSIZ: what a meta iifname/oifname load puts in a register.
const IFNAMSIZ: usize = 16;

/// The prefix of every bridge of a container network (`cairn-br0`, ...).
pub const BRIDGE_PREFIX: &str = "cairn-br";
/// The table PID 1 owns.
pub const TABLE: &str = "cairn";

/// A netfilter hook of the `ip` family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING.
    Prerouting = 0,
    /// NF_INET_LOCAL_IN.
    Input = 1,
    /// NF_INET_FORWARD.
    Forward = 2,
    /// NF_INET_POST_ROUTING.
    Postrouting = 4,
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// NF_DROP.
    Drop = 0,
    /// NF_ACCEPT.
    Accept = 1,
}

/// A comparison of register 1 with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// NFT_CMP_EQ.
    Eq = 0,
    /// NFT_CMP_NEQ.
    Neq = 1,
}

/// One expression of a rule. Loads go to register 1 (and the DNAT port to
/// register 2); `Bitwise` and `Cmp` work on register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into register 1.
    Meta(u32),
    /// `LEN` bytes at `OFFSET` of the network (1) or transport (2) header.
    Payload { base: u32, offset: u32, len: u32 },
    /// Register 1 = (register 1 & mask) ^ 0, over the mask's length.
    Bitwise(Vec<u8>),
    /// Compare register 1 with the data; the rule stops on a mismatch.
    Cmp(Cmp, Vec<u8>),
    /// `ct KEY` into register 1.
    Ct(u32),
    /// `fib daddr type` into register 1.
    FibDaddrType,
    /// Load data into a register.
    Immediate(u32, Vec<u8>),
    /// Stop with this verdict.
    Verdict(Verdict),
    /// DNAT to the address in register 1 and the port in register 2.
    Dnat,
    /// Masquerade (source NAT to the outgoing interface's address).
    Masq,
}

/// An attribute writer over a message being built.
struct Buf(Vec<u8>);

impl Attrs for Buf {
    fn bytes(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Buf {
    fn str(&mut self, kind: u16, s: &str) {
        self.name(kind, s);
    }

    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    /// `NFTA_DATA_VALUE` inside a nest of `kind`.
    fn data(&mut self, kind: u16, value: &[u8]) {
        let n = self.open(kind);
        self.attr(NFTA_DATA_VALUE, value);
        self.close(n);
    }
}

/// One netlink message: header, `nfgenmsg`, attributes; length patched at
/// the end.
fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: impl FnOnce(&mut Buf)) -> Vec<u8> {
    let mut b = Buf(Vec::with_capacity(256));
    b.0.extend_from_slice(&0u32.to_ne_bytes());
    b.0.extend_from_slice(&kind.to_ne_bytes());
    b.0.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    b.0.extend_from_slice(&seq.to_ne_bytes());
    b.0.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    b.0.extend_from_slice(&[family, 0]); // nfgen_family, version NFNETLINK_V0
    b.0.extend_from_slice(&res_id.to_be_bytes());
    attrs(&mut b);
    let len = b.0.len() as u32;
    if let Some(slot) = b.0.get_mut(..4) {
        slot.copy_from_slice(&len.to_ne_bytes());
    }
    b.0
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A batch of nf_tables messages. Only the last one asks for an
/// acknowledgement: the kernel answers every failing message with its
/// error anyway, and queues the answers until the batch is done, so one
/// ack means all went in, and the answers never outgrow the socket's
/// receive buffer however many rules there are.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    /// Sequence numbers of the messages inside.
    seqs: Vec<u32>,
    /// Where the last message starts in `buf`.
    last: Option<usize>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// `NFNL_MSG_BATCH_BEGIN` (sequence 0).
    pub fn new() -> Batch {
        let buf = message(NFNL_MSG_BATCH_BEGIN, 0, 0, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        Batch { buf, seqs: Vec::new(), last: None }
    }

    fn push(&mut self, msg: u16, flags: u16, attrs: impl FnOnce(&mut Buf)) {
        let seq = self.seqs.len() as u32 + 1;
        let m = message(nft_type(msg), flags, seq, FAMILY_IP, 0, attrs);
        self.last = Some(self.buf.len());
        self.buf.extend_from_slice(&m);
        self.seqs.push(seq);
    }

    /// `nft create table ip NAME` (refused if it exists), owned by the
    /// socket that sends it if `owned` (`flags owner`).
    pub fn table(&mut self, name: &str, owned: bool) {
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, |b| {
            b.str(NFTA_TABLE_NAME, name);
            if owned {
                b.be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
            }
        });
    }

    /// `nft add chain ip TABLE NAME { type KIND hook HOOK priority PRIO;
    /// policy POLICY; }`.
    pub fn chain(&mut self, table: &str, name: &str, kind: &str, hook: Hook, priority: i32, policy: Verdict) {
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            b.str(NFTA_CHAIN_TABLE, table);
            b.str(NFTA_CHAIN_NAME, name);
            let h = b.open(NFTA_CHAIN_HOOK);
            b.be32(NFTA_HOOK_HOOKNUM, hook as u32);
            b.be32(NFTA_HOOK_PRIORITY, priority as u32);
            b.close(h);
            b.be32(NFTA_CHAIN_POLICY, policy as u32);
            b.str(NFTA_CHAIN_TYPE, kind);
        });
    }

    /// `nft add rule ip TABLE CHAIN EXPRS...` (appended).
    pub fn rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            b.str(NFTA_RULE_TABLE, table);
            b.str(NFTA_RULE_CHAIN, chain);
            let list = b.open(NFTA_RULE_EXPRESSIONS);
            for e in exprs {
                expr(b, e);
            }
            b.close(list);
        });
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// `NFNL_MSG_BATCH_END`, and NLM_F_ACK on the last message: the bytes
    /// to send and the acks to expect (1, or 0 for an empty batch).
    pub fn finish(mut self) -> (Vec<u8>, usize) {
        let seq = self.seqs.len() as u32 + 1;
        if let Some(flags) = self.last.and_then(|at| self.buf.get_mut(at + 6..at + 8)) {
            let mut two = [0u8; 2];
            two.copy_from_slice(flags);
            flags.copy_from_slice(&(u16::from_ne_bytes(two) | NLM_F_ACK).to_ne_bytes());
        }
        let end = message(NFNL_MSG_BATCH_END, 0, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        self.buf.extend_from_slice(&end);
        let acks = usize::from(self.last.is_some());
        (self.buf, acks)
    }
}

/// One `NFTA_LIST_ELEM`: the expression's name and its data.
fn expr(b: &mut Buf, e: &Expr) {
    let elem = b.open(NFTA_LIST_ELEM);
    let name = match e {
        Expr::Meta(_) => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Bitwise(_) => "bitwise",
        Expr::Cmp(..) => "cmp",
        Expr::Ct(_) => "ct",
        Expr::FibDaddrType => "fib",
        Expr::Immediate(..) | Expr::Verdict(_) => "immediate",
        Expr::Dnat => "nat",
        Expr::Masq => "masq",
    };
    b.str(NFTA_EXPR_NAME, name);
    let data = b.open(NFTA_EXPR_DATA);
    match e {
        Expr::Meta(key) => {
            b.be32(NFTA_META_DREG, REG_1);
            b.be32(NFTA_META_KEY, *key);
        }
        Expr::Payload { base, offset, len } => {
            b.be32(NFTA_PAYLOAD_DREG, REG_1);
            b.be32(NFTA_PAYLOAD_BASE, *base);
            b.be32(NFTA_PAYLOAD_OFFSET, *offset);
            b.be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Bitwise(mask) => {
            b.be32(NFTA_BITWISE_SREG, REG_1);
            b.be32(NFTA_BITWISE_DREG, REG_1);
            b.be32(NFTA_BITWISE_LEN, mask.len() as u32);
            b.data(NFTA_BITWISE_MASK, mask);
            b.data(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
        }
        Expr::Cmp(op, value) => {
            b.be32(NFTA_CMP_SREG, REG_1);
            b.be32(NFTA_CMP_OP, *op as u32);
            b.data(NFTA_CMP_DATA, value);
        }
        Expr::Ct(key) => {
            b.be32(NFTA_CT_DREG, REG_1);
            b.be32(NFTA_CT_KEY, *key);
        }
        Expr::FibDaddrType => {
            b.be32(NFTA_FIB_DREG, REG_1);
            b.be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            b.be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
        }
        Expr::Immediate(reg, value) => {
            b.be32(NFTA_IMMEDIATE_DREG, *reg);
            b.data(NFTA_IMMEDIATE_DATA, value);
        }
        Expr::Verdict(v) => {
            b.be32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
            let d = b.open(NFTA_IMMEDIATE_DATA);
            let v_nest = b.open(NFTA_DATA_VERDICT);
            b.be32(NFTA_VERDICT_CODE, *v as u32);
            b.close(v_nest);
            b.close(d);
        }
        Expr::Dnat => {
            b.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            b.be32(NFTA_NAT_FAMILY, u32::from(FAMILY_IP));
            b.be32(NFTA_NAT_REG_ADDR_MIN, REG_1);
            b.be32(NFTA_NAT_REG_PROTO_MIN, REG_2);
        }
        Expr::Masq => {}
    }
    b.close(data);
    b.close(elem);
}

/// An interface name as a meta load leaves it in a register: the name,
/// NUL-padded to IFNAMSIZ (an exact match compares all 16 bytes).
fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

/// `iifname NAME` / `oifname != "cairn-br*"` and the like: an exact name
/// compares 16 bytes, a wildcard only its prefix.
fn ifname_is(key: u32, op: Cmp, name: &str, wildcard: bool) -> [Expr; 2] {
    let value = if wildcard { name.as_bytes().to_vec() } else { ifname(name) };
    [Expr::Meta(key), Expr::Cmp(op, value)]
}

fn ct_has(key: u32, bits: u32) -> [Expr; 3] {
    [Expr::Ct(key), Expr::Bitwise(bits.to_ne_bytes().to_vec()), Expr::Cmp(Cmp::Neq, vec![0; 4])]
}

/// A container network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// Its bridge (`cairn-br<i>`).
    pub bridge: String,
    /// Its subnet's address and prefix length.
    pub subnet: [u8; 4],
    /// The prefix length.
    pub prefix: u8,
    /// Egress through the device.
    pub egress: bool,
}

/// A published port: the device's `host_port` (on its own addresses) to
/// `addr:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The device's port.
    pub host_port: u16,
    /// The container's address.
    pub addr: [u8; 4],
    /// The container's port.
    pub port: u16,
}

/// The whole ruleset of table `cairn`, as `nft list table ip cairn` would
/// show it:
///
/// ```text
/// chain input { type filter hook input priority 0; policy accept;
///   iifname "cairn-br*" ct state established,related accept
///   iifname "cairn-br*" drop }
/// chain forward { type filter hook forward priority 0; policy drop;
///   ct state established,related accept
///   ct status dnat accept
///   iifname "cairn-brI" oifname != "cairn-br*" accept      # each network with egress
/// }
/// chain prerouting { type nat hook prerouting priority -100; policy accept;
///   iifname != "cairn-br*" fib daddr type local meta l4proto P th dport H dnat to A:C   # each published port
/// }
/// chain postrouting { type nat hook postrouting priority 100; policy accept;
///   ip saddr SUBNET oifname != "cairn-br*" masquerade      # each network with egress
/// }
/// ```
///
/// So: a container reaches nothing of the device's own (input from a
/// bridge is dropped unless it answers a connection the device opened);
/// forwarding happens only out of a network with egress to a non-container
/// interface, back for those connections, and to published ports; two
/// networks never reach each other (the policy drops it).
pub fn ruleset(nets: &[Net], published: &[Published]) -> Batch {
    let t = TABLE;
    let mut b = Batch::new();
    // Owned by PID 1's socket, which stays open for the device's life: a
    // `network = "host"` container with CAP_NET_ADMIN cannot change or
    // delete it (EPERM).
    b.table(t, true);
    b.chain(t, "input", "filter", Hook::Input, 0, Verdict::Accept);
    b.chain(t, "forward", "filter", Hook::Forward, 0, Verdict::Drop);
    b.chain(t, "prerouting", "nat", Hook::Prerouting, -100, Verdict::Accept);
    b.chain(t, "postrouting", "nat", Hook::Postrouting, 100, Verdict::Accept);
    let from_bridge = ifname_is(NFT_META_IIFNAME, Cmp::Eq, BRIDGE_PREFIX, true);
    let established = ct_has(NFT_CT_STATE, CT_ESTABLISHED_RELATED);
    let accept = Expr::Verdict(Verdict::Accept);
    b.rule(t, "input", &[&from_bridge[..], &established[..], std::slice::from_ref(&accept)].concat());
    b.rule(t, "input", &[&from_bridge[..], &[Expr::Verdict(Verdict::Drop)]].concat());
    b.rule(t, "forward", &[&established[..], std::slice::from_ref(&accept)].concat());
    b.rule(t, "forward", &[&ct_has(NFT_CT_STATUS, IPS_DST_NAT)[..], std::slice::from_ref(&accept)].concat());
    let to_outside = ifname_is(NFT_META_OIFNAME, Cmp::Neq, BRIDGE_PREFIX, true);
    for n in nets.iter().filter(|n| n.egress) {
        let from = ifname_is(NFT_META_IIFNAME, Cmp::Eq, &n.bridge, false);
        b.rule(t, "forward", &[&from[..], &to_outside[..], std::slice::from_ref(&accept)].concat());
    }
    let not_from_bridge = ifname_is(NFT_META_IIFNAME, Cmp::Neq, BRIDGE_PREFIX, true);
    for p in published {
        let mut e = not_from_bridge.to_vec();
        e.extend([
            Expr::FibDaddrType,
            Expr::Cmp(Cmp::Eq, RTN_LOCAL.to_ne_bytes().to_vec()),
            Expr::Meta(NFT_META_L4PROTO),
            Expr::Cmp(Cmp::Eq, vec![p.proto]),
            // The destination port: bytes 2-3 of the TCP or UDP header.
            Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2 },
            Expr::Cmp(Cmp::Eq, p.host_port.to_be_bytes().to_vec()),
            Expr::Immediate(REG_1, p.addr.to_vec()),
            Expr::Immediate(REG_2, p.port.to_be_bytes().to_vec()),
            Expr::Dnat,
        ]);
        b.rule(t, "prerouting", &e);
    }
    for n in nets.iter().filter(|n| n.egress) {
        let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix.min(32))).unwrap_or(0).to_be_bytes();
        let mut e = vec![
            // The source address: bytes 12-15 of the IPv4 header.
            Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: 12, len: 4 },
            Expr::Bitwise(mask.to_vec()),
            Expr::Cmp(Cmp::Eq, n.subnet.to_vec()),
        ];
        e.extend(to_outside.clone());
        e.push(Expr::Masq);
        b.rule(t, "postrouting", &e);
    }
    b
}

/// What each answer in `buf` (one or more netlink messages) says:
/// `(sequence, errno)` for every `NLMSG_ERROR` (0 is an ack).
pub fn answers(buf: &[u8]) -> Vec<(u32, i32)> {
    let u32_at = |at: usize| buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    let mut out = Vec::new();
    let mut at = 0usize;
    while let (Some(len), Some(kind_flags), Some(seq)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) {
        let len = len as usize;
        if len < 16 {
            break;
        }
        // The type is the first u16 of the second word.
        let kind = kind_flags.to_ne_bytes();
        if u16::from_ne_bytes([kind[0], kind[1]]) == NLMSG_ERROR {
            if let Some(e) = u32_at(at + 16) {
                out.push((seq, (e as i32).wrapping_neg()));
            }
        }
        at += len.next_multiple_of(4);
    }
    out
}

/// Judge a batch's answers: the first error, or success once the
/// `expected` acks (the last message's) are in.
pub fn verdict(answers: &[(u32, i32)], expected: usize) -> Result<(), (u32, i32)> {
    if let Some(e) = answers.iter().find(|(_, e)| *e != 0) {
        return Err(*e);
    }
    match answers.len() == expected {
        true => Ok(()),
        false => Err((0, libc::EPROTO)),
    }
}

/// An nfnetlink socket in the caller's network namespace.
pub struct Nft {
    fd: OwnedFd,
}

impl Nft {
    /// Open one.
    pub fn open() -> SysResult<Nft> {
        // SAFETY: socket takes integers only.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(SysError { op: "socket", arg: "NETLINK_NETFILTER".into(), errno: sys::errno() });
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
        Ok(Nft { fd: unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) } })
    }

    /// Keep the socket open for the rest of PID 1's life: a table made
    /// `owned` through it lives as long as it does.
    pub fn keep_forever(self) {
        std::mem::forget(self.fd);
    }

    /// Send `batch` and read its answers. The kernel handles a batch
    /// inside the send (nfnetlink runs in the sender's context), so every
    /// answer is queued before send returns: they are read without
    /// waiting, and this never blocks. An error names the message's
    /// sequence number in the batch (1 = the first after BATCH_BEGIN; 0 =
    /// the batch as a whole, e.g. its commit).
    pub fn apply(&self, batch: Batch) -> SysResult<()> {
        let (bytes, expected) = batch.finish();
        let fail = |seq: u32, errno| SysError { op: "nf_tables batch", arg: format!("message {seq}"), errno };
        nix::sys::socket::send(self.fd.as_raw_fd(), &bytes, nix::sys::socket::MsgFlags::empty())
            .map_err(|e| fail(0, e as i32))?;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
                Ok(n) => got.extend(answers(buf.get(..n).unwrap_or(&[]))),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(fail(0, e as i32)),
            }
        }
        verdict(&got, expected).map_err(|(seq, e)| fail(seq, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{Attrs as _, NESTED};

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The attribute (kind, payload) list of `b`, nests left whole.
    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16_at(b, 0) as usize;
            assert!(len >= 4 && len <= b.len(), "attribute length {len} of {}", b.len());
            out.push((u16_at(b, 2), b[4..len].to_vec()));
            b = &b[len.next_multiple_of(4).min(b.len())..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    /// One message: (type, flags, seq, nfgenmsg, attributes).
    type Message = (u16, u16, u32, [u8; 4], Vec<u8>);
    /// Attributes: (kind, payload).
    type Attrs = Vec<(u16, Vec<u8>)>;

    /// The messages of a batch.
    fn messages(mut b: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u32_at(b, 0) as usize;
            assert_eq!(len % 4, 0, "messages are 4-aligned");
            let gen = [b[16], b[17], b[18], b[19]];
            out.push((u16_at(b, 4), u16_at(b, 6), u32_at(b, 8), gen, b[20..len].to_vec()));
            b = &b[len..];
        }
        out
    }

    fn be(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    #[test]
    fn a_batch_is_begin_messages_end() {
        let mut b = Batch::new();
        b.table("cairn", false);
        let (bytes, n) = b.finish();
        assert_eq!(n, 1);
        let m = messages(&bytes);
        assert_eq!(m.len(), 3);
        // BATCH_BEGIN: NLMSG_MIN_TYPE, a request, resource id 10 big-endian.
        assert_eq!((m[0].0, m[0].1, m[0].2), (16, NLM_F_REQUEST, 0));
        assert_eq!(m[0].3, [0, 0, 0, 10]);
        assert!(m[0].4.is_empty());
        // NEWTABLE: (10 << 8) | 0, create exclusive with an ack, family ip.
        assert_eq!((m[1].0, m[1].1, m[1].2), (0x0a00, 0x1 | 0x4 | 0x200 | 0x400, 1));
        assert_eq!(m[1].3, [2, 0, 0, 0]);
        assert_eq!(attrs(&m[1].4), [(1, b"cairn\0".to_vec())]);
        // The whole message: 16 + 4 + an 8+2-padded name attribute.
        assert_eq!(u32_at(&bytes, 20), 16 + 4 + 12);
        assert_eq!(&bytes[20 + 20..20 + 32], &[10, 0, 1, 0, b'c', b'a', b'i', b'r', b'n', 0, 0, 0]);
        assert_eq!((m[2].0, m[2].1, m[2].2, m[2].3), (17, NLM_F_REQUEST, 2, [0, 0, 0, 10]));
        // Owned: NFTA_TABLE_FLAGS = NFT_TABLE_F_OWNER, big-endian.
        let mut b = Batch::new();
        b.table("cairn", true);
        let (bytes, _) = b.finish();
        assert_eq!(attrs(&messages(&bytes)[1].4), [(1, b"cairn\0".to_vec()), (2, be(2))]);
    }

    #[test]
    fn a_base_chain_has_its_hook_priority_policy_and_type() {
        let mut b = Batch::new();
        b.chain("cairn", "prerouting", "nat", Hook::Prerouting, -100, Verdict::Accept);
        let (bytes, _) = b.finish();
        let m = &messages(&bytes)[1];
        assert_eq!((m.0, m.1), (0x0a03, 0x1 | 0x4 | 0x400));
        let a = attrs(&m.4);
        let kinds: Vec<u16> = a.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [1, 3, 4 | NESTED, 5, 7]);
        assert_eq!(a[0].1, b"cairn\0");
        assert_eq!(a[1].1, b"prerouting\0");
        // The hook nest: hook number then priority, both big-endian u32
        // (-100 as two's complement).
        assert_eq!(attrs(&a[2].1), [(1, be(0)), (2, vec![0xff, 0xff, 0xff, 0x9c])]);
        assert_eq!(a[3].1, be(1), "policy accept");
        assert_eq!(a[4].1, b"nat\0");
    }

    /// The expressions of a NEWRULE message: (name, attributes of its data).
    fn rule_exprs(msg: &[u8]) -> Vec<(String, Attrs)> {
        let a = attrs(msg);
        assert_eq!(a[0], (1, b"cairn\0".to_vec()));
        assert_eq!(a[2].0, 4 | NESTED);
        attrs(&a[2].1)
            .into_iter()
            .map(|(k, elem)| {
                assert_eq!(k, 1 | NESTED, "NFTA_LIST_ELEM");
                let e = attrs(&elem);
                assert_eq!((e[0].0, e[1].0), (1, 2 | NESTED));
                let name = String::from_utf8(e[0].1.split(|c| *c == 0).next().unwrap().to_vec()).unwrap();
                (name, attrs(&e[1].1))
            })
            .collect()
    }

    fn value(v: &[u8]) -> Vec<(u16, Vec<u8>)> {
        vec![(NFTA_DATA_VALUE, v.to_vec())]
    }

    #[test]
    fn rules_are_lists_of_expressions() {
        let nets = [
            Net { bridge: "cairn-br0".into(), subnet: [10, 89, 1, 0], prefix: 24, egress: false },
            Net { bridge: "cairn-br1".into(), subnet: [10, 89, 3, 0], prefix: 24, egress: true },
        ];
        let published = [Published { proto: 6, host_port: 18080, addr: [10, 89, 3, 2], port: 8080 }];
        let (bytes, n) = ruleset(&nets, &published).finish();
        let m = messages(&bytes);
        assert_eq!(attrs(&m[1].4)[1], (2, be(2)), "the table is PID 1's own");
        // Begin, table, 4 chains, 2 input + 3 forward + 1 prerouting + 1
        // postrouting rules, end; one ack asked for.
        assert_eq!((m.len(), n), (14, 1));
        let acked: Vec<u32> = m.iter().filter(|x| x.1 & NLM_F_ACK != 0).map(|x| x.2).collect();
        assert_eq!(acked, [12], "only the last message asks for an ack");
        let seqs: Vec<u32> = m.iter().map(|x| x.2).collect();
        assert_eq!(seqs, (0..14).collect::<Vec<u32>>(), "sequence numbers count the messages");
        let chains: Vec<String> = m[2..6]
            .iter()
            .map(|c| String::from_utf8(attrs(&c.4)[1].1.clone()).unwrap().trim_end_matches('\0').to_string())
            .collect();
        assert_eq!(chains, ["input", "forward", "prerouting", "postrouting"]);
        let policies: Vec<Vec<u8>> = m[2..6].iter().map(|c| attrs(&c.4)[3].1.clone()).collect();
        assert_eq!(policies, [be(1), be(0), be(1), be(1)], "only forward drops by default");
        for r in &m[6..12] {
            assert_eq!((r.0, r.1), (0x0a06, 0x1 | 0x400 | 0x800));
        }
        assert_eq!((m[12].0, m[12].1), (0x0a06, 0x1 | 0x4 | 0x400 | 0x800));
        let names = |i: usize| -> Vec<String> { rule_exprs(&m[i].4).into_iter().map(|(n, _)| n).collect() };

        // input: iifname "cairn-br*" ct state established,related accept.
        let e = rule_exprs(&m[6].4);
        assert_eq!(names(6), ["meta", "cmp", "ct", "bitwise", "cmp", "immediate"]);
        assert_eq!(e[0].1, [(1, be(1)), (2, be(6))], "meta iifname into NFT_REG_1");
        assert_eq!(e[1].1, [(1, be(1)), (2, be(0)), (3 | NESTED, attrs_of(&value(b"cairn-br")))]);
        assert_eq!(e[2].1, [(1, be(1)), (2, be(0))], "ct state");
        assert_eq!(
            e[3].1,
            [
                (1, be(1)),
                (2, be(1)),
                (3, be(4)),
                (4 | NESTED, attrs_of(&value(&6u32.to_ne_bytes()))),
                (5 | NESTED, attrs_of(&value(&[0; 4])))
            ]
        );
        assert_eq!(e[4].1, [(1, be(1)), (2, be(1)), (3 | NESTED, attrs_of(&value(&[0; 4])))], "!= 0");
        // The verdict: register 0, a nested NFTA_DATA_VERDICT with the code.
        let verdict_data = attrs_of(&[(NFTA_DATA_VERDICT | NESTED, attrs_of(&[(NFTA_VERDICT_CODE, be(1))]))]);
        assert_eq!(e[5].1, [(1, be(0)), (2 | NESTED, verdict_data)]);
        // input: iifname "cairn-br*" drop.
        let e = rule_exprs(&m[7].4);
        let drop = attrs_of(&[(NFTA_DATA_VERDICT | NESTED, attrs_of(&[(NFTA_VERDICT_CODE, be(0))]))]);
        assert_eq!(e[2].1, [(1, be(0)), (2 | NESTED, drop)]);
        // forward: established, then ct status dnat (IPS_DST_NAT, bit 5).
        assert_eq!(names(8), ["ct", "bitwise", "cmp", "immediate"]);
        let e = rule_exprs(&m[9].4);
        assert_eq!(e[0].1, [(1, be(1)), (2, be(2))]);
        assert_eq!(e[1].1[3], (4 | NESTED, attrs_of(&value(&0x20u32.to_ne_bytes()))));
        // forward: only the network with egress, out of a non-bridge.
        let e = rule_exprs(&m[10].4);
        assert_eq!(names(10), ["meta", "cmp", "meta", "cmp", "immediate"]);
        assert_eq!(e[1].1[2].1, attrs_of(&value(b"cairn-br1\0\0\0\0\0\0\0")), "exact: 16 bytes");
        assert_eq!(e[2].1, [(1, be(1)), (2, be(7))], "oifname");
        assert_eq!(e[3].1[1], (2, be(1)), "!=");
        assert_eq!(e[3].1[2].1, attrs_of(&value(b"cairn-br")), "a wildcard compares its prefix");

        // prerouting: the published port.
        assert_eq!(
            names(11),
            ["meta", "cmp", "fib", "cmp", "meta", "cmp", "payload", "cmp", "immediate", "immediate", "nat"]
        );
        let e = rule_exprs(&m[11].4);
        assert_eq!(e[1].1[1], (2, be(1)), "not from a bridge");
        assert_eq!(e[2].1, [(1, be(1)), (2, be(3)), (3, be(2))], "fib daddr type");
        assert_eq!(e[3].1[2].1, attrs_of(&value(&2u32.to_ne_bytes())), "RTN_LOCAL");
        assert_eq!(e[4].1[1], (2, be(16)), "meta l4proto");
        assert_eq!(e[5].1[2].1, attrs_of(&value(&[6])));
        assert_eq!(e[6].1, [(1, be(1)), (2, be(2)), (3, be(2)), (4, be(2))], "transport header + 2, 2 bytes");
        assert_eq!(e[7].1[2].1, attrs_of(&value(&[0x46, 0xa0])), "18080 on the wire");
        assert_eq!(e[8].1, [(1, be(1)), (2 | NESTED, attrs_of(&value(&[10, 89, 3, 2])))]);
        assert_eq!(e[9].1, [(1, be(2)), (2 | NESTED, attrs_of(&value(&[0x1f, 0x90])))]);
        assert_eq!(e[10].1, [(1, be(1)), (2, be(2)), (3, be(1)), (5, be(2))], "dnat, ip, addr reg 1, port reg 2");

        // postrouting: ip saddr 10.89.3.0/24 oifname != "cairn-br*" masquerade.
        assert_eq!(names(12), ["payload", "bitwise", "cmp", "meta", "cmp", "masq"]);
        let e = rule_exprs(&m[12].4);
        assert_eq!(e[0].1, [(1, be(1)), (2, be(1)), (3, be(12)), (4, be(4))]);
        assert_eq!(e[1].1[3].1, attrs_of(&value(&[255, 255, 255, 0])));
        assert_eq!(e[2].1[2].1, attrs_of(&value(&[10, 89, 3, 0])));
        assert!(e[5].1.is_empty(), "masquerade takes no attributes");
        assert_eq!(m[13].0, 17);
    }

    /// Attributes back to bytes (to compare a nest's payload).
    fn attrs_of(list: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = Buf(Vec::new());
        for (k, v) in list {
            b.attr(*k, v);
        }
        b.0
    }

    #[test]
    fn internal_networks_alone_forward_nothing() {
        let nets = [Net { bridge: "cairn-br0".into(), subnet: [10, 89, 1, 0], prefix: 24, egress: false }];
        let (bytes, n) = ruleset(&nets, &[]).finish();
        // Table, 4 chains, the 2 input rules and the 2 forward rules only.
        assert_eq!(n, 1);
        assert_eq!(messages(&bytes).len(), 11);
        assert_eq!(Batch::new().finish().1, 0, "an empty batch expects no ack");
    }

    #[test]
    fn answers_are_judged_all_or_the_first_error() {
        let ack = |seq: u32, err: i32| {
            let mut m = vec![0u8; 36];
            m[..4].copy_from_slice(&36u32.to_ne_bytes());
            m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m[8..12].copy_from_slice(&seq.to_ne_bytes());
            m[16..20].copy_from_slice(&(-err).to_ne_bytes());
            m
        };
        let two = [ack(1, 0), ack(2, 0)].concat();
        assert_eq!(answers(&two), [(1, 0), (2, 0)]);
        assert_eq!(verdict(&answers(&two), 2), Ok(()));
        assert_eq!(verdict(&answers(&two), 3), Err((0, libc::EPROTO)), "an ack missing");
        let bad = [ack(1, 0), ack(2, libc::ENOENT), ack(3, 0)].concat();
        assert_eq!(verdict(&answers(&bad), 3), Err((2, libc::ENOENT)));
        assert_eq!(answers(&[0u8; 10]), []);
    }
}
