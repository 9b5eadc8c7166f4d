//! `--json` on every command: the shape of each document (field names and
//! value types, arrays by the distinct shapes of their elements) is pinned by
//! tests/snapshots/json-shapes.txt, the schema docs/cli.md documents. A
//! field renamed or removed fails here; a field added is a reviewed change
//! of the snapshot (CAIRN_UPDATE_SNAPSHOTS=1 rewrites it). Every digest is
//! `sha256:<64 hex>`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure should be loud

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn json(args: &[&str], dir: &Path) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).arg("--json").current_dir(dir).output().unwrap();
    assert!(o.status.success(), "cairn {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    // Nothing but the document on stdout, and no progress on stderr.
    assert!(o.stderr.is_empty(), "cairn {args:?} --json wrote to stderr: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("cairn {args:?}: {e}"))
}

/// `{a:string,b:[{c:number}|{c:number,d:bool}]}`: names and types, keys
/// sorted, an array's distinct element shapes joined by `|`.
fn shape(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(a) => {
            let kinds: std::collections::BTreeSet<String> = a.iter().map(shape).collect();
            format!("[{}]", kinds.into_iter().collect::<Vec<_>>().join("|"))
        }
        Value::Object(o) => {
            let fields: Vec<String> = o.iter().map(|(k, v)| format!("{k}:{}", shape(v))).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// Every string field named `digest` (or ending in `_digest`) anywhere.
fn digests(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|v| digests(v, out)),
        Value::Object(o) => {
            for (k, v) in o {
                match v {
                    Value::String(s) if k == "digest" || k.ends_with("_digest") => out.push(s.clone()),
                    _ => digests(v, out),
                }
            }
        }
        _ => {}
    }
}

fn elf_with(public_hex: &str) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[18..20].copy_from_slice(&62u16.to_le_bytes());
    e.extend((0..32).map(|i| u8::from_str_radix(&public_hex[2 * i..2 * i + 2], 16).unwrap()));
    e
}

#[test]
fn every_command_prints_its_documented_json() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    std::fs::create_dir_all(d.join("root/bin")).unwrap();
    std::fs::write(d.join("root/bin/app"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        d.join("appliance.toml"),
        "appliance = \"json\"\nversion = 1\ncompatible = \"cairn-test\"\n\n[[layer]]\nname = \"base\"\nsource = \"root\"\n\n\
         [[container]]\nname = \"app\"\nlayers = [\"base\"]\nargv = [\"/bin/app\"]\n",
    )
    .unwrap();
    common::fake_boot_kit(d, "qemu-x86_64");

    let mut docs: Vec<(&str, Value)> = Vec::new();
    let gen = json(&["key", "generate", "--out", "k"], d);
    std::fs::write(d.join("init"), elf_with(gen["public"].as_str().unwrap())).unwrap();
    docs.push(("key generate", gen));
    docs.push(("key show", json(&["key", "show", "k"], d)));
    docs.push(("key convert", json(&["key", "convert", "k", "--out", "k.hex", "--format", "hex"], d)));
    docs.push(("layer build", json(&["layer", "build", "root", "--out", "l/root.squashfs"], d)));
    docs.push(("manifest build", json(&["manifest", "build", "appliance.toml", "--unsigned", "--out", "u.cairn"], d)));
    docs.push(("manifest sign", json(&["manifest", "sign", "u.cairn", "--key", "k", "--out", "m.cairn"], d)));
    docs.push(("manifest inspect", json(&["manifest", "inspect", "m.cairn"], d)));
    docs.push(("manifest verify", json(&["manifest", "verify", "m.cairn", "--pubkey", "k.pub"], d)));
    let assemble = [
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
        "cairn-test",
        "--kernel",
        "kernel",
        "--systemd-boot",
        "sdboot",
        "--out",
        "disk.img",
        "--bmap",
        "--zstd",
    ];
    docs.push(("image assemble", json(&assemble, d)));
    docs.push(("image inspect", json(&["image", "inspect", "disk.img"], d)));
    docs.push(("boards", json(&["boards"], d)));
    docs.push((
        "key secure-boot",
        json(&["key", "secure-boot", "keys/sb", "--common-name", "json test", "--years", "2"], d),
    ));
    let bundle = ["bundle", "build", "--manifest", "m.cairn", "--layers", "layers", "--key", "k", "--out", "b.bundle"];
    docs.push(("bundle build", json(&[&bundle[..], &["--split", "b.split"]].concat(), d)));
    docs.push(("bundle inspect", json(&["bundle", "inspect", "b.bundle"], d)));
    docs.push(("bundle verify", json(&["bundle", "verify", "b.bundle", "--pubkey", "k.pub"], d)));

    let mut all = Vec::new();
    let mut text = String::new();
    for (cmd, v) in &docs {
        writeln!(text, "{cmd}: {}", shape(v)).unwrap();
        digests(v, &mut all);
    }
    // Digests: always sha256:<64 hex> (layer build printed bare hex once).
    assert!(all.len() >= 4, "{all:?}");
    for dg in &all {
        let hex = dg.strip_prefix("sha256:").unwrap_or_else(|| panic!("{dg}: not sha256:<hex>"));
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{dg}");
    }
    // Inspect's JSON is the appliance file's fields, digests as in TOML.
    let inspect = &docs[6].1["appliance"];
    assert_eq!(inspect["appliance"], "json");
    assert_eq!(inspect["layer"][0]["digest"], docs[8].1["layers"][0]["digest"]);

    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/json-shapes.txt");
    if std::env::var_os("CAIRN_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &text).unwrap();
    }
    let want = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert_eq!(
        text, want,
        "the JSON output changed shape: update docs/cli.md and the snapshot (CAIRN_UPDATE_SNAPSHOTS=1)"
    );
}
