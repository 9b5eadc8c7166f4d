//! `exec` (issue 14 item 4): `cairn-ctl exec` into a running container,
//! from containers granted `exec`. The command sees what the target's
//! entrypoint sees: every namespace (its hostname on its output line), the
//! root and cwd, the cgroup, uid/gid/groups, capability sets (CapEff equal
//! to the entrypoint's), no_new_privs and the seccomp filter; its parent is
//! the target's namespace init (pid 1), which reaps it; its exit code (7),
//! a signal's (128 + 9), a missing program's (127) come back as
//! `cairn-ctl`'s; a bare name is looked up in the target's PATH; under a
//! user namespace too. With `-t` the command's stdio and controlling
//! terminal is a pseudo-terminal's slave, relayed by `cairn-ctl`. A container without `exec` is refused
//! (`control.refused` naming it; `cairn-ctl` exits 125). `-u UID:GID` runs
//! the command as those ids with no supplementary groups, `-e KEY=VAL`
//! adds to its environment, everything else stays the entrypoint's; under
//! a user namespace a uid outside its map is refused (125, nothing runs).
//! The helpers' events reach `events --follow` through PID 1.

use anyhow::{ensure, Result};

use crate::Ctx;

/// Fields of `whoami` that must be the entrypoint's.
const SAME: [&str; 22] = [
    "name",
    "uid",
    "gid",
    "groups",
    "eff",
    "prm",
    "bnd",
    "amb",
    "nnp",
    "seccomp",
    "filters",
    "pidns",
    "mntns",
    "netns",
    "utsns",
    "ipcns",
    "cgroupns",
    "userns",
    "root",
    "cwd",
    "cgroup",
    "pid1_comm",
];

