//! Early mounts: the pseudo filesystems PID 1 needs, and cgroup v2 with the
//! controllers delegated to container cgroups.

use cairn_runtime::cgroup;
use cairn_runtime::sys::{self, SysError, SysResult};

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// (what, source, target, fstype, flags, data), in mount order.
type EarlyMount = (&'static str, &'static str, &'static str, &'static str, libc::c_ulong, Option<&'static str>);

/// The early mounts.
pub const MOUNTS: [EarlyMount; 7] = [
    ("proc", "proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None),
    ("sysfs", "sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, None),
    ("devtmpfs", "devtmpfs", "/dev", "devtmpfs", NOSUID, Some("mode=0755")),
    ("devpts", "devpts", "/dev/pts", "devpts", NOSUID | NOEXEC, Some("mode=0620,ptmxmode=0666")),
    ("shm", "shm", "/dev/shm", "tmpfs", NOSUID | NODEV, Some("mode=1777,size=16m")),
    ("run", "run", "/run", "tmpfs", NOSUID | NODEV, Some("mode=0755,size=32m")),
    ("cgroup2", "cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID | NODEV | NOEXEC, Some("nsdelegate")),
];

/// Mount everything; a target that is already mounted (EBUSY) is fine. A
/// failure does not stop the others (a missing devpts must not cost the
/// cgroup mount): every failure is returned, named, in mount order.
pub fn mount_all() -> Vec<(&'static str, SysError)> {
    mount_each(
        &MOUNTS,
        |target| sys::mkdir_all(target, 0o755),
        |(what, source, target, fstype, flags, data)| sys::mount(what, Some(source), target, Some(fstype), flags, data),
    )
}

/// [`mount_all`] with the syscalls passed in (host tests).
fn mount_each(
    mounts: &[EarlyMount],
    mut mkdir: impl FnMut(&str) -> SysResult<()>,
    mut mount: impl FnMut(EarlyMount) -> SysResult<()>,
) -> Vec<(&'static str, SysError)> {
    let mut failed = Vec::new();
    for &m in mounts {
        let (what, _, target, ..) = m;
        match mkdir(target).and_then(|()| mount(m)) {
            Err(e) if e.errno == libc::EBUSY => {}
            Err(e) => failed.push((what, e)),
            Ok(()) => {}
        }
    }
    failed
}

/// Enable the controllers for children and create the parent cgroup of all
/// containers (with the same controllers enabled below it).
///
/// On this thread, before any other of PID 1's starts: the boot's first
/// cgroup with the memory controller switches kmem accounting on, which
/// rewrites a static branch in the kernel's slab allocator on every CPU.
/// Made beside PID 1's other thread (it was, for a day), that rewrite
/// raced the disk scan's allocations on the other CPU, and under QEMU's
/// multi-threaded TCG the other CPU could keep executing the breakpoint
/// the kernel patches in and out (a stale translation): both CPUs spun in
/// `kmem_cache_alloc_lru` for good, about one boot in 70.
pub fn cgroups() -> SysResult<()> {
    cgroup::Cgroup::at(cgroup::ROOT).write("cgroup.subtree_control", cgroup::CONTROLLERS)?;
    cgroup::make_parent(cgroup::CONTAINERS)
}

/// Which controllers the root offers to children now.
pub fn enabled_controllers() -> String {
    std::fs::read_to_string(format!("{}/cgroup.subtree_control", cgroup::ROOT))
        .map(|s| s.trim().replace(' ', ","))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(op: &'static str, errno: i32) -> SysError {
        SysError { op, arg: String::new(), errno }
    }

    #[test]
    fn a_failed_mount_does_not_stop_the_others() {
        let mut mounted = Vec::new();
        let failed = mount_each(
            &MOUNTS,
            |t| if t == "/dev/shm" { Err(err("mkdir", libc::EROFS)) } else { Ok(()) },
            |(what, ..)| match what {
                "devpts" => Err(err("mount", libc::ENODEV)),
                "proc" => Err(err("mount", libc::EBUSY)),
                _ => {
                    mounted.push(what);
                    Ok(())
                }
            },
        );
        let failed: Vec<(&str, i32)> = failed.iter().map(|(w, e)| (*w, e.errno)).collect();
        assert_eq!(failed, [("devpts", libc::ENODEV), ("shm", libc::EROFS)]);
        assert_eq!(mounted, ["sysfs", "devtmpfs", "run", "cgroup2"], "everything after a failure is still mounted");
    }
}
