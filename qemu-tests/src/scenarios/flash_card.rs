//! `flash-card`: what a user flashes boots. `cairn image assemble --bmap
//! --zstd` writes the disk, its map and the compressed disk; `bmaptool copy
//! disk.img.zst` (finding `disk.img.bmap` beside it) writes it onto a "used
//! card": a loop device over a file 64 MiB larger than the disk, full of an
//! earlier image's leftovers (0xA5). The harness checks what bmaptool wrote
//! (the mapped blocks, the zeroed head of the empty manifest slot b) and
//! left (the rest of slot b, the space after the image), then boots the
//! card: the GPT's backup header is not at the end of this larger disk,
//! and the device boots all the same (manifest, layers, data, containers).
//!
//! Needs root (a loop device) and bmaptool (bmap-tools, which `cargo xtask`
//! installs with the test tools).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use cairn_build::gpt;

use crate::qemu;
use crate::Ctx;

/// Run `program ARGS` in `dir`; its stdout, or an error with its stderr.
fn run_tool(program: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    ensure!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const LEFTOVER: u8 = 0xA5;

pub fn run(ctx: &Ctx) -> Result<()> {
    let dir = &ctx.dir;
    let Some(bmaptool) = find("bmaptool") else {
        bail!("bmaptool is not installed (Debian package bmap-tools; `cargo xtask qemu-test` installs it as root)");
    };
    let app = ctx.build_signed("flash-card", &ctx.art.key)?;
    std::fs::write(dir.join("app.manifest"), &app.envelope)?;
    let init = ctx.art.init.to_string_lossy().into_owned();
    let tree = ctx.art.kernel_tree.to_string_lossy().into_owned();
    let public = cairn_build::keys::public_path(&ctx.art.key_file).to_string_lossy().into_owned();
    let systemd_boot = ctx.art.systemd_boot.to_string_lossy().into_owned();
    let layers = ctx.layers_dir("flash-card").to_string_lossy().into_owned();
    let cli = &ctx.art.cli;
    #[rustfmt::skip]
    let args = [
        "image", "assemble", "--board", ctx.board.name, "--manifest", "app.manifest", "--layers", &layers,
        "--init", &init, "--kernel", &tree, "--systemd-boot", &systemd_boot, "--trust", &public,
        "--product", "cairn-qemu-dev", "--out", "disk.img", "--bmap", "--zstd", "--quiet",
    ];
    run_tool(cli, dir, &args)?;
    let disk = std::fs::read(dir.join("disk.img"))?;
    let layout = gpt::read_layout(&dir.join("disk.img"))?;
    let slot_b = layout.find("cairn-manifest-b").context("no cairn-manifest-b")?.offset_bytes as usize;

    // The used card: 64 MiB larger than the disk, full of leftovers.
    let card = dir.join("card.img");
    let card_len = disk.len() + (64 << 20);
    std::fs::write(&card, vec![LEFTOVER; card_len])?;
    let out = run_tool(Path::new("losetup"), dir, &["--find", "--show", &card.to_string_lossy()])?;
    let loopdev = out.trim().to_owned();
    let flashed = run_tool(&bmaptool, dir, &["copy", "disk.img.zst", &loopdev]);
    let detached = run_tool(Path::new("losetup"), dir, &["--detach", &loopdev]);
    flashed?;
    detached?;

    let c = std::fs::read(&card)?;
    ensure!(c.len() == card_len, "the card changed size");
    // Every mapped block is the disk's; everything bmaptool did not map
    // kept the leftovers (it writes only what the map names).
    let map = std::fs::read_to_string(dir.join("disk.img.bmap"))?;
    let mut mapped = vec![false; disk.len() / 4096];
    for l in map.lines().filter_map(|l| l.trim().strip_prefix("<Range chksum=\"")) {
        let blocks = l.split_once("\"> ").map(|(_, r)| r.trim_end_matches(" </Range>")).unwrap_or_default();
        let (a, b) = blocks.split_once('-').unwrap_or((blocks, blocks));
        for i in a.parse::<usize>()?..=b.parse::<usize>()? {
            *mapped.get_mut(i).context("a range past the disk")? = true;
        }
    }
    for (i, m) in mapped.iter().enumerate() {
        let (on_card, in_image) = (&c[i * 4096..(i + 1) * 4096], &disk[i * 4096..(i + 1) * 4096]);
        if *m {
            ensure!(on_card == in_image, "mapped block {i} differs from the disk");
        } else {
            ensure!(on_card.iter().all(|b| *b == LEFTOVER), "unmapped block {i} was written");
        }
    }
    ensure!(c[slot_b..slot_b + gpt::EMPTY_HEAD].iter().all(|b| *b == 0), "slot b's head is not zeroed");
    ensure!(c[slot_b + gpt::EMPTY_HEAD] == LEFTOVER, "slot b past its head was written");
    ensure!(c[disk.len()..].iter().all(|b| *b == LEFTOVER), "bmaptool wrote past the image");

    // Boot the card: the firmware finds the loader on its ESP.
    let run =
        ctx.boot_with(&card, &qemu::BootOptions::default(), "card.log", super::BOOT_TIMEOUT, &super::until_exit)?;
    super::powered_off(&run)?;
    let con = &run.console;
    con.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    con.expect("manifest.verified", &[("slot", "a"), ("appliance", "flash-card")])?;
    con.expect("layer.mounted", &[("name", "base")])?;
    con.expect("layer.mounted", &[("name", "tools")])?;
    con.expect("data.mounted", &[("fs", "ext4")])?;
    let ticks = con.all("tick", &[("name", "hello")]).len();
    ensure!(ticks >= 2, "hello ticked {ticks} times");
    // The card is the disk plus 64 MiB: not kept once the scenario passed.
    let _ = std::fs::remove_file(&card);
    Ok(())
}

/// A program on PATH or in the sbin directories.
fn find(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