pub fn run(ctx: &Ctx) -> Result<()> {
    let run = super::boot_until_poweroff(ctx, "exec")?;
    let c = &run.console;
    let mut failures = Vec::new();
    for (host, caller, label) in [("target-host", "execer", "exec-target"), ("jailed", "exec-jailed", "exec-jailed")] {
        let entry = c.expect("whoami", &[("name", host), ("label", "entry")])?;
        let Some(exec) = c.first("whoami", &[("label", label)]) else {
            failures.push(format!("{caller}: no whoami from the exec'd command in {host}"));
            continue;
        };
        for k in SAME {
            if entry.get(k) != exec.get(k) || entry.get(k).is_none() {
                failures.push(format!(
                    "{caller}: {k} {:?} in the exec'd command, {:?} in the entrypoint",
                    exec.get(k),
                    entry.get(k)
                ));
            }
        }
        if exec.get("ppid") != Some("1") {
            failures.push(format!("{caller}: parent {:?}, not the namespace init", exec.get("ppid")));
        }
        match c.first("container.exited", &[("name", caller)]) {
            Some(l) if l.get("code") == Some("0") => {}
            other => failures.push(format!("{caller}: ended {:?}", other.map(|l| &l.fields))),
        }
    }
    // The target is not trivially like anyone: its settings show.
    let entry = c.expect("whoami", &[("name", "target-host"), ("label", "entry")])?;
    ensure!(
        entry.get("uid") == Some("1000")
            && entry.get("groups") == Some("2000")
            && entry.get("cwd") == Some("/etc")
            && entry.get("seccomp") == Some("2")
            && entry.get("nnp") == Some("1")
            && entry.get("eff") == Some("0000000000000420"),
        "target's entrypoint: {:?}",
        entry.fields
    );
    let jailed = c.expect("whoami", &[("name", "jailed"), ("label", "entry")])?;
    ensure!(jailed.get("uid") == Some("0"), "jailed's entrypoint: {:?}", jailed.fields);
    // Exit codes: the command's, 128 + a signal, 127 for a missing program.
    for (caller, code) in [("exec-code", "7"), ("exec-signal", "137"), ("exec-missing", "127")] {
        match c.first("container.exited", &[("name", caller)]) {
            Some(l) if l.get("code") == Some(code) => {}
            other => failures.push(format!("{caller}: wanted code {code}, ended {:?}", other.map(|l| &l.fields))),
        }
        if c.first("container.exec-exited", &[("target", "target"), ("code", code)]).is_none() {
            failures.push(format!("{caller}: no container.exec-exited code={code}"));
        }
    }
    match c.first("control.exec", &[("caller", "execer"), ("target", "target"), ("argv0", "/bin/cairn-payload")]) {
        Some(l) if l.num("pid").is_some_and(|p| p > 1) => {}
        other => failures.push(format!("control.exec of execer: {:?}", other.map(|l| &l.fields))),
    }
    // -t: the slave of a pseudo-terminal cairn-ctl opened is the command's
    // stdio and controlling terminal; it leads its session and is the
    // foreground group. Pushing ^C into it (TIOCSTI) is EPERM: the target's
    // seccomp filter denies it without SYS_ADMIN, in the exec'd command too.
    // (Lines come through the terminal: they end in \r.)
    let v = |l: &crate::console::Line, k: &str| l.get(k).map(|v| v.trim_end_matches('\r').to_owned());
    match c.first("tty", &[("name", "target-host")]) {
        Some(l)
            if v(l, "stdio").as_deref() == Some("111")
                && v(l, "tty_nr").is_some_and(|t| t != "0")
                && v(l, "sid").is_some()
                && v(l, "sid") == v(l, "pid")
                && v(l, "fg") == v(l, "pgrp") => {}
        other => failures.push(format!("exec -t: {:?}", other.map(|l| &l.fields))),
    }
    match c.first("tty-sigint", &[("name", "target-host")]) {
        Some(l) if v(l, "sti").as_deref() == Some("EPERM") && v(l, "sigints").as_deref() == Some("0") => {}
        other => failures.push(format!("exec -t ^C: {:?}", other.map(|l| &l.fields))),
    }
    match c.first("container.exited", &[("name", "exec-tty")]) {
        Some(l) if l.get("code") == Some("0") => {}
        other => failures.push(format!("exec-tty: ended {:?}", other.map(|l| &l.fields))),
    }
    // -u and -e: those ids, that variable; namespaces and cgroup the same.
    let entry = c.expect("whoami", &[("name", "target-host"), ("label", "entry")])?;
    ensure!(entry.get("probe_env") == Some("unset"), "target's entrypoint: {:?}", entry.fields);
    match c.first("whoami", &[("label", "exec-user")]) {
        Some(l)
            if l.get("uid") == Some("4242")
                && l.get("gid") == Some("4343")
                && l.get("groups") == Some("-")
                && l.get("probe_env") == Some("two_words")
                && ["pidns", "mntns", "cgroup", "root", "seccomp"].iter().all(|k| l.get(k) == entry.get(k)) => {}
        other => failures.push(format!("exec -u -e: {:?}", other.map(|l| &l.fields))),
    }
    let jailed = c.expect("whoami", &[("name", "jailed"), ("label", "entry")])?;
    match c.first("whoami", &[("label", "exec-jailed-user")]) {
        Some(l)
            if l.get("uid") == Some("1234") && l.get("gid") == Some("0") && l.get("userns") == jailed.get("userns") => {
        }
        other => failures.push(format!("exec -u under a user namespace: {:?}", other.map(|l| &l.fields))),
    }
    for caller in ["exec-user", "exec-jailed-user"] {
        match c.first("container.exited", &[("name", caller)]) {
            Some(l) if l.get("code") == Some("0") => {}
            other => failures.push(format!("{caller}: ended {:?}", other.map(|l| &l.fields))),
        }
    }
    match c.first("control.request", &[("caller", "exec-unmapped")]) {
        Some(l) if l.get("reply") == Some("error uid 70000 is not mapped in the container's user namespace") => {}
        other => failures.push(format!("exec -u unmapped: {:?}", other.map(|l| &l.fields))),
    }
    if c.first("whoami", &[("label", "exec-unmapped")]).is_some()
        || c.first("control.exec", &[("caller", "exec-unmapped")]).is_some()
    {
        failures.push("exec -u unmapped: its command ran".into());
    }
    match c.first("container.exited", &[("name", "exec-unmapped")]) {
        Some(l) if l.get("code") == Some("125") => {}
        other => failures.push(format!("exec-unmapped: wanted code 125, ended {:?}", other.map(|l| &l.fields))),
    }
    // Refused without the permission, with nothing run.
    if c.first("control.refused", &[("caller", "noexec"), ("request", "exec"), ("needs", "exec")]).is_none() {
        failures.push("noexec: no control.refused".into());
    }
    if c.first("control.exec", &[("caller", "noexec")]).is_some() {
        failures.push("noexec: its command ran".into());
    }
    match c.first("container.exited", &[("name", "noexec")]) {
        Some(l) if l.get("code") == Some("125") => {}
        other => failures.push(format!("noexec: wanted code 125, ended {:?}", other.map(|l| &l.fields))),
    }
    // The helpers' events come through PID 1: `events --follow` has them
    // (execer's exec once).
    let followed =
        |needle: &str| c.raw.iter().filter(|l| l.starts_with("[follower] cairn: t=") && l.contains(needle)).count();
    for needle in [
        "event=control.exec caller=execer target=target argv0=/bin/cairn-payload",
        "event=container.exec-exited target=target",
    ] {
        if followed(needle) == 0 {
            failures.push(format!("events --follow: no {needle:?}"));
        }
    }
    if followed("event=control.exec caller=execer ") != 1 {
        failures.push("events --follow: control.exec of execer not once".into());
    }
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
