//! Over-the-air updates (issue 12), from a bundle on a second disk (the USB
//! stick case: `dd` the bundle onto any disk, reboot):
//!
//! - `ota-install`: a device flashed with `ota-v1` (three layers; its
//!   factory image runs the `test-hooks` build of cairn-init) boots with a
//!   thin `ota-v2` bundle attached that also carries a new boot image (the
//!   release init, a marker on its command line): the forked installer
//!   writes exactly one layer, manifest slot `b` and the image into boot
//!   entry `b` (the one the device did not start from) under a name the
//!   loader ignores, stages the trial, and stops right there
//!   (`cairn.test.hang=entry-name`): the power is cut. The next boot, from
//!   entry `a`, names the staged image `cairn-b+3.efi` and restarts without
//!   spending a try; the loader starts the new entry, the trial spends a
//!   try before mounting, runs v2 on the new init, and commits after its
//!   window (the floor rises to 2, entry `b` blessed). The committed
//!   manifest's partitions (slot `a`, its three layers) and entry `a` are
//!   byte-for-byte unchanged. A last boot, from the new entry, with the
//!   stick still attached refuses it (`not-newer`).
//! - `ota-rollback`: an update whose critical container fails (it also
//!   carries a boot image, a good one) rolls back: boot entry `b` is marked
//!   bad, manifest slot `b` is bad, the floor unchanged, v1 boots again
//!   from entry `a`. Then an update whose new kernel never reaches the init
//!   (its image panics): systemd-boot counts its three tries in the entry's
//!   name, falls back to entry `a`, and the init ends the trial
//!   (`loader-fell-back`) without the record's tries ever being spent.
//!   (Tries running out on the record's side are `ota-watchdog`'s and
//!   `ota-powercut`'s.)
//! - `ota-powercut`: the power is cut (QEMU killed) at each durable step of
//!   an install and of its trial, plus a seeded random delay (printed;
//!   `CAIRN_SEED` repeats it), and once in the middle of the changed layer
//!   (5 MiB of noise: the harness watches the install journal on the disk):
//!   after every cut the device verifies a manifest (v1 until staged, v2
//!   after), the committed partitions are unchanged, the boot after the
//!   mid-layer cut resumes (skipping what the journal counted, rewriting at
//!   most one chunk already on the disk), and the update commits on the
//!   first boot left alone.
//! - `ota-antirollback`: on a device flashed with v2 (floor 2), an older
//!   signed bundle (`below-floor`), one for another product
//!   (`wrong-product`), one whose TOC is signed by an untrusted key and one
//!   with a flipped byte in its layer (both `bad-bundle`) are refused, and
//!   every partition but `cairn-data` is byte-for-byte unchanged.
//! - `ota-watchdog`: a trial whose PID 1 hangs is reset by the watchdog;
//!   the resets use up its tries and v1 boots.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_build::assemble::BuiltAppliance;
use cairn_build::bundle::{self, BundleInput};
use cairn_build::gpt::DiskLayout;
use cairn_format::bootstate::{self, BootState, Slot, SlotStatus};
use cairn_format::digest::Digest;

use super::{no_panic, powered_off, until_exit, BOOT_TIMEOUT};
use crate::console::Console;
use crate::qemu::BootOptions;
use crate::{Ctx, Ending, Run};

/// The bytes of one partition of a disk image.
fn partition(disk: &Path, layout: &DiskLayout, name: &str) -> Result<Vec<u8>> {
    let p = layout.find(name).with_context(|| format!("no {name} partition"))?;
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(p.offset_bytes))?;
    let mut bytes = vec![0u8; usize::try_from(p.size_bytes)?];
    f.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// A file of the disk's ESP, in `EFI/Linux`.
fn esp_file(disk: &Path, layout: &DiskLayout, name: &str) -> Result<Vec<u8>> {
    let esp = partition(disk, layout, cairn_build::gpt::ESP_NAME)?;
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(esp), fatfs::FsOptions::new())?;
    let mut f = fs.root_dir().open_file(&format!("EFI/Linux/{name}"))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The boot state record on the disk.
pub(super) fn state(disk: &Path, layout: &DiskLayout) -> Result<BootState> {
    let region = partition(disk, layout, "cairn-state")?;
    let (_, s) = bootstate::read_record(&region).map_err(|e| anyhow::anyhow!("boot state record: {e}"))?;
    Ok(s)
}

/// A bundle of `app` for devices on `base`, padded to whole MiB so it can
/// be attached as a disk (as on a USB stick).
pub(super) fn bundle_disk(
    ctx: &Ctx,
    app: &BuiltAppliance,
    base: &BuiltAppliance,
    file: &str,
) -> Result<(PathBuf, usize)> {
    bundle_disk_with(ctx, app, base, file, None)
}

/// [`bundle_disk`], carrying `boot_image` if given.
fn bundle_disk_with(
    ctx: &Ctx,
    app: &BuiltAppliance,
    base: &BuiltAppliance,
    file: &str,
    boot_image: Option<&Path>,
) -> Result<(PathBuf, usize)> {
    let path = ctx.dir.join(file);
    let input = BundleInput {
        envelope: &app.envelope,
        manifest: &app.manifest,
        layers: &app.layers,
        base: Some(&base.manifest),
        boot_image,
    };
    let built = bundle::write_bundle(&input, &ctx.art.key, &path)?;
    let len = std::fs::metadata(&path)?.len();
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(len.div_ceil(1 << 20) * (1 << 20))?;
    Ok((path, built.toc.layers.len()))
}

