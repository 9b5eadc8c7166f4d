//! `cli-disk`: the `cairn` command, run as a user runs it, makes a disk
//! that boots. A tar of the payload becomes a layer (`cairn layer build`),
//! the appliance file names it by `file` and the base layer by `source`
//! (`cairn manifest build`), the signature is checked (`cairn manifest
//! verify`), and `cairn image assemble` writes the disk and the initramfs
//! beside it. The device boots that initramfs and disk, verifies the
//! manifest, mounts both layers and the ext4 data partition, runs the
//! container and powers off.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cairn_build::gpt;

use crate::qemu;
use crate::Ctx;

/// Run `cairn ARGS` in `dir`; its stdout, or an error with its stderr.
fn cairn(ctx: &Ctx, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(&ctx.art.cli)
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", ctx.art.cli.display()))?;
    ensure!(out.status.success(), "cairn {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A plain tar of `root` (the payload program), as `tar -C root -cf` makes.
fn tar_of(root: &Path, out: &Path) -> Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", root).with_context(|| format!("archiving {}", root.display()))?;
    std::fs::write(out, b.into_inner()?).with_context(|| format!("writing {}", out.display()))
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let dir = &ctx.dir;
    tar_of(&ctx.art.payload_root, &dir.join("tools.tar"))?;
    let built = cairn(ctx, dir, &["layer", "build", "tools.tar", "--out", "layers/tools.squashfs"])?;
    ensure!(built.contains("sha256:") || built.split_whitespace().any(|w| w.len() == 64), "no digest in {built}");

    let base = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/examples/base"))?;
    let toml = format!(
        r#"appliance = "cli-disk"
version = 5
compatible = "cairn-qemu-dev"

[[layer]]
name = "base"
source = "{}"

[[layer]]
name = "tools"
file = "layers/tools.squashfs"

[[container]]
name = "hello"
layers = ["base", "tools"]
argv = ["/bin/cairn-payload", "demo", "sensor", "300"]

[[container]]
name = "driver"
layers = ["base", "tools"]
argv = ["/bin/cairn-payload", "ctl", "--delay-ms", "2500", "poweroff"]
control = true
restart = {{ policy = "never" }}
"#,
        base.display()
    );
    std::fs::write(dir.join("appliance.toml"), toml)?;
    let key = ctx.art.key_file.to_string_lossy().into_owned();
    cairn(
        ctx,
        dir,
        &["manifest", "build", "appliance.toml", "--key", &key, "--out", "out/app.manifest", "--layers", "layers"],
    )?;
    let verified = cairn(ctx, dir, &["manifest", "verify", "out/app.manifest", "--pubkey", &key])?;
    ensure!(verified.contains("good signature"), "verify said: {verified}");

    let init = ctx.art.init.to_string_lossy().into_owned();
    let public = cairn_build::keys::public_path(&ctx.art.key_file).to_string_lossy().into_owned();
    let tree = ctx.art.kernel_tree.to_string_lossy().into_owned();
    let systemd_boot = ctx.art.systemd_boot.to_string_lossy().into_owned();
    cairn(
        ctx,
        dir,
        &[
            "image",
            "assemble",
            "--board",
            ctx.board.name,
            "--manifest",
            "out/app.manifest",
            "--layers",
            "layers",
            "--init",
            &init,
            "--trust",
            &public,
            "--product",
            "cairn-qemu-dev",
            "--kernel",
            &tree,
            "--systemd-boot",
            &systemd_boot,
            "--out",
            "out/disk.img",
        ],
    )?;
    let disk = dir.join("out/disk.img");
    let layout = gpt::read_layout(&disk)?;
    let names: Vec<&str> = layout.partitions.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "cairn-esp",
        "cairn-state",
        "cairn-manifest-a",
        "cairn-manifest-b",
        "cairn-layer-01",
        "cairn-layer-04",
        "cairn-data",
    ] {
        ensure!(names.contains(&want), "no {want} partition in {names:?}");
    }

    // Boot what the command wrote: the disk alone, through the firmware.
    let opts = qemu::BootOptions::default();
    let run = ctx.boot_with(&disk, &opts, "out/disk.log", super::BOOT_TIMEOUT, &super::until_exit)?;
    super::powered_off(&run)?;
    let c = &run.console;
    c.expect("boot.slot", &[("slot", "a"), ("state", "blessed")])?;
    c.expect("trust.loaded", &[("product", "cairn-qemu-dev")])?;
    c.expect("manifest.verified", &[("appliance", "cli-disk"), ("version", "5")])?;
    c.expect("layer.mounted", &[("name", "base")])?;
    c.expect("layer.mounted", &[("name", "tools")])?;
    c.expect("data.mounted", &[("fs", "ext4")])?;
    let ticks = c.all("tick", &[("name", "hello")]).len();
    ensure!(ticks >= 2, "hello ticked {ticks} times");
    Ok(())
}
