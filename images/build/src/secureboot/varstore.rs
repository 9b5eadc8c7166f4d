//! Firmware variable stores with cairn's key enrolled, for QEMU: an EDK2
//! (OVMF / AAVMF) `*_VARS.fd` template with PK = KEK = db = the key's
//! certificate and Secure Boot enabled, so the first boot already enforces
//! signatures (no setup-mode enrollment, no reset).
//!
//! Written here, in Rust, from the template: the firmware volume header and
//! everything after the variable store (the fault-tolerant-write area) are
//! kept byte for byte; the variable store is rewritten with the template's
//! live variables minus PK, KEK, db, dbx, SecureBootEnable and CustomMode,
//! then ours. Reproducible: the timestamps are [`EfiTime::CAIRN_DEFAULT`].
//! A host test reads the result back with `virt-fw-vars` (PyPI
//! `virt-firmware`, by EDK2's OVMF maintainer), the tool libvirt's
//! pre-enrolled stores are made with. See docs/security.md, "Secure Boot".

use std::path::{Path, PathBuf};

use super::key::SbKey;
use super::siglist::{
    x509_signature_list, AuthError, EfiTime, Guid, AUTH_VAR_ATTRIBUTES, CAIRN_OWNER, EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
};

/// gEfiAuthenticatedVariableGuid: a variable store of authenticated variable headers.
const AUTHENTICATED_VARIABLE_STORE: Guid =
    Guid::new(0xaaf32c78, 0x947b, 0x439a, [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92]);
/// gEfiSecureBootEnableDisableGuid (variable `SecureBootEnable`).
const SECURE_BOOT_ENABLE_DISABLE: Guid =
    Guid::new(0xf0a30bc7, 0xaf08, 0x4556, [0x99, 0xc4, 0x00, 0x10, 0x09, 0xc9, 0x3a, 0x44]);
/// gEfiCustomModeEnableGuid (variable `CustomMode`).
const CUSTOM_MODE_ENABLE: Guid =
    Guid::new(0xc076ec0c, 0x7028, 0x4399, [0xa0, 0x72, 0x71, 0xee, 0x5c, 0x44, 0x8b, 0x9f]);

const VARIABLE_STORE_HEADER_LEN: usize = 28;
const VARIABLE_STORE_FORMATTED: u8 = 0x5a;
const VARIABLE_STORE_HEALTHY: u8 = 0xfe;
const VARIABLE_HEADER_LEN: usize = 60;
const VARIABLE_START_ID: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
/// VAR_ADDED & VAR_IN_DELETED_TRANSITION: still the live copy if no other.
const VAR_ADDED_IN_TRANSITION: u8 = 0x3e;
/// NON_VOLATILE | BOOTSERVICE_ACCESS.
const NV_BS: u32 = 0x01 | 0x02;

/// Debian's Secure Boot capable UEFI firmware for QEMU, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureBootFirmware {
    /// The firmware code (pflash unit 0, read-only).
    pub code: &'static str,
    /// The variable store template for [`enrolled_vars`] (pflash unit 1: a
    /// writable copy per run).
    pub vars_template: &'static str,
    /// QEMU arguments the firmware needs (machine, SMM).
    pub qemu_args: &'static [&'static str],
}

/// x86_64: OVMF's Secure Boot build (package `ovmf`). It needs SMM and a
/// secure pflash (the variable store is out of the OS's reach) and refuses
/// to start without.
pub const OVMF_X86_64: SecureBootFirmware = SecureBootFirmware {
    code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd",
    qemu_args: &["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"],
};

/// aarch64: AAVMF (package `qemu-efi-aarch64`; one code image, Secure Boot
/// enforced once PK is set). `pauth-impdef=on` makes `-cpu max` much
/// faster under TCG.
pub const AAVMF_AARCH64: SecureBootFirmware = SecureBootFirmware {
    code: "/usr/share/AAVMF/AAVMF_CODE.fd",
    vars_template: "/usr/share/AAVMF/AAVMF_VARS.ms.fd",
    qemu_args: &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
};

