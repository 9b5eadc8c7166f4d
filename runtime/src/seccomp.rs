//! The default seccomp filter: a deny list (EPERM) built with seccompiler
//! for the architecture this binary runs on.
//!
//! Two programs are installed: the deny list, and one that answers
//! `clone3` with ENOSYS (seccomp cannot look into clone3's argument
//! struct, so libc falls back to `clone`, whose flags it can check) unless
//! user namespaces are allowed. The filter is installed with seccomp(2)
//! directly, so it does not force `no_new_privs` (seccompiler's helper
//! would): the caller installs it while still holding CAP_SYS_ADMIN.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A syscall name in `seccomp_deny` that no supported architecture has.
    #[error("unknown syscall {0:?}")]
    UnknownSyscall(String),
    /// seccompiler refused the rules.
    #[error("building the filter: {0}")]
    Build(String),
    /// seccomp(2) failed.
    #[error("installing the filter: errno {0}")]
    Install(i32),
}

/// Syscalls the default filter denies with EPERM. Names an architecture
/// does not have are skipped on it.
pub const DEFAULT_DENY: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "_sysctl",
];

macro_rules! table {
    ($($name:ident),* $(,)?) => {
        /// The number of a syscall on this architecture.
        pub fn syscall_number(name: &str) -> Option<i64> {
            $(if stringify!($name).strip_prefix("SYS_") == Some(name) {
                return Some(libc::$name);
            })*
            arch_only(name)
        }
        /// Every name this module knows, on any architecture.
        fn known_anywhere(name: &str) -> bool {
            [$(stringify!($name),)*].iter().any(|n| n.strip_prefix("SYS_") == Some(name)) || ARCH_ONLY.contains(&name)
        }
    };
}

// Syscalls present on both x86_64 and aarch64 (named SYS_x; the lookup
// strips the prefix).
table!(
    SYS_acct,
    SYS_add_key,
    SYS_bpf,
    SYS_clock_adjtime,
    SYS_clock_settime,
    SYS_delete_module,
    SYS_finit_module,
    SYS_fsconfig,
    SYS_fsmount,
    SYS_fsopen,
    SYS_fspick,
    SYS_get_mempolicy,
    SYS_init_module,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_uring_setup,
    SYS_kcmp,
    SYS_kexec_load,
    SYS_keyctl,
    SYS_lookup_dcookie,
    SYS_mbind,
    SYS_mount,
    SYS_mount_setattr,
    SYS_move_mount,
    SYS_move_pages,
    SYS_name_to_handle_at,
    SYS_open_by_handle_at,
    SYS_open_tree,
    SYS_perf_event_open,
    SYS_pivot_root,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_ptrace,
    SYS_quotactl,
    SYS_reboot,
    SYS_request_key,
    SYS_set_mempolicy,
    SYS_setns,
    SYS_settimeofday,
    SYS_swapoff,
    SYS_swapon,
    SYS_umount2,
    SYS_userfaultfd,
    SYS_unshare,
    SYS_clone,
    SYS_clone3,
    SYS_personality,
    SYS_chroot,
    SYS_socket,
    SYS_setrlimit,
    SYS_prlimit64,
);

/// Names only x86_64 has (kexec_file_load exists on aarch64 too, but the
/// libc crate does not name it there; kexec_load is denied on both).
const ARCH_ONLY: &[&str] =
    &["kexec_file_load", "ioperm", "iopl", "nfsservctl", "sysfs", "uselib", "ustat", "vm86", "vm86old", "_sysctl"];

