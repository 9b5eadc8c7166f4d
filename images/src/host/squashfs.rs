//! Layer images: squashfs 4.0 with zlib ("gzip") compression, written from
//! a host directory.
//!
//! Deterministic by construction: entries sorted by name (bytes), every
//! timestamp 0, every owner root (uid 0, gid 0; this version normalises
//! ownership), inode numbers assigned in write order, no fragments (each
//! file's tail is its own short block), no xattrs, no export table.
//! Permission bits (including setuid, setgid, sticky) and symlink targets
//! are kept. Hard links are stored as separate files; sockets and FIFOs are
//! refused. The image is padded to a 4 KiB multiple; `size` and `digest`
//! cover the padded file.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::Digest;

const MAGIC: u32 = 0x7371_7368;
const BLOCK_SIZE: usize = 128 * 1024;
const BLOCK_LOG: u16 = 17;
const METADATA_SIZE: usize = 8192;
const SUPERBLOCK_SIZE: usize = 96;
const INVALID: u64 = u64::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
const COMPRESSION_ZLIB: u16 = 1;
const FLAG_NO_FRAGMENTS: u16 = 0x0010;
const FLAG_NO_XATTRS: u16 = 0x0200;
const UNCOMPRESSED_DATA_BIT: u32 = 1 << 24;
const UNCOMPRESSED_META_BIT: u16 = 0x8000;
const PAD: u64 = 4096;

/// A built layer image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerImage {
    /// Image size in bytes (padded to 4 KiB).
    pub size: u64,
    /// sha256 of the image file.
    pub digest: [u8; 32],
}

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// Reading the source tree or writing the image.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A file type layers cannot hold.
    #[error("{0}: sockets and FIFOs cannot be stored in a layer")]
    Unsupported(PathBuf),
    /// A name longer than 256 bytes.
    #[error("{0}: name longer than 256 bytes")]
    NameTooLong(PathBuf),
    /// Beyond what basic inodes address (4 GiB).
    #[error("{0}: layers larger than 4 GiB are not supported")]
    TooLarge(PathBuf),
}

enum Kind {
    Dir(Vec<Node>),
    File(PathBuf, u64),
    Symlink(Vec<u8>),
    Char(u32),
    Block(u32),
}

struct Node {
    name: Vec<u8>,
    mode: u16,
    kind: Kind,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SquashfsError + '_ {
    move |error| SquashfsError::Io { path: path.to_owned(), error }
}

