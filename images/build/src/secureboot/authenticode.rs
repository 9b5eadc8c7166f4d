//! Authenticode signatures on PE/COFF images (UEFI applications: the boot
//! loader, kernels with an EFI stub, unified kernel images), what UEFI
//! firmware checks against `db` before it starts an image.
//!
//! The signature is a PKCS#7 SignedData whose content is an
//! SpcIndirectDataContent holding the image's Authenticode SHA-256 digest,
//! appended to the file as a WIN_CERTIFICATE (8-byte aligned) that the
//! certificate table data directory points at. The PE checksum is updated.
//! Deterministic: the same image and key give the same bytes.

use const_oid::ObjectIdentifier;
use sha2::{Digest, Sha256};

use super::der_util::{self, alg, oid, seq, tlv, Signed, BIT_STRING, CTX0, OCTET_STRING};
use super::key::SbKey;

/// SPC_INDIRECT_DATA_OBJID.
const OID_SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
/// SPC_PE_IMAGE_DATAOBJ.
const OID_SPC_PE_IMAGE_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// SPC_SP_OPUS_INFO_OBJID (empty: no program name or URL).
const OID_SPC_SP_OPUS_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.12");

const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
const PE32_MAGIC: u16 = 0x10b;
const PE32_PLUS_MAGIC: u16 = 0x20b;
const IMAGE_DIRECTORY_ENTRY_SECURITY: usize = 4;

/// Why a PE image could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not a PE image: no MZ header")]
    NoDosHeader,
    #[error("not a PE image: e_lfanew {0:#x} points outside the file or at no PE signature")]
    NoPeSignature(usize),
    #[error("PE header truncated: {what} at {offset:#x} is past the end of the file ({len} bytes)")]
    Truncated { what: &'static str, offset: usize, len: usize },
    #[error("unknown optional header magic {0:#06x} (neither PE32 nor PE32+)")]
    UnknownMagic(u16),
    #[error("the optional header has {0} data directories; the certificate table is the 5th")]
    NoCertificateDirectory(u32),
    #[error("already signed: the certificate table is at {offset:#x}, {size} bytes (strip it first)")]
    AlreadySigned { offset: u32, size: u32 },
    #[error("SizeOfHeaders {size_of_headers:#x} is outside the file or before the section table end {table_end:#x}")]
    BadSizeOfHeaders { size_of_headers: usize, table_end: usize },
    #[error("section {index} ({name}) raw data {start:#x}+{size:#x} is outside the file ({len} bytes)")]
    SectionOutOfBounds { index: usize, name: String, start: usize, size: usize, len: usize },
    #[error("the signed image would be larger than 4 GiB")]
    TooLarge,
    #[error("cannot build the PKCS#7 signature: {0}")]
    Pkcs7(String),
}

/// Where the fields Authenticode needs are, in one PE file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeLayout {
    /// File offset of the optional header's CheckSum.
    pub checksum_offset: usize,
    /// File offset of data directory 4 (certificate table: file offset, size).
    pub cert_dir_offset: usize,
    /// The certificate table's current (offset, size).
    pub cert_table: (u32, u32),
    pub size_of_headers: usize,
    /// (PointerToRawData, SizeOfRawData) of each section with raw data,
    /// in file order.
    pub sections: Vec<(usize, usize)>,
}

fn u16_at(b: &[u8], off: usize, what: &'static str) -> Result<u16, SignError> {
    b.get(off..off + 2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes).ok_or(SignError::Truncated {
        what,
        offset: off,
        len: b.len(),
    })
}

fn u32_at(b: &[u8], off: usize, what: &'static str) -> Result<u32, SignError> {
    b.get(off..off + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes).ok_or(SignError::Truncated {
        what,
        offset: off,
        len: b.len(),
    })
}

/// Reads the PE headers Authenticode needs, checking every offset.
pub fn parse(pe: &[u8]) -> Result<PeLayout, SignError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(SignError::NoDosHeader);
    }
    let lfanew = u32_at(pe, 0x3c, "e_lfanew")? as usize;
    if pe.get(lfanew..lfanew.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(SignError::NoPeSignature(lfanew));
    }
    let coff = lfanew + 4;
    let nsections = usize::from(u16_at(pe, coff + 2, "NumberOfSections")?);
    let opt_size = usize::from(u16_at(pe, coff + 16, "SizeOfOptionalHeader")?);
    let opt = coff + 20;
    let magic = u16_at(pe, opt, "optional header magic")?;
    let (nrva_off, dirs_off) = match magic {
        PE32_MAGIC => (92, 96),
        PE32_PLUS_MAGIC => (108, 112),
        m => return Err(SignError::UnknownMagic(m)),
    };
    let checksum_offset = opt + 64;
    let size_of_headers = u32_at(pe, opt + 60, "SizeOfHeaders")? as usize;
    let nrva = u32_at(pe, opt + nrva_off, "NumberOfRvaAndSizes")?;
    let cert_dir_offset = opt + dirs_off + IMAGE_DIRECTORY_ENTRY_SECURITY * 8;
    if (nrva as usize) <= IMAGE_DIRECTORY_ENTRY_SECURITY || cert_dir_offset + 8 > opt + opt_size {
        return Err(SignError::NoCertificateDirectory(nrva));
    }
    let cert_table = (
        u32_at(pe, cert_dir_offset, "certificate table offset")?,
        u32_at(pe, cert_dir_offset + 4, "certificate table size")?,
    );
    let table = opt + opt_size;
    let table_end = table + nsections * 40;
    if table_end > pe.len() {
        return Err(SignError::Truncated { what: "section table", offset: table, len: pe.len() });
    }
    if size_of_headers > pe.len() || size_of_headers < table_end {
        return Err(SignError::BadSizeOfHeaders { size_of_headers, table_end });
    }
    let mut sections = Vec::with_capacity(nsections);
    for index in 0..nsections {
        let h = table + index * 40;
        let size = u32_at(pe, h + 16, "SizeOfRawData")? as usize;
        let start = u32_at(pe, h + 20, "PointerToRawData")? as usize;
        if size == 0 {
            continue;
        }
        if start.checked_add(size).is_none_or(|end| end > pe.len()) || start < size_of_headers {
            let name = pe.get(h..h + 8).unwrap_or_default();
            let name = String::from_utf8_lossy(name).trim_end_matches('\0').to_string();
            return Err(SignError::SectionOutOfBounds { index, name, start, size, len: pe.len() });
        }
        sections.push((start, size));
    }
    sections.sort_unstable();
    Ok(PeLayout { checksum_offset, cert_dir_offset, cert_table, size_of_headers, sections })
}

