//! `cargo xtask bench layers`: how fast the release `cairn` command turns a
//! root filesystem into a layer image, from a directory, a plain tar and a
//! gzip tar, and how large the image is.
//!
//! The source is synthetic and the same on every run: 1,600 files in 40
//! directories, about 48 MiB, half of them text-like (compressible) and half
//! pseudo-random (not), plus symlinks and hard links.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::bench::report::{Group, Row};
use crate::host_deps::run;

/// Builds of each source (interleaved).
const ROUNDS: usize = 3;

/// Write the synthetic root filesystem under `root` and return its bytes.
fn make_rootfs(root: &Path) -> Result<u64> {
    let _ = std::fs::remove_dir_all(root);
    let mut total = 0u64;
    let mut x: u32 = 0x1234_5678;
    let mut next = move || {
        // xorshift32: deterministic, fast, not compressible.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for d in 0..40 {
        let dir = root.join(format!("usr/lib/pkg{d:02}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in 0..40 {
            let len = 4096 + (next() as usize % 57_000);
            let data: Vec<u8> = if f % 2 == 0 {
                let line = format!("pkg{d} file{f}: the quick brown fox jumps over the lazy dog\n");
                line.bytes().cycle().take(len).collect()
            } else {
                (0..len).map(|_| next() as u8).collect()
            };
            total += data.len() as u64;
            let path = dir.join(format!("file{f:02}.so"));
            std::fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
        }
        std::os::unix::fs::symlink(format!("pkg{d:02}/file00.so"), root.join(format!("usr/lib/link{d:02}")))?;
        std::fs::hard_link(dir.join("file01.so"), dir.join("hardlink.so"))?;
    }
    Ok(total)
}

/// Build the release `cairn`, make the sources, time one build of each
/// (interleaved over `ROUNDS` rounds: directory, tar, tar.gz, directory, ...).
pub fn bench(build_dir: &Path) -> Result<Group> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).args(["build", "--release", "-p", "cairn-cli"]))?;
    let cairn = crate::repo_root().join("target/release/cairn");
    let work = build_dir.join("bench-layers");
    let root = work.join("rootfs");
    let bytes = make_rootfs(&root)?;
    let tar = work.join("rootfs.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&root).arg("."))?;
    run(Command::new("gzip").args(["-kf", "-6"]).arg(&tar))?;
    let tgz = work.join("rootfs.tar.gz");
    let mib = bytes as f64 / f64::from(1 << 20);
    println!("layers: source {mib:.1} MiB in {} files", 40 * 41);
    let sources = [("directory", &root), ("tar", &tar), ("tar.gz", &tgz)];
    let mut rows: Vec<Row> = sources.iter().map(|(what, _)| Row::new(&format!("from a {what}"), Vec::new())).collect();
    let mut notes = vec![format!("source: {mib:.1} MiB in {} files (synthetic, half compressible)", 40 * 41)];
    for round in 0..ROUNDS {
        for ((what, src), row) in sources.iter().zip(rows.iter_mut()) {
            let out = work.join(format!("{what}.squashfs"));
            let t = Instant::now();
            let o = Command::new(&cairn)
                .args(["layer", "build", "--quiet"])
                .arg(src)
                .arg("--out")
                .arg(&out)
                .output()
                .context("running cairn")?;
            let secs = t.elapsed().as_secs_f64();
            ensure!(o.status.success(), "cairn layer build {what}: {}", String::from_utf8_lossy(&o.stderr));
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            println!(
                "layers: from a {what:<9} {secs:>6.2} s  {:>6.1} MiB/s  image {:.1} MiB",
                mib / secs,
                size as f64 / f64::from(1 << 20)
            );
            row.samples.push(secs);
            if round == 0 {
                notes.push(format!("image from a {what}: {:.1} MiB", size as f64 / f64::from(1 << 20)));
            }
        }
    }
    Ok(Group {
        name: "layer-build".into(),
        title: "`cairn layer build` (release) of the synthetic rootfs, host wall time".into(),
        unit: "s".into(),
        rows,
        subject: None,
        notes,
    })
}
