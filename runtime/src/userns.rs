//! A container's own user namespace: the id map files PID 1 writes for it
//! (pure, tested on the host) and the writes themselves.
//!
//! Order (see `spawn`): the child is cloned with `CLONE_NEWUSER` together
//! with its other namespaces, so the kernel makes the new user namespace
//! their owner; it then blocks on the go-ahead pipe. PID 1, real root in the
//! parent namespace, writes `uid_map` and `gid_map` and only then lets it
//! go on. `setgroups` is left at the kernel's "allow": the maps are written
//! by a process with CAP_SETGID in the parent namespace, which the kernel
//! accepts without "deny", and supplementary groups (`groups`) need
//! setgroups(2) to keep working inside.

use crate::spec::{map_id, IdRange, UserNamespace};

use crate::sys::{self, SysError, SysResult};

/// The contents of a `uid_map` / `gid_map` file: one `inside outside count`
/// line per range.
pub fn map_text(map: &[IdRange]) -> String {
    map.iter().map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count)).collect()
}

/// Host uid and gid of the namespace's root (what files created by
/// container root are owned by outside); `None` if 0 is not mapped, which
/// manifest validation refuses.
pub fn host_root(u: &UserNamespace) -> Option<(u32, u32)> {
    Some((map_id(&u.uid_map, 0)?, map_id(&u.gid_map, 0)?))
}

/// Write one map file of `pid` in a single write(2), as the kernel requires.
fn write_map(pid: libc::pid_t, file: &'static str, text: &str) -> SysResult<()> {
    let path = format!("/proc/{pid}/{file}");
    let fd = sys::open(&path, libc::O_WRONLY)?;
    let errno = match nix::unistd::write(&fd, text.as_bytes()) {
        Ok(n) if n == text.len() => return Ok(()),
        Ok(_) => libc::EIO,
        Err(e) => e as i32,
    };
    Err(SysError { op: "write id map", arg: format!("{path} <- {:?}", text.trim_end()), errno })
}

/// Write `uid_map` then `gid_map` of the (blocked) child `pid`.
pub fn write_maps(pid: libc::pid_t, u: &UserNamespace) -> SysResult<()> {
    write_map(pid, "uid_map", &map_text(&u.uid_map))?;
    write_map(pid, "gid_map", &map_text(&u.gid_map))
}

/// In the child, once the maps exist: become root of the namespace (ids 0,
/// no supplementary groups). The process still holds the host's uid 0,
/// which is unmapped inside; switching to the namespace's 0 makes the
/// effective set equal the permitted one (full, in the namespace) and lets
/// it create files in the filesystems it mounts.
pub fn become_root() -> SysResult<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let fail = |op: &'static str| sys::err(op, "0 (in the user namespace)");
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(g, g, g).map_err(fail("setresgid"))?;
    setgroups(&[]).map_err(fail("setgroups"))?;
    setresuid(u, u, u).map_err(fail("setresuid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_files_hold_one_line_per_range() {
        let map = [IdRange { inside: 0, outside: 100_000, count: 65536 }];
        assert_eq!(map_text(&map), "0 100000 65536\n");
        let two =
            [IdRange { inside: 0, outside: 100_000, count: 1 }, IdRange { inside: 1000, outside: 101_000, count: 10 }];
        assert_eq!(map_text(&two), "0 100000 1\n1000 101000 10\n");
        let u = UserNamespace {
            uid_map: two.to_vec(),
            gid_map: [IdRange { inside: 0, outside: 300_000, count: 5 }].into_iter().collect(),
        };
        assert_eq!(host_root(&u), Some((100_000, 300_000)));
        let none = UserNamespace { uid_map: Vec::new(), gid_map: Vec::new() };
        assert_eq!(host_root(&none), None);
    }
}
