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

use super::{Extension, ImportError};

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

/// The largest GNU long-name, GNU long-link or PAX extended header read
/// (each is held in memory whole, so it is capped before it is read).
pub(super) const EXT_MAX: u64 = super::EXTENSION_MAX;

/// One tar member with the extension headers before it (GNU long name,
/// GNU long link, PAX extended header) applied as the `tar` crate applies
/// them (`path`, `linkpath`, `uid`, `gid`; a record repeated in one header:
/// the last, as POSIX and Go's `archive/tar` read it), but read under
/// [`EXT_MAX`].
pub(super) struct Member<'m, 'e, R: Read> {
    /// The member itself (its header and data).
    pub entry: &'m mut tar::Entry<'e, R>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// A GNU long name or link without its trailing NUL.
fn strip_nul(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\0").unwrap_or(b)
}

impl<R: Read> Member<'_, '_, R> {
    /// The member's path: the GNU long name, else the PAX `path`, else the
    /// header's.
    pub(super) fn path_bytes(&self) -> Vec<u8> {
        if let Some(n) = &self.long_name {
            return strip_nul(n).to_vec();
        }
        if let Some(p) = self.pax_value(b"path") {
            return p.to_vec();
        }
        self.entry.header().path_bytes().into_owned()
    }

    /// The link target: the GNU long link, else the PAX `linkpath`, else
    /// the header's.
    pub(super) fn link_name_bytes(&self) -> Option<Vec<u8>> {
        if let Some(n) = &self.long_link {
            return Some(strip_nul(n).to_vec());
        }
        if let Some(p) = self.pax_value(b"linkpath") {
            return Some(p.to_vec());
        }
        self.entry.header().link_name_bytes().map(|l| l.into_owned())
    }

    /// The PAX records of the member, if it has a PAX extended header.
    pub(super) fn pax_extensions(&self) -> Option<tar::PaxExtensions<'_>> {
        self.pax.as_deref().map(tar::PaxExtensions::new)
    }

    /// The value of the PAX record `key` (the last one if repeated).
    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax_extensions()?.filter_map(Result::ok).filter(|r| r.key_bytes() == key).last().map(|r| r.value_bytes())
    }

    /// A numeric PAX record (`uid`, `gid`, `size`): `Err` if it is there
    /// but not a decimal number.
    fn pax_number(&self, key: &[u8]) -> io::Result<Option<u64>> {
        let Some(v) = self.pax_value(key) else { return Ok(None) };
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "PAX record is not a number"))
    }

    /// The owner: the PAX `uid`, else the header's.
    pub(super) fn uid(&self) -> io::Result<u64> {
        match self.pax_number(b"uid")? {
            Some(v) => Ok(v),
            None => self.entry.header().uid(),
        }
    }

    /// The group: the PAX `gid`, else the header's.
    pub(super) fn gid(&self) -> io::Result<u64> {
        match self.pax_number(b"gid")? {
            Some(v) => Ok(v),
            None => self.entry.header().gid(),
        }
    }
}

