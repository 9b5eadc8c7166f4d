//! `hostile`: a root payload inside a hardened container tries, one by one,
//! the escapes and kernel interfaces the isolation defaults must block.
//!
//! Every attempt prints one line
//! `event=attempt name=N result=<blocked|ALLOWED> errno=E err=ENAME`; errno
//! is that of the call named in the attempt's description (0 and `-` when
//! the attempt succeeded or no call failed). An ALLOWED line may end in
//! `detail=D` (what got through); `sethostname` adds `scope=own-uts`. Any
//! failure counts as blocked. Whatever succeeds is undone where possible and
//! nothing destructive is ever done: no write to a device, a cgroup knob is
//! put back, reboot is only ever asked for CAD_OFF.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::out::V;
use crate::sys::{self, check, Errno};
use crate::{procs, say};

/// bpf(2) command; not exported by libc.
const BPF_PROG_LOAD: libc::c_long = 5;
/// Exit code of a test child that got through.
const ESCAPED: i32 = 200;

/// What one attempt came to.
struct Outcome {
    allowed: bool,
    errno: i32,
    /// Extra ` key=value` fields, already formatted.
    extra: String,
}

/// An attempt's name and what it does.
type Attempt = (&'static str, fn() -> Outcome);

fn blocked(errno: i32) -> Outcome {
    Outcome { allowed: false, errno, extra: String::new() }
}

fn allowed(detail: &str) -> Outcome {
    Outcome { allowed: true, errno: 0, extra: format!(" detail={}", V(detail)) }
}

/// `hostile`: run every attempt, then `event=hostile-done attempts=N allowed=M`;
/// exit 1 if any was allowed.
pub fn run() -> i32 {
    let attempts = ATTEMPTS;
    let mut n_allowed = 0;
    for (name, attempt) in attempts {
        let o = attempt();
        let result = if o.allowed { "ALLOWED" } else { "blocked" };
        n_allowed += usize::from(o.allowed);
        say!("event=attempt name={name} result={result} errno={} err={}{}", o.errno, Errno(o.errno), o.extra);
    }
    say!("event=hostile-done attempts={} allowed={n_allowed}", attempts.len());
    i32::from(n_allowed > 0)
}

/// `attempt NAME`: make one attempt (for containers given a capability
/// that should open it): `event=one-attempt attempt=NAME result=...`.
/// Exit 0 either way; 2 for an unknown name.
pub fn one(which: &str) -> i32 {
    let Some((name, attempt)) = ATTEMPTS.iter().find(|(n, _)| *n == which) else {
        say!("event=one-attempt attempt={} result=unknown", V(which));
        return 2;
    };
    let o = attempt();
    let result = if o.allowed { "ALLOWED" } else { "blocked" };
    say!("event=one-attempt attempt={name} result={result} errno={} err={}{}", o.errno, Errno(o.errno), o.extra);
    0
}

/// Every attempt, in the order `hostile` makes them.
const ATTEMPTS: [Attempt; 33] = [
    ("mount", mount),
    ("umount", umount),
    ("raw-block-open", raw_block_open),
    ("mknod-block", mknod_block),
    ("mknod-char", mknod_char),
    ("module-load", module_load),
    ("kexec", kexec),
    ("reboot", reboot),
    ("sysrq", sysrq),
    ("clock-set", clock_set),
    ("sethostname", sethostname),
    ("ptrace-hidden", ptrace_hidden),
    ("ptrace-init", ptrace_init),
    ("keyctl", keyctl),
    ("bpf", bpf),
    ("userns", userns),
    ("cgroup-write", cgroup_write),
    ("chroot-escape", chroot_escape),
    ("proc-other-container", proc_other_container),
    ("rlimit-raise", rlimit_raise),
    ("proc-exe-write", proc_exe_write),
    ("proc-exe-opath", proc_exe_opath),
    ("proc-sys-write", proc_sys_write),
    ("dev-mem", dev_mem),
    // seccomp: unknown syscall numbers and terminal ioctls.
    ("syscall-1000", syscall_1000),
    ("syscall-first-unknown", syscall_first_unknown),
    ("tiocsti", tiocsti),
    ("tioclinux", tioclinux),
    // Filesystem reach (issue 8, rootfs): device nodes, console, control dir.
    ("dev-console", dev_console),
    ("layer-device", layer_device),
    ("mknod-disk", mknod_disk),
    ("control-unlink", control_unlink),
    // Layers behind dm-verity (issue 10): no device-mapper control.
    ("dm-control", dm_control),
];

/// mount("none", "/tmp", "tmpfs"); if it works, lazily unmount it again.
fn mount() -> Outcome {
    // SAFETY: the path is a NUL-terminated literal.
    let _ = unsafe { libc::mkdir(c"/tmp".as_ptr(), 0o1777) };
    // SAFETY: all strings are NUL-terminated literals; data may be NULL.
    let rc = unsafe { libc::mount(c"none".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return blocked(sys::errno());
    }
    // SAFETY: the path is a NUL-terminated literal.
    let _ = unsafe { libc::umount2(c"/tmp".as_ptr(), libc::MNT_DETACH) };
    allowed("tmpfs_mounted_on_/tmp")
}

/// umount2("/proc", MNT_DETACH); if it works, mount a new procfs there.
fn umount() -> Outcome {
    // SAFETY: the path is a NUL-terminated literal.
    if unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) } != 0 {
        return blocked(sys::errno());
    }
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all strings are NUL-terminated literals; data may be NULL.
    let rc = unsafe { libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) };
    allowed(if rc == 0 { "proc_unmounted_and_remounted" } else { "proc_unmounted" })
}

