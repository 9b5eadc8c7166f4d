//! The default seccomp filter every container gets, built with seccompiler
//! for the architecture this binary is compiled for (x86_64 or aarch64).
//!
//! The default action is ALLOW. What the filter refuses:
//!
//! - every name in [`DEFAULT_DENY`] (and the container's `seccomp_deny`
//!   additions) answers EPERM: a superset of what Docker's default profile
//!   blocks, minus nothing;
//! - `personality` answers EPERM unless its argument is one of the values
//!   Docker allows (0, PER_LINUX32, UNAME26, both, and the 0xffffffff query),
//!   so ADDR_NO_RANDOMIZE and READ_IMPLIES_EXEC cannot be switched on;
//! - unless user namespaces are allowed: `clone` and `unshare` whose flags
//!   hold CLONE_NEWUSER answer EPERM, and `clone3` answers ENOSYS (seccomp
//!   cannot look into clone3's argument struct; on ENOSYS libc falls back to
//!   `clone`, whose flags the filter can check). Other namespace flags need
//!   CAP_SYS_ADMIN, which a container does not have;
//! - on x86_64, x32-ABI syscalls (number with bit 30 set) answer ENOSYS, as
//!   on a kernel built without x32: otherwise `mount | 0x40000000` would
//!   slip past every rule;
//! - a syscall of another ABI (i386 on x86_64, arm32 on aarch64) kills the
//!   process (seccompiler's architecture check), which also covers the
//!   32-bit-only `vm86`, `vm86old`, `stime` and `umount`.
//!
//! Denials are EPERM, never a kill, so software that probes a syscall falls
//! back cleanly.
//!
//! Capabilities open what they govern, as in Docker's profile: a container
//! that keeps a capability listed in [`CAPABILITY_GATES`] (by `cap_add`) is
//! not denied the syscalls that capability guards, so `cap_add =
//! ["SYS_TIME"]` really lets it set the clock. A name the container lists in
//! `seccomp_deny` stays denied whatever it keeps.
//!
//! [`Filter::install`] calls seccomp(2) directly rather than through
//! seccompiler's helper, which would also set `no_new_privs`: the namespace
//! init installs the filter while it still holds CAP_SYS_ADMIN, and sets
//! `no_new_privs` later only if the manifest asks for it.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Names in `seccomp_deny` that neither x86_64 nor aarch64 has.
    #[error("unknown syscall names in seccomp_deny: {}", .0.join(", "))]
    UnknownSyscalls(Vec<String>),
    /// seccompiler refused the rules (or the program is too long).
    #[error("building the seccomp filter: {0}")]
    Build(String),
    /// seccomp(SECCOMP_SET_MODE_FILTER) failed.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Install(std::io::Error),
}

/// Syscalls the default filter answers with EPERM, on every container.
/// Names the running architecture does not have are skipped on it (marked
/// "x86_64 only" below); every name here exists on x86_64 or aarch64.
pub const DEFAULT_DENY: &[&str] = &[
    // Kernel modules and kernel replacement.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",   // x86_64 only (obsolete, ENOSYS anyway)
    "get_kernel_syms", // x86_64 only (obsolete)
    "query_module",    // x86_64 only (obsolete)
    "kexec_load",
    "kexec_file_load",
    "reboot",
    // Mounts, old and new API, and leaving the root.
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    // Namespaces: joining another is never needed (new user namespaces
    // are handled by argument, see the module docs).
    "setns",
    // Kernel keyrings (not namespaced).
    "keyctl",
    "add_key",
    "request_key",
    // Kernel programs, tracing, introspection of other processes.
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "lookup_dcookie",
    "syslog",
    // File handles bypass path-based checks (the "shocker" escape).
    "name_to_handle_at",
    "open_by_handle_at",
    // Clocks are not namespaced.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    // Host-wide state: swap, process accounting, quotas, tty hangup.
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    // NUMA memory policy.
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "get_mempolicy",
    "move_pages",
    // Page-fault handling from user space (a kernel-race helper) and
    // io_uring (its operations are not seen by seccomp).
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // Legacy interfaces.
    "nfsservctl",
    "uselib",     // x86_64 only
    "ustat",      // x86_64 only
    "sysfs",      // x86_64 only
    "_sysctl",    // x86_64 only
    "ioperm",     // x86_64 only
    "iopl",       // x86_64 only
    "modify_ldt", // x86_64 only
];

