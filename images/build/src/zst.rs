//! zstd-compressed disk images (`IMAGE.zst`), for downloads and for
//! `zstd -dc IMAGE.zst | dd of=/dev/sdX` or `bmaptool copy IMAGE.zst`.
//!
//! Pure Rust, streaming: the disk is read 128 KiB at a time, never whole,
//! and each 4 KiB block is one of three kinds:
//! - zero: runs of them become frames of RLE blocks (4 bytes per 128 KiB);
//! - near-uniform bytes (already compressed: squashfs layers, a gzip
//!   initramfs): stored in raw blocks, since compressing them gains about
//!   nothing and ruzstd's encoder is slow (about 11 MB/s on random bytes);
//! - the rest: compressed by ruzstd (about zstd level 1), with the frame's
//!   content checksum, which `zstd -d` checks.
//!
//! Consecutive blocks of one kind share a frame (up to 4 MiB); the file is
//! a sequence of zstd frames, which every zstd decoder concatenates. Every
//! frame has a 128 KiB window, so decoding needs little memory.
//!
//! Pieces that hold none of the ranges the assembler wrote are zero without
//! being read, so a mostly empty 4 GiB disk compresses in the time of its
//! data. The kinds are decided by integer arithmetic on the bytes alone, so
//! the output depends only on the image's bytes (a piece is read whenever
//! the ranges touch it, and zero blocks are written the same whether read
//! or known) and is reproducible byte for byte on any host.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ruzstd::encoding::{compress_to_vec, CompressionLevel};

/// Bytes read at a time: zstd's largest block.
pub const PIECE: u64 = 128 << 10;

/// Bytes classified at a time (the block size of the `.bmap` and of most
/// filesystems: zero blocks inside a filesystem are found).
pub const BLOCK: usize = 4096;

/// Most bytes in one frame of raw or compressed blocks.
pub const FRAME_DATA: usize = 4 << 20;

const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const MAX_BLOCK: usize = 128 << 10;

/// Why an image could not be compressed.
#[derive(Debug, thiserror::Error)]
pub enum ZstError {
    /// Reading the image or writing the compressed file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

/// How a block is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// All zero: RLE blocks.
    Zero,
    /// Near-uniform byte histogram (already compressed): raw blocks.
    Raw,
    /// Anything else: compressed.
    Packed,
}

/// The kind of a block. Near-uniform means the sum of the squared byte
/// counts is at most 1.5 times a uniform histogram's (n²/256): random and
/// deflated bytes measure 1.03 to 1.4, text and code 3 to 250.
pub fn kind(block: &[u8]) -> Kind {
    if block.iter().all(|b| *b == 0) {
        return Kind::Zero;
    }
    let mut counts = [0u64; 256];
    for b in block {
        counts[usize::from(*b)] += 1;
    }
    let squares: u64 = counts.iter().map(|c| c * c).sum();
    let n = block.len() as u64;
    if 2 * 256 * squares <= 3 * n * n {
        Kind::Raw
    } else {
        Kind::Packed
    }
}

/// A frame header: no content size, not single segment, no checksum, no
/// dictionary; a 2^(10 + 7) = 128 KiB window.
fn frame_header(f: &mut Vec<u8>) {
    f.extend_from_slice(&MAGIC);
    f.push(0x00);
    f.push(7 << 3);
}

/// A block header (24 bits, little endian): last flag, type, size.
fn block_header(f: &mut Vec<u8>, last: bool, block_type: u32, size: usize) {
    let h = u32::from(last) | (block_type << 1) | ((size as u32) << 3);
    f.extend_from_slice(&h.to_le_bytes()[..3]);
}

/// A zstd frame of `len` zero bytes: RLE blocks of 128 KiB (the last one
/// shorter). Zero bytes give one empty raw block.
pub fn zero_frame(len: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(6 + 4 * len.div_ceil(PIECE).max(1) as usize);
    frame_header(&mut f);
    if len == 0 {
        block_header(&mut f, true, 0, 0);
        return f;
    }
    let mut left = len;
    while left > 0 {
        let n = left.min(PIECE);
        left -= n;
        block_header(&mut f, left == 0, 1, n as usize);
        f.push(0);
    }
    f
}

