//! Thin, checked wrappers over the system calls the runtime makes. Each
//! failure is a [`SysError`] naming the call and its main argument.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

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

/// Turns the [`Errno`] of a `nix` call into a [`SysError`] naming the call
/// and its argument: `nix::…(…).map_err(sys::err("mount", target))`.
pub fn err(op: &'static str, arg: impl fmt::Display) -> impl FnOnce(Errno) -> SysError {
    move |e| sys_error(op, &arg, e)
}

/// The one non-generic body behind [`err`] (keeps PID 1 small).
#[inline(never)]
fn sys_error(op: &'static str, arg: &dyn fmt::Display, e: Errno) -> SysError {
    SysError { op, arg: arg.to_string(), errno: e as i32 }
}

/// `Ok` also when the call failed with `errno` (e.g. EEXIST for mkdir).
fn tolerate(r: nix::Result<()>, errno: Errno) -> nix::Result<()> {
    match r {
        Err(e) if e == errno => Ok(()),
        r => r,
    }
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
    let flags = nix::mount::MsFlags::from_bits_retain(flags);
    nix::mount::mount(src.as_deref(), tgt.as_c_str(), fst.as_deref(), flags, dat.as_deref()).map_err(err(op, target))
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> SysResult<()> {
    let t = cstr(target)?;
    nix::mount::umount2(t.as_c_str(), nix::mount::MntFlags::from_bits_retain(flags)).map_err(err("umount", target))
}

/// mkdir(2), tolerating an existing directory.
pub fn mkdir(path: &str, mode: libc::mode_t) -> SysResult<()> {
    let p = cstr(path)?;
    tolerate(nix::unistd::mkdir(p.as_c_str(), Mode::from_bits_retain(mode)), Errno::EEXIST).map_err(err("mkdir", path))
}

/// mkdir -p. The whole path is tried first, and its parents only if it
/// cannot be made for want of them: a path that mostly exists (a
/// container's state directory at every start) costs one `mkdir`, not
/// one per component. Something other than a directory already at a
/// component is left to the caller's next step, as with `mkdir -p`'s
/// EEXIST.
pub fn mkdir_all(path: &str, mode: libc::mode_t) -> SysResult<()> {
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Ok(());
    }
    let p = cstr(path)?;
    match nix::unistd::mkdir(p.as_c_str(), Mode::from_bits_retain(mode)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(Errno::ENOENT) => {
            let parent = path.rsplit_once('/').map_or("", |(dir, _)| dir);
            if parent.is_empty() {
                return Err(sys_error("mkdir", &path, Errno::ENOENT));
            }
            mkdir_all(parent, mode)?;
            mkdir(path, mode)
        }
        Err(e) => Err(sys_error("mkdir", &path, e)),
    }
}

/// mknod(2) for a character device.
pub fn mknod_char(path: &str, mode: libc::mode_t, major: u32, minor: u32) -> SysResult<()> {
    let p = cstr(path)?;
    let dev = nix::sys::stat::makedev(major.into(), minor.into());
    tolerate(nix::sys::stat::mknod(p.as_c_str(), SFlag::S_IFCHR, Mode::from_bits_retain(mode), dev), Errno::EEXIST)
        .map_err(err("mknod", path))
}

/// Create an empty regular file (a bind mount target).
pub fn touch(path: &str) -> SysResult<()> {
    let p = cstr(path)?;
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    nix::fcntl::open(p.as_c_str(), flags, Mode::from_bits_retain(0o644)).map(drop).map_err(err("create", path))
}

/// symlink(2), tolerating an existing link.
pub fn symlink(target: &str, link: &str) -> SysResult<()> {
    let t = cstr(target)?;
    let l = cstr(link)?;
    tolerate(nix::unistd::symlinkat(t.as_c_str(), nix::fcntl::AT_FDCWD, l.as_c_str()), Errno::EEXIST)
        .map_err(err("symlink", link))
}

/// chdir(2).
pub fn chdir(path: &str) -> SysResult<()> {
    let p = cstr(path)?;
    nix::unistd::chdir(p.as_c_str()).map_err(err("chdir", path))
}

/// pivot_root(2) with new_root and put_old both ".", the idiom that needs no
/// directory for the old root: the old root ends up stacked under the new
/// one and is detached right after.
pub fn pivot_root_here() -> SysResult<()> {
    nix::unistd::pivot_root(c".", c".").map_err(err("pivot_root", "."))
}

