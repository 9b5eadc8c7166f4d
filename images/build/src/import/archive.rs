//! Random access to the members of an uncompressed tar file: what an image
//! archive (`docker save`, a tar of an OCI layout) needs to read its JSON
//! documents first and its layers in manifest order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use tar::EntryType;

use super::stream::walk_tar;
use super::ImportError;
use crate::tree::components;

/// The largest JSON document (manifest, index, config) read into memory.
pub(super) const JSON_MAX: u64 = 16 << 20;
/// How many symlinks are followed resolving one archive path.
const MAX_HOPS: usize = 16;

/// `len` bytes of a file from `start`, read with positioned reads (so
/// several can be open on one file).
pub(super) struct Range<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl<'f> Range<'f> {
    /// Bytes `start..start + len` of `file`.
    pub(super) fn new(file: &'f File, start: u64, len: u64) -> Self {
        Range { file, pos: start, end: start.saturating_add(len) }
    }
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was read"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// One member of an indexed archive.
#[derive(Debug, Clone)]
enum Member {
    /// A regular file: where its data is in the tar.
    File { offset: u64, size: u64 },
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// A hard link and the archive path of its target.
    HardLink(Vec<u8>),
    /// Anything else (directories, devices).
    Other,
}

/// What kind of image an indexed archive holds.
pub(super) enum ImageKind {
    /// A `docker save` archive, and its parsed `manifest.json`.
    Docker(Vec<super::image::DockerEntry>),
    /// A tar of an OCI image layout.
    Oci,
}

/// The members of an uncompressed tar file by normalised path.
pub(super) struct Index {
    file: File,
    label: String,
    members: HashMap<Vec<u8>, Member>,
    /// A non-directory path that appears twice.
    duplicate: Option<String>,
}

/// A member path without a leading `./`, empty components or `.`; `None`
/// for an absolute path, `..` or an invalid name.
pub(super) fn normalise(path: &[u8]) -> Option<Vec<u8>> {
    Some(components(path).ok()?.join(&b'/'))
}

impl Index {
    /// Read the headers of the tar file `file` (`len` bytes), at most
    /// `max_entries` of them.
    pub(super) fn build(file: &File, len: u64, label: &str, max_entries: u64) -> Result<Index, ImportError> {
        let own = file.try_clone().map_err(|error| ImportError::Io { path: label.into(), error })?;
        let mut members = HashMap::new();
        let mut duplicate = None;
        let mut count = 0u64;
        walk_tar(&mut Range::new(file, 0, len), label, &mut |entry, _walk| {
            let raw = entry.path_bytes();
            let shown = || String::from_utf8_lossy(&raw).into_owned();
            count += 1;
            if count > max_entries {
                return Err(ImportError::TooManyEntries {
                    archive: label.to_owned(),
                    member: shown(),
                    max: max_entries,
                });
            }
            let Some(path) = normalise(&raw) else {
                return Err(ImportError::BadPath { archive: label.to_owned(), member: shown() });
            };
            let link = || entry.link_name_bytes().unwrap_or_default();
            let member = match entry.entry.header().entry_type() {
                EntryType::Regular | EntryType::Continuous => {
                    let (offset, size) = (entry.entry.raw_file_position(), entry.entry.size());
                    if offset.checked_add(size).is_none_or(|end| end > len) {
                        return Err(ImportError::TruncatedMember { archive: label.to_owned(), member: shown() });
                    }
                    Member::File { offset, size }
                }
                EntryType::Symlink => Member::Symlink(link()),
                EntryType::Link => Member::HardLink(link()),
                EntryType::Directory => return Ok(()),
                _ => Member::Other,
            };
            if members.insert(path, member).is_some() && duplicate.is_none() {
                duplicate = Some(shown());
            }
            Ok(())
        })?;
        Ok(Index { file: own, label: label.to_owned(), members, duplicate })
    }

    /// The archive's name for messages.
    pub(super) fn label(&self) -> &str {
        &self.label
    }

    /// Resolve `path` (normalised) to a regular file, following symlinks
    /// (relative to the link's directory, never above the archive root) and
    /// hard links. `None` if there is no such file.
    fn resolve(&self, path: &[u8]) -> Option<(u64, u64)> {
        let mut path = path.to_vec();
        for _ in 0..MAX_HOPS {
            match self.members.get(&path)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::HardLink(target) => path = normalise(target)?,
                Member::Symlink(target) => {
                    if target.first() == Some(&b'/') {
                        return None;
                    }
                    let mut parts: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
                    parts.pop();
                    for c in target.split(|b| *b == b'/') {
                        match c {
                            b"" | b"." => {}
                            b".." => {
                                parts.pop()?;
                            }
                            c => parts.push(c),
                        }
                    }
                    path = normalise(&parts.join(&b'/'))?;
                }
                Member::Other => return None,
            }
        }
        None
    }

    /// The file at archive path `path` (normalised) and its size, if there.
    pub(super) fn open(&self, path: &[u8]) -> Option<(Range<'_>, u64)> {
        self.resolve(path).map(|(offset, size)| (Range::new(&self.file, offset, size), size))
    }

    /// Read the file at `path` (at most [`JSON_MAX`] bytes).
    pub(super) fn read_small(&self, path: &[u8]) -> Result<Option<Vec<u8>>, ImportError> {
        let Some((mut r, size)) = self.open(path) else { return Ok(None) };
        if size > JSON_MAX {
            return Err(ImportError::Image {
                archive: self.label.clone(),
                reason: format!("{} is larger than {JSON_MAX} bytes", String::from_utf8_lossy(path)),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.read_to_end(&mut buf).map_err(|error| ImportError::Io { path: self.label.clone().into(), error })?;
        Ok(Some(buf))
    }

    /// Whether the archive holds an image, and which kind. A top-level
    /// `manifest.json` that parses as a `docker save` manifest makes a
    /// docker archive; otherwise a top-level `oci-layout` file makes an OCI
    /// layout.
    /// With `prefer_oci` (an `oci-archive:` reference) an archive holding
    /// both (Docker 25 and later write both) is read as the OCI layout.
    pub(super) fn image_kind(&self, prefer_oci: bool) -> Result<Option<ImageKind>, ImportError> {
        let mut kind = None;
        let oci = matches!(self.members.get(&b"oci-layout"[..]), Some(Member::File { .. }));
        if prefer_oci && oci {
            kind = Some(ImageKind::Oci);
        } else if let Some(json) = self.read_small(b"manifest.json")? {
            if let Ok(entries) = serde_json::from_slice::<Vec<super::image::DockerEntry>>(&json) {
                kind = Some(ImageKind::Docker(entries));
            }
        }
        if kind.is_none() && oci {
            kind = Some(ImageKind::Oci);
        }
        if kind.is_some() {
            if let Some(member) = &self.duplicate {
                return Err(ImportError::Duplicate { archive: self.label.clone(), member: member.clone() });
            }
        }
        Ok(kind)
    }
}

/// Whether the (compressed) tar stream `raw` has a top-level
/// `manifest.json` or `oci-layout` member, so may be an image.
pub(super) fn looks_like_image(raw: &mut dyn Read, label: &str) -> Result<bool, ImportError> {
    let mut found = false;
    walk_tar(raw, label, &mut |entry, _walk| {
        if let Some(p) = normalise(&entry.path_bytes()) {
            found |= p == b"manifest.json" || p == b"oci-layout";
        }
        Ok(())
    })?;
    Ok(found)
}
