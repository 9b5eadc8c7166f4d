//! Volumes: named directories on the data partition that outlive reboots
//! and updates, and named tmpfs mounts; prepared by PID 1 at boot and
//! bound into the containers that list them (`runtime::rootfs`).
//!
//! A persistent volume is `/run/cairn/data/volumes/NAME`, keyed by its
//! name alone (not by manifest slot or version): a new manifest naming
//! the same volume finds the same files. Its size limit is an ext4 project
//! quota: the directory carries a project id and the inherit flag
//! (FS_IOC_FSSETXATTR), so everything created below it is charged to that
//! project, and the project's block hard limit is set with
//! quotactl_fd(Q_SETQUOTA, PRJQUOTA). A write past it fails with EDQUOT for
//! the writer alone; the rest of the partition is untouched. The project id
//! lives on the directory itself: a volume keeps its id for life, and a new
//! volume takes the highest id found plus one.
//!
//! A volume no manifest names any more is kept; `volume.unused` lists them
//! at every boot, and `cairn-ctl volume prune` (the `volumes` permission)
//! deletes them: PID 1 picks them ([`prunable`]) and forks a helper that
//! renames each out of the way (`.pruning-NAME`, so a power cut mid-way
//! leaves no half-deleted volume under its name; the next prune finishes
//! it), deletes it and answers on the connection.
//!
//! A tmpfs volume is a tmpfs PID 1 mounts at `/run/cairn/volumes/NAME`
//! (size, mode and owner as configured), shared by the containers that
//! mount it and empty at every boot.
//!
//! The top directory belongs to the host ids of the container that writes
//! the volume ([`Manifest::volume_owner`]: its uid/gid mapped through its
//! user namespace), with the configured mode; it is re-owned at every boot,
//! files below are left as they are.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use cairn_format::manifest::{Container, Manifest, VolumeKind};
use cairn_runtime::spec::{ContainerSpec, VolumeMount};
use cairn_runtime::sys::{self, SysError, SysResult};

use crate::event::event;
use crate::resolve::SpecError;
use crate::storage::DATA_DIR;

/// Where persistent volumes live (on the data partition).
pub const VOLUMES_DIR: &str = "/run/cairn/data/volumes";
/// Where tmpfs volumes are mounted.
pub const TMPFS_DIR: &str = "/run/cairn/volumes";

/// The host directory of each volume that is ready, by name.
pub type Ready = BTreeMap<String, String>;

/// `struct fsxattr` (linux/fs.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = ioc(2, 31);
/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = ioc(1, 32);
/// New files and directories inherit the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// The generic ioctl encoding (x86_64 and aarch64 share it).
const fn ioc(dir: libc::c_ulong, nr: libc::c_ulong) -> libc::c_ulong {
    (dir << 30) | ((core::mem::size_of::<FsXattr>() as libc::c_ulong) << 16) | ((b'X' as libc::c_ulong) << 8) | nr
}

/// `struct if_dqblk` (linux/quota.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct DqBlk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

/// quotactl_fd(2): the same number on x86_64 and aarch64.
const SYS_QUOTACTL_FD: libc::c_long = 443;
const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const PRJQUOTA: u32 = 2;
/// `dqb_valid`: the block limits are set.
const QIF_BLIMITS: u32 = 1;

/// `QCMD(cmd, PRJQUOTA)`.
const fn prj(cmd: u32) -> u32 {
    (cmd << 8) | PRJQUOTA
}

/// Quota blocks (1 KiB each) for a limit of `bytes`, rounded up.
pub fn quota_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Project ids for the persistent volumes `wanted`: the id a directory
/// already carries (`existing`, read from the disk; 0 is none), else the
/// next after the highest id in use. Ids never change once given.
pub fn project_ids(existing: &[(String, u32)], wanted: &[&str]) -> Vec<(String, u32)> {
    let mut next = existing.iter().map(|(_, id)| *id).max().unwrap_or(0);
    wanted
        .iter()
        .map(|name| {
            let id = match existing.iter().find(|(n, id)| n == name && *id != 0) {
                Some((_, id)) => *id,
                None => {
                    next = next.saturating_add(1);
                    next
                }
            };
            ((*name).to_owned(), id)
        })
        .collect()
}

