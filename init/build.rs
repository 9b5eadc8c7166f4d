//! Builds the trusted public keys into the init.
//!
//! `CAIRN_TRUSTED_KEYS` names a file with one hex-encoded ed25519 public key
//! per line (the build tool sets it). Without it the init trusts no key and
//! refuses every manifest; the build prints a warning.

use std::fmt::Write as _;
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CAIRN_TRUSTED_KEYS");
    let mut keys: Vec<[u8; 32]> = Vec::new();
    match env::var("CAIRN_TRUSTED_KEYS") {
        Ok(path) => {
            println!("cargo:rerun-if-changed={path}");
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("CAIRN_TRUSTED_KEYS={path}: {e}"));
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
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("trusted_keys.rs");
    fs::write(dest, out).unwrap_or_else(|e| panic!("writing trusted_keys.rs: {e}"));
}
