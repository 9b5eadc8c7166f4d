//! A write-once FAT32 image writer, deterministic.
//!
//! Writes a fresh file system holding the given files and nothing else:
//! 512-byte sectors, 32 reserved sectors (boot sector, FSInfo, their
//! backups at 6 and 7), two FATs, the root directory at cluster 2, then
//! every directory (in path order), then every file, each in contiguous
//! clusters. Names that are not upper-case 8.3 get a long-name (VFAT) entry
//! and a `~N` short alias. Every timestamp is 1980-01-01 00:00, the volume
//! ID is given: the same files give the same bytes.
//!
//! Only the bytes up to the last used cluster are returned; the rest of
//! the partition is zero (and stays sparse on the disk).

use std::collections::BTreeMap;

const SECTOR: usize = 512;
const RESERVED: u32 = 32;
const FATS: u32 = 2;
const DIR_ENTRY: usize = 32;
const EOC: u32 = 0x0FFF_FFFF;
/// FAT32 needs at least this many clusters (else it is FAT16 by definition).
const MIN_CLUSTERS: u64 = 65_525;
/// 1980-01-01 in FAT's date encoding.
const DATE: u16 = (1 << 5) | 1;

/// Why the image could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatError {
    /// The volume is too small for FAT32 with 512-byte clusters.
    #[error("{0} bytes is too small for FAT32 (at least 33 MiB)")]
    TooSmall(u64),
    /// The files do not fit.
    #[error("the files need {need} clusters, the volume has {have}")]
    Full {
        /// Clusters needed.
        need: u64,
        /// Clusters available.
        have: u64,
    },
    /// A path that cannot be a FAT path.
    #[error("path {0:?}: components of 1 to 255 ASCII characters [A-Za-z0-9._+-], not . or ..")]
    BadPath(String),
    /// A path that is both a file and a directory.
    #[error("path {0:?} is both a file and a directory")]
    Conflict(String),
}

#[derive(Debug, Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, usize>,
    cluster: u32,
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 255
        && c != "."
        && c != ".."
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// Upper-case 8.3 names need no long-name entry.
fn short_exact(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let ok = |s: &str, max: usize| {
        s.len() <= max && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) || ext.contains('.') {
        return None;
    }
    let mut out = [b' '; 11];
    out.iter_mut().zip(base.bytes()).for_each(|(o, b)| *o = b);
    out.iter_mut().skip(8).zip(ext.bytes()).for_each(|(o, b)| *o = b);
    Some(out)
}