/// Volume directories on the disk that the manifest does not name.
pub fn unused(present: &[String], m: &Manifest) -> Vec<String> {
    present
        .iter()
        .filter(|p| !m.volumes.iter().any(|v| v.kind == VolumeKind::Persistent && v.name == **p))
        .cloned()
        .collect()
}

/// The volume directories `volume prune` deletes: those on the disk
/// (`present`) that are not a persistent volume of the manifest and not
/// the source of any mount of a container (`mounted`, host paths: a
/// second guard, should a spec ever name one the manifest does not).
/// Leftovers of an interrupted prune (`.pruning-NAME`) are included.
/// Sorted by name.
pub fn prunable(present: &[String], m: &Manifest, mounted: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = unused(present, m)
        .into_iter()
        .filter(|name| !name.is_empty() && name != "." && name != ".." && !name.contains('/'))
        .filter(|name| !mounted.contains(&host_dir(VolumeKind::Persistent, name).as_str()))
        .collect();
    names.sort();
    names
}

/// Prefix of a volume directory being deleted.
pub const PRUNING: &str = ".pruning-";

/// The name a volume directory is renamed to before it is deleted.
pub fn pruning_name(name: &str) -> String {
    if name.starts_with(PRUNING) {
        name.to_owned()
    } else {
        format!("{PRUNING}{name}")
    }
}

/// The names of the volume directories on the disk.
pub fn present_names() -> Vec<String> {
    present().into_iter().map(|(n, _)| n).collect()
}

/// Whether the data partition holds volumes this boot.
pub fn data_ready() -> bool {
    data_mounted()
}

/// In a helper forked for `volume prune`: delete these volume
/// directories (names in [`VOLUMES_DIR`]). Returns the reply's body; each
/// deletion is a `volume.pruned` event (or `volume.prune-failed`), written
/// with `emit` (the helper's console).
pub fn prune(names: &[String], mut emit: impl FnMut(crate::event::Event)) -> String {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let dir = host_dir(VolumeKind::Persistent, name);
        // Its usage, from its project quota (before it goes).
        let used = open_dir(&dir).and_then(|fd| get_xattr(&fd)).ok().and_then(|x| {
            let mut q = DqBlk::default();
            (x.projid != 0 && quotactl(prj(Q_GETQUOTA), x.projid, &mut q).is_ok()).then_some(q.curspace)
        });
        let away = host_dir(VolumeKind::Persistent, &pruning_name(name));
        let result = std::fs::rename(&dir, &away)
            .map_err(|e| ("rename", e))
            // The rename durable before the deletion begins.
            .and_then(|()| {
                open_dir(VOLUMES_DIR)
                    .map_err(|e| e.errno)
                    .and_then(|fd| nix::unistd::fsync(&fd).map_err(|e| e as i32))
                    .map_err(|errno| ("fsync", std::io::Error::from_raw_os_error(errno)))
            })
            // Never follows a symlink, never leaves the directory tree.
            .and_then(|()| std::fs::remove_dir_all(&away).map_err(|e| ("remove", e)));
        match result {
            Ok(()) => {
                let mut e = event("volume.pruned").kv("name", name);
                if let Some(b) = used {
                    e = e.kv("freed_bytes", b);
                }
                emit(e);
                done.push(name.as_str());
            }
            Err((op, err)) => {
                let errno = sys::errno_name(err.raw_os_error().unwrap_or(libc::EIO));
                emit(event("volume.prune-failed").kv("name", name).kv("op", op).kv("error", errno));
                failed.push(format!("{name} ({op}: {errno})"));
            }
        }
    }
    match (done.is_empty(), failed.is_empty()) {
        (true, true) => "ok nothing to prune".into(),
        (_, true) => format!("ok pruned {}", done.join(",")),
        (_, false) => format!("error pruned [{}], failed {}", done.join(","), failed.join(", ")),
    }
}

/// The host directory of a volume.
pub fn host_dir(kind: VolumeKind, name: &str) -> String {
    match kind {
        VolumeKind::Persistent => format!("{VOLUMES_DIR}/{name}"),
        VolumeKind::Tmpfs => format!("{TMPFS_DIR}/{name}"),
    }
}

