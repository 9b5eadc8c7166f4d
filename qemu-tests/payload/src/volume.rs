//! `volume <action> <dir|path>...`: what a container sees of its volumes.
//!
//! - `check-write <dir>...`: per dir, reads `<dir>/record`; if it is
//!   missing, writes `<dir>/note` and then `<dir>/record` ("record-1") the
//!   way a database commits (write, fsync the file, fsync the directory);
//!   then tries to move the record out of the volume's project quota
//!   (FS_IOC_FSGETXATTR, then FS_IOC_FSSETXATTR with project id 0):
//!   `event=volume-check dir=D found=<content|missing|ENAME> written=<ok|skipped|ENAME>
//!   record_owner=U:G dir_owner=U:G dir_mode=<octal> project=<ok|ENAME>`
//!   (owners as this container sees them, `-` if absent; `project=ok`
//!   means the file left its quota).
//! - `readonly <dir>...`: per dir, reads `<dir>/record` and tries to
//!   create `<dir>/ro-probe`:
//!   `event=volume-ro dir=D found=F write=<ok|ENAME> record_owner=U:G dir_owner=U:G`.
//! - `absent <path>...`: per path `event=volume-absent path=P result=<ENAME|present>`.
//! - `fill <full_dir> <other_dir>`: writes 64 KiB chunks to
//!   `<full_dir>/fill` (truncated first) until a write fails, then 1 MiB to
//!   `<other_dir>/after-fill` (fsync'd):
//!   `event=volume-fill wrote_kib=K errno=E err=ENAME other_write=<ok|ENAME>`.
//!
//! Exit 0.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::say;
use crate::sys::Errno;

fn ename(e: &std::io::Error) -> String {
    Errno(e.raw_os_error().unwrap_or(0)).to_string()
}

fn owner(path: &str) -> String {
    std::fs::metadata(path).map(|m| format!("{}:{}", m.uid(), m.gid())).unwrap_or_else(|_| "-".into())
}

fn read(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".into(),
        Err(e) => ename(&e),
    }
}

/// Write a file, fsync it and its directory (a database's commit).
fn commit(dir: &str, name: &str, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(format!("{dir}/{name}"))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// FS_IOC_FSGETXATTR then FS_IOC_FSSETXATTR with project id 0.
fn unproject(path: &str) -> String {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return ename(&e),
    };
    let mut x = [0u32; 7]; // struct fsxattr: xflags, extsize, nextents, projid, cowextsize, pad[8]
                           // SAFETY: both requests read or write one 28-byte struct fsxattr, which `x` is.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x801c_581f_u32 as _, x.as_mut_ptr()) };
    if rc != 0 {
        return Errno(crate::sys::errno()).to_string();
    }
    x[3] = 0;
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x401c_5820_u32 as _, x.as_ptr()) };
    if rc != 0 {
        return Errno(crate::sys::errno()).to_string();
    }
    "ok".into()
}

pub fn check_write(dirs: &[String]) -> i32 {
    for d in dirs {
        let record = format!("{d}/record");
        let found = read(&record);
        let written = if found == "missing" {
            let r = std::fs::write(format!("{d}/note"), "a note\n").and_then(|()| commit(d, "record", "record-1\n"));
            match r {
                Ok(()) => "ok".into(),
                Err(e) => ename(&e),
            }
        } else {
            "skipped".into()
        };
        let mode = std::fs::metadata(d).map(|m| format!("{:o}", m.permissions().mode() & 0o7777)).unwrap_or_default();
        say!(
            "event=volume-check dir={d} found={found} written={written} record_owner={} dir_owner={} dir_mode={mode} project={}",
            owner(&record),
            owner(d),
            unproject(&record)
        );
    }
    0
}

pub fn readonly(dirs: &[String]) -> i32 {
    for d in dirs {
        let record = format!("{d}/record");
        let write = match std::fs::write(format!("{d}/ro-probe"), "x") {
            Ok(()) => "ok".into(),
            Err(e) => ename(&e),
        };
        say!(
            "event=volume-ro dir={d} found={} write={write} record_owner={} dir_owner={}",
            read(&record),
            owner(&record),
            owner(d)
        );
    }
    0
}

pub fn absent(paths: &[String]) -> i32 {
    for p in paths {
        let result = match std::fs::symlink_metadata(p) {
            Ok(_) => "present".into(),
            Err(e) => ename(&e),
        };
        say!("event=volume-absent path={p} result={result}");
    }
    0
}

pub fn fill(full: &str, other: &str) -> i32 {
    let mut total: u64 = 0;
    let chunk = vec![0xa5u8; 64 << 10];
    let errno = match std::fs::File::create(format!("{full}/fill")) {
        Err(e) => e.raw_os_error().unwrap_or(0),
        Ok(mut f) => loop {
            match f.write(&chunk) {
                Ok(0) => break libc::ENOSPC,
                Ok(n) => total += n as u64,
                Err(e) => break e.raw_os_error().unwrap_or(0),
            }
        },
    };
    let other_write = std::fs::File::create(format!("{other}/after-fill"))
        .and_then(|mut f| f.write_all(&vec![0x5au8; 1 << 20]).and_then(|()| f.sync_all()));
    let other_write = match other_write {
        Ok(()) => "ok".into(),
        Err(e) => ename(&e),
    };
    say!("event=volume-fill wrote_kib={} errno={errno} err={} other_write={other_write}", total / 1024, Errno(errno));
    0
}
