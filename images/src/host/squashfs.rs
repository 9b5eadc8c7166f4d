//! Layer images: squashfs 4.0 with zlib ("gzip") compression, written from
//! a host directory by our own writer (no external tool).
//!
//! Deterministic by construction: entries sorted by name (bytes), every
//! timestamp 0, every owner root (uid 0, gid 0: this version normalises
//! ownership, so a layer cannot hold files owned by other users), inode
//! numbers assigned in write order, 128 KiB blocks, no fragments (each
//! file's tail is its own short block), no xattrs, no export table, no
//! duplicate detection. Permission bits (including setuid, setgid, sticky)
//! and symlink targets are kept. Regular files, directories and symlinks
//! only: sockets, FIFOs and device nodes are refused. Hard links are stored
//! as separate files. Limits: files and the image below 4 GiB, names up to
//! 256 bytes. The same tree gives the same bytes for a given `miniz_oxide`
//! version (compressed bytes may change if the compressor changes).
//!
//! The image is padded with zeroes to a 4 KiB multiple (as mksquashfs does;
//! it keeps the image a whole number of device blocks); `size` and `digest`
//! cover the padded file. File data is streamed to `<out>.partial` in the
//! same directory, which is renamed to `out` when complete and removed on
//! error.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

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
const LEVEL: u8 = 9;

/// A built layer image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerImage {
    /// Image size in bytes (padded to 4 KiB).
    pub size: u64,
    /// sha256 of the whole image file.
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
    /// The source is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// A file type layers cannot hold.
    #[error("{path}: a {kind} cannot be stored in a layer (only files, directories and symlinks)")]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// "socket", "FIFO", "character device" or "block device".
        kind: &'static str,
    },
    /// A name longer than 256 bytes.
    #[error("{0}: name longer than 256 bytes")]
    NameTooLong(PathBuf),
    /// A file changed size while it was read.
    #[error("{0}: file changed while the layer was built")]
    Changed(PathBuf),
    /// Beyond what this writer addresses (4 GiB files and images).
    #[error("{0}: files and layers of 4 GiB or more are not supported")]
    TooLarge(PathBuf),
}

enum Kind {
    Dir(Vec<Node>),
    File(PathBuf, u64),
    Symlink(Vec<u8>),
}

struct Node {
    name: Vec<u8>,
    mode: u16,
    kind: Kind,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SquashfsError + '_ {
    move |error| SquashfsError::Io { path: path.to_owned(), error }
}

fn scan_children(path: &Path) -> Result<Vec<Node>, SquashfsError> {
    use std::os::unix::ffi::OsStrExt;
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
    Ok(children)
}