/// sethostname(2).
pub fn sethostname(name: &str) -> SysResult<()> {
    nix::unistd::sethostname(name).map_err(err("sethostname", name))
}

/// Open a path with flags (close-on-exec). Through `openat`: musl's
/// `open` follows every `O_CLOEXEC` open with an `fcntl(F_SETFD)` for
/// kernels older than 2.6.23, a system call per open that a container's
/// start makes dozens of times.
pub fn open(path: &str, flags: libc::c_int) -> SysResult<OwnedFd> {
    let p = cstr(path)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC;
    nix::fcntl::openat(nix::fcntl::AT_FDCWD, p.as_c_str(), flags, Mode::from_bits_retain(0o644))
        .map_err(err("open", path))
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(err("pipe2", ""))
}

/// write(2) of a whole buffer, retrying on EINTR and short writes.
pub fn write_all(fd: &impl AsFd, mut buf: &[u8]) -> SysResult<()> {
    let fd = fd.as_fd();
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = buf.get(n..).unwrap_or(&[]),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(err("write", fd.as_raw_fd())(e)),
        }
    }
    Ok(())
}

/// Read until EOF (or `max` bytes).
pub fn read_to_end(fd: &impl AsFd, max: usize) -> SysResult<Vec<u8>> {
    let fd = fd.as_fd();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while out.len() < max {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(err("read", fd.as_raw_fd())(e)),
        }
    }
    Ok(out)
}

/// Add O_NONBLOCK to the file status flags of `fd` (F_GETFL, then F_SETFL).
pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// _exit(2): end this process at once, without atexit handlers or std's
/// buffers (what a forked or cloned child must do). nix has no wrapper.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// How many CPUs this thread may run on (sched_getaffinity(2)); 1 if the
/// kernel will not say. std's `available_parallelism` also reads cgroup
/// files, and costs PID 1 several KiB of code for it.
pub fn cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return 1;
    }
    // SAFETY: CPU_COUNT only reads the set.
    usize::try_from(unsafe { libc::CPU_COUNT(&set) }).map_or(1, |n| n.max(1))
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: kill has no memory-safety preconditions. Raw libc, not nix:
    // nix's `Signal` has no realtime signals, and a stop signal may be one.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(SysError { op: "kill", arg: pid.to_string(), errno: errno() })
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
///
/// A path that exists is first opened in one `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, which refuses the same
/// things; if that fails in any way (a symlink, a missing component, a
/// kernel before 5.6), the walk above runs and reports what it finds.
pub fn open_in_root(root: &str, rel: &str, create: Create) -> SysResult<OwnedFd> {
    open_in_root_at(&open_root(root)?, root, rel, create)
}

/// `root` opened for [`open_in_root_at`].
pub fn open_root(root: &str) -> SysResult<OwnedFd> {
    open(root, libc::O_PATH | libc::O_DIRECTORY)
}

/// [`open_in_root`] from the root opened already ([`open_root`]): a plan
/// of many steps opens its root once, not once a step.
pub fn open_in_root_at(dir: &OwnedFd, root: &str, rel: &str, create: Create) -> SysResult<OwnedFd> {
    let relative = |p: &str| p == "." || p == "..";
    if !rel.split('/').any(relative) {
        if let Some(fd) = open_beneath(dir, rel) {
            return Ok(fd);
        }
    }
    let own =
        dir.try_clone().map_err(|e| SysError { op: "dup", arg: root.into(), errno: e.raw_os_error().unwrap_or(0) })?;
    walk_in_root(own, root, rel, create)
}

/// `rel` below `dir` in one `openat2` (see [`open_in_root`]); None if the
/// kernel refused it, for whatever reason.
fn open_beneath(dir: &OwnedFd, rel: &str) -> Option<OwnedFd> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(dir, rel, how).ok()
}

