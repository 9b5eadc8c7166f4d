//! PE32+ images (UEFI applications): read the headers, append sections.
//!
//! A unified kernel image is systemd-stub with the kernel, initramfs,
//! command line and os-release appended as named sections
//! ([`crate::uki`]). Appending is all this module does to an image: the
//! new section headers go into the free space after the section table
//! (which must fit inside `SizeOfHeaders`, before the first section's raw
//! data), the raw data after the last byte of the file, aligned to
//! `FileAlignment`, and the virtual addresses after the last section,
//! aligned to `SectionAlignment`. `SizeOfImage`, `NumberOfSections`,
//! `SizeOfInitializedData` and the checksum are updated. An image that
//! already carries a signature (a certificate table) is refused: appending
//! would invalidate it; sign after building.

/// Why an image could not be read or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// Not an `MZ` / `PE\0\0` image, or a header runs past the end.
    #[error("not a PE image: {0}")]
    NotPe(&'static str),
    /// A PE32 (32-bit) or unknown optional header.
    #[error("optional header magic {0:#06x} is not PE32+ (0x020b)")]
    NotPe32Plus(u16),
    /// The image is signed.
    #[error("the image already carries a signature (certificate table); add sections before signing")]
    Signed,
    /// A section name longer than 8 bytes or empty.
    #[error("section name {0:?}: 1 to 8 bytes")]
    BadName(String),
    /// A section name the image already has.
    #[error("the image already has a section {0:?}")]
    Duplicate(String),
    /// No room in the headers for more section headers.
    #[error("no room for {wanted} more section headers ({free} bytes free before the first section)")]
    NoRoom {
        /// Headers wanted.
        wanted: usize,
        /// Bytes free.
        free: usize,
    },
    /// Sizes beyond 4 GiB.
    #[error("the image would exceed 4 GiB")]
    TooLarge,
}

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
pub const READ_ONLY_DATA: u32 = 0x4000_0040;
const SECTION_HEADER: usize = 40;
const PE32_PLUS: u16 = 0x020b;
/// Index of the certificate table in the data directories.
const SECURITY_DIR: usize = 4;

/// One section as the image holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    /// Name (up to 8 bytes, trailing NULs removed).
    pub name: String,
    /// `VirtualSize`.
    pub virtual_size: u32,
    /// `VirtualAddress`.
    pub virtual_address: u32,
    /// `SizeOfRawData`.
    pub raw_size: u32,
    /// `PointerToRawData`.
    pub raw_offset: u32,
}

/// Where the headers are, and the fields this module reads or changes.
#[derive(Debug, Clone)]
pub struct Headers {
    /// Offset of the COFF header (after `PE\0\0`).
    pub coff: usize,
    /// Offset of the optional header.
    pub optional: usize,
    /// Size of the optional header.
    pub optional_size: usize,
    /// Offset of the section table.
    pub section_table: usize,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// `FileAlignment`.
    pub file_alignment: u32,
    /// `SizeOfHeaders`.
    pub size_of_headers: u32,
    /// `NumberOfRvaAndSizes`.
    pub data_dirs: u32,
    /// The sections.
    pub sections: Vec<SectionInfo>,
}

impl Headers {
    /// Offset of the `CheckSum` field.
    pub fn checksum_offset(&self) -> usize {
        self.optional + 64
    }

    /// Offset of data directory `n` (8 bytes: address, size), if the image has it.
    pub fn data_dir_offset(&self, n: usize) -> Option<usize> {
        (n < self.data_dirs as usize).then_some(self.optional + 112 + 8 * n)
    }