/// Add a container's volume mounts to its spec; a volume that is not
/// ready fails the container (as a missing layer does).
pub fn attach(mut spec: ContainerSpec, c: &Container, ready: &Ready) -> Result<ContainerSpec, SpecError> {
    for mt in &c.mounts {
        let source = ready.get(&mt.volume).ok_or_else(|| SpecError::VolumeUnavailable(mt.volume.clone()))?;
        spec.volumes.push(VolumeMount {
            name: mt.volume.clone(),
            source: source.clone(),
            target: mt.path.clone(),
            readonly: mt.readonly,
        });
    }
    Ok(spec)
}

/// Prepare every volume of the manifest; returns those that are ready.
/// Every failure is an event; a volume that fails is left out (its
/// containers do not start).
pub fn prepare(m: &Manifest) -> Ready {
    let mut ready = Ready::new();
    let data = data_mounted();
    let has_persistent = m.has_persistent_volumes();
    if data {
        // Made only when a volume needs it: the first write to the data
        // filesystem after its mount (a journal transaction, the quota
        // files) took 12 to 21 ms of an emulated boot. Without it, no
        // volume is present and none is unused.
        if has_persistent {
            if let Err(e) = sys::mkdir(VOLUMES_DIR, 0o711) {
                event("volume.failed").kv("path", VOLUMES_DIR).kv("error", e).emit();
            }
        }
        let present = present();
        let names: Vec<&str> =
            m.volumes.iter().filter(|v| v.kind == VolumeKind::Persistent).map(|v| v.name.as_str()).collect();
        let ids = project_ids(&present, &names);
        for v in m.volumes.iter().filter(|v| v.kind == VolumeKind::Persistent) {
            let id = ids.iter().find(|(n, _)| *n == v.name).map_or(0, |(_, id)| *id);
            match persistent(m, v, id) {
                Ok(dir) => {
                    ready.insert(v.name.clone(), dir);
                }
                Err(e) => event("volume.failed").kv("name", &v.name).kv("error", e).emit(),
            }
        }
        let names: Vec<String> = present.into_iter().map(|(n, _)| n).collect();
        unused_event(&names, m);
    } else if has_persistent {
        event("volume.failed").kv("reason", "the data partition is not mounted").emit();
    }
    for v in m.volumes.iter().filter(|v| v.kind == VolumeKind::Tmpfs) {
        match tmpfs(m, v) {
            Ok(dir) => {
                ready.insert(v.name.clone(), dir);
            }
            Err(e) => event("volume.failed").kv("name", &v.name).kv("error", e).emit(),
        }
    }
    ready
}

/// After the data partition's mount that waited for the first starts
/// (`Booted::data_deferred`: the manifest has no persistent volume): the
/// volumes an earlier manifest left on it, as [`prepare`] says them.
pub fn report_unused(m: &Manifest) {
    if data_mounted() {
        unused_event(&present_names(), m);
    }
}

/// `volume.unused` for the volumes on the disk (`present`) that `m` does
/// not name, if any.
fn unused_event(present: &[String], m: &Manifest) {
    let left = unused(present, m);
    if !left.is_empty() {
        event("volume.unused").kv("count", left.len()).kv("names", left.join(",")).kv("effect", "kept").emit();
    }
}

/// The data partition is mounted at [`DATA_DIR`] (a different device from
/// its parent's).
fn data_mounted() -> bool {
    let dev = |p: &str| std::fs::metadata(p).map(|m| m.dev()).ok();
    matches!((dev(DATA_DIR), dev("/run/cairn")), (Some(a), Some(b)) if a != b)
}

/// Volume directories on the disk, with their project ids.
fn present() -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(VOLUMES_DIR) else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| {
            let id = open_dir(&format!("{VOLUMES_DIR}/{name}")).and_then(|fd| get_xattr(&fd)).map_or(0, |x| x.projid);
            (name, id)
        })
        .collect()
}