/// open O_RDONLY of /dev/vda, /dev/sda, /dev/mmcblk0; errno of /dev/vda.
fn raw_block_open() -> Outcome {
    let mut first = 0;
    let mut opened = Vec::new();
    for path in ["/dev/vda", "/dev/sda", "/dev/mmcblk0"] {
        match sys::open_str(path, libc::O_RDONLY) {
            Ok(_fd) => opened.push(path),
            Err(e) if first == 0 => first = e,
            Err(_) => {}
        }
    }
    if opened.is_empty() {
        blocked(first)
    } else {
        allowed(&opened.join(","))
    }
}

/// mknod of a node at `path`; removed again if it was made.
fn mknod(path: &CStr, kind: libc::mode_t, major: u32, minor: u32) -> Outcome {
    // SAFETY: `path` is NUL-terminated; a leftover node from an earlier run is removed.
    let _ = unsafe { libc::unlink(path.as_ptr()) };
    // SAFETY: as above; mknod reads only the path.
    let rc = unsafe { libc::mknod(path.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    if rc != 0 {
        return blocked(sys::errno());
    }
    // SAFETY: as above.
    let _ = unsafe { libc::unlink(path.as_ptr()) };
    allowed(&path.to_string_lossy())
}

/// mknod("/tmp/blk", S_IFBLK, 254:0).
fn mknod_block() -> Outcome {
    mknod(c"/tmp/blk", libc::S_IFBLK, 254, 0)
}

/// mknod("/tmp/mem", S_IFCHR, 1:1), i.e. /dev/mem.
fn mknod_char() -> Outcome {
    mknod(c"/tmp/mem", libc::S_IFCHR, 1, 1)
}

/// finit_module(fd of this binary, "", 0) and init_module(NULL, 0, "");
/// errno of finit_module, or of init_module when finit_module's is EPERM and
/// init_module's is not (so EPERM means both were refused before the kernel
/// looked at the image: by seccomp or the CAP_SYS_MODULE check, not by the
/// ELF parser's ENOEXEC).
fn module_load() -> Outcome {
    let fin = sys::open(c"/bin/cairn-payload", libc::O_RDONLY)
        .or_else(|_| sys::open(c"/proc/self/exe", libc::O_RDONLY))
        .and_then(|fd| {
            // SAFETY: the fd is open and the params string a NUL-terminated literal.
            check(unsafe { libc::syscall(libc::SYS_finit_module, fd.as_raw_fd(), c"".as_ptr(), 0) })
        });
    // SAFETY: a NULL image of length 0 is rejected before anything is read.
    let init = check(unsafe { libc::syscall(libc::SYS_init_module, std::ptr::null::<u8>(), 0, c"".as_ptr()) });
    match (fin, init) {
        (Err(libc::EPERM), Err(e)) => blocked(e),
        (Err(e), Err(_)) => blocked(e),
        (Ok(_), _) => allowed("finit_module"),
        (_, Ok(_)) => allowed("init_module"),
    }
}

/// kexec_load(0, 0, NULL, 0).
fn kexec() -> Outcome {
    // SAFETY: no segments, so no memory is read.
    match check(unsafe { libc::syscall(libc::SYS_kexec_load, 0, 0, std::ptr::null::<u8>(), 0) }) {
        Ok(_) => allowed("kexec_load"),
        Err(e) => blocked(e),
    }
}

/// reboot(LINUX_REBOOT_CMD_CAD_OFF): harmless if it ever got through.
fn reboot() -> Outcome {
    // SAFETY: plain integers; CAD_OFF only changes what Ctrl-Alt-Del does.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_CAD_OFF,
            0,
        )
    };
    match check(rc) {
        Ok(_) => allowed("cad_off"),
        Err(e) => blocked(e),
    }
}

