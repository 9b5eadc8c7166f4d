//! Thin, checked wrappers over the system calls the runtime makes. Each
//! failure is a [`SysError`] naming the call and its main argument.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A failed system call: what was attempted, on what, and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    /// The call, e.g. "mount overlay".
    pub op: &'static str,
    /// Its main argument (usually a path).
    pub arg: String,
    /// The errno.
    pub errno: i32,
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {} (errno {})", self.op, self.arg, errno_name(self.errno), self.errno)
    }
}

impl std::error::Error for SysError {}

/// Result of a wrapped call.
pub type SysResult<T> = Result<T, SysError>;

/// The current errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fail<T>(op: &'static str, arg: impl fmt::Display) -> SysResult<T> {
    Err(SysError { op, arg: arg.to_string(), errno: errno() })
}

/// Symbolic name of common errnos, for log lines.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ETXTBSY => "ETXTBSY",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ENOTBLK => "ENOTBLK",
        _ => "errno",
    }
}

/// A path as a C string; interior NULs are an EINVAL error.
pub fn cstr(s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| SysError { op: "path", arg: s.replace('\0', "\\0"), errno: libc::EINVAL })
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// mount(2). `op` names the mount in errors.
pub fn mount(
    op: &'static str,
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> SysResult<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fst = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null where mount(2) allows it.
    let rc = unsafe { libc::mount(opt_ptr(&src), tgt.as_ptr(), opt_ptr(&fst), flags, opt_ptr(&dat).cast()) };
    if rc == 0 {
        Ok(())
    } else {
        fail(op, target)
    }
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> SysResult<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid C string for the duration of the call.
    if unsafe { libc::umount2(t.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        fail("umount", target)
    }
}

/// mkdir(2), tolerating an existing directory.
pub fn mkdir(path: &str, mode: libc::mode_t) -> SysResult<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string.
    if unsafe { libc::mkdir(p.as_ptr(), mode) } == 0 || errno() == libc::EEXIST {
        Ok(())
    } else {
        fail("mkdir", path)
    }
}

/// mkdir -p.
pub fn mkdir_all(path: &str, mode: libc::mode_t) -> SysResult<()> {
    let mut at = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        mkdir(&at, mode)?;
    }
    Ok(())
}

/// mknod(2) for a character device.
pub fn mknod_char(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> SysResult<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string; makedev is a pure computation.
    let rc = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | mode, libc::makedev(major, minor)) };
    if rc == 0 || errno() == libc::EEXIST {
        Ok(())
    } else {
        fail("mknod", path)
    }
}

/// Create an empty regular file (a bind mount target).
pub fn touch(path: &str) -> SysResult<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string; the returned descriptor is closed at once.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return fail("create", path);
    }
    // SAFETY: `fd` was just opened by us and is not used again.
    unsafe { libc::close(fd) };
    Ok(())
}

/// symlink(2), tolerating an existing link.
pub fn symlink(target: &str, link: &str) -> SysResult<()> {
    let t = cstr(target)?;
    let l = cstr(link)?;
    // SAFETY: both are valid C strings.
    if unsafe { libc::symlink(t.as_ptr(), l.as_ptr()) } == 0 || errno() == libc::EEXIST {
        Ok(())
    } else {
        fail("symlink", link)
    }
}

/// chdir(2).
pub fn chdir(path: &str) -> SysResult<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string.
    if unsafe { libc::chdir(p.as_ptr()) } == 0 {
        Ok(())
    } else {
        fail("chdir", path)
    }
}

/// pivot_root(2) with new_root and put_old both ".", the idiom that needs no
/// directory for the old root: the old root ends up stacked under the new
/// one and is detached right after.
pub fn pivot_root_here() -> SysResult<()> {
    let dot = cstr(".")?;
    // SAFETY: pivot_root has no libc wrapper; the arguments are valid C strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } == 0 {
        Ok(())
    } else {
        fail("pivot_root", ".")
    }
}

/// sethostname(2).
pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } == 0 {
        Ok(())
    } else {
        fail("sethostname", name)
    }
}

/// Open a path with flags.
pub fn open(path: &str, flags: libc::c_int) -> SysResult<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return fail("open", path);
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return fail("pipe2", "");
    }
    // SAFETY: both descriptors are fresh and owned by us from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// write(2) of a whole buffer, retrying on EINTR and short writes.
pub fn write_all(fd: &impl AsRawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return fail("write", fd.as_raw_fd());
        }
        buf = buf.get(n as usize..).unwrap_or(&[]);
    }
    Ok(())
}

/// Read until EOF (or `max` bytes).
pub fn read_to_end(fd: &impl AsRawFd, max: usize) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < max {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return fail("read", fd.as_raw_fd());
        }
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n as usize).unwrap_or(&[]));
    }
    Ok(out)
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        fail("kill", pid)
    }
}

/// What [`open_in_root`] does with missing directories on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing component is ENOENT.
    Nothing,
    /// mkdir every missing component, the last one included (mkdir -p).
    Dirs,
}

/// The errno [`open_in_root`] reports for a symlink on the way.
pub const SYMLINK_ERRNO: i32 = libc::ELOOP;

