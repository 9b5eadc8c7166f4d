//! `hostile-rootfs` (issue 8, filesystem reach): what a container can reach
//! through its filesystem. Layers built here with mksquashfs pseudo
//! definitions (not with `cairn layer build`, which refuses device nodes):
//! a block device node with the boot disk's numbers, and symlinks at fixed
//! targets (`run -> /`, `dev -> /`). Pinned outcomes:
//! - the layer's device node does not open: EACCES (the overlay is nodev);
//! - with CAP_MKNOD kept, mknod of the boot disk's numbers in /dev: EPERM
//!   from the cgroup device program, while mknod of c 1:3 works, at the
//!   first start and at every restart (the program is the containers'
//!   parent's, given to each new cgroup);
//! - /dev/console does not exist: ENOENT;
//! - in the read-only control directory, unlink of PID 1's socket and bind
//!   of another: EROFS; a `status` request still gets `ok`;
//! - a symlink at a fixed target fails the container with a
//!   `container.failed` event naming it; the rest of the device goes on;
//! - under a user namespace on a network, `etc -> /run/cairn` fails PID 1's
//!   own part of the start (the mount point of /etc/hosts, made as real
//!   root), before anything is made through the link.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use cairn_build::assemble;

use crate::Ctx;

/// Build a squashfs layer of pseudo definitions only.
fn pseudo_layer(out: &Path, empty: &Path, defs: &[&str]) -> Result<()> {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(empty).arg(out).args(["-noappend", "-comp", "gzip", "-all-root", "-quiet", "-no-progress"]);
    for d in defs {
        cmd.args(["-p", d]);
    }
    let st = cmd.status().context("running mksquashfs (install squashfs-tools)")?;
    if !st.success() {
        bail!("mksquashfs {} failed: {st}", out.display());
    }
    Ok(())
}

const TOML: &str = r#"appliance = "hostile-rootfs"
version = 1
compatible = "cairn-qemu-dev"

[[layer]]
name = "tools"
source = "build:payload"

[[layer]]
name = "devnode"
file = "devnode.squashfs"

[[layer]]
name = "runlink"
file = "runlink.squashfs"

[[layer]]
name = "devlink"
file = "devlink.squashfs"

[[layer]]
name = "etclink"
file = "etclink.squashfs"

[[network]]
name = "lan"
subnet = "10.89.7.0/24"

[[container]]
name = "layer-device"
layers = ["tools", "devnode"]
argv = ["/bin/cairn-payload", "attempt", "layer-device"]
restart = { policy = "never" }

[[container]]
name = "mknoder"
layers = ["tools"]
argv = ["/bin/cairn-payload", "attempt", "mknod-disk"]
security = { cap_add = ["MKNOD"] }
# Restarted: every start's cgroup gets the program from the containers' parent.
restart = { policy = "always", backoff_initial_ms = 500, backoff_max_ms = 2000 }

[[container]]
name = "no-console"
layers = ["tools"]
argv = ["/bin/cairn-payload", "attempt", "dev-console"]
restart = { policy = "never" }

[[container]]
name = "controller"
layers = ["tools"]
argv = ["/bin/cairn-payload", "attempt", "control-unlink"]
control = true
restart = { policy = "never" }

[[container]]
name = "run-link"
layers = ["tools", "runlink"]
argv = ["/bin/cairn-payload", "attempt", "dev-console"]
control = true
restart = { policy = "never" }

[[container]]
name = "dev-link"
layers = ["tools", "devlink"]
argv = ["/bin/cairn-payload", "attempt", "dev-console"]
restart = { policy = "never" }

# On a network under a user namespace: PID 1 makes the mount point of its
# /etc/hosts in the rootfs as real root, where the layer has `etc -> /run/cairn`.
[[container]]
name = "etc-link"
layers = ["tools", "etclink"]
argv = ["/bin/cairn-payload", "attempt", "dev-console"]
networks = ["lan"]
security = { userns = 100000 }
restart = { policy = "never" }

[[container]]
name = "driver"
layers = ["tools"]
argv = ["/bin/cairn-payload", "ctl", "--delay-ms", "10000", "poweroff"]
control = true
restart = { policy = "never" }
"#;

/// Container, attempt, errno, and fields the line must also have.
type Pinned = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)]);

