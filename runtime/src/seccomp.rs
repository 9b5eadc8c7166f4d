//! The default seccomp filter every container gets, for the architecture
//! this binary is compiled for (x86_64 or aarch64): a policy built here,
//! compiled into one classic BPF program that finds a syscall's rule by
//! binary search ([`program`]).
//!
//! A deny list, with every syscall number the filter does not know closed.
//! What the filter refuses:
//!
//! - every name in [`DEFAULT_DENY`] (and the container's `seccomp_deny`
//!   additions) answers EPERM: a superset of what Docker's default profile
//!   blocks, minus nothing;
//! - every number above the highest this architecture's table knows
//!   ([`first_unknown`] and up) answers ENOSYS, as on a kernel that lacks
//!   the call: a syscall added by a newer kernel is closed until the table
//!   names it and someone decides whether to deny it, and software that
//!   probes for it falls back. On x86_64 this also covers the x32 ABI
//!   (numbers with bit 30 set), as on a kernel built without x32:
//!   otherwise `mount | 0x40000000` would slip past every rule;
//! - `ioctl` with a request in [`DENIED_IOCTLS`] (TIOCSTI, TIOCLINUX: input
//!   injection into, and paste from, a terminal; FS_IOC_FSSETXATTR: a file
//!   moved out of its volume's project quota) answers EPERM; the request
//!   is compared on its low 32 bits, as the kernel reads it;
//! - `personality` answers EPERM unless its argument is one of the values
//!   Docker allows (0, PER_LINUX32, UNAME26, both, and the 0xffffffff query),
//!   so ADDR_NO_RANDOMIZE and READ_IMPLIES_EXEC cannot be switched on;
//! - unless user namespaces are allowed: `clone` and `unshare` whose flags
//!   hold CLONE_NEWUSER answer EPERM, and `clone3` answers ENOSYS (seccomp
//!   cannot look into clone3's argument struct; on ENOSYS libc falls back to
//!   `clone`, whose flags the filter can check). Other namespace flags need
//!   CAP_SYS_ADMIN, which a container does not have;
//! - a syscall of another ABI (i386 on x86_64, arm32 on aarch64) kills the
//!   process (the program's architecture check), which also covers the
//!   32-bit-only `vm86`, `vm86old`, `stime` and `umount`.
//!
//! Why a deny list and not an allow list like Docker's default profile:
//! the list refuses the kernel interfaces that namespaces, capabilities
//! and cgroups do not contain (a superset of what Docker's profile
//! blocks), and the ENOSYS rule above gives what an allow list gives
//! against new kernel interfaces. An allow list would add a second table that must follow
//! every libc, Go runtime and toolchain update (one that starts using a
//! syscall the list lacks breaks an appliance in the field), for little
//! more: the syscalls between the two lists are ones the kernel already
//! checks by capability, which containers do not hold.
//!
//! Denials are EPERM (ENOSYS for numbers the filter does not know), never
//! a kill, so software that probes a syscall falls back cleanly.
//!
//! Capabilities open what they govern, as in Docker's profile: a container
//! that keeps the capability a [`DEFAULT_DENY`] or [`DENIED_IOCTLS`] entry
//! names (its [`Gate`], by `cap_add`) is not denied it, so `cap_add =
//! ["SYS_TIME"]` really lets it set the clock. A name the container lists in
//! `seccomp_deny` stays denied whatever it keeps.
//!
//! [`Filter::install`] calls seccomp(2) directly, without setting
//! `no_new_privs` (as libseccomp's and seccompiler's helpers do): the namespace
//! init installs the filter while it still holds CAP_SYS_ADMIN, and sets
//! `no_new_privs` later only if the manifest asks for it.

pub mod program;

use program::{Policy, ProgramError, Rule, When};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Names in `seccomp_deny` that neither x86_64 nor aarch64 has.
    #[error("unknown syscall names in seccomp_deny: {}", .0.join(", "))]
    UnknownSyscalls(Vec<String>),
    /// The policy does not compile (a rule too long, the program too long).
    #[error("building the seccomp filter: {0}")]
    Build(#[from] ProgramError),
    /// seccomp(SECCOMP_SET_MODE_FILTER) failed.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Install(std::io::Error),
}

/// The capability that opens a default-denied syscall or ioctl (its bit
/// number as in `linux/capability.h`), or None when nothing opens it.
pub type Gate = Option<u8>;

