//! `hostile`: a root payload tries to escape or harm the device; every
//! attempt fails with the errno the payload prints, and the host and the
//! other containers are unaffected.

use anyhow::{ensure, Result};

use crate::Ctx;

/// Every attempt the payload makes, each of which must be blocked, with
/// the errno (by name, `-` for none) it must fail with: another errno means
/// a different layer stopped it (or nothing did, and the call failed on
/// its arguments), so the check fails.
const ATTEMPTS: [(&str, &str); 33] = [
    ("mount", "EPERM"),           // seccomp
    ("umount", "EPERM"),          // seccomp
    ("raw-block-open", "ENOENT"), // no disk node in the container's /dev
    ("mknod-block", "EPERM"),     // no CAP_MKNOD
    ("mknod-char", "EPERM"),      // no CAP_MKNOD
    // seccomp or the CAP_SYS_MODULE check; ENOEXEC would mean the kernel
    // parsed the image, i.e. nothing refused the call.
    ("module-load", "EPERM"),
    ("kexec", "EPERM"),                 // seccomp
    ("reboot", "EPERM"),                // seccomp
    ("sysrq", "EROFS"),                 // /proc/sysrq-trigger read-only
    ("clock-set", "EPERM"),             // seccomp
    ("sethostname", "EPERM"),           // no CAP_SYS_ADMIN
    ("ptrace-hidden", "EPERM"),         // seccomp
    ("ptrace-init", "EPERM"),           // seccomp
    ("keyctl", "EPERM"),                // seccomp
    ("bpf", "EPERM"),                   // seccomp
    ("userns", "EPERM"),                // seccomp (CLONE_NEWUSER)
    ("cgroup-write", "EROFS"),          // cgroupfs read-only
    ("chroot-escape", "-"),             // chroot works, the escape does not
    ("proc-other-container", "EACCES"), // the host paths through /proc/1/root
    ("rlimit-raise", "EPERM"),          // no CAP_SYS_RESOURCE
    ("proc-exe-write", "EACCES"),
    ("proc-exe-opath", "EACCES"),
    ("proc-sys-write", "EROFS"), // /proc/sys read-only
    ("dev-mem", "ENOENT"),       // no /dev/mem node
    // seccomp: unknown syscall numbers and terminal ioctls.
    ("syscall-1000", "ENOSYS"),
    ("syscall-first-unknown", "ENOSYS"),
    ("tiocsti", "EPERM"),   // the kernel (before 6.2) allows it on the own controlling tty
    ("tioclinux", "EPERM"), // the kernel says ENOTTY on a pty
    // Filesystem reach (issue 8, rootfs); the attacker has no layer device,
    // no CAP_MKNOD and no control directory (hostile-rootfs tests them).
    ("dev-console", "ENOENT"),    // /dev/console is not bound in
    ("layer-device", "ENOENT"),   // no such node in its layers
    ("mknod-disk", "EPERM"),      // no CAP_MKNOD
    ("control-unlink", "ENOENT"), // no control directory
    // Layers behind dm-verity (issue 10).
    ("dm-control", "ENOENT"), // no /dev/mapper/control node
];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "hostile")?;
    let c = &run.console;
    let mut failures = Vec::new();
    for (name, err) in ATTEMPTS {
        match c.first("attempt", &[("name", name)]) {
            None => failures.push(format!("{name}: no attempt line")),
            Some(l) if l.get("result") != Some("blocked") => failures.push(format!("{name}: {:?}", l.fields)),
            Some(l) if l.get("err") != Some(err) => failures.push(format!("{name}: want {err}, got {:?}", l.fields)),
            Some(_) => {}
        }
    }
    ensure!(failures.is_empty(), "attempts not blocked as expected: {}", failures.join("; "));
    let done = c.expect("hostile-done", &[("name", "attacker")])?;
    ensure!(
        done.get("attempts") == Some(ATTEMPTS.len().to_string().as_str()),
        "the payload made {:?} attempts, this list has {}",
        done.get("attempts"),
        ATTEMPTS.len()
    );
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
    let want = format!("{:016x}", cairn_format::manifest::DEFAULT_CAPABILITIES);
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
