//! `hostile`: a root payload tries to escape or harm the device; every
//! attempt fails with the errno the payload prints, and the host and the
//! other containers are unaffected.

use anyhow::{ensure, Result};

use crate::Ctx;

/// Every attempt the payload makes, each of which must be blocked.
const ATTEMPTS: [&str; 25] = [
    "mount",
    "umount",
    "raw-block-open",
    "mknod-block",
    "mknod-char",
    "module-load",
    "kexec",
    "reboot",
    "sysrq",
    "clock-set",
    "sethostname",
    "ptrace-hidden",
    "ptrace-init",
    "keyctl",
    "bpf",
    "userns",
    "cgroup-write",
    "chroot-escape",
    "proc-other-container",
    "rlimit-raise",
    "proc-exe-write",
    "proc-exe-opath",
    "proc-sys-write",
    "dev-mem",
    // Filesystem reach (issue 8, rootfs).
    "dev-console",
];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "hostile")?;
    let c = &run.console;
    let mut failures = Vec::new();
    for name in ATTEMPTS {
        match c.first("attempt", &[("name", name)]) {
            None => failures.push(format!("{name}: no attempt line")),
            Some(l) if l.get("result") != Some("blocked") => failures.push(format!("{name}: {:?}", l.fields)),
            Some(_) => {}
        }
    }
    ensure!(failures.is_empty(), "attempts not blocked: {}", failures.join("; "));
    let done = c.expect("hostile-done", &[("name", "attacker")])?;
    ensure!(done.get("allowed") == Some("0"), "hostile-done says {:?}", done.fields);

    // The neighbour ran through it all and was only stopped at shutdown.
    c.expect("inspect", &[("name", "victim")])?;
    let stopping = c.expect("container.stopping", &[("name", "victim")])?;
    let exited = c.expect("container.exited", &[("name", "victim")])?;
    ensure!(stopping.index < exited.index, "victim died before the shutdown");
    // The host's hostname is untouched.
    let shutdown = c.expect("shutdown.start", &[])?;
    ensure!(shutdown.get("hostname") != Some("hostile-was-here"), "the host hostname changed");

    // The capability sets are the documented default, nothing ambient beyond it.
    let caps = c.expect("caps", &[("name", "caps")])?;
    let want = format!("{:016x}", cairn_images::manifest::DEFAULT_CAPABILITIES);
    for set in ["eff", "prm", "bnd"] {
        ensure!(caps.get(set) == Some(want.as_str()), "{set} is {:?}, want {want}", caps.get(set));
    }
    ensure!(caps.get("nnp") == Some("1"), "no_new_privs not set: {:?}", caps.fields);
    ensure!(caps.get("seccomp") == Some("2"), "seccomp not in filter mode: {:?}", caps.fields);

    // cap_add SYS_TIME opens clock_settime; seccomp_deny closes it again.
    let kept = c.expect("one-attempt", &[("name", "timekeeper"), ("attempt", "clock-set")])?;
    ensure!(kept.get("result") == Some("ALLOWED"), "SYS_TIME kept, clock_settime: {:?}", kept.fields);
    let denied = c.expect("one-attempt", &[("name", "timekeeper-denied"), ("attempt", "clock-set")])?;
    ensure!(
        denied.get("result") == Some("blocked") && denied.get("errno") == Some("1"), // EPERM
        "SYS_TIME kept but clock_settime in seccomp_deny: {:?}",
        denied.fields
    );

    // Filesystem reach (issue 8, rootfs): no console in the container.
    let console = c.expect("attempt", &[("name", "dev-console")])?;
    ensure!(console.get("errno") == Some("2"), "/dev/console: want ENOENT, got {:?}", console.fields); // ENOENT
    Ok(())
}
