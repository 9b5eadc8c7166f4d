//! `corrupt-layer`: one flipped byte in a layer's first 4 KiB block (its
//! squashfs superblock: `mkfs_time`, a field squashfs itself ignores): the
//! verity target's first block does not match the signed root hash, so the
//! layer is refused at mount (not at first read); the containers that use
//! it do not start, the event names the digest, the others run. (A flipped
//! byte elsewhere is caught when it is read: `verity-tamper`.)

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{ensure, Context, Result};

use super::{powered_off, until_exit, BOOT_TIMEOUT};
use crate::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let app = ctx.build("corrupt-layer")?;
    let (disk, layout) = ctx.disk(&app, "disk.img")?;
    let (n, bad) = app.layers.iter().enumerate().find(|(_, l)| l.name == "app").context("no app layer")?;
    let part = layout.find(&format!("cairn-layer-{:02}", n + 1)).context("no partition for app")?;
    // Byte 9: inside the superblock's mkfs_time (offset 8).
    let at = part.offset_bytes + 9;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&disk)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x40;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&b)?;
    drop(f);

    let run = ctx.boot(&disk, BOOT_TIMEOUT, &until_exit)?;
    powered_off(&run)?;
    let c = &run.console;
    let digest = bad.digest.to_string();
    let e = c.expect("layer.corrupt", &[("name", "app"), ("digest", &digest), ("block", "0")])?;
    ensure!(e.get("reason").is_some_and(|r| r.contains("root hash")), "reason: {:?}", e.fields);
    ensure!(c.first("layer.mounted", &[("name", "app")]).is_none(), "the corrupt layer was mounted");
    let failed = c.expect("container.failed", &[("name", "victim")])?;
    ensure!(
        failed.get("reason").is_some_and(|r| r.contains("app")),
        "victim failure does not name the layer: {:?}",
        failed.fields
    );
    ensure!(c.first("container.started", &[("name", "victim")]).is_none(), "victim started on a corrupt layer");
    c.expect("container.started", &[("name", "good")])?;
    c.expect("inspect", &[("name", "good")])?;
    Ok(())
}