/// What [`walk_tar`] calls for every member.
pub(super) type Visit<'v> =
    dyn FnMut(&mut Member<'_, '_, &mut Decoded<'_>>, &mut Walk<'_>) -> Result<(), ImportError> + 'v;

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
            // Raw: the extension headers come as members of their own, so
            // they can be capped before they are read (the crate would read
            // them whole, whatever size they claim).
            let entries = archive.entries().map_err(|e| walk.archive_error(e))?.raw(true);
            let mut pending = Pending::default();
            for entry in entries {
                let mut entry = entry.map_err(|e| walk.archive_error(e))?;
                if pending.take_extension(&mut entry, &walk)? {
                    continue;
                }
                let mut member = pending.apply(&mut entry, &walk)?;
                visit(&mut member, &mut walk)?;
                walk.last = Some(String::from_utf8_lossy(&member.path_bytes()).into_owned());
            }
            if !pending.is_empty() {
                return Err(ImportError::Malformed {
                    archive: label.to_owned(),
                    after: walk.last.clone(),
                    error: io::Error::new(io::ErrorKind::InvalidData, "extension header with no member after it"),
                });
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

/// Extension headers read and not yet applied to a member.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }

    /// If `entry` is an extension header (GNU `L` or `K`, PAX `x`, in a GNU
    /// or ustar header, as the `tar` crate reads them), read it (refusing
    /// one over [`EXT_MAX`] before reading it) and return true. A GNU
    /// sparse member is refused here: its extension blocks are not
    /// accounted for in raw reading.
    fn take_extension<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, walk: &Walk<'_>) -> Result<bool, ImportError> {
        let header = entry.header();
        let ty = header.entry_type();
        let name = || String::from_utf8_lossy(&header.path_bytes()).into_owned();
        if ty.is_gnu_sparse() {
            return Err(ImportError::Unsupported {
                archive: walk.label.to_owned(),
                member: name(),
                what: "a GNU sparse file".into(),
            });
        }
        if header.as_gnu().is_none() && header.as_ustar().is_none() {
            return Ok(false);
        }
        let (slot, what) = if ty.is_gnu_longname() {
            (&mut self.long_name, Extension::GnuLongName)
        } else if ty.is_gnu_longlink() {
            (&mut self.long_link, Extension::GnuLongLink)
        } else if ty.is_pax_local_extensions() {
            (&mut self.pax, Extension::Pax)
        } else {
            return Ok(false);
        };
        let member = name();
        if slot.is_some() {
            return Err(ImportError::Malformed {
                archive: walk.label.to_owned(),
                after: walk.last.clone(),
                error: io::Error::new(io::ErrorKind::InvalidData, format!("two {what}s for one member ({member})")),
            });
        }
        let size = entry.size();
        if size > EXT_MAX {
            return Err(ImportError::ExtensionTooLarge {
                archive: walk.label.to_owned(),
                member,
                after: walk.last.clone(),
                what,
                size,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.take(EXT_MAX).read_to_end(&mut data).map_err(|e| walk.member_error(e, &member))?;
        if data.len() as u64 != size {
            return Err(ImportError::TruncatedMember { archive: walk.label.to_owned(), member });
        }
        *slot = Some(data);
        Ok(true)
    }

    /// The member `entry` with the pending extension headers applied
    /// (leaving none pending). A PAX `size` record that differs from the
    /// header's size is refused: raw reading steps over the header's size,
    /// and two readings of one archive must not differ.
    fn apply<'m, 'e, R: Read>(
        &mut self,
        entry: &'m mut tar::Entry<'e, R>,
        walk: &Walk<'_>,
    ) -> Result<Member<'m, 'e, R>, ImportError> {
        let member =
            Member { entry, long_name: self.long_name.take(), long_link: self.long_link.take(), pax: self.pax.take() };
        let shown = || String::from_utf8_lossy(&member.path_bytes()).into_owned();
        let header_size = member.entry.header().entry_size().map_err(|e| walk.archive_error(e))?;
        match member.pax_number(b"size") {
            Ok(None) => {}
            Ok(Some(s)) if s == header_size => {}
            Ok(Some(_)) | Err(_) => {
                return Err(ImportError::Unsupported {
                    archive: walk.label.to_owned(),
                    member: shown(),
                    what: "a PAX size record that differs from the header's size".into(),
                })
            }
        }
        Ok(member)
    }
}

/// Decompress the whole of `raw` into an anonymous temporary file, at most
/// `max` bytes of it: a stream that decompresses to more is refused as soon
/// as it passes `max`, and the file (unlinked from the start) goes with it.
pub(super) fn decompress_to_temp(raw: &mut dyn Read, label: &str, max: u64) -> Result<File, ImportError> {
    let io_err = |error| ImportError::Io { path: label.into(), error };
    let head = read_head(raw, 8).map_err(io_err)?;
    let compression = compression_of(&head)
        .map_err(|format| ImportError::UnsupportedCompression { archive: label.to_owned(), format })?
        .unwrap_or(Compression::None);
    let mut decoded = decoder(compression, Box::new(Cursor::new(head).chain(raw)))
        .map_err(|e| decode_error(label, compression, e, None))?;
    let mut out = io::BufWriter::new(tempfile::tempfile().map_err(ImportError::Spool)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(decode_error(label, compression, e, None)),
        };
        written = written.saturating_add(n as u64);
        if written > max {
            return Err(ImportError::TempTooLarge { archive: label.to_owned(), max });
        }
        out.write_all(&buf[..n]).map_err(ImportError::Spool)?;
    }
    out.into_inner().map_err(|e| ImportError::Spool(e.into_error()))
}
