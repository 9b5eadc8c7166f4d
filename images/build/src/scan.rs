//! Reading a host directory into a [`Tree`], as it is on disk.
//!
//! Nothing is followed or normalised: symlinks are stored as links,
//! owners (uid, gid), permission bits (with setuid, setgid, sticky),
//! extended attributes (every name the host lists: an unprivileged reader
//! does not see `trusted.*`), device numbers, FIFOs and sockets are kept,
//! and a non-directory reached by several names (a hard link: the same
//! device and inode number) becomes several entries for one inode. Regular
//! files are not read: they become [`FileData::Host`] with the size seen
//! now, read when the image is written.
//!
//! Modification times are clamped, so a build stays byte-reproducible
//! whatever times a checkout or a build step left on the files: an mtime
//! later than the clamp becomes the clamp. The clamp is `SOURCE_DATE_EPOCH`
//! (decimal seconds, as reproducible-builds.org defines it) when set, and
//! otherwise 0: every time of a directory source is then 0, the bytes
//! earlier cairn versions wrote. Times before 1970 become 0 (squashfs keeps
//! 32 unsigned bits). Python writes hash-checked `.pyc` files when
//! `SOURCE_DATE_EPOCH` is set, so bytecode compiled with it is valid
//! whatever the clamp did to the sources' times.
//!
//! This is a faithful reader: what a layer may not hold (device nodes,
//! overlayfs xattrs) is refused by the layer builder
//! ([`crate::layer`]), not here.
//!
//! The root directory may be given through a symlink; below it nothing is
//! followed, and no other filesystem is skipped (mount points are read as
//! ordinary directories).

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::tree::{FileData, Inode, InodeId, Kind, Meta, Tree, TreeError, NAME_MAX};

/// Why a directory could not be read into a tree.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A system call on `path` failed.
    #[error("{path}: {what}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("reading metadata", "listing the directory",
        /// "reading the symlink", "listing extended attributes", "reading
        /// extended attribute NAME").
        what: String,
        /// Cause.
        error: io::Error,
    },
    /// The source is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// A file name longer than 255 bytes.
    #[error("{0}: file name longer than 255 bytes")]
    NameTooLong(PathBuf),
    /// A file type that is none of directory, file, symlink, device, FIFO
    /// or socket.
    #[error("{0}: unknown file type")]
    UnknownType(PathBuf),
    /// `SOURCE_DATE_EPOCH` is set but is not a decimal number of seconds.
    #[error("SOURCE_DATE_EPOCH={0:?} is not a decimal number of seconds since 1970")]
    SourceDateEpoch(String),
    /// The tree refused an entry (a name it does not accept).
    #[error("{path}: {error}")]
    Tree {
        /// The file.
        path: PathBuf,
        /// Cause.
        error: TreeError,
    },
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> ScanError + '_ {
    let what = what.into();
    move |error| ScanError::Io { path: path.to_owned(), what, error }
}

/// The clamp for directory sources' modification times: `SOURCE_DATE_EPOCH`
/// if set (and not empty), else 0. Values past 2106 become `u32::MAX`.
pub fn mtime_clamp() -> Result<u32, ScanError> {
    match std::env::var_os("SOURCE_DATE_EPOCH") {
        None => Ok(0),
        Some(v) if v.is_empty() => Ok(0),
        Some(v) => parse_epoch(&v.to_string_lossy()),
    }
}

/// `SOURCE_DATE_EPOCH`'s value as a clamp.
pub fn parse_epoch(v: &str) -> Result<u32, ScanError> {
    let t = v.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScanError::SourceDateEpoch(v.to_owned()));
    }
    // All digits: only overflow can fail, and that is far past u32.
    Ok(t.parse::<u64>().map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Read the directory `path` (and everything below it) into a tree, its
/// modification times clamped to [`mtime_clamp`].
///
/// `path` itself may be a symlink to a directory; nothing below it is
/// followed.
pub fn scan_dir(path: &Path) -> Result<Tree, ScanError> {
    scan_dir_clamped(path, mtime_clamp()?)
}

/// [`scan_dir`] with modification times clamped to `clamp` (`u32::MAX`
/// keeps them as they are, as far as squashfs can hold them).
pub fn scan_dir_clamped(path: &Path, clamp: u32) -> Result<Tree, ScanError> {
    let meta = fs::metadata(path).map_err(io_err(path, "reading metadata"))?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory(path.to_owned()));
    }
    let root: PathBuf = if fs::symlink_metadata(path).map_err(io_err(path, "reading metadata"))?.is_symlink() {
        fs::canonicalize(path).map_err(io_err(path, "resolving the symlink"))?
    } else {
        path.to_owned()
    };
    let mut scan = Scan { tree: Tree::new(meta_of(&root, &meta, clamp)?), links: HashMap::new(), clamp };
    scan.dir(&root, &mut Vec::new())?;
    Ok(scan.tree)
}

