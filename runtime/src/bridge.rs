//! PID 1's side of a container's bridged networks: after the clone, one
//! veth pair per network, the inner end created directly in the child's
//! network namespace (named as the spec says, `eth0`, ...), the outer end
//! `cv<pid>-<k>` enslaved to the network's bridge and up. The child
//! addresses its ends itself (`network::configure`) once PID 1 says go.
//! When the container's network namespace goes (its last process exits),
//! the kernel deletes the pair: nothing to clean up, nothing leaks.

use crate::netlink::{self, Rtnl};
use crate::spec::NetAttach;
use crate::sys::SysResult;

/// The outer end's name: unique while the child lives (pids are), within
/// IFNAMSIZ (`cv` + 7 digits + `-` + one digit).
pub fn outer_name(pid: libc::pid_t, k: usize) -> String {
    format!("cv{pid}-{k}")
}

/// Create and attach the pairs of child `pid`.
pub fn attach(pid: libc::pid_t, networks: &[NetAttach]) -> SysResult<()> {
    if networks.is_empty() {
        return Ok(());
    }
    let rtnl = Rtnl::open()?;
    for (k, a) in networks.iter().enumerate() {
        let outer = outer_name(pid, k);
        rtnl.call(&outer, &netlink::new_veth(&outer, &a.iface, pid))?;
        netlink::disable_ipv6(&outer)?;
        let master = netlink::index(&a.bridge)?;
        rtnl.call(&outer, &netlink::enslave_up(netlink::index(&outer)?, master))?;
    }
    Ok(())
}
