//! GPT disk images: write one from partition specs, read a layout back.
//!
//! 512-byte sectors; a protective MBR, the primary header at LBA 1 and its
//! 128 entries of 128 bytes at LBA 2, the backup entries and header at the
//! end of the disk. Partitions start 1 MiB aligned, in the order given, and
//! are rounded up to whole MiB; the disk ends 1 MiB after the last one.
//! Every partition has the "Linux filesystem data" type but `cairn-esp`,
//! the EFI system partition, which has the "EFI System" type.
//!
//! Deterministic: each unique partition GUID is derived from the disk GUID
//! and the partition name, the disk GUID from all the names and the `Bytes` contents (the
//! signed manifest and the state record: so disks of different appliances or
//! versions differ), sha256 with the RFC 4122 version 4 and variant bits
//! set; the same specs always give the same bytes. Names must be unique.
//! The device finds its boot disk by this GUID (`cairn.disk=` on the kernel
//! command line, [`DiskLayout::disk_guid_text`]).
//!
//! The file is written sparse (sized first, then written at offsets), under
//! `<out>.partial` in the same directory, and renamed to `out` only when
//! complete; on error the partial file is removed. [`write_disk_mapped`]
//! also returns the byte ranges it wrote (the GPT structures and each
//! partition's contents): the rest of the disk is zero, whatever the host
//! filesystem made of it, which is what a `.bmap` lists ([`crate::bmap`]).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
const HEADER_SIZE: usize = 92;
/// Partitions must end before this sector, so the disk size (the end of the
/// last partition plus the 1 MiB tail) fits in a u64 of bytes.
const MAX_END_LBA: u64 = (u64::MAX - MIB) / SECTOR;
/// "Linux filesystem data" type GUID 0FC63DAF-8483-4772-8E79-3D69D8477DE4,
/// in its on-disk (mixed endian) byte order.
const LINUX_DATA: [u8; 16] =
    [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];
/// "EFI System" type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B (on-disk order).
const EFI_SYSTEM: [u8; 16] =
    [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B];
/// GPT name of the EFI system partition: the one partition with the
/// "EFI System" type (firmware looks for its boot loader there).
pub const ESP_NAME: &str = "cairn-esp";
/// Longest partition name GPT can hold (UTF-16 code units).
pub const MAX_NAME: usize = 36;
/// Bytes of zeroes written at the start of an [`PartitionContents::Empty`]
/// partition (every partition is at least 1 MiB).
pub const EMPTY_HEAD: usize = 64 << 10;

/// What a partition starts with.
#[derive(Debug, Clone)]
pub enum PartitionContents {
    /// Zeroes. Only the first [`EMPTY_HEAD`] bytes are written (zeroes:
    /// the image's bytes are the same), the rest stays sparse: a `.bmap`
    /// maps that head, so media flashed with bmaptool that held another
    /// image keep no old manifest, layer or filesystem signature there.
    Empty,
    /// These bytes, at the start of the partition; the rest is zero.
    Bytes(Vec<u8>),
    /// The contents of this file, at the start of the partition; the rest is zero.
    File(PathBuf),
    /// A layer: the first `size` bytes of `image`, then `tree` at
    /// `tree_offset` (the rest is zero).
    Layer {
        /// The image file (which may hold a tree of its own after `size`;
        /// it is not copied).
        image: PathBuf,
        /// Bytes of the image.
        size: u64,
        /// Where the tree starts (at or after `size`).
        tree_offset: u64,
        /// The hash tree.
        tree: Vec<u8>,
    },
}

/// A partition to create.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT name (what the device looks partitions up by); unique, at most
    /// [`MAX_NAME`] UTF-16 code units.
    pub name: String,
    /// Size; rounded up to a whole MiB (at least 1 MiB).
    pub size_bytes: u64,
    /// Initial contents.
    pub contents: PartitionContents,
}

/// A partition as placed on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// GPT name.
    pub name: String,
    /// 1-based number, as Linux numbers partitions (entry index + 1).
    pub index: u32,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Byte offset of the first sector.
    pub offset_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Unique partition GUID, on-disk byte order.
    pub unique_guid: [u8; 16],
}