fn open_dir(path: &str) -> SysResult<OwnedFd> {
    sys::open(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
}

fn get_xattr(fd: &OwnedFd) -> SysResult<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr`, which `x` is
    // (repr(C), same layout), on a descriptor this function borrows.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR as _, &mut x as *mut FsXattr) };
    if rc != 0 {
        return Err(SysError { op: "FS_IOC_FSGETXATTR", arg: String::new(), errno: sys::errno() });
    }
    Ok(x)
}

/// quotactl_fd on the data partition's mount.
fn quotactl(cmd: u32, id: u32, q: &mut DqBlk) -> SysResult<()> {
    let mnt = open_dir(DATA_DIR)?;
    // SAFETY: quotactl_fd reads or writes one `struct if_dqblk`, which `q`
    // is (repr(C), same layout); `mnt` stays open for the call.
    let rc = unsafe { libc::syscall(SYS_QUOTACTL_FD, mnt.as_raw_fd(), cmd, id, q as *mut DqBlk) };
    if rc != 0 {
        let op = if cmd == prj(Q_SETQUOTA) { "quotactl Q_SETQUOTA PRJQUOTA" } else { "quotactl Q_GETQUOTA PRJQUOTA" };
        return Err(SysError { op, arg: format!("project {id} on {DATA_DIR}"), errno: sys::errno() });
    }
    Ok(())
}

/// Create (first use) and set up one persistent volume: owner, mode,
/// project id and limit.
fn persistent(m: &Manifest, v: &cairn_format::manifest::Volume, id: u32) -> SysResult<String> {
    let dir = host_dir(VolumeKind::Persistent, &v.name);
    let created = !std::path::Path::new(&dir).exists();
    if created {
        sys::mkdir(&dir, 0o700)?;
    }
    let fd = open_dir(&dir)?;
    let (uid, gid) = m.volume_owner(&v.name).unwrap_or((0, 0));
    nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into()))
        .map_err(sys::err("fchown", format!("{dir} to {uid}:{gid}")))?;
    nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(libc::mode_t::from(v.mode)))
        .map_err(sys::err("fchmod", format!("{dir} to {:o}", v.mode)))?;
    if created {
        event("volume.created").kv("name", &v.name).kv("kind", "persistent").kv("path", &dir).emit();
    }
    let limited = set_project(&fd, id).and_then(|()| {
        let mut q = DqBlk { bhardlimit: quota_blocks(v.size_bytes), valid: QIF_BLIMITS, ..DqBlk::default() };
        quotactl(prj(Q_SETQUOTA), id, &mut q)?;
        let mut now = DqBlk::default();
        quotactl(prj(Q_GETQUOTA), id, &mut now)?;
        Ok(now.curspace)
    });
    match limited {
        Ok(used) => event("volume.ready")
            .kv("name", &v.name)
            .kv("kind", "persistent")
            .kv("size_bytes", v.size_bytes)
            .kv("used_bytes", used)
            .kv("project", id)
            .kv("owner", format!("{uid}:{gid}"))
            .kv("mode", format!("{:o}", v.mode))
            .kv("path", &dir)
            .emit(),
        // Still given to its containers: the data outweighs the limit.
        Err(e) => event("volume.unlimited")
            .kv("name", &v.name)
            .kv("error", e)
            .kv("effect", "no size limit (the data partition has no project quotas)")
            .emit(),
    }
    Ok(dir)
}

/// Give a directory a project id, inherited by everything made below it.
fn set_project(fd: &OwnedFd, id: u32) -> SysResult<()> {
    let mut x = get_xattr(fd)?;
    if x.projid == id && x.xflags & FS_XFLAG_PROJINHERIT != 0 {
        return Ok(());
    }
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr`, which `x` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR as _, &x as *const FsXattr) };
    if rc != 0 {
        return Err(SysError { op: "FS_IOC_FSSETXATTR", arg: format!("project {id}"), errno: sys::errno() });
    }
    Ok(())
}

