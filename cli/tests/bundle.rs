//! `cairn bundle build|inspect|verify` end to end: full and thin bundles,
//! the split form, and every refusal with its exact message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

use std::path::Path;
use std::process::{Command, Output};

use sha2::Digest as _;

fn cairn(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).arg("--quiet").current_dir(dir).output().unwrap()
}

fn ok(args: &[&str], dir: &Path) -> String {
    let o = cairn(args, dir);
    assert!(o.status.success(), "cairn {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str], dir: &Path) -> String {
    let o = cairn(args, dir);
    assert!(!o.status.success(), "cairn {args:?} should fail:\n{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(o.status.code(), Some(1));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str], dir: &Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&a, dir)).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    let d: [u8; 32] = sha2::Sha256::digest(bytes).into();
    d.iter().map(|b| format!("{b:02x}")).collect()
}

const APPLIANCE: &str = r#"appliance = "bundle-test"
version = VERSION
compatible = "cairn-test"

[[layer]]
name = "base"
source = "base"

[[layer]]
name = "app"
source = "APP"

[[container]]
name = "app"
layers = ["base", "app"]
argv = ["/bin/app"]
"#;

/// In `d`: a key `k` (and `other`), and `v1.manifest` and `v2.manifest`
/// (v2 changes the app layer only), their layers in `layers1/` and `layers2/`.
fn setup(d: &Path) {
    std::fs::create_dir_all(d.join("base/bin")).unwrap();
    std::fs::write(d.join("base/bin/sh"), "the base layer\n".repeat(1000)).unwrap();
    // Incompressible: the base image spans blocks, so its part has a tree.
    let mut x = 7u32;
    let noise: Vec<u8> = (0..40_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(d.join("base/noise"), noise).unwrap();
    for (v, text) in [(1, "app one\n"), (2, "app two\n")] {
        std::fs::create_dir_all(d.join(format!("app{v}/bin"))).unwrap();
        std::fs::write(d.join(format!("app{v}/bin/app")), text).unwrap();
        let toml = APPLIANCE.replace("VERSION", &v.to_string()).replace("APP", &format!("app{v}"));
        std::fs::write(d.join(format!("v{v}.toml")), toml).unwrap();
    }
    ok(&["key", "generate", "--out", "k"], d);
    ok(&["key", "generate", "--out", "other"], d);
    for v in [1, 2] {
        let (toml, out, layers) = (format!("v{v}.toml"), format!("v{v}.manifest"), format!("layers{v}"));
        ok(&["manifest", "build", &toml, "--key", "k", "--out", &out, "--layers", &layers], d);
    }
}

fn key_id(d: &Path, key: &str) -> String {
    json(&["key", "show", key], d)["key_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_full_bundle_is_built_inspected_and_verified() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    let b = json(
        &["bundle", "build", "--manifest", "v2.manifest", "--layers", "layers2", "--key", "k", "--out", "v2.bundle"],
        d,
    );
    let bytes = std::fs::read(d.join("v2.bundle")).unwrap();
    assert_eq!(b["size"], bytes.len());
    assert_eq!(b["version"], 2);
    assert_eq!(b["compatible"], "cairn-test");
    assert_eq!(b["base_version"], serde_json::Value::Null);
    assert_eq!(b["omitted"], serde_json::json!([]));
    let parts = b["parts"].as_array().unwrap();
    let names: Vec<_> = parts.iter().map(|p| p["part"].as_str().unwrap()).collect();
    assert_eq!(names, ["manifest", "layers[0]", "layers[1]"]);
    assert_eq!(parts[1]["layer"], "base");
    assert_eq!(parts[2]["layer"], "app");
    // Each part: 4 KiB aligned, its sha256 as printed; the manifest part is
    // the manifest file.
    for p in parts {
        let (off, size) = (p["offset"].as_u64().unwrap() as usize, p["size"].as_u64().unwrap() as usize);
        assert_eq!(off % 4096, 0);
        assert_eq!(p["sha256"], format!("sha256:{}", sha256(&bytes[off..off + size])));
    }
    let (off, size) = (parts[0]["offset"].as_u64().unwrap() as usize, parts[0]["size"].as_u64().unwrap() as usize);
    assert_eq!(&bytes[off..off + size], &std::fs::read(d.join("v2.manifest")).unwrap()[..]);

    let text = ok(&["bundle", "inspect", "v2.bundle"], d);
    assert!(text.contains("for cairn-test version 2 (full)"), "{text}");
    assert!(text.contains("  layer app "), "{text}");
    let i = json(&["bundle", "inspect", "v2.bundle"], d);
    assert_eq!(i["parts"], b["parts"]);
    assert_eq!(i["signature_checked"], false);

    let v = ok(&["bundle", "verify", "v2.bundle", "--pubkey", "k.pub"], d);
    let id = key_id(d, "k");
    assert_eq!(
        v.trim(),
        format!(
            "v2.bundle: good; table of contents signed by key {id}, manifest by key {id}; \
             bundle-test version 2 for cairn-test, 3 parts checked"
        )
    );
    let v = json(&["bundle", "verify", "v2.bundle", "--trust", "k.pub"], d);
    assert_eq!(v["good_signature"], true);
    assert_eq!(v["parts"], b["parts"]);

    // Byte-reproducible.
    ok(
        &["bundle", "build", "--manifest", "v2.manifest", "--layers", "layers2", "--key", "k", "--out", "again.bundle"],
        d,
    );
    assert_eq!(std::fs::read(d.join("again.bundle")).unwrap(), bytes);
}

#[test]
fn a_thin_bundle_leaves_out_what_the_base_has() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    let args =
        ["bundle", "build", "--manifest", "v2.manifest", "--layers", "layers2", "--key", "k", "--base", "v1.manifest"];
    let mut a = args.to_vec();
    a.extend(["--out", "thin.bundle", "--split", "thin"]);
    let b = json(&a, d);
    assert_eq!(b["base_version"], 1);
    let parts = b["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1]["layer"], "app");
    assert_eq!(b["omitted"].as_array().unwrap().len(), 1);
    assert_eq!(b["omitted"][0]["layer"], "base");
    assert_eq!(b["split"]["files"], 3);
    let text = ok(&["bundle", "inspect", "thin.bundle"], d);
    assert!(text.contains("(thin, from version 1)"), "{text}");
    assert!(text.contains("  omitted layer base "), "{text}");
    let v = ok(&["bundle", "verify", "thin.bundle", "--pubkey", "k.pub"], d);
    assert!(v.trim().ends_with("2 parts checked, 1 layers left out (the device must hold them)"), "{v}");
    // The split form: the same TOC, a blob per part, verified alike.
    let bytes = std::fs::read(d.join("thin.bundle")).unwrap();
    let toc = std::fs::read(d.join("thin/toc")).unwrap();
    assert_eq!(&bytes[..toc.len()], &toc[..]);
    for p in parts {
        let hex = p["sha256"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        assert!(d.join("thin/blobs/sha256").join(hex).is_file());
    }
    ok(&["bundle", "verify", "thin", "--pubkey", "k.pub"], d);
    // The base must be older.
    let e = fails(
        &[
            "bundle",
            "build",
            "--manifest",
            "v1.manifest",
            "--layers",
            "layers1",
            "--key",
            "k",
            "--base",
            "v2.manifest",
            "--out",
            "x.bundle",
        ],
        d,
    );
    assert_eq!(e.trim(), "cairn: error: the base manifest's version 2 is not older than the manifest's 1");
    assert!(!d.join("x.bundle").exists() && !d.join("x.cairn.partial").exists());
}

/// The bundle's JSON parts (offset, size) by index.
fn part(d: &Path, bundle: &str, i: usize) -> (usize, usize) {
    let b = json(&["bundle", "inspect", bundle], d);
    let p = &b["parts"][i];
    (p["offset"].as_u64().unwrap() as usize, p["size"].as_u64().unwrap() as usize)
}

#[test]
fn every_tampering_is_refused_with_its_reason() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    ok(&["bundle", "build", "--manifest", "v2.manifest", "--layers", "layers2", "--key", "k", "--out", "b.bundle"], d);
    let good = std::fs::read(d.join("b.bundle")).unwrap();
    let verify = |file: &str, key: &str| fails(&["bundle", "verify", file, "--pubkey", key], d);

    // A flipped byte in a layer part.
    let (off, size) = part(d, "b.bundle", 2);
    let mut bad = good.clone();
    bad[off + 100] ^= 0x01;
    std::fs::write(d.join("layer.bundle"), &bad).unwrap();
    let (want, found) = (sha256(&good[off..off + size]), sha256(&bad[off..off + size]));
    assert_eq!(
        verify("layer.bundle", "k.pub").trim(),
        format!("cairn: error: layer.bundle: layers[1]: sha256:{found} is not the table of contents' sha256:{want}")
    );

    // A flipped byte in the manifest part.
    let (off, size) = part(d, "b.bundle", 0);
    let mut bad = good.clone();
    bad[off + 30] ^= 0x01;
    std::fs::write(d.join("manifest.bundle"), &bad).unwrap();
    let (want, found) = (sha256(&good[off..off + size]), sha256(&bad[off..off + size]));
    assert_eq!(
        verify("manifest.bundle", "k.pub").trim(),
        format!("cairn: error: manifest.bundle: manifest: sha256:{found} is not the table of contents' sha256:{want}")
    );

    // A flipped byte in the table of contents.
    let id = key_id(d, "k");
    let mut bad = good.clone();
    bad[40] ^= 0x01;
    std::fs::write(d.join("toc.bundle"), &bad).unwrap();
    assert_eq!(
        verify("toc.bundle", "k.pub").trim(),
        format!("cairn: error: toc.bundle: table of contents: signature by key {id} does not verify")
    );

    // A key the device does not trust.
    assert_eq!(
        verify("b.bundle", "other.pub").trim(),
        format!("cairn: error: b.bundle: table of contents: signed by untrusted key {id}")
    );

    // Truncated, by one byte and to the TOC alone.
    std::fs::write(d.join("short.bundle"), &good[..good.len() - 1]).unwrap();
    assert_eq!(
        verify("short.bundle", "k.pub").trim(),
        format!(
            "cairn: error: short.bundle: bundle truncated: total_size is {} bytes, have {}",
            good.len(),
            good.len() - 1
        )
    );
    std::fs::write(d.join("head.bundle"), &good[..100]).unwrap();
    let e = verify("head.bundle", "k.pub");
    assert!(e.starts_with("cairn: error: head.bundle: table of contents truncated: need "), "{e}");
    assert!(e.trim().ends_with(" bytes, have 100"), "{e}");

    // Not a bundle: a manifest envelope.
    assert_eq!(
        verify("v2.manifest", "k.pub").trim(),
        "cairn: error: v2.manifest: not a bundle (no CAIRNTC1 table of contents)"
    );

    // The good one still verifies.
    ok(&["bundle", "verify", "b.bundle", "--pubkey", "k.pub"], d);
}

#[test]
fn an_unsigned_manifest_is_not_bundled() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    ok(&["manifest", "build", "v1.toml", "--unsigned", "--out", "u.manifest", "--layers", "layers1"], d);
    let e = fails(
        &["bundle", "build", "--manifest", "u.manifest", "--layers", "layers1", "--key", "k", "--out", "u.bundle"],
        d,
    );
    assert_eq!(
        e.trim(),
        "cairn: error: u.manifest: not signed; a device refuses an unsigned manifest (sign it with `cairn manifest sign`)"
    );
}

#[test]
fn a_signing_command_signs_the_table_of_contents() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    setup(d);
    let base = ["bundle", "build", "--manifest", "v2.manifest", "--layers", "layers2"];
    let b = json(&[&base[..], &["--key", "k", "--out", "k.bundle"]].concat(), d);
    let bytes = std::fs::read(d.join("k.bundle")).unwrap();
    let toc = b["toc_size"].as_u64().unwrap() as usize;
    // A command that prints the signature the key file made, in hex: the
    // same bundle, byte for byte.
    let sig: String = bytes[toc - 64..toc].iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(d.join("sig.hex"), &sig).unwrap();
    let cmd = "cat >/dev/null; cat sig.hex";
    ok(&[&base[..], &["--sign-command", cmd, "--pubkey", "k.pub", "--out", "c.bundle"]].concat(), d);
    assert_eq!(std::fs::read(d.join("c.bundle")).unwrap(), bytes);
    // The signature of another key: refused, nothing written.
    let e = fails(&[&base[..], &["--sign-command", cmd, "--pubkey", "other.pub", "--out", "o.bundle"]].concat(), d);
    let other = key_id(d, "other");
    assert_eq!(
        e.trim(),
        format!("cairn: error: o.bundle: table of contents: signature by key {other} does not verify")
    );
    assert!(!d.join("o.bundle").exists() && !d.join("o.bundle.partial").exists());
    // A failing command.
    let e = fails(&[&base[..], &["--sign-command", "exit 3", "--pubkey", "k.pub", "--out", "o.bundle"]].concat(), d);
    assert!(e.starts_with("cairn: error: signing the table of contents: --sign-command \"exit 3\" failed"), "{e}");
    assert!(!d.join("o.bundle").exists());
    // Neither: said so.
    let e = fails(&[&base[..], &["--out", "o.bundle"]].concat(), d);
    assert!(e.contains("--key KEY, or --sign-command CMD --pubkey KEY.pub"), "{e}");
}
