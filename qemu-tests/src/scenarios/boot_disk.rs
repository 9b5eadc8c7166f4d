//! The boot disk and what binds a manifest to the device (issue 8, items
//! 5, 6 and 8):
//!
//! - `foreign-disk`: a second disk with `cairn-*` partitions and another
//!   signed manifest is attached. Booted through the firmware, the device
//!   takes the disk whose ESP the loader started from, whatever the order of
//!   the disks, and says it ignored the other; started directly, `cairn.disk=`
//!   names the disk, and without it two candidate disks are refused. Its
//!   containers asking for the boot disk or a system partition by path are
//!   refused (`device.refused`); a non-system partition is granted.
//! - `wrong-product`: a manifest signed by the trusted key but for another
//!   product is refused, the event naming both strings.
//! - `state-copy0-corrupt`: copy 0 of the boot state is corrupt: the device
//!   boots from copy 1; both corrupt: it boots the factory slot with the
//!   fallback event.

use std::cell::Cell;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::console::Console;
use crate::qemu::BootOptions;
use crate::{Ctx, Ending, Run};

/// How long PID 1 must be seen alive after refusing to boot.
const ALIVE: Duration = Duration::from_secs(3);

/// Stop `ALIVE` after `boot.failed`.
fn after_boot_failed() -> impl Fn(&Console) -> bool {
    let seen = Cell::new(None::<Instant>);
    move |c| {
        if seen.get().is_none() && c.first("boot.failed", &[]).is_some() {
            seen.set(Some(Instant::now()));
        }
        seen.get().is_some_and(|t| t.elapsed() >= ALIVE)
    }
}

/// Refused to boot, and stayed up.
fn refused(run: &Run, what: &str) -> Result<()> {
    no_panic(run)?;
    ensure!(
        run.ending == Ending::Stopped,
        "{what}: QEMU {:?} before PID 1 was seen alive after boot.failed",
        run.ending
    );
    let c = &run.console;
    c.expect("boot.failed", &[])?;
    ensure!(c.first("manifest.verified", &[]).is_none(), "{what}: a manifest was accepted");
    ensure!(c.first("container.started", &[]).is_none(), "{what}: a container started");
    Ok(())
}

/// The boot disk and its system partitions are never given to a container
/// (by device number), a non-system partition of it is.
fn devices_checked(c: &Console, disk: &str) -> Result<()> {
    for (name, source) in [("thief", format!("/dev/{disk}")), ("thief-state", format!("/dev/{disk}1"))] {
        let e = c.expect("device.refused", &[("container", name), ("source", &source)])?;
        ensure!(e.get("reason").is_some_and(|r| r.contains("boot disk")), "{name}: {:?}", e.fields);
        ensure!(c.first("container.started", &[("name", name)]).is_none(), "{name} started with {source}");
    }
    c.expect("container.started", &[("name", "granted")])?;
    Ok(())
}