/// A `BASE~N.EXT` alias for a long name.
fn alias(name: &str, n: usize) -> [u8; 11] {
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let clean = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            .map(|b| b.to_ascii_uppercase())
            .collect()
    };
    let tail = format!("~{n}");
    let mut base = clean(base);
    base.truncate(8 - tail.len());
    base.extend_from_slice(tail.as_bytes());
    let mut out = [b' '; 11];
    out.iter_mut().zip(base.iter()).for_each(|(o, b)| *o = *b);
    out.iter_mut().skip(8).zip(clean(ext).iter().take(3)).for_each(|(o, b)| *o = *b);
    out
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, b| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(*b))
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[16..18].copy_from_slice(&DATE.to_le_bytes());
    e[18..20].copy_from_slice(&DATE.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[24..26].copy_from_slice(&DATE.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The long-name entries for `name` (in on-disk order: last part first).
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; DIR_ENTRY]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    units.push(0);
    while !units.len().is_multiple_of(13) {
        units.push(0xFFFF);
    }
    let sum = lfn_checksum(short);
    let parts = units.len() / 13;
    let mut out = Vec::with_capacity(parts);
    for (i, chunk) in units.chunks(13).enumerate().rev() {
        let mut e = [0u8; DIR_ENTRY];
        e[0] = (i as u8 + 1) | if i + 1 == parts { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        for (j, u) in chunk.iter().enumerate() {
            let off = match j {
                0..=4 => 1 + 2 * j,
                5..=10 => 14 + 2 * (j - 5),
                _ => 28 + 2 * (j - 11),
            };
            e[off..off + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// The directory entries of one name.
fn named_entries(name: &str, alias_n: &mut usize, attr: u8, cluster: u32, size: u32) -> Vec<[u8; DIR_ENTRY]> {
    match short_exact(name) {
        Some(s) => vec![short_entry(&s, attr, cluster, size)],
        None => {
            *alias_n += 1;
            let s = alias(name, *alias_n);
            let mut v = lfn_entries(name, &s);
            v.push(short_entry(&s, attr, cluster, size));
            v
        }
    }
}

fn entry_count(name: &str) -> usize {
    match short_exact(name) {
        Some(_) => 1,
        None => 1 + (name.encode_utf16().count() + 1).div_ceil(13),
    }
}

fn dir_bytes(d: &Dir, is_root: bool) -> usize {
    let names = d.dirs.keys().chain(d.files.keys()).map(|n| entry_count(n)).sum::<usize>();
    // Root: the volume label; others: `.` and `..`.
    (names + if is_root { 1 } else { 2 }) * DIR_ENTRY
}

/// Write a FAT32 file system of `size` bytes holding `files` (path, data).
pub fn write(files: &[(String, &[u8])], size: u64, volume_id: u32, label: &[u8; 11]) -> Result<Vec<u8>, FatError> {
    let mut root = Dir::default();
    for (i, (path, _)) in files.iter().enumerate() {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|c| !valid_component(c)) {
            return Err(FatError::BadPath(path.clone()));
        }
        let (name, dirs) = parts.split_last().ok_or_else(|| FatError::BadPath(path.clone()))?;
        let mut d = &mut root;
        for c in dirs {
            if d.files.contains_key(*c) {
                return Err(FatError::Conflict(path.clone()));
            }
            d = d.dirs.entry((*c).to_owned()).or_default();
        }
        if d.dirs.contains_key(*name) || d.files.insert((*name).to_owned(), i).is_some() {
            return Err(FatError::Conflict(path.clone()));
        }
    }

    // Geometry: the largest cluster (up to 4 KiB) that leaves FAT32 enough clusters.
    let sectors = size / SECTOR as u64;
    let mut spc: u64 = 8;
    while spc > 1 && sectors / spc < MIN_CLUSTERS + 100 {
        spc /= 2;
    }
    let cluster_bytes = spc as usize * SECTOR;
    let mut fat_sectors: u64 = 1;
    let clusters = loop {
        let data = sectors.saturating_sub(u64::from(RESERVED) + u64::from(FATS) * fat_sectors);
        let clusters = data / spc;
        let need = ((clusters + 2) * 4).div_ceil(SECTOR as u64);
        if need <= fat_sectors {
            break clusters;
        }
        fat_sectors = need;
    };
    if clusters < MIN_CLUSTERS || sectors > u64::from(u32::MAX) {
        return Err(FatError::TooSmall(size));
    }

    // Clusters: root, then directories depth first in name order, then files.
    let mut next: u32 = 2;
    let mut chains: Vec<(u32, u32)> = Vec::new(); // (first, count)
    fn place_dirs(d: &mut Dir, is_root: bool, next: &mut u32, chains: &mut Vec<(u32, u32)>, cb: usize) {
        let n = dir_bytes(d, is_root).div_ceil(cb).max(1) as u32;
        d.cluster = *next;
        chains.push((*next, n));
        *next += n;
        for sub in d.dirs.values_mut() {
            place_dirs(sub, false, next, chains, cb);
        }
    }
    place_dirs(&mut root, true, &mut next, &mut chains, cluster_bytes);
    let mut file_cluster = vec![0u32; files.len()];
    for (i, (_, data)) in files.iter().enumerate() {
        if data.is_empty() {
            continue;
        }
        let n = data.len().div_ceil(cluster_bytes) as u32;
        file_cluster[i] = next;
        chains.push((next, n));
        next += n;
    }
    let used = u64::from(next - 2);
    if used > clusters {
        return Err(FatError::Full { need: used, have: clusters });
    }

    let data_start = (u64::from(RESERVED) + u64::from(FATS) * fat_sectors) as usize * SECTOR;
    let end = data_start + (next as usize - 2) * cluster_bytes;
    let mut img = vec![0u8; end];
    let at = |cluster: u32| data_start + (cluster as usize - 2) * cluster_bytes;

    // Boot sector, FSInfo, and their backups.
    let mut boot = [0u8; SECTOR];
    boot[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"CAIRN   ");
    boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    boot[13] = spc as u8;
    boot[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    boot[16] = FATS as u8;
    boot[21] = 0xF8;
    boot[24..26].copy_from_slice(&32u16.to_le_bytes());
    boot[26..28].copy_from_slice(&64u16.to_le_bytes());
    boot[32..36].copy_from_slice(&(sectors as u32).to_le_bytes());
    boot[36..40].copy_from_slice(&(fat_sectors as u32).to_le_bytes());
    boot[44..48].copy_from_slice(&2u32.to_le_bytes());
    boot[48..50].copy_from_slice(&1u16.to_le_bytes());
    boot[50..52].copy_from_slice(&6u16.to_le_bytes());
    boot[64] = 0x80;
    boot[66] = 0x29;
    boot[67..71].copy_from_slice(&volume_id.to_le_bytes());
    boot[71..82].copy_from_slice(label);
    boot[82..90].copy_from_slice(b"FAT32   ");
    boot[510] = 0x55;
    boot[511] = 0xAA;
    let mut info = [0u8; SECTOR];
    info[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    info[488..492].copy_from_slice(&((clusters - used) as u32).to_le_bytes());
    info[492..496].copy_from_slice(&next.to_le_bytes());
    info[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    for base in [0, 6 * SECTOR] {
        img[base..base + SECTOR].copy_from_slice(&boot);
        img[base + SECTOR..base + 2 * SECTOR].copy_from_slice(&info);
    }

    // FATs.
    let mut fat = vec![0u8; fat_sectors as usize * SECTOR];
    let mut set = |c: u32, v: u32| {
        let o = c as usize * 4;
        fat[o..o + 4].copy_from_slice(&v.to_le_bytes());
    };
    set(0, 0x0FFF_FFF8);
    set(1, EOC);
    for (first, n) in &chains {
        for c in *first..first + n {
            set(c, if c + 1 == first + n { EOC } else { c + 1 });
        }
    }
    for k in 0..FATS as usize {
        let o = RESERVED as usize * SECTOR + k * fat.len();
        img[o..o + fat.len()].copy_from_slice(&fat);
    }

    // Directories.
    struct Out<'a, 'b> {
        img: &'a mut [u8],
        at: &'a dyn Fn(u32) -> usize,
        files: &'a [(String, &'b [u8])],
        fc: &'a [u32],
        label: &'a [u8; 11],
    }
    fn write_dir(d: &Dir, parent: u32, is_root: bool, o: &mut Out<'_, '_>) {
        let label = o.label;
        let mut entries: Vec<[u8; DIR_ENTRY]> = Vec::new();
        if is_root {
            entries.push(short_entry(label, 0x08, 0, 0));
        } else {
            entries.push(short_entry(b".          ", 0x10, d.cluster, 0));
            entries.push(short_entry(b"..         ", 0x10, if parent == 2 { 0 } else { parent }, 0));
        }
        let mut alias_n = 0;
        for (name, sub) in &d.dirs {
            entries.extend(named_entries(name, &mut alias_n, 0x10, sub.cluster, 0));
        }
        for (name, i) in &d.files {
            let (cluster, size) = (o.fc[*i], o.files[*i].1.len() as u32);
            entries.extend(named_entries(name, &mut alias_n, 0x20, cluster, size));
        }
        let base = (o.at)(d.cluster);
        for (k, e) in entries.iter().enumerate() {
            o.img[base + k * DIR_ENTRY..base + (k + 1) * DIR_ENTRY].copy_from_slice(e);
        }
        for sub in d.dirs.values() {
            write_dir(sub, d.cluster, false, o);
        }
    }
    write_dir(&root, 2, true, &mut Out { img: &mut img, at: &at, files, fc: &file_cluster, label });

    // Files.
    for (i, (_, data)) in files.iter().enumerate() {
        if !data.is_empty() {
            let o = at(file_cluster[i]);
            img[o..o + data.len()].copy_from_slice(data);
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_aliases() {
        assert_eq!(&short_exact("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&short_exact("EFI").unwrap(), b"EFI        ");
        assert!(short_exact("loader").is_none());
        assert!(short_exact("cairn-b+3.efi").is_none());
        assert_eq!(&alias("cairn-b+3.efi", 1), b"CAIRN-~1EFI");
        assert_eq!(&alias("loader.conf", 12), b"LOADE~12CON");
        assert_eq!(entry_count("EFI"), 1);
        assert_eq!(entry_count("cairn-b+3.efi"), 3);
    }

    #[test]
    fn bad_trees_are_refused() {
        let d: &[u8] = b"x";
        assert_eq!(
            write(&[("a/../b".into(), d)], 64 << 20, 1, b"NO NAME    "),
            Err(FatError::BadPath("a/../b".into()))
        );
        assert_eq!(
            write(&[("a".into(), d), ("a/b".into(), d)], 64 << 20, 1, b"NO NAME    "),
            Err(FatError::Conflict("a/b".into()))
        );
        assert_eq!(write(&[("a".into(), d)], 30 << 20, 1, b"NO NAME    "), Err(FatError::TooSmall(30 << 20)));
        let big = vec![1u8; 70 << 20];
        assert!(matches!(write(&[("a".into(), &big)], 64 << 20, 1, b"NO NAME    "), Err(FatError::Full { .. })));
    }
}