fn boot_with_stick(ctx: &Ctx, disk: &Path, stick: Option<&Path>, log: &str) -> Result<Run> {
    let extra: Vec<&Path> = stick.into_iter().collect();
    let opts = BootOptions { extra_disks: &extra, ..BootOptions::default() };
    ctx.boot_with(disk, &opts, log, BOOT_TIMEOUT, &until_exit)
}

/// The device rebooted in order (QEMU runs with -no-reboot: it exits).
pub(super) fn rebooted(run: &Run) -> Result<()> {
    no_panic(run)?;
    ensure!(run.ending == Ending::Exited, "QEMU did not exit by itself ({:?} after {:?})", run.ending, run.elapsed);
    run.console.expect("shutdown.complete", &[("kind", "reboot")])?;
    Ok(())
}

fn slot_status(s: &BootState) -> [SlotStatus; 2] {
    [s.status_of(Slot::A), s.status_of(Slot::B)]
}

pub fn install(ctx: &Ctx) -> Result<()> {
    let v1 = ctx.build("ota-v1")?;
    let v2 = ctx.build("ota-v2")?;
    // The factory image runs the test-hooks init, told to stop the
    // installer before it names the new entry; v2's image is the release
    // init with a marker word, so the boots can tell which image runs.
    let hooks =
        ctx.art.test_hooks_kit.as_ref().context("no test-hooks boot kit (xtask builds it for this scenario)")?;
    let factory = super::boot_slots::with_cmdline(hooks, "cairn.test.hang=entry-name")
        .factory_esp(&v1.manifest.compatible, v1.manifest.version)?;
    let (disk, layout) = ctx.disk_with_esp(&v1, "disk.img", &factory)?;
    let image = super::boot_slots::with_cmdline(&ctx.art.kit, "cairn.update-marker=v2")
        .update_image(&v2.manifest.compatible, v2.manifest.version)?;
    let image_path = ctx.dir.join("v2.efi");
    std::fs::write(&image_path, &image)?;
    let (stick, carried) = bundle_disk_with(ctx, &v2, &v1, "v2.bundle", Some(&image_path))?;
    ensure!(carried == 1, "the thin bundle carries {carried} layers, not the one that changed");
    let before = system_digests(&disk, &layout)?;
    let entry_a = esp_file(&disk, &layout, "cairn-a.efi")?;

    // Boot 1: v1 runs, the installer stages v2; the power goes before the
    // new entry is named.
    let opts = BootOptions { extra_disks: &[&stick], ..BootOptions::default() };
    let hung = |c: &Console| c.first("test.hang", &[]).is_some();
    let run = ctx.boot_with(&disk, &opts, "install.log", BOOT_TIMEOUT, &hung)?;
    no_panic(&run)?;
    ensure!(run.ending == Ending::Stopped, "the installer did not stop before naming: {:?}", run.ending);
    let c = &run.console;
    c.expect("boot.start", &[("test_hooks", "on")])?;
    c.expect("manifest.verified", &[("slot", "a"), ("version", "1")])?;
    c.expect("update.verified", &[("version", "2"), ("slot", "b"), ("layers", "3"), ("reuse", "2"), ("write", "1")])?;
    let written = c.all("update.layer-written", &[]);
    ensure!(written.len() == 1, "{} layers written, not 1", written.len());
    ensure!(written[0].get("layer") == Some("app"), "wrote {:?}", written[0].fields);
    c.expect("update.manifest-written", &[("slot", "b")])?;
    let image_written =
        c.expect("update.boot-image-written", &[("entry", "b"), ("bytes", &image.len().to_string())])?;
    let staged = c.expect("update.staged", &[("slot", "b"), ("version", "2"), ("tries", "3")])?;
    let hang = c.expect("test.hang", &[("where", "installer")])?;
    ensure!(
        image_written.index < staged.index && staged.index < hang.index,
        "the image must be written before the stage, and the stage come before the hang"
    );
    ensure!(c.first("update.boot-entry", &[]).is_none(), "the entry was named before the cut");
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::A && s.rollback_floor == 1, "staging changed the committed slot or floor: {s:?}");
    ensure!(s.trial.map(|t| (t.slot, t.tries_left)) == Some((Slot::B, 3)), "no trial staged: {s:?}");
    ensure!(s.trial.and_then(|t| t.boot_entry) == Some(Slot::B), "the trial does not name its boot entry: {s:?}");
    ensure!(slot_status(&s) == [SlotStatus::Good, SlotStatus::Ready], "statuses {:?}", s.status);
    let after = system_digests(&disk, &layout)?;
    let esp_at = before.iter().position(|(n, _)| n == "cairn-esp").context("no cairn-esp")?;
    ensure!(after[esp_at] != before[esp_at], "the ESP was not written");
    let (mut before_rest, mut after_rest) = (before.clone(), after.clone());
    before_rest.remove(esp_at);
    after_rest.remove(esp_at);
    only_staging_written(&before_rest, &after_rest, "cairn-layer-04")?;
    let names = super::boot_slots::entries(&disk, &layout)?;
    ensure!(names == [".cairn-b.new", "cairn-a.efi"], "entries after the install: {names:?}");
    ensure!(esp_file(&disk, &layout, ".cairn-b.new")? == image, "the pending image is not the bundle's");
    ensure!(esp_file(&disk, &layout, "cairn-a.efi")? == entry_a, "entry a (the running one) changed");

    // Boot 2: from entry a; the staged image is named and the device
    // restarts, without spending the trial's try.
    let run = boot_with_stick(ctx, &disk, None, "name.log")?;
    rebooted(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    c.expect("update.boot-entry", &[("entry", "b"), ("file", "cairn-b+3.efi"), ("after", "power-cut")])?;
    ensure!(c.first("update.trial", &[]).is_none(), "a try was spent naming the entry");
    ensure!(c.first("layer.mounted", &[]).is_none(), "layers were mounted before the restart");
    ensure!(state(&disk, &layout)? == s, "naming the entry wrote the boot state record");
    let names = super::boot_slots::entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+3.efi"], "entries after naming: {names:?}");
    ensure!(esp_file(&disk, &layout, "cairn-b+3.efi")? == image, "entry b is not the bundle's image");

    // Boot 3: the loader starts the new entry; the trial spends a try
    // first, runs v2 on the new init, commits and blesses the entry.
    let run = boot_with_stick(ctx, &disk, None, "trial.log")?;
    powered_off(&run)?;
    let c = &run.console;
    let start = c.expect("boot.start", &[])?;
    ensure!(start.get("test_hooks").is_none(), "the trial still runs the factory image's init");
    c.expect("cmdline.ignored", &[("word", "cairn.update-marker=v2")])?;
    c.expect("boot.slot", &[("slot", "b"), ("state", "trial")])?;
    c.expect("bootstate.read", &[("committed", "a"), ("trial", "b"), ("tries_left", "3")])?;
    let trial = c.expect("update.trial", &[("slot", "b"), ("tries_left", "2")])?;
    let first_mount = c.expect("layer.mounted", &[])?;
    ensure!(trial.index < first_mount.index, "a layer was mounted before the try was spent");
    c.expect("manifest.verified", &[("slot", "b"), ("version", "2")])?;
    ensure!(c.contains("ota-version=2"), "the new layer's file was not read by the container");
    c.expect("update.committed", &[("slot", "b"), ("version", "2"), ("rollback_floor", "2")])?;
    c.expect("boot.blessed", &[("slot", "b"), ("entry", "cairn-b.efi")])?;
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::B && s.trial.is_none() && s.rollback_floor == 2, "not committed: {s:?}");
    ensure!(slot_status(&s) == [SlotStatus::Good, SlotStatus::Good], "statuses {:?}", s.status);
    let names = super::boot_slots::entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b.efi"], "entries after the commit: {names:?}");

    // Boot 4: committed v2, from the new entry (blessed and newer); the
    // stick is refused (not newer), nothing written.
    let run = boot_with_stick(ctx, &disk, Some(&stick), "again.log")?;
    powered_off(&run)?;
    let c = &run.console;
    ensure!(c.expect("boot.start", &[])?.get("test_hooks").is_none(), "the factory image's init runs again");
    c.expect("boot.slot", &[("slot", "b"), ("state", "blessed")])?;
    c.expect("bootstate.read", &[("committed", "b")])?;
    ensure!(c.first("update.trial", &[]).is_none(), "a committed slot was put on trial");
    c.expect("manifest.verified", &[("slot", "b"), ("version", "2")])?;
    c.expect("update.refused", &[("reason", "not-newer")])?;
    ensure!(c.first("update.claimed", &[]).is_none(), "a refused bundle claimed a slot");
    ensure!(state(&disk, &layout)?.seq == s.seq, "a refused bundle wrote the boot state record");
    Ok(())
}