/// The gates of [`DEFAULT_DENY`] and [`DENIED_IOCTLS`].
pub mod cap {
    use super::Gate;
    /// Nothing opens it.
    pub const NONE: Gate = None;
    pub const DAC_READ_SEARCH: Gate = Some(2);
    pub const SYS_MODULE: Gate = Some(16);
    pub const SYS_RAWIO: Gate = Some(17);
    pub const SYS_PTRACE: Gate = Some(19);
    pub const SYS_PACCT: Gate = Some(20);
    pub const SYS_ADMIN: Gate = Some(21);
    pub const SYS_BOOT: Gate = Some(22);
    pub const SYS_NICE: Gate = Some(23);
    pub const SYS_RESOURCE: Gate = Some(24);
    pub const SYS_TIME: Gate = Some(25);
    pub const SYS_TTY_CONFIG: Gate = Some(26);
    pub const SYSLOG: Gate = Some(34);
    pub const PERFMON: Gate = Some(38);
    pub const BPF: Gate = Some(39);
}

/// Syscalls the default filter answers with EPERM, each with the
/// capability that opens it: a container keeping that capability may call
/// it, and the kernel's own capability check then applies (Docker's default
/// profile opens the same syscalls for the same capabilities). `kexec_*`
/// stay denied even with CAP_SYS_BOOT: replacing the device's kernel is
/// never a container's job.
/// Names the running architecture does not have are skipped on it (marked
/// "x86_64 only" below); every name here exists on x86_64 or aarch64.
pub const DEFAULT_DENY: &[(&str, Gate)] = &[
    // Kernel modules and kernel replacement.
    ("init_module", cap::SYS_MODULE),
    ("finit_module", cap::SYS_MODULE),
    ("delete_module", cap::SYS_MODULE),
    ("create_module", cap::SYS_MODULE),   // x86_64 only (obsolete, ENOSYS anyway)
    ("get_kernel_syms", cap::SYS_MODULE), // x86_64 only (obsolete)
    ("query_module", cap::SYS_MODULE),    // x86_64 only (obsolete)
    ("kexec_load", cap::NONE),
    ("kexec_file_load", cap::NONE),
    ("reboot", cap::SYS_BOOT),
    // Mounts, old and new API, and leaving the root.
    ("mount", cap::SYS_ADMIN),
    ("umount2", cap::SYS_ADMIN),
    ("pivot_root", cap::SYS_ADMIN),
    ("fsopen", cap::SYS_ADMIN),
    ("fsconfig", cap::SYS_ADMIN),
    ("fsmount", cap::SYS_ADMIN),
    ("fspick", cap::SYS_ADMIN),
    ("move_mount", cap::SYS_ADMIN),
    ("open_tree", cap::SYS_ADMIN),
    ("open_tree_attr", cap::SYS_ADMIN),
    ("mount_setattr", cap::SYS_ADMIN),
    // Namespaces: joining another is never needed (new user namespaces
    // are handled by argument, see the module docs).
    ("setns", cap::SYS_ADMIN),
    // Kernel keyrings (not namespaced).
    ("keyctl", cap::NONE),
    ("add_key", cap::NONE),
    ("request_key", cap::NONE),
    // Kernel programs, tracing, introspection of other processes.
    ("bpf", cap::BPF),
    ("perf_event_open", cap::PERFMON),
    ("ptrace", cap::SYS_PTRACE),
    ("process_vm_readv", cap::SYS_PTRACE),
    ("process_vm_writev", cap::SYS_PTRACE),
    ("pidfd_getfd", cap::SYS_PTRACE),
    ("kcmp", cap::SYS_PTRACE),
    ("lookup_dcookie", cap::SYS_ADMIN),
    ("syslog", cap::SYSLOG),
    // File handles bypass path-based checks (the "shocker" escape).
    ("name_to_handle_at", cap::SYS_ADMIN),
    ("open_by_handle_at", cap::DAC_READ_SEARCH),
    // Clocks are not namespaced.
    ("settimeofday", cap::SYS_TIME),
    ("clock_settime", cap::SYS_TIME),
    ("clock_adjtime", cap::SYS_TIME),
    // Host-wide state: swap, process accounting, quotas, tty hangup.
    ("swapon", cap::NONE),
    ("swapoff", cap::NONE),
    ("acct", cap::SYS_PACCT),
    ("quotactl", cap::SYS_ADMIN),
    ("quotactl_fd", cap::SYS_ADMIN),
    ("vhangup", cap::SYS_TTY_CONFIG),
    // NUMA memory policy.
    ("mbind", cap::SYS_NICE),
    ("set_mempolicy", cap::SYS_NICE),
    ("set_mempolicy_home_node", cap::SYS_NICE),
    ("get_mempolicy", cap::SYS_NICE),
    ("move_pages", cap::SYS_NICE),
    // Page-fault handling from user space (a kernel-race helper) and
    // io_uring (its operations are not seen by seccomp).
    ("userfaultfd", cap::NONE),
    ("io_uring_setup", cap::NONE),
    ("io_uring_enter", cap::NONE),
    ("io_uring_register", cap::NONE),
    // Legacy interfaces.
    ("nfsservctl", cap::NONE),
    ("uselib", cap::NONE),      // x86_64 only
    ("ustat", cap::NONE),       // x86_64 only
    ("sysfs", cap::NONE),       // x86_64 only
    ("_sysctl", cap::NONE),     // x86_64 only
    ("ioperm", cap::SYS_RAWIO), // x86_64 only
    ("iopl", cap::SYS_RAWIO),   // x86_64 only
    ("modify_ldt", cap::NONE),  // x86_64 only
];

