//! The container's filesystem: a plan of steps (pure, unit-tested) and the
//! code that carries it out inside the new mount namespace.
//!
//! Order matters and follows what the kernel needs: make every mount private
//! first (so nothing propagates back to the host), then the scratch tmpfs
//! that holds the overlay's upper and work directories, the overlay itself,
//! the pseudo filesystems inside it, and last pivot_root.
//!
//! With a user namespace ([`host_plan`]) the scratch tmpfs and the overlay
//! are mounted by PID 1 before the clone, as real root in the host's
//! namespaces, so copy-up works for files of the layers whose owners are
//! not mapped (the layers belong to host root); the child's mount namespace
//! gets a copy of both and PID 1 detaches its own right after the clone
//! ([`host_mounts`]). Everything else is mounted by the child as root of
//! its namespace; device nodes cannot be made there (mknod needs CAP_MKNOD
//! in the host namespace, and a tmpfs mounted in a user namespace is
//! nodev anyway), so the default devices are bind mounts of the host's.

use crate::spec::{ContainerSpec, CONTROL_DIR};
use crate::sys::{self, SysResult};

/// Flags used below.
const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Character devices every container gets: (name, major, minor, mode).
pub const DEVICES: [(&str, u32, u32, u32); 6] = [
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
];

/// Size cap of /dev (it only holds device nodes and links).
const DEV_SIZE: &str = "64k";

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Change propagation of every mount to private.
    MakePrivate,
    /// mkdir -p.
    Mkdir(String),
    /// Mount a filesystem.
    Mount {
        /// Name used in errors.
        what: &'static str,
        /// Source (device, "none", or a path for binds).
        source: String,
        /// Mount point.
        target: String,
        /// Filesystem type (None for binds).
        fstype: Option<&'static str>,
        /// MS_* flags.
        flags: libc::c_ulong,
        /// Options string.
        data: Option<String>,
    },
    /// Create a character device node.
    CharDevice {
        /// Node path.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Permission bits.
        mode: u32,
    },
    /// Create a symlink `link -> target`.
    Symlink {
        /// What it points to.
        target: &'static str,
        /// The link.
        link: String,
    },
    /// Create an empty file (a bind target).
    Touch(String),
    /// Create an empty file unless one is there (a bind target over a file
    /// the image may have, like `/etc/hosts`).
    EnsureFile(String),
    /// Create a device node like the host device `host` (same type and
    /// numbers) at `path`.
    Device {
        /// Node path.
        path: String,
        /// Host device node.
        host: String,
        /// Permission bits.
        mode: u16,
    },
    /// Hide a file: bind the container's /dev/null over it (if it exists).
    MaskFile {
        /// The file to hide.
        path: String,
        /// The container's /dev/null, bound over it.
        null: String,
    },
    /// Hide a directory: an empty read-only tmpfs over it (if it exists).
    MaskDir(String),
    /// Make a path read-only: bind it onto itself and remount read-only
    /// (if it exists).
    ReadOnly(String),
    /// Remount a mount point read-only (the root filesystem).
    RemountReadOnly(String),
    /// Make `root` the root: pivot_root and detach the old root.
    PivotRoot(String),
    /// Add the search bits (`o+x`, `g+x`) to a directory so an unprivileged
    /// host id (a user namespace's root) can reach what is below.
    Traversable(String),
    /// Change the owner of a path.
    Chown {
        /// The path.
        path: String,
        /// Host uid.
        uid: u32,
        /// Host gid.
        gid: u32,
    },
    /// Make one mount point private (no propagation to or from peers).
    MakeMountPrivate(String),
}

/// Files hidden from every container (kernel memory, keys, timers,
/// interrupt counts): Docker's default masked paths that are files.
pub const MASKED_FILES: [&str; 7] = [
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
];

/// Directories hidden from every container: Docker's default masked paths
/// that are directories (sound and ACPI state, SCSI, firmware tables, and
/// powercap, whose energy counters are the RAPL side channel).
pub const MASKED_DIRS: [&str; 5] =
    ["proc/asound", "proc/acpi", "proc/scsi", "sys/firmware", "sys/devices/virtual/powercap"];

/// Paths that are read-only in every container.
pub const READ_ONLY: [&str; 5] = ["proc/sys", "proc/sysrq-trigger", "proc/bus", "proc/fs", "proc/irq"];

/// The scratch tmpfs with the overlay's upper and work directories, and
/// the directory the rootfs is mounted on (the same steps wherever they run).
fn scratch_mounts(spec: &ContainerSpec, scratch: &str, root: &str) -> Vec<Step> {
    vec![
        Step::Mkdir(scratch.to_owned()),
        Step::Mkdir(root.to_owned()),
        Step::Mount {
            what: "scratch tmpfs",
            source: "scratch".into(),
            target: scratch.to_owned(),
            fstype: Some("tmpfs"),
            flags: NOSUID | NODEV,
            data: Some(format!("size={},mode=0755", spec.scratch_bytes)),
        },
        Step::Mkdir(format!("{scratch}/upper")),
        Step::Mkdir(format!("{scratch}/work")),
    ]
}

/// The overlay rootfs: the layers under the scratch upper directory.
/// nodev: the `nodev` of the squashfs lower mounts does not carry through
/// overlayfs, so a device node in a layer would open the device.
fn overlay_mount(spec: &ContainerSpec, scratch: &str, root: &str) -> Step {
    Step::Mount {
        what: "overlay rootfs",
        source: "overlay".into(),
        target: root.to_owned(),
        fstype: Some("overlay"),
        flags: NOSUID | NODEV,
        data: Some(overlay_options(&spec.layer_dirs, scratch)),
    }
}

