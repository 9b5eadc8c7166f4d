//! `verity-tamper` (issue 10): one byte flipped inside a file's data in a
//! layer partition, by the harness, before the boot (what a second bus
//! master or an evil maid would do after the image was written). The layer
//! mounts (its first block is intact: nothing is hashed at boot); reading
//! the file gets EIO from dm-verity, `layer.corrupt` names the layer, its
//! dm device, the kind and the block (once, though the file is read twice),
//! the kernel logs the block, another file of the same layer reads whole,
//! and a container that does not use the layer is unaffected. A second
//! boot of the same tampered layer with `on_corruption = "restart"`: the
//! kernel restarts the device on that read.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use cairn_build::assemble;
use cairn_format::manifest::{LayerCheck, OnCorruption};

use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::Ctx;

/// Size of each file: two 128 KiB squashfs blocks of incompressible bytes
/// (stored as they are, so the harness finds them in the image).
const FILE_BYTES: usize = 256 * 1024;
/// Where in /blob/bad the byte is flipped (its second squashfs block).
const FLIP_AT: usize = 192 * 1024 + 123;

/// Deterministic incompressible bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Build the appliance file at `path` with the blob layer, assemble
/// `disk_file`, and flip one byte inside /blob/bad's data in the blob
/// layer's partition. Returns the disk, the blob layer and the 4 KiB data
/// block that holds the flipped byte.
fn tampered_disk(
    ctx: &Ctx,
    path: &Path,
    disk_file: &str,
) -> Result<(PathBuf, assemble::BuiltAppliance, cairn_build::assemble::BuiltLayer, u64)> {
    let src = ctx.dir.join("blob-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("blob"))?;
    let bad = noise(0x5eed_0001, FILE_BYTES);
    std::fs::write(src.join("blob/bad"), &bad)?;
    std::fs::write(src.join("blob/good"), noise(0x5eed_0002, FILE_BYTES))?;
    let sources =
        BTreeMap::from([("payload".to_owned(), ctx.art.payload_root.clone()), ("blob".to_owned(), src.clone())]);
    let app = assemble::build_appliance(path, &sources, &ctx.art.key, &ctx.dir.join("layers"))
        .with_context(|| format!("building {}", path.display()))?;
    let (disk, layout) = ctx.disk(&app, disk_file)?;
    let (n, blob) = app.layers.iter().enumerate().find(|(_, l)| l.name == "blob").context("no blob layer")?;
    let blob = blob.clone();
    let part = layout.find(&format!("cairn-layer-{:02}", n + 1)).context("no partition for blob")?;

    // Find the flipped byte's neighbourhood in the partition's image.
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&disk)?;
    let mut image = vec![0u8; blob.size as usize];
    f.seek(SeekFrom::Start(part.offset_bytes))?;
    f.read_exact(&mut image)?;
    let needle = &bad[FLIP_AT - 32..FLIP_AT + 32];
    let found =
        image.windows(needle.len()).position(|w| w == needle).context("bad's bytes not found raw in the image")?;
    let at = (found + 32) as u64;
    ensure!(at >= 4096, "the flipped byte would be in the first block");
    f.seek(SeekFrom::Start(part.offset_bytes + at))?;
    f.write_all(&[image[at as usize] ^ 0x01])?;
    Ok((disk, app, blob, at / 4096))
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let path = crate::appliances_dir().join("verity-tamper.toml");
    let (disk, _, blob, block) = tampered_disk(ctx, &path, "disk.img")?;
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let digest = blob.digest.to_string();
    // Mounted: nothing at boot reads that block.
    let mounted = c.expect("layer.mounted", &[("name", "blob"), ("check", "verity")])?;
    let dm = mounted.get("dm").context("layer.mounted without dm")?.to_owned();
    // The reader: EIO on bad (twice), good reads whole.
    let reads = c.all("read-file", &[("path", "/blob/bad")]);
    ensure!(reads.len() == 2, "reads of /blob/bad: {:?}", reads.iter().map(|l| &l.fields).collect::<Vec<_>>());
    for r in &reads {
        ensure!(r.get("error") == Some("EIO") && r.get("errno") == Some("5"), "bad read: {:?}", r.fields);
    }
    let good = c.expect("read-file", &[("path", "/blob/good")])?;
    ensure!(good.get("bytes") == Some(&FILE_BYTES.to_string()[..]), "good read: {:?}", good.fields);
    // One event for the block, naming layer, digest, dm device, kind.
    let block = block.to_string();
    let want =
        [("name", "blob"), ("digest", digest.as_str()), ("dm", dm.as_str()), ("kind", "data"), ("block", &block)];
    c.expect("layer.corrupt", &want)?;
    let all = c.all("layer.corrupt", &[]);
    ensure!(all.len() == 1, "layer.corrupt events: {:?}", all.iter().map(|l| &l.fields).collect::<Vec<_>>());
    ensure!(c.contains(&format!("data block {block} is corrupted")), "the kernel did not log the block");
    // The reader failed by itself; nothing else did.
    c.expect("container.exited", &[("name", "reader"), ("code", "1")])?;
    c.expect("inspect", &[("name", "bystander")])?;
    ensure!(
        c.first("container.exited", &[("name", "bystander")])
            .is_none_or(|e| { c.first("shutdown.start", &[]).is_some_and(|s| s.index < e.index) }),
        "the bystander exited before the shutdown"
    );
    for l in ["base", "tools"] {
        c.expect("layer.mounted", &[("name", l), ("check", "verity")])?;
    }
    ensure!(c.first("dm.remove-failed", &[]).is_none(), "a verity target was not removed at shutdown");
    restart_policy(ctx, &path)
}

/// The same tampered layer with `on_corruption = "restart"`: the first
/// read of the block restarts the device (QEMU runs with -no-reboot, so it
/// exits), before any shutdown.
fn restart_policy(ctx: &Ctx, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let base = crate::appliances_dir().join("../../images/examples/base");
    let text = text
        .replacen(
            "compatible = \"cairn-qemu-dev\"\n",
            "compatible = \"cairn-qemu-dev\"\non_corruption = \"restart\"\n",
            1,
        )
        .replace("../../images/examples/base", &base.display().to_string());
    ensure!(text.contains("on_corruption = \"restart\""), "the appliance file changed");
    let restart = ctx.dir.join("verity-restart.toml");
    std::fs::write(&restart, text)?;
    let (disk, app, _, _) = tampered_disk(ctx, &restart, "restart.img")?;
    ensure!(
        app.manifest.layer_check == LayerCheck::Verity(OnCorruption::Restart),
        "layer_check: {:?}",
        app.manifest.layer_check
    );
    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    ensure!(run.ending == crate::Ending::Exited, "QEMU {:?}", run.ending);
    let c = &run.console;
    ensure!(c.contains("Restarting system with command 'dm-verity device corrupted'"), "no verity restart");
    c.expect("layer.mounted", &[("name", "blob"), ("check", "verity")])?;
    ensure!(c.first("shutdown.start", &[]).is_none(), "a shutdown before the restart");
    Ok(())
}
