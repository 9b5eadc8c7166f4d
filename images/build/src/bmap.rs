//! Block maps for bmaptool (`IMAGE.bmap`, bmap format 2.0): which 4 KiB
//! blocks of a disk image hold data, with a sha256 of each range, so
//! `bmaptool copy` writes only those (a 4 GiB disk with 40 MiB of data
//! flashes in the time of 40 MiB) and checks every one it writes.
//!
//! The mapped blocks are the ones the assembler wrote
//! ([`crate::gpt::WrittenDisk::written`]), not the host filesystem's idea
//! of the file's holes (FIEMAP, SEEK_DATA), which differs between
//! filesystems and copies: the same disk always gets the same `.bmap`,
//! byte for byte. A block is mapped when any byte of it was written; the
//! unmapped ones are zero in the image and are left as they are on the
//! device (whatever an SD card held before), which is why nothing the
//! device reads may rely on a range that was not written (the assembler
//! writes every byte a partition's reader needs, including zeroes that
//! matter, e.g. the GPT entry array and the data filesystem's inode tables).
//!
//! The text is laid out the way `bmaptool create` lays it out (same
//! comments, same padding), so the two can be compared.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The block size of every map cairn writes.
pub const BLOCK_SIZE: u64 = 4096;

/// Format version written (bmaptool 3.1 and later read it).
pub const VERSION: &str = "2.0";

/// Why a block map could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    /// Reading the image or writing the map.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

/// One mapped range of blocks and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// Block numbers (of [`BLOCK_SIZE`]), end exclusive.
    pub blocks: Range<u64>,
    /// sha256 of the image's bytes in those blocks (up to the image's end).
    pub sha256: [u8; 32],
}

/// A block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Mapped ranges, ascending, neither overlapping nor adjacent.
    pub ranges: Vec<MappedRange>,
}

