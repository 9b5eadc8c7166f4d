//! `inspect`: what the boot-demo scenario asserts about a container's view
//! of the world (pid namespace, hostname, layered rootfs, writable upper).

use crate::out::V;
use crate::{procs, say, sys};

const UPPER_TEST: &str = "/cairn-upper-test";
const BASE_FILE: &str = "/etc/cairn-base";
const LAYER_FILE: &str = "/etc/cairn-layer";

/// Print the facts, try the writable upper layer, count processes; then
/// sleep forever if `stay`, else return exit code 0.
pub fn run(stay: bool) -> i32 {
    let missing = || "missing".to_owned();
    let comm = sys::read_trim("/proc/1/comm").unwrap_or_else(missing);
    let layer = sys::read_trim(LAYER_FILE).unwrap_or_else(missing);
    let base = sys::read_trim(BASE_FILE).unwrap_or_else(missing);
    let cwd = match std::env::current_dir() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => format!("error:{}", e.raw_os_error().unwrap_or(0)),
    };
    let image_env = std::env::var("CAIRN_IMAGE_ENV").unwrap_or_else(|_| missing());
    say!(
        "event=inspect pid={} ppid={} pid1_comm={} hostname={} layer={} base={} uid={} gid={} cwd={} image_env={}",
        sys::pid(),
        sys::ppid(),
        V(&comm),
        crate::out::host(),
        V(&layer),
        V(&base),
        sys::uid(),
        sys::gid(),
        V(&cwd),
        V(&image_env),
    );

    match upper_write() {
        Ok(()) => say!("event=upper-write ok=1"),
        Err((path, err)) => say!("event=upper-write ok=0 err={} path={}", V(&err), path),
    }

    match procs::count_pids() {
        Ok(n) => say!("event=procs count={n}"),
        Err(e) => say!("event=procs count=-1 err={e}"),
    }
    say!("event=inspect-done");

    if stay {
        sys::pause_forever();
    }
    0
}

/// Create a new file at the root and shadow a lower-layer file, then read both
/// back. Errors: the path and the errno (or `mismatch`).
fn upper_write() -> Result<(), (&'static str, String)> {
    let created = format!("written by {}", crate::out::host());
    for (path, content) in [(UPPER_TEST, created.as_str()), (BASE_FILE, "shadowed")] {
        let errno = |e: std::io::Error| (path, e.raw_os_error().unwrap_or(0).to_string());
        std::fs::write(path, content).map_err(errno)?;
        let back = std::fs::read(path).map_err(errno)?;
        if back != content.as_bytes() {
            return Err((path, "mismatch".into()));
        }
    }
    Ok(())
}
