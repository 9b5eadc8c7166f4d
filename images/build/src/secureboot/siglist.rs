//! EFI signature lists and authenticated variables: the `PK.auth`,
//! `KEK.auth` and `db.auth` files a factory (or systemd-boot's
//! `secure-boot-enroll`) writes into firmware in setup mode.
//!
//! Byte for byte what efitools' `cert-to-efi-sig-list` and
//! `sign-efi-sig-list -t TIME` write (checked by a host test): an
//! EFI_SIGNATURE_LIST of one EFI_CERT_X509 entry, behind an
//! EFI_VARIABLE_AUTHENTICATION_2 header whose PKCS#7 SignedData (no
//! authenticated attributes, detached) signs
//! name || vendor GUID || attributes || timestamp || data.
//! The timestamp is a parameter, so the output is reproducible.

use std::fs;
use std::path::{Path, PathBuf};

use super::der_util::{self, Signed, OID_DATA};
use super::key::SbKey;

/// A GUID in EFI byte order (first three fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const fn new(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
        )
    }
}

/// EFI_GLOBAL_VARIABLE: the vendor of `PK` and `KEK`.
pub const EFI_GLOBAL_VARIABLE: Guid =
    Guid::new(0x8be4df61, 0x93ca, 0x11d2, [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
/// EFI_IMAGE_SECURITY_DATABASE_GUID: the vendor of `db` and `dbx`.
pub const EFI_IMAGE_SECURITY_DATABASE: Guid =
    Guid::new(0xd719b2cb, 0x3d3a, 0x4596, [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f]);
/// EFI_CERT_X509_GUID: a signature list of DER certificates.
pub const EFI_CERT_X509: Guid = Guid::new(0xa5c059a1, 0x94e4, 0x4aa7, [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72]);
/// EFI_CERT_TYPE_PKCS7_GUID: WIN_CERTIFICATE_UEFI_GUID's type for PKCS#7.
pub const EFI_CERT_TYPE_PKCS7: Guid =
    Guid::new(0x4aafd29d, 0x68df, 0x49ee, [0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7]);
/// The signature owner cairn writes into its signature lists.
pub const CAIRN_OWNER: Guid = Guid::new(0x5f8a3c2e, 0x7d41, 0x4b9a, [0x9e, 0x36, 0x1c, 0x0b, 0x42, 0x6d, 0x8f, 0x17]);

/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS |
/// TIME_BASED_AUTHENTICATED_WRITE_ACCESS: what PK, KEK and db are written with.
pub const AUTH_VAR_ATTRIBUTES: u32 = 0x01 | 0x02 | 0x04 | 0x20;

const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;

/// EFI_TIME, second precision, UTC (TimeZone, Daylight, Nanosecond 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfiTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl EfiTime {
    /// The fixed timestamp cairn's `.auth` files carry (reproducible
    /// output). Firmware only requires a later timestamp for a later write
    /// of the same variable; enrollment in setup mode writes each once.
    pub const CAIRN_DEFAULT: EfiTime = EfiTime { year: 2024, month: 1, day: 1, hour: 0, minute: 0, second: 0 };

    pub fn to_bytes(self) -> [u8; 16] {
        let y = self.year.to_le_bytes();
        [y[0], y[1], self.month, self.day, self.hour, self.minute, self.second, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

/// Why an authenticated variable could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the certificate is {0} bytes; a signature list entry holds at most 4 GiB")]
    TooLarge(usize),
    #[error("invalid timestamp {0:?}")]
    Time(EfiTime),
    #[error("cannot build the PKCS#7 signature of {var}: {msg}")]
    Pkcs7 { var: String, msg: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// EFI_SIGNATURE_LIST with one EFI_CERT_X509 entry: `cert_der` owned by `owner`.
pub fn x509_signature_list(owner: Guid, cert_der: &[u8]) -> Result<Vec<u8>, AuthError> {
    let too_large = || AuthError::TooLarge(cert_der.len());
    let sig_size = u32::try_from(16 + cert_der.len()).map_err(|_| too_large())?;
    let list_size = sig_size.checked_add(28).ok_or_else(too_large)?;
    let mut out = Vec::with_capacity(list_size as usize);
    out.extend_from_slice(&EFI_CERT_X509.0);
    out.extend_from_slice(&list_size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
    out.extend_from_slice(&sig_size.to_le_bytes());
    out.extend_from_slice(&owner.0);
    out.extend_from_slice(cert_der);
    Ok(out)
}

/// An authenticated variable write (EFI_VARIABLE_AUTHENTICATION_2 then
/// `data`) of variable `name` of `vendor`, signed by `signer`.
pub fn authenticated_variable(
    name: &str,
    vendor: Guid,
    attributes: u32,
    time: EfiTime,
    data: &[u8],
    signer: &SbKey,
) -> Result<Vec<u8>, AuthError> {
    if !(1..=12).contains(&time.month)
        || !(1..=31).contains(&time.day)
        || time.hour > 23
        || time.minute > 59
        || time.second > 59
    {
        return Err(AuthError::Time(time));
    }
    let time_bytes = time.to_bytes();
    let mut signed = Vec::with_capacity(name.len() * 2 + 36 + data.len());
    signed.extend(name.encode_utf16().flat_map(u16::to_le_bytes));
    signed.extend_from_slice(&vendor.0);
    signed.extend_from_slice(&attributes.to_le_bytes());
    signed.extend_from_slice(&time_bytes);
    signed.extend_from_slice(data);
    let pkcs7 = der_util::signed_data(signer, &OID_DATA, None, Signed::Data(&signed))
        .map_err(|e| AuthError::Pkcs7 { var: name.into(), msg: e.to_string() })?;
    // WIN_CERTIFICATE_UEFI_GUID: dwLength covers the header, the type GUID
    // and the SignedData.
    let length = u32::try_from(24 + pkcs7.len()).map_err(|_| AuthError::TooLarge(pkcs7.len()))?;
    let mut out = Vec::with_capacity(16 + length as usize + data.len());
    out.extend_from_slice(&time_bytes);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&EFI_CERT_TYPE_PKCS7.0);
    out.extend_from_slice(&pkcs7);
    out.extend_from_slice(data);
    Ok(out)
}

/// The three enrollment files for one key that is PK, KEK and db at once
/// (the single-key setup cairn makes; the PK signs all three).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFiles {
    pub pk: Vec<u8>,
    pub kek: Vec<u8>,
    pub db: Vec<u8>,
}

/// `PK.auth`, `KEK.auth` and `db.auth` enrolling `key`'s certificate.
pub fn auth_files(key: &SbKey, owner: Guid, time: EfiTime) -> Result<AuthFiles, AuthError> {
    let esl = x509_signature_list(owner, key.cert_der())?;
    let var = |name: &str, vendor: Guid| authenticated_variable(name, vendor, AUTH_VAR_ATTRIBUTES, time, &esl, key);
    Ok(AuthFiles {
        pk: var("PK", EFI_GLOBAL_VARIABLE)?,
        kek: var("KEK", EFI_GLOBAL_VARIABLE)?,
        db: var("db", EFI_IMAGE_SECURITY_DATABASE)?,
    })
}

impl AuthFiles {
    /// Writes `PK.auth`, `KEK.auth`, `db.auth` into `dir` (created), e.g.
    /// `ESP/loader/keys/auto` for systemd-boot's `secure-boot-enroll`.
    pub fn write_to(&self, dir: &Path) -> Result<(), AuthError> {
        fs::create_dir_all(dir).map_err(|source| AuthError::Write { path: dir.into(), source })?;
        for (name, bytes) in [("PK.auth", &self.pk), ("KEK.auth", &self.kek), ("db.auth", &self.db)] {
            let path = dir.join(name);
            fs::write(&path, bytes).map_err(|source| AuthError::Write { path, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_in_registry_form() {
        assert_eq!(EFI_CERT_X509.to_string(), "a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
        assert_eq!(EFI_GLOBAL_VARIABLE.0[..4], [0x61, 0xdf, 0xe4, 0x8b]);
        assert_eq!(EfiTime::CAIRN_DEFAULT.to_bytes()[..4], [0xe8, 0x07, 1, 1]);
    }
}
