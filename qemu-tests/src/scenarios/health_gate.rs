//! `health-gate` (issue 14 item 2, the OTA commit gate): a trial boot
//! (slot `b`'s boot entry counting tries) commits only when every
//! container with a health check is healthy.
//!
//! - Commit: the window (`cairn.bless_after_ms=1000`) ends while the
//!   container is still `starting` (its heartbeats begin 3 s after its
//!   start): `boot.trial-waiting`, then `healthy`, then `boot.blessed`,
//!   never before.
//! - Rollback: a container that is not critical turns `unhealthy` within
//!   the window (8 s): `boot.trial-failed reason="beater unhealthy"`, a
//!   reboot, no blessing; the entry's one try is spent.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use cairn_build::bootkit::BootKit;
use cairn_build::esp::EspContents;
use cairn_build::gpt::{self, DiskLayout};
use cairn_format::bootentry::Entry;
use cairn_format::bootstate::Slot;

use super::health::t_ms;
use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::{Ctx, Ending};

/// File names in `EFI/Linux` on the disk's ESP.
fn entries(disk: &Path, layout: &DiskLayout) -> Result<Vec<String>> {
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

/// Slot `a` blessed, slot `b` on trial with `tries` and `cmdline` added.
fn esp(ctx: &Ctx, cmdline: &str, tries: u32) -> Result<EspContents> {
    let kit = &ctx.art.kit;
    let b_kit = BootKit { cmdline: format!("{} {cmdline}", kit.cmdline), ..kit.clone() };
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

pub fn run(ctx: &Ctx) -> Result<()> {
    commits_once_healthy(ctx)?;
    rolls_back_when_unhealthy(ctx)
}

fn commits_once_healthy(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("health-gate-ok")?;
    let (disk, layout) = ctx.disk_with_esp(&app, "ok.img", &esp(ctx, "cairn.bless_after_ms=1000", 3)?)?;
    let opts = crate::qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "ok.log", BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.trial", &[("entry", "b"), ("bless_after_ms", "1000")])?;
    let waiting = c.expect("boot.trial-waiting", &[])?;
    ensure!(waiting.get("reason") == Some("beater is starting"), "{:?}", waiting.fields);
    let healthy = c.expect("container.health", &[("name", "beater"), ("to", "healthy")])?;
    let blessed = c.expect("boot.blessed", &[("slot", "b")])?;
    ensure!(
        waiting.index < healthy.index && healthy.index < blessed.index && t_ms(blessed) >= t_ms(healthy),
        "blessed at {} ms, healthy at {} ms, waiting from {} ms",
        t_ms(blessed),
        t_ms(healthy),
        t_ms(waiting)
    );
    ensure!(c.first("boot.trial-failed", &[]).is_none(), "the trial failed");
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b.efi"], "after the healthy trial: {names:?}");
    eprintln!("health-gate: blessed {} ms after healthy", t_ms(blessed) - t_ms(healthy));
    Ok(())
}

fn rolls_back_when_unhealthy(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("health-gate-bad")?;
    let (disk, layout) = ctx.disk_with_esp(&app, "bad.img", &esp(ctx, "cairn.bless_after_ms=8000", 1)?)?;
    let opts = crate::qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "bad.log", BOOT_TIMEOUT, &until_exit)?;
    no_panic(&run)?;
    ensure!(run.ending == Ending::Exited, "the failed trial did not reboot: QEMU {:?}", run.ending);
    let c = &run.console;
    let unhealthy = c.expect("container.health", &[("name", "beater"), ("to", "unhealthy")])?;
    let failed = c.expect("boot.trial-failed", &[("entry", "b"), ("effect", "reboot")])?;
    ensure!(failed.get("reason") == Some("beater unhealthy"), "{:?}", failed.fields);
    ensure!(unhealthy.index < failed.index, "trial failed before the container was unhealthy");
    ensure!(c.first("boot.blessed", &[]).is_none(), "an unhealthy trial was blessed");
    c.expect("shutdown.complete", &[("kind", "reboot")])?;
    let names = entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+0-1.efi"], "after the failed trial: {names:?}");
    Ok(())
}
