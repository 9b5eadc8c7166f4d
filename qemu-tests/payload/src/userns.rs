//! `userns`: what the container's root is, inside and (through the kernel's
//! own view of the id maps and of file ownership) outside.
//!
//! One line, `event=userns` followed by:
//! - `uid`, `gid`: getuid/getgid; `groups`: the `Groups:` line of
//!   /proc/self/status (comma separated, `-` if none);
//! - `uid_map`, `gid_map`: the first line of /proc/self/uid_map and gid_map
//!   with single `:` between the three numbers (`0:100000:65536`; a process
//!   in the host's namespace reads `0:0:4294967295`);
//! - `layer_owner`: owner uid of `/bin/cairn-payload` (a layer file, host
//!   root's): 65534 (the overflow id) when host root is not mapped;
//! - `root_write`, `root_owner`: creating `/userns-probe` in the container's
//!   `/` (`ok` or the errno name) and the owner uid it shows;
//! - `tmp_write`: creating `/tmp/userns-probe` in a directory of the layer,
//!   owned by host root, mode 0755 (`ok` or the errno name);
//! - `mknod`: `mknod /userns-null c 1 3` (`ok` or the errno name; run with
//!   CAP_MKNOD added, which only host-namespace root can use for devices);
//! - `cap_eff`: CapEff; `nested`: `unshare(CLONE_NEWUSER)` (`ok` or errno name).
//!
//! Exit 0.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;

use crate::say;
use crate::sys::{self, Errno};

fn map_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>().join(":")))
        .unwrap_or_else(|| "unreadable".into())
}

fn result(rc: libc::c_int) -> String {
    if rc == 0 {
        "ok".into()
    } else {
        Errno(sys::errno()).to_string()
    }
}

fn create(path: &str) -> String {
    match std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path) {
        Ok(_) => "ok".into(),
        Err(e) => Errno(e.raw_os_error().unwrap_or(0)).to_string(),
    }
}

pub fn run() -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let groups =
        sys::status_field(&status, "Groups").unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(",");
    let cap_eff = sys::status_field(&status, "CapEff").unwrap_or_default();
    let layer_owner =
        std::fs::metadata("/bin/cairn-payload").map(|m| m.uid().to_string()).unwrap_or_else(|_| "unreadable".into());
    let root_write = create("/userns-probe");
    let root_owner = std::fs::metadata("/userns-probe").map(|m| m.uid().to_string()).unwrap_or_else(|_| "-".into());
    let tmp_write = create("/tmp/userns-probe");
    let node = CString::new("/userns-null").unwrap_or_default();
    // SAFETY: `node` is a valid C string; makedev is a pure computation.
    let mknod = result(unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) });
    // SAFETY: as above; removing what may have been made.
    unsafe { libc::unlink(node.as_ptr()) };
    // SAFETY: unshare with a flag only; on success only this process is in
    // the new namespace, and it exits right after printing.
    let nested = result(unsafe { libc::unshare(libc::CLONE_NEWUSER) });
    say!(
        "event=userns uid={} gid={} groups={} uid_map={} gid_map={} layer_owner={layer_owner} root_write={root_write} root_owner={root_owner} tmp_write={tmp_write} mknod={mknod} cap_eff={} nested={nested}",
        sys::uid(),
        sys::gid(),
        crate::out::V(&groups),
        map_line("/proc/self/uid_map"),
        map_line("/proc/self/gid_map"),
        crate::out::V(&cap_eff),
    );
    0
}