/// `ioctl` requests the default filter answers with EPERM (compared as
/// the kernel reads the request: its low 32 bits), each with the
/// capability that opens it. Both let one process reach a terminal it
/// does not own: TIOCSTI pushes bytes into a tty's input queue (typed
/// commands in another program's shell), TIOCLINUX selects and pastes
/// console text. Kernels since 6.2 can refuse TIOCSTI without
/// CAP_SYS_ADMIN (`dev.tty.legacy_tiocsti = 0`), older ones allow it on
/// the caller's controlling tty; the filter does not depend on that.
/// FS_IOC_FSSETXATTR would let a file's owner (in the host's user
/// namespace) move the file to another project id, out of its volume's
/// quota; CAP_SYS_RESOURCE, which writes past quotas anyway, opens it.
/// Same numbers on x86_64 and aarch64.
pub const DENIED_IOCTLS: &[(&str, u32, Gate)] = &[
    ("TIOCSTI", 0x5412, cap::SYS_ADMIN),
    ("TIOCLINUX", 0x541C, cap::SYS_ADMIN),
    ("FS_IOC_FSSETXATTR", 0x401c_5820, cap::SYS_RESOURCE),
];

/// Whether the kept `capabilities` (bit n = capability n) open `gate`.
fn opens(capabilities: u64, gate: Gate) -> bool {
    gate.and_then(|c| 1u64.checked_shl(u32::from(c))).is_some_and(|bit| capabilities & bit != 0)
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
    /// The whole filter: one program.
    prog: Vec<libc::sock_filter>,
}

/// The first syscall number above every number this architecture's table
/// knows: this and everything above answers ENOSYS.
pub fn first_unknown() -> u32 {
    this_arch().map(|(_, nr)| u32::from(nr)).max().map_or(0, |m| m + 1)
}

/// `personality` values Docker's profile allows: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONALITY_ALLOWED: [u32; 5] = [0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