/// All partitions of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// The disk GUID, in its on-disk (mixed endian) byte order.
    pub disk_guid: [u8; 16],
    /// Partitions in table order (unused entries skipped).
    pub partitions: Vec<PlacedPartition>,
}

/// A GUID in its on-disk (mixed endian) byte order as text,
/// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` in capitals (the first three
/// fields are stored little endian).
pub fn guid_text(g: &[u8; 16]) -> String {
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut out = String::with_capacity(36);
    for (n, i) in order.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{:02X}", g[*i]));
    }
    out
}

impl DiskLayout {
    /// The disk GUID as the kernel command line's `cairn.disk=` takes it.
    pub fn disk_guid_text(&self) -> String {
        guid_text(&self.disk_guid)
    }

    /// The first partition with this name.
    pub fn find(&self, name: &str) -> Option<&PlacedPartition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// Why a disk could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// File I/O (the disk, its partial file, or a contents file).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A name longer than GPT allows.
    #[error("partition name {0:?} is longer than {MAX_NAME} UTF-16 code units")]
    NameTooLong(String),
    /// Two partitions with the same name.
    #[error("partition name {0:?} is used twice")]
    DuplicateName(String),
    /// More partitions than table entries.
    #[error("{0} partitions exceed the {ENTRIES} GPT entries")]
    TooManyPartitions(usize),
    /// A size that does not fit in a disk.
    #[error("partition {0}: size too large")]
    SizeOverflow(String),
    /// Contents larger than the partition.
    #[error("partition {name}: contents of {len} bytes exceed its {size} bytes")]
    ContentsTooLarge {
        /// Partition.
        name: String,
        /// Contents size.
        len: u64,
        /// Partition size.
        size: u64,
    },
    /// Not a valid GPT.
    #[error("{path}: not a valid GPT disk: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// A GUID from sha256 of `seed`, marked as a version 4 (random) RFC 4122
/// GUID. GPT stores the first three fields little endian, so the version
/// nibble is the high nibble of byte 7.
fn guid(seed: &[u8]) -> [u8; 16] {
    let h = Sha256::digest(seed);
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

fn header(
    disk_guid: &[u8; 16],
    current: u64,
    backup: u64,
    last_usable: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `out` with `.partial` appended to its file name.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| OsString::from("disk"));
    name.push(".partial");
    out.with_file_name(name)
}

/// Length of a partition's contents, checked against its size.
fn contents_len(p: &PlacedPartition, contents: &PartitionContents) -> Result<u64, GptError> {
    let len = match contents {
        PartitionContents::Empty => 0,
        PartitionContents::Bytes(b) => b.len() as u64,
        PartitionContents::File(path) => {
            fs::metadata(path).map_err(|error| GptError::Io { path: path.clone(), error })?.len()
        }
        PartitionContents::Layer { tree_offset, tree, .. } => tree_offset.saturating_add(tree.len() as u64),
    };
    if len > p.size_bytes {
        return Err(GptError::ContentsTooLarge { name: p.name.clone(), len, size: p.size_bytes });
    }
    Ok(len)
}

/// Write a GPT disk image with these partitions, in order, to `out`.
///
/// Everything that can be checked up front (names, sizes, contents lengths)
/// is checked before any file is created.
pub fn write_disk(out: &Path, parts: &[PartitionSpec]) -> Result<DiskLayout, GptError> {
    write_disk_mapped(out, parts).map(|w| w.layout)
}

/// A disk as written: its layout and what was written where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenDisk {
    /// The partitions.
    pub layout: DiskLayout,
    /// Every byte range written (protective MBR, both headers and entry
    /// arrays, each partition's contents), in the order written; possibly
    /// adjacent, never empty. Everything else on the disk is zero.
    pub written: Vec<Range<u64>>,
}

