//! `bench ota`: what an update costs. Bytes shipped for each kind of
//! change (a changed layer, one 4 KiB file in it, a re-signed manifest, a
//! new kernel and init) against the whole disk image, and the device's install time for
//! a changed layer of `OTA_MIB` MiB of incompressible data (guest clock,
//! from `update.installing` to `update.staged`: the check pass, then the
//! write pass with its flush and read back), per MiB. Then one install cut
//! by a power loss in the middle of that layer (QEMU killed once the install
//! journal on the disk counts at least two chunks) and the next boot's
//! resume: chunks it skipped, and bytes it wrote again that were already on
//! the disk.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_board::Board;
use cairn_build::assemble::{self, BuiltAppliance};
use cairn_build::bundle::{self, BundleInput};
use cairn_qemu_tests::{qemu, Artifacts};

use super::report::{Group, Row};

/// Size of the changed layer's data.
const OTA_MIB: usize = 8;

/// `n` bytes of seeded xorshift noise (squashfs cannot compress it).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An appliance of version `version` whose `big` layer holds noise from
/// `seed` and a 4 KiB file of `small`, built under `dir`.
fn appliance(art: &Artifacts, dir: &Path, version: u64, seed: u64, small: u8) -> Result<BuiltAppliance> {
    let src = dir.join(format!("big-{seed}-{small}"));
    std::fs::create_dir_all(src.join("data"))?;
    std::fs::write(src.join("data/blob"), noise(seed, OTA_MIB << 20))?;
    std::fs::write(src.join("data/conf"), [small; 4096])?;
    let toml = dir.join(format!("v{version}-{seed}.toml"));
    let base = crate::repo_root().join("images/examples/base");
    std::fs::write(
        &toml,
        format!(
            r#"appliance = "ota-bench"
version = {version}
compatible = "cairn-qemu-dev"

[[layer]]
name = "base"
source = "{base}"

[[layer]]
name = "tools"
source = "build:payload"

[[layer]]
name = "big"
source = "{src}"

[[container]]
name = "alpha"
layers = ["base", "tools", "big"]
argv = ["/bin/cairn-payload", "inspect", "stay"]
restart = {{ policy = "never" }}
"#,
            base = base.display(),
            src = src.display()
        ),
    )?;
    let sources = art.build_sources();
    Ok(assemble::build_appliance(&toml, &sources, &art.key, &dir.join(format!("layers-{version}-{seed}")))?)
}

/// Write a bundle of `app` (thin against `base` if given): its size, and
/// the bytes its split form (static HTTP: the TOC and every blob) ships.
fn bundle_of(art: &Artifacts, app: &BuiltAppliance, base: Option<&BuiltAppliance>, out: &Path) -> Result<(u64, u64)> {
    bundle_with(art, app, base, None, out)
}

/// [`bundle_of`], carrying `boot_image` if given.
fn bundle_with(
    art: &Artifacts,
    app: &BuiltAppliance,
    base: Option<&BuiltAppliance>,
    boot_image: Option<&Path>,
    out: &Path,
) -> Result<(u64, u64)> {
    let input = BundleInput {
        envelope: &app.envelope,
        manifest: &app.manifest,
        layers: &app.layers,
        base: base.map(|b| &b.manifest),
        boot_image,
    };
    let built = bundle::write_bundle(&input, &art.key, out)?;
    let files = bundle::write_split(out, &built.toc, &built.toc_bytes, &out.with_extension("split"))?;
    let split = files.iter().map(|f| Ok(std::fs::metadata(f)?.len())).sum::<Result<u64>>()?;
    Ok((std::fs::metadata(out)?.len(), split))
}