#[cfg(target_arch = "x86_64")]
fn arch_only(name: &str) -> Option<i64> {
    Some(match name {
        "ioperm" => libc::SYS_ioperm,
        "iopl" => libc::SYS_iopl,
        "nfsservctl" => libc::SYS_nfsservctl,
        "sysfs" => libc::SYS_sysfs,
        "uselib" => libc::SYS_uselib,
        "ustat" => libc::SYS_ustat,
        "_sysctl" => libc::SYS__sysctl,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        _ => return None,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn arch_only(_name: &str) -> Option<i64> {
    None
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// A compiled filter, ready to install.
#[derive(Debug)]
pub struct Filter {
    deny: BpfProgram,
    clone3: Option<BpfProgram>,
}

fn masked(flag: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SeccompError> {
    let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), ARCH)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    f.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))
}

/// Build the filter: the default deny list plus `extra_deny`; new user
/// namespaces are denied unless `allow_userns`.
pub fn build(extra_deny: &[&str], allow_userns: bool) -> Result<Filter, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DEFAULT_DENY {
        if let Some(nr) = syscall_number(name) {
            rules.insert(nr, Vec::new());
        }
    }
    for name in extra_deny {
        match syscall_number(name) {
            Some(nr) => {
                rules.insert(nr, Vec::new());
            }
            None if known_anywhere(name) => {}
            None => return Err(SeccompError::UnknownSyscall((*name).to_owned())),
        }
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    let mut clone3 = None;
    if !allow_userns {
        rules.insert(libc::SYS_unshare, vec![masked(newuser)?]);
        rules.insert(libc::SYS_clone, vec![masked(newuser)?]);
        let only_clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        clone3 = Some(compile(only_clone3, libc::ENOSYS)?);
    }
    Ok(Filter { deny: compile(rules, libc::EPERM)?, clone3 })
}

impl Filter {
    /// Instructions in the deny program.
    pub fn len(&self) -> usize {
        self.deny.len()
    }

    /// True when the deny program is empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
    }

    /// Install on the calling thread. Needs CAP_SYS_ADMIN or no_new_privs.
    pub fn install(&self) -> Result<(), SeccompError> {
        for prog in std::iter::once(&self.deny).chain(self.clone3.as_ref()) {
            let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
            // SAFETY: `fprog` points at `prog`'s instructions, alive for the
            // call; seccomp copies the program into the kernel.
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog)
            };
            if rc != 0 {
                return Err(SeccompError::Install(crate::sys::errno()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_this_architectures_numbers() {
        assert_eq!(syscall_number("keyctl"), Some(libc::SYS_keyctl));
        assert_eq!(syscall_number("mount"), Some(libc::SYS_mount));
        assert_eq!(syscall_number("nope"), None);
        let resolved = DEFAULT_DENY.iter().filter(|n| syscall_number(n).is_some()).count();
        assert!(resolved >= DEFAULT_DENY.len() - ARCH_ONLY.len());
    }

    #[test]
    fn builds_and_rejects_unknown_names() {
        let f = build(&[], false).unwrap_or_else(|e| panic!("{e}"));
        assert!(f.len() > 50 && f.clone3.is_some());
        assert!(build(&["chroot"], true).is_ok_and(|f| f.clone3.is_none()));
        assert!(build(&["vm86"], false).is_ok(), "a name of another architecture is skipped");
        assert!(matches!(build(&["no_such_call"], false), Err(SeccompError::UnknownSyscall(n)) if n == "no_such_call"));
    }

    #[test]
    fn the_filter_denies_in_a_child_process() {
        let f = build(&["chroot"], false).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: the child only makes raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                f.install().ok()?;
                let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                // SAFETY: raw syscalls with harmless arguments; each is denied.
                unsafe {
                    if libc::syscall(libc::SYS_keyctl, 0, -3, 1) != -1 || errno() != libc::EPERM {
                        return Some(2);
                    }
                    if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                        return Some(3);
                    }
                    if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                        return Some(4);
                    }
                    if libc::chroot(c"/".as_ptr()) != -1 || errno() != libc::EPERM {
                        return Some(5);
                    }
                    if libc::getpid() <= 0 {
                        return Some(6);
                    }
                }
                Some(0)
            })()
            .unwrap_or(1);
            // SAFETY: ends the child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "check {} failed in the child", libc::WEXITSTATUS(status));
    }
}