/// `bundle` as the first partition (MBR, from 1 MiB) of a disk: the boot's
/// autoinstall does not take it (it looks at the start of whole disks), a
/// container given the partition as a device can pass it.
fn bundle_partition_disk(ctx: &Ctx, bundle: &Path, file: &str) -> Result<PathBuf> {
    const START: u64 = 1 << 20;
    let body = std::fs::read(bundle)?;
    let sectors = u32::try_from(body.len() as u64 / 512).context("bundle too large for an MBR partition")?;
    let mut head = vec![0u8; START as usize];
    let entry = [
        &[0x00, 0xfe, 0xff, 0xff, 0xda, 0xfe, 0xff, 0xff][..],
        &u32::try_from(START / 512)?.to_le_bytes(),
        &sectors.to_le_bytes(),
    ]
    .concat();
    head[446..462].copy_from_slice(&entry);
    head[510..512].copy_from_slice(&[0x55, 0xaa]);
    let path = ctx.dir.join(file);
    std::fs::write(&path, [head, body].concat())?;
    Ok(path)
}

/// `ota-request`: a container granted `update` passes the bundle (a
/// partition it was given as a device) with `cairn-ctl update`; one with
/// only `status` and one passing a file that is no bundle are refused
/// before anything is written; the installer tells the agent each step;
/// the trial commits on the next boot.
pub fn request(ctx: &Ctx) -> Result<()> {
    let v1 = ctx.build("ota-request")?;
    let v2 = ctx.build("ota-v2")?;
    let (disk, layout) = ctx.disk(&v1, "disk.img")?;
    let (bundle, carried) = bundle_disk(ctx, &v2, &v1, "v2.bundle")?;
    ensure!(carried == 1, "the thin bundle carries {carried} layers, not the one that changed");
    let stick = bundle_partition_disk(ctx, &bundle, "stick.img")?;
    let before = system_digests(&disk, &layout)?;

    let run = boot_with_stick(ctx, &disk, Some(&stick), "request.log")?;
    rebooted(&run)?;
    let c = &run.console;
    ensure!(c.first("update.installing", &[("source", "/dev/vdb")]).is_none(), "autoinstall took the partitioned disk");
    c.expect("control.refused", &[("caller", "nosy"), ("request", "update"), ("needs", "update")])?;
    // junk's request is served and its installer refuses the file.
    let junk = c.expect("control.request", &[("caller", "junk"), ("request", "update")])?;
    ensure!(junk.get("reply").is_some_and(|r| r.starts_with("ok installing pid=")), "junk: {:?}", junk.fields);
    let refused = c.expect("update.refused", &[("source", "request")])?;
    ensure!(refused.get("reason") == Some("bad-bundle"), "junk's file refused with {:?}", refused.fields);
    ensure!(
        run.console.raw_lines().iter().any(|l| l.starts_with("[junk] cairn-ctl: bad-bundle: ")),
        "junk's cairn-ctl did not print the refusal"
    );
    // The agent's request installs.
    let agent = c.expect("control.request", &[("caller", "agent"), ("request", "update")])?;
    let claimed = c.expect("update.claimed", &[("slot", "b")])?;
    ensure!(refused.index < agent.index && agent.index < claimed.index, "the refusal did not come before the claim");
    c.expect("update.verified", &[("version", "2"), ("slot", "b"), ("layers", "3"), ("reuse", "2"), ("write", "1")])?;
    c.expect("update.staged", &[("slot", "b"), ("version", "2"), ("tries", "3")])?;
    c.expect("update.ready", &[])?;
    // The agent was told each step and the end.
    let told = |what: &str| run.console.raw_lines().iter().any(|l| l.starts_with("[agent] ") && l.contains(what));
    for step in
        ["event=update.verified ", "event=update.claimed ", "event=update.layer-written ", "event=update.staged "]
    {
        ensure!(told(step), "the agent was not told {step}");
    }
    ensure!(told("staged slot=b effect=reboot"), "the agent's cairn-ctl did not print the end");
    let e = c.expect("container.exited", &[("name", "agent")])?;
    ensure!(e.get("code") == Some("0"), "the agent's cairn-ctl exited {:?}", e.fields);
    only_staging_written(&before, &system_digests(&disk, &layout)?, "cairn-layer-04")?;

    // The trial runs v2 and commits.
    let run = boot_with_stick(ctx, &disk, None, "trial.log")?;
    powered_off(&run)?;
    run.console.expect("update.committed", &[("slot", "b"), ("version", "2"), ("rollback_floor", "2")])?;
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::B && s.trial.is_none() && s.rollback_floor == 2, "not committed: {s:?}");
    Ok(())
}

