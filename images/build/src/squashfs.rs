//! Layer images: squashfs 4.0 with zlib ("gzip") compression, written from
//! an in-memory [`Tree`] by our own writer (no external tool).
//!
//! Kept as the tree has them: names (sorted by bytes), owners (any 32-bit
//! uid and gid), permission bits (with setuid, setgid and sticky), symlink
//! targets, extended attributes in the `user.`, `trusted.` and `security.`
//! namespaces (so overlayfs's `trusted.overlay.opaque` and file
//! capabilities survive), character and block devices with their numbers
//! (a character device 0/0 is an overlayfs whiteout), FIFOs, sockets, and
//! hard links (one inode written once, every name pointing at it, its link
//! count the number of names).
//!
//! Every inode's modification time is the tree's ([`Meta::mtime`]: what the
//! archive recorded, or a directory source's clamped time).
//! Normalised, and nothing else: the superblock's mkfs time is 0, and inode
//! numbers are assigned in write order (a
//! directory's children by name before the directory itself; a hard-linked
//! inode where it is first reached). So the same tree gives the same bytes
//! for a given `miniz_oxide` version (compressed bytes may change if the
//! compressor changes).
//!
//! Refused, before anything is written: an extended attribute in any other
//! namespace (`system.posix_acl_access`, ...: squashfs has no encoding for
//! them), one whose name is over 255 bytes or whose value is over 64 KiB; a
//! device number beyond a 12-bit major or 20-bit minor (squashfs stores the
//! kernel's 32-bit `new_encode_dev` form); an empty symlink target or one
//! over 4095 bytes; more than 65535 distinct uids and gids; a directory
//! reachable by two names; a name that is not a valid file name (see
//! [`check_name`]). File data the tree cannot deliver (a host file that
//! changed size, a spool range past the spool's end) fails the write.
//!
//! Layout: 128 KiB blocks, no fragments (each file's tail is its own short
//! block), all-zero blocks stored as holes, no export table, no duplicate
//! detection, no directory index. Limits: files and the image below 4 GiB.
//! The image is padded with zeroes to a 4 KiB multiple (as mksquashfs does;
//! it keeps the image a whole number of device blocks); `size` and `digest`
//! cover the padded file. The image is streamed to `<out>.partial` in the
//! same directory, which is renamed to `out` when complete and removed on
//! error.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::scan::{self, ScanError};
#[cfg(doc)]
use crate::tree::Meta;
use crate::tree::{check_name, FileData, InodeId, Kind, Tree, ROOT};

const MAGIC: u32 = 0x7371_7368;
const BLOCK_SIZE: usize = 128 * 1024;
const BLOCK_LOG: u16 = 17;
const METADATA_SIZE: usize = 8192;
const SUPERBLOCK_SIZE: usize = 96;
const INVALID: u64 = u64::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
const NO_XATTR: u32 = u32::MAX;
const COMPRESSION_ZLIB: u16 = 1;
const FLAG_NO_FRAGMENTS: u16 = 0x0010;
const FLAG_NO_XATTRS: u16 = 0x0200;
const UNCOMPRESSED_DATA_BIT: u32 = 1 << 24;
const UNCOMPRESSED_META_BIT: u16 = 0x8000;
const PAD: u64 = 4096;
const LEVEL: u8 = 9;

/// Basic inode types; the extended type of each is the basic one + 7.
const DIR: u16 = 1;
const FILE: u16 = 2;
const SYMLINK: u16 = 3;
const BLOCK_DEVICE: u16 = 4;
const CHAR_DEVICE: u16 = 5;
const FIFO: u16 = 6;
const SOCKET: u16 = 7;
const EXTENDED: u16 = 7;

/// The xattr namespaces squashfs encodes, and their prefix ids.
const XATTR_PREFIXES: [(&[u8], u16); 3] = [(b"user.", 0), (b"trusted.", 1), (b"security.", 2)];
/// Linux's limits on an xattr name and value (XATTR_NAME_MAX, XATTR_SIZE_MAX).
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
/// The longest symlink target Linux accepts (PATH_MAX less the NUL).
const SYMLINK_MAX: usize = 4095;
/// The superblock counts ids in 16 bits.
const MAX_IDS: usize = 65535;

/// A built layer image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerImage {
    /// Image size in bytes (padded to 4 KiB).
    pub size: u64,
    /// sha256 of the whole image file.
    pub digest: [u8; 32],
}

/// Why a layer could not be built. Paths starting with `/` are paths
/// inside the layer; others are host files.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// Reading the source directory ([`build_layer`]).
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Reading file data or writing the image.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A directory entry whose name is not a valid file name.
    #[error("{0}: not a valid file name (empty, \".\", \"..\", holding '/' or NUL, or longer than 255 bytes)")]
    BadName(PathBuf),
    /// An extended attribute squashfs cannot hold.
    #[error("{path}: extended attribute {name:?} cannot be stored in a layer: {reason}")]
    Xattr {
        /// The entry.
        path: PathBuf,
        /// The attribute's full name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A device number squashfs cannot encode.
    #[error("{path}: device {major}:{minor} cannot be stored in a layer (majors up to 4095, minors up to 1048575)")]
    DeviceNumber {
        /// The entry.
        path: PathBuf,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A symlink target that is empty or longer than 4095 bytes.
    #[error("{0}: symlink target is empty or longer than 4095 bytes")]
    BadSymlink(PathBuf),
    /// More distinct owners than the id table holds.
    #[error("the tree uses {0} distinct uids and gids; a layer holds at most 65535")]
    TooManyIds(usize),
    /// A directory reached by a second name (directories cannot be hard links).
    #[error("{0}: directory reachable by more than one name")]
    LinkedDirectory(PathBuf),
    /// File data in the spool, but the tree has no spool file.
    #[error("{0}: file data is in a spool file but the tree has none")]
    NoSpool(PathBuf),
    /// The spool file ends before a file's data does.
    #[error("{0}: the spool file ends before this file's data")]
    SpoolShort(PathBuf),
    /// A host file changed size while it was read.
    #[error("{0}: file changed while the layer was built")]
    Changed(PathBuf),
    /// Beyond what this writer addresses (4 GiB metadata tables).
    #[error("{0}: files and layers of 4 GiB or more are not supported")]
    TooLarge(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SquashfsError + '_ {
    move |error| SquashfsError::Io { path: path.to_owned(), error }
}

/// The squashfs prefix id of an xattr name, and the name without it.
fn xattr_prefix(name: &[u8]) -> Option<(u16, &[u8])> {
    XATTR_PREFIXES.iter().find_map(|(p, id)| name.strip_prefix(*p).filter(|rest| !rest.is_empty()).map(|r| (*id, r)))
}

/// The basic squashfs type of an inode.
fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => DIR,
        Kind::File(_) => FILE,
        Kind::Symlink(_) => SYMLINK,
        Kind::BlockDevice { .. } => BLOCK_DEVICE,
        Kind::CharDevice { .. } => CHAR_DEVICE,
        Kind::Fifo => FIFO,
        Kind::Socket => SOCKET,
    }
}

/// What the writer needs to know before it writes: inode numbers, names
/// for messages, the id table. Building it checks everything that can be
/// refused.
struct Plan {
    /// Inode number of every reachable inode, by id (0: not reachable).
    number: Vec<u32>,
    /// The path an inode was first reached by, for messages.
    path: Vec<PathBuf>,
    /// Names of each inode.
    links: Vec<u32>,
    /// Every uid and gid used, ascending.
    ids: Vec<u32>,
    /// How many inodes are written.
    total: u32,
}

struct Planner<'a> {
    tree: &'a Tree,
    seen: Vec<bool>,
    plan: Plan,
    ids: BTreeSet<u32>,
}

