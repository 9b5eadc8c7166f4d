//! A newc ("070701") cpio writer for Linux initramfs images, and gzip.
//!
//! Deterministic: mtime 0, uid and gid 0, device 0:0, inode numbers
//! sequential from 1 in insertion order, nlink 2 for directories and 1
//! otherwise, no checksums. Header plus name, and data, are each padded with
//! zeroes to a 4-byte boundary, as newc requires.
//!
//! Paths are relative to the archive root ("dev/console"); a leading `/`,
//! repeated slashes and `.` components are dropped, `..` is not interpreted.
//! The kernel creates entries in archive order, so parents must come before
//! their children: every method first adds any missing parent directory
//! (mode 0755). Adding a directory that was already added, explicitly or as
//! a parent, does nothing (the first mode wins).
//!
//! Limits of the format: a file must be smaller than 4 GiB, a device major
//! and minor fit in 32 bits each. Nothing here fails; the builder trusts its
//! caller on those.

use std::collections::BTreeSet;

/// Builds an archive in memory.
#[derive(Debug)]
pub struct CpioBuilder {
    out: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

impl Default for CpioBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// `path` without a leading slash, repeated slashes or `.` components.
fn normalise(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

impl CpioBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self { out: Vec::new(), next_ino: 1, dirs: BTreeSet::new() }
    }

    /// Add the missing parent directories of the normalised `path`.
    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let parent = &path[..end];
            if !self.dirs.contains(parent) {
                self.dirs.insert(parent.to_owned());
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[]);
            }
            end += 1;
        }
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = if path == TRAILER { 0 } else { self.next_ino };
        self.next_ino += u32::from(ino != 0);
        let name_len = path.len() + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check.
        let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name_len as u32, 0];
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
        let len = self.out.len();
        self.out.resize(len.next_multiple_of(4), 0);
    }

    /// A directory with these permission bits (`mode & 0o7777`). The root
    /// (an empty path) always exists and is not written.
    pub fn dir(&mut self, path: &str, mode: u32) {
        let path = normalise(path);
        if path.is_empty() || self.dirs.contains(&path) {
            return;
        }
        self.parents(&path);
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[]);
    }

    /// A regular file with these permission bits and contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = normalise(path);
        self.parents(&path);
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, (0, 0), data);
    }

    /// A symbolic link (mode 0777) pointing at `target`, stored verbatim.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = normalise(path);
        self.parents(&path);
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node `major:minor` with these permission bits.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let path = normalise(path);
        self.parents(&path);
        self.entry(&path, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[]);
    }

    /// Close the archive with the `TRAILER!!!` entry and return its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.out
    }
}

/// One gzip member (RFC 1952): no name, mtime 0, OS 255 ("unknown"), raw
/// deflate at level 9, then CRC32 and the length mod 2^32. This is what the
/// kernel's initramfs unpacker (and `zcat`) read.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 9));
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Parse a newc archive strictly: every field, padding and the trailer.
    fn parse(all: &[u8]) -> Vec<Entry> {
        let mut v = Vec::new();
        let mut at = 0;
        let hex = |b: &[u8]| {
            let s = std::str::from_utf8(b).unwrap_or_else(|e| panic!("{e}"));
            u32::from_str_radix(s, 16).unwrap_or_else(|e| panic!("{s:?}: {e}"))
        };
        loop {
            assert_eq!(at % 4, 0, "entry at {at} not aligned");
            let h = &all[at..at + 110];
            assert_eq!(&h[..6], b"070701");
            let f = |i: usize| hex(&h[6 + i * 8..14 + i * 8]);
            assert_eq!((f(2), f(3), f(5)), (0, 0, 0), "uid, gid, mtime");
            assert_eq!((f(7), f(8), f(12)), (0, 0, 0), "dev, check");
            let (size, namesize) = (f(6) as usize, f(11) as usize);
            let name_at = at + 110;
            assert_eq!(all[name_at + namesize - 1], 0, "name NUL");
            let name =
                String::from_utf8(all[name_at..name_at + namesize - 1].to_vec()).unwrap_or_else(|e| panic!("{e}"));
            let data_at = (name_at + namesize).next_multiple_of(4);
            assert!(all[name_at + namesize..data_at].iter().all(|b| *b == 0));
            let data = all[data_at..data_at + size].to_vec();
            let end = (data_at + size).next_multiple_of(4);
            assert!(all[data_at + size..end].iter().all(|b| *b == 0));
            at = end;
            if name == TRAILER {
                assert_eq!(at, all.len());
                return v;
            }
            v.push(Entry { name, ino: f(0), mode: f(1), nlink: f(4), rdev: (f(9), f(10)), data });
        }
    }

    fn sample() -> Vec<u8> {
        let mut c = CpioBuilder::new();
        c.char_device("dev/console", 0o600, 5, 1);
        c.file("/lib/modules/a.ko", 0o644, b"abc");
        c.symlink("bin/sh", "/init");
        c.dir("lib", 0o700); // already there
        c.dir("tmp", 0o1777);
        c.dir("", 0o755); // the root: nothing
        c.file("lib//./modules/empty", 0o4755, b"");
        c.file("init", 0o100755, b"12345");
        c.finish()
    }

    #[test]
    fn entries_round_trip_with_parents_first() {
        let e = parse(&sample());
        let names: Vec<&str> = e.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/a.ko",
                "bin",
                "bin/sh",
                "tmp",
                "lib/modules/empty",
                "init"
            ]
        );
        let inos: Vec<u32> = e.iter().map(|x| x.ino).collect();
        assert_eq!(inos, (1..=10).collect::<Vec<_>>());
        let by = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("{n} missing"));
        for (name, mode, nlink) in [
            ("dev", S_IFDIR | 0o755, 2),
            ("dev/console", S_IFCHR | 0o600, 1),
            ("lib", S_IFDIR | 0o755, 2),
            ("lib/modules/a.ko", S_IFREG | 0o644, 1),
            ("bin/sh", S_IFLNK | 0o777, 1),
            ("tmp", S_IFDIR | 0o1777, 2),
            ("lib/modules/empty", S_IFREG | 0o4755, 1),
            ("init", S_IFREG | 0o755, 1),
        ] {
            assert_eq!((by(name).mode, by(name).nlink), (mode, nlink), "{name}");
        }
        assert_eq!(by("dev/console").rdev, (5, 1));
        assert_eq!(by("dev").rdev, (0, 0));
        assert_eq!(by("lib/modules/a.ko").data, b"abc");
        assert_eq!(by("lib/modules/empty").data, b"");
        assert_eq!(by("init").data, b"12345");
        assert_eq!(by("bin/sh").data, b"/init");
    }

    #[test]
    fn same_calls_same_bytes() {
        assert_eq!(sample(), sample());
        let empty = CpioBuilder::default().finish();
        assert!(parse(&empty).is_empty());
        assert_eq!(empty.len(), 124); // 110 + "TRAILER!!!\0" padded to 4
    }

    #[test]
    fn gzip_round_trips_and_is_deterministic() {
        for data in [Vec::new(), b"x".to_vec(), (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()] {
            let z = gzip(&data);
            assert_eq!(z, gzip(&data));
            assert_eq!(&z[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
            let body = &z[10..z.len() - 8];
            assert_eq!(miniz_oxide::inflate::decompress_to_vec(body).ok().as_ref(), Some(&data));
            let trailer = &z[z.len() - 8..];
            assert_eq!(trailer[..4], crc32fast::hash(&data).to_le_bytes());
            assert_eq!(trailer[4..], (data.len() as u32).to_le_bytes());
        }
    }
}
