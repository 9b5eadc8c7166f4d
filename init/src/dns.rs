//! Name servers for the containers on networks with egress (issue 16 item
//! 1: "a resolv.conf that works").
//!
//! The device learns its name servers at run time, from its uplink (a DHCP
//! lease) more often than from its image, so they are not in the manifest:
//! a container granted `network` (the uplink's DHCP client, in its lease
//! script) sets them with `cairn-ctl dns [--search DOMAIN]... [ADDR]...`.
//! PID 1 keeps one file, [`RESOLV_CONF`], bound read-only at
//! `/etc/resolv.conf` into every container on a network with egress, and
//! rewrites it in place, so running containers use the new servers at
//! their next lookup (musl and glibc read the file per lookup or on its
//! change) without a restart. Until a `dns` request the file names no
//! server: a lookup fails at once (the resolver's default, 127.0.0.1, has
//! nothing listening in the container) rather than asking anyone.
//!
//! Container names need no server: each container's `/etc/hosts` has every
//! container of its networks (`cairn_format::network::hosts`), and
//! resolvers read it first.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_format::network::{addr_text, parse_addr};
use cairn_runtime::sys::{self, SysError, SysResult};

/// The file bound at `/etc/resolv.conf`.
pub const RESOLV_CONF: &str = "/run/cairn/net/resolv.conf";
/// Name servers kept: resolvers read three (`MAXNS`).
pub const MAX_SERVERS: usize = 3;
/// Search domains kept (glibc's historical limit).
pub const MAX_SEARCH: usize = 6;
/// The longest domain name.
const MAX_DOMAIN: usize = 253;

/// The file exists: some container is on a network with egress.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What a `dns` request sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Servers {
    /// IPv4 name servers, in order.
    pub servers: Vec<[u8; 4]>,
    /// Search domains, in order.
    pub search: Vec<String>,
}

/// Why a `dns` request's arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Not an IPv4 address in dotted form.
    #[error("bad name server {0:?} (an IPv4 address)")]
    Server(String),
    /// Not a domain name.
    #[error("bad search domain {0:?} (labels of letters, digits and '-', dot-separated)")]
    Domain(String),
    /// More than [`MAX_SERVERS`] servers or [`MAX_SEARCH`] domains.
    #[error("too many: at most {MAX_SERVERS} name servers and {MAX_SEARCH} search domains")]
    TooMany,
    /// An address given twice.
    #[error("name server {0} given twice")]
    Twice(String),
}

impl Servers {
    /// `[--search DOMAIN]... [ADDR]...`, in any order. No address at all
    /// is allowed: it clears the servers (a lease that was lost).
    pub fn parse(args: &[&str]) -> Result<Servers, DnsError> {
        let mut out = Servers::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if *a == "--search" {
                let d = it.next().copied().unwrap_or_default();
                if !is_domain(d) {
                    return Err(DnsError::Domain(d.into()));
                }
                out.search.push(d.to_ascii_lowercase());
            } else {
                let s = parse_addr(a).ok_or_else(|| DnsError::Server((*a).into()))?;
                if out.servers.contains(&s) {
                    return Err(DnsError::Twice(addr_text(s)));
                }
                out.servers.push(s);
            }
        }
        if out.servers.len() > MAX_SERVERS || out.search.len() > MAX_SEARCH {
            return Err(DnsError::TooMany);
        }
        Ok(out)
    }

    /// The file's contents.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::from("# cairn-init writes this file: `cairn-ctl dns` sets it (docs/control.md).\n");
        if self.servers.is_empty() {
            out.push_str("# No name servers are set: lookups of other than container names fail.\n");
        }
        for s in &self.servers {
            out.push_str(&format!("nameserver {}\n", addr_text(*s)));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        out
    }

    /// The servers for events and replies (`-` for none).
    pub fn servers_text(&self) -> String {
        list(self.servers.iter().map(|s| addr_text(*s)))
    }

    /// The search domains for events and replies (`-` for none).
    pub fn search_text(&self) -> String {
        list(self.search.iter().cloned())
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// A domain name: dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen; a final dot is allowed.
fn is_domain(d: &str) -> bool {
    let body = d.strip_suffix('.').unwrap_or(d);
    !body.is_empty()
        && d.len() <= MAX_DOMAIN
        && body.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// At boot, when some container is on a network with egress: the file,
/// naming no server yet.
pub fn install() -> SysResult<()> {
    let dir = RESOLV_CONF.rsplit_once('/').map_or(RESOLV_CONF, |(d, _)| d);
    sys::mkdir_all(dir, 0o755)?;
    rewrite(&Servers::default())?;
    INSTALLED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Set the servers: the file is rewritten in place (the containers' bind
/// mounts hold its inode), in one write. `None`: no container uses it.
pub fn set(s: &Servers) -> Option<SysResult<()>> {
    INSTALLED.load(Ordering::Relaxed).then(|| rewrite(s))
}

fn rewrite(s: &Servers) -> SysResult<()> {
    let err = |op: &'static str| {
        move |e: std::io::Error| SysError { op, arg: RESOLV_CONF.into(), errno: e.raw_os_error().unwrap_or(0) }
    };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(RESOLV_CONF).map_err(err("open"))?;
    f.write_all(s.resolv_conf().as_bytes()).map_err(err("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_search_domains_parse_in_any_order() {
        let s = Servers::parse(&["10.0.2.3", "--search", "Example.COM", "192.168.1.1"]).unwrap_or_default();
        assert_eq!(s.servers, [[10, 0, 2, 3], [192, 168, 1, 1]]);
        assert_eq!(s.search, ["example.com"]);
        assert_eq!(
            s.resolv_conf(),
            "# cairn-init writes this file: `cairn-ctl dns` sets it (docs/control.md).\n\
             nameserver 10.0.2.3\nnameserver 192.168.1.1\nsearch example.com\n"
        );
        assert_eq!((s.servers_text().as_str(), s.search_text().as_str()), ("10.0.2.3,192.168.1.1", "example.com"));
        let none = Servers::parse(&[]).unwrap_or_default();
        assert_eq!(none, Servers::default());
        assert!(none.resolv_conf().contains("No name servers are set") && !none.resolv_conf().contains("nameserver"));
        assert_eq!(none.servers_text(), "-");
    }

    #[test]
    fn anything_else_is_refused_with_what_was_wrong() {
        let bad = |a: &[&str]| Servers::parse(a).unwrap_err();
        assert_eq!(bad(&["10.0.2"]), DnsError::Server("10.0.2".into()));
        assert_eq!(bad(&["::1"]), DnsError::Server("::1".into()));
        assert_eq!(bad(&["1.1.1.1", "1.1.1.1"]), DnsError::Twice("1.1.1.1".into()));
        assert_eq!(bad(&["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]), DnsError::TooMany);
        assert_eq!(bad(&["--search"]), DnsError::Domain(String::new()));
        for d in ["a..b", "-a.b", "a-.b", ".", "a b", "a\nnameserver 6.6.6.6", &"x".repeat(64), "ä.de"] {
            assert_eq!(bad(&["--search", d]), DnsError::Domain(d.into()), "{d:?}");
        }
        assert!(Servers::parse(&["--search", "lan.", "--search", "a-1.example"]).is_ok());
        let seven: Vec<&str> = ["--search", "a"].repeat(7);
        assert_eq!(bad(&seven), DnsError::TooMany);
    }
}
