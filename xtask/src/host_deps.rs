//! Host dependencies the build needs: Rust targets (rustup), QEMU and foreign
//! Debian architectures (apt). A fresh machine (CI) starts with rustup, gcc and
//! python3 only; everything else is installed on demand when we run as root,
//! or named in a clear error when we do not.
//!
//! Every action prints one short `xtask: ...` line on stderr. A command that
//! fails becomes an error naming the command line and the tail of its stderr.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use cairn_board::Board;

/// Make sure rustup has the standard library for `target` installed.
///
/// Without rustup (a distribution toolchain) the target is accepted when its
/// directory exists in the sysroot, and refused otherwise.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["target", "list", "--installed"]);
    let out = match list.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return check_sysroot_target(target),
        Err(e) => return Err(e).with_context(|| format!("cannot run `{}`", show(&list))),
    };
    check_status(&list, &out)?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: installing Rust target {target} with rustup");
    run(Command::new("rustup").args(["target", "add", target]))?;
    Ok(())
}

/// Make sure the toolchain's own source is installed (rustup's `rust-src`
/// component), which `-Z build-std` compiles the standard library from.
pub fn ensure_rust_src() -> Result<()> {
    let out = run(Command::new("rustc").args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib/src/rust/library/Cargo.lock").is_file() {
        return Ok(());
    }
    eprintln!("xtask: installing the rust-src component with rustup (the device's standard library is built from it)");
    run(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    Ok(())
}

/// No rustup: look for `<sysroot>/lib/rustlib/<target>`.
fn check_sysroot_target(target: &str) -> Result<()> {
    let out = run(Command::new("rustc").args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib").join(target).is_dir() {
        return Ok(());
    }
    bail!(
        "Rust target {target} is not installed and rustup is not on PATH; \
         install rustup (https://rustup.rs) or the target's standard library for {}",
        sysroot.display()
    )
}

/// Find the board's QEMU binary on PATH, installing `board.qemu_package` with
/// apt-get when it is missing and we are root. Returns the binary's path.
pub fn ensure_qemu(board: &Board) -> Result<PathBuf> {
    if let Some(p) = find_on_path(board.qemu_binary) {
        return Ok(p);
    }
    if !is_root() {
        bail!(
            "{} is not on PATH; install the Debian package {} \
             (sudo apt-get install --no-install-recommends {})",
            board.qemu_binary,
            board.qemu_package,
            board.qemu_package
        );
    }
    apt_install(&[board.qemu_package])?;
    find_on_path(board.qemu_binary)
        .with_context(|| format!("installed {} but {} is still not on PATH", board.qemu_package, board.qemu_binary))
}

/// The board's UEFI firmware (code, variable store template), installing
/// `board.firmware_package` with apt-get when it is missing and we are root.
pub fn ensure_firmware(board: &Board) -> Result<(PathBuf, PathBuf)> {
    let (code, vars) = (PathBuf::from(board.firmware_code), PathBuf::from(board.firmware_vars));
    if !(code.is_file() && vars.is_file()) {
        if !is_root() {
            bail!(
                "{} is missing; install the Debian package {} (sudo apt-get install {})",
                code.display(),
                board.firmware_package,
                board.firmware_package
            );
        }
        apt_install(&[board.firmware_package])?;
    }
    anyhow::ensure!(
        code.is_file() && vars.is_file(),
        "installed {} but {} is still missing",
        board.firmware_package,
        code.display()
    );
    Ok((code, vars))
}

/// The independent tools the host tests check our output with: unsquashfs
/// reads every layer image back, zstd makes compressed archives, mke2fs
/// formats the data partition, veritysetup checks every layer's hash tree,
/// bmaptool flashes the assembled disk from its `.bmap` and `.zst`.
/// Installed with apt-get when missing and we
/// are root; otherwise the tests that need them say they skipped.
pub fn ensure_test_tools() -> Result<()> {
    let wanted = [
        ("unsquashfs", "squashfs-tools"),
        ("zstd", "zstd"),
        ("mke2fs", "e2fsprogs"),
        ("veritysetup", "cryptsetup-bin"),
        ("bmaptool", "bmap-tools"),
        // Secure Boot (cairn-build's secureboot tests): sbverify checks our
        // Authenticode signatures, efitools our signature lists and .auth
        // files, openssl our keys and certificates.
        ("sbverify", "sbsigntool"),
        ("sign-efi-sig-list", "efitools"),
        ("openssl", "openssl"),
    ];
    let mut missing: Vec<&str> =
        wanted.iter().filter(|(bin, _)| find_on_path(bin).is_none()).map(|(_, pkg)| *pkg).collect();
    // The EFI binaries the Secure Boot tests sign (systemd-boot and its stub).
    if !Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").is_file() {
        missing.push("systemd-boot-efi");
    }
    if is_root() {
        if let Err(e) = ensure_virt_fw_vars() {
            eprintln!("xtask: the variable store test will skip its check: {e:#}");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!("xtask: some host tests will skip their checks: install {}", missing.join(" "));
        return Ok(());
    }
    apt_install(&missing)
}

/// `virt-fw-vars` (PyPI `virt-firmware`, by EDK2's OVMF maintainer): the
/// independent reader the Secure Boot tests check our enrolled OVMF/AAVMF
/// variable stores with. Installed with pip when missing.
pub fn ensure_virt_fw_vars() -> Result<PathBuf> {
    if let Some(p) = find_on_path("virt-fw-vars") {
        return Ok(p);
    }
    eprintln!("xtask: installing virt-firmware (virt-fw-vars) with pip");
    run(Command::new("python3").args(["-m", "pip", "install", "-q", "virt-firmware"]))?;
    find_on_path("virt-fw-vars").context("installed virt-firmware but virt-fw-vars is still not on PATH")
}

/// Make apt able to download packages of Debian architecture `deb_arch`
/// (`apt-get download pkg:arm64` on an amd64 host): add it as a foreign
/// architecture and refresh the package lists when it is not there yet.
/// The host's native architecture needs nothing.
pub fn ensure_apt_arch(deb_arch: &str) -> Result<()> {
    let native = run(Command::new("dpkg").arg("--print-architecture"))?;
    if String::from_utf8_lossy(&native.stdout).trim() == deb_arch {
        return Ok(());
    }
    let foreign = run(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if String::from_utf8_lossy(&foreign.stdout).split_whitespace().any(|a| a == deb_arch) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt does not know the {deb_arch} architecture; run as root: \
             dpkg --add-architecture {deb_arch} && apt-get update"
        );
    }
    eprintln!("xtask: adding Debian architecture {deb_arch} with dpkg");
    run(Command::new("dpkg").args(["--add-architecture", deb_arch]))?;
    // The lists read before the architecture was added lack it, so refresh
    // even when this process already ran `apt-get update`.
    apt_update_now()
}

