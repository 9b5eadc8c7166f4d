//! Workloads for the limits beyond the cgroup foundation: tmpfs caps, io.max,
//! rlimits; and `cat` to show cgroup settings.

use std::alloc::Layout;
use std::os::fd::AsRawFd;
use std::time::Instant;

use crate::out::V;
use crate::say;
use crate::sys::{self, Errno};

/// `fill-tmpfs` write size.
const FILL_CHUNK: usize = 64 << 10;
/// `read-rate` read size and its alignment for O_DIRECT.
const READ_CHUNK: usize = 1 << 20;
const READ_ALIGN: usize = 4096;

/// `fill-tmpfs <dir>`: write 64 KiB chunks to `<dir>/fill` until a write
/// fails; `event=fill-tmpfs wrote_kib=K errno=E err=ENAME` (an open failure
/// is `wrote_kib=0` with its errno). The file is left in place.
pub fn fill_tmpfs(dir: &str) -> i32 {
    let path = format!("{}/fill", dir.trim_end_matches('/'));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
    let mut total: u64 = 0;
    let errno = match sys::open_str(&path, flags) {
        Err(e) => e,
        Ok(fd) => {
            let chunk = vec![0xa5u8; FILL_CHUNK];
            loop {
                match sys::write_once(fd.as_raw_fd(), &chunk) {
                    Ok(0) => break libc::ENOSPC,
                    Ok(n) => total += n as u64,
                    Err(e) => break e,
                }
            }
        }
    };
    say!("event=fill-tmpfs wrote_kib={} errno={errno} err={}", total / 1024, Errno(errno));
    0
}

/// A heap buffer with the alignment O_DIRECT wants, freed on drop.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(size: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Self { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// `read-rate <device> <mib>`: O_DIRECT reads of 1 MiB each, timed;
/// `event=read-rate device=D mib=N seconds=S kib_per_sec=K`, or
/// `event=read-rate device=D error=ENAME errno=E` (`error=EOF errno=0` if
/// the device is shorter).
pub fn read_rate(device: &str, mib: u64) -> i32 {
    let fail = |e: i32| {
        if e == 0 {
            say!("event=read-rate device={} error=EOF errno=0", V(device));
        } else {
            say!("event=read-rate device={} error={} errno={e}", V(device), Errno(e));
        }
        0
    };
    let fd = match sys::open_str(device, libc::O_RDONLY | libc::O_DIRECT) {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let Some(buf) = Aligned::new(READ_CHUNK, READ_ALIGN) else {
        return fail(libc::ENOMEM);
    };
    let start = Instant::now();
    for _ in 0..mib {
        let mut done = 0;
        while done < READ_CHUNK {
            // SAFETY: `buf` holds READ_CHUNK writable bytes and `done < READ_CHUNK`,
            // so the read stays inside it.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.ptr.add(done).cast(), READ_CHUNK - done) };
            match n {
                0 => return fail(0),
                n if n < 0 => {
                    let e = sys::errno();
                    if e != libc::EINTR {
                        return fail(e);
                    }
                }
                n => done += n.unsigned_abs(),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let kib = mib * 1024;
    let rate = if secs > 0.0 { (kib as f64 / secs) as u64 } else { 0 };
    say!("event=read-rate device={} mib={mib} seconds={secs:.3} kib_per_sec={rate}", V(device));
    0
}

/// `open-files <max>`: open /dev/null until it fails or `max` are open;
/// `event=open-files opened=N errno=E err=ENAME soft_limit=L`.
pub fn open_files(max: u32) -> i32 {
    let mut fds = Vec::new();
    let mut errno = 0;
    while fds.len() < max as usize {
        match sys::open(c"/dev/null", libc::O_RDONLY) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                errno = e;
                break;
            }
        }
    }
    let soft = sys::getrlimit(libc::RLIMIT_NOFILE as libc::c_int)
        .map_or_else(|e| format!("error:{e}"), |(s, _)| sys::rlim_str(s));
    say!("event=open-files opened={} errno={errno} err={} soft_limit={soft}", fds.len(), Errno(errno));
    0
}

/// `rlimits`: `event=rlimits nofile=S/H nproc=S/H core=S/H` (`inf` for unlimited).
pub fn rlimits() -> i32 {
    let show = |r: libc::c_int| match sys::getrlimit(r) {
        Ok((s, h)) => format!("{}/{}", sys::rlim_str(s), sys::rlim_str(h)),
        Err(e) => format!("error:{e}"),
    };
    say!(
        "event=rlimits nofile={} nproc={} core={}",
        show(libc::RLIMIT_NOFILE as libc::c_int),
        show(libc::RLIMIT_NPROC as libc::c_int),
        show(libc::RLIMIT_CORE as libc::c_int)
    );
    0
}

/// `cat <path>...`: per file `event=cat path=P value=V` (content trimmed,
/// newlines shown as `_`), or `event=cat path=P error=ENAME errno=E`;
/// exit 1 if any could not be read.
pub fn cat(paths: &[String]) -> i32 {
    let mut code = 0;
    for path in paths {
        match std::fs::read(path) {
            Ok(b) => say!("event=cat path={} value={}", V(path), V(String::from_utf8_lossy(&b).trim())),
            Err(e) => {
                let e = e.raw_os_error().unwrap_or(0);
                say!("event=cat path={} error={} errno={e}", V(path), Errno(e));
                code = 1;
            }
        }
    }
    code
}

/// `read-file`: read each file whole; its size or the errno.
pub fn read_files(paths: &[String]) -> i32 {
    let mut code = 0;
    for path in paths {
        match std::fs::read(path) {
            Ok(b) => say!("event=read-file path={} bytes={}", V(path), b.len()),
            Err(e) => {
                let e = e.raw_os_error().unwrap_or(0);
                say!("event=read-file path={} error={} errno={e}", V(path), Errno(e));
                code = 1;
            }
        }
    }
    code
}