pub fn foreign_disk(ctx: &Ctx) -> Result<()> {
    let own = ctx.build("boot-disk")?;
    let (disk, own_layout) = ctx.disk(&own, "own.img")?;
    let other = ctx.build("bad-signature")?;
    let (foreign, other_layout) = ctx.disk(&other, "foreign.img")?;
    ensure!(own_layout.disk_guid != other_layout.disk_guid, "the two disks share a disk GUID");
    let extra: [&Path; 1] = [&foreign];

    let own_esp = own_layout.find(cairn_build::gpt::ESP_NAME).map(|p| cairn_build::gpt::guid_text(&p.unique_guid));
    let own_esp = own_esp.unwrap_or_default();

    // 1. The firmware boots the own disk (vda); the loader names its ESP
    //    (LoaderDevicePartUUID), so the foreign disk (vdb) is ignored.
    let opts = BootOptions { extra_disks: &extra, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "named.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("partitions.found", &[("disk", "vda"), ("by", "loader"), ("esp", &own_esp)])?;
    let f = c.expect("partitions.foreign", &[("disk", "vdb")])?;
    ensure!(f.get("names").is_some_and(|n| n.contains("cairn-manifest-a")), "foreign event: {:?}", f.fields);
    c.expect("manifest.verified", &[("slot", "a"), ("appliance", "boot-disk")])?;
    ensure!(c.first("manifest.verified", &[("appliance", "signed")]).is_none(), "the foreign manifest was used");
    c.expect("container.started", &[("name", "driver")])?;
    devices_checked(c, "vda")?;
    // UEFI firmware: efivarfs is loaded, on demand, after the boot modules.
    let done = c.expect("modules.done", &[])?;
    let efi = c.expect("module.loaded", &[("name", "efivarfs.ko")])?;
    ensure!(efi.index > done.index, "efivarfs loaded with the boot modules, not on demand");

    // 2. The foreign disk first (vda), the own disk second (vdb) and booted
    //    by the firmware: the loader's partition decides, not the order.
    let opts = BootOptions { extra_disks: &extra, extra_first: true, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "swapped.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("partitions.found", &[("disk", "vdb"), ("by", "loader")])?;
    c.expect("partitions.foreign", &[("disk", "vda")])?;
    c.expect("manifest.verified", &[("appliance", "boot-disk")])?;
    ensure!(c.first("manifest.verified", &[("appliance", "signed")]).is_none(), "the foreign manifest was used");

    // Without a loader (the kernel started directly, as `cargo xtask run
    // --fast` does), `cairn.disk=` names the disk, or the only candidate is it.
    // 3. cairn.disk= names the own disk, second in line.
    let opts = BootOptions { extra_disks: &extra, extra_first: true, direct_kernel: true, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "cmdline.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let guid = own_layout.disk_guid_text();
    run.console.expect("partitions.found", &[("disk", "vdb"), ("by", "cmdline"), ("guid", &guid)])?;

    // 4. Neither: two disks hold cairn-* partitions; refused.
    let opts = BootOptions { extra_disks: &extra, no_disk_guid: true, direct_kernel: true, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "unnamed.log", BOOT_TIMEOUT, &after_boot_failed())?;
    refused(&run, "two candidate disks")?;
    run.console.expect("partitions.ambiguous", &[("disks", "vda,vdb")])?;

    // 5. Neither, and one disk: it is the boot disk.
    let opts = BootOptions { no_disk_guid: true, direct_kernel: true, ..BootOptions::default() };
    let run = ctx.boot_with(&disk, &opts, "alone.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    run.console.expect("partitions.found", &[("disk", "vda"), ("guid", "any"), ("by", "only")])?;
    ensure!(run.console.first("partitions.foreign", &[]).is_none(), "a foreign disk reported with one disk");
    devices_checked(&run.console, "vda")?;
    // No UEFI firmware: efivarfs is not even tried (its init would fail
    // with ENODEV, slowly).
    for e in ["module.loaded", "module.skipped", "module.failed"] {
        ensure!(run.console.first(e, &[("name", "efivarfs.ko")]).is_none(), "{e} efivarfs.ko without UEFI firmware");
    }
    Ok(())
}

pub fn wrong_product(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("wrong-product")?;
    ensure!(app.manifest.compatible.as_str() == "cairn-other-product", "the appliance file changed");
    let (disk, _) = ctx.disk(&app, "disk.img")?;
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &after_boot_failed())?;
    refused(&run, "wrong product")?;
    let rejected = run.console.expect("manifest.rejected", &[("slot", "a")])?;
    let why = rejected.get("reason").unwrap_or("");
    ensure!(
        why.contains("cairn-other-product") && why.contains("cairn-qemu-dev"),
        "the refusal does not name both strings: {why:?}"
    );
    ensure!(run.console.first("layer.mounted", &[]).is_none(), "a layer of the refused manifest was mounted");
    Ok(())
}

/// Overwrite the magic of boot state copy `copy` (0 or 1).
fn corrupt_copy(disk: &Path, state_offset: u64, copy: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    f.seek(SeekFrom::Start(state_offset + copy * cairn_format::bootstate::COPY_SIZE as u64))?;
    f.write_all(b"BADSECTR")?;
    Ok(())
}

pub fn state_copy0_corrupt(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("boot-demo")?;
    let (disk, layout) = ctx.disk(&app, "disk.img")?;
    let state = layout.find("cairn-state").context("no cairn-state")?.offset_bytes;

    // Copy 0 unreadable: copy 1 (written at the factory too) boots.
    corrupt_copy(&disk, state, 0)?;
    let run = ctx.boot_with(&disk, &BootOptions::default(), "copy1.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    ensure!(c.first("bootstate.unreadable", &[]).is_none(), "copy 1 was not used");
    c.expect("bootstate.read", &[("seq", "1"), ("committed", "a")])?;
    c.expect("manifest.verified", &[("slot", "a")])?;
    c.expect("container.started", &[("name", "alpha")])?;

    // Both unreadable: the factory slot with the built-in floor.
    corrupt_copy(&disk, state, 1)?;
    let run = ctx.boot_with(&disk, &BootOptions::default(), "factory.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let e = c.expect("bootstate.unreadable", &[("fallback", "factory"), ("slot", "a"), ("rollback_floor", "0")])?;
    ensure!(e.get("error").is_some_and(|e| e.contains("neither")), "fallback error: {:?}", e.fields);
    c.expect("manifest.verified", &[("slot", "a")])?;
    for l in ["base", "tools", "app"] {
        c.expect("layer.mounted", &[("name", l)])?;
    }
    c.expect("container.started", &[("name", "alpha")])?;
    Ok(())
}
