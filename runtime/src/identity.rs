//! What the entrypoint runs as: rlimits, capability sets, user and groups,
//! no_new_privs. Applied in the entrypoint's process just before execve, in
//! the order the kernel needs: rlimits and the bounding set while still
//! fully privileged, then the ids (keeping capabilities across setuid),
//! then the permitted/effective/inheritable and ambient sets.

use nix::sys::resource::Resource;

use crate::spec::{Rlimit, RlimitResource};

use crate::sys::{self, SysError, SysResult};

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn fail(op: &'static str, arg: impl ToString) -> SysError {
    SysError { op, arg: arg.to_string(), errno: sys::errno() }
}

/// The resource as nix names it.
pub fn rlimit_resource(r: RlimitResource) -> Resource {
    use RlimitResource::*;
    match r {
        Nofile => Resource::RLIMIT_NOFILE,
        Nproc => Resource::RLIMIT_NPROC,
        Core => Resource::RLIMIT_CORE,
        Memlock => Resource::RLIMIT_MEMLOCK,
        Stack => Resource::RLIMIT_STACK,
        Fsize => Resource::RLIMIT_FSIZE,
        As => Resource::RLIMIT_AS,
        Cpu => Resource::RLIMIT_CPU,
        Nice => Resource::RLIMIT_NICE,
        Rtprio => Resource::RLIMIT_RTPRIO,
        Sigpending => Resource::RLIMIT_SIGPENDING,
        Msgqueue => Resource::RLIMIT_MSGQUEUE,
    }
}

/// Apply rlimits (`u64::MAX` = unlimited).
pub fn set_rlimits(limits: &[Rlimit]) -> SysResult<()> {
    for l in limits {
        let conv = |v: u64| if v == u64::MAX { libc::RLIM_INFINITY } else { v as libc::rlim_t };
        nix::sys::resource::setrlimit(rlimit_resource(l.resource), conv(l.soft), conv(l.hard))
            .map_err(|e| SysError { op: "setrlimit", arg: format!("{:?}", l.resource), errno: e as i32 })?;
    }
    Ok(())
}

/// Highest capability number the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// Drop every capability not in `keep` from the bounding set.
pub fn drop_bounding(keep: u64) -> SysResult<()> {
    for cap in 0..=last_cap().min(63) {
        if keep & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
                && sys::errno() != libc::EINVAL
            {
                return Err(fail("PR_CAPBSET_DROP", cap));
            }
        }
    }
    Ok(())
}

/// Switch to `uid`/`gid`/`groups`, keeping permitted capabilities.
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> SysResult<()> {
    use nix::unistd::{Gid, Uid};
    nix::sys::prctl::set_keepcaps(true).map_err(sys::err("PR_SET_KEEPCAPS", 1))?;
    let gids: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&gids).map_err(|e| SysError {
        op: "setgroups",
        arg: format!("{groups:?}"),
        errno: e as i32,
    })?;
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g).map_err(sys::err("setresgid", gid))?;
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u).map_err(sys::err("setresuid", uid))
}

/// Set permitted, effective and inheritable to `keep`, and the ambient set
/// to `keep` (so a non-root entrypoint keeps them across execve) —
/// everything else is cleared.
pub fn set_capabilities(keep: u64) -> SysResult<()> {
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let mut header = CapHeader { version: CAP_V3, pid: 0 };
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: lo },
        CapData { effective: hi, permitted: hi, inheritable: hi },
    ];
    // SAFETY: capset takes a v3 header and two data structs, as given.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(fail("capset", format!("{keep:#x}")));
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
    }
    for cap in 0..=last_cap().min(63) {
        if keep & (1u64 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            if unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            } != 0
            {
                return Err(fail("PR_CAP_AMBIENT_RAISE", cap));
            }
        }
    }
    Ok(())
}

/// Set no_new_privs.
pub fn set_no_new_privs() -> SysResult<()> {
    nix::sys::prctl::set_no_new_privs().map_err(sys::err("PR_SET_NO_NEW_PRIVS", 1))
}
