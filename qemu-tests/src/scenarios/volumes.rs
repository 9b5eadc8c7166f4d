//! `volumes` (issue 14 item 1): named volumes on the data partition, booted
//! twice on the same disk.
//!
//! First boot: PID 1 creates each volume (`volume.created`), `writer`
//! (uid 1000) writes a note and an fsync'd record into `store`, and the
//! tmpfs volume `scratch`. Second boot: the record is there, `scratch` is
//! empty again, no volume is created again. Every boot: `viewer`, which
//! mounts `store` and `jail` read-only, gets EROFS; `outsider`, which
//! mounts nothing, reaches neither the volume nor the data partition;
//! `filler` fills its 1 MiB volume `small` and gets EDQUOT (the ext4
//! project quota; never ENOSPC: the partition has room), then writes 1 MiB
//! to its volume `big` without trouble; `jailed` (user namespace, uid 1000
//! inside) writes into `jail`, and the files are its own inside
//! (1000:1000) and the mapped ids outside (101000:101000, as `viewer`,
//! without a user namespace, sees them; `volume.ready` names that owner).
//! No container can move its record out of the volume's project quota
//! (FS_IOC_FSSETXATTR: EPERM from the seccomp filter). `jailed` also
//! writes into a tmpfs volume of its own (`jailtmp`), owned by its mapped ids.
//!
//! Third boot (`volumes-prune`, on a new disk holding the same data
//! partition): its manifest names only `store`, so `big`, `small` and
//! `jail` are unused (`volume.unused`). A container without the `volumes`
//! permission is refused `volume prune`; one with it prunes: the three
//! are deleted (`volume.pruned`, with what they held), `store` is not
//! (`keeper`, which mounts it, finds its record after the prune), and a
//! second prune, and `cairn-ctl volume prune` after it, find nothing.
//!
//! Fourth boot (`volumes-none`, the prune's data partition on a new disk):
//! no persistent volume, so PID 1 mounts the data partition only once the
//! containers' starts are under way; `store` is then reported unused.

use anyhow::{ensure, Context as _, Result};

use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::console::{Console, Line};
use crate::Ctx;

fn want(l: &Line, key: &str, v: &str) -> Result<()> {
    ensure!(l.get(key) == Some(v), "{key} is {:?}, want {v}: {:?}", l.get(key), l.fields);
    Ok(())
}