/// A zstd frame holding `data` in raw blocks.
pub fn raw_frame(data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(6 + data.len() + 3 * data.len().div_ceil(MAX_BLOCK).max(1));
    frame_header(&mut f);
    if data.is_empty() {
        block_header(&mut f, true, 0, 0);
        return f;
    }
    let count = data.len().div_ceil(MAX_BLOCK);
    for (i, chunk) in data.chunks(MAX_BLOCK).enumerate() {
        block_header(&mut f, i + 1 == count, 0, chunk.len());
        f.extend_from_slice(chunk);
    }
    f
}

/// A zstd frame of `data` compressed (ruzstd, fastest level, with its
/// content checksum).
pub fn packed_frame(data: &[u8]) -> Vec<u8> {
    compress_to_vec(data, CompressionLevel::Fastest)
}

/// What [`compress_image`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZstInfo {
    /// Size of the compressed file.
    pub size: u64,
    /// Bytes of the image that were read (the rest was known to be zero).
    pub read: u64,
    /// Bytes stored raw (already compressed).
    pub raw: u64,
    /// Bytes compressed.
    pub packed: u64,
}

/// Frames of consecutive blocks of one kind, written as they fill.
struct Frames<W: Write> {
    out: W,
    kind: Kind,
    data: Vec<u8>,
    zeros: u64,
    info: ZstInfo,
}

impl<W: Write> Frames<W> {
    fn push(&mut self, kind: Kind, block: &[u8]) -> std::io::Result<()> {
        if kind != self.kind && kind != Kind::Zero {
            self.flush()?;
            self.kind = kind;
        }
        match kind {
            Kind::Zero => return self.push_zeros(block.len() as u64),
            Kind::Raw | Kind::Packed => {
                self.data.extend_from_slice(block);
                if self.data.len() >= FRAME_DATA {
                    self.flush()?;
                }
            }
        }
        Ok(())
    }

    fn push_zeros(&mut self, n: u64) -> std::io::Result<()> {
        if self.kind != Kind::Zero {
            self.flush()?;
            self.kind = Kind::Zero;
        }
        self.zeros += n;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let frame = match self.kind {
            Kind::Zero if self.zeros > 0 => zero_frame(std::mem::take(&mut self.zeros)),
            Kind::Raw if !self.data.is_empty() => {
                self.info.raw += self.data.len() as u64;
                raw_frame(&self.data)
            }
            Kind::Packed if !self.data.is_empty() => {
                self.info.packed += self.data.len() as u64;
                packed_frame(&self.data)
            }
            _ => return Ok(()),
        };
        self.data.clear();
        self.info.size += frame.len() as u64;
        self.out.write_all(&frame)
    }
}