/// open("/proc/sysrq-trigger", O_WRONLY); nothing is ever written.
fn sysrq() -> Outcome {
    open_for_write(c"/proc/sysrq-trigger")
}

/// Open for writing and close at once without writing.
fn open_for_write(path: &CStr) -> Outcome {
    match sys::open(path, libc::O_WRONLY) {
        Ok(fd) => {
            drop(fd);
            allowed(&format!("{}_writable", path.to_string_lossy()))
        }
        Err(e) => blocked(e),
    }
}

/// clock_settime(CLOCK_REALTIME, now): a success changes nothing.
fn clock_set() -> Outcome {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return blocked(sys::errno());
    }
    // SAFETY: `ts` is an initialised timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return blocked(sys::errno());
    }
    allowed("clock_settime")
}

/// sethostname("hostile-was-here"), put back at once if it works.
fn sethostname() -> Outcome {
    let set = |name: &[u8]| {
        // SAFETY: `name` is a live slice of the given length.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(sys::errno())
        }
    };
    let original = sys::hostname();
    match set(b"hostile-was-here") {
        Err(e) => blocked(e),
        Ok(()) => {
            let restored = set(original.as_bytes()).is_ok();
            let mut o = allowed(if restored { "restored" } else { "not_restored" });
            o.extra.push_str(" scope=own-uts");
            o
        }
    }
}

/// PTRACE_ATTACH; if that works, wait (up to 1 s) for the attach stop and
/// detach again.
fn attach_detach(pid: i32) -> Result<(), i32> {
    // SAFETY: plain integers; ATTACH reads no memory of ours.
    check(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, pid, 0, 0) })?;
    for _ in 0..100 {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable c_int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc != 0 {
            break;
        }
        sys::sleep_ms(10);
    }
    // SAFETY: plain integers; signal 0 means the tracee resumes without one.
    let _ = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_DETACH, pid, 0, 0) };
    Ok(())
}

/// PTRACE_ATTACH to pid 4242 (or the next pid without a /proc entry here):
/// a process this namespace cannot see.
fn ptrace_hidden() -> Outcome {
    let mut pid = 4242;
    while Path::new(&format!("/proc/{pid}")).exists() && pid < 4_000_000 {
        pid += 1;
    }
    match attach_detach(pid) {
        Ok(()) => allowed(&format!("attached_{pid}")),
        Err(e) => blocked(e),
    }
}

/// PTRACE_ATTACH to pid 1, the namespace init.
fn ptrace_init() -> Outcome {
    match attach_detach(1) {
        Ok(()) => allowed("attached_1"),
        Err(e) => blocked(e),
    }
}

/// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, create=1).
fn keyctl() -> Outcome {
    // SAFETY: plain integers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::c_long::from(libc::KEYCTL_GET_KEYRING_ID),
            libc::c_long::from(libc::KEY_SPEC_SESSION_KEYRING),
            1,
        )
    };
    match check(rc) {
        Ok(_) => allowed("session_keyring"),
        Err(e) => blocked(e),
    }
}

