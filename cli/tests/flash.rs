//! `cairn image assemble --bmap --zstd`: the files people flash, checked
//! with the tools they flash with (bmaptool, zstd) when installed
//! (`cargo xtask test` installs them; CAIRN_REQUIRE_TOOLS=1 makes a missing
//! one a failure).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

fn cairn(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).arg("--quiet").current_dir(dir).output().unwrap()
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = cairn(args, dir);
    assert!(o.status.success(), "cairn {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(path: PathBuf, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
}

/// A tool on PATH (or in the sbin directories), or `None` after saying so.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
            "{name} is not installed (Debian package {package}) and CAIRN_REQUIRE_TOOLS=1"
        );
        eprintln!("skipping the {name} checks: {name} not found (install {package})");
    }
    found
}

fn run(tool: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(tool).args(args).current_dir(dir).output().unwrap()
}

fn succeeds(tool: &Path, args: &[&str], dir: &Path) {
    let o = run(tool, args, dir);
    assert!(
        o.status.success(),
        "{} {args:?} failed:\n{}{}",
        tool.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An appliance, its signed manifest, an init and a boot kit (a kernel tree
/// whose board modules are all built in).
fn setup(d: &Path) {
    write(d.join("root/etc/hostname"), "box\n");
    write(d.join("root/bin/app"), "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(d.join("root/bin/app"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(
        d.join("appliance.toml"),
        "appliance = \"flash\"\nversion = 1\ncompatible = \"cairn-qemu-dev\"\n\n[[layer]]\nname = \"base\"\n\
         source = \"root\"\n\n[[container]]\nname = \"app\"\nlayers = [\"base\"]\nargv = [\"/bin/app\"]\n",
    );
    ok(&["key", "generate", "--out", "k"], d);
    ok(&["manifest", "build", "appliance.toml", "--key", "k", "--out", "m.cairn", "--layers", "layers"], d);
    common::fake_boot_kit(d, "qemu-x86_64");
    // The init holds no key: the initramfs carries the --trust keys.
    let mut init = vec![0u8; 64];
    init[..6].copy_from_slice(b"\x7fELF\x02\x01");
    init[18..20].copy_from_slice(&62u16.to_le_bytes());
    std::fs::write(d.join("init"), init).unwrap();
}

fn assemble(d: &Path, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "image",
        "assemble",
        "--board",
        "qemu-x86_64",
        "--manifest",
        "m.cairn",
        "--layers",
        "layers",
        "--init",
        "init",
        "--trust",
        "k.pub",
        "--product",
        "cairn-qemu-dev",
        "--kernel",
        "kernel",
        "--systemd-boot",
        "sdboot",
        "--out",
        out,
        "--data-size",
        "8M",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args, d)).unwrap()
}

/// The `Range` lines of a bmap: (first block, last block, sha256 hex).
fn ranges(bmap: &str) -> Vec<(u64, u64, String)> {
    bmap.lines()
        .filter_map(|l| l.trim().strip_prefix("<Range chksum=\""))
        .map(|l| {
            let (sum, rest) = l.split_once("\"> ").unwrap();
            let blocks = rest.trim_end_matches(" </Range>");
            let (a, b) = blocks.split_once('-').unwrap_or((blocks, blocks));
            (a.parse().unwrap(), b.parse().unwrap(), sum.to_owned())
        })
        .collect()
}

#[test]
fn bmap_and_zstd_reproduce_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    let j = assemble(d, "disk.img", &["--bmap", "--zstd"]);
    assert_eq!(j["bmap"]["path"], "disk.img.bmap");
    assert_eq!(j["zstd"]["path"], "disk.img.zst");
    assert_eq!(j["bmap"]["block_size"], 4096);
    let disk = std::fs::read(d.join("disk.img")).unwrap();
    let bmap = std::fs::read_to_string(d.join("disk.img.bmap")).unwrap();
    let zst = std::fs::read(d.join("disk.img.zst")).unwrap();
    assert_eq!(j["zstd"]["size"], zst.len());
    assert_eq!(j["bmap"]["blocks"], disk.len() / 4096);

    // The map is complete and right: every range's checksum is the disk's,
    // and every byte outside the ranges is zero.
    let mut rest = disk.clone();
    let mut mapped = 0;
    for (first, last, sum) in ranges(&bmap) {
        let r = (first * 4096) as usize..((last + 1) * 4096) as usize;
        let hex: String = Sha256::digest(&disk[r.clone()]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, sum, "blocks {first}-{last}");
        rest[r].fill(0);
        mapped += last + 1 - first;
    }
    assert!(rest.iter().all(|b| *b == 0), "a non-zero byte outside the mapped blocks");
    assert_eq!(j["bmap"]["mapped_blocks"], mapped);
    // GPT, state, manifest, layer, data filesystem, backup GPT: a small part.
    assert!(mapped > 6 && mapped * 4096 < disk.len() as u64 / 2, "{mapped}");
    assert!(zst.len() < disk.len() / 20, "{} of {}", zst.len(), disk.len());

    // Byte-reproducible: another disk from the same inputs.
    assemble(d, "again.img", &["--bmap", "--zstd"]);
    assert!(std::fs::read(d.join("again.img")).unwrap() == disk);
    assert_eq!(std::fs::read_to_string(d.join("again.img.bmap")).unwrap(), bmap);
    assert!(std::fs::read(d.join("again.img.zst")).unwrap() == zst);

    if let Some(zstd) = tool("zstd", "zstd") {
        succeeds(&zstd, &["-d", "-q", "disk.img.zst", "-o", "unzstd.img"], d);
        assert!(std::fs::read(d.join("unzstd.img")).unwrap() == disk, "zstd -d differs from the disk");
    }
    if let Some(bmaptool) = tool("bmaptool", "bmap-tools") {
        // The compressed image, its map found beside it (disk.img.bmap).
        succeeds(&bmaptool, &["copy", "disk.img.zst", "from-zst.img"], d);
        assert!(std::fs::read(d.join("from-zst.img")).unwrap() == disk, "bmaptool copy of the .zst differs");
        succeeds(&bmaptool, &["copy", "--bmap", "disk.img.bmap", "disk.img", "from-img.img"], d);
        assert!(std::fs::read(d.join("from-img.img")).unwrap() == disk, "bmaptool copy of the image differs");

        // One changed byte in a mapped block (the manifest slot at 2 MiB):
        // refused.
        let mut bad = disk.clone();
        bad[(2 << 20) + 100] ^= 1;
        std::fs::write(d.join("bad.img"), &bad).unwrap();
        let o = run(&bmaptool, &["copy", "--bmap", "disk.img.bmap", "bad.img", "from-bad.img"], d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("checksum mismatch"), "{err}");
        // A byte changed in an unmapped block (in the empty manifest slot b,
        // after its zeroed 64 KiB head) is not looked at: bmaptool writes
        // the disk as mapped.
        let mut unmapped = disk.clone();
        let layout = cairn_build::gpt::read_layout(&d.join("disk.img")).unwrap();
        let slot_b = layout.find("cairn-manifest-b").unwrap().offset_bytes as usize;
        let hole = slot_b + (64 << 10) + 100;
        assert!(ranges(&bmap).iter().any(|(a, b, _)| (*a..=*b).contains(&(slot_b as u64 / 4096))), "slot b's head");
        assert!(!ranges(&bmap).iter().any(|(a, b, _)| (*a..=*b).contains(&(hole as u64 / 4096))));
        unmapped[hole] ^= 1;
        std::fs::write(d.join("unmapped.img"), &unmapped).unwrap();
        succeeds(&bmaptool, &["copy", "--bmap", "disk.img.bmap", "unmapped.img", "from-unmapped.img"], d);
        assert!(std::fs::read(d.join("from-unmapped.img")).unwrap() == disk);
        // A changed map (one range's checksum) fails its own checksum.
        let first = &ranges(&bmap)[0].2;
        let mut other = first.clone().into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        write(d.join("bad.bmap"), &bmap.replacen(first, std::str::from_utf8(&other).unwrap(), 1));
        let o = run(&bmaptool, &["copy", "--bmap", "bad.bmap", "disk.img", "from-bad-map.img"], d);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("checksum mismatch for bmap file"), "{err}");
    }

    // Without the options the stale files of an earlier disk are removed
    // (bmaptool would find that map and refuse the new disk).
    let j = assemble(d, "disk.img", &[]);
    assert!(j["bmap"].is_null() && j["zstd"].is_null(), "{j}");
    assert!(!d.join("disk.img.bmap").exists() && !d.join("disk.img.zst").exists());
}
