//! Boot slots on the EFI system partition (issue 11, item 2):
//!
//! - `boot-counting`: slot `b` is new (2 tries) and broken: its initramfs's
//!   `/init` exits at once, so the kernel panics and the machine resets.
//!   systemd-boot counts each attempt in the entry's name (`+1-1`, then
//!   `+0-2`, read from the disk after every boot); with no tries left the
//!   entry is bad and slot `a` boots, blessed, and runs the appliance.
//! - `boot-trial-fails`: slot `b` is new (1 try) and boots, but none of
//!   its containers can start (`cairn.start_timeout_ms=1` in its command
//!   line): cairn-init judges the trial failed and reboots; the entry has
//!   no tries left, and the next boot is slot `a`'s.
//! - `boot-bless`: slot `b` is new and good: the device boots it on trial,
//!   and once its containers have run `cairn.bless_after_ms` without a
//!   failure, blesses it (the entry loses its counter, read from the disk
//!   after power-off); the next boot of `b` is not a trial.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use cairn_build::bootkit::BootKit;
use cairn_build::cpio::{self, CpioBuilder};
use cairn_build::esp::EspContents;
use cairn_build::gpt::{self, DiskLayout};
use cairn_format::bootentry::Entry;
use cairn_format::bootstate::Slot;

use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::{Ctx, Ending};

/// File names in `EFI/Linux` on the disk's ESP.
pub(super) fn entries(disk: &Path, layout: &DiskLayout) -> Result<Vec<String>> {
    let esp = layout.find(gpt::ESP_NAME).context("no cairn-esp partition")?;
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(esp.offset_bytes))?;
    let mut bytes = vec![0u8; esp.size_bytes as usize];
    f.read_exact(&mut bytes)?;
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(bytes), fatfs::FsOptions::new())?;
    let dir = fs.root_dir().open_dir("EFI/Linux")?;
    let mut names: Vec<String> =
        dir.iter().flatten().map(|e| e.file_name()).filter(|n| n != "." && n != "..").collect();
    names.sort();
    Ok(names)
}

/// The kit with a command line suffix.
pub(super) fn with_cmdline(kit: &BootKit, extra: &str) -> BootKit {
    BootKit { cmdline: format!("{} {extra}", kit.cmdline), ..kit.clone() }
}

/// Slot `a` blessed (release 1) and slot `b` on trial (release 2).
pub(super) fn esp(ctx: &Ctx, b_kit: &BootKit, tries: u32) -> Result<EspContents> {
    let kit = &ctx.art.kit;
    let product = "cairn-qemu-dev";
    Ok(EspContents {
        arch: kit.arch,
        loader: kit.loader.clone(),
        slots: vec![
            kit.slot_image(Entry::blessed(Slot::A), product, 1)?,
            b_kit.slot_image(Entry::trial(Slot::B, tries), product, 2)?,
        ],
        extra: Vec::new(),
    })
}

/// The kit with an initramfs whose `/init` exits at once (the payload
/// without arguments prints its usage and exits 2): the kernel panics.
pub(super) fn panicking_kit(ctx: &Ctx) -> Result<BootKit> {
    let mut rd = CpioBuilder::new();
    rd.dir("dev", 0o755);
    rd.char_device("dev/console", 0o600, 5, 1);
    let payload = std::fs::read(ctx.art.payload_root.join("bin/cairn-payload"))?;
    rd.file("init", 0o755, &payload);
    Ok(BootKit { initramfs: cpio::gzip(&rd.finish()), ..ctx.art.kit.clone() })
}

