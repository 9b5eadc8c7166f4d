//! A filesystem tree held in memory: what a layer image contains, whatever
//! it was read from (a host directory, a tar stream, OCI image layers).
//!
//! Inodes live in an arena and directories map names to inode ids, so a
//! hard link is simply a second name for the same id. Names are raw bytes
//! (Linux file names need not be UTF-8); a name is never empty, `.` or
//! `..`, and never holds `/` or NUL: [`Tree`] checks every name it is
//! given, so a tree can only describe paths inside itself.
//!
//! File contents are not held in memory: a [`FileData`] says where to read
//! them (a host file, or a byte range of a spool file the importer wrote).

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = usize;

/// The id of the root directory of every tree.
pub const ROOT: InodeId = 0;

/// Owner, permissions and extended attributes of an inode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits, setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Extended attributes, full name (`user.x`, `trusted.overlay.opaque`,
    /// `security.capability`) to value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Modification time, seconds since the epoch (squashfs keeps 32
    /// unsigned bits: archives' times outside that range are clamped to
    /// it; directory sources are clamped to `SOURCE_DATE_EPOCH`, see
    /// [`crate::scan`]).
    pub mtime: u32,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// A file on the host, read when the image is written; `len` is its
    /// size when scanned (a change in between is an error).
    Host {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// `len` bytes at `offset` of the tree's spool file ([`Tree::spool`]).
    Spool {
        /// Start in the spool file.
        offset: u64,
        /// Length.
        len: u64,
    },
}

impl FileData {
    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            FileData::Host { len, .. } | FileData::Spool { len, .. } => *len,
        }
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory: its entries by name, sorted by bytes.
    Dir(BTreeMap<Vec<u8>, InodeId>),
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target (stored as given, never followed).
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A unix socket node.
    Socket,
}

impl Kind {
    /// A short name for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Dir(_) => "directory",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::CharDevice { .. } => "character device",
            Kind::BlockDevice { .. } => "block device",
            Kind::Fifo => "FIFO",
            Kind::Socket => "socket",
        }
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Owner, mode, xattrs.
    pub meta: Meta,
    /// Type and contents.
    pub kind: Kind,
}

/// Why a tree operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A name that is empty, `.`, `..`, longer than 255 bytes, or holds `/`
    /// or NUL.
    #[error("{0:?}: not a valid file name")]
    BadName(String),
    /// A path whose parent is missing or is not a directory.
    #[error("{0}: parent directory missing or not a directory")]
    NoParent(String),
    /// A path that does not exist.
    #[error("{0}: no such entry")]
    NotFound(String),
    /// A hard link to a directory.
    #[error("{0}: hard link to a directory")]
    LinkToDir(String),
}

/// The longest file name Linux (and squashfs) accepts.
pub const NAME_MAX: usize = 255;

