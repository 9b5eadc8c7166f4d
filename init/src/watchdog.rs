//! The watchdog: PID 1 arms it once the modules are loaded
//! (`cairn.watchdog=SECONDS`, written by the board into the kernel command
//! line), pets it from the supervisor's event loop and through long boot
//! work, and leaves it armed across reboot: a PID 1 that stops turning its
//! loop, or a reboot that never completes, ends in a reset. Only before a
//! deliberate power-off is it disarmed (the magic close: `V`, then close),
//! so a device that was told to stay off stays off.
//!
//! The open device lives in a global (an atomic descriptor, -1 while there
//! is none), like the console in [`crate::event`]: the long waits that must
//! pet it sit deep in the partition scan and the layer checks, whose callers
//! would otherwise all carry a handle. PID 1 is single-threaded; the
//! descriptor is opened once, close-on-exec (no container inherits it), and
//! closed only by [`disarm`], which takes it out of the global first.
//!
//! Events: `watchdog.armed`, `watchdog.unavailable` (why, naming the
//! errno), `watchdog.pet-failed` (once), `watchdog.disarmed` or
//! `watchdog.disarm-failed`.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

use cairn_runtime::sys::{self, SysError};

use crate::cmdline::{Cmdline, Watchdog};
use crate::event::event;

/// `struct watchdog_info` of `linux/watchdog.h`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchdogInfo {
    /// `WDIOF_*` bits the driver supports.
    pub options: u32,
    /// The driver's firmware version.
    pub firmware_version: u32,
    /// Its name, NUL-padded.
    pub identity: [u8; 32],
}

nix::ioctl_read!(
    /// `WDIOC_GETSUPPORT`: `_IOR('W', 0, struct watchdog_info)`.
    wdioc_getsupport,
    b'W',
    0,
    WatchdogInfo
);
nix::ioctl_read!(
    /// `WDIOC_GETBOOTSTATUS`: `_IOR('W', 2, int)`.
    wdioc_getbootstatus,
    b'W',
    2,
    libc::c_int
);
nix::ioctl_read!(
    /// `WDIOC_KEEPALIVE`: `_IOR('W', 5, int)`.
    wdioc_keepalive,
    b'W',
    5,
    libc::c_int
);
nix::ioctl_readwrite!(
    /// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)`.
    wdioc_settimeout,
    b'W',
    6,
    libc::c_int
);
nix::ioctl_read!(
    /// `WDIOC_GETTIMEOUT`: `_IOR('W', 7, int)`.
    wdioc_gettimeout,
    b'W',
    7,
    libc::c_int
);

/// `WDIOF_*` reset reasons (`GETBOOTSTATUS` bits), with their names.
const REASONS: [(u32, &str); 7] = [
    (0x0020, "watchdog"),    // WDIOF_CARDRESET: the watchdog reset the machine
    (0x0001, "overheat"),    // WDIOF_OVERHEAT
    (0x0002, "fan-fault"),   // WDIOF_FANFAULT
    (0x0004, "external-1"),  // WDIOF_EXTERN1
    (0x0008, "external-2"),  // WDIOF_EXTERN2
    (0x0010, "power-under"), // WDIOF_POWERUNDER
    (0x0040, "power-over"),  // WDIOF_POWEROVER
];

/// The open device (-1: none).
static FD: AtomicI32 = AtomicI32::new(-1);
/// Its timeout in seconds (0: none).
static TIMEOUT_S: AtomicU32 = AtomicU32::new(0);
/// Its device node (set once, when armed).
static DEVICE: OnceLock<String> = OnceLock::new();
/// A failed pet was reported already (reported once per boot).
static PET_FAILED: AtomicBool = AtomicBool::new(false);
/// `cairn.test.hang=supervisor`: the loop's next turn blocks forever.
#[cfg(feature = "test-hooks")]
static HANG: AtomicBool = AtomicBool::new(false);