/// The blocks of an `image_size`-byte image that hold any of the `written`
/// byte ranges: ascending, overlapping and adjacent ranges merged, nothing
/// past the image's last block.
pub fn mapped_blocks(written: &[Range<u64>], image_size: u64) -> Vec<Range<u64>> {
    let count = image_size.div_ceil(BLOCK_SIZE);
    let mut blocks: Vec<Range<u64>> = written
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| (r.start / BLOCK_SIZE)..r.end.div_ceil(BLOCK_SIZE).min(count))
        .filter(|b| b.start < b.end)
        .collect();
    blocks.sort_by_key(|b| (b.start, b.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(blocks.len());
    for b in blocks {
        match merged.last_mut() {
            Some(last) if b.start <= last.end => last.end = last.end.max(b.end),
            _ => merged.push(b),
        }
    }
    merged
}

/// Sizes as bmaptool prints them in its comments ("1 byte", "100 bytes",
/// "16.0 MiB").
pub fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut s = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        s /= 1024.0;
        if s < 1024.0 {
            return format!("{s:.1} {unit}");
        }
    }
    format!("{s:.1} EiB")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` with `with` written over it from byte `at` on (as bmaptool fills
/// in its placeholders; ASCII only).
fn overwrite(text: &mut String, at: usize, with: &str) {
    let mut bytes = std::mem::take(text).into_bytes();
    let end = at + with.len();
    if bytes.len() < end {
        bytes.resize(end, b' ');
    }
    bytes[at..end].copy_from_slice(with.as_bytes());
    *text = String::from_utf8_lossy(&bytes).into_owned();
}

impl Bmap {
    /// Blocks in the image (the last one may be partial).
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(BLOCK_SIZE)
    }

    /// Mapped blocks.
    pub fn mapped_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.blocks.end - r.blocks.start).sum()
    }

    /// The `.bmap` file: XML, bmap format 2.0, sha256 checksums; its own
    /// checksum (`BmapFileChecksum`) is the sha256 of the text with that
    /// field's value all ASCII zeroes.
    pub fn to_xml(&self) -> String {
        let count = self.blocks_count();
        let mapped = self.mapped_count();
        let image_human = human_size(self.image_size);
        let mut x = String::new();
        x.push_str(concat!(
            "<?xml version=\"1.0\" ?>\n",
            "<!-- This file contains the block map for an image file, which is basically\n",
            "     a list of useful (mapped) block numbers in the image file. In other words,\n",
            "     it lists only those blocks which contain data (boot sector, partition\n",
            "     table, file-system metadata, files, directories, extents, etc). These\n",
            "     blocks have to be copied to the target device. The other blocks do not\n",
            "     contain any useful data and do not have to be copied to the target\n",
            "     device.\n",
            "\n",
            "     The block map an optimization which allows to copy or flash the image to\n",
            "     the image quicker than copying of flashing the entire image. This is\n",
            "     because with bmap less data is copied: <MappedBlocksCount> blocks instead\n",
            "     of <BlocksCount> blocks.\n",
            "\n",
            "     Besides the machine-readable data, this file contains useful commentaries\n",
            "     which contain human-readable information like image size, percentage of\n",
            "     mapped data, etc.\n",
            "\n",
            "     The 'version' attribute is the block map file format version in the\n",
            "     'major.minor' format. The version major number is increased whenever an\n",
            "     incompatible block map format change is made. The minor number changes\n",
            "     in case of minor backward-compatible changes. -->\n",
            "\n",
        ));
        x.push_str(&format!("<bmap version=\"{VERSION}\">\n"));
        x.push_str(&format!("    <!-- Image size in bytes: {image_human} -->\n"));
        x.push_str(&format!("    <ImageSize> {} </ImageSize>\n\n", self.image_size));
        x.push_str("    <!-- Size of a block in bytes -->\n");
        x.push_str(&format!("    <BlockSize> {BLOCK_SIZE} </BlockSize>\n\n"));
        x.push_str("    <!-- Count of blocks in the image file -->\n");
        x.push_str(&format!("    <BlocksCount> {count} </BlocksCount>\n\n"));
        // bmaptool writes blank placeholders sized for the largest values,
        // then writes the values over their start: the same here.
        x.push_str("    <!-- Count of mapped blocks: ");
        let human_at = x.len();
        x.push_str(&format!("{} or {}   -->\n", " ".repeat(image_human.len()), " ".repeat("100.0%".len())));
        x.push_str("    <MappedBlocksCount> ");
        let count_at = x.len();
        x.push_str(&format!("{} </MappedBlocksCount>\n\n", " ".repeat(count.to_string().len())));
        x.push_str("    <!-- Type of checksum used in this file -->\n");
        x.push_str("    <ChecksumType> sha256 </ChecksumType>\n\n");
        x.push_str("    <!-- The checksum of this bmap file. When it is calculated, the value of\n");
        x.push_str("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n");
        x.push_str("    <BmapFileChecksum> ");
        let sum_at = x.len();
        x.push_str(&format!("{} </BmapFileChecksum>\n\n", "0".repeat(64)));
        x.push_str("    <!-- The block map which consists of elements which may either be a\n");
        x.push_str("         range of blocks or a single block. The 'chksum' attribute\n");
        x.push_str("         (if present) is the checksum of this blocks range. -->\n");
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let (first, last) = (r.blocks.start, r.blocks.end.saturating_sub(1));
            let which = if first == last { first.to_string() } else { format!("{first}-{last}") };
            x.push_str(&format!("        <Range chksum=\"{}\"> {which} </Range>\n", hex(&r.sha256)));
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let percent = if count == 0 { 0.0 } else { mapped as f64 * 100.0 / count as f64 };
        overwrite(&mut x, human_at, &format!("{} or {percent:.1}%", human_size(mapped * BLOCK_SIZE)));
        overwrite(&mut x, count_at, &mapped.to_string());
        let sum = hex(&Sha256::digest(x.as_bytes()));
        overwrite(&mut x, sum_at, &sum);
        x
    }
}

/// The map of `image` (`image_size` bytes) whose `written` byte ranges are
/// its data: the mapped blocks ([`mapped_blocks`]), each range's sha256
/// read back from the image.
pub fn read_bmap(image: &Path, image_size: u64, written: &[Range<u64>]) -> Result<Bmap, BmapError> {
    let io = |error| BmapError::Io { path: image.to_owned(), error };
    let mut f = File::open(image).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut ranges = Vec::new();
    for blocks in mapped_blocks(written, image_size) {
        let start = blocks.start * BLOCK_SIZE;
        let end = (blocks.end * BLOCK_SIZE).min(image_size);
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut h = Sha256::new();
        let mut left = end - start;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            f.read_exact(chunk).map_err(io)?;
            h.update(&*chunk);
            left -= n as u64;
        }
        ranges.push(MappedRange { blocks, sha256: h.finalize().into() });
    }
    Ok(Bmap { image_size, ranges })
}

/// Write `bmap` to `out` (through `<out>.partial`, renamed when complete).
pub fn write_bmap(bmap: &Bmap, out: &Path) -> Result<(), BmapError> {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    let tmp = PathBuf::from(name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bmap.to_xml().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, out)
    })();
    result.map_err(|error| {
        let _ = fs::remove_file(&tmp);
        BmapError::Io { path: out.to_owned(), error }
    })
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one byte range, not a range of values
mod tests {
    use super::*;

    const B: u64 = BLOCK_SIZE;

    #[test]
    fn written_bytes_become_merged_block_ranges() {
        // The GPT at the start (MBR, header, entries: 17 KiB), a partition at
        // 1 MiB with 100 bytes, one written across a block boundary, the
        // backup entries and header at the end.
        let size = 8 << 20;
        let written = vec![
            0..512,
            512..1024,
            1024..17408,
            (1 << 20)..(1 << 20) + 100,
            (2 << 20) + B - 1..(2 << 20) + B + 1,
            size - 33 * 512..size - 512,
            size - 512..size,
            5 * B..5 * B, // nothing
        ];
        let got = mapped_blocks(&written, size);
        let mib = (1 << 20) / B;
        assert_eq!(got, vec![0..5, mib..mib + 1, 2 * mib..2 * mib + 2, (size - 33 * 512) / B..size / B], "{got:?}");
        // Adjacent and overlapping ranges merge; order does not matter.
        assert_eq!(mapped_blocks(&[3 * B..4 * B, 0..B, B..2 * B, 2 * B + 7..3 * B], size), vec![0..4]);
        assert_eq!(mapped_blocks(&[0..10 * B, 2 * B..3 * B], size), vec![0..10]);
        // Nothing beyond the image (a partial last block counts).
        assert_eq!(mapped_blocks(&[0..100 * B], 10 * B + 1), vec![0..11]);
        assert!(mapped_blocks(&[], size).is_empty());
    }

    #[test]
    fn human_sizes_are_bmaptools() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(511), "511 bytes");
        assert_eq!(human_size(512), "0.5 KiB");
        assert_eq!(human_size(61 << 20), "61.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(1536 << 30), "1.5 TiB");
    }

    fn sample() -> Bmap {
        Bmap {
            image_size: 8 << 20,
            ranges: vec![
                MappedRange { blocks: 0..5, sha256: [0xab; 32] },
                MappedRange { blocks: 256..257, sha256: [0x01; 32] },
            ],
        }
    }

    /// The value of `<tag> VALUE </tag>`.
    fn tag<'a>(x: &'a str, t: &str) -> &'a str {
        let open = format!("\n    <{t}>");
        let start = x.find(&open).map(|i| i + open.len()).unwrap_or_else(|| panic!("no {t}"));
        let end = x[start..].find("</").map(|i| start + i).unwrap_or_else(|| panic!("no /{t}"));
        x[start..end].trim()
    }

    #[test]
    fn xml_has_bmaptools_fields_and_a_checksum_over_itself() {
        let b = sample();
        let x = b.to_xml();
        assert!(x.starts_with("<?xml version=\"1.0\" ?>\n"));
        assert!(x.contains("<bmap version=\"2.0\">"));
        assert_eq!(tag(&x, "ImageSize"), "8388608");
        assert_eq!(tag(&x, "BlockSize"), "4096");
        assert_eq!(tag(&x, "BlocksCount"), "2048");
        assert_eq!(tag(&x, "MappedBlocksCount"), "6");
        assert_eq!(tag(&x, "ChecksumType"), "sha256");
        // Placeholders filled as bmaptool fills them (spaces left over).
        assert!(x.contains("    <MappedBlocksCount> 6    </MappedBlocksCount>\n"), "{x}");
        assert!(x.contains("    <!-- Count of mapped blocks: 24.0 KiB or 0.3%    -->\n"), "{x}");
        assert!(x.contains(&format!("        <Range chksum=\"{}\"> 0-4 </Range>\n", "ab".repeat(32))));
        assert!(x.contains(&format!("        <Range chksum=\"{}\"> 256 </Range>\n", "01".repeat(32))));
        assert!(x.ends_with("    </BlockMap>\n</bmap>\n"));
        let sum = tag(&x, "BmapFileChecksum").to_owned();
        assert_eq!(sum.len(), 64);
        let zeroed = x.replacen(&sum, &"0".repeat(64), 1);
        assert_eq!(hex(&Sha256::digest(zeroed.as_bytes())), sum);
        // Deterministic, and any change to the map changes the checksum.
        assert_eq!(b.to_xml(), x);
        let mut other = sample();
        other.ranges[1].sha256[0] ^= 1;
        assert_ne!(tag(&other.to_xml(), "BmapFileChecksum"), sum);
    }

    #[test]
    fn checksums_are_read_from_the_image() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let img = dir.path().join("d.img");
        let size = 10 * B + 100; // a partial last block
        let mut bytes = vec![0u8; size as usize];
        bytes[10] = 1;
        bytes[(3 * B) as usize] = 2;
        bytes[size as usize - 1] = 3;
        fs::write(&img, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let b = read_bmap(&img, size, &[0..11, 3 * B..3 * B + 1, 2 * B..2 * B + 1, size - 1..size])
            .unwrap_or_else(|e| panic!("{e}"));
        let sha = |r: Range<usize>| -> [u8; 32] { Sha256::digest(&bytes[r]).into() };
        assert_eq!(
            b.ranges,
            vec![
                MappedRange { blocks: 0..1, sha256: sha(0..B as usize) },
                MappedRange { blocks: 2..4, sha256: sha(2 * B as usize..4 * B as usize) },
                MappedRange { blocks: 10..11, sha256: sha(10 * B as usize..size as usize) },
            ]
        );
        assert_eq!((b.blocks_count(), b.mapped_count()), (11, 4));
        let out = dir.path().join("d.img.bmap");
        write_bmap(&b, &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read_to_string(&out).ok(), Some(b.to_xml()));
        assert!(!dir.path().join("d.img.bmap.partial").exists());
        let r = read_bmap(&dir.path().join("missing"), size, &[0..1]);
        assert!(matches!(&r, Err(BmapError::Io { path, .. }) if path.ends_with("missing")), "{r:?}");
    }
}
