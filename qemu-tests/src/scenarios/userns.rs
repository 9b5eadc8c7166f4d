//! `userns`: a container with its own user namespace (0 -> 100000, 65536
//! ids) is root inside and an unprivileged id outside, next to the same
//! probes in a container without one.
//!
//! What shows the outside: the kernel's id maps as the container reads them
//! (`0 100000 65536`, against `0 0 4294967295` in the host's namespace);
//! layer files, owned by host root, appear as the overflow id 65534; and
//! with the same capabilities (CAP_MKNOD added, CAP_DAC_OVERRIDE in the
//! default set), namespace root can neither write into a host-root-owned
//! 0755 directory of the layer nor make a device node, both of which the
//! container without a user namespace does.

use anyhow::{ensure, Result};

use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "userns")?;
    let c = &run.console;
    for name in ["jailed", "mapped", "plain"] {
        let exited = c.expect("container.exited", &[("name", name)])?;
        ensure!(exited.get("code") == Some("0"), "{name} exited with {:?}", exited.fields);
    }

    let j = c.expect("userns", &[("name", "jailed")])?;
    let p = c.expect("userns", &[("name", "plain")])?;
    let m = c.expect("userns", &[("name", "mapped")])?;
    let want = |l: &crate::console::Line, key: &str, v: &str| {
        ensure!(l.get(key) == Some(v), "{key} is {:?}, want {v}: {:?}", l.get(key), l.fields);
        Ok(())
    };
    // Root inside, 100000 outside.
    want(j, "uid", "0")?;
    want(j, "gid", "0")?;
    want(j, "uid_map", "0:100000:65536")?;
    want(j, "gid_map", "0:100000:65536")?;
    want(j, "groups", "10")?;
    want(j, "layer_owner", "65534")?;
    want(j, "root_write", "ok")?;
    want(j, "root_owner", "0")?;
    want(j, "tmp_write", "EACCES")?;
    want(j, "mknod", "EPERM")?;
    want(j, "nested", "EPERM")?;
    // The capability sets are reduced exactly as without a user namespace.
    let default_plus_mknod = cairn_format::manifest::DEFAULT_CAPABILITIES | (1 << 27);
    want(j, "cap_eff", &format!("{default_plus_mknod:016x}"))?;
    want(p, "cap_eff", &format!("{default_plus_mknod:016x}"))?;

    // Without a user namespace it is as before: host root, which can.
    want(p, "uid", "0")?;
    want(p, "uid_map", "0:0:4294967295")?;
    want(p, "groups", "10")?;
    want(p, "layer_owner", "0")?;
    want(p, "root_write", "ok")?;
    want(p, "tmp_write", "ok")?;
    want(p, "mknod", "ok")?;
    want(p, "nested", "EPERM")?;

    // The explicit maps, running as a mapped non-root id.
    want(m, "uid", "1000")?;
    want(m, "gid", "1000")?;
    want(m, "uid_map", "0:200000:1")?;
    want(m, "layer_owner", "65534")?;
    want(m, "root_owner", "1000")?;
    want(m, "tmp_write", "EACCES")?;
    // A non-root entrypoint keeps the default set (ambient), as without one.
    want(m, "cap_eff", &format!("{:016x}", cairn_format::manifest::DEFAULT_CAPABILITIES))?;
    Ok(())
}