/// Open `rel` below the directory `root` as an `O_PATH` descriptor, one
/// component at a time with `openat(O_PATH | O_NOFOLLOW)`, so that nothing
/// a layer put there can lead out of the root: a symlink at any component
/// is an error naming it (`refuse symlink`, ELOOP), and so are `.` and
/// `..` components (EINVAL). `root` itself is a path PID 1 made and is
/// opened as it is. An empty `rel` opens `root`. This is the walk runc
/// does for mount targets since CVE-2021-30465; mounts are then made on
/// `/proc/self/fd/N` of the result ([`fd_path`]).
pub fn open_in_root(root: &str, rel: &str, create: Create) -> SysResult<OwnedFd> {
    let mut dir = open(root, libc::O_PATH | libc::O_DIRECTORY)?;
    let mut at = root.trim_end_matches('/').to_owned();
    let mut parts = rel.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        at.push('/');
        at.push_str(part);
        if part == "." || part == ".." {
            return Err(SysError { op: "refuse relative component", arg: at, errno: libc::EINVAL });
        }
        let name = cstr(part)?;
        if create == Create::Dirs {
            // SAFETY: `dir` is an open directory descriptor and `name` a
            // valid C string; mkdirat creates nothing if the name exists
            // (a symlink there is caught by the open below).
            if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 && errno() != libc::EEXIST {
                return fail("mkdir", &at);
            }
        }
        // SAFETY: as above; O_PATH | O_NOFOLLOW opens the entry itself,
        // never what a symlink points to, and has no side effect.
        let fd =
            unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            return fail("open in container root", &at);
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let next = unsafe { OwnedFd::from_raw_fd(fd) };
        let kind = file_type(&next, &at)?;
        if kind == libc::S_IFLNK {
            return Err(SysError { op: "refuse symlink", arg: at, errno: SYMLINK_ERRNO });
        }
        if parts.peek().is_some() && kind != libc::S_IFDIR {
            return Err(SysError { op: "open in container root", arg: at, errno: libc::ENOTDIR });
        }
        dir = next;
    }
    Ok(dir)
}

/// The `S_IFMT` bits of what `fd` refers to (`path` names it in errors).
pub fn file_type(fd: &OwnedFd, path: &str) -> SysResult<libc::mode_t> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open (O_PATH descriptors support fstat) and `st` is
    // writable memory of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return fail("stat", path);
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// `/proc/self/fd/N` for a descriptor: the path through which mount(2)
/// reaches exactly the file the descriptor was opened on.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Make the entry `name` in the directory `dir` (an O_PATH descriptor from
/// [`open_in_root`]) without following a symlink there: a character or block
/// device (`kind` S_IFCHR/S_IFBLK with `rdev`), a symlink to `target`, or
/// an empty regular file (`kind` S_IFREG). An existing entry of a device
/// or link is left as it is; `path` names the entry in errors.
pub fn make_at(
    dir: &OwnedFd,
    name: &str,
    path: &str,
    kind: libc::mode_t,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> SysResult<()> {
    let n = cstr(name)?;
    if kind == libc::S_IFREG {
        // SAFETY: `dir` is an open directory and `n` a valid C string;
        // O_NOFOLLOW refuses a symlink at the name (ELOOP), O_NONBLOCK keeps
        // a FIFO there from blocking; the descriptor is closed at once.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return if errno() == libc::ELOOP {
                Err(SysError { op: "refuse symlink", arg: path.into(), errno: SYMLINK_ERRNO })
            } else {
                fail("create", path)
            };
        }
        // SAFETY: `fd` was just opened by us and is not used again.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    // SAFETY: `dir` is an open directory and `n` a valid C string;
    // mknodat never follows a symlink at the final name (EEXIST).
    if unsafe { libc::mknodat(dir.as_raw_fd(), n.as_ptr(), kind | (mode & 0o777), rdev) } == 0
        || errno() == libc::EEXIST
    {
        Ok(())
    } else {
        fail("mknod", path)
    }
}

/// symlinkat(2) in the directory `dir`, tolerating an existing entry.
pub fn symlink_at(target: &str, dir: &OwnedFd, name: &str, path: &str) -> SysResult<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    // SAFETY: both are valid C strings and `dir` an open directory.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } == 0 || errno() == libc::EEXIST {
        Ok(())
    } else {
        fail("symlink", path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_refuses_symlinks_and_dot_dot_and_creates_dirs() {
        let root = std::env::temp_dir().join(format!("cairn-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/", root.join("run")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("proc/up")).unwrap();
        let r = root.to_str().unwrap();
        let err = |rel: &str, c| open_in_root(r, rel, c).map(drop).map_err(|e| (e.op, e.arg, e.errno));
        assert_eq!(err("run/cairn", Create::Dirs), Err(("refuse symlink", format!("{r}/run"), libc::ELOOP)));
        assert_eq!(err("run", Create::Nothing), Err(("refuse symlink", format!("{r}/run"), libc::ELOOP)));
        assert_eq!(err("proc/up/etc", Create::Nothing), Err(("refuse symlink", format!("{r}/proc/up"), libc::ELOOP)));
        assert_eq!(err("proc/../..", Create::Nothing).map_err(|e| e.2), Err(libc::EINVAL));
        assert_eq!(err("proc/none", Create::Nothing).map_err(|e| e.2), Err(libc::ENOENT));
        assert_eq!(err("dev/pts", Create::Dirs), Ok(()));
        assert!(root.join("dev/pts").is_dir());
        assert!(!std::path::Path::new("/cairn").exists());
        let dev = open_in_root(r, "dev", Create::Nothing).unwrap();
        assert_eq!(file_type(&dev, "dev").unwrap(), libc::S_IFDIR);
        make_at(&dev, "file", "dev/file", libc::S_IFREG, 0o644, 0).unwrap();
        symlink_at("/etc/passwd", &dev, "link", "dev/link").unwrap();
        assert_eq!(
            make_at(&dev, "link", "dev/link", libc::S_IFREG, 0o644, 0).map_err(|e| (e.op, e.errno)),
            Err(("refuse symlink", libc::ELOOP))
        );
        assert!(fd_path(&dev).starts_with("/proc/self/fd/"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
