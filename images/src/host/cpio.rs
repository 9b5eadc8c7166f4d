//! A newc ("070701") cpio writer for Linux initramfs images, and gzip.
//!
//! Deterministic: mtime 0, owner root, inode numbers in insertion order.
//! Parents must be added before their children (the kernel creates entries
//! in archive order); [`CpioBuilder::file`] and friends add any missing
//! parent directory with mode 0755 first.

use std::collections::BTreeSet;

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub struct CpioBuilder {
    out: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl CpioBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self { out: Vec::new(), next_ino: 1, dirs: BTreeSet::new() }
    }

    fn parents(&mut self, path: &str) {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in parts.iter().take(parts.len().saturating_sub(1)) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(p);
            if !self.dirs.contains(&at) {
                let d = at.clone();
                self.dir(&d, 0o755);
            }
        }
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name_len = path.len() + 1;
        let fields = [self.next_ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name_len as u32, 0];
        self.next_ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory (path without leading slash).
    pub fn dir(&mut self, path: &str, mode: u32) {
        if self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[]);
    }

    /// Close the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
}

/// One gzip member (RFC 1952) with mtime 0, as the kernel unpacks it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 9));
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, data) of every entry.
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap_or("0"), 16).unwrap_or(0);
        let up4 = |n: usize| (n + 3) & !3;
        loop {
            assert_eq!(&a[..6], b"070701");
            let f = |i: usize| hex(&a[6 + i * 8..14 + i * 8]);
            let (mode, size, major, namesize) = (f(1), f(6) as usize, f(9), f(11) as usize);
            let name = String::from_utf8_lossy(&a[110..110 + namesize - 1]).into_owned();
            let data_at = up4(110 + namesize);
            let data = a[data_at..data_at + size].to_vec();
            a = &a[up4(data_at + size)..];
            if name == "TRAILER!!!" {
                return v;
            }
            v.push((name, mode, major, data));
        }
    }

    #[test]
    fn entries_round_trip_with_parents_first() {
        let mut c = CpioBuilder::new();
        c.char_device("dev/console", 0o600, 5, 1);
        c.file("lib/modules/a.ko", 0o644, b"abc");
        c.symlink("bin/sh", "/init");
        c.dir("lib", 0o755);
        let e = parse(&c.finish());
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "lib", "lib/modules", "lib/modules/a.ko", "bin", "bin/sh"]);
        assert_eq!(e[1].1, S_IFCHR | 0o600);
        assert_eq!(e[1].2, 5);
        assert_eq!(e[4].3, b"abc");
        assert_eq!(e[6].3, b"/init");
    }

    #[test]
    fn gzip_round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let z = gzip(&data);
        assert_eq!(z, gzip(&data));
        assert_eq!(&z[..3], &[0x1f, 0x8b, 8]);
        let body = &z[10..z.len() - 8];
        assert_eq!(miniz_oxide::inflate::decompress_to_vec(body).ok(), Some(data));
    }
}
