//! What the entrypoint runs as: rlimits, capability sets, user and groups,
//! no_new_privs. Applied in the entrypoint's process just before execve, in
//! the order the kernel needs: rlimits and the bounding set while still
//! fully privileged, then the ids (keeping capabilities across setuid),
//! then the permitted/effective/inheritable and ambient sets.

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

/// The libc resource number.
pub fn rlimit_resource(r: RlimitResource) -> libc::c_int {
    use RlimitResource::*;
    (match r {
        Nofile => libc::RLIMIT_NOFILE,
        Nproc => libc::RLIMIT_NPROC,
        Core => libc::RLIMIT_CORE,
        Memlock => libc::RLIMIT_MEMLOCK,
        Stack => libc::RLIMIT_STACK,
        Fsize => libc::RLIMIT_FSIZE,
        As => libc::RLIMIT_AS,
        Cpu => libc::RLIMIT_CPU,
        Nice => libc::RLIMIT_NICE,
        Rtprio => libc::RLIMIT_RTPRIO,
        Sigpending => libc::RLIMIT_SIGPENDING,
        Msgqueue => libc::RLIMIT_MSGQUEUE,
    }) as libc::c_int
}

/// Apply rlimits (`u64::MAX` = unlimited).
pub fn set_rlimits(limits: &[Rlimit]) -> SysResult<()> {
    for l in limits {
        let conv = |v: u64| if v == u64::MAX { libc::RLIM_INFINITY } else { v as libc::rlim_t };
        let r = libc::rlimit { rlim_cur: conv(l.soft), rlim_max: conv(l.hard) };
        // SAFETY: `r` is a valid rlimit; the resource number comes from libc.
        if unsafe { libc::setrlimit(rlimit_resource(l.resource) as _, &r) } != 0 {
            return Err(fail("setrlimit", format!("{:?}", l.resource)));
        }
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
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: prctl/setgroups/setgid/setuid with valid arguments; `groups`
    // outlives the setgroups call.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            return Err(fail("PR_SET_KEEPCAPS", 1));
        }
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(fail("setgroups", format!("{groups:?}")));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(fail("setresgid", gid));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(fail("setresuid", uid));
        }
    }
    Ok(())
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
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_NO_NEW_PRIVS", 1));
    }
    Ok(())
}