/// What the last reset was, from `GETBOOTSTATUS` bits and the driver's
/// `GETSUPPORT` options: the reasons set (`watchdog`, `overheat`, ...,
/// comma-separated), `none` when the driver reports reasons and none is
/// set (a power-on or a reboot), `unreported` when it reports none.
pub fn last_reset(options: u32, status: u32) -> String {
    let set: Vec<&str> = REASONS.iter().filter(|(bit, _)| status & bit != 0).map(|(_, name)| *name).collect();
    if !set.is_empty() {
        return set.join(",");
    }
    if REASONS.iter().any(|(bit, _)| options & bit != 0) {
        "none".to_owned()
    } else {
        "unreported".to_owned()
    }
}

/// The driver's name from `watchdog_info.identity` (NUL-padded).
pub fn identity(info: &WatchdogInfo) -> String {
    let end = info.identity.iter().position(|&b| b == 0).unwrap_or(info.identity.len());
    String::from_utf8_lossy(info.identity.get(..end).unwrap_or(&[])).trim().to_owned()
}

/// The device's directory under `/sys/class/watchdog` (`/dev/watchdog` is
/// the legacy name of `watchdog0`).
pub fn sysfs_name(device: &str) -> Option<&str> {
    match device.rsplit('/').next() {
        Some("watchdog") => Some("watchdog0"),
        Some(n) if n.starts_with("watchdog") && n.len() > 8 => Some(n),
        _ => None,
    }
}

/// How often the event loop must wake to pet a watchdog of `timeout_s`:
/// a third of it (so two turns may be missed), at least 100 ms.
pub fn pet_interval_ms(timeout_s: u32) -> u32 {
    (timeout_s.saturating_mul(1000) / 3).max(100)
}

fn unavailable(device: &str, reason: impl core::fmt::Display) {
    event("watchdog.unavailable").kv("device", device).kv("reason", reason).emit();
}

/// Arm the watchdog the command line names (after the modules loaded).
/// Every outcome is one event: `watchdog.armed` or `watchdog.unavailable`.
pub fn arm(c: &Cmdline) {
    #[cfg(feature = "test-hooks")]
    HANG.store(c.test_hang == Some(crate::cmdline::TestHang::Supervisor), Ordering::Relaxed);
    let device = c.watchdog_device.as_str();
    let requested = match c.watchdog {
        Watchdog::Unnamed => {
            return unavailable(device, "the board names no watchdog (no cairn.watchdog= on the kernel command line)")
        }
        Watchdog::Off => return unavailable(device, "turned off on the kernel command line (cairn.watchdog=off)"),
        Watchdog::Seconds(s) => s,
    };
    // Opening it starts it.
    let fd = match sys::open(device, libc::O_WRONLY) {
        Ok(fd) => fd,
        Err(e) if e.errno == libc::ENOENT => {
            return unavailable(
                device,
                format!("no device: {e}; its driver module is missing or did not load (see module.* events)"),
            )
        }
        Err(e) if e.errno == libc::EBUSY => return unavailable(device, format!("already open elsewhere: {e}")),
        Err(e) => return unavailable(device, e),
    };
    let raw = fd.as_raw_fd();
    let ioctl_err =
        |op: &'static str, errno: nix::errno::Errno| SysError { op, arg: device.into(), errno: errno as i32 };
    let mut timeout = libc::c_int::try_from(requested).unwrap_or(libc::c_int::MAX);
    // SAFETY: `raw` is the open watchdog; SETTIMEOUT reads and writes back
    // one int through the pointer, which points at a live local.
    let set = unsafe { wdioc_settimeout(raw, &mut timeout) }.map_err(|e| ioctl_err("ioctl WDIOC_SETTIMEOUT", e));
    let set_error = match set {
        Ok(_) => None,
        Err(e) => {
            // A driver with a fixed timeout: keep it, if it says what it is.
            // SAFETY: as above; GETTIMEOUT writes one int.
            match unsafe { wdioc_gettimeout(raw, &mut timeout) } {
                Ok(_) => Some(e),
                Err(_) => {
                    let _ = magic_close(fd, device);
                    return unavailable(device, format!("{e}; stopped again (magic close)"));
                }
            }
        }
    };
    let Some(timeout_s) = u32::try_from(timeout).ok().filter(|&t| t > 0) else {
        let _ = magic_close(fd, device);
        return unavailable(
            device,
            format!("the driver reports a timeout of {timeout} s; stopped again (magic close)"),
        );
    };
    let mut info = WatchdogInfo::default();
    // SAFETY: GETSUPPORT writes one `struct watchdog_info` (repr(C), the
    // kernel's layout) through the pointer, which points at a live local.
    let support = unsafe { wdioc_getsupport(raw, &mut info) }.map_err(|e| ioctl_err("ioctl WDIOC_GETSUPPORT", e));
    let mut status: libc::c_int = 0;
    // SAFETY: GETBOOTSTATUS writes one int through a pointer to a live local.
    let boot = unsafe { wdioc_getbootstatus(raw, &mut status) }.map_err(|e| ioctl_err("ioctl WDIOC_GETBOOTSTATUS", e));
    let _ = DEVICE.set(device.to_owned());
    FD.store(fd.into_raw_fd(), Ordering::Relaxed);
    TIMEOUT_S.store(timeout_s, Ordering::Relaxed);
    pet();
    let mut e = event("watchdog.armed")
        .kv("device", device)
        .kv("identity", support.as_ref().map_or_else(|_| "unknown".to_owned(), |_| identity(&info)))
        .kv("timeout_s", timeout_s);
    if timeout_s != requested {
        e = e.kv("requested_s", requested);
    }
    if let Some(err) = set_error {
        e = e.kv("set_error", err);
    }
    if let Err(err) = &support {
        e = e.kv("support_error", err);
    }
    e = match boot {
        Ok(_) => {
            let status = status as u32;
            e.kv("boot_status", format!("0x{status:x}")).kv("last_reset", last_reset(info.options, status))
        }
        Err(err) => e.kv("last_reset", "unknown").kv("boot_status_error", err),
    };
    e.kv("pet_every_ms", pet_interval_ms(timeout_s)).emit();
}