fn scan(path: &Path, name: Vec<u8>) -> Result<Node, SquashfsError> {
    use std::os::unix::ffi::OsStrExt;
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    let ft = meta.file_type();
    let mode = (meta.permissions().mode() & 0o7777) as u16;
    let unsupported = |kind| Err(SquashfsError::Unsupported { path: path.to_owned(), kind });
    let kind = if ft.is_dir() {
        Kind::Dir(scan_children(path)?)
    } else if ft.is_file() {
        Kind::File(path.to_owned(), meta.len())
    } else if ft.is_symlink() {
        Kind::Symlink(fs::read_link(path).map_err(io(path))?.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        return unsupported("character device");
    } else if ft.is_block_device() {
        return unsupported("block device");
    } else if ft.is_fifo() {
        return unsupported("FIFO");
    } else if ft.is_socket() {
        return unsupported("socket");
    } else {
        return unsupported("special file");
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
    /// (block start relative to the table, offset in the block) of the next
    /// byte. Truncation past 4 GiB is caught when the table is finished.
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
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&self.buf, LEVEL);
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

struct Writer<'a> {
    /// The image being written, and its path for errors.
    out: File,
    out_path: &'a Path,
    /// Bytes written to `out` so far.
    pos: u64,
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

/// Fill `buf` from `f` unless the file ends first; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Writer<'_> {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), SquashfsError> {
        self.out.write_all(bytes).map_err(io(self.out_path))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Write `node` (children first) and return its reference. Inodes are
    /// numbered in write (post) order, so a directory's number is known
    /// only after its children; `parent` is therefore passed down
    /// precomputed.
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
                let v = if size <= 0xffff {
                    let mut v = common(1, node.mode, number);
                    v.extend_from_slice(&start.to_le_bytes());
                    v.extend_from_slice(&(2 + subdirs).to_le_bytes());
                    v.extend_from_slice(&(size as u16).to_le_bytes());
                    v.extend_from_slice(&offset.to_le_bytes());
                    v.extend_from_slice(&parent.to_le_bytes());
                    v
                } else {
                    let mut v = common(8, node.mode, number);
                    v.extend_from_slice(&(2 + subdirs).to_le_bytes());
                    v.extend_from_slice(&size.to_le_bytes());
                    v.extend_from_slice(&start.to_le_bytes());
                    v.extend_from_slice(&parent.to_le_bytes());
                    v.extend_from_slice(&0u16.to_le_bytes()); // no index
                    v.extend_from_slice(&offset.to_le_bytes());
                    v.extend_from_slice(&u32::MAX.to_le_bytes()); // no xattrs
                    v
                };
                // Directory entries name the basic type even for extended inodes.
                (1, v)
            }
            Kind::File(path, len) => {
                let start = self.pos;
                let (sizes, sparse) = self.file_blocks(path, *len)?;
                let number = self.take_number();
                let mut v = if start <= u64::from(u32::MAX) && *len <= u64::from(u32::MAX) {
                    let mut v = common(2, node.mode, number);
                    v.extend_from_slice(&(start as u32).to_le_bytes());
                    v.extend_from_slice(&NO_FRAGMENT.to_le_bytes());
                    v.extend_from_slice(&0u32.to_le_bytes());
                    v.extend_from_slice(&(*len as u32).to_le_bytes());
                    v
                } else {
                    let mut v = common(9, node.mode, number);
                    v.extend_from_slice(&start.to_le_bytes());
                    v.extend_from_slice(&len.to_le_bytes());
                    v.extend_from_slice(&sparse.to_le_bytes());
                    v.extend_from_slice(&1u32.to_le_bytes()); // nlink
                    v.extend_from_slice(&NO_FRAGMENT.to_le_bytes());
                    v.extend_from_slice(&0u32.to_le_bytes());
                    v.extend_from_slice(&u32::MAX.to_le_bytes()); // no xattrs
                    v
                };
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

    /// Append a file's data blocks; returns the block size words and the
    /// bytes left as holes (all-zero blocks, stored as size 0).
    fn file_blocks(&mut self, path: &Path, len: u64) -> Result<(Vec<u32>, u64), SquashfsError> {
        let mut f = File::open(path).map_err(io(path))?;
        let mut sizes = Vec::new();
        let mut sparse = 0;
        let mut block = vec![0u8; BLOCK_SIZE];
        let mut left = len;
        while left > 0 {
            let want = (BLOCK_SIZE as u64).min(left) as usize;
            let got = read_full(&mut f, &mut block[..want]).map_err(io(path))?;
            if got != want {
                return Err(SquashfsError::Changed(path.to_owned()));
            }
            left -= want as u64;
            let block = &block[..want];
            if block.iter().all(|b| *b == 0) {
                sizes.push(0);
                sparse += want as u64;
                continue;
            }
            let z = miniz_oxide::deflate::compress_to_vec_zlib(block, LEVEL);
            if z.len() < block.len() {
                sizes.push(z.len() as u32);
                self.emit(&z)?;
            } else {
                sizes.push(block.len() as u32 | UNCOMPRESSED_DATA_BIT);
                self.emit(block)?;
            }
        }
        if read_full(&mut f, &mut [0u8; 1]).map_err(io(path))? != 0 {
            return Err(SquashfsError::Changed(path.to_owned()));
        }
        Ok((sizes, sparse))
    }

    /// Write a directory listing; returns (block, offset, file_size).
    fn listing(&mut self, children: &[Written]) -> (u32, u16, u32) {
        let (start, offset) = self.dirs.pos();
        let mut bytes = Vec::new();
        let mut i = 0;
        while i < children.len() {
            let first = &children[i];
            // One header per run: at most 256 entries whose inodes share a
            // metadata block and whose numbers fit an i16 difference.
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
        // The size counts the "." and ".." the kernel synthesises.
        (start, offset, bytes.len() as u32 + 3)
    }
}

/// `out` with `.partial` appended to its file name.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| OsString::from("layer"));
    name.push(".partial");
    out.with_file_name(name)
}

/// Build a layer image from the directory `src_dir` into `out`.
///
/// The whole tree is scanned (and refused types reported) before anything
/// is written; the image goes to `<out>.partial` and is renamed to `out`
/// only when complete, so a failure leaves no output.
pub fn build_layer(src_dir: &Path, out: &Path) -> Result<LayerImage, SquashfsError> {
    let meta = fs::metadata(src_dir).map_err(io(src_dir))?;
    if !meta.is_dir() {
        return Err(SquashfsError::NotADirectory(src_dir.to_owned()));
    }
    let root = Node {
        name: Vec::new(),
        mode: (meta.permissions().mode() & 0o7777) as u16,
        kind: Kind::Dir(scan_children(src_dir)?),
    };
    let tmp = partial_path(out);
    let result =
        write_image(&root, src_dir, &tmp).and_then(|image| fs::rename(&tmp, out).map(|()| image).map_err(io(out)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_image(root: &Node, src_dir: &Path, tmp: &Path) -> Result<LayerImage, SquashfsError> {
    let out = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp).map_err(io(tmp))?;
    let mut w =
        Writer { out, out_path: tmp, pos: 0, inodes: Metadata::default(), dirs: Metadata::default(), next_inode: 1 };
    w.emit(&[0; SUPERBLOCK_SIZE])?; // written for real at the end
    let total = count_inodes(root);
    // squashfs-tools gives the root a parent number one past the last inode.
    let root_written = w.write(root, total + 1)?;
    let root_ref = (u64::from(root_written.block) << 16) | u64::from(root_written.offset);

    let inodes = std::mem::take(&mut w.inodes).finish();
    let dirs = std::mem::take(&mut w.dirs).finish();
    if inodes.len() as u64 > u64::from(u32::MAX) || dirs.len() as u64 > u64::from(u32::MAX) {
        return Err(SquashfsError::TooLarge(src_dir.to_owned()));
    }
    let mut ids = Metadata::default();
    ids.push(&0u32.to_le_bytes()); // the one id: 0 (root)
    let ids = ids.finish();

    let inode_table = w.pos;
    w.emit(&inodes)?;
    let dir_table = w.pos;
    w.emit(&dirs)?;
    // No fragments: like mksquashfs, the (empty) fragment table "starts"
    // where the next table does.
    let id_block = w.pos;
    w.emit(&ids)?;
    let id_index = w.pos;
    w.emit(&id_block.to_le_bytes())?;
    let bytes_used = w.pos;
    let padded = bytes_used.div_ceil(PAD) * PAD;
    w.emit(&vec![0; (padded - bytes_used) as usize])?;

    let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&total.to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // mkfs time
    sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // fragments
    sb.extend_from_slice(&COMPRESSION_ZLIB.to_le_bytes());
    sb.extend_from_slice(&BLOCK_LOG.to_le_bytes());
    sb.extend_from_slice(&(FLAG_NO_FRAGMENTS | FLAG_NO_XATTRS).to_le_bytes());
    sb.extend_from_slice(&1u16.to_le_bytes()); // ids
    sb.extend_from_slice(&4u16.to_le_bytes()); // version 4.0
    sb.extend_from_slice(&0u16.to_le_bytes());
    // root inode, bytes used, id table, xattr table, inode table, directory
    // table, fragment table, export table.
    for v in [root_ref, bytes_used, id_index, INVALID, inode_table, dir_table, id_block, INVALID] {
        sb.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = w.out;
    let err = io(tmp);
    f.seek(SeekFrom::Start(0)).and_then(|_| f.write_all(&sb)).and_then(|()| f.sync_all()).map_err(err)?;

    let mut hash = Sha256::new();
    f.seek(SeekFrom::Start(0)).map_err(io(tmp))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(io(tmp))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(LayerImage { size: padded, digest: hash.finalize().into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    fn ok<T>(r: std::io::Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn tree(root: &Path) {
        ok(fs::create_dir_all(root.join("etc/deep/er")));
        ok(fs::create_dir_all(root.join("tmp")));
        ok(fs::create_dir_all(root.join("many")));
        ok(fs::write(root.join("etc/hostname"), "box\n"));
        ok(fs::write(root.join("etc/deep/er/empty-file"), ""));
        // 1 MiB + a tail, partly compressible.
        ok(fs::write(
            root.join("big"),
            (0..(1u32 << 20) + 77).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>(),
        ));
        // A zero block (stored as a hole) between data.
        let mut holey = vec![0u8; 3 * BLOCK_SIZE + 5];
        holey[..4].copy_from_slice(b"head");
        holey[3 * BLOCK_SIZE..].copy_from_slice(b"tail!");
        ok(fs::write(root.join("holey"), holey));
        ok(fs::write(root.join("run.sh"), "#!/bin/sh\n"));
        ok(fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4755)));
        ok(fs::write(root.join("tool"), "#!/bin/sh\n"));
        ok(fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o755)));
        ok(fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)));
        ok(fs::set_permissions(root.join("etc/deep"), fs::Permissions::from_mode(0o2750)));
        ok(symlink("etc/hostname", root.join("link")));
        ok(symlink("/nowhere/at/all", root.join("etc/dangling")));
        for i in 0..300 {
            ok(fs::write(root.join("etc").join(format!("f{i:03}")), format!("{i}")));
        }
        // Enough entries for a listing over 64 KiB (an extended directory inode).
        for i in 0..2000 {
            ok(fs::write(root.join("many").join(format!("a-fairly-long-file-name-number-{i:05}")), ""));
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Entry {
        Dir(u16),
        File(u16, Vec<u8>),
        Link(PathBuf),
    }

    /// What the source tree holds, keyed like backhand's full paths.
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let path = root.join(rel);
        let meta = ok(fs::symlink_metadata(&path));
        let mode = (meta.permissions().mode() & 0o7777) as u16;
        let key = Path::new("/").join(rel);
        if meta.is_dir() {
            out.insert(key, Entry::Dir(mode));
            for e in ok(fs::read_dir(&path)) {
                walk(root, &rel.join(ok(e).file_name()), out);
            }
        } else if meta.file_type().is_symlink() {
            out.insert(key, Entry::Link(ok(fs::read_link(&path))));
        } else {
            out.insert(key, Entry::File(mode, ok(fs::read(&path))));
        }
    }

    /// Read an image with backhand (an independent implementation).
    fn read_back(image: &Path) -> BTreeMap<PathBuf, Entry> {
        use backhand::{FilesystemReader, InnerNode};
        let f = std::io::BufReader::new(ok(File::open(image)));
        let fs = FilesystemReader::from_reader(f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs.block_size, BLOCK_SIZE as u32);
        assert_eq!(fs.mod_time, 0);
        let mut out = BTreeMap::new();
        for node in fs.files() {
            let h = node.header;
            assert_eq!((h.uid, h.gid, h.mtime), (0, 0, 0), "{:?}", node.fullpath);
            let entry = match &node.inner {
                InnerNode::Dir(_) => Entry::Dir(h.permissions),
                InnerNode::File(file) => {
                    let mut data = Vec::new();
                    ok(fs.file(file).reader().read_to_end(&mut data));
                    Entry::File(h.permissions, data)
                }
                InnerNode::Symlink(s) => {
                    assert_eq!(h.permissions, 0o777);
                    Entry::Link(s.link.clone())
                }
                other => panic!("unexpected {other:?}"),
            };
            out.insert(node.fullpath.clone(), entry);
        }
        out
    }

    #[test]
    fn same_tree_same_bytes_and_a_valid_superblock() {
        let d = ok(tempfile::tempdir());
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        tree(&a);
        tree(&b);
        let ia = build_layer(&a, &d.path().join("a.sqfs")).unwrap_or_else(|e| panic!("{e}"));
        let ib = build_layer(&b, &d.path().join("b.sqfs")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ia, ib);
        let img = ok(fs::read(d.path().join("a.sqfs")));
        assert_eq!(img, ok(fs::read(d.path().join("b.sqfs"))));
        assert_eq!(img.len() as u64, ia.size);
        assert_eq!(ia.size % PAD, 0);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&img)), ia.digest);
        assert_eq!(&img[..4], b"hsqs");
        let u32_at = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        // root, etc (+300 files, hostname, dangling, deep, er, empty-file),
        // many (+2000), tmp, big, holey, run.sh, tool, link.
        assert_eq!(u32_at(4), 1 + (1 + 300 + 5) + (1 + 2000) + 1 + 5);
        assert_eq!((u32_at(8), u32_at(12), u32_at(16)), (0, BLOCK_SIZE as u32, 0));
        let bytes_used = u64_at(40);
        assert!(bytes_used <= ia.size && bytes_used > ia.size - PAD);
        assert!(img[bytes_used as usize..].iter().all(|b| *b == 0));
        // Tables are in the order the kernel checks.
        let (id, inode, dir) = (u64_at(48), u64_at(64), u64_at(72));
        assert!(inode < dir && dir < id && id < bytes_used);
        assert_eq!(u64_at(56), INVALID);
    }

    #[test]
    fn reads_back_with_names_modes_and_contents() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        tree(&src);
        ok(fs::set_permissions(&src, fs::Permissions::from_mode(0o750)));
        let out = d.path().join("layer.sqfs");
        build_layer(&src, &out).unwrap_or_else(|e| panic!("{e}"));
        let mut want = BTreeMap::new();
        walk(&src, Path::new(""), &mut want);
        let got = read_back(&out);
        assert_eq!(got.len(), want.len());
        for (path, w) in &want {
            assert_eq!(got.get(path), Some(w), "{path:?}");
        }
        assert_eq!(got.get(Path::new("/")), Some(&Entry::Dir(0o750)));
        assert_eq!(got.get(Path::new("/run.sh")), Some(&Entry::File(0o4755, b"#!/bin/sh\n".to_vec())));
        assert_eq!(got.get(Path::new("/tmp")), Some(&Entry::Dir(0o1777)));
        // Only the partial-free output is left.
        let names: Vec<_> = ok(fs::read_dir(d.path())).filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_empty_directory_is_a_valid_layer() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir(&src));
        let out = d.path().join("empty.sqfs");
        let img = build_layer(&src, &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.size, PAD);
        assert_eq!(read_back(&out).len(), 1);
    }

    #[test]
    fn refused_inputs_leave_nothing_behind() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir_all(src.join("a")));
        ok(fs::write(src.join("a/file"), "x"));
        let _listener = ok(std::os::unix::net::UnixListener::bind(src.join("a/sock")));
        let out = d.path().join("x.sqfs");
        let r = build_layer(&src, &out);
        assert!(
            matches!(&r, Err(SquashfsError::Unsupported { path, kind: "socket" }) if path.ends_with("a/sock")),
            "{r:?}"
        );
        let r = build_layer(&src.join("a/file"), &out);
        assert!(matches!(r, Err(SquashfsError::NotADirectory(_))), "{r:?}");
        let r = build_layer(&d.path().join("missing"), &out);
        assert!(matches!(r, Err(SquashfsError::Io { .. })), "{r:?}");
        ok(fs::remove_file(src.join("a/sock")));
        // Unwritable destination: the error names it and no partial file stays.
        let r = build_layer(&src, &d.path().join("no/such/dir/x.sqfs"));
        assert!(matches!(&r, Err(SquashfsError::Io { path, .. }) if path.ends_with("x.sqfs.partial")), "{r:?}");
        assert!(!out.exists() && !d.path().join("x.sqfs.partial").exists());
    }
}