fn nr(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Build the filter for the architecture this binary is compiled for: the
/// default deny list and the denied ioctls, less what the kept
/// `capabilities` (bit n = capability n) open (the [`Gate`]s of
/// [`DEFAULT_DENY`] and [`DENIED_IOCTLS`]), plus `extra_deny` (EPERM);
/// numbers from [`first_unknown`] on answer ENOSYS; new user namespaces
/// are refused unless `allow_userns`. A name in `extra_deny`
/// that only the other architecture has is skipped; one neither has is an
/// error that names it.
/// An `extra_deny` name always denies the syscall outright, even one the
/// default filter checks by argument (`clone`, `unshare`, `personality`).
pub fn build(extra_deny: &[&str], allow_userns: bool, capabilities: u64) -> Result<Filter, SeccompError> {
    build_with(extra_deny, allow_userns, capabilities, first_unknown())
}

/// [`build`], with the numbers from `unknown_from` on answering ENOSYS.
fn build_with(
    extra_deny: &[&str],
    allow_userns: bool,
    capabilities: u64,
    unknown_from: u32,
) -> Result<Filter, SeccompError> {
    let policy = policy(extra_deny, allow_userns, capabilities, unknown_from)?;
    Ok(Filter { prog: program::compile(&policy)? })
}

/// The policy [`build_with`] compiles.
fn policy(
    extra_deny: &[&str],
    allow_userns: bool,
    capabilities: u64,
    unknown_from: u32,
) -> Result<Policy, SeccompError> {
    let eperm = |when| Rule { when, errno: libc::EPERM as u32 };
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(nr(libc::SYS_personality), eperm(When::ArgLowNoneOf { arg: 0, values: PERSONALITY_ALLOWED.to_vec() }));
    let newuser = When::ArgHasAll { arg: 0, mask: libc::CLONE_NEWUSER as u64 };
    if !allow_userns {
        rules.insert(nr(libc::SYS_clone), eperm(newuser.clone()));
        rules.insert(nr(libc::SYS_unshare), eperm(newuser));
    }
    let ioctls: Vec<u32> = DENIED_IOCTLS
        .iter()
        .filter(|(_, _, gate)| !opens(capabilities, *gate))
        .map(|(_, request, _)| *request)
        .collect();
    if !ioctls.is_empty() {
        rules.insert(nr(libc::SYS_ioctl), eperm(When::ArgLowIn { arg: 1, values: ioctls }));
    }
    // The table once, by name: a lookup per name scanned it whole (the
    // default policy took 237 µs to build on a 2026 x86_64 host, several
    // ms under emulation; 25 µs this way).
    let numbers: std::collections::BTreeMap<&str, u16> = this_arch().collect();
    let number = |name: &str| numbers.get(name).map(|n| u32::from(*n));
    let denied = DEFAULT_DENY.iter().filter(|(_, gate)| !opens(capabilities, *gate));
    for n in denied.filter_map(|(name, _)| number(name)) {
        rules.insert(n, eperm(When::Always));
    }
    let mut unknown = Vec::new();
    for name in extra_deny {
        match number(name) {
            Some(n) => {
                rules.insert(n, eperm(When::Always));
            }
            None if known_syscall(name) => {}
            None => unknown.push((*name).to_owned()),
        }
    }
    if !unknown.is_empty() {
        return Err(SeccompError::UnknownSyscalls(unknown));
    }
    // seccomp cannot look into clone3's argument struct: ENOSYS, and libc
    // falls back to clone, whose flags the rule above checks.
    if !allow_userns {
        rules.insert(nr(libc::SYS_clone3), Rule { when: When::Always, errno: libc::ENOSYS as u32 });
    }
    Ok(Policy { arch: AUDIT_ARCH, unknown_from, rules })
}

impl Filter {
    /// BPF instructions in the filter's program.
    pub fn len(&self) -> usize {
        self.prog.len()
    }

    /// Never true for a built filter (there to pair with `len`).
    pub fn is_empty(&self) -> bool {
        self.prog.is_empty()
    }

    /// Install on the calling thread (no TSYNC: the caller is single
    /// threaded). Needs CAP_SYS_ADMIN or `no_new_privs`. Allocates nothing,
    /// so it is safe between fork and exec.
    pub fn install(&self) -> Result<(), SeccompError> {
        let len = u16::try_from(self.prog.len())
            .map_err(|_| SeccompError::Install(std::io::Error::from_raw_os_error(libc::E2BIG)))?;
        let fprog = libc::sock_fprog { len, filter: self.prog.as_ptr().cast_mut() };
        // SAFETY: `fprog` points at `len` initialised instructions that
        // outlive the call; the kernel only reads them (it copies the
        // program) and does not keep the pointer.
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog)
        };
        if rc != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
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
        assert!(DEFAULT_DENY.iter().all(|(n, _)| syscall_number(n).is_some()));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_numbers() {
        assert_eq!(syscall_number("keyctl"), Some(219));
        assert_eq!(syscall_number("kexec_file_load"), Some(294));
        assert_eq!(syscall_number("iopl"), None);
        assert!(build(&["iopl", "open"], false, 0).is_ok(), "x86_64-only names are skipped");
    }

    #[test]
    fn every_default_name_is_a_syscall() {
        for (name, _) in DEFAULT_DENY {
            assert!(known_syscall(name), "{name}");
        }
        let mut sorted: Vec<_> = DEFAULT_DENY.iter().map(|(n, _)| *n).collect();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), DEFAULT_DENY.len(), "a name twice");
    }

    #[test]
    fn builds_and_rejects_unknown_names() {
        let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
        // About two instructions a denied syscall.
        assert!((150..400).contains(&f.len()), "{}", f.len());
        // LD arch, JEQ arch, KILL, LD nr, JGE first unknown, ENOSYS.
        assert_eq!((f.prog[4].code, f.prog[4].k), (program::JGE_K, first_unknown()));
        match build(&["mount", "no_such_call", "vm86"], false, 0) {
            Err(e @ SeccompError::UnknownSyscalls(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("no_such_call") && msg.contains("vm86") && !msg.contains("mount"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(known_syscall("iopl") && known_syscall("open") && !known_syscall("stime"));
    }

    /// The filter as it was built before the program was ours: seccompiler's
    /// linear deny program and a hand-written ENOSYS program after it.
    fn seccompiler_reference(
        extra_deny: &[&str],
        allow_userns: bool,
        capabilities: u64,
    ) -> (Vec<libc::sock_filter>, Vec<libc::sock_filter>) {
        use seccompiler::{
            BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
            SeccompFilter, SeccompRule, TargetArch,
        };
        #[cfg(target_arch = "x86_64")]
        const ARCH: TargetArch = TargetArch::x86_64;
        #[cfg(target_arch = "aarch64")]
        const ARCH: TargetArch = TargetArch::aarch64;
        let rule = |conds: Vec<Cond>| SeccompRule::new(conds).unwrap_or_else(|e| panic!("{e}"));
        let cond = |arg, len, op, v| Cond::new(arg, len, op, v).unwrap_or_else(|e| panic!("{e}"));
        let newuser = libc::CLONE_NEWUSER as u64;
        let mut rules = std::collections::BTreeMap::new();
        let personality = PERSONALITY_ALLOWED.iter().map(|v| cond(0, Len::Dword, Op::Ne, u64::from(*v))).collect();
        rules.insert(libc::SYS_personality, vec![rule(personality)]);
        if !allow_userns {
            for n in [libc::SYS_clone, libc::SYS_unshare] {
                rules.insert(n, vec![rule(vec![cond(0, Len::Qword, Op::MaskedEq(newuser), newuser)])]);
            }
        }
        let ioctls: Vec<_> = DENIED_IOCTLS
            .iter()
            .filter(|(_, _, gate)| !opens(capabilities, *gate))
            .map(|(_, request, _)| rule(vec![cond(1, Len::Dword, Op::Eq, u64::from(*request))]))
            .collect();
        if !ioctls.is_empty() {
            rules.insert(libc::SYS_ioctl, ioctls);
        }
        let denied = DEFAULT_DENY.iter().filter(|(_, gate)| !opens(capabilities, *gate)).map(|(n, _)| *n);
        for n in denied.chain(extra_deny.iter().copied()).filter_map(syscall_number) {
            rules.insert(n, Vec::new());
        }
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), ARCH)
            .unwrap_or_else(|e| panic!("{e}"));
        let deny = BpfProgram::try_from(filter).unwrap_or_else(|e| panic!("{e}"));
        let deny = deny.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
        // The ENOSYS program: other ABIs allowed (the deny program kills them).
        let mut checks = vec![(program::JGE_K, first_unknown())];
        if !allow_userns {
            checks.push((program::JEQ_K, libc::SYS_clone3 as u32));
        }
        let n = checks.len();
        let insn = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
        let mut guard = vec![insn(program::LD_W_ABS, 4, 0, 0), insn(program::JEQ_K, AUDIT_ARCH, 0, (n + 1) as u8)];
        guard.push(insn(program::LD_W_ABS, 0, 0, 0));
        for (i, (op, k)) in checks.iter().enumerate() {
            guard.push(insn(*op, *k, (n - i) as u8, 0));
        }
        guard.push(insn(program::RET_K, libc::SECCOMP_RET_ALLOW, 0, 0));
        guard.push(insn(program::RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32, 0, 0));
        (deny, guard)
    }

    /// What the kernel answers with two filters: the lowest action (as a
    /// signed number) wins; on a tie, the filter installed last.
    fn both(first: u32, last: u32) -> u32 {
        let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
        if action(first) < action(last) {
            first
        } else {
            last
        }
    }

    #[test]
    fn the_search_program_answers_as_the_linear_programs_did() {
        use program::check::{calls, run};
        let configs: [(&[&str], bool, u64); 6] = [
            (&[], false, 0),
            (&[], true, 0),
            (&["chroot", "getppid", "iopl"], false, 0),
            (&["clone3", "ioctl", "unshare", "personality"], false, 0),
            (&["clone3"], true, 1 << 21 | 1 << 25),
            (&[], false, u64::MAX),
        ];
        for (extra, userns, caps) in configs {
            let new = build(extra, userns, caps).unwrap_or_else(|e| panic!("{e}"));
            let (deny, guard) = seccompiler_reference(extra, userns, caps);
            let p = policy(extra, userns, caps, first_unknown()).unwrap_or_else(|e| panic!("{e}"));
            let calls = calls(&p, 0x4000_0003);
            assert!(calls.len() > 1000);
            for c in &calls {
                let was = both(run(&deny, c), run(&guard, c));
                assert_eq!(run(&new.prog, c), was, "{extra:?} userns {userns} caps {caps:#x}: {c:?}");
            }
        }
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
            let code = if nix::sys::prctl::set_no_new_privs().is_err() {
                99
            } else {
                match f.install() {
                    Ok(()) => checks(),
                    Err(SeccompError::Install(e)) => 100 + e.raw_os_error().unwrap_or(0),
                    Err(_) => 98,
                }
            };
            // Ends the child without running the parent's destructors.
            crate::sys::exit_now(code);
        }
        use nix::sys::wait::{waitpid, WaitStatus};
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => code,
            other => panic!("child status {other:?}"),
        }
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
            // Numbers the filter does not know.
            if !fails(libc::syscall(1000), libc::ENOSYS) {
                return 16;
            }
            if !fails(libc::syscall(libc::c_long::from(first_unknown())), libc::ENOSYS) {
                return 17;
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
        let gate = |name| DEFAULT_DENY.iter().find(|(n, _)| *n == name).map(|(_, g)| *g);
        assert_eq!(gate("kexec_load"), Some(cap::NONE), "kexec stays shut whatever is kept");
        assert_eq!(gate("clock_settime"), Some(cap::SYS_TIME));
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

    #[test]
    fn numbers_above_the_table_answer_enosys() {
        let first = first_unknown();
        // Both architectures number the newest calls alike (from 451 on).
        assert_eq!(first, u32::from(COMMON_FIRST) + COMMON.len() as u32);
        assert!(this_arch().all(|(_, nr)| u32::from(nr) < first));
        // The hostile payload calls this number (FIRST_UNKNOWN in
        // qemu-tests/payload/src/hostile.rs): change it there too.
        assert_eq!(first, 471);
        #[cfg(target_arch = "x86_64")]
        assert!(first < 0x4000_0000, "x32 numbers lie above");

        // The rule seen through the kernel: a filter that pretends to know
        // nothing from cachestat (451, Linux 6.5) on answers ENOSYS for
        // it, where the default filter lets it reach the kernel.
        fn cachestat_errno() -> i32 {
            // SAFETY: fd -1 and null pointers: the kernel refuses them
            // before reading anything.
            let rc = unsafe { libc::syscall(451, -1, 0, 0, 0) };
            if rc == -1 {
                errno()
            } else {
                0
            }
        }
        fn lowered() -> i32 {
            i32::from(cachestat_errno() != libc::ENOSYS)
        }
        fn default() -> i32 {
            i32::from(cachestat_errno() == libc::ENOSYS)
        }
        let f = build_with(&[], false, 0, 451).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_child(&f, lowered), 0, "cachestat reached the kernel above the known numbers");
        if cachestat_errno() != libc::ENOSYS {
            let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(in_child(&f, default), 0, "a known number answered ENOSYS");
        }
    }

    const TIOCSTI: libc::c_ulong = 0x5412;
    const TIOCLINUX: libc::c_ulong = 0x541C;

    /// In a new session: open a pty from /dev/ptmx and make its slave the
    /// controlling terminal (where TIOCSTI needs no capability). The slave
    /// fd, or a negative check number.
    fn own_pty() -> libc::c_int {
        // SAFETY: raw syscalls on fds this process opens; the ioctl
        // arguments point at live locals.
        unsafe {
            if libc::setsid() < 0 {
                return -51;
            }
            let master = libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                return -52;
            }
            let unlock: libc::c_int = 0;
            if libc::ioctl(master, libc::TIOCSPTLCK as _, &unlock) != 0 {
                return -53;
            }
            // TIOCGPTPEER: the slave without building its path.
            let slave = libc::ioctl(master, 0x5441 as _, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                return -54;
            }
            if libc::ioctl(slave, libc::TIOCSCTTY as _, 0) != 0 {
                return -55;
            }
            slave
        }
    }

    /// ioctl through the raw syscall, so all 64 bits of `request` reach
    /// the kernel (and the filter).
    fn ioctl(fd: libc::c_int, request: libc::c_ulong, arg: *const u8) -> libc::c_long {
        // SAFETY: `arg` points at a live local of the size `request` reads.
        unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) }
    }

    fn tty_checks() -> i32 {
        let slave = own_pty();
        if slave < 0 {
            return -slave;
        }
        let c = b'x';
        let sel = [2u8; 16]; // TIOCL_SETSEL and room for its struct
                             // SAFETY: termios is plain old data; all-zero is a valid value.
        let mut t: libc::termios = unsafe { core::mem::zeroed() };
        let mut queued: libc::c_int = -1;
        if ioctl(slave, libc::TCGETS as _, (&mut t as *mut libc::termios).cast()) != 0 {
            return 1;
        }
        if ioctl(slave, libc::FIONREAD as _, (&mut queued as *mut libc::c_int).cast()) != 0 || queued != 0 {
            return 2;
        }
        if !fails(ioctl(slave, TIOCSTI, &c), libc::EPERM) {
            return 3;
        }
        // The kernel reads the request as 32 bits: high bits change nothing.
        if !fails(ioctl(slave, TIOCSTI | 1 << 32, &c), libc::EPERM) {
            return 4;
        }
        if !fails(ioctl(slave, TIOCLINUX, sel.as_ptr()), libc::EPERM) {
            return 5;
        }
        if ioctl(slave, libc::FIONREAD as _, (&mut queued as *mut libc::c_int).cast()) != 0 || queued != 0 {
            return 6;
        }
        0
    }

    #[test]
    fn terminal_injection_ioctls_answer_eperm() {
        let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_child(&f, tty_checks), 0, "that check failed in the child");
    }

    #[test]
    fn moving_a_file_out_of_its_project_answers_eperm() {
        fn checks() -> i32 {
            let fd = match std::fs::File::open("/proc/self/exe") {
                Ok(f) => f,
                Err(_) => return 1,
            };
            let x = [0u8; 28]; // struct fsxattr
            i32::from(!fails(ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), 0x401c_5820, x.as_ptr()), libc::EPERM)) * 2
        }
        let f = build(&[], false, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_child(&f, checks), 0, "FS_IOC_FSSETXATTR reached the kernel");
    }

    #[test]
    fn sys_admin_opens_the_terminal_ioctls() {
        // Kept CAP_SYS_ADMIN: the kernel decides. The test runs as root,
        // so TIOCSTI queues the byte, and TIOCLINUX on a pty (not a
        // virtual console) is ENOTTY.
        fn checks() -> i32 {
            let slave = own_pty();
            if slave < 0 {
                return -slave;
            }
            // A whole line, so canonical mode counts it as readable.
            let c = b'\n';
            let sel = [2u8; 16];
            let mut queued: libc::c_int = -1;
            if ioctl(slave, TIOCSTI, &c) != 0 {
                return 1;
            }
            if ioctl(slave, libc::FIONREAD as _, (&mut queued as *mut libc::c_int).cast()) != 0 || queued != 1 {
                return 2;
            }
            if !fails(ioctl(slave, TIOCLINUX, sel.as_ptr()), libc::ENOTTY) {
                return 3;
            }
            0
        }
        let f = build(&[], false, 1 << 21).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(in_child(&f, checks), 0, "that check failed in the child");
        // Named in seccomp_deny, ioctl is denied outright.
        let f = build(&["ioctl"], false, 1 << 21).unwrap_or_else(|e| panic!("{e}"));
        fn denied() -> i32 {
            let mut queued: libc::c_int = -1;
            i32::from(!fails(ioctl(0, libc::FIONREAD as _, (&mut queued as *mut libc::c_int).cast()), libc::EPERM))
        }
        assert_eq!(in_child(&f, denied), 0, "ioctl was not denied");
    }
}