    /// The section named `name`.
    pub fn section(&self, name: &str) -> Option<&SectionInfo> {
        self.sections.iter().find(|s| s.name == name)
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, PeError> {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(PeError::NotPe("header truncated"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, PeError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(PeError::NotPe("header truncated"))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn align_up(v: u64, to: u32) -> u64 {
    let to = u64::from(to.max(1));
    v.div_ceil(to) * to
}

/// Read the headers of a PE32+ image.
pub fn headers(pe: &[u8]) -> Result<Headers, PeError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(PeError::NotPe("no MZ signature"));
    }
    let pe_off = u32_at(pe, 0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err(PeError::NotPe("no PE signature"));
    }
    let coff = pe_off + 4;
    let nsections = u16_at(pe, coff + 2)? as usize;
    let optional_size = u16_at(pe, coff + 16)? as usize;
    let optional = coff + 20;
    let magic = u16_at(pe, optional)?;
    if magic != PE32_PLUS {
        return Err(PeError::NotPe32Plus(magic));
    }
    if optional_size < 112 {
        return Err(PeError::NotPe("optional header too short"));
    }
    let data_dirs = u32_at(pe, optional + 108)?.min(((optional_size - 112) / 8) as u32);
    let section_table = optional + optional_size;
    let mut sections = Vec::with_capacity(nsections);
    for i in 0..nsections {
        let h = section_table + i * SECTION_HEADER;
        let raw_name = pe.get(h..h + 8).ok_or(PeError::NotPe("section table truncated"))?;
        let name = String::from_utf8_lossy(raw_name).trim_end_matches('\0').to_owned();
        sections.push(SectionInfo {
            name,
            virtual_size: u32_at(pe, h + 8)?,
            virtual_address: u32_at(pe, h + 12)?,
            raw_size: u32_at(pe, h + 16)?,
            raw_offset: u32_at(pe, h + 20)?,
        });
    }
    Ok(Headers {
        coff,
        optional,
        optional_size,
        section_table,
        section_alignment: u32_at(pe, optional + 32)?,
        file_alignment: u32_at(pe, optional + 36)?,
        size_of_headers: u32_at(pe, optional + 60)?,
        data_dirs,
        sections,
    })
}

/// The bytes of section `name` (its virtual size, or its raw size if smaller).
pub fn section_data<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, PeError> {
    let h = headers(pe)?;
    let Some(s) = h.section(name) else { return Ok(None) };
    let len = s.virtual_size.min(s.raw_size) as usize;
    let start = s.raw_offset as usize;
    pe.get(start..start + len).map(Some).ok_or(PeError::NotPe("section data past the end"))
}

/// The PE checksum: 16-bit one's-complement sum of the file as
/// little-endian words, skipping the `CheckSum` field, plus the file length.
pub fn checksum(pe: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < pe.len() {
        if i == checksum_offset {
            i += 4;
            continue;
        }
        let lo = u64::from(pe.get(i).copied().unwrap_or(0));
        let hi = u64::from(pe.get(i + 1).copied().unwrap_or(0));
        sum += lo | (hi << 8);
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// A section to append.
#[derive(Debug, Clone, Copy)]
pub struct NewSection<'a> {
    /// Name, 1 to 8 bytes (e.g. `.linux`).
    pub name: &'a str,
    /// Contents.
    pub data: &'a [u8],
}

/// The image with `sections` appended, in order, as read-only initialised
/// data. Deterministic: the same input gives the same bytes.
pub fn add_sections(pe: &[u8], new: &[NewSection<'_>]) -> Result<Vec<u8>, PeError> {
    let h = headers(pe)?;
    if let Some(off) = h.data_dir_offset(SECURITY_DIR) {
        if u32_at(pe, off)? != 0 || u32_at(pe, off + 4)? != 0 {
            return Err(PeError::Signed);
        }
    }
    for (i, s) in new.iter().enumerate() {
        if s.name.is_empty() || s.name.len() > 8 {
            return Err(PeError::BadName(s.name.to_owned()));
        }
        if h.section(s.name).is_some() || new.iter().take(i).any(|o| o.name == s.name) {
            return Err(PeError::Duplicate(s.name.to_owned()));
        }
    }
    let table_end = h.section_table + h.sections.len() * SECTION_HEADER;
    let first_raw = h.sections.iter().map(|s| s.raw_offset).filter(|o| *o > 0).min().unwrap_or(h.size_of_headers);
    let limit = (h.size_of_headers.min(first_raw)) as usize;
    let free = limit.saturating_sub(table_end);
    if free < new.len() * SECTION_HEADER {
        return Err(PeError::NoRoom { wanted: new.len(), free });
    }
    let mut out = pe.to_vec();
    let mut file_end = align_up(out.len() as u64, h.file_alignment);
    let mut va_end = h
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(u64::from(h.size_of_headers));
    let mut init_data = u64::from(u32_at(pe, h.optional + 8)?);
    for (i, s) in new.iter().enumerate() {
        let va = align_up(va_end, h.section_alignment);
        let raw_size = align_up(s.data.len() as u64, h.file_alignment);
        let fit = |v: u64| u32::try_from(v).map_err(|_| PeError::TooLarge);
        let mut header = [0u8; SECTION_HEADER];
        if let Some(n) = header.get_mut(..s.name.len()) {
            n.copy_from_slice(s.name.as_bytes());
        }
        put_u32(&mut header, 8, fit(s.data.len() as u64)?);
        put_u32(&mut header, 12, fit(va)?);
        put_u32(&mut header, 16, fit(raw_size)?);
        put_u32(&mut header, 20, fit(file_end)?);
        put_u32(&mut header, 36, READ_ONLY_DATA);
        let at = table_end + i * SECTION_HEADER;
        if let Some(slot) = out.get_mut(at..at + SECTION_HEADER) {
            slot.copy_from_slice(&header);
        }
        out.resize(fit(file_end)? as usize, 0);
        out.extend_from_slice(s.data);
        file_end += raw_size;
        out.resize(fit(file_end)? as usize, 0);
        va_end = va + s.data.len() as u64;
        init_data += raw_size;
    }
    let count = u16::try_from(h.sections.len() + new.len()).map_err(|_| PeError::TooLarge)?;
    put_u16(&mut out, h.coff + 2, count);
    put_u32(&mut out, h.optional + 8, u32::try_from(init_data).map_err(|_| PeError::TooLarge)?);
    let size_of_image = align_up(va_end, h.section_alignment);
    put_u32(&mut out, h.optional + 56, u32::try_from(size_of_image).map_err(|_| PeError::TooLarge)?);
    let sum = checksum(&out, h.checksum_offset());
    put_u32(&mut out, h.checksum_offset(), sum);
    Ok(out)
}

/// A minimal PE32+ image (x86_64): DOS and PE headers and one `.text`
/// section holding `text`, with room for 14 more section headers. What
/// test fixtures use where systemd-boot, systemd-stub or a kernel would go.
pub fn minimal_image(text: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 0x400];
    if let Some(m) = b.get_mut(..2) {
        m.copy_from_slice(b"MZ");
    }
    put_u32(&mut b, 0x3c, 0x80);
    if let Some(p) = b.get_mut(0x80..0x84) {
        p.copy_from_slice(b"PE\0\0");
    }
    let (coff, opt) = (0x84, 0x98);
    put_u16(&mut b, coff, 0x8664);
    put_u16(&mut b, coff + 2, 1);
    put_u16(&mut b, coff + 16, 240);
    put_u16(&mut b, opt, PE32_PLUS);
    put_u32(&mut b, opt + 32, 0x1000);
    put_u32(&mut b, opt + 36, 0x200);
    put_u32(&mut b, opt + 56, 0x2000);
    put_u32(&mut b, opt + 60, 0x400);
    put_u32(&mut b, opt + 108, 16);
    let sec = opt + 240;
    if let Some(n) = b.get_mut(sec..sec + 5) {
        n.copy_from_slice(b".text");
    }
    let raw = (text.len().max(1) as u32).div_ceil(0x200) * 0x200;
    put_u32(&mut b, sec + 8, text.len() as u32);
    put_u32(&mut b, sec + 12, 0x1000);
    put_u32(&mut b, sec + 16, raw);
    put_u32(&mut b, sec + 20, 0x400);
    b.extend_from_slice(text);
    b.resize(0x400 + raw as usize, 0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_pe() -> Vec<u8> {
        minimal_image(&[0xc3; 0x10])
    }

    #[test]
    fn sections_are_appended_aligned_and_read_back() {
        let pe = tiny_pe();
        let out = add_sections(
            &pe,
            &[
                NewSection { name: ".cmdline", data: b"console=ttyS0" },
                NewSection { name: ".linux", data: &[7; 0x301] },
            ],
        )
        .unwrap();
        let h = headers(&out).unwrap();
        assert_eq!(h.sections.len(), 3);
        let c = h.section(".cmdline").unwrap();
        assert_eq!((c.virtual_address, c.raw_offset, c.raw_size, c.virtual_size), (0x2000, 0x600, 0x200, 13));
        let l = h.section(".linux").unwrap();
        assert_eq!((l.virtual_address, l.raw_offset, l.raw_size), (0x3000, 0x800, 0x400));
        assert_eq!(section_data(&out, ".cmdline").unwrap(), Some(&b"console=ttyS0"[..]));
        assert_eq!(section_data(&out, ".linux").unwrap().map(<[u8]>::len), Some(0x301));
        assert_eq!(out.len(), 0xc00);
        assert_eq!(u32_at(&out, h.optional + 56).unwrap(), 0x4000);
        assert_eq!(u32_at(&out, h.checksum_offset()).unwrap(), checksum(&out, h.checksum_offset()));
        // Deterministic.
        assert_eq!(
            out,
            add_sections(
                &pe,
                &[
                    NewSection { name: ".cmdline", data: b"console=ttyS0" },
                    NewSection { name: ".linux", data: &[7; 0x301] }
                ]
            )
            .unwrap()
        );
    }

    #[test]
    fn bad_inputs_are_refused_with_the_reason() {
        let pe = tiny_pe();
        assert_eq!(add_sections(&pe[..0x90], &[]).unwrap_err(), PeError::NotPe("header truncated"));
        assert_eq!(add_sections(b"ELF", &[]).unwrap_err(), PeError::NotPe("no MZ signature"));
        let dup = [NewSection { name: ".text", data: b"" }];
        assert_eq!(add_sections(&pe, &dup).unwrap_err(), PeError::Duplicate(".text".into()));
        let long = [NewSection { name: ".toolongname", data: b"" }];
        assert!(matches!(add_sections(&pe, &long).unwrap_err(), PeError::BadName(_)));
        let mut signed = pe.clone();
        let h = headers(&pe).unwrap();
        put_u32(&mut signed, h.data_dir_offset(SECURITY_DIR).unwrap(), 0x600);
        assert_eq!(add_sections(&signed, &[]).unwrap_err(), PeError::Signed);
        let many: Vec<NewSection<'_>> = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o"]
            .iter()
            .map(|n| NewSection { name: n, data: b"" })
            .collect();
        assert!(matches!(add_sections(&pe, &many).unwrap_err(), PeError::NoRoom { wanted: 15, .. }));
    }

    #[test]
    fn systemd_stub_gets_sections_objdump_can_read() {
        let stub = std::path::Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let Ok(pe) = std::fs::read(stub) else { return };
        let out = add_sections(&pe, &[NewSection { name: ".cmdline", data: b"quiet" }]).unwrap();
        assert_eq!(section_data(&out, ".cmdline").unwrap(), Some(&b"quiet"[..]));
        assert_eq!(section_data(&out, ".sbat").unwrap(), section_data(&pe, ".sbat").unwrap());
    }
}