/// bpf(BPF_PROG_LOAD, zeroed 128-byte attr, 128).
fn bpf() -> Outcome {
    let attr = [0u8; 128];
    // SAFETY: `attr` is a live 128-byte buffer and its size is passed.
    match check(unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) }) {
        Ok(fd) => {
            if let Ok(fd) = i32::try_from(fd) {
                // SAFETY: a successful PROG_LOAD returns a new fd that nothing else owns.
                let _ = unsafe { libc::close(fd) };
            }
            allowed("prog_load")
        }
        Err(e) => blocked(e),
    }
}

/// Exit code of a test child: `errno` (1..=199) for a failure, 0 for success.
fn errno_code(e: i32) -> i32 {
    e.clamp(1, 199)
}

/// How a test child ended: Ok(code) or a description.
fn child(f: impl FnOnce() -> i32) -> Result<i32, String> {
    let pid = sys::fork_child(f).map_err(|e| format!("fork_{}", Errno(e)))?;
    sys::wait_code(pid).map_err(|s| if s < 0 { format!("wait_{}", Errno(-s)) } else { format!("child_signal_{s}") })
}

/// Two forked children (so the payload itself never changes namespace):
/// unshare(CLONE_NEWUSER), and a raw clone(CLONE_NEWUSER|SIGCHLD) whose
/// child `_exit`s at once. errno of unshare.
fn userns() -> Outcome {
    let unshared = child(|| {
        // SAFETY: unshare takes a plain flag word; the process is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0 {
            0
        } else {
            errno_code(sys::errno())
        }
    });
    let cloned = child(|| {
        // All pointer arguments are 0, so the order difference between x86_64
        // (flags, stack, ptid, ctid, tls) and aarch64 (flags, stack, ptid, tls,
        // ctid) does not matter. Without CLONE_VM the child gets a copy of the
        // memory, like fork.
        let flags = libc::c_long::from(libc::CLONE_NEWUSER | libc::SIGCHLD);
        // SAFETY: see above; stack 0 means the child runs on its copy of this stack.
        let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
        match rc {
            // SAFETY: in the clone child: leave at once, touching nothing.
            0 => unsafe { libc::_exit(0) },
            -1 => errno_code(sys::errno()),
            pid => {
                let _ = i32::try_from(pid).map(sys::wait_pid);
                0
            }
        }
    });
    let got_through = |r: &Result<i32, String>| matches!(r, Ok(0));
    match (got_through(&unshared), got_through(&cloned)) {
        (false, false) => {
            let mut o = blocked(*unshared.as_ref().unwrap_or(&0));
            for (what, r) in [("unshare", &unshared), ("clone", &cloned)] {
                if let Err(d) = r {
                    o.extra.push_str(&format!(" {what}={}", V(d)));
                }
            }
            o
        }
        (true, true) => allowed("unshare,clone"),
        (true, false) => allowed("unshare"),
        (false, true) => allowed("clone"),
    }
}

/// open O_WRONLY of /sys/fs/cgroup/memory.max and pids.max; if one opens,
/// write "max" and put the value read before back. Allowed if either opens
/// for writing; errno of memory.max.
fn cgroup_write() -> Outcome {
    let mut first = 0;
    let mut opened = Vec::new();
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"] {
        let before = sys::read_trim(path);
        match sys::open_str(path, libc::O_WRONLY) {
            Err(e) => {
                if first == 0 {
                    first = e;
                }
            }
            Ok(fd) => {
                let wrote = sys::write_once(fd.as_raw_fd(), b"max").is_ok();
                drop(fd);
                if let (true, Some(before)) = (wrote, before) {
                    if let Ok(fd) = sys::open_str(path, libc::O_WRONLY) {
                        let _ = sys::write_once(fd.as_raw_fd(), before.as_bytes());
                    }
                }
                opened.push(if wrote { format!("{path}:written") } else { format!("{path}:opened") });
            }
        }
    }
    if opened.is_empty() {
        blocked(first)
    } else {
        allowed(&opened.join(","))
    }
}