/// Linux `new_encode_dev`, as squashfs stores device numbers.
fn encode_dev(rdev: u64) -> u32 {
    let major = ((rdev >> 8) & 0xfff) as u32 | (((rdev >> 32) & !0xfff) as u32);
    let minor = (rdev & 0xff) as u32 | (((rdev >> 12) & !0xff) as u32);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn scan(path: &Path, name: Vec<u8>) -> Result<Node, SquashfsError> {
    use std::os::unix::ffi::OsStrExt;
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    let ft = meta.file_type();
    let mode = (meta.permissions().mode() & 0o7777) as u16;
    let kind = if ft.is_dir() {
        let mut children = Vec::new();
        for e in fs::read_dir(path).map_err(io(path))? {
            let e = e.map_err(io(path))?;
            let n = e.file_name().as_bytes().to_vec();
            if n.len() > 256 {
                return Err(SquashfsError::NameTooLong(e.path()));
            }
            children.push(scan(&e.path(), n)?);
        }
        children.sort_by(|a, b| a.name.cmp(&b.name));
        Kind::Dir(children)
    } else if ft.is_file() {
        Kind::File(path.to_owned(), meta.len())
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(path).map_err(io(path))?.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::Char(encode_dev(meta.rdev()))
    } else if ft.is_block_device() {
        Kind::Block(encode_dev(meta.rdev()))
    } else {
        return Err(SquashfsError::Unsupported(path.to_owned()));
    };
    Ok(Node { name, mode, kind })
}

/// Writes 8 KiB metadata blocks, each compressed when that helps.
#[derive(Default)]
struct Metadata {
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Metadata {
    /// (block start relative to the table, offset in the block) of the next byte.
    fn pos(&self) -> (u32, u16) {
        (self.out.len() as u32, self.buf.len() as u16)
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (METADATA_SIZE - self.buf.len()).min(bytes.len());
            let (now, rest) = bytes.split_at(take);
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() == METADATA_SIZE {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&self.buf, 9);
        if z.len() < self.buf.len() {
            self.out.extend_from_slice(&(z.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&z);
        } else {
            self.out.extend_from_slice(&(self.buf.len() as u16 | UNCOMPRESSED_META_BIT).to_le_bytes());
            self.out.extend_from_slice(&self.buf);
        }
        self.buf.clear();
    }

    fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.out
    }
}

struct Writer {
    data: Vec<u8>,
    inodes: Metadata,
    dirs: Metadata,
    next_inode: u32,
}

/// What a directory listing needs to know of a written child.
struct Written {
    name: Vec<u8>,
    kind: u16,
    block: u32,
    offset: u16,
    number: u32,
}

fn common(kind: u16, mode: u16, number: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&mode.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes()); // uid index: id 0
    v.extend_from_slice(&0u16.to_le_bytes()); // gid index: id 0
    v.extend_from_slice(&0u32.to_le_bytes()); // mtime
    v.extend_from_slice(&number.to_le_bytes());
    v
}

fn count_inodes(n: &Node) -> u32 {
    match &n.kind {
        Kind::Dir(c) => 1 + c.iter().map(count_inodes).sum::<u32>(),
        _ => 1,
    }
}

impl Writer {
    /// Number of the next inode written: inodes are numbered in write
    /// (post) order, so a directory's number is known only after its
    /// children; `parent` is therefore passed down precomputed.
    fn write(&mut self, node: &Node, parent: u32) -> Result<Written, SquashfsError> {
        let (kind, bytes) = match &node.kind {
            Kind::Dir(children) => {
                let own = self.next_inode + children.iter().map(count_inodes).sum::<u32>();
                let mut written = Vec::new();
                for c in children {
                    written.push(self.write(c, own)?);
                }
                let subdirs = children.iter().filter(|c| matches!(c.kind, Kind::Dir(_))).count() as u32;
                let (start, offset, size) = self.listing(&written);
                let number = self.take_number();
                let mut v = if size <= 0xffff {
                    let mut v = common(1, node.mode, number);
                    v.extend_from_slice(&start.to_le_bytes());
                    v.extend_from_slice(&(2 + subdirs).to_le_bytes());
                    v.extend_from_slice(&(size as u16).to_le_bytes());
                    v.extend_from_slice(&offset.to_le_bytes());
                    v
                } else {
                    let mut v = common(8, node.mode, number);
                    v.extend_from_slice(&(2 + subdirs).to_le_bytes());
                    v.extend_from_slice(&size.to_le_bytes());
                    v.extend_from_slice(&start.to_le_bytes());
                    v
                };
                v.extend_from_slice(&parent.to_le_bytes());
                if size > 0xffff {
                    v.extend_from_slice(&0u16.to_le_bytes()); // no index
                    v.extend_from_slice(&offset.to_le_bytes());
                    v.extend_from_slice(&u32::MAX.to_le_bytes()); // no xattrs
                }
                (1, v)
            }
            Kind::File(path, len) => {
                let start = SUPERBLOCK_SIZE as u64 + self.data.len() as u64;
                let sizes = self.file_blocks(path, *len)?;
                if start > u64::from(u32::MAX) || *len > u64::from(u32::MAX) {
                    return Err(SquashfsError::TooLarge(path.clone()));
                }
                let mut v = common(2, node.mode, self.take_number());
                v.extend_from_slice(&(start as u32).to_le_bytes());
                v.extend_from_slice(&NO_FRAGMENT.to_le_bytes());
                v.extend_from_slice(&0u32.to_le_bytes());
                v.extend_from_slice(&(*len as u32).to_le_bytes());
                for s in sizes {
                    v.extend_from_slice(&s.to_le_bytes());
                }
                (2, v)
            }
            Kind::Symlink(target) => {
                let mut v = common(3, 0o777, self.take_number());
                v.extend_from_slice(&1u32.to_le_bytes());
                v.extend_from_slice(&(target.len() as u32).to_le_bytes());
                v.extend_from_slice(target);
                (3, v)
            }
            Kind::Char(dev) | Kind::Block(dev) => {
                let k = if matches!(node.kind, Kind::Char(_)) { 5 } else { 4 };
                let mut v = common(k, node.mode, self.take_number());
                v.extend_from_slice(&1u32.to_le_bytes());
                v.extend_from_slice(&dev.to_le_bytes());
                (k, v)
            }
        };
        let number = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let (block, offset) = self.inodes.pos();
        self.inodes.push(&bytes);
        Ok(Written { name: node.name.clone(), kind, block, offset, number })
    }

    fn take_number(&mut self) -> u32 {
        let n = self.next_inode;
        self.next_inode += 1;
        n
    }

    /// Append a file's data blocks; returns the block size words.
    fn file_blocks(&mut self, path: &Path, len: u64) -> Result<Vec<u32>, SquashfsError> {
        let content = fs::read(path).map_err(io(path))?;
        if content.len() as u64 != len {
            return Err(SquashfsError::Io {
                path: path.to_owned(),
                error: std::io::Error::other("file changed while the layer was built"),
            });
        }
        let mut sizes = Vec::new();
        for block in content.chunks(BLOCK_SIZE) {
            let z = miniz_oxide::deflate::compress_to_vec_zlib(block, 9);
            if z.len() < block.len() {
                sizes.push(z.len() as u32);
                self.data.extend_from_slice(&z);
            } else {
                sizes.push(block.len() as u32 | UNCOMPRESSED_DATA_BIT);
                self.data.extend_from_slice(block);
            }
        }
        Ok(sizes)
    }

    /// Write a directory listing; returns (block, offset, file_size).
    fn listing(&mut self, children: &[Written]) -> (u32, u16, u32) {
        let (start, offset) = self.dirs.pos();
        let mut bytes = Vec::new();
        let mut i = 0;
        while i < children.len() {
            let first = &children[i];
            let run = children[i..]
                .iter()
                .take(256)
                .take_while(|c| {
                    c.block == first.block && (i64::from(c.number) - i64::from(first.number)).abs() <= 32767
                })
                .count();
            bytes.extend_from_slice(&(run as u32 - 1).to_le_bytes());
            bytes.extend_from_slice(&first.block.to_le_bytes());
            bytes.extend_from_slice(&first.number.to_le_bytes());
            for c in &children[i..i + run] {
                bytes.extend_from_slice(&c.offset.to_le_bytes());
                bytes.extend_from_slice(&((i64::from(c.number) - i64::from(first.number)) as i16).to_le_bytes());
                bytes.extend_from_slice(&c.kind.to_le_bytes());
                bytes.extend_from_slice(&(c.name.len() as u16 - 1).to_le_bytes());
                bytes.extend_from_slice(&c.name);
            }
            i += run;
        }
        self.dirs.push(&bytes);
        (start, offset, bytes.len() as u32 + 3)
    }
}

/// Build a layer image from `src_dir` into `out` (written under a temporary
/// name and renamed, so a failure leaves nothing behind).
pub fn build_layer(src_dir: &Path, out: &Path) -> Result<LayerImage, SquashfsError> {
    let root = scan(src_dir, Vec::new())?;
    if !matches!(root.kind, Kind::Dir(_)) {
        return Err(SquashfsError::Io { path: src_dir.to_owned(), error: std::io::Error::other("not a directory") });
    }
    let total = count_inodes(&root);
    let mut w = Writer { data: Vec::new(), inodes: Metadata::default(), dirs: Metadata::default(), next_inode: 1 };
    let root_written = w.write(&root, total + 1)?;
    let root_ref = (u64::from(root_written.block) << 16) | u64::from(root_written.offset);

    let inode_table = SUPERBLOCK_SIZE as u64 + w.data.len() as u64;
    let inodes = w.inodes.finish();
    let dir_table = inode_table + inodes.len() as u64;
    let dirs = w.dirs.finish();
    let id_block = dir_table + dirs.len() as u64;
    let mut ids = Metadata::default();
    ids.push(&0u32.to_le_bytes());
    let ids = ids.finish();
    let id_index = id_block + ids.len() as u64;
    let bytes_used = id_index + 8;

    let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&total.to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // mtime
    sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // fragments
    sb.extend_from_slice(&COMPRESSION_ZLIB.to_le_bytes());
    sb.extend_from_slice(&BLOCK_LOG.to_le_bytes());
    sb.extend_from_slice(&(FLAG_NO_FRAGMENTS | FLAG_NO_XATTRS).to_le_bytes());
    sb.extend_from_slice(&1u16.to_le_bytes()); // ids
    sb.extend_from_slice(&4u16.to_le_bytes());
    sb.extend_from_slice(&0u16.to_le_bytes());
    for v in [root_ref, bytes_used, id_index, INVALID, inode_table, dir_table, id_block, INVALID] {
        sb.extend_from_slice(&v.to_le_bytes());
    }
    let mut image = sb;
    image.extend_from_slice(&w.data);
    image.extend_from_slice(&inodes);
    image.extend_from_slice(&dirs);
    image.extend_from_slice(&ids);
    image.extend_from_slice(&id_block.to_le_bytes());
    let padded = (image.len() as u64).div_ceil(PAD) * PAD;
    image.resize(padded as usize, 0);

    let digest = Digest::of(&image).0;
    let tmp = out.with_extension("partial");
    fs::write(&tmp, &image).map_err(io(&tmp))?;
    if let Err(e) = fs::rename(&tmp, out) {
        let _ = fs::remove_file(&tmp);
        return Err(SquashfsError::Io { path: out.to_owned(), error: e });
    }
    Ok(LayerImage { size: padded, digest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path) {
        let ok = |r: std::io::Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        ok(fs::create_dir_all(root.join("etc/deep/er")));
        ok(fs::create_dir_all(root.join("empty")));
        ok(fs::write(root.join("etc/hostname"), "box\n"));
        ok(fs::write(root.join("etc/deep/er/empty-file"), ""));
        ok(fs::write(root.join("big"), (0..(1 << 20) + 77).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>()));
        ok(fs::write(root.join("run.sh"), "#!/bin/sh\n"));
        ok(fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4755)));
        ok(symlink("etc/hostname", root.join("link")));
        for i in 0..300 {
            ok(fs::write(root.join("etc").join(format!("f{i:03}")), format!("{i}")));
        }
    }

    #[test]
    fn same_tree_same_bytes_and_a_valid_superblock() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        tree(&a);
        tree(&b);
        let ia = build_layer(&a, &d.path().join("a.sqfs")).unwrap_or_else(|e| panic!("{e}"));
        let ib = build_layer(&b, &d.path().join("b.sqfs")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ia, ib);
        let img = fs::read(d.path().join("a.sqfs")).unwrap_or_default();
        assert_eq!(img.len() as u64, ia.size);
        assert_eq!(ia.size % PAD, 0);
        assert_eq!(Digest::of(&img).0, ia.digest);
        assert_eq!(&img[..4], b"hsqs");
        let u64_at = |o: usize| u64::from_le_bytes(img[o..o + 8].try_into().unwrap_or([0; 8]));
        let inodes = u32::from_le_bytes(img[4..8].try_into().unwrap_or([0; 4]));
        assert_eq!(inodes, 1 + 1 + 300 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1); // root, etc, files, deep, er, empty-file, empty, big, run.sh, link, hostname
        let bytes_used = u64_at(40);
        assert!(bytes_used <= ia.size && bytes_used > ia.size - PAD);
        // Tables are in the order the kernel checks.
        let (id, inode, dir) = (u64_at(48), u64_at(64), u64_at(72));
        assert!(inode < dir && dir < id && id < bytes_used);
    }

    #[test]
    fn fifos_are_refused_and_nothing_is_left_behind() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap_or_else(|e| panic!("{e}"));
        let made = std::process::Command::new("mkfifo").arg(src.join("p")).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        let out = d.path().join("x.sqfs");
        assert!(matches!(build_layer(&src, &out), Err(SquashfsError::Unsupported(_))));
        assert!(!out.exists());
    }
}