/// The Authenticode SHA-256 digest, as UEFI firmware (EDK2's
/// DxeImageVerificationLib) computes it: the headers without CheckSum and
/// the certificate table entry, the sections in file order, then the bytes
/// after them up to the certificate table.
pub fn digest(pe: &[u8]) -> Result<[u8; 32], SignError> {
    let l = parse(pe)?;
    Ok(digest_with(pe, &l))
}

fn digest_with(pe: &[u8], l: &PeLayout) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |a: usize, b: usize| h.update(pe.get(a..b).unwrap_or_default());
    part(0, l.checksum_offset);
    part(l.checksum_offset + 4, l.cert_dir_offset);
    part(l.cert_dir_offset + 8, l.size_of_headers);
    let mut hashed = l.size_of_headers;
    for &(start, size) in &l.sections {
        part(start, start + size);
        hashed += size;
    }
    let end = pe.len().saturating_sub(l.cert_table.1 as usize);
    if end > hashed {
        part(hashed, end);
    }
    h.finalize().into()
}

/// SpcIndirectDataContent for a PE image digest.
fn spc_indirect_data(digest: &[u8]) -> Vec<u8> {
    // SpcPeImageData { flags BIT STRING {}, file [0] SpcLink { file [2] SpcString { unicode [0] "<<<Obsolete>>>" } } }
    let obsolete: Vec<u8> = "<<<Obsolete>>>".encode_utf16().flat_map(u16::to_be_bytes).collect();
    let link = tlv(CTX0, &tlv(0xa2, &tlv(0x80, &obsolete)));
    let pe_image_data = seq(&[&[BIT_STRING, 1, 0], &link]);
    seq(&[
        &seq(&[&oid(&OID_SPC_PE_IMAGE_DATA), &pe_image_data]),
        &seq(&[&alg(&der_util::OID_SHA256), &tlv(OCTET_STRING, digest)]),
    ])
}

/// The PE checksum (IMAGEHLP's CheckSumMappedFile), as [`crate::pe::checksum`].
pub use crate::pe::checksum as pe_checksum;

/// Signs `pe` with `key`: returns the image with an Authenticode signature
/// appended. Refuses an image that already has a certificate table.
pub fn sign_pe(pe: &[u8], key: &SbKey) -> Result<Vec<u8>, SignError> {
    let layout = parse(pe)?;
    if layout.cert_table != (0, 0) {
        return Err(SignError::AlreadySigned { offset: layout.cert_table.0, size: layout.cert_table.1 });
    }
    let mut out = pe.to_vec();
    out.resize(pe.len().next_multiple_of(8), 0);
    let image_digest = digest_with(&out, &layout);

    let spc = spc_indirect_data(&image_digest);
    // messageDigest covers the SpcIndirectDataContent's content octets
    // (without its SEQUENCE tag and length), as Authenticode specifies.
    let spc_content = der_util::tlv_content(&spc).unwrap_or_default();
    let message_digest: [u8; 32] = Sha256::digest(spc_content).into();
    let opus = vec![seq(&[&oid(&OID_SPC_SP_OPUS_INFO), &der_util::tlv(der_util::SET, &seq(&[]))])];
    let sd = der_util::signed_data(
        key,
        &OID_SPC_INDIRECT_DATA,
        Some(&spc),
        Signed::Attributes { digest: &message_digest, extra: &opus },
    )
    .map_err(|e| SignError::Pkcs7(e.to_string()))?;
    let pkcs7 = der_util::content_info(&sd);

    let cert_offset = out.len();
    let length = 8 + pkcs7.len();
    let aligned = length.next_multiple_of(8);
    let too_large = |n: usize| u32::try_from(n).map_err(|_| SignError::TooLarge);
    let (offset32, length32, aligned32) = (too_large(cert_offset)?, too_large(length)?, too_large(aligned)?);
    too_large(cert_offset + aligned)?;
    out.extend_from_slice(&length32.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(&pkcs7);
    out.resize(cert_offset + aligned, 0);

    let put = |out: &mut Vec<u8>, at: usize, v: u32| {
        if let Some(s) = out.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    };
    put(&mut out, layout.cert_dir_offset, offset32);
    put(&mut out, layout.cert_dir_offset + 4, aligned32);
    let sum = pe_checksum(&out, layout.checksum_offset);
    put(&mut out, layout.checksum_offset, sum);
    Ok(out)
}