struct Scan {
    tree: Tree,
    /// Non-directories with more than one link, by (device, inode), and the
    /// tree inode they became.
    links: HashMap<(u64, u64), InodeId>,
    /// The latest modification time kept.
    clamp: u32,
}

impl Scan {
    /// Add the entries of the host directory `host` (at tree path `rel`)
    /// and everything below them.
    fn dir(&mut self, host: &Path, rel: &mut Vec<u8>) -> Result<(), ScanError> {
        let mut names = Vec::new();
        for e in fs::read_dir(host).map_err(io_err(host, "listing the directory"))? {
            let e = e.map_err(io_err(host, "listing the directory"))?;
            names.push(e.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = host.join(&name);
            let name = name.as_bytes();
            if name.len() > NAME_MAX {
                return Err(ScanError::NameTooLong(path));
            }
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            self.entry(&path, rel)?;
            rel.truncate(len);
        }
        Ok(())
    }

    /// Add the host file `path` as the tree path `rel`.
    fn entry(&mut self, path: &Path, rel: &mut Vec<u8>) -> Result<(), ScanError> {
        let tree_err = |error| ScanError::Tree { path: path.to_owned(), error };
        let md = fs::symlink_metadata(path).map_err(io_err(path, "reading metadata"))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(id) = self.links.get(&(md.dev(), md.ino())) {
                return self.tree.hard_link(rel, *id).map_err(tree_err);
            }
        }
        let kind = if ft.is_dir() {
            Kind::Dir(BTreeMap::new())
        } else if ft.is_file() {
            Kind::File(FileData::Host { path: path.to_owned(), len: md.len() })
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err(path, "reading the symlink"))?;
            Kind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            Kind::CharDevice { major: libc::major(md.rdev()), minor: libc::minor(md.rdev()) }
        } else if ft.is_block_device() {
            Kind::BlockDevice { major: libc::major(md.rdev()), minor: libc::minor(md.rdev()) }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            return Err(ScanError::UnknownType(path.to_owned()));
        };
        let is_dir = matches!(kind, Kind::Dir(_));
        let id = self.tree.insert(rel, Inode { meta: meta_of(path, &md, self.clamp)?, kind }).map_err(tree_err)?;
        if is_dir {
            self.dir(path, rel)?;
        } else if md.nlink() > 1 {
            self.links.insert((md.dev(), md.ino()), id);
        }
        Ok(())
    }
}

/// Owner, mode, extended attributes and clamped modification time of
/// `path` (not following a symlink).
fn meta_of(path: &Path, md: &fs::Metadata, clamp: u32) -> Result<Meta, ScanError> {
    Ok(Meta {
        mode: (md.mode() & 0o7777) as u16,
        uid: md.uid(),
        gid: md.gid(),
        xattrs: xattrs(path)?,
        mtime: clamp_time(md.mtime(), clamp),
    })
}

/// A time in seconds (possibly before 1970) as squashfs holds it, no later
/// than `clamp`.
pub fn clamp_time(t: i64, clamp: u32) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX).min(clamp)
}