/// Why an enrolled variable store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VarStoreError {
    #[error("cannot read the variable store template {}: {source}", path.display())]
    Template { path: PathBuf, source: std::io::Error },
    #[error(
        "{}: no EDK2 firmware volume (_FVH) at the start (Debian's AAVMF_VARS.fd is all zeros \
         until the firmware first runs: use AAVMF_VARS.ms.fd)",
        .0.display()
    )]
    NoFirmwareVolume(PathBuf),
    #[error("{}: no formatted, healthy authenticated variable store after the firmware volume header", .0.display())]
    NoVariableStore(PathBuf),
    #[error("{}: variable at {offset:#x} runs past the store end {end:#x}", path.display())]
    BadVariable { path: PathBuf, offset: usize, end: usize },
    #[error("{}: the variables need {need} bytes, the store holds {have}", path.display())]
    Full { path: PathBuf, need: usize, have: usize },
    #[error("cannot make the signature list: {0}")]
    SignatureList(#[from] AuthError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// One variable of an authenticated variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// UTF-16LE, with the terminating NUL.
    pub name: Vec<u8>,
    pub vendor: Guid,
    pub attributes: u32,
    pub monotonic_count: u64,
    pub timestamp: [u8; 16],
    pub pubkey_index: u32,
    pub data: Vec<u8>,
}

impl Variable {
    fn new(name: &str, vendor: Guid, attributes: u32, timestamp: [u8; 16], data: Vec<u8>) -> Variable {
        let name = name.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect();
        Variable { name, vendor, attributes, monotonic_count: 0, timestamp, pubkey_index: 0, data }
    }

