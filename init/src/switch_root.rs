//! Leave the initramfs: the kernel's initial root (rootfs) has no parent
//! mount, and pivot_root(2) refuses to move such a root, so containers could
//! not pivot. cairn-init binds the initramfs onto a directory of its own,
//! moves that bind mount over `/` and chroots into it: from then on every
//! mount namespace's root has a parent. Nothing is copied (`switch_root`
//! copies the initramfs into a tmpfs: 3 MB and some 50 ms of an emulated
//! boot). The boot modules, loaded before from the initramfs, are deleted:
//! nothing reads them again, and their memory is freed. The rest stays
//! where the kernel unpacked it, in the rootfs, which is limited to
//! [`ROOT_SIZE`] like the tmpfs was.

use std::fs;

use cairn_runtime::sys::{self, SysResult};

const NEW_ROOT: &str = "/.cairn-root";
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// The root's size limit (tmpfs only: a ramfs has none).
const ROOT_SIZE: &str = "size=64m";

/// True when `/` is the kernel's initramfs (ramfs or tmpfs).
pub fn on_initramfs() -> bool {
    root_magic().is_some_and(|t| t == RAMFS_MAGIC || t == TMPFS_MAGIC)
}

fn root_magic() -> Option<i64> {
    let st = nix::sys::statfs::statfs(c"/").ok()?;
    #[allow(clippy::unnecessary_cast)]
    Some(st.filesystem_type().0 as i64)
}

/// What leaving the initramfs did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// Bytes of boot modules deleted (their memory freed).
    pub freed_bytes: u64,
    /// Why the root could not be limited to [`ROOT_SIZE`], if it could
    /// not: the switch goes on (containers need it more than the limit).
    pub unlimited: Option<sys::SysError>,
}

/// Delete the files in `left` (absolute paths: the boot modules, loaded
/// already), then make a bind mount of the initramfs the root.
pub fn switch(left: &[String]) -> SysResult<Switched> {
    let mut freed_bytes = 0;
    for file in left {
        let size = fs::symlink_metadata(file).map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(file).is_ok() {
            freed_bytes += size;
        }
    }
    let unlimited = match root_magic() == Some(TMPFS_MAGIC) {
        true => sys::mount("limit the root's size", None, "/", None, libc::MS_REMOUNT, Some(ROOT_SIZE)).err(),
        false => None,
    };
    sys::mkdir(NEW_ROOT, 0o755)?;
    sys::mount("bind the initramfs", Some("/"), NEW_ROOT, None, libc::MS_BIND, None)?;
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
    sys::mount("new root nosuid", None, NEW_ROOT, None, flags, None)?;
    sys::chdir(NEW_ROOT)?;
    sys::mount("move new root", Some("."), "/", None, libc::MS_MOVE, None)?;
    nix::unistd::chroot(c".").map_err(sys::err("chroot", NEW_ROOT))?;
    sys::chdir("/")?;
    // The bind shows the (empty) directory it was made on: not needed.
    let _ = fs::remove_dir(NEW_ROOT);
    Ok(Switched { freed_bytes, unlimited })
}