/// In a forked child: mkdir /tmp/jail, chroot into it (CAP_SYS_CHROOT may
/// allow that), chdir("..") 64 times, chroot("."). Escaped if "/init" or
/// "/run/cairn/layers" then exists (both are host paths). errno of the first
/// chroot if it failed, else 0.
fn chroot_escape() -> Outcome {
    let r = child(|| {
        // SAFETY: NUL-terminated literal.
        let _ = unsafe { libc::mkdir(c"/tmp/jail".as_ptr(), 0o700) };
        // SAFETY: NUL-terminated literal.
        if unsafe { libc::chroot(c"/tmp/jail".as_ptr()) } != 0 {
            return errno_code(sys::errno());
        }
        for _ in 0..64 {
            // SAFETY: NUL-terminated literal.
            let _ = unsafe { libc::chdir(c"..".as_ptr()) };
        }
        // SAFETY: NUL-terminated literal.
        let _ = unsafe { libc::chroot(c".".as_ptr()) };
        let exists = |p: &str| std::fs::symlink_metadata(p).is_ok();
        if exists("/init") || exists("/run/cairn/layers") {
            ESCAPED
        } else {
            0
        }
    });
    // SAFETY: NUL-terminated literal; a failure (e.g. not there) is fine.
    let _ = unsafe { libc::rmdir(c"/tmp/jail".as_ptr()) };
    match r {
        Ok(ESCAPED) => allowed("host_root_reached"),
        Ok(0) => blocked(0),
        Ok(e) => blocked(e),
        Err(d) => {
            let mut o = blocked(0);
            o.extra = format!(" detail={}", V(&d));
            o
        }
    }
}

