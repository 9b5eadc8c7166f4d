//! Applying one tar stream (a rootfs tar or one image layer) to a tree.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use tar::EntryType;

use super::stream::{walk_tar, Decoded, Digests, Member, Walk};
use super::ImportError;
use crate::tree::{check_name, components, is_overlay_xattr, FileData, Inode, InodeId, Kind, Meta, Tree, ROOT};

/// The whiteout marker prefix of OCI (and aufs) layers.
const WH: &[u8] = b".wh.";
/// The prefix of aufs metadata names (and of the opaque marker).
const WH_META: &[u8] = b".wh..wh.";
/// The opaque directory marker.
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to find an opaque directory in a lower layer.
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// What `.wh.` names in the tar mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whiteouts {
    /// Nothing: they are ordinary names (a rootfs tar).
    Literal,
    /// OCI whiteouts, turned into overlayfs whiteouts (one image layer).
    Overlay,
    /// OCI whiteouts, applied to the tree of the layers below (flattening).
    Apply,
}

/// The byte budget of a whole source ([`super::ImportOptions::max_bytes`]).
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    used: u64,
    /// [`super::ImportOptions::max_entries`].
    max_entries: u64,
    entries: u64,
}

impl Budget {
    /// A budget of `max` bytes and `max_entries` members.
    pub(super) fn new(max: u64, max_entries: u64) -> Self {
        Budget { max, used: 0, max_entries, entries: 0 }
    }
}

/// A tree being built and the spool file its regular files go to.
pub(super) struct Target {
    tree: Tree,
    spool: BufWriter<File>,
    spool_len: u64,
}

impl Target {
    /// An empty tree (root 0755, owner 0:0) and a new anonymous spool file.
    pub(super) fn new() -> Result<Self, ImportError> {
        let spool = tempfile::tempfile().map_err(ImportError::Spool)?;
        Ok(Target { tree: Tree::new(dir_meta()), spool: BufWriter::with_capacity(256 * 1024, spool), spool_len: 0 })
    }

    /// The finished tree, its spool attached.
    pub(super) fn finish(self) -> Result<Tree, ImportError> {
        let mut tree = self.tree;
        let spool = self.spool.into_inner().map_err(|e| ImportError::Spool(e.into_error()))?;
        tree.spool = Some(spool);
        Ok(tree)
    }
}

/// Metadata of a directory the archive does not list.
fn dir_meta() -> Meta {
    Meta { mode: 0o755, ..Meta::default() }
}

/// What one layer did, to check members against each other.
struct Layer {
    mode: Whiteouts,
    /// Paths members named (whiteouts name their target; the root is the
    /// empty path).
    explicit: HashSet<Vec<u8>>,
    /// `explicit` and every directory above them.
    touched: HashSet<Vec<u8>>,
    /// Paths whited out by this layer.
    whiteouts: HashSet<Vec<u8>>,
    /// Directories this layer marks opaque.
    opaque: Vec<Vec<u8>>,
}

/// Read one (possibly compressed) tar stream into `target`. Returns the
/// digests of the stream.
pub(super) fn read_layer(
    raw: &mut dyn Read,
    label: &str,
    target: &mut Target,
    mode: Whiteouts,
    budget: &mut Budget,
) -> Result<Digests, ImportError> {
    let mut layer = Layer {
        mode,
        explicit: HashSet::new(),
        touched: HashSet::new(),
        whiteouts: HashSet::new(),
        opaque: Vec::new(),
    };
    let digests = walk_tar(raw, label, &mut |entry, walk| add_member(entry, walk, &mut layer, target, budget))?;
    for dir in &layer.opaque {
        match mode {
            Whiteouts::Overlay => {
                if let Ok(Some(id)) = target.tree.lookup(dir) {
                    target.tree.inode_mut(id).meta.xattrs.insert(OPAQUE_XATTR.to_vec(), b"y".to_vec());
                }
            }
            Whiteouts::Apply => {
                if let Ok(Some(id)) = target.tree.lookup(dir) {
                    prune(&mut target.tree, id, dir.clone(), &layer.touched);
                }
            }
            Whiteouts::Literal => {}
        }
    }
    Ok(digests)
}

