//! Leave the initramfs: the kernel's initial root (rootfs) has no parent
//! mount, and pivot_root(2) refuses to move such a root, so containers could
//! not pivot. Like `switch_root`, cairn-init copies the initramfs into a
//! tmpfs, frees the original files, moves the tmpfs over `/` and chroots
//! into it. From then on every mount namespace's root has a parent. What
//! the caller names is not copied: the boot modules (loaded before, from
//! the initramfs: nothing reads them again, and the tmpfs would hold them
//! for the device's life), the on-demand ones (kept open until loaded or
//! not needed: `crate::modules::hold`) and `/init` itself (running; its
//! pages stay while it does).

use std::fs;
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

/// Copy the initramfs into a tmpfs, except the files in `left` (absolute
/// paths: the boot modules, loaded already), and make that the root.
/// Returns the number of bytes copied.
pub fn switch(left: &[String]) -> SysResult<u64> {
    sys::mkdir(NEW_ROOT, 0o755)?;
    sys::mount("new root tmpfs", Some("rootfs"), NEW_ROOT, Some("tmpfs"), libc::MS_NOSUID, Some("mode=0755,size=64m"))?;
    let left: Vec<&Path> = left.iter().map(Path::new).collect();
    let copied = copy_tree(Path::new("/"), Path::new(NEW_ROOT), &left)?;
    remove_tree(Path::new("/"));
    sys::chdir(NEW_ROOT)?;
    sys::mount("move new root", Some("."), "/", None, libc::MS_MOVE, None)?;
    nix::unistd::chroot(c".").map_err(sys::err("chroot", NEW_ROOT))?;
    sys::chdir("/")?;
    Ok(copied)
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

/// Delete the initramfs files (not crossing into other mounts) so their
/// memory is freed. Failures are ignored: at worst some RAM stays in use.
fn remove_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p == Path::new(NEW_ROOT) {
            continue;
        }
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                remove_tree(&p);
                let _ = fs::remove_dir(&p);
            }
            Ok(_) => {
                let _ = fs::remove_file(&p);
            }
            Err(_) => {}
        }
    }
}