/// Steps PID 1 runs in the host's namespaces before cloning a container
/// with a user namespace (none without one): make the path to the state
/// directory reachable for the namespace's root (search bits only), mount
/// scratch and overlay, and give the upper layer's root to the namespace's
/// root so `/` of the container is its root's. Both mounts are made private
/// so that detaching them on the host does not propagate into the copy
/// the child holds.
pub fn host_plan(spec: &ContainerSpec) -> Vec<Step> {
    let Some((uid, gid)) = spec.userns.as_ref().and_then(crate::userns::host_root) else {
        return Vec::new();
    };
    let state = spec.state_dir();
    let scratch = format!("{state}/scratch");
    let root = format!("{state}/rootfs");
    let mut p: Vec<Step> = ancestors(&state).map(Step::Traversable).collect();
    p.extend(scratch_mounts(spec, &scratch, &root));
    p.push(Step::MakeMountPrivate(scratch.clone()));
    p.push(Step::Chown { path: format!("{scratch}/upper"), uid, gid });
    p.push(overlay_mount(spec, &scratch, &root));
    // The mount points of /etc/hosts and /etc/resolv.conf: the image's
    // /etc belongs to a host id the user namespace does not map, so its
    // root could not create the files there.
    for (file, bound) in [("hosts", spec.hosts.is_some()), ("resolv.conf", spec.resolv_conf.is_some())] {
        if bound {
            p.push(Step::Mkdir(format!("{root}/etc")));
            p.push(Step::EnsureFile(format!("{root}/etc/{file}")));
        }
    }
    p.push(Step::MakeMountPrivate(root));
    p
}

/// Mounts [`host_plan`] leaves on the host, to detach after the clone
/// (innermost first).
pub fn host_mounts(spec: &ContainerSpec) -> Vec<String> {
    if spec.userns.is_none() {
        return Vec::new();
    }
    let state = spec.state_dir();
    vec![format!("{state}/rootfs"), format!("{state}/scratch")]
}

/// "/a/b/c" -> "/", "/a", "/a/b", "/a/b/c".
fn ancestors(path: &str) -> impl Iterator<Item = String> + '_ {
    let mut at = String::new();
    core::iter::once("/".to_owned()).chain(path.split('/').filter(|c| !c.is_empty()).map(move |c| {
        at.push('/');
        at.push_str(c);
        at.clone()
    }))
}

/// The part of a manifest device's container path below `/dev/`, or an
/// error: devices are made in the container's /dev tmpfs and nowhere else
/// (not in the overlay, which is nodev, nor anywhere a layer could put a
/// symlink). `.`, `..` and empty components are refused too.
pub fn device_rel(path: &str) -> SysResult<&str> {
    let rest = path.strip_prefix("/dev/").unwrap_or("");
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(sys::SysError { op: "device path outside /dev/", arg: path.into(), errno: libc::EINVAL });
    }
    Ok(rest)
}