/// [`write_disk`], also returning the byte ranges written.
pub fn write_disk_mapped(out: &Path, parts: &[PartitionSpec]) -> Result<WrittenDisk, GptError> {
    if parts.len() > ENTRIES {
        return Err(GptError::TooManyPartitions(parts.len()));
    }
    let mut placed: Vec<PlacedPartition> = Vec::with_capacity(parts.len());
    let mut entries = vec![0u8; ENTRIES * ENTRY_SIZE];
    let mut next = MIB / SECTOR;
    let mut all_names = Vec::new();
    for (i, (p, e)) in parts.iter().zip(entries.chunks_exact_mut(ENTRY_SIZE)).enumerate() {
        let name16: Vec<u16> = p.name.encode_utf16().collect();
        if name16.len() > MAX_NAME {
            return Err(GptError::NameTooLong(p.name.clone()));
        }
        if placed.iter().any(|q| q.name == p.name) {
            return Err(GptError::DuplicateName(p.name.clone()));
        }
        let overflow = || GptError::SizeOverflow(p.name.clone());
        let size = p.size_bytes.div_ceil(MIB).max(1).checked_mul(MIB).ok_or_else(overflow)?;
        let first = next;
        next = first.checked_add(size / SECTOR).filter(|n| *n <= MAX_END_LBA).ok_or_else(overflow)?;
        let last = next - 1;
        e[0..16].copy_from_slice(if p.name == ESP_NAME { &EFI_SYSTEM } else { &LINUX_DATA });
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, u) in name16.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
        all_names.extend_from_slice(p.name.as_bytes());
        all_names.push(0);
        if let PartitionContents::Bytes(b) = &p.contents {
            all_names.extend_from_slice(&Sha256::digest(b));
        }
        let placed_part = PlacedPartition {
            name: p.name.clone(),
            index: i as u32 + 1,
            first_lba: first,
            last_lba: last,
            offset_bytes: first * SECTOR,
            size_bytes: size,
            unique_guid: [0; 16],
        };
        contents_len(&placed_part, &p.contents)?;
        placed.push(placed_part);
    }
    let disk_size = next * SECTOR + MIB;
    let last_lba = disk_size / SECTOR - 1;
    let backup_entries = last_lba - ENTRY_SECTORS;
    let last_usable = backup_entries - 1;
    let disk_guid = guid(&[b"cairn-disk:".as_slice(), &all_names].concat());
    // Unique partition GUIDs: from the disk GUID and the name, so two disks
    // never share one (the loader names the ESP it booted from by its GUID).
    for (p, e) in placed.iter_mut().zip(entries.chunks_exact_mut(ENTRY_SIZE)) {
        p.unique_guid = guid(&[b"cairn-partition:".as_slice(), &disk_guid, p.name.as_bytes()].concat());
        e[16..32].copy_from_slice(&p.unique_guid);
    }
    let entries_crc = crc32fast::hash(&entries);

    // Protective MBR: one partition of type 0xEE covering the disk from LBA 1.
    let mut mbr = [0u8; SECTOR as usize];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pe[4] = 0xEE;
    pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(last_lba.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let tmp = partial_path(out);
    let io = |error| GptError::Io { path: tmp.clone(), error };
    let mut written: Vec<Range<u64>> = Vec::new();
    let result = (|| -> Result<(), GptError> {
        let mut f = File::create(&tmp).map_err(io)?;
        f.set_len(disk_size).map_err(io)?;
        let w = &mut written;
        let at = |f: &mut File, w: &mut Vec<Range<u64>>, off: u64, data: &[u8]| -> Result<(), GptError> {
            f.seek(SeekFrom::Start(off)).map_err(io)?;
            f.write_all(data).map_err(io)?;
            note(w, off, data.len() as u64);
            Ok(())
        };
        at(&mut f, w, 0, &mbr)?;
        at(&mut f, w, SECTOR, &header(&disk_guid, 1, last_lba, last_usable, 2, entries_crc))?;
        at(&mut f, w, 2 * SECTOR, &entries)?;
        at(&mut f, w, backup_entries * SECTOR, &entries)?;
        at(&mut f, w, last_lba * SECTOR, &header(&disk_guid, last_lba, 1, last_usable, backup_entries, entries_crc))?;
        for (p, spec) in placed.iter().zip(parts) {
            match &spec.contents {
                PartitionContents::Empty => at(&mut f, w, p.offset_bytes, &[0; EMPTY_HEAD])?,
                PartitionContents::Bytes(b) => at(&mut f, w, p.offset_bytes, b)?,
                PartitionContents::File(path) => {
                    let src_io = |error| GptError::Io { path: path.clone(), error };
                    let src = File::open(path).map_err(src_io)?;
                    f.seek(SeekFrom::Start(p.offset_bytes)).map_err(io)?;
                    // One byte more than fits, to notice a file that grew.
                    let copied = std::io::copy(&mut src.take(p.size_bytes + 1), &mut f).map_err(src_io)?;
                    if copied > p.size_bytes {
                        return Err(GptError::ContentsTooLarge {
                            name: p.name.clone(),
                            len: copied,
                            size: p.size_bytes,
                        });
                    }
                    note(w, p.offset_bytes, copied);
                }
                PartitionContents::Layer { image, size, tree_offset, tree } => {
                    write_layer_at(&mut f, &tmp, p.offset_bytes, image, *size, *tree_offset, tree, w)?;
                }
            }
        }
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, out).map_err(|error| GptError::Io { path: out.to_owned(), error })
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(WrittenDisk { layout: DiskLayout { disk_size, disk_guid, partitions: placed }, written })
}

/// Write a layer partition's bytes at `offset` of `f` (`out` names it in
/// errors), whose bytes there are zero (a file extended by `set_len`):
/// the first `size` bytes of `image`, then `tree` at `offset +
/// tree_offset`; the padding between them is left as it is (zero). The
/// ranges written go into `written`. A disk's layer partition and an
/// update bundle's layer part are both written by this.
#[allow(clippy::too_many_arguments)]
pub fn write_layer_at(
    f: &mut File,
    out: &Path,
    offset: u64,
    image: &Path,
    size: u64,
    tree_offset: u64,
    tree: &[u8],
    written: &mut Vec<Range<u64>>,
) -> Result<(), GptError> {
    let io = |error| GptError::Io { path: out.to_owned(), error };
    let src_io = |error| GptError::Io { path: image.to_owned(), error };
    let src = File::open(image).map_err(src_io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let copied = std::io::copy(&mut src.take(size), f).map_err(src_io)?;
    if copied != size {
        let short = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("holds {copied} of the image's {size} bytes"),
        );
        return Err(GptError::Io { path: image.to_owned(), error: short });
    }
    note(written, offset, copied);
    let at = offset.saturating_add(tree_offset);
    f.seek(SeekFrom::Start(at)).map_err(io)?;
    f.write_all(tree).map_err(io)?;
    note(written, at, tree.len() as u64);
    Ok(())
}

/// Record `len` bytes written at `off` (nothing for no bytes).
fn note(written: &mut Vec<Range<u64>>, off: u64, len: u64) {
    if len > 0 {
        written.push(off..off.saturating_add(len));
    }
}

/// Read the primary GPT of a disk image (any GPT writer's), checking the
/// signature, the header CRC and the entries CRC. Unused entries (zero type
/// GUID) are skipped; names are decoded from UTF-16LE (lossily).
pub fn read_layout(path: &Path) -> Result<DiskLayout, GptError> {
    let io = |error| GptError::Io { path: path.to_owned(), error };
    let invalid = |why| GptError::Invalid { path: path.to_owned(), why };
    let mut f = File::open(path).map_err(io)?;
    let disk_size = f.metadata().map_err(io)?.len();
    let mut h = [0u8; SECTOR as usize];
    f.seek(SeekFrom::Start(SECTOR)).map_err(io)?;
    f.read_exact(&mut h).map_err(io)?;
    if &h[0..8] != b"EFI PART" {
        return Err(invalid("no EFI PART signature at LBA 1"));
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let hsize = u32_at(&h, 12) as usize;
    if !(HEADER_SIZE..=SECTOR as usize).contains(&hsize) {
        return Err(invalid("bad header size"));
    }
    let crc = u32_at(&h, 16);
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check[..hsize]) != crc {
        return Err(invalid("header CRC mismatch"));
    }
    let (entries_lba, count, esize) = (u64_at(&h, 72), u32_at(&h, 80) as usize, u32_at(&h, 84) as usize);
    if !(128..=4096).contains(&esize) || esize % 8 != 0 || count > 1024 {
        return Err(invalid("bad entry geometry"));
    }
    let entries_at = entries_lba
        .checked_mul(SECTOR)
        .filter(|o| *o < disk_size)
        .ok_or_else(|| invalid("entries outside the disk"))?;
    let mut entries = vec![0u8; count * esize];
    f.seek(SeekFrom::Start(entries_at)).map_err(io)?;
    f.read_exact(&mut entries).map_err(io)?;
    if crc32fast::hash(&entries) != u32_at(&h, 88) {
        return Err(invalid("entries CRC mismatch"));
    }
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(esize).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        let bad = || invalid("partition entry with a bad range");
        let sectors = last.checked_sub(first).and_then(|n| n.checked_add(1)).ok_or_else(bad)?;
        let offset_bytes = first.checked_mul(SECTOR).ok_or_else(bad)?;
        let size_bytes = sectors.checked_mul(SECTOR).ok_or_else(bad)?;
        let units: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
        partitions.push(PlacedPartition {
            name: String::from_utf16_lossy(&units),
            index: i as u32 + 1,
            first_lba: first,
            last_lba: last,
            offset_bytes,
            size_bytes,
            unique_guid: e[16..32].try_into().unwrap_or([0; 16]),
        });
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&h[56..72]);
    Ok(DiskLayout { disk_size, disk_guid, partitions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<PartitionSpec> {
        vec![
            PartitionSpec {
                name: "cairn-state".into(),
                size_bytes: 8192,
                contents: PartitionContents::Bytes(vec![7; 100]),
            },
            PartitionSpec {
                name: "cairn-layer-01".into(),
                size_bytes: 3 * MIB + 1,
                contents: PartitionContents::Empty,
            },
        ]
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
    }

    #[test]
    fn guid_text_uses_the_mixed_endian_gpt_order() {
        assert_eq!(guid_text(&LINUX_DATA), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }

    #[test]
    fn write_then_read_round_trips_deterministically() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let content = dir.path().join("content.bin");
        fs::write(&content, vec![9u8; 5000]).unwrap_or_else(|e| panic!("{e}"));
        let mut parts = specs();
        parts.push(PartitionSpec {
            name: "ünïcode-näme".into(),
            size_bytes: 0,
            contents: PartitionContents::File(content),
        });
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let la = write_disk(&a, &parts).unwrap_or_else(|e| panic!("{e}"));
        write_disk(&b, &parts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&a).ok(), fs::read(&b).ok());
        let back = read_layout(&a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, la);
        assert_eq!(la.disk_size, 8 * MIB);
        let state = la.find("cairn-state").unwrap_or_else(|| panic!("missing"));
        assert_eq!((state.index, state.first_lba, state.last_lba), (1, 2048, 4095));
        assert_eq!((state.offset_bytes, state.size_bytes), (MIB, MIB));
        let layer = la.find("cairn-layer-01").unwrap_or_else(|| panic!("missing"));
        assert_eq!((layer.index, layer.offset_bytes, layer.size_bytes), (2, 2 * MIB, 4 * MIB));
        let uni = la.find("ünïcode-näme").unwrap_or_else(|| panic!("missing"));
        assert_eq!((uni.index, uni.offset_bytes, uni.size_bytes), (3, 6 * MIB, MIB));
        assert!(la.find("nope").is_none());
        // The disk GUID is in both headers and is what `cairn.disk=` names.
        let bytes = fs::read(&a).unwrap_or_default();
        assert_eq!(&bytes[512 + 56..512 + 72], &la.disk_guid);
        let text = la.disk_guid_text();
        assert_eq!((text.len(), &text[14..15], &text[8..9]), (36, "4", "-"), "{text}");
        // Other contents, another disk GUID.
        let mut other = parts.clone();
        other[0].contents = PartitionContents::Bytes(vec![8; 100]);
        let lo = write_disk(&b, &other).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(lo.disk_guid, la.disk_guid);
        assert_eq!(bytes.len() as u64, la.disk_size);
        assert_eq!(&bytes[MIB as usize..MIB as usize + 100], &[7; 100]);
        assert_eq!(bytes[MIB as usize + 100], 0);
        assert!(bytes[6 * MIB as usize..6 * MIB as usize + 5000].iter().all(|b| *b == 9));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn written_ranges_are_what_was_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (content, image) = (dir.path().join("content.bin"), dir.path().join("layer.img"));
        fs::write(&content, vec![9u8; 5000]).unwrap_or_else(|e| panic!("{e}"));
        fs::write(&image, vec![5u8; 3 * 4096]).unwrap_or_else(|e| panic!("{e}"));
        let mut parts = specs();
        parts.push(PartitionSpec { name: "file".into(), size_bytes: 0, contents: PartitionContents::File(content) });
        parts.push(PartitionSpec {
            name: "layer".into(),
            size_bytes: MIB,
            contents: PartitionContents::Layer { image, size: 2 * 4096, tree_offset: 3 * 4096, tree: vec![6; 64] },
        });
        let p = dir.path().join("d.img");
        let w = write_disk_mapped(&p, &parts).unwrap_or_else(|e| panic!("{e}"));
        let size = w.layout.disk_size;
        let (last, file, layer) = (size - SECTOR, 6 * MIB, 7 * MIB);
        let entries = ENTRY_SECTORS * SECTOR;
        assert_eq!(
            w.written,
            vec![
                0..SECTOR,
                SECTOR..2 * SECTOR,
                2 * SECTOR..2 * SECTOR + entries,
                last - entries..last,
                last..size,
                MIB..MIB + 100,
                2 * MIB..2 * MIB + EMPTY_HEAD as u64,
                file..file + 5000,
                layer..layer + 2 * 4096,
                layer + 3 * 4096..layer + 3 * 4096 + 64,
            ]
        );
        // Everything outside them is zero.
        let mut bytes = fs::read(&p).unwrap_or_default();
        for r in &w.written {
            bytes[r.start as usize..r.end as usize].fill(0);
        }
        assert!(bytes.iter().all(|b| *b == 0));
        assert_eq!(write_disk(&p, &parts).ok(), Some(w.layout));
    }

    #[test]
    fn headers_entries_and_crcs_are_valid() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("d.img");
        let layout = write_disk(&p, &specs()).unwrap_or_else(|e| panic!("{e}"));
        let d = fs::read(&p).unwrap_or_default();
        let last_lba = layout.disk_size / SECTOR - 1;
        // Protective MBR.
        assert_eq!(&d[510..512], &[0x55, 0xAA]);
        assert_eq!(d[446 + 4], 0xEE);
        assert_eq!(u32_at(&d, 446 + 8), 1);
        assert_eq!(u64::from(u32_at(&d, 446 + 12)), last_lba);
        let primary = &d[512..1024];
        let backup = &d[(last_lba * SECTOR) as usize..];
        for (h, current, other, entries_lba) in
            [(primary, 1, last_lba, 2), (backup, last_lba, 1, last_lba - ENTRY_SECTORS)]
        {
            assert_eq!(&h[0..8], b"EFI PART");
            assert_eq!(u32_at(h, 8), 0x0001_0000);
            assert_eq!(u32_at(h, 12), 92);
            let mut zeroed = h[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(crc32fast::hash(&zeroed), u32_at(h, 16), "header CRC");
            assert_eq!((u64_at(h, 24), u64_at(h, 32)), (current, other));
            assert_eq!((u64_at(h, 40), u64_at(h, 48)), (34, last_lba - ENTRY_SECTORS - 1));
            assert_eq!(u64_at(h, 72), entries_lba);
            assert_eq!((u32_at(h, 80), u32_at(h, 84)), (128, 128));
            let at = (entries_lba * SECTOR) as usize;
            let entries = &d[at..at + ENTRIES * ENTRY_SIZE];
            assert_eq!(crc32fast::hash(entries), u32_at(h, 88), "entries CRC");
            assert_eq!(entries, &d[1024..1024 + ENTRIES * ENTRY_SIZE]);
        }
        assert_eq!(&primary[56..72], &backup[56..72]);
        // Entries: type, GUID version/variant bits, unique GUIDs, UTF-16LE names.
        let e1 = &d[1024..1152];
        let e2 = &d[1152..1280];
        for e in [e1, e2] {
            assert_eq!(&e[0..16], &LINUX_DATA);
            assert_eq!(e[16 + 7] >> 4, 4);
            assert_eq!(e[16 + 8] >> 6, 0b10);
        }
        assert_ne!(&e1[16..32], &e2[16..32]);
        assert_ne!(&e1[16..32], &primary[56..72]);
        assert_eq!(&e1[56..62], b"c\0a\0i\0");
        assert!(d[1280..1024 + ENTRIES * ENTRY_SIZE].iter().all(|b| *b == 0));
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("d.img");
        write_disk(&p, &specs()).unwrap_or_else(|e| panic!("{e}"));
        let good = fs::read(&p).unwrap_or_default();
        for (at, why) in [(1024 + 56, "entries CRC mismatch"), (512 + 40, "header CRC mismatch")] {
            let mut bytes = good.clone();
            bytes[at] ^= 1;
            fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
            match read_layout(&p) {
                Err(GptError::Invalid { why: w, .. }) => assert_eq!(w, why),
                other => panic!("{other:?}"),
            }
        }
        fs::write(&p, vec![0u8; 4096]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_layout(&p), Err(GptError::Invalid { .. })));
    }

    #[test]
    fn bad_specs_are_errors_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let one = |name: String, contents| vec![PartitionSpec { name, size_bytes: 1, contents }];
        let out = dir.path().join("x.img");
        let ok = write_disk(&out, &one("ü".repeat(36), PartitionContents::Empty));
        assert!(ok.is_ok(), "{ok:?}");
        fs::remove_file(&out).unwrap_or_else(|e| panic!("{e}"));

        let r = write_disk(&out, &one("x".repeat(37), PartitionContents::Empty));
        assert!(matches!(&r, Err(GptError::NameTooLong(n)) if n.len() == 37), "{r:?}");
        // Characters outside the BMP take two UTF-16 units.
        let r = write_disk(&out, &one("😀".repeat(19), PartitionContents::Empty));
        assert!(matches!(r, Err(GptError::NameTooLong(_))), "{r:?}");

        let r = write_disk(&out, &one("s".into(), PartitionContents::Bytes(vec![0; (MIB + 1) as usize])));
        assert!(
            matches!(&r, Err(GptError::ContentsTooLarge { name, len, size }) if name == "s" && *len == MIB + 1 && *size == MIB),
            "{r:?}"
        );
        let r = write_disk(&out, &one("s".into(), PartitionContents::File(dir.path().join("missing"))));
        assert!(matches!(&r, Err(GptError::Io { path, .. }) if path.ends_with("missing")), "{r:?}");
        let big = dir.path().join("big.bin");
        fs::write(&big, vec![1u8; (MIB + 1) as usize]).unwrap_or_else(|e| panic!("{e}"));
        let r = write_disk(&out, &one("f".into(), PartitionContents::File(big.clone())));
        assert!(matches!(&r, Err(GptError::ContentsTooLarge { name, .. }) if name == "f"), "{r:?}");

        let mut dup = specs();
        dup.push(dup[0].clone());
        assert!(matches!(write_disk(&out, &dup), Err(GptError::DuplicateName(n)) if n == "cairn-state"));
        let huge = vec![PartitionSpec { name: "h".into(), size_bytes: u64::MAX, contents: PartitionContents::Empty }];
        assert!(matches!(write_disk(&out, &huge), Err(GptError::SizeOverflow(_))));
        let many: Vec<_> = (0..129)
            .map(|i| PartitionSpec { name: format!("p{i}"), size_bytes: 1, contents: PartitionContents::Empty })
            .collect();
        assert!(matches!(write_disk(&out, &many), Err(GptError::TooManyPartitions(129))));

        assert!(!out.exists());
        assert!(!dir.path().join("x.img.partial").exists());
    }
}