/// Default-denied syscalls that a capability governs: a container keeping
/// the capability (bit number as in `linux/capability.h`) may call them;
/// the kernel's own capability check then applies. Docker's default
/// profile opens the same syscalls for the same capabilities. `kexec_*`
/// stay denied even with CAP_SYS_BOOT: replacing the device's kernel is
/// never a container's job.
pub const CAPABILITY_GATES: &[(u8, &[&str])] = &[
    // CAP_DAC_READ_SEARCH
    (2, &["open_by_handle_at"]),
    // CAP_SYS_MODULE
    (16, &["init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms"]),
    // CAP_SYS_RAWIO
    (17, &["iopl", "ioperm"]),
    // CAP_SYS_PTRACE
    (19, &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"]),
    // CAP_SYS_PACCT
    (20, &["acct"]),
    // CAP_SYS_ADMIN
    (
        21,
        &[
            "mount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "setns",
            "quotactl",
            "quotactl_fd",
            "lookup_dcookie",
            "name_to_handle_at",
        ],
    ),
    // CAP_SYS_BOOT
    (22, &["reboot"]),
    // CAP_SYS_NICE
    (23, &["mbind", "set_mempolicy", "set_mempolicy_home_node", "get_mempolicy", "move_pages"]),
    // CAP_SYS_TIME
    (25, &["settimeofday", "clock_settime", "clock_adjtime"]),
    // CAP_SYS_TTY_CONFIG
    (26, &["vhangup"]),
    // CAP_SYSLOG
    (34, &["syslog"]),
    // CAP_PERFMON
    (38, &["perf_event_open"]),
    // CAP_BPF
    (39, &["bpf"]),
];

/// Whether a kept capability opens the default-denied syscall `name`.
fn opened_by(capabilities: u64, name: &str) -> bool {
    CAPABILITY_GATES.iter().any(|(cap, names)| capabilities & (1u64 << cap) != 0 && names.contains(&name))
}

/// Lists the syscalls the `libc` crate names on this architecture (for
/// both the gnu and the musl target) as `NAMES` ("SYS_x SYS_y ...") and
/// the matching `NUMBERS`, so every number comes from libc.
macro_rules! libc_syscalls {
    ($($sys:ident)*) => {
        const NAMES: &str = concat!($(stringify!($sys), " ",)*);
        const NUMBERS: &[u16] = &[$(libc::$sys as u16,)*];
    };
}

#[cfg(target_arch = "x86_64")]
libc_syscalls! {
    SYS__sysctl SYS_accept SYS_accept4 SYS_access SYS_acct SYS_add_key SYS_adjtimex SYS_afs_syscall
    SYS_alarm SYS_arch_prctl SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset SYS_chdir SYS_chmod
    SYS_chown SYS_chroot SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime SYS_clock_nanosleep
    SYS_clock_settime SYS_clone SYS_clone3 SYS_close SYS_close_range SYS_connect SYS_copy_file_range
    SYS_creat SYS_delete_module SYS_dup SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1
    SYS_epoll_ctl SYS_epoll_ctl_old SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait
    SYS_epoll_wait_old SYS_eventfd SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group
    SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark
    SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr
    SYS_finit_module SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr SYS_fsconfig SYS_fsetxattr
    SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex
    SYS_futex_waitv SYS_futimesat SYS_get_mempolicy SYS_get_robust_list SYS_get_thread_area
    SYS_getcpu SYS_getcwd SYS_getdents SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid
    SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid SYS_getpmsg
    SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit
    SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid
    SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init SYS_inotify_init1
    SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit
    SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioperm SYS_iopl
    SYS_ioprio_get SYS_ioprio_set SYS_kcmp SYS_kexec_file_load SYS_kexec_load SYS_keyctl SYS_kill
    SYS_landlock_add_rule SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown
    SYS_lgetxattr SYS_link SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie
    SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_lstat SYS_madvise SYS_mbind SYS_membarrier
    SYS_memfd_create SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdir SYS_mkdirat SYS_mknod
    SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mount
    SYS_mount_setattr SYS_move_mount SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify
    SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_msgctl SYS_msgget
    SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at
    SYS_nanosleep SYS_newfstatat SYS_nfsservctl SYS_open SYS_open_by_handle_at SYS_open_tree
    SYS_openat SYS_openat2 SYS_pause SYS_perf_event_open SYS_personality SYS_pidfd_getfd
    SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe SYS_pipe2 SYS_pivot_root SYS_pkey_alloc
    SYS_pkey_free SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2
    SYS_prlimit64 SYS_process_madvise SYS_process_mrelease SYS_process_vm_readv
    SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_putpmsg SYS_pwrite64 SYS_pwritev SYS_pwritev2
    SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlink SYS_readlinkat SYS_readv
    SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_rename
    SYS_renameat SYS_renameat2 SYS_request_key SYS_restart_syscall SYS_rmdir SYS_rseq
    SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn
    SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max
    SYS_sched_get_priority_min SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam
    SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr
    SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_security SYS_select
    SYS_semctl SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_set_mempolicy SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_thread_area
    SYS_set_tid_address SYS_setdomainname SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups
    SYS_sethostname SYS_setitimer SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid
    SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid
    SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd
    SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_stat SYS_statfs SYS_statx SYS_swapoff
    SYS_swapon SYS_symlink SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysfs
    SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_time SYS_timer_create SYS_timer_delete
    SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
    SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_tuxcall SYS_umask SYS_umount2 SYS_uname
    SYS_unlink SYS_unlinkat SYS_unshare SYS_uselib SYS_userfaultfd SYS_ustat SYS_utime SYS_utimensat
    SYS_utimes SYS_vfork SYS_vhangup SYS_vmsplice SYS_vserver SYS_wait4 SYS_waitid SYS_write
    SYS_writev
}

#[cfg(target_arch = "aarch64")]
libc_syscalls! {
    SYS_accept SYS_accept4 SYS_acct SYS_add_key SYS_adjtimex SYS_bind SYS_bpf SYS_brk SYS_capget
    SYS_capset SYS_chdir SYS_chroot SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime
    SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close SYS_close_range SYS_connect
    SYS_copy_file_range SYS_delete_module SYS_dup SYS_dup3 SYS_epoll_create1 SYS_epoll_ctl
    SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group
    SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init SYS_fanotify_mark
    SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr
    SYS_finit_module SYS_flistxattr SYS_flock SYS_fremovexattr SYS_fsconfig SYS_fsetxattr
    SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex
    SYS_futex_waitv SYS_get_mempolicy SYS_get_robust_list SYS_getcpu SYS_getcwd SYS_getdents64
    SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid
    SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrusage
    SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr
    SYS_init_module SYS_inotify_add_watch SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel
    SYS_io_destroy SYS_io_getevents SYS_io_setup SYS_io_submit SYS_io_uring_enter
    SYS_io_uring_register SYS_io_uring_setup SYS_ioctl SYS_ioprio_get SYS_ioprio_set SYS_kcmp
    SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule SYS_landlock_create_ruleset
    SYS_landlock_restrict_self SYS_lgetxattr SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr
    SYS_lookup_dcookie SYS_lremovexattr SYS_lseek SYS_lsetxattr SYS_madvise SYS_mbind SYS_membarrier
    SYS_memfd_create SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdirat SYS_mknodat
    SYS_mlock SYS_mlock2 SYS_mlockall SYS_mmap SYS_mount SYS_mount_setattr SYS_move_mount
    SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
    SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync
    SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
    SYS_nfsservctl SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2 SYS_perf_event_open
    SYS_personality SYS_pidfd_getfd SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe2 SYS_pivot_root
    SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv
    SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease SYS_process_vm_readv
    SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_quotactl
    SYS_quotactl_fd SYS_read SYS_readahead SYS_readlinkat SYS_readv SYS_reboot SYS_recvfrom
    SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_renameat2 SYS_request_key
    SYS_restart_syscall SYS_rseq SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask
    SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo
    SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity SYS_sched_getattr
    SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity
    SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp
    SYS_semctl SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_set_mempolicy SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address
    SYS_setdomainname SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname
    SYS_setitimer SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid
    SYS_setreuid SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat
    SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd4 SYS_socket
    SYS_socketpair SYS_splice SYS_statfs SYS_statx SYS_swapoff SYS_swapon SYS_symlinkat SYS_sync
    SYS_syncfs SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_timer_create SYS_timer_delete
    SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
    SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask SYS_umount2 SYS_uname
    SYS_unlinkat SYS_unshare SYS_userfaultfd SYS_utimensat SYS_vhangup SYS_vmsplice SYS_wait4
    SYS_waitid SYS_write SYS_writev
}

/// Syscalls of this architecture that libc does not name (for one of the
/// gnu or musl targets), from the kernel's table.
#[cfg(target_arch = "x86_64")]
const ARCH_EXTRA: &[(&str, u16)] =
    &[("create_module", 174), ("get_kernel_syms", 177), ("query_module", 178), ("io_pgetevents", 333)];
#[cfg(target_arch = "aarch64")]
const ARCH_EXTRA: &[(&str, u16)] = &[
    ("renameat", 38),
    ("sync_file_range", 84),
    ("getrlimit", 163),
    ("setrlimit", 164),
    ("io_pgetevents", 292),
    ("kexec_file_load", 294),
];

/// Syscalls from 451 on, numbered the same on every architecture, that
/// libc does not name everywhere yet.
const COMMON: &[&str] = &[
    "cachestat",
    "fchmodat2",
    "map_shadow_stack",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "statmount",
    "listmount",
    "lsm_get_self_attr",
    "lsm_set_self_attr",
    "lsm_list_modules",
    "mseal",
    "setxattrat",
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "open_tree_attr",
    "file_getattr",
    "file_setattr",
    "listns",
];
const COMMON_FIRST: u16 = 451;

/// Names x86_64 has and aarch64 does not: skipped without an error on
/// aarch64. (aarch64 has no syscall x86_64 lacks.)
#[cfg(target_arch = "aarch64")]
const OTHER_ARCH: &str = concat!(
    "_sysctl access afs_syscall alarm arch_prctl chmod chown creat create_module dup2 ",
    "epoll_create epoll_ctl_old epoll_wait epoll_wait_old eventfd fork futimesat ",
    "get_kernel_syms get_thread_area getdents getpgrp getpmsg inotify_init ioperm iopl lchown ",
    "link lstat mkdir mknod modify_ldt open pause pipe poll putpmsg query_module readlink ",
    "rename rmdir security select set_thread_area signalfd stat symlink sysfs time tuxcall ",
    "unlink uselib ustat utime utimes vfork vserver "
);
#[cfg(target_arch = "x86_64")]
const OTHER_ARCH: &str = "";

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// `AUDIT_ARCH_*` of this architecture, as seccomp_data reports it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// Every (name, number) of this architecture.
fn this_arch() -> impl Iterator<Item = (&'static str, u16)> {
    let libc = NAMES.split_ascii_whitespace().map(|n| n.strip_prefix("SYS_").unwrap_or(n)).zip(NUMBERS.iter().copied());
    let common = COMMON.iter().copied().zip(COMMON_FIRST..);
    libc.chain(ARCH_EXTRA.iter().copied()).chain(common)
}

/// The number of syscall `name` on the architecture this binary is built
/// for; None when it has no such syscall.
pub fn syscall_number(name: &str) -> Option<i64> {
    this_arch().find(|(n, _)| *n == name).map(|(_, nr)| i64::from(nr))
}

/// Whether `name` is a syscall of x86_64 or aarch64 (the same answer on
/// both): what a manifest's `seccomp_deny` may name.
pub fn known_syscall(name: &str) -> bool {
    syscall_number(name).is_some() || OTHER_ARCH.split_ascii_whitespace().any(|n| n == name)
}

/// A compiled filter, ready to install.
#[derive(Debug)]
pub struct Filter {
    /// seccompiler's program: the deny list (EPERM) and the argument rules.
    deny: BpfProgram,
    /// Hand-written: x32 syscalls and (unless user namespaces are allowed)
    /// clone3 answer ENOSYS. None when it would check nothing.
    guard: Option<BpfProgram>,
}

fn build_err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Build(e.to_string())
}