/// Stop once the containers have started (v1 runs until stopped).
fn started(c: &Console) -> bool {
    c.first("boot.containers-started", &[]).is_some()
}

pub fn rollback(ctx: &Ctx) -> Result<()> {
    let v1 = ctx.build("ota-v1")?;
    let bad = ctx.build("ota-bad")?;
    let v2 = ctx.build("ota-v2")?;
    let (disk, layout) = ctx.disk(&v1, "disk.img")?;
    let product = &v1.manifest.compatible;
    let good_image = ctx.dir.join("bad.efi");
    std::fs::write(&good_image, ctx.art.kit.update_image(product, bad.manifest.version)?)?;
    let (bad_stick, _) = bundle_disk_with(ctx, &bad, &v1, "bad.bundle", Some(&good_image))?;
    let panicking = ctx.dir.join("panics.efi");
    std::fs::write(&panicking, super::boot_slots::panicking_kit(ctx)?.update_image(product, v2.manifest.version)?)?;
    let (v2_stick, _) = bundle_disk_with(ctx, &v2, &v1, "v2.bundle", Some(&panicking))?;

    // An update whose critical container fails: rolled back after its
    // window, its boot entry marked bad before the record ends the trial.
    rebooted(&boot_with_stick(ctx, &disk, Some(&bad_stick), "install-bad.log")?)?;
    let names = super::boot_slots::entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+3.efi"], "entries after the install: {names:?}");
    let run = boot_with_stick(ctx, &disk, None, "trial-bad.log")?;
    rebooted(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "b"), ("state", "trial")])?;
    c.expect("update.trial", &[("slot", "b"), ("tries_left", "2")])?;
    c.expect("boot.trial-failed", &[("slot", "b"), ("effect", "reboot")])?;
    let marked = c.expect("boot.marked-bad", &[("slot", "b"), ("entry", "cairn-b+0-1.efi")])?;
    let rolled = c.expect(
        "update.rolled-back",
        &[("slot", "b"), ("reason", "unhealthy"), ("booting", "a"), ("rollback_floor", "1")],
    )?;
    ensure!(marked.index < rolled.index, "the record ended the trial before its entry was marked bad");
    let names = super::boot_slots::entries(&disk, &layout)?;
    ensure!(names == ["cairn-a.efi", "cairn-b+0-1.efi"], "entries after the rollback: {names:?}");
    ensure!(c.first("update.committed", &[]).is_none(), "a failed trial committed");
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::A && s.trial.is_none() && s.rollback_floor == 1, "after rollback: {s:?}");
    ensure!(slot_status(&s) == [SlotStatus::Good, SlotStatus::Bad], "statuses {:?}", s.status);
    let run = ctx.boot_with(&disk, &BootOptions::default(), "after-bad.log", BOOT_TIMEOUT, &started)?;
    let c = &run.console;
    ensure!(run.ending == Ending::Stopped, "after the rollback: {:?}", run.ending);
    c.expect("manifest.verified", &[("slot", "a"), ("version", "1")])?;
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    ensure!(c.first("update.trial", &[]).is_none(), "the bad slot was tried again");

    // An update whose new kernel never reaches the init: the loader counts
    // its tries, then starts entry a; the init ends the trial.
    rebooted(&boot_with_stick(ctx, &disk, Some(&v2_stick), "install-v2.log")?)?;
    for (attempt, after) in [(1, "cairn-b+2-1.efi"), (2, "cairn-b+1-2.efi"), (3, "cairn-b+0-3.efi")] {
        let log = format!("panic-{attempt}.log");
        let run = ctx.boot_with(&disk, &BootOptions::default(), &log, BOOT_TIMEOUT, &|c| c.contains("Kernel panic"))?;
        ensure!(run.console.contains("Kernel panic"), "{log}: the new kernel did not panic");
        ensure!(run.console.first("boot.start", &[]).is_none(), "{log}: cairn-init ran from the broken image");
        let names = super::boot_slots::entries(&disk, &layout)?;
        ensure!(names == ["cairn-a.efi", after], "{log}: the loader did not count the try: {names:?}");
    }
    let run = ctx.boot_with(&disk, &BootOptions::default(), "fell-back.log", BOOT_TIMEOUT, &started)?;
    let c = &run.console;
    ensure!(run.ending == Ending::Stopped, "after the loader fell back: {:?}", run.ending);
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    c.expect("bootstate.read", &[("trial", "b"), ("tries_left", "3")])?;
    c.expect("update.rolled-back", &[("slot", "b"), ("reason", "loader-fell-back"), ("booting", "a")])?;
    c.expect("manifest.verified", &[("slot", "a"), ("version", "1")])?;
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::A && s.trial.is_none() && s.rollback_floor == 1, "after the fall-back: {s:?}");
    ensure!(slot_status(&s) == [SlotStatus::Good, SlotStatus::Bad], "statuses {:?}", s.status);
    Ok(())
}

