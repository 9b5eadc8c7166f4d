//! `bad-signature`: a flipped byte in the manifest, or a signature by a key
//! the init does not trust: nothing starts, the event names the reason, and
//! PID 1 stays up.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use ed25519_dalek::SigningKey;

use super::no_panic;
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
    check(ctx, &untrusted, "untrusted.img", "untrusted key")
}

fn check(ctx: &Ctx, app: &cairn_build::assemble::BuiltAppliance, file: &str, reason: &str) -> Result<()> {
    let (disk, _) = ctx.disk(app, file)?;
    let seen = std::cell::Cell::new(None::<Instant>);
    let run = ctx.boot(&disk, super::BOOT_TIMEOUT, &|c| {
        if seen.get().is_none() && c.first("boot.failed", &[]).is_some() {
            seen.set(Some(Instant::now()));
        }
        seen.get().is_some_and(|t| t.elapsed() >= ALIVE)
    })?;
    no_panic(&run)?;
    ensure!(
        run.ending == Ending::Stopped,
        "{file}: QEMU {:?} before PID 1 was seen alive {ALIVE:?} after boot.failed",
        run.ending
    );
    let c = &run.console;
    let rejected = c.expect("manifest.rejected", &[("slot", "a")])?;
    let why = rejected.get("reason").unwrap_or("");
    ensure!(why.contains(reason), "{file}: reason {why:?} does not say {reason:?}");
    c.expect("boot.failed", &[])?;
    ensure!(c.first("container.started", &[]).is_none(), "{file}: a container started");
    ensure!(c.first("layer.mounted", &[]).is_none(), "{file}: a layer was mounted");
    Ok(())
}