/// Does the directory `prefix` (relative to `dir`) hold both `init` (any
/// kind of file) and the directory `run/cairn`: the host's root?
fn looks_like_host_root(dir: &OwnedFd, prefix: &str) -> bool {
    let has = |rel: &str, want_dir: bool| {
        let Ok(p) = sys::cpath(&format!("{prefix}{rel}")) else {
            return false;
        };
        // SAFETY: stat is plain old data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is an open directory fd, `p` NUL-terminated, `st` writable.
        let rc = unsafe { libc::fstatat(dir.as_raw_fd(), p.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        rc == 0 && (!want_dir || st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    };
    has("init", false) && has("run/cairn", true)
}

/// (1) For every pid 1..=400 absent from this namespace's /proc listing,
/// read /proc/<pid>/status: any that reads, is still not listed after, and
/// is not a thread of a listed process (Tgid) is another namespace's process. (2) open O_DIRECTORY of
/// /proc/1/root/../../../run/cairn/layers, /proc/1/root/../../.. and
/// /proc/1/cwd/../../..: escaped if the directory reached is the host's root
/// (holds `init` and `run/cairn`; for the layers path, three levels up).
/// errno of the layers open.
fn proc_other_container() -> Outcome {
    let mut found = Vec::new();
    let listed = procs::pids().unwrap_or_default();
    for pid in 1..=400u32 {
        if listed.contains(&pid) {
            continue;
        }
        let Some(status) = sys::read_trim(&format!("/proc/{pid}/status")) else {
            continue;
        };
        // A thread id is absent from the listing but can be looked up: a
        // thread of a visible process is no escape, nor is a process that
        // appeared since the listing was read.
        let tgid = sys::status_field(&status, "Tgid").and_then(|t| t.parse::<u32>().ok());
        let now = procs::pids().unwrap_or_default();
        if !now.contains(&pid) && !tgid.is_some_and(|t| t != pid && now.contains(&t)) {
            found.push(format!("pid_{pid}"));
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let mut layers_errno = 0;
    for (path, prefix) in [
        ("/proc/1/root/../../../run/cairn/layers", "../../../"),
        ("/proc/1/root/../../..", ""),
        ("/proc/1/cwd/../../..", ""),
    ] {
        match sys::open_str(path, flags) {
            Ok(dir) => {
                if looks_like_host_root(&dir, prefix) {
                    found.push(path.to_owned());
                }
            }
            Err(e) => {
                if prefix.is_empty() {
                    continue;
                }
                layers_errno = e;
            }
        }
    }
    if found.is_empty() {
        blocked(layers_errno)
    } else {
        allowed(&found.join(","))
    }
}

/// setrlimit(RLIMIT_NOFILE) with the hard limit one above the current one
/// (soft unchanged); put back if it works. An unlimited hard limit counts
/// as allowed (there is nothing left to raise).
fn rlimit_raise() -> Outcome {
    let (soft, hard) = match sys::getrlimit(libc::RLIMIT_NOFILE as libc::c_int) {
        Ok(v) => v,
        Err(e) => return blocked(e),
    };
    if hard == libc::RLIM_INFINITY {
        return allowed("hard_already_unlimited");
    }
    let set = |cur, max| {
        let r = libc::rlimit { rlim_cur: cur, rlim_max: max };
        // SAFETY: `r` is an initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE as _, &r) } == 0 {
            Ok(())
        } else {
            Err(sys::errno())
        }
    };
    match set(soft, hard + 1) {
        Err(e) => blocked(e),
        Ok(()) => {
            let _ = set(soft, hard);
            allowed(&format!("hard_{hard}_raised"))
        }
    }
}

/// open("/proc/1/exe", O_WRONLY) (runc CVE-2019-5736); never written.
fn proc_exe_write() -> Outcome {
    open_for_write(c"/proc/1/exe")
}

/// fd = open("/proc/1/exe", O_PATH), then open("/proc/self/fd/<fd>",
/// O_WRONLY): blocked if either fails (that errno). A writable fd is closed
/// without writing.
fn proc_exe_opath() -> Outcome {
    let path_fd = match sys::open(c"/proc/1/exe", libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) => return blocked(e),
    };
    match sys::open_str(&format!("/proc/self/fd/{}", path_fd.as_raw_fd()), libc::O_WRONLY) {
        Ok(fd) => {
            drop(fd);
            allowed("reopened_for_write")
        }
        Err(e) => blocked(e),
    }
}

/// open("/proc/sys/kernel/hostname", O_WRONLY); never written.
fn proc_sys_write() -> Outcome {
    open_for_write(c"/proc/sys/kernel/hostname")
}

/// open("/dev/mem", O_RDONLY).
fn dev_mem() -> Outcome {
    match sys::open(c"/dev/mem", libc::O_RDONLY) {
        Ok(_fd) => allowed("/dev/mem_opened"),
        Err(e) => blocked(e),
    }
}

// seccomp: unknown syscall numbers and terminal ioctls.

/// The first syscall number the seccomp filter does not know
/// (`cairn_runtime::seccomp::first_unknown()`, the same on x86_64 and
/// aarch64; a runtime unit test pins it there too).
const FIRST_UNKNOWN: libc::c_long = 471;

/// A syscall with no arguments by number; allowed if it does not fail.
fn raw_syscall(nr: libc::c_long) -> Outcome {
    // SAFETY: a number the filter does not know, with no arguments: ENOSYS
    // from the filter or the kernel, nothing runs.
    match check(unsafe { libc::syscall(nr) }) {
        Ok(_) => allowed(&format!("syscall_{nr}")),
        Err(e) => blocked(e),
    }
}

/// syscall(1000).
fn syscall_1000() -> Outcome {
    raw_syscall(1000)
}

/// syscall(471), the number after the highest the filter knows.
fn syscall_first_unknown() -> Outcome {
    raw_syscall(FIRST_UNKNOWN)
}

/// TIOCSTI, TIOCLINUX, TIOCGPTPEER, TIOCSCTTY (asm-generic numbers, the
/// same on x86_64 and aarch64).
const TIOCSTI: libc::c_ulong = 0x5412;
const TIOCLINUX: libc::c_ulong = 0x541C;
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const TIOCSCTTY: libc::c_ulong = 0x540E;
const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
/// Exit code of a pty child whose setup (before the ioctl) failed: plus the step.
const SETUP_FAILED: i32 = 210;

/// In a forked child: setsid, open /dev/ptmx, unlock, open the slave
/// (TIOCGPTPEER) and make it the controlling tty (TIOCSCTTY; TIOCSTI then
/// needs no capability from the kernel), then each of `requests` with a
/// one-byte argument ("\n"). errno of the first request that failed with
/// anything but EPERM, else of the last; allowed if any succeeded.
fn pty_ioctls(requests: &'static [(&'static str, libc::c_ulong)]) -> Outcome {
    let r = child(|| {
        // SAFETY: raw syscalls on fds this child opens; the ioctl
        // arguments are plain integers or point at live locals.
        unsafe {
            if libc::setsid() < 0 {
                return SETUP_FAILED + 1;
            }
            let master = libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                return SETUP_FAILED + 2;
            }
            let unlock: libc::c_int = 0;
            if libc::syscall(libc::SYS_ioctl, master, TIOCSPTLCK, &unlock) != 0 {
                return SETUP_FAILED + 3;
            }
            let flags = libc::c_long::from(libc::O_RDWR | libc::O_NOCTTY);
            let Ok(slave) = i32::try_from(libc::syscall(libc::SYS_ioctl, master, TIOCGPTPEER, flags)) else {
                return SETUP_FAILED + 4;
            };
            if slave < 0 || libc::syscall(libc::SYS_ioctl, slave, TIOCSCTTY, 0) != 0 {
                return SETUP_FAILED + 5;
            }
            let byte = b'\n';
            let mut code = 0;
            for (i, (_, request)) in requests.iter().enumerate() {
                if libc::syscall(libc::SYS_ioctl, slave, *request, &byte) == 0 {
                    return ESCAPED + i as i32;
                }
                let e = errno_code(sys::errno());
                if code == 0 || code == libc::EPERM {
                    code = e;
                }
            }
            code
        }
    });
    match r {
        Ok(code) if (ESCAPED..SETUP_FAILED).contains(&code) => {
            let i = (code - ESCAPED) as usize;
            allowed(requests.get(i).map_or("ioctl", |(name, _)| name))
        }
        Ok(code) if code > SETUP_FAILED => {
            let mut o = blocked(0);
            o.extra = format!(" detail=pty_setup_step_{}", code - SETUP_FAILED);
            o
        }
        Ok(code) => blocked(code),
        Err(d) => {
            let mut o = blocked(0);
            o.extra = format!(" detail={}", V(&d));
            o
        }
    }
}