/// A Debian package unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Deb {
    /// Package name.
    pub package: String,
    /// The `.deb` file it came from (`crun_1.8.1-1+deb12u1_amd64.deb`): names the version.
    pub file: String,
    /// The unpacked tree (`dpkg-deb -x`).
    pub tree: PathBuf,
}

/// Download (once; the cache is reused) and unpack the candidate version of
/// each package for Debian architecture `deb_arch`, the way the boards'
/// kernels are fetched (`apt-get download PACKAGE:ARCH`, `dpkg-deb -x`):
/// `<cache_dir>/<arch>/<package>/tree`, complete when its marker is there.
pub fn fetch_debs(packages: &[&str], deb_arch: &str, cache_dir: &Path) -> Result<Vec<Deb>> {
    ensure_apt_arch(deb_arch)?;
    let dir = cache_dir.join(deb_arch);
    packages
        .iter()
        .map(|&package| {
            let pkg_dir = dir.join(package);
            let marker = pkg_dir.join(crate::kernel::MARKER);
            if !marker.is_file() {
                crate::kernel::download_and_unpack(&format!("{package}:{deb_arch}"), &dir, &pkg_dir)?;
            }
            let file = std::fs::read_to_string(&marker).unwrap_or_default().trim().to_owned();
            Ok(Deb { package: package.to_owned(), file, tree: pkg_dir.join("tree") })
        })
        .collect()
}

/// Set once `apt-get update` has run in this process.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Run `apt-get update` unless this process already did. Needs root.
pub fn apt_update() -> Result<()> {
    if APT_UPDATED.load(Ordering::SeqCst) {
        return Ok(());
    }
    apt_update_now()
}

/// Run `apt-get update` now.
fn apt_update_now() -> Result<()> {
    if !is_root() {
        bail!("the apt package lists need refreshing; run `sudo apt-get update`");
    }
    eprintln!("xtask: refreshing package lists with apt-get update");
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    APT_UPDATED.store(true, Ordering::SeqCst);
    Ok(())
}

/// `apt-get install -y --no-install-recommends PACKAGES`, after one
/// `apt-get update` per process (a fresh machine has empty lists).
fn apt_install(packages: &[&str]) -> Result<()> {
    apt_update()?;
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Whether the effective user is root (from /proc/self/status, else `id -u`).
pub fn is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first executable file called `name` in the directories of PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Run `cmd` with its output captured; fail unless it exits successfully.
/// The error names the command line and the last lines of its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run `{}`", show(cmd)))?;
    check_status(cmd, &out)?;
    Ok(out)
}

fn check_status(cmd: &Command, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let mut msg = format!("`{}` failed ({})", show(cmd), out.status);
    let tail = tail_lines(&out.stderr, 15);
    if !tail.is_empty() {
        msg.push_str(":\n");
        msg.push_str(&tail);
    }
    bail!(msg)
}

/// The last `n` non-empty lines of `bytes`, indented.
fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// `program arg1 arg2 ...`, for messages.
pub fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(OsStr::to_string_lossy).map(|a| a.into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_non_empty_lines() {
        assert_eq!(tail_lines(b"a\n\nb\nc\n\n", 2), "  b\n  c");
        assert_eq!(tail_lines(b"", 3), "");
    }

    #[test]
    fn failed_command_error_names_command_and_stderr() {
        let msg = match run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])) {
            Ok(_) => panic!("a failing command must be an error"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains("`sh -c echo oops >&2; exit 3` failed"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn finds_sh_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-cairn").is_none());
    }
}
