//! `CAIRN_ROLLBACK_FLOOR` (default 0) is the rollback floor used when
//! neither boot state copy is readable.
//!
//! Nothing about a product is compiled in: the trusted keys and the
//! product's compatibility string are data in the initramfs
//! (`/etc/cairn/trusted-keys`, `/etc/cairn/product`, see `src/trust.rs`),
//! so one binary serves every product.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CAIRN_ROLLBACK_FLOOR");
    let floor: u64 = match env::var("CAIRN_ROLLBACK_FLOOR") {
        Ok(f) => f.trim().parse().unwrap_or_else(|_| panic!("CAIRN_ROLLBACK_FLOOR={f:?} is not an integer")),
        Err(_) => 0,
    };
    let out = format!(
        "/// Rollback floor when neither boot state copy is readable.\npub const FALLBACK_ROLLBACK_FLOOR: u64 = {floor};\n"
    );
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("rollback_floor.rs");
    fs::write(dest, out).unwrap_or_else(|e| panic!("writing rollback_floor.rs: {e}"));
}