/// ioctl(TIOCSTI) on the container's own pty, its controlling tty, and the
/// same request with bit 32 set (the kernel reads the request as 32 bits).
fn tiocsti() -> Outcome {
    pty_ioctls(&[("TIOCSTI", TIOCSTI), ("TIOCSTI|1<<32", TIOCSTI | 1 << 32)])
}

/// ioctl(TIOCLINUX) on the container's own pty (the kernel would say ENOTTY:
/// not a virtual console).
fn tioclinux() -> Outcome {
    pty_ioctls(&[("TIOCLINUX", TIOCLINUX)])
}

// ---- Filesystem reach (issue 8, rootfs): device nodes, the console, the
// control directory. Nothing is ever read from or written to a device.

/// open("/dev/console", O_RDWR | O_NOCTTY | O_NONBLOCK): containers do not
/// get the console.
fn dev_console() -> Outcome {
    match sys::open(c"/dev/console", libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK) {
        Ok(_fd) => allowed("/dev/console_opened"),
        Err(e) => blocked(e),
    }
}

/// The boot disk's numbers as the container can read them
/// (`/sys/class/block/vda/dev`), 254:0 if not there.
fn vda_numbers() -> (u32, u32) {
    sys::read_trim("/sys/class/block/vda/dev")
        .and_then(|d| {
            let (a, b) = d.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((254, 0))
}

/// open("/layer-disk", O_RDONLY): a block device node a layer shipped
/// (the scenario's layer holds `b 254:0`). Closed without reading. The
/// blocked line adds `vda=MAJ:MIN` (the disk's real numbers).
fn layer_device() -> Outcome {
    let (major, minor) = vda_numbers();
    match sys::open(c"/layer-disk", libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(_fd) => allowed("/layer-disk_opened"),
        Err(e) => {
            let mut o = blocked(e);
            o.extra = format!(" vda={major}:{minor}");
            o
        }
    }
}

/// With CAP_MKNOD: mknod /dev/hostile-null (c 1:3, allowed: shows mknod
/// itself works here) and /dev/hostile-vda (b, the boot disk's numbers),
/// then open the latter O_RDONLY. Blocked with the errno of the first that
/// fails and `at=mknod|open null=ok|ERRNO`; both nodes are removed.
fn mknod_disk() -> Outcome {
    let (major, minor) = vda_numbers();
    let make = |path: &CStr, kind, major, minor| {
        // SAFETY: `path` is NUL-terminated; a leftover node is removed first.
        let _ = unsafe { libc::unlink(path.as_ptr()) };
        // SAFETY: as above; mknod reads only the path.
        if unsafe { libc::mknod(path.as_ptr(), kind | 0o600, libc::makedev(major, minor)) } == 0 {
            Ok(())
        } else {
            Err(sys::errno())
        }
    };
    let null = match make(c"/dev/hostile-null", libc::S_IFCHR, 1, 3) {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let outcome = match make(c"/dev/hostile-vda", libc::S_IFBLK, major, minor) {
        Err(e) => {
            let mut o = blocked(e);
            o.extra = format!(" at=mknod null={null} dev={major}:{minor}");
            o
        }
        Ok(()) => match sys::open(c"/dev/hostile-vda", libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(_fd) => allowed(&format!("opened_{major}:{minor}")),
            Err(e) => {
                let mut o = blocked(e);
                o.extra = format!(" at=open null={null} dev={major}:{minor}");
                o
            }
        },
    };
    for p in [c"/dev/hostile-null", c"/dev/hostile-vda"] {
        // SAFETY: NUL-terminated literal.
        let _ = unsafe { libc::unlink(p.as_ptr()) };
    }
    outcome
}

/// In the control directory: unlink PID 1's socket, then bind a socket of
/// our own at /run/cairn/hostile; blocked with unlink's errno, adding
/// `bind_errno=E` and `status=ok|<step>_<errno>|<reply>` (a `status`
/// request over the control socket afterwards: connecting still works).
fn control_unlink() -> Outcome {
    let path = crate::ctl::DEFAULT_PATH;
    let unlinked = sys::cpath(path).map(|p| {
        // SAFETY: `p` is NUL-terminated.
        unsafe { libc::unlink(p.as_ptr()) }
    });
    let unlink_errno = match unlinked {
        Ok(0) => 0,
        Ok(_) => sys::errno(),
        Err(e) => e,
    };
    let bind_errno = bind_unix(b"/run/cairn/hostile");
    let status = match crate::ctl::exchange(path.as_bytes(), b"status") {
        Ok(r) if r.starts_with(b"ok") => "ok".to_owned(),
        Ok(r) => String::from_utf8_lossy(&r).split_whitespace().next().unwrap_or("empty").to_owned(),
        Err((step, e)) => format!("{step}_{e}"),
    };
    let mut o = if unlink_errno == 0 { allowed("socket_unlinked") } else { blocked(unlink_errno) };
    o.extra.push_str(&format!(" bind_errno={bind_errno} status={}", V(&status)));
    o
}

/// bind(2) a new AF_UNIX socket at `path`: 0 if that worked (the file is
/// removed again), else errno.
fn bind_unix(path: &[u8]) -> i32 {
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return sys::errno();
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` within it.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc != 0 {
        return sys::errno();
    }
    if let Ok(p) = sys::cpath(&String::from_utf8_lossy(path)) {
        // SAFETY: `p` is NUL-terminated.
        let _ = unsafe { libc::unlink(p.as_ptr()) };
    }
    0
}

/// Open the device-mapper control node (to remove or reload a layer's
/// verity target).
fn dm_control() -> Outcome {
    match sys::open(c"/dev/mapper/control", libc::O_RDWR) {
        Ok(_fd) => allowed("/dev/mapper/control_opened"),
        Err(e) => blocked(e),
    }
}