impl Planner<'_> {
    /// Number `dir`'s subtree in write order (children by name, then the
    /// directory), checking every inode reached for the first time.
    fn dir(&mut self, dir: InodeId) -> Result<(), SquashfsError> {
        for (name, child) in self.tree.entries(dir) {
            let path = self.plan.path[dir].join(OsStr::from_bytes(name));
            if check_name(name).is_err() {
                return Err(SquashfsError::BadName(path));
            }
            let is_dir = matches!(self.tree.inode(child).kind, Kind::Dir(_));
            if std::mem::replace(&mut self.seen[child], true) {
                if is_dir {
                    return Err(SquashfsError::LinkedDirectory(path));
                }
                continue;
            }
            self.plan.path[child] = path;
            self.check(child)?;
            if is_dir {
                self.dir(child)?;
            } else {
                self.number(child);
            }
        }
        self.number(dir);
        Ok(())
    }

    fn number(&mut self, id: InodeId) {
        self.plan.total += 1;
        self.plan.number[id] = self.plan.total;
    }

    fn check(&mut self, id: InodeId) -> Result<(), SquashfsError> {
        let inode = self.tree.inode(id);
        let path = &self.plan.path[id];
        self.ids.insert(inode.meta.uid);
        self.ids.insert(inode.meta.gid);
        for (name, value) in &inode.meta.xattrs {
            let refuse = |reason| {
                Err(SquashfsError::Xattr {
                    path: path.clone(),
                    name: String::from_utf8_lossy(name).into_owned(),
                    reason,
                })
            };
            if xattr_prefix(name).is_none() {
                return refuse(
                    "only user.*, trusted.* and security.* attributes can be stored (squashfs has no other namespaces)",
                );
            }
            if name.len() > XATTR_NAME_MAX {
                return refuse("name longer than 255 bytes");
            }
            if value.len() > XATTR_SIZE_MAX {
                return refuse("value larger than 64 KiB");
            }
        }
        match &inode.kind {
            Kind::Symlink(t) if t.is_empty() || t.len() > SYMLINK_MAX => Err(SquashfsError::BadSymlink(path.clone())),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor }
                if *major > 0xfff || *minor > 0xf_ffff =>
            {
                Err(SquashfsError::DeviceNumber { path: path.clone(), major: *major, minor: *minor })
            }
            _ => Ok(()),
        }
    }
}

fn plan(tree: &Tree) -> Result<Plan, SquashfsError> {
    let n = tree.inodes.len();
    let mut p = Planner {
        tree,
        seen: vec![false; n],
        plan: Plan {
            number: vec![0; n],
            path: vec![PathBuf::new(); n],
            links: tree.link_counts(),
            ids: Vec::new(),
            total: 0,
        },
        ids: BTreeSet::new(),
    };
    p.seen[ROOT] = true;
    p.plan.path[ROOT] = PathBuf::from("/");
    p.check(ROOT)?;
    p.dir(ROOT)?;
    if p.ids.len() > MAX_IDS {
        return Err(SquashfsError::TooManyIds(p.ids.len()));
    }
    p.plan.ids = p.ids.into_iter().collect();
    Ok(p.plan)
}

/// Writes 8 KiB metadata blocks, each compressed when that helps.
#[derive(Default)]
struct Metadata {
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Where each finished block starts in `out`.
    starts: Vec<u64>,
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
        self.starts.push(self.out.len() as u64);
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

    fn finish(self) -> Vec<u8> {
        self.finish_with_starts().0
    }

    /// The table, and where each of its blocks starts (for lookup tables).
    fn finish_with_starts(mut self) -> (Vec<u8>, Vec<u64>) {
        self.flush();
        (self.out, self.starts)
    }
}

/// A lookup table (id table, xattr id table): its metadata blocks, and the
/// list of their absolute positions once the blocks are written at `at`.
fn lookup_table(entries: &[u8], at: u64) -> (Vec<u8>, Vec<u8>) {
    let mut m = Metadata::default();
    m.push(entries);
    let (blocks, starts) = m.finish_with_starts();
    let index = starts.iter().flat_map(|s| (at + s).to_le_bytes()).collect();
    (blocks, index)
}

/// What a directory listing needs to know of a written child.
struct Written<'t> {
    name: &'t [u8],
    kind: u16,
    block: u32,
    offset: u16,
    number: u32,
}

/// Where a file's bytes come from while it is written.
enum Source<'a> {
    Host(File),
    Spool(&'a File, u64),
}

impl Source<'_> {
    /// Fill `buf` unless the data ends first; returns the bytes read.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Host(f) => read_full(f, buf),
            Source::Spool(f, at) => {
                let mut n = 0;
                while n < buf.len() {
                    match f.read_at(&mut buf[n..], *at + n as u64) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                *at += n as u64;
                Ok(n)
            }
        }
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

struct Writer<'a> {
    tree: &'a Tree,
    plan: &'a Plan,
    /// The image being written, and its path for errors.
    out: File,
    out_path: &'a Path,
    /// Bytes written to `out` so far.
    pos: u64,
    inodes: Metadata,
    dirs: Metadata,
    /// Where each non-directory inode was written (block, offset), once it is.
    written: Vec<Option<(u32, u16)>>,
    /// Key/value pairs of every distinct xattr set.
    xattr_kv: Metadata,
    /// The xattr id table entries (16 bytes each).
    xattr_ids: Vec<u8>,
    /// Index of each distinct xattr set already written.
    xattr_sets: BTreeMap<&'a BTreeMap<Vec<u8>, Vec<u8>>, u32>,
}