/// Build the plan the container's init carries out. Fails for a manifest
/// device outside /dev/.
pub fn plan(spec: &ContainerSpec) -> SysResult<Vec<Step>> {
    let state = spec.state_dir();
    let scratch = format!("{state}/scratch");
    let root = format!("{state}/rootfs");
    let userns = spec.userns.is_some();
    let mut p = vec![Step::MakePrivate];
    if userns {
        // The overlay came from PID 1's namespace, so the kernel locks it
        // (MNT_LOCKED) in this less privileged one, and pivot_root refuses
        // a locked new root. A bind of it onto itself is a mount of this
        // namespace, not locked.
        p.push(Step::Mount {
            what: "rootfs self-bind",
            source: root.clone(),
            target: root.clone(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
    } else {
        p.extend(scratch_mounts(spec, &scratch, &root));
        p.push(overlay_mount(spec, &scratch, &root));
    }
    p.extend([
        Step::Mkdir(format!("{root}/proc")),
        Step::Mount {
            what: "proc",
            source: "proc".into(),
            target: format!("{root}/proc"),
            fstype: Some("proc"),
            flags: NOSUID | NODEV | NOEXEC,
            data: None,
        },
        Step::Mkdir(format!("{root}/dev")),
        Step::Mount {
            what: "dev tmpfs",
            source: "dev".into(),
            target: format!("{root}/dev"),
            fstype: Some("tmpfs"),
            flags: NOSUID | NOEXEC,
            data: Some(format!("size={DEV_SIZE},mode=0755")),
        },
    ]);
    for (name, major, minor, mode) in DEVICES {
        let path = format!("{root}/dev/{name}");
        if userns {
            p.push(Step::Touch(path.clone()));
            p.push(bind("device bind", &format!("/dev/{name}"), path));
        } else {
            p.push(Step::CharDevice { path, major, minor, mode });
        }
    }
    for (target, link) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        p.push(Step::Symlink { target, link: format!("{root}/dev/{link}") });
    }
    p.extend([
        Step::Mkdir(format!("{root}/dev/pts")),
        Step::Mount {
            what: "devpts",
            source: "devpts".into(),
            target: format!("{root}/dev/pts"),
            fstype: Some("devpts"),
            flags: NOSUID | NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620".into()),
        },
        Step::Mkdir(format!("{root}/dev/shm")),
        Step::Mount {
            what: "dev/shm tmpfs",
            source: "shm".into(),
            target: format!("{root}/dev/shm"),
            fstype: Some("tmpfs"),
            flags: NOSUID | NODEV | NOEXEC,
            data: Some(format!("size={},mode=1777", shm_size(spec.scratch_bytes))),
        },
        Step::Mkdir(format!("{root}/sys")),
        Step::Mount {
            what: "sysfs",
            source: "sysfs".into(),
            target: format!("{root}/sys"),
            fstype: Some("sysfs"),
            flags: libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            data: None,
        },
        Step::Mount {
            what: "cgroup2",
            source: "cgroup2".into(),
            target: format!("{root}/sys/fs/cgroup"),
            fstype: Some("cgroup2"),
            flags: libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            data: None,
        },
    ]);
    for d in &spec.devices {
        let (host, mode) = (&d.host, &d.mode);
        let path = format!("{root}/dev/{}", device_rel(&d.path)?);
        if userns {
            // Validation refuses devices with a user namespace; should one
            // come anyway, it is the host's node as it is, never a new one.
            p.push(Step::Touch(path.clone()));
            p.push(bind("device bind", host, path));
        } else {
            p.push(Step::Device { path, host: host.clone(), mode: *mode });
        }
    }
    for f in MASKED_FILES {
        p.push(Step::MaskFile { path: format!("{root}/{f}"), null: format!("{root}/dev/null") });
    }
    for d in MASKED_DIRS {
        p.push(Step::MaskDir(format!("{root}/{d}")));
    }
    for r in READ_ONLY {
        p.push(Step::ReadOnly(format!("{root}/{r}")));
    }
    if spec.control {
        p.extend([
            Step::Mkdir(format!("{root}/run/cairn")),
            Step::Mount {
                what: "control socket bind",
                source: CONTROL_DIR.into(),
                target: format!("{root}/run/cairn"),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            },
            // Read-only: connect(2) still works on a socket in it, but
            // unlinking PID 1's socket or binding another is EROFS. Not
            // noexec: PID 1 puts its client `cairn-ctl` there.
            Step::Mount {
                what: "control socket read-only",
                source: "none".into(),
                target: format!("{root}/run/cairn"),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV,
                data: None,
            },
        ]);
    }
    let hosts = spec.hosts.as_ref().map(|_| ("hosts", format!("{state}/hosts"), "hosts bind", "hosts read-only"));
    let resolv = spec
        .resolv_conf
        .as_ref()
        .map(|source| ("resolv.conf", source.clone(), "resolv.conf bind", "resolv.conf read-only"));
    for (file, source, bind_what, read_only_what) in [hosts, resolv].into_iter().flatten() {
        let target = format!("{root}/etc/{file}");
        p.extend([
            Step::Mkdir(format!("{root}/etc")),
            Step::EnsureFile(target.clone()),
            bind(bind_what, &source, target.clone()),
            // PID 1 writes it: the container reads it.
            Step::Mount {
                what: read_only_what,
                source: "none".into(),
                target,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
                data: None,
            },
        ]);
    }
    for v in &spec.volumes {
        let target = format!("{root}/{}", volume_rel(&v.target)?);
        let ro = if v.readonly { libc::MS_RDONLY } else { 0 };
        p.extend([
            Step::Mkdir(target.clone()),
            bind("volume bind", &v.source, target.clone()),
            // nosuid, nodev, noexec: a volume holds data; code comes from
            // the verified layers. Read-only volumes: writes are EROFS.
            Step::Mount {
                what: "volume flags",
                source: "none".into(),
                target,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | NOSUID | NODEV | NOEXEC | ro,
                data: None,
            },
        ]);
    }
    if spec.readonly_rootfs {
        p.push(Step::RemountReadOnly(root.clone()));
    }
    p.push(Step::PivotRoot(root));
    Ok(p)
}

/// A volume's path inside the container without its leading `/`, or an
/// error: absolute, not the root, no empty, `.` or `..` component (the
/// manifest validation says the same; PID 1 does not depend on it, and
/// every component is then opened without following symlinks).
pub fn volume_rel(path: &str) -> SysResult<&str> {
    let rest = path.strip_prefix('/').unwrap_or("");
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(sys::SysError { op: "volume path", arg: path.into(), errno: libc::EINVAL });
    }
    Ok(rest)
}

fn bind(what: &'static str, source: &str, target: String) -> Step {
    Step::Mount { what, source: source.into(), target, fstype: None, flags: libc::MS_BIND, data: None }
}

/// The type and device number of the host node `host`, for a node like it.
fn device_like(host: &str) -> SysResult<(libc::mode_t, libc::dev_t)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(host).map_err(|e| sys::SysError {
        op: "stat device",
        arg: host.into(),
        errno: e.raw_os_error().unwrap_or(libc::ENOENT),
    })?;
    let kind = if meta.file_type().is_block_device() {
        libc::S_IFBLK
    } else if meta.file_type().is_char_device() {
        libc::S_IFCHR
    } else {
        return Err(sys::SysError { op: "device source", arg: host.into(), errno: libc::ENOTBLK });
    };
    Ok((kind, meta.rdev() as libc::dev_t))
}

/// Resolves the plan's paths: those below the new root (the directory the
/// plan pivots into) are opened component by component without following
/// symlinks ([`sys::open_in_root`]) and reached through `/proc/self/fd/N`;
/// others are PID 1's own paths (the state directory, host devices) and
/// are used as they are.
struct Resolver<'a> {
    root: Option<&'a str>,
    /// The root, opened: kept from one step to the next, and opened again
    /// after a mount on the root itself (the overlay), since a descriptor
    /// opened before it is the directory underneath.
    root_fd: std::cell::RefCell<Option<std::os::fd::OwnedFd>>,
    /// Paths below the root opened once for the steps after them (the
    /// directory device nodes and links are made in, one after another;
    /// the /dev/null bound over each masked file), until a mount lands on
    /// them or above them.
    kept: std::cell::RefCell<Vec<(String, std::rc::Rc<std::os::fd::OwnedFd>)>>,
}

/// A path of the plan, ready for a system call.
struct Resolved<'p> {
    /// The O_PATH descriptor for a path below the root.
    fd: Option<std::os::fd::OwnedFd>,
    /// The path as the plan names it (for errors).
    path: &'p str,
}

impl Resolved<'_> {
    /// The path to hand to the kernel.
    fn arg(&self) -> String {
        self.fd.as_ref().map_or_else(|| self.path.to_owned(), sys::fd_path)
    }
}

