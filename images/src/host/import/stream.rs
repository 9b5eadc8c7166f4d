//! Byte streams: telling tar, gzip and zstd apart by their first bytes,
//! decompressing, hashing what passes, and walking a tar stream with
//! errors that say whether the archive was truncated, corrupt or malformed.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest as _, Sha256};

use super::ImportError;

/// How a tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// What the first bytes of a file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniffed {
    /// A tar, possibly compressed (for a compressed one, the decompressed
    /// start has been checked to be a tar header too).
    Tar(Compression),
    /// A compression we do not read.
    Unsupported(&'static str),
    /// Something else.
    Unknown,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const BZIP2_MAGIC: &[u8] = b"BZh";
const BLOCK: usize = 512;

/// The compression named by a stream's first bytes; `Err` for a known
/// compression we do not read, `Ok(None)` for no compression magic.
fn compression_of(head: &[u8]) -> Result<Option<Compression>, &'static str> {
    if head.starts_with(GZIP_MAGIC) {
        Ok(Some(Compression::Gzip))
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Some(Compression::Zstd))
    } else if head.starts_with(XZ_MAGIC) {
        Err("xz")
    } else if head.starts_with(BZIP2_MAGIC) {
        Err("bzip2")
    } else {
        Ok(None)
    }
}

/// Whether `block` (the first 512 bytes of a stream) is a tar header: its
/// checksum field matches, or it is the all-zero end-of-archive block of an
/// empty archive.
pub(super) fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < BLOCK {
        return false;
    }
    let block = &block[..BLOCK];
    if block.iter().all(|b| *b == 0) {
        return true;
    }
    let field = &block[148..156];
    let digits: Vec<u8> =
        field.iter().copied().skip_while(|b| *b == b' ').take_while(|b| (b'0'..=b'7').contains(b)).collect();
    let Ok(text) = std::str::from_utf8(&digits) else { return false };
    let Ok(stored) = u32::from_str_radix(text, 8) else { return false };
    let unsigned: u32 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
    let signed: i32 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { i32::from(*b as i8) }).sum();
    stored == unsigned || i64::from(stored) == i64::from(signed)
}

/// Read up to `n` bytes (fewer only at the end of the stream).
fn read_head(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Look at the start of the file `file` (`len` bytes).
pub(super) fn sniff_file(file: &File, len: u64, _label: &str) -> io::Result<Sniffed> {
    let mut head = vec![0u8; BLOCK.min(len as usize)];
    file.read_exact_at(&mut head, 0)?;
    match compression_of(&head) {
        Err(format) => Ok(Sniffed::Unsupported(format)),
        Ok(None) => Ok(if is_tar_header(&head) { Sniffed::Tar(Compression::None) } else { Sniffed::Unknown }),
        Ok(Some(c)) => {
            let mut raw = super::archive::Range::new(file, 0, len);
            let mut decoded = decoder(c, Box::new(&mut raw))?;
            // A stream that fails to decode is reported as corrupt later.
            Ok(match read_head(&mut decoded, BLOCK) {
                Ok(block) if !is_tar_header(&block) => Sniffed::Unknown,
                _ => Sniffed::Tar(c),
            })
        }
    }
}

/// A decompressing reader over `raw`.
fn decoder<'a>(c: Compression, raw: Box<dyn Read + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => raw,
        Compression::Gzip => Box::new(MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(ZstdReader::new(raw)),
    })
}

/// Reads every frame of a zstd stream (skipping skippable frames), checking
/// each frame's content checksum when it has one.
struct ZstdReader<R: Read> {
    src: BufReader<R>,
    dec: FrameDecoder,
    in_frame: bool,
    frames: u64,
}

impl<R: Read> ZstdReader<R> {
    fn new(src: R) -> Self {
        ZstdReader { src: BufReader::new(src), dec: FrameDecoder::new(), in_frame: false, frames: 0 }
    }
}

fn zstd_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.src.fill_buf()?.is_empty() {
                    if self.frames == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "empty zstd stream"));
                    }
                    return Ok(0);
                }
                match self.dec.reset(&mut self.src) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                        length, ..
                    })) => {
                        let skipped = io::copy(&mut (&mut self.src).take(u64::from(length)), &mut io::sink())?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "skippable frame truncated"));
                        }
                    }
                    Err(e) => return Err(zstd_err(e)),
                }
                continue;
            }
            if self.dec.can_collect() > 0 {
                return self.dec.read(buf);
            }
            if self.dec.is_finished() {
                if let (Some(stored), Some(computed)) =
                    (self.dec.get_checksum_from_data(), self.dec.get_calculated_checksum())
                {
                    if stored != computed {
                        return Err(zstd_err("frame checksum mismatch"));
                    }
                }
                self.in_frame = false;
                self.frames += 1;
                continue;
            }
            self.dec.decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(buf.len())).map_err(zstd_err)?;
        }
    }
}

/// What a [`Tap`] has seen, shared with whoever reads through it.
#[derive(Debug, Default)]
pub(super) struct Status {
    /// The stream ended (a read returned 0).
    pub eof: Cell<bool>,
    /// A read of the underlying stream failed.
    pub failed: Cell<bool>,
}

/// A reader that hashes and counts what passes and notes the end of the
/// stream and failures.
pub(super) struct Tap<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    status: Rc<Status>,
}

impl<R: Read> Tap<R> {
    pub(super) fn new(inner: R) -> Self {
        Tap { inner, hash: Sha256::new(), count: 0, status: Rc::default() }
    }

    /// (sha256, byte count) of what was read.
    pub(super) fn finish(self) -> ([u8; 32], u64) {
        (self.hash.finalize().into(), self.count)
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if n == 0 && !buf.is_empty() {
                    self.status.eof.set(true);
                }
                self.hash.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.status.failed.set(true);
                }
                Err(e)
            }
        }
    }
}

