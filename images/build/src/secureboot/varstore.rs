//! Firmware variable stores with cairn's key enrolled, for QEMU: an EDK2
//! (OVMF / AAVMF) `*_VARS.fd` template with PK = KEK = db = the key's
//! certificate and Secure Boot enabled, so the first boot already enforces
//! signatures (no setup-mode enrollment, no reboot).
//!
//! Written by `virt-fw-vars` (PyPI `virt-firmware`, by EDK2's OVMF
//! maintainer): it parses and rewrites the EDK2 varstore format (firmware
//! volume, authenticated variable store) and is what libvirt and Fedora use
//! to make their pre-enrolled OVMF variable files. Its output is
//! reproducible (the same template and certificate give the same bytes).
//! See docs/security.md, "Secure Boot".

use std::path::{Path, PathBuf};
use std::process::Command;

use super::key::SbKey;
use super::siglist::CAIRN_OWNER;

/// The program [`enrolled_vars`] runs.
pub const VIRT_FW_VARS: &str = "virt-fw-vars";

/// Why an enrolled variable store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VarStoreError {
    #[error("{VIRT_FW_VARS} is not on PATH (pip install virt-firmware; `cargo xtask` installs it for the tests)")]
    ToolMissing,
    #[error("cannot read the variable store template {}: {source}", path.display())]
    Template { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot run {VIRT_FW_VARS}: {0}")]
    Spawn(std::io::Error),
    #[error("{VIRT_FW_VARS} failed ({status}) enrolling into {}: {stderr}", out.display())]
    Failed { status: std::process::ExitStatus, out: PathBuf, stderr: String },
}

/// Finds `virt-fw-vars` on PATH.
pub fn virt_fw_vars() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(VIRT_FW_VARS)).find(|p| p.is_file())
}

/// Writes `out`: the EDK2 variable store `template` with `key`'s
/// certificate as PK, KEK and db (owner [`CAIRN_OWNER`]), no other PK, KEK,
/// db or dbx entry, and Secure Boot enabled. `out` is replaced if it exists.
///
/// Templates: x86_64 `/usr/share/OVMF/OVMF_VARS_4M.fd` (with
/// `OVMF_CODE_4M.secboot.fd`); aarch64 `/usr/share/AAVMF/AAVMF_VARS.ms.fd`
/// (Debian's `AAVMF_VARS.fd` is all zeros, formatted by the firmware at its
/// first boot, so there is no store to write into; the `.ms` one is
/// formatted and its Microsoft keys are deleted here).
pub fn enrolled_vars(template: &Path, key: &SbKey, out: &Path) -> Result<(), VarStoreError> {
    let tool = virt_fw_vars().ok_or(VarStoreError::ToolMissing)?;
    if let Err(source) = std::fs::metadata(template) {
        return Err(VarStoreError::Template { path: template.into(), source });
    }
    let dir = tempfile::tempdir().map_err(|source| VarStoreError::Write { path: std::env::temp_dir(), source })?;
    let cert = dir.path().join("cert.der");
    std::fs::write(&cert, key.cert_der()).map_err(|source| VarStoreError::Write { path: cert.clone(), source })?;
    let owner = CAIRN_OWNER.to_string();
    let output = Command::new(tool)
        .arg("--input")
        .arg(template)
        .arg("--output")
        .arg(out)
        // Whatever the template holds (the `.ms.fd` ones: Microsoft's KEK
        // and db) goes: only our certificate is trusted.
        .args(["--delete", "PK", "--delete", "KEK", "--delete", "db", "--delete", "dbx"])
        .arg("--set-pk")
        .arg(&owner)
        .arg(&cert)
        .arg("--add-kek")
        .arg(&owner)
        .arg(&cert)
        .arg("--add-db")
        .arg(&owner)
        .arg(&cert)
        .arg("--secure-boot")
        .output()
        .map_err(VarStoreError::Spawn)?;
    if !output.status.success() {
        return Err(VarStoreError::Failed {
            status: output.status,
            out: out.into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
