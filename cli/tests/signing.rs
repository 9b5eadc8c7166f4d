//! Signing apart from building (issue 15): `manifest build --unsigned`,
//! `manifest sign` with a key file or `--sign-command`, PKCS#8 PEM keys
//! that OpenSSL reads and writes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

mod common;

use std::path::Path;
use std::process::{Command, Output};

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
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str], dir: &Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(&a, dir)).unwrap()
}

/// `openssl`, or `None` (after saying so). With CAIRN_REQUIRE_TOOLS=1 a
/// missing openssl fails the test.
fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CAIRN_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
            "openssl is not installed and CAIRN_REQUIRE_TOOLS=1"
        );
        eprintln!("skipping the openssl checks: openssl not found");
    }
    found.then_some("openssl")
}

fn sh(script: &str, dir: &Path) -> Output {
    Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap()
}

const APPLIANCE: &str = r#"appliance = "sign-test"
version = 3
compatible = "cairn-test"

[[layer]]
name = "base"
source = "root"

[[container]]
name = "app"
layers = ["base"]
argv = ["/bin/app"]
"#;

fn appliance(d: &Path) {
    std::fs::create_dir_all(d.join("root/bin")).unwrap();
    std::fs::write(d.join("root/bin/app"), "#!/bin/sh\n").unwrap();
    std::fs::write(d.join("appliance.toml"), APPLIANCE).unwrap();
}

#[test]
fn pem_keys_are_what_openssl_reads_and_writes() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let g = json(&["key", "generate", "--out", "k"], d);
    let text = std::fs::read_to_string(d.join("k")).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
    assert_eq!(g["secret_format"], "pem");
    let shown = json(&["key", "show", "k"], d);
    assert_eq!(shown["public"], g["public"]);
    assert_eq!(shown["key_id"], g["key_id"]);
    assert_eq!(shown["kind"], "secret");

    // hex <-> pem, secret and public.
    ok(&["key", "convert", "k", "--out", "k.hex", "--format", "hex"], d);
    assert_eq!(std::fs::read_to_string(d.join("k.hex")).unwrap().trim().len(), 64);
    ok(&["key", "convert", "k.hex", "--out", "k2.pem", "--format", "pem"], d);
    assert_eq!(std::fs::read_to_string(d.join("k2.pem")).unwrap(), text);
    assert!(fails(&["key", "convert", "k", "--out", "k2.pem", "--format", "pem"], d).contains("never overwrites"));
    ok(&["key", "convert", "k.pub", "--out", "k.pub.pem", "--format", "pem"], d);
    assert_eq!(json(&["key", "show", "k.pub.pem"], d)["public"], g["public"]);
    assert_eq!(json(&["key", "show", "k.pub.pem"], d)["kind"], "public");

    let Some(openssl) = openssl() else { return };
    // OpenSSL reads cairn's keys and derives the same public key.
    let o = sh(&format!("{openssl} pkey -in k -pubout"), d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), shown["public_pem"].as_str().unwrap());
    // cairn reads OpenSSL's keys.
    let o = sh(&format!("umask 077 && {openssl} genpkey -algorithm ed25519 -out ossl.pem && {openssl} pkey -in ossl.pem -pubout -out ossl.pub.pem"), d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&["key", "show", "ossl.pem"], d)["public"], json(&["key", "show", "ossl.pub.pem"], d)["public"]);
}