/// Check one path component.
pub fn check_name(name: &[u8]) -> Result<(), TreeError> {
    if name.is_empty()
        || name == b"."
        || name == b".."
        || name.len() > NAME_MAX
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(TreeError::BadName(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(())
}

/// Split a relative path into checked components. Empty components and `.`
/// are skipped (`a//b/./c` is `a/b/c`); `..`, a leading `/` and NUL are
/// refused, so the result always names something inside the tree.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let shown = || TreeError::BadName(String::from_utf8_lossy(path).into_owned());
    if path.first() == Some(&b'/') {
        return Err(shown());
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        check_name(c).map_err(|_| shown())?;
        out.push(c);
    }
    Ok(out)
}

/// Whether `name` is an overlayfs xattr, one overlayfs reads from a lower
/// layer: `trusted.overlay.*` (or `user.overlay.*` on a `userxattr`
/// mount). Such data from a source could redirect a directory, make a file
/// a metacopy of another, or claim an origin.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// Something a layer may not hold, found by [`Tree::layer_violation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// A character or block device other than a whiteout (a character
    /// device 0/0).
    Device {
        /// `character device` or `block device`.
        kind: &'static str,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// An overlayfs xattr other than `trusted.overlay.opaque=y` on a
    /// directory.
    OverlayXattr(Vec<u8>),
}

/// What a layer may hold, as a device's overlay reads it: no device node
/// but the whiteout (a character device 0/0), and no overlayfs xattr but
/// the opaque marker `trusted.overlay.opaque=y` on a directory.
pub fn layer_violation(inode: &Inode) -> Option<Forbidden> {
    match inode.kind {
        Kind::CharDevice { major: 0, minor: 0 } => {}
        Kind::CharDevice { major, minor } => return Some(Forbidden::Device { kind: "character device", major, minor }),
        Kind::BlockDevice { major, minor } => return Some(Forbidden::Device { kind: "block device", major, minor }),
        _ => {}
    }
    let is_dir = matches!(inode.kind, Kind::Dir(_));
    inode
        .meta
        .xattrs
        .iter()
        .find(|(name, value)| {
            is_overlay_xattr(name)
                && !(is_dir && name.as_slice() == b"trusted.overlay.opaque" && value.as_slice() == b"y")
        })
        .map(|(name, _)| Forbidden::OverlayXattr(name.clone()))
}

/// A whole filesystem tree. Inode [`ROOT`] is the root directory.
#[derive(Debug)]
pub struct Tree {
    /// Every inode; entries point at them by index. An inode no entry
    /// points at any more (after [`Tree::remove`]) is simply not written.
    pub inodes: Vec<Inode>,
    /// The file that [`FileData::Spool`] ranges refer to, if any.
    pub spool: Option<std::fs::File>,
}

fn shown(parts: &[&[u8]]) -> String {
    let v: Vec<String> = parts.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    v.join("/")
}

impl Tree {
    /// An empty tree whose root directory has `root` as its metadata.
    pub fn new(root: Meta) -> Self {
        Tree { inodes: vec![Inode { meta: root, kind: Kind::Dir(BTreeMap::new()) }], spool: None }
    }

    /// The inode `id`. Ids come from this tree, so they are in range.
    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id]
    }

    /// The inode `id`, to change.
    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id]
    }

    /// The entries of directory `dir` (empty if it is not a directory).
    pub fn entries(&self, dir: InodeId) -> impl Iterator<Item = (&Vec<u8>, InodeId)> {
        let map = match &self.inodes[dir].kind {
            Kind::Dir(m) => Some(m),
            _ => None,
        };
        map.into_iter().flat_map(|m| m.iter().map(|(k, v)| (k, *v)))
    }

    /// Follow `path` (relative, not following symlinks) from the root.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<InodeId>, TreeError> {
        let parts = components(path)?;
        let mut at = ROOT;
        for p in parts {
            match &self.inodes[at].kind {
                Kind::Dir(m) => match m.get(p) {
                    Some(id) => at = *id,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Resolve the absolute or relative `path` as the kernel would inside
    /// the tree (every symlink followed, `..` stopping at the root, at most
    /// 40 links): the inode reached, if any. For build-time checks
    /// (an entrypoint on `PATH`, `/etc/passwd`), never for writing.
    pub fn resolve(&self, path: &[u8]) -> Option<InodeId> {
        let mut todo: Vec<Vec<u8>> = path.split(|b| *b == b'/').rev().map(<[u8]>::to_vec).collect();
        let mut stack: Vec<InodeId> = vec![ROOT];
        let mut links = 0;
        while let Some(part) = todo.pop() {
            let at = *stack.last()?;
            match &part[..] {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let Kind::Dir(m) = &self.inodes.get(at)?.kind else { return None };
            let id = *m.get(&part)?;
            match &self.inodes.get(id)?.kind {
                Kind::Symlink(target) => {
                    links += 1;
                    if links > 40 {
                        return None;
                    }
                    if target.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    todo.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                }
                _ => stack.push(id),
            }
        }
        stack.last().copied()
    }

    /// The bytes of the regular file `path` resolves to (see [`Tree::resolve`]),
    /// if it is one and is readable: at most `max` bytes.
    pub fn read_file(&self, path: &[u8], max: u64) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let Kind::File(data) = &self.inodes.get(self.resolve(path)?)?.kind else { return None };
        if data.len() > max {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(data.len()).ok()?];
        match data {
            FileData::Host { path, .. } => std::fs::File::open(path).ok()?.read_exact_at(&mut buf, 0).ok()?,
            FileData::Spool { offset, .. } => self.spool.as_ref()?.read_exact_at(&mut buf, *offset).ok()?,
        }
        Some(buf)
    }

    /// Split `path` into (parent directory id, last name). The parent must
    /// exist and be a directory; the root itself has no parent.
    fn parent_of<'p>(&self, path: &'p [u8]) -> Result<(InodeId, &'p [u8]), TreeError> {
        let parts = components(path)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(TreeError::BadName(String::from_utf8_lossy(path).into_owned()));
        };
        let mut at = ROOT;
        for (i, p) in dirs.iter().enumerate() {
            let next = match &self.inodes[at].kind {
                Kind::Dir(m) => m.get(*p).copied(),
                _ => None,
            };
            match next {
                Some(id) if matches!(self.inodes[id].kind, Kind::Dir(_)) => at = id,
                _ => return Err(TreeError::NoParent(shown(&parts[..=i]))),
            }
        }
        Ok((at, last))
    }

    /// Add a new inode and give it the name `path`, replacing whatever
    /// had that name (a replaced directory loses its whole subtree). The
    /// parent directory must exist. Returns the new id.
    pub fn insert(&mut self, path: &[u8], inode: Inode) -> Result<InodeId, TreeError> {
        let (parent, name) = self.parent_of(path)?;
        let id = self.inodes.len();
        self.inodes.push(inode);
        self.link_into(parent, name, id);
        Ok(id)
    }

    /// Give the existing non-directory inode `target` the additional name
    /// `path` (a hard link), replacing whatever had that name.
    pub fn hard_link(&mut self, path: &[u8], target: InodeId) -> Result<(), TreeError> {
        if matches!(self.inodes[target].kind, Kind::Dir(_)) {
            return Err(TreeError::LinkToDir(String::from_utf8_lossy(path).into_owned()));
        }
        let (parent, name) = self.parent_of(path)?;
        self.link_into(parent, name, target);
        Ok(())
    }

    fn link_into(&mut self, parent: InodeId, name: &[u8], id: InodeId) {
        if let Kind::Dir(m) = &mut self.inodes[parent].kind {
            m.insert(name.to_vec(), id);
        }
    }

    /// Remove the name `path` (and, for a directory, everything under it).
    /// Returns the id it named, or `None` if nothing had that name.
    pub fn remove(&mut self, path: &[u8]) -> Result<Option<InodeId>, TreeError> {
        let (parent, name) = match self.parent_of(path) {
            Ok(p) => p,
            Err(TreeError::NoParent(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match &mut self.inodes[parent].kind {
            Kind::Dir(m) => Ok(m.remove(name)),
            _ => Ok(None),
        }
    }

    /// Ensure every directory on `path` exists, creating missing ones with
    /// `meta`; returns the id of the last. An existing non-directory on
    /// the way is an error.
    pub fn mkdir_all(&mut self, path: &[u8], meta: &Meta) -> Result<InodeId, TreeError> {
        let parts = components(path)?;
        let mut at = ROOT;
        for (i, p) in parts.iter().enumerate() {
            let existing = match &self.inodes[at].kind {
                Kind::Dir(m) => m.get(*p).copied(),
                _ => None,
            };
            at = match existing {
                Some(id) if matches!(self.inodes[id].kind, Kind::Dir(_)) => id,
                Some(_) => return Err(TreeError::NoParent(shown(&parts[..=i]))),
                None => {
                    let id = self.inodes.len();
                    self.inodes.push(Inode { meta: meta.clone(), kind: Kind::Dir(BTreeMap::new()) });
                    self.link_into(at, p, id);
                    id
                }
            };
        }
        Ok(at)
    }

    /// Every inode reachable from the root, each once, in depth-first order
    /// by name (the root first). Unreachable inodes are left out.
    pub fn reachable(&self) -> Vec<InodeId> {
        let mut seen = vec![false; self.inodes.len()];
        let mut out = Vec::new();
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut seen[id], true) {
                continue;
            }
            out.push(id);
            if let Kind::Dir(m) = &self.inodes[id].kind {
                stack.extend(m.values().rev().copied());
            }
        }
        out
    }

    /// The first (by path) reachable inode a layer may not hold (see
    /// [`layer_violation`]), with its path.
    pub fn layer_violation(&self) -> Option<(Vec<u8>, Forbidden)> {
        let mut seen = vec![false; self.inodes.len()];
        let mut stack: Vec<(InodeId, Vec<u8>)> = vec![(ROOT, Vec::new())];
        while let Some((id, path)) = stack.pop() {
            if std::mem::replace(&mut seen[id], true) {
                continue;
            }
            if let Some(f) = layer_violation(&self.inodes[id]) {
                return Some((path, f));
            }
            if let Kind::Dir(m) = &self.inodes[id].kind {
                for (name, child) in m.iter().rev() {
                    let p = if path.is_empty() { name.clone() } else { [&path[..], b"/", name].concat() };
                    stack.push((*child, p));
                }
            }
        }
        None
    }

    /// How many names each inode has (its link count, for non-directories).
    pub fn link_counts(&self) -> Vec<u32> {
        let mut n = vec![0u32; self.inodes.len()];
        for id in self.reachable() {
            if let Kind::Dir(m) = &self.inodes[id].kind {
                for child in m.values() {
                    n[*child] += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(len: u64) -> Inode {
        Inode { meta: Meta { mode: 0o644, ..Meta::default() }, kind: Kind::File(FileData::Spool { offset: 0, len }) }
    }

    #[test]
    fn names_are_checked() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(b"ok.name").is_ok());
        assert_eq!(components(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert!(components(b"a/../b").is_err());
        assert!(components(b"/etc").is_err());
        assert!(components(b"..").is_err());
    }

    #[test]
    fn insert_lookup_link_remove() {
        let mut t = Tree::new(Meta { mode: 0o755, ..Meta::default() });
        let d = Meta { mode: 0o755, ..Meta::default() };
        t.mkdir_all(b"etc/ssl", &d).unwrap();
        let f = t.insert(b"etc/ssl/cert", file(3)).unwrap();
        assert_eq!(t.lookup(b"etc/ssl/cert").unwrap(), Some(f));
        t.hard_link(b"etc/cert-link", f).unwrap();
        assert_eq!(t.link_counts()[f], 2);
        assert!(t.insert(b"missing/x", file(1)).is_err());
        assert!(t.insert(b"etc/ssl/cert/x", file(1)).is_err(), "a file is not a parent");
        assert!(t.hard_link(b"etc/dirlink", t.lookup(b"etc").unwrap().unwrap()).is_err());
        // Replacing a name replaces the entry.
        let g = t.insert(b"etc/cert-link", file(9)).unwrap();
        assert_eq!(t.lookup(b"etc/cert-link").unwrap(), Some(g));
        assert_eq!(t.link_counts()[f], 1);
        // Removing a directory drops its subtree from what is reachable.
        assert!(t.remove(b"etc/ssl").unwrap().is_some());
        assert!(!t.reachable().contains(&f));
        assert_eq!(t.remove(b"nope/x").unwrap(), None);
        assert!(t.mkdir_all(b"etc/cert-link/x", &d).is_err());
    }

    #[test]
    fn layer_violations() {
        let dev = |kind| Inode { meta: Meta::default(), kind };
        let d = Meta { mode: 0o755, ..Meta::default() };
        let mut t = Tree::new(d.clone());
        t.mkdir_all(b"a/b", &d).unwrap();
        t.insert(b"a/b/gone", dev(Kind::CharDevice { major: 0, minor: 0 })).unwrap();
        t.insert(b"a/fifo", dev(Kind::Fifo)).unwrap();
        let b = t.lookup(b"a/b").unwrap().unwrap();
        t.inode_mut(b).meta.xattrs.insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
        t.inode_mut(b).meta.xattrs.insert(b"trusted.other".to_vec(), b"z".to_vec());
        assert_eq!(t.layer_violation(), None, "whiteouts, FIFOs and opaque directories are fine");
        let disk = t.insert(b"a/b/disk", dev(Kind::BlockDevice { major: 254, minor: 0 })).unwrap();
        let want = Forbidden::Device { kind: "block device", major: 254, minor: 0 };
        assert_eq!(t.layer_violation(), Some((b"a/b/disk".to_vec(), want)));
        t.inode_mut(disk).kind = Kind::CharDevice { major: 0, minor: 1 };
        let want = Forbidden::Device { kind: "character device", major: 0, minor: 1 };
        assert_eq!(t.layer_violation(), Some((b"a/b/disk".to_vec(), want)));
        t.remove(b"a/b/disk").unwrap();
        let f = t.insert(b"a/f", file(1)).unwrap();
        t.inode_mut(f).meta.xattrs.insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
        let want = Forbidden::OverlayXattr(b"trusted.overlay.opaque".to_vec());
        assert_eq!(t.layer_violation(), Some((b"a/f".to_vec(), want)), "opaque only on a directory");
        t.inode_mut(f).meta.xattrs.clear();
        t.inode_mut(b).meta.xattrs.insert(b"trusted.overlay.opaque".to_vec(), b"x".to_vec());
        assert!(t.layer_violation().is_some(), "opaque only as y");
        t.inode_mut(b).meta.xattrs.clear();
        t.inode_mut(ROOT).meta.xattrs.insert(b"trusted.overlay.redirect".to_vec(), b"/x".to_vec());
        assert_eq!(
            t.layer_violation(),
            Some((Vec::new(), Forbidden::OverlayXattr(b"trusted.overlay.redirect".to_vec())))
        );
        t.inode_mut(ROOT).meta.xattrs.clear();
        t.inode_mut(f).meta.xattrs.insert(b"user.overlay.metacopy".to_vec(), Vec::new());
        assert!(t.layer_violation().is_some());
    }
}
