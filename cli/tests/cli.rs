//! The `cairn` command end to end on the host: keys, layers, manifests and
//! disk images, and what it does with bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cairn(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cairn: {e}"))
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = cairn(args, dir);
    assert!(o.status.success(), "cairn {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str], dir: &Path) -> String {
    let o = cairn(args, dir);
    assert!(!o.status.success(), "cairn {args:?} should fail:\n{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(path: PathBuf, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

/// The value after `word ` on the line starting with `word`.
fn field(out: &str, word: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(word).map(|r| r.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {word} in:\n{out}"))
}

#[test]
fn keys_are_made_private_and_shown() {
    let d = tmp();
    let out = ok(&["key", "generate", "--out", "keys/dev"], d.path());
    let id = field(&out, "id");
    let mode = std::fs::metadata(d.path().join("keys/dev")).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o600);
    assert_eq!(field(&ok(&["key", "show", "keys/dev"], d.path()), "id"), id);
    assert_eq!(field(&ok(&["key", "show", "keys/dev.pub"], d.path()), "id"), id);
    // Never overwritten.
    assert!(fails(&["key", "generate", "--out", "keys/dev"], d.path()).contains("keys/dev"));
    // Wrong mode, wrong length.
    std::fs::set_permissions(d.path().join("keys/dev"), std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fails(&["key", "show", "keys/dev"], d.path()).contains("mode"));
    write(d.path().join("short"), "abcdef\n");
    std::fs::set_permissions(d.path().join("short"), std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fails(&["key", "show", "short"], d.path()).contains("64 hex"));
}

fn rootfs(dir: &Path) {
    write(dir.join("etc/hostname"), "box\n");
    write(dir.join("bin/app"), "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(dir.join("bin/app"), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn layers_are_reproducible_and_bad_archives_leave_nothing() {
    let d = tmp();
    rootfs(&d.path().join("root"));
    let a = ok(&["layer", "build", "root", "--out", "a.squashfs"], d.path());
    let b = ok(&["layer", "build", "root", "--out", "b.squashfs"], d.path());
    let digest = |s: &str| s.split_whitespace().next().map(str::to_owned).unwrap_or_default();
    // Digests print as in manifests: sha256:<64 hex>.
    assert!(digest(&a).strip_prefix("sha256:").is_some_and(|h| h.len() == 64), "{a}");
    assert_eq!(digest(&a), digest(&b));
    let (a, b) =
        (std::fs::read(d.path().join("a.squashfs")).unwrap(), std::fs::read(d.path().join("b.squashfs")).unwrap());
    assert!(!a.is_empty() && a == b, "two builds of one source differ");

    // A rootfs tarball.
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    t.append_data(&mut h, "etc/motd", &b"hi\n"[..]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.path().join("root.tar"), t.into_inner().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    ok(&["layer", "build", "root.tar", "--out", "tar.squashfs"], d.path());

    // `../` in a member: refused, nothing written.
    let mut raw = vec![0u8; 512];
    let name = b"../escape";
    raw[..name.len()].copy_from_slice(name);
    raw[100..107].copy_from_slice(b"0000644");
    raw[124..135].copy_from_slice(b"00000000000");
    raw[156] = b'0';
    raw[257..263].copy_from_slice(b"ustar\0");
    raw[263..265].copy_from_slice(b"00");
    raw[148..156].copy_from_slice(b"        ");
    let sum: u32 = raw.iter().map(|b| u32::from(*b)).sum();
    raw[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    std::fs::write(d.path().join("evil.tar"), raw).unwrap_or_else(|e| panic!("{e}"));
    let err = fails(&["layer", "build", "evil.tar", "--out", "evil.squashfs"], d.path());
    assert!(err.contains("escape"), "{err}");
    assert!(!d.path().join("evil.squashfs").exists());
    assert!(!d.path().join("evil.squashfs.partial").exists());

    // A corrupt gzip stream.
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend_from_slice(b"this is not deflate data at all");
    std::fs::write(d.path().join("bad.tar.gz"), gz).unwrap_or_else(|e| panic!("{e}"));
    fails(&["layer", "build", "bad.tar.gz", "--out", "bad.squashfs"], d.path());
    assert!(!d.path().join("bad.squashfs").exists());

    // A block device (the boot disk's numbers): refused, naming the member.
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_size(0);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_device_major(254).unwrap_or_else(|e| panic!("{e}"));
    h.set_device_minor(0).unwrap_or_else(|e| panic!("{e}"));
    t.append_data(&mut h, "dev/vda", &b""[..]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.path().join("dev.tar"), t.into_inner().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    let err = fails(&["layer", "build", "dev.tar", "--out", "dev.squashfs"], d.path());
    assert!(err.contains("dev.tar: member dev/vda: block device 254:0"), "{err}");
    assert!(!d.path().join("dev.squashfs").exists());

    // Larger than the slot.
    write(d.path().join("big/blob"), "x"); // tiny source, tiny slot
    let err = fails(&["layer", "build", "big", "--out", "big.squashfs", "--slot-size", "1K"], d.path());
    assert!(err.contains("larger than"), "{err}");
    assert!(!d.path().join("big.squashfs").exists());
}

const APPLIANCE: &str = r#"
appliance = "cli-test"
version = 2
compatible = "cairn-qemu-dev"

[[layer]]
name = "base"
source = "root"

[[layer]]
name = "extra"
file = "extra.squashfs"

[[container]]
name = "app"
layers = ["base", "extra"]
argv = ["/bin/app"]
limits = { memory = "16M", pids = 8 }
"#;

fn signed_appliance(d: &Path) {
    rootfs(&d.join("root"));
    write(d.join("extra/etc/extra"), "more\n");
    ok(&["layer", "build", "extra", "--out", "extra.squashfs"], d);
    write(d.join("appliance.toml"), APPLIANCE);
    ok(&["key", "generate", "--out", "k"], d);
    ok(&["manifest", "build", "appliance.toml", "--key", "k", "--out", "out/m.cairn", "--layers", "layers"], d);
}

#[test]
fn manifests_round_trip_through_inspect_and_verify() {
    let d = tmp();
    let d = d.path();
    signed_appliance(d);
    assert!(d.join("layers/base.squashfs").is_file());
    let shown = ok(&["manifest", "inspect", "out/m.cairn"], d);
    assert!(shown.contains("appliance = \"cli-test\""), "{shown}");
    // The printed TOML compiles back to the same signed bytes (ed25519 is
    // deterministic), with layers found by digest.
    write(d.join("again.toml"), &shown);
    std::fs::copy(d.join("extra.squashfs"), d.join("layers/extra.squashfs")).unwrap_or_else(|e| panic!("{e}"));
    ok(&["manifest", "build", "again.toml", "--key", "k", "--out", "out/again.cairn", "--layers", "layers"], d);
    let (a, b) = (std::fs::read(d.join("out/m.cairn")).unwrap(), std::fs::read(d.join("out/again.cairn")).unwrap());
    assert!(!a.is_empty() && a == b, "two builds of one manifest differ");

    let v = ok(&["manifest", "verify", "out/m.cairn", "--pubkey", "k.pub"], d);
    assert!(v.contains("good signature"), "{v}");
    ok(&["key", "generate", "--out", "other"], d);
    assert!(fails(&["manifest", "verify", "out/m.cairn", "--pubkey", "other.pub"], d).contains("key"));
    let mut bytes = std::fs::read(d.join("out/m.cairn")).unwrap_or_default();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(d.join("out/tampered.cairn"), bytes).unwrap_or_else(|e| panic!("{e}"));
    fails(&["manifest", "verify", "out/tampered.cairn", "--pubkey", "k.pub"], d);
}

#[test]
fn bad_appliances_are_reported_with_places_and_write_nothing() {
    let d = tmp();
    let d = d.path();
    signed_appliance(d);
    write(d.join("unknown.toml"), &APPLIANCE.replace("pids = 8", "pids = 8, swappiness = 3"));
    let err = fails(&["manifest", "build", "unknown.toml", "--key", "k", "--out", "out/u.cairn"], d);
    assert!(err.contains("swappiness"), "{err}");
    let bad = APPLIANCE.replace("layers = [\"base\", \"extra\"]", "layers = [\"base\", \"nope\"]\ndepends_on = [\"app\"]")
        + "\n[[container]]\nname = \"x\"\nlayers = [\"base\"]\nargv = [\"/x\"]\nsecurity = { cap_add = [\"WIZARD\"] }\n";
    write(d.join("bad.toml"), &bad);
    let err = fails(&["manifest", "build", "bad.toml", "--key", "k", "--out", "out/b.cairn"], d);
    assert!(err.contains("WIZARD") && err.contains("line "), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(!d.join("out/u.cairn").exists() && !d.join("out/b.cairn").exists());
}

/// A minimal ELF64 file for `machine`: the header, then `payload`.
fn elf(machine: u16, payload: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[18..20].copy_from_slice(&machine.to_le_bytes());
    e.extend_from_slice(payload);
    e
}

fn hex32(s: &str) -> Vec<u8> {
    (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
}

#[test]
fn disk_images_are_assembled_and_checked() {
    let d = tmp();
    let d = d.path();
    signed_appliance(d);
    std::fs::copy(d.join("extra.squashfs"), d.join("layers/extra.squashfs")).unwrap_or_else(|e| panic!("{e}"));
    // A kernel tree whose board modules are all built in.
    common::fake_boot_kit(d, "qemu-x86_64");
    let public = std::fs::read_to_string(d.join("k.pub")).unwrap_or_default();
    // The init holds no key: the initramfs carries the --trust keys.
    std::fs::write(d.join("init"), elf(62, &[7; 64])).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.join("init-arm"), elf(183, &[7; 64])).unwrap_or_else(|e| panic!("{e}"));
    ok(&["key", "generate", "--out", "stranger"], d);
    let args = |init: &'static str, key: &'static str, product: &'static str, out: &'static str| {
        vec![
            "image",
            "assemble",
            "--board",
            "qemu-x86_64",
            "--manifest",
            "out/m.cairn",
            "--layers",
            "layers",
            "--init",
            init,
            "--trust",
            key,
            "--product",
            product,
            "--kernel",
            "kernel",
            "--systemd-boot",
            "sdboot",
            "--out",
            out,
        ]
    };
    let out = ok(&args("init", "k.pub", "cairn-qemu-dev", "disk.img"), d);
    for p in ["cairn-state", "cairn-manifest-a", "cairn-manifest-b", "cairn-layer-01", "cairn-layer-04", "cairn-data"] {
        assert!(out.contains(p), "{p} missing:\n{out}");
    }
    let rd = std::fs::read(d.join("disk.initramfs")).unwrap_or_else(|e| panic!("{e}"));
    let trust = cairn_build::initramfs::read_trust(&rd)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no trust data"));
    assert_eq!(trust.product, "cairn-qemu-dev");
    assert_eq!(trust.keys, [<[u8; 32]>::try_from(hex32(public.trim())).unwrap_or_else(|_| panic!("key"))]);
    let shown = ok(&["image", "inspect", "disk.img"], d);
    assert!(shown.contains("cli-test version 2"), "{shown}");
    assert!(shown.contains("cairn-esp") && shown.contains("slot a blessed (cairn-a.efi)"), "{shown}");
    // Refused before anything is written.
    let e = fails(&args("init", "stranger.pub", "cairn-qemu-dev", "u.img"), d);
    assert!(e.contains("which no --trust key is"), "{e}");
    let e = fails(&args("init", "k.pub", "acme-router-v2", "p.img"), d);
    assert!(e.contains("this device is \"acme-router-v2\""), "{e}");
    let e = fails(&args("init", "k.pub", "not a product", "q.img"), d);
    assert!(e.contains("/etc/cairn/product"), "{e}");
    assert!(fails(&args("init-arm", "k.pub", "cairn-qemu-dev", "a.img"), d).contains("183"));
    for f in ["u.img", "p.img", "q.img", "a.img"] {
        assert!(!d.join(f).exists(), "{f} written");
    }
    // A layer image missing from --layers.
    std::fs::remove_file(d.join("layers/extra.squashfs")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(d.join("extra.squashfs"), d.join("elsewhere.squashfs")).unwrap_or_else(|e| panic!("{e}"));
    assert!(fails(&args("init", "k.pub", "cairn-qemu-dev", "m.img"), d).contains("extra"));
    assert!(!d.join("m.img").exists());
}
