//! GPT disk images: write one from partition specs, read a layout back.
//!
//! Partitions start 1 MiB aligned and are rounded up to whole MiB. GUIDs are
//! derived from the partition names (and the disk GUID from all of them), so
//! the same specs always give the same bytes. The file is written sparse,
//! under a temporary name, and renamed into place only when complete.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
/// "Linux filesystem data" type GUID, as stored on disk.
const LINUX_DATA: [u8; 16] =
    [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];
/// Longest partition name GPT can hold (UTF-16 code units).
pub const MAX_NAME: usize = 36;

/// What a partition starts with.
#[derive(Debug, Clone)]
pub enum PartitionContents {
    /// Zeroes.
    Empty,
    /// These bytes.
    Bytes(Vec<u8>),
    /// The contents of this file.
    File(PathBuf),
}

/// A partition to create.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// GPT name (what the device looks partitions up by).
    pub name: String,
    /// Size; rounded up to a MiB.
    pub size_bytes: u64,
    /// Initial contents.
    pub contents: PartitionContents,
}

/// A partition as placed on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// GPT name.
    pub name: String,
    /// 1-based number, as Linux numbers partitions.
    pub index: u32,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Byte offset of the first sector.
    pub offset_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// All partitions of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Partitions in table order.
    pub partitions: Vec<PlacedPartition>,
}

impl DiskLayout {
    /// A partition by name.
    pub fn find(&self, name: &str) -> Option<&PlacedPartition> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// Why a disk could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// File I/O.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A name longer than GPT allows.
    #[error("partition name {0:?} is longer than {MAX_NAME} UTF-16 units")]
    NameTooLong(String),
    /// More partitions than table entries.
    #[error("{0} partitions exceed the {ENTRIES} GPT entries")]
    TooManyPartitions(usize),
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

fn guid(seed: &[u8]) -> [u8; 16] {
    let h = Sha256::digest(seed);
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[7] = (g[7] & 0x0f) | 0x40; // version 4 (stored little endian)
    g[8] = (g[8] & 0x3f) | 0x80; // RFC 4122 variant
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
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Write a GPT disk image with these partitions, in order.
pub fn write_disk(out: &Path, parts: &[PartitionSpec]) -> Result<DiskLayout, GptError> {
    if parts.len() > ENTRIES {
        return Err(GptError::TooManyPartitions(parts.len()));
    }
    let mut placed = Vec::new();
    let mut entries = vec![0u8; ENTRIES * ENTRY_SIZE];
    let mut next = MIB / SECTOR;
    let mut all_names = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let name16: Vec<u16> = p.name.encode_utf16().collect();
        if name16.len() > MAX_NAME {
            return Err(GptError::NameTooLong(p.name.clone()));
        }
        let size = p.size_bytes.div_ceil(MIB).max(1) * MIB;
        let first = next;
        let last = first + size / SECTOR - 1;
        next = last + 1;
        let e = &mut entries[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE];
        e[0..16].copy_from_slice(&LINUX_DATA);
        e[16..32].copy_from_slice(&guid(format!("cairn-partition:{}", p.name).as_bytes()));
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, u) in name16.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
        all_names.extend_from_slice(p.name.as_bytes());
        all_names.push(0);
        placed.push(PlacedPartition {
            name: p.name.clone(),
            index: i as u32 + 1,
            first_lba: first,
            last_lba: last,
            offset_bytes: first * SECTOR,
            size_bytes: size,
        });
    }
    let disk_size = next * SECTOR + MIB;
    let last_lba = disk_size / SECTOR - 1;
    let last_usable = last_lba - ENTRY_SECTORS - 1;
    let disk_guid = guid(&[b"cairn-disk:".as_slice(), &all_names].concat());
    let entries_crc = crc32fast::hash(&entries);