pub fn counting(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("boot-slots")?;
    // Slot b's kernel panics.
    let broken = panicking_kit(ctx)?;
    let (disk, layout) = ctx.disk_with_esp(&app, "disk.img", &esp(ctx, &broken, 2)?)?;
    ensure!(
        entries(&disk, &layout)? == ["cairn-a.efi", "cairn-b+2.efi"],
        "factory names: {:?}",
        entries(&disk, &layout)?
    );

    for (attempt, after) in [(1, "cairn-b+1-1.efi"), (2, "cairn-b+0-2.efi")] {
        let opts = crate::qemu::BootOptions::default();
        let log = format!("attempt-{attempt}.log");
        let run = ctx.boot_with(&disk, &opts, &log, BOOT_TIMEOUT, &|c| c.contains("Kernel panic"))?;
        ensure!(run.ending != Ending::TimedOut, "{log}: timed out");
        ensure!(run.console.contains("Kernel panic"), "{log}: slot b's kernel did not panic");
        ensure!(run.console.first("boot.start", &[]).is_none(), "{log}: cairn-init ran from the broken slot");
        let names = entries(&disk, &layout)?;
        ensure!(names == ["cairn-a.efi", after], "{log}: the loader did not count the try: {names:?}");
    }

    // No tries left: slot b is bad, the loader boots slot a.
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed"), ("entry", "cairn-a.efi")])?;
    ensure!(c.first("boot.trial", &[]).is_none(), "a blessed slot was put on trial");
    c.expect("container.started", &[("name", "app")])?;
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+0-2.efi"], "after the fallback: {names:?}");
    Ok(())
}

pub fn bless(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("boot-slots")?;
    let good = with_cmdline(&ctx.art.kit, "cairn.bless_after_ms=3000");
    let (disk, layout) = ctx.disk_with_esp(&app, "disk.img", &esp(ctx, &good, 3)?)?;

    // The newer release boots first, on trial; the loader took one try.
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect(
        "boot.slot",
        &[("slot", "b"), ("state", "trial"), ("entry", "cairn-b+2-1.efi"), ("tries_left", "2"), ("tries_done", "1")],
    )?;
    c.expect("boot.trial", &[("entry", "b"), ("bless_after_ms", "3000")])?;
    let blessed = c.expect("boot.blessed", &[("slot", "b"), ("entry", "cairn-b.efi"), ("was", "cairn-b+2-1.efi")])?;
    let started = c.expect("boot.containers-started", &[])?;
    let t = |l: &crate::console::Line| l.get("t").and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    let waited = t(blessed) - t(started);
    ensure!(waited >= 2.9, "blessed {waited:.1} s after the containers started, before cairn.bless_after_ms");
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b.efi"], "after blessing: {names:?}");

    // Blessed: the next boot is not a trial.
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "b"), ("state", "blessed"), ("entry", "cairn-b.efi")])?;
    ensure!(c.first("boot.trial", &[]).is_none(), "the blessed slot was put on trial again");
    ensure!(c.first("boot.blessed", &[]).is_none(), "blessed twice");
    no_panic(&run)?;
    Ok(())
}

pub fn trial_fails(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("boot-slots")?;
    let unhealthy = with_cmdline(&ctx.art.kit, "cairn.bless_after_ms=2000 cairn.start_timeout_ms=1");
    let (disk, layout) = ctx.disk_with_esp(&app, "disk.img", &esp(ctx, &unhealthy, 1)?)?;

    let opts = crate::qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "trial.log", BOOT_TIMEOUT, &until_exit)?;
    no_panic(&run)?;
    ensure!(run.ending == Ending::Exited, "slot b's failed trial did not reboot: QEMU {:?}", run.ending);
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "b"), ("entry", "cairn-b+0-1.efi"), ("tries_left", "0")])?;
    let failed = c.expect("boot.trial-failed", &[("entry", "b"), ("effect", "reboot")])?;
    ensure!(failed.get("reason").is_some_and(|r| !r.is_empty()), "no reason: {:?}", failed.fields);
    ensure!(c.first("boot.blessed", &[]).is_none(), "a failed trial was blessed");
    c.expect("shutdown.complete", &[("kind", "reboot")])?;
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+0-1.efi"], "after the failed trial: {names:?}");

    let run = ctx.boot_with(&disk, &opts, "fallback.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    run.console.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    run.console.expect("container.started", &[("name", "app")])?;
    Ok(())
}
