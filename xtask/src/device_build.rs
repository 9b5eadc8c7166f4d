//! How the binaries that run on a device are compiled: `cairn-init`, the
//! scenarios' payload and the bench guest's `cairn-bench` (release, static
//! musl, the workspace's size profile).
//!
//! When the toolchain's own source is at hand (rustup's `rust-src`
//! component, installed on demand), the standard library is compiled with
//! them instead of taken prebuilt: `-Z build-std` on the pinned stable
//! toolchain (`RUSTC_BOOTSTRAP=1`, the one unstable flag the project uses,
//! and only here), without std's backtrace symbolizer (gimli, addr2line,
//! ~200 KB that a `panic = "abort"` PID 1 never uses: its panic message is
//! still printed, without a backtrace), with std's `optimize_for_size`, and
//! without unwind tables (nothing unwinds). cairn-init on x86_64 goes from
//! 848,720 to 539,144 bytes stripped. Without `rust-src` (no rustup, or no
//! network) the prebuilt standard library is used and one line says so;
//! `CAIRN_PREBUILT_STD=1` asks for that build explicitly (to compare).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::host_deps;

/// `cargo build --release --target TARGET -p PKG ...`, with the lean
/// standard library when it can be had. `extra` is appended (`--features`).
pub fn cargo_build(target: &str, packages: &[&str], extra: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::repo_root()).args(["build", "--release", "--target", target]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if lean_std() {
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .args(["-Z", "build-std=std,panic_abort", "-Z", "build-std-features=optimize_for_size"])
            // Merged with (appended to) the target's rustflags in
            // .cargo/config.toml, unlike a RUSTFLAGS variable, which would
            // replace them.
            .arg("--config")
            .arg(format!("target.{target}.rustflags=[\"-Cforce-unwind-tables=no\"]"));
    }
    cmd.args(extra);
    cmd
}

/// Where [`cargo_build`] puts `name`.
pub fn built(target: &str, name: &str) -> PathBuf {
    crate::repo_root().join("target").join(target).join("release").join(name)
}

/// Whether device binaries get the standard library built for them
/// (decided once per run).
pub fn lean_std() -> bool {
    static LEAN: OnceLock<bool> = OnceLock::new();
    *LEAN.get_or_init(|| {
        if std::env::var_os("CAIRN_PREBUILT_STD").is_some_and(|v| v == "1") {
            eprintln!("xtask: CAIRN_PREBUILT_STD=1: device binaries use the prebuilt standard library");
            return false;
        }
        match host_deps::ensure_rust_src() {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "xtask: warning: device binaries use the prebuilt standard library \
                     (cairn-init ~300 KB larger): {e:#}"
                );
                false
            }
        }
    })
}