pub fn run(b: &'static Board, art: &Artifacts, runs: usize, log_dir: &Path) -> Result<Group> {
    let dir = log_dir.join("ota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let v1 = appliance(art, &dir, 1, 1, 0)?;
    let v2 = appliance(art, &dir, 2, 2, 0)?;
    let v3 = appliance(art, &dir, 3, 2, 0)?;
    // v2 with one 4 KiB file of the big layer changed.
    let v4 = appliance(art, &dir, 4, 2, 1)?;
    let disk_path = dir.join("disk.img");
    let esp = art.kit.factory_esp(&v1.manifest.compatible, v1.manifest.version)?;
    let layout = assemble::assemble_disk(&v1, &disk_path, assemble::DiskOptions::default(), Some(&esp))?;
    let image = std::fs::metadata(&disk_path)?.len();
    let (full, _) = bundle_of(art, &v2, None, &dir.join("full.bundle"))?;
    let thin_path = dir.join("thin.bundle");
    let (thin, thin_split) = bundle_of(art, &v2, Some(&v1), &thin_path)?;
    let (resigned, resigned_split) = bundle_of(art, &v3, Some(&v2), &dir.join("resigned.bundle"))?;
    // A new kernel and init (a boot image), no layer changed.
    let boot_image = dir.join("v3.efi");
    std::fs::write(&boot_image, art.kit.update_image(&v3.manifest.compatible, v3.manifest.version)?)?;
    let image_bytes = std::fs::metadata(&boot_image)?.len();
    let (with_image, with_image_split) =
        bundle_with(art, &v3, Some(&v2), Some(&boot_image), &dir.join("boot-image.bundle"))?;
    let big = v2.layers.iter().find(|l| l.name == "big").map(|l| l.partition_bytes()).unwrap_or(0);
    let (one_file, _) = bundle_of(art, &v4, Some(&v2), &dir.join("one-file.bundle"))?;

    // The stick: the thin bundle, padded to whole MiB.
    let stick = dir.join("stick.img");
    std::fs::copy(&thin_path, &stick)?;
    std::fs::OpenOptions::new().write(true).open(&stick)?.set_len(thin.div_ceil(1 << 20) << 20)?;
    let mut install_ms = Vec::new();
    let mut per_mib = Vec::new();
    for i in 0..runs.max(1) {
        let disk = dir.join(format!("disk-{i}.img"));
        std::fs::copy(&disk_path, &disk)?;
        let extra: Vec<&Path> = vec![&stick];
        let opts = qemu::BootOptions { extra_disks: &extra, ..qemu::BootOptions::default() };
        let cmd = qemu::command_with(b, &art.boot, &disk, &opts);
        let log = dir.join(format!("install-{i}.log"));
        let stop = |c: &cairn_qemu_tests::console::Console| {
            c.first("update.staged", &[]).is_some() || c.first("update.refused", &[]).is_some()
        };
        let run = qemu::capture(cmd, &log, Duration::from_secs(300), &stop)?;
        let t = |e: &str| run.console.first(e, &[]).and_then(|l| l.get("t")?.parse::<f64>().ok());
        let (from, to) = (t("update.installing"), t("update.staged"));
        let ms =
            from.zip(to).map(|(a, z)| (z - a) * 1000.0).with_context(|| format!("no install in {}", log.display()))?;
        eprintln!("xtask: bench ota run {i}: {OTA_MIB} MiB layer installed in {ms:.0} ms");
        install_ms.push(ms);
        per_mib.push(ms / (big as f64 / f64::from(1u32 << 20)));
        let _ = std::fs::remove_file(&disk);
    }
    let resume = resume_after_cut(b, art, &dir, &disk_path, &layout, &stick, &thin_path)?;
    let _ = std::fs::remove_file(&stick);
    let kib = |n: u64| n as f64 / 1024.0;
    Ok(Group {
        name: "ota".into(),
        title: format!(
            "updates: bytes shipped (KiB) for each kind of change, and the install of a changed {OTA_MIB} MiB layer \
             (guest ms from update.installing to update.staged)"
        ),
        unit: "KiB / ms".into(),
        rows: vec![
            Row::new("whole disk image (what an image-based updater ships), KiB", vec![kib(image)]),
            Row::new("full bundle, KiB", vec![kib(full)]),
            Row::new(&format!("one {OTA_MIB} MiB layer of three changed: thin bundle, KiB"), vec![kib(thin)]),
            Row::new("  the same, split form (static HTTP), KiB", vec![kib(thin_split)]),
            Row::new("  the changed layer's partition bytes, KiB", vec![kib(big)]),
            Row::new(
                "one 4 KiB file of that layer changed: thin bundle (the whole layer; no chunk deltas), KiB",
                vec![kib(one_file)],
            ),
            Row::new("re-signed manifest only: thin bundle, KiB", vec![kib(resigned)]),
            Row::new("  the same, split form, KiB", vec![kib(resigned_split)]),
            Row::new("new kernel and init (boot image), no layer changed: thin bundle, KiB", vec![kib(with_image)]),
            Row::new("  the same, split form, KiB", vec![kib(with_image_split)]),
            Row::new("  the boot image (unified kernel image) itself, KiB", vec![kib(image_bytes)]),
            Row::new("install time, ms", install_ms),
            Row::new("install time per MiB written, ms", per_mib),
            Row::new("power cut mid-layer: chunks journalled at the cut", vec![resume.journalled as f64]),
            Row::new("  chunks of the layer on the disk at the cut", vec![resume.durable as f64]),
            Row::new("  chunks the next boot's install skipped (resumed)", vec![resume.skipped as f64]),
            Row::new("  bytes written again that were on the disk, KiB", vec![kib(resume.extra_bytes)]),
        ],
        subject: None,
        notes: vec![format!(
            "the install reads and hashes the layer part once before writing anything, then streams it in 1 MiB \
             chunks (hash, write, fdatasync, journal entry + fdatasync; O_DIRECT read back of the part); the cut \
             rows: QEMU killed once the install journal counts two chunks, then the next boot's resume; bundle on a second virtio disk; files in {}",
            dir.display()
        )],
    })
}

/// What the resume after a mid-layer power cut did.
struct Resume {
    journalled: u32,
    durable: usize,
    skipped: u32,
    extra_bytes: u64,
}

/// Install from `stick` onto a copy of `disk`, kill QEMU once the install
/// journal counts at least two chunks of the layer (polled every 200 ms),
/// boot again and read what the resumed install skipped.
fn resume_after_cut(
    b: &'static Board,
    art: &Artifacts,
    dir: &Path,
    disk: &Path,
    layout: &cairn_build::gpt::DiskLayout,
    stick: &Path,
    bundle_path: &Path,
) -> Result<Resume> {
    use cairn_format::journal;
    use std::io::{Read, Seek, SeekFrom};
    let state = layout.find("cairn-state").context("no cairn-state")?.offset_bytes;
    let copy = dir.join("resume.img");
    std::fs::copy(disk, &copy)?;
    let read_journal = || -> Option<journal::Journal> {
        let mut f = std::fs::File::open(&copy).ok()?;
        f.seek(SeekFrom::Start(state + journal::OFFSET)).ok()?;
        let mut region = vec![0u8; journal::SIZE];
        f.read_exact(&mut region).ok()?;
        journal::read(&region).map(|(_, j)| j)
    };
    let extra: Vec<&Path> = vec![stick];
    let opts = qemu::BootOptions { extra_disks: &extra, ..qemu::BootOptions::default() };
    let seen = std::cell::RefCell::new(None);
    let stop = |c: &cairn_qemu_tests::console::Console| {
        if c.first("update.staged", &[]).is_some() {
            return true;
        }
        match read_journal() {
            Some(j) if j.parts.first().is_some_and(|p| p.chunks >= 2) => {
                *seen.borrow_mut() = Some(j);
                true
            }
            _ => false,
        }
    };
    let cmd = qemu::command_with(b, &art.boot, &copy, &opts);
    let run = qemu::capture(cmd, &dir.join("resume-cut.log"), Duration::from_secs(300), &stop)?;
    let j = seen.into_inner().context("the install staged before the journal counted two chunks")?;
    anyhow::ensure!(run.console.first("update.staged", &[]).is_none(), "the install finished before the cut");
    let part = *j.parts.first().context("the journal names no part")?;
    let chunk = j.chunk as usize;
    // The layer part's leading chunks already on its partition.
    let toc = bundle::read_bundle(bundle_path)?.toc;
    let lp = toc.layers.first().context("the bundle carries no layer")?.part;
    let mut want = vec![0u8; usize::try_from(lp.size)?];
    let mut f = std::fs::File::open(bundle_path)?;
    f.seek(SeekFrom::Start(lp.offset))?;
    f.read_exact(&mut want)?;
    let name = format!("cairn-layer-{:02}", part.partition);
    let p = layout.find(&name).with_context(|| format!("no {name}"))?;
    let mut have = vec![0u8; want.len()];
    let mut f = std::fs::File::open(&copy)?;
    f.seek(SeekFrom::Start(p.offset_bytes))?;
    f.read_exact(&mut have)?;
    let durable = want.chunks(chunk).zip(have.chunks(chunk)).take_while(|(w, h)| w == h).count();
    // Power back: the install resumes.
    let stop = |c: &cairn_qemu_tests::console::Console| {
        c.first("update.staged", &[]).is_some() || c.first("update.refused", &[]).is_some()
    };
    let cmd = qemu::command_with(b, &art.boot, &copy, &opts);
    let run = qemu::capture(cmd, &dir.join("resume.log"), Duration::from_secs(300), &stop)?;
    let resumed = run.console.first("update.resumed", &[]).context("the install after the cut did not resume")?;
    run.console.first("update.staged", &[]).context("the resumed install did not stage")?;
    let skipped: u32 = resumed.get("chunks_skipped").and_then(|v| v.parse().ok()).unwrap_or(0);
    let extra_bytes = (durable as u64).saturating_sub(u64::from(skipped)) * chunk as u64;
    eprintln!(
        "xtask: bench ota resume: {} chunks journalled at the cut, {durable} on the disk, {skipped} skipped",
        part.chunks
    );
    let _ = std::fs::remove_file(&copy);
    Ok(Resume { journalled: part.chunks, durable, skipped, extra_bytes })
}