impl<'a> Resolver<'a> {
    /// The container's root is where the plan pivots into, or else where
    /// it mounts the overlay (PID 1's part for a user namespace,
    /// [`host_plan`], which makes the mount points of `/etc/hosts` and
    /// `/etc/resolv.conf` in it as real root: a layer's symlink there must
    /// not send that anywhere on the host).
    fn for_plan(plan: &'a [Step]) -> Self {
        let pivot = plan.iter().find_map(|s| match s {
            Step::PivotRoot(r) => Some(r.as_str()),
            _ => None,
        });
        let overlay = plan.iter().find_map(|s| match s {
            Step::Mount { fstype: Some("overlay"), target, .. } => Some(target.as_str()),
            _ => None,
        });
        let root = pivot.or(overlay);
        Self { root, root_fd: std::cell::RefCell::new(None), kept: std::cell::RefCell::new(Vec::new()) }
    }

    /// [`Self::open`] for a path below the root, kept for later steps
    /// (see [`Resolver::kept`]); a path elsewhere is opened as it is.
    fn open_kept(&self, path: &str, create: sys::Create) -> SysResult<std::rc::Rc<std::os::fd::OwnedFd>> {
        if let Some((_, fd)) = self.kept.borrow().iter().find(|(p, _)| p == path) {
            return Ok(fd.clone());
        }
        let fd = match self.open(path, create)?.fd {
            Some(fd) => std::rc::Rc::new(fd),
            None => return Ok(std::rc::Rc::new(sys::open(path, libc::O_PATH)?)),
        };
        self.kept.borrow_mut().push((path.to_owned(), fd.clone()));
        Ok(fd)
    }

    /// The part of `path` below the root ("" for the root itself).
    fn rel<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.root?)?;
        if rest.is_empty() {
            Some(rest)
        } else {
            rest.strip_prefix('/')
        }
    }

    fn open<'p>(&self, path: &'p str, create: sys::Create) -> SysResult<Resolved<'p>> {
        match (self.root, self.rel(path)) {
            (Some(root), Some(rel)) => {
                if create == sys::Create::Dirs && rel.is_empty() {
                    // The root itself is PID 1's path, made as it is.
                    sys::mkdir_all(root, 0o755)?;
                }
                let mut kept = self.root_fd.borrow_mut();
                let dir = match kept.take() {
                    Some(fd) => fd,
                    None => sys::open_root(root)?,
                };
                let found = sys::open_in_root_at(&dir, root, rel, create);
                *kept = Some(dir);
                Ok(Resolved { fd: Some(found?), path })
            }
            _ => {
                if create == sys::Create::Dirs {
                    sys::mkdir_all(path, 0o755)?;
                }
                Ok(Resolved { fd: None, path })
            }
        }
    }

    /// Like [`Self::open`], but a missing path is `None` (a mask of
    /// something this kernel does not have). A symlink is still an error.
    fn open_if_exists<'p>(&self, path: &'p str) -> SysResult<Option<Resolved<'p>>> {
        match self.open(path, sys::Create::Nothing) {
            Ok(r) if r.fd.is_some() || std::fs::symlink_metadata(path).is_ok() => Ok(Some(r)),
            Ok(_) => Ok(None),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory that holds `path` (opened, `create` applied to it)
    /// and the last component's name.
    fn parent<'p>(
        &self,
        path: &'p str,
        create: sys::Create,
    ) -> SysResult<(std::rc::Rc<std::os::fd::OwnedFd>, &'p str)> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = if dir.is_empty() { "/" } else { dir };
        Ok((self.open_kept(dir, create)?, name))
    }

    /// mount(2) on a resolved target; errors name the plan's path.
    fn mount(
        &self,
        what: &'static str,
        source: Option<&str>,
        target: &Resolved<'_>,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> SysResult<()> {
        let mounted = sys::mount(what, source, &target.arg(), fstype, flags, data)
            .map_err(|e| sys::SysError { arg: target.path.to_owned(), ..e });
        if self.rel(target.path) == Some("") {
            // Whatever happened, the kept root may be under a new mount.
            self.root_fd.replace(None);
        }
        // And so may what was kept at the target or below it.
        let covered =
            |p: &str| p.strip_prefix(target.path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        self.kept.borrow_mut().retain(|(p, _)| !covered(p));
        mounted
    }
}

/// Add the search bits to a directory (never read or write bits).
fn traversable(path: &str) -> SysResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| sys::SysError { op: "stat", arg: path.into(), errno: e.raw_os_error().unwrap_or(libc::ENOENT) })?
        .permissions()
        .mode();
    if mode & 0o011 == 0o011 {
        return Ok(());
    }
    // chmod(2) through std (nix has only fchmodat, and musl's carries a
    // no-follow emulation this does not need).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777 | 0o011)).map_err(|e| sys::SysError {
        op: "chmod g+x,o+x",
        arg: path.into(),
        errno: e.raw_os_error().unwrap_or(libc::EINVAL),
    })
}

fn chown(path: &str, uid: u32, gid: u32) -> SysResult<()> {
    let p = sys::cstr(path)?;
    let (u, g) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
    nix::unistd::chown(p.as_c_str(), Some(u), Some(g)).map_err(|e| sys::SysError {
        op: "chown",
        arg: format!("{path} to {uid}:{gid}"),
        errno: e as i32,
    })
}

/// overlayfs options: lowerdir lists the top layer first.
pub fn overlay_options(layers_lowest_first: &[String], scratch: &str) -> String {
    let lower: Vec<&str> = layers_lowest_first.iter().rev().map(String::as_str).collect();
    format!("lowerdir={},upperdir={scratch}/upper,workdir={scratch}/work", lower.join(":"))
}

/// /dev/shm gets a quarter of the scratch cap (at least 64 KiB).
fn shm_size(scratch: u64) -> u64 {
    (scratch / 4).max(64 << 10)
}

/// Carry out the plan. Returns the step that failed. Every path below the
/// new root is resolved without following symlinks (see [`Resolver`]): a
/// symlink a layer put at a fixed target fails the plan with an error
/// naming it.
pub fn apply(plan: &[Step]) -> SysResult<()> {
    apply_steps(plan).map_err(|(_, e)| e)
}