/// What holds on both boots.
fn every_boot(c: &Console, boot: u32) -> Result<()> {
    for name in ["writer", "viewer", "outsider", "filler", "jailed"] {
        let exited = c.expect("container.exited", &[("name", name)]).with_context(|| format!("boot {boot}"))?;
        ensure!(exited.get("code") == Some("0"), "boot {boot}: {name} exited with {:?}", exited.fields);
    }
    c.expect("data.mounted", &[("quota", "prjquota")])?;
    for v in ["store", "small", "big", "jail"] {
        c.expect("volume.ready", &[("name", v), ("kind", "persistent")]).with_context(|| format!("boot {boot}"))?;
    }
    let jail = c.expect("volume.ready", &[("name", "jail")])?;
    want(jail, "owner", "101000:101000")?;
    want(jail, "mode", "750")?;
    want(jail, "size_bytes", "1048576")?;
    want(c.expect("volume.ready", &[("name", "store")])?, "owner", "1000:1000")?;
    c.expect("volume.created", &[("name", "scratch"), ("kind", "tmpfs")])?;
    ensure!(c.first("volume.failed", &[]).is_none(), "boot {boot}: a volume failed");
    ensure!(c.first("volume.unlimited", &[]).is_none(), "boot {boot}: a volume has no limit");

    // Read-only mounts refuse writes with EROFS.
    for dir in ["/store", "/jail"] {
        want(c.expect("volume-ro", &[("name", "viewer"), ("dir", dir)])?, "write", "EROFS")?;
    }
    // A container without the volume reaches none of it.
    for p in ["/var/lib/app", "/store", "/run/cairn/data", "/run/cairn/data/volumes/store"] {
        want(c.expect("volume-absent", &[("name", "outsider"), ("path", p)])?, "result", "ENOENT")?;
    }
    // The 1 MiB volume is full with EDQUOT; the other volume does not notice.
    let fill = c.expect("volume-fill", &[("name", "filler")])?;
    want(fill, "err", "EDQUOT")?;
    want(fill, "other_write", "ok")?;
    let kib = fill.num("wrote_kib").unwrap_or(0);
    ensure!((900..=1024).contains(&kib), "boot {boot}: wrote {kib} KiB into a 1 MiB volume");
    // The jailed container's files: its own ids inside.
    let j = c.expect("volume-check", &[("name", "jailed"), ("dir", "/jail")])?;
    want(j, "record_owner", "1000:1000")?;
    want(j, "dir_owner", "1000:1000")?;
    // No container moves its file out of the volume's quota (the owner
    // could, in the host's user namespace: the seccomp filter says no).
    want(c.expect("volume-check", &[("name", "writer"), ("dir", "/var/lib/app")])?, "project", "EPERM")?;
    want(j, "project", "EPERM")?;
    // A tmpfs volume under a user namespace: reachable, owned by the mapped ids.
    let t = c.expect("volume-check", &[("name", "jailed"), ("dir", "/jailtmp")])?;
    want(t, "found", "missing")?;
    want(t, "written", "ok")?;
    want(t, "dir_owner", "1000:1000")?;
    want(c.expect("volume.created", &[("name", "jailtmp")])?, "owner", "101000:101000")?;
    Ok(())
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("volumes")?;
    let (disk, layout) = ctx.disk(&app, "disk.img")?;
    let opts = crate::qemu::BootOptions::default();

    let first = ctx.boot_with(&disk, &opts, "first.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&first)?;
    let c = &first.console;
    every_boot(c, 1)?;
    for v in ["store", "small", "big", "jail"] {
        c.expect("volume.created", &[("name", v), ("kind", "persistent")])?;
    }
    for dir in ["/var/lib/app", "/scratch"] {
        let w = c.expect("volume-check", &[("name", "writer"), ("dir", dir)])?;
        want(w, "found", "missing")?;
        want(w, "written", "ok")?;
        want(w, "record_owner", "1000:1000")?;
    }
    want(c.expect("volume-check", &[("name", "writer"), ("dir", "/var/lib/app")])?, "dir_mode", "700")?;
    want(c.expect("volume-check", &[("name", "jailed"), ("dir", "/jail")])?, "written", "ok")?;

    let second = ctx.boot_with(&disk, &opts, "second.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&second)?;
    let c = &second.console;
    every_boot(c, 2)?;
    ensure!(
        c.first("volume.created", &[("kind", "persistent")]).is_none(),
        "a persistent volume was created again on the second boot"
    );
    // The record survived the reboot; the tmpfs volume starts empty.
    let w = c.expect("volume-check", &[("name", "writer"), ("dir", "/var/lib/app")])?;
    want(w, "found", "record-1")?;
    want(w, "written", "skipped")?;
    let s = c.expect("volume-check", &[("name", "writer"), ("dir", "/scratch")])?;
    want(s, "found", "missing")?;
    let j = c.expect("volume-check", &[("name", "jailed"), ("dir", "/jail")])?;
    want(j, "found", "record-1")?;
    // From the host's ids (viewer has no user namespace): the mapped owner.
    let v = c.expect("volume-ro", &[("name", "viewer"), ("dir", "/jail")])?;
    want(v, "found", "record-1")?;
    want(v, "record_owner", "101000:101000")?;
    want(v, "dir_owner", "101000:101000")?;
    want(c.expect("volume-ro", &[("name", "viewer"), ("dir", "/store")])?, "found", "record-1")?;
    // The full volume's usage is what the quota counted.
    let used = c.expect("volume.ready", &[("name", "small")])?.num("used_bytes").unwrap_or(0);
    ensure!(used >= 900 << 10, "small reports {used} bytes used after the first boot filled it");
    prune(ctx, &disk, &layout, &opts)
}

/// The third boot: `volume prune` with a manifest that names only `store`.
fn prune(
    ctx: &Ctx,
    old: &std::path::Path,
    old_layout: &cairn_build::gpt::DiskLayout,
    opts: &crate::qemu::BootOptions,
) -> Result<()> {
    // The data partition the first two boots wrote, onto the new disk.
    let (disk, layout) = with_data_of(ctx, "volumes-prune", "prune.img", old, old_layout)?;
    let run = ctx.boot_with(&disk, opts, "prune.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let unused = c.expect("volume.unused", &[])?;
    let mut names: Vec<&str> = unused.get("names").unwrap_or_default().split(',').collect();
    names.sort_unstable();
    ensure!(names == ["big", "jail", "small"], "unused: {:?}", unused.fields);
    // Refused without the permission.
    want(c.expect("control.refused", &[("caller", "nosy"), ("request", "volume-prune")])?, "needs", "volumes")?;
    want(c.expect("ctl", &[("name", "nosy")])?, "reply", "error_not_permitted")?;
    // Pruned: the three unused volumes, and only them.
    let replies: Vec<&str> = c.all("ctl", &[("name", "pruner")]).iter().filter_map(|l| l.get("reply")).collect();
    ensure!(replies == ["ok_pruned_big,jail,small", "ok_nothing_to_prune"], "pruner: {replies:?}");
    for (v, least) in [("big", 1 << 20), ("small", 900 << 10), ("jail", 1)] {
        let p = c.expect("volume.pruned", &[("name", v)])?;
        let freed = p.num("freed_bytes").unwrap_or(0);
        ensure!(freed >= least, "{v}: freed {freed} bytes");
    }
    ensure!(c.all("volume.pruned", &[]).len() == 3, "pruned more than the unused volumes");
    ensure!(c.first("volume.prune-failed", &[]).is_none(), "a prune failed");
    // The volume in use kept its data through the prune.
    let k = c.expect("volume-check", &[("name", "keeper"), ("dir", "/var/lib/app")])?;
    want(k, "found", "record-1")?;
    want(c.expect("container.exited", &[("name", "keeper")])?, "code", "0")?;
    // cairn-ctl: nothing left, exit 0.
    want(c.expect("control.request", &[("caller", "ctl-pruner")])?, "reply", "ok nothing to prune")?;
    want(c.expect("container.exited", &[("name", "ctl-pruner")])?, "code", "0")?;
    without_persistent(ctx, &disk, &layout, opts)
}

/// The fourth boot: a manifest with no persistent volume, on the data
/// partition the prune left (`store` only). PID 1 mounts the partition
/// only once the containers' starts are under way, and then says that
/// `store` is unused.
fn without_persistent(
    ctx: &Ctx,
    old: &std::path::Path,
    old_layout: &cairn_build::gpt::DiskLayout,
    opts: &crate::qemu::BootOptions,
) -> Result<()> {
    let (disk, _) = with_data_of(ctx, "volumes-none", "none.img", old, old_layout)?;
    let run = ctx.boot_with(&disk, opts, "none.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let starting = c.expect("container.starting", &[])?;
    let mounted = c.expect("data.mounted", &[("quota", "prjquota")])?;
    ensure!(mounted.index > starting.index, "the data partition was mounted before the first start");
    want(c.expect("volume.unused", &[])?, "names", "store")?;
    want(c.expect("volume.created", &[("name", "scratch")])?, "kind", "tmpfs")?;
    want(c.expect("container.exited", &[("name", "scratcher")])?, "code", "0")?;
    ensure!(c.first("volume.failed", &[]).is_none(), "a volume failed");
    Ok(())
}

/// A disk of appliance `name` (`img`) whose data partition is a copy of
/// `old`'s.
fn with_data_of(
    ctx: &Ctx,
    name: &str,
    img: &str,
    old: &std::path::Path,
    old_layout: &cairn_build::gpt::DiskLayout,
) -> Result<(std::path::PathBuf, cairn_build::gpt::DiskLayout)> {
    use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
    let app = ctx.build(name)?;
    let (disk, layout) = ctx.disk(&app, img)?;
    let data = |l: &cairn_build::gpt::DiskLayout| {
        l.partitions.iter().find(|p| p.name == "cairn-data").map(|p| (p.offset_bytes, p.size_bytes))
    };
    let (Some((from, size)), Some((to, room))) = (data(old_layout), data(&layout)) else {
        anyhow::bail!("no cairn-data partition");
    };
    ensure!(size == room, "data partitions differ: {size} and {room} bytes");
    let mut src = std::fs::File::open(old)?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(&disk)?;
    src.seek(SeekFrom::Start(from))?;
    dst.seek(SeekFrom::Start(to))?;
    let copied = std::io::copy(&mut (&mut src).take(size), &mut dst)?;
    ensure!(copied == size, "copied {copied} of {size} bytes");
    dst.flush()?;
    Ok((disk, layout))
}
