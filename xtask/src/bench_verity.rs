//! `cargo xtask bench verity`: how long the device takes from a verified
//! manifest to its last layer mounted, for one big layer of 16, 128 and
//! 512 MiB (pseudo-random, so squashfs cannot shrink it), checked with
//! dm-verity (`layer_check = "verity"`: a target set up, blocks checked on
//! read) and with the whole-image sha256 at boot (`"digest"`). Every
//! (size, check) disk boots once per round, rounds interleaved, so drift
//! hits every contender alike. Also reports the hash tree's size on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_build::assemble::{self, DiskOptions};
use cairn_build::layer::{self, LayerOptions};
use cairn_qemu_tests::{qemu, Artifacts};

/// Layer sizes, MiB.
const SIZES: [u64; 3] = [16, 128, 512];
/// The two ways a layer is checked.
const CHECKS: [&str; 2] = ["verity", "digest"];

/// A directory holding one pseudo-random file of `mib` MiB (made once).
fn big_source(dir: &Path, mib: u64) -> Result<PathBuf> {
    let src = dir.join(format!("src-{mib}"));
    let file = src.join("blob");
    if std::fs::metadata(&file).map(|m| m.len()).ok() == Some(mib << 20) {
        return Ok(src);
    }
    std::fs::create_dir_all(&src)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ mib;
    let mut data = Vec::with_capacity((mib << 20) as usize);
    while (data.len() as u64) < mib << 20 {
        // xorshift64: fast, deterministic, incompressible.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&file, &data).with_context(|| format!("writing {}", file.display()))?;
    Ok(src)
}

/// The big layer's image, built once per size.
fn big_layer(dir: &Path, mib: u64) -> Result<PathBuf> {
    let out = dir.join(format!("big-{mib}.squashfs"));
    if out.exists() {
        return Ok(out);
    }
    let src = big_source(dir, mib)?;
    eprintln!("xtask: building a {mib} MiB layer");
    layer::build(&src, &out, &LayerOptions::default(), &mut |_| {})?;
    Ok(out)
}

/// One disk: the payload layer plus the big one, one container.
fn disk(art: &Artifacts, dir: &Path, mib: u64, check: &str) -> Result<(PathBuf, u64, u64)> {
    let big = big_layer(dir, mib)?;
    let case = dir.join(format!("{check}-{mib}"));
    std::fs::create_dir_all(&case)?;
    let toml = case.join("appliance.toml");
    std::fs::write(
        &toml,
        format!(
            "appliance = \"bench-layers\"\nversion = 1\ncompatible = \"cairn-qemu-dev\"\nlayer_check = \"{check}\"\n\n\
             [[layer]]\nname = \"tools\"\nsource = \"build:payload\"\n\n\
             [[layer]]\nname = \"big\"\nfile = \"{}\"\n\n\
             [[container]]\nname = \"idle\"\nlayers = [\"big\", \"tools\"]\nargv = [\"/bin/cairn-payload\", \"demo\", \"sensor\", \"60000\"]\n",
            big.display()
        ),
    )?;
    let sources = art.build_sources();
    let app = assemble::build_appliance(&toml, &sources, &art.key, &case.join("layers"))?;
    let slot = app.layers.iter().map(|l| l.partition_bytes()).max().unwrap_or(0).div_ceil(1 << 20) << 20;
    let out = case.join("disk.img");
    let opts = DiskOptions { layer_slot_bytes: slot, spare_layer_slots: 0, ..DiskOptions::default() };
    assemble::assemble_disk(&app, &out, opts, None)?;
    let l = app.layers.iter().find(|l| l.name == "big").context("no big layer")?;
    Ok((out, l.size, l.partition_bytes() - l.size))
}

/// Seconds from `manifest.verified` to the last `layer.mounted`.
fn boot_once(b: &'static cairn_board::Board, art: &Artifacts, disk: &Path, log: &Path) -> Result<f64> {
    let cmd = qemu::command(b, &art.boot, disk, "");
    let run = qemu::capture(cmd, log, Duration::from_secs(600), &|c| {
        c.first("boot.containers-started", &[]).is_some() || c.first("boot.failed", &[]).is_some()
    })?;
    let t = |l: &cairn_qemu_tests::console::Line| l.get("t").and_then(|t| t.parse::<f64>().ok());
    let verified = run.console.first("manifest.verified", &[]).and_then(t).context("no manifest.verified")?;
    let mounted = run.console.all("layer.mounted", &[]);
    anyhow::ensure!(mounted.len() == 2, "{} of 2 layers mounted (see {})", mounted.len(), log.display());
    let last = mounted.iter().filter_map(|l| t(l)).fold(0.0, f64::max);
    Ok(last - verified)
}

/// Run the sweep: `runs` rounds over every (size, check).
pub fn bench(b: &'static cairn_board::Board, art: &Artifacts, work: &Path, runs: usize) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let mut cases = Vec::new();
    for mib in SIZES {
        for check in CHECKS {
            let (disk, size, tree) = disk(art, work, mib, check)?;
            cases.push((mib, check, disk, size, tree, Vec::new()));
        }
    }
    for round in 0..runs.max(1) {
        for (mib, check, disk, _, _, times) in cases.iter_mut() {
            let log = work.join(format!("{check}-{mib}/boot-{round}.log"));
            let t = boot_once(b, art, disk, &log)?;
            eprintln!("xtask: round {round}: {mib:>3} MiB {check:<6} {:>8.1} ms", t * 1e3);
            times.push(t);
        }
    }
    println!("{}: manifest.verified -> last layer.mounted (ms), {} rounds", b.name, runs.max(1));
    println!("{:>8} {:>7} {:>9} {:>9} {:>9} {:>10} {:>7}", "layer", "check", "min", "median", "max", "tree", "tree%");
    for (mib, check, _, size, tree, times) in &mut cases {
        times.sort_by(f64::total_cmp);
        let med = times.get(times.len() / 2).copied().unwrap_or(0.0);
        let (min, max) = (times.first().copied().unwrap_or(0.0), times.last().copied().unwrap_or(0.0));
        println!(
            "{:>5} MiB {check:>7} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>6.2}%",
            mib,
            min * 1e3,
            med * 1e3,
            max * 1e3,
            tree,
            *tree as f64 * 100.0 / *size as f64
        );
    }
    Ok(())
}
