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