/// Call `f(buf)` (an `l*xattr` call filling `buf`, returning its length or
/// -1) with a buffer of the size `f(empty)` asks for, growing it when the
/// value grew in between. `Ok(None)` when the attribute vanished.
fn sized_call(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Option<Vec<u8>>> {
    loop {
        let want = f(&mut []);
        if want < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; want as usize];
        let got = f(&mut buf);
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// Every extended attribute of `path` (not following a symlink) the host
/// lets us see. A filesystem without xattr support has none.
fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ScanError> {
    let mut out = BTreeMap::new();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| ScanError::Io {
        path: path.to_owned(),
        what: "listing extended attributes".into(),
        error: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let list = sized_call(|buf| {
        let ptr = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
        // SAFETY: `c` is a NUL-terminated path; `ptr` is null with size 0
        // (asking for the size) or points to `buf.len()` writable bytes.
        unsafe { libc::llistxattr(c.as_ptr(), ptr, buf.len()) }
    });
    let list = match list {
        Ok(l) => l.unwrap_or_default(),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(error) => {
            return Err(ScanError::Io { path: path.to_owned(), what: "listing extended attributes".into(), error })
        }
    };
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let shown = String::from_utf8_lossy(name).into_owned();
        let cname = CString::new(name).map_err(|_| ScanError::Io {
            path: path.to_owned(),
            what: format!("reading extended attribute {shown}"),
            error: io::Error::from(io::ErrorKind::InvalidData),
        })?;
        let value = sized_call(|buf| {
            let ptr = if buf.is_empty() { std::ptr::null_mut() } else { buf.as_mut_ptr().cast() };
            // SAFETY: `c` and `cname` are NUL-terminated; `ptr` is null with
            // size 0 (asking for the size) or points to `buf.len()` writable
            // bytes.
            unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), ptr, buf.len()) }
        })
        .map_err(io_err(path, format!("reading extended attribute {shown}")))?;
        // An attribute removed since the listing is simply not there.
        if let Some(v) = value {
            out.insert(name.to_vec(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    pub(crate) fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Set an extended attribute on `path` (not following symlinks).
    pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        let n = CString::new(name)?;
        // SAFETY: both strings are NUL-terminated; `value` is readable for
        // `value.len()` bytes.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is NUL-terminated.
        let r = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn mkfifo(path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is NUL-terminated.
        let r = unsafe { libc::mkfifo(c.as_ptr(), 0o640) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn lookup(t: &Tree, path: &str) -> InodeId {
        ok(t.lookup(path.as_bytes())).unwrap_or_else(|| panic!("{path} missing"))
    }

    #[test]
    fn reads_types_modes_owners_xattrs_and_hard_links() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir_all(src.join("sub/deeper")));
        ok(fs::write(src.join("file"), "hello"));
        ok(fs::set_permissions(src.join("file"), fs::Permissions::from_mode(0o4751)));
        ok(fs::hard_link(src.join("file"), src.join("sub/again")));
        ok(fs::hard_link(src.join("file"), src.join("sub/deeper/third")));
        ok(symlink("../file", src.join("sub/link")));
        ok(fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o2710)));
        ok(mkfifo(&src.join("fifo")));
        let _sock = ok(std::os::unix::net::UnixListener::bind(src.join("sock")));
        // A file linked from outside the tree is one name inside it.
        ok(fs::write(d.path().join("outside"), "o"));
        ok(fs::hard_link(d.path().join("outside"), src.join("inside")));
        let xattrs = set_xattr(&src.join("file"), "user.comment", b"hi\0there").is_ok();
        if !xattrs {
            eprintln!("skipping the xattr checks: {} does not take user xattrs", d.path().display());
        }
        if is_root() {
            ok(std::os::unix::fs::lchown(src.join("file"), Some(1000), Some(1001)));
            ok(std::os::unix::fs::lchown(src.join("sub/link"), Some(7), Some(8)));
            ok(mknod(&src.join("whiteout"), libc::S_IFCHR, 0, 0));
            ok(mknod(&src.join("disk"), libc::S_IFBLK | 0o600, 259, 300_000));
            ok(set_xattr(&src.join("sub"), "trusted.overlay.opaque", b"y"));
            // chown clears setuid: set the mode again.
            ok(fs::set_permissions(src.join("file"), fs::Permissions::from_mode(0o4751)));
        } else {
            eprintln!("skipping the owner, device and trusted.* checks: not root");
        }

        let t = ok(scan_dir(&src));
        let file = lookup(&t, "file");
        assert_eq!(lookup(&t, "sub/again"), file);
        assert_eq!(lookup(&t, "sub/deeper/third"), file);
        assert_eq!(t.link_counts()[file], 3);
        let f = t.inode(file);
        assert_eq!(f.meta.mode, 0o4751);
        assert_eq!(f.kind, Kind::File(FileData::Host { path: src.join("file"), len: 5 }));
        assert_eq!(t.inode(lookup(&t, "sub")).meta.mode, 0o2710);
        assert_eq!(t.inode(lookup(&t, "sub/link")).kind, Kind::Symlink(b"../file".to_vec()));
        assert_eq!(t.inode(lookup(&t, "fifo")).kind, Kind::Fifo);
        assert_eq!(t.inode(lookup(&t, "fifo")).meta.mode, 0o640 & !umask());
        assert_eq!(t.inode(lookup(&t, "sock")).kind, Kind::Socket);
        assert_eq!(t.link_counts()[lookup(&t, "inside")], 1);
        if xattrs {
            assert_eq!(f.meta.xattrs.get(&b"user.comment"[..]).map(Vec::as_slice), Some(&b"hi\0there"[..]));
        }
        if is_root() {
            assert_eq!((f.meta.uid, f.meta.gid), (1000, 1001));
            let l = &t.inode(lookup(&t, "sub/link")).meta;
            assert_eq!((l.uid, l.gid), (7, 8));
            assert_eq!(t.inode(lookup(&t, "whiteout")).kind, Kind::CharDevice { major: 0, minor: 0 });
            assert_eq!(t.inode(lookup(&t, "whiteout")).meta.mode, 0);
            assert_eq!(t.inode(lookup(&t, "disk")).kind, Kind::BlockDevice { major: 259, minor: 300_000 });
            let sub = &t.inode(lookup(&t, "sub")).meta;
            assert_eq!(sub.xattrs.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice), Some(&b"y"[..]));
        }
        // Every reachable inode once: root, file, sub, again(=file), deeper,
        // third(=file), link, fifo, sock, inside (+ whiteout, disk as root).
        assert_eq!(t.reachable().len(), if is_root() { 10 } else { 8 });
    }

    fn set_mtime(path: &Path, secs: u64) {
        let f = ok(fs::File::open(path));
        ok(f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)));
    }

    #[test]
    fn modification_times_are_clamped() {
        let d = ok(tempfile::tempdir());
        let src = d.path().join("src");
        ok(fs::create_dir_all(src.join("sub")));
        ok(fs::write(src.join("old.py"), "x = 1\n"));
        ok(fs::write(src.join("sub/new"), "n"));
        set_mtime(&src.join("old.py"), 1_000_000_000);
        set_mtime(&src.join("sub/new"), 2_000_000_000);
        set_mtime(&src.join("sub"), 1_600_000_000);
        set_mtime(&src, 1_400_000_000);
        let times = |clamp| {
            let t = ok(scan_dir_clamped(&src, clamp));
            ["old.py", "sub/new", "sub"]
                .map(|p| t.inode(lookup(&t, p)).meta.mtime)
                .to_vec()
                .into_iter()
                .chain([t.inode(crate::tree::ROOT).meta.mtime])
                .collect::<Vec<_>>()
        };
        assert_eq!(times(u32::MAX), [1_000_000_000, 2_000_000_000, 1_600_000_000, 1_400_000_000]);
        assert_eq!(times(1_500_000_000), [1_000_000_000, 1_500_000_000, 1_500_000_000, 1_400_000_000]);
        assert_eq!(times(0), [0, 0, 0, 0]);
        assert_eq!(clamp_time(-5, u32::MAX), 0);
        assert_eq!(clamp_time(i64::from(u32::MAX) + 10, u32::MAX), u32::MAX);
    }

    #[test]
    fn source_date_epoch_is_decimal_seconds() {
        assert_eq!(parse_epoch("1700000000").ok(), Some(1_700_000_000));
        assert_eq!(parse_epoch("0").ok(), Some(0));
        assert_eq!(parse_epoch("99999999999999999999999").ok(), Some(u32::MAX));
        for bad in ["", "-1", "1.5", "0x10", "soon"] {
            assert!(matches!(parse_epoch(bad), Err(ScanError::SourceDateEpoch(v)) if v == bad), "{bad}");
        }
    }

    fn umask() -> u16 {
        // SAFETY: umask has no preconditions; the old mask is put back at once.
        let m = unsafe { libc::umask(0o022) };
        // SAFETY: as above.
        unsafe { libc::umask(m) };
        m as u16
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let d = ok(tempfile::tempdir());
        let file = d.path().join("file");
        ok(fs::write(&file, "x"));
        assert!(matches!(scan_dir(&file), Err(ScanError::NotADirectory(_))));
        let r = scan_dir(&d.path().join("missing"));
        assert!(matches!(&r, Err(ScanError::Io { path, .. }) if path.ends_with("missing")), "{r:?}");
        // The root may be a symlink to a directory; below it links stay links.
        let src = d.path().join("src");
        ok(fs::create_dir(&src));
        ok(symlink(&src, d.path().join("via")));
        ok(symlink(d.path(), src.join("up")));
        let t = ok(scan_dir(&d.path().join("via")));
        assert!(matches!(t.inode(lookup(&t, "up")).kind, Kind::Symlink(_)));
        assert_eq!(t.reachable().len(), 2);
    }
}
