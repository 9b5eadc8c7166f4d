//! Leave the initramfs: the kernel's initial root (rootfs) has no parent
//! mount, and pivot_root(2) refuses to move such a root, so containers could
//! not pivot. Like `switch_root`, cairn-init copies the initramfs into a
//! tmpfs, moves the tmpfs over `/` and chroots into it; the original
//! files are freed later ([`OldRoot::free`]), off the first starts' path.
//! From then on every mount namespace's root has a parent. What the
//! caller names is not copied: the boot modules (loaded before, from
//! the initramfs: nothing reads them again, and the tmpfs would hold them
//! for the device's life), the on-demand ones (kept open until loaded or
//! not needed: `crate::modules::hold`) and `/init` itself (running; its
//! pages stay while it does).

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use cairn_runtime::sys::{self, SysError, SysResult};

const NEW_ROOT: &str = "/.cairn-root";
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// True when `/` is the kernel's initramfs (ramfs or tmpfs).
pub fn on_initramfs() -> bool {
    let Ok(st) = nix::sys::statfs::statfs(c"/") else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)]
    let t = st.filesystem_type().0 as i64;
    t == RAMFS_MAGIC || t == TMPFS_MAGIC
}

/// The initramfs [`switch`] left: out of every path's reach, its files
/// still in memory until [`OldRoot::free`] deletes them.
#[derive(Debug)]
pub struct OldRoot(OwnedFd);

impl OldRoot {
    /// Delete the initramfs files (not crossing into other mounts) so their
    /// memory is freed; returns how many entries went. Failures are
    /// ignored: at worst some RAM stays in use. PID 1 calls it once its
    /// first starts are under way: nothing on their path waits for it.
    pub fn free(self) -> usize {
        let dev = nix::sys::stat::fstat(&self.0).map_or(0, |st| st.st_dev);
        remove_at(self.0.as_fd(), dev)
    }
}

/// Copy the initramfs into a tmpfs, except the files in `left` (absolute
/// paths: the boot modules, loaded already, and what the caller keeps
/// open), and make that the root. Returns the number of bytes copied, and
/// the old root, whose files are freed later.
pub fn switch(left: &[String]) -> SysResult<(u64, OldRoot)> {
    sys::mkdir(NEW_ROOT, 0o755)?;
    sys::mount("new root tmpfs", Some("rootfs"), NEW_ROOT, Some("tmpfs"), libc::MS_NOSUID, Some("mode=0755,size=64m"))?;
    let left: Vec<&Path> = left.iter().map(Path::new).collect();
    let copied = copy_tree(Path::new("/"), Path::new(NEW_ROOT), &left)?;
    let old = OldRoot(sys::open("/", libc::O_RDONLY | libc::O_DIRECTORY)?);
    sys::chdir(NEW_ROOT)?;
    sys::mount("move new root", Some("."), "/", None, libc::MS_MOVE, None)?;
    nix::unistd::chroot(c".").map_err(sys::err("chroot", NEW_ROOT))?;
    sys::chdir("/")?;
    Ok((copied, old))
}

fn err(op: &'static str, p: &Path, e: std::io::Error) -> SysError {
    SysError { op, arg: p.display().to_string(), errno: e.raw_os_error().unwrap_or(libc::EIO) }
}

fn copy_tree(from: &Path, to: &Path, left: &[&Path]) -> SysResult<u64> {
    let mut total = 0;
    for entry in fs::read_dir(from).map_err(|e| err("read_dir", from, e))? {
        let entry = entry.map_err(|e| err("read_dir", from, e))?;
        let src = entry.path();
        if src == Path::new(NEW_ROOT) || left.contains(&src.as_path()) {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src).map_err(|e| err("stat", &src, e))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            fs::create_dir_all(&dst).map_err(|e| err("mkdir", &dst, e))?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode)).map_err(|e| err("chmod", &dst, e))?;
            total += copy_tree(&src, &dst, left)?;
        } else if ft.is_file() {
            total += fs::copy(&src, &dst).map_err(|e| err("copy", &src, e))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| err("readlink", &src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| err("symlink", &dst, e))?;
        } else if ft.is_char_device() {
            let rdev = meta.rdev();
            let major = ((rdev >> 8) & 0xfff) as u32;
            let minor = ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as u32;
            sys::mknod_char(&dst.display().to_string(), mode, major, minor)?;
        }
    }
    Ok(total)
}

/// Delete everything under the directory `dir` on device `dev` (a
/// directory on another is left, with what is under it); returns how
/// many entries went.
fn remove_at(dir: BorrowedFd, dev: u64) -> usize {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(mut d) = Dir::openat(dir, c".", flags, Mode::empty()) else { return 0 };
    let entries: Vec<(CString, Option<Type>)> = d
        .iter()
        .flatten()
        .filter(|e| ![&b"."[..], &b".."[..]].contains(&e.file_name().to_bytes()))
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    let mut removed = 0;
    for (name, kind) in entries {
        let sub = match kind {
            Some(Type::Directory) | None => nix::fcntl::openat(dir, name.as_c_str(), flags, Mode::empty()).ok(),
            Some(_) => None,
        };
        let gone = match sub {
            Some(sub) => {
                if nix::sys::stat::fstat(&sub).map_or(true, |st| st.st_dev != dev) {
                    continue;
                }
                removed += remove_at(sub.as_fd(), dev);
                unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir)
            }
            None => unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir),
        };
        removed += usize::from(gone.is_ok());
    }
    removed
}