/// The decoded stream a tar archive is read from.
pub(super) type Decoded<'a> = Tap<Box<dyn Read + 'a>>;

/// What [`walk_tar`] calls for every member.
pub(super) type Visit<'v> =
    dyn FnMut(&mut tar::Entry<'_, &mut Decoded<'_>>, &mut Walk<'_>) -> Result<(), ImportError> + 'v;

/// Context for the visitor of [`walk_tar`]: turns read errors into
/// [`ImportError`]s.
pub(super) struct Walk<'l> {
    /// Names the archive in errors.
    pub label: &'l str,
    compression: Compression,
    status: Rc<Status>,
    /// The last member seen.
    pub last: Option<String>,
}

impl Walk<'_> {
    /// An error reading the tar stream between members.
    pub(super) fn archive_error(&self, error: io::Error) -> ImportError {
        let archive = self.label.to_owned();
        if self.status.failed.get() {
            return decode_error(self.label, self.compression, error, self.last.clone());
        }
        if self.status.eof.get() {
            return ImportError::TruncatedArchive { archive, after: self.last.clone() };
        }
        ImportError::Malformed { archive, after: self.last.clone(), error }
    }

    /// An error reading the data of `member`.
    pub(super) fn member_error(&self, error: io::Error, member: &str) -> ImportError {
        if self.status.failed.get() {
            return decode_error(self.label, self.compression, error, Some(member.to_owned()));
        }
        ImportError::TruncatedMember { archive: self.label.to_owned(), member: member.to_owned() }
    }
}

/// An error from the stream under a tar: reading the source, or decoding.
fn decode_error(label: &str, compression: Compression, error: io::Error, after: Option<String>) -> ImportError {
    let archive = label.to_owned();
    match compression {
        Compression::None => ImportError::Io { path: archive.into(), error },
        _ if error.kind() == io::ErrorKind::UnexpectedEof => ImportError::TruncatedArchive { archive, after },
        c => ImportError::Corrupt { archive, format: c.name(), error },
    }
}

/// Digests of a tar stream read by [`walk_tar`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Digests {
    /// sha256 of the bytes as stored (compressed).
    pub raw: [u8; 32],
    /// How many bytes were stored.
    pub raw_len: u64,
    /// sha256 of the uncompressed tar.
    pub tar: [u8; 32],
}

/// Read the (possibly compressed) tar stream `raw` to its end, calling
/// `visit` for every member. The end-of-archive block must be there; a
/// compressed stream is decoded to its end (checking its checksums), and
/// `raw` is read to its end.
pub(super) fn walk_tar(raw: &mut dyn Read, label: &str, visit: &mut Visit<'_>) -> Result<Digests, ImportError> {
    let io_err = |error| ImportError::Io { path: label.into(), error };
    let mut raw = Tap::new(raw);
    let head = read_head(&mut raw, 8).map_err(io_err)?;
    let compression = match compression_of(&head) {
        Err(format) => return Err(ImportError::UnsupportedCompression { archive: label.to_owned(), format }),
        Ok(c) => c.unwrap_or(Compression::None),
    };
    let tar_digest;
    {
        let chained: Box<dyn Read + '_> = Box::new(Cursor::new(head).chain(&mut raw));
        let mut decoded = decoder(compression, chained).map_err(|e| decode_error(label, compression, e, None))?;
        let first = read_head(&mut decoded, BLOCK).map_err(|e| decode_error(label, compression, e, None))?;
        if !is_tar_header(&first) {
            return Err(ImportError::NotAnArchive { archive: label.to_owned() });
        }
        let mut stream: Decoded<'_> = Tap::new(Box::new(Cursor::new(first).chain(decoded)));
        let mut walk = Walk { label, compression, status: stream.status.clone(), last: None };
        {
            let mut archive = tar::Archive::new(&mut stream);
            let entries = archive.entries().map_err(|e| walk.archive_error(e))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| walk.archive_error(e))?;
                visit(&mut entry, &mut walk)?;
                walk.last = Some(String::from_utf8_lossy(&entry.path_bytes()).into_owned());
            }
        }
        if walk.status.eof.get() {
            return Err(ImportError::TruncatedArchive { archive: label.to_owned(), after: walk.last.clone() });
        }
        // The rest: padding, then the end of the compressed stream.
        io::copy(&mut stream, &mut io::sink()).map_err(|e| walk.archive_error(e))?;
        tar_digest = stream.finish().0;
    }
    io::copy(&mut raw, &mut io::sink()).map_err(io_err)?;
    let (raw_digest, raw_len) = raw.finish();
    Ok(Digests { raw: raw_digest, raw_len, tar: tar_digest })
}

/// Decompress the whole of `raw` into an anonymous temporary file.
pub(super) fn decompress_to_temp(raw: &mut dyn Read, label: &str) -> Result<File, ImportError> {
    let io_err = |error| ImportError::Io { path: label.into(), error };
    let head = read_head(raw, 8).map_err(io_err)?;
    let compression = compression_of(&head)
        .map_err(|format| ImportError::UnsupportedCompression { archive: label.to_owned(), format })?
        .unwrap_or(Compression::None);
    let mut decoded = decoder(compression, Box::new(Cursor::new(head).chain(raw)))
        .map_err(|e| decode_error(label, compression, e, None))?;
    let mut out = io::BufWriter::new(tempfile::tempfile().map_err(ImportError::Spool)?);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decode_error(label, compression, e, None)),
        };
        out.write_all(&buf[..n]).map_err(ImportError::Spool)?;
    }
    out.into_inner().map_err(|e| ImportError::Spool(e.into_error()))
}
