//! `bad-signature`: a flipped byte in the manifest, or a signature by a key
//! the device does not trust: nothing starts, the event names the reason,
//! and PID 1 stays up. The device's keys and product come from its
//! initramfs (`trust.loaded`); an initramfs without them makes the device
//! refuse every manifest, even a good one (`trust.invalid`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use cairn_build::bootkit::BootKit;
use cairn_build::{initramfs, kmod};
use ed25519_dalek::SigningKey;

use super::no_panic;
use crate::console::Console;
use crate::qemu::{self, BootFiles, Run};
use crate::{Ctx, Ending};

/// How long PID 1 must be seen alive after refusing the manifest.
const ALIVE: Duration = Duration::from_secs(4);

pub fn run(ctx: &Ctx) -> Result<()> {
    // One flipped byte in the middle of the signed payload.
    let mut flipped = ctx.build("bad-signature")?;
    let mid =
        cairn_format::envelope::HEADER_LEN + (flipped.envelope.len() - cairn_format::envelope::HEADER_LEN - 64) / 2;
    flipped.envelope[mid] ^= 0x01;
    check(ctx, &flipped, "flipped.img", "does not verify")?;

    // A valid signature from a key the device does not know.
    let stranger = SigningKey::from_bytes(&[0x5a; 32]);
    let untrusted = ctx.build_signed("bad-signature", &stranger)?;
    check(ctx, &untrusted, "untrusted.img", "untrusted key")?;

    // A good manifest, but an initramfs without trust data.
    no_trust_data(ctx)
}

/// Boot `disk` with `boot` until PID 1 has been seen alive [`ALIVE`] after
/// `boot.failed`.
fn boot_refused(ctx: &Ctx, boot: &BootFiles, disk: &Path, file: &str) -> Result<Run> {
    let seen = std::cell::Cell::new(None::<Instant>);
    let stop = |c: &Console| {
        if seen.get().is_none() && c.first("boot.failed", &[]).is_some() {
            seen.set(Some(Instant::now()));
        }
        seen.get().is_some_and(|t| t.elapsed() >= ALIVE)
    };
    let run = qemu::capture(
        qemu::command(ctx.board, boot, disk, ""),
        &disk.with_extension("log"),
        super::BOOT_TIMEOUT,
        &stop,
    )?;
    no_panic(&run)?;
    ensure!(
        run.ending == Ending::Stopped,
        "{file}: QEMU {:?} before PID 1 was seen alive {ALIVE:?} after boot.failed",
        run.ending
    );
    Ok(run)
}

fn check(ctx: &Ctx, app: &cairn_build::assemble::BuiltAppliance, file: &str, reason: &str) -> Result<()> {
    let (disk, _) = ctx.disk(app, file)?;
    let run = boot_refused(ctx, &ctx.art.boot, &disk, file)?;
    let c = &run.console;
    // The device's trust data came from its initramfs (xtask's dev key).
    let loaded = c.expect("trust.loaded", &[("keys", "1"), ("product", "cairn-qemu-dev")])?;
    let id = cairn_build::keys::id_of(&ctx.art.key).to_string();
    ensure!(loaded.get("ids") == Some(id.as_str()), "{file}: trust.loaded ids {:?}, not {id}", loaded.get("ids"));
    let rejected = c.expect("manifest.rejected", &[("slot", "a")])?;
    let why = rejected.get("reason").unwrap_or("");
    ensure!(why.contains(reason), "{file}: reason {why:?} does not say {reason:?}");
    c.expect("boot.failed", &[])?;
    ensure!(c.first("container.started", &[]).is_none(), "{file}: a container started");
    ensure!(c.first("layer.mounted", &[]).is_none(), "{file}: a layer was mounted");
    Ok(())
}

/// The same initramfs as the board's, without `/etc/cairn/trusted-keys`
/// and `/etc/cairn/product`: a correctly signed manifest for the right
/// product is refused (slot b, empty, is never tried), each missing file is a
/// `trust.invalid` event, and PID 1 stays up.
fn no_trust_data(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("bad-signature")?;
    let (version, dir) = kmod::find_module_dir(&ctx.art.kernel_tree)?;
    let modules = kmod::resolve_modules(&dir, &version, &ctx.board.modules())?;
    let on_demand = kmod::OnDemand::resolve(&dir, &version, &modules, kmod::Wanted::of(ctx.board))?;
    // Slot a's image carries an initramfs without trust data.
    let initramfs = initramfs::build_without_trust(&ctx.art.init, &modules, &on_demand)?;
    let kit = BootKit { initramfs, ..ctx.art.kit.clone() };
    let esp = kit.factory_esp(&app.manifest.compatible, app.manifest.version)?;
    let (disk, _) = ctx.disk_with_esp(&app, "no-trust.img", &esp)?;
    let run = boot_refused(ctx, &ctx.art.boot, &disk, "no-trust.img")?;
    let c = &run.console;
    for file in ["/etc/cairn/trusted-keys", "/etc/cairn/product"] {
        let e = c.expect("trust.invalid", &[("file", file)])?;
        ensure!(e.get("reason") == Some("open: ENOENT"), "{file}: reason {:?}", e.get("reason"));
    }
    ensure!(c.first("trust.loaded", &[]).is_none(), "trust.loaded without trust data");
    let r = c.expect("manifest.rejected", &[("slot", "a")])?;
    let why = r.get("reason").unwrap_or("");
    ensure!(why.contains("no valid trust data"), "slot a: reason {why:?}");
    // Slot b is empty on a factory disk: never a candidate.
    ensure!(c.first("manifest.rejected", &[("slot", "b")]).is_none(), "the empty slot b was tried");
    let failed = c.expect("boot.failed", &[])?;
    ensure!(
        failed.get("reason").unwrap_or("").contains("no valid trust data"),
        "boot.failed: {:?}",
        failed.get("reason")
    );
    ensure!(c.first("manifest.verified", &[]).is_none(), "a manifest was accepted without trust data");
    ensure!(c.first("container.started", &[]).is_none(), "a container started");
    Ok(())
}
