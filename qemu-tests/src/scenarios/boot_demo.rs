//! `boot-demo`: every container starts in its own namespaces, sees its own
//! hostname and a layered rootfs, and what it writes never reaches a layer.

use anyhow::{ensure, Context, Result};
use cairn_build::gpt;
use cairn_format::digest::Digest;
use std::io::{Read, Seek, SeekFrom};

use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("boot-demo")?;
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    // The data partition was formatted by the image builder and mounts.
    c.expect("data.mounted", &[("fs", "ext4"), ("path", "/run/cairn/data")])?;
    // No container networks: their modules are never loaded.
    for m in ["bridge.ko", "veth.ko", "nf_tables.ko"] {
        ensure!(c.first("module.loaded", &[("name", m)]).is_none(), "{m} loaded without container networks");
    }
    // Leaving the initramfs kept them open instead of copying them, and
    // closed them once the units were made (their memory freed).
    let switched = c.expect("rootfs.switched", &[])?;
    ensure!(switched.num("held_bytes").unwrap_or(0) > 1 << 20, "on-demand modules not kept: {:?}", switched.fields);
    let released = c.expect("modules.released", &[])?;
    ensure!(released.num("count").unwrap_or(0) >= 4, "on-demand modules kept: {:?}", released.fields);
    ensure!(released.index > switched.index, "released before the switch");
    // The initramfs's files are deleted (their memory freed) once the
    // first starts are issued, not on their path.
    let freed = c.expect("initramfs.freed", &[])?;
    ensure!(freed.num("removed").unwrap_or(0) >= 10, "{:?}", freed.fields);
    let first = c.expect("container.starting", &[])?;
    ensure!(freed.index > first.index, "the initramfs was freed before the first start");
    // The quota format is loaded after the first start is issued (no start
    // waits for it) and before the data partition's mount, which needs it.
    let late = c.expect("modules.late-done", &[("failed", "0")])?;
    let quota = c.expect("module.loaded", &[("name", "quota_v2.ko")])?;
    let data = c.expect("data.mounted", &[("quota", "prjquota")])?;
    ensure!(
        first.index < quota.index && quota.index < late.index && late.index < data.index,
        "quota_v2 not loaded between the first start and the data mount"
    );
    for name in ["alpha", "beta", "driver"] {
        c.expect("container.started", &[("name", name)])?;
    }
    // The default settings' seccomp filter was compiled ahead of the
    // manifest (resolve.rs's host test: it is the one they ask for).
    let ahead = c.expect("boot.ahead", &[])?;
    ensure!(ahead.get("seccomp") == Some("compiled"), "{:?}", ahead.fields);
    // The default device program is the containers' parent's, for every
    // container below it (hostile-rootfs's mknoder shows it is enforced).
    ensure!(ahead.get("devices_at") == Some("/sys/fs/cgroup/cairn"), "{:?}", ahead.fields);
    for (name, hostname, top) in [("alpha", "alpha", "app"), ("beta", "beta-host", "base")] {
        let i = c.expect("inspect", &[("name", hostname)]).with_context(|| format!("{name} printed nothing"))?;
        ensure!(
            i.get("pid") == Some("2"),
            "{name}: entrypoint is pid {:?}, want 2 (child of the namespace init)",
            i.get("pid")
        );
        ensure!(i.get("ppid") == Some("1"), "{name}: parent is {:?}, want the namespace init (1)", i.get("ppid"));
        ensure!(
            i.get("pid1_comm") == Some("init"),
            "{name}: PID 1 is {:?}, want cairn's namespace init",
            i.get("pid1_comm")
        );
        ensure!(i.get("hostname") == Some(hostname), "{name}: hostname {:?}", i.get("hostname"));
        ensure!(
            i.get("layer") == Some(top),
            "{name}: /etc/cairn-layer is {:?}, want {top:?} (top layer shadows)",
            i.get("layer")
        );
        ensure!(i.get("base") == Some("from-base"), "{name}: lower layer file {:?}", i.get("base"));
        c.expect("upper-write", &[("name", hostname), ("ok", "1")])?;
        let procs = c.expect("procs", &[("name", hostname)])?;
        ensure!(
            procs.get("count") == Some("2"),
            "{name}: sees {:?} processes, want 2 (own pid namespace)",
            procs.get("count")
        );
    }
    verity_boot(c, &app)?;
    // The write went to the scratch layer: every layer partition still
    // holds exactly the bytes the manifest names.
    let layout = gpt::read_layout(&disk)?;
    let mut f = std::fs::File::open(&disk)?;
    for (n, l) in app.layers.iter().enumerate() {
        let name = format!("cairn-layer-{:02}", n + 1);
        let p = layout.find(&name).with_context(|| format!("{name} missing"))?;
        f.seek(SeekFrom::Start(p.offset_bytes))?;
        let mut buf = vec![0u8; l.size as usize];
        f.read_exact(&mut buf)?;
        ensure!(Digest::of(&buf) == l.digest, "layer {} changed on disk after the boot", l.name);
    }
    Ok(())
}

/// verity-boot (issue 10), on this boot: every layer is behind its own
/// dm-verity target, set up from the signed manifest (the event names the
/// dm device and the manifest's root hash), nothing is hashed at boot, and
/// every target is removed at shutdown.
fn verity_boot(c: &crate::console::Console, app: &cairn_build::assemble::BuiltAppliance) -> Result<()> {
    let mut devices = Vec::new();
    for l in &app.manifest.layers {
        let root = l.verity.root_hash.to_string();
        let m = c.expect("layer.mounted", &[("name", &l.name), ("check", "verity"), ("root", &root)])?;
        let dm = m.get("dm").unwrap_or("");
        ensure!(dm.starts_with("dm-") && !devices.contains(&dm), "layer {}: dm device {dm:?}", l.name);
        devices.push(dm);
    }
    let n = app.manifest.layers.len().to_string();
    c.expect("dm.removed", &[("count", &n), ("of", &n)])?;
    ensure!(c.first("layer.corrupt", &[]).is_none(), "a layer reported corrupt");
    Ok(())
}