    let mut mbr = [0u8; SECTOR as usize];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pe[4] = 0xEE;
    pe[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(last_lba.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let tmp = out.with_extension("img.partial");
    let io = |error| GptError::Io { path: tmp.clone(), error };
    let result = (|| -> Result<(), GptError> {
        let mut f = File::create(&tmp).map_err(io)?;
        f.set_len(disk_size).map_err(io)?;
        let at = |f: &mut File, off: u64, data: &[u8]| -> Result<(), GptError> {
            f.seek(SeekFrom::Start(off)).map_err(io)?;
            f.write_all(data).map_err(io)
        };
        at(&mut f, 0, &mbr)?;
        at(&mut f, SECTOR, &header(&disk_guid, 1, last_lba, last_usable, 2, entries_crc))?;
        at(&mut f, 2 * SECTOR, &entries)?;
        let backup_entries = last_lba - ENTRY_SECTORS;
        at(&mut f, backup_entries * SECTOR, &entries)?;
        at(&mut f, last_lba * SECTOR, &header(&disk_guid, last_lba, 1, last_usable, backup_entries, entries_crc))?;
        for (p, spec) in placed.iter().zip(parts) {
            let too_large = |len: u64| GptError::ContentsTooLarge { name: p.name.clone(), len, size: p.size_bytes };
            match &spec.contents {
                PartitionContents::Empty => {}
                PartitionContents::Bytes(b) => {
                    if b.len() as u64 > p.size_bytes {
                        return Err(too_large(b.len() as u64));
                    }
                    at(&mut f, p.offset_bytes, b)?;
                }
                PartitionContents::File(path) => {
                    let src_io = |error| GptError::Io { path: path.clone(), error };
                    let mut src = File::open(path).map_err(src_io)?;
                    let len = src.metadata().map_err(src_io)?.len();
                    if len > p.size_bytes {
                        return Err(too_large(len));
                    }
                    f.seek(SeekFrom::Start(p.offset_bytes)).map_err(io)?;
                    std::io::copy(&mut src, &mut f).map_err(src_io)?;
                }
            }
        }
        f.sync_all().map_err(io)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, out).map_err(|error| GptError::Io { path: out.to_owned(), error })?;
    Ok(DiskLayout { disk_size, partitions: placed })
}

/// Read the primary GPT of a disk image, checking both CRCs.
pub fn read_layout(path: &Path) -> Result<DiskLayout, GptError> {
    let io = |error| GptError::Io { path: path.to_owned(), error };
    let invalid = |why| GptError::Invalid { path: path.to_owned(), why };
    let mut f = File::open(path).map_err(io)?;
    let disk_size = f.metadata().map_err(io)?.len();
    let mut h = [0u8; SECTOR as usize];
    f.seek(SeekFrom::Start(SECTOR)).map_err(io)?;
    f.read_exact(&mut h).map_err(io)?;
    if &h[0..8] != b"EFI PART" {
        return Err(invalid("no EFI PART signature"));
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let hsize = u32_at(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(invalid("bad header size"));
    }
    let crc = u32_at(&h, 16);
    let mut check = h;
    check[16..20].fill(0);
    if crc32fast::hash(&check[..hsize]) != crc {
        return Err(invalid("header CRC mismatch"));
    }
    let (entries_lba, count, esize) = (u64_at(&h, 72), u32_at(&h, 80) as usize, u32_at(&h, 84) as usize);
    if !(128..=4096).contains(&esize) || count > 1024 {
        return Err(invalid("bad entry geometry"));
    }
    let mut entries = vec![0u8; count * esize];
    f.seek(SeekFrom::Start(entries_lba * SECTOR)).map_err(io)?;
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
        let units: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
        partitions.push(PlacedPartition {
            name: String::from_utf16_lossy(&units),
            index: i as u32 + 1,
            first_lba: first,
            last_lba: last,
            offset_bytes: first * SECTOR,
            size_bytes: (last + 1 - first) * SECTOR,
        });
    }
    Ok(DiskLayout { disk_size, partitions })
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

    #[test]
    fn write_then_read_round_trips_deterministically() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let la = write_disk(&a, &specs()).unwrap_or_else(|e| panic!("{e}"));
        write_disk(&b, &specs()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&a).ok(), fs::read(&b).ok());
        let back = read_layout(&a).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, la);
        let state = la.find("cairn-state").unwrap_or_else(|| panic!("missing"));
        assert_eq!((state.index, state.offset_bytes, state.size_bytes), (1, MIB, MIB));
        let layer = la.find("cairn-layer-01").unwrap_or_else(|| panic!("missing"));
        assert_eq!((layer.offset_bytes, layer.size_bytes), (2 * MIB, 4 * MIB));
        let bytes = fs::read(&a).unwrap_or_default();
        assert_eq!(&bytes[MIB as usize..MIB as usize + 100], &[7; 100]);
        // The backup header sits in the last sector.
        assert_eq!(&bytes[bytes.len() - 512..bytes.len() - 504], b"EFI PART");
    }

    #[test]
    fn corruption_and_bad_specs_are_errors() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("d.img");
        write_disk(&p, &specs()).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = fs::read(&p).unwrap_or_default();
        bytes[1024 + 56] ^= 1; // first entry's name
        fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_layout(&p), Err(GptError::Invalid { .. })));

        let long = vec![PartitionSpec { name: "x".repeat(37), size_bytes: 1, contents: PartitionContents::Empty }];
        assert!(matches!(write_disk(&dir.path().join("l.img"), &long), Err(GptError::NameTooLong(_))));
        let big = vec![PartitionSpec {
            name: "s".into(),
            size_bytes: 1,
            contents: PartitionContents::Bytes(vec![0; 2 << 20]),
        }];
        assert!(matches!(write_disk(&dir.path().join("s.img"), &big), Err(GptError::ContentsTooLarge { .. })));
        assert!(!dir.path().join("s.img").exists() && !dir.path().join("s.img.partial").exists());
    }
}