/// A rule that matches when argument 0 has every bit of `flag` set.
fn arg0_has(flag: u64) -> Result<SeccompRule, SeccompError> {
    let cond =
        SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).map_err(build_err)?;
    SeccompRule::new(vec![cond]).map_err(build_err)
}

/// A rule that matches when the 32-bit argument 0 is none of `allowed`.
fn arg0_none_of(allowed: &[u32]) -> Result<SeccompRule, SeccompError> {
    let conds = allowed
        .iter()
        .map(|v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(*v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(build_err)?;
    SeccompRule::new(conds).map_err(build_err)
}

/// `personality` values Docker's profile allows: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONALITY_ALLOWED: [u32; 5] = [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `__X32_SYSCALL_BIT`.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
#[cfg(target_arch = "x86_64")]
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
/// Offsets in struct seccomp_data.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The ENOSYS program: for this architecture's syscalls, each of `checks`
/// (a jump opcode and its constant) that holds answers ENOSYS.
fn guard_program(checks: &[(u16, u32)]) -> Option<BpfProgram> {
    if checks.is_empty() {
        return None;
    }
    let n = checks.len();
    let mut prog = Vec::with_capacity(n + 5);
    prog.push(insn(LD_W_ABS, DATA_ARCH, 0, 0));
    // Another ABI: allow here (the deny program kills it).
    prog.push(insn(JEQ_K, AUDIT_ARCH, 0, (n + 1) as u8));
    prog.push(insn(LD_W_ABS, DATA_NR, 0, 0));
    for (i, (op, k)) in checks.iter().enumerate() {
        // On a match, skip the checks after this one and the ALLOW.
        prog.push(insn(*op, *k, (n - i) as u8, 0));
    }
    prog.push(insn(RET_K, libc::SECCOMP_RET_ALLOW, 0, 0));
    prog.push(insn(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0));
    Some(prog)
}

/// Build the filter for the architecture this binary is compiled for: the
/// default deny list, less what the kept `capabilities` (bit n = capability
/// n) open ([`CAPABILITY_GATES`]), plus `extra_deny` (EPERM); new user
/// namespaces are refused unless `allow_userns`. A name in `extra_deny`
/// that only the other architecture has is skipped; one neither has is an
/// error that names it.
/// An `extra_deny` name always denies the syscall outright, even one the
/// default filter checks by argument (`clone`, `unshare`, `personality`).
pub fn build(extra_deny: &[&str], allow_userns: bool, capabilities: u64) -> Result<Filter, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_personality, vec![arg0_none_of(&PERSONALITY_ALLOWED)?]);
    if !allow_userns {
        let newuser = libc::CLONE_NEWUSER as u64;
        rules.insert(libc::SYS_clone, vec![arg0_has(newuser)?]);
        rules.insert(libc::SYS_unshare, vec![arg0_has(newuser)?]);
    }
    for nr in DEFAULT_DENY.iter().filter(|n| !opened_by(capabilities, n)).filter_map(|n| syscall_number(n)) {
        rules.insert(nr, Vec::new());
    }
    let mut unknown = Vec::new();
    for name in extra_deny {
        match syscall_number(name) {
            Some(nr) => {
                rules.insert(nr, Vec::new());
            }
            None if known_syscall(name) => {}
            None => unknown.push((*name).to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(SeccompError::UnknownSyscalls(unknown));
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), ARCH)
        .map_err(build_err)?;
    let deny = BpfProgram::try_from(filter).map_err(build_err)?;

    let mut checks: Vec<(u16, u32)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    checks.push((JGE_K, X32_SYSCALL_BIT));
    if !allow_userns {
        checks.push((JEQ_K, libc::SYS_clone3 as u32));
    }
    Ok(Filter { deny, guard: guard_program(&checks) })
}

impl Filter {
    /// BPF instructions in all of the filter's programs.
    pub fn len(&self) -> usize {
        self.deny.len() + self.guard.as_ref().map_or(0, Vec::len)
    }

    /// Never true for a built filter (there to pair with `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Install on the calling thread (no TSYNC: the caller is single
    /// threaded). Needs CAP_SYS_ADMIN or `no_new_privs`. Allocates nothing,
    /// so it is safe between fork and exec.
    pub fn install(&self) -> Result<(), SeccompError> {
        for prog in std::iter::once(&self.deny).chain(self.guard.as_ref()) {
            let len = u16::try_from(prog.len())
                .map_err(|_| SeccompError::Install(std::io::Error::from_raw_os_error(libc::E2BIG)))?;
            // seccompiler's sock_filter is #[repr(C)] with the fields of
            // libc's (u16, u8, u8, u32), so the pointer cast keeps the layout.
            let fprog = libc::sock_fprog { len, filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut() };
            // SAFETY: `fprog` points at `len` initialised instructions that
            // outlive the call; the kernel only reads them (it copies the
            // program) and does not keep the pointer.
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog)
            };
            if rc != 0 {
                return Err(SeccompError::Install(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_consistent() {
        assert_eq!(NAMES.split_ascii_whitespace().count(), NUMBERS.len());
        let all: Vec<_> = this_arch().collect();
        let mut names: Vec<_> = all.iter().map(|(n, _)| *n).collect();
        let mut numbers: Vec<_> = all.iter().map(|(_, nr)| *nr).collect();
        names.sort_unstable();
        names.dedup();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(names.len(), all.len(), "a name twice");
        assert_eq!(numbers.len(), all.len(), "a number twice");
        assert!(OTHER_ARCH.split_ascii_whitespace().all(|n| syscall_number(n).is_none()));
        assert_eq!(syscall_number("mount"), Some(libc::SYS_mount));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("mount_setattr"), Some(libc::SYS_mount_setattr));
        assert_eq!(syscall_number("open_tree_attr"), Some(467));
        assert_eq!(syscall_number("nope"), None);
        assert_eq!(syscall_number(""), None);
        assert_eq!(syscall_number("SYS_mount"), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers() {
        assert_eq!(syscall_number("keyctl"), Some(250));
        assert_eq!(syscall_number("create_module"), Some(174));
        assert_eq!(syscall_number("io_pgetevents"), Some(333));
        assert_eq!(syscall_number("iopl"), Some(172));
        // x86_64 has every name on the list.
        assert!(DEFAULT_DENY.iter().all(|n| syscall_number(n).is_some()));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_numbers() {
        assert_eq!(syscall_number("keyctl"), Some(219));
        assert_eq!(syscall_number("kexec_file_load"), Some(294));
        assert_eq!(syscall_number("iopl"), None);
        assert!(build(&["iopl", "open"], false).is_ok(), "x86_64-only names are skipped");
    }

    #[test]
    fn every_default_name_is_a_syscall() {
        for name in DEFAULT_DENY {
            assert!(known_syscall(name), "{name}");
        }
        let mut sorted = DEFAULT_DENY.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DEFAULT_DENY.len(), "a name twice");
    }

    #[test]
    fn builds_and_rejects_unknown_names() {
        let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
        // About five instructions a denied syscall; far below BPF_MAXINSNS.
        assert!((200..1000).contains(&f.len()), "{}", f.len());
        assert!(f.guard.is_some());
        let open = build(&["chroot"], true, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open.guard.is_some(), cfg!(target_arch = "x86_64"), "only the x32 check is left");
        match build(&["mount", "no_such_call", "vm86"], false, 0) {
            Err(e @ SeccompError::UnknownSyscalls(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("no_such_call") && msg.contains("vm86") && !msg.contains("mount"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(known_syscall("iopl") && known_syscall("open") && !known_syscall("stime"));
    }

    #[test]
    fn guard_jumps_land_on_the_returns() {
        let p = guard_program(&[(JEQ_K, 7), (JEQ_K, 9)]).unwrap_or_default();
        assert_eq!(p.len(), 7);
        // Arch mismatch skips to ALLOW, each match to ENOSYS.
        assert_eq!(1 + 1 + usize::from(p[1].jf), 5);
        assert_eq!(p[5].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(3 + 1 + usize::from(p[3].jt), 6);
        assert_eq!(4 + 1 + usize::from(p[4].jt), 6);
        assert_eq!(p[6].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert!(guard_program(&[]).is_none());
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// The call failed with `want`.
    fn fails(rc: libc::c_long, want: i32) -> bool {
        rc == -1 && errno() == want
    }

    /// Fork; in the child set no_new_privs, install `f`, run `checks`, and
    /// exit with the number of the first check that failed (0: all passed,
    /// 100 + errno: install failed). The child only makes raw syscalls: the
    /// test harness is multi-threaded, so it must not allocate.
    fn in_child(f: &Filter, checks: fn() -> i32) -> i32 {
        // SAFETY: the child makes only raw syscalls (nothing that allocates
        // or takes a lock another thread might hold) and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: errno {}", errno());
        if pid == 0 {
            // SAFETY: prctl with plain integer arguments.
            let code = if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                99
            } else {
                match f.install() {
                    Ok(()) => checks(),
                    Err(SeccompError::Install(e)) => 100 + e.raw_os_error().unwrap_or(0),
                    Err(_) => 98,
                }
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn default_checks() -> i32 {
        let null = core::ptr::null::<libc::c_char>();
        // SAFETY: raw syscalls whose pointer arguments are null or point at
        // locals; the ones that would change anything are denied, and a
        // process made by a clone that slipped through exits at once.
        unsafe {
            if !fails(libc::syscall(libc::SYS_mount, null, null, null, 0, null), libc::EPERM) {
                return 1;
            }
            if !fails(libc::syscall(libc::SYS_keyctl, 0, -3, 0), libc::EPERM) {
                return 2;
            }
            if !fails(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER), libc::EPERM) {
                return 3;
            }
            if libc::syscall(libc::SYS_unshare, 0) != 0 {
                return 4;
            }
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
            let rc = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
            if rc == 0 {
                libc::_exit(0);
            }
            if !fails(rc, libc::EPERM) {
                return 5;
            }
            if !fails(libc::syscall(libc::SYS_clone3, null, 0), libc::ENOSYS) {
                return 6;
            }
            if libc::getpid() <= 1 || libc::syscall(libc::SYS_getpid) != libc::getpid() as libc::c_long {
                return 7;
            }
            // fork (clone without CLONE_NEWUSER) still works.
            let child = libc::fork();
            if child == 0 {
                libc::_exit(7);
            }
            let mut status = 0;
            if child < 0 || libc::waitpid(child, &mut status, 0) != child || libc::WEXITSTATUS(status) != 7 {
                return 8;
            }
            if !fails(libc::syscall(libc::SYS_setns, -1, 0), libc::EPERM) {
                return 9;
            }
            if !fails(libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0), libc::EPERM) {
                return 10;
            }
            if !fails(libc::syscall(libc::SYS_io_uring_setup, 1, null), libc::EPERM) {
                return 11;
            }
            // personality: the query is allowed, ADDR_NO_RANDOMIZE is not.
            let current = libc::syscall(libc::SYS_personality, 0xffff_ffff_u32);
            if current < 0 {
                return 12;
            }
            if !fails(libc::syscall(libc::SYS_personality, current | 0x0040000), libc::EPERM) {
                return 13;
            }
            if !fails(libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, null), libc::EPERM) {
                return 14;
            }
            #[cfg(target_arch = "x86_64")]
            if !fails(libc::syscall(0x4000_0000 | libc::SYS_mount, null, null, null, 0, null), libc::ENOSYS) {
                return 15;
            }
        }
        0
    }

    #[test]
    fn the_default_filter_denies_in_a_child_process() {
        let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_child(&f, default_checks), 0, "that check failed in the child");
    }

    #[test]
    fn kept_capabilities_open_what_they_govern() {
        for (_, names) in CAPABILITY_GATES {
            for n in *names {
                assert!(DEFAULT_DENY.contains(n), "{n} is gated but not denied by default");
            }
        }
        // CAP_SYS_TIME kept: clock_settime reaches the kernel, which
        // refuses to set CLOCK_MONOTONIC with EINVAL (nothing changes).
        let f = build(&[], false, 1 << 25).unwrap_or_else(|e| panic!("{e}"));
        fn checks() -> i32 {
            let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: raw syscalls; the timespec is a valid local, and a
            // monotonic clock cannot be set, so nothing changes.
            unsafe {
                if !fails(libc::syscall(libc::SYS_clock_settime, libc::CLOCK_MONOTONIC, &ts), libc::EINVAL) {
                    return 1;
                }
                // Other gates stay shut.
                if !fails(libc::syscall(libc::SYS_acct, core::ptr::null::<u8>()), libc::EPERM) {
                    return 2;
                }
            }
            0
        }
        assert_eq!(in_child(&f, checks), 0, "that check failed in the child");
        // Named in seccomp_deny: denied even with the capability.
        let f = build(&["clock_settime"], false, 1 << 25).unwrap_or_else(|e| panic!("{e}"));
        fn denied() -> i32 {
            let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: as above.
            unsafe {
                i32::from(!fails(libc::syscall(libc::SYS_clock_settime, libc::CLOCK_MONOTONIC, &ts), libc::EPERM))
            }
        }
        assert_eq!(in_child(&f, denied), 0, "clock_settime was not denied");
    }

    #[test]
    fn extra_names_deny_outright() {
        let f = build(&["unshare", "getppid"], true, 0).unwrap_or_else(|e| panic!("{e}"));
        fn checks() -> i32 {
            // SAFETY: raw syscalls without pointers; each is denied.
            unsafe {
                if !fails(libc::syscall(libc::SYS_getppid), libc::EPERM) {
                    return 1;
                }
                // Named in extra_deny: denied whatever the flags.
                if !fails(libc::syscall(libc::SYS_unshare, 0), libc::EPERM) {
                    return 2;
                }
                // User namespaces allowed: clone3 reaches the kernel, which
                // refuses a null argument with EFAULT or EINVAL.
                if fails(libc::syscall(libc::SYS_clone3, core::ptr::null::<u8>(), 0), libc::ENOSYS) {
                    return 3;
                }
            }
            0
        }
        assert_eq!(in_child(&f, checks), 0, "that check failed in the child");
    }
}
