//! Builds the trusted public keys into the init.
//!
//! `CAIRN_TRUSTED_KEYS` names a file with one hex-encoded ed25519 public key
//! per line (the build tool sets it). Without it the init trusts no key and
//! refuses every manifest; the build prints a warning.
//!
//! `CAIRN_COMPATIBLE` is the product this init boots: a manifest whose
//! `compatible` differs is refused. Without it the init refuses every
//! manifest (a warning again). `CAIRN_ROLLBACK_FLOOR` (default 0) is the
//! rollback floor used when neither boot state copy is readable.

use std::fmt::Write as _;
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CAIRN_TRUSTED_KEYS");
    println!("cargo:rerun-if-env-changed=CAIRN_COMPATIBLE");
    println!("cargo:rerun-if-env-changed=CAIRN_ROLLBACK_FLOOR");
    let compatible = match env::var("CAIRN_COMPATIBLE") {
        Ok(c) => {
            let ok =
                !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._,+-".contains(&b));
            if !ok {
                panic!("CAIRN_COMPATIBLE={c:?}: 1 to 64 characters of [A-Za-z0-9._,+-]");
            }
            c
        }
        Err(_) => {
            println!(
                "cargo:warning=CAIRN_COMPATIBLE is not set: this cairn-init knows no product and will refuse every manifest"
            );
            String::new()
        }
    };
    let floor: u64 = match env::var("CAIRN_ROLLBACK_FLOOR") {
        Ok(f) => f.trim().parse().unwrap_or_else(|_| panic!("CAIRN_ROLLBACK_FLOOR={f:?} is not an integer")),
        Err(_) => 0,
    };
    let mut keys: Vec<[u8; 32]> = Vec::new();
    match env::var("CAIRN_TRUSTED_KEYS") {
        Ok(path) => {
            println!("cargo:rerun-if-changed={path}");
            let text = fs::read_to_string(&path).unwrap_or_else(|e| {
                let hint = if std::path::Path::new(&path).is_relative() {
                    " (a relative path is taken from init/, where cargo runs this build script: give an absolute path)"
                } else {
                    ""
                };
                panic!("CAIRN_TRUSTED_KEYS={path}: {e}{hint}")
            });
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let hex = line.trim();
                let mut key = [0u8; 32];
                if hex.len() != 64 {
                    panic!("{path}:{}: a key is 64 hex characters", n + 1);
                }
                for (i, b) in key.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                        .unwrap_or_else(|_| panic!("{path}:{}: not hex", n + 1));
                }
                keys.push(key);
            }
        }
        Err(_) => println!(
            "cargo:warning=CAIRN_TRUSTED_KEYS is not set: this cairn-init trusts no key and will refuse every manifest"
        ),
    }
    let mut out = String::from(
        "/// Public keys whose manifest signatures this init accepts.\npub static TRUSTED_KEYS: &[[u8; 32]] = &[\n",
    );
    for k in &keys {
        let _ = writeln!(out, "    {k:?},");
    }
    out.push_str("];\n");
    let _ = writeln!(
        out,
        "/// The product this init boots (a manifest's `compatible` must equal it; empty: none).\n\
         pub static COMPATIBLE: &str = {compatible:?};"
    );
    let _ = writeln!(
        out,
        "/// Rollback floor when neither boot state copy is readable.\npub const FALLBACK_ROLLBACK_FLOOR: u64 = {floor};"
    );
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("trusted_keys.rs");
    fs::write(dest, out).unwrap_or_else(|e| panic!("writing trusted_keys.rs: {e}"));
}