/// The component walk of [`open_in_root`], from `dir` (the root, opened).
fn walk_in_root(mut dir: OwnedFd, root: &str, rel: &str, create: Create) -> SysResult<OwnedFd> {
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
            // mkdirat creates nothing if the name exists (a symlink there is
            // caught by the open below).
            let made = nix::sys::stat::mkdirat(&dir, name.as_c_str(), Mode::from_bits_retain(0o755));
            tolerate(made, Errno::EEXIST).map_err(err("mkdir", &at))?;
        }
        // O_PATH | O_NOFOLLOW opens the entry itself, never what a symlink
        // points to, and has no side effect.
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let next = nix::fcntl::openat(&dir, name.as_c_str(), flags, Mode::empty())
            .map_err(err("open in container root", &at))?;
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
    // O_PATH descriptors support fstat.
    let st = nix::sys::stat::fstat(fd).map_err(err("stat", path))?;
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
        // O_NOFOLLOW refuses a symlink at the name (ELOOP), O_NONBLOCK keeps
        // a FIFO there from blocking; the descriptor is closed at once.
        let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        return match nix::fcntl::openat(dir, n.as_c_str(), flags, Mode::from_bits_retain(0o644)) {
            Ok(_) => Ok(()),
            Err(Errno::ELOOP) => Err(SysError { op: "refuse symlink", arg: path.into(), errno: SYMLINK_ERRNO }),
            Err(e) => Err(err("create", path)(e)),
        };
    }
    // mknodat never follows a symlink at the final name (EEXIST).
    let made = nix::sys::stat::mknodat(
        dir,
        n.as_c_str(),
        SFlag::from_bits_retain(kind),
        Mode::from_bits_retain(mode & 0o777),
        rdev,
    );
    tolerate(made, Errno::EEXIST).map_err(err("mknod", path))
}

/// symlinkat(2) in the directory `dir`, tolerating an existing entry.
pub fn symlink_at(target: &str, dir: &OwnedFd, name: &str, path: &str) -> SysResult<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    tolerate(nix::unistd::symlinkat(t.as_c_str(), dir, n.as_c_str()), Errno::EEXIST).map_err(err("symlink", path))
}

/// Close every descriptor but stdio and `keep`: what a container's init (or
/// an exec helper) inherited from PID 1, so nothing of the host stays
/// reachable (e.g. through the init's /proc/1/fd). Returns the errno.
pub fn close_all_but(keep: &[i32]) -> Result<(), i32> {
    let mut keep: Vec<libc::c_uint> =
        keep.iter().filter_map(|k| libc::c_uint::try_from(*k).ok()).filter(|k| *k >= 3).collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for last in keep.iter().map(|k| k.checked_sub(1)).chain([Some(libc::c_uint::MAX)]) {
        if let Some(last) = last.filter(|l| *l >= first) {
            // SAFETY: close_range only closes descriptors; none of them is
            // used by the caller after this point except 0, 1, 2 and `keep`.
            if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) } != 0 {
                return Err(errno());
            }
        }
        first = last.map_or(libc::c_uint::MAX, |l| l.saturating_add(2));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mkdir_all_makes_what_is_missing_and_stops_at_a_file() {
        let root = std::env::temp_dir().join(format!("cairn-mkdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let r = root.to_str().unwrap();
        let deep = format!("{r}/a/b/c/");
        mkdir_all(&deep, 0o755).unwrap();
        assert!(root.join("a/b/c").is_dir());
        mkdir_all(&deep, 0o755).unwrap();
        mkdir_all(&format!("{r}/a/b/d"), 0o700).unwrap();
        assert!(root.join("a/b/d").is_dir());
        std::fs::write(root.join("a/file"), b"").unwrap();
        let e = mkdir_all(&format!("{r}/a/file/x/y"), 0o755).unwrap_err();
        assert_eq!((e.op, e.errno), ("mkdir", libc::ENOTDIR), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

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
        // `..` that stays inside is refused too (openat2 alone would take it).
        assert_eq!(err("proc/../proc", Create::Nothing).map_err(|e| e.2), Err(libc::EINVAL));
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
        // The one-call path: what exists and has no symlink on the way.
        let top = open(r, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let beneath = |rel: &str| open_beneath(&top, rel).map(|fd| file_type(&fd, rel).unwrap());
        assert_eq!(beneath("dev/pts"), Some(libc::S_IFDIR));
        assert_eq!(beneath("/dev/file"), Some(libc::S_IFREG));
        assert_eq!(beneath(""), Some(libc::S_IFDIR));
        for refused in ["run", "run/cairn", "proc/up", "proc/up/etc", "dev/link", "dev/none", "../x"] {
            assert_eq!(beneath(refused), None, "{refused}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