impl<'a> Writer<'a> {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), SquashfsError> {
        self.out.write_all(bytes).map_err(io(self.out_path))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// The common inode header of `id`, as type `kind`.
    fn header(&self, kind: u16, id: InodeId) -> Vec<u8> {
        let meta = &self.tree.inode(id).meta;
        // Every id is in the table (the plan collected them).
        let index = |v: u32| self.plan.ids.binary_search(&v).unwrap_or(0) as u16;
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&meta.mode.to_le_bytes());
        v.extend_from_slice(&index(meta.uid).to_le_bytes());
        v.extend_from_slice(&index(meta.gid).to_le_bytes());
        v.extend_from_slice(&meta.mtime.to_le_bytes());
        v.extend_from_slice(&self.plan.number[id].to_le_bytes());
        v
    }

    /// The xattr index of `id`'s attributes (written the first time this
    /// set is seen), or [`NO_XATTR`].
    fn xattr_index(&mut self, id: InodeId) -> u32 {
        let tree: &'a Tree = self.tree;
        let set = &tree.inode(id).meta.xattrs;
        if set.is_empty() {
            return NO_XATTR;
        }
        if let Some(i) = self.xattr_sets.get(set) {
            return *i;
        }
        let mut bytes = Vec::new();
        for (name, value) in set {
            // The plan refused every name without a known prefix.
            let (prefix, rest) = xattr_prefix(name).unwrap_or((0, name));
            bytes.extend_from_slice(&prefix.to_le_bytes());
            bytes.extend_from_slice(&(rest.len() as u16).to_le_bytes());
            bytes.extend_from_slice(rest);
            bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
            bytes.extend_from_slice(value);
        }
        let (block, offset) = self.xattr_kv.pos();
        self.xattr_kv.push(&bytes);
        let index = (self.xattr_ids.len() / 16) as u32;
        self.xattr_ids.extend_from_slice(&((u64::from(block) << 16) | u64::from(offset)).to_le_bytes());
        self.xattr_ids.extend_from_slice(&(set.len() as u32).to_le_bytes());
        self.xattr_ids.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.xattr_sets.insert(set, index);
        index
    }

    /// Append an inode to the inode table; returns where it starts.
    fn push_inode(&mut self, bytes: &[u8]) -> (u32, u16) {
        let at = self.inodes.pos();
        self.inodes.push(bytes);
        at
    }

    /// Write directory `dir` (its subtree first) whose parent has inode
    /// number `parent`; returns where its inode starts.
    fn dir(&mut self, dir: InodeId, parent: u32) -> Result<(u32, u16), SquashfsError> {
        let tree: &'a Tree = self.tree;
        let mut children = Vec::new();
        let mut subdirs = 0u32;
        for (name, child) in tree.entries(dir) {
            let kind = &tree.inode(child).kind;
            let (block, offset) = match kind {
                Kind::Dir(_) => {
                    subdirs += 1;
                    self.dir(child, self.plan.number[dir])?
                }
                _ => match self.written[child] {
                    Some(at) => at,
                    None => {
                        let at = self.leaf(child)?;
                        self.written[child] = Some(at);
                        at
                    }
                },
            };
            children.push(Written { name, kind: basic_type(kind), block, offset, number: self.plan.number[child] });
        }
        let (start, offset, size) = self.listing(&children);
        let xattr = self.xattr_index(dir);
        let nlink = 2 + subdirs;
        let v = if size <= 0xffff && xattr == NO_XATTR {
            let mut v = self.header(DIR, dir);
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&nlink.to_le_bytes());
            v.extend_from_slice(&(size as u16).to_le_bytes());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&parent.to_le_bytes());
            v
        } else {
            let mut v = self.header(DIR + EXTENDED, dir);
            v.extend_from_slice(&nlink.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&parent.to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // no index
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&xattr.to_le_bytes());
            v
        };
        Ok(self.push_inode(&v))
    }

    /// Write a non-directory inode (and a file's data); returns where its
    /// inode starts.
    fn leaf(&mut self, id: InodeId) -> Result<(u32, u16), SquashfsError> {
        let tree: &'a Tree = self.tree;
        let xattr = self.xattr_index(id);
        let nlink = self.plan.links[id];
        let ext = xattr != NO_XATTR;
        let v = match &tree.inode(id).kind {
            Kind::File(data) => {
                let start = self.pos;
                let len = data.len();
                let (sizes, sparse) = self.file_blocks(id, data)?;
                let mut v = if !ext && nlink == 1 && start <= u64::from(u32::MAX) && len <= u64::from(u32::MAX) {
                    let mut v = self.header(FILE, id);
                    v.extend_from_slice(&(start as u32).to_le_bytes());
                    v.extend_from_slice(&NO_FRAGMENT.to_le_bytes());
                    v.extend_from_slice(&0u32.to_le_bytes());
                    v.extend_from_slice(&(len as u32).to_le_bytes());
                    v
                } else {
                    let mut v = self.header(FILE + EXTENDED, id);
                    v.extend_from_slice(&start.to_le_bytes());
                    v.extend_from_slice(&len.to_le_bytes());
                    v.extend_from_slice(&sparse.to_le_bytes());
                    v.extend_from_slice(&nlink.to_le_bytes());
                    v.extend_from_slice(&NO_FRAGMENT.to_le_bytes());
                    v.extend_from_slice(&0u32.to_le_bytes());
                    v.extend_from_slice(&xattr.to_le_bytes());
                    v
                };
                for s in sizes {
                    v.extend_from_slice(&s.to_le_bytes());
                }
                v
            }
            Kind::Symlink(target) => {
                let mut v = self.header(if ext { SYMLINK + EXTENDED } else { SYMLINK }, id);
                v.extend_from_slice(&nlink.to_le_bytes());
                v.extend_from_slice(&(target.len() as u32).to_le_bytes());
                v.extend_from_slice(target);
                if ext {
                    v.extend_from_slice(&xattr.to_le_bytes());
                }
                v
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                let kind = basic_type(&tree.inode(id).kind);
                let mut v = self.header(if ext { kind + EXTENDED } else { kind }, id);
                v.extend_from_slice(&nlink.to_le_bytes());
                // The kernel's new_encode_dev (checked to fit by the plan).
                let dev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                v.extend_from_slice(&dev.to_le_bytes());
                if ext {
                    v.extend_from_slice(&xattr.to_le_bytes());
                }
                v
            }
            kind @ (Kind::Fifo | Kind::Socket) => {
                let kind = basic_type(kind);
                let mut v = self.header(if ext { kind + EXTENDED } else { kind }, id);
                v.extend_from_slice(&nlink.to_le_bytes());
                if ext {
                    v.extend_from_slice(&xattr.to_le_bytes());
                }
                v
            }
            // Directories are written by `dir`.
            Kind::Dir(_) => return Err(SquashfsError::LinkedDirectory(self.plan.path[id].clone())),
        };
        Ok(self.push_inode(&v))
    }

    /// Append a file's data blocks; returns the block size words and the
    /// bytes left as holes (all-zero blocks, stored as size 0).
    fn file_blocks(&mut self, id: InodeId, data: &FileData) -> Result<(Vec<u32>, u64), SquashfsError> {
        let tree: &'a Tree = self.tree;
        let layer_path = &self.plan.path[id];
        let (mut src, shown, short) = match data {
            FileData::Host { path, .. } => {
                let f = File::open(path).map_err(io(path))?;
                (Source::Host(f), path, SquashfsError::Changed(path.clone()))
            }
            FileData::Spool { offset, .. } => {
                let spool = tree.spool.as_ref().ok_or_else(|| SquashfsError::NoSpool(layer_path.clone()))?;
                (Source::Spool(spool, *offset), layer_path, SquashfsError::SpoolShort(layer_path.clone()))
            }
        };
        let mut sizes = Vec::new();
        let mut sparse = 0;
        let mut block = vec![0u8; BLOCK_SIZE];
        let mut left = data.len();
        while left > 0 {
            let want = (BLOCK_SIZE as u64).min(left) as usize;
            let got = src.read(&mut block[..want]).map_err(io(shown))?;
            if got != want {
                return Err(short);
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
        // A host file that grew since it was scanned.
        if let Source::Host(f) = &mut src {
            if read_full(f, &mut [0u8; 1]).map_err(io(shown))? != 0 {
                return Err(short);
            }
        }
        Ok((sizes, sparse))
    }

    /// Write a directory listing; returns (block, offset, file_size).
    fn listing(&mut self, children: &[Written<'_>]) -> (u32, u16, u32) {
        let (start, offset) = self.dirs.pos();
        let mut bytes = Vec::new();
        let mut i = 0;
        while i < children.len() {
            let first = &children[i];
            // One header per run: at most 256 entries whose inodes share a
            // metadata block and whose numbers fit an i16 difference (hard
            // links may point anywhere, so any entry can start a new run).
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
                bytes.extend_from_slice(c.name);
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

/// Build a layer image from the host directory `src_dir` into `out`:
/// [`scan::scan_dir`] then [`write_layer`], so owners, modes, xattrs,
/// special files and hard links are kept as they are on disk.
pub fn build_layer(src_dir: &Path, out: &Path) -> Result<LayerImage, SquashfsError> {
    let tree = scan::scan_dir(src_dir)?;
    write_layer(&tree, out)
}

/// Write the inodes of `tree` reachable from its root as a layer image at
/// `out`.
///
/// The whole tree is checked (and refused contents reported) before
/// anything is written; the image goes to `<out>.partial` and is renamed to
/// `out` only when complete, so a failure leaves no output.
pub fn write_layer(tree: &Tree, out: &Path) -> Result<LayerImage, SquashfsError> {
    let plan = plan(tree)?;
    let tmp = partial_path(out);
    let result =
        write_image(tree, &plan, out, &tmp).and_then(|image| fs::rename(&tmp, out).map(|()| image).map_err(io(out)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_image(tree: &Tree, plan: &Plan, out_path: &Path, tmp: &Path) -> Result<LayerImage, SquashfsError> {
    let out = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(tmp).map_err(io(tmp))?;
    let mut w = Writer {
        tree,
        plan,
        out,
        out_path: tmp,
        pos: 0,
        inodes: Metadata::default(),
        dirs: Metadata::default(),
        written: vec![None; tree.inodes.len()],
        xattr_kv: Metadata::default(),
        xattr_ids: Vec::new(),
        xattr_sets: BTreeMap::new(),
    };
    w.emit(&[0; SUPERBLOCK_SIZE])?; // written for real at the end
                                    // squashfs-tools gives the root a parent number one past the last inode.
    let (block, offset) = w.dir(ROOT, plan.total + 1)?;
    let root_ref = (u64::from(block) << 16) | u64::from(offset);

    let inodes = std::mem::take(&mut w.inodes).finish();
    let dirs = std::mem::take(&mut w.dirs).finish();
    let xattr_kv = std::mem::take(&mut w.xattr_kv).finish();
    if [inodes.len(), dirs.len(), xattr_kv.len()].iter().any(|n| *n as u64 > u64::from(u32::MAX)) {
        return Err(SquashfsError::TooLarge(out_path.to_owned()));
    }
    let ids: Vec<u8> = plan.ids.iter().flat_map(|id| id.to_le_bytes()).collect();

    // Tables in the order the kernel expects, each index ending exactly
    // where the next table starts: inodes, directories, (no fragments),
    // ids, then the xattr key/values, xattr ids and their index, which
    // must end at bytes_used.
    let inode_table = w.pos;
    w.emit(&inodes)?;
    let dir_table = w.pos;
    w.emit(&dirs)?;
    // No fragments: like mksquashfs, the (empty) fragment table "starts"
    // where the next table does.
    let id_blocks = w.pos;
    let (id_table, id_index) = lookup_table(&ids, id_blocks);
    w.emit(&id_table)?;
    let id_index_start = w.pos;
    w.emit(&id_index)?;
    let xattr_table = if w.xattr_ids.is_empty() {
        INVALID
    } else {
        let kv_start = w.pos;
        w.emit(&xattr_kv)?;
        let ids_start = w.pos;
        let (table, index) = lookup_table(&std::mem::take(&mut w.xattr_ids), ids_start);
        let count = (w.xattr_sets.len() as u32).to_le_bytes();
        w.emit(&table)?;
        let header = w.pos;
        w.emit(&kv_start.to_le_bytes())?;
        w.emit(&count)?;
        w.emit(&0u32.to_le_bytes())?;
        w.emit(&index)?;
        header
    };
    let bytes_used = w.pos;
    let padded = bytes_used.div_ceil(PAD) * PAD;
    w.emit(&vec![0; (padded - bytes_used) as usize])?;

    let flags = FLAG_NO_FRAGMENTS | if xattr_table == INVALID { FLAG_NO_XATTRS } else { 0 };
    let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE);
    sb.extend_from_slice(&MAGIC.to_le_bytes());
    sb.extend_from_slice(&plan.total.to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // mkfs time
    sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb.extend_from_slice(&0u32.to_le_bytes()); // fragments
    sb.extend_from_slice(&COMPRESSION_ZLIB.to_le_bytes());
    sb.extend_from_slice(&BLOCK_LOG.to_le_bytes());
    sb.extend_from_slice(&flags.to_le_bytes());
    sb.extend_from_slice(&(plan.ids.len() as u16).to_le_bytes());
    sb.extend_from_slice(&4u16.to_le_bytes()); // version 4.0
    sb.extend_from_slice(&0u16.to_le_bytes());
    // root inode, bytes used, id table, xattr table, inode table, directory
    // table, fragment table, export table.
    for v in [root_ref, bytes_used, id_index_start, xattr_table, inode_table, dir_table, id_blocks, INVALID] {
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
    use crate::scan::tests::{is_root, ok, set_xattr};
    use crate::tree::{Inode, Meta};
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::process::Command;

    fn built(r: Result<LayerImage, SquashfsError>) -> LayerImage {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// What one entry of a layer is, as every reader here reports it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum What {
        Dir,
        File(Vec<u8>),
        Link(PathBuf),
        Char(u32, u32),
        Block(u32, u32),
        Fifo,
        Socket,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Entry {
        mode: u16,
        uid: u32,
        gid: u32,
        mtime: u32,
        what: What,
    }

    /// How the kernel decodes a squashfs device number (new_decode_dev).
    fn decode_dev(dev: u32) -> (u32, u32) {
        ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
    }

    /// Read an image with backhand (an independent implementation).
    fn read_back(image: &Path) -> BTreeMap<PathBuf, Entry> {
        use backhand::{FilesystemReader, InnerNode};
        let f = std::io::BufReader::new(ok(File::open(image)));
        let fs = FilesystemReader::from_reader(f).unwrap_or_else(|e| panic!("backhand: {e}"));
        assert_eq!(fs.block_size, BLOCK_SIZE as u32);
        assert_eq!(fs.mod_time, 0);
        let mut out = BTreeMap::new();
        for node in fs.files() {
            let h = node.header;
            let what = match &node.inner {
                InnerNode::Dir(_) => What::Dir,
                InnerNode::File(file) => {
                    let mut data = Vec::new();
                    ok(fs.file(file).reader().read_to_end(&mut data));
                    What::File(data)
                }
                InnerNode::Symlink(s) => What::Link(s.link.clone()),
                InnerNode::CharacterDevice(d) => {
                    let (ma, mi) = decode_dev(d.device_number);
                    What::Char(ma, mi)
                }
                InnerNode::BlockDevice(d) => {
                    let (ma, mi) = decode_dev(d.device_number);
                    What::Block(ma, mi)
                }
                InnerNode::NamedPipe => What::Fifo,
                InnerNode::Socket => What::Socket,
            };
            out.insert(
                node.fullpath.clone(),
                Entry { mode: h.permissions, uid: h.uid, gid: h.gid, mtime: h.mtime, what },
            );
        }
        out
    }

    /// The bytes of a tree's file.
    fn file_bytes(t: &Tree, data: &FileData) -> Vec<u8> {
        match data {
            FileData::Host { path, .. } => ok(fs::read(path)),
            FileData::Spool { offset, len } => {
                let mut v = vec![0u8; *len as usize];
                ok(t.spool.as_ref().unwrap_or_else(|| panic!("no spool")).read_exact_at(&mut v, *offset));
                v
            }
        }
    }

    /// Every path of a tree (`/` first), with its inode id.
    fn paths(t: &Tree) -> Vec<(PathBuf, InodeId)> {
        fn walk(t: &Tree, dir: InodeId, at: &Path, out: &mut Vec<(PathBuf, InodeId)>) {
            for (name, id) in t.entries(dir) {
                let p = at.join(OsStr::from_bytes(name));
                out.push((p.clone(), id));
                if matches!(t.inode(id).kind, Kind::Dir(_)) {
                    walk(t, id, &p, out);
                }
            }
        }
        let mut out = vec![(PathBuf::from("/"), ROOT)];
        walk(t, ROOT, Path::new("/"), &mut out);
        out
    }

    /// What a layer written from `t` must hold, keyed like backhand's paths.
    fn expected(t: &Tree) -> BTreeMap<PathBuf, Entry> {
        paths(t)
            .into_iter()
            .map(|(p, id)| {
                let i = t.inode(id);
                let what = match &i.kind {
                    Kind::Dir(_) => What::Dir,
                    Kind::File(d) => What::File(file_bytes(t, d)),
                    Kind::Symlink(s) => What::Link(PathBuf::from(OsStr::from_bytes(s))),
                    Kind::CharDevice { major, minor } => What::Char(*major, *minor),
                    Kind::BlockDevice { major, minor } => What::Block(*major, *minor),
                    Kind::Fifo => What::Fifo,
                    Kind::Socket => What::Socket,
                };
                (p, Entry { mode: i.meta.mode, uid: i.meta.uid, gid: i.meta.gid, mtime: i.meta.mtime, what })
            })
            .collect()
    }

    /// Sets of paths naming one inode (hard links), for comparing trees.
    fn link_groups(t: &Tree) -> Vec<Vec<PathBuf>> {
        let mut by_id: BTreeMap<InodeId, Vec<PathBuf>> = BTreeMap::new();
        for (p, id) in paths(t) {
            by_id.entry(id).or_default().push(p);
        }
        let mut groups: Vec<Vec<PathBuf>> = by_id.into_values().filter(|g| g.len() > 1).collect();
        groups.sort();
        groups
    }

    fn xattr_map(t: &Tree) -> BTreeMap<PathBuf, BTreeMap<Vec<u8>, Vec<u8>>> {
        paths(t).into_iter().map(|(p, id)| (p, t.inode(id).meta.xattrs.clone())).collect()
    }

    /// Metadata with a time that differs between modes and owners (and
    /// uses all 32 bits for mode 0o777), so a time written to the wrong
    /// inode or truncated shows.
    fn meta(mode: u16, uid: u32, gid: u32, xattrs: &[(&str, &[u8])]) -> Meta {
        let mtime = if mode == 0o777 { u32::MAX - uid } else { 1_700_000_000 + u32::from(mode) * 7 + uid };
        Meta {
            mode,
            uid,
            gid,
            xattrs: xattrs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect(),
            mtime,
        }
    }

    fn node(meta: Meta, kind: Kind) -> Inode {
        Inode { meta, kind }
    }

    /// Append `data` to the tree's spool file (created on first use).
    fn spooled(t: &mut Tree, data: &[u8]) -> Kind {
        use std::os::unix::fs::FileExt as _;
        let f = t.spool.get_or_insert_with(|| ok(tempfile::tempfile()));
        let offset = ok(f.metadata()).len();
        ok(f.write_all_at(data, offset));
        Kind::File(FileData::Spool { offset, len: data.len() as u64 })
    }

    fn add(t: &mut Tree, path: &str, inode: Inode) -> InodeId {
        ok(t.insert(path.as_bytes(), inode))
    }

    fn dir(t: &mut Tree, path: &str, meta: Meta) -> InodeId {
        add(t, path, node(meta, Kind::Dir(BTreeMap::new())))
    }

    /// A v2 file capability granting cap_net_raw (bit 13), as setcap writes it.
    const CAP_NET_RAW: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Everything a layer can hold, built in memory.
    fn rich_tree() -> Tree {
        let d = meta(0o755, 0, 0, &[]);
        let tagged: &[(&str, &[u8])] = &[("trusted.t", b"1")];
        let mut t = Tree::new(d.clone());
        for p in ["bin", "dev", "etc", "home", "run", "upper", "usr", "zlinks"] {
            dir(&mut t, p, d.clone());
        }
        let k = spooled(&mut t, b"setuid binary\n");
        add(&mut t, "bin/su", node(meta(0o4755, 0, 0, &[]), k));
        let k = spooled(&mut t, &vec![0x7f; 3 * BLOCK_SIZE + 9]);
        add(&mut t, "bin/ping", node(meta(0o755, 0, 0, &[("security.capability", &CAP_NET_RAW)]), k));
        dir(&mut t, "home/user", meta(0o700, 1000, 1000, &[]));
        let notes: &[(&str, &[u8])] = &[("user.comment", b"hello"), ("user.empty", b""), ("user.bin", b"\0\xff\0")];
        let k = spooled(&mut t, b"notes");
        add(&mut t, "home/user/notes", node(meta(0o640, 1000, 1000, notes), k));
        let k = spooled(&mut t, b"");
        add(&mut t, "home/user/same-xattrs", node(meta(0o600, 1000, 1000, notes), k));
        dir(&mut t, "upper/opaque", meta(0o755, 0, 0, &[("trusted.overlay.opaque", b"y")]));
        let k = spooled(&mut t, b"kept\n");
        add(&mut t, "upper/opaque/kept", node(meta(0o644, 0, 0, &[]), k));
        add(&mut t, "upper/gone", node(meta(0, 0, 0, &[]), Kind::CharDevice { major: 0, minor: 0 }));
        let null = add(&mut t, "dev/null", node(meta(0o666, 0, 0, &[]), Kind::CharDevice { major: 1, minor: 3 }));
        ok(t.hard_link(b"dev/null-too", null));
        add(&mut t, "dev/sda1", node(meta(0o660, 0, 6, &[]), Kind::BlockDevice { major: 8, minor: 1 }));
        add(&mut t, "dev/big", node(meta(0o600, 0, 0, &[]), Kind::BlockDevice { major: 4095, minor: 0xf_ffff }));
        add(&mut t, "dev/tchr", node(meta(0o620, 0, 5, tagged), Kind::CharDevice { major: 4, minor: 64 }));
        add(&mut t, "dev/tblk", node(meta(0o600, 0, 0, tagged), Kind::BlockDevice { major: 7, minor: 300 }));
        add(&mut t, "run/fifo", node(meta(0o600, 0, 0, &[]), Kind::Fifo));
        add(&mut t, "run/tfifo", node(meta(0o600, 0, 0, tagged), Kind::Fifo));
        add(&mut t, "run/sock", node(meta(0o755, 0, 0, &[]), Kind::Socket));
        add(&mut t, "run/tsock", node(meta(0o755, 0, 0, tagged), Kind::Socket));
        add(&mut t, "etc/link", node(meta(0o777, 0, 0, &[]), Kind::Symlink(b"../bin/su".to_vec())));
        add(&mut t, "etc/tlink", node(meta(0o777, 1000, 1000, tagged), Kind::Symlink(b"/no/where".to_vec())));
        let k = spooled(&mut t, b"root:x:0:0::/root:/bin/sh\n");
        let passwd = add(&mut t, "etc/passwd", node(meta(0o644, 0, 0, &[]), k));
        ok(t.hard_link(b"usr/passwd-too", passwd));
        let k = spooled(&mut t, b"three names");
        let three = add(&mut t, "etc/three", node(meta(0o444, 0, 0, &[]), k));
        ok(t.hard_link(b"etc/three-b", three));
        // A long directory: its inodes span metadata blocks, and the hard
        // links in zlinks point into all of them (several listing headers).
        dir(&mut t, "many", meta(0o755, 1001, 2000, &[]));
        ok(t.hard_link(b"many/000-three", three));
        for i in 0..400 {
            let k = spooled(&mut t, format!("file {i}\n").as_bytes());
            let id = add(&mut t, &format!("many/f{i:03}"), node(meta(0o644, 1001, 2000, &[]), k));
            if i % 50 == 0 || i == 399 {
                ok(t.hard_link(format!("zlinks/l{i:03}").as_bytes(), id));
            }
        }
        // An inode no name points at any more is not written.
        let k = spooled(&mut t, b"gone");
        add(&mut t, "etc/removed", node(meta(0o644, 0, 0, &[]), k));
        ok(t.remove(b"etc/removed"));
        t
    }

    fn u32_at(img: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]])
    }

    fn u64_at(img: &[u8], o: usize) -> u64 {
        u64::from(u32_at(img, o)) | (u64::from(u32_at(img, o + 4)) << 32)
    }

    /// The `unsquashfs` binary, or `None` (after saying so) when it is not
    /// installed. With CAIRN_REQUIRE_TOOLS=1 a missing binary fails the test.
    fn unsquashfs() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .chain(["/usr/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join("unsquashfs"))
            .find(|p| p.is_file());
        if found.is_none() {
            if std::env::var_os("CAIRN_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
                panic!("unsquashfs is not installed (Debian package squashfs-tools) and CAIRN_REQUIRE_TOOLS=1");
            }
            eprintln!("skipping the unsquashfs checks: unsquashfs not found (install squashfs-tools)");
        }
        found
    }

    /// Run unsquashfs; its stdout.
    fn run(tool: &Path, args: &[&OsStr]) -> String {
        let out = ok(Command::new(tool).args(args).output());
        assert!(
            out.status.success(),
            "unsquashfs {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `unsquashfs -pf`: one line per path (hard links as `L target`).
    fn pseudo_file(tool: &Path, image: &Path, dir: &Path) -> BTreeMap<String, Vec<String>> {
        let pf = dir.join("pseudo");
        run(tool, &[OsStr::new("-pf"), pf.as_os_str(), image.as_os_str()]);
        // File contents follow the definitions, in binary.
        let bytes = ok(fs::read(&pf));
        let text = String::from_utf8_lossy(&bytes);
        text.lines()
            .take_while(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut w = l.split(' ').map(str::to_owned);
                Some((w.next()?, w.collect()))
            })
            .collect()
    }

    /// Check an image written from `t` with unsquashfs: the superblock
    /// summary, the listing, the pseudo file (types, modes, owners, device
    /// numbers, hard links) and, as root, an extraction with xattrs read
    /// back with `scan_dir`.
    fn check_with_unsquashfs(t: &Tree, image: &Path, work: &Path) {
        let Some(tool) = unsquashfs() else { return };
        let want = expected(t);
        let inodes = t.reachable().len();
        let ids: BTreeSet<u32> =
            t.reachable().iter().flat_map(|id| [t.inode(*id).meta.uid, t.inode(*id).meta.gid]).collect();
        let sets: BTreeSet<&BTreeMap<Vec<u8>, Vec<u8>>> =
            t.reachable().iter().map(|id| &t.inode(*id).meta.xattrs).filter(|x| !x.is_empty()).collect();

        let stat = run(&tool, &[OsStr::new("-s"), image.as_os_str()]);
        assert!(stat.contains(&format!("Number of inodes {inodes}\n")), "{stat}");
        assert!(stat.contains(&format!("Number of ids {}\n", ids.len())), "{stat}");
        if sets.is_empty() {
            assert!(stat.contains("Xattrs are not stored") || !stat.contains("Number of xattr ids"), "{stat}");
        } else {
            assert!(stat.contains(&format!("Number of xattr ids {}\n", sets.len())), "{stat}");
        }

        // -lln: "mode uid/gid size-or-dev date time path".
        let listing = run(&tool, &[OsStr::new("-lln"), OsStr::new("-d"), OsStr::new(""), image.as_os_str()]);
        let mut listed = 0;
        for line in listing.lines().filter(|l| l.len() > 11 && l.as_bytes()[10] == b' ') {
            let words: Vec<&str> = line.split_whitespace().collect();
            // Everything after the date and time is the path, a symlink's
            // with ` -> target`; the root is listed with an empty path.
            let after = after_date(line).trim_start();
            let name = after.split_once(" -> ").map_or(after, |(p, _)| p);
            let path = PathBuf::from(format!("/{}", name.trim_start_matches('/')));
            let w = want.get(&path).unwrap_or_else(|| panic!("unexpected {path:?} in {listing}"));
            assert_eq!(words[1], format!("{}/{}", w.uid, w.gid), "{line}");
            let tc = match w.what {
                What::Dir => 'd',
                What::File(_) => '-',
                What::Link(_) => 'l',
                What::Char(..) => 'c',
                What::Block(..) => 'b',
                What::Fifo => 'p',
                What::Socket => 's',
            };
            assert!(words[0].starts_with(tc), "{line}");
            if !matches!(w.what, What::Link(_)) {
                assert_eq!(&words[0][1..], mode_string(w.mode), "{line}");
            }
            listed += 1;
        }
        assert_eq!(listed, want.len(), "{listing}");

        // The pseudo file: every inode once, other names as hard links.
        let pf = pseudo_file(&tool, image, work);
        assert_eq!(pf.len(), want.len(), "{pf:?}");
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, words) in &pf {
            let path = PathBuf::from("/").join(name);
            let w = &want[&path];
            if words[0] == "L" {
                groups.entry(words[1].clone()).or_default().push(name.clone());
                continue;
            }
            let kind = match w.what {
                What::Dir => "D",
                What::File(_) => "R",
                What::Link(_) => "S",
                What::Char(..) => "C",
                What::Block(..) => "B",
                What::Fifo | What::Socket => "I",
            };
            assert_eq!(words[0], kind, "{name}: {words:?}");
            assert_eq!(words[1], w.mtime.to_string(), "{name}: mtime");
            assert_eq!(words[2], format!("{:o}", w.mode), "{name}");
            assert_eq!((words[3].as_str(), words[4].as_str()), (&*w.uid.to_string(), &*w.gid.to_string()), "{name}");
            match &w.what {
                // unsquashfs -pf prints the raw major (rdev >> 8): compare
                // only numbers whose minor fits 8 bits.
                What::Char(ma, mi) | What::Block(ma, mi) if *mi < 256 => {
                    assert_eq!((words[5].as_str(), words[6].as_str()), (&*ma.to_string(), &*mi.to_string()), "{name}")
                }
                What::Fifo => assert_eq!(words[5], "f", "{name}"),
                What::Socket => assert_eq!(words[5], "s", "{name}"),
                _ => {}
            }
        }
        let mut got_groups: Vec<Vec<PathBuf>> = groups
            .into_iter()
            .map(|(first, rest)| {
                let mut g: Vec<PathBuf> =
                    std::iter::once(first).chain(rest).map(|n| PathBuf::from("/").join(n)).collect();
                g.sort();
                g
            })
            .collect();
        got_groups.sort();
        assert_eq!(got_groups, link_groups(t));

        // Extract with xattrs (devices, owners and trusted.* need root).
        if !is_root() {
            eprintln!("skipping the unsquashfs extraction: not root");
            return;
        }
        let dest = work.join("extracted");
        run(
            &tool,
            &[
                OsStr::new("-q"),
                OsStr::new("-n"),
                OsStr::new("-xattrs"),
                OsStr::new("-d"),
                dest.as_os_str(),
                image.as_os_str(),
            ],
        );
        let back = ok(scan::scan_dir_clamped(&dest, u32::MAX));
        assert_eq!(expected(&back), want);
        assert_eq!(link_groups(&back), link_groups(t));
        assert_eq!(xattr_map(&back), xattr_map(t));
        // Every extracted hard link is one host inode.
        for g in link_groups(t) {
            let inos: BTreeSet<u64> =
                g.iter().map(|p| ok(fs::symlink_metadata(dest.join(p.strip_prefix("/").unwrap_or(p)))).ino()).collect();
            assert_eq!(inos.len(), 1, "{g:?}");
        }
    }

    /// What follows the first `YYYY-MM-DD HH:MM` in a listing line.
    fn after_date(line: &str) -> &str {
        let pattern = b"dddd-dd-dd dd:dd";
        let b = line.as_bytes();
        (0..b.len().saturating_sub(pattern.len() - 1))
            .find(|&i| pattern.iter().zip(&b[i..]).all(|(p, c)| if *p == b'd' { c.is_ascii_digit() } else { p == c }))
            .map_or("", |i| &line[i + pattern.len()..])
    }

    /// `ls -l` permission characters of `mode`.
    fn mode_string(mode: u16) -> String {
        let mut s = String::new();
        for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
            let bits = (mode >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(match (bits & 1 != 0, mode & special != 0) {
                (true, true) => lower,
                (false, true) => upper,
                (true, false) => 'x',
                (false, false) => '-',
            });
        }
        s
    }

    #[test]
    fn rich_tree_round_trips_through_backhand_and_unsquashfs() {
        let d = ok(tempfile::tempdir());
        let t = rich_tree();
        let out = d.path().join("rich.sqfs");
        let img = built(write_layer(&t, &out));
        let bytes = ok(fs::read(&out));
        assert_eq!(bytes.len() as u64, img.size);
        // Inodes: every reachable one once (hard links included).
        let inodes = t.reachable().len();
        assert_eq!(u32_at(&bytes, 4) as usize, inodes);
        let flags = u16::from_le_bytes([bytes[24], bytes[25]]);
        assert_eq!(flags & FLAG_NO_XATTRS, 0);
        // Ids: 0, 5, 6, 1000, 1001, 2000.
        assert_eq!(u16::from_le_bytes([bytes[26], bytes[27]]), 6);
        // The xattr id table ends exactly at bytes_used (the kernel checks).
        let (bytes_used, xattr_table) = (u64_at(&bytes, 40), u64_at(&bytes, 56));
        assert_eq!(xattr_table + 16 + 8, bytes_used);
        // security.capability, the notes set, trusted.overlay.opaque, trusted.t.
        assert_eq!(u32_at(&bytes, xattr_table as usize + 8), 4);

        let got = read_back(&out);
        let want = expected(&t);
        assert_eq!(got.len(), want.len());
        for (path, w) in &want {
            assert_eq!(got.get(path), Some(w), "{path:?}");
        }
        assert_eq!(got[Path::new("/upper/gone")].what, What::Char(0, 0));
        assert_eq!(got[Path::new("/dev/big")].what, What::Block(4095, 0xf_ffff));
        assert_eq!(got[Path::new("/zlinks/l399")], got[Path::new("/many/f399")]);
        check_with_unsquashfs(&t, &out, d.path());
    }

    #[test]
    fn same_tree_same_bytes() {
        let d = ok(tempfile::tempdir());
        let a = built(write_layer(&rich_tree(), &d.path().join("a.sqfs")));
        let b = built(write_layer(&rich_tree(), &d.path().join("b.sqfs")));
        assert_eq!(a, b);
        assert_eq!(ok(fs::read(d.path().join("a.sqfs"))), ok(fs::read(d.path().join("b.sqfs"))));
    }

    #[test]
    fn thousands_of_ids_and_xattr_sets_span_table_blocks() {
        // 5000 ids (3 id table blocks) and 600 xattr sets (2 xattr id blocks).
        let mut t = Tree::new(meta(0o755, 0, 0, &[]));
        for i in 0..2500u32 {
            let mut m = meta(0o644, i, 100_000 + i, &[]);
            if i < 600 {
                m.xattrs.insert(b"user.n".to_vec(), i.to_string().into_bytes());
            }
            let k = spooled(&mut t, &i.to_le_bytes());
            add(&mut t, &format!("f{i:04}"), node(m, k));
        }
        let d = ok(tempfile::tempdir());
        let out = d.path().join("ids.sqfs");
        built(write_layer(&t, &out));
        let bytes = ok(fs::read(&out));
        assert_eq!(u16::from_le_bytes([bytes[26], bytes[27]]), 5000);
        let xattr_table = u64_at(&bytes, 56) as usize;
        assert_eq!(u32_at(&bytes, xattr_table + 8), 600);
        assert_eq!(u64_at(&bytes, 40) as usize, xattr_table + 16 + 2 * 8);
        // backhand 0.25 refuses an id table of more than one metadata
        // block (an error without a message), so the reference reader,
        // unsquashfs, is the check here: listing, pseudo file and, as root,
        // extraction with xattrs.
        check_with_unsquashfs(&t, &out, d.path());
    }

    /// A directory tree on disk, used by the build_layer tests.
    fn disk_tree(root: &Path) {
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

    /// What a host directory holds, keyed like backhand's full paths.
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        let path = root.join(rel);
        let md = ok(fs::symlink_metadata(&path));
        let key = Path::new("/").join(rel);
        let what = if md.is_dir() {
            for e in ok(fs::read_dir(&path)) {
                walk(root, &rel.join(ok(e).file_name()), out);
            }
            What::Dir
        } else if md.file_type().is_symlink() {
            What::Link(ok(fs::read_link(&path)))
        } else {
            What::File(ok(fs::read(&path)))
        };
        let mtime = scan::clamp_time(md.mtime(), ok(scan::mtime_clamp()));
        out.insert(key, Entry { mode: (md.mode() & 0o7777) as u16, uid: md.uid(), gid: md.gid(), mtime, what });
    }

    #[test]
    fn a_directory_builds_deterministically_with_a_valid_superblock() {
        let d = ok(tempfile::tempdir());
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        disk_tree(&a);
        disk_tree(&b);
        let ia = built(build_layer(&a, &d.path().join("a.sqfs")));
        let ib = built(build_layer(&b, &d.path().join("b.sqfs")));
        assert_eq!(ia, ib);
        let img = ok(fs::read(d.path().join("a.sqfs")));
        assert_eq!(img, ok(fs::read(d.path().join("b.sqfs"))));
        assert_eq!(img.len() as u64, ia.size);
        assert_eq!(ia.size % PAD, 0);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&img)), ia.digest);
        assert_eq!(&img[..4], b"hsqs");
        // root, etc (+300 files, hostname, dangling, deep, er, empty-file),
        // many (+2000), tmp, big, holey, run.sh, tool, link.
        assert_eq!(u32_at(&img, 4), 1 + (1 + 300 + 5) + (1 + 2000) + 1 + 5);
        assert_eq!((u32_at(&img, 8), u32_at(&img, 12), u32_at(&img, 16)), (0, BLOCK_SIZE as u32, 0));
        let bytes_used = u64_at(&img, 40);
        assert!(bytes_used <= ia.size && bytes_used > ia.size - PAD);
        assert!(img[bytes_used as usize..].iter().all(|b| *b == 0));
        // Tables are in the order the kernel checks; no xattrs here (unless
        // the host labels files, as SELinux does).
        let (id, inode, dir) = (u64_at(&img, 48), u64_at(&img, 64), u64_at(&img, 72));
        assert!(inode < dir && dir < id && id < bytes_used);
        if u64_at(&img, 56) == INVALID {
            assert_ne!(u16::from_le_bytes([img[24], img[25]]) & FLAG_NO_XATTRS, 0);
            assert_eq!(id + 8, bytes_used);
        }
    }

    #[test]
    fn a_directory_reads_back_with_names_modes_owners_and_contents() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        disk_tree(&src);
        ok(fs::set_permissions(&src, fs::Permissions::from_mode(0o750)));
        if is_root() {
            ok(std::os::unix::fs::lchown(src.join("etc/hostname"), Some(1000), Some(1000)));
            ok(std::os::unix::fs::lchown(src.join("link"), Some(33), Some(44)));
        }
        let out = d.path().join("layer.sqfs");
        built(build_layer(&src, &out));
        let mut want = BTreeMap::new();
        walk(&src, Path::new(""), &mut want);
        let got = read_back(&out);
        assert_eq!(got.len(), want.len());
        for (path, w) in &want {
            assert_eq!(got.get(path), Some(w), "{path:?}");
        }
        assert_eq!(got[Path::new("/")].mode, 0o750);
        assert_eq!(got[Path::new("/run.sh")].mode, 0o4755);
        assert_eq!(got[Path::new("/tmp")].mode, 0o1777);
        if is_root() {
            let h = &got[Path::new("/etc/hostname")];
            assert_eq!((h.uid, h.gid), (1000, 1000));
        }
        // Only the partial-free output is left.
        let names: Vec<_> = ok(fs::read_dir(d.path())).filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_directory_keeps_hard_links_special_files_and_xattrs() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir_all(src.join("a/b")));
        ok(fs::write(src.join("a/file"), "linked"));
        ok(fs::hard_link(src.join("a/file"), src.join("a/b/same")));
        ok(fs::write(src.join("plain"), "p"));
        let _sock = ok(std::os::unix::net::UnixListener::bind(src.join("a/sock")));
        let user_xattrs = set_xattr(&src.join("plain"), "user.origin", b"disk").is_ok();
        if is_root() {
            ok(set_xattr(&src.join("a"), "trusted.overlay.opaque", b"y"));
            let c = ok(std::ffi::CString::new(src.join("a/wh").as_os_str().as_bytes()));
            // SAFETY: `c` is NUL-terminated.
            assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) }, 0);
        }
        let out = d.path().join("disk.sqfs");
        built(build_layer(&src, &out));
        let bytes = ok(fs::read(&out));
        // root, a, b, file (two names, one inode), sock, plain (+ wh).
        assert_eq!(u32_at(&bytes, 4), if is_root() { 7 } else { 6 });
        let got = read_back(&out);
        assert_eq!(got[Path::new("/a/b/same")], got[Path::new("/a/file")]);
        assert_eq!(got[Path::new("/a/sock")].what, What::Socket);
        if is_root() {
            assert_eq!(got[Path::new("/a/wh")].what, What::Char(0, 0));
        }
        let tree = ok(scan::scan_dir(&src));
        assert_eq!(link_groups(&tree), vec![vec![PathBuf::from("/a/b/same"), PathBuf::from("/a/file")]]);
        if user_xattrs || is_root() {
            assert_eq!(u64_at(&bytes, 40), u64_at(&bytes, 56) + 16 + 8);
        }
        check_with_unsquashfs(&tree, &out, d.path());
    }

    #[test]
    fn an_empty_directory_is_a_valid_layer() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir(&src));
        let out = d.path().join("empty.sqfs");
        let img = built(build_layer(&src, &out));
        assert_eq!(img.size, PAD);
        assert_eq!(read_back(&out).len(), 1);
    }

    /// `write_layer` must fail with `check` and leave nothing behind.
    fn refused(t: &Tree, check: impl Fn(&SquashfsError) -> bool) {
        let d = ok(tempfile::tempdir());
        let out = d.path().join("x.sqfs");
        match write_layer(t, &out) {
            Err(e) => assert!(check(&e), "{e:?}"),
            Ok(_) => panic!("written"),
        }
        let names: Vec<_> = ok(fs::read_dir(d.path())).filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn refused_trees_leave_nothing_behind() {
        let base = || {
            let mut t = Tree::new(meta(0o755, 0, 0, &[]));
            dir(&mut t, "etc", meta(0o755, 0, 0, &[]));
            t
        };
        let mut t = base();
        let k = spooled(&mut t, b"x");
        add(&mut t, "etc/acl", node(meta(0o644, 0, 0, &[("system.posix_acl_access", b"\x02\0\0\0")]), k));
        refused(&t, |e| {
            matches!(e, SquashfsError::Xattr { path, name, .. } if path == Path::new("/etc/acl") && name == "system.posix_acl_access")
                && e.to_string().contains("/etc/acl")
        });
        let mut t = base();
        dir(&mut t, "etc/bare", meta(0o755, 0, 0, &[("user.", b"")]));
        refused(&t, |e| matches!(e, SquashfsError::Xattr { name, .. } if name == "user."));
        let mut t = base();
        add(&mut t, "etc/dev", node(meta(0o600, 0, 0, &[]), Kind::CharDevice { major: 4096, minor: 0 }));
        refused(&t, |e| matches!(e, SquashfsError::DeviceNumber { major: 4096, .. }));
        let mut t = base();
        add(&mut t, "etc/empty", node(meta(0o777, 0, 0, &[]), Kind::Symlink(Vec::new())));
        refused(&t, |e| matches!(e, SquashfsError::BadSymlink(p) if p == Path::new("/etc/empty")));
        // A directory under two names (Tree::hard_link refuses; the map
        // is public).
        let mut t = base();
        let etc = ok(t.lookup(b"etc")).unwrap_or(ROOT);
        if let Kind::Dir(m) = &mut t.inode_mut(ROOT).kind {
            m.insert(b"etc2".to_vec(), etc);
        }
        refused(&t, |e| matches!(e, SquashfsError::LinkedDirectory(p) if p == Path::new("/etc2")));
        let mut t = base();
        if let Kind::Dir(m) = &mut t.inode_mut(ROOT).kind {
            m.insert(b"a/b".to_vec(), etc);
        }
        refused(&t, |e| matches!(e, SquashfsError::BadName(_)));
        // Data the tree cannot deliver fails the write itself.
        let mut t = base();
        add(&mut t, "etc/f", node(meta(0o644, 0, 0, &[]), Kind::File(FileData::Spool { offset: 0, len: 3 })));
        refused(&t, |e| matches!(e, SquashfsError::NoSpool(p) if p == Path::new("/etc/f")));
        let mut t = base();
        spooled(&mut t, b"ab");
        add(&mut t, "etc/f", node(meta(0o644, 0, 0, &[]), Kind::File(FileData::Spool { offset: 1, len: 3 })));
        refused(&t, |e| matches!(e, SquashfsError::SpoolShort(_)));
        // 65536 distinct ids do not fit the superblock's 16-bit count.
        let mut t = base();
        for i in 0..32768u32 {
            add(&mut t, &format!("etc/s{i}"), node(meta(0o600, i, 40_000 + i, &[]), Kind::Socket));
        }
        refused(&t, |e| matches!(e, SquashfsError::TooManyIds(65536)));
    }

    #[test]
    fn refused_directories_leave_nothing_behind() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir_all(src.join("a")));
        ok(fs::write(src.join("a/file"), "x"));
        let out = d.path().join("x.sqfs");
        let r = build_layer(&src.join("a/file"), &out);
        assert!(matches!(r, Err(SquashfsError::Scan(ScanError::NotADirectory(_)))), "{r:?}");
        let r = build_layer(&d.path().join("missing"), &out);
        assert!(matches!(r, Err(SquashfsError::Scan(ScanError::Io { .. }))), "{r:?}");
        // A file that grows after the scan.
        let t = ok(scan::scan_dir(&src));
        ok(fs::write(src.join("a/file"), "xy"));
        let r = write_layer(&t, &out);
        assert!(matches!(&r, Err(SquashfsError::Changed(p)) if p.ends_with("a/file")), "{r:?}");
        assert!(!out.exists() && !d.path().join("x.sqfs.partial").exists());
        // Unwritable destination: the error names it and no partial file stays.
        let r = build_layer(&src, &d.path().join("no/such/dir/x.sqfs"));
        assert!(matches!(&r, Err(SquashfsError::Io { path, .. }) if path.ends_with("x.sqfs.partial")), "{r:?}");
        assert!(!out.exists() && !d.path().join("x.sqfs.partial").exists());
    }
}