/// Pet the watchdog, if one is armed (a no-op otherwise, and on the host).
/// Cheap (one ioctl): long boot work calls it on every step.
pub fn pet() {
    let raw = FD.load(Ordering::Relaxed);
    if raw < 0 {
        return;
    }
    let mut unused: libc::c_int = 0;
    // SAFETY: `raw` is the watchdog this module opened and still owns (only
    // `disarm` closes it, after taking it out of `FD`; PID 1 is
    // single-threaded). KEEPALIVE writes at most one int through a pointer
    // to a live local.
    if let Err(e) = unsafe { wdioc_keepalive(raw, &mut unused) } {
        if !PET_FAILED.swap(true, Ordering::Relaxed) {
            event("watchdog.pet-failed")
                .kv("error", SysError { op: "ioctl WDIOC_KEEPALIVE", arg: raw.to_string(), errno: e as i32 })
                .kv("effect", "the machine resets when the timeout passes")
                .emit();
        }
    }
}

/// One turn of the supervisor's event loop: pet. In test builds
/// (`test-hooks`), `cairn.test.hang=supervisor` makes this turn block
/// forever instead.
pub fn turn() {
    #[cfg(feature = "test-hooks")]
    if HANG.load(Ordering::Relaxed) {
        hang();
    }
    pet();
}

/// The longest the event loop may sleep (poll ms; -1: no watchdog).
pub fn poll_ms() -> i32 {
    match TIMEOUT_S.load(Ordering::Relaxed) {
        0 => -1,
        t if FD.load(Ordering::Relaxed) >= 0 => i32::try_from(pet_interval_ms(t)).unwrap_or(i32::MAX),
        _ => -1,
    }
}

/// Before a deliberate power-off: the magic close, so the watchdog stops
/// and the machine stays off. `watchdog.disarmed` names the state the
/// kernel reports afterwards.
pub fn disarm() {
    let raw = FD.swap(-1, Ordering::Relaxed);
    if raw < 0 {
        return;
    }
    TIMEOUT_S.store(0, Ordering::Relaxed);
    // SAFETY: `raw` came from `OwnedFd::into_raw_fd` in `arm` and was just
    // taken out of `FD`: nothing else owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let device = DEVICE.get().map_or(crate::cmdline::DEFAULT_WATCHDOG_DEVICE, String::as_str);
    let (written, state) = magic_close(fd, device);
    match written {
        Ok(()) if state != "active" => event("watchdog.disarmed").kv("device", device).kv("state", state).emit(),
        Ok(()) => event("watchdog.disarm-failed")
            .kv("device", device)
            .kv("state", state)
            .kv("reason", "the driver kept it running after the magic close (nowayout)")
            .emit(),
        Err(e) => event("watchdog.disarm-failed").kv("device", device).kv("state", state).kv("error", e).emit(),
    }
}