#[test]
fn unsigned_manifests_are_signed_apart_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    appliance(d);
    ok(&["key", "generate", "--out", "k"], d);
    ok(&["manifest", "build", "appliance.toml", "--key", "k", "--out", "signed.cairn"], d);
    let signed = std::fs::read(d.join("signed.cairn")).unwrap();

    // One of --key, --sign-command or --unsigned must be said.
    assert!(fails(&["manifest", "build", "appliance.toml", "--out", "x.cairn"], d).contains("--unsigned"));
    let b = json(&["manifest", "build", "appliance.toml", "--unsigned", "--out", "u.cairn"], d);
    assert_eq!(b["signed"], false);
    assert_eq!(b["key_id"], serde_json::Value::Null);
    let unsigned = std::fs::read(d.join("u.cairn")).unwrap();
    assert_eq!(unsigned.len(), signed.len());
    // Nothing trusts an unsigned manifest.
    assert!(fails(&["manifest", "verify", "u.cairn", "--pubkey", "k.pub"], d).contains("not signed"));
    assert!(ok(&["manifest", "inspect", "u.cairn"], d).starts_with("# u.cairn: unsigned"));
    let i = json(&["manifest", "inspect", "u.cairn"], d);
    assert_eq!((i["signed"].clone(), i["key_id"].clone()), (false.into(), serde_json::Value::Null));

    // Nor puts it on a disk.
    common::fake_boot_kit(d, "qemu-x86_64");
    let mut init = vec![0u8; 64];
    init[..4].copy_from_slice(b"\x7fELF");
    init[18] = 62;
    std::fs::write(d.join("init"), init).unwrap();
    let assemble = [
        "image",
        "assemble",
        "--board",
        "qemu-x86_64",
        "--manifest",
        "u.cairn",
        "--layers",
        "layers",
        "--init",
        "init",
        "--trust",
        "k.pub",
        "--product",
        "cairn-test",
        "--kernel",
        "kernel",
        "--systemd-boot",
        "sdboot",
        "--out",
        "disk.img",
    ];
    assert!(fails(&assemble, d).contains("not signed"));
    assert!(!d.join("disk.img").exists());

    // Signed apart with the key file: the same bytes as signed in the build.
    let s = json(&["manifest", "sign", "u.cairn", "--key", "k", "--out", "s.cairn"], d);
    assert_eq!(s["was_signed"], false);
    assert_eq!(std::fs::read(d.join("s.cairn")).unwrap(), signed);
    ok(&["manifest", "verify", "s.cairn", "--pubkey", "k.pub"], d);

    // A signing command that prints the signature cairn would write, in
    // hex: the same bytes again (needs no openssl).
    let sig: String = signed[signed.len() - 64..].iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(d.join("sig.hex"), &sig).unwrap();
    let cmd = "cat >/dev/null; cat sig.hex";
    ok(&["manifest", "sign", "u.cairn", "--sign-command", cmd, "--pubkey", "k.pub", "--out", "c.cairn"], d);
    assert_eq!(std::fs::read(d.join("c.cairn")).unwrap(), signed);

    // A signature by another key, a failing command, garbage: refused, nothing written.
    ok(&["key", "generate", "--out", "other"], d);
    let err =
        fails(&["manifest", "sign", "u.cairn", "--sign-command", cmd, "--pubkey", "other.pub", "--out", "o.cairn"], d);
    assert!(err.contains("does not verify"), "{err}");
    let err = fails(
        &[
            "manifest",
            "sign",
            "u.cairn",
            "--sign-command",
            "echo no >&2; exit 3",
            "--pubkey",
            "k.pub",
            "--out",
            "o.cairn",
        ],
        d,
    );
    assert!(err.contains("exit status: 3"), "{err}");
    let err = fails(
        &["manifest", "sign", "u.cairn", "--sign-command", "echo hello", "--pubkey", "k.pub", "--out", "o.cairn"],
        d,
    );
    assert!(err.contains("not an ed25519 signature"), "{err}");
    assert!(!d.join("o.cairn").exists());
    // --sign-command needs --pubkey (clap says so).
    assert!(fails(&["manifest", "sign", "u.cairn", "--sign-command", cmd, "--out", "o.cairn"], d).contains("--pubkey"));

    let Some(openssl) = openssl() else { return };
    // The key file through another process (as an HSM or KMS client would
    // sign): OpenSSL signs the bytes in $CAIRN_SIGN_FILE, raw output.
    let cmd = format!("{openssl} pkeyutl -sign -rawin -inkey k -in \"$CAIRN_SIGN_FILE\"");
    ok(&["manifest", "sign", "u.cairn", "--sign-command", &cmd, "--pubkey", "k.pub", "--out", "o1.cairn"], d);
    assert_eq!(std::fs::read(d.join("o1.cairn")).unwrap(), signed);
    // From stdin, printed as hex (od) and as base64.
    let cmd = format!("cat > msg && {openssl} pkeyutl -sign -rawin -inkey k -in msg | od -An -v -tx1 | tr -d ' \\n'");
    ok(&["manifest", "sign", "u.cairn", "--sign-command", &cmd, "--pubkey", "k.pub", "--out", "o2.cairn"], d);
    assert_eq!(std::fs::read(d.join("o2.cairn")).unwrap(), signed);
    let cmd = format!("{openssl} pkeyutl -sign -rawin -inkey k -in \"$CAIRN_SIGN_FILE\" | {openssl} base64 -A");
    ok(&["manifest", "build", "appliance.toml", "--sign-command", &cmd, "--pubkey", "k.pub", "--out", "o3.cairn"], d);
    assert_eq!(std::fs::read(d.join("o3.cairn")).unwrap(), signed);
    // The envelope is signed over what OpenSSL verifies with the public key.
    ok(&["key", "convert", "k.pub", "--out", "k.pub.pem", "--format", "pem"], d);
    let len = signed.len();
    std::fs::write(d.join("body"), &signed[..len - 64]).unwrap();
    std::fs::write(d.join("sig"), &signed[len - 64..]).unwrap();
    let o = sh(&format!("{openssl} pkeyutl -verify -rawin -pubin -inkey k.pub.pem -in body -sigfile sig"), d);
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}