/// Remove from directory `dir` (at `path`) everything this layer did not
/// put there, recursively: what an opaque marker hides.
fn prune(tree: &mut Tree, dir: InodeId, path: Vec<u8>, touched: &HashSet<Vec<u8>>) {
    let children: Vec<(Vec<u8>, InodeId)> = tree.entries(dir).map(|(n, id)| (n.clone(), id)).collect();
    for (name, child) in children {
        let p = join(&path, &name);
        if !touched.contains(&p) {
            if let Kind::Dir(m) = &mut tree.inode_mut(dir).kind {
                m.remove(&name);
            }
        } else if matches!(tree.inode(child).kind, Kind::Dir(_)) {
            prune(tree, child, p, touched);
        }
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The PAX records of a member that matter here.
struct Pax {
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// A PAX `mtime` record (seconds, a fraction ignored), which overrides
    /// the header's.
    mtime: Option<u32>,
}

fn read_pax(entry: &Member<'_, '_, &mut Decoded<'_>>, walk: &Walk<'_>, member: &str) -> Result<Pax, ImportError> {
    let mut pax = Pax { xattrs: BTreeMap::new(), mtime: None };
    let label = walk.label;
    let Some(exts) = entry.pax_extensions() else { return Ok(pax) };
    for ext in exts {
        let ext = ext.map_err(|e| walk.archive_error(e))?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            let allowed = [&b"user."[..], b"trusted.", b"security."]
                .iter()
                .any(|p| name.strip_prefix(*p).is_some_and(|rest| !rest.is_empty()));
            if is_overlay_xattr(name) {
                return Err(ImportError::OverlayXattr {
                    archive: label.to_owned(),
                    member: member.to_owned(),
                    name: lossy(name),
                });
            }
            if !allowed {
                return Err(ImportError::Xattr {
                    archive: label.to_owned(),
                    member: member.to_owned(),
                    name: lossy(name),
                });
            }
            pax.xattrs.insert(name.to_vec(), ext.value_bytes().to_vec());
        } else if key == b"mtime" {
            pax.mtime = Some(pax_time(ext.value_bytes()).ok_or_else(|| ImportError::Unsupported {
                archive: label.to_owned(),
                member: member.to_owned(),
                what: format!("a PAX mtime record {:?}", lossy(ext.value_bytes())),
            })?);
        } else if key.starts_with(b"SCHILY.acl.") {
            return Err(ImportError::Xattr { archive: label.to_owned(), member: member.to_owned(), name: lossy(key) });
        } else if key.starts_with(b"GNU.sparse.") {
            return Err(ImportError::Unsupported {
                archive: label.to_owned(),
                member: member.to_owned(),
                what: "a sparse file".into(),
            });
        }
    }
    Ok(pax)
}

/// A PAX time (`[-]SECONDS[.FRACTION]`) as squashfs keeps it: whole
/// seconds, before 1970 as 0, after 2106 as `u32::MAX`.
pub(super) fn pax_time(v: &[u8]) -> Option<u32> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (v.get(..i)?, v.get(i + 1..)?),
        None => (v, &b""[..]),
    };
    if secs.is_empty() || !secs.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    if neg {
        return Some(0);
    }
    let n = secs.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')));
    Some(n.map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Add one tar member to the tree.
fn add_member(
    entry: &mut Member<'_, '_, &mut Decoded<'_>>,
    walk: &mut Walk<'_>,
    layer: &mut Layer,
    target: &mut Target,
    budget: &mut Budget,
) -> Result<(), ImportError> {
    let label = walk.label;
    let raw = entry.path_bytes();
    let member = lossy(&raw);
    budget.entries += 1;
    if budget.entries > budget.max_entries {
        return Err(ImportError::TooManyEntries { archive: label.to_owned(), member, max: budget.max_entries });
    }
    let ty = entry.entry.header().entry_type();
    let unsupported =
        |what: String| ImportError::Unsupported { archive: label.to_owned(), member: member.clone(), what };
    match ty {
        EntryType::XGlobalHeader => return Ok(()),
        EntryType::GNUSparse => return Err(unsupported("a GNU sparse file".into())),
        EntryType::Regular
        | EntryType::Continuous
        | EntryType::Link
        | EntryType::Symlink
        | EntryType::Char
        | EntryType::Block
        | EntryType::Directory
        | EntryType::Fifo => {}
        other => return Err(unsupported(format!("tar entry type {:?}", char::from(other.as_byte())))),
    }
    let pax = read_pax(entry, walk, &member)?;
    let bad_path = || ImportError::BadPath { archive: label.to_owned(), member: member.clone() };
    let parts = components(&raw).map_err(|_| bad_path())?;
    let header = entry.entry.header();
    let owner = |v: io::Result<u64>| -> Result<u32, ImportError> {
        let v = v.map_err(|e| walk.archive_error(e))?;
        u32::try_from(v).map_err(|_| unsupported(format!("owner id {v}")))
    };
    let meta = Meta {
        mode: (header.mode().map_err(|e| walk.archive_error(e))? & 0o7777) as u16,
        uid: owner(entry.uid())?,
        gid: owner(entry.gid())?,
        xattrs: pax.xattrs,
        mtime: match pax.mtime {
            Some(t) => t,
            None => header.mtime().map_err(|e| walk.archive_error(e)).map(|t| u32::try_from(t).unwrap_or(u32::MAX))?,
        },
    };
    let is_dir = ty == EntryType::Directory;
    let err_dup = || ImportError::Duplicate { archive: label.to_owned(), member: member.clone() };

    // Whiteouts.
    if layer.mode != Whiteouts::Literal {
        if let Some((last, dirs)) = parts.split_last() {
            if dirs.iter().any(|c| c.starts_with(WH_META)) || (last.starts_with(WH_META) && *last != WH_OPAQUE) {
                // aufs metadata (`.wh..wh.plnk`, ...): not part of the tree.
                return Ok(());
            }
            if last.starts_with(WH) {
                let whiteout_err =
                    |reason| ImportError::Whiteout { archive: label.to_owned(), member: member.clone(), reason };
                if is_dir {
                    return Err(whiteout_err("a whiteout marker must not be a directory"));
                }
                let dir = dirs.join(&b'/');
                if layer.explicit.contains(&join(&dir, last)) {
                    return Err(err_dup());
                }
                check_under_whiteout(layer, dirs, &|| whiteout_err("inside a path this layer whites out"))?;
                if *last == WH_OPAQUE {
                    layer.explicit.insert(join(&dir, last));
                    make_parents(target, layer, dirs, label, &member)?;
                    layer.opaque.push(dir);
                    return Ok(());
                }
                let name = &last[WH.len()..];
                if check_name(name).is_err() {
                    return Err(whiteout_err("whiteout of an invalid name"));
                }
                let path = join(&dir, name);
                if layer.touched.contains(&path) || layer.explicit.contains(&path) {
                    return Err(err_dup());
                }
                layer.explicit.insert(path.clone());
                layer.whiteouts.insert(path.clone());
                if layer.mode == Whiteouts::Overlay {
                    make_parents(target, layer, dirs, label, &member)?;
                    let dev = Inode { meta: Meta::default(), kind: Kind::CharDevice { major: 0, minor: 0 } };
                    target.tree.insert(&path, dev).map_err(|_| bad_path())?;
                    layer.touched.insert(path);
                } else {
                    // Nothing to do if the parent is missing or not a
                    // directory: the name is not there.
                    let _ = target.tree.remove(&path);
                }
                return Ok(());
            }
        }
    }

    let path = parts.join(&b'/');
    if layer.explicit.contains(&path) {
        return Err(err_dup());
    }
    let Some((_, dirs)) = parts.split_last() else {
        // The root directory itself (`./`).
        if !is_dir {
            return Err(bad_path());
        }
        layer.explicit.insert(path);
        target.tree.inode_mut(ROOT).meta = meta;
        return Ok(());
    };
    if layer.mode != Whiteouts::Literal {
        check_under_whiteout(layer, &parts, &|| ImportError::Whiteout {
            archive: label.to_owned(),
            member: member.clone(),
            reason: "inside or at a path this layer whites out",
        })?;
    }
    make_parents(target, layer, dirs, label, &member)?;
    let existing = target.tree.lookup(&path).map_err(|_| bad_path())?;
    if !is_dir && layer.touched.contains(&path) {
        // Only an implicitly created directory can be touched but not
        // explicit: earlier members are inside it.
        return Err(ImportError::NotADirectory { archive: label.to_owned(), member: member.clone() });
    }
    let tree_err = |_| bad_path();
    match ty {
        EntryType::Directory => match existing {
            Some(id) if matches!(target.tree.inode(id).kind, Kind::Dir(_)) => target.tree.inode_mut(id).meta = meta,
            _ => {
                target.tree.insert(&path, Inode { meta, kind: Kind::Dir(BTreeMap::new()) }).map_err(tree_err)?;
            }
        },
        EntryType::Regular | EntryType::Continuous => {
            let size = entry.entry.size();
            budget.used = budget.used.saturating_add(size);
            if budget.used > budget.max {
                return Err(ImportError::TooLarge { archive: label.to_owned(), member, max: budget.max });
            }
            let offset = target.spool_len;
            let copied = copy_data(entry.entry, &mut target.spool, walk, &member)?;
            target.spool_len += copied;
            if copied != size {
                return Err(ImportError::TruncatedMember { archive: label.to_owned(), member });
            }
            let data = FileData::Spool { offset, len: size };
            target.tree.insert(&path, Inode { meta, kind: Kind::File(data) }).map_err(tree_err)?;
        }
        EntryType::Symlink => {
            let link = entry.link_name_bytes().unwrap_or_default();
            if link.is_empty() {
                return Err(unsupported("an empty symlink target".into()));
            }
            if climbs_out(dirs.len(), &link) {
                return Err(ImportError::SymlinkEscapes { archive: label.to_owned(), member, target: lossy(&link) });
            }
            target.tree.insert(&path, Inode { meta, kind: Kind::Symlink(link) }).map_err(tree_err)?;
        }
        EntryType::Link => {
            let link = entry.link_name_bytes().unwrap_or_default();
            let fail = |reason| ImportError::HardLink {
                archive: label.to_owned(),
                member: member.clone(),
                target: lossy(&link),
                reason,
            };
            let Ok(tparts) = components(&link) else { return Err(fail("target outside the archive")) };
            let tpath = tparts.join(&b'/');
            if tparts.is_empty() {
                return Err(fail("target is a directory"));
            }
            if layer.whiteouts.contains(&tpath) {
                return Err(fail("target missing"));
            }
            let id = match target.tree.lookup(&tpath) {
                Ok(Some(id)) => id,
                _ => return Err(fail("target missing")),
            };
            if matches!(target.tree.inode(id).kind, Kind::Dir(_)) {
                return Err(fail("target is a directory"));
            }
            target.tree.hard_link(&path, id).map_err(tree_err)?;
        }
        EntryType::Char | EntryType::Block => {
            let dev = |v: io::Result<Option<u32>>| -> Result<u32, ImportError> {
                v.map_err(|e| walk.archive_error(e))?
                    .ok_or_else(|| unsupported("a device in a pre-POSIX tar header".into()))
            };
            let (major, minor) = (dev(entry.entry.header().device_major())?, dev(entry.entry.header().device_minor())?);
            // A character device 0/0 is an overlayfs whiteout and opens
            // nothing; any other device node would let the container open
            // that device (the overlay does not carry `nodev` through).
            let kind = match ty {
                EntryType::Char if (major, minor) == (0, 0) => Kind::CharDevice { major, minor },
                _ => {
                    let kind = if ty == EntryType::Char { "character device" } else { "block device" };
                    return Err(ImportError::Device { archive: label.to_owned(), member, kind, major, minor });
                }
            };
            target.tree.insert(&path, Inode { meta, kind }).map_err(tree_err)?;
        }
        EntryType::Fifo => {
            target.tree.insert(&path, Inode { meta, kind: Kind::Fifo }).map_err(tree_err)?;
        }
        other => return Err(unsupported(format!("tar entry type {:?}", char::from(other.as_byte())))),
    }
    layer.explicit.insert(path.clone());
    layer.touched.insert(path);
    Ok(())
}

/// Refuse a member at or below a path this layer whites out.
fn check_under_whiteout(layer: &Layer, parts: &[&[u8]], err: &dyn Fn() -> ImportError) -> Result<(), ImportError> {
    if layer.whiteouts.is_empty() {
        return Ok(());
    }
    for i in 1..=parts.len() {
        if layer.whiteouts.contains(&parts[..i].join(&b'/')) {
            return Err(err());
        }
    }
    Ok(())
}

/// Create the directories `dirs` (the parents of a member) where missing,
/// and note them as touched by this layer. A non-directory on the way is
/// refused (for a whiteout marker too: its directory must be one).
fn make_parents(
    target: &mut Target,
    layer: &mut Layer,
    dirs: &[&[u8]],
    label: &str,
    member: &str,
) -> Result<(), ImportError> {
    let mut at = ROOT;
    let mut path = Vec::new();
    for d in dirs {
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(d);
        let next = match &target.tree.inode(at).kind {
            Kind::Dir(m) => m.get(*d).copied(),
            _ => None,
        };
        at = match next {
            Some(id) if matches!(target.tree.inode(id).kind, Kind::Dir(_)) => id,
            Some(_) => {
                return Err(ImportError::ParentNotDirectory {
                    archive: label.to_owned(),
                    member: member.to_owned(),
                    parent: lossy(&path),
                })
            }
            None => target
                .tree
                .insert(&path, Inode { meta: dir_meta(), kind: Kind::Dir(BTreeMap::new()) })
                .map_err(|_| ImportError::BadPath { archive: label.to_owned(), member: member.to_owned() })?,
        };
        layer.touched.insert(path.clone());
    }
    Ok(())
}

/// Copy a member's data to the spool; returns the bytes copied (fewer than
/// the member's size if the archive ends first).
fn copy_data(
    entry: &mut tar::Entry<'_, &mut Decoded<'_>>,
    spool: &mut BufWriter<File>,
    walk: &Walk<'_>,
    member: &str,
) -> Result<u64, ImportError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(walk.member_error(e, member)),
        };
        spool.write_all(&buf[..n]).map_err(ImportError::Spool)?;
        total += n as u64;
    }
}

/// Whether the symlink target `target`, in a directory `depth` levels
/// below the root, climbs above the root (lexically). Absolute targets
/// never do: they resolve inside the container.
pub(super) fn climbs_out(depth: usize, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = depth as i64;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}