/// Compress the `image_size`-byte `image`, whose bytes outside the
/// `written` ranges are zero, to `out` (through `<out>.partial`, renamed
/// when complete; removed on error).
pub fn compress_image(image: &Path, image_size: u64, written: &[Range<u64>], out: &Path) -> Result<ZstInfo, ZstError> {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    let tmp = PathBuf::from(name);
    let result = compress_to(image, image_size, written, &tmp).and_then(|info| {
        fs::rename(&tmp, out).map_err(|error| ZstError::Io { path: out.to_owned(), error })?;
        Ok(info)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn compress_to(image: &Path, image_size: u64, written: &[Range<u64>], tmp: &Path) -> Result<ZstInfo, ZstError> {
    let src_io = |error| ZstError::Io { path: image.to_owned(), error };
    let out_io = |error| ZstError::Io { path: tmp.to_owned(), error };
    let mut src = File::open(image).map_err(src_io)?;
    let out = BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(out_io)?);
    let mut frames =
        Frames { out, kind: Kind::Zero, data: Vec::with_capacity(FRAME_DATA), zeros: 0, info: ZstInfo::default() };
    // Ascending, merged, block-aligned: which pieces must be read.
    let ranges: Vec<Range<u64>> = crate::bmap::mapped_blocks(written, image_size)
        .into_iter()
        .map(|b| b.start * crate::bmap::BLOCK_SIZE..b.end * crate::bmap::BLOCK_SIZE)
        .collect();
    let mut next = 0; // the first range that may touch the current piece
    let mut piece = vec![0u8; PIECE as usize];
    let mut pos = 0;
    while pos < image_size {
        let n = PIECE.min(image_size - pos);
        while ranges.get(next).is_some_and(|r| r.end <= pos) {
            next += 1;
        }
        let buf = &mut piece[..n as usize];
        if ranges.get(next).is_some_and(|r| r.start < pos + n) {
            src.seek(SeekFrom::Start(pos)).map_err(src_io)?;
            src.read_exact(buf).map_err(src_io)?;
            frames.info.read += n;
            for block in buf.chunks(BLOCK) {
                frames.push(kind(block), block).map_err(out_io)?;
            }
        } else {
            frames.push_zeros(n).map_err(out_io)?;
        }
        pos += n;
    }
    frames.flush().map_err(out_io)?;
    if frames.info.size == 0 {
        // An empty image: one empty frame.
        frames.kind = Kind::Raw;
        let frame = raw_frame(&[]);
        frames.info.size = frame.len() as u64;
        frames.out.write_all(&frame).map_err(out_io)?;
    }
    let info = frames.info;
    let f = frames.out.into_inner().map_err(|e| out_io(e.into_error()))?;
    f.sync_all().map_err(out_io)?;
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one byte range, not a range of values
mod tests {
    use super::*;

    /// Decode with ruzstd's decoder, every frame in turn (the `zstd` CLI
    /// decodes the same files in the cli tests).
    fn decode(mut z: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !z.is_empty() {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut z).unwrap_or_else(|e| panic!("{e}"));
            dec.read_to_end(&mut out).unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    fn xorshift(x: &mut u64) -> u8 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 24) as u8
    }

    #[test]
    fn blocks_are_classified_by_their_bytes() {
        let mut x = 0x2545_f491_4f6c_dd1d;
        let random: Vec<u8> = (0..BLOCK).map(|_| xorshift(&mut x)).collect();
        let text = b"cairn flash image ".repeat(BLOCK / 18 + 1)[..BLOCK].to_vec();
        assert_eq!(kind(&[0; BLOCK]), Kind::Zero);
        assert_eq!(kind(&random), Kind::Raw);
        assert_eq!(kind(&text), Kind::Packed);
        // Sixteen byte values, evenly: 16 times uniform's sum of squares.
        let nibbles: Vec<u8> = random.iter().map(|b| b & 0x0f).collect();
        assert_eq!(kind(&nibbles), Kind::Packed);
        // 128 values 48 times and 128 values 16 times: 1.25 times uniform.
        let mut skewed = Vec::new();
        for v in 0..=255u8 {
            skewed.extend(std::iter::repeat_n(v, if v < 128 { 48 } else { 16 }));
        }
        assert_eq!(kind(&skewed), Kind::Raw);
        // The bound: 64 values 32 times, 128 values 16 times, 64 never:
        // squares 98304, exactly 1.5 times uniform's 65536, is raw; moving
        // one byte from one 16 to another (17 and 15) adds 2 and is not.
        let mut edge = Vec::new();
        for v in 0..=255u8 {
            edge.extend(std::iter::repeat_n(v, [32, 16, 16, 0][usize::from(v) % 4]));
        }
        assert_eq!(edge.len(), BLOCK);
        assert_eq!(kind(&edge), Kind::Raw);
        let i = edge.iter().position(|b| *b == 1).unwrap_or_else(|| panic!("no 1"));
        edge[i] = 2;
        assert_eq!(kind(&edge), Kind::Packed);
    }

    #[test]
    fn frames_decode_to_their_bytes() {
        for len in [0, 1, 4096, PIECE - 1, PIECE, PIECE + 1, 10 * PIECE + 17] {
            let f = zero_frame(len);
            assert_eq!(f.len() as u64, 6 + 4 * len.div_ceil(PIECE).max(1) - u64::from(len == 0), "{len}");
            assert_eq!(decode(&f), vec![0u8; len as usize], "{len}");
            let mut x = len + 1;
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut x)).collect();
            let f = raw_frame(&data);
            assert_eq!(f.len(), 6 + data.len() + 3 * data.len().div_ceil(MAX_BLOCK).max(1), "{len}");
            assert_eq!(decode(&f), data, "{len}");
            assert_eq!(decode(&packed_frame(&data)), data, "{len}");
        }
        // 1 GiB of zeroes: 32 KiB.
        assert_eq!(zero_frame(1 << 30).len(), 6 + 4 * 8192);
    }

    fn image(dir: &Path) -> (PathBuf, Vec<u8>, Vec<Range<u64>>) {
        // 9 MiB + 1000: text at 0 with zero blocks in it, random bytes
        // across a frame boundary, a byte at the end, a hole in between.
        let size = (9 << 20) + 1000;
        let mut bytes = vec![0u8; size];
        let text = b"cairn flash image ".repeat(50_000);
        bytes[..text.len()].copy_from_slice(&text);
        bytes[3 * BLOCK..6 * BLOCK].fill(0);
        let mut x = 0x2545_f491_4f6c_dd1d;
        for b in &mut bytes[(3 << 20) + 5..(8 << 20)] {
            *b = xorshift(&mut x);
        }
        bytes[size - 1] = 0xee;
        let p = dir.join("d.img");
        fs::write(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let written = vec![0..(1 << 20), (3 << 20)..(8 << 20), size as u64 - 1..size as u64];
        (p, bytes, written)
    }

    #[test]
    fn images_round_trip_and_depend_only_on_their_bytes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (img, bytes, written) = image(dir.path());
        let size = bytes.len() as u64;
        let out = dir.path().join("d.img.zst");
        let info = compress_image(&img, size, &written, &out).unwrap_or_else(|e| panic!("{e}"));
        let z = fs::read(&out).unwrap_or_default();
        assert_eq!(info.size, z.len() as u64);
        assert_eq!(decode(&z), bytes);
        // Only the pieces the ranges touch were read.
        let last = (size - 1) / PIECE * PIECE;
        assert_eq!(info.read, (1 << 20) + (5 << 20) + (size - last));
        // Random bytes stored raw (the first block starts with 5 zeroes),
        // the text compressed (220 blocks less the 3 zeroed ones) and the
        // last 1000-byte block holding one 0xee.
        assert_eq!(info.raw, 5 << 20);
        assert_eq!(info.packed, 217 * BLOCK as u64 + 1000);
        assert!(z.len() < (5 << 20) + 100_000, "{}", z.len());
        // Reading everything gives the same bytes.
        let all = dir.path().join("all.zst");
        let info_all = compress_image(&img, size, &[0..size], &all).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&all).ok(), Some(z.clone()));
        assert_eq!(info_all.read, size);
        assert!(!dir.path().join("d.img.zst.partial").exists());
    }

    #[test]
    fn empty_and_missing_images() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("e.zst");
        compress_image(&empty, 0, &[], &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode(&fs::read(&out).unwrap_or_default()), Vec::<u8>::new());
        let r = compress_image(&dir.path().join("missing"), 10, &[0..10], &dir.path().join("m.zst"));
        assert!(matches!(&r, Err(ZstError::Io { path, .. }) if path.ends_with("missing")), "{r:?}");
        assert!(!dir.path().join("m.zst").exists() && !dir.path().join("m.zst.partial").exists());
    }
}