pub fn run(ctx: &Ctx) -> Result<()> {
    let empty = ctx.dir.join("empty");
    std::fs::create_dir_all(&empty)?;
    pseudo_layer(&ctx.dir.join("devnode.squashfs"), &empty, &["layer-disk b 600 0 0 254 0"])?;
    pseudo_layer(&ctx.dir.join("runlink.squashfs"), &empty, &["run s 777 0 0 /"])?;
    pseudo_layer(&ctx.dir.join("devlink.squashfs"), &empty, &["dev s 777 0 0 /"])?;
    pseudo_layer(&ctx.dir.join("etclink.squashfs"), &empty, &["etc s 777 0 0 /run/cairn"])?;
    let path = ctx.dir.join("hostile-rootfs.toml");
    std::fs::write(&path, TOML)?;
    let sources = BTreeMap::from([("payload".to_owned(), ctx.art.payload_root.clone())]);
    let app = assemble::build_appliance(&path, &sources, &ctx.art.key, &ctx.dir.join("layers"))
        .with_context(|| format!("building {}", path.display()))?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let run = ctx.boot(&disk, super::BOOT_TIMEOUT, &super::until_exit)?;
    let c = &run.console;

    // Every check is collected (so a run against the old behaviour shows
    // each one that fails), the power-off last.
    let mut failures = Vec::new();
    let pinned: [Pinned; 4] = [
        ("layer-device", "layer-device", "13", &[]), // EACCES: nodev overlay
        ("mknoder", "mknod-disk", "1", &[("at", "mknod"), ("null", "ok")]), // EPERM: device program
        ("no-console", "dev-console", "2", &[]),     // ENOENT
        ("controller", "control-unlink", "30", &[("bind_errno", "30"), ("status", "ok")]), // EROFS
    ];
    for (name, attempt, errno, extra) in pinned {
        let Some(l) = c.first("one-attempt", &[("name", name), ("attempt", attempt)]) else {
            failures.push(format!("{name}: no one-attempt line"));
            continue;
        };
        let mut ok = l.get("result") == Some("blocked") && l.get("errno") == Some(errno);
        for (k, v) in extra {
            ok &= l.get(k) == Some(*v);
        }
        if !ok {
            failures.push(format!("{name}: want errno {errno} {extra:?}, got {:?}", l.fields));
        }
    }
    // Every run of mknoder, not only the first: each start's new cgroup
    // gets the default program from the containers' parent.
    let runs = c.all("one-attempt", &[("name", "mknoder")]);
    let blocked = runs.iter().filter(|l| l.get("result") == Some("blocked") && l.get("errno") == Some("1")).count();
    if runs.len() < 3 || blocked != runs.len() {
        failures.push(format!("mknoder: {blocked} of {} runs blocked with EPERM (want at least 3, all)", runs.len()));
    }
    for (name, link) in [("run-link", "/rootfs/run"), ("dev-link", "/rootfs/dev")] {
        match c.first("container.failed", &[("name", name)]) {
            None => failures.push(format!("{name}: started despite a symlink at {link}")),
            Some(l) => {
                // The step whose path holds the symlink, and the walk's ELOOP.
                let path = l.get("path").unwrap_or("");
                let at_link = path.contains(&format!("{name}{link}/")) || path.ends_with(&format!("{name}{link}"));
                if !(l.get("stage") == Some("rootfs") && l.get("error") == Some("ELOOP") && at_link) {
                    failures.push(format!("{name}: container.failed does not name {link}: {:?}", l.fields));
                }
            }
        }
        if c.first("one-attempt", &[("name", name)]).is_some() {
            failures.push(format!("{name}: its payload ran"));
        }
    }
    // PID 1's own part refused the symlink (it resolves the rootfs's paths
    // inside it), before it could make a file through it on the host.
    match c.first("container.failed", &[("name", "etc-link")]) {
        Some(l)
            if l.get("error")
                .is_some_and(|e| e.starts_with("user namespace:") && e.contains("etc-link/rootfs/etc")) => {}
        other => failures.push(format!("etc-link: not refused by PID 1's part: {:?}", other.map(|l| &l.fields))),
    }
    if c.first("one-attempt", &[("name", "etc-link")]).is_some() {
        failures.push("etc-link: its payload ran".into());
    }
    // The device went on: the driver's poweroff was answered and done.
    match c.first("ctl", &[("name", "driver")]) {
        Some(l) if l.get("reply").is_some_and(|r| r.starts_with("ok")) => {}
        other => failures.push(format!("driver: poweroff not answered: {:?}", other.map(|l| &l.fields))),
    }
    if let Err(e) = super::powered_off(&run) {
        failures.push(format!("{e:#}"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}
