//! `tree DIR...`: list a directory tree as the container sees it (through
//! its overlay of layers), one line per entry, without following symlinks:
//! path, kind, mode, owner, size, link count and inode, a symlink's target,
//! and the content of small files. Ends with `event=tree-done count=N`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::out::V;
use crate::say;

fn kind(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "d"
    } else if ft.is_file() {
        "f"
    } else if ft.is_symlink() {
        "l"
    } else if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else if ft.is_socket() {
        "s"
    } else {
        "?"
    }
}

fn walk(path: &Path, count: &mut u64) {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            say!("event=tree-error path={} error={}", V(&path.to_string_lossy()), V(&e.to_string()));
            return;
        }
    };
    let ft = meta.file_type();
    let mut extra = String::new();
    if ft.is_symlink() {
        if let Ok(t) = fs::read_link(path) {
            extra = format!(" target={}", V(&t.to_string_lossy()));
        }
    } else if ft.is_file() && meta.len() <= 64 {
        if let Ok(bytes) = fs::read(path) {
            extra = format!(" content={}", V(String::from_utf8_lossy(&bytes).trim_end()));
        }
    } else if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        extra = format!(" rdev={}:{}", libc::major(rdev), libc::minor(rdev));
    }
    *count += 1;
    say!(
        "event=tree-entry path={} kind={} mode={:o} uid={} gid={} size={} nlink={} ino={}{extra}",
        V(&path.to_string_lossy()),
        kind(&ft),
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        if ft.is_dir() { 0 } else { meta.len() },
        meta.nlink(),
        meta.ino()
    );
    if ft.is_dir() {
        let mut names: Vec<_> = match fs::read_dir(path) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                say!("event=tree-error path={} error={}", V(&path.to_string_lossy()), V(&e.to_string()));
                return;
            }
        };
        names.sort();
        for n in names {
            walk(&n, count);
        }
    }
}

/// List every DIR; exit 0.
pub fn run(dirs: &[String]) -> i32 {
    let mut count = 0;
    for d in dirs {
        walk(Path::new(d), &mut count);
    }
    say!("event=tree-done count={count}");
    0
}