/// [`apply`], saying which step failed (its index in `plan`), so the
/// setup report can name it: PID 1 holds the same plan.
pub fn apply_steps(plan: &[Step]) -> Result<(), (usize, sys::SysError)> {
    let at = Resolver::for_plan(plan);
    for (i, step) in plan.iter().enumerate() {
        apply_one(&at, step).map_err(|e| (i, e))?;
    }
    Ok(())
}

impl Step {
    /// The path the step works on (for events).
    pub fn path(&self) -> &str {
        match self {
            Step::MakePrivate => "/",
            Step::Mkdir(p)
            | Step::Touch(p)
            | Step::EnsureFile(p)
            | Step::MaskDir(p)
            | Step::ReadOnly(p)
            | Step::RemountReadOnly(p)
            | Step::PivotRoot(p)
            | Step::Traversable(p)
            | Step::MakeMountPrivate(p) => p,
            Step::Mount { target, .. } => target,
            Step::CharDevice { path, .. } | Step::Device { path, .. } | Step::MaskFile { path, .. } => path,
            Step::Symlink { link, .. } => link,
            Step::Chown { path, .. } => path,
        }
    }
}

fn apply_one(at: &Resolver, step: &Step) -> SysResult<()> {
    use sys::Create;
    {
        match step {
            Step::MakePrivate => sys::mount("make / private", None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?,
            Step::Mkdir(p) => drop(at.open(p, Create::Dirs)?),
            Step::Mount { what, source, target, fstype, flags, data } => {
                let target = at.open(target, Create::Nothing)?;
                // A bind's source below the root is resolved the same way
                // (and its descriptor kept open until the mount is made).
                let source = match (fstype, at.rel(source)) {
                    (None, Some(_)) => at.open(source, Create::Nothing)?,
                    _ => Resolved { fd: None, path: source },
                };
                at.mount(what, Some(&source.arg()), &target, *fstype, *flags, data.as_deref())?
            }
            Step::CharDevice { path, major, minor, mode } => {
                let (dir, name) = at.parent(path, Create::Nothing)?;
                sys::make_at(&dir, name, path, libc::S_IFCHR, *mode, libc::makedev(*major, *minor))?
            }
            Step::Symlink { target, link } => {
                let (dir, name) = at.parent(link, Create::Nothing)?;
                sys::symlink_at(target, &dir, name, link)?
            }
            Step::Touch(p) => {
                let (dir, name) = at.parent(p, Create::Nothing)?;
                sys::make_at(&dir, name, p, libc::S_IFREG, 0o644, 0)?
            }
            Step::EnsureFile(p) => {
                if at.open_if_exists(p)?.is_none() {
                    let (dir, name) = at.parent(p, Create::Nothing)?;
                    sys::make_at(&dir, name, p, libc::S_IFREG, 0o644, 0)?
                }
            }
            Step::Device { path, host, mode } => {
                let (kind, rdev) = device_like(host)?;
                let (dir, name) = at.parent(path, Create::Dirs)?;
                sys::make_at(&dir, name, path, kind, libc::mode_t::from(*mode), rdev)?
            }
            Step::MaskFile { path, null } => {
                if let Some(target) = at.open_if_exists(path)? {
                    let null = sys::fd_path(&*at.open_kept(null, Create::Nothing)?);
                    at.mount("mask file", Some(&null), &target, None, libc::MS_BIND, None)?
                }
            }
            Step::MaskDir(p) => {
                if let Some(target) = at.open_if_exists(p)? {
                    at.mount(
                        "mask dir",
                        Some("masked"),
                        &target,
                        Some("tmpfs"),
                        libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
                        Some("size=0"),
                    )?
                }
            }
            Step::ReadOnly(p) => {
                if let Some(target) = at.open_if_exists(p)? {
                    let arg = target.arg();
                    at.mount("read-only bind", Some(&arg), &target, None, libc::MS_BIND | libc::MS_REC, None)?;
                    // Reopened: the descriptor above is the mount underneath.
                    let top = at.open(p, Create::Nothing)?;
                    at.mount(
                        "read-only remount",
                        None,
                        &top,
                        None,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
                        None,
                    )?
                }
            }
            Step::RemountReadOnly(p) => {
                let target = at.open(p, Create::Nothing)?;
                at.mount(
                    "read-only rootfs",
                    None,
                    &target,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    None,
                )?
            }
            Step::Traversable(p) => traversable(p)?,
            Step::Chown { path, uid, gid } => chown(path, *uid, *gid)?,
            Step::MakeMountPrivate(p) => sys::mount("make mount private", None, p, None, libc::MS_PRIVATE, None)?,
            Step::PivotRoot(root) => {
                sys::chdir(root)?;
                sys::pivot_root_here()?;
                sys::umount(".", libc::MNT_DETACH)?;
                sys::chdir("/")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::{Device, Limits};

    fn dev(path: &str) -> Device {
        Device { path: path.into(), host: "/dev/vda9".into(), mode: 0o600 }
    }

    /// A container spec for tests (also the runtime's other modules').
    pub(crate) fn spec(control: bool) -> ContainerSpec {
        ContainerSpec {
            name: "web".into(),
            layer_dirs: vec!["/run/cairn/layers/aa".into(), "/run/cairn/layers/bb".into()],
            scratch_bytes: 1 << 20,
            argv: vec![],
            env: vec![],
            cwd: "/".into(),
            hostname: "web".into(),
            uid: 0,
            gid: 0,
            limits: Limits::default(),
            control,
            groups: vec![],
            capabilities: 0,
            no_new_privs: true,
            readonly_rootfs: control,
            seccomp: true,
            seccomp_deny: vec![],
            allow_userns: false,
            devices: vec![dev("/dev/data")],
            network: crate::spec::Network::None,
            rlimits: vec![],
            stop_signal: 15,
            stop_grace_ms: 1000,
            signal_group: false,
            console: false,
            userns: None,
            volumes: vec![],
            networks: Vec::new(),
            hosts: None,
            resolv_conf: None,
        }
    }

    fn vol(target: &str, readonly: bool) -> crate::spec::VolumeMount {
        crate::spec::VolumeMount {
            name: "data".into(),
            source: "/run/cairn/data/volumes/data".into(),
            target: target.into(),
            readonly,
        }
    }

    #[test]
    fn hosts_and_resolv_conf_are_bound_read_only_before_the_read_only_root() {
        let mut s = spec(false);
        s.hosts = Some("127.0.0.1\tlocalhost\n".into());
        s.resolv_conf = Some("/run/cairn/net/resolv.conf".into());
        let p = plan_ok(&s);
        let root = "/run/cairn/containers/web/rootfs";
        for (file, source) in
            [("hosts", "/run/cairn/containers/web/hosts"), ("resolv.conf", "/run/cairn/net/resolv.conf")]
        {
            let target = format!("{root}/etc/{file}");
            let ensure = position(&p, |x| *x == Step::EnsureFile(target.clone()));
            let bind = position(&p, |x| {
                matches!(x, Step::Mount { source: src, target: t, flags, .. }
                if src == source && *t == target && *flags == libc::MS_BIND)
            });
            let ro = position(&p, |x| {
                matches!(x, Step::Mount { target: t, flags, .. }
                if *t == target && flags & libc::MS_REMOUNT != 0 && flags & libc::MS_RDONLY != 0)
            });
            assert!(ensure < bind && bind < ro, "{file}");
        }
        // Neither without its setting; user namespaces make the mount
        // points on the host side.
        s.resolv_conf = None;
        let p = plan_ok(&s);
        assert!(!p.iter().any(|x| matches!(x, Step::Mount { target, .. } if target.ends_with("/etc/resolv.conf"))));
        s.resolv_conf = Some("/run/cairn/net/resolv.conf".into());
        let ids = vec![crate::spec::IdRange { inside: 0, outside: 100_000, count: 65536 }];
        s.userns = Some(crate::spec::UserNamespace { uid_map: ids.clone(), gid_map: ids });
        assert!(host_plan(&s).contains(&Step::EnsureFile(format!("{root}/etc/resolv.conf"))));
    }

    #[test]
    fn volumes_are_bound_below_the_root_with_their_flags_before_the_read_only_root() {
        let mut s = spec(true);
        s.volumes = vec![vol("/var/lib/db", false), vol("/srv/ro", true)];
        let p = plan_ok(&s);
        let root = "/run/cairn/containers/web/rootfs";
        let at = |t: &str| format!("{root}{t}");
        let mk = position(&p, |x| *x == Step::Mkdir(at("/var/lib/db")));
        let bind = position(&p, |x| {
            matches!(x, Step::Mount { what: "volume bind", source, target, flags, .. }
            if source == "/run/cairn/data/volumes/data" && *target == at("/var/lib/db") && *flags == libc::MS_BIND)
        });
        let base = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let rw = position(&p, |x| {
            matches!(x, Step::Mount { what: "volume flags", target, flags, .. }
            if *target == at("/var/lib/db") && *flags == base)
        });
        let ro = position(&p, |x| {
            matches!(x, Step::Mount { what: "volume flags", target, flags, .. }
            if *target == at("/srv/ro") && *flags == base | libc::MS_RDONLY)
        });
        let proc_ = position(&p, |x| matches!(x, Step::Mount { fstype: Some("proc"), .. }));
        let root_ro = position(&p, |x| matches!(x, Step::RemountReadOnly(_)));
        assert!(proc_ < mk && mk < bind && bind < rw && rw < ro && ro < root_ro);
        for bad in ["relative", "/", "/a/../b", "/a//b", "/a/."] {
            s.volumes = vec![vol(bad, false)];
            assert_eq!(plan(&s).map(|_| ()).unwrap_err().errno, libc::EINVAL, "{bad}");
        }
    }

    fn plan_ok(s: &ContainerSpec) -> Vec<Step> {
        plan(s).unwrap()
    }

    /// Index of the first step that matches; a missing step fails the test
    /// (so an ordering assert cannot pass because the step is gone).
    #[track_caller]
    fn position(p: &[Step], f: impl Fn(&Step) -> bool) -> usize {
        p.iter().position(f).unwrap_or_else(|| panic!("no such step in {p:#?}"))
    }

    #[test]
    fn overlay_puts_the_top_layer_first_and_scratch_on_one_tmpfs() {
        let p = plan_ok(&spec(false));
        let overlay = p.iter().find_map(|s| match s {
            Step::Mount { fstype: Some("overlay"), data, .. } => data.clone(),
            _ => None,
        });
        assert_eq!(
            overlay.as_deref(),
            Some(
                "lowerdir=/run/cairn/layers/bb:/run/cairn/layers/aa,\
                 upperdir=/run/cairn/containers/web/scratch/upper,\
                 workdir=/run/cairn/containers/web/scratch/work"
            )
        );
        let scratch = p.iter().find_map(|s| match s {
            Step::Mount { what: "scratch tmpfs", data, .. } => data.clone(),
            _ => None,
        });
        assert_eq!(scratch.as_deref(), Some("size=1048576,mode=0755"));
    }

    #[test]
    fn steps_come_in_the_order_the_kernel_needs() {
        let p = plan_ok(&spec(true));
        assert_eq!(p.first(), Some(&Step::MakePrivate));
        let missing = std::panic::catch_unwind(|| position(&p, |s| matches!(s, Step::Traversable(_))));
        assert!(missing.is_err(), "position() of a missing step fails the test");
        assert!(matches!(p.last(), Some(Step::PivotRoot(r)) if r == "/run/cairn/containers/web/rootfs"));
        let overlay = position(&p, |s| matches!(s, Step::Mount { fstype: Some("overlay"), .. }));
        let scratch = position(&p, |s| matches!(s, Step::Mount { what: "scratch tmpfs", .. }));
        let proc_ = position(&p, |s| matches!(s, Step::Mount { fstype: Some("proc"), .. }));
        let dev = position(&p, |s| matches!(s, Step::Mount { what: "dev tmpfs", .. }));
        let null = position(&p, |s| matches!(s, Step::CharDevice { path, .. } if path.ends_with("/dev/null")));
        let sys_ = position(&p, |s| matches!(s, Step::Mount { fstype: Some("sysfs"), .. }));
        let cg = position(&p, |s| matches!(s, Step::Mount { fstype: Some("cgroup2"), .. }));
        assert!(scratch < overlay && overlay < proc_ && proc_ < dev && dev < null && sys_ < cg);
        assert!(p.iter().any(|s| matches!(s, Step::Mount { source, .. } if source == CONTROL_DIR)));
        assert!(!plan_ok(&spec(false))
            .iter()
            .any(|s| matches!(s, Step::Mount { source, .. } if source == CONTROL_DIR)));
    }

    #[test]
    fn masks_read_only_paths_devices_and_read_only_rootfs() {
        let p = plan_ok(&spec(true));
        let root = "/run/cairn/containers/web/rootfs";
        assert!(p.contains(&Step::MaskFile { path: format!("{root}/proc/kcore"), null: format!("{root}/dev/null") }));
        assert!(p.contains(&Step::MaskDir(format!("{root}/sys/firmware"))));
        assert!(p.contains(&Step::ReadOnly(format!("{root}/proc/sys"))));
        assert!(p.contains(&Step::ReadOnly(format!("{root}/proc/sysrq-trigger"))));
        assert!(p.contains(&Step::Device { path: format!("{root}/dev/data"), host: "/dev/vda9".into(), mode: 0o600 }));
        let ro = position(&p, |s| matches!(s, Step::RemountReadOnly(_)));
        let mask = position(&p, |s| matches!(s, Step::MaskFile { .. }));
        let proc_ = position(&p, |s| matches!(s, Step::Mount { fstype: Some("proc"), .. }));
        assert!(proc_ < mask && mask < ro && ro == p.len() - 2, "masks after /proc, read-only root last before pivot");
        assert!(!plan_ok(&spec(false)).iter().any(|s| matches!(s, Step::RemountReadOnly(_))));
    }

    fn userns_spec() -> ContainerSpec {
        use crate::spec::{IdRange, UserNamespace};
        let mut s = spec(false);
        let map = |outside| [IdRange { inside: 0, outside, count: 65536 }].into_iter().collect();
        s.userns = Some(UserNamespace { uid_map: map(100_000), gid_map: map(200_000) });
        s.devices.clear();
        s
    }

    #[test]
    fn without_a_user_namespace_pid_1_mounts_nothing_for_the_child() {
        assert!(host_plan(&spec(false)).is_empty());
        assert!(host_mounts(&spec(false)).is_empty());
    }

    #[test]
    fn with_a_user_namespace_pid_1_mounts_the_rootfs_and_the_child_binds_devices() {
        let s = userns_spec();
        let state = "/run/cairn/containers/web";
        let host = host_plan(&s);
        let child = plan_ok(&s);
        let traversable: Vec<_> = host
            .iter()
            .filter_map(|st| match st {
                Step::Traversable(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(traversable, ["/", "/run", "/run/cairn", "/run/cairn/containers", state]);
        let scratch = position(&host, |st| matches!(st, Step::Mount { what: "scratch tmpfs", .. }));
        let upper = format!("{state}/scratch/upper");
        let chown =
            position(&host, |st| matches!(st, Step::Chown { path, uid: 100_000, gid: 200_000 } if *path == upper));
        let private_scratch = position(&host, |st| matches!(st, Step::MakeMountPrivate(p) if p.ends_with("/scratch")));
        let overlay = position(&host, |st| matches!(st, Step::Mount { fstype: Some("overlay"), .. }));
        assert!(scratch < chown && chown < overlay && private_scratch < overlay, "{host:?}");
        assert_eq!(host.last(), Some(&Step::MakeMountPrivate(format!("{state}/rootfs"))));
        assert_eq!(host_mounts(&s), [format!("{state}/rootfs"), format!("{state}/scratch")]);
        // The child mounts neither, makes no device node, and binds the host's.
        assert!(!child.iter().any(|st| matches!(
            st,
            Step::Mount { fstype: Some("overlay" | "tmpfs"), what: "overlay rootfs" | "scratch tmpfs", .. }
        )));
        assert!(!child.iter().any(|st| matches!(st, Step::CharDevice { .. } | Step::Device { .. })));
        let null = format!("{state}/rootfs/dev/null");
        let touch = position(&child, |st| *st == Step::Touch(null.clone()));
        let bound = position(
            &child,
            |st| matches!(st, Step::Mount { source, target, flags: libc::MS_BIND, .. } if source == "/dev/null" && *target == null),
        );
        let dev = position(&child, |st| matches!(st, Step::Mount { what: "dev tmpfs", .. }));
        assert!(dev < touch && touch < bound);
        assert_eq!(child.first(), Some(&Step::MakePrivate));
        assert!(
            matches!(child.get(1), Some(Step::Mount { what: "rootfs self-bind", source, target, .. }) if source == target)
        );
        assert!(matches!(child.last(), Some(Step::PivotRoot(_))));
    }

    /// PID 1's part for a user namespace makes the mount points of
    /// /etc/hosts and /etc/resolv.conf in the container's rootfs, as real
    /// root: a layer's symlink at /etc must fail it, not send it outside.
    #[test]
    fn pid_1_s_part_resolves_the_rootfs_paths_inside_it() {
        let s = userns_spec();
        let root = format!("{}/rootfs", s.state_dir());
        assert_eq!(Resolver::for_plan(&host_plan(&s)).root, Some(root.as_str()));
        assert_eq!(Resolver::for_plan(&plan_ok(&s)).root, Some(root.as_str()));
        let dir = std::env::temp_dir().join(format!("cairn-etc-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (rootfs, outside) = (dir.join("rootfs"), dir.join("outside"));
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc")).unwrap();
        let rootfs = rootfs.display().to_string();
        let plan = [
            Step::Mount {
                what: "overlay rootfs",
                source: "overlay".into(),
                target: rootfs.clone(),
                fstype: Some("overlay"),
                flags: 0,
                data: None,
            },
            Step::Mkdir(format!("{rootfs}/etc")),
            Step::EnsureFile(format!("{rootfs}/etc/hosts")),
        ];
        // The steps after the mount, as apply_steps runs them.
        let at = Resolver::for_plan(&plan);
        let made: Vec<_> = plan[1..].iter().map(|st| apply_one(&at, st).map_err(|e| e.errno)).collect();
        assert!(made.iter().all(Result::is_err), "{made:?}");
        assert!(!outside.join("hosts").exists(), "a file was made through the layer's symlink");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_default_devices_exist_and_sys_is_read_only() {
        let p = plan_ok(&spec(false));
        let devs: Vec<_> = p
            .iter()
            .filter_map(|s| match s {
                Step::CharDevice { path, .. } => path.rsplit('/').next().map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(devs, ["null", "zero", "full", "random", "urandom", "tty"]);
        for s in &p {
            if let Step::Mount { fstype: Some("sysfs" | "cgroup2"), flags, .. } = s {
                assert_ne!(flags & libc::MS_RDONLY, 0);
            }
        }
    }

    #[test]
    fn the_overlay_is_nodev_and_nosuid_wherever_it_is_mounted() {
        let s = userns_spec();
        for p in [plan_ok(&spec(false)), host_plan(&s)] {
            let flags = p.iter().find_map(|st| match st {
                Step::Mount { what: "overlay rootfs", flags, .. } => Some(*flags),
                _ => None,
            });
            assert_eq!(flags.map(|f| f & (libc::MS_NODEV | libc::MS_NOSUID)), Some(libc::MS_NODEV | libc::MS_NOSUID));
        }
    }

    #[test]
    fn devices_outside_dev_are_refused() {
        for bad in ["/data", "/devx/a", "/dev/", "/dev/../etc/x", "/dev//x", "/dev/./x", "dev/x", "/proc/dev/x"] {
            let mut s = spec(false);
            s.devices = vec![dev(bad)];
            assert_eq!(plan(&s).map_err(|e| (e.errno, e.arg)), Err((libc::EINVAL, bad.to_owned())), "{bad}");
        }
        let mut s = spec(false);
        s.devices = vec![dev("/dev/sub/data")];
        let p = plan_ok(&s);
        assert!(p.iter().any(
            |st| matches!(st, Step::Device { path, .. } if path == "/run/cairn/containers/web/rootfs/dev/sub/data")
        ));
    }

    #[test]
    fn the_console_is_not_bound_and_the_control_dir_is_read_only() {
        let p = plan_ok(&spec(true));
        assert!(!p.iter().any(|st| matches!(st, Step::Mount { source, .. } if source.contains("console"))));
        assert!(!p.iter().any(|st| matches!(st, Step::Touch(t) if t.ends_with("/console"))));
        let target = "/run/cairn/containers/web/rootfs/run/cairn";
        let bind = position(
            &p,
            |st| matches!(st, Step::Mount { source, flags: libc::MS_BIND, target: t, .. } if source == CONTROL_DIR && t == target),
        );
        let ro = position(&p, |st| {
            matches!(st, Step::Mount { target: t, flags, .. }
            if t == target && *flags & (libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_BIND) == libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_BIND)
        });
        assert_eq!(ro, bind + 1);
    }

    #[test]
    fn masks_are_dockers_list() {
        let p = plan_ok(&spec(false));
        let root = "/run/cairn/containers/web/rootfs";
        let mut masked: Vec<String> = p
            .iter()
            .filter_map(|st| match st {
                Step::MaskFile { path, .. } | Step::MaskDir(path) => path.strip_prefix(root).map(str::to_owned),
                _ => None,
            })
            .collect();
        masked.sort();
        assert_eq!(
            masked,
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/interrupts",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/sys/devices/virtual/powercap",
                "/sys/firmware",
            ]
        );
        let mut ro: Vec<_> = READ_ONLY.to_vec();
        ro.sort_unstable();
        assert_eq!(ro, ["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"]);
    }

    #[test]
    fn paths_below_the_root_are_made_without_following_symlinks() {
        let base = std::env::temp_dir().join(format!("cairn-resolver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("rootfs");
        let root = root.to_str().unwrap();
        let plan = [Step::PivotRoot(root.to_owned())];
        let at = Resolver::for_plan(&plan);
        // The root itself is made as PID 1's path; below it, component by component.
        assert!(at.open(root, sys::Create::Dirs).unwrap().fd.is_some());
        let dev = format!("{root}/dev");
        at.open(&dev, sys::Create::Dirs).unwrap();
        std::os::unix::fs::symlink("/", format!("{root}/run")).unwrap();
        let e = at.open(&format!("{root}/run/cairn"), sys::Create::Dirs).map(drop).unwrap_err();
        assert_eq!((e.op, e.arg.as_str(), e.errno), ("refuse symlink", format!("{root}/run").as_str(), libc::ELOOP));
        assert_eq!(
            at.parent(&format!("{root}/run/x"), sys::Create::Nothing).map(drop).map_err(|e| e.errno),
            Err(libc::ELOOP)
        );
        // A missing mask target is skipped, a symlinked one is not.
        assert!(at.open_if_exists(&format!("{root}/proc/kcore")).unwrap().is_none());
        assert!(at.open_if_exists(&format!("{root}/run/kcore")).is_err());
        // Paths outside the root are PID 1's own and used as they are.
        assert!(at.open("/proc/self", sys::Create::Nothing).unwrap().fd.is_none());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