/// Where `ota-powercut` cuts the power, in order, on one disk: through every
/// durable step of the install (each cut before `update.staged` resumes or
/// restarts the install on the next boot), then through the trial (each cut
/// spends a try), and the last try commits. [`MID_LAYER`] is no event: the
/// power goes once the install journal on the disk counts at least two
/// chunks of the layer, and not all of them.
const CUTS: [(&str, bool); 8] = [
    ("update.installing", true),
    ("update.claimed", true),
    (MID_LAYER, true),
    ("update.layer-written", true),
    ("update.manifest-written", true),
    ("update.staged", true),
    ("update.trial", false),
    ("boot.trial", false),
];

/// The cut in the middle of the layer's write (see [`CUTS`]).
const MID_LAYER: &str = "mid-layer";

/// Noise in `ota-powercut`'s changed layer: several 1 MiB chunks, so a cut
/// can land between two of them.
pub(super) const BIG_LAYER_BYTES: usize = 5 << 20;

/// `ota-v2` whose changed `app` layer also holds [`BIG_LAYER_BYTES`] of
/// seeded noise (squashfs cannot compress it), built in the scenario's
/// directory.
pub(super) fn big_v2(ctx: &Ctx) -> Result<BuiltAppliance> {
    let src = ctx.dir.join("app-v2-big");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("etc"))?;
    let apps = crate::appliances_dir();
    std::fs::copy(apps.join("ota/app-v2/etc/ota-version"), src.join("etc/ota-version"))?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..BIG_LAYER_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(src.join("etc/noise"), noise)?;
    let toml = std::fs::read_to_string(apps.join("ota-v2.toml"))?
        .replace("\"../../images/examples/base\"", &format!("{:?}", apps.join("../../images/examples/base")))
        .replace("\"ota/app-v2\"", &format!("{src:?}"));
    let path = ctx.dir.join("ota-v2-big.toml");
    std::fs::write(&path, toml)?;
    let sources = ctx.art.build_sources();
    cairn_build::assemble::build_appliance(&path, &sources, &ctx.art.key, &ctx.layers_dir("ota-v2-big"))
        .with_context(|| format!("building {}", path.display()))
}