/// Mount one tmpfs volume.
fn tmpfs(m: &Manifest, v: &cairn_format::manifest::Volume) -> SysResult<String> {
    let dir = host_dir(VolumeKind::Tmpfs, &v.name);
    let (uid, gid) = m.volume_owner(&v.name).unwrap_or((0, 0));
    // Search bits only: a user namespace's root binds it from here.
    sys::mkdir_all(TMPFS_DIR, 0o711)?;
    sys::mkdir(&dir, 0o700)?;
    let data = format!("size={},mode={:o},uid={uid},gid={gid}", v.size_bytes, v.mode);
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount("tmpfs volume", Some("volume"), &dir, Some("tmpfs"), flags, Some(&data))?;
    event("volume.created")
        .kv("name", &v.name)
        .kv("kind", "tmpfs")
        .kv("size_bytes", v.size_bytes)
        .kv("owner", format!("{uid}:{gid}"))
        .kv("path", &dir)
        .emit();
    Ok(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_and_quotactl_numbers_match_the_kernel_headers() {
        assert_eq!(core::mem::size_of::<FsXattr>(), 28);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(core::mem::size_of::<DqBlk>(), 72);
        assert_eq!(prj(Q_SETQUOTA), 0x8000_0802);
        assert_eq!(quota_blocks(1 << 20), 1024);
        assert_eq!(quota_blocks(1025), 2);
    }

    fn ids(v: &[(String, u32)]) -> Vec<(&str, u32)> {
        v.iter().map(|(n, i)| (n.as_str(), *i)).collect()
    }

    #[test]
    fn project_ids_stay_with_their_directory_and_new_ones_follow_the_highest() {
        let existing = vec![("db".to_owned(), 3), ("old".to_owned(), 7), ("bare".to_owned(), 0)];
        let got = project_ids(&existing, &["new", "db", "bare", "other"]);
        assert_eq!(ids(&got), [("new", 8), ("db", 3), ("bare", 9), ("other", 10)]);
        assert_eq!(ids(&project_ids(&[], &["a", "b"])), [("a", 1), ("b", 2)]);
    }

    #[test]
    fn unused_volumes_are_those_no_persistent_volume_names() {
        use cairn_format::manifest::Volume;
        let mut m: Manifest = postcard_free_manifest();
        m.volumes = vec![
            Volume { name: "db".into(), kind: VolumeKind::Persistent, size_bytes: 1 << 20, mode: 0o700 },
            Volume { name: "tmp".into(), kind: VolumeKind::Tmpfs, size_bytes: 1 << 20, mode: 0o700 },
        ];
        let present = vec!["db".to_owned(), "tmp".to_owned(), "gone".to_owned()];
        assert_eq!(unused(&present, &m), ["tmp", "gone"]);
        // Prune: never a volume of the manifest, nor a mounted one, and
        // an interrupted prune's leftover goes too.
        let present = vec!["db".to_owned(), "gone".to_owned(), "held".to_owned(), ".pruning-old".to_owned()];
        assert_eq!(prunable(&present, &m, &["/run/cairn/data/volumes/held"]), [".pruning-old", "gone"]);
        assert_eq!(prunable(&present, &m, &[]), [".pruning-old", "gone", "held"]);
        assert_eq!(pruning_name("gone"), ".pruning-gone");
        assert_eq!(pruning_name(".pruning-old"), ".pruning-old");
        assert_eq!(host_dir(VolumeKind::Persistent, "db"), "/run/cairn/data/volumes/db");
        assert_eq!(host_dir(VolumeKind::Tmpfs, "tmp"), "/run/cairn/volumes/tmp");
    }

    #[test]
    fn a_container_gets_its_ready_volumes_or_fails_naming_the_missing_one() {
        let c = crate::resolve::tests::container();
        let spec =
            || crate::resolve::container_spec(&c, |l| Some(format!("/layers/{l}")), |_| Some("/dev/x".into())).unwrap();
        assert!(spec().volumes.is_empty(), "resolve leaves volumes to attach");
        let mut ready = Ready::new();
        assert_eq!(attach(spec(), &c, &ready).unwrap_err(), SpecError::VolumeUnavailable("db".into()));
        ready.insert("db".into(), "/run/cairn/data/volumes/db".into());
        let s = attach(spec(), &c, &ready).unwrap();
        assert_eq!(
            s.volumes,
            [VolumeMount {
                name: "db".into(),
                source: "/run/cairn/data/volumes/db".into(),
                target: "/var/db".into(),
                readonly: true
            }]
        );
    }

    fn postcard_free_manifest() -> Manifest {
        Manifest {
            appliance: "t".into(),
            version: 1,
            compatible: "t".into(),
            layer_check: Default::default(),
            layers: Vec::new(),
            containers: Vec::new(),
            update: cairn_format::manifest::UpdatePolicy::for_version(1),
            volumes: Vec::new(),
            networks: Vec::new(),
        }
    }
}