    /// The name as text (without the NUL).
    pub fn name(&self) -> String {
        let units: Vec<u16> = self.name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16_lossy(&units).trim_end_matches('\0').to_string()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&VARIABLE_START_ID.to_le_bytes());
        out.push(VAR_ADDED);
        out.push(0);
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&self.monotonic_count.to_le_bytes());
        out.extend_from_slice(&self.timestamp);
        out.extend_from_slice(&self.pubkey_index.to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.vendor.0);
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.data);
        out.resize(out.len().next_multiple_of(4), 0xff);
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the variable store is in a firmware volume: (start of the
/// variables, end of the store).
fn store_bounds(fd: &[u8], path: &Path) -> Result<(usize, usize), VarStoreError> {
    if fd.get(40..44) != Some(b"_FVH") {
        return Err(VarStoreError::NoFirmwareVolume(path.into()));
    }
    let no_store = || VarStoreError::NoVariableStore(path.into());
    let store = usize::from(le_u16(fd, 48).ok_or_else(no_store)?);
    let size = le_u32(fd, store + 16).ok_or_else(no_store)? as usize;
    let healthy = fd.get(store + 20..store + 22) == Some(&[VARIABLE_STORE_FORMATTED, VARIABLE_STORE_HEALTHY][..]);
    if fd.get(store..store + 16) != Some(&AUTHENTICATED_VARIABLE_STORE.0[..]) || !healthy {
        return Err(no_store());
    }
    let end = store.checked_add(size).filter(|e| *e <= fd.len()).ok_or_else(no_store)?;
    Ok((store + VARIABLE_STORE_HEADER_LEN, end))
}

/// The live variables of an EDK2 variable store image.
pub fn read_variables(fd: &[u8], path: &Path) -> Result<Vec<Variable>, VarStoreError> {
    let (mut off, end) = store_bounds(fd, path)?;
    let mut vars: Vec<Variable> = Vec::new();
    while off + VARIABLE_HEADER_LEN <= end && le_u16(fd, off) == Some(VARIABLE_START_ID) {
        let bad = || VarStoreError::BadVariable { path: path.into(), offset: off, end };
        let state = *fd.get(off + 2).ok_or_else(bad)?;
        let name_size = le_u32(fd, off + 36).ok_or_else(bad)? as usize;
        let data_size = le_u32(fd, off + 40).ok_or_else(bad)? as usize;
        let name_at = off + VARIABLE_HEADER_LEN;
        let data_at = name_at.checked_add(name_size).ok_or_else(bad)?;
        let next = data_at.checked_add(data_size).filter(|n| *n <= end).ok_or_else(bad)?;
        if state == VAR_ADDED || state == VAR_ADDED_IN_TRANSITION {
            let mut vendor = [0u8; 16];
            vendor.copy_from_slice(fd.get(off + 44..off + 60).ok_or_else(bad)?);
            let mut timestamp = [0u8; 16];
            timestamp.copy_from_slice(fd.get(off + 16..off + 32).ok_or_else(bad)?);
            let v = Variable {
                name: fd.get(name_at..data_at).ok_or_else(bad)?.to_vec(),
                vendor: Guid(vendor),
                attributes: le_u32(fd, off + 4).ok_or_else(bad)?,
                monotonic_count: le_u64(fd, off + 8).ok_or_else(bad)?,
                timestamp,
                pubkey_index: le_u32(fd, off + 32).ok_or_else(bad)?,
                data: fd.get(data_at..next).ok_or_else(bad)?.to_vec(),
            };
            // A copy in deleted transition yields to a fully added one.
            vars.retain(|o| !(o.name == v.name && o.vendor == v.vendor));
            vars.push(v);
        }
        off = next.next_multiple_of(4);
    }
    Ok(vars)
}

/// `template` with its variable store rewritten to hold `vars`.
pub fn with_variables(template: &[u8], path: &Path, vars: &[Variable]) -> Result<Vec<u8>, VarStoreError> {
    let (start, end) = store_bounds(template, path)?;
    let mut area = Vec::with_capacity(end - start);
    for v in vars {
        v.encode(&mut area);
    }
    if area.len() > end - start {
        return Err(VarStoreError::Full { path: path.into(), need: area.len(), have: end - start });
    }
    area.resize(end - start, 0xff);
    let mut out = template.to_vec();
    if let Some(dst) = out.get_mut(start..end) {
        dst.copy_from_slice(&area);
    }
    Ok(out)
}

/// The variables that enroll `key` (PK, KEK, db) and turn Secure Boot on.
pub fn enrollment_variables(key: &SbKey, time: EfiTime) -> Result<Vec<Variable>, VarStoreError> {
    let esl = x509_signature_list(CAIRN_OWNER, key.cert_der())?;
    let ts = time.to_bytes();
    Ok(vec![
        Variable::new("PK", EFI_GLOBAL_VARIABLE, AUTH_VAR_ATTRIBUTES, ts, esl.clone()),
        Variable::new("KEK", EFI_GLOBAL_VARIABLE, AUTH_VAR_ATTRIBUTES, ts, esl.clone()),
        Variable::new("db", EFI_IMAGE_SECURITY_DATABASE, AUTH_VAR_ATTRIBUTES, ts, esl),
        Variable::new("SecureBootEnable", SECURE_BOOT_ENABLE_DISABLE, NV_BS, [0; 16], vec![1]),
        Variable::new("CustomMode", CUSTOM_MODE_ENABLE, NV_BS, [0; 16], vec![0]),
    ])
}

/// Writes `out`: the EDK2 variable store `template` with `key`'s
/// certificate as PK, KEK and db (owner [`CAIRN_OWNER`]), no other PK, KEK,
/// db or dbx, and Secure Boot enabled. `out` is replaced if it exists.
///
/// Templates: x86_64 `/usr/share/OVMF/OVMF_VARS_4M.fd` (with
/// `OVMF_CODE_4M.secboot.fd`); aarch64 `/usr/share/AAVMF/AAVMF_VARS.ms.fd`
/// (Debian's `AAVMF_VARS.fd` is all zeros, formatted by the firmware at its
/// first boot, so there is no store to write into; the `.ms` one is
/// formatted, and its Microsoft keys are dropped here).
pub fn enrolled_vars(template: &Path, key: &SbKey, out: &Path) -> Result<(), VarStoreError> {
    let fd = std::fs::read(template).map_err(|source| VarStoreError::Template { path: template.into(), source })?;
    let replaced = ["PK", "KEK", "db", "dbx", "SecureBootEnable", "CustomMode"];
    let mut vars: Vec<Variable> =
        read_variables(&fd, template)?.into_iter().filter(|v| !replaced.contains(&v.name().as_str())).collect();
    vars.extend(enrollment_variables(key, EfiTime::CAIRN_DEFAULT)?);
    let bytes = with_variables(&fd, template, &vars)?;
    std::fs::write(out, bytes).map_err(|source| VarStoreError::Write { path: out.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A firmware volume header + an empty authenticated variable store of `size` bytes.
    fn empty_store(size: usize) -> Vec<u8> {
        let mut fd = vec![0u8; 0x48];
        fd[40..44].copy_from_slice(b"_FVH");
        fd[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        fd.extend_from_slice(&AUTHENTICATED_VARIABLE_STORE.0);
        fd.extend_from_slice(&(size as u32).to_le_bytes());
        fd.extend_from_slice(&[VARIABLE_STORE_FORMATTED, VARIABLE_STORE_HEALTHY, 0, 0, 0, 0, 0, 0]);
        fd.resize(0x48 + size, 0xff);
        fd.extend_from_slice(b"FTW area, kept");
        fd
    }

    #[test]
    fn variables_round_trip_and_the_rest_of_the_volume_is_kept() {
        let p = Path::new("t.fd");
        let fd = empty_store(4096);
        assert_eq!(read_variables(&fd, p).unwrap(), vec![]);
        let vars = vec![
            Variable::new(
                "PK",
                EFI_GLOBAL_VARIABLE,
                AUTH_VAR_ATTRIBUTES,
                EfiTime::CAIRN_DEFAULT.to_bytes(),
                vec![7; 5],
            ),
            Variable::new("SecureBootEnable", SECURE_BOOT_ENABLE_DISABLE, NV_BS, [0; 16], vec![1]),
        ];
        let out = with_variables(&fd, p, &vars).unwrap();
        assert_eq!(out.len(), fd.len());
        assert!(out.ends_with(b"FTW area, kept"));
        assert_eq!(read_variables(&out, p).unwrap(), vars);
        assert_eq!(vars[0].name(), "PK");
        // 60-byte header + "PK\0" (6) + 5 data bytes = 71, next variable at 72.
        assert_eq!(out[0x64 + 72..0x64 + 74], VARIABLE_START_ID.to_le_bytes());
        // A deleted copy is skipped.
        let mut deleted = out.clone();
        deleted[0x64 + 2] = 0x3c;
        assert_eq!(read_variables(&deleted, p).unwrap(), vars[1..].to_vec());
    }

    #[test]
    fn malformed_stores_are_refused_with_what_is_wrong() {
        let p = Path::new("t.fd");
        assert!(matches!(read_variables(&[0; 4096], p), Err(VarStoreError::NoFirmwareVolume(_))));
        let mut unformatted = empty_store(4096);
        unformatted[0x48 + 20] = 0xff;
        assert!(matches!(read_variables(&unformatted, p), Err(VarStoreError::NoVariableStore(_))));
        let mut past_end = empty_store(4096);
        let big = vec![Variable::new("x", CAIRN_OWNER, NV_BS, [0; 16], vec![0; 100])];
        past_end = with_variables(&past_end, p, &big).unwrap();
        past_end[0x64 + 40..0x64 + 44].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(matches!(read_variables(&past_end, p), Err(VarStoreError::BadVariable { offset: 0x64, .. })));
        let huge = vec![Variable::new("x", CAIRN_OWNER, NV_BS, [0; 16], vec![0; 5000])];
        assert!(matches!(with_variables(&empty_store(4096), p, &huge), Err(VarStoreError::Full { .. })));
    }
}