/// The install journal on the disk, as the device left it (after the
/// record's copies on `cairn-state`).
fn journal_on(disk: &Path, layout: &DiskLayout) -> Result<Option<cairn_format::journal::Journal>> {
    let p = layout.find("cairn-state").context("no cairn-state partition")?;
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(p.offset_bytes + cairn_format::journal::OFFSET))?;
    let mut region = vec![0u8; cairn_format::journal::SIZE];
    f.read_exact(&mut region)?;
    Ok(cairn_format::journal::read(&region).map(|(_, j)| j))
}

/// Leading whole chunks of the bundle's layer part that are on its
/// partition: what was durable when the power went.
fn chunks_on_disk(disk: &Path, layout: &DiskLayout, stick: &Path, number: u8, chunk: usize) -> Result<usize> {
    let toc = bundle::read_bundle(stick)?.toc;
    let part = toc.layers.first().context("the bundle carries no layer")?.part;
    let mut f = std::fs::File::open(stick)?;
    f.seek(SeekFrom::Start(part.offset))?;
    let mut want = vec![0u8; usize::try_from(part.size)?];
    f.read_exact(&mut want)?;
    let have = partition(disk, layout, &format!("cairn-layer-{number:02}"))?;
    Ok(want.chunks(chunk).zip(have.chunks(chunk)).take_while(|(w, h)| h.starts_with(w)).count())
}

/// A seed for the cut delays: `CAIRN_SEED`, else the clock. Printed.
fn seed() -> u64 {
    std::env::var("CAIRN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}

/// sha256 of the partitions of v1, the factory (committed) manifest: its
/// slot and its three layers.
fn v1_digests(disk: &Path, layout: &DiskLayout) -> Result<Vec<Digest>> {
    ["cairn-manifest-a", "cairn-layer-01", "cairn-layer-02", "cairn-layer-03"]
        .iter()
        .map(|n| partition(disk, layout, n).map(|b| Digest::of(&b)))
        .collect()
}

pub fn powercut(ctx: &Ctx) -> Result<()> {
    let seed = seed();
    eprintln!("ota-powercut: seed {seed} (CAIRN_SEED={seed} repeats the delays)");
    let mut rng = seed | 1;
    let mut next_delay = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_millis(rng % 300)
    };
    let v1 = ctx.build("ota-v1")?;
    let v2 = big_v2(ctx)?;
    let (disk, layout) = ctx.disk(&v1, "disk.img")?;
    let (stick, _) = bundle_disk(ctx, &v2, &v1, "v2.bundle")?;
    let committed_before = v1_digests(&disk, &layout)?;
    // What the journal counted when the power went mid-layer.
    let mut mid_cut: Option<cairn_format::journal::Journal> = None;
    let mut durable_at_cut = 0usize;
    for (k, (event, installing)) in CUTS.iter().enumerate() {
        // After `update.layer-written` the manifest follows within
        // milliseconds and then only one throttled write (the stage, ~0.4 s
        // later) remains: a third of the delay keeps these two cuts before
        // it (the stop is asked at least every 50 ms). A cut after the stage
        // would leave the next boot nothing of the install to reach.
        let close_to_stage = matches!(*event, "update.layer-written" | "update.manifest-written");
        let delay = if close_to_stage { next_delay() / 3 } else { next_delay() };
        let log = format!("cut-{k}-{event}.log");
        if *event == MID_LAYER {
            eprintln!("ota-powercut: cut {k} once the journal counts 2 to 4 chunks of the layer");
        } else {
            eprintln!("ota-powercut: cut {k} at {event} + {delay:?}");
        }
        let seen = std::cell::Cell::new(None::<std::time::Instant>);
        let counted = std::cell::RefCell::new(None);
        let stop = |c: &Console| {
            if *event == MID_LAYER {
                // Polled at least every 50 ms: the journal on the disk
                // counts at least two chunks of the layer and not all.
                let Ok(Some(j)) = journal_on(&disk, &layout) else { return false };
                let counted_now = j.parts.first().map_or(0, |p| p.chunks);
                let noise_chunks = BIG_LAYER_BYTES.div_ceil(j.chunk.max(1) as usize) as u32;
                let mid = c.first("update.staged", &[]).is_none() && (2..noise_chunks).contains(&counted_now);
                if mid {
                    *counted.borrow_mut() = Some(j);
                }
                return mid;
            }
            match (c.first(event, &[]), seen.get()) {
                (None, _) => false,
                (Some(_), None) => {
                    seen.set(Some(std::time::Instant::now()));
                    delay.is_zero()
                }
                (Some(_), Some(t)) => t.elapsed() >= delay,
            }
        };
        let extra: Vec<&Path> = vec![&stick];
        // Two writes a second on the boot disk: the install's writes (each
        // followed by a flush) are far enough apart that a cut after one
        // event lands before the next step's write.
        let opts = BootOptions {
            extra_disks: &extra,
            boot_drive_options: "throttling.iops-write=2",
            ..BootOptions::default()
        };
        let run = ctx.boot_with(&disk, &opts, &log, BOOT_TIMEOUT, &stop)?;
        let c = &run.console;
        let at = format!("cut {k} at {event} + {delay:?} (seed {seed})");
        no_panic(&run).with_context(|| at.clone())?;
        // The boot after the mid-layer cut resumes: it skips at least the
        // chunks the journal counted when the power went, and writes again
        // at most one chunk that was already on the disk.
        if let Some(j) = mid_cut.take() {
            let part = j.parts.first().context("the journal names no part")?;
            let resumed = c.expect("update.resumed", &[("part", "app")]).with_context(|| at.clone())?;
            let skipped: u32 = resumed.get("chunks_skipped").and_then(|v| v.parse().ok()).unwrap_or(0);
            ensure!(
                skipped >= part.chunks,
                "{at}: resumed skipping {skipped} chunks, the journal counted {}",
                part.chunks
            );
            eprintln!(
                "ota-powercut: cut mid-layer with {} of {} chunks journalled, {} durable on the disk; the next boot \
                 skipped {skipped} ({:?})",
                part.chunks,
                resumed.get("chunks").unwrap_or("?"),
                durable_at_cut,
                resumed.fields
            );
            ensure!(
                durable_at_cut <= skipped as usize + 1,
                "{at}: {durable_at_cut} chunks were on the disk, the resume skipped only {skipped}"
            );
        }
        ensure!(
            *event == MID_LAYER || c.first(event, &[]).is_some(),
            "{at}: the boot never reached {event} ({:?})",
            run.ending
        );
        ensure!(
            !close_to_stage || c.first("update.staged", &[]).is_none(),
            "{at}: the power went after update.staged, not before it: the next boot has nothing of the install to reach"
        );
        if *event == MID_LAYER {
            ensure!(run.ending == Ending::Stopped, "{at}: the layer was written before a cut could land in it");
            let j = counted.borrow_mut().take().context("no journal at the mid-layer cut")?;
            let p = j.parts.first().context("the journal names no part")?;
            durable_at_cut = chunks_on_disk(&disk, &layout, &stick, p.partition, j.chunk as usize)?;
            mid_cut = Some(j);
        }
        // Every boot verifies a manifest: the committed v1 while installing,
        // the trial's v2 after staging.
        let want = if *installing { ("a", "1") } else { ("b", "2") };
        c.expect("manifest.verified", &[("slot", want.0), ("version", want.1)]).with_context(|| at.clone())?;
        let s = state(&disk, &layout)?;
        ensure!(
            s.committed == Slot::A && s.rollback_floor == 1 || run.console.first("update.committed", &[]).is_some(),
            "{at}: the committed slot or floor changed without a commit: {s:?}"
        );
        ensure!(
            v1_digests(&disk, &layout)? == committed_before,
            "{at}: a partition of the committed manifest was written"
        );
    }
    // Power stays on: the last try commits.
    let run = boot_with_stick(ctx, &disk, Some(&stick), "final.log")?;
    powered_off(&run)?;
    let c = &run.console;
    c.expect("update.trial", &[("slot", "b"), ("tries_left", "0")])?;
    c.expect("update.committed", &[("slot", "b"), ("version", "2"), ("rollback_floor", "2")])?;
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::B && s.trial.is_none() && s.rollback_floor == 2, "not committed: {s:?}");
    Ok(())
}