/// Write the magic character and close. Returns the write's result and the
/// state the kernel reports afterwards (`inactive`, `active`, `unknown`).
fn magic_close(fd: OwnedFd, device: &str) -> (sys::SysResult<()>, String) {
    let written = sys::write_all(&fd, b"V");
    drop(fd);
    let state = sysfs_name(device)
        .and_then(|n| std::fs::read_to_string(format!("/sys/class/watchdog/{n}/state")).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    (written, state)
}

/// `cairn.test.hang=trial` on a trial boot: the event loop's next turn
/// hangs (test builds only).
#[cfg(feature = "test-hooks")]
pub fn hang_from_now() {
    HANG.store(true, Ordering::Relaxed);
}

/// `cairn.test.hang=supervisor`: stop petting and block forever (every
/// signal is blocked and goes to the signalfd no one reads any more).
#[cfg(feature = "test-hooks")]
fn hang() -> ! {
    event("test.hang")
        .kv("where", "supervisor")
        .kv("effect", "PID 1 stops petting the watchdog and blocks forever")
        .emit();
    crate::event::console_drain(std::time::Duration::from_secs(2));
    loop {
        nix::unistd::pause();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_last_reset_names_every_reason_set_or_says_why_there_is_none() {
        assert_eq!(last_reset(0x0020 | 0x0100, 0x0020), "watchdog");
        assert_eq!(last_reset(0x0021, 0x0021), "watchdog,overheat");
        assert_eq!(last_reset(0x0020, 0), "none", "the driver reports reasons: none was set");
        // softdog: SETTIMEOUT | KEEPALIVEPING | MAGICCLOSE, no reasons.
        assert_eq!(last_reset(0x0080 | 0x8000 | 0x0100, 0), "unreported");
        assert_eq!(last_reset(0, 0x0010 | 0x0040), "power-under,power-over");
    }

    #[test]
    fn the_identity_stops_at_the_first_nul() {
        let mut info = WatchdogInfo::default();
        info.identity[..17].copy_from_slice(b"Software Watchdog");
        assert_eq!(identity(&info), "Software Watchdog");
        info.identity = [b'x'; 32];
        assert_eq!(identity(&info).len(), 32);
        assert_eq!(identity(&WatchdogInfo::default()), "");
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // linux/watchdog.h on x86_64 and arm64 (asm-generic ioctl encoding;
        // the request is an int on musl, an unsigned long on glibc).
        assert_eq!(nix::request_code_read!(b'W', 0, core::mem::size_of::<WatchdogInfo>()) as u32, 0x8028_5700);
        assert_eq!(nix::request_code_read!(b'W', 2, core::mem::size_of::<libc::c_int>()) as u32, 0x8004_5702);
        assert_eq!(nix::request_code_read!(b'W', 5, core::mem::size_of::<libc::c_int>()) as u32, 0x8004_5705);
        assert_eq!(nix::request_code_readwrite!(b'W', 6, core::mem::size_of::<libc::c_int>()) as u32, 0xc004_5706);
        assert_eq!(nix::request_code_read!(b'W', 7, core::mem::size_of::<libc::c_int>()) as u32, 0x8004_5707);
    }

    #[test]
    fn sysfs_names_and_pet_intervals() {
        assert_eq!(sysfs_name("/dev/watchdog"), Some("watchdog0"));
        assert_eq!(sysfs_name("/dev/watchdog1"), Some("watchdog1"));
        assert_eq!(sysfs_name("/dev/misc/wdt"), None);
        assert_eq!(pet_interval_ms(15), 5000);
        assert_eq!(pet_interval_ms(1), 333);
        assert_eq!(pet_interval_ms(0), 100);
        assert_eq!(pet_interval_ms(u32::MAX), u32::MAX / 3);
    }

    #[test]
    fn nothing_armed_means_no_pet_and_no_wake_up() {
        pet();
        turn();
        assert_eq!(poll_ms(), -1);
        disarm();
    }
}