/// sha256 of every partition but `cairn-data` (which the running
/// appliance may write).
pub(super) fn system_digests(disk: &Path, layout: &DiskLayout) -> Result<Vec<(String, Digest)>> {
    layout
        .partitions
        .iter()
        .filter(|p| p.name != "cairn-data")
        .map(|p| partition(disk, layout, &p.name).map(|b| (p.name.clone(), Digest::of(&b))))
        .collect()
}

/// Between two [`system_digests`], exactly the new layer's partition
/// (`layer`: the first spare, `cairn-layer-04` after v1's three), manifest
/// slot b and the record were written: the committed manifest's
/// partitions, the ESP and the other spare were not touched.
pub(super) fn only_staging_written(before: &[(String, Digest)], after: &[(String, Digest)], layer: &str) -> Result<()> {
    let changed: Vec<&str> =
        before.iter().zip(after).filter(|((_, b), (_, a))| a != b).map(|((n, _), _)| n.as_str()).collect();
    ensure!(changed == ["cairn-state", "cairn-manifest-b", layer], "partitions written: {changed:?}");
    Ok(())
}

/// A full bundle (no base) of `app`, TOC signed by `key`.
fn full_bundle(ctx: &Ctx, app: &BuiltAppliance, key: &ed25519_dalek::SigningKey, file: &str) -> Result<PathBuf> {
    let path = ctx.dir.join(file);
    let input = BundleInput {
        envelope: &app.envelope,
        manifest: &app.manifest,
        layers: &app.layers,
        base: None,
        boot_image: None,
    };
    bundle::write_bundle(&input, key, &path)?;
    let len = std::fs::metadata(&path)?.len();
    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(len.div_ceil(1 << 20) * (1 << 20))?;
    Ok(path)
}

pub fn antirollback(ctx: &Ctx) -> Result<()> {
    let v1 = ctx.build("ota-v1")?;
    let v2 = ctx.build("ota-v2")?;
    let v3 = ctx.build("ota-v3")?;
    let other = ctx.build("wrong-product")?;
    // The factory image is v2: its floor (2) holds from the first boot.
    let (disk, layout) = ctx.disk(&v2, "disk.img")?;
    let older = full_bundle(ctx, &v1, &ctx.art.key, "older.bundle")?;
    let foreign = full_bundle(ctx, &other, &ctx.art.key, "other-product.bundle")?;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
    let untrusted = full_bundle(ctx, &v3, &stranger, "untrusted.bundle")?;
    // A newer bundle with one byte of its layer part flipped.
    let (tampered, _) = bundle_disk(ctx, &v3, &v2, "tampered.bundle")?;
    let toc = bundle::read_bundle(&tampered)?.toc;
    let layer = toc.layers.first().context("the thin v3 bundle carries no layer")?;
    let mut bytes = std::fs::read(&tampered)?;
    let at = usize::try_from(layer.part.offset + layer.part.size / 2)?;
    bytes[at] ^= 0x40;
    std::fs::write(&tampered, &bytes)?;

    let before = system_digests(&disk, &layout)?;
    let cases = [
        (&older, "below-floor", "older.log"),
        (&foreign, "wrong-product", "other-product.log"),
        (&untrusted, "bad-bundle", "untrusted.log"),
        (&tampered, "bad-bundle", "tampered.log"),
    ];
    for (stick, reason, log) in cases {
        let run = boot_with_stick(ctx, &disk, Some(stick.as_path()), log)?;
        powered_off(&run).with_context(|| log.to_owned())?;
        let c = &run.console;
        c.expect("manifest.verified", &[("slot", "a"), ("version", "2")])?;
        let refused = c.expect("update.refused", &[]).with_context(|| log.to_owned())?;
        ensure!(refused.get("reason") == Some(reason), "{log}: refused {:?}, not {reason}", refused.fields);
        ensure!(c.first("update.claimed", &[]).is_none(), "{log}: a refused bundle claimed a slot");
        let after = system_digests(&disk, &layout)?;
        for ((name, b), (_, a)) in before.iter().zip(&after) {
            ensure!(a == b, "{log}: partition {name} changed");
        }
    }
    Ok(())
}

/// `ota-watchdog`: a trial whose PID 1 hangs (the test-hooks init with
/// `cairn.test.hang=trial`, which hangs only on a trial boot): the
/// watchdog resets the machine, each reset has spent a try, and once they
/// are gone the committed v1 boots (and does not hang).
pub fn watchdog(ctx: &Ctx) -> Result<()> {
    let kit = ctx.art.test_hooks_kit.as_ref().context("no test-hooks boot kit (xtask builds it for this scenario)")?;
    let kit = cairn_build::bootkit::BootKit {
        cmdline: format!("{} cairn.test.hang=trial cairn.watchdog=5", kit.cmdline),
        ..kit.clone()
    };
    let v1 = ctx.build("ota-v1")?;
    let v2 = ctx.build("ota-v2")?;
    let esp = kit.factory_esp(&v1.manifest.compatible, v1.manifest.version)?;
    let (disk, layout) = ctx.disk_with_esp(&v1, "disk.img", &esp)?;
    let (stick, _) = bundle_disk(ctx, &v2, &v1, "v2.bundle")?;
    // Boot 1: not a trial, no hang: v2 is installed and staged.
    let run = boot_with_stick(ctx, &disk, Some(&stick), "install.log")?;
    rebooted(&run)?;
    ensure!(run.console.first("test.hang", &[]).is_none(), "hung outside a trial");
    run.console.expect("update.staged", &[("slot", "b"), ("tries", "3")])?;
    // Then resets are allowed: every trial boot hangs and is reset.
    let opts = BootOptions { allow_reset: true, ..BootOptions::default() };
    let after_rollback = |c: &Console| {
        c.first("update.rolled-back", &[])
            .is_some_and(|r| c.all("boot.containers-started", &[]).iter().any(|s| s.index > r.index))
    };
    let run = ctx.boot_with(&disk, &opts, "trials.log", BOOT_TIMEOUT * 2, &after_rollback)?;
    no_panic(&run)?;
    let c = &run.console;
    ensure!(
        run.ending == Ending::Stopped,
        "the trials did not end in v1 running: {:?} after {:?}",
        run.ending,
        run.elapsed
    );
    for left in ["2", "1", "0"] {
        c.expect("update.trial", &[("slot", "b"), ("tries_left", left)])?;
    }
    ensure!(c.all("test.hang", &[]).len() == 3, "{} hangs, not one per try", c.all("test.hang", &[]).len());
    ensure!(c.all("boot.start", &[]).len() == 4, "{} boots, not 3 reset trials and v1", c.all("boot.start", &[]).len());
    c.expect("update.rolled-back", &[("slot", "b"), ("reason", "out-of-tries"), ("booting", "a")])?;
    ensure!(c.first("update.committed", &[]).is_none(), "a hung trial committed");
    let s = state(&disk, &layout)?;
    ensure!(s.committed == Slot::A && s.trial.is_none() && s.rollback_floor == 1, "after the resets: {s:?}");
    ensure!(slot_status(&s) == [SlotStatus::Good, SlotStatus::Bad], "statuses {:?}", s.status);
    Ok(())
}
